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

/** Milliseconds from `t0` to now, as a log field value. */
inline std::string ms_since(std::chrono::steady_clock::time_point t0) {
  return std::to_string(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());
}

}  // namespace berth::core::service_internal
