// Execs through interactive processes (issue 9 item 4) and the exec recorder (issue 11, "fast paths stay fast"):
// code on stdin, chunk order, timeout and cancel through a process, the per-session fallback to Driver::exec, and
// the batched, bounded, flushed writes of execution records and idle-timer touches.
#include <catch2/catch.hpp>

#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <optional>
#include <thread>

#include "core/exec_recorder.hpp"
#include "core/forwarding_driver.hpp"
#include "core/forwarding_store.hpp"
#include "core/service_fixture.hpp"

using namespace berth;
using namespace std::chrono_literals;
using test::error_code_of;
using test::ServiceFixture;

namespace {

/** Counts how execs reach the driver; `refuse_processes` answers process_start as an engine session without agent. */
/** The service settings of these tests: execs through processes (off by default, see core::Settings). */
core::Settings process_settings() {
  auto s = test::test_settings();
  s.exec_via_processes = true;
  return s;
}

class RouteCountingDriver final : public test::ForwardingDriver {
 public:
  explicit RouteCountingDriver(core::Driver& inner, bool refuse_processes = false)
      : ForwardingDriver(inner), refuse_processes_(refuse_processes) {}
  std::atomic<int> execs{0};
  std::atomic<int> process_starts{0};

  core::ExecResult exec(const std::string& h, const core::ExecRequest& r, const core::OutputSink& o,
                        const core::CancelToken* c) override {
    ++execs;
    return inner_.exec(h, r, o, c);
  }
  std::unique_ptr<core::Process> process_start(const std::string& h, const core::ProcessSpec& s) override {
    ++process_starts;
    if (refuse_processes_) throw core::DriverError(core::DriverErrc::unsupported, "no interactive processes");
    return inner_.process_start(h, s);
  }

 private:
  bool refuse_processes_;
};

/** Waits (real time, no deadline asserted) until `n` execs run in the session `handle` (fake: pids = 1 + execs). */
void wait_for_running(ServiceFixture& f, const std::string& handle, std::uint64_t n) {
  while (f.driver->session_stats(handle).pids < 1 + n)
    std::this_thread::sleep_for(5ms);
}

std::string handle_of(ServiceFixture& f, const std::string& id) {
  auto v = f.service->get_sandbox(f.owner, id);
  return v.session ? v.session->handle : "";
}

store::ExecutionRow record_row(const std::string& id, const std::string& sandbox_id) {
  store::ExecutionRow r;
  r.id = id;
  r.sandbox_id = sandbox_id;
  r.session_id = "sess-1";
  r.kind = "shell";
  r.code = "true";
  r.exit_code = 0;
  r.success = true;
  r.created_at = std::chrono::system_clock::time_point(std::chrono::seconds(1'800'000'000));
  return r;
}

/**
 * A store whose write_batch can be held at a gate (a slow database) or made to fail N times (an outage); every
 * other call goes to the real store. Counts batches and the records in each.
 */
class GatedStore final : public test::ForwardingStore {
 public:
  explicit GatedStore(store::Store& inner) : ForwardingStore(inner) {}

  void write_batch(const std::vector<store::ExecutionRow>& e, const std::vector<store::SandboxTouch>& t) override {
    std::unique_lock lock(mutex_);
    ++entered_;
    changed_.notify_all();
    changed_.wait(lock, [&] { return open_; });
    if (failures_left_ > 0) {
      --failures_left_;
      throw store::StoreUnavailable("database restarting (test)");
    }
    for (const auto& row : e) {
      if (row.id == refused_id_) throw store::StoreError("the database refuses " + row.id + " (test)");
    }
    batch_sizes_.push_back(e.size());
    lock.unlock();
    inner_.write_batch(e, t);
  }
  void close_gate() {
    std::lock_guard lock(mutex_);
    open_ = false;
  }
  void open_gate() {
    {
      std::lock_guard lock(mutex_);
      open_ = true;
    }
    changed_.notify_all();
  }
  /** Every batch that holds the execution `id` fails with StoreError, as a row a constraint refuses would. */
  void refuse(const std::string& id) {
    std::lock_guard lock(mutex_);
    refused_id_ = id;
  }
  void fail_next(int n) {
    std::lock_guard lock(mutex_);
    failures_left_ = n;
  }
  /** Waits until write_batch was entered `n` times in all. */
  void wait_entered(int n) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return entered_ >= n; });
  }
  std::vector<std::size_t> batch_sizes() {
    std::lock_guard lock(mutex_);
    return batch_sizes_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  bool open_ = true;
  int entered_ = 0;
  int failures_left_ = 0;
  std::string refused_id_;
  std::vector<std::size_t> batch_sizes_;
};

/** Inserts the workspace and sandbox rows the executions of these tests belong to. */
void seed_sandbox(store::Store& s, const std::string& id) {
  store::WorkspaceRow ws;
  ws.id = "ws-" + id;
  ws.owner = "alice";
  ws.volume = "v";
  s.insert_workspace(ws);
  store::SandboxRow row;
  row.id = id;
  row.owner = "alice";
  row.profile = "default";
  row.workspace_id = ws.id;
  s.insert_sandbox(row);
}

}  // namespace

