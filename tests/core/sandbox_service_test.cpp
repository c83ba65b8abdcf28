// The lifecycle core against the real fake driver plugin and SQLite, with a fake clock and real threads.
#include <catch2/catch.hpp>

#include <atomic>
#include <cstring>
#include <set>
#include <thread>

#include "core/forwarding_driver.hpp"
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
  CHECK(history.total == 2);
  CHECK(history.entries.at(0).kind == "shell");
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
        auto rows = f.service->history(f.owner, id, "", 1, 0).entries;
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
  CHECK(error_code_of([&] { f.service->list_dir(f.owner, id, "../etc", "", 10); }) ==
        core::ErrorCode::capability_not_supported);
  auto full = f.create();
  CHECK(error_code_of([&] { f.service->list_dir(f.owner, full, "../etc", "", 10); }) ==
        core::ErrorCode::validation_error);
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

// ---- a call's session dies: replaced once when nothing ran, never run twice ---------------------------------------

namespace {

/** Forwards to a real driver and counts the calls that can run user code or consume input. */
class CountingDriver final : public test::ForwardingDriver {
 public:
  explicit CountingDriver(core::Driver& inner) : ForwardingDriver(inner) {}
  std::atomic<int> execs{0};
  std::atomic<int> file_puts{0};

  core::ExecResult exec(const std::string& h, const core::ExecRequest& r, const core::OutputSink& o,
                        const core::CancelToken* c) override {
    ++execs;
    return inner_.exec(h, r, o, c);
  }
  // The core runs execs as processes when the driver has them: each start is one run of the code.
  std::unique_ptr<core::Process> process_start(const std::string& h, const core::ProcessSpec& s) override {
    ++execs;
    return inner_.process_start(h, s);
  }
  void file_put(const std::string& h, const std::string& p, std::uint32_t m, std::uint64_t s,
                const core::ByteSource& src) override {
    ++file_puts;
    inner_.file_put(h, p, m, s, src);
  }
};

/** The driver handle of the sandbox's current session ("" when it has none). */
std::string handle_of(ServiceFixture& f, const std::string& id) {
  auto v = f.service->get_sandbox(f.owner, id);
  return v.session ? v.session->handle : "";
}

/** Waits (real time, no deadline asserted) until `n` execs run in the session `handle`. */
void wait_for_running_execs(ServiceFixture& f, const std::string& handle, std::uint64_t n) {
  while (f.driver->session_stats(handle).pids < 1 + n)
    std::this_thread::sleep_for(5ms);
}

}  // namespace

TEST_CASE("an exec whose session is stopped mid-call is not run a second time on a new session") {
  // The engine reports the broken exec as CONFLICT (as Docker does when the container goes away under an exec).
  // Driver::exec's contract (the path of sessions without processes); the process path: exec_process_test.cpp.
  ServiceFixture f(R"({"killed_exec_conflict": true})", test::test_settings(), std::make_shared<core::SystemClock>());
  CountingDriver counting(*f.driver);
  auto settings = test::test_settings();
  settings.exec_via_processes = false;
  core::SandboxService service(*f.store, counting, f.clock, settings);
  auto id = f.create();
  service.exec(f.owner, id, core::ExecKind::shell, "true", std::nullopt, "");
  auto handle = handle_of(f, id);
  std::optional<core::ErrorCode> code;
  std::optional<core::ExecOutcome> outcome;
  std::thread caller([&] {
    try {
      outcome = service.exec(f.owner, id, core::ExecKind::shell, "echo started; hang", 30s, "");
    } catch (const core::Error& e) {
      code = e.code();
    }
  });
  wait_for_running_execs(f, handle, 1);
  service.stop(f.owner, id);
  caller.join();
  CHECK_FALSE(outcome.has_value());
  CHECK(code == core::ErrorCode::conflict);
  CHECK(counting.execs == 2);  // "true", then the interrupted one, never a repeat
  CHECK(f.containers_of(id) == 0);
  CHECK(f.service->get_sandbox(f.owner, id).status == core::SandboxStatus::idle);
  CHECK(f.shell(id, "echo next").output == "next\n");  // the next call starts a new session
}

