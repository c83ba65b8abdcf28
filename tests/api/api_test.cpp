// HTTP API v1 end to end: the real berthd binary, started as a child process on a loopback port with the fake
// driver plugin and its own SQLite database, driven over HTTP. Tests whose configuration is the default share one
// berthd (started on first use); tests that need other settings (limits, auth, injected driver faults, a small
// thread pool, restarts) start their own. See tests/api/berthd_process.hpp for the harness.
#include <catch2/catch.hpp>

#include <Poco/Base64Encoder.h>
#include <Poco/DateTime.h>
#include <Poco/DateTimeFormat.h>
#include <Poco/DateTimeParser.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/JSONString.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/StreamSocket.h>
#include <utf8.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <latch>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <berth/driver.h>

#include "api/berthd_process.hpp"
#include "api/sse_client.hpp"

using namespace berth::test;
using namespace std::chrono_literals;
using Poco::JSON::Array;
using Poco::JSON::Object;

namespace {

// ---- fixtures -------------------------------------------------------------------------------------------------------

/** The berthd with the default configuration (default capacity: 64 work slots and a queue of 512). */
BerthdProcess& shared_berthd() {
  // One owner creates every sandbox of this suite: the per-owner quotas have their own tests (tests/security).
  static BerthdProcess process(
      BerthdConfig{"", "", "[limits]\nmax_sandboxes_per_owner = 0\ncreate_rate_per_minute = 0\n"});
  return process;
}

HttpClient shared_client() {
  return HttpClient(shared_berthd().port());
}

// ---- small helpers ------------------------------------------------------------------------------------------------

std::mt19937_64& rng() {
  static thread_local std::mt19937_64 engine{std::random_device{}()};
  return engine;
}

std::string random_hex(std::size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < n; ++i)
    out += kHex[rng()() & 0xf];
  return out;
}

std::string random_bytes(std::size_t n) {
  std::string out(n, '\0');
  for (auto& c : out)
    c = static_cast<char>(rng()() & 0xff);
  return out;
}

/** A label value unique to one test run, so tests sharing a berthd never see each other's sandboxes. */
std::string unique(const std::string& prefix) {
  return prefix + "-" + random_hex(10);
}

/** A JSON string literal. */
std::string q(const std::string& s) {
  return Poco::toJSON(s);
}

std::string sb(const std::string& id) {
  return "/v1/sandboxes/" + id;
}

std::string str(const Object::Ptr& o, const std::string& key) {
  return o->getValue<std::string>(key);
}

bool is_null(const Object::Ptr& o, const std::string& key) {
  return !o->has(key) || o->isNull(key);
}

std::string describe(const HttpResponse& r) {
  return "HTTP " + std::to_string(r.status) + " " + r.body.substr(0, 1500);
}

/** The response has `status`, carries an X-Request-Id and its body is a JSON object. */
Object::Ptr require_json(const HttpResponse& r, int status) {
  INFO(describe(r));
  REQUIRE(r.status == status);
  CHECK_THAT(r.header("X-Request-Id"), Catch::Matches("req-.+"));
  return r.json();
}

/** The error envelope: {"error":{"code","message","request_id","details"}} and X-Request-Id == request_id. */
Object::Ptr require_error(const HttpResponse& r, int status, const std::string& code) {
  INFO(describe(r));
  REQUIRE(r.status == status);
  REQUIRE(r.header("Content-Type").rfind("application/json", 0) == 0);
  auto body = r.json();
  REQUIRE(body->size() == 1);
  auto err = body->getObject("error");
  REQUIRE(err);
  CHECK(str(err, "code") == code);
  CHECK(!str(err, "message").empty());
  CHECK(!r.header("X-Request-Id").empty());
  CHECK(str(err, "request_id") == r.header("X-Request-Id"));
  REQUIRE(err->getObject("details"));
  return err;
}

/** Seconds of a Retry-After header: present and a positive integer. */
int retry_after(const HttpResponse& r) {
  INFO(describe(r));
  REQUIRE(r.has_header("Retry-After"));
  int s = std::stoi(r.header("Retry-After"));
  CHECK(s >= 1);
  return s;
}

Object::Ptr create(const HttpClient& c, const std::string& body = "{}") {
  return require_json(c.post("/v1/sandboxes", body), 201);
}

std::string create_id(const HttpClient& c, const std::string& body = "{}") {
  return str(create(c, body), "id");
}

Object::Ptr get_sandbox(const HttpClient& c, const std::string& id) {
  return require_json(c.get(sb(id)), 200);
}

HttpResponse python(const HttpClient& c, const std::string& id, const std::string& code, int timeout = 0) {
  std::string body = "{\"code\":" + q(code) + (timeout ? ",\"timeout\":" + std::to_string(timeout) : "") + "}";
  return c.post(sb(id) + "/python/exec", body);
}

HttpResponse shell(const HttpClient& c, const std::string& id, const std::string& command, int timeout = 0,
                   const std::string& cwd = "") {
  std::string body = "{\"command\":" + q(command) + (timeout ? ",\"timeout\":" + std::to_string(timeout) : "") +
                     (cwd.empty() ? "" : ",\"cwd\":" + q(cwd)) + "}";
  return c.post(sb(id) + "/shell/exec", body);
}

std::vector<std::string> ids_of(const Array::Ptr& items) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < items->size(); ++i)
    out.push_back(items->getObject(static_cast<unsigned>(i))->getValue<std::string>("id"));
  return out;
}

/** Seconds since the epoch of an RFC 3339 time as the API writes it. */
double epoch_seconds(const std::string& rfc3339) {
  int tzd = 0;
  Poco::DateTime dt = Poco::DateTimeParser::parse(Poco::DateTimeFormat::ISO8601_FRAC_FORMAT, rfc3339, tzd);
  return static_cast<double>(dt.timestamp().epochMicroseconds()) / 1e6 - tzd;
}

/** Polls `done` every 20 ms until it holds or `timeout` passes. */
bool eventually(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (done()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
}

/** Runs `fn(i)` on `n` threads released together; exceptions become status -1 with the message as body. */
std::vector<HttpResponse> in_parallel(int n, const std::function<HttpResponse(int)>& fn) {
  std::vector<HttpResponse> out(static_cast<std::size_t>(n));
  std::latch go(n);
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      go.arrive_and_wait();
      try {
        out[static_cast<std::size_t>(i)] = fn(i);
      } catch (const std::exception& e) {
        out[static_cast<std::size_t>(i)].status = -1;
        out[static_cast<std::size_t>(i)].body = e.what();
      }
    });
  }
  for (auto& t : threads)
    t.join();
  return out;
}

HttpResponse upload(const HttpClient& c, const std::string& id, const std::string& path, const std::string& data) {
  auto [type, body] = multipart({{"path", path, ""}, {"file", data, "blob.bin"}});
  return c.request("POST", sb(id) + "/filesystem/upload", body, type);
}

/** Strict UTF-8 (no overlong forms, no surrogates, at most U+10FFFF), as utfcpp checks it. */
bool valid_utf8(const std::string& s) {
  return utf8::is_valid(s.begin(), s.end());
}

const std::regex kSandboxId("sandbox-[0-9a-f]{12}");
const std::regex kWorkspaceId("ws-[0-9a-f]{12}");
const std::regex kExecId("exec-[0-9a-f]{12}");
const std::regex kSessionId("sess-[0-9a-f]{12}");
const std::regex kRfc3339("\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d(\\.\\d+)?Z");

}  // namespace

// ==== meta ===========================================================================================================

TEST_CASE("health, meta and profiles describe the server and the fake driver", "[meta]") {
  auto c = shared_client();

  auto health = require_json(c.get("/health"), 200);
  CHECK(str(health, "status") == "ok");
  CHECK(!str(health, "version").empty());
  CHECK(health->getValue<int>("uptime_s") >= 0);

  auto meta = require_json(c.get("/meta"), 200);
  CHECK(str(meta, "name") == "berth");
  CHECK(str(meta, "version") == str(health, "version"));
  CHECK(str(meta, "api_version") == "v1");
  auto driver = meta->getObject("driver");
  REQUIRE(driver);
  CHECK(str(driver, "name") == "fake");
  CHECK(!str(driver, "version").empty());
  CHECK(str(driver, "abi") == "1." + std::to_string(BERTH_ABI_VERSION_MINOR));
  std::set<std::string> caps;
  for (const auto& v : *meta->getArray("capabilities"))
    caps.insert(v.toString());
  CHECK(caps.count("exec"));
  CHECK(caps.count("files"));
  CHECK(caps.count("volumes"));
  REQUIRE(meta->getArray("profiles")->size() == 1);
  CHECK(meta->getArray("profiles")->getObject(0)->getValue<std::string>("name") == "default");
  // Running sessions by transport: a sandbox started just now counts under the fake driver's "in-process".
  auto counted = [&](const std::string& transport) {
    auto by = require_json(c.get("/meta"), 200)->getObject("sessions")->getObject("by_transport");
    return by->has(transport) ? by->getValue<int>(transport) : 0;
  };
  const int before = counted("in-process");
  auto sandbox = require_json(c.post("/v1/sandboxes", "{}"), 201);
  require_json(c.post("/v1/sandboxes/" + str(sandbox, "id") + "/start"), 200);
  CHECK(counted("in-process") >= before + 1);
  REQUIRE(c.del("/v1/sandboxes/" + str(sandbox, "id")).status == 204);

  auto profiles = require_json(c.get("/v1/profiles"), 200);
  auto items = profiles->getArray("items");
  REQUIRE(items->size() == 1);
  auto p = items->getObject(0);
  CHECK(str(p, "name") == "default");
  CHECK(str(p, "image") == "berth/python:3.11");
  CHECK(p->getValue<double>("cpus") == Approx(1.0));
  CHECK(p->getValue<std::int64_t>("memory_bytes") == 512ll << 20);
  CHECK(p->getValue<int>("pids") == 256);
  CHECK(p->getValue<bool>("network") == false);
  CHECK(is_null(p, "ttl_s"));
  CHECK(p->getValue<int>("idle_timeout_s") == 1800);
  std::set<std::string> pcaps;
  for (const auto& v : *p->getArray("capabilities"))
    pcaps.insert(v.toString());
  CHECK(pcaps == std::set<std::string>{"filesystem", "python", "shell"});

  // Every response carries a request id, and they differ.
  auto a = c.get("/health");
  auto b = c.get("/health");
  CHECK(!a.header("X-Request-Id").empty());
  CHECK(a.header("X-Request-Id") != b.header("X-Request-Id"));
}

// ==== sandbox lifecycle ==============================================================================================

TEST_CASE("sandbox lifecycle: lazy create then get, start, stop and delete", "[sandboxes]") {
  auto c = shared_client();
  auto label = unique("life");
  auto created = create(c, R"J({"labels":{"suite":)J" + q(label) + R"J(},"env":{"GREETING":"hi"}})J");
  std::string id = str(created, "id");
  CHECK(std::regex_match(id, kSandboxId));
  CHECK(str(created, "status") == "idle");
  CHECK(str(created, "profile") == "default");
  CHECK(std::regex_match(str(created, "workspace_id"), kWorkspaceId));
  CHECK(is_null(created, "key"));
  CHECK(is_null(created, "session_id"));
  CHECK(is_null(created, "transport"));
  CHECK(is_null(created, "expires_at"));
  CHECK(is_null(created, "idle_expires_at"));
  CHECK(std::regex_match(str(created, "created_at"), kRfc3339));
  CHECK(created->getObject("labels")->getValue<std::string>("suite") == label);
  CHECK(created->getArray("capabilities")->size() == 3);
  CHECK(!created->has("error"));

  auto got = get_sandbox(c, id);
  CHECK(str(got, "id") == id);
  CHECK(str(got, "status") == "idle");
  CHECK(str(got, "workspace_id") == str(created, "workspace_id"));
  CHECK(str(got, "created_at") == str(created, "created_at"));

  // Stopping an idle sandbox is a no-op that succeeds.
  auto stopped = require_json(c.post(sb(id) + "/stop"), 200);
  CHECK(str(stopped, "status") == "stopped");
  CHECK(str(get_sandbox(c, id), "status") == "idle");

  auto started = require_json(c.post(sb(id) + "/start"), 200);
  CHECK(str(started, "id") == id);
  CHECK(str(started, "status") == "ready");
  CHECK(std::regex_match(str(started, "session_id"), kSessionId));
  CHECK(str(started, "transport") == "in-process");  // the fake driver's endpoint "in-process:<handle>"
  CHECK(!is_null(started, "idle_expires_at"));
  CHECK(str(get_sandbox(c, id), "status") == "ready");
  // Starting a ready sandbox keeps its session.
  auto again = require_json(c.post(sb(id) + "/start"), 200);
  CHECK(str(again, "session_id") == str(started, "session_id"));

  stopped = require_json(c.post(sb(id) + "/stop"), 200);
  CHECK(str(stopped, "status") == "stopped");
  auto after_stop = get_sandbox(c, id);
  CHECK(str(after_stop, "status") == "idle");
  CHECK(is_null(after_stop, "session_id"));
  stopped = require_json(c.post(sb(id) + "/stop"), 200);  // idempotent
  CHECK(str(stopped, "status") == "stopped");

  auto del = c.del(sb(id));
  INFO(describe(del));
  REQUIRE(del.status == 204);
  CHECK(del.body.empty());
  CHECK(!del.header("X-Request-Id").empty());

  // Afterwards every route for it is 404.
  auto [mp_type, mp_body] = multipart({{"path", "x", ""}, {"file", "data", "x"}});
  std::vector<HttpResponse> after = {
      c.get(sb(id)),
      c.del(sb(id)),
      c.post(sb(id) + "/start"),
      c.post(sb(id) + "/stop"),
      c.post(sb(id) + "/keepalive"),
      c.post(sb(id) + "/extend_ttl", R"J({"extend_by":60})J"),
      python(c, id, "print(1)"),
      shell(c, id, "echo 1"),
      c.get(sb(id) + "/history"),
      c.get(sb(id) + "/filesystem/files?path=a.txt"),
      c.put(sb(id) + "/filesystem/files", R"J({"path":"a.txt","content":"x"})J"),
      c.del(sb(id) + "/filesystem/files?path=a.txt"),
      c.get(sb(id) + "/filesystem/directories?path=."),
      c.request("POST", sb(id) + "/filesystem/upload", mp_body, mp_type),
      c.get(sb(id) + "/filesystem/download?path=a.txt"),
  };
  for (const auto& r : after)
    require_error(r, 404, "not_found");
  // And it is gone from the list.
  auto list = require_json(c.get("/v1/sandboxes?label=" + url_encode("suite=" + label)), 200);
  CHECK(list->getArray("items")->size() == 0);
}