// ---- execs through processes ----------------------------------------------------------------------------------

TEST_CASE("exec sends 1 MiB of code on stdin through a process, shell and python") {
  ServiceFixture f("{}", process_settings());
  RouteCountingDriver routes(*f.driver);
  core::SandboxService service(*f.store, routes, f.clock, process_settings());
  auto id = f.create();
  const std::string padding(1 << 20, 'x');

  auto shell = service.exec(f.owner, id, core::ExecKind::shell, "echo first\n# " + padding + "\necho last", 30s, "");
  CHECK(shell.output == "first\nlast\n");
  CHECK(shell.success);
  CHECK(shell.exit_code == 0);

  auto python =
      service.exec(f.owner, id, core::ExecKind::python, "print('a')\n# " + padding + "\nprint(2+3)\nexit(3)", 30s, "");
  CHECK(python.output == "a\n5\n");
  CHECK(python.exit_code == 3);
  CHECK_FALSE(python.success);

  CHECK(routes.process_starts == 2);
  CHECK(routes.execs == 0);
}

TEST_CASE("a shell command up to kShellArgvMax bytes goes in argv, a longer one or one with a NUL on stdin") {
  // Records how each shell exec reached the driver, on the exec path and on the process path.
  class Recording final : public test::ForwardingDriver {
   public:
    using ForwardingDriver::ForwardingDriver;
    std::vector<std::pair<std::vector<std::string>, std::string>> seen;  // argv, stdin (exec path)
    core::ExecResult exec(const std::string& h, const core::ExecRequest& r, const core::OutputSink& o,
                          const core::CancelToken* c) override {
      seen.emplace_back(r.argv, r.stdin_data);
      return inner_.exec(h, r, o, c);
    }
    std::unique_ptr<core::Process> process_start(const std::string& h, const core::ProcessSpec& s) override {
      seen.emplace_back(s.argv, "");
      return inner_.process_start(h, s);
    }
  };
  const bool via_processes = GENERATE(false, true);
  auto settings = via_processes ? process_settings() : test::test_settings();
  ServiceFixture f("{}", settings);
  Recording recording(*f.driver);
  core::SandboxService service(*f.store, recording, f.clock, settings);
  auto id = f.create();
  auto command_of = [](std::size_t bytes) {  // "echo ok" then a comment filling the size exactly
    std::string c = "echo ok\n#";
    c.append(bytes - c.size(), 'x');
    return c;
  };
  const std::string eval_stdin = "eval \"$(/bin/cat)\"";

  const std::string fits = command_of(core::kShellArgvMax);
  auto out = service.exec(f.owner, id, core::ExecKind::shell, fits, 30s, "");
  CHECK(out.output == "ok\n");
  REQUIRE_FALSE(recording.seen.empty());
  CHECK(recording.seen.back().first == std::vector<std::string>{"/bin/sh", "-c", "--", fits, "/bin/sh"});
  CHECK(recording.seen.back().second.empty());

  const std::string longer = command_of(core::kShellArgvMax + 1);
  out = service.exec(f.owner, id, core::ExecKind::shell, longer, 30s, "");
  CHECK(out.output == "ok\n");
  CHECK(recording.seen.back().first == std::vector<std::string>{"/bin/sh", "-c", eval_stdin});
  if (!via_processes) CHECK(recording.seen.back().second == longer);

  const std::string with_nul = std::string("echo ok #") + '\0';
  out = service.exec(f.owner, id, core::ExecKind::shell, with_nul, 30s, "");
  CHECK(recording.seen.back().first == std::vector<std::string>{"/bin/sh", "-c", eval_stdin});
  if (!via_processes) CHECK(recording.seen.back().second == with_nul);
}

