// Engine REST plumbing shared by the Docker and Podman drivers: a client for the Docker Engine API (which Podman
// also serves under /v1.41) over a unix socket, built on Poco::Net.
//
// Every request uses a fresh connection (a unix-socket connect costs microseconds), so a Client is safe to use
// from several threads at once. The API version is negotiated lazily from GET /version and forgotten after a
// connection failure, so that the engine may be down when the client is made and be upgraded while it lives.
#pragma once

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/Net/StreamSocket.h>

#include <signal.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <istream>
#include <map>
#include <mutex>
#include <ostream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace berth::engine {

/** Why a call failed. The numeric values are the berth_status codes of berth/driver.h. */
enum class Errc : int {
  not_found = 1,
  invalid_argument = 2,
  conflict = 3,
  unavailable = 4,  // engine unreachable: the only retryable code
  timeout = 5,
  unsupported = 6,
  internal = 7,
  cancelled = 8
};

/** Thrown by every failing call of this library. `http_status` is 0 when the failure was not an HTTP answer. */
class Error : public std::runtime_error {
 public:
  Error(Errc code, const std::string& message, int http_status = 0)
      : std::runtime_error(message), code_(code), http_status_(http_status) {}
  Errc code() const { return code_; }
  int http_status() const { return http_status_; }

 private:
  Errc code_;
  int http_status_;
};

/** Maps an HTTP error status of the engine to a code: 400 invalid_argument, 404 not_found, 409 conflict, ... */
Errc errc_from_http_status(int status);

/**
 * Throws the Error for an engine error answer: the code from the status, and a message naming the request, the
 * status and the engine's own `{"message": ...}` (or the raw body when it is not JSON).
 */
[[noreturn]] void throw_http_error(std::string_view what, int status, std::string_view body);

/** Extracts "message" from an engine error body, or returns the trimmed body itself. */
std::string engine_message(std::string_view body);

/** Percent-encodes a path segment or a query value. */
std::string url_encode(std::string_view text);

/** Parses JSON text; throws Error(internal) when it is not JSON. */
Poco::Dynamic::Var parse_json(std::string_view text);
/** parse_json that requires an object. */
Poco::JSON::Object::Ptr parse_json_object(std::string_view text);
/** Serialises a JSON object or array compactly. */
std::string to_json(const Poco::JSON::Object::Ptr& object);
std::string to_json(const Poco::JSON::Array::Ptr& array);

/** Compares "1.41"-style API versions: <0, 0, >0. Unparsable parts compare as 0. */
int compare_api_versions(std::string_view a, std::string_view b);

struct ClientOptions {
  std::string socket_path = "/var/run/docker.sock";
  /** A pinned API version ("1.41"); empty: negotiate min(engine's ApiVersion, max_api_version). */
  std::string api_version;
  /** The newest API version this code speaks. */
  std::string max_api_version = "1.41";
  std::chrono::milliseconds connect_timeout{2000};
  /** Default for each socket read/write of a request (not for the whole request). */
  std::chrono::milliseconds request_timeout{60000};
  /** Used in error messages ("docker", "podman"). */
  std::string engine_name = "docker";
};

/** A complete (buffered) answer of the engine. */
struct Response {
  int status = 0;
  std::string reason;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;

  bool ok() const { return status >= 200 && status < 300; }
  Poco::JSON::Object::Ptr json_object() const { return parse_json_object(body); }
  Poco::Dynamic::Var json() const { return parse_json(body); }
};

class HijackedStream;

class Client {
 public:
  explicit Client(ClientOptions options);
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client();

  const ClientOptions& options() const { return options_; }

  /** The API version in use ("1.41"), negotiating it first if needed. Throws Error(unavailable) when down. */
  std::string api_version();
  /** Forgets the negotiated version (done automatically after connection failures). */
  void reset_api_version();

  /**
   * Sends one request and returns whatever the engine answered (no status check). `path` is unversioned
   * ("/containers/json?all=true"); the client prefixes "/v<version>". An empty content_type sends no body.
   * Throws Error(unavailable) when the engine cannot be reached, Error(timeout) when it stops answering.
   */
  Response send(std::string_view method, std::string_view path, std::string_view body = {},
                std::string_view content_type = {}, std::chrono::milliseconds timeout = {});

  /**
   * send() that throws the mapped Error for any status >= 300 that is not listed in `accept`.
   */
  Response call(std::string_view method, std::string_view path, std::string_view body = {},
                std::initializer_list<int> accept = {}, std::chrono::milliseconds timeout = {});

  /** call() with a JSON object body. */
  Response call_json(std::string_view method, std::string_view path, const Poco::JSON::Object::Ptr& body,
                     std::initializer_list<int> accept = {}, std::chrono::milliseconds timeout = {});

  /**
   * Streams a request body (chunked transfer encoding) produced by `writer`, then returns the buffered answer.
   * If `writer` throws, the connection is dropped and the exception propagates. Error statuses are thrown.
   */
  Response upload(std::string_view method, std::string_view path, std::string_view content_type,
                  const std::function<void(std::ostream&)>& writer, std::chrono::milliseconds timeout = {});

  /**
   * Sends a request without body and, for a 2xx answer, hands the body stream to `reader` (with the head in
   * `head`, body empty); error statuses are thrown. Dropping out of `reader` early closes the connection.
   */
  void download(std::string_view method, std::string_view path,
                const std::function<void(std::istream& body, const Response& head)>& reader,
                std::chrono::milliseconds timeout = {});

  /**
   * POSTs `body` to `path` asking for a connection upgrade (Connection: Upgrade, Upgrade: tcp), as
   * /exec/{id}/start and /containers/{id}/attach need, and returns the raw stream after the 101 (or 200)
   * answer. Error statuses are thrown.
   */
  HijackedStream hijack(std::string_view path, std::string_view json_body, std::chrono::milliseconds timeout = {});

  /** A connected socket to the engine. Throws Error(unavailable) (and forgets the API version) on failure. */
  Poco::Net::StreamSocket connect();

 private:
  std::string versioned(std::string_view path);
  std::chrono::milliseconds effective(std::chrono::milliseconds timeout) const;
  [[noreturn]] void rethrow_transport(std::string_view what);

  ClientOptions options_;
  std::mutex mutex_;
  std::string negotiated_;  // guarded by mutex_
};

/**
 * Blocks SIGPIPE on the calling thread for its lifetime and swallows a SIGPIPE raised meanwhile, so that a write
 * to a connection the engine closed fails with EPIPE instead of killing the host process.
 */
class SigpipeGuard {
 public:
  SigpipeGuard();
  ~SigpipeGuard();
  SigpipeGuard(const SigpipeGuard&) = delete;
  SigpipeGuard& operator=(const SigpipeGuard&) = delete;

 private:
  sigset_t old_mask_{};
  bool pending_before_ = false;
  bool active_ = false;
};

}  // namespace berth::engine
