// GET /v1/sandboxes/{id}/terminal (api/terminal.hpp): the handshake checks, then one WebSocket bound to one
// core::Terminal by two threads: this handler's thread reads the client's frames (keystrokes, control messages,
// pings, the close), a pump thread sends the terminal's output, the exit and pings. docs/api.md, "Terminal".
#include "api/terminal.hpp"

#include <Poco/Buffer.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/HTTPServerRequestImpl.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/WebSocket.h>
#include <Poco/String.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <sstream>
#include <thread>

#include "core/errors.hpp"
#include "core/log.hpp"

namespace berth::api {

using core::Error;
using core::ErrorCode;
using Poco::Net::WebSocket;
using namespace std::chrono_literals;

namespace {

constexpr int kMaxClientMessage = 1 << 20;             // bytes of one client frame, or of one fragmented text message
constexpr auto kPingEvery = std::chrono::seconds(30);  // the server pings an otherwise quiet client this often
constexpr auto kClientSilence = std::chrono::seconds(90);  // no complete frame (a pong counts) for this long: gone
constexpr auto kCloseWait = std::chrono::seconds(5);       // after the server's close frame, for the client's

// Close codes (RFC 6455 section 7.4.1).
constexpr std::uint16_t kNormal = 1000;
constexpr std::uint16_t kGoingAway = 1001;
constexpr std::uint16_t kProtocolError = 1002;
constexpr std::uint16_t kTooBig = 1009;
constexpr std::uint16_t kInternalError = 1011;

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string json_text(const Poco::JSON::Object& o) {
  std::ostringstream os;
  o.stringify(os);
  return os.str();
}

/** One WebSocket bound to one open terminal, for the life of the connection. */
class TerminalLink {
 public:
  TerminalLink(ApiContext& ctx, core::Terminal& terminal, WebSocket& ws, std::string request_id)
      : ctx_(ctx), terminal_(terminal), ws_(ws), request_id_(std::move(request_id)) {}

  /** Runs the connection to its end: the pump on its own thread, the reader on this one. Never throws. */
  void run(std::uint16_t rows, std::uint16_t cols) {
    Poco::JSON::Object ready;
    ready.set("type", "ready");
    ready.set("sandbox_id", terminal_.sandbox_id());
    ready.set("session_id", terminal_.session_id());
    ready.set("shell", terminal_.shell());
    ready.set("rows", rows);
    ready.set("cols", cols);
    send_text(ready);
    std::thread pump([this] { pump_loop(); });
    read_loop();
    {
      std::lock_guard lock(state_mutex_);
      reader_done_ = true;
    }
    state_changed_.notify_all();
    terminal_.close();  // the client closed or went away: the shell ends with it (its exit ends the pump)
    pump.join();
    log::info("terminal.closed", {{"request_id", request_id_},
                                  {"sandbox", terminal_.sandbox_id()},
                                  {"close_code", std::to_string(close_code_)},
                                  {"close_reason", close_reason_},
                                  {"bytes_in", std::to_string(bytes_in_)},
                                  {"bytes_out", std::to_string(bytes_out_.load())}});
  }

 private:
  /** Sends one frame unless the close frame went out already; false then, or when sending failed. */
  bool send(const void* data, std::size_t size, int flags) {
    std::lock_guard lock(send_mutex_);
    if (close_sent_ || broken_) return false;
    try {
      ws_.sendFrame(data, static_cast<int>(size), flags);
      return true;
    } catch (const Poco::Exception& e) {
      broken_ = true;  // the client is gone, or did not read for kClientSilence (the send timeout)
      log::info("terminal.send_failed", {{"request_id", request_id_}, {"error", e.displayText()}});
    }
    return false;
  }

  bool send_text(const Poco::JSON::Object& o) {
    const auto text = json_text(o);
    return send(text.data(), text.size(), WebSocket::FRAME_TEXT);
  }

  void send_error(const std::string& code, const std::string& message) {
    Poco::JSON::Object e;
    e.set("type", "error");
    e.set("code", code);
    e.set("message", message);
    send_text(e);
  }

