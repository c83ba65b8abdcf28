// berthd's HTTP/1.1 connection layer (replaces Poco's HTTPServer/HTTPServerConnection): one poller thread reads
// request heads without holding a worker, checks their framing strictly, and hands complete requests to a worker
// pool that runs Poco's request/response objects; a watchdog (the same thread) cuts clients that are too slow.
// Request framing is decided here and only here, so berthd and a proxy in front of it read the same requests.
#pragma once

#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/ServerSocket.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace berth::api {

/** Limits of the connection layer ([server] keys of the same names; docs/api.md, "HTTP framing and limits"). */
struct ConnectionLimits {
  /** A whole request head must arrive within this, counted from its first byte (from accept for the first one). */
  std::chrono::milliseconds header_timeout{10'000};
  /** An idle kept-alive connection is closed after this (it never holds a worker while idle). */
  std::chrono::milliseconds keep_alive_timeout{5'000};
  /**
   * Minimum transfer rate, bytes per second, while berthd waits on the client (reading a body, or writing a
   * response the client does not read): a connection that kept berthd waiting for at least half of a
   * `rate_window` and moved fewer than min_transfer_rate * window bytes in it is cut. 0 disables the check.
   */
  std::uint64_t min_transfer_rate = 1024;
  std::chrono::milliseconds rate_window{10'000};
  /** Open connections per client IP address; beyond it the connection gets 429 and is closed. 0: no cap. */
  int max_connections_per_client = 64;
  /** Longest request head (request line + headers); beyond it 431. */
  std::size_t max_header_bytes = 64u << 10;
  /** Unread request body berthd reads and drops after a response to keep the connection; beyond it: close. */
  std::uint64_t drain_limit = 1u << 20;
};

/** Why a request head was refused before any handler saw it. */
struct HeadRefusal {
  int status = 400;    // 400, 431 or 505
  std::string reason;  // stable detail for the envelope's details.reason ("conflicting_framing", ...)
  std::string message;
};

/**
 * Checks one request head (request line and header lines up to and including the empty line, as received) against
 * the framing rules berthd enforces: CRLF line ends, `METHOD SP target SP HTTP/1.x`, field names made of token
 * characters followed directly by ':', no obs-fold, no control bytes (other than HTAB) in values, at most one
 * Content-Length (1-18 decimal digits), at most one Transfer-Encoding (exactly "chunked", HTTP/1.1 only), never both,
 * at most one Host, at most 100 fields, names up to 256 bytes and values up to 8,192. Returns the refusal, or nullopt
 * when the head is acceptable. Pure; thread-safe.
 */
std::optional<HeadRefusal> check_request_head(std::string_view head);

/** Builds the JSON error envelope ({"error":{code,message,request_id,details{reason}}}) as text. Thread-safe. */
std::string error_envelope(std::string_view code, const std::string& message, const std::string& request_id,
                           const std::string& reason);

/**
 * Serves HTTP/1.1 on a bound, listening socket. `handler` runs on a worker thread once per request, with Poco's
 * request and response objects (the response's status line is always HTTP/1.1 with the standard reason phrase; an
 * unread request body is drained up to drain_limit or the connection is closed). `next_request_id` names refusals
 * made before a handler runs. A handler that answers 101 Switching Protocols (a WebSocket, through Poco's
 * WebSocket(request, response)) owns the connection until it returns: the slow-client watchdog leaves it alone and
 * it is closed afterwards, never kept alive. All methods are for one owner thread; the handler must be thread-safe.
 */
class HttpServer {
 public:
  using Handler = std::function<void(Poco::Net::HTTPServerRequest&, Poco::Net::HTTPServerResponse&)>;
  HttpServer(Poco::Net::ServerSocket socket, int threads, int queue, std::size_t thread_stack_bytes,
             ConnectionLimits limits, Handler handler, std::function<std::string()> next_request_id);
  /** close(), then joins the poller; waits at most Poco's thread-pool grace for workers. */
  ~HttpServer();

  /** Starts the poller/watchdog thread. Throws std::system_error if epoll or eventfd cannot be created. */
  void start();
  /** The bound port. */
  std::uint16_t port() const;
  /** Stops accepting; open connections keep being served. */
  void stop_accepting();
  /** Closes every connection (idle ones at once, busy ones by shutting their socket down) and stops the poller. */
  void close();

  struct State;  // private; public only so the implementation's helpers can name it

 private:
  std::shared_ptr<State> state_;
};

}  // namespace berth::api
