#include "metrics/process_stats.hpp"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace berth::metrics {
namespace {

std::string read_whole(const char* path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/** Boot time (seconds since the epoch) from /proc/stat's "btime" line. */
std::optional<double> boot_time() {
  std::istringstream in(read_whole("/proc/stat"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("btime ", 0) == 0) return std::stod(line.substr(6));
  }
  return std::nullopt;
}

}  // namespace

ProcessStats read_process_stats() noexcept {
  ProcessStats out;
  try {
    // proc(5): "pid (comm) state ppid ...": comm may hold spaces and ')', so fields are counted after the last ')'.
    std::string stat = read_whole("/proc/self/stat");
    auto close = stat.rfind(')');
    if (close != std::string::npos) {
      std::istringstream in(stat.substr(close + 2));
      std::vector<std::string> f{std::istream_iterator<std::string>(in), std::istream_iterator<std::string>()};
      // f[0] is field 3 (state): field N is f[N - 3].
      if (f.size() >= 22) {
        const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
        const auto page = static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
        out.cpu_seconds = (std::stod(f[14 - 3]) + std::stod(f[15 - 3])) / ticks;
        out.threads = std::stoull(f[20 - 3]);
        if (auto boot = boot_time()) out.start_time_seconds = *boot + std::stod(f[22 - 3]) / ticks;
        out.virtual_bytes = std::stoull(f[23 - 3]);
        out.resident_bytes = std::stoull(f[24 - 3]) * page;
      }
    }
  } catch (const std::exception&) {
  }
  if (DIR* dir = opendir("/proc/self/fd")) {
    std::uint64_t n = 0;
    while (const dirent* e = readdir(dir)) {
      if (e->d_name[0] != '.') ++n;
    }
    closedir(dir);
    out.open_fds = n - 1;  // the listing's own descriptor is not the process's
  }
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) out.max_fds = limit.rlim_cur;
  return out;
}

}  // namespace berth::metrics
