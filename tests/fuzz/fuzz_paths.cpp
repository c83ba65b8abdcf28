// libFuzzer target: workspace path validation (core/paths). Any input either is refused with core::Error or
// comes back as a normalised relative path that stays inside the workspace and normalises to itself.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "core/errors.hpp"
#include "core/paths.hpp"

namespace {

/** Aborts (a libFuzzer crash) when a property of an accepted path does not hold. */
void require(bool ok) {
  if (!ok) std::abort();
}

void check(std::string_view input, bool allow_root) {
  std::string out;
  try {
    out = berth::core::workspace_path(input, allow_root);
  } catch (const berth::core::Error&) {
    return;  // refused: the documented outcome for a bad path
  }
  require(!out.empty());
  require(out.front() != '/');
  require(out.find('\0') == std::string::npos);
  require(out == "." || (allow_root || out != "."));
  std::string_view rest = out;
  while (true) {  // no segment is "..", "." (except the root itself) or empty
    auto slash = rest.find('/');
    auto seg = rest.substr(0, slash);
    require(seg != "..");
    require(!seg.empty());
    require(seg != "." || out == ".");
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);
  }
  require(berth::core::workspace_path(out, allow_root) == out);  // normalising twice changes nothing
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  check(input, true);
  check(input, false);
  return 0;
}
