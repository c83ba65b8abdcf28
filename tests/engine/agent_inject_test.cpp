// berth-agent injection (issue 9, item 2) through the docker and podman drivers, loaded by the host's real plugin
// loader: the agent is bind-mounted into any image (one without /bin/sh included), every exec and file operation
// goes through it, code of any size travels on stdin, output streams, an exec's process tree dies with it, a missing
// agent binary falls back to the Engine exec path, and a stopped container is reported as a session that is gone.
// Every case runs once per engine (CTest entries through scripts/require-service).
#include <catch2/catch.hpp>

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include <sys/wait.h>

#include "core/clock.hpp"
#include "plugin/driver_library.hpp"

namespace {

using namespace berth;
using core::DriverErrc;
using core::DriverError;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

std::string driver_file(const std::string& engine) {
  return engine == "podman" ? BERTH_PODMAN_DRIVER : BERTH_DOCKER_DRIVER;
}

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

std::unique_ptr<core::Driver> make_driver(const std::string& engine, const std::string& config = "{}") {
  static std::map<std::string, std::shared_ptr<plugin::DriverLibrary>> libraries;
  auto& lib = libraries[engine];
  if (!lib) lib = plugin::DriverLibrary::open(driver_file(engine));
  return lib->configure(config, std::make_shared<core::SystemClock>());
}

/** Runs a shell command on the test machine; its exit status. */
int sh(const std::string& command) {
  int rc = std::system(command.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/**
 * The shell-less image: `<engine> import` of a tar holding only /probe (tests/engine/static_probe.c, static) and a
 * /workspace directory owned by 1000:1000. No /bin/sh, no libc, no /etc. Built once per engine and run.
 */
std::string shellless_image(const std::string& engine) {
  const std::string tag = "berth-test/noshell:" + unique("t");
  fs::path dir = fs::temp_directory_path() / unique("berth-noshell");
  fs::create_directories(dir / "workspace");
  fs::copy_file(BERTH_STATIC_PROBE, dir / "probe");
  REQUIRE(sh("chown 1000:1000 '" + (dir / "workspace").string() + "' && chmod 0755 '" + (dir / "probe").string() +
             "'") == 0);
  REQUIRE(sh("tar -C '" + dir.string() + "' --numeric-owner -cf - probe workspace | " + engine + " import - " + tag +
             " >/dev/null 2>&1") == 0);
  fs::remove_all(dir);
  return tag;
}

/** A session on a fresh volume, removed (with its volume) at scope exit. */
struct Sandbox {
  core::Driver& driver;
  std::string volume;
  std::string handle;
  std::string endpoint;  ///< session_create's berth_session_info.endpoint

  Sandbox(core::Driver& d, const std::string& image) : driver(d) {
    volume = unique("berth-inject-vol");
    core::Labels labels = {{"berth.test", unique("inject")}};
    driver.volume_create(volume, labels);
    core::SessionSpec spec;
    spec.session_id = unique("inject");
    spec.image = image;
    spec.labels = labels;
    spec.workspace_volume = volume;
    spec.memory_bytes = 256ll << 20;
    spec.pids_limit = 128;
    spec.user = "1000:1000";
    const auto info = driver.session_create(spec);
    handle = info.handle;
    endpoint = info.endpoint;
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

struct Output {
  std::string out, err;
  core::ExecResult result;
};

Output run(core::Driver& d, const std::string& h, const core::ExecRequest& rq,
           const std::function<void(std::string_view)>& on_out = {}) {
  Output o;
  o.result = d.exec(
      h, rq,
      [&](core::Stream s, std::string_view data) {
        (s == core::Stream::out ? o.out : o.err).append(data);
        if (s == core::Stream::out && on_out) on_out(data);
        return true;
      },
      nullptr);
  return o;
}

core::ExecRequest argv(std::vector<std::string> words, std::chrono::milliseconds timeout = 60s) {
  core::ExecRequest rq;
  rq.argv = std::move(words);
  rq.timeout = timeout;
  return rq;
}

void put(core::Driver& d, const std::string& h, const std::string& path, const std::string& bytes) {
  std::size_t offset = 0;
  d.file_put(h, path, 0644, bytes.size(), [&](std::uint8_t* buf, std::size_t cap) -> std::int64_t {
    std::size_t n = std::min(cap, bytes.size() - offset);
    std::memcpy(buf, bytes.data() + offset, n);
    offset += n;
    return static_cast<std::int64_t>(n);
  });
}

std::string get(core::Driver& d, const std::string& h, const std::string& path) {
  std::string out;
  d.file_get(h, path, [&](std::string_view data) {
    out.append(data);
    return true;
  });
  return out;
}

// ---- the cases --------------------------------------------------------------------------------------------------

/** Removes the test's image at scope exit. */
struct ImageGuard {
  std::string engine, tag;
  ~ImageGuard() { sh(engine + " rmi -f " + tag + " >/dev/null 2>&1"); }
};

void shellless_case(const std::string& engine, const std::string& config = "{}") {
  auto d = make_driver(engine, config);
  ImageGuard image{engine, shellless_image(engine)};
  Sandbox s(*d, image.tag);
  const bool over_exec = config.find("\"exec\"") != std::string::npos;
  CHECK(s.endpoint.rfind(over_exec ? "agent:exec:" : "agent:unix:", 0) == 0);
  auto hi = run(*d, s.handle, argv({"/probe", "echo", "hi", "there"}));
  CHECK(hi.out == "hi there\n");
  CHECK(hi.result.exit_code == 0);
  // The agent is PID 1 and the parent of nothing but its per-exec shim; the program runs as the session user.
  CHECK(run(*d, s.handle, argv({"/probe", "id"})).out == "1000\n");
  // No shell: a relative name is searched on PATH (the engines' default: nothing there) and is not found.
  auto missing = run(*d, s.handle, argv({"sh", "-c", "true"}));
  CHECK(missing.result.exit_code == 127);
  CHECK(missing.err.find("not found") != std::string::npos);
  // Stdin and files, names as raw bytes.
  core::ExecRequest cat = argv({"/probe", "cat"});
  cat.stdin_data = std::string(300000, 'z');
  CHECK(run(*d, s.handle, cat).out == cat.stdin_data);
  const std::string name = "dir/n\xff\x01me.bin";
  std::string bytes;
  for (int i = 0; i < 70000; ++i)
    bytes += static_cast<char>(i * 7);
  put(*d, s.handle, name, bytes);
  CHECK(get(*d, s.handle, name) == bytes);
  std::vector<std::string> names;
  d->dir_scan(s.handle, "dir", [&](const core::DirEntry& e) {
    names.push_back(e.name);
    return true;
  });
  CHECK(names == std::vector<std::string>{"n\xff\x01me.bin"});
  d->path_remove(s.handle, "dir");
  try {
    get(*d, s.handle, name);
    FAIL("the removed file is still readable");
  } catch (const DriverError& e) {
    CHECK(e.code() == DriverErrc::not_found);
  }
  try {
    get(*d, s.handle, "../../etc/hostname");
    FAIL("a path outside the workspace was read");
  } catch (const DriverError& e) {
    CHECK(e.code() == DriverErrc::invalid_argument);
  }
}

void long_stdin_case(const std::string& engine) {
  auto d = make_driver(engine);
  Sandbox s(*d, "berth/python:3.11");
  for (std::size_t size : {std::size_t{131072}, std::size_t{1} << 20}) {
    INFO("code bytes " << size);
    core::ExecRequest rq = argv({"python3", "-"});
    rq.stdin_data = "import sys\nprint('ok', len(sys.argv))\n#";
    rq.stdin_data += std::string(size - rq.stdin_data.size(), 'x');
    auto o = run(*d, s.handle, rq);
    CHECK(o.out == "ok 1\n");
    CHECK(o.result.exit_code == 0);
  }
}

void streaming_case(const std::string& engine) {
  auto d = make_driver(engine);
  Sandbox s(*d, "berth/python:3.11");
  // The program prints "first", then waits (up to 60 s) for a file that the test writes only once "first" has
  // reached the output callback. If output were delivered at exit only, the program would print "late" instead.
  std::mutex m;
  std::condition_variable cv;
  bool seen = false, done = false;
  std::thread writer([&] {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return seen || done; });
    if (seen) put(*d, s.handle, "go", "1");
  });
  auto o = run(*d, s.handle,
               argv({"/bin/sh", "-c",
                     "echo first; i=0; while [ ! -e go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; "
                     "[ -e go ] && echo second || echo late"},
                    120s),
               [&](std::string_view data) {
                 if (data.find("first") != std::string_view::npos) {
                   std::lock_guard lock(m);
                   seen = true;
                   cv.notify_all();
                 }
               });
  {
    std::lock_guard lock(m);
    done = true;
    cv.notify_all();
  }
  writer.join();
  CHECK(o.out == "first\nsecond\n");
}

void process_tree_case(const std::string& engine) {
  auto d = make_driver(engine);
  Sandbox s(*d, "berth/python:3.11");
  auto o = run(*d, s.handle,
               argv({"/bin/sh", "-c",
                     "setsid sleep 3101 & nohup sleep 3102 >/dev/null 2>&1 & (env -i sleep 3103 &); "
                     "echo started"}));
  CHECK(o.out == "started\n");
  CHECK(o.result.exit_code == 0);
  auto ps = run(*d, s.handle,
                argv({"/bin/sh", "-c",
                      "for f in /proc/[0-9]*/cmdline; do tr '\\000' ' ' <\"$f\"; echo; done 2>/dev/null | "
                      "grep -c '^sleep 310[0-9]'"}));
  CHECK(ps.out == "0\n");
}

// agent_transport = "exec": a process that never reads its stdin, fed 1 MiB (the agent holds it: it reads a connection
// until a process has 4 MiB unread), then dropped while that stdin is still queued. Its connection closes; the pump
// half-closes the stream, the agent sees EOF, kills the process, and its own exec of the agent ends. (Past 4 MiB the
// agent stops reading, the engine's stdin copy blocks behind it and the EOF cannot pass: docs/driver-sdk.md.)
void exec_transport_stalled_stdin_case(const std::string& engine) {
  auto d = make_driver(engine, R"({"agent_transport": "exec"})");
  Sandbox s(*d, "berth/python:3.11");
  auto count = [&](const std::string& pattern) {
    return run(*d, s.handle,
               argv({"/bin/sh", "-c",
                     "for f in /proc/[0-9]*/cmdline; do tr '\\000' ' ' <\"$f\"; echo; done 2>/dev/null | "
                     "grep -c '" +
                         pattern + "'"}))
        .out;
  };
  {
    core::ProcessSpec spec;
    spec.argv = {"/bin/sleep", "3201"};
    spec.timeout = std::chrono::minutes(10);
    auto p = d->process_start(s.handle, spec);
    const std::string chunk(64 << 10, 's');
    for (int i = 0; i < 16; ++i) {  // 1 MiB
      try {
        p->write_stdin(chunk);
      } catch (const DriverError&) {
        break;  // unavailable: the driver's own buffer is full
      }
    }
    CHECK(count("^/bin/sleep 3201") == "1\n");
  }  // dropped with stdin queued: its connection is closed
  std::string left;
  for (int i = 0; i < 300; ++i) {  // bounded ("eventually" vs "never"), no time asserted
    left = count("^/bin/sleep 3201");
    if (left == "0\n") break;
    std::this_thread::sleep_for(100ms);
  }
  CHECK(left == "0\n");
}

/** Runs `spec` as an interactive process to its exit (stdin closed at once); its stdout and exit code. `after_start`
 *  runs once the process was started. */
std::pair<std::string, int> run_process(core::Driver& d, const std::string& h, std::vector<std::string> words,
                                        const std::function<void(core::Process&)>& after_start = {}) {
  core::ProcessSpec spec;
  spec.argv = std::move(words);
  spec.timeout = 60s;
  auto p = d.process_start(h, spec);
  p->close_stdin();
  if (after_start) after_start(*p);
  std::string out;
  for (int i = 0; i < 600; ++i) {  // at most 60 s
    auto ev = p->next_event(100ms);
    if (ev.kind == core::ProcessEvent::Kind::output && ev.stream == core::Stream::out) out += ev.data;
    if (ev.kind == core::ProcessEvent::Kind::exit) return {out, ev.exit.exit_code};
  }
  FAIL("no exit event in 60 s");
  return {};
}

/**
 * After a process's EXIT its agent connection serves the next process (no connect + HELLO, and on the "exec"
 * transport no Engine exec, per process), while a killed process's connection is closed, and a request answered
 * after EXIT never reaches the next caller. Socket transport: the agent (PID 1) logs each connection it closes;
 * exec transport: each connection is an agent of its own, the grandparent of the program (program → shim → agent).
 */
void process_connection_reuse_case(const std::string& engine, const std::string& transport) {
  auto d = make_driver(engine, R"({"agent_transport": ")" + transport + R"("})");
  Sandbox s(*d, "berth/python:3.11");
  const std::vector<std::string> grandparent = {"/bin/sh", "-c",
                                                "read -r _ _ _ pp _ </proc/$PPID/stat; echo \"$1:$pp\"", "sh"};
  auto closed = [&] {
    std::string logs;
    {
      std::unique_ptr<FILE, int (*)(FILE*)> f(
          ::popen((engine + " logs " + s.handle + " 2>&1 | grep -c agent.connection_closed").c_str(), "r"), ::pclose);
      char buf[64];
      while (f && std::fgets(buf, sizeof buf, f.get()))
        logs += buf;
    }
    return std::atoi(logs.c_str());
  };
  const int closed_before = closed();
  std::set<std::string> agents;
  for (int i = 0; i < 4; ++i) {
    auto words = grandparent;
    words.push_back("run" + std::to_string(i));
    auto [out, code] = run_process(*d, s.handle, words);
    CHECK(code == 0);
    REQUIRE(out.rfind("run" + std::to_string(i) + ":", 0) == 0);
    agents.insert(out.substr(out.find(':') + 1));
  }
  CHECK(agents.size() == 1);  // one agent connection served all four (exec transport: one agent process)
  if (transport == "socket") CHECK(closed() == closed_before);
  // Killed: its connection is closed (that is how the kill reaches the agent), and the next process still runs.
  auto [killed_out, killed_code] = run_process(*d, s.handle, {"/bin/sleep", "30"}, [](core::Process& p) { p.kill(); });
  CHECK(killed_code == 128 + 9);
  // A SIGNAL sent once the program has exited, with its EXIT not yet read: the agent answers it with an ERROR after
  // the EXIT. Whether that answer is read with the EXIT (the connection is then closed, not quiescent) or arrives on
  // the pooled connection (for a channel its next user never opened), the processes after it run as before.
  auto [late_out, late_code] = run_process(*d, s.handle, {"/bin/true"}, [](core::Process& p) {
    std::this_thread::sleep_for(300ms);
    p.signal(SIGTERM, false);
  });
  CHECK(late_code == 0);
  for (int i = 0; i < 3; ++i) {
    auto [out, code] = run_process(*d, s.handle, {"/bin/echo", "after" + std::to_string(i)});
    CHECK(out == "after" + std::to_string(i) + "\n");
    CHECK(code == 0);
  }
  if (transport == "socket") CHECK(closed() >= closed_before + 1);  // at least the killed process's
}

void fallback_case(const std::string& engine) {
  auto d = make_driver(engine, R"({"agent_path": "/nonexistent/berth-agent"})");
  Sandbox s(*d, "berth/python:3.11");
  auto o = run(*d, s.handle, argv({"/bin/sh", "-c", "echo via-engine; tr '\\000' ' ' </proc/1/cmdline"}));
  CHECK(o.result.exit_code == 0);
  CHECK(o.out.rfind("via-engine\n", 0) == 0);
  CHECK(o.out.find("berth-agent") == std::string::npos);
  CHECK(o.out.find("/.berth/agent") == std::string::npos);
  put(*d, s.handle, "f.txt", "engine files");
  CHECK(get(*d, s.handle, "f.txt") == "engine files");
  // The endpoint names the transport (berthd shows it as the sandbox's `transport`), at create and on inspect.
  CHECK(s.endpoint == "engine-exec:" + s.handle);
  CHECK(d->session_inspect(s.handle).endpoint == s.endpoint);
  // The same engine with the agent: PID 1 is the agent.
  auto a = make_driver(engine);
  Sandbox t(*a, "berth/python:3.11");
  auto pid1 = run(*a, t.handle, argv({"/bin/sh", "-c", "tr '\\000' ' ' </proc/1/cmdline"}));
  CHECK(pid1.out.find(" -- /.berth/agent --listen unix:/.berth/run/agent.sock") != std::string::npos);
  CHECK(t.endpoint.rfind("agent:unix:/", 0) == 0);
  CHECK(t.endpoint.size() > std::string("/agent.sock").size());
  CHECK(t.endpoint.substr(t.endpoint.size() - std::string("/agent.sock").size()) == "/agent.sock");
  CHECK(a->session_inspect(t.handle).endpoint == t.endpoint);
}

void stopped_case(const std::string& engine) {
  auto d = make_driver(engine);
  Sandbox s(*d, "berth/python:3.11");
  CHECK(run(*d, s.handle, argv({"/bin/echo", "up"})).out == "up\n");
  // The sandbox user cannot kill PID 1 (the agent)...
  run(*d, s.handle, argv({"/bin/sh", "-c", "kill -9 1"}));
  CHECK(run(*d, s.handle, argv({"/bin/echo", "still"})).out == "still\n");
  // ...but it can kill the agent (`kill -9 -1` spares only PID 1, the engine's init): the session ends with it, the
  // running exec gets its result (killed), and the next call says the session is gone, and nothing ran.
  auto killed = run(*d, s.handle, argv({"/bin/sh", "-c", "kill -9 -1; sleep 5"}));
  CHECK(killed.result.exit_code != 0);
  try {
    run(*d, s.handle, argv({"/bin/echo", "never"}));
    FAIL("an exec ran in a dead session");
  } catch (const DriverError& e) {
    CHECK(e.code() == DriverErrc::not_found);
  }
  // A stopped container too.
  Sandbox t(*d, "berth/python:3.11");
  CHECK(run(*d, t.handle, argv({"/bin/echo", "up"})).out == "up\n");
  d->session_stop(t.handle, 1000ms);
  try {
    run(*d, t.handle, argv({"/bin/echo", "never"}));
    FAIL("an exec ran in a stopped session");
  } catch (const DriverError& e) {
    CHECK(e.code() == DriverErrc::not_found);
  }
}

void tenant_limits_case(const std::string& engine) {
  auto d = make_driver(engine);
  Sandbox s(*d, "berth/python:3.11");
  // Once the agent listens, its socket directory belongs to berthd: the sandbox user can neither list it nor plant a
  // symlink there that berthd would follow to a host socket.
  auto o = run(*d, s.handle,
               argv({"/bin/sh", "-c",
                     "ls /.berth/run >/dev/null 2>&1 && echo listable; "
                     "ln -s /etc/passwd /.berth/run/x 2>/dev/null && echo writable; echo checked"}));
  CHECK(o.out == "checked\n");
  // A 64 GiB sparse file streams through in chunks and stops where the sink stops: the driver holds none of it.
  CHECK(run(*d, s.handle, argv({"/usr/bin/truncate", "-s", "64G", "huge"})).result.exit_code == 0);
  std::uint64_t got = 0;
  std::size_t largest = 0;
  try {
    d->file_get(s.handle, "huge", [&](std::string_view data) {
      got += data.size();
      largest = std::max(largest, data.size());
      return got < (8u << 20);
    });
    FAIL("the download did not stop where the sink stopped");
  } catch (const DriverError& e) {
    CHECK(e.code() == DriverErrc::cancelled);
  }
  CHECK(got >= (8u << 20));
  CHECK(got < (64u << 20));
  CHECK(largest <= (1u << 20));
  // The half-read connection was closed, not handed to the next call.
  put(*d, s.handle, "small", "after");
  CHECK(get(*d, s.handle, "small") == "after");
}

/** What `command` printed on stdout (a shell on the test machine). */
std::string capture(const std::string& command) {
  std::string out;
  if (FILE* f = ::popen(command.c_str(), "r")) {
    char buf[4096];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0)
      out.append(buf, n);
    ::pclose(f);
  }
  return out;
}

// agent_delivery = "volume": the binary reaches the sessions through the Engine API alone (an image import and a
// helper container that fills berth-agent-<sha256 prefix>), so no file of this machine is mounted. Shown with a copy
// of the agent (made unique by trailing bytes, so that its volume is this test's) that is deleted before the last
// session starts, over both transports, and on the shell-less image.
void volume_delivery_case(const std::string& engine) {
  const fs::path copy = fs::temp_directory_path() / unique("berth-agent-copy");
  fs::copy_file(BERTH_AGENT_PATH, copy);
  {
    std::ofstream tail(copy, std::ios::app | std::ios::binary);
    tail << "\nberth-test-trailer-" << unique("t") << "\n";
  }
  fs::permissions(copy, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec | fs::perms::others_read |
                            fs::perms::others_exec);
  const std::string volume = "berth-agent-" + capture("sha256sum '" + copy.string() + "' | cut -c1-16 | tr -d '\\n'");
  REQUIRE(volume.size() == std::string("berth-agent-").size() + 16);
  REQUIRE(sh(engine + " volume inspect " + volume + " >/dev/null 2>&1") != 0);  // fresh: the fill path runs
  const std::string config = R"({"agent_delivery": "volume", "agent_path": ")" + copy.string() + R"("})";
  const std::string exec_config =
      R"({"agent_delivery": "volume", "agent_transport": "exec", "agent_path": ")" + copy.string() + R"("})";
  {
    auto socket_driver = make_driver(engine, config);
    auto exec_driver = make_driver(engine, exec_config);
    {
      Sandbox s(*socket_driver, "berth/python:3.11");  // the socket directory is bound inside the volume's mount
      CHECK(s.endpoint.rfind("agent:unix:", 0) == 0);
      CHECK(run(*socket_driver, s.handle, argv({"/bin/sh", "-c", "echo over-the-socket"})).out == "over-the-socket\n");
      const std::string mounts = capture(engine + " inspect -f '{{json .Mounts}}' " + s.handle);
      INFO(mounts);
      CHECK(mounts.find("\"" + volume + "\"") != std::string::npos);
      CHECK(mounts.find(copy.string()) == std::string::npos);  // the copy itself is not mounted
      // Mounted read-only: the tenant cannot replace the agent that later sessions run.
      CHECK(run(*socket_driver, s.handle,
                argv({"/bin/sh", "-c", "awk '$2 == \"/.berth\" {print $4}' /proc/self/mounts | cut -d, -f1"}))
                .out == "ro\n");
    }
    // The volume goes behind berthd's back (`volume prune` while no session runs): the next session fills it anew
    // instead of mounting an empty one the engine would create.
    REQUIRE(sh(engine + " volume rm " + volume + " >/dev/null") == 0);
    {
      Sandbox again(*socket_driver, "berth/python:3.11");
      CHECK(again.endpoint.rfind("agent:unix:", 0) == 0);
      CHECK(run(*socket_driver, again.handle, argv({"/bin/sh", "-c", "echo refilled"})).out == "refilled\n");
    }
    fs::remove(copy);  // from here on only the engine's volume holds the agent
    ImageGuard image{engine, shellless_image(engine)};
    Sandbox t(*exec_driver, image.tag);
    CHECK(t.endpoint.rfind("agent:exec:", 0) == 0);
    auto hi = run(*exec_driver, t.handle, argv({"/probe", "echo", "from", "the", "volume"}));
    CHECK(hi.out == "from the volume\n");
    put(*exec_driver, t.handle, "v.txt", "volume delivery");
    CHECK(get(*exec_driver, t.handle, "v.txt") == "volume delivery");
  }
  // Nothing of the fill is left: no helper container, no image; the volume goes once no session uses it.
  REQUIRE(sh(engine + " ps -aq >/dev/null") == 0);  // (the engine's CLI answers: an empty list below means none)
  CHECK(capture(engine + " ps -aq --filter label=io.berth.driver.agent-volume=" + volume).empty());
  CHECK(capture(engine + " images --format '{{.Repository}}' | grep -c berth-agent") == "0\n");
  CHECK(sh(engine + " volume rm " + volume + " >/dev/null 2>&1") == 0);
  CHECK_THROWS_WITH(make_driver(engine, R"({"agent_delivery": "copy"})"),
                    Catch::Contains("'agent_delivery' must be \"bind\" or \"volume\""));
}

}  // namespace

#define BERTH_AGENT_CASES(engine)                                                                                   \
  TEST_CASE(engine ": an image without /bin/sh runs execs and file operations through the agent", "[" engine "]") { \
    shellless_case(engine);                                                                                         \
  }                                                                                                                 \
  TEST_CASE(engine ": code of 131072 and 1 MiB bytes goes in on stdin", "[" engine "]") {                           \
    long_stdin_case(engine);                                                                                        \
  }                                                                                                                 \
  TEST_CASE(engine ": output streams while the process runs", "[" engine "]") {                                     \
    streaming_case(engine);                                                                                         \
  }                                                                                                                 \
  TEST_CASE(engine ": an exec's detached processes are gone after it", "[" engine "]") {                            \
    process_tree_case(engine);                                                                                      \
  }                                                                                                                 \
  TEST_CASE(engine ": a missing agent binary falls back to the engine exec", "[" engine "]") {                      \
    fallback_case(engine);                                                                                          \
  }                                                                                                                 \
  TEST_CASE(engine ": a stopped session is gone on the next call", "[" engine "]") {                                \
    stopped_case(engine);                                                                                           \
  }                                                                                                                 \
  TEST_CASE(engine ": the agent directory is closed to the tenant and downloads stream", "[" engine "]") {          \
    tenant_limits_case(engine);                                                                                     \
  }                                                                                                                 \
  TEST_CASE(engine ": an image without /bin/sh works over the exec transport, and a bad transport is refused",      \
            "[" engine "]") {                                                                                       \
    shellless_case(engine, R"({"agent_transport": "exec"})");                                                       \
    exec_transport_stalled_stdin_case(engine);                                                                      \
    CHECK_THROWS_WITH(make_driver(engine, R"({"agent_transport": "tcp"})"),                                         \
                      Catch::Contains("'agent_transport' must be \"socket\" or \"exec\""));                         \
  }                                                                                                                 \
  TEST_CASE(engine ": a process's agent connection serves the next process after its exit", "[" engine "]") {       \
    process_connection_reuse_case(engine, "socket");                                                                \
    process_connection_reuse_case(engine, "exec");                                                                  \
  }                                                                                                                 \
  TEST_CASE(engine ": agent_delivery volume: the agent comes through the engine alone", "[" engine "]") {           \
    volume_delivery_case(engine);                                                                                   \
  }

BERTH_AGENT_CASES("docker")
BERTH_AGENT_CASES("podman")
