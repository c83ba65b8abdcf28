// libFuzzer target: berthd's TOML configuration (config::parse, parse_duration, parse_size). Every bad input must
// be a ConfigError (or std::invalid_argument for the two value parsers, as documented); anything else escaping,
// or a sanitizer report, is a crash.
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "config/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    auto config = berth::config::parse(text, "fuzz.toml");
    if (config.profiles.empty()) __builtin_trap();  // documented: at least one profile
  } catch (const berth::config::ConfigError&) {
  }
  // The value parsers on their own, with the input's first line as the value.
  const std::string line = text.substr(0, text.find('\n'));
  try {
    (void)berth::config::parse_duration(line);
  } catch (const std::invalid_argument&) {
  }
  try {
    (void)berth::config::parse_size(line);
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
