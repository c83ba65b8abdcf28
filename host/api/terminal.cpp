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

#include <sys/socket.h>

#include <atomic>
#include <cerrno>
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
constexpr auto kCloseWaitShutdown = std::chrono::milliseconds(500);  // the same while berthd shuts down
constexpr auto kEndWait = std::chrono::seconds(2);                   // after berthd ends the shell, for its exit event

// Close codes (RFC 6455 section 7.4.1).
constexpr std::uint16_t kNormal = 1000;
constexpr std::uint16_t kGoingAway = 1001;
constexpr std::uint16_t kProtocolError = 1002;
constexpr std::uint16_t kInvalidData = 1007;
constexpr std::uint16_t kTooBig = 1009;
constexpr std::uint16_t kInternalError = 1011;
constexpr std::uint16_t kAbnormal = 1006;  // never sent: the log's code for a connection that ended without a close
constexpr auto kShutdownSend = std::chrono::milliseconds(500);  // the longest a send may block once berthd stops

constexpr int kRsvBits = 0x70;  // in the flags Poco returns: the frame's first byte
constexpr int kPong = WebSocket::FRAME_FLAG_FIN | static_cast<int>(WebSocket::FRAME_OP_PONG);
constexpr int kPing = WebSocket::FRAME_FLAG_FIN | static_cast<int>(WebSocket::FRAME_OP_PING);

