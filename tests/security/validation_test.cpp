// Finding 6 (issue 8): whatever a create or extend_ttl stores is validated at the door (400 validation_error with
// details.field), so that nothing accepted at create fails at every later start, and no TTL arithmetic overflows.
#include <catch2/catch.hpp>

#include <string>

#include "security/harness.hpp"

using namespace berth::test;
using namespace berth::test::security;

namespace {

/** REQUIREs a 400 validation_error naming `field` in details.field. */
void require_refused(const HttpResponse& r, const std::string& field) {
  INFO(r.body);
  REQUIRE(r.status == 400);
  auto err = r.json()->getObject("error");
  REQUIRE(err);
  CHECK(err->getValue<std::string>("code") == "validation_error");
  auto details = err->getObject("details");
  REQUIRE(details);
  CHECK(details->optValue<std::string>("field", "") == field);
}

/** Sandboxes `client` owns now (one page of up to 500). */
std::size_t live_count(const HttpClient& client) {
  auto r = client.get("/v1/sandboxes?limit=500");
  REQUIRE(r.status == 200);
  return r.json()->getArray("items")->size();
}

int year_of(const std::string& rfc3339) {
  REQUIRE(rfc3339.size() >= 4);
  return std::stoi(rfc3339.substr(0, 4));
}

}  // namespace

TEST_CASE("labels and env that a start would refuse or truncate are refused at create", "[validation]") {
  Env env;
  auto alice = env.alice();
  // The issue's inputs: a label key with '=', NUL in a label key and in an env name, PATH=/nonexistent.
  require_refused(alice.post("/v1/sandboxes", R"J({"labels":{"a=b":"x"}})J"), "labels");
  require_refused(alice.post("/v1/sandboxes", R"J({"labels":{"a\u0000b":"x"}})J"), "labels");
  require_refused(alice.post("/v1/sandboxes", R"J({"env":{"A\u0000B":"x"}})J"), "env");
  // PATH=/nonexistent is the tenant's own choice: the sandbox starts, and berthd's own work in it goes on.
  {
    auto id = env.create(alice, R"J({"env":{"PATH":"/nonexistent"}})J");
    auto started = alice.post(sandbox_path(id) + "/start", "{}");
    INFO(started.body);
    CHECK(started.status == 200);
    auto out = shell(alice, id, "echo $PATH; /bin/echo absolute");
    CHECK(out->getValue<std::string>("output") == "/nonexistent\nabsolute\n");
    auto put = alice.put(sandbox_path(id) + "/filesystem/files", R"J({"path":"f.txt","content":"kept"})J");
    CHECK(put.status == 200);
    auto got = alice.get(sandbox_path(id) + "/filesystem/files?path=f.txt");
    CHECK(got.status == 200);
    CHECK(got.body.find("kept") != std::string::npos);
    CHECK(alice.del(sandbox_path(id)).status == 204);
  }
  // The same kinds: reserved prefixes and names, bad syntax, NUL and control bytes in values, oversized entries.
  require_refused(alice.post("/v1/sandboxes", R"J({"labels":{"berth.instance":"forged"}})J"), "labels");
  require_refused(alice.post("/v1/sandboxes", R"J({"labels":{"BERTH.x":"y"}})J"), "labels");
  require_refused(alice.post("/v1/sandboxes", R"J({"labels":{"":"x"}})J"), "labels");
  require_refused(alice.post("/v1/sandboxes", R"J({"labels":{"k":"a\u0000b"}})J"), "labels");
  require_refused(alice.post("/v1/sandboxes", R"J({"labels":{"k":"line\nbreak"}})J"), "labels");
  require_refused(alice.post("/v1/sandboxes", R"J({"labels":{"k":")J" + std::string(257, 'v') + R"J("}})J"), "labels");
  require_refused(alice.post("/v1/sandboxes", R"J({"labels":{")J" + std::string(64, 'k') + R"J(":"v"}})J"), "labels");
  require_refused(alice.post("/v1/sandboxes", R"J({"env":{"A=B":"x"}})J"), "env");
  require_refused(alice.post("/v1/sandboxes", R"J({"env":{"1X":"x"}})J"), "env");
  require_refused(alice.post("/v1/sandboxes", R"J({"env":{"LD_PRELOAD":"/workspace/x.so"}})J"), "env");
  require_refused(alice.post("/v1/sandboxes", R"J({"env":{"BERTH_X":"1"}})J"), "env");
  require_refused(alice.post("/v1/sandboxes", R"J({"env":{"X":"a\u0000b"}})J"), "env");
  require_refused(alice.post("/v1/sandboxes", R"J({"env":{"X":")J" + std::string(4097, 'v') + R"J("}})J"), "env");
  // Nothing refused was stored.
  CHECK(live_count(alice) == 0);
}

