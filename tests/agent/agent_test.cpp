// berth-agent through its driver-side client (plugins/common, berth/engine/agent_client.hpp). The agent runs on the
// host as a child process serving a unix socket in a temp dir, with a workspace root next to an "outside" dir
// that nothing may reach. uid switching is exercised only when the tests run as root.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "berth/engine/agent_client.hpp"

using namespace std::chrono_literals;
using berth::engine::AgentClient;
using berth::engine::AgentError;
using berth::engine::AgentEvent;
namespace agent = berth::agent;
namespace fs = std::filesystem;
using agent::MsgType;

namespace {

auto in(std::chrono::seconds s) {
  return std::chrono::steady_clock::now() + s;
}

/** The file's bytes; what could be read if it vanishes meanwhile (a /proc entry of an exiting process). */
std::string slurp(const fs::path& p) {
  std::string out;
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0)
    out.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  return out;
}

/** A berth-agent child process listening on <tmp>/agent.sock with root <tmp>/root; killed and reaped at the end. */
class AgentProcess {
 public:
  explicit AgentProcess(std::vector<std::string> extra = {}) {
    char tmpl[] = "/tmp/berth-agent-test-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    fs::create_directories(dir_ / "root");
    fs::create_directories(dir_ / "outside");
    fs::permissions(dir_, fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
    fs::permissions(dir_ / "root", fs::perms::all);
    socket_ = (dir_ / "agent.sock").string();
    int err[2];
    REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
    std::vector<std::string> args{BERTH_AGENT_PATH, "--listen", "unix:" + socket_, "--root", (dir_ / "root").string()};
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::dup2(err[1], 2);
      std::vector<char*> argv;
      for (auto& a : args)
        argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(err[1]);
    // Ready when the agent logs agent.listening (generous bound: "eventually" vs "never").
    std::string log;
    const auto deadline = in(60s);
    char buf[4096];
    while (log.find("agent.listening") == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      const ssize_t n = ::read(err[0], buf, sizeof buf);
      if (n <= 0) break;
      log.append(buf, static_cast<std::size_t>(n));
    }
    ::close(err[0]);
    REQUIRE(log.find("agent.listening") != std::string::npos);
  }
  ~AgentProcess() {
    ::kill(pid_, SIGTERM);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  AgentClient connect() const { return AgentClient::connect_unix(socket_, in(60s)); }
  const fs::path& dir() const { return dir_; }
  fs::path root() const { return dir_ / "root"; }
  pid_t pid() const { return pid_; }
  const std::string& socket() const { return socket_; }

 private:
  fs::path dir_;
  std::string socket_;
  pid_t pid_ = -1;
};

agent::StartRequest cmd(std::vector<std::string> argv) {
  agent::StartRequest r;
  r.argv = std::move(argv);
  r.env = {"PATH=/usr/bin:/bin", "LC_ALL=C"};
  return r;
}
agent::StartRequest sh(const std::string& script) {
  return cmd({"/bin/sh", "-c", script});
}

/** Events of `ch` until EXIT; output appended to `out`. */
agent::ExitInfo wait_exit(AgentClient& c, std::uint32_t ch, std::string& out, std::chrono::seconds bound = 60s) {
  const auto deadline = in(bound);
  for (;;) {
    auto e = c.next_event_for(ch, deadline);
    REQUIRE(e.has_value());
    if (e->type == MsgType::kError) FAIL("agent error: " << e->error.message);
    if (e->type == MsgType::kOutput) out += e->data;
    if (e->type == MsgType::kExit) return e->exit;
  }
}

/** Reads output of `ch` until it contains `needle`. */
void wait_output(AgentClient& c, std::uint32_t ch, std::string& out, const std::string& needle) {
  const auto deadline = in(60s);
  while (out.find(needle) == std::string::npos) {
    auto e = c.next_event_for(ch, deadline);
    REQUIRE(e.has_value());
    REQUIRE(e->type != MsgType::kExit);
    REQUIRE(e->type != MsgType::kError);
    if (e->type == MsgType::kOutput) out += e->data;
  }
}

/** pids whose command line contains `marker` (as one argv word). */
std::set<int> processes_with_arg(const std::string& marker) {
  std::set<int> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cl = slurp(e.path() / "cmdline");
    std::size_t i = 0;
    while (i < cl.size()) {
      const auto j = cl.find('\0', i);
      if (cl.substr(i, j - i) == marker) out.insert(std::stoi(name));
      if (j == std::string::npos) break;
      i = j + 1;
    }
  }
  return out;
}

/** Every descendant of `pid` (from /proc parent links), but for the agent's spare shim and its waiting main process
 *  (named agent::kSpareName) unless `with_spare`. */
std::set<int> descendants(int pid, bool with_spare = false) {
  std::multimap<int, int> kids;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string st = slurp(e.path() / "stat");
    const auto lp = st.find('('), rp = st.rfind(')');
    if (lp == std::string::npos || rp == std::string::npos || rp < lp) continue;
    if (!with_spare && st.substr(lp + 1, rp - lp - 1) == agent::kSpareName) continue;
    char state = 0;
    int ppid = 0;
    if (std::sscanf(st.c_str() + rp + 1, " %c %d", &state, &ppid) == 2) kids.emplace(ppid, std::stoi(name));
  }
  std::set<int> out;
  std::vector<int> todo{pid};
  while (!todo.empty()) {
    const int p = todo.back();
    todo.pop_back();
    auto [lo, hi] = kids.equal_range(p);
    for (auto it = lo; it != hi; ++it)
      if (out.insert(it->second).second) todo.push_back(it->second);
  }
  return out;
}

