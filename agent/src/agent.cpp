// berth-agent: the in-sandbox agent. One epoll loop serves every connection, process and file request
// (docs/agent-protocol.md); init duties (reaping, signal forwarding) ride on the same loop through a signalfd.
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "berth/agent/protocol.hpp"
#include "confined_fs.hpp"
#include "exec_shim.hpp"

namespace berth::agent {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::uint32_t kIn = EPOLLIN;  // (glibc's EPOLL* are enumerators)
constexpr std::uint32_t kOut = EPOLLOUT;
constexpr std::size_t kOutHigh = 1u << 20;         // stop reading process output above this many unsent bytes
constexpr std::size_t kOutLow = 256u << 10;        // resume below this
constexpr std::size_t kStdinHigh = 4u << 20;       // stop reading a connection while a process has this much stdin
constexpr std::size_t kMaxRequestsPerConn = 4096;  // processes + open file requests per connection
// The spare shim is forked once no process is younger than this: a fork (~1 ms on a small VM) while a process
// starts, runs briefly and exits would delay that process's STARTED, output and EXIT, which the spare is there to
// speed up. Short execs end first (the fork then falls between requests); long ones get it after this delay.
constexpr auto kSpareDelay = std::chrono::milliseconds(20);

/** One structured log line on stderr: {"event":"agent.x","k":"v"...}. Event names are stable. */
void log_event(const char* event, std::initializer_list<std::pair<const char*, std::string>> fields = {}) {
  std::string line = std::string("{\"event\":\"") + event + "\"";
  for (const auto& [k, v] : fields) {
    line += ",\"" + std::string(k) + "\":\"";
    for (char c : v) {
      if (c == '"' || c == '\\')
        line += '\\', line += c;
      else if (static_cast<unsigned char>(c) < 0x20)
        line += '?';
      else
        line += c;
    }
    line += '"';
  }
  line += "}\n";
  ssize_t ignored = ::write(2, line.data(), line.size());
  (void)ignored;
}

struct Options {
  std::string listen_path;
  bool stdio = false;
  bool init_only = false;  ///< --init-only: no connection at all, only the init duties (the "exec" transport's main)
  std::string root = "/workspace";
  bool use_openat2 = true;
  std::uint64_t output_cap = 64ull << 20;
  int grace_ms = 10000;
  mode_t socket_mode = 0600;  ///< --socket-mode: 0666 when the host side is another, unprivileged uid
  bool spare = true;          ///< keep a spare shim forked ahead of the next request (--no-spare: off)
};

struct Connection;

struct Process {
  Connection* conn = nullptr;  // null once the connection is gone (the tree is being killed)
  std::uint32_t channel = 0;
  ShimHandles h;
  bool pty = false;
  pid_t pid = 0;
  bool started = false, exec_failed = false, exited = false, status_eof = false;
  int exec_errno = 0, wait_status = 0;
  bool out_eof = false, err_eof = false;
  std::string stdin_buf;
  bool stdin_close_pending = false, stdin_closed = false;
  std::uint64_t cap = 0, forwarded = 0, dropped = 0;
  bool timed_out = false, kill_sent = false;
  bool shim_reaped = false;  // the SIGCHLD handler reaped the shim already (its pid may be reused since)
  std::optional<Clock::time_point> deadline;
  Clock::time_point started_at = Clock::now();  ///< when its START arrived
  std::string status_partial;
};

/** True once a process's output may be forwarded: after STARTED, or once the start has failed. */
bool output_ready(const Process* p) {
  return p->started || p->exec_failed || p->status_eof;
}

struct FileRead {
  int fd = -1;
  std::uint64_t sent = 0;
};

struct FileWrite {
  int fd = -1;
  std::uint64_t written = 0;
};

struct Connection {
  int rfd = -1, wfd = -1;
  bool is_stdio = false;
  FrameDecoder decoder;
  std::string out;
  std::size_t out_pos = 0;
  bool hello = false;
  bool closing = false;    // flush then close (after a framing error)
  bool congested = false;  // output paused for backpressure
  bool read_paused = false;
  std::map<std::uint32_t, Process*> procs;
  std::map<std::uint32_t, FileRead> reads;
  std::map<std::uint32_t, FileWrite> writes;
  std::size_t pending() const { return out.size() - out_pos; }
};

class Agent {
 public:
  explicit Agent(Options o) : opt_(std::move(o)), fs_(opt_.root, opt_.use_openat2) {}
  int run();

