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
#include <string_view>

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

/** A shim forked ahead of its request (see fork_spare): its pipes exist, its prologue ran (sub-reaper, death signal,
 *  signal mask), and its main process is forked too and blocks reading a StartRequest from the request pipe. All fds
 * are O_CLOEXEC, owned by the caller. */
struct SpareShim {
  pid_t shim = -1;
  int request_fd = -1;  ///< write end of the request pipe: an encoded StartRequest, then close; close alone = exit
  ShimHandles h;        ///< what the shim becomes once used (never a PTY)
  std::size_t request_max = 0;  ///< the largest request it takes: kSpareRequestMax, or less for a smaller pipe
  bool ready() const { return shim > 0; }
};

/** Requests up to this many encoded bytes may go to a spare: under the pipe's default capacity (64 KiB), so handing
 *  one over never blocks the agent. Larger ones (and PTYs) take start_shim. */
inline constexpr std::size_t kSpareRequestMax = 60 * 1024;

/** Forks a spare shim that will run the next non-PTY request without a fork on the request's path: the pipes, both
 *  forks (shim and main process) and the shim's prologue happen here, ahead of time; start_spare then only writes the
 *  request, and the main process goes straight to its setup (setsid, ids, cwd) and execve. `root` as
 *  for start_shim. Returns 0 or -errno (out untouched). Call from the agent's only thread. */
int fork_spare(const std::string& root, SpareShim& out);

/** Hands an encoded StartRequest (non-PTY, at most spare.request_max bytes: the caller checks) to `spare`, which is
 *  consumed either way: on 0, `out` holds its handles and the process goes on as one from start_shim (same status
 *  records, same tree killing); on -errno (EPIPE: its program process is gone; EAGAIN: it is not reading, e.g.
 *  stopped, and the pipe is full) its fds are closed and the caller starts the request with start_shim instead. */
int start_spare(SpareShim& spare, std::string_view encoded, ShimHandles& out);

/** Lets an unused spare go: closes its fds (it exits on the request pipe's EOF); the SIGCHLD path reaps it. */
void drop_spare(SpareShim& spare);

/** Forks the shim for `req`; `root` is the cwd when req.cwd is empty and the base of a relative cwd. Returns 0 or
 *  -errno (pipes, PTY or fork failed); exec errors arrive later on the status pipe. Call from the agent's only
 *  thread; the signal mask of the children is reset before exec. */
int start_shim(const StartRequest& req, const std::string& root, ShimHandles& out);

/** Sets every signal's disposition to SIG_DFL but SIGPIPE's to SIG_IGN. The agent calls it once at its start, so a
 *  started process's setup needs to reset SIGPIPE only (execve resets caught signals, not ignored ones) and every
 *  process starts with default dispositions whatever the agent inherited. */
void reset_signal_dispositions();

/** Kills every descendant of the calling process (SIGSTOP them all, SIGKILL them all, reap, repeat) until none
 *  is left. `main_pid`'s wait status, if reaped here, is stored in *main_status and *main_reaped set. */
void kill_all_descendants(pid_t main_pid, int* main_status, bool* main_reaped);

}  // namespace berth::agent
