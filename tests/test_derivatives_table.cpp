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
