// Profiles over the API (issue 13, item 4): admin-only writes, the config loader's own validation, the image check,
// built-ins read-only, 409 while live sandboxes use a profile, persistence across restarts. Real berthd, fake driver.
#include <catch2/catch.hpp>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>

#include <fstream>
#include <string>
#include <vector>

#include "api/berthd_process.hpp"

using namespace berth::test;
using namespace std::chrono_literals;
using Poco::JSON::Object;

namespace {

constexpr const char* kTenantKey = "tenant-key-0123456789";
constexpr const char* kAdminKey = "admin-key-0123456789abcdef";

BerthdConfig profiles_config() {
  BerthdConfig c;
  c.driver_settings = "missing_images = [\"example/absent:1\"]\n";
  c.extra = std::string("[auth]\nallow_anonymous = false\n[auth.keys]\n\"") + kTenantKey + "\" = \"alice\"\n" +
            "[auth.admin_keys]\n\"" + kAdminKey + "\" = \"ops\"\n" +
            "[profiles.default]\nimage = \"berth/python:3.11\"\n";
  return c;
}

Object::Ptr error_of(const HttpResponse& r) {
  return r.json()->getObject("error");
}

std::string error_code(const HttpResponse& r) {
  return error_of(r)->getValue<std::string>("code");
}

/** The text after "profiles.<name>." on the first line containing it (the key and the reason). */
std::string reason_after(const std::string& text, const std::string& name) {
  const std::string marker = "profiles." + name + ".";
  auto at = text.find(marker);
  if (at == std::string::npos) return "";
  auto end = text.find_first_of("\n\"", at);
  return text.substr(at + marker.size(), end == std::string::npos ? std::string::npos : end - at - marker.size());
}

}  // namespace

TEST_CASE("an admin creates, reads, replaces and deletes a profile, and tenants use it", "[profiles]") {
  BerthdProcess berthd(profiles_config());
  HttpClient admin(berthd.port(), kAdminKey);
  HttpClient tenant(berthd.port(), kTenantKey);

  auto created = admin.post("/v1/profiles", R"({"name":"small","image":"berth/python:3.11","cpus":0.5,
      "memory":"64MiB","pids":64,"env":{"MODE":"small"},"ttl":"1h","capabilities":["shell"]})");
  INFO(created.body);
  REQUIRE(created.status == 201);
  auto p = created.json();
  CHECK(p->getValue<std::string>("name") == "small");
  CHECK_FALSE(p->getValue<bool>("builtin"));
  CHECK(p->getValue<double>("cpus") == 0.5);
  CHECK(p->getValue<std::int64_t>("memory_bytes") == (64 << 20));
  CHECK(p->getValue<std::int64_t>("ttl_s") == 3600);
  CHECK(p->getObject("spec")->getObject("env")->getValue<std::string>("MODE") == "small");

  // Tenants read profiles (to choose one) but never the env values; admins see the spec.
  auto seen = tenant.get("/v1/profiles/small");
  REQUIRE(seen.status == 200);
  CHECK_FALSE(seen.json()->has("spec"));
  CHECK(admin.get("/v1/profiles/small").json()->has("spec"));
  bool listed = false;
  auto items = tenant.get("/v1/profiles").json()->getArray("items");
  for (std::size_t i = 0; i < items->size(); ++i) {
    auto o = items->getObject(i);
    if (o->getValue<std::string>("name") == "small") listed = true;
    if (o->getValue<std::string>("name") == "default") CHECK(o->getValue<bool>("builtin"));
  }
  CHECK(listed);

  // A sandbox on it gets its capabilities; the profile cannot go while the sandbox lives.
  auto sb = tenant.post("/v1/sandboxes", R"({"profile":"small"})");
  REQUIRE(sb.status == 201);
  const std::string id = sb.json()->getValue<std::string>("id");
  CHECK(sb.json()->getValue<std::string>("profile") == "small");
  auto run = tenant.post("/v1/sandboxes/" + id + "/shell/exec", R"({"command":"echo hi"})");
  CHECK(run.status == 200);
  CHECK(tenant.post("/v1/sandboxes/" + id + "/python/exec", R"J({"code":"print(1)"})J").status == 400);

  auto busy = admin.del("/v1/profiles/small");
  REQUIRE(busy.status == 409);
  CHECK(error_code(busy) == "conflict");
  CHECK(error_of(busy)->getObject("details")->getValue<std::string>("reason") == "in_use");
  CHECK(error_of(busy)->getObject("details")->getValue<std::string>("sandboxes") == "1");

  // Replace: new values; the name in the body, if any, must match.
  auto replaced =
      admin.put("/v1/profiles/small", R"({"image":"berth/python:3.11","cpus":2,"capabilities":["shell","python"]})");
  INFO(replaced.body);
  REQUIRE(replaced.status == 200);
  CHECK(replaced.json()->getValue<double>("cpus") == 2.0);
  CHECK(replaced.json()->getValue<std::int64_t>("memory_bytes") == (512 << 20));  // a replace is whole
  CHECK(admin.put("/v1/profiles/small", R"({"name":"other","image":"berth/python:3.11"})").status == 400);
  CHECK(tenant.post("/v1/sandboxes/" + id + "/python/exec", R"J({"code":"print(1)"})J").status == 200);

  REQUIRE(tenant.del("/v1/sandboxes/" + id).status == 204);
  CHECK(admin.del("/v1/profiles/small").status == 204);
  CHECK(error_code(admin.get("/v1/profiles/small")) == "not_found");
  CHECK(admin.del("/v1/profiles/small").status == 404);
  auto gone = tenant.post("/v1/sandboxes", R"({"profile":"small"})");
  CHECK(gone.status == 400);
  CHECK(error_code(gone) == "validation_error");
}

