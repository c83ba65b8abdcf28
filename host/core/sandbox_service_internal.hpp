// Private to the units of SandboxService (sandbox_service.cpp, session_start.cpp, session_recovery.cpp,
// exec_files.cpp, workspaces.cpp, cleanup_passes.cpp, disk_limits.cpp): the short names they share. Not part of
// the core's interface; nothing outside host/core/ includes it.
#pragma once

#include <chrono>
#include <string>

#include "core/sandbox_service.hpp"

namespace berth::core::service_internal {

using store::SandboxRow;
using store::SessionRow;
using SS = store::SessionState;           // what the database records
using RuntimeState = core::SessionState;  // what the driver reports

/** The longest prefix of `s` of at most `cap` bytes that does not end inside a UTF-8 sequence. */
inline std::size_t utf8_prefix_length(const std::string& s, std::size_t cap) {
  if (s.size() <= cap) return s.size();
  std::size_t n = cap;
  // Step back over at most three continuation bytes (10xxxxxx) to the lead byte, and cut before it.
  for (int i = 0; i < 3 && n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80; ++i)
    --n;
  return (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80 ? cap : n;
}

/** Milliseconds from `t0` to now, as a log field value. */
inline std::string ms_since(std::chrono::steady_clock::time_point t0) {
  return std::to_string(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());
}

}  // namespace berth::core::service_internal