/** descendants(pid, with_spare) once it is empty, or after 60 s ("eventually" vs "never"): a shim reports its exec's
 *  end before it exits and is reaped, so right after EXIT it may still be there for a moment. */
std::set<int> descendants_settled(int pid, bool with_spare = false) {
  const auto deadline = in(60s);
  std::set<int> d;
  while (!(d = descendants(pid, with_spare)).empty() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  return d;
}

/** Waits (bounded at 60 s: "eventually" vs "never") until exactly one process carries `marker`; returns the count. */
std::size_t await_process(const std::string& marker) {
  const auto deadline = in(60s);
  std::size_t n = 0;
  while ((n = processes_with_arg(marker).size()) != 1 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  return n;
}

long vm_kib(pid_t pid, const std::string& key) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key + ":", 0) == 0) return std::stol(line.substr(key.size() + 1));
  return -1;
}

}  // namespace

TEST_CASE("echo round trip and ping") {
  AgentProcess a;
  auto c = a.connect();
  CHECK(c.version() == agent::kProtocolVersion);
  CHECK(c.ping(in(60s)).count() > 0);
  auto r = c.run(cmd({"/bin/echo", "hi"}), "", in(60s));
  CHECK(r.out == "hi\n");
  CHECK(r.err.empty());
  CHECK_FALSE(r.exit.signaled);
  CHECK(r.exit.code == 0);
  CHECK(r.pid > 0);
  auto r2 = c.run(sh("echo out; echo err >&2; pwd"), "", in(60s));
  CHECK(r2.out == "out\n" + fs::canonical(a.root()).string() + "\n");
  CHECK(r2.err == "err\n");
}

