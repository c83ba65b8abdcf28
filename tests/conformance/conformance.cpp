// berth-driver-conformance: runs the SDK contract (sdk/include/berth/driver.h) against any driver library.
//
//   berth-driver-conformance <driver.so> [config.json | '{...}'] [Catch2 options...]
//
// The driver is loaded through the host's real plugin loader. Sessions use the image named by
// $BERTH_CONFORMANCE_IMAGE (default berth/python:3.11); the image needs /bin/sh, /usr/bin/env, coreutils, sleep and
// python3 (with ctypes and a libc that has renameat2, for the [hostile] race).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "core/clock.hpp"
#include "core/log.hpp"
#include "plugin/driver_library.hpp"
#include "support/hostile.hpp"

namespace {

using namespace berth;
using core::DriverErrc;
using core::DriverError;
using namespace std::chrono_literals;

std::string g_driver_path;
std::string g_config_json = "{}";
std::shared_ptr<plugin::DriverLibrary> g_library;

std::string image() {
  const char* env = std::getenv("BERTH_CONFORMANCE_IMAGE");
  return env != nullptr && *env != '\0' ? env : "berth/python:3.11";
}

/** A unique suffix per test run so that runs against a shared engine never collide. */
std::string unique(const std::string& prefix) {
  static std::atomic<int> counter{0};
  static const std::string run = [] {
    std::random_device rd;
    std::ostringstream os;
    os << std::hex << (rd() & 0xffffff);
    return os.str();
  }();
  return prefix + "-" + run + "-" + std::to_string(counter++);
}

std::unique_ptr<core::Driver> make_driver() {
  return g_library->configure(g_config_json, std::make_shared<core::SystemClock>());
}

DriverErrc error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const DriverError& e) {
    return e.code();
  }
  FAIL("expected a DriverError");
  return DriverErrc::internal;
}

struct Output {
  std::string out;
  std::string err;
  int chunks = 0;
  core::ExecResult result;
};

core::ExecRequest sh(const std::string& script, std::chrono::milliseconds timeout = 20s) {
  core::ExecRequest rq;
  rq.argv = {"/bin/sh", "-c", script};
  rq.timeout = timeout;
  return rq;
}

Output run(core::Driver& d, const std::string& handle, const core::ExecRequest& rq,
           const core::CancelToken* cancel = nullptr) {
  Output o;
  o.result = d.exec(
      handle, rq,
      [&](core::Stream s, std::string_view data) {
        (s == core::Stream::out ? o.out : o.err).append(data);
        ++o.chunks;
        return true;
      },
      cancel);
  return o;
}

/** A session on a fresh volume, removed (with its volume) at scope exit. */
struct Sandbox {
  core::Driver& driver;
  std::string volume;
  std::string handle;
  core::Labels labels;

  explicit Sandbox(core::Driver& d, core::Labels extra = {}, std::map<std::string, std::string> env = {}) : driver(d) {
    volume = unique("berth-conf-vol");
    labels = {{"berth.conformance", "true"}, {"berth.test", unique("t")}};
    labels.insert(extra.begin(), extra.end());
    driver.volume_create(volume, labels);
    core::SessionSpec spec;
    spec.session_id = unique("conf");
    spec.image = image();
    spec.labels = labels;
    spec.env = {{"BERTH_CONF", "from-spec"}};
    spec.env.insert(env.begin(), env.end());
    spec.workspace_volume = volume;
    spec.memory_bytes = 256ll << 20;
    spec.pids_limit = 128;
    spec.nano_cpus = 1'000'000'000;
    spec.user = "1000:1000";
    auto info = driver.session_create(spec);
    handle = info.handle;
    REQUIRE(info.state == core::SessionState::running);
    REQUIRE_FALSE(handle.empty());
  }
  ~Sandbox() {
    try {
      driver.session_remove(handle);
    } catch (const DriverError&) {
    }
    try {
      driver.volume_remove(volume);
    } catch (const DriverError&) {
    }
  }
};

std::string random_bytes(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s)
    c = static_cast<char>(rng() & 0xff);
  return s;
}

void put(core::Driver& d, const std::string& h, const std::string& path, const std::string& bytes,
         std::uint32_t mode = 0644) {
  std::size_t offset = 0;
  d.file_put(h, path, mode, bytes.size(), [&](std::uint8_t* buf, std::size_t cap) -> std::int64_t {
    std::size_t n = std::min(cap, bytes.size() - offset);
    std::memcpy(buf, bytes.data() + offset, n);
    offset += n;
    return static_cast<std::int64_t>(n);
  });
}

/** True for drivers that run real processes (every driver but the in-process fake). */
bool real_processes() {
  return g_library->identity().name != "fake";
}

/** Whether CI=true: there every in-tree driver offers every optional feature, so a skipped case is a hole. */
bool in_ci() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string(ci) == "true";
}

/** Whether the driver offers interactive processes (optional for a third-party driver; FAILs under CI=true). */
bool offers_processes(core::Driver& d) {
  if (d.supports_processes()) return true;
  if (in_ci()) FAIL("CI=true: the driver offers no interactive processes (is berth-agent found?)");
  return false;
}

/** Waits (bounded) until the session is no longer running; true if it stopped. Not a timing assertion. */
bool wait_not_running(core::Driver& d, const std::string& h) {
  for (int i = 0; i < 200; ++i) {
    try {
      if (d.session_inspect(h).state != core::SessionState::running) return true;
    } catch (const DriverError& e) {
      if (e.code() == DriverErrc::not_found) return true;
      throw;
    }
    std::this_thread::sleep_for(50ms);
  }
  return false;
}

std::string get(core::Driver& d, const std::string& h, const std::string& path) {
  std::string out;
  d.file_get(h, path, [&](std::string_view data) {
    out.append(data);
    return true;
  });
  return out;
}

}  // namespace

TEST_CASE("identity is well-formed", "[conformance][identity]") {
  const auto& id = g_library->identity();
  CHECK_FALSE(id.name.empty());
  CHECK_FALSE(id.version.empty());
  CHECK(id.abi_major == BERTH_ABI_VERSION_MAJOR);
  CHECK(id.abi_minor <= BERTH_ABI_VERSION_MINOR);
}

TEST_CASE("several instances live in one process", "[conformance][identity]") {
  auto a = make_driver();
  auto b = make_driver();
  auto va = unique("berth-conf-vol");
  auto vb = unique("berth-conf-vol");
  a->volume_create(va, {});
  b->volume_create(vb, {});
  CHECK(a->volume_exists(va));  // both usable independently
  CHECK(b->volume_exists(vb));
  a->volume_remove(va);
  b->volume_remove(vb);
  CHECK_FALSE(a->volume_exists(va));
  CHECK_FALSE(b->volume_exists(vb));
}

