// A profile: what a sandbox runs (image, limits, user, env) and which API capabilities it offers. Named in the
// config ([profiles.<name>]); plain data, so that config/ can fill it in and the core can use it.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>

namespace berth::core {

/** What a sandbox runs: resources, image and the API capabilities it offers. */
struct Profile {
  std::string name;
  std::string image = "berth/python:3.11";
  std::int64_t nano_cpus = 1'000'000'000;
  std::int64_t memory_bytes = 512ll << 20;
  std::int64_t pids_limit = 256;
  bool network = false;
  bool read_only_rootfs = false;
  std::string user = "1000:1000";
  std::map<std::string, std::string> env;
  std::optional<std::chrono::seconds> ttl;
  std::chrono::seconds idle_timeout{1800};  // [cleanup].idle_timeout when the profile sets none
  std::set<std::string> capabilities{"python", "shell", "filesystem"};
  /** The program a terminal (GET /v1/sandboxes/{id}/terminal) runs on its PTY: an absolute path in the image. */
  std::string shell = "/bin/bash";
  /** Disk a session may hold, workspace plus the container's writable layer, in bytes; 0 = no limit. Measured
   *  (driver session_stats), not a hard engine limit: see SandboxService::exec and docs/security.md. */
  std::uint64_t disk_limit_bytes = 1024ull << 20;
};

}  // namespace berth::core