TEST_CASE("exec output reaches the chunk sink in the order produced, numbered over both streams") {
  ServiceFixture f("{}", process_settings());
  auto id = f.create();
  std::vector<core::ExecChunk> chunks;
  std::vector<std::string> data;
  auto out = f.service->exec(f.owner, id, core::ExecKind::shell, "seq 3; echo oops >&2; seq 4 5; exit 4", 30s, "",
                             [&](const core::ExecChunk& c) {
                               chunks.push_back(c);
                               data.emplace_back(c.data);
                               return true;
                             });
  REQUIRE(chunks.size() == 6);
  for (std::size_t i = 0; i < chunks.size(); ++i)
    CHECK(chunks[i].sequence == i);
  CHECK(data == std::vector<std::string>{"1\n", "2\n", "3\n", "oops\n", "4\n", "5\n"});
  CHECK(chunks[3].stream == core::Stream::err);
  CHECK(chunks[4].stream == core::Stream::out);
  CHECK(chunks.front().at <= chunks.back().at);
  // The result is the same accumulation as without a sink.
  CHECK(out.output == "1\n2\n3\n4\n5\n");
  CHECK(out.error == "oops\n");
  CHECK(out.exit_code == 4);
}

TEST_CASE("an exec through a process times out like before: a result, no exit code, the process gone") {
  ServiceFixture f("{}", process_settings());  // fake clock: the process's timeout passes when the test advances it
  RouteCountingDriver routes(*f.driver);
  core::SandboxService service(*f.store, routes, f.clock, process_settings());
  auto id = f.create();
  service.exec(f.owner, id, core::ExecKind::shell, "true", std::nullopt, "");
  auto handle = handle_of(f, id);
  std::optional<core::ExecOutcome> outcome;
  std::promise<void> printed;
  std::thread caller([&, printed_once = std::make_shared<std::once_flag>()] {
    outcome = service.exec(f.owner, id, core::ExecKind::shell, "echo partial; hang", std::chrono::seconds(5), "",
                           [&](const core::ExecChunk&) {
                             std::call_once(*printed_once, [&] { printed.set_value(); });
                             return true;
                           });
  });
  // The timeout passes only once the program printed (advancing earlier could stop it before its echo).
  printed.get_future().wait();
  wait_for_running(f, handle, 1);
  f.fake_clock().advance(6s);
  caller.join();
  REQUIRE(outcome);
  CHECK(outcome->timed_out);
  CHECK_FALSE(outcome->exit_code);
  CHECK_FALSE(outcome->success);
  CHECK(outcome->output == "partial\n");
  CHECK(outcome->error == "execution timed out after 5s");
  CHECK(f.driver->session_stats(handle).pids == 1);  // nothing left running
  CHECK(routes.process_starts == 2);
  CHECK(routes.execs == 0);
}

TEST_CASE("an exec through a process is cancelled by shutdown and by a sink that refuses output") {
  ServiceFixture f("{}", process_settings(), std::make_shared<core::SystemClock>());
  auto id = f.create();
  f.shell(id, "true");
  auto handle = handle_of(f, id);

  SECTION("begin_shutdown cancels the running process: shutting_down, process killed") {
    std::optional<core::ErrorCode> code;
    std::thread caller(
        [&] { code = error_code_of([&] { f.service->exec(f.owner, id, core::ExecKind::shell, "hang", 120s, ""); }); });
    wait_for_running(f, handle, 1);
    f.service->begin_shutdown();
    caller.join();
    CHECK(code == core::ErrorCode::shutting_down);
    CHECK(f.driver->session_stats(handle).pids == 1);
  }
  SECTION("the chunk sink returning false ends the exec and kills the process") {
    int seen = 0;
    auto code = error_code_of([&] {
      f.service->exec(f.owner, id, core::ExecKind::shell, "echo one; echo two; hang", 120s, "",
                      [&](const core::ExecChunk&) { return ++seen < 1; });
    });
    CHECK(code == core::ErrorCode::internal);  // a cancelled driver call, as with Driver::exec
    CHECK(seen == 1);
    CHECK(f.driver->session_stats(handle).pids == 1);
  }
}