 private:
  void watch(int fd, std::uint32_t events, std::function<void(std::uint32_t)> fn) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    if (::epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev) != 0) ::epoll_ctl(ep_, EPOLL_CTL_MOD, fd, &ev);
    handlers_[fd] = std::move(fn);
  }
  void rearm(int fd, std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    ::epoll_ctl(ep_, EPOLL_CTL_MOD, fd, &ev);
  }
  void unwatch(int fd) {
    ::epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
    handlers_.erase(fd);
  }

  void add_connection(int rfd, int wfd, bool is_stdio);
  void on_conn_readable(Connection* c);
  void on_conn_writable(Connection* c);
  void close_connection(Connection* c);
  void send(Connection* c, MsgType t, std::uint32_t ch, std::string_view payload);
  void send_error(Connection* c, std::uint32_t ch, ErrorCode code, int err, std::uint16_t about, std::string msg);
  void update_conn_interest(Connection* c);
  void handle_frame(Connection* c, Frame& f);

  /** `encoded`: the START payload `req` was decoded from (what a spare shim is handed, decoded the same way). */
  void start_process(Connection* c, std::uint32_t ch, const StartRequest& req, std::string_view encoded);
  void on_status(Process* p);
  void on_output(Process* p, int fd, int stream);
  void on_stdin_writable(Process* p);
  void update_proc_interest(Process* p);
  void close_stdin(Process* p);
  void maybe_finish(Process* p);
  /** SIGUSR1 to the process's shim (kill its tree) unless already sent or the shim is done; true if sent. */
  bool kill_tree(Process* p);
  /** A deadline of `p` still matters: not killed yet, and its shim has not reported the end. */
  static bool deadline_pending(const Process& p) {
    return p.deadline && !p.kill_sent && !p.exited && !p.status_eof && !p.shim_reaped;
  }
  void on_signal();

  void file_request(Connection* c, const Frame& f);
  void pump_reads();

  Options opt_;
  ConfinedFs fs_;
  int ep_ = -1, sfd_ = -1, listen_fd_ = -1;
  std::unordered_map<int, std::function<void(std::uint32_t)>> handlers_;
  std::vector<std::unique_ptr<Connection>> conns_;
  std::vector<std::unique_ptr<Process>> procs_;
  bool terminating_ = false;
  bool stdio_closed_ = false;        ///< the --stdio connection ended (an agent without --listen then exits)
  SpareShim spare_;                  ///< the next non-PTY START's shim, forked while the agent had nothing to do
  Clock::time_point spare_retry_{};  ///< after a failed or dead spare, not forked again before this
  std::chrono::milliseconds spare_backoff_{0};  ///< doubles per failure in a row (100 ms .. 10 s), 0 after a use
  /** Backs off after a spare failed (its fork, or it died unused: pids limit, OOM, killed); logs the first of a run. */
  void spare_failed(int err);
  void spare_died();
  /** When a missing spare may be forked (kSpareDelay after the youngest process's START, or after a failure); nullopt
   *  if none is wanted (one is there, --no-spare, shutting down, no way in). */
  std::optional<Clock::time_point> spare_due() const;
  void refill_spare();
  std::optional<Clock::time_point> grace_deadline_;
};

void Agent::send(Connection* c, MsgType t, std::uint32_t ch, std::string_view payload) {
  if (!c || c->wfd < 0) return;
  c->out += encode_frame(t, ch, payload);
  on_conn_writable(c);
}

void Agent::send_error(Connection* c, std::uint32_t ch, ErrorCode code, int err, std::uint16_t about, std::string msg) {
  ErrorInfo e;
  e.code = code;
  e.sys_errno = static_cast<std::uint32_t>(err);
  e.about_type = about;
  e.message = std::move(msg);
  send(c, MsgType::kError, ch, e.encode());
}