TEST_CASE("volumes: create, exists, conflict, remove, not found", "[conformance][volumes]") {
  auto d = make_driver();
  auto volume = unique("berth-conf-vol");
  CHECK_FALSE(d->volume_exists(volume));
  d->volume_create(volume, {{"berth.conformance", "true"}});
  CHECK(d->volume_exists(volume));
  CHECK(error_of([&] { d->volume_create(volume, {}); }) == DriverErrc::conflict);
  d->volume_remove(volume);
  CHECK_FALSE(d->volume_exists(volume));
  CHECK(error_of([&] { d->volume_remove(volume); }) == DriverErrc::not_found);
}

TEST_CASE("sessions: lifecycle, idempotent stop, NOT_FOUND semantics", "[conformance][sessions]") {
  auto d = make_driver();
  std::string handle;
  {
    Sandbox sb(*d);
    handle = sb.handle;
    CHECK(d->session_inspect(handle).state == core::SessionState::running);

    d->session_stop(handle, 1s);
    auto stopped = d->session_inspect(handle).state;
    CHECK((stopped == core::SessionState::exited || stopped == core::SessionState::missing));
    CHECK_NOTHROW(d->session_stop(handle, 1s));  // stopping a stopped session is fine

    d->session_remove(handle);
    CHECK(d->session_inspect(handle).state == core::SessionState::missing);
    CHECK(error_of([&] { d->session_remove(handle); }) == DriverErrc::not_found);
    CHECK(d->volume_exists(sb.volume));  // removing a session never removes its workspace
  }
  CHECK(error_of([&] { d->session_stop("berth-no-such-session-handle", 1s); }) == DriverErrc::not_found);
  CHECK(d->session_inspect("berth-no-such-session-handle").state == core::SessionState::missing);
  CHECK(error_of([&] { run(*d, "berth-no-such-session-handle", sh("true")); }) == DriverErrc::not_found);
}

TEST_CASE("sessions: list by label returns exactly the matching sessions", "[conformance][sessions]") {
  auto d = make_driver();
  Sandbox a(*d, {{"berth.group", "a"}});
  Sandbox b(*d, {{"berth.group", "b"}});
  auto listed = d->session_list({{"berth.test", a.labels.at("berth.test")}});
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].handle == a.handle);
  CHECK(listed[0].labels.at("berth.group") == "a");
  auto both = d->session_list({{"berth.conformance", "true"}});
  auto has = [&](const std::string& h) {
    return std::any_of(both.begin(), both.end(), [&](const auto& l) { return l.handle == h; });
  };
  CHECK(has(a.handle));
  CHECK(has(b.handle));
  CHECK(d->session_list({{"berth.test", "no-such-value"}}).empty());
}

TEST_CASE("exec: output, exit codes, stderr, stdin, env, cwd", "[conformance][exec]") {
  auto d = make_driver();
  Sandbox sb(*d);

  auto hello = run(*d, sb.handle, sh("echo hello"));
  CHECK(hello.out == "hello\n");
  CHECK(hello.err.empty());
  CHECK(hello.result.exit_code == 0);
  CHECK_FALSE(hello.result.timed_out);

  auto three = run(*d, sb.handle, sh("echo out; echo oops >&2; exit 3"));
  CHECK(three.out == "out\n");
  CHECK(three.err == "oops\n");
  CHECK(three.result.exit_code == 3);

  auto rq = sh("cat");
  rq.stdin_data = std::string("line one\nline\0two\n", 18);
  CHECK(run(*d, sb.handle, rq).out == rq.stdin_data);

  auto env = sh("echo $BERTH_CONF $BERTH_REQ");
  env.env = {{"BERTH_REQ", "from-request"}};
  CHECK(run(*d, sb.handle, env).out == "from-spec from-request\n");

  CHECK(run(*d, sb.handle, sh("pwd")).out == "/workspace\n");
  CHECK(run(*d, sb.handle, sh("mkdir -p sub && true")).result.exit_code == 0);
  auto in_sub = sh("pwd");
  in_sub.cwd = "sub";
  CHECK(run(*d, sb.handle, in_sub).out == "/workspace/sub\n");

  core::ExecRequest py;
  py.argv = {"python3", "-c", "print(1+2)"};
  py.timeout = 20s;
  CHECK(run(*d, sb.handle, py).out == "3\n");
}

TEST_CASE("exec: output is streamed in chunks", "[conformance][exec]") {
  auto d = make_driver();
  if (!d->has_capability(BERTH_CAP_EXEC_STREAM)) return;
  Sandbox sb(*d);
  auto o = run(*d, sb.handle, sh("echo a; sleep 0.3; echo b; sleep 0.3; echo c"));
  CHECK(o.out == "a\nb\nc\n");
  CHECK(o.chunks >= 2);
}

TEST_CASE("exec: timeout kills the process, not the session", "[conformance][exec]") {
  auto d = make_driver();
  Sandbox sb(*d);
  auto t0 = std::chrono::steady_clock::now();
  auto o = run(*d, sb.handle, sh("echo started; sleep 600", 1000ms));
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(o.result.timed_out);
  CHECK(o.out == "started\n");
  CHECK(took < 120s);  // ended by the timeout, long before the sleep would
  CHECK(d->session_inspect(sb.handle).state == core::SessionState::running);
  CHECK(run(*d, sb.handle, sh("echo still-here")).out == "still-here\n");
}

TEST_CASE("exec: a cancel token stops the process", "[conformance][exec]") {
  auto d = make_driver();
  if (!d->has_capability(BERTH_CAP_EXEC_CANCEL)) return;
  Sandbox sb(*d);
  core::CancelToken token;
  std::thread canceller([&] {
    std::this_thread::sleep_for(500ms);
    token.cancel();
  });
  auto t0 = std::chrono::steady_clock::now();
  CHECK(error_of([&] { run(*d, sb.handle, sh("sleep 600"), &token); }) == DriverErrc::cancelled);
  canceller.join();
  CHECK(std::chrono::steady_clock::now() - t0 < 120s);  // ended by the cancel, long before the sleep would
  CHECK(run(*d, sb.handle, sh("echo after-cancel")).out == "after-cancel\n");

  // A sink that refuses more output cancels too.
  CHECK(error_of([&] {
          d->exec(
              sb.handle, sh("echo one; sleep 30"), [](core::Stream, std::string_view) { return false; }, nullptr);
        }) == DriverErrc::cancelled);
}

