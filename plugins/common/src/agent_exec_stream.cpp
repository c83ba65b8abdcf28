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

/**
 * Copies between the hijacked stream and the pump's end of the socketpair until both directions ended. Owns both;
 * runs on its own detached thread. Never throws.
 */
void pump(std::unique_ptr<HijackedStream> stream, int local) {
  FrameDemuxer demuxer;
  std::string to_local;     // the agent's frames (stdout payload), for the client
  std::string to_stream;    // the client's bytes, for the agent's stdin
  bool local_eof = false;   // the client closed its end (or it broke)
  bool stream_eof = false;  // the engine closed the stream (the exec ended or the container stopped)
  bool send_shut = false;
  std::uint8_t buffer[64 * 1024];
  try {
    while (!stream_eof) {
      bool progressed = false;
      // stream -> client
      while (!stream_eof && to_local.size() < kPumpBuffer) {
        const auto n = stream->read_some(buffer, sizeof buffer);
        if (n < 0) break;
        if (n == 0) {
          stream_eof = true;
          break;
        }
        progressed = true;
        demuxer.feed(buffer, static_cast<std::size_t>(n), [&](int s, const std::uint8_t* data, std::size_t size) {
          if (s == 1) to_local.append(reinterpret_cast<const char*>(data), size);  // stderr: not requested
          return true;
        });
      }
      if (!local_eof && !to_local.empty()) {
        const ssize_t n = ::send(local, to_local.data(), to_local.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
          to_local.erase(0, static_cast<std::size_t>(n));
          progressed = true;
        } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          local_eof = true;  // the client is gone: what the agent still says goes nowhere
        }
      }
      if (local_eof) to_local.clear();
      // client -> stream
      while (!local_eof && to_stream.size() < kPumpBuffer) {
        const ssize_t n = ::recv(local, buffer, sizeof buffer, MSG_DONTWAIT);
        if (n > 0) {
          to_stream.append(reinterpret_cast<const char*>(buffer), static_cast<std::size_t>(n));
          progressed = true;
          continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) local_eof = true, progressed = true;
        break;
      }
      if (!to_stream.empty()) {
        const auto n = stream->write_some(reinterpret_cast<const std::uint8_t*>(to_stream.data()), to_stream.size());
        if (n < 0) {
          to_stream.clear();  // the engine no longer reads: the stream's end follows
        } else if (n > 0) {
          to_stream.erase(0, static_cast<std::size_t>(n));
          progressed = true;
        }
      }
      if (local_eof && to_stream.empty() && !send_shut) {
        stream->shutdown_send();  // the agent sees EOF on stdin: it ends what it started and exits
        send_shut = true;
      }
      if (progressed || stream->has_pending()) continue;
      pollfd fds[2] = {
          {stream->fd(), static_cast<short>(POLLIN | (to_stream.empty() ? 0 : POLLOUT)), 0},
          {local_eof ? -1 : local,
           static_cast<short>((to_stream.size() < kPumpBuffer ? POLLIN : 0) | (to_local.empty() ? 0 : POLLOUT)), 0}};
      if (to_local.size() >= kPumpBuffer) fds[0].events = static_cast<short>(fds[0].events & ~POLLIN);
      if (::poll(fds, 2, -1) < 0 && errno != EINTR) break;
    }
  } catch (...) {  // a broken stream ends the pump like its EOF
  }
  ::close(local);  // the client sees EOF (what was buffered for it is lost: its connection ended anyway)
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
  const auto now = std::chrono::steady_clock::now();
  const auto budget = std::chrono::duration_cast<std::chrono::milliseconds>(deadline > now ? deadline - now
                                                                                           : AgentDeadline::duration{});
  const auto timeout = std::max(budget, std::chrono::milliseconds(1));
  auto created = client.call_json("POST", "/containers/" + container + "/exec", create, {}, timeout);
  const std::string exec_id = created.json_object()->optValue<std::string>("Id", "");
  if (exec_id.empty()) throw Error(Errc::internal, client.options().engine_name + ": exec create returned no Id");

  Poco::JSON::Object::Ptr start = new Poco::JSON::Object;
  start->set("Detach", false);
  start->set("Tty", false);
  // Initialised in place from the prvalue: a moved-from HijackedStream would close the shared socket.
  std::unique_ptr<HijackedStream> stream(new HijackedStream(
      client.hijack("/exec/" + exec_id + "/start", to_json(start), std::max(timeout, std::chrono::milliseconds(1)))));

  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    throw Error(Errc::internal, std::string("socketpair: ") + std::strerror(errno));
  }
  ::fcntl(pair[0], F_SETFL, ::fcntl(pair[0], F_GETFL) | O_NONBLOCK);
  std::thread(pump, std::move(stream), pair[0]).detach();
  return std::make_unique<AgentClient>(AgentClient::over_fds(pair[1], pair[1], deadline));
}

}  // namespace berth::engine::compat