void Agent::on_conn_writable(Connection* c) {
  while (c->pending() > 0) {
    const ssize_t n = ::write(c->wfd, c->out.data() + c->out_pos, c->pending());
    if (n > 0) {
      c->out_pos += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    c->closing = true;  // peer gone: drop what is queued
    c->out.clear(), c->out_pos = 0;
    break;
  }
  if (c->out_pos > 0 && (c->out_pos > (1u << 16) || c->pending() == 0)) c->out.erase(0, c->out_pos), c->out_pos = 0;
  if (c->closing && c->pending() == 0) return close_connection(c);
  update_conn_interest(c);
}

void Agent::update_conn_interest(Connection* c) {
  if (c->rfd < 0) return;
  const bool was = c->congested;
  if (c->pending() > kOutHigh) c->congested = true;
  if (c->pending() < kOutLow) c->congested = false;
  if (c->wfd >= 0 && c->wfd != c->rfd) rearm(c->wfd, c->pending() ? kOut : 0u);
  if (c->rfd >= 0) {
    std::uint32_t ev = c->read_paused || c->closing ? 0u : kIn;
    if (c->wfd == c->rfd && c->pending()) ev |= EPOLLOUT;
    rearm(c->rfd, ev);
  }
  if (was != c->congested)
    for (auto& [ch, p] : c->procs)
      update_proc_interest(p);
}

void Agent::add_connection(int rfd, int wfd, bool is_stdio) {
  auto c = std::make_unique<Connection>();
  c->rfd = rfd, c->wfd = wfd, c->is_stdio = is_stdio;
  Connection* raw = c.get();
  conns_.push_back(std::move(c));
  watch(rfd, EPOLLIN, [this, raw](std::uint32_t ev) {
    // The peer hung up while reading is paused (a process's stdin backlog) or the connection is closing: nobody is
    // left to read or answer, so close it now (its processes are killed) instead of spinning on EPOLLHUP.
    if ((ev & (EPOLLHUP | EPOLLERR)) && (raw->read_paused || raw->closing)) return close_connection(raw);
    if (ev & EPOLLOUT) on_conn_writable(raw);
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_conn_readable(raw);
  });
  if (wfd != rfd) watch(wfd, 0, [this, raw](std::uint32_t) { on_conn_writable(raw); });
}

void Agent::on_conn_readable(Connection* c) {
  char buf[65536];
  for (int i = 0; i < 16 && !c->read_paused && !c->closing; ++i) {
    const ssize_t n = ::read(c->rfd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n <= 0) {
      close_connection(c);
      return;
    }
    c->decoder.feed(buf, static_cast<std::size_t>(n));
    Frame f;
    for (;;) {
      const auto st = c->decoder.next(f);
      if (st == FrameDecoder::Status::kNeedMore) break;
      if (st == FrameDecoder::Status::kTooLarge) {
        log_event("agent.protocol_error", {{"reason", "frame too large"}});
        send_error(c, 0, ErrorCode::kProtocol, 0, 0, "frame length exceeds the maximum payload");
        c->closing = true;
        break;
      }
      handle_frame(c, f);
      if (c->rfd < 0) return;
      if (c->closing) break;
    }
  }
  if (c->closing) on_conn_writable(c);
}

void Agent::close_connection(Connection* c) {
  if (c->rfd < 0) return;
  if (c->is_stdio) stdio_closed_ = true;
  for (auto& [ch, p] : c->procs) {
    p->conn = nullptr;
    kill_tree(p);
  }
  c->procs.clear();
  for (auto& [ch, r] : c->reads)
    ::close(r.fd);
  for (auto& [ch, w] : c->writes)
    ::close(w.fd);
  c->reads.clear(), c->writes.clear();
  unwatch(c->rfd);
  if (c->wfd != c->rfd) unwatch(c->wfd);
  if (!c->is_stdio) ::close(c->rfd);
  c->rfd = c->wfd = -1;
  c->out.clear(), c->out_pos = 0;
  log_event("agent.connection_closed");  // the object itself is freed at the end of the loop iteration
}

void Agent::handle_frame(Connection* c, Frame& f) {
  const auto type = static_cast<MsgType>(f.type);
  if (type == MsgType::kHello) {
    PayloadReader r(f.payload);
    const auto lo = r.u16(), hi = r.u16();
    if (r.failed()) return send_error(c, f.channel, ErrorCode::kBadPayload, 0, f.type, "HELLO payload too short");
    if (hi < kProtocolMinVersion || lo > kProtocolVersion) {
      send_error(
          c, 0, ErrorCode::kUnsupportedVersion, 0, f.type,
          "agent speaks versions " + std::to_string(kProtocolMinVersion) + ".." + std::to_string(kProtocolVersion));
      c->closing = true;
      return;
    }
    c->hello = true;
    PayloadWriter w;
    w.u16(std::min<std::uint16_t>(hi, kProtocolVersion)).u32(kMaxPayload).bytes("berth-agent/1");
    w.u32(fs_.uses_openat2() ? 1u : 0u).u32(static_cast<std::uint32_t>(::getpid()));
    return send(c, MsgType::kHelloOk, 0, w.str());
  }
  if (type == MsgType::kPing) return send(c, MsgType::kPong, f.channel, f.payload);
  if (type == MsgType::kPong || type == MsgType::kError) return;  // nothing to answer
  if (!c->hello) return send_error(c, f.channel, ErrorCode::kNotReady, 0, f.type, "HELLO first");
  switch (type) {
    case MsgType::kStart: {
      auto req = StartRequest::decode(f.payload);
      if (!req) return send_error(c, f.channel, ErrorCode::kBadPayload, 0, f.type, "malformed START");
      if (f.channel == 0 || c->procs.count(f.channel) || c->reads.count(f.channel) || c->writes.count(f.channel))
        return send_error(c, f.channel, ErrorCode::kBadChannel, 0, f.type, "channel 0 or in use");
      if (c->procs.size() + c->reads.size() + c->writes.size() >= kMaxRequestsPerConn)
        return send_error(c, f.channel, ErrorCode::kLimit, 0, f.type, "too many processes on this connection");
      if (terminating_) return send_error(c, f.channel, ErrorCode::kLimit, 0, f.type, "agent is shutting down");
      return start_process(c, f.channel, *req, f.payload);
    }
    case MsgType::kStdin:
    case MsgType::kStdinClose:
    case MsgType::kSignal:
    case MsgType::kResize:
    case MsgType::kKill: {
      auto it = c->procs.find(f.channel);
      if (it == c->procs.end()) {
        // The process may have just exited (its EXIT is on the way): stdin for it is dropped silently.
        if (type == MsgType::kStdin || type == MsgType::kStdinClose) return;
        return send_error(c, f.channel, ErrorCode::kBadChannel, 0, f.type, "no such process");
      }
      Process* p = it->second;
      if (type == MsgType::kStdin) {
        if (!p->stdin_closed && !p->stdin_close_pending) p->stdin_buf += f.payload;
      } else if (type == MsgType::kStdinClose) {
        p->stdin_close_pending = true;
      } else if (type == MsgType::kSignal) {
        PayloadReader r(f.payload);
        const auto sig = r.u32();
        const bool group = r.u8() != 0;
        if (r.failed() || sig == 0 || sig >= NSIG)
          return send_error(c, f.channel, ErrorCode::kBadPayload, 0, f.type, "malformed SIGNAL");
        if (p->pid > 0 && !p->exited && ::kill(group ? -p->pid : p->pid, static_cast<int>(sig)) != 0)
          return send_error(c, f.channel, ErrorCode::kExecFailed, errno, f.type, std::strerror(errno));
        return;
      } else if (type == MsgType::kResize) {
        PayloadReader r(f.payload);
        winsize ws{};
        ws.ws_row = r.u16();
        ws.ws_col = r.u16();
        if (r.failed()) return send_error(c, f.channel, ErrorCode::kBadPayload, 0, f.type, "malformed RESIZE");
        if (!p->pty) return send_error(c, f.channel, ErrorCode::kBadChannel, 0, f.type, "process has no PTY");
        ::ioctl(p->h.stdout_fd, TIOCSWINSZ, &ws);
        return;
      } else {
        kill_tree(p);
        return;
      }
      if (p->stdin_buf.size() > kStdinHigh) c->read_paused = true, update_conn_interest(c);
      return update_proc_interest(p);
    }
    case MsgType::kFileRead:
    case MsgType::kFileWrite:
    case MsgType::kStat:
    case MsgType::kList:
    case MsgType::kRemove:
    case MsgType::kMkdir:
      return file_request(c, f);
    case MsgType::kFileData:
    case MsgType::kFileEnd: {
      auto it = c->writes.find(f.channel);
      if (it == c->writes.end()) return;  // a failed write already got its ERROR
      auto& w = it->second;
      if (type == MsgType::kFileData) {
        std::size_t off = 0;
        while (off < f.payload.size()) {
          const ssize_t n = ::write(w.fd, f.payload.data() + off, f.payload.size() - off);
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) {
            const int e = n < 0 ? errno : EIO;
            ::close(w.fd);
            c->writes.erase(it);
            return send_error(c, f.channel, ErrorCode::kFs, e, f.type, std::strerror(e));
          }
          off += static_cast<std::size_t>(n);
        }
        w.written += f.payload.size();
        return;
      }
      const auto total = w.written;
      const int rc = ::close(w.fd);
      c->writes.erase(it);
      if (rc != 0) return send_error(c, f.channel, ErrorCode::kFs, errno, f.type, std::strerror(errno));
      return send(c, MsgType::kDone, f.channel, PayloadWriter().u64(total).str());
    }
    default:
      return send_error(c, f.channel, ErrorCode::kUnknownType, 0, f.type,
                        "unknown message type " + std::to_string(f.type));
  }
}

