// docs/derivatives.md is the one table of every op's formulas: each op that ops.hpp declares
// must have a row there.

#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

namespace {

std::string read(const std::filesystem::path& path) {
    std::ifstream file(path);
    BOOST_REQUIRE_MESSAGE(file, "cannot read " << path);
    std::stringstream text;
    text << file.rdbuf();
    return text.str();
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_op_declared_in_ops_hpp_has_a_row_in_docs_derivatives_md) {
    const std::filesystem::path root = std::filesystem::path(REWIND_TESTS_DIR) / "..";
    const std::string header = read(root / "autograd" / "include" / "rewind" / "autograd" / "ops.hpp");
    const std::string table = read(root / "docs" / "derivatives.md");
    // "template <class T...> <return type> name(": the operators (operator+ ...) do not match.
    const std::regex declaration(R"(template <class T[^\n]*?>\s+[\w:<>, ]*?\b(\w+)\()");
    std::set<std::string> ops;
    for (auto it = std::sregex_iterator(header.begin(), header.end(), declaration); it != std::sregex_iterator(); ++it)
        ops.insert((*it)[1]);
    BOOST_TEST(ops.size() >= 40u);  // the parse found the declarations
    for (const auto& op : ops)
        BOOST_TEST(table.find("| `" + op + "(") != std::string::npos, "no row for " << op << " in docs/derivatives.md");
}

// Forward mode (issue 20): every op row, the internal ops' included, ends with its tangent
// (JVP) column, the output's tangent `dy` (or — for argmax, which has none).
BOOST_AUTO_TEST_CASE(every_op_row_of_docs_derivatives_md_has_a_jvp_entry) {
    const std::filesystem::path root = std::filesystem::path(REWIND_TESTS_DIR) / "..";
    const std::string table = read(root / "docs" / "derivatives.md");
    const std::string ops_part = table.substr(0, table.find("## Fused rules"));
    std::istringstream lines(ops_part);
    std::size_t rows = 0, headers = 0;
    for (std::string line; std::getline(lines, line);) {
        if (line.rfind("| op |", 0) == 0) {
            ++headers;
            BOOST_TEST(line.find("| tangent (JVP) |") != std::string::npos, "no JVP column in: " << line);
        }
        if (line.rfind("| `", 0) != 0) continue;
        ++rows;
        // The last cell: between the last two '|' (the JVP cells hold none of their own).
        const std::size_t end = line.find_last_of('|'), begin = line.find_last_of('|', end - 1);
        const std::string cell = line.substr(begin + 1, end - begin - 1);
        const bool argmax = line.rfind("| `argmax(", 0) == 0;
        BOOST_TEST((argmax ? cell.find("—") : cell.find("`dy")) != std::string::npos, "no JVP entry in: " << line);
    }
    BOOST_TEST(headers >= 6u);
    BOOST_TEST(rows >= 55u);
}
