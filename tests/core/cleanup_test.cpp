// The cleanup task's rules: idle and TTL boundaries, CAS re-check of each candidate, continue past failures,
// orphan removal limited to this instance's labels, and state sync of dead sessions.
#include <catch2/catch.hpp>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

#include "core/forwarding_driver.hpp"
#include "core/forwarding_store.hpp"
#include "core/service_fixture.hpp"

using namespace berth;
using namespace std::chrono_literals;
using test::error_code_of;
using test::ServiceFixture;

namespace {

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

/** Forwards to a real store, but "keeps alive" one sandbox right after the cleanup task took its snapshot. */
class RacingStore final : public test::ForwardingStore {
 public:
  RacingStore(store::Store& inner, std::string victim, store::TimePoint idle_until)
      : ForwardingStore(inner), victim_(std::move(victim)), idle_until_(idle_until) {}
  std::vector<store::SandboxRow> list_live_sandboxes() override {
    auto snapshot = inner_.list_live_sandboxes();
    inner_.touch_sandbox(victim_, idle_until_);  // a concurrent keepalive lands after the snapshot
    return snapshot;
  }

 private:
  std::string victim_;
  store::TimePoint idle_until_;
};

}  // namespace

TEST_CASE("idle sessions are stopped at the idle boundary, not before") {
  ServiceFixture f;
  auto id = f.create();
  f.shell(id, "true");
  f.fake_clock().advance(59s);
  auto early = f.service->run_cleanup();
  CHECK(early.idle_stopped.empty());
  CHECK(f.containers_of(id) == 1);

  f.fake_clock().advance(1s);  // idle_expires_at == now
  auto report = f.service->run_cleanup();
  CHECK(report.idle_stopped == std::vector<std::string>{id});
  CHECK(f.containers_of(id) == 0);
  auto sb = f.service->get_sandbox(f.owner, id);
  CHECK(sb.status == core::SandboxStatus::idle);
  CHECK(f.driver->volume_exists("berth-ws-" + sb.row.workspace_id));  // stopping keeps the workspace
}

TEST_CASE("expired sandboxes are deleted and the boundary counts as expired") {
  ServiceFixture f;
  auto expiring = f.create({.profile = "short"});
  auto forever = f.create();
  f.shell(expiring, "true");
  f.fake_clock().advance(9999ms);
  CHECK(f.service->run_cleanup().expired_deleted.empty());
  f.fake_clock().advance(1ms);
  auto report = f.service->run_cleanup();
  CHECK(report.expired_deleted == std::vector<std::string>{expiring});
  CHECK(error_code_of([&] { f.service->get_sandbox(f.owner, expiring); }) == core::ErrorCode::not_found);
  CHECK(f.containers_of(expiring) == 0);
  CHECK_NOTHROW(f.service->get_sandbox(f.owner, forever));
}

TEST_CASE("a candidate whose snapshot went stale is skipped, not acted on") {
  ServiceFixture f;
  auto id = f.create();
  f.shell(id, "true");
  f.fake_clock().advance(61s);
  RacingStore racing(*f.store, id, f.clock->now() + 60s);
  core::SandboxService service(racing, *f.driver, f.clock, test::test_settings());
  auto report = service.run_cleanup();
  CHECK(report.idle_stopped.empty());
  CHECK(contains(report.skipped_stale, id));
  CHECK(f.containers_of(id) == 1);
  CHECK(f.service->get_sandbox(f.owner, id).status == core::SandboxStatus::ready);
}

TEST_CASE("a failing driver call on one candidate is logged and the loop continues") {
  ServiceFixture f(R"({"fail_stop_label": "berth.label.flaky=yes"})");
  auto flaky = f.create({.labels = {{"flaky", "yes"}}});
  auto fine = f.create({.labels = {{"flaky", "no"}}});
  f.shell(flaky, "true");
  f.shell(fine, "true");
  f.fake_clock().advance(60s);
  auto report = f.service->run_cleanup();
  CHECK(contains(report.failed, flaky));
  CHECK(contains(report.idle_stopped, fine));
  CHECK(f.containers_of(fine) == 0);
  CHECK(f.containers_of(flaky) == 1);  // still there: the orphan step retries it on every run
  auto again = f.service->run_cleanup();
  CHECK_FALSE(again.failed.empty());
}

