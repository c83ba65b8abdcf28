// Several berthd on one store (issue 11), in one process: two SandboxServices with their own instance ids on one
// SQLite file and one fake driver (one engine, as two berthd on one Docker host). Cleanup leases keep two cleanup
// passes off one sandbox; an InstanceRegistry hands over a dead instance's sessions at once and sweeps its
// containers after the grace period.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "core/forwarding_driver.hpp"
#include "core/instance_registry.hpp"
#include "core/service_fixture.hpp"

using namespace berth;
using namespace std::chrono_literals;
using test::ServiceFixture;

namespace {

/** Counts the calls that act on a container, per handle; `on_inspect` runs (once) inside the first inspect. */
class CountingDriver : public test::ForwardingDriver {
 public:
  using ForwardingDriver::ForwardingDriver;
  core::SessionInfo session_inspect(const std::string& h) override {
    count("inspect", h);
    if (on_inspect) std::exchange(on_inspect, nullptr)();
    return inner_.session_inspect(h);
  }
  void session_stop(const std::string& h, std::chrono::milliseconds g) override {
    count("stop", h);
    inner_.session_stop(h, g);
  }
  void session_remove(const std::string& h) override {
    count("remove", h);
    inner_.session_remove(h);
  }
  int calls(const std::string& what, const std::string& handle) {
    std::lock_guard lock(mutex_);
    return counts_[what + " " + handle];
  }
  std::function<void()> on_inspect;

 private:
  void count(const std::string& what, const std::string& handle) {
    std::lock_guard lock(mutex_);
    ++counts_[what + " " + handle];
  }
  std::mutex mutex_;
  std::map<std::string, int> counts_;
};

/** One berthd's worth of parts on the fixture's database and engine: its own store connection, driver and id. */
struct Instance {
  Instance(ServiceFixture& f, const std::string& id) : driver(*f.driver) {
    store = store::open_sqlite_store((f.dir / "berth.db").string());
    auto settings = test::test_settings();
    settings.instance_id = id;
    service = std::make_unique<core::SandboxService>(*store, driver, f.clock, settings);
  }
  core::InstanceStore& instances() { return dynamic_cast<core::InstanceStore&>(*store); }

  CountingDriver driver;
  std::unique_ptr<store::Store> store;
  std::unique_ptr<core::SandboxService> service;
};

/** An instance row that beats at `at` (the registry's start() stamps the times itself; the tests call tick()). */
core::InstanceRecord record(const std::string& id, std::chrono::system_clock::time_point at) {
  core::InstanceRecord r;
  r.id = id;
  r.host = "test";
  r.pid = 1;
  r.started_at = r.heartbeat_at = at;
  return r;
}

core::ClusterSettings cluster() {
  core::ClusterSettings c;
  c.heartbeat_interval = 1s;
  c.instance_timeout = 3s;
  c.orphan_grace = 60s;
  c.lease_ttl = 120s;
  return c;
}

}  // namespace

TEST_CASE("two instances' cleanup passes never act on one sandbox: the second skips what the first holds") {
  ServiceFixture f;
  Instance a(f, "berth-a");
  Instance b(f, "berth-b");
  a.service->use_cleanup_leases(a.instances(), 120s);
  b.service->use_cleanup_leases(b.instances(), 120s);
  auto id = a.service->create_sandbox(f.owner, {}).sandbox.row.id;
  a.service->exec(f.owner, id, core::ExecKind::shell, "true", std::nullopt, "");
  auto view = a.service->get_sandbox(f.owner, id);
  const std::string handle = view.session->handle;
  f.driver->session_stop(handle, 0ms);  // the container exits: the state sync of either pass would remove it

  // B's whole pass runs while A's pass is inside its state-sync call on that sandbox (as if both ran at once).
  std::optional<core::CleanupReport> b_report;
  a.driver.on_inspect = [&] { b_report = b.service->run_cleanup(); };
  auto a_report = a.service->run_cleanup();
  REQUIRE(b_report);
  // Every step of B's pass that reached the sandbox (state sync, disk) skipped it.
  REQUIRE_FALSE(b_report->skipped_leased.empty());
  CHECK(std::all_of(b_report->skipped_leased.begin(), b_report->skipped_leased.end(),
                    [&](const std::string& c) { return c == id; }));
  CHECK(b_report->dead_sessions.empty());
  CHECK(a_report.dead_sessions == std::vector<std::string>{*view.row.current_session_id});
  CHECK(b.driver.calls("inspect", handle) == 0);
  CHECK(b.driver.calls("remove", handle) == 0);
  CHECK(a.driver.calls("remove", handle) == 1);

  // A's pass released its leases: B's next pass may act on the sandbox again (there is nothing left to do).
  auto again = b.service->run_cleanup();
  CHECK(again.skipped_leased.empty());
  CHECK(a.instances().claim_lease(id, "someone-else", f.clock->now(), f.clock->now() + 1s));
}

