// GET /v1/sandboxes/{id}/terminal through the real berthd on the fake driver, with a real WebSocket client
// (ws_client.hpp): the handshake's refusals, typing and reading, resizing, control-message mistakes, the shell's
// exit, a client that vanishes, the sandbox's session ending, idle cleanup, the slow-client watchdog and shutdown.
// The fake's `sh` on a PTY is an interactive shell ("$ " prompt, one line at a time, `stty size`, `exit N`).
#include <catch2/catch.hpp>

#include <Poco/JSON/Object.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/StreamCopier.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include "api/berthd_process.hpp"
#include "api/ws_client.hpp"

using namespace berth::test;
using namespace std::chrono_literals;
using Poco::JSON::Object;

namespace {

/** Waits until berthd holds no terminal open (a closed one frees its slot once its handler has finished). */
bool no_terminals_open(const HttpClient& c) {
  for (int i = 0; i < 200; ++i) {
    if (c.get("/metrics").body.find("\nberth_terminals_open 0\n") != std::string::npos) return true;
    std::this_thread::sleep_for(50ms);
  }
  return false;
}

BerthdProcess& terminal_berthd() {
  // A short transfer-rate window: an idle terminal would be cut within seconds if the watchdog judged it.
  static BerthdProcess process(
      BerthdConfig{"max_terminals_per_sandbox = 2\nmin_transfer_rate = 1024\n"
                   "transfer_rate_window = \"1s\"\n",
                   "",
                   "[limits]\nmax_sandboxes_per_owner = 0\ncreate_rate_per_minute = 0\n"
                   "[profiles.default]\n"
                   "[profiles.noshell]\ncapabilities = [\"python\"]\n"
                   "[profiles.brief]\nidle_timeout = \"1s\"\n"});
  // Every case starts with no terminal open: the slots of the last case's terminals are free again.
  REQUIRE(no_terminals_open(HttpClient(process.port())));
  return process;
}

const std::string kHandshake = "dGhlIHNhbXBsZSBub25jZQ==";  // RFC 6455's sample key

std::string create(const HttpClient& c, const std::string& body = "{}") {
  auto r = c.post("/v1/sandboxes", body);
  REQUIRE(r.status == 201);
  return r.json()->getValue<std::string>("id");
}

std::string terminal_uri(const std::string& id, const std::string& query = "") {
  return "/v1/sandboxes/" + id + "/terminal" + query;
}

Headers upgrade_headers(const std::string& version = "13") {
  return {{"Connection", "Upgrade"},
          {"Upgrade", "websocket"},
          {"Sec-WebSocket-Version", version},
          {"Sec-WebSocket-Key", kHandshake}};
}

/**
 * GET `uri` with `headers` on a keep-alive session: HttpClient's sessions say Connection: close, which would replace
 * the handshake's Connection: Upgrade. For the refusals, which answer before any upgrade.
 */
HttpResponse handshake(std::uint16_t port, const std::string& uri, const Headers& headers,
                       const std::string& token = "", const std::string& body = "") {
  Poco::Net::HTTPClientSession session("127.0.0.1", port);
  session.setKeepAlive(true);
  session.setTimeout(Poco::Timespan(30, 0));
  Poco::Net::HTTPRequest rq(Poco::Net::HTTPRequest::HTTP_GET, uri, Poco::Net::HTTPMessage::HTTP_1_1);
  if (!token.empty()) rq.set("Authorization", "Bearer " + token);
  for (const auto& [k, v] : headers)
    rq.set(k, v);
  session.sendRequest(rq) << body;
  Poco::Net::HTTPResponse rs;
  auto& in = session.receiveResponse(rs);
  HttpResponse r;
  r.status = static_cast<int>(rs.getStatus());
  Poco::StreamCopier::copyToString(in, r.body);
  r.headers = rs;
  return r;
}

void require_error(const HttpResponse& r, int status, const std::string& code, const std::string& reason = "") {
  INFO(r.status << " " << r.body);
  REQUIRE(r.status == status);
  auto err = r.json()->getObject("error");
  CHECK(err->getValue<std::string>("code") == code);
  if (!reason.empty()) CHECK(err->getObject("details")->getValue<std::string>("reason") == reason);
}

/** Whether one cleanup pass (POST /v1/admin/gc/run) stopped sandbox `id` for idleness. */
bool gc_stopped(const HttpClient& c, const std::string& id) {
  auto r = c.post("/v1/admin/gc/run");
  REQUIRE(r.status == 200);
  const auto body = r.json();
  const auto stopped = body->getArray("idle_stopped");
  for (const auto& v : *stopped)
    if (v.toString() == id) return true;
  return false;
}

std::string status_of(const HttpClient& c, const std::string& id) {
  return c.get("/v1/sandboxes/" + id).json()->getValue<std::string>("status");
}

}  // namespace