TEST_CASE("orphans: only containers with this instance's labels and no live session are removed") {
  ServiceFixture f;
  auto spec = [](std::string session, core::Labels labels) {
    core::SessionSpec s;
    s.session_id = std::move(session);
    s.image = "berth/python:3.11";
    s.labels = std::move(labels);
    return s;
  };
  auto orphan = f.driver->session_create(
      spec("sess-00000000000a",
           {{"berth.managed", "true"}, {"berth.instance", "berth-test"}, {"berth.session", "sess-00000000000a"}}));
  auto other_instance = f.driver->session_create(
      spec("sess-00000000000b",
           {{"berth.managed", "true"}, {"berth.instance", "someone-else"}, {"berth.session", "sess-00000000000b"}}));
  auto unlabelled = f.driver->session_create(spec("sess-00000000000c", {}));
  auto live = f.create();
  f.shell(live, "true");

  auto report = f.service->run_cleanup();
  CHECK(report.orphans_removed == std::vector<std::string>{orphan.handle});
  CHECK(f.driver->session_inspect(orphan.handle).state == core::SessionState::missing);
  CHECK(f.driver->session_inspect(other_instance.handle).state == core::SessionState::running);
  CHECK(f.driver->session_inspect(unlabelled.handle).state == core::SessionState::running);
  CHECK(f.containers_of(live) == 1);
}

TEST_CASE("state sync: a session whose container exited is marked dead and cleared") {
  ServiceFixture f;
  auto id = f.create();
  f.shell(id, "true");
  auto view = f.service->get_sandbox(f.owner, id);
  auto session = *view.row.current_session_id;
  // The container exits with no call running (an exec that kills it is noticed by the exec itself).
  f.driver->session_stop(view.session->handle, 0ms);
  auto report = f.service->run_cleanup();
  CHECK(report.dead_sessions == std::vector<std::string>{session});
  auto sb = f.service->get_sandbox(f.owner, id);
  CHECK(sb.status == core::SandboxStatus::idle);
  CHECK(f.store->get_session(session)->state == store::SessionState::dead);
  CHECK(f.shell(id, "echo next").output == "next\n");
}

TEST_CASE("a delete during an engine outage leaks nothing: later passes remove the container and the volume") {
  ServiceFixture f;
  auto row = f.service->create_sandbox(f.owner, {}).sandbox.row;
  f.shell(row.id, "__fake unavailable 1000");  // the engine goes away for 1 s of (fake) time
  CHECK_NOTHROW(f.service->delete_sandbox(f.owner, row.id));
  CHECK(error_code_of([&] { f.service->get_sandbox(f.owner, row.id); }) == core::ErrorCode::not_found);
  CHECK_FALSE(f.store->get_workspace(row.workspace_id)->deleted_at);  // the volume could not be removed

  auto during = f.service->run_cleanup();
  CHECK_FALSE(during.failed.empty());  // still down: logged, kept for the next pass

  f.fake_clock().advance(1001ms);
  auto report = f.service->run_cleanup();
  CHECK(report.orphans_removed.size() == 1);
  CHECK(report.workspaces_removed == std::vector<std::string>{row.workspace_id});
  CHECK(f.containers_of(row.id) == 0);
  CHECK_FALSE(f.driver->volume_exists("berth-ws-" + row.workspace_id));
  CHECK(f.store->get_workspace(row.workspace_id)->deleted_at);
}

TEST_CASE("idle cleanup never stops a session with a call running and a call touches the idle timer when it starts") {
  ServiceFixture f;  // fake clock: the hang below ends only when the clock passes its timeout
  auto id = f.create();
  f.shell(id, "true");  // ready; idle until now + 60 s
  auto handle = f.service->get_sandbox(f.owner, id).session->handle;
  f.fake_clock().advance(50s);
  std::optional<core::ExecOutcome> outcome;
  std::thread caller([&] { outcome = f.service->exec(f.owner, id, core::ExecKind::shell, "hang", 300s, ""); });
  while (f.driver->session_stats(handle).pids < 2)  // the exec is running
    std::this_thread::sleep_for(5ms);
  auto started = f.service->get_sandbox(f.owner, id);
  REQUIRE(started.row.idle_expires_at);
  CHECK(*started.row.idle_expires_at == f.clock->now() + 60s);  // touched at the start, not only at the end

  f.fake_clock().advance(61s);  // past the idle timer set when the call started
  auto report = f.service->run_cleanup();
  CHECK(contains(report.skipped_in_use, id));
  CHECK_FALSE(contains(report.idle_stopped, id));
  CHECK(f.containers_of(id) == 1);
  CHECK(f.driver->session_stats(handle).pids == 2);  // still running

  f.fake_clock().advance(300s);  // the exec times out: a result
  caller.join();
  REQUIRE(outcome);
  CHECK(outcome->timed_out);
  auto idle_after = f.service->get_sandbox(f.owner, id).row.idle_expires_at;
  REQUIRE(idle_after);
  CHECK(*idle_after == f.clock->now() + 60s);  // and touched again when it ended
  f.fake_clock().advance(60s);
  auto later = f.service->run_cleanup();
  CHECK(contains(later.idle_stopped, id));
  CHECK(later.skipped_in_use.empty());
  CHECK(f.containers_of(id) == 0);
}

