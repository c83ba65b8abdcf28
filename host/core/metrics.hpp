// What the core reports to an operator's metrics system. The core calls this interface at the points that matter
// (an exec ended, a driver call returned, a cleanup pass finished); it knows nothing of Prometheus. The daemon
// hands the core the Prometheus implementation (host/metrics, its own CMake target) or NullMetrics when
// [metrics] enabled = false. docs/api.md "GET /metrics" lists the series each call feeds.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace berth::core {

/** How an execution ended, as metrics count it (bounded: these four values only). */
enum class ExecEnd {
  success,       // the process exited 0
  nonzero_exit,  // the process exited with another code (a signal counts here too)
  timeout,       // the exec timeout killed it
  error,         // no result: the driver failed, the exec was cancelled, or no session could be started
};

/** Stable lowercase name ("nonzero_exit"), used as a label value. Inline: host/metrics uses it without linking core. */
inline std::string_view to_string(ExecEnd end) {
  switch (end) {
    case ExecEnd::success:
      return "success";
    case ExecEnd::nonzero_exit:
      return "nonzero_exit";
    case ExecEnd::timeout:
      return "timeout";
    case ExecEnd::error:
      break;
  }
  return "error";
}

/** One cleanup pass's actions: (action name, how many), e.g. ("idle_stopped", 2). Names are a fixed set. */
using CleanupActionCounts = std::vector<std::pair<std::string_view, std::uint64_t>>;

/**
 * Sink for the core's events. Every method is called from any thread (HTTP workers, the cleanup thread), possibly
 * concurrently, and must be thread-safe, cheap (it sits on the exec path) and never throw. String views are borrowed
 * for the call. Implementations: NullMetrics (below) and metrics::PrometheusMetrics.
 */
class Metrics {
 public:
  virtual ~Metrics() = default;
  /**
   * An exec that got past validation ended. `kind` is "python" or "shell"; `seconds` is the wall time from asking
   * for the session (so it includes a cold start) to the process's end.
   */
  virtual void exec_done(std::string_view kind, ExecEnd end, double seconds) noexcept = 0;
  /**
   * A call into the driver returned. `call` is the Driver method's name ("session_create", "exec", ...); `status`
   * is "ok" or the DriverErrc name ("unavailable", "timeout", ...), "error" for anything else it threw.
   */
  virtual void driver_call_done(std::string_view call, std::string_view status, double seconds) noexcept = 0;
  /** A cleanup pass finished; `actions` counts what it did (every action name, 0 when it did none). */
  virtual void cleanup_pass_done(const CleanupActionCounts& actions, double seconds) noexcept = 0;
  /** A request carrying an Idempotency-Key got a stored response instead of running again. */
  virtual void idempotency_replayed() noexcept = 0;
};

/** Counts nothing: the core's default, and the daemon's choice when metrics are disabled. */
class NullMetrics final : public Metrics {
 public:
  void exec_done(std::string_view, ExecEnd, double) noexcept override {}
  void driver_call_done(std::string_view, std::string_view, double) noexcept override {}
  void cleanup_pass_done(const CleanupActionCounts&, double) noexcept override {}
  void idempotency_replayed() noexcept override {}
};

/** A process-wide NullMetrics (stateless, so sharing it is safe). */
inline Metrics& null_metrics() {
  static NullMetrics instance;
  return instance;
}

/**
 * The core's state at one moment, sampled when /metrics is scraped (not kept up to date on every change):
 * live sandboxes per status name (every status present, 0 when none) and active sessions by state, plus the
 * store's transaction retries so far.
 */
struct LifecycleSnapshot {
  std::vector<std::pair<std::string_view, std::int64_t>> sandboxes_by_status;
  std::int64_t sessions_starting = 0;
  std::int64_t sessions_running = 0;  // sessions in state ready: their container runs
  /** Running (ready) sessions by transport (core::transport_of their endpoint; "none" without one). */
  std::map<std::string, std::int64_t> sessions_running_by_transport;
  std::uint64_t store_transaction_retries = 0;
  std::int64_t terminals_open = 0;            // this berthd's open terminals (WebSockets)
  std::int64_t async_executions_running = 0;  // this berthd's running async executions
};

}  // namespace berth::core