TEST_CASE("terminal: types echo hi and reads hi back, resizes, and closes cleanly", "[terminal]") {
  auto& berthd = terminal_berthd();
  HttpClient c(berthd.port());
  const auto id = create(c);
  TerminalClient t(berthd.port(), terminal_uri(id));
  REQUIRE(t.read_until([&] { return t.control("ready") != nullptr; }, 10s));
  auto ready = t.control("ready");
  CHECK(ready->getValue<std::string>("sandbox_id") == id);
  CHECK(ready->getValue<std::string>("shell") == "/bin/bash");
  CHECK(ready->getValue<int>("rows") == 24);
  CHECK(ready->getValue<int>("cols") == 80);
  // The terminal started the sandbox's session; the ready message names it.
  auto sandbox = c.get("/v1/sandboxes/" + id).json();
  CHECK(sandbox->getValue<std::string>("status") == "ready");
  CHECK(ready->getValue<std::string>("session_id") == sandbox->getValue<std::string>("session_id"));

  REQUIRE(t.read_output("$ ", 10s));
  CHECK(c.get("/metrics").body.find("\nberth_terminals_open 1\n") != std::string::npos);
  t.type("echo hi\r");  // Enter is a carriage return, as a terminal sends it
  // The echo of what was typed, then the command's own line.
  REQUIRE(t.read_output("echo hi\r\nhi\r\n", 10s));

  t.type("stty size\r");
  REQUIRE(t.read_output("24 80\r\n", 10s));
  t.resize(40, 100);
  const auto mark = t.output.size();
  t.type("stty size\r");
  REQUIRE(t.read_output("40 100\r\n", 10s, mark));

  t.close();
  REQUIRE(t.read_close(10s));
  CHECK(t.close_code == 1000);
  CHECK(t.control("error") == nullptr);
  // The shell was ended with the connection (core's terminal.close) and the connection logged how it ended.
  REQUIRE(berthd.wait_for_log("terminal.close sandbox=" + id, 10s));
  REQUIRE(berthd.wait_for_log("terminal.closed request_id=" + ready->getValue<std::string>("request_id"), 10s));
  CHECK(no_terminals_open(c));
}

TEST_CASE("terminal: the size and TERM come from the query", "[terminal]") {
  auto& berthd = terminal_berthd();
  HttpClient c(berthd.port());
  const auto id = create(c);
  TerminalClient t(berthd.port(), terminal_uri(id, "?rows=50&cols=132&term=vt100"));
  REQUIRE(t.read_output("$ ", 10s));
  CHECK(t.control("ready")->getValue<int>("rows") == 50);
  t.type("stty size\r");
  REQUIRE(t.read_output("50 132\r\n", 10s));
  t.type("echo $TERM\r");
  REQUIRE(t.read_output("vt100\r\n", 10s));
  t.close();
  CHECK(t.read_close(10s));
}

TEST_CASE("terminal: the shell's exit sends an exit message, then a normal close", "[terminal]") {
  auto& berthd = terminal_berthd();
  HttpClient c(berthd.port());
  const auto id = create(c);
  TerminalClient t(berthd.port(), terminal_uri(id));
  REQUIRE(t.read_output("$ ", 10s));
  t.type("exit 3\r");
  REQUIRE(t.read_close(10s));
  auto exit = t.control("exit");
  REQUIRE(exit);
  CHECK(exit->getValue<int>("exit_code") == 3);
  CHECK(exit->getValue<std::string>("reason") == "exited");
  CHECK(t.close_code == 1000);
  CHECK(t.close_reason == "the shell exited");
}