TEST_CASE("list filters by status and label and pages with a cursor", "[sandboxes]") {
  auto c = shared_client();
  auto label = unique("page");
  std::set<std::string> created;
  for (int i = 0; i < 5; ++i)
    created.insert(create_id(c, R"J({"labels":{"batch":)J" + q(label) + "}}"));
  create_id(c, R"J({"labels":{"batch":"other"}})J");  // must not show up
  REQUIRE(created.size() == 5);

  std::set<std::string> seen;
  std::string cursor;
  int pages = 0;
  for (;;) {
    std::string uri = "/v1/sandboxes?limit=2&label=" + url_encode("batch=" + label);
    if (!cursor.empty()) uri += "&cursor=" + cursor;
    auto page = require_json(c.get(uri), 200);
    auto items = page->getArray("items");
    CHECK(items->size() <= 2);
    for (const auto& id : ids_of(items))
      CHECK(seen.insert(id).second);  // no item twice
    ++pages;
    REQUIRE(pages <= 5);
    if (is_null(page, "next_cursor")) break;
    cursor = str(page, "next_cursor");
    CHECK(std::regex_match(cursor, kSandboxId));
  }
  CHECK(seen == created);
  CHECK(pages == 3);

  // Status filter: start one of them.
  std::string ready_id = *created.begin();
  require_json(c.post(sb(ready_id) + "/start"), 200);
  auto ready = require_json(c.get("/v1/sandboxes?status=ready&label=" + url_encode("batch=" + label)), 200);
  CHECK(ids_of(ready->getArray("items")) == std::vector<std::string>{ready_id});
  auto idle = require_json(c.get("/v1/sandboxes?status=idle&label=" + url_encode("batch=" + label)), 200);
  CHECK(idle->getArray("items")->size() == 4);
  for (const auto& id : ids_of(idle->getArray("items")))
    CHECK(id != ready_id);
  // The status filter pages too.
  auto idle_page = require_json(c.get("/v1/sandboxes?status=idle&limit=3&label=" + url_encode("batch=" + label)), 200);
  CHECK(idle_page->getArray("items")->size() == 3);
  REQUIRE(!is_null(idle_page, "next_cursor"));
  auto idle_rest = require_json(c.get("/v1/sandboxes?status=idle&limit=3&label=" + url_encode("batch=" + label) +
                                      "&cursor=" + str(idle_page, "next_cursor")),
                                200);
  CHECK(idle_rest->getArray("items")->size() == 1);

  require_error(c.get("/v1/sandboxes?status=sleeping"), 400, "validation_error");
  require_error(c.get("/v1/sandboxes?label=novalue"), 400, "validation_error");
  require_error(c.get("/v1/sandboxes?limit=0"), 400, "validation_error");
  require_error(c.get("/v1/sandboxes?limit=abc"), 400, "validation_error");
  require_error(c.get("/v1/sandboxes?cursor=garbage"), 400, "validation_error");
}

TEST_CASE("keepalive resets the idle timer without starting a session", "[sandboxes]") {
  auto c = shared_client();
  std::string id = create_id(c);
  auto ok = require_json(c.post(sb(id) + "/keepalive"), 200);
  CHECK(str(ok, "status") == "ok");
  auto got = get_sandbox(c, id);
  CHECK(str(got, "status") == "idle");
  CHECK(is_null(got, "session_id"));
  REQUIRE(!is_null(got, "idle_expires_at"));
  // The idle timer is the profile's idle_timeout (1800 s) from now.
  double idle_at = epoch_seconds(str(got, "idle_expires_at"));
  double now = static_cast<double>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                       std::chrono::system_clock::now().time_since_epoch())
                                       .count()) /
               1000.0;
  CHECK(idle_at - now == Approx(1800).margin(30));
  CHECK(shared_berthd().count_log_lines("session.create sandbox=" + id) == 0);
}

TEST_CASE("extend_ttl moves expires_at and is 409 for infinite or expired sandboxes", "[sandboxes][ttl]") {
  auto c = shared_client();

  auto with_ttl = create(c, R"J({"ttl":100})J");
  std::string id = str(with_ttl, "id");
  REQUIRE(!is_null(with_ttl, "expires_at"));
  double before = epoch_seconds(str(with_ttl, "expires_at"));
  CHECK(before - epoch_seconds(str(with_ttl, "created_at")) == Approx(100).margin(0.01));
  auto extended = require_json(c.post(sb(id) + "/extend_ttl", R"J({"extend_by":50})J"), 200);
  CHECK(str(extended, "id") == id);
  CHECK(epoch_seconds(str(extended, "expires_at")) - before == Approx(50).margin(0.01));
  CHECK(str(get_sandbox(c, id), "expires_at") == str(extended, "expires_at"));
  require_error(c.post(sb(id) + "/extend_ttl", "{}"), 400, "validation_error");
  require_error(c.post(sb(id) + "/extend_ttl", R"J({"extend_by":0})J"), 400, "validation_error");
  require_error(c.post(sb(id) + "/extend_ttl", R"J({"extend_by":"10"})J"), 400, "validation_error");

  std::string forever = create_id(c);
  require_error(c.post(sb(forever) + "/extend_ttl", R"J({"extend_by":50})J"), 409, "sandbox_ttl_infinite");

  std::string short_lived = create_id(c, R"J({"ttl":1})J");
  REQUIRE(eventually([&] { return str(get_sandbox(c, short_lived), "status") == "expired"; }, 3000ms));
  require_error(c.post(sb(short_lived) + "/extend_ttl", R"J({"extend_by":50})J"), 409, "sandbox_expired");
  require_error(python(c, short_lived, "print(1)"), 409, "sandbox_expired");
  require_error(c.post(sb(short_lived) + "/start"), 409, "sandbox_expired");
  require_error(c.post(sb(short_lived) + "/keepalive"), 409, "sandbox_expired");

  // The cleanup task (run on demand) deletes it, and its managed workspace with it.
  std::string ws = str(get_sandbox(c, short_lived), "workspace_id");
  auto report = require_json(c.post("/v1/admin/gc/run"), 200);
  std::vector<std::string> deleted;
  for (const auto& v : *report->getArray("expired_deleted"))
    deleted.push_back(v.toString());
  CHECK(std::find(deleted.begin(), deleted.end(), short_lived) != deleted.end());
  for (const char* k : {"idle_stopped", "orphans_removed", "dead_sessions", "skipped_stale", "failed"})
    CHECK(report->getArray(k));
  require_error(c.get(sb(short_lived)), 404, "not_found");
  require_error(c.get("/v1/workspaces/" + ws), 404, "not_found");
}

// ==== exec ===========================================================================================================

TEST_CASE("python and shell exec return output, exit codes, stderr, cwd and env", "[exec]") {
  auto c = shared_client();
  std::string id = create_id(c, R"J({"env":{"NAME":"berth-env-value"}})J");

  auto r = require_json(python(c, id, "print(1+2)"), 200);
  CHECK(str(r, "output") == "3\n");
  CHECK(r->getValue<bool>("success"));
  CHECK(r->getValue<int>("exit_code") == 0);
  CHECK(str(r, "error") == "");
  CHECK(r->getValue<bool>("timed_out") == false);
  CHECK(std::regex_match(str(r, "execution_id"), kExecId));
  CHECK(r->getValue<std::int64_t>("execution_time_ms") >= 0);
  // The exec started the idle sandbox.
  CHECK(str(get_sandbox(c, id), "status") == "ready");

  r = require_json(shell(c, id, "exit 3"), 200);
  CHECK(r->getValue<int>("exit_code") == 3);
  CHECK(r->getValue<bool>("success") == false);

  r = require_json(shell(c, id, "echo out; echo oops >&2"), 200);
  CHECK(str(r, "output") == "out\n");
  CHECK(str(r, "error") == "oops\n");
  CHECK(r->getValue<bool>("success"));

  r = require_json(python(c, id, "raise ValueError('bad')"), 200);
  CHECK(r->getValue<bool>("success") == false);
  CHECK(r->getValue<int>("exit_code") == 1);
  CHECK_THAT(str(r, "error"), Catch::Contains("Traceback") && Catch::Contains("ValueError: bad"));

  r = require_json(shell(c, id, "pwd"), 200);
  CHECK(str(r, "output") == "/workspace\n");
  r = require_json(shell(c, id, "pwd", 0, "sub/dir"), 200);
  CHECK(str(r, "output") == "/workspace/sub/dir\n");
  require_error(shell(c, id, "pwd", 0, "../etc"), 400, "validation_error");
  require_error(shell(c, id, "pwd", 0, "/etc"), 400, "validation_error");

  r = require_json(shell(c, id, "echo $NAME"), 200);
  CHECK(str(r, "output") == "berth-env-value\n");

  // Distinct execution ids.
  auto a = require_json(python(c, id, "print(1)"), 200);
  auto b = require_json(python(c, id, "print(1)"), 200);
  CHECK(str(a, "execution_id") != str(b, "execution_id"));
}

namespace {
Object::Ptr parse_object(const std::string& text) {
  return Poco::JSON::Parser().parse(text).extract<Object::Ptr>();
}
}  // namespace

