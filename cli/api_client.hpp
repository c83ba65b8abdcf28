// The CLI's HTTP client for berthd's API v1 (docs/api.md): one Poco HTTPClientSession per call, JSON bodies,
// the error envelope turned into ServerError, transport failures into ConnectionError.
#pragma once

#include <Poco/JSON/Object.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/WebSocket.h>
#include <Poco/URI.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace berth::cli {

/** berthd answered with an error status. Exit code 2. */
class ServerError : public std::runtime_error {
 public:
  ServerError(int status, std::string code, const std::string& message, std::string request_id,
              std::map<std::string, std::string> details, std::string body)
      : std::runtime_error(message),
        status(status),
        code(std::move(code)),
        request_id(std::move(request_id)),
        details(std::move(details)),
        body(std::move(body)) {}
  int status;
  std::string code;        // the envelope's stable code, or "http_<status>" when the body is not an envelope
  std::string request_id;  // may be empty
  std::map<std::string, std::string> details;
  std::string body;  // the raw response body
};

/** No HTTP answer: refused, unreachable, timed out, cut off, or not HTTP. Exit code 3. */
class ConnectionError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/** A successful (2xx) answer: status and the raw body. */
struct Reply {
  int status = 0;
  std::string body;
  /** The body parsed as a JSON object; throws ConnectionError ("not JSON") when it is not one. */
  Poco::JSON::Object::Ptr json() const;
};

/** Where an exec's output goes, as it comes back. */
class ExecSink {
 public:
  virtual ~ExecSink() = default;
  /** Bytes the program wrote to stdout. */
  virtual void on_stdout(std::string_view bytes) = 0;
  /** Bytes the program wrote to stderr. */
  virtual void on_stderr(std::string_view bytes) = 0;
};

/** The end of an exec: the server's JSON body (kept for --json) and its fields. */
struct ExecResult {
  std::string body;
  bool timed_out = false;
  std::optional<int> exit_code;  // null when timed out
};

/**
 * Talks to one berthd. `base_url` is `http://host[:port][/prefix]` (https is not supported: put berthd behind
 * nothing that needs it, or use a local tunnel); a non-empty `api_key` is sent as `Authorization: Bearer`.
 * Every call opens its own connection; an instance may be used from one thread at a time. Calls throw
 * ServerError for a non-2xx answer and ConnectionError when there is no usable answer.
 */
class ApiClient {
 public:
  /** Throws UsageError for a URL that is not http://host[:port][/path]. */
  ApiClient(const std::string& base_url, std::string api_key);

  /** One request; `body` (JSON) is sent with Content-Type application/json when given. */
  Reply call(const std::string& method, const std::string& path, const std::optional<std::string>& body = {});

  /**
   * Runs one exec route (`python/exec` or `shell/exec`) and hands its output to `sink` as it arrives: the request
   * asks for Server-Sent Events (docs/api.md, "Streaming output"), so each stdout/stderr chunk reaches the sink
   * while the program runs, in the order produced, and the `result` event gives the answer's JSON (plus, on
   * stderr, what the server appended to the program's stderr, e.g. the timeout note). A server that answers plain
   * JSON instead gives stdout then stderr once, at the end. An `error` event (a failure after the output began)
   * throws ServerError like an error status; a stream that ends without a result throws ConnectionError.
   */
  ExecResult exec(const std::string& path, const std::string& body, ExecSink& sink);

  /**
   * POST .../filesystem/upload of the local file `local` (streamed, binary-safe; Content-Length from its size)
   * to `remote` (sent as `path`, or as `path_b64` when it is not valid UTF-8). Throws UsageError when `local`
   * cannot be opened.
   */
  Reply upload(const std::string& sandbox_path, const std::filesystem::path& local, const std::string& remote);

  /** GET .../filesystem/download of `remote`, its bytes written to `out` as they arrive. Returns the byte count. */
  std::uint64_t download(const std::string& sandbox_path, const std::string& remote, std::ostream& out);

  /**
   * Opens GET .../terminal (docs/api.md, "Terminal") as a WebSocket of `rows` x `cols` (0: the server's default).
   * `term` (may be empty: the server's default) is the shell's TERM. The returned socket owns the connection. A
   * refusal (no 101) throws ServerError with the server's envelope; no answer throws ConnectionError.
   */
  std::unique_ptr<Poco::Net::WebSocket> open_terminal(const std::string& sandbox_path, int rows, int cols,
                                                      const std::string& term);

  /** The URL as given (for messages). */
  const std::string& base_url() const { return base_url_; }

 private:
  std::string target(const std::string& path) const;
  /** Sends `rq` (with `write_body` writing the body, or none), reads the whole answer; throws as call() does. */
  Reply exchange(Poco::Net::HTTPRequest& rq, const std::function<void(std::ostream&)>& write_body);

  std::string base_url_;
  std::string api_key_;
  Poco::URI uri_;
  std::string prefix_;
};

/** Percent-encodes one path segment or query value (Poco::URI::encode with every RFC 3986 delimiter reserved). */
std::string encode_component(const std::string& value);

/** `?name=value&...` from the pairs whose value is set; "" when none is. */
std::string query_string(const std::vector<std::pair<std::string, std::optional<std::string>>>& params);

/** The `path=` or `path_b64=` query pair for a remote path (path_b64 when the bytes are not valid UTF-8). */
std::pair<std::string, std::optional<std::string>> path_param(const std::string& remote);

}  // namespace berth::cli