TEST_CASE("files: round trip of text, binary and empty files", "[conformance][files]") {
  auto d = make_driver();
  Sandbox sb(*d);
  put(*d, sb.handle, "hello.txt", "hello\n");
  CHECK(get(*d, sb.handle, "hello.txt") == "hello\n");

  auto binary = random_bytes(1 << 20, 7);
  put(*d, sb.handle, "data/nested/blob.bin", binary);
  CHECK(get(*d, sb.handle, "data/nested/blob.bin") == binary);

  put(*d, sb.handle, "empty", "");
  CHECK(get(*d, sb.handle, "empty").empty());

  put(*d, sb.handle, "hello.txt", "replaced");
  CHECK(get(*d, sb.handle, "hello.txt") == "replaced");

  // The process inside sees the same bytes.
  CHECK(run(*d, sb.handle, sh("cat hello.txt")).out == "replaced");
}

TEST_CASE("files: listing, modes, removal, errors", "[conformance][files]") {
  auto d = make_driver();
  Sandbox sb(*d);
  put(*d, sb.handle, "dir/a.txt", "12345");
  put(*d, sb.handle, "dir/run.sh", "#!/bin/sh\necho ran\n", 0755);
  auto entries = d->dir_list(sb.handle, "dir");
  std::sort(entries.begin(), entries.end(), [](const auto& x, const auto& y) { return x.name < y.name; });
  REQUIRE(entries.size() == 2);
  CHECK(entries[0].name == "a.txt");
  CHECK(entries[0].type == core::EntryType::file);
  CHECK(entries[0].size == 5);
  CHECK(entries[1].name == "run.sh");
  CHECK((entries[1].mode & 0777) == 0755);
  CHECK(run(*d, sb.handle, sh("./dir/run.sh")).out == "ran\n");

  auto root = d->dir_list(sb.handle, ".");
  auto dir = std::find_if(root.begin(), root.end(), [](const auto& e) { return e.name == "dir"; });
  REQUIRE(dir != root.end());
  CHECK(dir->type == core::EntryType::directory);

  d->path_remove(sb.handle, "dir/a.txt");
  CHECK(error_of([&] { get(*d, sb.handle, "dir/a.txt"); }) == DriverErrc::not_found);
  d->path_remove(sb.handle, "dir");
  CHECK(error_of([&] { d->dir_list(sb.handle, "dir"); }) == DriverErrc::not_found);
  CHECK(error_of([&] { d->path_remove(sb.handle, "dir"); }) == DriverErrc::not_found);

  put(*d, sb.handle, "plain", "x");
  CHECK(error_of([&] { d->dir_list(sb.handle, "plain"); }) == DriverErrc::invalid_argument);
  d->path_remove(sb.handle, "plain");
}

TEST_CASE("files: paths outside the workspace are refused", "[conformance][files]") {
  auto d = make_driver();
  Sandbox sb(*d);
  for (const std::string& bad :
       std::vector<std::string>{"/etc/passwd", "../etc/passwd", "a/../../etc/passwd", std::string("a\0b", 3)}) {
    INFO("path " << bad);
    CHECK(error_of([&] { get(*d, sb.handle, bad); }) == DriverErrc::invalid_argument);
    CHECK(error_of([&] { put(*d, sb.handle, bad, "x"); }) == DriverErrc::invalid_argument);
  }
}

TEST_CASE("files: the workspace outlives the session", "[conformance][files]") {
  auto d = make_driver();
  Sandbox sb(*d);
  put(*d, sb.handle, "keep.txt", "kept");
  d->session_stop(sb.handle, 1s);
  d->session_remove(sb.handle);
  core::SessionSpec spec;
  spec.session_id = unique("conf");
  spec.image = image();
  spec.labels = sb.labels;
  spec.workspace_volume = sb.volume;
  spec.user = "1000:1000";
  sb.handle = d->session_create(spec).handle;
  CHECK(get(*d, sb.handle, "keep.txt") == "kept");
}

TEST_CASE("concurrency: parallel execs on one session and parallel session creation", "[conformance][threads]") {
  auto d = make_driver();
  Sandbox sb(*d);
  constexpr int kThreads = 8;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      try {
        auto o = run(*d, sb.handle, sh("echo " + std::to_string(i)));
        if (o.out == std::to_string(i) + "\n" && o.result.exit_code == 0) ++ok;
      } catch (const std::exception& e) {
        std::cerr << "thread " << i << ": " << e.what() << "\n";
      }
    });
  }
  for (auto& t : threads)
    t.join();
  CHECK(ok == kThreads);

  std::vector<std::unique_ptr<Sandbox>> boxes(4);
  std::atomic<int> created{0};
  threads.clear();
  for (std::size_t i = 0; i < boxes.size(); ++i) {
    threads.emplace_back([&, i] {
      try {
        boxes[i] = std::make_unique<Sandbox>(*d);
        ++created;
      } catch (const std::exception& e) {
        std::cerr << "create " << i << ": " << e.what() << "\n";
      }
    });
  }
  for (auto& t : threads)
    t.join();
  CHECK(created == 4);
  std::set<std::string> handles;
  for (auto& b : boxes) {
    if (b) handles.insert(b->handle);
  }
  CHECK(handles.size() == boxes.size());
}

TEST_CASE("stats: reported for a running session when advertised", "[conformance][stats]") {
  auto d = make_driver();
  Sandbox sb(*d);
  if (!d->has_capability(BERTH_CAP_STATS)) {
    CHECK(error_of([&] { d->session_stats(sb.handle); }) == DriverErrc::unsupported);
    return;
  }
  auto st = d->session_stats(sb.handle);
  CHECK(st.pids >= 1);
}

TEST_CASE("images: the session image exists, an image nobody built does not (ABI 1.2, optional)",
          "[conformance][images]") {
  auto d = make_driver();
  if (g_library->api().image_exists == nullptr) {
    CHECK_FALSE(d->image_exists(image()).has_value());
    return;
  }
  CHECK(d->image_exists(image()) == std::optional<bool>(true));
  // Never pulled: the answer for an absent image is "no", not a download.
  CHECK(d->image_exists("berth-conformance/absent:0") == std::optional<bool>(false));
  CHECK(d->image_exists("berth-conformance/absent:0") == std::optional<bool>(false));
}

