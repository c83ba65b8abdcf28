// Log lines never carry a control character raw (issue 8, finding 9): C0, DEL and C1 from any field are escaped in
// both formats, and invalid UTF-8 stays recoverable (text) or is replaced (JSON).
#include <catch2/catch.hpp>

#include <Poco/JSON/Parser.h>

#include <string>

#include "core/log.hpp"

using berth::log::Format;
using berth::log::format_line;

namespace {

/** Every control character a line may not carry raw, as it would arrive (C1 as UTF-8). */
std::string hostile() {
  std::string v;
  for (int c = 0; c < 0x20; ++c)
    v += static_cast<char>(c);
  v += '\x7f';
  for (int c = 0x80; c <= 0x9f; ++c) {
    v += '\xc2';
    v += static_cast<char>(c);
  }
  v += "\xff\xc3(";  // invalid UTF-8
  return v;
}

/** Counts C0, DEL and C1 (as UTF-8) characters in `line`. */
int raw_controls(const std::string& line) {
  int n = 0;
  for (std::size_t i = 0; i < line.size(); ++i) {
    auto u = static_cast<unsigned char>(line[i]);
    if (u < 0x20 || u == 0x7f) ++n;
    if (u == 0xc2 && i + 1 < line.size() && static_cast<unsigned char>(line[i + 1]) >= 0x80 &&
        static_cast<unsigned char>(line[i + 1]) <= 0x9f)
      ++n;
  }
  return n;
}

}  // namespace

TEST_CASE("text log lines escape C0, DEL, C1 and invalid UTF-8", "[log]") {
  auto line = format_line(Format::text, "http.access", {{"path", "/a" + hostile() + "b"}});
  CHECK(raw_controls(line) == 0);
  CHECK(line.find("\\x1b") != std::string::npos);
  CHECK(line.find("\\x7f") != std::string::npos);
  CHECK(line.find("\\xc2\\x9b") != std::string::npos);
  CHECK(line.find("\\xff") != std::string::npos);
  CHECK(line.find("\\r") != std::string::npos);
}

TEST_CASE("JSON log lines are ASCII with every control escaped, and parse back", "[log]") {
  std::string value = "/a" + hostile() + "b";
  auto line = format_line(Format::json, "http.access", {{"path", value}});
  CHECK(raw_controls(line) == 0);
  for (char c : line)
    CHECK(static_cast<unsigned char>(c) < 0x80);
  auto parsed = Poco::JSON::Parser().parse(line).extract<Poco::JSON::Object::Ptr>();
  auto back = parsed->getValue<std::string>("path");
  CHECK(back.find("\xc2\x9b") != std::string::npos);  // C1 survives, escaped on the wire
  CHECK(back.find('\x1b') != std::string::npos);
}
