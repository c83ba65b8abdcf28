// The lifecycle core against the real fake driver plugin and SQLite, with a fake clock and real threads.
#include <catch2/catch.hpp>

#include <atomic>
#include <cstring>
#include <set>
#include <thread>

#include "core/service_fixture.hpp"

using namespace berth;
using namespace std::chrono_literals;
using test::error_code_of;
using test::ServiceFixture;

TEST_CASE("create is lazy: rows and the workspace volume, no container") {
  ServiceFixture f;
  auto result = f.service->create_sandbox(f.owner, {});
  CHECK(result.created);
  const auto& sb = result.sandbox;
  CHECK(sb.status == core::SandboxStatus::idle);
  CHECK(core::is_valid_id(sb.row.id, "sandbox"));
  CHECK(core::is_valid_id(sb.row.workspace_id, "ws"));
  CHECK(f.driver->volume_exists("berth-ws-" + sb.row.workspace_id));
  CHECK(f.containers_of(sb.row.id) == 0);
  CHECK_FALSE(sb.row.expires_at);
  CHECK(error_code_of([&] { f.service->create_sandbox(f.owner, {.profile = "nope"}); }) ==
        core::ErrorCode::validation_error);
}

TEST_CASE("an exec on an idle sandbox starts it and exec results carry output and exit code") {
  ServiceFixture f;
  auto id = f.create({.env = {{"GREETING", "hi"}}});
  auto py = f.service->exec(f.owner, id, core::ExecKind::python, "print(1+2)", std::nullopt, "");
  CHECK(py.output == "3\n");
  CHECK(py.success);
  CHECK(py.exit_code == 0);
  CHECK(f.service->get_sandbox(f.owner, id).status == core::SandboxStatus::ready);
  f.fake_clock().advance(1ms);  // history is newest first
  auto sh = f.shell(id, "echo $GREETING; echo oops >&2; exit 3");
  CHECK(sh.output == "hi\n");
  CHECK(sh.error == "oops\n");
  CHECK(sh.exit_code == 3);
  CHECK_FALSE(sh.success);
  auto history = f.service->history(f.owner, id, "", 10, 0);
  CHECK(history.second == 2);
  CHECK(history.first.at(0).kind == "shell");
  CHECK(f.containers_of(id) == 1);
}

TEST_CASE("50 concurrent requests on one idle sandbox start exactly one session") {
  // Real time: the fake driver's latency runs on the host clock it is given.
  ServiceFixture f(R"({"latency_ms": {"session_create": 200}})", test::test_settings(),
                   std::make_shared<core::SystemClock>());
  auto id = f.create();
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  std::mutex m;
  std::set<std::string> sessions;
  for (int i = 0; i < 50; ++i) {
    threads.emplace_back([&] {
      try {
        auto r = f.service->exec(f.owner, id, core::ExecKind::python, "print(1+2)", std::nullopt, "");
        if (r.output == "3\n") ++ok;
        auto rows = f.service->history(f.owner, id, "", 1, 0).first;
        std::lock_guard lock(m);
        sessions.insert(rows.at(0).session_id);
      } catch (const std::exception& e) {
        WARN(e.what());
      }
    });
  }
  for (auto& t : threads)
    t.join();
  CHECK(ok == 50);
  CHECK(f.containers_of(id) == 1);
  CHECK(sessions.size() == 1);
}

TEST_CASE("a failed start leaves status failed with the reason and the next call retries") {
  ServiceFixture f(R"({"fail_create_nth": 1})");
  auto id = f.create();
  CHECK(error_code_of([&] { f.shell(id, "true"); }) == core::ErrorCode::internal);
  auto failed = f.service->get_sandbox(f.owner, id);
  CHECK(failed.status == core::SandboxStatus::failed);
  CHECK(failed.row.last_error.find("injected") != std::string::npos);
  CHECK_FALSE(failed.row.current_session_id);
  CHECK(f.shell(id, "echo again").output == "again\n");
  auto ready = f.service->get_sandbox(f.owner, id);
  CHECK(ready.status == core::SandboxStatus::ready);
  CHECK(ready.row.last_error.empty());
}

TEST_CASE("waiters give up with session_not_ready after the start deadline and the winner still succeeds") {
  auto settings = test::test_settings();
  settings.start_wait = 300ms;
  ServiceFixture f(R"({"latency_ms": {"session_create": 1500}})", settings, std::make_shared<core::SystemClock>());
  auto id = f.create();
  std::atomic<bool> winner_ok{false};
  std::thread winner([&] { winner_ok = f.shell(id, "echo won").output == "won\n"; });
  std::this_thread::sleep_for(100ms);
  try {
    f.shell(id, "echo lost");
    FAIL("expected session_not_ready");
  } catch (const core::Error& e) {
    CHECK(e.code() == core::ErrorCode::session_not_ready);
    CHECK(e.retry_after().has_value());
  }
  winner.join();
  CHECK(winner_ok);
  CHECK(f.containers_of(id) == 1);
}