/** A close code a client may send (RFC 6455 7.4.1 and 7.4.2). */
bool valid_close_code(std::uint16_t code) {
  if (code >= 3000 && code <= 4999) return true;  // registered and private use
  return code >= 1000 && code <= 1014 && code != 1004 && code != 1005 && code != 1006;
}

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
    // A send the client does not read would keep the pump from seeing berthd's shutdown: the shutdown aborts it.
    const auto hook = ctx_.shutdown_hooks.add([this] {
      if (sending_.load()) ::shutdown(ws_.impl()->sockfd(), SHUT_RDWR);
    });
    struct Unhook {
      ShutdownHooks& hooks;
      ShutdownHooks::Id id;
      ~Unhook() { hooks.remove(id); }
    } unhook{ctx_.shutdown_hooks, hook};
    Poco::JSON::Object ready;
    ready.set("type", "ready");
    ready.set("request_id", request_id_);
    ready.set("sandbox_id", terminal_.sandbox_id());
    ready.set("session_id", terminal_.session_id());
    ready.set("shell", terminal_.shell());
    ready.set("rows", rows);
    ready.set("cols", cols);
    send_text(ready);
    std::thread pump;
    try {
      pump = std::thread([this] { pump_guarded(); });
    } catch (const std::system_error& e) {
      log::error("terminal.no_thread", {{"request_id", request_id_}, {"error", e.what()}});
      send_close(kInternalError, "no thread for the terminal");
      return;  // the Terminal's owner ends the shell
    }
    try {
      read_loop();
    } catch (const std::exception& e) {
      // Every frame is handled inside read_loop; this is a bug or an exhausted machine: end this terminal only.
      log::error("terminal.reader_failed", {{"request_id", request_id_}, {"error", e.what()}});
      send_close(kInternalError, "internal error");
    }
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
  /**
   * Sends one frame unless the close frame went out already; false then, or when sending failed. Once berthd shuts
   * down, a send may take at most kShutdownSend (the shutdown hook aborts one that was already blocked).
   */
  bool send(const void* data, std::size_t size, int flags) {
    std::lock_guard lock(send_mutex_);
    if (close_sent_ || broken_) return false;
    return send_locked(data, size, flags);
  }

  bool send_locked(const void* data, std::size_t size, int flags) {
    // Dekker with the shutdown hook: sending_ is set before shutting_down is read, and the hook runs after
    // shutting_down is set and reads sending_, so a send that starts after the hook ran sees the shutdown.
    sending_.store(true);
    try {
      if (ctx_.shutting_down.load() && !short_sends_) {
        ws_.setSendTimeout(Poco::Timespan(0, static_cast<long>(kShutdownSend.count()) * 1000));
        short_sends_ = true;
      }
      ws_.sendFrame(data, static_cast<int>(size), flags);
      sending_.store(false);
      return true;
    } catch (const Poco::Exception& e) {
      sending_.store(false);
      broken_ = true;  // the client is gone, or did not read for kClientSilence (the send timeout)
      note_end_locked(ctx_.shutting_down.load() ? kGoingAway : kAbnormal, "a send failed: " + e.displayText());
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

  /** How the connection ended, for the log: the first reason wins. */
  void note_end(std::uint16_t code, const std::string& reason) {
    std::lock_guard lock(send_mutex_);
    note_end_locked(code, reason);
  }
  void note_end_locked(std::uint16_t code, const std::string& reason) {
    if (close_code_ != 0) return;
    close_code_ = code;
    close_reason_ = reason;
  }

  /** The server's close frame (once); later frames are not sent. */
  void send_close(std::uint16_t code, const std::string& reason) {
    std::lock_guard lock(send_mutex_);
    if (close_sent_) return;
    close_sent_ = true;
    note_end_locked(code, reason);
    if (broken_) return;
    // The close frame's body: the code, then the reason (UTF-8, at most 123 bytes: RFC 6455 5.5).
    std::string body{static_cast<char>(code >> 8), static_cast<char>(code & 0xff)};
    body += reason.substr(0, 123);
    send_locked(body.data(), body.size(), WebSocket::FRAME_FLAG_FIN | static_cast<int>(WebSocket::FRAME_OP_CLOSE));
  }

  /** The connection's end was seen by the reader: nothing is sent for it, but the log says so. */
  void client_gone(const std::string& why) { note_end(kAbnormal, why); }

  // ---- the reader (the handler's thread) ----

  /** Whether the peer has closed its side: a 0-byte read that is not an empty frame (Poco cannot tell them apart). */
  bool peer_closed() {
    char c;
    const auto n = ::recv(ws_.impl()->sockfd(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
  }

  void read_loop() {
    Poco::Buffer<char> frame(0);
    std::string text;  // a fragmented text message being collected
    bool in_text = false, in_binary = false;
    for (;;) {
      if (stop_reading_.load()) return;  // the shell has ended and our close went out: no more input is wanted
      int flags = 0;
      int n = 0;
      frame.resize(0);
      try {
        n = ws_.receiveFrame(frame, flags);
      } catch (const Poco::TimeoutException&) {
        send_close(kGoingAway, "no frame from the client for " + std::to_string(kClientSilence.count()) + " s");
        return;
      } catch (const Poco::Net::WebSocketException& e) {
        if (e.code() == WebSocket::WS_ERR_INCOMPLETE_FRAME) {  // the connection ended inside a frame
          client_gone("the client disconnected");
          return;
        }
        const bool big = e.code() == WebSocket::WS_ERR_PAYLOAD_TOO_BIG;
        send_close(big ? kTooBig : kProtocolError,
                   big ? "a frame over " + std::to_string(kMaxClientMessage) + " bytes" : "malformed frame");
        return;
      } catch (const Poco::Exception& e) {
        client_gone("connection lost: " + e.displayText());
        return;
      }
      last_heard_ns_ = steady_ns();
      const int op = flags & WebSocket::FRAME_OP_BITMASK;
      const bool fin = (flags & WebSocket::FRAME_FLAG_FIN) != 0;
      if (n == 0 && flags == 0 && peer_closed()) {  // the TCP connection ended without a close frame
        client_gone("the client disconnected");
        return;
      }
      const std::string_view payload(frame.begin(), frame.size());
      if ((flags & kRsvBits) != 0) {  // no extension was negotiated (RFC 6455 5.2)
        send_close(kProtocolError, "reserved bits set");
        return;
      }
      if (op >= WebSocket::FRAME_OP_CLOSE && (!fin || payload.size() > 125)) {  // RFC 6455 5.5
        send_close(kProtocolError, "a fragmented or oversized control frame");
        return;
      }
      if (op == WebSocket::FRAME_OP_CLOSE) {
        std::uint16_t code = kNormal;
        if (payload.size() >= 2) {
          code = static_cast<std::uint16_t>((static_cast<unsigned char>(payload[0]) << 8) |
                                            static_cast<unsigned char>(payload[1]));
        }
        // RFC 6455 7.4: a one-byte body, a code that must not be sent, or a reason that is not UTF-8 is an error.
        const bool valid = payload.size() != 1 && (payload.size() < 2 || valid_close_code(code)) &&
                           is_utf8(payload.substr(std::min<std::size_t>(2, payload.size())));
        note_end(code, valid ? "closed by the client" : "an invalid close frame");
        send_close(valid ? kNormal : kProtocolError, "");  // the reply (no-op if ours went first)
        return;
      }
      if (op == WebSocket::FRAME_OP_PING) {
        send(payload.data(), payload.size(), kPong);
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
        if (!fin) continue;
        if (!is_utf8(text)) {
          send_close(kInvalidData, "a text message that is not UTF-8");  // RFC 6455 8.1
          return;
        }
        control(std::exchange(text, std::string()));
        continue;
      }
      send_close(kProtocolError, "unknown opcode " + std::to_string(op));
      return;
    }
  }

  /** One JSON control message from the client. Mistakes are answered with an error message; the terminal stays. */
  void control(const std::string& text) {
    try {
      control_message(text);
    } catch (const std::exception& e) {  // a value Poco refuses to convert, ...: the message is refused, not berthd
      send_error("invalid_request", std::string("could not use the control message: ") + e.what());
    }
  }

  void control_message(const std::string& text) {
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
      std::optional<std::int64_t> x;
      try {
        x = opt_int(o, field);  // the API's one reading of an integer field (any JSON integer, never a throw)
      } catch (const Error&) {
        return std::nullopt;
      }
      if (!x || *x < 1 || *x > core::kMaxTerminalSide) return std::nullopt;
      return static_cast<std::uint16_t>(*x);
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
      // The shell has just ended (its exit message follows), or the engine failed.
      const bool gone = e.code() == core::DriverErrc::conflict || e.code() == core::DriverErrc::not_found;
      send_error(gone ? "conflict" : "driver_unavailable", std::string("resize failed: ") + e.what());
    }
  }

  // ---- the pump (its own thread) ----

  /** pump_loop, with a last guard: nothing that goes wrong on this thread may end the process. */
  void pump_guarded() {
    try {
      pump_loop();
    } catch (const std::exception& e) {
      log::error("terminal.pump_failed", {{"request_id", request_id_}, {"error", e.what()}});
      send_close(kInternalError, "internal error");
      terminal_.close();
      stop_reader();
    }
  }

  /** After our close frame: the client gets kCloseWait (less on shutdown) to answer it, then reading stops. */
  void stop_reader() {
    std::unique_lock lock(state_mutex_);
    const auto wait = ctx_.shutting_down.load() ? kCloseWaitShutdown : kCloseWait;
    if (state_changed_.wait_for(lock, wait, [&] { return reader_done_; })) return;
    stop_reading_ = true;  // a client that keeps sending: the reader stops after its next frame
    try {
      ws_.shutdownReceive();  // one that sends nothing: its read returns
    } catch (const Poco::Exception&) {
    }
  }

  void pump_loop() {
    auto next_ping = std::chrono::steady_clock::now() + kPingEvery;
    // Once the shell is being ended (by berthd, or because the client went), its exit event is awaited at most
    // kEndWait: a driver that never reports it cannot hold the connection.
    std::optional<std::chrono::steady_clock::time_point> ending;
    std::string ending_why;
    std::uint16_t ending_code = kGoingAway;
    auto end_shell = [&](std::uint16_t code, std::string why) {
      if (ending) return;
      ending = std::chrono::steady_clock::now();
      ending_code = code;
      ending_why = std::move(why);
      terminal_.close();  // its exit event follows: the client gets the exit message, then the close
    };
    auto shutting_down = [&] { return ctx_.shutting_down.load() || terminal_.shutting_down(); };
    for (;;) {
      // Checked on every round, output or not: a shell that floods output must not hide a silent client or a
      // shutdown.
      const auto now = std::chrono::steady_clock::now();
      if (shutting_down()) end_shell(kGoingAway, "berthd is shutting down");
      if (now - std::chrono::steady_clock::time_point(std::chrono::nanoseconds(last_heard_ns_.load())) >
          kClientSilence) {
        // The reader may be blocked handing keystrokes to a shell that reads none: it cannot see the silence.
        end_shell(kGoingAway, "no frame from the client for " + std::to_string(kClientSilence.count()) + " s");
      }
      if (terminal_.closing()) end_shell(kNormal, "the terminal was closed");  // by the reader: client gone/closed
      if (ending && now - *ending > kEndWait) {  // the driver does not report the exit: close without it
        send_close(ending_code, ending_why);
        break;
      }
      if (now >= next_ping) {
        next_ping = now + kPingEvery;
        send("berth", 5, kPing);
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
        const bool session_ended = terminal_.session_ended();
        const char* reason = session_ended ? "session_ended" : ending ? "closed" : "exited";
        Poco::JSON::Object exit;
        exit.set("type", "exit");
        exit.set("exit_code", ev.exit.exit_code);
        exit.set("signal", ev.exit.signal);
        exit.set("reason", reason);
        send_text(exit);
        if (session_ended) {
          send_close(kNormal, "the sandbox's session ended");
        } else if (ending) {
          send_close(ending_code, ending_why);
        } else {
          send_close(kNormal, "the shell exited");
        }
        break;
      }
    }
    stop_reader();
  }

  ApiContext& ctx_;
  core::Terminal& terminal_;
  WebSocket& ws_;
  const std::string request_id_;
  std::mutex send_mutex_;  // guards the socket's sending side and the fields up to close_reason_
  bool close_sent_ = false;
  bool broken_ = false;
  bool short_sends_ = false;
  std::uint16_t close_code_ = 0;  // how it ended (for the log): ours, the client's, or kAbnormal (no close frame)
  std::string close_reason_;
  std::atomic<bool> sending_{false};  // a frame is being written (read by the shutdown hook)
  std::atomic<bool> stop_reading_{false};
  std::mutex state_mutex_;
  std::condition_variable state_changed_;
  bool reader_done_ = false;  // guarded by state_mutex_
  std::atomic<std::int64_t> last_heard_ns_{steady_ns()};
  std::uint64_t bytes_in_ = 0;  // the reader's
  std::atomic<std::uint64_t> bytes_out_{0};
};

/** Whether a page of `origin` may open a terminal: berthd's own origin (the Host the request was sent to), or one
 *  listed in [server] terminal_origins ("*": any). Compared without regard to case (RFC 6454 serialisation). */
bool origin_allowed(const std::string& origin, const Poco::Net::HTTPServerRequest& rq, const ApiSettings& settings) {
  const auto host = rq.get("Host", "");
  for (const char* scheme : {"http://", "https://"})
    if (!host.empty() && Poco::icompare(origin, scheme + host) == 0) return true;
  for (const auto& allowed : settings.terminal_origins)
    if (allowed == "*" || Poco::icompare(origin, allowed) == 0) return true;
  return false;
}

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
  // A handshake has no body; one with a body would leave the connection's framing to guess (and berthd inserts
  // Content-Length: 0 where none was sent, so anything else here is a body, or a chunked one of unknown length).
  if (rq.getContentLength64() != 0) {
    throw Error(ErrorCode::invalid_request, "a WebSocket handshake has no body", {{"reason", "body_not_allowed"}});
  }
  // A browser says which page opens the socket: only berthd's own origin and [server] terminal_origins may, so that
  // a page elsewhere cannot drive a shell with the user's access (cross-site WebSocket hijacking).
  if (const auto origin = rq.get("Origin", ""); !origin.empty() && !origin_allowed(origin, rq, ex.ctx.settings)) {
    throw Error(ErrorCode::invalid_request,
                "a page from origin '" + origin + "' may not open a terminal; add it to [server] terminal_origins",
                {{"reason", "origin_not_allowed"}});
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
