#include "berth/engine/agent_client.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

namespace berth::engine {

using agent::MsgType;
using Clock = std::chrono::steady_clock;

namespace {

[[noreturn]] void broken(int err, const std::string& what) {
  throw AgentError(agent::ErrorCode::kProtocol, static_cast<std::uint32_t>(err), "agent connection: " + what);
}

AgentEvent decode_event(agent::Frame& f) {
  AgentEvent e;
  e.type = static_cast<MsgType>(f.type);
  e.channel = f.channel;
  agent::PayloadReader r(f.payload);
  switch (e.type) {
    case MsgType::kOutput:
      e.stream = r.u8();
      e.data.assign(r.rest());
      break;
    case MsgType::kFileData:
      e.data = std::move(f.payload);
      break;
    case MsgType::kStarted:
      e.pid = r.u32();
      break;
    case MsgType::kExit:
      if (auto x = agent::ExitInfo::decode(f.payload))
        e.exit = *x;
      else
        broken(0, "malformed EXIT");
      break;
    case MsgType::kError:
      if (auto x = agent::ErrorInfo::decode(f.payload))
        e.error = *x;
      else
        broken(0, "malformed ERROR");
      break;
    case MsgType::kStatResult:
      e.info = agent::FileInfo::decode_from(r);
      break;
    case MsgType::kListEntries: {
      const auto n = r.u32();
      for (std::uint32_t i = 0; i < n && !r.failed(); ++i)
        e.entries.push_back(agent::FileInfo::decode_from(r));
      break;
    }
    case MsgType::kDone:
    case MsgType::kPong:
      e.value = r.u64();
      break;
    default:
      break;
  }
  if (r.failed()) broken(0, "malformed payload of type " + std::to_string(f.type));
  return e;
}

}  // namespace

AgentClient::AgentClient(int rfd, int wfd) : rfd_(rfd), wfd_(wfd) {
  ::fcntl(rfd_, F_SETFL, ::fcntl(rfd_, F_GETFL) | O_NONBLOCK);
  if (wfd_ != rfd_) ::fcntl(wfd_, F_SETFL, ::fcntl(wfd_, F_GETFL) | O_NONBLOCK);
}

AgentClient::AgentClient(AgentClient&& o) noexcept
    : rfd_(std::exchange(o.rfd_, -1)),
      wfd_(std::exchange(o.wfd_, -1)),
      wake_fd_(std::exchange(o.wake_fd_, -1)),
      out_(std::move(o.out_)),
      out_pos_(o.out_pos_),
      decoder_(std::move(o.decoder_)),
      events_(std::move(o.events_)),
      last_channel_(o.last_channel_),
      version_(o.version_),
      agent_pid_(o.agent_pid_) {}

AgentClient::~AgentClient() {
  if (wfd_ >= 0 && wfd_ != rfd_) ::close(wfd_);
  if (rfd_ >= 0) ::close(rfd_);
}

AgentClient AgentClient::connect_unix(const std::string& path, AgentDeadline deadline) {
  // The socket's directory may be writable from inside the sandbox (a root session user keeps CAP_DAC_OVERRIDE):
  // never follow a symlink planted in place of the socket to some other host socket. The socket file is opened
  // O_PATH|O_NOFOLLOW, checked to be a socket, and connected to through its /proc/self/fd link.
  const int node = ::open(path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (node < 0) broken(errno, "open " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(node, &st) != 0 || !S_ISSOCK(st.st_mode)) {
    ::close(node);
    broken(ENOTSOCK, path + " is not a socket");
  }
  const std::string via = "/proc/self/fd/" + std::to_string(node);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, via.c_str(), via.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    const int e = errno;
    ::close(node);
    broken(e, "socket");
  }
  const int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  const int e = errno;
  ::close(node);
  if (rc != 0) {
    ::close(fd);
    broken(e, "connect " + path + ": " + std::strerror(e));
  }
  AgentClient c(fd, fd);
  c.hello(deadline);
  return c;
}

AgentClient AgentClient::over_fds(int read_fd, int write_fd, AgentDeadline deadline) {
  AgentClient c(read_fd, write_fd);
  c.hello(deadline);
  return c;
}

void AgentClient::hello(AgentDeadline deadline) {
  agent::PayloadWriter w;
  w.u16(agent::kProtocolMinVersion).u16(agent::kProtocolVersion).bytes("berth-engine-driver");
  queue(MsgType::kHello, 0, w.str());
  for (;;) {
    auto e = next_event_for(0, deadline);
    if (!e) throw AgentTimeout("agent: no HELLO answer before the deadline");
    if (e->type == MsgType::kError) raise(*e);
    if (e->type != MsgType::kHelloOk) continue;
    break;
  }
}

void AgentClient::queue(MsgType type, std::uint32_t channel, std::string_view payload) {
  out_ += agent::encode_frame(type, channel, payload);
}

void AgentClient::send_raw(std::string bytes) {
  out_ += bytes;
}

bool AgentClient::pump(AgentDeadline deadline) {
  for (;;) {
    // Flush what we can without blocking.
    while (out_pos_ < out_.size()) {
      const ssize_t n = ::write(wfd_, out_.data() + out_pos_, out_.size() - out_pos_);
      if (n > 0) {
        out_pos_ += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      broken(errno, std::string("write: ") + std::strerror(errno));
    }
    if (out_pos_ == out_.size()) out_.clear(), out_pos_ = 0;

    pollfd p[3]{};
    p[0].fd = rfd_;
    p[0].events = POLLIN;
    int n = 1;
    if (!out_.empty()) {
      if (wfd_ == rfd_)
        p[0].events |= POLLOUT;
      else
        p[1].fd = wfd_, p[1].events = POLLOUT, n = 2;
    }
    int wake = -1;
    if (wake_fd_ >= 0) {
      wake = n;
      p[n].fd = wake_fd_;
      p[n].events = POLLIN;
      ++n;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    const int rc =
        ::poll(p, static_cast<nfds_t>(n), left <= 0 ? 0 : static_cast<int>(std::min<long long>(left, 1 << 30)));
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) broken(errno, "poll");
    if (rc == 0) return false;
    // Woken: the waiter's owner has something to send. Frames that arrived too are read on the next call.
    if (wake >= 0 && (p[wake].revents & POLLIN) && !(p[0].revents & (POLLIN | POLLHUP | POLLERR))) return false;
    if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      char buf[65536];
      const ssize_t r = ::read(rfd_, buf, sizeof buf);
      if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (r < 0) broken(errno, std::string("read: ") + std::strerror(errno));
      if (r == 0) broken(0, "closed by the agent");
      decoder_.feed(buf, static_cast<std::size_t>(r));
      agent::Frame f;
      bool any = false;
      for (;;) {
        const auto st = decoder_.next(f);
        if (st == agent::FrameDecoder::Status::kNeedMore) break;
        if (st == agent::FrameDecoder::Status::kTooLarge) broken(0, "frame too large");
        if (static_cast<MsgType>(f.type) == MsgType::kHelloOk) {
          agent::PayloadReader r2(f.payload);
          version_ = r2.u16();
          r2.u32();
          r2.bytes();
          r2.u32();
          agent_pid_ = r2.u32();
        }
        events_.push_back(decode_event(f));
        any = true;
      }
      if (any) return true;
    }
  }
}

std::optional<AgentEvent> AgentClient::next_event(AgentDeadline deadline) {
  while (events_.empty()) {
    if (!pump(deadline) && events_.empty()) return std::nullopt;
  }
  AgentEvent e = std::move(events_.front());
  events_.pop_front();
  return e;
}

bool AgentClient::has_event_for(std::uint32_t channel) const {
  for (const auto& e : events_)
    if (e.channel == channel) return true;
  return false;
}

std::optional<AgentEvent> AgentClient::next_event_for(std::uint32_t channel, AgentDeadline deadline) {
  std::size_t scanned = 0;
  for (;;) {
    for (; scanned < events_.size(); ++scanned) {
      if (events_[scanned].channel == channel) {
        AgentEvent e = std::move(events_[scanned]);
        events_.erase(events_.begin() + static_cast<std::ptrdiff_t>(scanned));
        return e;
      }
    }
    if (!pump(deadline)) return std::nullopt;
  }
}

[[noreturn]] void AgentClient::raise(const AgentEvent& e) {
  throw AgentError(e.error.code, e.error.sys_errno, "agent: " + e.error.message);
}

AgentEvent AgentClient::await(std::uint32_t channel, AgentDeadline deadline, const char* what) {
  auto e = next_event_for(channel, deadline);
  if (!e) throw AgentTimeout(std::string("agent: ") + what + ": deadline passed");
  if (e->type == MsgType::kError) raise(*e);
  return std::move(*e);
}

std::uint32_t AgentClient::start(const agent::StartRequest& req) {
  const auto ch = next_channel();
  queue(MsgType::kStart, ch, req.encode());
  return ch;
}

void AgentClient::write_stdin(std::uint32_t channel, std::string_view data) {
  for (std::size_t i = 0; i < data.size(); i += agent::kMaxChunk)
    queue(MsgType::kStdin, channel, data.substr(i, agent::kMaxChunk));
}

void AgentClient::close_stdin(std::uint32_t channel) {
  queue(MsgType::kStdinClose, channel, {});
}

void AgentClient::signal(std::uint32_t channel, int signo, bool to_group) {
  queue(MsgType::kSignal, channel, agent::PayloadWriter().u32(static_cast<std::uint32_t>(signo)).u8(to_group).str());
}

void AgentClient::resize(std::uint32_t channel, std::uint16_t rows, std::uint16_t cols) {
  queue(MsgType::kResize, channel, agent::PayloadWriter().u16(rows).u16(cols).str());
}

void AgentClient::kill(std::uint32_t channel) {
  queue(MsgType::kKill, channel, {});
}

AgentRunResult AgentClient::run(const agent::StartRequest& req, std::string_view stdin_data, AgentDeadline deadline) {
  const auto ch = start(req);
  write_stdin(ch, stdin_data);
  close_stdin(ch);
  AgentRunResult res;
  for (;;) {
    auto e = next_event_for(ch, deadline);
    if (!e) {
      kill(ch);
      throw AgentTimeout("agent: process did not exit before the deadline");
    }
    switch (e->type) {
      case MsgType::kError:
        raise(*e);
      case MsgType::kStarted:
        res.pid = e->pid;
        break;
      case MsgType::kOutput:
        (e->stream == 2 ? res.err : res.out) += e->data;
        break;
      case MsgType::kExit:
        res.exit = e->exit;
        return res;
      default:
        break;
    }
  }
}

std::chrono::nanoseconds AgentClient::ping(AgentDeadline deadline) {
  const auto t0 = Clock::now();
  const auto ch = next_channel();
  queue(MsgType::kPing, ch, agent::PayloadWriter().u64(ch).str());
  await(ch, deadline, "ping");
  return Clock::now() - t0;
}

/** What is left of `deadline`, as the per-frame wait of a streaming call (at least 1 ms). */
std::chrono::milliseconds idle_until(AgentDeadline deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  return std::max(left, std::chrono::milliseconds(1));
}

std::string AgentClient::read_file(const std::string& path, std::uint32_t uid, std::uint32_t gid,
                                   AgentDeadline deadline) {
  std::string data;
  read_file(
      path, uid, gid,
      [&](std::string_view chunk) {
        data.append(chunk);
        return true;
      },
      idle_until(deadline));
  return data;
}

bool AgentClient::read_file(const std::string& path, std::uint32_t uid, std::uint32_t gid,
                            const std::function<bool(std::string_view)>& sink, std::chrono::milliseconds idle_timeout) {
  const auto ch = next_channel();
  queue(MsgType::kFileRead, ch, agent::PayloadWriter().bytes(path).u32(uid).u32(gid).str());
  for (;;) {
    auto e = await(ch, Clock::now() + idle_timeout, "read_file");
    if (e.type == MsgType::kFileData && !e.data.empty() && !sink(e.data)) return false;
    if (e.type == MsgType::kDone) return true;
  }
}

std::uint64_t AgentClient::write_file(const std::string& path, std::string_view data, std::uint32_t uid,
                                      std::uint32_t gid, std::uint32_t mode, AgentDeadline deadline) {
  const auto ch = next_channel();
  queue(MsgType::kFileWrite, ch, agent::PayloadWriter().bytes(path).u32(uid).u32(gid).u32(mode).str());
  for (std::size_t i = 0; i < data.size(); i += agent::kMaxChunk)
    queue(MsgType::kFileData, ch, data.substr(i, agent::kMaxChunk));
  queue(MsgType::kFileEnd, ch, {});
  return await(ch, deadline, "write_file").value;
}

agent::FileInfo AgentClient::stat(const std::string& path, std::uint32_t uid, std::uint32_t gid,
                                  AgentDeadline deadline) {
  const auto ch = next_channel();
  queue(MsgType::kStat, ch, agent::PayloadWriter().bytes(path).u32(uid).u32(gid).str());
  return await(ch, deadline, "stat").info;
}

std::vector<agent::FileInfo> AgentClient::list(const std::string& path, std::uint32_t uid, std::uint32_t gid,
                                               AgentDeadline deadline) {
  std::vector<agent::FileInfo> out;
  list(
      path, uid, gid,
      [&](const agent::FileInfo& e) {
        out.push_back(e);
        return true;
      },
      idle_until(deadline));
  return out;
}

bool AgentClient::list(const std::string& path, std::uint32_t uid, std::uint32_t gid,
                       const std::function<bool(const agent::FileInfo&)>& on_entry,
                       std::chrono::milliseconds idle_timeout) {
  const auto ch = next_channel();
  queue(MsgType::kList, ch, agent::PayloadWriter().bytes(path).u32(uid).u32(gid).str());
  for (;;) {
    auto e = await(ch, Clock::now() + idle_timeout, "list");
    if (e.type == MsgType::kListEntries) {
      for (const auto& entry : e.entries)
        if (!on_entry(entry)) return false;
    }
    if (e.type == MsgType::kDone) return true;
  }
}

void AgentClient::remove(const std::string& path, bool recursive, std::uint32_t uid, std::uint32_t gid,
                         AgentDeadline deadline) {
  const auto ch = next_channel();
  queue(MsgType::kRemove, ch, agent::PayloadWriter().bytes(path).u32(uid).u32(gid).u8(recursive).str());
  await(ch, deadline, "remove");
}

void AgentClient::mkdir(const std::string& path, std::uint32_t mode, bool parents, std::uint32_t uid, std::uint32_t gid,
                        AgentDeadline deadline) {
  const auto ch = next_channel();
  queue(MsgType::kMkdir, ch, agent::PayloadWriter().bytes(path).u32(uid).u32(gid).u32(mode).u8(parents).str());
  await(ch, deadline, "mkdir");
}

}  // namespace berth::engine
