#include "metrics/prometheus_metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <array>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <sstream>

#include "metrics/process_stats.hpp"

namespace berth::metrics {
namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;

// Seconds. Requests and driver calls: 1 ms .. 5 min (an exec request lasts as long as its code, up to the 300 s
// timeout). Cleanup passes are slower; execs start at 5 ms (a process spawn).
const Histogram::BucketBoundaries kLatencyBuckets{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                  1,     2.5,    5,     10,   30,    60,   120, 300};
const Histogram::BucketBoundaries kExecBuckets{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                               2.5,   5,    10,    30,   60,  120,  300};
const Histogram::BucketBoundaries kCleanupBuckets{0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300};

constexpr std::array<std::string_view, 7> kMethods{"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"};
constexpr std::string_view kOtherMethod = "other";
constexpr int kMinStatus = 100;
constexpr int kStatuses = 500;  // 100..599; anything else counts as status="other" (slot kStatuses)

constexpr std::array<std::string_view, 2> kExecKinds{"python", "shell"};
constexpr std::array<core::ExecEnd, 4> kExecEnds{core::ExecEnd::success, core::ExecEnd::nonzero_exit,
                                                 core::ExecEnd::timeout, core::ExecEnd::error};

/** A counter that mirrors a total kept elsewhere (read at scrape time): increments by the difference. */
void sync_counter(Counter& c, double total) {
  double now = c.Value();
  if (total > now) c.Increment(total - now);
}

}  // namespace

/** The series of one (method, route) pair: its latency histogram and a counter per status, created on first use. */
struct RouteSeries {
  std::string method;
  std::string route;
  std::atomic<Histogram*> duration{nullptr};  // created on the route's first request (keeps the scrape small)
  std::array<std::atomic<Counter*>, kStatuses + 1> by_status{};
};

