// The HTTP front door: owns Poco's HTTPServer, authenticates, admits, routes, and maps core results and errors to
// JSON. Route handlers (api/routes.cpp) only translate HTTP to core calls.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "api/admission.hpp"
#include "api/http_connection.hpp"
#include "core/clock.hpp"
#include "core/idempotency.hpp"
#include "core/sandbox_service.hpp"
#include "metrics/prometheus_metrics.hpp"

namespace berth::api {

/** The HTTP layer's settings, filled from config::ServerConfig and config::AuthConfig by the daemon. */
struct ApiSettings {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8080;
  int threads = 1024;         // server thread pool: one thread per open connection (queued requests wait on theirs)
  int queue = 64;             // accepted connections waiting for a thread (Poco's dispatcher queue)
  AdmissionLimits admission;  // work_slots / work_queue / work_queue_timeout for heavy routes
  std::size_t thread_stack_bytes = 512u << 10;  // per server thread
  std::uint64_t max_body = 1 << 20;
  std::uint64_t max_file_size = 100ull << 20;
  ConnectionLimits connection;                    // header/keep-alive deadlines, minimum transfer rate, per-client cap
  std::map<std::string, std::string> api_keys;    // key -> owner (tenants)
  std::map<std::string, std::string> admin_keys;  // key -> operator name (admin role: /v1/admin routes)
  bool allow_anonymous = true;
  std::string anonymous_owner = "default";
  std::string version = BERTH_VERSION;
  std::vector<std::string> terminal_origins;  // [server] terminal_origins (api/terminal.hpp)
  std::string metrics_bearer_token;           // [metrics] bearer_token: empty = GET /metrics is open like /health
};

/**
 * Callbacks that HttpApi::begin_shutdown runs once, after ApiContext::shutting_down is set: a handler that holds its
 * connection for long (a terminal's WebSocket) registers one to abort what shutting_down alone cannot reach (a send
 * blocked on a client that does not read). A hook must return at once and not throw. Thread-safe: remove() waits for
 * a running hook, so what a hook uses may be destroyed once remove() returned.
 */
class ShutdownHooks {
 public:
  using Id = std::uint64_t;
  Id add(std::function<void()> hook) {
    std::lock_guard lock(mutex_);
    hooks_.emplace(next_, std::move(hook));
    return next_++;
  }
  void remove(Id id) {
    std::lock_guard lock(mutex_);
    hooks_.erase(id);
  }
  void run_all() {
    std::lock_guard lock(mutex_);
    for (auto& [id, hook] : hooks_)
      hook();
  }

 private:
  std::mutex mutex_;
  std::map<Id, std::function<void()>> hooks_;
  Id next_ = 1;
};

/**
 * Everything a request handler may use. Shared by all server threads; every member is thread-safe. The referenced
 * service and idempotency registry must outlive every request (the daemon guarantees it by waiting for handlers, or
 * by exiting without destroying them).
 */
struct ApiContext {
  ApiContext(ApiSettings s, core::SandboxService& svc, core::IdempotencyRegistry& idem,
             std::shared_ptr<const core::Clock> c, metrics::PrometheusMetrics* m = nullptr)
      : settings(std::move(s)),
        service(svc),
        idempotency(idem),
        clock(std::move(c)),
        metrics(m),
        admission(settings.admission) {}
  ApiSettings settings;
  core::SandboxService& service;
  core::IdempotencyRegistry& idempotency;
  std::shared_ptr<const core::Clock> clock;
  // Counts every request and serves GET /metrics; null = metrics disabled (nothing counted, /metrics is 404).
  // Built from metric_routes() (routes() in table order); must outlive every request.
  metrics::PrometheusMetrics* metrics;
  Admission admission;  // heavy routes pass through it
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::atomic<std::uint64_t> next_request{1};
  std::atomic<int> handlers_running{0};    // requests inside handle_request right now
  std::atomic<bool> shutting_down{false};  // set by HttpApi::begin_shutdown: new requests get 503 shutting_down
  ShutdownHooks shutdown_hooks;            // run by HttpApi::begin_shutdown, after shutting_down is set
};

/**
 * The HTTP status of an error code (docs/api.md, Errors); 422 (Idempotency-Key mismatch), 405 and the connection
 * layer's refusals are chosen by their callers. Pure, thread-safe.
 */
int http_status(core::ErrorCode code);

/** A request/response pair as handle_request takes and returns it (no sockets involved). */
struct InProcessResponse {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // as the server would send them (without framing)
  std::string body;                                          // the whole body (a download is not chunk-framed)
};

/**
 * Runs one request through the whole HTTP layer (authentication, admission, routing, error mapping, idempotency,
 * the UTF-8 guard) in the calling thread, without sockets: the entry point for fuzz targets and in-process tests.
 * `uri` is the request target ("/v1/sandboxes?limit=5"); `headers` are sent as given (Content-Type and
 * Content-Length are derived from `body` unless present). Never throws for anything a client can send; the
 * context must be valid for the call. Thread-safe like every request.
 */
InProcessResponse handle_request(ApiContext& ctx, const std::string& method, const std::string& uri,
                                 const std::vector<std::pair<std::string, std::string>>& headers,
                                 const std::string& body);

/**
 * Every route of the route table as (method, template) label pairs, in table order: what the
 * metrics::PrometheusMetrics handed to HttpApi must be built with (requests are counted by table index).
 */
std::vector<metrics::HttpRoute> metric_routes();

/**
 * Owns the listening socket and the connection layer (HttpServer: a poller for request heads and idle keep-alive
 * connections, a worker pool sized by ApiSettings::threads with small stacks, so that requests waiting for admission
 * only cost a parked thread). Methods are called by the daemon's main thread only.
 */
class HttpApi {
 public:
  /** `metrics` (may be null, borrowed) must have been built from metric_routes() and outlive the HttpApi. */
  HttpApi(ApiSettings settings, core::SandboxService& service, core::IdempotencyRegistry& idempotency,
          std::shared_ptr<const core::Clock> clock, metrics::PrometheusMetrics* metrics = nullptr);
  /** Stops the server if still running; never waits for stuck handlers (see wait_for_handlers). */
  ~HttpApi();

  /** Binds and starts serving. Throws Poco::Exception on bind failure. */
  void start();
  /** The bound port (useful with port 0). */
  std::uint16_t port() const;
  /**
   * Shutdown, step 1: stops accepting connections, answers every new request on open connections with
   * 503 shutting_down, and wakes requests queued for admission (they get 503 shutting_down too).
   */
  void begin_shutdown();
  /**
   * Shutdown, step 2 (may be repeated): waits up to `grace` for running handlers to return. Returns the number of
   * handlers still running (0 = drained; otherwise the caller must not free what they use).
   */
  int wait_for_handlers(std::chrono::milliseconds grace);
  /** Shutdown, step 3, once drained: closes the remaining (idle keep-alive) connections. */
  void close();

  /** The shared request context (for tests and the daemon's logs). */
  ApiContext& context() { return *ctx_; }

 private:
  std::shared_ptr<ApiContext> ctx_;
  std::unique_ptr<HttpServer> server_;
};

}  // namespace berth::api
