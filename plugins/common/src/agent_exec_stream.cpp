// The "exec" agent transport (agent_exec_stream.hpp): one Engine API exec of the agent per connection, its hijacked
// stream pumped to and from a socketpair that an ordinary AgentClient uses.
#include "agent_exec_stream.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <thread>

#include "berth/engine/hijack.hpp"

namespace berth::engine::compat {

namespace {

/** Most bytes buffered per direction before the pump stops reading that direction's source (backpressure). */
constexpr std::size_t kPumpBuffer = 1 << 20;

/** How long the pump goes on once one side ended: after the client's close, for the stream to end (the agent has
 *  EOF on stdin and should exit at once; a stopped or wedged agent, or a stalled engine, must not hold the thread for
 *  ever); after the stream's end, for the client to take what the agent said last. */
constexpr auto kDrainLimit = std::chrono::seconds(10);

/**
 * Copies between the hijacked stream and the pump's end of the socketpair. Owns both; runs on its own detached
 * thread. Never throws.
 *
 * Rules:
 * - A side that reports POLLHUP/POLLERR is read (or found broken) in the next round, never just polled again; a
 *   hung-up stream still gives what it holds (read as the client makes room), then its EOF.
 * - When the stream ends (EOF, an error, or the engine no longer taking stdin), what the agent sent before still goes
 *   to the client (its last ERROR frame tells why), for up to kDrainLimit; then the client's end is closed (EOF).
 * - When the client's end closes, what it still had queued for the agent goes out as far as the stream takes it at
 *   once, the rest is dropped, and the stream is half-closed (the agent kills everything of a closed connection anyway,
 * and it may have stopped reading stdin); the stream then has kDrainLimit to end, and is closed regardless.
 */
void pump(std::unique_ptr<HijackedStream> stream, int local) {
  using Clock = std::chrono::steady_clock;
  FrameDemuxer demuxer;
  std::string to_local;   // the agent's frames (stdout payload), for the client
  std::string to_stream;  // the client's bytes, for the agent's stdin
  bool local_eof = false;
  bool stream_done = false;
  bool stream_hup = false;                   // poll reported a hang-up: data may still be unread before the EOF
  std::optional<Clock::time_point> give_up;  // set once either side ended
  std::uint8_t buffer[64 * 1024];
  try {
    for (;;) {
      // stream -> client: while there is room, at most 16 reads a round (a flooding stream cannot hold the loop)
      for (int reads = 0; !stream_done && to_local.size() < kPumpBuffer && reads < 16; ++reads) {
        std::ptrdiff_t n = -1;
        try {
          n = stream->read_some(buffer, sizeof buffer);
        } catch (...) {
          n = 0;  // a broken stream ends like its EOF
        }
        if (n < 0) break;
        if (n == 0) {
          stream_done = true;
          break;
        }
        demuxer.feed(buffer, static_cast<std::size_t>(n), [&](int s, const std::uint8_t* data, std::size_t size) {
          if (s == 1 && !local_eof) to_local.append(reinterpret_cast<const char*>(data), size);  // stderr: not asked
          return true;
        });
      }
      if (!local_eof && !to_local.empty()) {
        const ssize_t n = ::send(local, to_local.data(), to_local.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
          to_local.erase(0, static_cast<std::size_t>(n));
        } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          local_eof = true;
        }
      }
      // client -> stream (nothing more to carry once the stream is done: only its close is watched, by poll)
      while (!local_eof && !stream_done && to_stream.size() < kPumpBuffer) {
        const ssize_t n = ::recv(local, buffer, sizeof buffer, MSG_DONTWAIT);
        if (n > 0) {
          to_stream.append(reinterpret_cast<const char*>(buffer), static_cast<std::size_t>(n));
          continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) local_eof = true;
        break;
      }
      if (local_eof && !stream->send_shut()) {
        // What the client sent last goes out as far as the stream takes it now (a KILL, the end of a stdin); the
        // rest is dropped: the agent may have stopped reading, and it ends everything of a closed connection anyway.
        try {
          if (!stream_done && !to_stream.empty())
            stream->write_some(reinterpret_cast<const std::uint8_t*>(to_stream.data()), to_stream.size());
        } catch (...) {
        }
        stream->shutdown_send();  // the agent sees EOF on stdin: it ends what it started and exits
      }
      if (local_eof) to_local.clear(), to_stream.clear();
      if (!stream_done && !to_stream.empty()) {
        std::ptrdiff_t n = -1;
        try {
          n = stream->write_some(reinterpret_cast<const std::uint8_t*>(to_stream.data()), to_stream.size());
        } catch (...) {
        }
        if (n < 0) {
          stream_done = true;  // the engine no longer reads: the stream is over (its last frames still go out)
          to_stream.clear();
        } else {
          to_stream.erase(0, static_cast<std::size_t>(n));
        }
      }
      if (stream_done && (local_eof || to_local.empty())) break;  // nothing left to carry either way
      if ((local_eof || stream_done) && !give_up) give_up = Clock::now() + kDrainLimit;
      if (!stream_done && stream->has_pending() && to_local.size() < kPumpBuffer) continue;
      int timeout = -1;
      if (give_up) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*give_up - Clock::now());
        if (left.count() <= 0) break;
        timeout = static_cast<int>(left.count()) + 1;
      }
      // POLLIN on a side only with room for what it brings; POLLHUP/POLLERR are reported regardless: a client's
      // hang-up without data sets local_eof. A stream that hung up while the client's buffer is full is not polled
      // (POLLHUP would wake at once, for ever): what it still holds is read once the client took some, then its EOF.
      const bool stream_waits = stream_done || (stream_hup && to_local.size() >= kPumpBuffer);
      pollfd fds[2] = {
          {stream_waits ? -1 : stream->fd(),
           static_cast<short>((to_local.size() < kPumpBuffer ? POLLIN : 0) | (to_stream.empty() ? 0 : POLLOUT)), 0},
          {local_eof ? -1 : local,
           static_cast<short>((!stream_done && to_stream.size() < kPumpBuffer ? POLLIN : 0) |
                              (to_local.empty() ? 0 : POLLOUT)),
           0}};
      if (::poll(fds, 2, timeout) < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (fds[0].revents & (POLLHUP | POLLERR)) stream_hup = true;
      if ((fds[1].revents & (POLLHUP | POLLERR)) && !(fds[1].revents & POLLIN)) local_eof = true;
    }
  } catch (...) {  // bad_alloc and the like: end the connection
  }
  ::close(local);  // the client sees EOF
}

}  // namespace