// ---- issue 8: no tenant's stuck sandbox delays the pass; history records expire ----------------------------------

namespace {

/** Forwards to a real driver, but session_stop on one handle blocks until release() (a stuck engine call). */
class StallingDriver final : public test::ForwardingDriver {
 public:
  explicit StallingDriver(core::Driver& inner) : ForwardingDriver(inner) {}
  void stall(const std::string& handle) {
    std::lock_guard lock(m_);
    stalled_ = handle;
  }
  void release() {
    {
      std::lock_guard lock(m_);
      released_ = true;
    }
    cv_.notify_all();
  }
  std::atomic<int> stalls{0};

  void session_stop(const std::string& h, std::chrono::milliseconds g) override {
    std::unique_lock lock(m_);
    if (h == stalled_) {
      ++stalls;
      cv_.wait(lock, [&] { return released_; });
    }
    lock.unlock();
    inner_.session_stop(h, g);
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::string stalled_;
  bool released_ = false;
};

}  // namespace

TEST_CASE("a driver call stuck on one sandbox is reported failed and the pass goes on with the others") {
  ServiceFixture f;
  auto settings = test::test_settings();
  settings.cleanup_call_deadline = std::chrono::milliseconds(300);
  auto stuck = f.create();
  auto other = f.create();
  f.shell(stuck, "true");
  f.shell(other, "true");
  const auto stuck_handle = f.service->get_sandbox(f.owner, stuck).session->handle;
  f.service->flush_records();  // the second service below sees the first one's idle timers once they are written
  StallingDriver stalling(*f.driver);
  stalling.stall(stuck_handle);
  // A service over the same store and the stalling driver; declared after `stalling`, so it is gone first.
  auto service = std::make_unique<core::SandboxService>(*f.store, stalling, f.clock, settings);
  f.fake_clock().advance(60s);  // both idle

  auto report = service->run_cleanup();
  CHECK(stalling.stalls == 1);
  CHECK(contains(report.failed, stuck));
  CHECK(contains(report.idle_stopped, other));  // not delayed behind the stuck one
  CHECK(f.containers_of(other) == 0);

  // The next pass does not pile a second call onto the stuck one.
  auto second = service->run_cleanup();
  CHECK(stalling.stalls == 1);

  stalling.release();
  service.reset();  // waits for the overrunning call, which then completes
  CHECK(f.containers_of(stuck) == 0);
}

TEST_CASE("history records expire by count per sandbox and by age") {
  auto settings = test::test_settings();
  settings.history_max_records = 2;
  settings.history_max_age = std::chrono::hours(1);
  ServiceFixture f("{}", settings);
  auto a = f.create();
  auto b = f.create();
  for (int i = 0; i < 4; ++i)
    f.shell(a, "echo " + std::to_string(i));
  f.shell(b, "echo b");
  auto report = f.service->run_cleanup();
  CHECK(report.executions_expired == 2);
  auto page = f.service->history(f.owner, a, "", 10, 0);
  CHECK(page.total == 2);
  REQUIRE(page.entries.size() == 2);
  CHECK(page.entries[0].output == "3\n");
  CHECK(page.entries[1].output == "2\n");
  CHECK(f.service->history(f.owner, b, "", 10, 0).total == 1);

  f.fake_clock().advance(std::chrono::hours(1) + 1s);
  report = f.service->run_cleanup();
  CHECK(report.executions_expired == 3);
  CHECK(f.service->history(f.owner, a, "", 10, 0).total == 0);
}
