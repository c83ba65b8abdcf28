// GET /metrics end to end: the real berthd binary (fake driver) over loopback. Requests driven through the API must
// move the counters by exactly what was sent; the optional bearer token and the disabled registry behave as
// docs/api.md says. Each test starts its own berthd, so no other test's traffic shows in its counters.
#include <catch2/catch.hpp>

#include <optional>
#include <sstream>
#include <string>

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

std::string scrape(const HttpClient& c, const Headers& headers = {}) {
  auto r = c.get("/metrics", headers);
  REQUIRE(r.status == 200);
  CHECK(r.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8");
  return r.body;
}

}  // namespace

TEST_CASE("metrics: requests and execs and replays and gauges move with the traffic", "[metrics]") {
  BerthdProcess berthd;
  HttpClient c(berthd.port());
  for (int i = 0; i < 3; ++i)
    REQUIRE(c.get("/v1/profiles").status == 200);
  REQUIRE(c.get("/v1/sandboxes/sandbox-000000000000").status == 404);
  REQUIRE(c.get("/no/such/route/1").status == 404);
  REQUIRE(c.get("/no/such/route/2").status == 404);
  auto created = c.post("/v1/sandboxes", "{}", {{"Idempotency-Key", "metrics-test-key"}});
  REQUIRE(created.status == 201);
  REQUIRE(c.post("/v1/sandboxes", "{}", {{"Idempotency-Key", "metrics-test-key"}}).status == 201);  // replayed
  std::string id = created.json()->getValue<std::string>("id");
  auto run = c.post("/v1/sandboxes/" + id + "/shell/exec", R"({"command":"echo hi"})");
  REQUIRE(run.status == 200);
  REQUIRE(c.post("/v1/sandboxes/" + id + "/shell/exec", R"({"command":"exit 4"})").status == 200);

  auto text = scrape(c);
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
  CHECK(sample(text, "process_open_fds").value_or(0) > 0);
  CHECK(sample(text, "process_threads").value_or(0) > 0);

  // The scrape itself is counted once it has answered: the second scrape sees the first.
  auto again = scrape(c);
  CHECK(sample(again, R"(berth_http_requests_total{method="GET",route="/metrics",status="200"})") == 1.0);
  REQUIRE(c.del("/v1/sandboxes/" + id).status == 204);
  auto after = scrape(c);
  CHECK(sample(after, R"(berth_sandboxes{status="ready"})") == 0.0);
  CHECK(sample(after, R"(berth_sessions{state="running"})") == 0.0);
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
  CHECK(HttpClient(berthd.port(), "tenant-key-123").get("/metrics").status == 401);  // an API key is not the token
  CHECK(HttpClient(berthd.port(), token + "x").get("/metrics").status == 401);
  CHECK(HttpClient(berthd.port(), token.substr(1)).get("/metrics").status == 401);
  auto text = scrape(HttpClient(berthd.port(), token));
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