struct PrometheusMetrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();

  Family<Counter>& requests = prometheus::BuildCounter()
                                  .Name("berth_http_requests_total")
                                  .Help("HTTP requests answered, by method, route template and status code.")
                                  .Register(*registry);
  Family<Histogram>& request_seconds = prometheus::BuildHistogram()
                                           .Name("berth_http_request_duration_seconds")
                                           .Help("Time from a request's head to the end of its handler, seconds.")
                                           .Register(*registry);
  Family<Counter>& execs = prometheus::BuildCounter()
                               .Name("berth_exec_total")
                               .Help(
                                   "Executions (python/shell exec) that got past validation, by kind and outcome "
                                   "(success, nonzero_exit, timeout, error).")
                               .Register(*registry);
  Family<Histogram>& exec_seconds =
      prometheus::BuildHistogram()
          .Name("berth_exec_duration_seconds")
          .Help("Wall time of an execution, from asking for the session (a cold start included) to its end, seconds.")
          .Register(*registry);
  Family<Histogram>& driver_seconds =
      prometheus::BuildHistogram()
          .Name("berth_driver_call_duration_seconds")
          .Help("Calls into the driver plugin by call and status (ok or the driver's error code), seconds.")
          .Register(*registry);
  Family<Counter>& cleanup_passes = prometheus::BuildCounter()
                                        .Name("berth_cleanup_passes_total")
                                        .Help("Cleanup passes run (timer and POST /v1/admin/gc/run).")
                                        .Register(*registry);
  Family<Histogram>& cleanup_seconds = prometheus::BuildHistogram()
                                           .Name("berth_cleanup_pass_duration_seconds")
                                           .Help("Duration of one cleanup pass, seconds.")
                                           .Register(*registry);
  Family<Counter>& cleanup_actions = prometheus::BuildCounter()
                                         .Name("berth_cleanup_actions_total")
                                         .Help("What cleanup passes did, by action.")
                                         .Register(*registry);
  Family<Counter>& replays = prometheus::BuildCounter()
                                 .Name("berth_idempotency_replays_total")
                                 .Help(
                                     "Requests answered with the stored response of an earlier request with the "
                                     "same Idempotency-Key.")
                                 .Register(*registry);
  Family<Counter>& store_retries = prometheus::BuildCounter()
                                       .Name("berth_store_transaction_retries_total")
                                       .Help("Store transactions run again after a conflict with another connection.")
                                       .Register(*registry);
  Family<Gauge>& sandboxes = prometheus::BuildGauge()
                                 .Name("berth_sandboxes")
                                 .Help("Live (not deleted) sandboxes by status, when scraped.")
                                 .Register(*registry);
  Family<Gauge>& sessions = prometheus::BuildGauge()
                                .Name("berth_sessions")
                                .Help("Sessions by state (starting, running), when scraped.")
                                .Register(*registry);
  Family<Gauge>& sessions_transport =
      prometheus::BuildGauge()
          .Name("berth_sessions_running_by_transport")
          .Help("Running sessions by how berthd reaches them (agent, engine-exec, ...), when scraped.")
          .Register(*registry);
  std::map<std::string, Gauge*> sessions_by_transport;  // guarded like the rest of render()
  Family<Gauge>& terminals = prometheus::BuildGauge()
                                 .Name("berth_terminals_open")
                                 .Help("Terminals (WebSockets) this berthd holds open, when scraped.")
                                 .Register(*registry);
  Family<Gauge>& async_running = prometheus::BuildGauge()
                                     .Name("berth_async_executions_running")
                                     .Help("Async executions running on this berthd, when scraped.")
                                     .Register(*registry);
  Family<Gauge>& uptime = prometheus::BuildGauge()
                              .Name("berth_uptime_seconds")
                              .Help("Seconds since the metrics registry (berthd) started.")
                              .Register(*registry);
  Family<Gauge>& build_info = prometheus::BuildGauge()
                                  .Name("berth_build_info")
                                  .Help("Always 1; the label carries berthd's version.")
                                  .Register(*registry);
  // process_* as the Prometheus client libraries name them.
  Family<Counter>& cpu = prometheus::BuildCounter()
                             .Name("process_cpu_seconds_total")
                             .Help("Total user and system CPU time spent in seconds.")
                             .Register(*registry);
  Family<Gauge>& rss = prometheus::BuildGauge()
                           .Name("process_resident_memory_bytes")
                           .Help("Resident memory size in bytes.")
                           .Register(*registry);
  Family<Gauge>& vsize = prometheus::BuildGauge()
                             .Name("process_virtual_memory_bytes")
                             .Help("Virtual memory size in bytes.")
                             .Register(*registry);
  Family<Gauge>& open_fds =
      prometheus::BuildGauge().Name("process_open_fds").Help("Number of open file descriptors.").Register(*registry);
  Family<Gauge>& max_fds = prometheus::BuildGauge()
                               .Name("process_max_fds")
                               .Help("Maximum number of open file descriptors.")
                               .Register(*registry);
  Family<Gauge>& threads =
      prometheus::BuildGauge().Name("process_threads").Help("Number of OS threads.").Register(*registry);
  Family<Gauge>& start_time = prometheus::BuildGauge()
                                  .Name("process_start_time_seconds")
                                  .Help("Start time of the process since unix epoch in seconds.")
                                  .Register(*registry);

  std::vector<std::unique_ptr<RouteSeries>> routes;  // the route table's, then one per unmatched method
  std::size_t first_unmatched = 0;
  std::array<std::array<Counter*, kExecEnds.size()>, kExecKinds.size()> exec_counters{};
  std::array<Histogram*, kExecKinds.size()> exec_histograms{};
  Counter* cleanup_pass_counter = nullptr;
  Histogram* cleanup_histogram = nullptr;
  Counter* replay_counter = nullptr;
  Counter* store_retry_counter = nullptr;
  const std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::mutex render_mutex;

  RouteSeries& add_route(std::string method, std::string route) {
    auto s = std::make_unique<RouteSeries>();
    s->method = std::move(method);
    s->route = std::move(route);
    routes.push_back(std::move(s));
    return *routes.back();
  }

  Histogram& duration(RouteSeries& s) {
    if (Histogram* h = s.duration.load(std::memory_order_acquire)) return *h;
    Histogram* h = &request_seconds.Add({{"method", s.method}, {"route", s.route}}, kLatencyBuckets);
    s.duration.store(h, std::memory_order_release);
    return *h;
  }

  Counter& status_counter(RouteSeries& s, int status) {
    std::size_t slot = status >= kMinStatus && status < kMinStatus + kStatuses
                           ? static_cast<std::size_t>(status - kMinStatus)
                           : static_cast<std::size_t>(kStatuses);
    if (Counter* c = s.by_status[slot].load(std::memory_order_acquire)) return *c;
    // Family::Add returns the existing series for labels it already has, so two threads racing here agree.
    std::string label = slot == kStatuses ? "other" : std::to_string(status);
    Counter* c = &requests.Add({{"method", s.method}, {"route", s.route}, {"status", label}});
    s.by_status[slot].store(c, std::memory_order_release);
    return *c;
  }
};

PrometheusMetrics::PrometheusMetrics(const std::vector<HttpRoute>& routes) : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  for (const auto& r : routes)
    m.add_route(r.method, r.route);
  m.first_unmatched = m.routes.size();
  for (auto method : kMethods)
    m.add_route(std::string(method), std::string(kUnmatchedRoute));
  m.add_route(std::string(kOtherMethod), std::string(kUnmatchedRoute));
  for (std::size_t k = 0; k < kExecKinds.size(); ++k) {
    std::string kind(kExecKinds[k]);
    m.exec_histograms[k] = &m.exec_seconds.Add({{"kind", kind}}, kExecBuckets);
    for (std::size_t e = 0; e < kExecEnds.size(); ++e)
      m.exec_counters[k][e] = &m.execs.Add({{"kind", kind}, {"outcome", std::string(core::to_string(kExecEnds[e]))}});
  }
  m.cleanup_pass_counter = &m.cleanup_passes.Add({});
  m.cleanup_histogram = &m.cleanup_seconds.Add({}, kCleanupBuckets);
  for (auto action : {"idle_stopped", "expired_deleted", "orphans_removed", "workspaces_removed", "dead_sessions",
                      "skipped_stale", "skipped_in_use", "failed", "executions_expired"})
    m.cleanup_actions.Add({{"action", action}});
  m.replay_counter = &m.replays.Add({});
  m.store_retry_counter = &m.store_retries.Add({});
  m.build_info.Add({{"version", BERTH_VERSION}}).Set(1);
}