TEST_CASE("profile writes are admin-only: tenants get the 404 of an unknown route", "[profiles][auth]") {
  BerthdProcess berthd(profiles_config());
  HttpClient tenant(berthd.port(), kTenantKey);
  for (const auto& r :
       {tenant.post("/v1/profiles", R"({"name":"x","image":"berth/python:3.11"})"),
        tenant.put("/v1/profiles/default", R"({"image":"berth/python:3.11"})"), tenant.del("/v1/profiles/default")}) {
    CHECK(r.status == 404);
    CHECK(error_code(r) == "not_found");
  }
  CHECK(HttpClient(berthd.port(), kAdminKey).get("/v1/profiles/x").status == 404);  // nothing was created
}

TEST_CASE("built-in profiles are read-only and names are unique", "[profiles]") {
  BerthdProcess berthd(profiles_config());
  HttpClient admin(berthd.port(), kAdminKey);
  for (const auto& r :
       {admin.put("/v1/profiles/default", R"({"image":"berth/python:3.11"})"), admin.del("/v1/profiles/default")}) {
    CHECK(r.status == 409);
    CHECK(error_of(r)->getObject("details")->getValue<std::string>("reason") == "builtin");
  }
  auto taken = admin.post("/v1/profiles", R"({"name":"default","image":"berth/python:3.11"})");
  CHECK(taken.status == 409);
  CHECK(admin.post("/v1/profiles", R"({"name":"twice","image":"berth/python:3.11"})").status == 201);
  auto again = admin.post("/v1/profiles", R"({"name":"twice","image":"berth/python:3.11"})");
  CHECK(again.status == 409);
  CHECK(error_of(again)->getObject("details")->getValue<std::string>("reason") == "exists");
  for (const char* body : {R"({"image":"berth/python:3.11"})", R"({"name":"","image":"x"})",
                           R"({"name":"a/b","image":"x"})", R"({"name":"-x","image":"x"})", R"({"name":7})"}) {
    auto r = admin.post("/v1/profiles", body);
    INFO(body << " -> " << r.body);
    CHECK(r.status == 400);
    CHECK(error_of(r)->getObject("details")->getValue<std::string>("field") == "name");
  }
}

TEST_CASE("an image the engine does not have is a 400 at creation, not a failure at first exec", "[profiles]") {
  BerthdProcess berthd(profiles_config());
  HttpClient admin(berthd.port(), kAdminKey);
  auto r = admin.post("/v1/profiles", R"({"name":"ghost","image":"example/absent:1"})");
  INFO(r.body);
  REQUIRE(r.status == 400);
  CHECK(error_code(r) == "validation_error");
  CHECK(error_of(r)->getObject("details")->getValue<std::string>("field") == "image");
  CHECK(admin.get("/v1/profiles/ghost").status == 404);
  CHECK(admin.post("/v1/profiles", R"({"name":"ok","image":"berth/python:3.11"})").status == 201);
  CHECK(admin.put("/v1/profiles/ok", R"({"image":"example/absent:1"})").status == 400);
  CHECK(admin.get("/v1/profiles/ok").json()->getValue<std::string>("image") == "berth/python:3.11");
}

