#include "exec_shim.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace berth::agent {

namespace {

pid_t g_agent_pid = 0;

void write_record(int fd, char tag, std::int32_t value) {
  char buf[5];
  buf[0] = tag;
  std::memcpy(buf + 1, &value, 4);
  while (::write(fd, buf, 5) < 0 && errno == EINTR) {
  }
}

/** The children of `pid` from /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN). False if unavailable. */
bool children_of(pid_t pid, std::vector<pid_t>& out) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/task", pid);
  DIR* d = ::opendir(path);
  if (!d) return errno == ENOENT;  // gone meanwhile: no children
  bool ok = true;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char file[320];
    std::snprintf(file, sizeof file, "/proc/%d/task/%s/children", pid, e->d_name);
    const int fd = ::open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno != ENOENT || pid != ::getpid()) continue;
      ok = false;  // our own children file is missing: the kernel lacks CONFIG_PROC_CHILDREN
      break;
    }
    std::string text;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0)
      text.append(buf, static_cast<std::size_t>(n));
    ::close(fd);
    const char* p = text.c_str();
    char* end = nullptr;
    for (long v = std::strtol(p, &end, 10); end != p; p = end, v = std::strtol(p, &end, 10))
      out.push_back(v);
  }
  ::closedir(d);
  return ok;
}

/** Every descendant of `self`: through the children files, else from one scan of /proc (parent links). */
std::vector<pid_t> descendants(pid_t self) {
  std::vector<pid_t> out;
  std::vector<pid_t> queue{self};
  bool ok = true;
  while (!queue.empty() && ok) {
    const pid_t p = queue.back();
    queue.pop_back();
    std::vector<pid_t> kids;
    ok = children_of(p, kids);
    for (pid_t k : kids)
      out.push_back(k), queue.push_back(k);
  }
  if (ok) return out;
  out.clear();
  std::multimap<pid_t, pid_t> children;
  if (DIR* d = ::opendir("/proc")) {
    while (dirent* e = ::readdir(d)) {
      char* end = nullptr;
      const long pid = std::strtol(e->d_name, &end, 10);
      if (pid <= 0 || *end != '\0') continue;
      char path[64];
      std::snprintf(path, sizeof path, "/proc/%ld/stat", pid);
      const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      char buf[512];
      const ssize_t n = ::read(fd, buf, sizeof buf - 1);
      ::close(fd);
      if (n <= 0) continue;
      buf[n] = '\0';
      const char* rp = std::strrchr(buf, ')');  // comm may hold spaces and parentheses
      if (!rp) continue;
      char state = 0;
      long ppid = 0;
      if (std::sscanf(rp + 1, " %c %ld", &state, &ppid) != 2) continue;
      children.emplace(static_cast<pid_t>(ppid), static_cast<pid_t>(pid));
    }
    ::closedir(d);
  }
  queue.assign(1, self);
  while (!queue.empty()) {
    const pid_t p = queue.back();
    queue.pop_back();
    auto [lo, hi] = children.equal_range(p);
    for (auto it = lo; it != hi; ++it) {
      out.push_back(it->second);
      queue.push_back(it->second);
    }
  }
  return out;
}

[[noreturn]] void run_child(const StartRequest& req, const std::string& root, bool pty, int err_fd) {
  auto fail = [&](int e) {
    while (::write(err_fd, &e, sizeof e) < 0 && errno == EINTR) {
    }
    ::_exit(127);
  };
  sigset_t none;
  sigemptyset(&none);
  // execve resets caught signals; of the ignored ones only SIGPIPE is left (reset_signal_dispositions).
  ::signal(SIGPIPE, SIG_DFL);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  if (::setsid() < 0) fail(errno);
  if (pty) {
    if (::ioctl(0, TIOCSCTTY, 0) < 0) fail(errno);
    if (::dup2(0, 1) < 0 || ::dup2(0, 2) < 0) fail(errno);
  }
  ::close(3);  // the shim's status pipe
  if (req.gid != kKeepId || req.uid != kKeepId) {
    if (::geteuid() == 0) {
      const gid_t g = req.gid == kKeepId ? ::getegid() : req.gid;
      if (::setgroups(1, &g) != 0 || ::setgid(g) != 0) fail(errno);
    } else if ((req.gid != kKeepId && req.gid != ::getegid()) || (req.uid != kKeepId && req.uid != ::geteuid())) {
      fail(EPERM);
    }
    if (req.uid != kKeepId && ::setuid(req.uid) != 0) fail(errno);
  }
  const std::string cwd = req.cwd.empty() ? root : (req.cwd[0] == '/' ? req.cwd : root + "/" + req.cwd);
  if (::chdir(cwd.c_str()) != 0) fail(errno);
  std::vector<char*> argv, envp;
  for (const auto& a : req.argv)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : req.env)
    envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  ::execve(argv[0], argv.data(), envp.data());
  fail(errno);
  ::_exit(127);
}