TEST_CASE("terminal: control-message mistakes are answered and the terminal stays usable", "[terminal]") {
  auto& berthd = terminal_berthd();
  HttpClient c(berthd.port());
  const auto id = create(c);
  TerminalClient t(berthd.port(), terminal_uri(id));
  REQUIRE(t.read_output("$ ", 10s));
  auto errors = [&] {
    std::vector<std::string> codes;
    for (const auto& m : t.controls)
      if (m->getValue<std::string>("type") == "error") codes.push_back(m->getValue<std::string>("code"));
    return codes;
  };
  t.send_text("echo hi");  // keystrokes in a text frame: not JSON
  REQUIRE(t.read_until([&] { return errors().size() == 1; }, 10s));
  t.send_text(R"({"type":"launch"})");
  REQUIRE(t.read_until([&] { return errors().size() == 2; }, 10s));
  t.send_text(R"({"type":"resize","rows":0,"cols":80})");
  REQUIRE(t.read_until([&] { return errors().size() == 3; }, 10s));
  t.send_text(R"({"type":"resize","rows":"40","cols":80})");
  REQUIRE(t.read_until([&] { return errors().size() == 4; }, 10s));
  t.send_text(R"([1,2])");
  REQUIRE(t.read_until([&] { return errors().size() == 5; }, 10s));
  // Numbers JSON can spell but no terminal has (once a crash of berthd: an unsigned 64-bit value), and a boolean.
  t.send_text(R"({"type":"resize","rows":9223372036854775808,"cols":80})");
  REQUIRE(t.read_until([&] { return errors().size() == 6; }, 10s));
  t.send_text(R"({"type":"resize","rows":-9223372036854775808,"cols":1e400})");
  REQUIRE(t.read_until([&] { return errors().size() == 7; }, 10s));
  t.send_text(R"({"type":"resize","rows":true,"cols":80})");
  REQUIRE(t.read_until([&] { return errors().size() == 8; }, 10s));
  CHECK(errors() == std::vector<std::string>{"invalid_request", "validation_error", "validation_error",
                                             "validation_error", "invalid_request", "validation_error",
                                             "invalid_request", "validation_error"});  // 1e400: Poco refuses it
  t.type("stty size\r");  // the size did not change, and the shell still answers
  REQUIRE(t.read_output("24 80\r\n", 10s));
  t.close();
  CHECK(t.read_close(10s));
}

TEST_CASE("terminal: frames RFC 6455 forbids close the connection with the right code", "[terminal]") {
  auto& berthd = terminal_berthd();
  HttpClient c(berthd.port());
  const auto id = create(c);
  // Each case opens a terminal of its own on one sandbox (2 slots here). A slot is freed once the server's handler has
  // finished, after its close frame: the next case waits for that, else its handshake could meet a full sandbox (409).
  auto closes_with = [&](const std::function<void(TerminalClient&)>& send) {
    int code = 0;
    {
      TerminalClient t(berthd.port(), terminal_uri(id));
      REQUIRE(t.read_output("$ ", 10s));
      send(t);
      REQUIRE(t.read_close(10s));
      code = t.close_code;
    }
    REQUIRE(no_terminals_open(c));
    return code;
  };
  // A ping over 125 bytes; a text message that is not UTF-8; a close frame with a code no one may send (1005);
  // a frame with RSV1 set although no extension was agreed.
  CHECK(closes_with([](TerminalClient& t) { t.send_frame(std::string(200, 'p'), 0x89); }) == 1002);
  CHECK(closes_with([](TerminalClient& t) { t.send_text("{\"type\":\"resize\",\"x\":\"\xff\"}"); }) == 1007);
  CHECK(closes_with([](TerminalClient& t) { t.send_frame(std::string("\x03\xed", 2), 0x88); }) == 1002);
  CHECK(closes_with([](TerminalClient& t) { t.send_frame("x", 0xc2); }) == 1002);
  // A well-formed ping is answered with its payload, and the terminal goes on.
  TerminalClient t(berthd.port(), terminal_uri(id));
  REQUIRE(t.read_output("$ ", 10s));
  t.send_frame("are-you-there", 0x89);
  REQUIRE(t.read_until([&] { return t.pong == "are-you-there"; }, 10s));
  t.close();
  CHECK(t.read_close(10s));
  CHECK(t.close_code == 1000);
}

