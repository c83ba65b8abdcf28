// The "exec" agent transport (agent_exec_stream.hpp): one Engine API exec of the agent per connection, its hijacked
// stream pumped to and from a socketpair that an ordinary AgentClient uses.
#include "agent_exec_stream.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Stringifier.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <sstream>
#include <thread>

#include "berth/engine/hijack.hpp"

namespace berth::engine::compat {

namespace {

/** Most bytes buffered per direction before the pump stops reading that direction's source (backpressure). */
constexpr std::size_t kPumpBuffer = 1 << 20;

std::string to_json(const Poco::JSON::Object::Ptr& object) {
  std::ostringstream os;
  Poco::JSON::Stringifier::stringify(object, os);
  return os.str();
}

/** How long the stream may stay open after the client's end closed (the agent then has EOF on stdin and should exit
 *  at once; a stopped or wedged agent, or a stalled engine, must not hold the pump thread for ever). */
constexpr auto kDrainLimit = std::chrono::seconds(10);

/**
 * Copies between the hijacked stream and the pump's end of the socketpair. Owns both; runs on its own detached
 * thread. Ends when the engine closes the stream, or kDrainLimit after the client closed its end. Never throws.
 *
 * Rules: a side that reports POLLHUP/POLLERR is read (or found broken) at once, never just polled again; when the
 * client's end closes, what it still had queued for the agent is dropped and the stream is half-closed at once (the
 * agent kills everything of a closed connection anyway, and it may have stopped reading stdin); once the stream
 * ended, what was buffered for the client is dropped too (the client sees EOF: its connection is gone).
 */
void pump(std::unique_ptr<HijackedStream> stream, int local) {
  FrameDemuxer demuxer;
  std::string to_local;   // the agent's frames (stdout payload), for the client
  std::string to_stream;  // the client's bytes, for the agent's stdin
  bool local_eof = false;
  std::optional<std::chrono::steady_clock::time_point> drain_until;
  std::uint8_t buffer[64 * 1024];
  try {
    for (;;) {
      // stream -> client (read while there is room; a hang-up is seen here as EOF or an error)
      bool stream_eof = false;
      while (to_local.size() < kPumpBuffer) {
        const auto n = stream->read_some(buffer, sizeof buffer);
        if (n < 0) break;
        if (n == 0) {
          stream_eof = true;
          break;
        }
        demuxer.feed(buffer, static_cast<std::size_t>(n), [&](int s, const std::uint8_t* data, std::size_t size) {
          if (s == 1 && !local_eof) to_local.append(reinterpret_cast<const char*>(data), size);  // stderr: not asked
          return true;
        });
      }
      if (stream_eof) break;
      if (!local_eof && !to_local.empty()) {
        const ssize_t n = ::send(local, to_local.data(), to_local.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
          to_local.erase(0, static_cast<std::size_t>(n));
        } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          local_eof = true;
        }
      }
      // client -> stream
      while (!local_eof && to_stream.size() < kPumpBuffer) {
        const ssize_t n = ::recv(local, buffer, sizeof buffer, MSG_DONTWAIT);
        if (n > 0) {
          to_stream.append(reinterpret_cast<const char*>(buffer), static_cast<std::size_t>(n));
          continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) local_eof = true;
        break;
      }
      if (local_eof && !drain_until) {
        to_local.clear();
        to_stream.clear();
        stream->shutdown_send();  // the agent sees EOF on stdin: it ends what it started and exits
        drain_until = std::chrono::steady_clock::now() + kDrainLimit;
      }
      if (!to_stream.empty()) {
        const auto n = stream->write_some(reinterpret_cast<const std::uint8_t*>(to_stream.data()), to_stream.size());
        if (n < 0) break;  // the engine no longer reads: the stream is over
        to_stream.erase(0, static_cast<std::size_t>(n));
      }
      if (stream->has_pending()) continue;
      int timeout = -1;
      if (drain_until) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(*drain_until - std::chrono::steady_clock::now());
        if (left.count() <= 0) break;
        timeout = static_cast<int>(left.count()) + 1;
      }
      // POLLIN on the stream only with room for what it brings; POLLHUP/POLLERR are reported regardless, and the
      // next round's read sees them (EOF or an error) whether or not there is room: a full buffer then just ends.
      pollfd fds[2] = {
          {stream->fd(),
           static_cast<short>((to_local.size() < kPumpBuffer ? POLLIN : 0) | (to_stream.empty() ? 0 : POLLOUT)), 0},
          {local_eof ? -1 : local,
           static_cast<short>((to_stream.size() < kPumpBuffer ? POLLIN : 0) | (to_local.empty() ? 0 : POLLOUT)), 0}};
      if (::poll(fds, 2, timeout) < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if ((fds[0].revents & (POLLHUP | POLLERR)) && to_local.size() >= kPumpBuffer) break;  // hung up, client slow
      if ((fds[1].revents & (POLLHUP | POLLERR)) && !(fds[1].revents & POLLIN)) local_eof = true;
    }
  } catch (...) {  // a broken stream ends the pump like its EOF
  }
  ::close(local);  // the client sees EOF
}

}  // namespace

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
  ::fcntl(stream->fd(), F_SETFL, ::fcntl(stream->fd(), F_GETFL) | O_NONBLOCK);

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
  return std::make_unique<AgentClient>(AgentClient::over_fds(pair[1], pair[1], deadline));
}

}  // namespace berth::engine::compat