/** The shim's first steps, before it knows its request. Returns the signal mask it waits on. */
sigset_t shim_prologue() {
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  ::prctl(PR_SET_PDEATHSIG, SIGUSR1);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGUSR1);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  ::sigprocmask(SIG_SETMASK, &mask, nullptr);
  if (::getppid() != g_agent_pid) ::_exit(1);  // the agent died before PDEATHSIG was armed
  return mask;
}

/** A spare's request: an encoded StartRequest read from `fd` to its EOF, then `fd` closed. Null if none came (*got
 *  false) or it does not decode (*got true). */
std::optional<StartRequest> read_request(int fd, bool* got) {
  std::string encoded;
  char buf[16384];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      encoded.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break;
  }
  ::close(fd);
  *got = !encoded.empty();
  if (encoded.empty()) return std::nullopt;
  return StartRequest::decode(encoded);
}

/** The shim after its prologue: forks the main process and watches over the tree. `req` null: a spare, whose
 *  main process is forked at once and waits for its request on fd 4 (EOF without one: ECANCELED, it was dropped). */
[[noreturn]] void run_shim(const StartRequest* req, const std::string& root, bool pty, sigset_t mask) {
  // fds 0-2: the child's stdio; 3: the status pipe; 4: a spare's request pipe; everything else was closed before.
  int ep[2];
  if (::pipe2(ep, O_CLOEXEC) != 0) write_record(3, kShimExecFailed, errno), ::_exit(1);
  const pid_t shim = ::getpid();
  const pid_t child = ::fork();
  if (child < 0) write_record(3, kShimExecFailed, errno), ::_exit(1);
  if (child == 0) {
    ::close(ep[0]);
    if (req) run_child(*req, root, pty, ep[1]);
    ::prctl(PR_SET_NAME, kSpareName);  // until its execve names it after its program
    // Waiting, it dies with its shim: a request never runs outside a shim's watch.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != shim) ::_exit(127);
    bool got = false;
    const auto spare_req = read_request(4, &got);
    ::prctl(PR_SET_PDEATHSIG, 0);  // as for a child of start_shim from here on
    // What was sent to it while it waited (blocked: the shim's mask) would land on the program at its unblocking: a
    // fresh child never starts with signals pending. SIG_IGN discards a pending signal; run_child restores defaults.
    for (int sig : {SIGUSR1, SIGCHLD, SIGTERM, SIGINT, SIGHUP})
      ::signal(sig, SIG_IGN), ::signal(sig, SIG_DFL);
    if (!spare_req) {
      const int e = got ? EPROTO : ECANCELED;  // a request that does not decode; none (dropped)
      while (::write(ep[1], &e, sizeof e) < 0 && errno == EINTR) {
      }
      ::_exit(127);
    }
    run_child(*spare_req, root, false, ep[1]);
  }
  char own_name[16] = {};
  if (!req) {
    ::close(4);
    ::prctl(PR_GET_NAME, own_name);
    ::prctl(PR_SET_NAME, kSpareName);
  }
  ::close(ep[1]);
  // Wait for the exec's outcome, or SIGUSR1: a spare's program may wait long (for its request; stopped even), and a
  // kill of the exec (timeout, KILL, the agent's death) must not wait for it. The tree goes and the start is reported
  // failed (ECANCELED), even if the program's execve won that race: the agent forwards nothing of an unstarted one.
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  const int sfd = ::signalfd(-1, &usr1, SFD_CLOEXEC);
  int exec_errno = 0;
  ssize_t n = -1;
  for (;;) {
    pollfd fds[2] = {{ep[0], POLLIN, 0}, {sfd, POLLIN, 0}};
    if (::poll(fds, sfd >= 0 ? 2 : 1, -1) < 0 && errno != EINTR) break;
    if (fds[0].revents != 0) {
      while ((n = ::read(ep[0], &exec_errno, sizeof exec_errno)) < 0 && errno == EINTR) {
      }
      break;
    }
    if (sfd >= 0 && fds[1].revents != 0) {
      int status = 0;
      bool reaped = false;
      kill_all_descendants(child, &status, &reaped);
      write_record(3, kShimExecFailed, ECANCELED);
      ::_exit(0);
    }
  }
  if (sfd >= 0) ::close(sfd);
  if (!req) ::prctl(PR_SET_NAME, own_name);  // in use (or dropped): a shim like any other
  ::close(ep[0]);
  ::close(0), ::close(1), ::close(2);  // only the tree holds the stdio ends now: EOF when it is gone
  if (n > 0) {
    int st = 0;
    ::waitpid(child, &st, 0);
    write_record(3, kShimExecFailed, exec_errno);
    ::_exit(0);
  }
  write_record(3, kShimStarted, child);
  int status = 0;
  bool reaped = false;
  for (;;) {
    int st = 0;
    pid_t p;
    while ((p = ::waitpid(-1, &st, WNOHANG)) > 0) {
      if (p == child && !reaped) status = st, reaped = true;
    }
    if (reaped) break;
    siginfo_t info{};
    if (::sigwaitinfo(&mask, &info) < 0) continue;
    if (info.si_signo == SIGUSR1) {
      kill_all_descendants(child, &status, &reaped);
      break;
    }
  }
  // The main process is gone: whatever it left behind goes too (documented: an exec owns its descendants).
  kill_all_descendants(child, &status, &reaped);
  write_record(3, kShimExited, status);
  ::_exit(0);
}

}  // namespace