int start_pump(std::unique_ptr<HijackedStream> stream) {
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    throw Error(Errc::internal, std::string("socketpair: ") + std::strerror(errno));
  }
  ::fcntl(pair[0], F_SETFL, ::fcntl(pair[0], F_GETFL) | O_NONBLOCK);
  try {
    std::thread(pump, std::move(stream), pair[0]).detach();
  } catch (...) {  // no thread: nothing owns the pump's end (the stream was freed with the failed call's arguments)
    ::close(pair[0]);
    ::close(pair[1]);
    throw;
  }
  return pair[1];
}

std::unique_ptr<AgentClient> connect_over_exec(Client& client, const std::string& container,
                                               const std::vector<std::string>& agent_argv, AgentDeadline deadline) {
  Poco::JSON::Object::Ptr create = new Poco::JSON::Object;
  Poco::JSON::Array::Ptr cmd = new Poco::JSON::Array;
  for (const auto& word : agent_argv)
    cmd->add(word);
  create->set("Cmd", cmd);
  create->set("AttachStdin", true);
  create->set("AttachStdout", true);
  create->set("AttachStderr", false);  // the agent's log lines stay out of the protocol stream
  create->set("Tty", false);
  // No "User": the exec runs as the container's user, like the agent that is the container's main process.
  auto remaining = [&] {  // what is left of the deadline, for each engine call (at least 1 ms)
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    return std::max(left, std::chrono::milliseconds(1));
  };
  auto created = client.call_json("POST", "/containers/" + container + "/exec", create, {}, remaining());
  const std::string exec_id = created.json_object()->optValue<std::string>("Id", "");
  if (exec_id.empty()) throw Error(Errc::internal, client.options().engine_name + ": exec create returned no Id");

  Poco::JSON::Object::Ptr start = new Poco::JSON::Object;
  start->set("Detach", false);
  start->set("Tty", false);
  // Initialised in place from the prvalue: a moved-from HijackedStream would close the shared socket.
  std::unique_ptr<HijackedStream> stream(
      new HijackedStream(client.hijack("/exec/" + exec_id + "/start", to_json(start), remaining())));

  const int client_end = start_pump(std::move(stream));
  return std::make_unique<AgentClient>(AgentClient::over_fds(client_end, client_end, deadline));
}

}  // namespace berth::engine::compat
