// `rewind grad`'s reader of INPUTS on arbitrary bytes, against the LSTM of
// tests/fixtures/lstm_l1_f64 and its real STATE: names, dtypes, shapes, lengths and non-finite
// values. A refused file is a CommandError or a SafetensorsError, each one line for the user.

#include "../cli/grad_inputs.hpp"

#include <cstdlib>

#include "fuzz_input.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static rw::cli::GradRequest request = [] {
        rw::cli::GradRequest r;
        r.layer = {.cell = "lstm", .input_size = 3, .hidden_size = 5};
        const char* tests = std::getenv("REWIND_TESTS_DIR");
        r.state_file = std::filesystem::path(tests ? tests : REWIND_TESTS_DIR) / "fixtures/lstm_l1_f64/state.safetensors";
        r.check_finite = true;  // an error, not a warning line per input
        return r;
    }();
    request.inputs_file = rw::fuzz::write_input("fuzz_grad_inputs", data, size);
    try {
        (void)rw::cli::load_grad_data(request);
    } catch (const rw::cli::CommandError&) {
    } catch (const rw::nn::SafetensorsError&) {
    }
    return 0;
}