TEST_CASE("a session whose process_start is unsupported falls back to Driver::exec, and stays there") {
  ServiceFixture f("{}", process_settings());
  RouteCountingDriver routes(*f.driver, /*refuse_processes=*/true);
  core::SandboxService service(*f.store, routes, f.clock, process_settings());
  auto id = f.create();
  std::vector<std::string> chunks;
  auto first = service.exec(f.owner, id, core::ExecKind::shell, "echo one; echo two >&2", 30s, "",
                            [&](const core::ExecChunk& c) {
                              chunks.emplace_back(c.data);
                              return true;
                            });
  CHECK(first.output == "one\n");
  CHECK(first.error == "two\n");
  CHECK(chunks == std::vector<std::string>{"one\n", "two\n"});  // the sink works on the fallback path too
  auto second = service.exec(f.owner, id, core::ExecKind::python, "print(6*7)", 30s, "");
  CHECK(second.output == "42\n");
  CHECK(routes.process_starts == 1);  // asked once per session
  CHECK(routes.execs == 2);

  // A new session asks again.
  service.stop(f.owner, id);
  service.exec(f.owner, id, core::ExecKind::shell, "true", 30s, "");
  CHECK(routes.process_starts == 2);
}

// ---- the exec recorder ---------------------------------------------------------------------------------------

TEST_CASE("history sees an exec right after its answer although the recorder has not written it yet") {
  auto settings = process_settings();
  settings.exec_recorder.linger = 1h;  // only a flush writes: the history read must ask for it
  ServiceFixture f("{}", settings);
  auto id = f.create();
  auto out = f.shell(id, "echo recorded");
  CHECK(f.store->list_executions(id, "", 10, 0).second == 0);  // not yet in the database
  auto page = f.service->history(f.owner, id, "", 10, 0);
  REQUIRE(page.total == 1);
  CHECK(page.entries.front().id == out.execution_id);
  CHECK(page.entries.front().output == "recorded\n");
}

TEST_CASE("the recorder writes what is pending when it is destroyed (berthd's SIGTERM)") {
  auto settings = process_settings();
  settings.exec_recorder.linger = 1h;
  ServiceFixture f("{}", settings);
  auto id = f.create();
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    f.fake_clock().advance(1s);  // each end-of-call timer is later than the last (a touch never goes backwards)
    ids.push_back(f.shell(id, "echo " + std::to_string(i)).execution_id);
  }
  const auto before = f.store->get_sandbox(id)->version;
  CHECK(f.store->list_executions(id, "", 10, 0).second == 0);
  f.service.reset();  // the daemon's shutdown destroys the service before it closes the store
  auto [page, total] = f.store->list_executions(id, "", 10, 0);
  CHECK(total == 5);
  REQUIRE(page.size() == 5);
  CHECK(page.front().id == ids.back());
  CHECK(f.store->get_sandbox(id)->version > before);  // the coalesced end-of-call touch was written too
}

