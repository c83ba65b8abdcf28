// The process's own resource figures, read from Linux /proc at scrape time: what the Prometheus client libraries
// export as process_* (https://prometheus.io/docs/instrumenting/writing_clientlibs/#process-metrics).
#pragma once

#include <cstdint>
#include <optional>

namespace berth::metrics {

/** One reading of the calling process. A figure /proc did not give is nullopt (the series is then left out). */
struct ProcessStats {
  std::optional<double> cpu_seconds;            // user + system CPU time, seconds
  std::optional<std::uint64_t> resident_bytes;  // resident set size, bytes
  std::optional<std::uint64_t> virtual_bytes;   // virtual memory size, bytes
  std::optional<std::uint64_t> open_fds;        // entries in /proc/self/fd
  std::optional<std::uint64_t> max_fds;         // the soft RLIMIT_NOFILE
  std::optional<std::uint64_t> threads;         // threads of the process
  std::optional<double> start_time_seconds;     // when the process started, seconds since the Unix epoch
};

/**
 * Reads /proc/self/stat, /proc/self/fd, /proc/stat (boot time) and getrlimit. Thread-safe (no shared state);
 * never throws: whatever cannot be read stays nullopt. Costs a few small file reads and one directory listing.
 */
ProcessStats read_process_stats() noexcept;

}  // namespace berth::metrics
