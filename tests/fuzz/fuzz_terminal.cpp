// libFuzzer target: the terminal WebSocket (GET /v1/sandboxes/{id}/terminal, api/terminal.cpp), from the client's
// side. berthd runs in process (app::run_daemon, fake driver, SQLite) on loopback; for each input a fresh connection
// makes a valid handshake for one sandbox, reads the 101, then writes the input as raw bytes (client frames: any
// opcodes, masks, lengths, fragments, control messages, keystrokes), shuts its write side and reads everything berthd
// sends until it closes.
// Oracles: berthd closes the connection within a generous bound (no hang) and stays up for the next input; what it
// sends after the 101 is a sequence of well-formed server frames (FIN set, no RSV bits, unmasked, opcode text, binary,
// close or ping/pong, control frames at most 125 bytes); every text frame is a JSON object whose type is ready, error
// or exit, ready first; nothing follows a close frame, and a close frame's code is one berthd uses.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/StreamSocket.h>
#include <unistd.h>
#include <utf8.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>

#include "fuzz_daemon.hpp"

namespace {

berth::fuzz::FuzzDaemon* g_daemon = nullptr;
std::string g_sandbox;
const std::string* g_input = nullptr;

[[noreturn]] void fail(const std::string& why, const std::string& answer) {
  if (g_input) {
    std::ofstream("fuzz_terminal-failure", std::ios::binary) << *g_input;
    std::fprintf(stderr, "fuzz_terminal: input written to ./fuzz_terminal-failure\n");
  }
  std::fprintf(stderr, "fuzz_terminal: %s\n--- answer (%zu bytes) ---\n%.*s\n", why.c_str(), answer.size(),
               static_cast<int>(std::min<std::size_t>(answer.size(), 2000)), answer.data());
  std::abort();
}

/** Checks everything berthd sent after the 101's head. */
void check_frames(const std::string& a, std::size_t pos) {
  static const std::set<std::string> kTypes{"ready", "error", "exit"};
  static const std::set<int> kCloseCodes{1000, 1001, 1002, 1007, 1009, 1011};
  bool first_text = true, closed = false;
  auto utf8 = [](const std::string& t) { return utf8::is_valid(t.begin(), t.end()); };
  while (pos < a.size()) {
    if (closed) fail("a frame after the close frame", a);
    if (pos + 2 > a.size()) fail("truncated frame header", a);
    const auto b0 = static_cast<unsigned char>(a[pos]), b1 = static_cast<unsigned char>(a[pos + 1]);
    pos += 2;
    if ((b0 & 0x80) == 0) fail("a server frame without FIN", a);
    if ((b0 & 0x70) != 0) fail("RSV bits set", a);
    if ((b1 & 0x80) != 0) fail("a masked server frame", a);
    const int op = b0 & 0x0f;
    std::uint64_t len = b1 & 0x7f;
    if (len == 126 || len == 127) {
      const std::size_t n = len == 126 ? 2 : 8;
      if (pos + n > a.size()) fail("truncated frame length", a);
      len = 0;
      for (std::size_t i = 0; i < n; ++i)
        len = (len << 8) | static_cast<unsigned char>(a[pos + i]);
      pos += n;
    }
    if (pos + len > a.size()) fail("truncated frame payload", a);
    const std::string payload = a.substr(pos, static_cast<std::size_t>(len));
    pos += static_cast<std::size_t>(len);
    if (op >= 8 && len > 125) fail("a control frame over 125 bytes", a);
    switch (op) {
      case 1: {  // text: a control message
        if (!utf8(payload)) fail("a text frame that is not UTF-8", a);
        Poco::JSON::Object::Ptr o;
        try {
          o = Poco::JSON::Parser().parse(payload).extract<Poco::JSON::Object::Ptr>();
        } catch (const Poco::Exception&) {
          fail("a text frame that is not a JSON object: " + payload, a);
        }
        const auto type = o->optValue<std::string>("type", "");
        if (!kTypes.count(type)) fail("unknown message type '" + type + "'", a);
        if (first_text && type != "ready") fail("the first message is not ready", a);
        first_text = false;
        break;
      }
      case 2:   // binary: terminal output
      case 9:   // ping
      case 10:  // pong (the answer to the client's ping)
        break;
      case 8:
        if (len < 2) fail("a close frame without a code", a);
        {
          const int code = (static_cast<unsigned char>(payload[0]) << 8) | static_cast<unsigned char>(payload[1]);
          if (!kCloseCodes.count(code)) fail("close code " + std::to_string(code), a);
          if (!utf8(payload.substr(2))) fail("a close reason that is not UTF-8", a);
        }
        closed = true;
        break;
      default:
        fail("opcode " + std::to_string(op), a);
    }
  }
  // The client half-closed (or sent its close): berthd always answers with a close frame before it hangs up.
  if (!closed) fail("the connection ended without a close frame", a);
}

void stop_daemon() {
  if (g_daemon != nullptr) berth::fuzz::halt(*g_daemon);
}

void start_daemon() {
  g_daemon = new berth::fuzz::FuzzDaemon;
  berth::fuzz::launch(*g_daemon, "fuzz-terminal", "max_connections_per_client = 0\nthreads = 64\nmax_terminals = 8\n");
  berth::fuzz::wait_healthy(*g_daemon, "fuzz_terminal");
  std::atexit(stop_daemon);
  const auto created = berth::fuzz::raw_exchange(
      *g_daemon,
      "POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
      "Content-Length: 2\r\n\r\n{}");
  const auto at = created.find("\"id\":\"");
  if (at == std::string::npos) {
    std::fprintf(stderr, "fuzz_terminal: no sandbox: %s\n", created.c_str());
    std::abort();
  }
  g_sandbox = created.substr(at + 6, created.find('"', at + 6) - at - 6);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  start_daemon();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  g_input = &input;
  Poco::Net::StreamSocket s;
  s.connect(Poco::Net::SocketAddress("127.0.0.1", g_daemon->port));
  s.setReceiveTimeout(Poco::Timespan(20, 0));
  s.setSendTimeout(Poco::Timespan(30, 0));
  const std::string handshake = "GET /v1/sandboxes/" + g_sandbox +
                                "/terminal HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
  s.sendBytes(handshake.data(), static_cast<int>(handshake.size()));
  try {
    std::size_t off = 0;
    while (off < input.size()) {
      int n = s.sendBytes(input.data() + off, static_cast<int>(input.size() - off));
      if (n <= 0) break;
      off += static_cast<std::size_t>(n);
    }
    s.shutdownSend();
  } catch (const Poco::Exception&) {
    // berthd closed first (a frame it refused): read what it said
  }
  bool timed_out = false;
  const std::string answer = berth::fuzz::read_until_closed(s, timed_out);
  // berthd closes within its 2 s exit wait plus 5 s close wait: 20 s in all is a hang.
  if (timed_out) fail("berthd did not close the connection within 20 s", answer);
  const auto head_end = answer.find("\r\n\r\n");
  if (answer.rfind("HTTP/1.1 101 Switching Protocols\r\n", 0) != 0 || head_end == std::string::npos) {
    fail("no 101 for a valid handshake", answer);
  }
  check_frames(answer, head_end + 4);
  g_input = nullptr;
  return 0;
}
