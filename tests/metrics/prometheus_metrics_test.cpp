// The metrics registry and its exposition (host/metrics), the process figures it reads from /proc, and the core's
// events arriving in it from a real SandboxService on the fake driver plugin (through MeteredDriver).
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/metered_driver.hpp"
#include "core/service_fixture.hpp"
#include "metrics/process_stats.hpp"
#include "metrics/prometheus_metrics.hpp"

using berth::core::ExecEnd;
using berth::core::LifecycleSnapshot;
using berth::metrics::PrometheusMetrics;

namespace {

const std::vector<berth::metrics::HttpRoute> kRoutes{{"GET", "/health"}, {"POST", "/v1/sandboxes/{}/python/exec"}};

/** The value of the one sample line that starts with `series` followed by a space; nullopt when there is none. */
std::optional<double> sample(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  std::optional<double> found;
  while (std::getline(in, line)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 && line[series.size()] == ' ') {
      REQUIRE_FALSE(found);  // a series appears once
      found = std::stod(line.substr(series.size() + 1));
    }
  }
  return found;
}

LifecycleSnapshot empty_snapshot() {
  LifecycleSnapshot s;
  s.sandboxes_by_status = {{"idle", 0}, {"ready", 0}};
  return s;
}

}  // namespace

TEST_CASE("a fresh registry exposes its fixed series at zero with HELP and TYPE") {
  PrometheusMetrics m(kRoutes);
  auto text = m.render(empty_snapshot());
  CHECK(text.find("# TYPE berth_exec_total counter") != std::string::npos);
  CHECK(text.find("# TYPE berth_exec_duration_seconds histogram") != std::string::npos);
  CHECK(text.find("# HELP berth_sandboxes ") != std::string::npos);
  CHECK(sample(text, R"(berth_exec_total{kind="python",outcome="success"})") == 0.0);
  CHECK(sample(text, R"(berth_exec_total{kind="shell",outcome="timeout"})") == 0.0);
  CHECK(sample(text, R"(berth_cleanup_actions_total{action="orphans_removed"})") == 0.0);
  CHECK(sample(text, "berth_idempotency_replays_total") == 0.0);
  CHECK(sample(text, "berth_store_transaction_retries_total") == 0.0);
  CHECK(sample(text, R"(berth_build_info{version=")" BERTH_VERSION R"("})") == 1.0);
  // No request yet: no HTTP series (they appear with their route's first request).
  CHECK(text.find("berth_http_requests_total{") == std::string::npos);
}

TEST_CASE("requests are counted by method and route template and status with a latency histogram") {
  PrometheusMetrics m(kRoutes);
  m.request_done(0, "GET", 200, 0.002);
  m.request_done(0, "GET", 200, 0.2);
  m.request_done(1, "POST", 404, 0.004);
  auto text = m.render(empty_snapshot());
  CHECK(sample(text, R"(berth_http_requests_total{method="GET",route="/health",status="200"})") == 2.0);
  CHECK(sample(text, R"(berth_http_requests_total{method="POST",route="/v1/sandboxes/{}/python/exec",status="404"})") ==
        1.0);
  CHECK(sample(text, R"(berth_http_request_duration_seconds_count{method="GET",route="/health"})") == 2.0);
  CHECK(sample(text, R"(berth_http_request_duration_seconds_sum{method="GET",route="/health"})") == Approx(0.202));
  CHECK(sample(text, R"(berth_http_request_duration_seconds_bucket{method="GET",route="/health",le="0.0025"})") == 1.0);
  CHECK(sample(text, R"(berth_http_request_duration_seconds_bucket{method="GET",route="/health",le="+Inf"})") == 2.0);
}

TEST_CASE("requests without a route fold into one label value and unknown methods into 'other'") {
  PrometheusMetrics m(kRoutes);
  for (int i = 0; i < 50; ++i)
    m.request_done(SIZE_MAX, "GET", 404, 0.001);  // 50 different paths in real life: one series
  m.request_done(kRoutes.size(), "BREW", 404, 0.001);
  m.request_done(kRoutes.size(), "X-" + std::string(1000, 'A'), 404, 0.001);
  m.request_done(0, "GET", 999, 0.001);
  auto text = m.render(empty_snapshot());
  CHECK(sample(text, R"(berth_http_requests_total{method="GET",route="unmatched",status="404"})") == 50.0);
  CHECK(sample(text, R"(berth_http_requests_total{method="other",route="unmatched",status="404"})") == 2.0);
  CHECK(sample(text, R"(berth_http_requests_total{method="GET",route="/health",status="other"})") == 1.0);
  CHECK(text.find("BREW") == std::string::npos);
}