TEST_CASE("Accept: text/event-stream streams an exec's output as events, then the same JSON as a result event",
          "[exec][streaming]") {
  auto c = shared_client();
  const auto port = shared_berthd().port();
  std::string id = create_id(c);
  const std::string command = R"(echo one; echo two >&2; seq 3; exit 4)";
  std::ostringstream body;
  Object request;
  request.set("command", command);
  request.stringify(body);

  std::vector<SseEvent> seen_live;
  auto reply = post_events(port, "/v1/sandboxes/" + id + "/shell/exec", body.str(),
                           [&](const SseEvent& e) { seen_live.push_back(e); });
  REQUIRE(reply.status == 200);
  CHECK(reply.content_type.rfind("text/event-stream", 0) == 0);
  REQUIRE(reply.events.size() >= 3);
  CHECK(seen_live.size() == reply.events.size());  // handed over one by one as they arrived

  // Output events first, numbered in order over both streams, each with its stream, time and id = seq.
  std::string out;
  std::string err;
  std::int64_t last_seq = -1;
  for (std::size_t i = 0; i + 1 < reply.events.size(); ++i) {
    const auto& e = reply.events[i];
    INFO(e.event << " " << e.data);
    REQUIRE((e.event == "stdout" || e.event == "stderr"));
    auto o = parse_object(e.data);
    const auto seq = o->getValue<std::int64_t>("seq");
    CHECK(seq > last_seq);
    last_seq = seq;
    CHECK(e.id == std::to_string(seq));
    CHECK(o->getValue<std::string>("stream") == e.event);
    CHECK(std::regex_match(o->getValue<std::string>("time"), std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")));
    (e.event == "stdout" ? out : err) += o->getValue<std::string>("data");
  }
  CHECK(out == "one\n1\n2\n3\n");
  CHECK(err == "two\n");

  // The last event is the result: exactly what the same call answers without streaming (but its own execution).
  const auto& last = reply.events.back();
  REQUIRE(last.event == "result");
  auto streamed = parse_object(last.data);
  auto plain = require_json(shell(c, id, command), 200);
  std::vector<std::string> keys;
  streamed->getNames(keys);
  std::vector<std::string> plain_keys;
  plain->getNames(plain_keys);
  CHECK(keys == plain_keys);
  for (const auto* key : {"output", "error", "exit_code", "success", "timed_out"}) {
    INFO(key);
    CHECK(streamed->get(key).toString() == plain->get(key).toString());
  }
  CHECK(streamed->getValue<int>("exit_code") == 4);
  CHECK(std::regex_match(str(streamed, "execution_id"), kExecId));
  CHECK(str(streamed, "execution_id") != str(plain, "execution_id"));

  // python/exec streams too.
  Object py;
  py.set("code", "print('a')\nprint('b', file=sys.stderr)");
  std::ostringstream py_body;
  py.stringify(py_body);
  auto py_reply = post_events(port, "/v1/sandboxes/" + id + "/python/exec", py_body.str());
  REQUIRE(py_reply.status == 200);
  REQUIRE_FALSE(py_reply.events.empty());
  REQUIRE(py_reply.events.back().event == "result");
  auto py_result = parse_object(py_reply.events.back().data);
  CHECK(str(py_result, "output") == "a\n");
  CHECK(str(py_result, "error") == "b\n");

  // The history has both streamed executions, as any other.
  auto history = require_json(c.get("/v1/sandboxes/" + id + "/history?limit=500"), 200);
  std::set<std::string> ids;
  auto entries = history->getArray("entries");
  for (std::size_t i = 0; i < entries->size(); ++i)
    ids.insert(entries->getObject(i)->getValue<std::string>("id"));
  CHECK(ids.count(str(streamed, "execution_id")) == 1);
  CHECK(ids.count(str(py_result, "execution_id")) == 1);
}

TEST_CASE("a streamed exec refused before any output is an ordinary JSON error with its status", "[exec][streaming]") {
  auto c = shared_client();
  const auto port = shared_berthd().port();
  auto missing = post_events(port, "/v1/sandboxes/sandbox-000000000000/shell/exec", R"({"command":"echo hi"})");
  CHECK(missing.status == 404);
  CHECK(missing.content_type.rfind("application/json", 0) == 0);
  CHECK(parse_object(missing.body)->getObject("error")->getValue<std::string>("code") == "not_found");

  std::string id = create_id(c);
  auto invalid = post_events(port, "/v1/sandboxes/" + id + "/shell/exec", R"({"command": 5})");
  CHECK(invalid.status == 400);
  CHECK(parse_object(invalid.body)->getObject("error")->getValue<std::string>("code") == "validation_error");

  // With an Idempotency-Key the answer is stored and replayed whole: JSON, both the first time and on the replay.
  for (int round = 0; round < 2; ++round) {
    auto keyed = post_events(port, "/v1/sandboxes/" + id + "/shell/exec", R"({"command":"echo keyed"})", {}, 120,
                             {{"Idempotency-Key", "sse-keyed-exec"}});
    INFO("round " << round << ": " << keyed.body);
    CHECK(keyed.status == 200);
    CHECK(keyed.content_type.rfind("application/json", 0) == 0);
    CHECK(keyed.events.empty());
    CHECK(str(parse_object(keyed.body), "output") == "keyed\n");
  }
}

TEST_CASE("exec validates its request", "[exec][errors]") {
  auto c = shared_client();
  std::string id = create_id(c);
  require_error(c.post(sb(id) + "/python/exec", R"J({"code":"print(1)","timeout":0})J"), 400, "validation_error");
  require_error(c.post(sb(id) + "/python/exec", R"J({"code":"print(1)","timeout":301})J"), 400, "validation_error");
  require_error(c.post(sb(id) + "/shell/exec", R"J({"command":"true","timeout":0})J"), 400, "validation_error");
  require_error(c.post(sb(id) + "/shell/exec", R"J({"command":"true","timeout":301})J"), 400, "validation_error");
  require_error(c.post(sb(id) + "/python/exec", R"J({"code":"print(1)","timeout":"5"})J"), 400, "validation_error");
  require_error(c.post(sb(id) + "/python/exec", R"J({"code":"print(1)","timeout":1.5})J"), 400, "validation_error");
  require_error(c.post(sb(id) + "/python/exec", "{}"), 400, "validation_error");
  require_error(c.post(sb(id) + "/python/exec", R"J({"code":""})J"), 400, "validation_error");
  require_error(c.post(sb(id) + "/python/exec", R"J({"code":42})J"), 400, "validation_error");
  require_error(c.post(sb(id) + "/python/exec", R"J({"code":"print(1)","cwd":"x"})J"), 400, "validation_error");
  require_error(c.post(sb(id) + "/shell/exec", R"J({"cmd":"true"})J"), 400, "validation_error");
  require_error(c.post(sb(id) + "/shell/exec", R"J(["true"])J"), 400, "invalid_request");
  // The limits are inclusive.
  CHECK(require_json(c.post(sb(id) + "/python/exec", R"J({"code":"print(1)","timeout":300})J"), 200)
            ->getValue<bool>("success"));
  CHECK(require_json(c.post(sb(id) + "/python/exec", R"J({"code":"print(1)","timeout":1})J"), 200)
            ->getValue<bool>("success"));
}

TEST_CASE("an exec that runs past its timeout is cut off and the sandbox stays usable", "[exec]") {
  auto c = shared_client();
  std::string id = create_id(c);
  require_json(c.post(sb(id) + "/start"), 200);
  auto r = require_json(shell(c, id, "sleep 5", 1), 200);
  CHECK(r->getValue<bool>("timed_out"));
  CHECK(r->getValue<bool>("success") == false);
  CHECK(is_null(r, "exit_code"));
  CHECK_THAT(str(r, "error"), Catch::Contains("timed out after 1s"));

  auto next = require_json(python(c, id, "print(6*7)"), 200);
  CHECK(str(next, "output") == "42\n");
  CHECK(next->getValue<bool>("success"));
}

TEST_CASE("a session that died is replaced by the next exec", "[exec]") {
  auto& berthd = shared_berthd();
  auto c = shared_client();
  std::string id = create_id(c);
  std::string first_session = str(require_json(c.post(sb(id) + "/start"), 200), "session_id");
  auto crash = require_json(shell(c, id, "__fake crash-session"), 200);
  CHECK(crash->getValue<int>("exit_code") == 137);
  CHECK(crash->getValue<bool>("success") == false);

  auto r = require_json(shell(c, id, "echo after"), 200);
  CHECK(str(r, "output") == "after\n");
  auto view = get_sandbox(c, id);
  CHECK(str(view, "status") == "ready");
  CHECK(str(view, "session_id") != first_session);
  CHECK(berthd.count_log_lines("session.create sandbox=" + id + " ") == 2);
}

// ==== files ==========================================================================================================

TEST_CASE("files: write, read, list and delete", "[files]") {
  auto c = shared_client();
  std::string id = create_id(c);

  auto w = require_json(c.put(sb(id) + "/filesystem/files", R"J({"path":"dir/a.txt","content":"hello\nworld"})J"), 200);
  CHECK(str(w, "status") == "ok");
  CHECK(str(w, "path") == "dir/a.txt");
  CHECK(w->getValue<int>("size") == 11);
  require_json(c.put(sb(id) + "/filesystem/files", R"J({"path":"dir/sub/b.txt","content":"xy"})J"), 200);
  require_json(c.put(sb(id) + "/filesystem/files", R"J({"path":"top.txt","content":""})J"), 200);

  auto f = require_json(c.get(sb(id) + "/filesystem/files?path=dir/a.txt"), 200);
  CHECK(str(f, "content") == "hello\nworld");
  CHECK(str(require_json(c.get(sb(id) + "/filesystem/files?path=top.txt"), 200), "content") == "");
  // Overwrite.
  require_json(c.put(sb(id) + "/filesystem/files", R"J({"path":"dir/a.txt","content":"v2"})J"), 200);
  CHECK(str(require_json(c.get(sb(id) + "/filesystem/files?path=dir/a.txt"), 200), "content") == "v2");

  auto dir = require_json(c.get(sb(id) + "/filesystem/directories?path=dir"), 200);
  auto entries = dir->getArray("entries");
  REQUIRE(entries->size() == 2);
  CHECK(entries->getObject(0)->getValue<std::string>("name") == "a.txt");
  CHECK(entries->getObject(0)->getValue<std::string>("type") == "file");
  CHECK(entries->getObject(0)->getValue<int>("size") == 2);
  CHECK(entries->getObject(1)->getValue<std::string>("name") == "sub");
  CHECK(entries->getObject(1)->getValue<std::string>("type") == "directory");

  for (const std::string& uri : std::vector<std::string>{"/filesystem/directories", "/filesystem/directories?path=.",
                                                         "/filesystem/directories?path=" + url_encode("./")}) {
    auto root = require_json(c.get(sb(id) + uri), 200);
    std::map<std::string, std::string> types;
    for (std::size_t i = 0; i < root->getArray("entries")->size(); ++i) {
      auto e = root->getArray("entries")->getObject(static_cast<unsigned>(i));
      types[str(e, "name")] = str(e, "type");
    }
    CHECK(types == std::map<std::string, std::string>{{"dir", "directory"}, {"top.txt", "file"}});
  }

  // A file is not a directory and vice versa.
  require_error(c.get(sb(id) + "/filesystem/files?path=dir"), 400, "validation_error");
  require_error(c.get(sb(id) + "/filesystem/directories?path=top.txt"), 400, "validation_error");

  auto d = require_json(c.del(sb(id) + "/filesystem/files?path=dir/a.txt"), 200);
  CHECK(str(d, "status") == "ok");
  require_error(c.get(sb(id) + "/filesystem/files?path=dir/a.txt"), 404, "not_found");
  require_json(c.del(sb(id) + "/filesystem/files?path=dir"), 200);  // a whole directory
  require_error(c.get(sb(id) + "/filesystem/files?path=dir/sub/b.txt"), 404, "not_found");
  require_error(c.get(sb(id) + "/filesystem/directories?path=dir"), 404, "not_found");
  require_error(c.del(sb(id) + "/filesystem/files?path=dir"), 404, "not_found");
  require_error(c.get(sb(id) + "/filesystem/files?path=missing.txt"), 404, "not_found");
  require_error(c.get(sb(id) + "/filesystem/download?path=missing.bin"), 404, "not_found");

  // Missing or malformed parameters.
  require_error(c.get(sb(id) + "/filesystem/files"), 400, "validation_error");
  require_error(c.del(sb(id) + "/filesystem/files"), 400, "validation_error");
  require_error(c.get(sb(id) + "/filesystem/download"), 400, "validation_error");
  require_error(c.put(sb(id) + "/filesystem/files", R"J({"path":"a.txt"})J"), 400, "validation_error");
  require_error(c.put(sb(id) + "/filesystem/files", R"J({"content":"x"})J"), 400, "validation_error");
  require_error(c.put(sb(id) + "/filesystem/files", R"J({"path":"a.txt","content":"x","owner":"root"})J"), 400,
                "validation_error");
}

TEST_CASE("files: text content is UTF-8 both ways and binary content never breaks the JSON", "[files]") {
  auto c = shared_client();
  std::string id = create_id(c);
  std::string text = "h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80\ttab\n";  // héllo ✓ 😀
  require_json(c.put(sb(id) + "/filesystem/files", "{\"path\":\"u.txt\",\"content\":" + q(text) + "}"), 200);
  auto down = c.get(sb(id) + "/filesystem/download?path=u.txt");
  REQUIRE(down.status == 200);
  CHECK(down.body == text);  // stored as UTF-8 bytes
  auto got = c.get(sb(id) + "/filesystem/files?path=u.txt");
  CHECK(str(require_json(got, 200), "content") == text);
  CHECK(valid_utf8(got.body));

  // A file that is not UTF-8: the JSON route must still answer valid UTF-8 JSON (never raw bytes in a string), e.g.
  // 400 pointing at filesystem/download; download returns the bytes as they are.
  std::string binary(
      "\xff\xfe\x00"
      "abc\x80",
      7);
  require_json(upload(c, id, "b.bin", binary), 200);
  CHECK(c.get(sb(id) + "/filesystem/download?path=b.bin").body == binary);
  auto r = c.get(sb(id) + "/filesystem/files?path=b.bin");
  INFO(describe(r));
  CHECK(r.status != 500);
  CHECK(valid_utf8(r.body));
}

TEST_CASE("files: paths that escape /workspace are refused", "[files][errors]") {
  auto c = shared_client();
  std::string id = create_id(c);
  for (const std::string& bad :
       std::vector<std::string>{"../x", "/etc/passwd", "a/../../b", "a/..", "..", std::string("a\0b", 3)}) {
    INFO("path " << bad);
    auto enc = url_encode(bad);
    require_error(c.get(sb(id) + "/filesystem/files?path=" + enc), 400, "validation_error");
    require_error(c.put(sb(id) + "/filesystem/files", "{\"path\":" + q(bad) + ",\"content\":\"x\"}"), 400,
                  "validation_error");
    require_error(c.del(sb(id) + "/filesystem/files?path=" + enc), 400, "validation_error");
    require_error(c.get(sb(id) + "/filesystem/download?path=" + enc), 400, "validation_error");
    require_error(c.get(sb(id) + "/filesystem/directories?path=" + enc), 400, "validation_error");
    require_error(upload(c, id, bad, "data"), 400, "validation_error");
  }
  // The root itself is not a file.
  require_error(c.get(sb(id) + "/filesystem/files?path=."), 400, "validation_error");
  require_error(c.del(sb(id) + "/filesystem/files?path=."), 400, "validation_error");
}

TEST_CASE("files: upload and download round-trip binary data byte for byte", "[files]") {
  auto c = shared_client();
  std::string id = create_id(c);
  for (std::size_t size : {std::size_t{0}, std::size_t{10 * 1024}, std::size_t{1024 * 1024}}) {
    INFO("size " << size);
    std::string data = random_bytes(size);
    if (size > 0) data[0] = '\0';  // NUL and CR/LF bytes must survive too
    if (size > 2) data[1] = '\r', data[2] = '\n';
    std::string path = "bin/blob-" + std::to_string(size) + ".bin";
    auto up = require_json(upload(c, id, path, data), 200);
    CHECK(str(up, "status") == "ok");
    CHECK(str(up, "path") == path);
    CHECK(up->getValue<std::uint64_t>("size") == size);

    auto down = c.get(sb(id) + "/filesystem/download?path=" + url_encode(path));
    INFO("HTTP " << down.status);
    REQUIRE(down.status == 200);
    CHECK(down.header("Content-Type") == "application/octet-stream");
    CHECK_THAT(down.header("Content-Disposition"), Catch::Contains("blob-" + std::to_string(size) + ".bin"));
    REQUIRE(down.body.size() == size);
    CHECK(down.body == data);
  }
  // The listing reports the sizes.
  auto listing = require_json(c.get(sb(id) + "/filesystem/directories?path=bin"), 200);
  std::map<std::string, std::uint64_t> sizes;
  for (std::size_t i = 0; i < listing->getArray("entries")->size(); ++i) {
    auto e = listing->getArray("entries")->getObject(static_cast<unsigned>(i));
    sizes[str(e, "name")] = e->getValue<std::uint64_t>("size");
  }
  CHECK(sizes == std::map<std::string, std::uint64_t>{
                     {"blob-0.bin", 0}, {"blob-10240.bin", 10240}, {"blob-1048576.bin", 1048576}});

  // Without a path field the file name is used; without a file part it is an error.
  auto [type, body] = multipart({{"file", "named", "from-filename.txt"}});
  auto named = require_json(c.request("POST", sb(id) + "/filesystem/upload", body, type), 200);
  CHECK(str(named, "path") == "from-filename.txt");
  CHECK(str(require_json(c.get(sb(id) + "/filesystem/files?path=from-filename.txt"), 200), "content") == "named");
  auto [type2, body2] = multipart({{"path", "x.txt", ""}});
  require_error(c.request("POST", sb(id) + "/filesystem/upload", body2, type2), 400, "validation_error");
  require_error(c.post(sb(id) + "/filesystem/upload", R"J({"path":"x"})J"), 400, "invalid_request");
}

// ==== history ========================================================================================================

TEST_CASE("history lists executions newest first, with total and exec_type filter", "[history]") {
  auto c = shared_client();
  std::string id = create_id(c);
  auto empty = require_json(c.get(sb(id) + "/history"), 200);
  CHECK(empty->getArray("entries")->size() == 0);
  CHECK(empty->getValue<int>("total") == 0);

  std::vector<std::string> exec_ids;  // in execution order
  std::vector<std::string> kinds;
  for (int i = 0; i < 6; ++i) {
    bool py = i % 3 != 1;
    auto r = require_json(py ? python(c, id, "print(" + std::to_string(i) + ")") : shell(c, id, "exit 4"), 200);
    exec_ids.push_back(str(r, "execution_id"));
    kinds.push_back(py ? "python" : "shell");
  }

  auto all = require_json(c.get(sb(id) + "/history"), 200);
  CHECK(all->getValue<int>("total") == 6);
  auto entries = all->getArray("entries");
  REQUIRE(entries->size() == 6);
  for (std::size_t i = 0; i < 6; ++i) {
    auto e = entries->getObject(static_cast<unsigned>(i));
    std::size_t k = 5 - i;  // newest first
    CHECK(str(e, "id") == exec_ids[k]);
    CHECK(str(e, "exec_type") == kinds[k]);
    CHECK(std::regex_match(str(e, "session_id"), kSessionId));
    CHECK(std::regex_match(str(e, "created_at"), kRfc3339));
    if (kinds[k] == "python") {
      CHECK(str(e, "code") == "print(" + std::to_string(k) + ")");
      CHECK(str(e, "output") == std::to_string(k) + "\n");
      CHECK(e->getValue<bool>("success"));
      CHECK(e->getValue<int>("exit_code") == 0);
    } else {
      CHECK(str(e, "code") == "exit 4");
      CHECK(e->getValue<bool>("success") == false);
      CHECK(e->getValue<int>("exit_code") == 4);
    }
  }

  auto py = require_json(c.get(sb(id) + "/history?exec_type=python"), 200);
  CHECK(py->getValue<int>("total") == 4);
  CHECK(py->getArray("entries")->size() == 4);
  for (std::size_t i = 0; i < py->getArray("entries")->size(); ++i)
    CHECK(py->getArray("entries")->getObject(static_cast<unsigned>(i))->getValue<std::string>("exec_type") == "python");
  auto sh = require_json(c.get(sb(id) + "/history?exec_type=shell"), 200);
  CHECK(sh->getValue<int>("total") == 2);
  CHECK(ids_of(sh->getArray("entries")) == std::vector<std::string>{exec_ids[4], exec_ids[1]});

  auto page = require_json(c.get(sb(id) + "/history?limit=2&offset=1"), 200);
  CHECK(page->getValue<int>("total") == 6);
  CHECK(ids_of(page->getArray("entries")) == std::vector<std::string>{exec_ids[4], exec_ids[3]});

  require_error(c.get(sb(id) + "/history?exec_type=ruby"), 400, "validation_error");
  require_error(c.get(sb(id) + "/history?limit=0"), 400, "validation_error");
  require_error(c.get(sb(id) + "/history?offset=-1"), 400, "validation_error");
}

TEST_CASE("history keeps execution order for executions finished within one millisecond", "[history]") {
  // Quick sequential execs often finish within the same millisecond (the stored time's resolution); the order must
  // still be the order in which they ran.
  auto c = shared_client();
  std::string id = create_id(c);
  require_json(c.post(sb(id) + "/start"), 200);
  std::vector<std::string> exec_ids;
  for (int i = 0; i < 30; ++i)
    exec_ids.push_back(str(require_json(shell(c, id, "true"), 200), "execution_id"));
  std::reverse(exec_ids.begin(), exec_ids.end());  // newest first
  auto history = require_json(c.get(sb(id) + "/history?limit=30"), 200);
  CHECK(ids_of(history->getArray("entries")) == exec_ids);
  // Paging walks the same order.
  std::vector<std::string> paged;
  for (int offset = 0; offset < 30; offset += 7) {
    auto page = require_json(c.get(sb(id) + "/history?limit=7&offset=" + std::to_string(offset)), 200);
    for (const auto& e : ids_of(page->getArray("entries")))
      paged.push_back(e);
  }
  CHECK(paged == exec_ids);
}

// ==== workspaces =====================================================================================================

TEST_CASE("external workspaces outlive their sandboxes and managed ones go with them", "[workspaces]") {
  auto c = shared_client();
  auto ws = require_json(c.post("/v1/workspaces", "{}"), 201);
  std::string ws_id = str(ws, "id");
  CHECK(std::regex_match(ws_id, kWorkspaceId));
  CHECK(ws->getValue<bool>("managed") == false);
  CHECK(std::regex_match(str(ws, "created_at"), kRfc3339));
  auto got = require_json(c.get("/v1/workspaces/" + ws_id), 200);
  CHECK(str(got, "id") == ws_id);
  require_error(c.post("/v1/workspaces", R"J({"size":1})J"), 400, "validation_error");

  std::string first = str(create(c, "{\"workspace_id\":" + q(ws_id) + "}"), "id");
  CHECK(str(get_sandbox(c, first), "workspace_id") == ws_id);
  require_json(c.put(sb(first) + "/filesystem/files", R"J({"path":"notes/keep.txt","content":"survives"})J"), 200);

  require_error(c.del("/v1/workspaces/" + ws_id), 409, "conflict");
  REQUIRE(c.del(sb(first)).status == 204);
  require_json(c.get("/v1/workspaces/" + ws_id), 200);  // external: still there

  std::string second = str(create(c, "{\"workspace_id\":" + q(ws_id) + "}"), "id");
  auto f = require_json(c.get(sb(second) + "/filesystem/files?path=notes/keep.txt"), 200);
  CHECK(str(f, "content") == "survives");
  // Two live sandboxes may share it; deleting the workspace waits for both.
  std::string third = str(create(c, "{\"workspace_id\":" + q(ws_id) + "}"), "id");
  CHECK(str(require_json(c.get(sb(third) + "/filesystem/files?path=notes/keep.txt"), 200), "content") == "survives");
  REQUIRE(c.del(sb(second)).status == 204);
  require_error(c.del("/v1/workspaces/" + ws_id), 409, "conflict");
  REQUIRE(c.del(sb(third)).status == 204);

  auto del = c.del("/v1/workspaces/" + ws_id);
  INFO(describe(del));
  REQUIRE(del.status == 204);
  require_error(c.get("/v1/workspaces/" + ws_id), 404, "not_found");
  require_error(c.del("/v1/workspaces/" + ws_id), 404, "not_found");
  require_error(c.post("/v1/sandboxes", "{\"workspace_id\":" + q(ws_id) + "}"), 404, "not_found");

  // A managed workspace is created with its sandbox and deleted with it.
  auto managed_sb = create(c);
  std::string managed_ws = str(managed_sb, "workspace_id");
  auto mws = require_json(c.get("/v1/workspaces/" + managed_ws), 200);
  CHECK(mws->getValue<bool>("managed") == true);
  require_error(c.del("/v1/workspaces/" + managed_ws), 409, "conflict");
  REQUIRE(c.del(sb(str(managed_sb, "id"))).status == 204);
  require_error(c.get("/v1/workspaces/" + managed_ws), 404, "not_found");

  require_error(c.get("/v1/workspaces/not-a-workspace"), 404, "not_found");
  require_error(c.get("/v1/workspaces/ws-000000000000"), 404, "not_found");
}

// ==== key get-or-create ==============================================================================================

TEST_CASE("key get-or-create returns the live sandbox and UUID spellings are one key", "[keys]") {
  auto c = shared_client();
  std::string key = unique("chat");
  auto first = c.post("/v1/sandboxes", "{\"key\":" + q(key) + "}");
  auto a = require_json(first, 201);
  CHECK(str(a, "key") == key);
  auto second = c.post("/v1/sandboxes", "{\"key\":" + q(key) + "}");
  auto b = require_json(second, 200);
  CHECK(str(b, "id") == str(a, "id"));
  CHECK(str(b, "workspace_id") == str(a, "workspace_id"));

  // UUID: braces + upper case, no dashes, urn:uuid: all name the same sandbox.
  std::string hex = random_hex(32);
  std::string dashed = hex.substr(0, 8) + "-" + hex.substr(8, 4) + "-" + hex.substr(12, 4) + "-" + hex.substr(16, 4) +
                       "-" + hex.substr(20);
  std::string upper = dashed;
  std::transform(upper.begin(), upper.end(), upper.begin(), [](unsigned char ch) { return std::toupper(ch); });
  auto u1 = require_json(c.post("/v1/sandboxes", "{\"key\":" + q("{" + upper + "}") + "}"), 201);
  CHECK(str(u1, "key") == dashed);  // canonical form
  for (const std::string& spelling :
       std::vector<std::string>{hex, "urn:uuid:" + dashed, dashed, upper, "URN:UUID:" + upper}) {
    INFO("key " << spelling);
    auto r = require_json(c.post("/v1/sandboxes", "{\"key\":" + q(spelling) + "}"), 200);
    CHECK(str(r, "id") == str(u1, "id"));
  }
  // A different key is a different sandbox.
  CHECK(str(require_json(c.post("/v1/sandboxes", "{\"key\":" + q(key + "-other") + "}"), 201), "id") != str(a, "id"));
  require_error(c.post("/v1/sandboxes", R"J({"key":"   "})J"), 400, "validation_error");

  // Deleting frees the key.
  REQUIRE(c.del(sb(str(a, "id"))).status == 204);
  auto fresh = require_json(c.post("/v1/sandboxes", "{\"key\":" + q(key) + "}"), 201);
  CHECK(str(fresh, "id") != str(a, "id"));
}

TEST_CASE("key get-or-create replaces an expired sandbox", "[keys][ttl]") {
  auto c = shared_client();
  std::string key = unique("expiring");
  auto old = require_json(c.post("/v1/sandboxes", "{\"key\":" + q(key) + ",\"ttl\":1}"), 201);
  std::string old_id = str(old, "id");
  REQUIRE(eventually([&] { return str(get_sandbox(c, old_id), "status") == "expired"; }, 3000ms));
  auto replaced = require_json(c.post("/v1/sandboxes", "{\"key\":" + q(key) + "}"), 201);
  CHECK(str(replaced, "id") != old_id);
  CHECK(str(replaced, "status") == "idle");
  require_error(c.get(sb(old_id)), 404, "not_found");
  require_error(c.get("/v1/workspaces/" + str(old, "workspace_id")), 404, "not_found");
  CHECK(str(require_json(c.post("/v1/sandboxes", "{\"key\":" + q(key) + "}"), 200), "id") == str(replaced, "id"));
  CHECK(shared_berthd().count_log_lines("sandbox_replaced sandbox=" + old_id) == 1);
}

TEST_CASE("concurrent creates with one key yield one sandbox", "[keys][concurrency]") {
  auto c = shared_client();
  std::string key = unique("race");
  std::string label = unique("race");
  std::string body = "{\"key\":" + q(key) + ",\"labels\":{\"race\":" + q(label) + "}}";
  auto results = in_parallel(20, [&](int) { return c.post("/v1/sandboxes", body); });
  std::set<std::string> ids;
  int created = 0;
  for (const auto& r : results) {
    INFO(describe(r));
    REQUIRE((r.status == 200 || r.status == 201));
    created += r.status == 201;
    ids.insert(str(r.json(), "id"));
  }
  CHECK(ids.size() == 1);
  CHECK(created == 1);
  auto list = require_json(c.get("/v1/sandboxes?label=" + url_encode("race=" + label)), 200);
  CHECK(list->getArray("items")->size() == 1);
}

// ==== Idempotency-Key ================================================================================================

TEST_CASE("Idempotency-Key replays the first response and refuses a different body", "[idempotency]") {
  auto c = shared_client();
  std::string key = "idem_" + random_hex(16);
  std::string label = unique("idem");
  std::string body = R"J({"labels":{"idem":)J" + q(label) + "}}";
  auto first = c.post("/v1/sandboxes", body, {{"Idempotency-Key", key}});
  require_json(first, 201);
  auto replay = c.post("/v1/sandboxes", body, {{"Idempotency-Key", key}});
  INFO(describe(replay));
  CHECK(replay.status == 201);
  CHECK(replay.body == first.body);
  CHECK(replay.header("X-Request-Id") != first.header("X-Request-Id"));
  auto list = require_json(c.get("/v1/sandboxes?label=" + url_encode("idem=" + label)), 200);
  CHECK(list->getArray("items")->size() == 1);

  auto other = c.post("/v1/sandboxes", R"J({"labels":{"idem":"different"}})J", {{"Idempotency-Key", key}});
  auto err = require_error(other, 422, "conflict");
  CHECK(err->getObject("details")->getValue<std::string>("reason") == "idempotency_mismatch");

  for (const std::string& bad : std::vector<std::string>{"bad key!", "", "key/with/slash", std::string(129, 'a')}) {
    INFO("Idempotency-Key '" << bad << "'");
    require_error(c.post("/v1/sandboxes", body, {{"Idempotency-Key", bad}}), 400, "invalid_request");
  }
  // 128 characters of the allowed alphabet are fine.
  require_json(c.post("/v1/sandboxes", "{}", {{"Idempotency-Key", std::string(120, 'A') + random_hex(8)}}), 201);

  // A failed request does not burn the key.
  std::string retry_key = "retry-" + random_hex(12);
  require_error(c.post("/v1/sandboxes", R"J({"profile":"nope"})J", {{"Idempotency-Key", retry_key}}), 400,
                "validation_error");
  require_json(c.post("/v1/sandboxes", "{}", {{"Idempotency-Key", retry_key}}), 201);
}

TEST_CASE("concurrent requests with one Idempotency-Key create one sandbox", "[idempotency][concurrency]") {
  auto c = shared_client();
  std::string key = "concurrent-" + random_hex(16);
  std::string label = unique("idemrace");
  std::string body = R"J({"labels":{"idemrace":)J" + q(label) + "}}";
  auto results = in_parallel(10, [&](int) { return c.post("/v1/sandboxes", body, {{"Idempotency-Key", key}}); });
  std::set<std::string> bodies;
  for (const auto& r : results) {
    INFO(describe(r));
    REQUIRE(r.status == 201);
    bodies.insert(r.body);
  }
  CHECK(bodies.size() == 1);
  auto list = require_json(c.get("/v1/sandboxes?label=" + url_encode("idemrace=" + label)), 200);
  CHECK(list->getArray("items")->size() == 1);
}

// ==== concurrency ====================================================================================================

TEST_CASE("50 concurrent python execs on one idle sandbox start exactly one session", "[exec][concurrency]") {
  auto& berthd = shared_berthd();
  auto c = shared_client();
  std::string id = create_id(c);
  auto results = in_parallel(50, [&](int i) { return python(c, id, "print(" + std::to_string(i) + "*2)"); });
  std::set<std::string> exec_ids;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    INFO("request " << i << ": " << describe(r));
    REQUIRE(r.status == 200);
    auto o = r.json();
    CHECK(str(o, "output") == std::to_string(i * 2) + "\n");
    CHECK(o->getValue<bool>("success"));
    exec_ids.insert(str(o, "execution_id"));
  }
  CHECK(exec_ids.size() == 50);
  CHECK(berthd.count_log_lines("session.create sandbox=" + id + " ") == 1);
  CHECK(str(get_sandbox(c, id), "status") == "ready");
  CHECK(require_json(c.get(sb(id) + "/history?limit=1"), 200)->getValue<int>("total") == 50);
  // Every exec ran in that one session.
  auto history = require_json(c.get(sb(id) + "/history?limit=50"), 200);
  std::set<std::string> sessions;
  for (std::size_t i = 0; i < history->getArray("entries")->size(); ++i)
    sessions.insert(
        history->getArray("entries")->getObject(static_cast<unsigned>(i))->getValue<std::string>("session_id"));
  CHECK(sessions.size() == 1);
}

// ==== restart ========================================================================================================

TEST_CASE("state survives a graceful restart and a kill -9", "[restart]") {
  BerthdProcess berthd;
  HttpClient c(berthd.port());
  auto ws = require_json(c.post("/v1/workspaces", "{}"), 201);
  std::string ws_id = str(ws, "id");
  auto a = create(c, R"J({"ttl":3600,"labels":{"role":"a"},"env":{"X":"from-env"},"key":"restart-key"})J");
  std::string a_id = str(a, "id");
  std::string b_id = create_id(c, "{\"workspace_id\":" + q(ws_id) + "}");
  std::string a_session = str(require_json(c.post(sb(a_id) + "/start"), 200), "session_id");
  require_json(python(c, a_id, "print('before')"), 200);

  // SIGTERM while an exec is in flight: it finishes, then berthd exits 0.
  HttpResponse in_flight;
  std::thread t([&] { in_flight = shell(c, a_id, "sleep 1; echo done"); });
  REQUIRE(berthd.wait_for_log("capability.shell.exec sandbox=" + a_id, 5000ms));
  std::this_thread::sleep_for(100ms);  // let the exec reach the driver
  int rc = berthd.stop();
  t.join();
  CHECK(rc == 0);
  {
    INFO(describe(in_flight));
    CHECK(in_flight.status == 200);
    if (in_flight.status == 200) CHECK(str(in_flight.json(), "output") == "done\n");
  }
  CHECK(berthd.count_log_lines("berthd.stopped") == 1);

  berthd.start();
  auto a2 = get_sandbox(c, a_id);
  for (const char* k : {"id", "profile", "workspace_id", "key", "created_at", "expires_at"})
    CHECK(str(a2, k) == str(a, k));
  CHECK(a2->getObject("labels")->getValue<std::string>("role") == "a");
  CHECK(str(get_sandbox(c, b_id), "workspace_id") == ws_id);
  CHECK(require_json(c.get("/v1/workspaces/" + ws_id), 200)->getValue<bool>("managed") == false);
  CHECK(require_json(c.get("/v1/workspaces/" + str(a, "workspace_id")), 200)->getValue<bool>("managed") == true);
  auto list = require_json(c.get("/v1/sandboxes"), 200);
  auto listed = ids_of(list->getArray("items"));
  CHECK(std::set<std::string>(listed.begin(), listed.end()) == std::set<std::string>{a_id, b_id});
  CHECK(require_json(c.get(sb(a_id) + "/history"), 200)->getValue<int>("total") == 2);
  // The key still maps to the same sandbox.
  CHECK(str(require_json(c.post("/v1/sandboxes", R"J({"key":"restart-key"})J"), 200), "id") == a_id);
  // The fake driver's containers died with the old process: the cleanup pass that runs at start-up (state sync)
  // notices and clears the session, so GET tells the truth. (Its volumes died too, so on this fake only new
  // sandboxes can run code after a restart.)
  CHECK(eventually([&] { return str(get_sandbox(c, a_id), "status") == "idle"; }, 3000ms));
  CHECK(berthd.wait_for_log("session.dead sandbox=" + a_id + " session=" + a_session, 1000ms));
  CHECK(is_null(get_sandbox(c, a_id), "session_id"));
  std::string fresh = create_id(c);
  CHECK(str(require_json(python(c, fresh, "print(4)"), 200), "output") == "4\n");

  // kill -9: no graceful shutdown; the database still has everything committed.
  std::string c_id = create_id(c, R"J({"labels":{"role":"c"}})J");
  berthd.kill9();
  CHECK(berthd.count_log_lines("berthd.stopped") == 1);  // no second graceful stop
  berthd.start();
  for (const auto& id : {a_id, b_id, c_id, fresh})
    CHECK(str(get_sandbox(c, id), "id") == id);
  CHECK(get_sandbox(c, c_id)->getObject("labels")->getValue<std::string>("role") == "c");
  require_json(c.get("/v1/workspaces/" + ws_id), 200);
  CHECK(require_json(c.get("/v1/sandboxes"), 200)->getArray("items")->size() == 4);
  std::string after_kill = create_id(c);
  CHECK(str(require_json(python(c, after_kill, "print(5)"), 200), "output") == "5\n");
}

TEST_CASE("a second berthd on a port in use fails to start instead of sharing the port", "[restart]") {
  BerthdProcess first;
  std::string toml = "[server]\nlisten = \"127.0.0.1:" + std::to_string(first.port()) +
                     "\"\n[store]\npath = \"@DIR@/berth.db\"\n[driver]\npath = \"" BERTH_FAKE_DRIVER "\"\n";
  auto second = run_berthd_until_exit(toml, 2000ms);
  INFO("second berthd's log:\n" << second.log);
  CHECK(second.exited);
  CHECK(second.code != 0);
  CHECK(second.log.find("berthd.started") == std::string::npos);
  require_json(HttpClient(first.port()).get("/health"), 200);
}

// ==== auth ===========================================================================================================

TEST_CASE("auth: API keys map to owners and others get 401 or 404", "[auth][errors]") {
  BerthdProcess berthd(BerthdConfig{"", "",
                                    "[auth]\nallow_anonymous = false\n[auth.keys]\n"
                                    "\"alice-key-0123456789\" = \"alice\"\n\"bob-key-0123456789\" = \"bob\"\n"});
  HttpClient anonymous(berthd.port());
  HttpClient wrong(berthd.port(), "not-a-key-at-all");
  HttpClient alice(berthd.port(), "alice-key-0123456789");
  HttpClient bob(berthd.port(), "bob-key-0123456789");

  require_json(anonymous.get("/health"), 200);  // public
  require_json(anonymous.get("/meta"), 200);
  for (const auto* client : {&anonymous, &wrong}) {
    require_error(client->get("/v1/sandboxes"), 401, "unauthorized");
    require_error(client->post("/v1/sandboxes", "{}"), 401, "unauthorized");
    require_error(client->get("/v1/profiles"), 401, "unauthorized");
    require_error(client->post("/v1/workspaces", "{}"), 401, "unauthorized");
  }
  require_error(anonymous.get("/v1/sandboxes", {{"Authorization", "Bearer"}}), 401, "unauthorized");
  require_error(anonymous.get("/v1/sandboxes", {{"Authorization", "Basic YWxpY2U6eA=="}}), 401, "unauthorized");
  require_error(anonymous.get("/v1/sandboxes", {{"Authorization", "alice-key-0123456789"}}), 401, "unauthorized");

  std::string id = create_id(alice);
  require_json(alice.get(sb(id)), 200);
  require_error(bob.get(sb(id)), 404, "not_found");
  require_error(bob.post(sb(id) + "/start"), 404, "not_found");
  require_error(python(bob, id, "print(1)"), 404, "not_found");
  require_error(bob.del(sb(id)), 404, "not_found");
  CHECK(require_json(bob.get("/v1/sandboxes"), 200)->getArray("items")->size() == 0);
  CHECK(ids_of(require_json(alice.get("/v1/sandboxes"), 200)->getArray("items")) == std::vector<std::string>{id});
  require_error(wrong.get(sb(id)), 401, "unauthorized");

  auto ws = str(require_json(alice.post("/v1/workspaces", "{}"), 201), "id");
  require_error(bob.get("/v1/workspaces/" + ws), 404, "not_found");
  require_error(bob.post("/v1/sandboxes", "{\"workspace_id\":" + q(ws) + "}"), 404, "not_found");

  // Keys and idempotency keys are scoped per owner.
  auto ka = require_json(alice.post("/v1/sandboxes", R"J({"key":"shared-key"})J"), 201);
  auto kb = require_json(bob.post("/v1/sandboxes", R"J({"key":"shared-key"})J"), 201);
  CHECK(str(ka, "id") != str(kb, "id"));
  auto ia = require_json(alice.post("/v1/sandboxes", "{}", {{"Idempotency-Key", "same-idem"}}), 201);
  auto ib = require_json(bob.post("/v1/sandboxes", "{}", {{"Idempotency-Key", "same-idem"}}), 201);
  CHECK(str(ia, "id") != str(ib, "id"));

  REQUIRE(alice.del(sb(id)).status == 204);
  CHECK(berthd.count_log_lines("owner=alice") > 0);
}

TEST_CASE("auth: without keys, anonymous access can be turned off", "[auth][errors]") {
  BerthdProcess berthd(BerthdConfig{"", "", "[auth]\nallow_anonymous = false\n"});
  HttpClient c(berthd.port());
  require_json(c.get("/health"), 200);
  require_error(c.get("/v1/sandboxes"), 401, "unauthorized");
  require_error(c.post("/v1/sandboxes", "{}"), 401, "unauthorized");
}

// ==== errors =========================================================================================================

TEST_CASE("malformed requests are 4xx with the error envelope, never 500", "[errors]") {
  auto c = shared_client();
  require_error(c.post("/v1/sandboxes", "{not json"), 400, "invalid_request");
  require_error(c.post("/v1/sandboxes", R"J({"ttl":)J"), 400, "invalid_request");
  require_error(c.post("/v1/sandboxes", "[1,2]"), 400, "invalid_request");
  require_error(c.post("/v1/sandboxes", R"J("just a string")J"), 400, "invalid_request");

  auto e = require_error(c.post("/v1/sandboxes", R"J({"ttl":"abc"})J"), 400, "validation_error");
  CHECK(e->getObject("details")->getValue<std::string>("field") == "ttl");
  e = require_error(c.post("/v1/sandboxes", R"J({"tll":60})J"), 400, "validation_error");
  CHECK(e->getObject("details")->getValue<std::string>("field") == "tll");
  e = require_error(c.post("/v1/sandboxes", R"J({"profile":"no-such-profile"})J"), 400, "validation_error");
  CHECK_THAT(str(e, "message"), Catch::Contains("no-such-profile"));
  require_error(c.post("/v1/sandboxes", R"J({"profile":7})J"), 400, "validation_error");
  require_error(c.post("/v1/sandboxes", R"J({"ttl":0})J"), 400, "validation_error");
  require_error(c.post("/v1/sandboxes", R"J({"ttl":-5})J"), 400, "validation_error");
  require_error(c.post("/v1/sandboxes", R"J({"ttl":true})J"), 400, "validation_error");
  require_error(c.post("/v1/sandboxes", R"J({"labels":["a"]})J"), 400, "validation_error");
  require_error(c.post("/v1/sandboxes", R"J({"labels":{"a":1}})J"), 400, "validation_error");
  require_error(c.post("/v1/sandboxes", R"J({"env":{"A=B":"x"}})J"), 400, "validation_error");
  require_error(c.post("/v1/sandboxes", R"J({"key":5})J"), 400, "validation_error");

  // Bad ids and unknown ids.
  require_error(c.get("/v1/sandboxes/not-an-id"), 404, "not_found");
  require_error(c.get("/v1/sandboxes/sandbox-XYZ"), 404, "not_found");
  require_error(c.get("/v1/sandboxes/sandbox-000000000000"), 404, "not_found");
  require_error(c.post("/v1/sandboxes/sandbox-000000000000/python/exec", R"J({"code":"print(1)"})J"), 404, "not_found");
  require_error(c.del("/v1/sandboxes/sandbox-000000000000"), 404, "not_found");
  require_error(c.get("/v1/workspaces/ws-zzz"), 404, "not_found");

  // Unknown routes and methods.
  require_error(c.get("/v1/nothing-here"), 404, "not_found");
  require_error(c.get("/v2/sandboxes"), 404, "not_found");
  require_error(c.request("PATCH", "/v1/sandboxes", "{}"), 405, "invalid_request");
  require_error(c.request("PUT", "/health", "{}"), 405, "invalid_request");
}

TEST_CASE("limits: max_body and max_file_size are 413 and profile capabilities are enforced", "[errors][limits]") {
  BerthdProcess berthd(BerthdConfig{"max_body = \"1k\"\nmax_file_size = \"16k\"\n", "",
                                    "[profiles.default]\n"
                                    "[profiles.shellonly]\ncapabilities = [\"shell\"]\n"
                                    "[limits]\nmax_label_value_bytes = 4096\n"});  // room for the padding label
  HttpClient c(berthd.port());

  // A body just under the limit is fine; over it is 413.
  std::string small = R"J({"labels":{"pad":")J" + std::string(1000, 'x') + "\"}}";
  REQUIRE(small.size() <= 1024);
  require_json(c.post("/v1/sandboxes", small), 201);
  std::string big = R"J({"labels":{"pad":")J" + std::string(2048, 'x') + "\"}}";
  require_error(c.post("/v1/sandboxes", big), 413, "payload_too_large");

  std::string id = create_id(c);
  require_error(
      c.put(sb(id) + "/filesystem/files", R"J({"path":"big.txt","content":")J" + std::string(4096, 'y') + "\"}"), 413,
      "payload_too_large");
  require_error(c.post(sb(id) + "/python/exec", R"J({"code":"print(')J" + std::string(2048, 'z') + "')\"}"), 413,
                "payload_too_large");

  // Uploads are limited by max_file_size, not max_body.
  std::string ok_data = random_bytes(8 * 1024);
  require_json(upload(c, id, "ok.bin", ok_data), 200);
  auto down = c.get(sb(id) + "/filesystem/download?path=ok.bin");
  REQUIRE(down.status == 200);
  CHECK(down.body == ok_data);
  require_error(upload(c, id, "too-big.bin", random_bytes(40 * 1024)), 413, "payload_too_large");
  require_error(upload(c, id, "way-too-big.bin", random_bytes(200 * 1024)), 413, "payload_too_large");
  require_error(c.get(sb(id) + "/filesystem/files?path=too-big.bin"), 404, "not_found");
  // Reading a file larger than max_body through the JSON route is refused; download streams it.
  require_error(c.get(sb(id) + "/filesystem/files?path=ok.bin"), 413, "payload_too_large");

  // A profile without python.
  auto restricted = create(c, R"J({"profile":"shellonly"})J");
  std::string rid = str(restricted, "id");
  std::vector<std::string> caps;
  for (const auto& v : *restricted->getArray("capabilities"))
    caps.push_back(v.toString());
  CHECK(caps == std::vector<std::string>{"shell"});
  auto err = require_error(python(c, rid, "print(1)"), 400, "capability_not_supported");
  CHECK(err->getObject("details")->getValue<std::string>("capability") == "python");
  require_error(c.get(sb(rid) + "/filesystem/files?path=a.txt"), 400, "capability_not_supported");
  require_error(upload(c, rid, "a.txt", "x"), 400, "capability_not_supported");
  CHECK(str(require_json(shell(c, rid, "echo fine"), 200), "output") == "fine\n");
}