  /** The server's close frame (once); later frames are not sent. */
  void send_close(std::uint16_t code, const std::string& reason) {
    std::lock_guard lock(send_mutex_);
    if (close_sent_) return;
    close_sent_ = true;
    if (close_code_ == 0) {
      close_code_ = code;
      close_reason_ = reason;
    }
    if (broken_) return;
    try {
      ws_.shutdown(code, reason);
    } catch (const Poco::Exception&) {
      broken_ = true;
    }
  }

  // ---- the reader (the handler's thread) ----

  void read_loop() {
    Poco::Buffer<char> frame(0);
    std::string text;  // a fragmented text message being collected
    bool in_text = false, in_binary = false;
    for (;;) {
      int flags = 0;
      int n = 0;
      frame.resize(0);
      try {
        n = ws_.receiveFrame(frame, flags);
      } catch (const Poco::TimeoutException&) {
        send_close(kGoingAway, "no frame from the client for " + std::to_string(kClientSilence.count()) + " s");
        return;
      } catch (const Poco::Net::WebSocketException& e) {
        const bool big = e.code() == WebSocket::WS_ERR_PAYLOAD_TOO_BIG;
        send_close(big ? kTooBig : kProtocolError,
                   big ? "a frame over " + std::to_string(kMaxClientMessage) + " bytes" : "malformed frame");
        return;
      } catch (const Poco::Exception& e) {
        std::lock_guard lock(send_mutex_);
        if (close_code_ == 0) close_reason_ = "connection lost: " + e.displayText();
        return;
      }
      last_heard_ns_ = steady_ns();
      const int op = flags & WebSocket::FRAME_OP_BITMASK;
      const bool fin = (flags & WebSocket::FRAME_FLAG_FIN) != 0;
      if (n == 0 && flags == 0) {  // the TCP connection ended without a close frame
        std::lock_guard lock(send_mutex_);
        if (close_code_ == 0) close_reason_ = "the client disconnected";
        return;
      }
      const std::string_view payload(frame.begin(), frame.size());
      if (op == WebSocket::FRAME_OP_CLOSE) {
        std::uint16_t code = kNormal;
        if (payload.size() >= 2) {
          code = static_cast<std::uint16_t>((static_cast<unsigned char>(payload[0]) << 8) |
                                            static_cast<unsigned char>(payload[1]));
        }
        {
          std::lock_guard lock(send_mutex_);
          if (close_code_ == 0) {
            close_code_ = code;
            close_reason_ = "closed by the client";
          }
        }
        send_close(kNormal, "");  // the reply to the client's close (no-op if ours went first)
        return;
      }
      if (op == WebSocket::FRAME_OP_PING) {
        send(payload.data(), payload.size(), WebSocket::FRAME_FLAG_FIN | WebSocket::FRAME_OP_PONG);
        continue;
      }
      if (op == WebSocket::FRAME_OP_PONG) continue;
      const bool continues = op == WebSocket::FRAME_OP_CONT;
      if ((continues && !in_text && !in_binary) || (!continues && (in_text || in_binary))) {
        send_close(kProtocolError, "bad fragmentation");  // RFC 6455 5.4
        return;
      }
      if (op == WebSocket::FRAME_OP_BINARY || (continues && in_binary)) {
        in_binary = !fin;
        bytes_in_ += payload.size();
        try {
          terminal_.write(payload);  // false: the shell has ended; the pump is closing the connection
        } catch (const core::DriverError& e) {
          send_error("driver_unavailable", std::string("keystrokes not delivered: ") + e.what());
        }
        continue;
      }
      if (op == WebSocket::FRAME_OP_TEXT || (continues && in_text)) {
        text.append(payload);
        if (text.size() > static_cast<std::size_t>(kMaxClientMessage)) {
          send_close(kTooBig, "a text message over " + std::to_string(kMaxClientMessage) + " bytes");
          return;
        }
        in_text = !fin;
        if (fin) control(std::exchange(text, std::string()));
        continue;
      }
      send_close(kProtocolError, "unknown opcode " + std::to_string(op));
      return;
    }
  }