TEST_CASE("counts from many threads add up exactly") {
  PrometheusMetrics m(kRoutes);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&m, t] {
      for (int i = 0; i < 5000; ++i) {
        m.request_done(static_cast<std::size_t>(t % 2), t % 2 ? "POST" : "GET", 200 + (i % 3), 0.001);
        m.exec_done("shell", ExecEnd::success, 0.01);
        m.driver_call_done("exec", "ok", 0.001);
      }
    });
  }
  for (auto& t : threads)
    t.join();
  auto text = m.render(empty_snapshot());
  double requests = 0;
  for (int status : {200, 201, 202}) {
    for (auto series : {R"(berth_http_requests_total{method="GET",route="/health",status=")",
                        R"(berth_http_requests_total{method="POST",route="/v1/sandboxes/{}/python/exec",status=")"})
      requests += sample(text, series + std::to_string(status) + "\"}").value_or(0);
  }
  CHECK(requests == 40000.0);
  CHECK(sample(text, R"(berth_exec_total{kind="shell",outcome="success"})") == 40000.0);
  CHECK(sample(text, R"(berth_driver_call_duration_seconds_count{call="exec",status="ok"})") == 40000.0);
}

TEST_CASE("scrape-time gauges and the store's retry total follow the snapshot") {
  PrometheusMetrics m(kRoutes);
  LifecycleSnapshot s;
  s.sandboxes_by_status = {{"idle", 3}, {"starting", 1}, {"ready", 2}, {"failed", 0}, {"expired", 4}};
  s.sessions_starting = 1;
  s.sessions_running = 2;
  s.store_transaction_retries = 3;
  s.sessions_running_by_transport = {{"agent", 1}, {"engine-exec", 1}};
  auto text = m.render(s);
  CHECK(sample(text, R"(berth_sessions_running_by_transport{transport="agent"})") == 1.0);
  CHECK(sample(text, R"(berth_sessions_running_by_transport{transport="engine-exec"})") == 1.0);
  CHECK(sample(text, R"(berth_sandboxes{status="idle"})") == 3.0);
  CHECK(sample(text, R"(berth_sandboxes{status="expired"})") == 4.0);
  CHECK(sample(text, R"(berth_sessions{state="starting"})") == 1.0);
  CHECK(sample(text, R"(berth_sessions{state="running"})") == 2.0);
  CHECK(sample(text, "berth_store_transaction_retries_total") == 3.0);
  s.sandboxes_by_status = {{"idle", 0}, {"starting", 0}, {"ready", 5}, {"failed", 0}, {"expired", 0}};
  s.store_transaction_retries = 5;
  text = m.render(s);
  CHECK(sample(text, R"(berth_sandboxes{status="idle"})") == 0.0);
  CHECK(sample(text, R"(berth_sandboxes{status="ready"})") == 5.0);
  CHECK(sample(text, "berth_store_transaction_retries_total") == 5.0);
}

TEST_CASE("cleanup passes and their actions and idempotency replays are counted") {
  PrometheusMetrics m(kRoutes);
  m.cleanup_pass_done({{"idle_stopped", 2}, {"orphans_removed", 0}, {"failed", 1}}, 0.05);
  m.cleanup_pass_done({{"idle_stopped", 1}}, 0.02);
  m.idempotency_replayed();
  auto text = m.render(empty_snapshot());
  CHECK(sample(text, "berth_cleanup_passes_total") == 2.0);
  CHECK(sample(text, "berth_cleanup_pass_duration_seconds_count") == 2.0);
  CHECK(sample(text, R"(berth_cleanup_actions_total{action="idle_stopped"})") == 3.0);
  CHECK(sample(text, R"(berth_cleanup_actions_total{action="failed"})") == 1.0);
  CHECK(sample(text, R"(berth_cleanup_actions_total{action="orphans_removed"})") == 0.0);
  CHECK(sample(text, "berth_idempotency_replays_total") == 1.0);
}

