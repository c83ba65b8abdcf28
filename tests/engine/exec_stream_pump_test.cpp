// The pump of the "exec" agent transport (plugins/common/src/agent_exec_stream.cpp) against a fake engine: the far
// end of a socketpair plays the engine's side of a hijacked exec stream (it writes 8-byte stdcopy frames and reads
// raw stdin). No engine needed.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <Poco/Net/StreamSocket.h>
#include <Poco/Net/StreamSocketImpl.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>

#include "agent_exec_stream.hpp"

using namespace std::chrono_literals;
namespace compat = berth::engine::compat;

namespace {

/** One stdcopy frame: [stream, 0, 0, 0, u32 big-endian length] + payload. */
std::string frame(int stream, const std::string& payload) {
  std::string f(8, '\0');
  f[0] = static_cast<char>(stream);
  const auto n = static_cast<std::uint32_t>(payload.size());
  f[4] = static_cast<char>(n >> 24), f[5] = static_cast<char>(n >> 16), f[6] = static_cast<char>(n >> 8);
  f[7] = static_cast<char>(n);
  return f + payload;
}

void write_all(int fd, const std::string& data) {
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    REQUIRE(n > 0);
    done += static_cast<std::size_t>(n);
  }
}

/** Reads until EOF (bounded: 60 s without a byte fails). */
std::string read_to_eof(int fd) {
  std::string out;
  char buf[65536];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    REQUIRE(::poll(&p, 1, 60000) == 1);
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return out;
    out.append(buf, static_cast<std::size_t>(n));
  }
}

/** A pump over a socketpair: returns {the engine's end, the client's end}. */
std::pair<int, int> pump_pair(const std::string& already_read = "") {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  Poco::Net::StreamSocket socket(new Poco::Net::StreamSocketImpl(sv[0]));
  std::unique_ptr<berth::engine::HijackedStream> stream(
      new berth::engine::HijackedStream(std::move(socket), already_read));
  return {sv[1], compat::start_pump(std::move(stream))};
}

}  // namespace

TEST_CASE("exec stream pump: stdout frames reach the client in order, stderr does not, and the last ones before EOF") {
  // The first bytes arrived with the HTTP answer (HijackedStream's pending bytes); a frame split across writes.
  auto [engine, client] = pump_pair(frame(1, "hello "));
  bool written = true;  // Catch's assertions are not for other threads: the writer only records
  std::thread agent([engine = engine, &written] {
    const std::string data = frame(2, "agent log line\n") + frame(1, "wor") + frame(1, "ld") +
                             frame(1, std::string(3 << 20, 'x')) +  // more than the pump buffers at once
                             frame(1, " last words");
    for (std::size_t done = 0; done < data.size();) {
      const ssize_t n =
          ::send(engine, data.data() + done, std::min<std::size_t>(data.size() - done, 100000), MSG_NOSIGNAL);
      if (n <= 0) {
        written = false;
        break;
      }
      done += static_cast<std::size_t>(n);
    }
    ::close(engine);  // the agent said its last and exited: all of it still reaches the client, then EOF
  });
  const std::string got = read_to_eof(client);
  agent.join();
  CHECK(written);
  CHECK(got.size() == 11 + (3u << 20) + 11);
  CHECK(got.rfind("hello world", 0) == 0);
  CHECK(got.compare(got.size() - 11, 11, " last words") == 0);
  ::close(client);
}

TEST_CASE("exec stream pump: the client's bytes go out raw, and its close half-closes the stream") {
  auto [engine, client] = pump_pair();
  write_all(client, "START frame bytes");
  ::shutdown(client, SHUT_WR);                        // like a closed client (the pump sees EOF on its end)
  CHECK(read_to_eof(engine) == "START frame bytes");  // EOF: the agent's stdin is closed
  ::close(engine);
  CHECK(read_to_eof(client).empty());
  ::close(client);
}

TEST_CASE("exec stream pump: a client that closes while stdin is queued still gets the stream half-closed") {
  auto [engine, client] = pump_pair();
  // The engine side reads nothing while 8 MiB are written: the pump's buffer and the socket buffers fill up.
  const std::string big(8 << 20, 's');
  std::size_t sent = 0;
  ::fcntl(client, F_SETFL, ::fcntl(client, F_GETFL) | O_NONBLOCK);
  for (int idle = 0; sent < big.size() && idle < 100;) {
    const ssize_t n = ::send(client, big.data() + sent, big.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n), idle = 0;
    } else {
      ++idle, ::usleep(10000);
    }
  }
  CHECK(sent < big.size());  // it backed up
  ::close(client);
  // The engine side now reads: what was already handed to the stream, then EOF (nothing more waits for a reader).
  const std::string got = read_to_eof(engine);
  CHECK(got.size() < big.size());
  ::close(engine);
}