TEST_CASE("a profile over the API is validated exactly as the config file's [profiles.<name>]", "[profiles]") {
  BerthdProcess berthd(profiles_config());
  HttpClient admin(berthd.port(), kAdminKey);
  struct Case {
    std::string json;  // the API body without name
    std::string toml;  // the same profile as config lines
  };
  const std::vector<Case> cases = {
      {R"({"cpus":0})", "cpus = 0"},
      {R"({"cpus":"two"})", "cpus = \"two\""},
      {R"({"memory":"1KiB"})", "memory = \"1KiB\""},
      {R"({"memory":"lots"})", "memory = \"lots\""},
      {R"({"pids":2})", "pids = 2"},
      {R"({"user":"root"})", "user = \"root\""},
      {R"({"user":"0:0"})", "user = \"0:0\""},
      {R"({"network":"yes"})", "network = \"yes\""},
      {R"({"ttl":"forever"})", "ttl = \"forever\""},
      {R"({"ttl":0})", "ttl = 0"},
      {R"({"idle_timeout":"5x"})", "idle_timeout = \"5x\""},
      {R"({"capabilities":["gpu"]})", "capabilities = [\"gpu\"]"},
      {R"({"capabilities":"shell"})", "capabilities = \"shell\""},
      {R"({"env":{"A":1}})", "env = { A = 1 }"},
      {R"({"image":""})", "image = \"\""},
      {R"({"gpus":1})", "gpus = 1"},
      {R"({"env":{"LD_PRELOAD":"/x.so"}})", "env = { LD_PRELOAD = \"/x.so\" }"},
      {R"({"env":{"BERTH_X":"1"}})", "env = { BERTH_X = \"1\" }"},
      {R"({"env":{"A=B":"1"}})", "env = { \"A=B\" = \"1\" }"},
      {R"({"image":")" + std::string(300, 'x') + R"("})", "image = \"" + std::string(300, 'x') + "\""},
  };
  for (const auto& c : cases) {
    INFO(c.json);
    auto r = admin.post("/v1/profiles", R"({"name":"bad",)" + c.json.substr(1));
    REQUIRE(r.status == 400);
    CHECK(error_code(r) == "validation_error");
    const std::string api_reason = reason_after(error_of(r)->getValue<std::string>("message"), "bad");
    CHECK_FALSE(api_reason.empty());
    CHECK(error_of(r)->getObject("details")->getValue<std::string>("field") ==
          api_reason.substr(0, api_reason.find(':')));
    const std::string toml =
        "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"@DIR@/berth.db\"\n[driver]\npath = \"" +
        std::string(BERTH_FAKE_DRIVER) + "\"\n[profiles.default]\n[profiles.bad]\n" + c.toml + "\n";
    auto run = run_berthd_until_exit(toml, 20000ms);
    INFO(run.log);
    CHECK(run.exited);
    CHECK(run.code != 0);
    CHECK(reason_after(run.log, "bad") == api_reason);
  }
  // JSON values TOML has no form for: still named by their key alone.
  for (const auto& [body, field] : std::vector<std::pair<std::string, std::string>>{
           {R"({"name":"nul","image":null})", "image"},
           {R"({"name":"big","memory":18446744073709551615})", "memory"}}) {
    auto r = admin.post("/v1/profiles", body);
    INFO(r.body);
    CHECK(r.status == 400);
    CHECK(error_of(r)->getObject("details")->getValue<std::string>("field") == field);
  }
  CHECK(admin.get("/v1/profiles/bad").status == 404);
}

TEST_CASE("API profiles survive a restart and keep working", "[profiles]") {
  BerthdProcess berthd(profiles_config());
  {
    HttpClient admin(berthd.port(), kAdminKey);
    REQUIRE(admin.post("/v1/profiles", R"({"name":"kept","image":"berth/python:3.11","pids":99})").status == 201);
  }
  berthd.restart();
  HttpClient admin(berthd.port(), kAdminKey);
  auto r = admin.get("/v1/profiles/kept");
  REQUIRE(r.status == 200);
  CHECK(r.json()->getValue<std::int64_t>("pids") == 99);
  auto sb = HttpClient(berthd.port(), kTenantKey).post("/v1/sandboxes", R"({"profile":"kept"})");
  CHECK(sb.status == 201);
}

TEST_CASE("a stored profile that no longer reads can still be replaced or deleted", "[profiles]") {
  BerthdProcess berthd(profiles_config());
  {
    HttpClient admin(berthd.port(), kAdminKey);
    REQUIRE(admin.post("/v1/profiles", R"({"name":"long","image":"berth/python:3.11","ttl":"30d"})").status == 201);
    REQUIRE(admin.post("/v1/profiles", R"({"name":"long2","image":"berth/python:3.11","ttl":"30d"})").status == 201);
  }
  berthd.stop();
  {
    std::ofstream cfg(berthd.config_path(), std::ios::app);
    cfg << "[limits]\nmax_ttl = \"1d\"\n";  // the stored profiles' ttl is now out of bounds
  }
  berthd.start();
  CHECK(berthd.count_log_lines("profile.load_failed") >= 2);
  HttpClient admin(berthd.port(), kAdminKey);
  CHECK(admin.get("/v1/profiles/long").status == 404);  // not usable
  CHECK(admin.post("/v1/profiles", R"({"name":"long","image":"berth/python:3.11"})").status == 409);
  auto fixed = admin.put("/v1/profiles/long", R"({"image":"berth/python:3.11","ttl":"12h"})");
  INFO(fixed.body);
  CHECK(fixed.status == 200);
  CHECK(admin.get("/v1/profiles/long").json()->getValue<std::int64_t>("ttl_s") == 12 * 3600);
  CHECK(admin.del("/v1/profiles/long2").status == 204);
  CHECK(admin.put("/v1/profiles/long2", R"({"image":"berth/python:3.11"})").status == 404);
}