TEST_CASE("session_not_ready: a request waiting longer than start_wait gets 503 with Retry-After", "[errors][slow]") {
  BerthdProcess berthd(BerthdConfig{"start_wait = \"1s\"\n", "latency_ms = { session_create = 3000 }\n", ""});
  HttpClient c(berthd.port());
  std::string id = create_id(c);

  HttpResponse starter;
  std::thread t([&] { starter = c.post(sb(id) + "/start"); });
  bool starting = eventually([&] { return str(get_sandbox(c, id), "status") == "starting"; }, 2000ms);
  HttpResponse waiter;
  if (starting) waiter = python(c, id, "print(1)");
  t.join();
  REQUIRE(starting);

  auto err = require_error(waiter, 503, "session_not_ready");
  retry_after(waiter);
  CHECK(err->getObject("details")->getValue<std::string>("sandbox_id") == id);

  // The first request started the session itself and succeeded.
  auto started = require_json(starter, 200);
  CHECK(str(started, "status") == "ready");
  CHECK(str(require_json(python(c, id, "print(2)"), 200), "output") == "2\n");
  CHECK(berthd.count_log_lines("session.create sandbox=" + id + " ") == 1);
}

TEST_CASE("driver_unavailable: an unreachable engine is 503 with Retry-After, then recovers", "[errors][slow]") {
  BerthdProcess berthd;
  HttpClient c(berthd.port());
  std::string busy = create_id(c);
  std::string idle = create_id(c);

  auto r = require_json(shell(c, busy, "__fake unavailable 2000"), 200);
  CHECK(r->getValue<int>("exit_code") == 0);

  auto failed = shell(c, idle, "echo hello");
  require_error(failed, 503, "driver_unavailable");
  retry_after(failed);
  auto view = get_sandbox(c, idle);
  CHECK(str(view, "status") == "failed");
  CHECK_THAT(str(view, "error"), Catch::Contains("unavailable"));
  require_json(c.get("/health"), 200);  // the API itself is fine

  HttpResponse last;
  bool recovered = eventually(
      [&] {
        last = shell(c, idle, "echo hello");
        if (last.status != 200) require_error(last, 503, "driver_unavailable");
        return last.status == 200;
      },
      5000ms);
  REQUIRE(recovered);
  CHECK(str(last.json(), "output") == "hello\n");
  auto healthy = get_sandbox(c, idle);
  CHECK(str(healthy, "status") == "ready");
  CHECK(!healthy->has("error"));
}

