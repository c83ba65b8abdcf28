// Starting a process under a per-exec shim. The agent forks a shim; the shim makes itself a child sub-reaper
// (PR_SET_CHILD_SUBREAPER), forks the requested program (new session; PTY or pipes; uid/gid; cwd) and stays its
// parent, so every descendant (setsid, nohup, env -i, double forks) is re-parented to the shim, never past it.
// The shim reports over a status pipe and kills the whole tree (SIGSTOP sweep, then SIGKILL, until no descendant
// is left, fork bombs included) when the main process exits, when the agent sends it SIGUSR1 (timeout, cancel,
// connection gone, shutdown) and when the agent dies (PR_SET_PDEATHSIG = SIGUSR1).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "berth/agent/protocol.hpp"

namespace berth::agent {

/** Status pipe records, 5 bytes each: a tag and a native-endian int32. */
inline constexpr char kShimStarted = 'P';     ///< value: pid of the main process (exec succeeded)
inline constexpr char kShimExecFailed = 'E';  ///< value: errno of the failed setup/exec
inline constexpr char kShimExited = 'X';      ///< value: wait status of the main process

/** The agent's ends of a started shim. All fds are O_CLOEXEC and owned by the caller. */
struct ShimHandles {
  pid_t shim = -1;
  int status_fd = -1;  ///< read end of the status pipe
  int stdin_fd = -1;   ///< write end of stdin (the PTY master when pty)
  int stdout_fd = -1;  ///< read end of stdout (the PTY master again when pty: do not close twice)
  int stderr_fd = -1;  ///< read end of stderr; -1 with a PTY (stderr goes to the terminal)
};

/** Forks the shim for `req`; `root` is the cwd when req.cwd is empty and the base of a relative cwd. Returns 0 or
 *  -errno (pipes, PTY or fork failed); exec errors arrive later on the status pipe. Call from the agent's only
 *  thread; the signal mask of the children is reset before exec. */
int start_shim(const StartRequest& req, const std::string& root, ShimHandles& out);

/** Kills every descendant of the calling process (SIGSTOP them all, SIGKILL them all, reap, repeat) until none
 *  is left. `main_pid`'s wait status, if reaped here, is stored in *main_status and *main_reaped set. */
void kill_all_descendants(pid_t main_pid, int* main_status, bool* main_reaped);

}  // namespace berth::agent