TEST_CASE("terminal: refusals before the upgrade are ordinary error envelopes", "[terminal]") {
  auto& berthd = terminal_berthd();
  HttpClient c(berthd.port());
  const auto id = create(c);

  auto plain = c.get(terminal_uri(id));
  require_error(plain, 400, "invalid_request", "websocket_upgrade_required");
  CHECK(plain.header("Upgrade") == "websocket");
  auto old = handshake(berthd.port(), terminal_uri(id), upgrade_headers("8"));
  require_error(old, 400, "invalid_request", "unsupported_websocket_version");
  CHECK(old.header("Sec-WebSocket-Version") == "13");
  auto no_key = upgrade_headers();
  no_key.pop_back();
  require_error(handshake(berthd.port(), terminal_uri(id), no_key), 400, "invalid_request", "missing_websocket_key");

  require_error(handshake(berthd.port(), terminal_uri("sandbox-000000000000"), upgrade_headers()), 404, "not_found");
  require_error(handshake(berthd.port(), terminal_uri(id, "?rows=0"), upgrade_headers()), 400, "validation_error");
  require_error(handshake(berthd.port(), terminal_uri(id, "?cols=1001"), upgrade_headers()), 400, "validation_error");
  require_error(handshake(berthd.port(), terminal_uri(id, "?term=xterm%3Brm"), upgrade_headers()), 400,
                "validation_error");
  auto with_body = upgrade_headers();
  with_body.emplace_back("Content-Length", "2");
  require_error(handshake(berthd.port(), terminal_uri(id), with_body, "", "{}"), 400, "invalid_request",
                "body_not_allowed");
  // A page of another origin may not open a shell with the user's access; berthd's own origin may.
  auto foreign = upgrade_headers();
  foreign.emplace_back("Origin", "http://evil.example");
  require_error(handshake(berthd.port(), terminal_uri(id), foreign), 400, "invalid_request", "origin_not_allowed");
  const auto noshell = create(c, R"({"profile":"noshell"})");
  require_error(handshake(berthd.port(), terminal_uri(noshell), upgrade_headers()), 400, "capability_not_supported");
  CHECK(status_of(c, noshell) == "idle");  // a refused terminal started nothing
  CHECK(status_of(c, id) == "idle");
  {
    TerminalClient same(berthd.port(), terminal_uri(id), "", "http://127.0.0.1:" + std::to_string(berthd.port()));
    CHECK(same.read_output("$ ", 10s));
    same.close();
    CHECK(same.read_close(10s));
  }
  REQUIRE(no_terminals_open(c));

  // At most 2 terminals per sandbox here; closing one frees its slot.
  TerminalClient one(berthd.port(), terminal_uri(id));
  TerminalClient two(berthd.port(), terminal_uri(id));
  REQUIRE(one.read_output("$ ", 10s));
  REQUIRE(two.read_output("$ ", 10s));
  require_error(handshake(berthd.port(), terminal_uri(id), upgrade_headers()), 409, "conflict");
  one.close();
  REQUIRE(one.read_close(10s));
  bool reopened = false;
  for (int i = 0; i < 100 && !reopened; ++i) {  // the slot is freed once the server's handler has finished
    try {
      TerminalClient three(berthd.port(), terminal_uri(id));
      reopened = three.read_output("$ ", 10s);
    } catch (const Poco::Exception&) {
      std::this_thread::sleep_for(50ms);
    }
  }
  CHECK(reopened);
  two.close();
  CHECK(two.read_close(10s));
}

TEST_CASE("terminal: authentication is the same as for every /v1 route, and a tenant has its own cap",
          "[terminal][auth]") {
  BerthdProcess berthd(BerthdConfig{"max_terminals_per_owner = 2\n", "",
                                    "[auth]\nallow_anonymous = false\n[auth.keys]\n"
                                    "\"alice-key-0123456789\" = \"alice\"\n\"bob-key-0123456789\" = \"bob\"\n"});
  const std::string alice_key = "alice-key-0123456789", bob_key = "bob-key-0123456789";
  HttpClient alice(berthd.port(), alice_key);
  const auto id = create(alice);
  require_error(handshake(berthd.port(), terminal_uri(id), upgrade_headers()), 401, "unauthorized");
  require_error(handshake(berthd.port(), terminal_uri(id), upgrade_headers(), bob_key), 404, "not_found");
  CHECK_THROWS_AS(TerminalClient(berthd.port(), terminal_uri(id)), Poco::Net::WebSocketException);
  TerminalClient t(berthd.port(), terminal_uri(id), alice_key);
  REQUIRE(t.read_output("$ ", 10s));
  // Two terminals per tenant here, over all of its sandboxes; another tenant is not affected.
  const auto other = create(alice);
  TerminalClient t2(berthd.port(), terminal_uri(other), alice_key);
  REQUIRE(t2.read_output("$ ", 10s));
  auto over = handshake(berthd.port(), terminal_uri(other), upgrade_headers(), alice_key);
  require_error(over, 429, "rate_limited", "terminals_per_owner");
  CHECK(over.header("Retry-After") == "5");
  HttpClient bob(berthd.port(), bob_key);
  TerminalClient bobs(berthd.port(), terminal_uri(create(bob)), bob_key);
  CHECK(bobs.read_output("$ ", 10s));
  for (auto* c : {&t, &t2, &bobs}) {
    c->close();
    CHECK(c->read_close(10s));
  }
}