TEST_CASE("internal: a failed start is 500, leaves status failed, and the next call retries", "[errors]") {
  BerthdProcess berthd(BerthdConfig{"", "fail_create_nth = 1\n", ""});
  HttpClient c(berthd.port());
  std::string id = create_id(c);

  require_error(c.post(sb(id) + "/start"), 500, "internal");
  auto view = get_sandbox(c, id);
  CHECK(str(view, "status") == "failed");
  CHECK_THAT(str(view, "error"), Catch::Contains("injected failure"));
  CHECK(is_null(view, "session_id"));
  auto failed_list = require_json(c.get("/v1/sandboxes?status=failed"), 200);
  CHECK(ids_of(failed_list->getArray("items")) == std::vector<std::string>{id});

  auto r = require_json(python(c, id, "print('retried')"), 200);
  CHECK(str(r, "output") == "retried\n");
  auto healthy = get_sandbox(c, id);
  CHECK(str(healthy, "status") == "ready");
  CHECK(!healthy->has("error"));
  CHECK(berthd.count_log_lines("session.create sandbox=" + id + " ") == 2);
}

// ==== capacity: admission slots and a bounded queue
// ===================================================================

namespace {

/** `n` concurrent `code` execs on sandbox `id`, released together. */
std::vector<HttpResponse> concurrent_shell(const HttpClient& c, const std::string& id, int n, const std::string& cmd) {
  return in_parallel(n, [&](int) { return shell(c, id, cmd); });
}

/** Seconds of Retry-After and the error's details.reason of a 503 server_busy. */
std::string busy_reason(const HttpResponse& r) {
  auto err = require_error(r, 503, "server_busy");
  retry_after(r);
  return err->getObject("details")->getValue<std::string>("reason");
}

}  // namespace