void reset_signal_dispositions() {
  for (int s = 1; s < NSIG; ++s)
    ::signal(s, SIG_DFL);  // EINVAL for SIGKILL, SIGSTOP and the ones glibc keeps: harmless
  ::signal(SIGPIPE, SIG_IGN);
}

void kill_all_descendants(pid_t main_pid, int* main_status, bool* main_reaped) {
  const pid_t self = ::getpid();
  for (;;) {
    // Every live descendant is a child of ours or below one: with no child left there is nothing to sweep.
    int st0 = 0;
    const pid_t r0 = ::waitpid(-1, &st0, WNOHANG | __WALL);
    if (r0 < 0 && errno == ECHILD) return;
    if (r0 > 0 && r0 == main_pid && !*main_reaped) *main_status = st0, *main_reaped = true;
    std::set<pid_t> seen;
    // Freeze: stop every descendant, rescanning until a scan finds nobody new (a stopped process cannot fork).
    for (int round = 0; round < 1000; ++round) {
      bool fresh = false;
      for (pid_t p : descendants(self)) {
        if (seen.insert(p).second) fresh = true, ::kill(p, SIGSTOP);
      }
      if (!fresh) break;
    }
    for (pid_t p : seen)
      ::kill(p, SIGKILL);
    bool reaped_any = false;
    for (;;) {
      int st = 0;
      const pid_t p = ::waitpid(-1, &st, WNOHANG | __WALL);
      if (p > 0) {
        reaped_any = true;
        if (p == main_pid && !*main_reaped) *main_status = st, *main_reaped = true;
        continue;
      }
      if (p < 0 && errno == ECHILD) return;  // nothing left below us
      break;
    }
    if (!reaped_any && seen.empty()) {
      const timespec ts{0, 1000000};  // children exist but are still dying
      ::nanosleep(&ts, nullptr);
    }
  }
}

