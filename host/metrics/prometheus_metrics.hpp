// berthd's metrics registry: implements core::Metrics with prometheus-cpp's core library (Debian
// prometheus-cpp-dev; only its core part, no civetweb "pull" server: berthd serves GET /metrics itself) and renders
// the Prometheus text exposition format 0.0.4. No prometheus-cpp type appears in this header, so the rest of the
// host never compiles against it. Every series is listed in docs/api.md "GET /metrics".
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/metrics.hpp"

namespace berth::metrics {

/** One route of the HTTP layer as a label pair: method and route template ("/v1/sandboxes/{}"). */
struct HttpRoute {
  std::string method;
  std::string route;
};

/**
 * The registry. Constructed once by the daemon (before the HTTP layer serves) with every route the HTTP layer has.
 * Exec, cleanup, idempotency and store series exist from the start with value 0; HTTP and driver-call series
 * appear with their first observation. Thread-safe: every method may
 * be called from any thread concurrently. Label values come only from fixed sets (route templates, methods,
 * statuses, driver calls, action names): no ids, so cardinality is bounded.
 */
class PrometheusMetrics final : public core::Metrics {
 public:
  /** Content-Type of render()'s output. */
  static constexpr std::string_view kContentType = "text/plain; version=0.0.4; charset=utf-8";
  /** Label value of `route` for requests that matched no route (404, 405, a malformed target). */
  static constexpr std::string_view kUnmatchedRoute = "unmatched";

  /** `routes` in the route table's order: request_done takes an index into it. */
  explicit PrometheusMetrics(const std::vector<HttpRoute>& routes);
  ~PrometheusMetrics() override;
  PrometheusMetrics(const PrometheusMetrics&) = delete;
  PrometheusMetrics& operator=(const PrometheusMetrics&) = delete;

  // core::Metrics
  void exec_done(std::string_view kind, core::ExecEnd end, double seconds) noexcept override;
  void driver_call_done(std::string_view call, std::string_view status, double seconds) noexcept override;
  void cleanup_pass_done(const core::CleanupActionCounts& actions, double seconds) noexcept override;
  void idempotency_replayed() noexcept override;

  /**
   * One HTTP request ended with `status` after `seconds`. `route` is the matched route's index in the constructor's
   * list, or any index past its end for no route: then the request counts under route="unmatched" with `method`
   * folded to GET/HEAD/POST/PUT/DELETE/PATCH/OPTIONS or "other". A route's series appear with its first request;
   * lock-free after a (route, status) pair's first use (then only the histogram's own short lock).
   */
  void request_done(std::size_t route, std::string_view method, int status, double seconds) noexcept;

  /**
   * The whole exposition (text format 0.0.4, https://prometheus.io/docs/instrumenting/exposition_formats/):
   * the counters and histograms, the gauges from `snapshot`, and the process_* series read now. Scrapes are
   * serialised by an internal mutex. Throws std::bad_alloc only.
   */
  std::string render(const core::LifecycleSnapshot& snapshot);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace berth::metrics