PrometheusMetrics::~PrometheusMetrics() = default;

void PrometheusMetrics::exec_done(std::string_view kind, core::ExecEnd end, double seconds) noexcept {
  auto& m = *impl_;
  std::size_t k = kind == "python" ? 0 : 1;
  m.exec_counters[k][static_cast<std::size_t>(end)]->Increment();
  m.exec_histograms[k]->Observe(seconds);
}

void PrometheusMetrics::driver_call_done(std::string_view call, std::string_view status, double seconds) noexcept {
  try {
    impl_->driver_seconds.Add({{"call", std::string(call)}, {"status", std::string(status)}}, kLatencyBuckets)
        .Observe(seconds);
  } catch (const std::exception&) {
    // Out of memory: losing one observation is better than failing the driver call.
  }
}

void PrometheusMetrics::cleanup_pass_done(const core::CleanupActionCounts& actions, double seconds) noexcept {
  auto& m = *impl_;
  try {
    m.cleanup_pass_counter->Increment();
    m.cleanup_histogram->Observe(seconds);
    for (const auto& [action, n] : actions) {
      if (n > 0) m.cleanup_actions.Add({{"action", std::string(action)}}).Increment(static_cast<double>(n));
    }
  } catch (const std::exception&) {
  }
}

void PrometheusMetrics::idempotency_replayed() noexcept {
  impl_->replay_counter->Increment();
}

void PrometheusMetrics::request_done(std::size_t route, std::string_view method, int status, double seconds) noexcept {
  auto& m = *impl_;
  if (route >= m.first_unmatched) {
    route = m.routes.size() - 1;  // "other"
    for (std::size_t i = 0; i < kMethods.size(); ++i) {
      if (kMethods[i] == method) route = m.first_unmatched + i;
    }
  }
  auto& series = *m.routes[route];
  try {
    m.status_counter(series, status).Increment();
    m.duration(series).Observe(seconds);
  } catch (const std::exception&) {
    // Out of memory creating a series: losing one observation is better than failing the request.
  }
}

std::string PrometheusMetrics::render(const core::LifecycleSnapshot& snapshot) {
  auto& m = *impl_;
  std::lock_guard lock(m.render_mutex);
  for (const auto& [status, n] : snapshot.sandboxes_by_status)
    m.sandboxes.Add({{"status", std::string(status)}}).Set(static_cast<double>(n));
  m.sessions.Add({{"state", "starting"}}).Set(static_cast<double>(snapshot.sessions_starting));
  m.sessions.Add({{"state", "running"}}).Set(static_cast<double>(snapshot.sessions_running));
  for (auto& [transport, metric] : m.sessions_by_transport)  // a transport no longer seen reads 0, not stale
    if (!snapshot.sessions_running_by_transport.count(transport)) metric->Set(0);
  for (const auto& [transport, n] : snapshot.sessions_running_by_transport) {
    auto& metric = m.sessions_by_transport[transport];
    if (!metric) metric = &m.sessions_transport.Add({{"transport", transport}});
    metric->Set(static_cast<double>(n));
  }
  sync_counter(*m.store_retry_counter, static_cast<double>(snapshot.store_transaction_retries));
  m.terminals.Add({}).Set(static_cast<double>(snapshot.terminals_open));
  m.async_running.Add({}).Set(static_cast<double>(snapshot.async_executions_running));
  m.uptime.Add({}).Set(std::chrono::duration<double>(std::chrono::steady_clock::now() - m.started).count());

  auto p = read_process_stats();
  if (p.cpu_seconds) sync_counter(m.cpu.Add({}), *p.cpu_seconds);
  if (p.resident_bytes) m.rss.Add({}).Set(static_cast<double>(*p.resident_bytes));
  if (p.virtual_bytes) m.vsize.Add({}).Set(static_cast<double>(*p.virtual_bytes));
  if (p.open_fds) m.open_fds.Add({}).Set(static_cast<double>(*p.open_fds));
  if (p.max_fds) m.max_fds.Add({}).Set(static_cast<double>(*p.max_fds));
  if (p.threads) m.threads.Add({}).Set(static_cast<double>(*p.threads));
  if (p.start_time_seconds) m.start_time.Add({}).Set(*p.start_time_seconds);

  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, m.registry->Collect());
  return out.str();
}

}  // namespace berth::metrics