TEST_CASE("stats: a driver that reports disk usage sees the workspace grow after a write", "[conformance][stats]") {
  auto d = make_driver();
  Sandbox sb(*d);
  if (!d->has_capability(BERTH_CAP_STATS)) return;
  const auto before = d->session_stats(sb.handle);
  constexpr std::uint64_t kWrite = 4u << 20;
  put(*d, sb.handle, "disk-probe.bin", std::string(kWrite, 'x'));
  const auto after = d->session_stats(sb.handle);
  if (before.workspace_bytes == 0 && after.workspace_bytes == 0) {
    // Optional for a third-party driver; in CI (the in-tree drivers, which all report it) a silent pass is a hole.
    if (in_ci()) FAIL("CI=true: the driver reports no workspace usage");
    WARN("the driver reports no workspace usage (ABI 1.2 disk fields): disk limits cannot be enforced with it");
    return;
  }
  // Allocated blocks: at least the bytes written (a filesystem may round up, never down for a dense file).
  CHECK(after.workspace_bytes >= before.workspace_bytes + kWrite);
  d->path_remove(sb.handle, "disk-probe.bin");
  CHECK(d->session_stats(sb.handle).workspace_bytes < after.workspace_bytes);
}

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]).rfind('-', 0) == 0) {
    std::cerr << "usage: berth-driver-conformance <driver.so> [config.json | '{...}'] [Catch2 options]\n";
    return 2;
  }
  g_driver_path = argv[1];
  int consumed = 2;
  if (argc > 2 && std::string(argv[2]).rfind('-', 0) != 0) {
    std::string arg = argv[2];
    if (!arg.empty() && arg[0] == '{') {
      g_config_json = arg;
    } else {
      std::ifstream in(arg);
      if (!in) {
        std::cerr << "berth-driver-conformance: cannot read " << arg << "\n";
        return 2;
      }
      std::stringstream ss;
      ss << in.rdbuf();
      g_config_json = ss.str();
    }
    consumed = 3;
  }
  berth::log::init(berth::log::Format::text, berth::log::Level::warn);
  try {
    g_library = berth::plugin::DriverLibrary::open(g_driver_path);
  } catch (const std::exception& e) {
    std::cerr << "berth-driver-conformance: " << e.what() << "\n";
    return 2;
  }
  std::vector<char*> rest{argv[0]};
  for (int i = consumed; i < argc; ++i)
    rest.push_back(argv[i]);
  std::cout << "driver " << g_library->identity().name << " " << g_library->identity().version << " (ABI "
            << g_library->identity().abi_major << "." << g_library->identity().abi_minor << ") image " << image()
            << "\n";
  return Catch::Session().run(static_cast<int>(rest.size()), rest.data());
}

TEST_CASE("exec: code far beyond the argv limit runs from stdin", "[conformance][exec]") {
  auto d = make_driver();
  Sandbox sb(*d);
  for (std::size_t size : {std::size_t{131072}, std::size_t{1000000}}) {
    INFO("code bytes " << size);
    // Python: `python3 -` reads the program from stdin; a long comment pads it to the exact size.
    std::string py = "print('py-ok')\n#";
    py += std::string(size - py.size(), 'x');
    core::ExecRequest rq;
    rq.argv = {"python3", "-"};
    rq.stdin_data = py;
    rq.timeout = 60s;
    auto o = run(*d, sb.handle, rq);
    CHECK(o.result.exit_code == 0);
    CHECK(o.out == "py-ok\n");
    // Shell: the command is read with cat and evaluated.
    std::string shell = "echo sh-ok\n#";
    shell += std::string(size - shell.size(), 'y');
    auto s2 = sh("eval \"$(cat)\"", 60s);
    s2.stdin_data = shell;
    auto o2 = run(*d, sb.handle, s2);
    CHECK(o2.result.exit_code == 0);
    CHECK(o2.out == "sh-ok\n");
  }
  if (real_processes()) {  // the program itself sees EOF on its stdin
    core::ExecRequest rq;
    rq.argv = {"python3", "-"};
    rq.stdin_data = "import sys\nprint(len(sys.stdin.read()))\n";
    rq.timeout = 20s;
    CHECK(run(*d, sb.handle, rq).out == "0\n");
    auto s3 = sh("eval \"$(cat)\"");
    s3.stdin_data = "wc -c";
    CHECK(run(*d, sb.handle, s3).out == "0\n");
  }
}

TEST_CASE("exec: argv and cwd carry any byte but NUL", "[conformance][exec]") {
  auto d = make_driver();
  if (!real_processes()) return;  // the fake's mini shell has no printf
  Sandbox sb(*d);
  std::string odd = "a\\b \x01\x7f\x80\xff\xc3\xa9 $(x) '\"\n";
  core::ExecRequest rq;
  rq.argv = {"/bin/sh", "-c", "printf '%s' \"$1\"", "sh", odd};
  rq.timeout = 20s;
  CHECK(run(*d, sb.handle, rq).out == odd);
  std::string dir = "d\xff\xc3\xa9";
  put(*d, sb.handle, dir + "/f", "x");
  auto in_dir = sh("pwd");
  in_dir.cwd = dir;
  CHECK(run(*d, sb.handle, in_dir).out == "/workspace/" + dir + "\n");
}

TEST_CASE("exec: timeout and cancel leave no process of the exec, however it detached", "[conformance][exec]") {
  auto d = make_driver();
  if (!real_processes()) return;  // the fake has no processes to leave behind
  Sandbox sb(*d);
  // Each child hides differently: no environment, a new session, nohup, a double fork, and all at once.
  const std::string detach =
      "env -i sleep 3001 & setsid sleep 3002 & nohup sleep 3003 >/dev/null 2>&1 & (sleep 3004 &); "
      "(env -i setsid sh -c 'sleep 3005 &' &); ";
  const std::string survivors =
      "for f in /proc/[0-9]*/cmdline; do tr '\\000' ' ' <\"$f\"; echo; done 2>/dev/null | grep -c '^sleep 300[0-9]'";
  auto o = run(*d, sb.handle, sh(detach + "echo started; sleep 60", 1500ms));
  CHECK(o.result.timed_out);
  CHECK(o.out == "started\n");
  CHECK(run(*d, sb.handle, sh(survivors)).out == "0\n");

  if (d->has_capability(BERTH_CAP_EXEC_CANCEL)) {
    core::CancelToken token;
    std::thread canceller([&] {
      std::this_thread::sleep_for(1000ms);
      token.cancel();
    });
    CHECK(error_of([&] { run(*d, sb.handle, sh(detach + "sleep 60"), &token); }) == DriverErrc::cancelled);
    canceller.join();
    CHECK(run(*d, sb.handle, sh(survivors)).out == "0\n");
  }
  CHECK(d->session_inspect(sb.handle).state == core::SessionState::running);
}