void Agent::file_request(Connection* c, const Frame& f) {
  const auto type = static_cast<MsgType>(f.type);
  PayloadReader r(f.payload);
  const std::string path = r.bytes();
  const auto uid = r.u32(), gid = r.u32();
  std::uint32_t mode = 0;
  std::uint8_t flag = 0;
  if (type == MsgType::kFileWrite) mode = r.u32();
  if (type == MsgType::kRemove) flag = r.u8();
  if (type == MsgType::kMkdir) mode = r.u32(), flag = r.u8();
  if (r.failed()) return send_error(c, f.channel, ErrorCode::kBadPayload, 0, f.type, "malformed file request");
  if (f.channel == 0 || c->reads.count(f.channel) || c->writes.count(f.channel) || c->procs.count(f.channel))
    return send_error(c, f.channel, ErrorCode::kBadChannel, 0, f.type, "channel 0 or in use");
  if (c->procs.size() + c->reads.size() + c->writes.size() >= kMaxRequestsPerConn)
    return send_error(c, f.channel, ErrorCode::kLimit, 0, f.type, "too many open requests on this connection");
  FsIdentity as(uid, gid);
  if (!as.ok()) return send_error(c, f.channel, ErrorCode::kPermission, EPERM, f.type, "agent is not root");
  auto fail = [&](int rc) { send_error(c, f.channel, ErrorCode::kFs, -rc, f.type, std::strerror(-rc)); };
  switch (type) {
    case MsgType::kFileRead: {
      const int fd = fs_.open_read(path);
      if (fd < 0) return fail(fd);
      c->reads[f.channel] = FileRead{fd, 0};
      return;  // streamed by pump_reads()
    }
    case MsgType::kFileWrite: {
      const int fd = fs_.open_write(path, mode ? mode & 07777 : 0644);
      if (fd < 0) return fail(fd);
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
      c->writes[f.channel] = FileWrite{fd, 0};
      return;
    }
    case MsgType::kStat: {
      FileInfo info;
      if (const int rc = fs_.stat(path, info); rc < 0) return fail(rc);
      PayloadWriter w;
      info.encode_into(w);
      return send(c, MsgType::kStatResult, f.channel, w.str());
    }
    case MsgType::kList: {
      std::vector<FileInfo> entries;
      if (const int rc = fs_.list(path, entries); rc < 0) return fail(rc);
      std::size_t i = 0;
      while (i < entries.size()) {
        PayloadWriter body;
        std::uint32_t n = 0;
        for (; i < entries.size() && body.str().size() < kMaxChunk; ++i, ++n)
          entries[i].encode_into(body);
        send(c, MsgType::kListEntries, f.channel, PayloadWriter().u32(n).str() + body.str());
      }
      return send(c, MsgType::kDone, f.channel, PayloadWriter().u64(entries.size()).str());
    }
    case MsgType::kRemove:
      if (const int rc = fs_.remove(path, flag != 0); rc < 0) return fail(rc);
      return send(c, MsgType::kDone, f.channel, PayloadWriter().u64(0).str());
    case MsgType::kMkdir:
      if (const int rc = fs_.mkdir(path, mode ? mode & 07777 : 0755, flag != 0); rc < 0) return fail(rc);
      return send(c, MsgType::kDone, f.channel, PayloadWriter().u64(0).str());
    default:
      return;
  }
}