TEST_CASE("20,000 labels are refused and the caps on counts hold", "[validation]") {
  Env env;
  auto alice = env.alice();
  std::string labels;
  for (int i = 0; i < 20'000; ++i)
    labels += (i ? ",\"l" : "\"l") + std::to_string(i) + "\":\"v\"";
  require_refused(alice.post("/v1/sandboxes", "{\"labels\":{" + labels + "}}"), "labels");
  std::string env_entries;
  for (int i = 0; i < 65; ++i)
    env_entries += (i ? ",\"E" : "\"E") + std::to_string(i) + "\":\"v\"";
  require_refused(alice.post("/v1/sandboxes", "{\"env\":{" + env_entries + "}}"), "env");
  CHECK(live_count(alice) == 0);
}

TEST_CASE("every other stored create field is checked at the door", "[validation]") {
  Env env;
  auto alice = env.alice();
  require_refused(alice.post("/v1/sandboxes", R"J({"ttl":0})J"), "ttl");
  require_refused(alice.post("/v1/sandboxes", R"J({"ttl":-1})J"), "ttl");
  require_refused(alice.post("/v1/sandboxes", R"J({"ttl":1099511627776})J"), "ttl");
  require_refused(alice.post("/v1/sandboxes", R"J({"ttl":31536001})J"), "ttl");
  require_refused(alice.post("/v1/sandboxes", R"J({"profile":"nope"})J"), "profile");
  require_refused(alice.post("/v1/sandboxes", R"J({"workspace_id":"../../etc"})J"), "workspace_id");
  require_refused(alice.post("/v1/sandboxes", R"J({"key":"a\u0000b"})J"), "key");
  require_refused(alice.post("/v1/sandboxes", R"J({"key":"   "})J"), "key");
  CHECK(live_count(alice) == 0);
}

TEST_CASE("a sandbox with valid labels and env starts and execs", "[validation]") {
  Env env;
  auto alice = env.alice();
  auto id = env.create(alice, R"J({"labels":{"team/a.b_c-d":"ü value"},"env":{"GREETING":"hi there"}})J");
  auto started = alice.post(sandbox_path(id) + "/start");
  INFO(started.body);
  REQUIRE(started.status == 200);
  auto got = alice.get(sandbox_path(id));
  REQUIRE(got.status == 200);
  CHECK(got.json()->getObject("labels")->getValue<std::string>("team/a.b_c-d") == "ü value");
  if (env.real_engine()) {
    auto out = shell(alice, id, "printf '%s' \"$GREETING\"");
    CHECK(out->getValue<std::string>("output") == "hi there");
  }
}

TEST_CASE("extend_ttl 235 times one year neither overflows nor lets cleanup delete the sandbox", "[validation]") {
  Env env;
  auto alice = env.alice();
  auto id = env.create(alice, R"J({"ttl":3600})J");
  auto created = alice.get(sandbox_path(id)).json();
  const int created_year = year_of(created->getValue<std::string>("created_at"));
  int ok = 0;
  for (int i = 0; i < 235; ++i) {
    auto r = alice.post(sandbox_path(id) + "/extend_ttl", R"J({"extend_by":31536000})J");
    if (r.status == 200) {
      ++ok;
    } else {
      require_refused(r, "extend_by");
    }
  }
  // The first year already passes the default lifetime cap of 365 days from creation.
  CHECK(ok == 0);
  // Up to the cap is still possible, one second more is not.
  auto before = alice.get(sandbox_path(id)).json();
  REQUIRE(alice.post(sandbox_path(id) + "/extend_ttl", R"J({"extend_by":86400})J").status == 200);
  auto after = alice.get(sandbox_path(id)).json();
  auto expires = after->getValue<std::string>("expires_at");
  CHECK(expires != before->getValue<std::string>("expires_at"));
  CHECK(year_of(expires) >= created_year);
  CHECK(year_of(expires) <= created_year + 1);
  require_refused(alice.post(sandbox_path(id) + "/extend_ttl", R"J({"extend_by":31536000})J"), "extend_by");
  require_refused(alice.post(sandbox_path(id) + "/extend_ttl", R"J({"extend_by":9223372036854775807})J"), "extend_by");
  // A cleanup pass leaves it alone: it has not expired.
  auto gc = env.admin().post("/v1/admin/gc/run");
  INFO(gc.body);
  REQUIRE(gc.status == 200);
  CHECK(gc.body.find(id) == std::string::npos);
  CHECK(alice.get(sandbox_path(id)).status == 200);
}

TEST_CASE("a [limits] max_ttl bounds create and extend_ttl", "[validation]") {
  Env env(Options{.extra = "[limits]\nmax_ttl = \"2h\"\n"});
  auto alice = env.alice();
  require_refused(alice.post("/v1/sandboxes", R"J({"ttl":7201})J"), "ttl");
  auto id = env.create(alice, R"J({"ttl":3600})J");
  REQUIRE(alice.post(sandbox_path(id) + "/extend_ttl", R"J({"extend_by":3000})J").status == 200);
  auto r = alice.post(sandbox_path(id) + "/extend_ttl", R"J({"extend_by":3600})J");
  require_refused(r, "extend_by");
  CHECK(r.json()->getObject("error")->getObject("details")->getValue<std::string>("max_ttl_s") == "7200");
}
