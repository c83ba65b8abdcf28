// GET /metrics end to end: the real berthd binary (fake driver) over loopback. Requests driven through the API must
// move the counters by exactly what was sent; the optional bearer token and the disabled registry behave as
// docs/api.md says. Each test starts its own berthd, so no other test's traffic shows in its counters.
#include <catch2/catch.hpp>

#include <chrono>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "api/berthd_process.hpp"

using namespace berth::test;

namespace {

/** The value of the sample line `series value`; nullopt when the series is absent. */
std::optional<double> sample(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 && line[series.size()] == ' ')
      return std::stod(line.substr(series.size() + 1));
  }
  return std::nullopt;
}

/**
 * Waits until berthd has logged the access line of every response in `rs`: the registry counts a request just before
 * that line, after the response went out, so a scrape sent earlier might miss it.
 */
void settle(const BerthdProcess& berthd, const std::vector<HttpResponse>& rs) {
  for (const auto& r : rs) {
    auto id = r.header("X-Request-Id");
    REQUIRE_FALSE(id.empty());
    REQUIRE(berthd.wait_for_log("http.access request_id=" + id + " method=", std::chrono::seconds(60)));
  }
}

HttpResponse scrape(const HttpClient& c) {
  auto r = c.get("/metrics");
  REQUIRE(r.status == 200);
  CHECK(r.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8");
  return r;
}

}  // namespace

TEST_CASE("metrics: requests and execs and replays and gauges move with the traffic", "[metrics]") {
  BerthdProcess berthd;
  HttpClient c(berthd.port());
  std::vector<HttpResponse> sent;
  auto track = [&](HttpResponse r) {
    sent.push_back(r);
    return r;
  };
  for (int i = 0; i < 3; ++i)
    REQUIRE(track(c.get("/v1/profiles")).status == 200);
  REQUIRE(track(c.get("/v1/sandboxes/sandbox-000000000000")).status == 404);
  REQUIRE(track(c.get("/no/such/route/1")).status == 404);
  REQUIRE(track(c.get("/no/such/route/2")).status == 404);
  auto created = track(c.post("/v1/sandboxes", "{}", {{"Idempotency-Key", "metrics-test-key"}}));
  REQUIRE(created.status == 201);
  auto replayed = track(c.post("/v1/sandboxes", "{}", {{"Idempotency-Key", "metrics-test-key"}}));
  REQUIRE(replayed.status == 201);
  CHECK(replayed.header("Idempotent-Replayed") == "true");
  std::string id = created.json()->getValue<std::string>("id");
  REQUIRE(track(c.post("/v1/sandboxes/" + id + "/shell/exec", R"({"command":"echo hi"})")).status == 200);
  REQUIRE(track(c.post("/v1/sandboxes/" + id + "/shell/exec", R"({"command":"exit 4"})")).status == 200);
  settle(berthd, sent);

  auto scraped = scrape(c);
  const auto& text = scraped.body;
  CHECK(sample(text, R"(berth_http_requests_total{method="GET",route="/v1/profiles",status="200"})") == 3.0);
  CHECK(sample(text, R"(berth_http_request_duration_seconds_count{method="GET",route="/v1/profiles"})") == 3.0);
  CHECK(sample(text, R"(berth_http_requests_total{method="GET",route="/v1/sandboxes/{}",status="404"})") == 1.0);
  // Unknown paths fold into one series: no raw path ever becomes a label value.
  CHECK(sample(text, R"(berth_http_requests_total{method="GET",route="unmatched",status="404"})") == 2.0);
  CHECK(text.find("/no/such/route") == std::string::npos);
  CHECK(text.find(id) == std::string::npos);
  CHECK(sample(text, R"(berth_http_requests_total{method="POST",route="/v1/sandboxes",status="201"})") == 2.0);
  CHECK(sample(text, "berth_idempotency_replays_total") == 1.0);
  CHECK(sample(text, R"(berth_exec_total{kind="shell",outcome="success"})") == 1.0);
  CHECK(sample(text, R"(berth_exec_total{kind="shell",outcome="nonzero_exit"})") == 1.0);
  CHECK(sample(text, R"(berth_driver_call_duration_seconds_count{call="exec",status="ok"})") == 2.0);
  CHECK(sample(text, R"(berth_sandboxes{status="ready"})") == 1.0);
  CHECK(sample(text, R"(berth_sessions{state="running"})") == 1.0);
  CHECK(sample(text, R"(berth_sessions_running_by_transport{transport="in-process"})") == 1.0);
  CHECK(sample(text, "process_open_fds").value_or(0) > 0);
  CHECK(sample(text, "process_threads").value_or(0) > 0);

  // The scrape itself is counted once it has answered: the next scrape sees this one.
  settle(berthd, {scraped});
  auto again = scrape(c).body;
  CHECK(sample(again, R"(berth_http_requests_total{method="GET",route="/metrics",status="200"})") == 1.0);
  REQUIRE(c.del("/v1/sandboxes/" + id).status == 204);
  auto after = scrape(c).body;
  CHECK(sample(after, R"(berth_sandboxes{status="ready"})") == 0.0);
  CHECK(sample(after, R"(berth_sessions{state="running"})") == 0.0);
  CHECK(sample(after, R"(berth_sessions_running_by_transport{transport="in-process"})") == 0.0);  // not stale
}

TEST_CASE("metrics: with a bearer token only that token may scrape", "[metrics]") {
  const std::string token = "metrics-token-0123456789";
  BerthdProcess berthd(BerthdConfig{
      "", "", "[auth]\nkeys = { \"tenant-key-123\" = \"alice\" }\n[metrics]\nbearer_token = \"" + token + "\"\n"});
  HttpClient anonymous(berthd.port());
  auto none = anonymous.get("/metrics");
  CHECK(none.status == 401);
  CHECK(none.json()->getObject("error")->getValue<std::string>("code") == "unauthorized");
  CHECK(none.header("WWW-Authenticate") == "Bearer realm=\"berth\"");
  auto tenant = HttpClient(berthd.port(), "tenant-key-123").get("/metrics");
  CHECK(tenant.status == 401);  // an API key is not the token
  auto longer = HttpClient(berthd.port(), token + "x").get("/metrics");
  CHECK(longer.status == 401);
  auto shorter = HttpClient(berthd.port(), token.substr(1)).get("/metrics");
  CHECK(shorter.status == 401);
  settle(berthd, {none, tenant, longer, shorter});
  auto text = scrape(HttpClient(berthd.port(), token)).body;
  CHECK(sample(text, R"(berth_http_requests_total{method="GET",route="/metrics",status="401"})") == 4.0);
  CHECK(anonymous.get("/health").status == 200);  // /health stays open
}

TEST_CASE("metrics: disabled /metrics is 404 and berthd serves as before", "[metrics]") {
  BerthdProcess berthd(BerthdConfig{"", "", "[metrics]\nenabled = false\n"});
  HttpClient c(berthd.port());
  auto r = c.get("/metrics");
  CHECK(r.status == 404);
  CHECK(r.json()->getObject("error")->getValue<std::string>("code") == "not_found");
  auto created = c.post("/v1/sandboxes", "{}");
  REQUIRE(created.status == 201);
  std::string id = created.json()->getValue<std::string>("id");
  CHECK(c.post("/v1/sandboxes/" + id + "/shell/exec", R"({"command":"echo hi"})").status == 200);
}