TEST_CASE("a session whose container died is replaced on the next call") {
  ServiceFixture f;
  auto id = f.create();
  f.shell(id, "true");
  auto first = f.service->get_sandbox(f.owner, id).row.current_session_id;
  f.shell(id, "__fake crash-session");
  CHECK(f.shell(id, "echo alive").output == "alive\n");
  auto second = f.service->get_sandbox(f.owner, id).row.current_session_id;
  CHECK(first != second);
  CHECK(f.containers_of(id) == 1);
}

TEST_CASE("stop is idempotent and keeps the workspace") {
  ServiceFixture f;
  auto id = f.create();
  f.shell(id, "true");
  std::string content = "kept";
  std::size_t off = 0;
  f.service->write_file(f.owner, id, "notes/a.txt", content.size(), [&](std::uint8_t* b, std::size_t cap) {
    auto n = std::min(cap, content.size() - off);
    std::memcpy(b, content.data() + off, n);
    off += n;
    return static_cast<std::int64_t>(n);
  });
  f.service->stop(f.owner, id);
  CHECK(f.containers_of(id) == 0);
  CHECK(f.service->get_sandbox(f.owner, id).status == core::SandboxStatus::idle);
  CHECK_NOTHROW(f.service->stop(f.owner, id));
  CHECK(f.service->read_file(f.owner, id, "notes/a.txt", 1024) == "kept");  // restarts on demand
  CHECK(f.containers_of(id) == 1);
}

TEST_CASE("delete removes the session and the managed workspace, never an external one") {
  ServiceFixture f;
  auto managed = f.service->create_sandbox(f.owner, {}).sandbox.row;
  f.shell(managed.id, "true");
  f.service->delete_sandbox(f.owner, managed.id);
  CHECK(f.containers_of(managed.id) == 0);
  CHECK_FALSE(f.driver->volume_exists("berth-ws-" + managed.workspace_id));
  CHECK(error_code_of([&] { f.service->get_sandbox(f.owner, managed.id); }) == core::ErrorCode::not_found);
  CHECK(error_code_of([&] { f.shell(managed.id, "true"); }) == core::ErrorCode::not_found);
  CHECK(error_code_of([&] { f.service->delete_sandbox(f.owner, managed.id); }) == core::ErrorCode::not_found);

  auto ws = f.service->create_workspace(f.owner);
  auto external = f.create({.workspace_id = ws.id});
  CHECK(error_code_of([&] { f.service->delete_workspace(f.owner, ws.id); }) == core::ErrorCode::conflict);
  f.service->delete_sandbox(f.owner, external);
  CHECK(f.driver->volume_exists(ws.volume));
  f.service->delete_workspace(f.owner, ws.id);
  CHECK_FALSE(f.driver->volume_exists(ws.volume));
}

TEST_CASE("owners are isolated") {
  ServiceFixture f;
  auto id = f.create();
  CHECK(error_code_of([&] { f.service->get_sandbox("mallory", id); }) == core::ErrorCode::not_found);
  CHECK(error_code_of([&] { f.service->delete_sandbox("mallory", id); }) == core::ErrorCode::not_found);
  CHECK(f.service->list_sandboxes("mallory", std::nullopt, std::nullopt, 10, "").items.empty());
}

TEST_CASE("key get-or-create: reuse while live, replace once expired, canonical UUIDs") {
  ServiceFixture f;
  auto first = f.service->create_sandbox(f.owner, {.profile = "short", .key = "chat-42"});
  CHECK(first.created);
  auto again = f.service->create_sandbox(f.owner, {.profile = "short", .key = "chat-42"});
  CHECK_FALSE(again.created);
  CHECK(again.sandbox.row.id == first.sandbox.row.id);
  // Another owner has its own key space.
  CHECK(f.service->create_sandbox("bob", {.key = "chat-42"}).created);

  f.fake_clock().advance(10s);  // exactly at expires_at: expired
  auto replaced = f.service->create_sandbox(f.owner, {.profile = "short", .key = "chat-42"});
  CHECK(replaced.created);
  CHECK(replaced.sandbox.row.id != first.sandbox.row.id);
  CHECK(error_code_of([&] { f.service->get_sandbox(f.owner, first.sandbox.row.id); }) == core::ErrorCode::not_found);

  auto u1 = f.service->create_sandbox(f.owner, {.key = "{3F2504E0-4F89-11D3-9A0C-0305E82C3301}"});
  auto u2 = f.service->create_sandbox(f.owner, {.key = "urn:uuid:3f2504e04f8911d39a0c0305e82c3301"});
  CHECK_FALSE(u2.created);
  CHECK(u1.sandbox.row.id == u2.sandbox.row.id);
  CHECK(u1.sandbox.row.key == "3f2504e0-4f89-11d3-9a0c-0305e82c3301");
}

TEST_CASE("concurrent creates with one key yield one sandbox") {
  ServiceFixture f;
  std::mutex m;
  std::set<std::string> ids;
  int created = 0;
  std::vector<std::thread> threads;
  for (int i = 0; i < 20; ++i) {
    threads.emplace_back([&] {
      auto r = f.service->create_sandbox(f.owner, {.key = "shared"});
      std::lock_guard lock(m);
      ids.insert(r.sandbox.row.id);
      created += r.created ? 1 : 0;
    });
  }
  for (auto& t : threads)
    t.join();
  CHECK(ids.size() == 1);
  CHECK(created == 1);
  CHECK(f.service->list_sandboxes(f.owner, std::nullopt, std::nullopt, 100, "").items.size() == 1);
}