TEST_CASE("terminal: a client that vanishes without a close frame ends the shell and frees the slot", "[terminal]") {
  auto& berthd = terminal_berthd();
  HttpClient c(berthd.port());
  const auto id = create(c);
  {
    TerminalClient a(berthd.port(), terminal_uri(id));
    TerminalClient b(berthd.port(), terminal_uri(id));
    REQUIRE(a.read_output("$ ", 10s));
    REQUIRE(b.read_output("$ ", 10s));
    a.drop();
    b.drop();
  }
  auto both_closed = [&] { return berthd.count_log_lines("terminal.close sandbox=" + id) == 2; };
  for (int i = 0; i < 200 && !both_closed(); ++i)
    std::this_thread::sleep_for(50ms);
  CHECK(both_closed());
  TerminalClient again(berthd.port(), terminal_uri(id));  // both slots are free again
  TerminalClient again2(berthd.port(), terminal_uri(id));
  CHECK(again.read_output("$ ", 10s));
  CHECK(again2.read_output("$ ", 10s));
  again.close();
  again2.close();
  CHECK(again.read_close(10s));
  CHECK(again2.read_close(10s));
}

TEST_CASE("terminal: stopping the sandbox ends the terminal with session_ended", "[terminal]") {
  auto& berthd = terminal_berthd();
  HttpClient c(berthd.port());
  const auto id = create(c);
  TerminalClient t(berthd.port(), terminal_uri(id));
  REQUIRE(t.read_output("$ ", 10s));
  REQUIRE(c.post("/v1/sandboxes/" + id + "/stop").status == 200);
  REQUIRE(t.read_close(10s));
  auto exit = t.control("exit");
  REQUIRE(exit);
  CHECK(exit->getValue<std::string>("reason") == "session_ended");
  CHECK(t.close_code == 1000);
}

TEST_CASE("terminal: an open terminal keeps its sandbox from idling out and is not cut as a slow client",
          "[terminal][cleanup]") {
  auto& berthd = terminal_berthd();
  HttpClient c(berthd.port());
  const auto id = create(c, R"({"profile":"brief"})");  // idle_timeout 1 s
  TerminalClient t(berthd.port(), terminal_uri(id));
  REQUIRE(t.read_output("$ ", 10s));
  // Three times the idle timeout and the transfer-rate window without a keystroke, with cleanup passes meanwhile.
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(1100ms);
    CHECK_FALSE(gc_stopped(c, id));
  }
  CHECK(status_of(c, id) == "ready");
  const auto mark = t.output.size();
  t.type("echo still-here\r");
  REQUIRE(t.read_output("still-here\r\n", 10s, mark));
  CHECK_FALSE(t.closed);
  t.close();
  REQUIRE(t.read_close(10s));
  // Closed, the sandbox idles out like any other.
  std::this_thread::sleep_for(1500ms);
  bool stopped = false;
  for (int i = 0; i < 50 && !stopped; ++i) {
    stopped = gc_stopped(c, id) || status_of(c, id) == "idle";
    if (!stopped) std::this_thread::sleep_for(200ms);
  }
  CHECK(stopped);
}

TEST_CASE("terminal: berthd's shutdown closes open terminals with 1001 and exits cleanly", "[terminal][shutdown]") {
  BerthdProcess berthd(BerthdConfig{"shutdown_grace = \"30s\"\n"});
  HttpClient c(berthd.port());
  const auto id = create(c);
  TerminalClient t(berthd.port(), terminal_uri(id));
  REQUIRE(t.read_output("$ ", 10s));
  const auto t0 = std::chrono::steady_clock::now();
  std::thread stopper([&] { CHECK(berthd.stop(std::chrono::seconds(25)) == 0); });
  // Well before the 30 s grace runs out: an open terminal does not hold the shutdown. The shell's exit comes first.
  const bool closed = t.read_close(10s);
  stopper.join();
  REQUIRE(closed);
  CHECK(t.close_code == 1001);
  REQUIRE(t.control("exit"));
  CHECK(t.control("exit")->getValue<std::string>("reason") == "closed");
  CHECK(std::chrono::steady_clock::now() - t0 < 10s);
}