TEST_CASE("an upload whose container vanishes mid-read fails once and never re-reads its source") {
  ServiceFixture f;
  CountingDriver counting(*f.driver);
  core::SandboxService service(*f.store, counting, f.clock, test::test_settings());
  auto id = f.create();
  f.shell(id, "true");
  auto handle = handle_of(f, id);
  const std::string content(100'000, 'x');
  std::size_t offset = 0;
  int reads = 0;
  auto source = [&](std::uint8_t* buffer, std::size_t capacity) -> std::int64_t {
    if (reads++ == 0) f.driver->session_remove(handle);  // stop/idle cleanup removes it while the body streams
    std::size_t n = std::min(capacity, content.size() - offset);
    std::memcpy(buffer, content.data() + offset, n);
    offset += n;
    return static_cast<std::int64_t>(n);
  };
  CHECK(error_code_of([&] { service.write_file(f.owner, id, "big.bin", content.size(), source); }) ==
        core::ErrorCode::conflict);
  CHECK(offset == content.size());  // read exactly once, from its start to its end
  CHECK(counting.file_puts == 1);
  CHECK(f.service->get_sandbox(f.owner, id).status != core::SandboxStatus::ready);
  offset = 0;
  service.write_file(f.owner, id, "big.bin", content.size(), source);
  CHECK(f.service->read_file(f.owner, id, "big.bin", 1 << 20) == content);
}

TEST_CASE("a container removed behind the host's back is replaced once and the exec runs once") {
  ServiceFixture f;
  CountingDriver counting(*f.driver);
  core::SandboxService service(*f.store, counting, f.clock, test::test_settings());
  auto id = f.create();
  f.shell(id, "true");
  auto first = handle_of(f, id);
  f.driver->session_remove(first);  // e.g. `docker rm -f` by an operator: the host has not noticed
  auto out = service.exec(f.owner, id, core::ExecKind::shell, "echo once", std::nullopt, "");
  CHECK(out.output == "once\n");
  CHECK(out.exit_code == 0);
  CHECK(counting.execs == 2);  // the refused one (not_found: nothing ran) and the one that ran
  CHECK(handle_of(f, id) != first);
  CHECK(f.containers_of(id) == 1);
  // The same for file calls: a listing and a removal on a vanished container are replayed on a new one.
  f.driver->session_remove(handle_of(f, id));
  CHECK(service.list_dir(f.owner, id, ".", "", 10).entries.empty());
  CHECK(f.containers_of(id) == 1);
}

TEST_CASE("an exec that kills its whole container is a result, GET stops saying ready, and the next exec runs") {
  ServiceFixture f;
  auto id = f.create();
  f.shell(id, "true");
  auto first = f.service->get_sandbox(f.owner, id).row.current_session_id;
  auto killed = f.shell(id, "__fake crash-session");  // as `kill -9 -1`: PID 1 dies with the exec
  CHECK(killed.exit_code == 137);
  auto after = f.service->get_sandbox(f.owner, id);
  CHECK(after.status != core::SandboxStatus::ready);
  CHECK_FALSE(after.row.current_session_id);
  REQUIRE(first);
  CHECK(f.store->get_session(*first)->state == store::SessionState::dead);
  CHECK(f.containers_of(id) == 0);
  CHECK(f.shell(id, "echo alive").output == "alive\n");
  CHECK(f.service->get_sandbox(f.owner, id).status == core::SandboxStatus::ready);
}

TEST_CASE("begin_shutdown cancels a running exec with shutting_down and refuses new ones") {
  ServiceFixture f(R"({})", test::test_settings(), std::make_shared<core::SystemClock>());
  auto id = f.create();
  f.shell(id, "true");
  auto handle = handle_of(f, id);
  std::optional<core::ErrorCode> code;
  std::thread caller([&] {
    try {
      f.service->exec(f.owner, id, core::ExecKind::shell, "hang", 60s, "");
    } catch (const core::Error& e) {
      code = e.code();
    }
  });
  wait_for_running_execs(f, handle, 1);
  f.service->begin_shutdown();
  caller.join();
  REQUIRE(code.has_value());
  CHECK(*code == core::ErrorCode::shutting_down);
  try {
    f.shell(id, "echo after");
    FAIL("an exec after begin_shutdown ran");
  } catch (const core::Error& e) {
    CHECK(e.code() == core::ErrorCode::shutting_down);
  }
  CHECK(f.service->get_sandbox(f.owner, id).status == core::SandboxStatus::ready);  // the session is untouched
}

// ---- crash recovery --------------------------------------------------------------------------------------------

namespace {

/** Leaves `sandbox_id` as a killed berthd would: a session row in `state`, current, started by `starter`. */
store::SessionRow plant_session(ServiceFixture& f, const std::string& sandbox_id, store::SessionState state,
                                const std::string& starter) {
  store::SessionRow s;
  s.id = core::new_id("sess");
  s.sandbox_id = sandbox_id;
  s.state = state;
  s.starter = starter;
  s.created_at = f.clock->now();
  s.last_active_at = s.created_at;
  f.store->insert_session(s);
  auto row = *f.store->get_sandbox(sandbox_id);
  auto claimed = row;
  claimed.current_session_id = s.id;
  REQUIRE(f.store->update_sandbox_cas(claimed, row.version));
  return s;
}

/** The container the killed berthd had asked for (labels as SandboxService sets them). */
std::string plant_container(ServiceFixture& f, const store::SessionRow& s, const std::string& instance) {
  core::SessionSpec spec;
  spec.session_id = s.id;
  spec.image = "berth/python:3.11";
  spec.labels = {{"berth.managed", "true"},
                 {"berth.instance", instance},
                 {"berth.sandbox", s.sandbox_id},
                 {"berth.session", s.id}};
  return f.driver->session_create(spec).handle;
}

}  // namespace

TEST_CASE("recover settles at once what a killed berthd left starting or running, and only its own") {
  ServiceFixture f;  // fake clock: a session left starting would block an exec forever without recovery
  const std::string me = f.service->settings().instance_id;
  auto adopt = f.create();
  auto lost = f.create();
  auto died = f.create();
  auto foreign = f.create();
  auto s_adopt = plant_session(f, adopt, store::SessionState::starting, me);
  auto adopt_handle = plant_container(f, s_adopt, me);  // the container came up, the row never said so
  auto s_lost = plant_session(f, lost, store::SessionState::starting, me);  // killed before the container existed
  auto s_died = plant_session(f, died, store::SessionState::ready, me);
  auto died_handle = plant_container(f, s_died, me);
  s_died.handle = died_handle;
  f.store->update_session(s_died);
  f.driver->session_stop(died_handle, 0ms);  // its container exited while berthd was down
  auto s_foreign = plant_session(f, foreign, store::SessionState::starting, "another-berthd");

  auto report = f.service->recover();
  CHECK(report.adopted == std::vector<std::string>{s_adopt.id});
  std::set<std::string> cleared(report.cleared.begin(), report.cleared.end());
  CHECK(cleared == std::set<std::string>{s_lost.id, s_died.id});
  CHECK(report.failed.empty());

  auto adopted = f.service->get_sandbox(f.owner, adopt);
  CHECK(adopted.status == core::SandboxStatus::ready);
  REQUIRE(adopted.session);
  CHECK(adopted.session->handle == adopt_handle);
  CHECK(f.shell(adopt, "echo adopted").output == "adopted\n");
  CHECK(f.containers_of(adopt) == 1);
  CHECK(handle_of(f, adopt) == adopt_handle);  // ran on the adopted container, no second one

  CHECK(f.service->get_sandbox(f.owner, lost).status == core::SandboxStatus::idle);
  CHECK(f.store->get_session(s_lost.id)->state == store::SessionState::dead);
  CHECK(f.shell(lost, "echo fresh").output == "fresh\n");

  CHECK(f.service->get_sandbox(f.owner, died).status == core::SandboxStatus::idle);
  CHECK(f.driver->session_inspect(died_handle).state == core::SessionState::missing);  // removed
  CHECK(f.shell(died, "echo back").output == "back\n");

  auto untouched = f.service->get_sandbox(f.owner, foreign);
  CHECK(untouched.status == core::SandboxStatus::starting);
  CHECK(untouched.row.current_session_id == s_foreign.id);
}

TEST_CASE("recover with the driver down changes nothing and the next cleanup pass recovers once it is back") {
  ServiceFixture f(R"({"unavailable": {"after_calls": 1, "for_ms": 1000}})");
  auto id = f.create();  // volume_create: call 1; from the next call on the driver is unavailable
  auto s = plant_session(f, id, store::SessionState::starting, f.service->settings().instance_id);
  auto report = f.service->recover();
  CHECK(report.failed == std::vector<std::string>{s.id});
  CHECK(report.adopted.empty());
  CHECK(report.cleared.empty());
  CHECK(f.store->get_session(s.id)->state == store::SessionState::starting);
  f.fake_clock().advance(1001ms);  // the engine is back; far below the 2 x start_wait the state sync waits for
  f.service->run_cleanup();
  CHECK(f.store->get_session(s.id)->state == store::SessionState::dead);
  CHECK(f.service->get_sandbox(f.owner, id).status == core::SandboxStatus::idle);
  CHECK(f.shell(id, "echo back").output == "back\n");
}

TEST_CASE("sessions record the instance that started them") {
  ServiceFixture f;
  auto id = f.create();
  f.shell(id, "true");
  auto v = f.service->get_sandbox(f.owner, id);
  REQUIRE(v.session);
  CHECK(v.session->starter == f.service->settings().instance_id);
}

// ---- issue 8: memory bounded by configuration --------------------------------------------------------------------

TEST_CASE("list_dir pages by name after the cursor, holding at most a page") {
  auto settings = test::test_settings();
  settings.dir_page_max = 1000;
  ServiceFixture f("{}", settings);
  auto id = f.create();
  f.shell(id, "__fake mkdirs d 2500");
  std::vector<std::string> names;
  std::string cursor;
  int pages = 0;
  for (;;) {
    auto page = f.service->list_dir(f.owner, id, "d", cursor, 1000);
    ++pages;
    CHECK(page.entries.size() <= 1000);
    for (const auto& e : page.entries)
      names.push_back(e.name);
    if (!page.next_cursor) break;
    CHECK(*page.next_cursor == page.entries.back().name);
    cursor = *page.next_cursor;
    REQUIRE(pages < 10);
  }
  CHECK(pages == 3);
  CHECK(names.size() == 2500);
  CHECK(std::is_sorted(names.begin(), names.end()));
  CHECK(std::adjacent_find(names.begin(), names.end()) == names.end());
  // A cursor past every name: an empty last page.
  auto end = f.service->list_dir(f.owner, id, "d", "999999", 1000);
  CHECK(end.entries.empty());
  CHECK_FALSE(end.next_cursor);
  CHECK(error_code_of([&] { f.service->list_dir(f.owner, id, "d", "", 1001); }) == core::ErrorCode::validation_error);
  CHECK(error_code_of([&] { f.service->list_dir(f.owner, id, "d", "", 0); }) == core::ErrorCode::validation_error);
}

TEST_CASE("stored execution output is capped per field and flagged, and history pages stop at the byte budget") {
  auto settings = test::test_settings();
  settings.history_field_cap = 4096;
  settings.history_response_bytes = 64 << 10;
  ServiceFixture f("{}", settings);
  auto id = f.create();
  for (int i = 0; i < 40; ++i) {
    auto out = f.shell(id, "seq 1 3000");
    CHECK(out.output.size() > 4096);  // the exec's own response is not cut to the history cap
  }
  f.shell(id, "echo small");
  auto page = f.service->history(f.owner, id, "", 500, 0);
  CHECK(page.total == 41);
  CHECK(page.entries.at(0).output == "small\n");
  CHECK_FALSE(page.entries.at(0).truncated);
  // 64 KiB budget over records of about 4 KiB: about 16 records, never all 41.
  CHECK(page.entries.size() < 41);
  CHECK(page.entries.size() >= 2);
  CHECK(page.bytes_capped);
  for (std::size_t i = 1; i < page.entries.size(); ++i) {
    CHECK(page.entries[i].output.size() <= 4096);
    CHECK(page.entries[i].truncated);
  }
}

// ---- a newer driver's session state -------------------------------------------------------------------------------

namespace {

/** Forwards to a real driver, but reports the handles in `unknown` as SessionState::unknown: a state a newer driver
 *  names and this host cannot (driver.h rule 12). */
class UnknownStateDriver final : public test::ForwardingDriver {
 public:
  explicit UnknownStateDriver(core::Driver& inner) : ForwardingDriver(inner) {}
  std::set<std::string> unknown;

  core::SessionInfo session_inspect(const std::string& h) override {
    auto info = inner_.session_inspect(h);
    if (unknown.count(h)) info.state = core::SessionState::unknown;
    return info;
  }
  void session_remove(const std::string& h) override {
    ++removes;
    inner_.session_remove(h);
  }
  std::vector<core::SessionListing> session_list(const core::Labels& f) override {
    auto all = inner_.session_list(f);
    for (auto& l : all)
      if (unknown.count(l.handle)) l.state = core::SessionState::unknown;
    return all;
  }
  core::ExecResult exec(const std::string& h, const core::ExecRequest& r, const core::OutputSink& o,
                        const core::CancelToken* c) override {
    ++execs;
    return inner_.exec(h, r, o, c);
  }
  // The core runs execs as processes when the driver has them: each start is one run of the code.
  std::unique_ptr<core::Process> process_start(const std::string& h, const core::ProcessSpec& s) override {
    ++execs;
    return inner_.process_start(h, s);
  }
  std::atomic<int> execs{0}, removes{0};
};

}  // namespace

TEST_CASE("a session in a state only a newer driver can name is never destroyed, cleared or run again") {
  ServiceFixture f("{}", test::test_settings(), std::make_shared<core::SystemClock>());
  UnknownStateDriver unknown(*f.driver);
  core::SandboxService service(*f.store, unknown, f.clock, f.service->settings());
  const std::string me = f.service->settings().instance_id;

  SECTION("recovery adopts it instead of clearing and removing it") {
    auto id = f.create();
    auto s = plant_session(f, id, store::SessionState::ready, me);
    s.handle = plant_container(f, s, me);
    f.store->update_session(s);
    f.driver->session_stop(s.handle, 0ms);  // really exited; the newer driver calls it something else
    unknown.unknown.insert(s.handle);
    auto report = service.recover();
    CHECK(report.adopted == std::vector<std::string>{s.id});
    CHECK(report.cleared.empty());
    CHECK(unknown.removes == 0);
    CHECK(f.driver->session_inspect(s.handle).state != core::SessionState::missing);
    CHECK(f.store->get_sandbox(id)->current_session_id == s.id);
  }

  SECTION("a failing call on it is reported, not retried on a new session, and the session stays") {
    auto id = f.create();
    service.exec(f.owner, id, core::ExecKind::shell, "true", std::nullopt, "");
    const auto handle = handle_of(f, id);
    REQUIRE(!handle.empty());
    f.driver->session_stop(handle, 0ms);  // the next exec fails in the driver
    unknown.unknown.insert(handle);
    const int before = unknown.execs;
    CHECK_THROWS(service.exec(f.owner, id, core::ExecKind::shell, "echo once", std::nullopt, ""));
    CHECK(unknown.execs == before + 1);  // not run a second time on a replacement session
    CHECK(handle_of(f, id) == handle);   // not retired
    CHECK(unknown.removes == 0);
  }
}

// ---- disk checks after execs -------------------------------------------------------------------------------------

TEST_CASE("a burst of execs is measured once per disk_check_spacing, and the first at once") {
  class StatsCounting final : public test::ForwardingDriver {
   public:
    using ForwardingDriver::ForwardingDriver;
    std::atomic<int> stats{0};
    core::SessionStats session_stats(const std::string& h) override {
      ++stats;
      return inner_.session_stats(h);
    }
  };
  auto settings = test::test_settings();
  settings.disk_check_spacing = std::chrono::hours(1);  // the second check cannot come within this test
  ServiceFixture f("{}", settings);
  StatsCounting counting(*f.driver);
  core::SandboxService service(*f.store, counting, f.clock, settings);
  auto id = f.create();
  service.exec(f.owner, id, core::ExecKind::shell, "echo one > a.txt", 30s, "");
  auto wait_for_stats = [&](int n) {  // bounded ("eventually" vs "never"), no time asserted
    for (int i = 0; i < 6000 && counting.stats.load() < n; ++i)
      std::this_thread::sleep_for(10ms);
    REQUIRE(counting.stats.load() >= n);
  };
  wait_for_stats(1);  // the first exec's check runs at once
  for (int i = 0; i < 20; ++i)
    service.exec(f.owner, id, core::ExecKind::shell, "echo more >> a.txt", 30s, "");
  // A second sandbox is not held back by the first one's spacing.
  auto other = f.create();
  service.exec(f.owner, other, core::ExecKind::shell, "true", 30s, "");
  wait_for_stats(2);
  std::this_thread::sleep_for(200ms);  // room for a wrong extra check of the first sandbox to show
  CHECK(counting.stats.load() == 2);
}
