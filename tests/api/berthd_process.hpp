// Test harness for the API suite: the real berthd binary as a child process on a free loopback port, with its own
// temporary directory (config file, SQLite database, log file), plus a small blocking HTTP client.
#pragma once

#include <Poco/JSON/Object.h>
#include <Poco/Net/NameValueCollection.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace berth::test {

/** What goes into the generated berth.toml besides listen address, store path and driver path. */
struct BerthdConfig {
  std::string server;           // extra lines for [server], e.g. "threads = 6"
  std::string driver_settings;  // lines for [driver.settings] (the fake driver's JSON config, as TOML)
  std::string extra;            // TOML appended at the end: [profiles.*], [auth], [cleanup], ...
  std::string driver_path;      // the driver library; empty = the fake driver
};

/**
 * berthd as a child process. The constructor creates a fresh temporary directory, writes berth.toml there (listen on
 * 127.0.0.1 port 0, berth.db in the directory, the fake driver), starts berthd, learns the port it bound from its
 * "berthd.started" log line, pins that port in the config (restarts reuse it) and waits for GET /health.
 * stdout and stderr of every start are appended to log_path(). The destructor kills berthd (SIGKILL) if it still
 * runs, removes what it left in a real engine (remove_engine_leftovers) and removes the directory (both kept when
 * BERTH_TEST_KEEP_DIRS is set).
 */
class BerthdProcess {
 public:
  explicit BerthdProcess(BerthdConfig config = {});
  ~BerthdProcess();
  BerthdProcess(const BerthdProcess&) = delete;
  BerthdProcess& operator=(const BerthdProcess&) = delete;

  /** Starts berthd on the same directory, database and port, and waits until /health answers. */
  void start();
  /** SIGTERM and wait (SIGKILL after `timeout`). Returns the exit code, or -signal when killed by a signal. */
  int stop(std::chrono::seconds timeout = std::chrono::seconds(20));
  /** SIGKILL and wait: no graceful shutdown at all. */
  void kill9();
  /** stop() then start(). */
  void restart();
  bool running();

  std::uint16_t port() const { return port_; }
  /** The running berthd's process id, or -1. */
  int pid() const { return pid_; }
  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path log_path() const { return dir_ / "berthd.log"; }
  std::filesystem::path config_path() const { return dir_ / "berth.toml"; }

  /** docker/podman drivers only: removes the containers and volumes labelled with an instance id this berthd logged
   *  at start (`berth.instance`). Tests end with SIGKILL, and sandboxes a test did not delete kept running: 259 of
   *  them had piled up on this machine's Podman. Uses the engines' CLIs on their default sockets; best effort. */
  void remove_engine_leftovers() const;
  /** The whole log file as written so far. */
  std::string log() const;
  /** How many lines of the log contain `needle`. */
  std::size_t count_log_lines(std::string_view needle) const;
  /** Polls the log until a line contains `needle`; false after `timeout`. */
  bool wait_for_log(std::string_view needle, std::chrono::milliseconds timeout) const;

 private:
  void write_config();
  bool spawn_and_wait_healthy(std::string& why);
  int wait_exit(std::chrono::milliseconds timeout);

  BerthdConfig config_;
  std::filesystem::path dir_;
  std::uint16_t port_ = 0;
  int pid_ = -1;
};

struct ExitResult {
  bool exited = false;  // false: still running at the deadline (then killed)
  int code = 0;         // exit code, or -signal
  std::string log;      // its stdout and stderr
};

/**
 * Runs berthd once with `toml` as its config (written to a fresh temporary directory, removed afterwards; "@DIR@" in
 * `toml` is replaced by that directory) and waits up to `timeout` for it to exit by itself; a berthd still running
 * then is SIGKILLed.
 */
ExitResult run_berthd_until_exit(const std::string& toml, std::chrono::milliseconds timeout);

struct HttpResponse {
  int status = 0;
  std::string body;
  Poco::Net::NameValueCollection headers;
  std::chrono::milliseconds elapsed{0};

  std::string header(const std::string& name) const { return headers.get(name, ""); }
  bool has_header(const std::string& name) const { return headers.has(name); }
  /** The body parsed as a JSON object; throws (failing the test) when it is not one. */
  Poco::JSON::Object::Ptr json() const;
};

using Headers = std::vector<std::pair<std::string, std::string>>;

/** One HTTP/1.1 connection per request, so that a client may be used from many threads at once. */
class HttpClient {
 public:
  explicit HttpClient(std::uint16_t port, std::string bearer_token = "")
      : port_(port), token_(std::move(bearer_token)) {}

  HttpResponse request(const std::string& method, const std::string& uri, const std::string& body = "",
                       const std::string& content_type = "application/json", const Headers& headers = {}) const;
  HttpResponse get(const std::string& uri, const Headers& headers = {}) const {
    return request("GET", uri, "", "", headers);
  }
  HttpResponse del(const std::string& uri, const Headers& headers = {}) const {
    return request("DELETE", uri, "", "", headers);
  }
  HttpResponse post(const std::string& uri, const std::string& body = "", const Headers& headers = {}) const {
    return request("POST", uri, body, "application/json", headers);
  }
  HttpResponse put(const std::string& uri, const std::string& body, const Headers& headers = {}) const {
    return request("PUT", uri, body, "application/json", headers);
  }

 private:
  HttpResponse exchange(const std::string& method, const std::string& uri, const std::string& body,
                        const std::string& content_type, const Headers& headers) const;

  std::uint16_t port_;
  std::string token_;
};

struct Part {
  std::string name;
  std::string value;
  std::string filename;  // non-empty: a file part
};

/** A multipart/form-data body; returns {content type, body}. */
std::pair<std::string, std::string> multipart(const std::vector<Part>& parts);

/** Percent-encodes a query parameter value. */
std::string url_encode(const std::string& value);

}  // namespace berth::test
