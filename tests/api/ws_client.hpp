// A WebSocket client for the tests (RFC 6455, Poco's client WebSocket): opens berthd's terminal route the way a
// browser's xterm.js or `websocat` would, types keystrokes, sends control messages and collects what comes back.
#pragma once

#include <Poco/Buffer.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/WebSocket.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace berth::test {

/**
 * One terminal WebSocket. `output` gathers the binary frames (the terminal's bytes), `controls` the text frames
 * (JSON objects: ready, error, exit). A close frame from the server sets `closed`, `close_code` and `close_reason`.
 * Not thread-safe: one test thread drives it.
 */
class TerminalClient {
 public:
  /** Connects to 127.0.0.1:`port` `uri` (e.g. /v1/sandboxes/ID/terminal?rows=30). Throws Poco's exception when the
   *  server does not switch protocols (WebSocketException) or the connection fails. */
  TerminalClient(std::uint16_t port, const std::string& uri, const std::string& bearer_token = "",
                 const std::string& origin = "")
      : session_("127.0.0.1", port) {
    Poco::Net::HTTPRequest rq(Poco::Net::HTTPRequest::HTTP_GET, uri, Poco::Net::HTTPMessage::HTTP_1_1);
    if (!bearer_token.empty()) rq.set("Authorization", "Bearer " + bearer_token);
    if (!origin.empty()) rq.set("Origin", origin);
    Poco::Net::HTTPResponse rs;
    ws_ = std::make_unique<Poco::Net::WebSocket>(session_, rq, rs);
    ws_->setMaxPayloadSize(16 << 20);
  }

  std::string output;
  std::vector<Poco::JSON::Object::Ptr> controls;
  bool closed = false;
  int close_code = 0;
  std::string close_reason;
  int pings = 0;
  std::string pong;  // the payload of the last pong

  /** Sends keystrokes in one binary frame. */
  void type(const std::string& keys) { ws_->sendFrame(keys.data(), static_cast<int>(keys.size()), binary()); }
  /** Sends a text frame as is (a control message, or a malformed one). */
  void send_text(const std::string& text) {
    ws_->sendFrame(text.data(), static_cast<int>(text.size()), Poco::Net::WebSocket::FRAME_TEXT);
  }
  void resize(int rows, int cols) {
    send_text("{\"type\":\"resize\",\"rows\":" + std::to_string(rows) + ",\"cols\":" + std::to_string(cols) + "}");
  }
  /** Sends one frame as given: `flags` is the first header byte (FIN, RSV bits, opcode). */
  void send_frame(const std::string& payload, int flags) {
    ws_->sendFrame(payload.data(), static_cast<int>(payload.size()), flags);
  }
  /** Sends a close frame with `code`. */
  void close(std::uint16_t code = 1000) { ws_->shutdown(code, "bye"); }
  /** Drops the TCP connection without a close frame (a client that vanished). */
  void drop() { ws_->close(); }

  /** The first control message of `type` received so far, or null. */
  Poco::JSON::Object::Ptr control(const std::string& type) const {
    for (const auto& c : controls)
      if (c->getValue<std::string>("type") == type) return c;
    return nullptr;
  }

  /**
   * Reads frames until `done()` holds (checked after each frame and first), the server's close frame arrives, or
   * `timeout` passes. Returns done(). A ping is answered with a pong, as browsers do.
   */
  bool read_until(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
      if (closed) return false;
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      ws_->setReceiveTimeout(Poco::Timespan(left.count() / 1000, static_cast<long>(left.count() % 1000) * 1000));
      Poco::Buffer<char> frame(0);
      int flags = 0;
      int n = 0;
      try {
        n = ws_->receiveFrame(frame, flags);
      } catch (const Poco::TimeoutException&) {
        return done();
      }
      const int op = flags & Poco::Net::WebSocket::FRAME_OP_BITMASK;
      const std::string payload(frame.begin(), frame.size());
      if (n == 0 && flags == 0) {
        closed = true;  // the connection ended without a close frame
        return done();
      }
      if (op == Poco::Net::WebSocket::FRAME_OP_BINARY) {
        output += payload;
      } else if (op == Poco::Net::WebSocket::FRAME_OP_TEXT) {
        controls.push_back(Poco::JSON::Parser().parse(payload).extract<Poco::JSON::Object::Ptr>());
      } else if (op == Poco::Net::WebSocket::FRAME_OP_PING) {
        ++pings;
        ws_->sendFrame(payload.data(), static_cast<int>(payload.size()),
                       Poco::Net::WebSocket::FRAME_FLAG_FIN | static_cast<int>(Poco::Net::WebSocket::FRAME_OP_PONG));
      } else if (op == Poco::Net::WebSocket::FRAME_OP_PONG) {
        pong = payload;
      } else if (op == Poco::Net::WebSocket::FRAME_OP_CLOSE) {
        closed = true;
        if (payload.size() >= 2) {
          close_code = (static_cast<unsigned char>(payload[0]) << 8) | static_cast<unsigned char>(payload[1]);
          close_reason = payload.substr(2);
        }
      }
    }
    return true;
  }

  /** Reads until `text` appears in the output after byte `from`. */
  bool read_output(const std::string& text, std::chrono::milliseconds timeout, std::size_t from = 0) {
    return read_until([&] { return output.find(text, from) != std::string::npos; }, timeout);
  }
  /** Reads until the server's close frame (or the connection's end). */
  bool read_close(std::chrono::milliseconds timeout) {
    return read_until([&] { return closed; }, timeout) || closed;
  }

 private:
  static int binary() { return Poco::Net::WebSocket::FRAME_BINARY; }
  Poco::Net::HTTPClientSession session_;
  std::unique_ptr<Poco::Net::WebSocket> ws_;
};

}  // namespace berth::test