TEST_CASE("exec and files on a dead session are NOT_FOUND (nothing ran), never a result", "[conformance][exec]") {
  auto d = make_driver();
  Sandbox sb(*d);
  put(*d, sb.handle, "kept.txt", "kept");
  // kill -9 -1 kills every process the session user may signal: the session's main process too.
  auto killed = run(*d, sb.handle, sh(real_processes() ? "kill -9 -1; sleep 5" : "__fake crash-session"));
  CHECK(killed.result.exit_code != 0);
  REQUIRE(wait_not_running(*d, sb.handle));
  Output after;
  CHECK(error_of([&] { after = run(*d, sb.handle, sh("echo should-not-run")); }) == DriverErrc::not_found);
  CHECK(after.out.empty());
  CHECK(after.err.empty());  // the engine's message is never delivered as the program's output
  if (real_processes()) {
    CHECK(error_of([&] { get(*d, sb.handle, "kept.txt"); }) == DriverErrc::not_found);
    CHECK(error_of([&] { put(*d, sb.handle, "new.txt", "x"); }) == DriverErrc::not_found);
    CHECK(error_of([&] { d->dir_list(sb.handle, "."); }) == DriverErrc::not_found);
  }
}

TEST_CASE("files: names of any byte but NUL and '/' round-trip exactly", "[conformance][files]") {
  auto d = make_driver();
  Sandbox sb(*d);
  // Every byte 1-255 (but '/') inside some name, eight bytes a name (tests/engine gives each byte its own names).
  std::vector<std::string> names;
  std::string group;
  for (int b = 1; b < 256; ++b) {
    if (b != '/') group += static_cast<char>(b);
    if (group.size() == 8 || b == 255) {
      names.push_back("n" + group + "x");
      group.clear();
    }
  }
  for (const char* special : {"-rf", "--", " lead", "trail ", "q'\"`", "$(id)", "*", "..x", "...", "\n", "\xff\xfe",
                              "\xc3\xa9t\xc3\xa9", "\xf0\x9f\x9a\x80", "a\\0101b", "%s%n"}) {
    names.emplace_back(special);
  }
  names.push_back(std::string(255, 'L'));
  names.push_back(std::string(253, 'M') + "\xc3\xa9");  // 255 bytes, multi-byte at the end
  std::mutex mutex;
  std::vector<std::string> failures;
  std::vector<std::thread> threads;
  constexpr int kThreads = 4;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (std::size_t i = t; i < names.size(); i += kThreads) {
        const std::string path = "names/" + names[i];
        std::string what;
        try {
          put(*d, sb.handle, path, "content of " + names[i]);
          if (get(*d, sb.handle, path) != "content of " + names[i]) what = "wrong content";
        } catch (const std::exception& e) {
          what = e.what();
        }
        if (!what.empty()) {
          std::lock_guard lock(mutex);
          failures.push_back("name #" + std::to_string(i) + ": " + what);
        }
      }
    });
  }
  for (auto& th : threads)
    th.join();
  for (const auto& f : failures)
    UNSCOPED_INFO(f);
  CHECK(failures.empty());
  auto listed = d->dir_list(sb.handle, "names");
  std::set<std::string> got;
  for (const auto& e : listed)
    got.insert(e.name);
  CHECK(got == std::set<std::string>(names.begin(), names.end()));
  for (std::size_t i = 0; i < names.size(); i += 17)
    d->path_remove(sb.handle, "names/" + names[i]);
  CHECK(d->dir_list(sb.handle, "names").size() == names.size() - (names.size() + 16) / 17);

  // Limits: a component of 256 bytes or a path over 4000 bytes is refused, not truncated.
  CHECK(error_of([&] { put(*d, sb.handle, std::string(256, 'x'), "x"); }) == DriverErrc::invalid_argument);
  std::string deep;
  while (deep.size() <= 4000)
    deep += std::string(200, 'd') + "/";
  CHECK(error_of([&] { put(*d, sb.handle, deep + "f", "x"); }) == DriverErrc::invalid_argument);
  std::string long_ok;
  while (long_ok.size() < 3700)
    long_ok += std::string(250, 'e') + "/";
  put(*d, sb.handle, long_ok + "f", "deep");
  CHECK(get(*d, sb.handle, long_ok + "f") == "deep");
}

TEST_CASE("files: a failed or short upload leaves nothing behind", "[conformance][files]") {
  auto d = make_driver();
  Sandbox sb(*d);
  put(*d, sb.handle, "keep.txt", "old");
  // The source ends early: INVALID_ARGUMENT, the old content stays.
  int calls = 0;
  CHECK(error_of([&] {
          d->file_put(sb.handle, "keep.txt", 0644, 100, [&calls](std::uint8_t* buf, std::size_t) -> std::int64_t {
            if (calls++ > 0) return 0;
            buf[0] = 'n';
            return 1;
          });
        }) == DriverErrc::invalid_argument);
  CHECK(get(*d, sb.handle, "keep.txt") == "old");
  // The source fails: CANCELLED, no file appears.
  CHECK(error_of([&] {
          d->file_put(sb.handle, "fresh.txt", 0644, 100, [](std::uint8_t*, std::size_t) -> std::int64_t { return -1; });
        }) == DriverErrc::cancelled);
  CHECK(error_of([&] { get(*d, sb.handle, "fresh.txt"); }) == DriverErrc::not_found);
  std::set<std::string> names;
  for (const auto& e : d->dir_list(sb.handle, "."))
    names.insert(e.name);
  CHECK(names == std::set<std::string>{"keep.txt"});
}

// ---- A hostile sandbox (issue 8, finding 1)
// ------------------------------------------------------------------------ The tenant controls the session's
// environment (SessionSpec::env), every byte of the workspace (symlinks, programs) and may run code concurrently with
// a file operation. A driver's file operations must act with no more privilege than the session user, with an
// environment and programs the tenant cannot choose, and never outside the workspace. The fake driver passes these
// trivially, by being in memory: it runs no programs, has no PATH and no symlinks; for it only the driver-level part
// (the calls on the hostile names) runs.