void Agent::pump_reads() {
  char buf[kMaxChunk];
  for (auto& cu : conns_) {
    Connection* c = cu.get();
    // send() may find the peer gone and close the connection, which clears c->reads under this loop: stop then
    // (a client hanging up mid-download used to crash the agent here, and the session with it).
    for (auto it = c->reads.begin(); c->rfd >= 0 && it != c->reads.end() && !c->congested;) {
      const ssize_t n = ::read(it->second.fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n > 0) {
        it->second.sent += static_cast<std::uint64_t>(n);
        const auto ch = it->first;
        ++it;  // before send(): a close erases every read of the connection
        send(c, MsgType::kFileData, ch, std::string_view(buf, static_cast<std::size_t>(n)));
        continue;
      }
      const int e = n < 0 ? errno : 0;
      ::close(it->second.fd);
      const auto ch = it->first;
      const auto total = it->second.sent;
      it = c->reads.erase(it);
      if (e)
        send_error(c, ch, ErrorCode::kFs, e, static_cast<std::uint16_t>(MsgType::kFileRead), std::strerror(e));
      else
        send(c, MsgType::kDone, ch, PayloadWriter().u64(total).str());
    }
  }
}

void Agent::start_process(Connection* c, std::uint32_t ch, const StartRequest& req, std::string_view encoded) {
  if ((req.uid != kKeepId && req.uid != ::geteuid()) || (req.gid != kKeepId && req.gid != ::getegid())) {
    if (::geteuid() != 0) return send_error(c, ch, ErrorCode::kPermission, EPERM, 0x10, "agent is not root");
  }
  auto p = std::make_unique<Process>();
  p->conn = c;
  p->channel = ch;
  p->pty = (req.flags & kStartPty) != 0;
  p->cap = req.output_cap ? req.output_cap : opt_.output_cap;
  if (req.timeout_ms) p->deadline = Clock::now() + std::chrono::milliseconds(req.timeout_ms);
  int rc = -EAGAIN;
  if (spare_.ready() && !p->pty) {
    // A shim that died but whose SIGCHLD is not read yet: its program process may still take the request (until its
    // PDEATHSIG lands) and nobody would report on it. Reaped here, the spare is dropped and a fresh shim runs it.
    int st = 0;
    if (::waitpid(spare_.shim, &st, WNOHANG) == spare_.shim) spare_died();
  }
  if (spare_.ready() && !p->pty) {
    if (encoded.size() <= spare_.request_max) {
      rc = start_spare(spare_, encoded, p->h);  // EPIPE/EAGAIN: it is gone or stuck, dropped: a fresh shim
      if (rc == 0) spare_backoff_ = std::chrono::milliseconds(0);
    }
  }
  if (rc < 0) rc = start_shim(req, fs_.root(), p->h);
  if (rc < 0) return send_error(c, ch, ErrorCode::kExecFailed, -rc, 0x10, std::strerror(-rc));
  for (int fd : {p->h.status_fd, p->h.stdin_fd, p->h.stdout_fd, p->h.stderr_fd})
    if (fd >= 0) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  Process* raw = p.get();
  procs_.push_back(std::move(p));
  c->procs[ch] = raw;
  watch(raw->h.status_fd, EPOLLIN, [this, raw](std::uint32_t) { on_status(raw); });
  if (raw->pty) {
    watch(raw->h.stdout_fd, EPOLLIN, [this, raw](std::uint32_t ev) {
      if (ev & EPOLLOUT) on_stdin_writable(raw);
      if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_output(raw, raw->h.stdout_fd, 1);
    });
  } else {
    watch(raw->h.stdout_fd, EPOLLIN, [this, raw](std::uint32_t) { on_output(raw, raw->h.stdout_fd, 1); });
    watch(raw->h.stderr_fd, EPOLLIN, [this, raw](std::uint32_t) { on_output(raw, raw->h.stderr_fd, 2); });
    watch(raw->h.stdin_fd, 0, [this, raw](std::uint32_t ev) {
      if (ev & (EPOLLERR | EPOLLHUP)) return close_stdin(raw);  // the reader is gone (reported whatever the mask)
      on_stdin_writable(raw);
    });
  }
  update_proc_interest(raw);
}

void Agent::update_proc_interest(Process* p) {
  // Output is read only once STARTED went out (or the start failed), so it can never overtake STARTED.
  const bool paused = (p->conn && p->conn->congested) || !output_ready(p);
  const bool want_in = !(p->stdin_buf.empty() && !p->stdin_close_pending) && !p->stdin_closed;
  if (p->pty) {
    if (p->out_eof) return;
    rearm(p->h.stdout_fd, (paused ? 0u : kIn) | (want_in ? kOut : 0u));
    return;
  }
  if (!p->out_eof) rearm(p->h.stdout_fd, paused ? 0u : kIn);
  if (!p->err_eof) rearm(p->h.stderr_fd, paused ? 0u : kIn);
  if (!p->stdin_closed) rearm(p->h.stdin_fd, want_in ? kOut : 0u);
}

