// api::handle_request: the whole HTTP layer in-process, without sockets (what the fuzz targets drive), against the
// real fake driver plugin and a real SQLite store in a temporary directory.
#include <catch2/catch.hpp>

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/TemporaryFile.h>

#include <filesystem>
#include <memory>
#include <string>

#include "api/http_api.hpp"
#include "core/clock.hpp"
#include "core/idempotency.hpp"
#include "core/sandbox_service.hpp"
#include "plugin/driver_library.hpp"
#include "store/store.hpp"

namespace {

using berth::api::handle_request;
using berth::api::InProcessResponse;

/** Store, fake driver, service and API context, torn down in reverse order. */
struct InProcessApi {
  InProcessApi() {
    dir.createDirectories();
    clock = std::make_shared<berth::core::SystemClock>();
    library = berth::plugin::DriverLibrary::open(BERTH_FAKE_DRIVER);
    driver = library->configure("{}", clock);
    store = berth::store::open_sqlite_store((std::filesystem::path(dir.path()) / "berth.db").string());
    berth::core::Settings settings;
    settings.profiles["default"].name = "default";
    service = std::make_unique<berth::core::SandboxService>(*store, *driver, clock, settings);
    idempotency = std::make_unique<berth::core::IdempotencyRegistry>(*store, clock);
    berth::api::ApiSettings api;
    api.admission.slots = 1;
    api.admission.queue = 0;
    ctx = std::make_unique<berth::api::ApiContext>(api, *service, *idempotency, clock);
  }

  InProcessResponse call(const std::string& method, const std::string& uri, const std::string& body = "",
                         const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    return handle_request(*ctx, method, uri, headers, body);
  }

  Poco::TemporaryFile dir;
  std::shared_ptr<const berth::core::Clock> clock;
  std::shared_ptr<berth::plugin::DriverLibrary> library;
  std::unique_ptr<berth::core::Driver> driver;
  std::unique_ptr<berth::store::Store> store;
  std::unique_ptr<berth::core::SandboxService> service;
  std::unique_ptr<berth::core::IdempotencyRegistry> idempotency;
  std::unique_ptr<berth::api::ApiContext> ctx;
};

Poco::JSON::Object::Ptr json(const InProcessResponse& r) {
  INFO(r.status << " " << r.body);
  return Poco::JSON::Parser().parse(r.body).extract<Poco::JSON::Object::Ptr>();
}

std::string header(const InProcessResponse& r, const std::string& name) {
  for (const auto& [k, v] : r.headers) {
    if (Poco::icompare(k, name) == 0) return v;
  }
  return "";
}

}  // namespace

TEST_CASE("handle_request runs a request through routing, errors and idempotency without a socket", "[in-process]") {
  InProcessApi api;
  auto health = api.call("GET", "/health");
  CHECK(health.status == 200);
  CHECK(json(health)->getValue<std::string>("status") == "ok");
  CHECK(header(health, "X-Request-Id").rfind("req-", 0) == 0);

  auto created = api.call("POST", "/v1/sandboxes", "{}");
  REQUIRE(created.status == 201);
  std::string id = json(created)->getValue<std::string>("id");

  auto ran = api.call("POST", "/v1/sandboxes/" + id + "/python/exec", R"J({"code":"print(6*7)"})J",
                      {{"Idempotency-Key", "k1"}});
  REQUIRE(ran.status == 200);
  CHECK(json(ran)->getValue<std::string>("output") == "42\n");
  auto replay = api.call("POST", "/v1/sandboxes/" + id + "/python/exec", R"J({"code":"print(6*7)"})J",
                         {{"Idempotency-Key", "k1"}});
  CHECK(replay.body == ran.body);
  CHECK(header(replay, "Idempotent-Replayed") == "true");

  // Errors keep the envelope; garbage never escapes as an exception or a 500.
  auto bad = api.call("POST", "/v1/sandboxes", "{not json");
  CHECK(bad.status == 400);
  CHECK(json(bad)->getObject("error")->getValue<std::string>("code") == "invalid_request");
  CHECK(api.call("GET", "/v1/nowhere").status == 404);
  CHECK(api.call("PATCH", "/v1/sandboxes").status == 405);
  CHECK(api.call("GET", "/v1/sandboxes/" + id + "/filesystem/files?path_b64=%%%").status == 400);
  CHECK(api.call("POST", "/v1/sandboxes", "{}", {{"Content-Length", "nope"}}).status == 400);
  // An integer JSON can spell but int64 cannot hold is the client's mistake, named as such.
  auto huge = api.call("POST", "/v1/sandboxes", R"({"ttl": 9223372036854775808})");
  CHECK(huge.status == 400);
  CHECK(json(huge)->getObject("error")->getValue<std::string>("code") == "validation_error");
  CHECK(json(huge)->getObject("error")->getObject("details")->getValue<std::string>("field") == "ttl");

  // A download's body comes back whole; a shut-down context answers 503 shutting_down.
  REQUIRE(api.call("PUT", "/v1/sandboxes/" + id + "/filesystem/files", R"({"path":"a.txt","content":"abc"})").status ==
          200);
  auto down = api.call("GET", "/v1/sandboxes/" + id + "/filesystem/download?path=a.txt");
  CHECK(down.status == 200);
  CHECK(down.body == "abc");
  api.ctx->shutting_down = true;
  auto late = api.call("GET", "/v1/sandboxes");
  CHECK(late.status == 503);
  CHECK(json(late)->getObject("error")->getValue<std::string>("code") == "shutting_down");
}