TEST_CASE("process figures come from /proc and move with the process") {
  auto before = berth::metrics::read_process_stats();
  REQUIRE(before.open_fds);
  REQUIRE(before.threads);
  REQUIRE(before.resident_bytes);
  REQUIRE(before.start_time_seconds);
  CHECK(*before.resident_bytes > 0);
  int fd = ::open("/dev/null", O_RDONLY);
  REQUIRE(fd >= 0);
  std::atomic<bool> stop{false};
  std::thread extra([&] {
    while (!stop)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  auto during = berth::metrics::read_process_stats();
  stop = true;
  extra.join();
  ::close(fd);
  CHECK(*during.open_fds == *before.open_fds + 1);
  CHECK(*during.threads == *before.threads + 1);
  auto now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  CHECK(*before.start_time_seconds <= now + 1);  // clock ticks round: allow a second
  CHECK(*before.start_time_seconds > now - 24 * 3600);
  PrometheusMetrics m(kRoutes);
  auto text = m.render(empty_snapshot());
  CHECK(sample(text, "process_open_fds").has_value());
  CHECK(sample(text, "process_threads").value_or(0) >= 1);
  CHECK(sample(text, "process_resident_memory_bytes").value_or(0) > 0);
  CHECK(sample(text, "process_start_time_seconds").has_value());
}

TEST_CASE("the core reports execs and driver calls and cleanup passes of a real service") {
  PrometheusMetrics m(kRoutes);
  // A real clock: the exec timeout below must pass.
  berth::test::ServiceFixture f(R"({"fail_create_nth": 1})", berth::test::test_settings(),
                                std::make_shared<berth::core::SystemClock>());
  berth::core::MeteredDriver metered(*f.driver, m);
  berth::core::SandboxService service(*f.store, metered, f.clock, berth::test::test_settings(), m);
  auto id = service.create_sandbox(f.owner, {}).sandbox.row.id;
  // The first session_create fails (injected): the exec reports an error and the driver call its status.
  CHECK_THROWS(service.exec(f.owner, id, berth::core::ExecKind::shell, "echo hi", std::nullopt, ""));
  auto ok = service.exec(f.owner, id, berth::core::ExecKind::shell, "echo hi", std::nullopt, "");
  CHECK(ok.success);
  auto failed = service.exec(f.owner, id, berth::core::ExecKind::shell, "exit 3", std::nullopt, "");
  CHECK(failed.exit_code == 3);
  auto slow = service.exec(f.owner, id, berth::core::ExecKind::shell, "sleep 5", std::chrono::seconds(1), "");
  CHECK(slow.timed_out);
  service.run_cleanup();
  auto text = m.render(service.lifecycle_snapshot());
  CHECK(sample(text, R"(berth_exec_total{kind="shell",outcome="error"})") == 1.0);
  CHECK(sample(text, R"(berth_exec_total{kind="shell",outcome="success"})") == 1.0);
  CHECK(sample(text, R"(berth_exec_total{kind="shell",outcome="nonzero_exit"})") == 1.0);
  CHECK(sample(text, R"(berth_exec_total{kind="shell",outcome="timeout"})") == 1.0);
  CHECK(sample(text, R"(berth_exec_duration_seconds_count{kind="shell"})") == 4.0);
  CHECK(sample(text, R"(berth_driver_call_duration_seconds_count{call="exec",status="ok"})") == 3.0);
  CHECK(sample(text, R"(berth_driver_call_duration_seconds_count{call="session_create",status="ok"})") == 1.0);
  CHECK(sample(text, R"(berth_driver_call_duration_seconds_count{call="volume_create",status="ok"})") == 1.0);
  CHECK(sample(text, "berth_cleanup_passes_total") == 1.0);
  CHECK(sample(text, R"(berth_sandboxes{status="ready"})") == 1.0);
  CHECK(sample(text, R"(berth_sandboxes{status="idle"})") == 0.0);
  CHECK(sample(text, R"(berth_sessions{state="running"})") == 1.0);
  // Whatever the injected failure was called, it is one driver error status, not "ok".
  std::size_t failed_creates = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(R"(berth_driver_call_duration_seconds_count{call="session_create",status=")", 0) == 0 &&
        line.find(R"(status="ok")") == std::string::npos)
      failed_creates += static_cast<std::size_t>(std::stod(line.substr(line.rfind(' ') + 1)));
  }
  CHECK(failed_creates == 1);
}