TEST_CASE("capacity: 100 concurrent sleeping python execs on one sandbox all answer 200 from one session",
          "[capacity][concurrency][slow]") {
  // Default capacity: 64 run at once, the other 36 wait in the queue for a slot instead of being refused. All 100
  // connections come from one client address: lift the per-client connection cap (64 by default).
  BerthdProcess berthd({.server = "max_connections_per_client = 0\n"});
  HttpClient c(berthd.port());
  std::string id = create_id(c);
  // Stateless: independent programs side by side (the default context runs one cell at a time, as a notebook).
  auto results = in_parallel(100, [&](int i) {
    return c.post(sb(id) + "/python/exec", "{\"stateless\":true,\"code\":" +
                                               q("import time\ntime.sleep(1)\nprint(" + std::to_string(i) + ")") + "}");
  });
  std::set<std::string> exec_ids;
  for (std::size_t i = 0; i < results.size(); ++i) {
    INFO("request " << i << ": " << describe(results[i]));
    REQUIRE(results[i].status == 200);
    auto o = results[i].json();
    CHECK(str(o, "output") == std::to_string(i) + "\n");
    exec_ids.insert(str(o, "execution_id"));
  }
  CHECK(exec_ids.size() == 100);
  CHECK(berthd.count_log_lines("session.create sandbox=" + id + " ") == 1);
  CHECK(berthd.count_log_lines("http.busy") == 0);
  CHECK(require_json(c.get(sb(id) + "/history?limit=1"), 200)->getValue<int>("total") == 100);
}

TEST_CASE("capacity: beyond work_slots + work_queue requests get 503 server_busy with Retry-After",
          "[capacity][saturation][slow]") {
  BerthdProcess berthd(BerthdConfig{"threads = 32\nwork_slots = 2\nwork_queue = 2\n", "", ""});
  HttpClient c(berthd.port());
  std::string id = create_id(c);
  require_json(c.post(sb(id) + "/start"), 200);
  HttpResponse health;
  std::thread probe([&] {
    // Once two execs run and more are refused, the server is saturated: cheap routes must still answer.
    eventually([&] { return berthd.count_log_lines("http.busy") >= 1; }, 10000ms);
    health = c.get("/health");
  });
  // Long enough that all 8 arrive while the first two still run, however loaded the machine is.
  auto results = concurrent_shell(c, id, 8, "sleep 10");
  probe.join();
  int ok = 0, busy = 0;
  for (const auto& r : results) {
    if (r.status == 200) {
      CHECK(r.json()->getValue<int>("exit_code") == 0);
      ++ok;
    } else {
      CHECK(busy_reason(r) == "queue_full");
      ++busy;
    }
  }
  // 2 ran at once, 2 waited for a slot and then ran; the other 4 were refused.
  CHECK(ok == 4);
  CHECK(busy == 4);
  INFO(describe(health));
  CHECK(health.status == 200);
  CHECK(berthd.count_log_lines("http.busy") == 4);
}

TEST_CASE("capacity: a request that waits longer than work_queue_timeout gets 503 server_busy",
          "[capacity][saturation][slow]") {
  BerthdProcess berthd(BerthdConfig{"threads = 32\nwork_slots = 1\nwork_queue = 4\nwork_queue_timeout = 1\n", "", ""});
  HttpClient c(berthd.port());
  std::string id = create_id(c);
  require_json(c.post(sb(id) + "/start"), 200);
  HttpResponse slow;
  std::thread holder([&] { slow = shell(c, id, "sleep 4"); });
  bool running = eventually([&] { return berthd.count_log_lines("capability.shell.exec sandbox=" + id) >= 1; }, 5000ms);
  HttpResponse waiter;
  if (running) waiter = shell(c, id, "echo queued");
  holder.join();
  REQUIRE(running);
  CHECK(busy_reason(waiter) == "queue_timeout");
  CHECK(require_json(slow, 200)->getValue<int>("exit_code") == 0);
  // Capacity is back: the next exec runs.
  CHECK(str(require_json(shell(c, id, "echo again"), 200), "output") == "again\n");
}

// ==== shutdown =======================================================================================================

TEST_CASE("shutdown: an exec still running when the grace ends gets 503 shutting_down, never 500 and exit 0",
          "[shutdown][slow]") {
  BerthdProcess berthd(BerthdConfig{"shutdown_grace = 1\n", "", ""});
  HttpClient c(berthd.port());
  std::string id = create_id(c);
  require_json(c.post(sb(id) + "/start"), 200);
  HttpResponse in_flight;
  std::thread client([&] { in_flight = python(c, id, "import time\ntime.sleep(30)", 60); });
  bool running =
      eventually([&] { return berthd.count_log_lines("capability.python.exec sandbox=" + id) >= 1; }, 5000ms);
  int code = berthd.stop();
  client.join();
  REQUIRE(running);
  CHECK(code == 0);
  INFO(berthd.log());
  auto err = require_error(in_flight, 503, "shutting_down");
  retry_after(in_flight);
  CHECK(berthd.count_log_lines("service.shutdown_begun calls_cancelled=1") == 1);
  CHECK(berthd.count_log_lines("berthd.stopped") == 1);
  CHECK(berthd.count_log_lines("berthd.shutdown_forced") == 0);
  CHECK(berthd.count_log_lines("http.internal_error") == 0);
  CHECK(berthd.log().find("misuse") == std::string::npos);
}

// ==== Idempotency-Key on every POST ==================================================================================

TEST_CASE("Idempotency-Key: extend_ttl replayed extends once", "[idempotency][ttl]") {
  auto c = shared_client();
  std::string id = create_id(c, R"J({"ttl":100})J");
  double before = epoch_seconds(str(get_sandbox(c, id), "expires_at"));
  std::string key = "ttl-" + random_hex(12);
  auto first = c.post(sb(id) + "/extend_ttl", R"J({"extend_by":50})J", {{"Idempotency-Key", key}});
  auto o = require_json(first, 200);
  CHECK(first.header("Idempotent-Replayed") == "false");
  auto replay = c.post(sb(id) + "/extend_ttl", R"J({"extend_by":50})J", {{"Idempotency-Key", key}});
  require_json(replay, 200);
  CHECK(replay.header("Idempotent-Replayed") == "true");
  CHECK(replay.body == first.body);
  CHECK(epoch_seconds(str(get_sandbox(c, id), "expires_at")) - before == Approx(50).margin(0.01));

  // The same key with another body, or on another route, is refused; the TTL is untouched.
  auto other = c.post(sb(id) + "/extend_ttl", R"J({"extend_by":60})J", {{"Idempotency-Key", key}});
  CHECK(require_error(other, 422, "conflict")->getObject("details")->getValue<std::string>("reason") ==
        "idempotency_mismatch");
  auto elsewhere = c.post(sb(id) + "/keepalive", "", {{"Idempotency-Key", key}});
  require_error(elsewhere, 422, "conflict");
  CHECK(epoch_seconds(str(get_sandbox(c, id), "expires_at")) - before == Approx(50).margin(0.01));
  // Without the key each call extends.
  require_json(c.post(sb(id) + "/extend_ttl", R"J({"extend_by":50})J"), 200);
  CHECK(epoch_seconds(str(get_sandbox(c, id), "expires_at")) - before == Approx(100).margin(0.01));
}

TEST_CASE("Idempotency-Key: exec and workspace create run once and upload refuses the header", "[idempotency]") {
  auto c = shared_client();
  std::string id = create_id(c);
  std::string key = "exec-" + random_hex(12);
  // mkdir without -p fails when run a second time: a replay must not run it again.
  const std::string command = R"J({"command":"mkdir once; echo made"})J";
  auto first = c.post(sb(id) + "/shell/exec", command, {{"Idempotency-Key", key}});
  auto replay = c.post(sb(id) + "/shell/exec", command, {{"Idempotency-Key", key}});
  auto ran = require_json(first, 200);
  CHECK(str(ran, "output") == "made\n");
  CHECK(ran->getValue<int>("exit_code") == 0);
  CHECK(replay.body == first.body);
  CHECK(replay.header("Idempotent-Replayed") == "true");
  CHECK(require_json(c.get(sb(id) + "/history?limit=1"), 200)->getValue<int>("total") == 1);

  std::string ws_key = "ws-" + random_hex(12);
  auto ws1 = require_json(c.post("/v1/workspaces", "{}", {{"Idempotency-Key", ws_key}}), 201);
  auto ws2 = require_json(c.post("/v1/workspaces", "{}", {{"Idempotency-Key", ws_key}}), 201);
  CHECK(str(ws1, "id") == str(ws2, "id"));

  auto [type, body] = multipart({{"path", "u.bin", ""}, {"file", "data", "u.bin"}});
  auto refused =
      c.request("POST", sb(id) + "/filesystem/upload", body, type, {{"Idempotency-Key", "up-" + random_hex(8)}});
  CHECK(require_error(refused, 400, "invalid_request")->getObject("details")->getValue<std::string>("reason") ==
        "idempotency_unsupported");
  require_error(c.get(sb(id) + "/filesystem/files?path=u.bin"), 404, "not_found");
  require_error(c.post(sb(id) + "/keepalive", "", {{"Idempotency-Key", "bad key!"}}), 400, "invalid_request");
}

// ==== names that are not UTF-8 =======================================================================================

namespace {

std::string b64(const std::string& raw) {
  std::ostringstream os;
  Poco::Base64Encoder enc(os);
  enc.rdbuf()->setLineLength(0);
  enc << raw;
  enc.close();
  return os.str();
}

}  // namespace

TEST_CASE("non-UTF-8 names: path_b64 addresses them and every response stays valid UTF-8", "[files][utf8]") {
  auto& berthd = shared_berthd();
  auto c = shared_client();
  std::string id = create_id(c);
  const std::string raw = "d\xfe/bad\xffname.txt";  // two invalid bytes, one in the directory name
  const std::string lossy = "d\xef\xbf\xbd/bad\xef\xbf\xbdname.txt";
  const std::string enc = url_encode(b64(raw));

  auto w = c.put(sb(id) + "/filesystem/files", "{\"path_b64\":" + q(b64(raw)) + ",\"content\":\"hi\"}");
  auto wo = require_json(w, 200);
  CHECK(valid_utf8(w.body));
  CHECK(str(wo, "path") == lossy);
  CHECK(str(wo, "path_b64") == b64(raw));

  // The listing (the original fault: a raw 0xFF in a body labelled UTF-8) is valid UTF-8 and lossless.
  auto root = c.get(sb(id) + "/filesystem/directories");
  CHECK(valid_utf8(root.body));
  auto dir = c.get(sb(id) + "/filesystem/directories?path_b64=" + url_encode(b64("d\xfe")));
  INFO(describe(dir));
  CHECK(valid_utf8(dir.body));
  auto listing = require_json(dir, 200);
  CHECK(str(listing, "path") == "d\xef\xbf\xbd");
  CHECK(str(listing, "path_b64") == b64("d\xfe"));
  REQUIRE(listing->getArray("entries")->size() == 1);
  auto entry = listing->getArray("entries")->getObject(0);
  CHECK(str(entry, "name") == "bad\xef\xbf\xbdname.txt");
  CHECK(str(entry, "name_b64") == b64("bad\xffname.txt"));

  auto read = require_json(c.get(sb(id) + "/filesystem/files?path_b64=" + enc), 200);
  CHECK(str(read, "content") == "hi");
  CHECK(str(read, "path_b64") == b64(raw));

  auto down = c.get(sb(id) + "/filesystem/download?path_b64=" + enc);
  REQUIRE(down.status == 200);
  CHECK(down.body == "hi");
  CHECK(down.header("Content-Disposition") ==
        "attachment; filename=\"bad_name.txt\"; filename*=UTF-8''bad%EF%BF%BDname.txt");

  // A missing name in an error envelope is quoted as lossy UTF-8.
  auto missing = c.get(sb(id) + "/filesystem/files?path_b64=" + url_encode(b64("gone\xff.txt")));
  require_error(missing, 404, "not_found");
  CHECK(valid_utf8(missing.body));

  // cwd_b64 names such a directory for shell/exec.
  auto pwd =
      require_json(c.post(sb(id) + "/shell/exec", "{\"command\":\"pwd\",\"cwd_b64\":" + q(b64("d\xfe")) + "}"), 200);
  CHECK(str(pwd, "output") == "/workspace/d\xef\xbf\xbd\n");
  require_error(c.post(sb(id) + "/shell/exec", "{\"command\":\"pwd\",\"cwd\":\"d\",\"cwd_b64\":\"ZA==\"}"), 400,
                "validation_error");

  require_json(c.del(sb(id) + "/filesystem/files?path_b64=" + enc), 200);
  require_error(c.get(sb(id) + "/filesystem/files?path_b64=" + enc), 404, "not_found");

  // A request target with a raw 0xFF and a newline: the 404 names it in valid UTF-8, and the access log line escapes
  // both bytes instead of splitting the line or writing invalid UTF-8.
  auto odd = c.get("/v1/nowhere/bad%FF%0Aid");
  require_error(odd, 404, "not_found");
  CHECK(valid_utf8(odd.body));
  CHECK(berthd.wait_for_log("path=\"/v1/nowhere/bad\\xff\\nid\" status=404", 5000ms));

  // Every log line berthd wrote is one line of valid UTF-8 (bad bytes escaped).
  std::istringstream lines(berthd.log());
  std::string line;
  while (std::getline(lines, line)) {
    INFO(line);
    CHECK(valid_utf8(line));
  }
}

TEST_CASE("non-UTF-8 names: path and path_b64 are validated", "[files][utf8][errors]") {
  auto c = shared_client();
  std::string id = create_id(c);
  for (const std::string& bad : std::vector<std::string>{"not base64!", "aGk", "aGk=\n", "a===", "****"}) {
    INFO("path_b64 '" << bad << "'");
    auto r = c.get(sb(id) + "/filesystem/files?path_b64=" + url_encode(bad));
    auto err = require_error(r, 400, "validation_error");
    CHECK(err->getObject("details")->getValue<std::string>("reason") == "invalid_base64");
    require_error(c.put(sb(id) + "/filesystem/files", "{\"path_b64\":" + q(bad) + ",\"content\":\"x\"}"), 400,
                  "validation_error");
  }
  // A request target that is not valid percent-encoding is a malformed request, not an unknown route.
  require_error(c.get(sb(id) + "/filesystem/files?path=%zz"), 400, "invalid_request");
  // Exactly one of the two.
  require_error(c.get(sb(id) + "/filesystem/files?path=a&path_b64=" + url_encode(b64("a"))), 400, "validation_error");
  require_error(c.put(sb(id) + "/filesystem/files", "{\"path\":\"a\",\"path_b64\":\"YQ==\",\"content\":\"x\"}"), 400,
                "validation_error");
  // Decoded bytes go through the same path rules: NUL and escapes are refused.
  for (const std::string& raw : std::vector<std::string>{std::string("a\0b", 3), "../x", "/etc/passwd"}) {
    require_error(c.get(sb(id) + "/filesystem/files?path_b64=" + url_encode(b64(raw))), 400, "validation_error");
  }
  // Upload takes path_b64 as a form field.
  auto [type, body] = multipart({{"path_b64", b64("up\xff.bin"), ""}, {"file", "data", "x.bin"}});
  auto up = require_json(c.request("POST", sb(id) + "/filesystem/upload", body, type), 200);
  CHECK(str(up, "path_b64") == b64("up\xff.bin"));
  CHECK(c.get(sb(id) + "/filesystem/download?path_b64=" + url_encode(b64("up\xff.bin"))).body == "data");
}