void Agent::close_stdin(Process* p) {
  if (p->stdin_closed || p->h.stdin_fd < 0) return;
  unwatch(p->h.stdin_fd);
  ::close(p->h.stdin_fd);
  p->h.stdin_fd = -1;
  p->stdin_closed = true;
  p->stdin_buf.clear();
  if (p->conn && p->conn->read_paused) p->conn->read_paused = false, update_conn_interest(p->conn);
}

void Agent::on_stdin_writable(Process* p) {
  while (!p->stdin_buf.empty()) {
    const ssize_t n = ::write(p->h.stdin_fd, p->stdin_buf.data(), p->stdin_buf.size());
    if (n > 0) {
      p->stdin_buf.erase(0, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    p->stdin_buf.clear();  // EPIPE: the reader is gone; what it did not read is dropped
    p->stdin_close_pending = true;
    break;
  }
  if (p->stdin_buf.empty() && p->stdin_close_pending && !p->stdin_closed) {
    if (p->pty) {
      termios t{};
      char eof = 4;
      if (::tcgetattr(p->h.stdin_fd, &t) == 0) eof = static_cast<char>(t.c_cc[VEOF]);
      if (::write(p->h.stdin_fd, &eof, 1) == 1) p->stdin_close_pending = false;
    } else {
      close_stdin(p);
      return;
    }
  }
  if (p->conn && p->conn->read_paused && p->stdin_buf.size() < kStdinHigh / 2) {
    p->conn->read_paused = false;
    update_conn_interest(p->conn);
  }
  update_proc_interest(p);
}

void Agent::on_output(Process* p, int fd, int stream) {
  char buf[kMaxChunk];
  for (int i = 0; i < 4; ++i) {
    if ((p->conn && p->conn->congested) || !output_ready(p)) return;
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) {  // EOF, or EIO on a PTY master once every slave is closed
      unwatch(fd);
      if (stream == 1)
        p->out_eof = true;
      else
        p->err_eof = true;
      if (p->pty) p->err_eof = true;
      return maybe_finish(p);
    }
    std::size_t len = static_cast<std::size_t>(n);
    if (!p->started) continue;  // a start that failed late (killed before its exec was reported): nothing goes out
    const std::uint64_t room = p->cap > p->forwarded ? p->cap - p->forwarded : 0;
    const std::size_t fwd = static_cast<std::size_t>(std::min<std::uint64_t>(room, len));
    p->dropped += len - fwd;
    if (fwd == 0 || !p->conn) continue;
    p->forwarded += fwd;
    std::string payload;
    payload.reserve(fwd + 1);
    payload.push_back(static_cast<char>(stream));
    payload.append(buf, fwd);
    send(p->conn, MsgType::kOutput, p->channel, payload);
  }
}

void Agent::on_status(Process* p) {
  char buf[64];
  for (;;) {
    const ssize_t n = ::read(p->h.status_fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return;  // EAGAIN
    if (n == 0) {
      unwatch(p->h.status_fd);
      ::close(p->h.status_fd);
      p->h.status_fd = -1;
      p->status_eof = true;
      update_proc_interest(p);
      return maybe_finish(p);
    }
    p->status_partial.append(buf, static_cast<std::size_t>(n));
    while (p->status_partial.size() >= 5) {
      const char tag = p->status_partial[0];
      std::int32_t v = 0;
      std::memcpy(&v, p->status_partial.data() + 1, 4);
      p->status_partial.erase(0, 5);
      if (tag == kShimStarted) {
        p->pid = v;
        p->started = true;
        if (p->conn)
          send(p->conn, MsgType::kStarted, p->channel, PayloadWriter().u32(static_cast<std::uint32_t>(v)).str());
        update_proc_interest(p);
      } else if (tag == kShimExecFailed) {
        p->exec_failed = true;
        p->exec_errno = v;
        update_proc_interest(p);
      } else if (tag == kShimExited) {
        p->exited = true;
        p->wait_status = v;
        return maybe_finish(p);  // (the last record: nothing is left to read)
      }
    }
  }
}

void Agent::maybe_finish(Process* p) {
  // The shim's exit record comes after its sweep (kill_all_descendants returned: every process of the exec is dead
  // and reaped), so EXIT goes out then, without waiting for the shim's own exit: the SIGCHLD path reaps it. Without
  // the record (the shim was killed) the status pipe's EOF says the shim is gone.
  if ((!p->status_eof && !p->exited) || !p->out_eof || !p->err_eof) return;
  if (p->h.status_fd >= 0) {
    unwatch(p->h.status_fd);
    ::close(p->h.status_fd);
    p->h.status_fd = -1;
  }
  if (Connection* c = p->conn) {
    if (p->exec_failed || !p->started) {
      int e = p->exec_failed ? p->exec_errno : ECHILD;
      if (e == ECANCELED && p->timed_out) e = ETIMEDOUT;  // its deadline passed before the program had started
      send_error(c, p->channel, ErrorCode::kExecFailed, e, 0x10, std::strerror(e));
    } else {
      ExitInfo x;
      if (!p->exited) {
        x.signaled = true, x.code = SIGKILL;  // the shim itself was killed
      } else if (WIFSIGNALED(p->wait_status)) {
        x.signaled = true, x.code = WTERMSIG(p->wait_status);
      } else {
        x.code = WEXITSTATUS(p->wait_status);
      }
      x.timed_out = p->timed_out;
      x.output_dropped = p->dropped;
      send(c, MsgType::kExit, p->channel, x.encode());
    }
    c->procs.erase(p->channel);
    if (c->read_paused) c->read_paused = false, update_conn_interest(c);
  }
  if (p->h.stdin_fd >= 0) {
    if (handlers_.count(p->h.stdin_fd)) unwatch(p->h.stdin_fd);
    ::close(p->h.stdin_fd);
  }
  if (p->h.stderr_fd >= 0) ::close(p->h.stderr_fd);
  if (!p->pty && p->h.stdout_fd >= 0) ::close(p->h.stdout_fd);
  std::erase_if(procs_, [p](const auto& u) { return u.get() == p; });
}

bool Agent::kill_tree(Process* p) {
  // status_eof, exited: the shim has exited or is exiting (after its own sweep) and may be reaped: its pid could be
  // reused.
  if (p->kill_sent || p->h.shim <= 0 || p->status_eof || p->exited || p->shim_reaped) return false;
  p->kill_sent = true;
  ::kill(p->h.shim, SIGUSR1);
  return true;
}

void Agent::on_signal() {
  signalfd_siginfo si{};
  while (::read(sfd_, &si, sizeof si) == sizeof si) {
    if (si.ssi_signo == SIGCHLD) {
      int st = 0;
      pid_t r;
      while ((r = ::waitpid(-1, &st, WNOHANG)) > 0) {  // shims and orphans alike; shims report over their pipes
        for (auto& p : procs_)
          if (p->h.shim == r) p->shim_reaped = true;
        if (r == spare_.shim) spare_died();
      }
      continue;
    }
    if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
      log_event("agent.terminating", {{"signal", std::to_string(si.ssi_signo)}});
      terminating_ = true;
      grace_deadline_ = Clock::now() + std::chrono::milliseconds(opt_.grace_ms);
      for (auto& p : procs_)
        if (p->pid > 0 && !p->exited)  // after 'X' the shim has reaped that pid: it may be reused
          ::kill(-p->pid, static_cast<int>(si.ssi_signo)), ::kill(p->pid, static_cast<int>(si.ssi_signo));
      if (listen_fd_ >= 0)
        unwatch(listen_fd_), ::close(listen_fd_), listen_fd_ = -1, ::unlink(opt_.listen_path.c_str());
      drop_spare(spare_);
    }
  }
}

std::optional<Clock::time_point> Agent::spare_due() const {
  // Only an agent that listens: a --stdio agent serves one connection of the "exec" transport, a process per pooled
  // connection already, and a spare each would double the pids those take.
  if (spare_.ready() || !opt_.spare || terminating_ || listen_fd_ < 0) return std::nullopt;
  Clock::time_point due = spare_retry_;
  for (const auto& p : procs_)
    due = std::max(due, p->started_at + kSpareDelay);
  return due;
}

void Agent::spare_failed(int err) {
  if (spare_backoff_.count() == 0) log_event("agent.spare_failed", {{"errno", std::to_string(err)}});
  spare_backoff_ = std::clamp(spare_backoff_ * 2, std::chrono::milliseconds(100), std::chrono::milliseconds(10000));
  spare_retry_ = Clock::now() + spare_backoff_;  // e.g. at the pids limit: never a fork per loop turn
}

void Agent::spare_died() {
  drop_spare(spare_);
  spare_failed(ECHILD);
}

void Agent::refill_spare() {
  const auto due = spare_due();
  const auto now = Clock::now();
  if (!due || now < *due) return;
  if (const int rc = fork_spare(fs_.root(), spare_); rc < 0) spare_failed(-rc);
}

int Agent::run() {
  for (int fd = 0; fd < 3; ++fd)
    if (::fcntl(fd, F_GETFD) < 0) ::open("/dev/null", O_RDWR);  // keep 0-2 taken: the shim relies on it
  if (::getpid() != 1) ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  if (::geteuid() == 0) ::setgroups(0, nullptr);  // file access checks use the fs uid/gid only
  reset_signal_dispositions();  // SIGPIPE ignored, the rest default: what every started process inherits
  sigset_t mask;
  sigemptyset(&mask);
  for (int s : {SIGCHLD, SIGTERM, SIGINT})
    sigaddset(&mask, s);
  sigset_t blocked = mask;
  sigaddset(&blocked, SIGUSR1);  // inherited by each shim until it installs its own mask (SIGUSR1 = kill the tree)
  sigaddset(&blocked, SIGHUP);   // the agent ignores hangups (its dispositions are reset to default just above)
  ::sigprocmask(SIG_BLOCK, &blocked, nullptr);
  sfd_ = ::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  ep_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (sfd_ < 0 || ep_ < 0) return std::perror("berth-agent: signalfd/epoll"), 1;
  watch(sfd_, EPOLLIN, [this](std::uint32_t) { on_signal(); });

  if (!opt_.listen_path.empty()) {
    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (opt_.listen_path.size() >= sizeof addr.sun_path)
      return std::fprintf(stderr, "berth-agent: socket path too long\n"), 1;
    std::memcpy(addr.sun_path, opt_.listen_path.c_str(), opt_.listen_path.size() + 1);
    ::unlink(opt_.listen_path.c_str());
    const mode_t old = ::umask(0777 & ~opt_.socket_mode);  // the socket is created with its final mode
    const int rc = ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ::umask(old);
    if (rc != 0 || ::listen(listen_fd_, 128) != 0) return std::perror("berth-agent: bind/listen"), 1;
    // The socket belongs to whoever owns its directory (the host side), mode 0600: the sandbox's own user cannot
    // connect unless it owns that directory. An unprivileged host side (which can chown neither the directory nor
    // the socket) asks for --socket-mode 0666 and guards the socket with its directory's mode instead.
    const auto slash = opt_.listen_path.rfind('/');
    const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : opt_.listen_path.substr(0, slash));
    struct stat st {};
    if (::geteuid() == 0 && ::stat(dir.c_str(), &st) == 0) ::chown(opt_.listen_path.c_str(), st.st_uid, st.st_gid);
    watch(listen_fd_, EPOLLIN, [this](std::uint32_t) {
      for (;;) {
        const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        add_connection(fd, fd, false);
      }
    });
    log_event("agent.listening", {{"path", opt_.listen_path}, {"root", opt_.root}});
  }
  if (opt_.stdio) {
    ::fcntl(0, F_SETFL, ::fcntl(0, F_GETFL) | O_NONBLOCK);
    ::fcntl(1, F_SETFL, ::fcntl(1, F_GETFL) | O_NONBLOCK);
    add_connection(0, 1, true);
    log_event("agent.stdio", {{"root", opt_.root}});
  }

  std::vector<epoll_event> events(64);
  for (;;) {
    if (terminating_ && procs_.empty()) break;
    // A --stdio agent without --listen serves one connection (an engine exec or attach stream): once it ended and
    // the processes it started are gone, nothing can reach the agent any more.
    if (stdio_closed_ && listen_fd_ < 0 && procs_.empty()) break;
    refill_spare();
    int timeout = -1;
    const auto now = Clock::now();
    auto consider = [&](Clock::time_point t) {
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t - now).count() + 1;
      timeout = timeout < 0 ? static_cast<int>(std::max<long>(0, ms)) : std::min<int>(timeout, std::max<long>(0, ms));
    };
    for (auto& p : procs_)
      if (deadline_pending(*p)) consider(*p->deadline);
    if (grace_deadline_) consider(*grace_deadline_);
    if (const auto due = spare_due()) consider(*due);
    for (auto& c : conns_)
      if (!c->reads.empty() && !c->congested) timeout = 0;
    const int n = ::epoll_wait(ep_, events.data(), static_cast<int>(events.size()), timeout);
    for (int i = 0; i < n; ++i) {
      auto it = handlers_.find(events[i].data.fd);
      if (it != handlers_.end()) {
        auto fn = it->second;  // the handler may unwatch itself
        fn(events[i].events);
      }
    }
    const auto after = Clock::now();
    for (auto& p : procs_) {
      if (deadline_pending(*p) && after >= *p->deadline && kill_tree(p.get())) p->timed_out = true;
    }
    if (grace_deadline_ && after >= *grace_deadline_) {
      for (auto& p : procs_)
        kill_tree(p.get());
      grace_deadline_.reset();
    }
    pump_reads();
    std::erase_if(conns_, [](const auto& c) { return c->rfd < 0; });
  }
  drop_spare(spare_);
  for (auto& c : conns_)
    on_conn_writable(c.get());
  log_event("agent.exit");
  if (::getpid() == 1) ::kill(-1, SIGKILL);  // init: nothing may outlive the sandbox's main process
  return 0;
}