TEST_CASE("a dead instance's sessions are handed over at once: running adopted, starting cleared") {
  ServiceFixture f;
  Instance a(f, "berth-a");
  Instance b(f, "berth-b");
  core::InstanceRegistry reg_a(a.instances(), *a.service, f.clock, cluster(), record("berth-a", f.clock->now()));
  core::InstanceRegistry reg_b(b.instances(), *b.service, f.clock, cluster(), record("berth-b", f.clock->now()));
  // start() would run the rounds on a thread; the test drives them with tick() on the fake clock instead.
  a.instances().register_instance(record("berth-a", f.clock->now()));
  b.instances().register_instance(record("berth-b", f.clock->now()));
  a.service->use_cleanup_leases(a.instances(), 120s);
  b.service->use_cleanup_leases(b.instances(), 120s);

  // A runs one sandbox's session and is in the middle of starting another's (its row says starting, no container).
  auto running = a.service->create_sandbox(f.owner, {}).sandbox.row.id;
  a.service->exec(f.owner, running, core::ExecKind::shell, "true", std::nullopt, "");
  const auto running_session = *a.service->get_sandbox(f.owner, running).row.current_session_id;
  auto starting = a.service->create_sandbox(f.owner, {}).sandbox.row.id;
  store::SessionRow stuck;
  stuck.id = "sess-000000000abc";
  stuck.sandbox_id = starting;
  stuck.state = store::SessionState::starting;
  stuck.created_at = stuck.last_active_at = f.clock->now();
  stuck.starter = "berth-a";
  a.store->insert_session(stuck);
  auto row = *a.store->get_sandbox(starting);
  row.current_session_id = stuck.id;
  REQUIRE(a.store->update_sandbox_cas(row, row.version));

  // Both beat: nobody is dead, nothing is handed over.
  CHECK(reg_a.tick() == 0);
  CHECK(reg_b.tick() == 0);
  CHECK(a.store->get_session(running_session)->starter == "berth-a");

  // A stops beating (kill -9). Before instance_timeout it is still alive; right after, B's next round hands over.
  f.fake_clock().advance(3s);
  CHECK(reg_b.tick() == 0);
  f.fake_clock().advance(1s);
  CHECK(reg_b.tick() == 1);
  auto adopted = *b.store->get_session(running_session);
  CHECK(adopted.state == store::SessionState::ready);
  CHECK(adopted.starter == "berth-b");
  CHECK(b.service->get_sandbox(f.owner, running).status == core::SandboxStatus::ready);
  CHECK(b.store->get_session(stuck.id)->state == store::SessionState::dead);
  auto cleared = b.service->get_sandbox(f.owner, starting);
  CHECK(cleared.status == core::SandboxStatus::idle);  // no sandbox stays starting
  CHECK_FALSE(cleared.row.current_session_id);
  // The running session keeps working through B; the cleared sandbox gets a new session from B.
  CHECK(b.service->exec(f.owner, running, core::ExecKind::shell, "echo hi", std::nullopt, "").output == "hi\n");
  CHECK(b.service->get_sandbox(f.owner, running).row.current_session_id == running_session);  // the same session
  CHECK(b.service->exec(f.owner, starting, core::ExecKind::shell, "echo new", std::nullopt, "").output == "new\n");
  CHECK(b.store->get_session(*b.store->get_sandbox(starting)->current_session_id)->starter == "berth-b");
  CHECK(b.driver.calls("remove", adopted.handle) == 0);

  // A second round does not hand anything over twice.
  CHECK(reg_b.tick() == 1);
  CHECK(b.store->get_session(running_session)->starter == "berth-b");
}