  /** One JSON control message from the client. Mistakes are answered with an error message; the terminal stays. */
  void control(const std::string& text) {
    Poco::JSON::Object::Ptr o;
    try {
      o = Poco::JSON::Parser().parse(text).extract<Poco::JSON::Object::Ptr>();
    } catch (const Poco::Exception&) {
      send_error("invalid_request",
                 "a text frame is a JSON control message such as {\"type\": \"resize\", \"rows\": 40, \"cols\": 120};"
                 " keystrokes go in binary frames");
      return;
    }
    if (!o || !o->has("type") || !o->get("type").isString()) {
      send_error("invalid_request", "a control message needs a string field 'type' (resize)");
      return;
    }
    const std::string type = o->getValue<std::string>("type");
    if (type != "resize") {
      send_error("validation_error", "unknown control message type '" + type + "' (resize)");
      return;
    }
    auto side = [&](const char* field) -> std::optional<std::uint16_t> {
      if (!o->has(field) || !o->get(field).isInteger()) return std::nullopt;
      const auto v = o->getValue<Poco::Int64>(field);
      if (v < 1 || v > core::kMaxTerminalSide) return std::nullopt;
      return static_cast<std::uint16_t>(v);
    };
    const auto rows = side("rows");
    const auto cols = side("cols");
    if (!rows || !cols) {
      send_error("validation_error",
                 "resize needs integer rows and cols, 1.." + std::to_string(core::kMaxTerminalSide) + " each");
      return;
    }
    try {
      terminal_.resize(*rows, *cols);
    } catch (const Error& e) {
      send_error(std::string(core::to_string(e.code())), e.what());
    } catch (const core::DriverError& e) {
      send_error("driver_unavailable", std::string("resize failed: ") + e.what());
    }
  }

  // ---- the pump (its own thread) ----

  void pump_loop() {
    auto next_ping = std::chrono::steady_clock::now() + kPingEvery;
    for (;;) {
      if (ctx_.shutting_down.load()) {
        send_close(kGoingAway, "berthd is shutting down");
        terminal_.close();
      }
      core::ProcessEvent ev;
      try {
        ev = terminal_.next_event(250ms);
      } catch (const core::DriverError& e) {
        log::warn("terminal.driver_error", {{"request_id", request_id_}, {"error", e.what()}});
        send_close(kInternalError, "the driver failed");
        terminal_.close();
        break;
      }
      if (ev.kind == core::ProcessEvent::Kind::output) {
        bytes_out_ += ev.data.size();
        if (!send(ev.data.data(), ev.data.size(), WebSocket::FRAME_BINARY)) terminal_.close();
        continue;
      }
      if (ev.kind == core::ProcessEvent::Kind::exit) {
        Poco::JSON::Object exit;
        exit.set("type", "exit");
        exit.set("exit_code", ev.exit.exit_code);
        exit.set("signal", ev.exit.signal);
        const bool shutdown = ctx_.shutting_down.load() || terminal_.closing();
        exit.set("reason", !ev.exit.killed ? "exited" : shutdown ? "closed" : "session_ended");
        send_text(exit);
        send_close(shutdown ? kGoingAway : kNormal, !ev.exit.killed ? "the shell exited"
                                                    : shutdown      ? "closed"
                                                                    : "the sandbox's session ended");
        break;
      }
      const auto now = std::chrono::steady_clock::now();
      if (now - std::chrono::steady_clock::time_point(std::chrono::nanoseconds(last_heard_ns_.load())) >
          kClientSilence) {
        // The reader may be blocked handing keystrokes to a shell that reads none: it cannot see the silence.
        send_close(kGoingAway, "no frame from the client for " + std::to_string(kClientSilence.count()) + " s");
        terminal_.close();
        continue;  // the shell's exit follows
      }
      if (now >= next_ping) {
        next_ping = now + kPingEvery;
        send("berth", 5, WebSocket::FRAME_FLAG_FIN | WebSocket::FRAME_OP_PING);
      }
    }
    // Our close frame is out: give the client kCloseWait to answer with its own, then stop reading.
    std::unique_lock lock(state_mutex_);
    if (!state_changed_.wait_for(lock, kCloseWait, [&] { return reader_done_; })) {
      try {
        ws_.shutdownReceive();
      } catch (const Poco::Exception&) {
      }
    }
  }