int usage() {
  std::fprintf(
      stderr,
      "usage: berth-agent [--listen unix:PATH] [--stdio] [--init-only] [--root DIR] [--no-openat2] [--no-spare]\n"
      "                   [--output-cap BYTES] [--grace-ms MS] [--socket-mode 0600|0660|0666] [--version]\n");
  return 2;
}

}  // namespace
}  // namespace berth::agent

int main(int argc, char** argv) {
  using namespace berth::agent;
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : std::string(); };
    if (a == "--listen") {
      const std::string v = value();
      if (v.rfind("unix:", 0) != 0) return usage();
      o.listen_path = v.substr(5);
    } else if (a == "--stdio") {
      o.stdio = true;
    } else if (a == "--init-only") {
      o.init_only = true;
    } else if (a == "--root") {
      o.root = value();
    } else if (a == "--no-openat2") {
      o.use_openat2 = false;
    } else if (a == "--version") {  // (the driver's check that an agent it delivered runs: agent_volume.cpp)
      std::printf("berth-agent protocol %u\n", static_cast<unsigned>(kProtocolVersion));
      return 0;
    } else if (a == "--no-spare") {
      o.spare = false;
    } else if (a == "--output-cap") {
      o.output_cap = std::stoull(value());
    } else if (a == "--grace-ms") {
      o.grace_ms = std::stoi(value());
    } else if (a == "--socket-mode") {
      const std::string v = value();
      if (v != "0600" && v != "0660" && v != "0666") return usage();
      o.socket_mode = static_cast<mode_t>(std::stoul(v, nullptr, 8));
    } else {
      return usage();
    }
  }
  if (o.init_only != (o.listen_path.empty() && !o.stdio)) return usage();  // a way in, or --init-only alone
  try {
    Agent agent(o);
    return agent.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "berth-agent: %s\n", e.what());
    return 1;
  }
}
