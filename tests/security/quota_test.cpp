// Finding 5 (issue 8): one owner can neither hold nor create sandboxes without bound (429 quota_exceeded /
// rate_limited with Retry-After, per owner), and a sandbox cannot fill the host's disk through /tmp.
#include <catch2/catch.hpp>

#include <chrono>

#include <latch>
#include <string>
#include <thread>
#include <vector>

#include "security/harness.hpp"

using namespace berth::test;
using namespace berth::test::security;

namespace {

/** REQUIREs a 429 with `code` and a Retry-After of at least one second. */
void require_429(const HttpResponse& r, const std::string& code) {
  INFO(r.body);
  REQUIRE(r.status == 429);
  CHECK(r.json()->getObject("error")->getValue<std::string>("code") == code);
  REQUIRE(r.has_header("Retry-After"));
  CHECK(std::stoi(r.header("Retry-After")) >= 1);
}

}  // namespace

TEST_CASE("one owner creating 100 sandboxes at once is rate limited, another owner is not", "[quota]") {
  // One token a minute after a burst of 5: at most one more per started minute the 100 creates take.
  Env env(Options{.extra = "[limits]\ncreate_rate_per_minute = 1\ncreate_burst = 5\n"});
  auto alice = env.alice();
  auto t0 = std::chrono::steady_clock::now();
  int created = 0;
  int limited = 0;
  for (int i = 0; i < 100; ++i) {
    auto r = alice.post("/v1/sandboxes", "{}");
    if (r.status == 201) {
      ++created;
    } else {
      require_429(r, "rate_limited");
      ++limited;
    }
  }
  auto minutes = std::chrono::duration_cast<std::chrono::minutes>(std::chrono::steady_clock::now() - t0).count();
  CHECK(created >= 5);
  CHECK(created <= 6 + minutes);
  CHECK(limited == 100 - created);
  // Per owner: bob still has his whole burst.
  env.create(env.bob());
  // A refused create stored nothing.
  auto list = alice.get("/v1/sandboxes?limit=500");
  REQUIRE(list.status == 200);
  CHECK(static_cast<int>(list.json()->getArray("items")->size()) == created);
}

TEST_CASE("an owner holds at most max_sandboxes_per_owner live sandboxes, also when creating in parallel", "[quota]") {
  Env env(Options{.extra = "[limits]\nmax_sandboxes_per_owner = 3\ncreate_rate_per_minute = 0\n"});
  auto alice = env.alice();
  // Ten parallel creates, released together: exactly three get through.
  constexpr int kParallel = 10;
  std::vector<HttpResponse> results(kParallel);
  {
    std::latch go(kParallel);
    std::vector<std::thread> threads;
    for (int i = 0; i < kParallel; ++i) {
      threads.emplace_back([&, i] {
        go.arrive_and_wait();
        results[static_cast<std::size_t>(i)] =
            alice.post("/v1/sandboxes", R"J({"labels":{"n":")J" + std::to_string(i) + R"J("}})J");
      });
    }
    for (auto& t : threads)
      t.join();
  }
  std::vector<std::string> ids;
  for (const auto& r : results) {
    if (r.status == 201) {
      ids.push_back(r.json()->getValue<std::string>("id"));
    } else {
      require_429(r, "quota_exceeded");
    }
  }
  REQUIRE(ids.size() == 3);
  require_429(alice.post("/v1/sandboxes", "{}"), "quota_exceeded");
  // Another owner has a quota of its own.
  env.create(env.bob());
  // Deleting one frees its place.
  REQUIRE(alice.del(sandbox_path(ids[0])).status == 204);
  auto again = env.create(alice, R"J({"key":"reuse-me"})J");
  require_429(alice.post("/v1/sandboxes", "{}"), "quota_exceeded");
  // Get-or-create by key returns the existing sandbox: no new sandbox, so no quota.
  auto reused = alice.post("/v1/sandboxes", R"J({"key":"reuse-me"})J");
  INFO(reused.body);
  REQUIRE(reused.status == 200);
  CHECK(reused.json()->getValue<std::string>("id") == again);
}

TEST_CASE("a sandbox cannot write more into /tmp than its tmpfs holds", "[quota]") {
  Env env(Options{.engine_settings = "tmp_size_mb = 32\n"});
  if (!env.real_engine()) {
    SUCCEED("the fake driver has no container filesystem");
    return;
  }
  auto alice = env.alice();
  auto id = env.create(alice);
  // 64 MiB into a 32 MiB /tmp: the write fails with ENOSPC and at most 32 MiB land.
  auto out = shell(alice, id,
                   "head -c 67108864 /dev/zero > /tmp/big; echo rc=$?; wc -c < /tmp/big; "
                   "df -P -k /tmp | tail -n 1",
                   120);
  auto text = out->getValue<std::string>("output") + out->getValue<std::string>("error");
  INFO(text);
  CHECK(text.find("rc=0") == std::string::npos);
  CHECK(text.find("No space left") != std::string::npos);
  auto wc_at = text.find('\n', text.find("rc="));
  REQUIRE(wc_at != std::string::npos);
  auto bytes = std::stoll(text.substr(wc_at + 1));
  CHECK(bytes <= 32ll << 20);
  CHECK(text.find("tmpfs") != std::string::npos);
}
