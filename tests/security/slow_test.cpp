// Issue 8, finding 3 (HTTP side): slow clients must not hold workers. Fifty clients trickling a request head, a body
// sent a byte at a time, a download read 4 KiB at a time, and one client opening more connections than its cap:
// each is cut within a generous bound while another client's requests and /health keep being answered.
#include <catch2/catch.hpp>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "security/harness.hpp"
#include "security/raw_http.hpp"

using namespace berth::test;
using namespace berth::test::security;

namespace {

/** GET /health on a fresh connection; the status (0 when no answer came within the 60 s bound). */
int health(std::uint16_t port) {
  RawConn c(port);
  if (!c.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n")) return 0;
  auto r = c.read_response();
  return r ? r->status : 0;
}

}  // namespace

TEST_CASE("fifty clients trickling request heads do not starve /health at threads = 16", "[slow]") {
  Env env({.server = "threads = 16\nwork_slots = 4\nwork_queue = 4\nheader_timeout = \"5s\"\n"});
  auto port = env.port();
  constexpr int kSlow = 50;
  const std::string head = "POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\n";  // never completed
  std::atomic<int> cut{0}, answered_408{0};
  std::vector<std::thread> slow;
  for (int i = 0; i < kSlow; ++i) {
    slow.emplace_back([&] {
      RawConn c(port);
      // One byte a second, a fixed number of bytes (more than header_timeout allows), then wait for the verdict.
      for (std::size_t b = 0; b < 12 && b < head.size(); ++b) {
        if (!c.send(std::string(1, head[b]))) break;
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
      auto r = c.read_response();
      if (r && r->status == 408 && !r->error_code().empty()) ++answered_408;
      if (c.closed_by_server()) ++cut;
    });
  }
  std::this_thread::sleep_for(std::chrono::seconds(2));  // all fifty connected and trickling
  int ok = 0;
  for (int i = 0; i < 10; ++i) {
    if (health(port) == 200) ++ok;
    CHECK(env.bob().get("/v1/sandboxes").status == 200);
  }
  for (auto& t : slow)
    t.join();
  CHECK(ok == 10);
  CHECK(answered_408 == kSlow);
  CHECK(cut == kSlow);
  CHECK(env.berthd().count_log_lines("http.header_timeout") >= kSlow);
}

TEST_CASE("a request body sent a byte at a time is cut while others are served", "[slow]") {
  Env env({.server = "min_transfer_rate = 512\ntransfer_rate_window = \"2s\"\n"});
  auto port = env.port();
  RawConn c(port);
  REQUIRE(c.send("POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + kAliceKey +
                 "\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"));
  // A fixed 12 bytes, one a second (window 2 s, 512 B/s needed): cut after a few seconds. Meanwhile /health works.
  for (int i = 0; i < 12; ++i) {
    c.send("{");
    CHECK(health(port) == 200);
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  auto r = c.read_response();
  CHECK((!r || r->status >= 400));  // never a created sandbox
  CHECK(c.closed_by_server());
  CHECK(env.berthd().count_log_lines("http.slow_client") >= 1);
  CHECK(env.bob().get("/v1/sandboxes").status == 200);
}

TEST_CASE("a download read 4 KiB at a time is cut by the minimum send rate", "[slow]") {
  Env env({.server = "min_transfer_rate = 65536\ntransfer_rate_window = \"2s\"\n"});
  auto port = env.port();
  auto id = env.create(env.alice());
  constexpr std::size_t kSize = 32u << 20;
  auto [type, body] = multipart({{"path", "big.bin", ""}, {"file", std::string(kSize, 'x'), "big.bin"}});
  auto up = env.alice().request("POST", sandbox_path(id) + "/filesystem/upload", body, type);
  INFO(up.body);
  REQUIRE(up.status == 200);

  RawConn c(port, std::chrono::seconds(60), 16384);
  REQUIRE(c.send("GET " + sandbox_path(id) + "/filesystem/download?path=big.bin HTTP/1.1\r\nHost: x\r\n" +
                 "Authorization: Bearer " + kAliceKey + "\r\n\r\n"));
  std::size_t got = 0;
  bool ended = false;
  for (int i = 0; i < 30 && !ended; ++i) {  // 4 KiB every 2 s, 30 times at most
    auto n = c.read_some(4096);
    ended = n == 0;
    got += n;
    std::this_thread::sleep_for(std::chrono::seconds(2));
  }
  // Once cut, what the kernel still holds drains quickly and the stream ends short of the file.
  for (int i = 0; i < 100000 && !ended; ++i) {
    auto n = c.read_some(65536);
    ended = n == 0;
    got += n;
  }
  CHECK(ended);
  CHECK(got < kSize);
  CHECK(env.berthd().count_log_lines("http.slow_client") >= 1);
  CHECK(health(port) == 200);
  CHECK(env.alice().get(sandbox_path(id)).status == 200);
}

TEST_CASE("connections beyond the per-client cap get 429 and are closed", "[slow]") {
  Env env({.server = "max_connections_per_client = 8\nheader_timeout = \"60s\"\nkeep_alive_timeout = \"60s\"\n"});
  auto port = env.port();
  std::vector<std::unique_ptr<RawConn>> held;
  // Each held connection is answered once (and kept alive): berthd has accepted and counted all eight before the
  // first extra one connects, however loaded the machine is.
  for (int i = 0; i < 8; ++i) {
    held.push_back(std::make_unique<RawConn>(port));
    REQUIRE(held.back()->send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"));
    auto answered = held.back()->read_response();
    REQUIRE(answered);
    REQUIRE(answered->status == 200);
  }
  // Fixed attempts: each excess connection is answered 429 with the envelope and closed.
  for (int i = 0; i < 3; ++i) {
    RawConn extra(port);
    extra.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    auto r = extra.read_response();
    REQUIRE(r);
    CHECK(r->status_line == "HTTP/1.1 429 Too Many Requests");
    CHECK(r->error_reason() == "too_many_connections");
    CHECK(extra.closed_by_server());
  }
  // A held connection still works, and closing some makes room again.
  REQUIRE(held[0]->send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto r = held[0]->read_response();
  REQUIRE(r);
  CHECK(r->status == 200);
  // Closing one held connection (Connection: close, answered, EOF) makes room at once.
  REQUIRE(held[1]->send("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  REQUIRE(held[1]->read_response());
  CHECK(held[1]->closed_by_server());
  CHECK(health(port) == 200);
}