namespace {

/** The environment a hostile tenant gives the session: every variable that shells, the loader or programs read. */
std::map<std::string, std::string> hostile_env() {
  return {{"PATH", "/workspace/.bin:/tmp/.bin:/usr/bin:/bin"},
          {"ENV", "/workspace/.bin/rc"},
          {"BASH_ENV", "/workspace/.bin/rc"},
          {"LD_PRELOAD", "/workspace/.bin/pwn.so"},
          {"LD_LIBRARY_PATH", "/workspace/.bin"},
          {"IFS", "/"},
          {"CDPATH", "/etc"},
          {"HOME", "/etc"},
          {"TMPDIR", "/etc"},
          {"LC_ALL", "xx_XX.UTF-8"},
          {"SHELLOPTS", "xtrace"},
          {"PS4", "$(/workspace/.bin/rc)"},
          {"POSIXLY_CORRECT", "1"},
          {"GCONV_PATH", "/workspace/.bin"}};
}

const char* const kPlantScript = berth::test::hostile::kPlant;
const char* const kEvidenceScript = berth::test::hostile::kEvidence;

/** What kEvidenceScript prints when nothing is wrong. */
const std::string kClean = "evidence-checked\n";

/** A regular file's content through the driver, or "error <code>" when the driver refused. */
std::string get_or_error(core::Driver& d, const std::string& h, const std::string& path) {
  try {
    return get(d, h, path);
  } catch (const DriverError& e) {
    return "error " + std::to_string(static_cast<int>(e.code()));
  }
}

}  // namespace

TEST_CASE("files: a hostile environment and planted programs never act for the driver",
          "[conformance][files][hostile]") {
  auto d = make_driver();
  Sandbox sb(*d, {}, hostile_env());
  if (real_processes()) {
    auto planted = run(*d, sb.handle, sh(kPlantScript));
    INFO(planted.err);
    REQUIRE(planted.result.exit_code == 0);
    REQUIRE(run(*d, sb.handle, sh(kEvidenceScript)).out == kClean);
  }
  // The driver's calls on a plain name: each must work, with the right bytes, whatever the environment says.
  put(*d, sb.handle, "PWN", "mine\n");
  CHECK(get(*d, sb.handle, "PWN") == "mine\n");
  put(*d, sb.handle, "dir/PWN", "deeper\n", 0600);
  auto listed = d->dir_list(sb.handle, "dir");
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].name == "PWN");
  CHECK(listed[0].size == 7);
  CHECK((listed[0].mode & 0777) == 0600);
  d->path_remove(sb.handle, "dir");
  d->path_remove(sb.handle, "PWN");
  std::string missing;
  try {
    get(*d, sb.handle, "PWN");
  } catch (const DriverError& e) {
    CHECK(e.code() == DriverErrc::not_found);
    missing = e.what();
  }
  // A preloaded library the loader could not open would have said so on the helper's stderr (the error's detail).
  CHECK(missing.find("ld.so") == std::string::npos);
  CHECK(missing.find("LD_PRELOAD") == std::string::npos);
  if (!real_processes()) return;

  // Paths through the tenant's symlinks to /etc: refused, never /etc's bytes, nothing written there.
  CHECK(error_of([&] { get(*d, sb.handle, "etc-link/shadow"); }) == DriverErrc::invalid_argument);
  CHECK(error_of([&] { get(*d, sb.handle, "etc-link/passwd"); }) == DriverErrc::invalid_argument);
  CHECK(error_of([&] { get(*d, sb.handle, "shadow-link"); }) == DriverErrc::invalid_argument);
  CHECK(error_of([&] { put(*d, sb.handle, "etc-link/berth-pwn", "x"); }) == DriverErrc::invalid_argument);
  CHECK(error_of([&] { put(*d, sb.handle, "shadow-link", "x"); }) == DriverErrc::invalid_argument);
  CHECK(error_of([&] { d->dir_list(sb.handle, "etc-link"); }) == DriverErrc::invalid_argument);
  CHECK(error_of([&] { d->path_remove(sb.handle, "etc-link/passwd"); }) == DriverErrc::invalid_argument);
  d->path_remove(sb.handle, "shadow-link");  // the link itself, not its target
  CHECK(run(*d, sb.handle, sh("/usr/bin/test -L /workspace/shadow-link || /bin/echo gone")).out == "gone\n");
  CHECK(run(*d, sb.handle, sh("/usr/bin/test -e /etc/shadow && /bin/echo kept")).out == "kept\n");
  CHECK(run(*d, sb.handle, sh(kEvidenceScript)).out == kClean);

  // The session's own processes (the reaper, the exec wrapper) start with the tenant's environment and workspace
  // next time: a planted `sh` or `sleep` on the tenant's PATH must not become them.
  d->session_stop(sb.handle, 1s);
  d->session_remove(sb.handle);
  core::SessionSpec spec;
  spec.session_id = unique("conf");
  spec.image = image();
  spec.labels = sb.labels;
  spec.env = hostile_env();
  spec.workspace_volume = sb.volume;
  spec.user = "1000:1000";
  sb.handle = d->session_create(spec).handle;
  CHECK(run(*d, sb.handle, sh("/bin/echo alive")).out == "alive\n");
  put(*d, sb.handle, "again", "ok");
  CHECK(get(*d, sb.handle, "again") == "ok");
  CHECK(run(*d, sb.handle, sh(kEvidenceScript)).out == kClean);
}

TEST_CASE("files: a directory swapped with a symlink to /etc during the calls never leads outside",
          "[conformance][files][hostile]") {
  auto d = make_driver();
  Sandbox sb(*d);
  constexpr int kAttempts = 25;  // GETs and PUTs each: a fixed number, not "until it happens"
  if (!real_processes()) {
    // The fake has no symlinks: the same calls on the same names simply work.
    put(*d, sb.handle, "race/d/shadow", "inside\n");
    for (int i = 0; i < kAttempts; ++i)
      CHECK(get(*d, sb.handle, "race/d/shadow") == "inside\n");
    return;
  }
  // d (a directory holding `shadow`) and l (a symlink to /etc) trade places every 0.3 ms.
  const std::string setup = berth::test::hostile::race_setup(150);
  REQUIRE(run(*d, sb.handle, sh(setup)).result.exit_code == 0);
  Output swapper;
  std::thread swap_thread([&] { swapper = run(*d, sb.handle, sh("python3 /workspace/race/swap.py", 180s)); });
  bool started = false;
  for (int i = 0; i < 600 && !started; ++i) {  // bounded: 60 s for something that takes well under a second
    started = run(*d, sb.handle, sh("/usr/bin/test -e /workspace/race/started && /bin/echo yes")).out == "yes\n";
    if (!started) std::this_thread::sleep_for(100ms);
  }
  CHECK(started);
  int inside = 0;
  int put_ok = 0;
  std::vector<std::string> leaked;
  for (int i = 0; i < kAttempts; ++i) {
    std::string got = get_or_error(*d, sb.handle, "race/d/shadow");
    if (got == "inside\n") {
      ++inside;
    } else if (got.rfind("error ", 0) != 0) {
      leaked.push_back(got.substr(0, 200));
    } else if (got == "error " + std::to_string(static_cast<int>(DriverErrc::internal))) {
      leaked.push_back("an INTERNAL error: a refusal the sandbox caused is INVALID_ARGUMENT or NOT_FOUND");
    }
    try {
      put(*d, sb.handle, "race/d/berth-race-" + std::to_string(i), "x");
      ++put_ok;
    } catch (const DriverError&) {
      // refused while the symlink was in place: fine
    }
  }
  put(*d, sb.handle, "race/stop", "");
  swap_thread.join();
  INFO("swaps: " << swapper.out << swapper.err << "GETs of the workspace file: " << inside << ", PUTs: " << put_ok);
  CHECK(swapper.result.exit_code == 0);
  for (const auto& l : leaked)
    UNSCOPED_INFO("a GET returned: " << l);
  CHECK(leaked.empty());
  CHECK(run(*d, sb.handle, sh(kEvidenceScript)).out == kClean);
}

