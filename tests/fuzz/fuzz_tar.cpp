// libFuzzer target: the engine drivers' tar code (plugins/common, berth/engine/tar.hpp).
//   first byte even: the rest is an archive for read_single_file_tar (what an engine sends back); malformed
//                    archives must be engine::Error, never a crash or a hang.
//   first byte odd:  the rest is "name\0content": write_single_file_tar then read_single_file_tar must give back
//                    exactly that name and content (file names are any bytes but NUL and '/').
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

#include "berth/engine/client.hpp"
#include "berth/engine/tar.hpp"

namespace {

void read_archive(const std::string& bytes) {
  std::istringstream in(bytes);
  std::uint64_t seen = 0;
  try {
    auto result = berth::engine::read_single_file_tar(in, [&](const std::uint8_t*, std::size_t n) {
      seen += n;
      return true;
    });
    if (result.regular_file && seen > result.size) __builtin_trap();  // never more data than the header says
  } catch (const berth::engine::Error&) {
  }
}

void round_trip(const std::string& rest) {
  const auto nul = rest.find('\0');
  if (nul == std::string::npos) return;
  const std::string name = rest.substr(0, nul);
  const std::string content = rest.substr(nul + 1);
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") return;
  berth::engine::TarFileEntry entry;
  entry.name = name;
  entry.size = content.size();
  std::ostringstream out;
  std::size_t pos = 0;
  try {
    berth::engine::write_single_file_tar(out, entry, [&](std::uint8_t* buf, std::size_t cap) -> std::int64_t {
      const std::size_t n = std::min(cap, content.size() - pos);
      std::copy_n(content.data() + pos, n, buf);
      pos += n;
      return static_cast<std::int64_t>(n);
    });
  } catch (const berth::engine::Error&) {
    return;  // a name the writer refuses is allowed; crashing on it is not
  }
  std::istringstream in(out.str());
  std::string back;
  auto result = berth::engine::read_single_file_tar(in, [&](const std::uint8_t* p, std::size_t n) {
    back.append(reinterpret_cast<const char*>(p), n);
    return true;
  });
  if (!result.regular_file || result.name != name || back != content) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] % 2 == 0) {
    read_archive(rest);
  } else {
    round_trip(rest);
  }
  return 0;
}