TEST_CASE("a dead instance's containers are swept through the database after the grace period, not before") {
  ServiceFixture f;
  Instance a(f, "berth-a");
  Instance b(f, "berth-b");
  core::InstanceRegistry reg_b(b.instances(), *b.service, f.clock, cluster(), record("berth-b", f.clock->now()));
  a.instances().register_instance(record("berth-a", f.clock->now()));
  b.instances().register_instance(record("berth-b", f.clock->now()));
  b.service->use_cleanup_leases(b.instances(), 120s);

  auto kept = a.service->create_sandbox(f.owner, {}).sandbox.row.id;
  a.service->exec(f.owner, kept, core::ExecKind::shell, "true", std::nullopt, "");
  const auto kept_handle = a.service->get_sandbox(f.owner, kept).session->handle;
  // A container A created for a session whose row is gone (A died between clearing the row and removing it).
  core::SessionSpec spec;
  spec.session_id = "sess-00000000dead";
  spec.image = "berth/python:3.11";
  spec.labels = {{"berth.managed", "true"},
                 {"berth.instance", "berth-a"},
                 {"berth.session", spec.session_id},
                 {"berth.sandbox", "sandbox-00000000dead"}};
  const auto orphan = f.driver->session_create(spec).handle;
  // And one of another, live instance: never touched by B's sweep of A.
  spec.session_id = "sess-00000000c0de";
  spec.labels["berth.instance"] = "berth-c";
  spec.labels["berth.session"] = spec.session_id;
  const auto foreign = f.driver->session_create(spec).handle;

  f.fake_clock().advance(4s);  // A is dead; its running session is adopted at once, the orphan waits for the grace
  CHECK(reg_b.tick() == 1);
  CHECK(b.driver.calls("remove", orphan) == 0);
  f.fake_clock().advance(60s);
  b.instances().register_instance(record("berth-c", f.clock->now()));  // C beats (registered "now")
  CHECK(reg_b.tick() == 1);
  CHECK(b.driver.calls("remove", orphan) == 1);
  CHECK(f.driver->session_inspect(orphan).state == core::SessionState::missing);
  CHECK(b.driver.calls("remove", kept_handle) == 0);  // its sandbox wants it: kept (and adopted)
  CHECK(f.driver->session_inspect(kept_handle).state == core::SessionState::running);
  CHECK(b.driver.calls("remove", foreign) == 0);
  CHECK(f.driver->session_inspect(foreign).state == core::SessionState::running);
  // Swept once per death: the next round lists nothing again.
  CHECK(reg_b.tick() == 1);
  CHECK(b.driver.calls("remove", orphan) == 1);

  // A day (instance_retention) after the sweep, A's row is forgotten: none of its sessions is left to adopt.
  f.fake_clock().advance(23h);
  reg_b.tick();
  auto has = [&](const std::string& id) {
    for (const auto& r : b.instances().list_instances())
      if (r.id == id) return true;
    return false;
  };
  CHECK(has("berth-a"));  // not yet: the retention runs from the sweep's time, grace included
  f.fake_clock().advance(2h);
  reg_b.tick();
  CHECK_FALSE(has("berth-a"));
  CHECK(has("berth-b"));  // the live one stays
  CHECK(f.driver->session_inspect(kept_handle).state == core::SessionState::running);
}