// ---- interactive processes (ABI 1.3, BERTH_CAP_PROCESS) ---------------------------------------------------------
// Every case below is skipped only when the driver does not offer interactive processes. The process-tree cases
// (fork bomb, setsid/nohup/env -i) also need real processes: the fake's programs have no children to leave behind
// (the same rule as the exec case above); the fake runs every other case with its mini shell.

namespace {

/** A started process and everything it printed so far. Every wait is bounded by a generous 60 s. */
struct Proc {
  std::unique_ptr<core::Process> process;
  std::string out;
  std::string err;
  std::optional<core::ProcessExit> exit;

  /** Pulls one event (waiting at most `wait`); false if none came. */
  bool pump(std::chrono::milliseconds wait = 100ms) {
    auto e = process->next_event(wait);
    switch (e.kind) {
      case core::ProcessEvent::Kind::output:
        (e.stream == core::Stream::out ? out : err) += e.data;
        return true;
      case core::ProcessEvent::Kind::exit:
        exit = e.exit;
        return true;
      case core::ProcessEvent::Kind::none:
        return false;
    }
    return false;
  }

  /** Pulls events until `done()` holds or the process exits; true if `done()` held. */
  bool wait_until(const std::function<bool()>& done) {
    const auto limit = std::chrono::steady_clock::now() + 60s;
    while (!done() && !exit && std::chrono::steady_clock::now() < limit)
      pump();
    return done();
  }

  /** Pulls events until the exit (60 s at most). */
  core::ProcessExit wait_exit() {
    wait_until([&] { return exit.has_value(); });
    REQUIRE(exit.has_value());
    return *exit;
  }

  /** Writes all of `data`, pulling events while the driver's stdin buffer is full (driver.h: UNAVAILABLE). */
  void write_all(std::string_view data) {
    const auto limit = std::chrono::steady_clock::now() + 60s;
    while (true) {
      try {
        process->write_stdin(data);
        return;
      } catch (const DriverError& e) {
        if (e.code() != DriverErrc::unavailable || std::chrono::steady_clock::now() > limit) throw;
        pump(10ms);
      }
    }
  }
};

Proc start(core::Driver& d, const std::string& handle, std::vector<std::string> argv,
           std::chrono::milliseconds timeout = 60s, bool pty = false) {
  core::ProcessSpec spec;
  spec.argv = std::move(argv);
  spec.timeout = timeout;
  spec.pty = pty;
  spec.rows = pty ? 24 : 0;
  spec.cols = pty ? 80 : 0;
  return Proc{d.process_start(handle, spec)};
}

std::size_t count_of(const std::string& text, const std::string& word) {
  std::size_t n = 0;
  for (auto at = text.find(word); at != std::string::npos; at = text.find(word, at + word.size()))
    ++n;
  return n;
}

/** Processes whose command line carries `marker` (written so that this scan does not match itself). */
std::string survivors_of(core::Driver& d, const std::string& handle, const std::string& marker_regex) {
  return run(d, handle,
             sh("for f in /proc/[0-9]*/cmdline; do tr '\\000' ' ' <\"$f\"; echo; done 2>/dev/null | grep -c '" +
                marker_regex + "'"))
      .out;
}

}  // namespace

TEST_CASE("process: stdin streams in and output streams out while it runs", "[conformance][process]") {
  auto d = make_driver();
  if (!offers_processes(*d)) return;
  Sandbox sb(*d);
  auto p = start(*d, sb.handle, {"cat"});
  p.process->write_stdin("one\n");
  CHECK(p.wait_until([&] { return p.out == "one\n"; }));  // echoed back before stdin ends
  p.process->write_stdin("two\n");
  CHECK(p.wait_until([&] { return p.out == "one\ntwo\n"; }));
  p.process->close_stdin();
  const auto exit = p.wait_exit();
  CHECK(exit.exit_code == 0);
  CHECK(exit.signal == 0);
  CHECK_FALSE(exit.timed_out);
  CHECK(p.out == "one\ntwo\n");
  CHECK(p.process->next_event(0ms).kind == core::ProcessEvent::Kind::exit);  // the exit is repeated
}

TEST_CASE("process: close_stdin delivers EOF and the program goes on", "[conformance][process]") {
  auto d = make_driver();
  if (!offers_processes(*d)) return;
  Sandbox sb(*d);
  auto p = start(*d, sb.handle, {"/bin/sh", "-c", "cat; echo eof-seen"});
  p.process->write_stdin("x");
  p.process->close_stdin();
  p.process->close_stdin();  // idempotent
  CHECK(p.wait_exit().exit_code == 0);
  CHECK(p.out == "xeof-seen\n");
  CHECK(error_of([&] { p.process->write_stdin("late"); }) == DriverErrc::conflict);
}

TEST_CASE("process: signals end it, to the process or its whole group, and exit codes come through",
          "[conformance][process]") {
  auto d = make_driver();
  if (!offers_processes(*d)) return;
  Sandbox sb(*d);
  auto sleeper = start(*d, sb.handle, {"sleep", "300"});
  sleeper.process->signal(15, false);
  auto exit = sleeper.wait_exit();
  CHECK(exit.signal == 15);
  CHECK(exit.exit_code == 128 + 15);
  CHECK_FALSE(exit.killed);

  auto group = start(*d, sb.handle, {"/bin/sh", "-c", "sleep 300; echo never"});
  group.process->signal(15, true);
  exit = group.wait_exit();
  CHECK(exit.signal == 15);
  CHECK(group.out.find("never") == std::string::npos);

  auto exits = start(*d, sb.handle, {"/bin/sh", "-c", "echo out; echo err >&2; exit 3"});
  exit = exits.wait_exit();
  CHECK(exit.exit_code == 3);
  CHECK(exit.signal == 0);
  CHECK(exits.out == "out\n");
  CHECK(exits.err == "err\n");
  CHECK(error_of([&] { exits.process->signal(0, false); }) == DriverErrc::invalid_argument);
}