TEST_CASE("non-ASCII UTF-8 names download with an RFC 8187 filename", "[files][utf8]") {
  auto c = shared_client();
  std::string id = create_id(c);
  const std::string name = "r\xc3\xa9sum\xc3\xa9 \xe6\x96\x87\"q\".txt";  // résumé 文"q".txt
  require_json(c.put(sb(id) + "/filesystem/files", "{\"path\":" + q(name) + ",\"content\":\"x\"}"), 200);
  auto down = c.get(sb(id) + "/filesystem/download?path=" + url_encode(name));
  REQUIRE(down.status == 200);
  CHECK(down.header("Content-Disposition") ==
        "attachment; filename=\"r__sum__ ____q_.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%E6%96%87%22q%22.txt");
  auto listing = require_json(c.get(sb(id) + "/filesystem/directories"), 200);
  auto entry = listing->getArray("entries")->getObject(0);
  CHECK(str(entry, "name") == name);
  CHECK(!entry->has("name_b64"));  // valid UTF-8 needs no second spelling
}

// ==== signals ========================================================================================================

TEST_CASE("signals: berthd ignores SIGPIPE and survives clients hanging up mid-response", "[signals]") {
  BerthdProcess berthd;
  HttpClient c(berthd.port());
  std::string id = create_id(c);
  require_json(upload(c, id, "big.bin", random_bytes(8 << 20)), 200);

  // The kernel's view: SIGPIPE is ignored.
  std::ifstream status("/proc/" + std::to_string(berthd.pid()) + "/status");
  std::string line;
  unsigned long long ignored = 0;
  while (std::getline(status, line)) {
    if (line.rfind("SigIgn:", 0) == 0) ignored = std::stoull(line.substr(7), nullptr, 16);
  }
  CHECK((ignored & (1ull << (SIGPIPE - 1))) != 0);

  // Behaviour: ask for 8 MiB and reset the connection (SO_LINGER 0) before reading it, several times.
  for (int i = 0; i < 5; ++i) {
    Poco::Net::StreamSocket s;
    s.connect(Poco::Net::SocketAddress("127.0.0.1", berthd.port()));
    std::string rq = "GET " + sb(id) + "/filesystem/download?path=big.bin HTTP/1.1\r\nHost: x\r\n\r\n";
    s.sendBytes(rq.data(), static_cast<int>(rq.size()));
    char first[16];
    s.receiveBytes(first, sizeof first);  // the response has started
    s.setLinger(true, 0);
    s.close();
  }
  require_json(c.get("/health"), 200);
  CHECK(berthd.running());
  CHECK(c.get(sb(id) + "/filesystem/download?path=big.bin").body.size() == (8u << 20));
}

TEST_CASE("signals: a fatal signal writes one berthd.crash line with a backtrace", "[signals]") {
  std::string toml =
      "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"@DIR@/berth.db\"\n[driver]\npath = \"" BERTH_FAKE_DRIVER
      "\"\n";
  for (const std::string sig : {"SIGSEGV", "SIGABRT"}) {
    INFO(sig);
    ::setenv("BERTH_DEBUG_CRASH", sig.c_str(), 1);
    auto run = run_berthd_until_exit(toml, 20000ms);
    ::unsetenv("BERTH_DEBUG_CRASH");
    INFO(run.log);
    CHECK(run.exited);
    CHECK(run.code == -(sig == "SIGSEGV" ? SIGSEGV : SIGABRT));
    std::istringstream lines(run.log);
    std::string line;
    int crash_lines = 0;
    while (std::getline(lines, line)) {
      if (line.find("berthd.crash") == std::string::npos) continue;
      ++crash_lines;
      CHECK_THAT(line, Catch::Contains(" error berthd.crash signal=" + sig + " pid="));
      CHECK_THAT(line, Catch::Contains("backtrace=\""));
      CHECK_THAT(line, Catch::Contains("crash_if_requested_for_test"));  // symbolised frames
    }
    CHECK(crash_lines == 1);
  }
  // In JSON log format the line is one JSON object.
  ::setenv("BERTH_DEBUG_CRASH", "SIGSEGV", 1);
  auto run = run_berthd_until_exit(toml + "[log]\nformat = \"json\"\n", 20000ms);
  ::unsetenv("BERTH_DEBUG_CRASH");
  INFO(run.log);
  auto at = run.log.find("{\"event\":\"berthd.crash\"");
  REQUIRE(at != std::string::npos);
  auto crash = Poco::JSON::Parser().parse(run.log.substr(at, run.log.find('\n', at) - at)).extract<Object::Ptr>();
  CHECK(str(crash, "signal") == "SIGSEGV");
  CHECK(!str(crash, "backtrace").empty());
}

TEST_CASE("an encoded '/' stays inside its path segment: x%2Fhistory is an unknown id, not the history route",
          "[routing]") {
  auto c = shared_client();
  auto created = c.post("/v1/sandboxes", "{}");
  REQUIRE(created.status == 201);
  const std::string id = created.json()->getValue<std::string>("id");
  require_error(c.get("/v1/sandboxes/" + id + "%2Fhistory"), 404, "not_found");
  require_error(c.get("/v1/sandboxes/" + id + "%2F"), 404, "not_found");
  CHECK(c.get("/v1/sandboxes/" + id + "/history").status == 200);
  CHECK(c.get("/v1/sandboxes/%73andbox-" + id.substr(8)).status == 200);  // other escapes still decode
  CHECK(c.del("/v1/sandboxes/" + id).status == 204);
}

// ---- issue 10: Python contexts (the fake driver's kernel: host/core/python_kernel.py's protocol, mini Python) ----

namespace {

HttpResponse cell(const HttpClient& c, const std::string& id, const std::string& body) {
  return c.post(sb(id) + "/python/exec", body);
}

/** A cell that must answer 200; its body. */
Object::Ptr run_cell(const HttpClient& c, const std::string& id, const std::string& code,
                     const std::string& extra = "") {
  return require_json(cell(c, id, "{\"code\":" + q(code) + extra + "}"), 200);
}

Object::Ptr parse_json(const std::string& text) {
  Poco::JSON::Parser parser;
  return parser.parse(text).extract<Object::Ptr>();
}

std::string data_text(const Object::Ptr& r) {
  auto data = r->getObject("data");
  return data && data->has("text") ? str(data, "text") : "";
}

}  // namespace

TEST_CASE("python/exec keeps state in the default context: variables, a final expression's value, the counter") {
  auto c = shared_client();
  auto id = create_id(c);
  auto first = run_cell(c, id, "x = 5");
  CHECK(first->getValue<bool>("success"));
  CHECK(str(first, "context_id") == "default");
  CHECK(first->getValue<int>("execution_count") == 1);
  CHECK_FALSE(first->getValue<bool>("context_restarted"));
  CHECK(is_null(first, "data"));
  CHECK(is_null(first, "exception"));
  auto second = run_cell(c, id, "print(x)\nx * 2");
  CHECK(str(second, "output") == "5\n");
  CHECK(data_text(second) == "10");
  CHECK(second->getValue<int>("execution_count") == 2);
  CHECK(second->getValue<int>("exit_code") == 0);

  // An exception fails the cell, says what it was, and keeps the state.
  auto failed = run_cell(c, id, "raise ValueError('boom')");
  CHECK_FALSE(failed->getValue<bool>("success"));
  CHECK(failed->getValue<int>("exit_code") == 1);
  auto exception = failed->getObject("exception");
  REQUIRE(exception);
  CHECK(str(exception, "name") == "ValueError");
  CHECK(str(exception, "value") == "boom");
  CHECK_THAT(str(failed, "error"), Catch::Contains("ValueError: boom"));
  CHECK(data_text(run_cell(c, id, "x")) == "5");

  // sys.exit(n) ends the cell with that exit code, not the context.
  auto exited = run_cell(c, id, "sys.exit(3)");
  CHECK(exited->getValue<int>("exit_code") == 3);
  CHECK_FALSE(exited->getValue<bool>("success"));
  CHECK(data_text(run_cell(c, id, "x + 1")) == "6");

  // Stateless: a fresh interpreter that knows nothing of the context, and no context fields.
  auto stateless = require_json(cell(c, id, R"J({"code":"print(x)","stateless":true})J"), 200);
  CHECK_FALSE(stateless->getValue<bool>("success"));
  CHECK_THAT(str(stateless, "error"), Catch::Contains("NameError"));
  CHECK_FALSE(stateless->has("context_id"));
  CHECK(data_text(run_cell(c, id, "x")) == "5");  // and the context is untouched

  // History records every cell as a python execution.
  auto history = require_json(c.get(sb(id) + "/history?exec_type=python&limit=500"), 200);
  CHECK(history->getValue<int>("total") == 8);
}

TEST_CASE("named contexts: their own state, listed, fetched, deleted, unknown ones 404, a limit per sandbox") {
  auto c = shared_client();
  auto id = create_id(c);
  run_cell(c, id, "x = 1");
  auto created = require_json(c.post(sb(id) + "/contexts", R"J({"env":{"GREETING":"hi"}})J"), 201);
  const std::string ctx = str(created, "id");
  CHECK_THAT(ctx, Catch::Matches("ctx-.+"));
  CHECK(created->getValue<bool>("running"));
  CHECK(created->getValue<int>("execution_count") == 0);
  CHECK(str(created->getObject("env"), "GREETING") == "hi");

  auto in_ctx = require_json(cell(c, id, "{\"code\":\"x\",\"context_id\":" + q(ctx) + "}"), 200);
  CHECK_FALSE(in_ctx->getValue<bool>("success"));  // x lives in the default context only
  CHECK(str(in_ctx->getObject("exception"), "name") == "NameError");
  CHECK(str(in_ctx, "context_id") == ctx);
  require_json(cell(c, id, "{\"code\":\"x = 2\",\"context_id\":" + q(ctx) + "}"), 200);
  CHECK(data_text(require_json(cell(c, id, "{\"code\":\"x\",\"context_id\":" + q(ctx) + "}"), 200)) == "2");
  CHECK(data_text(run_cell(c, id, "x")) == "1");

  auto list = require_json(c.get(sb(id) + "/contexts"), 200);
  auto items = list->getArray("items");
  REQUIRE(items->size() == 2);
  CHECK(ids_of(items) == std::vector<std::string>{ctx, "default"});
  auto one = require_json(c.get(sb(id) + "/contexts/" + ctx), 200);
  CHECK(one->getValue<int>("execution_count") == 3);
  CHECK_FALSE(one->getValue<bool>("busy"));
  CHECK_FALSE(is_null(one, "last_used_at"));

  auto del = c.del(sb(id) + "/contexts/" + ctx);
  CHECK(del.status == 204);
  require_error(c.get(sb(id) + "/contexts/" + ctx), 404, "not_found");
  require_error(c.del(sb(id) + "/contexts/" + ctx), 404, "not_found");
  auto gone = require_error(cell(c, id, "{\"code\":\"1\",\"context_id\":" + q(ctx) + "}"), 404, "not_found");
  CHECK(str(gone->getObject("details"), "context_id") == ctx);
  require_error(cell(c, id, R"J({"code":"1","context_id":"ctx-nope"})J"), 404, "not_found");

  // At most 8 per sandbox, the default one included.
  for (int i = 0; i < 7; ++i)
    require_json(c.post(sb(id) + "/contexts", ""), 201);
  auto full = require_error(c.post(sb(id) + "/contexts", "{}"), 409, "conflict");
  CHECK(str(full->getObject("details"), "limit") == "8");

  require_error(c.post(sb(id) + "/contexts", R"J({"cwd":"../etc"})J"), 400, "validation_error");
  require_error(c.post(sb(id) + "/contexts", R"J({"env":{"LD_PRELOAD":"/x"}})J"), 400, "validation_error");
  require_error(c.post(sb(id) + "/contexts", R"J({"shell":"bash"})J"), 400, "validation_error");
  require_error(c.get(sb("sbx-nope") + "/contexts"), 404, "not_found");

  // A deleted sandbox takes its contexts with it.
  CHECK(c.del(sb(id)).status == 204);
  require_error(c.get(sb(id) + "/contexts"), 404, "not_found");
}

TEST_CASE("python/exec with an event calls handler(event) and returns its value as result") {
  auto c = shared_client();
  auto id = create_id(c);
  auto r =
      require_json(cell(c, id, R"J({"code":"def handler(event): return event","event":{"a":[1,2,"three"]}})J"), 200);
  CHECK(r->getValue<bool>("success"));
  auto result = r->getObject("result");
  REQUIRE(result);
  CHECK(result->getArray("a")->size() == 3);
  // The handler stays defined: an event alone (no code) calls it again.
  auto again = require_json(cell(c, id, R"J({"event":"ping"})J"), 200);
  CHECK(again->getValue<std::string>("result") == "ping");
  // Stateless with an event: a one-off interpreter that has no handler unless the code defines one.
  auto none = require_json(cell(c, id, R"J({"code":"x = 1","event":1,"stateless":true})J"), 200);
  CHECK_FALSE(none->getValue<bool>("success"));
  CHECK(str(none->getObject("exception"), "name") == "NameError");
  CHECK(is_null(none, "context_id"));
  auto own = require_json(cell(c, id, R"J({"code":"def handler(event): return 7","event":{},"stateless":true})J"), 200);
  CHECK(own->getValue<int>("result") == 7);

  require_error(cell(c, id, "{}"), 400, "validation_error");  // neither code nor event
  require_error(cell(c, id, R"J({"code":"1","stateless":true,"context_id":"default"})J"), 400, "validation_error");
  require_error(cell(c, id, R"J({"code":"1","stateless":"yes"})J"), 400, "validation_error");
  require_error(cell(c, id, R"J({"code":"1","context_id":7})J"), 400, "validation_error");
}