namespace {

/** start_shim (`req` set) and fork_spare (`req` null: no PTY, and a request pipe whose write end goes to *request_fd,
 *  with the largest request it takes in *request_max). The pipes (or PTY), the fork, the shim's fd layout. */
int fork_shim(const StartRequest* req, const std::string& root, ShimHandles& out, int* request_fd,
              std::size_t* request_max) {
  const bool pty = req != nullptr && (req->flags & kStartPty) != 0;
  int status[2] = {-1, -1}, in[2] = {-1, -1}, o[2] = {-1, -1}, e[2] = {-1, -1}, rq[2] = {-1, -1};
  int master = -1, slave = -1;
  auto cleanup = [&](int err) {
    for (int fd : {status[0], status[1], in[0], in[1], o[0], o[1], e[0], e[1], rq[0], rq[1], master, slave})
      if (fd >= 0) ::close(fd);
    return -err;
  };
  if (::pipe2(status, O_CLOEXEC) != 0) return cleanup(errno);
  if (pty) {
    master = ::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0 || ::grantpt(master) != 0 || ::unlockpt(master) != 0) return cleanup(errno);
    char name[128];
    if (::ptsname_r(master, name, sizeof name) != 0) return cleanup(errno);
    slave = ::open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (slave < 0) return cleanup(errno);
    winsize ws{};
    ws.ws_row = req->rows;
    ws.ws_col = req->cols;
    ::ioctl(master, TIOCSWINSZ, &ws);
  } else if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(o, O_CLOEXEC) != 0 || ::pipe2(e, O_CLOEXEC) != 0) {
    return cleanup(errno);
  }
  if (req == nullptr) {
    if (::pipe2(rq, O_CLOEXEC) != 0) return cleanup(errno);
    ::fcntl(rq[1], F_SETFL, O_NONBLOCK);  // the agent's end: a hand-over never blocks (start_spare)
    // A uid over pipe-user-pages-soft gets small pipes (one page): only requests that fit are handed over.
    const int pipe_size = ::fcntl(rq[1], F_GETPIPE_SZ);
    *request_max = pipe_size > 0 ? std::min<std::size_t>(kSpareRequestMax, static_cast<std::size_t>(pipe_size)) : 4096;
  }
  g_agent_pid = ::getpid();
  const pid_t shim = ::fork();
  if (shim < 0) return cleanup(errno);
  if (shim == 0) {
    // Every agent fd is >= 3 (the agent keeps 0-2 open), so these dup2s never clobber a source.
    if (pty) {
      ::dup2(slave, 0), ::dup2(slave, 1), ::dup2(slave, 2);
    } else {
      ::dup2(in[0], 0), ::dup2(o[1], 1), ::dup2(e[1], 2);
    }
    ::dup2(status[1], 3);
    if (req == nullptr) ::dup2(rq[0], 4);
    ::syscall(SYS_close_range, req == nullptr ? 5u : 4u, ~0u, 0u);
    const sigset_t mask = shim_prologue();
    run_shim(req, root, pty, mask);
  }
  ::close(status[1]);
  out.shim = shim;
  out.status_fd = status[0];
  if (pty) {
    ::close(slave);
    out.stdin_fd = out.stdout_fd = master;
    out.stderr_fd = -1;
  } else {
    ::close(in[0]), ::close(o[1]), ::close(e[1]);
    out.stdin_fd = in[1];
    out.stdout_fd = o[0];
    out.stderr_fd = e[0];
  }
  if (req == nullptr) ::close(rq[0]), *request_fd = rq[1];
  return 0;
}

}  // namespace

int fork_spare(const std::string& root, SpareShim& out) {
  SpareShim s;
  const int rc = fork_shim(nullptr, root, s.h, &s.request_fd, &s.request_max);
  if (rc == 0) s.shim = s.h.shim, out = s;
  return rc;
}

int start_spare(SpareShim& spare, std::string_view encoded, ShimHandles& out) {
  int rc = 0;
  if (encoded.size() > spare.request_max) {
    rc = -EINVAL;
  } else {
    std::size_t off = 0;
    while (off < encoded.size()) {
      const ssize_t n = ::write(spare.request_fd, encoded.data() + off, encoded.size() - off);
      if (n > 0) {
        off += static_cast<std::size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        // EPIPE: the spare is gone (SIGPIPE is ignored by the agent). EAGAIN (the pipe is non-blocking): it does not
        // read, and a pipe smaller than the request (a uid over pipe-user-pages-soft gets 8 KiB) must not block PID 1.
        rc = -(n < 0 ? errno : EIO);
        break;
      }
    }
  }
  if (rc < 0) {
    drop_spare(spare);
    return rc;
  }
  ::close(spare.request_fd);
  out = spare.h;
  spare = SpareShim{};
  return 0;
}

void drop_spare(SpareShim& spare) {
  for (int fd : {spare.request_fd, spare.h.status_fd, spare.h.stdin_fd, spare.h.stdout_fd, spare.h.stderr_fd})
    if (fd >= 0) ::close(fd);
  spare = SpareShim{};
}

int start_shim(const StartRequest& req, const std::string& root, ShimHandles& out) {
  return fork_shim(&req, root, out, nullptr, nullptr);
}

}  // namespace berth::agent