TEST_CASE("process: kill and timeout end it and say why", "[conformance][process]") {
  auto d = make_driver();
  if (!offers_processes(*d)) return;
  Sandbox sb(*d);
  auto killed = start(*d, sb.handle, {"sleep", "300"});
  killed.process->kill();
  killed.process->kill();  // idempotent
  auto exit = killed.wait_exit();
  CHECK(exit.killed);
  CHECK_FALSE(exit.timed_out);
  auto slow = start(*d, sb.handle, {"sleep", "300"}, 1000ms);
  exit = slow.wait_exit();
  CHECK(exit.timed_out);
  CHECK(d->session_inspect(sb.handle).state == core::SessionState::running);
}

TEST_CASE("process: a flood of output is delivered in order and bounded by the puller", "[conformance][process]") {
  auto d = make_driver();
  if (!offers_processes(*d)) return;
  Sandbox sb(*d);
  auto flood = start(*d, sb.handle, {"yes", "flood-line"});
  CHECK(flood.wait_until([&] { return flood.out.size() >= (4u << 20); }));  // 4 MiB pulled at the host's pace
  CHECK(flood.out.substr(0, 22) == "flood-line\nflood-line\n");
  flood.process->kill();
  CHECK(flood.wait_exit().killed);
}

TEST_CASE("process: 1 MiB of code on stdin runs", "[conformance][process]") {
  auto d = make_driver();
  if (!offers_processes(*d)) return;
  Sandbox sb(*d);
  std::string script;
  const std::string padding = "# " + std::string(1000, 'x') + "\n";
  while (script.size() < (1u << 20))
    script += padding;
  script += "echo big-script-ran\nexit 7\n";
  auto p = start(*d, sb.handle, {"/bin/sh"});
  for (std::size_t at = 0; at < script.size(); at += 64 * 1024)
    p.write_all(std::string_view(script).substr(at, 64 * 1024));
  p.process->close_stdin();
  const auto exit = p.wait_exit();
  INFO(p.err);
  CHECK(exit.exit_code == 7);
  CHECK(p.out == "big-script-ran\n");
}

TEST_CASE("process: a PTY echoes input and reports its size after a resize", "[conformance][process][pty]") {
  auto d = make_driver();
  if (!offers_processes(*d) || !d->has_capability(BERTH_CAP_PROCESS_PTY)) return;
  Sandbox sb(*d);
  auto echo = start(*d, sb.handle, {"cat"}, 60s, true);
  echo.process->write_stdin("hello\n");
  // Once from the terminal's echo, once from cat; the terminal turns "\n" into "\r\n".
  CHECK(echo.wait_until([&] { return count_of(echo.out, "hello\r\n") >= 2; }));
  echo.process->close_stdin();  // the terminal's EOF character
  CHECK(echo.wait_exit().exit_code == 0);

  auto sized = start(*d, sb.handle, {"/bin/sh", "-c", "stty size; read line; stty size"}, 60s, true);
  CHECK(sized.wait_until([&] { return sized.out.find("24 80") != std::string::npos; }));
  sized.process->resize(40, 100);
  sized.process->write_stdin("go\n");
  CHECK(sized.wait_exit().exit_code == 0);
  CHECK(sized.out.find("40 100") != std::string::npos);
  CHECK(sized.out.find("go") != std::string::npos);  // echoed by the terminal

  auto plain = start(*d, sb.handle, {"sleep", "300"});
  CHECK(error_of([&] { plain.process->resize(40, 100); }) == DriverErrc::invalid_argument);
}

TEST_CASE("process: a session that is not running starts nothing (NOT_FOUND)", "[conformance][process]") {
  auto d = make_driver();
  if (!offers_processes(*d)) return;
  Sandbox sb(*d);
  d->session_stop(sb.handle, 1000ms);
  REQUIRE(wait_not_running(*d, sb.handle));
  CHECK(error_of([&] { start(*d, sb.handle, {"echo", "should-not-run"}); }) == DriverErrc::not_found);
}

TEST_CASE("process: a timeout kills a fork bomb and leaves nothing", "[conformance][process]") {
  auto d = make_driver();
  if (!offers_processes(*d) || !real_processes()) return;  // the fake has no processes to fork
  Sandbox sb(*d);
  // The main process never forks (it execs sleep), so the session's pids limit cannot end it: only the timeout can.
  // The bomb runs below it; each of its shells keeps forking in a loop, so it does not burn out at the limit either.
  auto bomb = start(*d, sb.handle,
                    {"/bin/sh", "-c", "echo started; b() { while :; do b & b & wait; done; }; b & exec sleep 3600",
                     "bomb-marker-4711"},
                    3000ms);
  const auto exit = bomb.wait_exit();
  INFO("exit_code " << exit.exit_code << " signal " << exit.signal);
  CHECK(exit.timed_out);
  CHECK(bomb.out.rfind("started\n", 0) == 0);
  CHECK(survivors_of(*d, sb.handle, "bomb-marke[r]-4711") == "0\n");
  CHECK(d->session_inspect(sb.handle).state == core::SessionState::running);
}

TEST_CASE("process: setsid, nohup and env -i children die with it on timeout and on kill", "[conformance][process]") {
  auto d = make_driver();
  if (!offers_processes(*d) || !real_processes()) return;  // the fake has no processes to leave behind
  Sandbox sb(*d);
  const std::string detach =
      "env -i sleep 4001 & setsid sleep 4002 & nohup sleep 4003 >/dev/null 2>&1 & (sleep 4004 &); "
      "(env -i setsid sh -c 'sleep 4005 &' &); echo started; sleep 300";
  auto timed = start(*d, sb.handle, {"/bin/sh", "-c", detach}, 1500ms);
  CHECK(timed.wait_exit().timed_out);
  CHECK(timed.out == "started\n");
  CHECK(survivors_of(*d, sb.handle, "^sleep 400[0-9]") == "0\n");

  auto killed = start(*d, sb.handle, {"/bin/sh", "-c", detach});
  CHECK(killed.wait_until([&] { return killed.out == "started\n"; }));
  killed.process->kill();
  CHECK(killed.wait_exit().killed);
  CHECK(survivors_of(*d, sb.handle, "^sleep 400[0-9]") == "0\n");
}