TEST_CASE("the recorder batches records that arrive while a write runs into one transaction") {
  ServiceFixture f("{}", process_settings());
  seed_sandbox(*f.store, "sandbox-batch");
  GatedStore gated(*f.store);
  core::ExecRecorder::Options options;
  options.linger = 0ms;
  core::ExecRecorder recorder(gated, options);
  gated.close_gate();
  recorder.record(recorder.reserve(), record_row("exec-first", "sandbox-batch"));
  gated.wait_entered(1);  // the writer holds the first record in a write
  for (int i = 0; i < 100; ++i)
    recorder.record(recorder.reserve(), record_row("exec-" + std::to_string(1000 + i), "sandbox-batch"));
  recorder.touch("sandbox-batch", store::TimePoint(std::chrono::seconds(1'900'000'000)));
  gated.open_gate();
  recorder.flush(60s);
  CHECK(gated.batch_sizes() == std::vector<std::size_t>{1, 100});
  CHECK(f.store->list_executions("sandbox-batch", "", 500, 0).second == 101);
  CHECK(f.store->get_sandbox("sandbox-batch")->idle_expires_at ==
        store::TimePoint(std::chrono::seconds(1'900'000'000)));
  auto stats = recorder.stats();
  CHECK(stats.batches == 2);
  CHECK(stats.records == 101);
  CHECK(stats.touches == 1);
  CHECK(stats.pending == 0);
}

TEST_CASE("the recorder's writer wakes for its first item and for a full batch, not for every item") {
  ServiceFixture f("{}", process_settings());
  seed_sandbox(*f.store, "sandbox-wake");
  GatedStore gated(*f.store);
  core::ExecRecorder::Options options;
  options.linger = std::chrono::hours(1);  // only a full batch (or a flush) can end the linger
  options.batch_max = 4;
  core::ExecRecorder recorder(gated, options);
  recorder.record(recorder.reserve(), record_row("exec-wake-0", "sandbox-wake"));  // the first item: wakes it
  // Let the writer reach its linger (were it not there yet, it would find the batch full and this test pass anyway).
  std::this_thread::sleep_for(100ms);
  recorder.touch("sandbox-wake", store::TimePoint(std::chrono::seconds(1'900'000'000)));
  for (int i = 1; i < 4; ++i)  // the fourth record fills the batch: only its wake-up ends the hour's linger
    recorder.record(recorder.reserve(), record_row("exec-wake-" + std::to_string(i), "sandbox-wake"));
  gated.wait_entered(1);  // (bounded by ctest's timeout: without that wake-up this waits the hour)
  recorder.flush(60s);    // the batch is in the write already: this waits for its commit
  CHECK(gated.batch_sizes() == std::vector<std::size_t>{4});
  CHECK(f.store->list_executions("sandbox-wake", "", 10, 0).second == 4);
  CHECK(f.store->get_sandbox("sandbox-wake")->idle_expires_at == store::TimePoint(std::chrono::seconds(1'900'000'000)));
}

TEST_CASE("a touch the writer is writing stays visible until it is written: no read sees the older timer between") {
  ServiceFixture f("{}", process_settings());
  seed_sandbox(*f.store, "sandbox-inflight");
  GatedStore gated(*f.store);
  core::ExecRecorder::Options options;
  options.linger = 0ms;
  core::ExecRecorder recorder(gated, options);
  const store::TimePoint at(std::chrono::seconds(1'900'000'000));
  gated.close_gate();
  recorder.touch("sandbox-inflight", at);
  gated.wait_entered(1);  // taken off the queue, not yet in the database (CI's sanitizer run failed in this window)
  CHECK_FALSE(f.store->get_sandbox("sandbox-inflight")->idle_expires_at);
  CHECK(recorder.pending_touch("sandbox-inflight") == at);
  gated.open_gate();
  recorder.flush(60s);
  CHECK(f.store->get_sandbox("sandbox-inflight")->idle_expires_at == at);
  CHECK_FALSE(recorder.pending_touch("sandbox-inflight"));
}

TEST_CASE("the recorder's queue is bounded: a stalled store turns into store_unavailable, never more memory") {
  ServiceFixture f("{}", process_settings());
  seed_sandbox(*f.store, "sandbox-bp");
  GatedStore gated(*f.store);
  core::ExecRecorder::Options options;
  options.capacity = 4;
  options.linger = 0ms;
  options.reserve_wait = 200ms;  // the store below stays stalled until the test opens it: "never", not "slow"
  core::ExecRecorder recorder(gated, options);
  gated.close_gate();
  for (int i = 0; i < 3; ++i)
    recorder.record(recorder.reserve(), record_row("exec-bp" + std::to_string(i), "sandbox-bp"));
  auto held = recorder.reserve();  // the fourth place: reserved by an exec still running
  CHECK_THROWS_AS(recorder.reserve(), store::StoreUnavailable);
  CHECK(recorder.stats().max_pending == 4);
  CHECK_THROWS_AS(recorder.flush(200ms), store::StoreUnavailable);

  gated.open_gate();
  recorder.record(std::move(held), record_row("exec-bp3", "sandbox-bp"));
  recorder.flush(60s);
  CHECK(f.store->list_executions("sandbox-bp", "", 10, 0).second == 4);
  CHECK_NOTHROW(recorder.reserve());  // room again
  CHECK(recorder.stats().max_pending == 4);
}

TEST_CASE("a store outage loses no record: the failed batch is retried in order") {
  ServiceFixture f("{}", process_settings());
  seed_sandbox(*f.store, "sandbox-out");
  GatedStore gated(*f.store);
  core::ExecRecorder::Options options;
  options.linger = 0ms;
  core::ExecRecorder recorder(gated, options);
  gated.fail_next(2);
  for (int i = 0; i < 10; ++i)
    recorder.record(recorder.reserve(), record_row("exec-out" + std::to_string(i), "sandbox-out"));
  recorder.flush(60s);
  auto [page, total] = f.store->list_executions("sandbox-out", "", 20, 0);
  CHECK(total == 10);
  CHECK(recorder.stats().failures == 2);
  CHECK(recorder.stats().pending == 0);
}

TEST_CASE("a row the database refuses costs only itself: the rest of its batch is written, it is dropped and counted") {
  ServiceFixture f("{}", process_settings());
  seed_sandbox(*f.store, "sandbox-ok");
  GatedStore gated(*f.store);
  core::ExecRecorder::Options options;
  options.linger = 0ms;
  core::ExecRecorder recorder(gated, options);
  gated.close_gate();  // one batch: the good rows and the bad one together
  recorder.record(recorder.reserve(), record_row("exec-ok0", "sandbox-ok"));
  // A row the database refuses (a StoreError, not an outage), as a constraint would refuse it on every retry.
  gated.refuse("exec-orphan");
  recorder.record(recorder.reserve(), record_row("exec-orphan", "sandbox-ok"));
  recorder.record(recorder.reserve(), record_row("exec-ok1", "sandbox-ok"));
  const auto timer = std::chrono::system_clock::time_point(std::chrono::seconds(1'800'000'000)) + 30min;
  recorder.touch("sandbox-ok", timer);
  gated.open_gate();
  recorder.flush(60s);  // returns: nothing is stuck behind the refused row
  auto [page, total] = f.store->list_executions("sandbox-ok", "", 10, 0);
  CHECK(total == 2);
  for (const auto& row : page)
    CHECK(row.id != "exec-orphan");
  CHECK(f.store->get_sandbox("sandbox-ok")->idle_expires_at == timer);
  const auto stats = recorder.stats();
  CHECK(stats.dropped == 1);
  CHECK(stats.pending == 0);
  recorder.record(recorder.reserve(), record_row("exec-ok2", "sandbox-ok"));  // later records go on as before
  recorder.flush(60s);
  CHECK(f.store->list_executions("sandbox-ok", "", 10, 0).second == 3);
}

TEST_CASE("a process whose session is stopped mid-call ends as killed (137), is not run again, and the session goes") {
  ServiceFixture f(R"({"killed_exec_conflict": true})", process_settings(), std::make_shared<core::SystemClock>());
  RouteCountingDriver routes(*f.driver);
  core::SandboxService service(*f.store, routes, f.clock, process_settings());
  auto id = f.create();
  service.exec(f.owner, id, core::ExecKind::shell, "true", std::nullopt, "");
  auto handle = handle_of(f, id);
  std::optional<core::ExecOutcome> outcome;
  std::promise<void> printed;
  std::thread caller([&, printed_once = std::make_shared<std::once_flag>()] {
    outcome =
        service.exec(f.owner, id, core::ExecKind::shell, "echo started; hang", 30s, "", [&](const core::ExecChunk&) {
          std::call_once(*printed_once, [&] { printed.set_value(); });
          return true;
        });
  });
  // Stop only once the host holds the echo: output still in the driver when its session ends is not promised.
  printed.get_future().wait();
  wait_for_running(f, handle, 1);
  service.stop(f.owner, id);
  caller.join();
  REQUIRE(outcome);
  CHECK(outcome->exit_code == 137);
  CHECK(outcome->output == "started\n");
  CHECK(routes.process_starts == 2);  // "true", then the interrupted one, never a repeat
  CHECK(routes.execs == 0);
  CHECK(f.containers_of(id) == 0);
  CHECK(service.exec(f.owner, id, core::ExecKind::shell, "echo next", 30s, "").output == "next\n");
}