TEST_CASE("a cell past its timeout loses its interpreter and says so, and a stopped session restarts the context") {
  auto c = shared_client();
  auto id = create_id(c);
  run_cell(c, id, "x = 5");
  // The fake's interpreter ends at SIGINT (a real one raises KeyboardInterrupt: e2e), so the context restarts.
  auto late = run_cell(c, id, "time.sleep(30)", ",\"timeout\":1");
  CHECK(late->getValue<bool>("timed_out"));
  CHECK_FALSE(late->getValue<bool>("success"));
  CHECK(late->getValue<bool>("context_restarted"));
  CHECK_THAT(str(late, "error"), Catch::Contains("execution timed out after 1s"));
  auto fresh = run_cell(c, id, "x");
  CHECK(str(fresh->getObject("exception"), "name") == "NameError");  // the state went with it
  CHECK_FALSE(fresh->getValue<bool>("context_restarted"));           // already said
  CHECK(fresh->getValue<int>("execution_count") == 1);

  run_cell(c, id, "y = 1");
  require_json(c.post(sb(id) + "/stop", ""), 200);
  auto after_stop = run_cell(c, id, "y");
  CHECK(after_stop->getValue<bool>("context_restarted"));
  CHECK(str(after_stop, "restart_reason") == "session_ended");
  CHECK(str(after_stop->getObject("exception"), "name") == "NameError");
  auto list = require_json(c.get(sb(id) + "/contexts"), 200)->getArray("items");
  REQUIRE(list->size() == 1);
  CHECK(list->getObject(0)->getValue<bool>("running"));
}

TEST_CASE("a cell streams its output as events and ends with the same result the JSON call gives") {
  auto port = shared_berthd().port();
  auto c = shared_client();
  auto id = create_id(c);
  run_cell(c, id, "n = 3");
  auto reply = post_events(port, "/v1/sandboxes/" + id + "/python/exec", R"J({"code":"print('a')\nprint(n)\nn"})J");
  REQUIRE(reply.status == 200);
  REQUIRE(reply.events.size() >= 2);
  std::string out;
  for (std::size_t i = 0; i + 1 < reply.events.size(); ++i) {
    CHECK(reply.events[i].event == "stdout");
    out += str(parse_json(reply.events[i].data), "data");
  }
  CHECK(out == "a\n3\n");
  CHECK(reply.events.back().event == "result");
  auto result = parse_json(reply.events.back().data);
  CHECK(data_text(result) == "3");
  CHECK(result->getValue<int>("execution_count") == 2);
  CHECK(str(result, "output") == "a\n3\n");
}

TEST_CASE("a driver without interactive processes runs python/exec stateless and refuses contexts") {
  BerthdProcess berthd(BerthdConfig{"", "processes = false\n", ""});
  HttpClient c(berthd.port());
  auto id = create_id(c);
  auto r = run_cell(c, id, "print(1)");
  CHECK(str(r, "output") == "1\n");
  CHECK_FALSE(r->has("context_id"));
  require_error(c.post(sb(id) + "/contexts", "{}"), 400, "capability_not_supported");
  require_error(cell(c, id, R"J({"code":"1","context_id":"ctx-x"})J"), 400, "capability_not_supported");
  require_error(cell(c, id, R"J({"event":1})J"), 400, "capability_not_supported");
}

TEST_CASE("concurrent cells on one context run one at a time: none is lost, each sees the one before") {
  auto c = shared_client();
  auto id = create_id(c);
  run_cell(c, id, "x = 0");
  auto results = in_parallel(20, [&](int) { return cell(c, id, R"J({"code":"x = x + 1\nx"})J"); });
  std::set<int> counts;
  std::set<std::string> values;
  for (auto& r : results) {
    auto o = require_json(r, 200);
    counts.insert(o->getValue<int>("execution_count"));
    values.insert(data_text(o));
  }
  CHECK(counts.size() == 20);  // each cell its own turn
  CHECK(*counts.begin() == 2);
  CHECK(values.size() == 20);  // 1..20, each once
  CHECK(data_text(run_cell(c, id, "x")) == "20");
}

// ---- issue 10: async executions ---------------------------------------------------------------------------------

namespace {

Object::Ptr wait_status(const HttpClient& c, const std::string& id, const std::string& eid, const std::string& status) {
  Object::Ptr last;
  eventually(
      [&] {
        last = require_json(c.get(sb(id) + "/executions/" + eid), 200);
        return str(last, "status") == status;
      },
      30s);
  return last;
}

}  // namespace

TEST_CASE("async: 202 at once, status while it runs, the result when done, and the record in the history") {
  auto c = shared_client();
  auto id = create_id(c);
  auto started = c.post(sb(id) + "/shell/exec", R"J({"command":"seq 3; sleep 1; echo done","async":true})J");
  auto v = require_json(started, 202);
  const std::string eid = str(v, "id");
  CHECK_THAT(eid, Catch::Matches("exec-[0-9a-f]{12}"));
  CHECK(str(v, "status") == "running");
  CHECK(v->getValue<bool>("async"));
  CHECK(is_null(v, "result"));
  CHECK(started.header("Location") == sb(id) + "/executions/" + eid);
  // Running: the history already lists it (without a session or result yet).
  auto done = wait_status(c, id, eid, "succeeded");
  REQUIRE(str(done, "status") == "succeeded");
  auto result = done->getObject("result");
  REQUIRE(result);
  CHECK(str(result, "output") == "1\n2\n3\ndone\n");
  CHECK(str(result, "execution_id") == eid);
  CHECK_FALSE(is_null(done, "finished_at"));
  auto history = require_json(c.get(sb(id) + "/history?limit=5"), 200)->getArray("entries");
  REQUIRE(history->size() == 1);
  CHECK(str(history->getObject(0), "id") == eid);
  CHECK(str(history->getObject(0), "output") == "1\n2\n3\ndone\n");
  // A synchronous exec is an execution too (read from the history).
  auto sync = require_json(shell(c, id, "echo sync; exit 2"), 200);
  auto sv = require_json(c.get(sb(id) + "/executions/" + str(sync, "execution_id")), 200);
  CHECK(str(sv, "status") == "failed");
  CHECK_FALSE(sv->getValue<bool>("async"));
  CHECK(sv->getObject("result")->getValue<int>("exit_code") == 2);
  // Python, timed out.
  auto py =
      require_json(c.post(sb(id) + "/python/exec", R"J({"code":"time.sleep(5)","timeout":1,"async":true})J"), 202);
  auto to = wait_status(c, id, str(py, "id"), "timed_out");
  CHECK(to->getObject("result")->getValue<bool>("timed_out"));

  require_error(c.get(sb(id) + "/executions/exec-000000000000"), 404, "not_found");
  require_error(c.get(sb(id) + "/executions/nope"), 404, "not_found");
  require_error(c.get(sb(create_id(c)) + "/executions/" + eid), 404, "not_found");  // another sandbox's
  require_error(c.post(sb(id) + "/shell/exec", R"J({"command":"true","async":"yes"})J"), 400, "validation_error");
  require_error(c.post(sb(id) + "/shell/exec", R"J({"command":"true","async":true,"timeout":0})J"), 400,
                "validation_error");
  require_error(c.post(sb(id) + "/python/exec", R"J({"code":"1","async":true,"context_id":"ctx-none"})J"), 404,
                "not_found");
  require_error(c.post(sb("sandbox-000000000000") + "/shell/exec", R"J({"command":"true","async":true})J"), 404,
                "not_found");
}

TEST_CASE(
    "async: events replay from Last-Event-ID and follow live, a cancel ends it, and a cancel after the end is 409") {
  auto port = shared_berthd().port();
  auto c = shared_client();
  auto id = create_id(c);
  auto v =
      require_json(c.post(sb(id) + "/shell/exec", R"J({"command":"seq 5; sleep 1; echo tail","async":true})J"), 202);
  const std::string eid = str(v, "id");
  const std::string events_uri = "/v1/sandboxes/" + id + "/executions/" + eid + "/events";
  // From the start, live until the result (the client attached while it ran).
  auto all = get_events(port, events_uri);
  REQUIRE(all.status == 200);
  REQUIRE(all.events.size() == 7);
  for (int i = 0; i < 6; ++i) {
    CHECK(all.events[static_cast<std::size_t>(i)].event == "stdout");
    CHECK(all.events[static_cast<std::size_t>(i)].id == std::to_string(i));
  }
  CHECK(all.events.back().event == "result");
  CHECK(str(parse_json(all.events.back().data), "output") == "1\n2\n3\n4\n5\ntail\n");
  // Re-attached after seq 3: only what followed, then the same result.
  auto rest = get_events(port, events_uri, {{"Last-Event-ID", "3"}});
  REQUIRE(rest.events.size() == 3);
  CHECK(rest.events[0].id == "4");
  CHECK(rest.events[1].id == "5");
  CHECK(rest.events[2].event == "result");
  CHECK(get_events(port, events_uri + "?after=4").events.size() == 2);
  auto bad = c.get(sb(id) + "/executions/" + eid + "/events", {{"Last-Event-ID", "x1"}});
  require_error(bad, 400, "validation_error");
  auto conflict = require_error(c.post(sb(id) + "/executions/" + eid + "/cancel"), 409, "conflict");
  CHECK(str(conflict->getObject("details"), "status") == "succeeded");

  // Cancel: a running one ends as cancelled, its events stream ends with an error event, the history says so.
  auto hang = require_json(c.post(sb(id) + "/shell/exec", R"J({"command":"echo before; hang","async":true})J"), 202);
  const std::string hid = str(hang, "id");
  CHECK(wait_status(c, id, hid, "running"));  // started (and still running: `hang` ends only by a cancel)
  auto cancelled = require_json(c.post(sb(id) + "/executions/" + hid + "/cancel"), 200);
  CHECK(str(cancelled, "status") == "cancelled");
  CHECK(is_null(cancelled, "result"));
  auto ended = get_events(port, "/v1/sandboxes/" + id + "/executions/" + hid + "/events");
  REQUIRE_FALSE(ended.events.empty());
  CHECK(ended.events.back().event == "error");
  require_error(c.post(sb(id) + "/executions/" + hid + "/cancel"), 409, "conflict");
  require_error(c.post(sb(id) + "/executions/exec-000000000000/cancel"), 404, "not_found");
  auto history = require_json(c.get(sb(id) + "/history?limit=1"), 200)->getArray("entries")->getObject(0);
  CHECK(str(history, "id") == hid);
  CHECK_THAT(str(history, "error"), Catch::StartsWith("[berth] cancelled"));
}

TEST_CASE("async: an execution survives its client, keeps the sandbox from idling, and is failed by a restart") {
  BerthdProcess berthd(BerthdConfig{"", "", "[cleanup]\nenabled = false\n"});
  HttpClient c(berthd.port());
  auto id = create_id(c);
  auto v = require_json(c.post(sb(id) + "/shell/exec", R"J({"command":"sleep 1; echo survived","async":true})J"), 202);
  // The client that started it is gone (this request's connection closed); it runs on.
  auto done = wait_status(c, id, str(v, "id"), "succeeded");
  CHECK(str(done->getObject("result"), "output") == "survived\n");

  auto long_one =
      require_json(c.post(sb(id) + "/shell/exec", R"J({"command":"hang","timeout":300,"async":true})J"), 202);
  const std::string eid = str(long_one, "id");
  auto gc = require_json(c.post("/v1/admin/gc/run"), 200);
  CHECK(gc->getArray("idle_stopped")->size() == 0);
  berthd.kill9();
  berthd.start();
  auto after = require_json(c.get(sb(id) + "/executions/" + eid), 200);
  CHECK(str(after, "status") == "failed");
  CHECK_THAT(str(after, "reason"), Catch::Contains("restarted"));
  CHECK(after->getValue<bool>("async"));
  auto events = get_events(berthd.port(), "/v1/sandboxes/" + id + "/executions/" + eid + "/events");
  REQUIRE(events.events.size() == 1);
  CHECK(events.events[0].event == "error");
}

TEST_CASE("async: one owner cannot take every async slot of a berthd") {
  BerthdProcess berthd(BerthdConfig{"max_async_per_owner = 2\n", "",
                                    "[auth]\nallow_anonymous = false\n[auth.keys]\n"
                                    "\"alice-key-0123456789\" = \"alice\"\n\"bob-key-0123456789\" = \"bob\"\n"
                                    "[limits]\nmax_sandboxes_per_owner = 0\ncreate_rate_per_minute = 0\n"});
  HttpClient alice(berthd.port(), "alice-key-0123456789");
  HttpClient bob(berthd.port(), "bob-key-0123456789");
  const std::string sleep = R"J({"command":"sleep 3","async":true})J";
  for (int i = 0; i < 2; ++i) {
    const auto id = create_id(alice);
    require_json(alice.post(sb(id) + "/shell/exec", sleep), 202);
  }
  const auto third = create_id(alice);
  auto refused = require_error(alice.post(sb(third) + "/shell/exec", sleep), 429, "rate_limited");
  CHECK(refused->getObject("details")->getValue<std::string>("reason") == "async_executions_per_owner");
  CHECK(retry_after(alice.post(sb(third) + "/shell/exec", sleep)) == 5);
  // Another tenant is not affected, and a synchronous exec of the same owner still runs.
  const auto bobs = create_id(bob);
  require_json(bob.post(sb(bobs) + "/shell/exec", sleep), 202);
  CHECK(require_json(alice.post(sb(third) + "/shell/exec", R"J({"command":"echo sync"})J"), 200)
            ->getValue<std::string>("output") == "sync\n");
}

TEST_CASE("async: cells of one context run in the order they were started, behind a busy one") {
  auto c = shared_client();
  auto id = create_id(c);
  REQUIRE(data_text(run_cell(c, id, "x = 0\nx")) == "0");
  // The first holds the context; the others queue behind it, each taking its place when its 202 is answered.
  std::vector<std::string> ids;
  ids.push_back(str(
      require_json(c.post(sb(id) + "/python/exec", R"J({"code":"time.sleep(1)\nx = 1","async":true})J"), 202), "id"));
  for (int i = 2; i <= 7; ++i) {
    const std::string body = R"J({"code":"x = x * 10 + )J" + std::to_string(i) + R"J(","async":true})J";
    ids.push_back(str(require_json(c.post(sb(id) + "/python/exec", body), 202), "id"));
  }
  for (const auto& e : ids)
    CHECK(str(wait_status(c, id, e, "succeeded"), "status") == "succeeded");
  CHECK(data_text(run_cell(c, id, "x")) == "1234567");
}

TEST_CASE("async: a cancel reaches an execution still waiting for its context, and a result beats a late cancel") {
  auto c = shared_client();
  auto id = create_id(c);
  auto busy = require_json(c.post(sb(id) + "/python/exec", R"J({"code":"time.sleep(2)\nx = 1","async":true})J"), 202);
  auto waiting = require_json(c.post(sb(id) + "/python/exec", R"J({"code":"y = 2","async":true})J"), 202);
  auto cancelled = require_json(c.post(sb(id) + "/executions/" + str(waiting, "id") + "/cancel"), 200);
  CHECK(str(cancelled, "status") == "cancelled");  // it never ran: the context was busy
  auto first = wait_status(c, id, str(busy, "id"), "succeeded");
  CHECK(str(first, "status") == "succeeded");  // the first one was not touched
  auto y = run_cell(c, id, "y");
  CHECK(str(y->getObject("exception"), "name") == "NameError");  // the cancelled cell did not run
  CHECK(data_text(run_cell(c, id, "x")) == "1");
  // History: the cancelled one says so, without a session.
  auto h = require_json(c.get(sb(id) + "/executions/" + str(waiting, "id")), 200);
  CHECK(str(h, "status") == "cancelled");
}