  ApiContext& ctx_;
  core::Terminal& terminal_;
  WebSocket& ws_;
  const std::string request_id_;
  std::mutex send_mutex_;  // guards the socket's sending side and the fields up to close_reason_
  bool close_sent_ = false;
  bool broken_ = false;
  std::uint16_t close_code_ = 0;  // the first close: ours, or the client's
  std::string close_reason_;
  std::mutex state_mutex_;
  std::condition_variable state_changed_;
  bool reader_done_ = false;  // guarded by state_mutex_
  std::atomic<std::int64_t> last_heard_ns_{steady_ns()};
  std::uint64_t bytes_in_ = 0;  // the reader's
  std::atomic<std::uint64_t> bytes_out_{0};
};

}  // namespace

void terminal(Exchange& ex) {
  auto& rq = ex.request;
  const bool upgrade = rq.hasToken("Connection", "upgrade") && Poco::icompare(rq.get("Upgrade", ""), "websocket") == 0;
  if (!upgrade) {
    ex.response.set("Upgrade", "websocket");
    throw Error(ErrorCode::invalid_request,
                "GET /v1/sandboxes/{id}/terminal is a WebSocket: send Connection: Upgrade, Upgrade: websocket, "
                "Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key (RFC 6455)",
                {{"reason", "websocket_upgrade_required"}});
  }
  if (rq.get("Sec-WebSocket-Version", "") != WebSocket::WEBSOCKET_VERSION) {
    ex.response.set("Sec-WebSocket-Version", WebSocket::WEBSOCKET_VERSION);
    throw Error(ErrorCode::invalid_request, "only WebSocket version 13 (RFC 6455) is spoken",
                {{"reason", "unsupported_websocket_version"}});
  }
  if (Poco::trim(rq.get("Sec-WebSocket-Key", "")).empty()) {
    throw Error(ErrorCode::invalid_request, "the WebSocket handshake has no Sec-WebSocket-Key",
                {{"reason", "missing_websocket_key"}});
  }
  // Only a request read from a socket can be upgraded (handle_request's in-process requests cannot).
  if (dynamic_cast<Poco::Net::HTTPServerRequestImpl*>(&rq) == nullptr) {
    throw Error(ErrorCode::invalid_request, "a terminal needs a network connection",
                {{"reason", "websocket_upgrade_required"}});
  }
  core::TerminalSpec spec;
  spec.rows = static_cast<std::uint16_t>(ex.query_int("rows", 24, 1, core::kMaxTerminalSide));
  spec.cols = static_cast<std::uint16_t>(ex.query_int("cols", 80, 1, core::kMaxTerminalSide));
  if (auto term = ex.query("term")) spec.term = *term;

  auto terminal = ex.ctx.service.open_terminal(ex.owner, ex.params.at(0), spec);
  WebSocket ws(rq, ex.response);  // sends 101 Switching Protocols
  ws.setMaxPayloadSize(kMaxClientMessage);
  ws.setReceiveTimeout(Poco::Timespan(std::chrono::seconds(kClientSilence + 10s).count(), 0));  // backstop
  ws.setSendTimeout(Poco::Timespan(std::chrono::seconds(kClientSilence).count(), 0));
  ws.setNoDelay(true);  // keystroke echoes are small frames: never wait for Nagle
  TerminalLink(ex.ctx, *terminal, ws, ex.request_id).run(spec.rows, spec.cols);
}

}  // namespace berth::api