TEST_CASE("keepalive resets the idle timer without starting compute and extend_ttl rules") {
  ServiceFixture f;
  auto id = f.create({.profile = "short"});
  f.service->keepalive(f.owner, id);
  auto sb = f.service->get_sandbox(f.owner, id);
  CHECK(sb.status == core::SandboxStatus::idle);
  CHECK(f.containers_of(id) == 0);
  CHECK(sb.row.idle_expires_at == f.clock->now() + 60s);

  auto before = *sb.row.expires_at;
  CHECK(*f.service->extend_ttl(f.owner, id, 30s).row.expires_at == before + 30s);
  f.fake_clock().advance(41s);
  CHECK(error_code_of([&] { f.service->extend_ttl(f.owner, id, 30s); }) == core::ErrorCode::sandbox_expired);
  CHECK(error_code_of([&] { f.shell(id, "true"); }) == core::ErrorCode::sandbox_expired);

  auto forever = f.create();
  CHECK(error_code_of([&] { f.service->extend_ttl(f.owner, forever, 30s); }) == core::ErrorCode::sandbox_ttl_infinite);
}

TEST_CASE("capabilities and input validation") {
  ServiceFixture f;
  auto id = f.create({.profile = "shell-only"});
  CHECK(error_code_of([&] { f.service->exec(f.owner, id, core::ExecKind::python, "print(1)", std::nullopt, ""); }) ==
        core::ErrorCode::capability_not_supported);
  CHECK(f.shell(id, "echo ok").output == "ok\n");
  CHECK(error_code_of([&] { f.service->exec(f.owner, id, core::ExecKind::shell, "true", 0s, ""); }) ==
        core::ErrorCode::validation_error);
  CHECK(error_code_of([&] { f.service->exec(f.owner, id, core::ExecKind::shell, "true", 301s, ""); }) ==
        core::ErrorCode::validation_error);
  CHECK(error_code_of([&] { f.service->list_dir(f.owner, id, "../etc"); }) ==
        core::ErrorCode::capability_not_supported);
  auto full = f.create();
  CHECK(error_code_of([&] { f.service->list_dir(f.owner, full, "../etc"); }) == core::ErrorCode::validation_error);
  CHECK(error_code_of([&] { f.service->read_file(f.owner, full, "/etc/passwd", 100); }) ==
        core::ErrorCode::validation_error);
  CHECK(error_code_of([&] { f.service->read_file(f.owner, full, "missing.txt", 100); }) == core::ErrorCode::not_found);
}

TEST_CASE("an exec timeout is a result, and the sandbox stays usable") {
  ServiceFixture f("{}", test::test_settings(), std::make_shared<core::SystemClock>());
  auto id = f.create();
  auto r = f.service->exec(f.owner, id, core::ExecKind::shell, "echo before; sleep 30", 1s, "");
  CHECK(r.timed_out);
  CHECK_FALSE(r.success);
  CHECK_FALSE(r.exit_code.has_value());
  CHECK(r.output == "before\n");
  CHECK(r.error.find("timed out after 1s") != std::string::npos);
  CHECK(f.shell(id, "echo after").output == "after\n");
}

TEST_CASE("driver unavailability maps to driver_unavailable with Retry-After and recovers") {
  ServiceFixture f("{}", test::test_settings(), std::make_shared<core::SystemClock>());
  auto a = f.create();
  auto b = f.create();
  f.shell(a, "__fake unavailable 300");
  try {
    f.shell(b, "true");
    FAIL("expected driver_unavailable");
  } catch (const core::Error& e) {
    CHECK(e.code() == core::ErrorCode::driver_unavailable);
    CHECK(e.retry_after().has_value());
  }
  std::this_thread::sleep_for(400ms);
  CHECK(f.shell(b, "echo back").output == "back\n");
}

TEST_CASE("listing pages with a cursor and filters by label and status") {
  ServiceFixture f;
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i)
    ids.push_back(f.create({.labels = {{"team", i % 2 ? "odd" : "even"}}}));
  f.shell(ids[0], "true");
  std::vector<std::string> seen;
  std::string cursor;
  do {
    auto page = f.service->list_sandboxes(f.owner, std::nullopt, std::nullopt, 2, cursor);
    CHECK(page.items.size() <= 2);
    for (auto& v : page.items)
      seen.push_back(v.row.id);
    cursor = page.next_cursor;
  } while (!cursor.empty());
  std::sort(ids.begin(), ids.end());
  CHECK(seen == ids);
  CHECK(f.service->list_sandboxes(f.owner, std::nullopt, std::make_pair("team", "odd"), 10, "").items.size() == 2);
  auto ready = f.service->list_sandboxes(f.owner, core::SandboxStatus::ready, std::nullopt, 10, "");
  REQUIRE(ready.items.size() == 1);
}
