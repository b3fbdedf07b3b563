// rewind: the command line. Every failure ends as exactly one line on stderr,
// "rewind <command>: <what is wrong>", so scripts can show or grep it; exit code 1 for bad input,
// 2 for a malformed command line.

#include <algorithm>
#include <exception>
#include <iostream>
#include <new>
#include <string>
#include <vector>

#include "commands.hpp"

namespace {

// Error messages from deeper layers may span lines (e.g. a quoted header); the contract is one line.
std::string one_line(std::string text) {
    std::replace(text.begin(), text.end(), '\n', ' ');
    std::replace(text.begin(), text.end(), '\r', ' ');
    return text;
}

std::string prefix_of(const CLI::App& app) {
    const auto selected = app.get_subcommands();
    return selected.empty() ? "rewind" : "rewind " + selected.front()->get_name();
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"rewind: tape-based autodiff for recurrent layers (RNN, LSTM, GRU)", "rewind"};
    app.set_version_flag("--version", std::string("rewind ") + REWIND_VERSION);
    app.require_subcommand(1, 1);
    const std::vector<rw::cli::Command> commands{rw::cli::add_grad_command(app),
                                                 rw::cli::add_gradcheck_command(app),
                                                 rw::cli::add_bench_command(app),
                                                 rw::cli::add_flow_command(app),
                                                 rw::cli::add_check_fused_command(app),
                                                 rw::cli::add_cells_command(app)};
    try {
        app.parse(argc, argv);
    } catch (const CLI::Success& e) {  // --help and --version
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        const std::string prefix = prefix_of(app);
        std::cerr << prefix << ": " << one_line(e.what()) << " (see '" << prefix << " --help')" << std::endl;
        return 2;
    }

    for (const auto& command : commands) {
        if (!command.app->parsed()) continue;
        try {
            return command.run();
        } catch (const std::bad_alloc&) {
            // Sizes within every bound can still ask for more memory than the machine has.
            std::cerr << "rewind " << command.app->get_name()
                      << ": out of memory: the sizes asked for need more memory than is available" << std::endl;
            return 1;
        } catch (const std::exception& e) {
            std::cerr << "rewind " << command.app->get_name() << ": " << one_line(e.what()) << std::endl;
            return 1;
        }
    }
    return 2;  // unreachable: require_subcommand(1, 1) guarantees one
}