TEST_CASE("the socket is created 0600 unless --socket-mode asks for 0666 (an unprivileged host side)") {
  struct stat st {};
  {
    AgentProcess agent;
    REQUIRE(::stat(agent.socket().c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0600);
  }
  AgentProcess lent({"--socket-mode", "0666"});
  REQUIRE(::stat(lent.socket().c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0666);
  auto c = lent.connect();
  c.ping(in(60s));
  // Any other mode is refused at start-up with the usage text (exit 2), before anything listens.
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 2);
    ::execl(BERTH_AGENT_PATH, BERTH_AGENT_PATH, "--listen", "unix:/tmp/berth-never.sock", "--socket-mode", "0777",
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 2);
}

TEST_CASE("1 MiB on stdin comes back byte for byte") {
  AgentProcess a;
  auto c = a.connect();
  std::string data(1 << 20, '\0');
  std::mt19937 rng(7);
  for (auto& ch : data)
    ch = static_cast<char>(rng());
  auto r = c.run(cmd({"/bin/cat"}), data, in(60s));
  CHECK(r.exit.code == 0);
  CHECK(r.out.size() == data.size());
  CHECK(r.out == data);
}

TEST_CASE("close-stdin delivers EOF to a waiting reader") {
  AgentProcess a;
  auto c = a.connect();
  const auto ch = c.start(sh("while read line; do echo \"got $line\"; done; echo eof"));
  c.write_stdin(ch, "one\n");
  std::string out;
  wait_output(c, ch, out, "got one\n");
  CHECK(out.find("eof") == std::string::npos);  // still running: no EOF before close
  c.close_stdin(ch);
  const auto x = wait_exit(c, ch, out);
  CHECK(out == "got one\neof\n");
  CHECK(x.code == 0);
}

TEST_CASE("signals reach the process and its group") {
  AgentProcess a;
  auto c = a.connect();
  SECTION("a trapped SIGINT to the process") {
    const auto ch = c.start(sh("trap 'echo trapped; exit 3' INT; echo ready; while :; do /bin/sleep 0.05; done"));
    std::string out;
    wait_output(c, ch, out, "ready\n");
    c.signal(ch, SIGINT, false);
    const auto x = wait_exit(c, ch, out);
    CHECK(out.find("trapped") != std::string::npos);
    CHECK_FALSE(x.signaled);
    CHECK(x.code == 3);
  }
  SECTION("SIGTERM to the group kills the process") {
    const auto ch = c.start(cmd({"/bin/sleep", "1000"}));
    auto e = c.next_event_for(ch, in(60s));
    REQUIRE(e);
    REQUIRE(e->type == MsgType::kStarted);
    c.signal(ch, SIGTERM, true);
    std::string out;
    const auto x = wait_exit(c, ch, out);
    CHECK(x.signaled);
    CHECK(x.code == SIGTERM);
    CHECK_FALSE(x.timed_out);
  }
}

TEST_CASE("PTY echoes input and follows resizes") {
  AgentProcess a;
  auto c = a.connect();
  auto req = sh("stty size; read line; echo \"line=$line\"; read line; stty size; exit 7");
  req.flags = agent::kStartPty;
  req.rows = 24;
  req.cols = 80;
  const auto ch = c.start(req);
  std::string out;
  wait_output(c, ch, out, "24 80");
  c.write_stdin(ch, "hello\n");
  wait_output(c, ch, out, "line=hello");
  CHECK(out.find("hello\r\n") != std::string::npos);  // the terminal echoed what we typed
  c.resize(ch, 40, 120);
  c.write_stdin(ch, "go\n");
  const auto x = wait_exit(c, ch, out);
  CHECK(out.find("40 120") != std::string::npos);
  CHECK(x.code == 7);
}

TEST_CASE("exit codes and exec failures") {
  AgentProcess a;
  auto c = a.connect();
  CHECK(c.run(sh("exit 42"), "", in(60s)).exit.code == 42);
  CHECK(c.run(cmd({"/bin/true"}), "", in(60s)).exit.code == 0);
  auto killed = c.run(sh("kill -9 $$"), "", in(60s)).exit;
  CHECK(killed.signaled);
  CHECK(killed.code == SIGKILL);
  try {
    c.run(cmd({"/nonexistent/program"}), "", in(60s));
    FAIL("exec of a missing program succeeded");
  } catch (const AgentError& e) {
    CHECK(e.code() == agent::ErrorCode::kExecFailed);
    CHECK(e.sys_errno() == ENOENT);
  }
  CHECK(c.run(cmd({"/bin/echo", "still", "serving"}), "", in(60s)).out == "still serving\n");
}

TEST_CASE("a timeout kills a fork bomb and setsid, nohup and env -i children, leaving nothing") {
  AgentProcess a;
  auto c = a.connect();
  // The bomb is bounded by RLIMIT_NPROC (as nobody when root, else a margin over this user's processes) so that
  // the shared machine survives it; it keeps forking until the agent kills the tree.
  std::string limit = "120";
  // Markers unique to this run (sleep takes fractional seconds): another run of this test on the machine, under the
  // sanitizers say, has sleeps of its own that are not this agent's.
  const std::string tag = "." + std::to_string(::getpid());
  const std::vector<std::string> markers{"1001" + tag, "1002" + tag, "1003" + tag, "1004" + tag};
  auto req = sh("setsid /bin/sleep " + markers[0] + " & nohup /bin/sleep " + markers[1] +
                " >/dev/null 2>&1 & env -i /bin/sleep " + markers[2] + " & (/bin/sleep " + markers[3] +
                " &) ; echo spawned; read go; "
                // dash spells the process limit -p, bash -u; without a limit there is no bomb (exit 99 fails the test).
                "{ ulimit -p \"$LIMIT\" || ulimit -u \"$LIMIT\"; } 2>/dev/null || exit 99; b() { b | b & }; b; wait");
  if (::geteuid() == 0) {
    req.uid = req.gid = 65534;
  } else {
    int mine = 0;
    for (const auto& e : fs::directory_iterator("/proc")) {
      struct stat st {};
      if (::stat(e.path().c_str(), &st) == 0 && st.st_uid == ::getuid()) ++mine;
    }
    limit = std::to_string(mine + 120);
  }
  req.env.push_back("LIMIT=" + limit);
  // Generous: the checks below run before the bomb starts and must finish inside the timeout even on a loaded machine
  // (8 s was not enough in a CI run that had fork bombs of other tests beside it).
  req.timeout_ms = 30000;
  const auto ch = c.start(req);
  std::string out;
  wait_output(c, ch, out, "spawned\n");
  for (const auto& m : markers)
    CHECK(await_process(m) == 1);
  c.write_stdin(ch, "go\n");  // the bomb starts only now: the checks above never race the timeout
  const auto x = wait_exit(c, ch, out);
  CHECK(x.timed_out);
  CHECK(x.signaled);
  for (const auto& m : markers)
    CHECK(processes_with_arg(m).empty());
  CHECK(descendants_settled(a.pid()).empty());
  // The agent still serves.
  CHECK(c.run(cmd({"/bin/echo", "after"}), "", in(60s)).out == "after\n");
}

TEST_CASE("an exec's leftovers die with it, and a cancel kills the tree") {
  AgentProcess a;
  auto c = a.connect();
  auto r = c.run(sh("setsid /bin/sleep 1011 & /bin/sleep 1012 & echo started"), "", in(60s));
  CHECK(r.out == "started\n");
  CHECK(processes_with_arg("1011").empty());
  CHECK(processes_with_arg("1012").empty());
  const auto ch = c.start(sh("setsid /bin/sleep 1013 & echo up; /bin/sleep 1014"));
  std::string out;
  wait_output(c, ch, out, "up\n");
  CHECK(await_process("1013") == 1);
  c.kill(ch);
  const auto x = wait_exit(c, ch, out);
  CHECK(x.signaled);
  CHECK_FALSE(x.timed_out);
  CHECK(processes_with_arg("1013").empty());
  CHECK(processes_with_arg("1014").empty());
  CHECK(descendants_settled(a.pid()).empty());
}

TEST_CASE("an output flood stays bounded in the agent") {
  AgentProcess a;
  auto c = a.connect();
  SECTION("past the cap, output is counted and dropped") {
    auto req = sh("head -c 50000000 /dev/zero");
    req.output_cap = 1 << 20;
    std::string out;
    const auto ch = c.start(req);
    const auto x = wait_exit(c, ch, out);
    CHECK(out.size() == (1u << 20));
    CHECK(x.output_dropped == 50000000u - (1u << 20));
    CHECK(x.code == 0);
  }
  SECTION("a client that does not read stops the agent reading (backpressure)") {
    auto req = cmd({"/bin/cat", "/dev/zero"});
    req.output_cap = ~std::uint64_t{0};
    const auto ch = c.start(req);
    auto e = c.next_event_for(ch, in(60s));
    REQUIRE(e);
    REQUIRE(e->type == MsgType::kStarted);
    std::this_thread::sleep_for(2s);  // not a timing assert: without backpressure this would buffer GBs
    CHECK(vm_kib(a.pid(), "VmHWM") < 64 * 1024);
    c.kill(ch);
    std::string out;
    const auto x = wait_exit(c, ch, out);
    CHECK(x.signaled);
    CHECK(vm_kib(a.pid(), "VmHWM") < 64 * 1024);
  }
}

TEST_CASE("a symlink swapped during reads and writes never escapes the root") {
  const bool walk = GENERATE(false, true);
  AgentProcess a(walk ? std::vector<std::string>{"--no-openat2"} : std::vector<std::string>{});
  auto c = a.connect();
  fs::create_directories(a.root() / "d");
  std::ofstream(a.root() / "d" / "f") << "inside";
  std::ofstream(a.dir() / "outside" / "f") << "SECRET";
  fs::create_directory_symlink(a.dir() / "outside", a.root() / "l");
  std::atomic<bool> stop{false};
  std::atomic<long> swaps{0};
  const std::string root = a.root().string();
  std::thread racer([&] {
    const int dfd = ::open(root.c_str(), O_PATH | O_DIRECTORY);
    while (!stop) {
      if (::syscall(SYS_renameat2, dfd, "d", dfd, "l", RENAME_EXCHANGE) == 0) ++swaps;
    }
    ::close(dfd);
  });
  int inside = 0, refused = 0;
  for (int i = 0; i < 400; ++i) {
    try {
      const auto got = c.read_file("d/f", agent::kKeepId, agent::kKeepId, in(60s));
      CHECK(got != "SECRET");
      CHECK(got == "inside");
      ++inside;
    } catch (const AgentError& e) {
      CHECK(e.code() == agent::ErrorCode::kFs);
      ++refused;
    }
    try {
      c.write_file("d/w" + std::to_string(i), "x", agent::kKeepId, agent::kKeepId, 0644, in(60s));
    } catch (const AgentError& e) {
      CHECK(e.code() == agent::ErrorCode::kFs);
    }
  }
  stop = true;
  racer.join();
  INFO("swaps " << swaps << ", inside " << inside << ", refused " << refused << ", walk " << walk);
  CHECK(swaps > 0);
  CHECK(inside > 0);
  for (const auto& e : fs::directory_iterator(a.dir() / "outside"))
    CHECK(e.path().filename() == "f");
  CHECK(slurp(a.dir() / "outside" / "f") == "SECRET");
  // Direct escapes are refused too.
  CHECK_THROWS_AS(c.read_file("../outside/f", agent::kKeepId, agent::kKeepId, in(60s)), AgentError);
  const std::string link = fs::is_symlink(a.root() / "l") ? "l/f" : "d/f";  // an odd number of swaps
  CHECK_THROWS_AS(c.read_file(link, agent::kKeepId, agent::kKeepId, in(60s)), AgentError);
}

TEST_CASE("non-UTF-8 names round-trip through every file operation") {
  AgentProcess a;
  auto c = a.connect();
  const std::string dir = std::string("dir-\xff\xfe");
  const std::string name = dir + "/f\x80\xc3(\n x";
  const auto keep = agent::kKeepId;
  c.mkdir(dir, 0755, false, keep, keep, in(60s));
  CHECK(c.write_file(name, "payload", keep, keep, 0600, in(60s)) == 7);
  CHECK(c.read_file(name, keep, keep, in(60s)) == "payload");
  CHECK(slurp(a.root() / dir / "f\x80\xc3(\n x") == "payload");
  const auto info = c.stat(name, keep, keep, in(60s));
  CHECK(info.kind == agent::FileKind::kRegular);
  CHECK(info.size == 7);
  CHECK(info.mode == 0600);
  const auto entries = c.list(dir, keep, keep, in(60s));
  REQUIRE(entries.size() == 1);
  CHECK(entries[0].name == "f\x80\xc3(\n x");
  c.mkdir("a/b/c", 0700, true, keep, keep, in(60s));
  CHECK(c.stat("a/b/c", keep, keep, in(60s)).kind == agent::FileKind::kDirectory);
  c.remove(dir, true, keep, keep, in(60s));
  CHECK_FALSE(fs::exists(a.root() / dir));
  try {
    c.stat(dir, keep, keep, in(60s));
    FAIL("stat of a removed directory succeeded");
  } catch (const AgentError& e) {
    CHECK(e.sys_errno() == ENOENT);
  }
}

TEST_CASE("file operations run as the requested user") {
  if (::geteuid() != 0) {
    // A skipped case in CI is a hole: there (as root) uid switching must be exercised.
    const char* ci = std::getenv("CI");
    if (ci != nullptr && std::string(ci) == "true") FAIL("CI=true but not root: uid switching cannot be tested");
    WARN("not root: uid switching is not exercised");
    return;
  }
  AgentProcess a;
  auto c = a.connect();
  fs::create_directories(a.root() / "rootonly");
  fs::permissions(a.root() / "rootonly", fs::perms::owner_all | fs::perms::group_read | fs::perms::others_read |
                                             fs::perms::group_exec | fs::perms::others_exec);
  try {
    c.write_file("rootonly/x", "no", 65534, 65534, 0644, in(60s));
    FAIL("nobody wrote into a root-only directory");
  } catch (const AgentError& e) {
    CHECK(e.sys_errno() == EACCES);
  }
  c.write_file("mine", "yes", 65534, 65534, 0644, in(60s));
  const auto info = c.stat("mine", agent::kKeepId, agent::kKeepId, in(60s));
  CHECK(info.uid == 65534);
  CHECK(info.gid == 65534);
  CHECK(c.run(
             [] {
               auto r = cmd({"/usr/bin/id", "-u"});
               r.uid = r.gid = 65534;
               return r;
             }(),
             "", in(60s))
            .out == "65534\n");
}

TEST_CASE("malformed frames get an error and the agent survives") {
  AgentProcess a;
  auto c = a.connect();
  auto expect_error = [&](std::uint32_t ch, agent::ErrorCode code) {
    auto e = c.next_event_for(ch, in(60s));
    REQUIRE(e);
    REQUIRE(e->type == MsgType::kError);
    CHECK(e->error.code == code);
  };
  c.send_raw(agent::encode_frame(MsgType::kStart, 900, "\x00\x00\x00\x05garbage"));
  expect_error(900, agent::ErrorCode::kBadPayload);
  c.send_raw(agent::encode_frame(static_cast<MsgType>(0x7777), 901, "from the future"));
  expect_error(901, agent::ErrorCode::kUnknownType);
  c.send_raw(agent::encode_frame(MsgType::kStart, 0, agent::StartRequest{{"/bin/true"}}.encode()));
  expect_error(0, agent::ErrorCode::kBadChannel);
  CHECK(c.ping(in(60s)).count() > 0);

  // A length past the maximum cannot be resynchronised: ERROR, then the agent closes that connection only.
  auto bad = a.connect();
  bad.send_raw(std::string("\xff\xff\xff\xff\x00\x10\x00\x00\x00\x00\x00\x01", 12));
  auto e = bad.next_event(in(60s));
  REQUIRE(e);
  CHECK(e->type == MsgType::kError);
  CHECK(e->error.code == agent::ErrorCode::kProtocol);
  CHECK_THROWS_AS(bad.next_event(in(60s)), AgentError);  // closed by the agent

  CHECK(c.run(cmd({"/bin/echo", "alive"}), "", in(60s)).out == "alive\n");
  auto fresh = a.connect();
  CHECK(fresh.run(cmd({"/bin/echo", "fresh"}), "", in(60s)).out == "fresh\n");
}

namespace {

/** Starts the agent with `args` and a socketpair as its stdin and stdout; returns its pid, our end in *fd. */
pid_t spawn_on_socketpair(const std::vector<std::string>& args, int* fd) {
  int pair[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(pair[1], 0), ::dup2(pair[1], 1);
    std::vector<char*> argv{const_cast<char*>(BERTH_AGENT_PATH)};
    for (const auto& a : args)
      argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(pair[1]);
  *fd = pair[0];
  return pid;
}

/** waitpid with a bound ("eventually" vs "never"): the exit status, or -1 when it still runs after 60 s. */
int wait_exit_status(pid_t pid) {
  for (int i = 0; i < 6000; ++i) {
    int st = 0;
    if (::waitpid(pid, &st, WNOHANG) == pid) return st;
    std::this_thread::sleep_for(10ms);
  }
  return -1;
}

}  // namespace

TEST_CASE("a --stdio agent without --listen exits once its connection ended, killing what it started") {
  const fs::path root = fs::temp_directory_path() / ("berth-agent-stdio-" + std::to_string(::getpid()));
  fs::create_directories(root);
  int fd = -1;
  const pid_t pid = spawn_on_socketpair({"--stdio", "--root", root.string()}, &fd);
  const std::string marker = "4242" + std::to_string(::getpid() % 1000);
  {
    auto c = AgentClient::over_fds(fd, fd, in(60s));
    auto r = c.run(cmd({"/bin/echo", "over stdio"}), "", in(60s));
    CHECK(r.out == "over stdio\n");
    const auto ch = c.start(cmd({"/bin/sleep", marker}));
    auto started = c.next_event_for(ch, in(60s));
    REQUIRE(started);
    CHECK(started->type == MsgType::kStarted);
    CHECK(await_process(marker) == 1);
  }  // the client closes its end: EOF on the agent's stdin
  const int st = wait_exit_status(pid);
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
  CHECK(processes_with_arg(marker).empty());  // its process died with it
  fs::remove_all(root);
}

TEST_CASE("an --init-only agent serves nothing until SIGTERM and is never combined with a way in") {
  const fs::path root = fs::temp_directory_path() / ("berth-agent-init-" + std::to_string(::getpid()));
  fs::create_directories(root);
  for (const auto& bad : std::vector<std::vector<std::string>>{
           {"--init-only", "--stdio"}, {"--init-only", "--listen", "unix:/tmp/x.sock"}, {"--root", root.string()}}) {
    int fd = -1;
    const pid_t pid = spawn_on_socketpair(bad, &fd);
    const int st = wait_exit_status(pid);
    CHECK(WIFEXITED(st));
    CHECK(WEXITSTATUS(st) == 2);  // usage
    ::close(fd);
  }
  int fd = -1;
  const pid_t pid = spawn_on_socketpair({"--init-only", "--root", root.string()}, &fd);
  ::close(fd);  // no connection to lose: it keeps running
  std::this_thread::sleep_for(200ms);
  int st = 0;
  CHECK(::waitpid(pid, &st, WNOHANG) == 0);
  ::kill(pid, SIGTERM);
  st = wait_exit_status(pid);
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
  fs::remove_all(root);
}

/** The agent's spare (its shim and waiting main process, named agent::kSpareName): pids, waiting up to 60 s for
 *  `want` of them ("eventually" vs "never"). */
std::set<int> spares_of(pid_t agent_pid, std::size_t want) {
  const auto deadline = in(60s);
  for (;;) {
    std::set<int> out;
    for (int p : descendants(agent_pid, true))
      if (slurp("/proc/" + std::to_string(p) + "/comm") == std::string(agent::kSpareName) + "\n") out.insert(p);
    if (out.size() == want || std::chrono::steady_clock::now() >= deadline) return out;
    std::this_thread::sleep_for(10ms);
  }
}

TEST_CASE("the spare shim runs requests as a fresh one would, and is replaced when it dies or is used") {
  AgentProcess a;
  auto c = a.connect();
  auto spare = spares_of(a.pid(), 2);
  REQUIRE(spare.size() == 2);  // forked ahead: the shim and the main process waiting for its request
  // What a request sets reaches the process through the spare: argv, env, cwd, stdin, exit code.
  fs::create_directories(a.root() / "sub dir");
  auto req = sh("printf '%s|%s|%s|' \"$0\" \"$V\" \"$PWD\"; cat; exit 3");
  req.argv.push_back("zero");
  req.env.push_back("V=\u00e9t\u00e9");
  req.cwd = "sub dir";
  auto r = c.run(req, "in", in(60s));
  CHECK(r.out == "zero|\u00e9t\u00e9|" + (a.root() / "sub dir").string() + "|in");
  CHECK(r.exit.code == 3);
  CHECK(spare.count(static_cast<int>(r.pid)) == 1);  // it ran in the spare's waiting process, not a fresh one
  // Used: a new spare, not the same processes.
  auto next = spares_of(a.pid(), 2);
  REQUIRE(next.size() == 2);
  for (int p : next)
    CHECK(spare.count(p) == 0);
  // Killed while waiting (the sandbox user may do that): the agent forks another, and requests run.
  ::kill(*next.begin(), SIGKILL);  // the shim (the lower pid): its main process dies with it
  std::set<int> replaced;
  for (auto deadline = in(60s); std::chrono::steady_clock::now() < deadline; std::this_thread::sleep_for(10ms)) {
    replaced = spares_of(a.pid(), 2);
    if (replaced.size() == 2 && !replaced.count(*next.begin()) && !replaced.count(*next.rbegin())) break;
  }
  CHECK(replaced.size() == 2);
  CHECK(replaced.count(*next.begin()) == 0);
  CHECK(replaced.count(*next.rbegin()) == 0);
  for (int i = 0; i < 3; ++i)
    CHECK(c.run(cmd({"/bin/echo", "after", std::to_string(i)}), "", in(60s)).out ==
          "after " + std::to_string(i) + "\n");
  // A request too big for the spare's pipe (an environment of 100 KB) and a PTY take a fresh shim; the spare waits on.
  const auto waiting = spares_of(a.pid(), 2);
  auto big = sh("printf %s \"$BIG\" | wc -c");
  big.env.push_back("BIG=" + std::string(100000, 'x'));
  auto rb = c.run(big, "", in(60s));
  CHECK(rb.out == "100000\n");
  CHECK(waiting.count(static_cast<int>(rb.pid)) == 0);
  auto tty = sh("test -t 0 && echo tty");
  tty.flags |= agent::kStartPty;
  CHECK(c.run(tty, "", in(60s)).out.find("tty") != std::string::npos);
  CHECK(spares_of(a.pid(), 2) == waiting);
  CHECK(descendants_settled(a.pid()).empty());  // nothing but the spare is left
}

TEST_CASE("a signal sent to the waiting spare does not reach the program it runs, which starts as a fresh one does") {
  AgentProcess a;
  auto c = a.connect();
  // What a process sees of its start: pending, blocked and ignored signals, its fds, its session.
  const auto probe =
      sh("grep -E '^Sig(Pnd|Blk|Ign)|^ShdPnd' /proc/self/status; ls /proc/self/fd | sort -n | tr '\\n' ' '; "
         "[ \"$(cut -d' ' -f6 /proc/self/stat)\" = \"$$\" ] && echo own-session");
  const std::string fresh = AgentProcess({"--no-spare"}).connect().run(probe, "", in(60s)).out;
  CHECK(fresh.find("own-session") != std::string::npos);
  auto spare = spares_of(a.pid(), 2);
  REQUIRE(spare.size() == 2);
  for (int p : spare)
    ::kill(p, SIGTERM), ::kill(p, SIGHUP);  // blocked while they wait: pending (at once) until the request comes
  auto r = c.run(probe, "", in(60s));
  CHECK(spare.count(static_cast<int>(r.pid)) == 1);
  CHECK_FALSE(r.exit.signaled);
  CHECK(r.exit.code == 0);
  CHECK(r.out == fresh);
}

TEST_CASE("an agent without a spare (--no-spare) forks nothing ahead, and requests run") {
  AgentProcess a({"--no-spare"});
  auto c = a.connect();
  CHECK(c.run(cmd({"/bin/echo", "cold"}), "", in(60s)).out == "cold\n");
  CHECK(descendants_settled(a.pid(), true).empty());
}

TEST_CASE("many processes run concurrently on one connection") {
  AgentProcess a;
  auto c = a.connect();
  std::vector<std::uint32_t> chans;
  for (int i = 0; i < 200; ++i)
    chans.push_back(c.start(sh("read x; echo \"$x-" + std::to_string(i) + "\"")));
  for (auto ch : chans)
    c.write_stdin(ch, "v\n"), c.close_stdin(ch);
  std::map<std::uint32_t, std::string> outs;
  int exits = 0;
  while (exits < 200) {
    auto e = c.next_event(in(60s));
    REQUIRE(e);
    REQUIRE(e->type != MsgType::kError);
    if (e->type == MsgType::kOutput) outs[e->channel] += e->data;
    if (e->type == MsgType::kExit) {
      ++exits;
      CHECK(e->exit.code == 0);
    }
  }
  for (std::size_t i = 0; i < chans.size(); ++i)
    CHECK(outs[chans[i]] == "v-" + std::to_string(i) + "\n");
}

TEST_CASE("docker: the agent as the entrypoint of a berth/python:3.11 container, over a bind-mounted socket",
          "[.][docker]") {
  char tmpl[] = "/tmp/berth-agent-docker-XXXXXX";
  const fs::path dir = ::mkdtemp(tmpl);
  const std::string name = "berth-agent-test-" + std::to_string(::getpid());
  // The agent runs as root (it switches to the session user per exec and per file operation); the image's own
  // user is the sandbox user, uid 1000.
  const std::string run = "docker run -d --rm --name " + name +
                          " --user 0:0 --network none -v " BERTH_AGENT_PATH ":/berth/agent:ro -v " + dir.string() +
                          ":/run/berth --entrypoint /berth/agent berth/python:3.11 --listen unix:/run/berth/agent.sock"
                          " --root /tmp >/dev/null";
  REQUIRE(std::system(run.c_str()) == 0);
  struct Cleanup {
    std::string name;
    fs::path dir;
    ~Cleanup() {
      std::system(("docker rm -f " + name + " >/dev/null 2>&1").c_str());
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{name, dir};
  // The socket appears when the agent listens (generous bound).
  const auto deadline = in(60s);
  while (!fs::exists(dir / "agent.sock") && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(20ms);
  REQUIRE(fs::exists(dir / "agent.sock"));
  auto c = AgentClient::connect_unix((dir / "agent.sock").string(), in(60s));
  CHECK(c.agent_pid() == 1);
  auto r = c.run(cmd({"/bin/echo", "hi"}), "", in(60s));
  CHECK(r.out == "hi\n");
  CHECK(r.exit.code == 0);
  auto req = cmd({"/usr/bin/python3", "-c", "import os; print(os.getppid() != 1, os.getuid())"});
  req.uid = req.gid = 1000;
  auto py = c.run(req, "", in(60s));
  CHECK(py.out == "True 1000\n");  // the per-exec shim is its parent, not the agent
  c.write_file("f", "data", 1000, 1000, 0644, in(60s));
  CHECK(c.stat("f", agent::kKeepId, agent::kKeepId, in(60s)).uid == 1000);
  CHECK(c.read_file("f", 1000, 1000, in(60s)) == "data");
}
