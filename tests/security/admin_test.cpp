// Findings 7 and 8 of issue 8: admin routes need the admin role, tenants learn nothing of each other, and the
// credentials of a request are never ambiguous.
#include <catch2/catch.hpp>

#include <Poco/JSON/Array.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/StreamSocket.h>

#include "security/harness.hpp"

using namespace berth::test;
using namespace berth::test::security;

namespace {

/** Sends `raw` on a fresh connection and returns everything the server writes until it closes (or 30 s pass). */
std::string raw_exchange(std::uint16_t port, const std::string& raw) {
  Poco::Net::StreamSocket s(Poco::Net::SocketAddress("127.0.0.1", port));
  s.setReceiveTimeout(Poco::Timespan(30, 0));
  s.sendBytes(raw.data(), static_cast<int>(raw.size()));
  s.shutdownSend();
  std::string out;
  char buf[4096];
  for (;;) {
    int n = s.receiveBytes(buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

/** `body` with every `id` and the request id replaced by a placeholder. */
std::string blank(std::string body, const std::string& id) {
  for (auto at = body.find(id); at != std::string::npos; at = body.find(id, at))
    body.replace(at, id.size(), "ID");
  auto rid = body.find("\"request_id\":\"");
  if (rid != std::string::npos) body.erase(rid, body.find('"', rid + 14) + 1 - rid);
  return body;
}

std::string error_code(const HttpResponse& r) {
  return r.json()->getObject("error")->getValue<std::string>("code");
}

}  // namespace

TEST_CASE("admin routes are 404 to tenants and answer the admin key", "[admin]") {
  Env env;
  auto alices = env.create(env.alice());
  auto bobs = env.create(env.bob());
  // Tenants: every method on every admin path is the 404 of a path that does not exist.
  for (const auto* method : {"POST", "GET", "DELETE", "PUT"}) {
    for (const auto* path : {"/v1/admin/gc/run", "/v1/admin/nothing-here"}) {
      auto r = env.alice().request(method, path, "{}");
      INFO(method << " " << path << " -> " << r.status << " " << r.body);
      CHECK(r.status == 404);
      CHECK(error_code(r) == "not_found");
      CHECK(r.body.find(bobs) == std::string::npos);
    }
  }
  auto unknown = env.alice().post("/v1/nothing-here", "{}");
  CHECK(unknown.status == 404);
  // No key at all: 401, with the challenge of RFC 6750.
  auto anon = env.anonymous().post("/v1/admin/gc/run", "{}");
  CHECK(anon.status == 401);
  CHECK(anon.header("WWW-Authenticate").rfind("Bearer", 0) == 0);
  // The admin key runs the pass.
  auto gc = env.admin().post("/v1/admin/gc/run", "{}");
  INFO(gc.body);
  REQUIRE(gc.status == 200);
  CHECK(gc.json()->has("skipped_in_use"));
  // Both sandboxes are untouched (nothing was idle or expired) and still each tenant's own.
  CHECK(env.alice().get(sandbox_path(alices)).status == 200);
  CHECK(env.bob().get(sandbox_path(bobs)).status == 200);
}

TEST_CASE("no tenant response tells another owner's sandbox from one that does not exist", "[admin]") {
  Env env;
  auto bobs = env.create(env.bob());
  std::string missing = "sbx-does-not-exist";
  for (const auto& suffix : std::vector<std::string>{"", "/history", "/start", "/stop", "/keepalive", "/extend_ttl",
                                                     "/shell/exec", "/filesystem/files?path=a"}) {
    bool get = suffix.empty() || suffix == "/history" || suffix.rfind("/filesystem", 0) == 0;
    auto theirs = get ? env.alice().get(sandbox_path(bobs) + suffix)
                      : env.alice().post(sandbox_path(bobs) + suffix, R"({"command":"id","seconds":60})");
    auto none = get ? env.alice().get(sandbox_path(missing) + suffix)
                    : env.alice().post(sandbox_path(missing) + suffix, R"({"command":"id","seconds":60})");
    INFO(suffix << ": " << theirs.status << " " << theirs.body << " / " << none.status << " " << none.body);
    // The same answer once the id the caller itself sent and the request id are blanked out.
    CHECK(theirs.status == none.status);
    CHECK(blank(theirs.body, bobs) == blank(none.body, missing));
  }
  auto list = env.alice().get("/v1/sandboxes");
  REQUIRE(list.status == 200);
  CHECK(list.body.find(bobs) == std::string::npos);
  auto del = env.alice().del(sandbox_path(bobs));
  CHECK(del.status == 404);
  CHECK(env.bob().get(sandbox_path(bobs)).status == 200);
}

TEST_CASE("two Authorization headers are refused whichever comes first", "[auth]") {
  Env env;
  auto request = [&](const std::string& first, const std::string& second) {
    return raw_exchange(env.port(), "GET /v1/sandboxes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + first +
                                        "\r\nAuthorization: Bearer " + second + "\r\nConnection: close\r\n\r\n");
  };
  for (const auto& [a, b] : std::vector<std::pair<std::string, std::string>>{{kAliceKey, "wrong-key-0123456789"},
                                                                             {"wrong-key-0123456789", kAliceKey},
                                                                             {kAliceKey, kAliceKey},
                                                                             {kAliceKey, kBobKey},
                                                                             {kAliceKey, kAdminKey}}) {
    auto out = request(a, b);
    INFO(out);
    CHECK(out.rfind("HTTP/1.1 400", 0) == 0);
    CHECK(out.find("\"invalid_request\"") != std::string::npos);
    CHECK(out.find("\"items\"") == std::string::npos);
  }
  // One header still works, and a wrong key is a 401 with the Bearer challenge.
  CHECK(env.alice().get("/v1/sandboxes").status == 200);
  auto wrong = HttpClient(env.port(), "wrong-key-0123456789").get("/v1/sandboxes");
  CHECK(wrong.status == 401);
  CHECK(wrong.header("WWW-Authenticate").rfind("Bearer", 0) == 0);
  auto malformed = env.anonymous().get("/v1/sandboxes", {{"Authorization", "Basic YWxpY2U6eA=="}});
  CHECK(malformed.status == 401);
  CHECK(malformed.header("WWW-Authenticate").rfind("Bearer", 0) == 0);
}
