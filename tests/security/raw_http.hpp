// Raw HTTP/1.1 over a loopback socket for the [http] and [slow] probes: bytes go out exactly as written, and
// responses are parsed strictly enough to count them (status line, headers, Content-Length or chunked body).
#pragma once

#include <Poco/JSON/Parser.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/StreamSocket.h>
#include <Poco/String.h>

#include <chrono>
#include <map>
#include <optional>
#include <string>

namespace berth::test::security {

/** One parsed response. */
struct RawResponse {
  std::string status_line;
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  std::string header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? "" : it->second;
  }
  /** The error envelope's error.code (empty when the body is not the envelope). */
  std::string error_code() const {
    try {
      auto o = Poco::JSON::Parser().parse(body).extract<Poco::JSON::Object::Ptr>();
      return o->getObject("error")->getValue<std::string>("code");
    } catch (const std::exception&) {
      return "";
    }
  }
  std::string error_reason() const {
    try {
      auto o = Poco::JSON::Parser().parse(body).extract<Poco::JSON::Object::Ptr>();
      return o->getObject("error")->getObject("details")->optValue<std::string>("reason", "");
    } catch (const std::exception&) {
      return "";
    }
  }
};

/**
 * A raw client connection. Every read waits at most `timeout` (a generous bound; an expired wait reads as "no
 * response"). Not thread-safe; one per thread.
 */
class RawConn {
 public:
  explicit RawConn(std::uint16_t port, std::chrono::seconds timeout = std::chrono::seconds(60), int rcvbuf = 0) {
    if (rcvbuf > 0) {
      socket_ = Poco::Net::StreamSocket(Poco::Net::SocketAddress::IPv4);
      socket_.setReceiveBufferSize(rcvbuf);
      socket_.connect(Poco::Net::SocketAddress("127.0.0.1", port));
    } else {
      socket_.connect(Poco::Net::SocketAddress("127.0.0.1", port));
    }
    socket_.setReceiveTimeout(Poco::Timespan(static_cast<long>(timeout.count()), 0));
  }
  /** Sends all of `bytes`; false when the server closed the connection. */
  bool send(const std::string& bytes) {
    try {
      std::size_t off = 0;
      while (off < bytes.size()) {
        int n = socket_.sendBytes(bytes.data() + off, static_cast<int>(bytes.size() - off));
        if (n <= 0) return false;
        off += static_cast<std::size_t>(n);
      }
      return true;
    } catch (const Poco::Exception&) {
      return false;
    }
  }
  /** Reads up to `n` raw bytes (0 on EOF, reset or timeout). */
  std::size_t read_some(std::size_t n) {
    std::string buf(n, '\0');
    try {
      int got = socket_.receiveBytes(buf.data(), static_cast<int>(n));
      return got > 0 ? static_cast<std::size_t>(got) : 0;
    } catch (const Poco::Exception&) {
      return 0;
    }
  }
  /** The next response, or nullopt on EOF/reset/timeout or bytes that are not an HTTP/1.1 response. */
  std::optional<RawResponse> read_response() {
    RawResponse r;
    auto line = read_line();
    if (!line) return std::nullopt;
    r.status_line = *line;
    if (line->size() < 12 || line->compare(0, 9, "HTTP/1.1 ") != 0) return std::nullopt;
    r.status = std::stoi(line->substr(9, 3));
    for (;;) {
      auto h = read_line();
      if (!h) return std::nullopt;
      if (h->empty()) break;
      auto colon = h->find(':');
      if (colon == std::string::npos) return std::nullopt;
      r.headers[Poco::toLower(h->substr(0, colon))] = Poco::trim(h->substr(colon + 1));
    }
    if (r.status == 100) return read_response();
    if (Poco::icompare(r.header("transfer-encoding"), "chunked") == 0) {
      for (;;) {
        auto size_line = read_line();
        if (!size_line) return std::nullopt;
        std::size_t size = std::stoul(*size_line, nullptr, 16);
        if (size == 0) {
          read_line();
          break;
        }
        if (!read_exact(size, r.body)) return std::nullopt;
        read_line();
      }
    } else if (!r.header("content-length").empty()) {
      if (!read_exact(std::stoul(r.header("content-length")), r.body)) return std::nullopt;
    }
    return r;
  }
  /** True when the server closes the connection (EOF or reset) before sending another byte, within the timeout. */
  bool closed_by_server() {
    if (pos_ < buf_.size()) return false;
    char c;
    try {
      return socket_.receiveBytes(&c, 1) == 0;
    } catch (const Poco::TimeoutException&) {
      return false;
    } catch (const Poco::Exception&) {
      return true;  // reset
    }
  }
  Poco::Net::StreamSocket& socket() { return socket_; }

 private:
  bool fill() {
    char tmp[65536];
    try {
      int n = socket_.receiveBytes(tmp, sizeof tmp);
      if (n <= 0) return false;
      buf_.append(tmp, static_cast<std::size_t>(n));
      return true;
    } catch (const Poco::Exception&) {
      return false;
    }
  }
  std::optional<std::string> read_line() {
    for (;;) {
      auto nl = buf_.find("\r\n", pos_);
      if (nl != std::string::npos) {
        std::string line = buf_.substr(pos_, nl - pos_);
        pos_ = nl + 2;
        return line;
      }
      if (!fill()) return std::nullopt;
    }
  }
  bool read_exact(std::size_t n, std::string& out) {
    while (buf_.size() - pos_ < n) {
      if (!fill()) return false;
    }
    out.append(buf_, pos_, n);
    pos_ += n;
    return true;
  }
  Poco::Net::StreamSocket socket_;
  std::string buf_;
  std::size_t pos_ = 0;
};

}  // namespace berth::test::security
