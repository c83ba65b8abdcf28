// The engine drivers (docker, podman) end to end through berthd's HTTP API: a corpus of >= 1,000 generated file
// names through every file route, code far beyond the argv limit, a session killed from inside, and timeouts that
// must leave no process behind. Every case runs once per engine (separate CTest entries through
// scripts/require-service: they fail, never skip, when CI=true and the engine is missing).
//
// Non-UTF-8 names are addressed as the HTTP API documents: requests carry `path_b64` (base64 of the raw path
// bytes) instead of `path`, and listing entries carry `name_b64` next to `name` when the name is not UTF-8.
#include <catch2/catch.hpp>

#include <Poco/Base64Decoder.h>
#include <Poco/Base64Encoder.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>

#include <utf8.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "api/berthd_process.hpp"
#include "core/sandbox_service.hpp"

using namespace berth::test;
using namespace std::chrono_literals;

namespace {

const char* kImage = "berth/python:3.11";

/** The engine a case runs against: its driver library and its socket. */
struct Engine {
  std::string name;
  std::string driver;
};

Engine engine_named(const std::string& name) {
  return name == "podman" ? Engine{"podman", BERTH_PODMAN_DRIVER} : Engine{"docker", BERTH_DOCKER_DRIVER};
}

BerthdConfig config_for(const Engine& engine) {
  BerthdConfig cfg;
  cfg.server = "threads = 16";
  cfg.driver_path = engine.driver;
  cfg.extra = "[profiles.default]\nimage = \"" + std::string(kImage) + "\"\nmemory = \"256MiB\"\npids = 128\n";
  return cfg;
}

std::string b64(const std::string& raw) {
  std::ostringstream os;
  Poco::Base64Encoder encoder(os);
  encoder.rdbuf()->setLineLength(0);
  encoder << raw;
  encoder.close();
  return os.str();
}

std::string unb64(const std::string& text) {
  std::istringstream is(text);
  Poco::Base64Decoder decoder(is);
  std::string out;
  char c;
  while (decoder.get(c))
    out += c;
  return out;
}

bool is_utf8(const std::string& s) {
  return utf8::is_valid(s.begin(), s.end());
}

std::string sb(const std::string& id) {
  return "/v1/sandboxes/" + id;
}

std::string json_of(const Poco::JSON::Object& o) {
  std::ostringstream os;
  o.stringify(os);
  return os.str();
}

/** The query addressing a raw path: `path=` when it is UTF-8, `path_b64=` otherwise. */
std::string path_query(const std::string& raw) {
  return is_utf8(raw) ? "path=" + url_encode(raw) : "path_b64=" + url_encode(b64(raw));
}

/** Sets `path` or `path_b64` on a JSON request body. */
void set_path(Poco::JSON::Object& body, const std::string& raw) {
  if (is_utf8(raw)) {
    body.set("path", raw);
  } else {
    body.set("path_b64", b64(raw));
  }
}

std::string create(const HttpClient& c) {
  auto r = c.post("/v1/sandboxes", "{}");
  INFO(r.body);
  REQUIRE(r.status == 201);
  return r.json()->getValue<std::string>("id");
}

HttpResponse exec(const HttpClient& c, const std::string& id, bool python, const std::string& code, int timeout = 60) {
  Poco::JSON::Object body;
  body.set(python ? "code" : "command", code);
  body.set("timeout", timeout);
  return c.post(sb(id) + (python ? "/python/exec" : "/shell/exec"), json_of(body));
}

// ---- the corpus ---------------------------------------------------------------------------------------------------

/** One generated name (raw bytes) and the directory it goes to. */
struct Case {
  std::string dir;
  std::string name;
  std::string path() const { return dir + "/" + name; }
};

/**
 * >= 1,000 names: every byte 1-255 (but '/') alone (but "." and ".."), inside, leading and trailing; names of
 * exactly 255 bytes (ASCII, 2-byte UTF-8, not UTF-8); shell and option look-alikes; invalid UTF-8 of every kind;
 * emoji; and names at the end of long nested paths (close to 4000 bytes).
 */
std::vector<Case> corpus(bool every_position) {
  std::vector<std::string> names;
  for (int b = 1; b < 256; ++b) {
    if (b == '/') continue;
    const std::string c(1, static_cast<char>(b));
    if (c != ".") names.push_back(c);
    if (!every_position) continue;
    names.push_back("in" + c + "side");
    names.push_back(c + "lead");
    names.push_back("trail" + c);
  }
  names.push_back(std::string(255, 'a'));
  std::string e2;
  while (e2.size() + 2 <= 255)
    e2 += "\xc3\xa9";
  names.push_back(e2 + "x");
  names.push_back(std::string(255, '\xff'));
  names.push_back(std::string(251, 'b') + "\xf0\x9f\x9a\x80");
  for (const char* s : {"-rf",
                        "--",
                        "-",
                        "--help",
                        "-n",
                        " ",
                        "  two  ",
                        " lead space",
                        "trail space ",
                        "it's",
                        "say \"hi\"",
                        "`id`",
                        "$(id)",
                        "${HOME}",
                        "$HOME",
                        "*",
                        "?",
                        "[a-z]",
                        "a*b",
                        "~",
                        "~root",
                        "..a",
                        "a..",
                        "...",
                        "....",
                        ".hidden",
                        "\n",
                        "a\nb",
                        "\r\n",
                        "\t",
                        "\x1b[31mred",
                        "back\\slash",
                        "\\0101",
                        "%s%n%x",
                        "%00",
                        "a;b",
                        "a|b",
                        "a&b",
                        "a>b",
                        "<a",
                        "#hash",
                        "!bang",
                        "a=b",
                        "'",
                        "\"",
                        "{}",
                        "é.txt",
                        "résumé 文.txt",
                        "ünïcødé_文件_🚀.txt",
                        "🚀",
                        "👩‍👩‍👧‍👦",
                        "\xef\xbb\xbf"
                        "bom",
                        "\xe2\x80\xae"
                        "rtl",
                        "\xc0\xaf",
                        "\xed\xa0\x80",
                        "\xf4\x90\x80\x80",
                        "\xc3",
                        "\xe2\x82",
                        "bad\xffname",
                        "\x80\x81\x82",
                        "\xfe\xfe\xff\xff",
                        "latin1 caf\xe9"}) {
    names.emplace_back(s);
  }
  // One case per name: a name listed twice (a byte alone and again among the look-alikes) would collide.
  std::set<std::string> seen;
  names.erase(std::remove_if(names.begin(), names.end(), [&](const std::string& n) { return !seen.insert(n).second; }),
              names.end());
  std::vector<Case> cases;
  const int kDirs = 8;
  for (std::size_t i = 0; i < names.size(); ++i)
    cases.push_back({"c" + std::to_string(i % kDirs), names[i]});
  // Long nested paths: 15 components of 250 bytes (ASCII, UTF-8, not UTF-8), a final name, < 4000 bytes in all.
  for (const std::string& unit : {std::string("d"), std::string("\xc3\xa9"), std::string("\xfe")}) {
    std::string dir = "deep";
    for (int level = 0; level < 15; ++level) {
      std::string component;
      while (component.size() + unit.size() <= 250)
        component += unit;
      dir += "/" + component;
    }
    cases.push_back({dir, "end" + unit});
  }
  return cases;
}

/** What went wrong with one case (empty: nothing). */
std::string round_trip(const HttpClient& c, const std::string& id, const Case& k, std::size_t index) {
  const std::string path = k.path();
  const std::string content = "content #" + std::to_string(index) + "\n";
  Poco::JSON::Object body;
  set_path(body, path);
  body.set("content", content);
  auto w = c.put(sb(id) + "/filesystem/files", json_of(body));
  if (w.status != 200) return "write: " + std::to_string(w.status) + " " + w.body;
  auto r = c.get(sb(id) + "/filesystem/files?" + path_query(path));
  if (r.status != 200) return "read: " + std::to_string(r.status) + " " + r.body;
  if (r.json()->optValue<std::string>("content", "") != content) return "read: wrong content " + r.body;
  auto d = c.get(sb(id) + "/filesystem/download?" + path_query(path));
  if (d.status != 200) return "download: " + std::to_string(d.status) + " " + d.body;
  if (d.body != content) return "download: wrong bytes";
  return "";
}

/** The raw names of a directory listing (name_b64 when present). Fails the test on an invalid listing. */
std::set<std::string> listed_names(const HttpClient& c, const std::string& id, const std::string& dir) {
  auto r = c.get(sb(id) + "/filesystem/directories?" + path_query(dir));
  INFO("listing " << b64(dir) << ": " << r.body.substr(0, 500));
  REQUIRE(r.status == 200);
  CHECK(is_utf8(r.body));  // the body is labelled UTF-8 JSON
  auto entries = r.json()->getArray("entries");
  REQUIRE(entries);
  std::set<std::string> names;
  for (std::size_t i = 0; i < entries->size(); ++i) {
    auto e = entries->getObject(static_cast<unsigned>(i));
    names.insert(e->has("name_b64") ? unb64(e->getValue<std::string>("name_b64")) : e->getValue<std::string>("name"));
  }
  return names;
}

/** Prints how many cases failed, for which reasons (the error message), and the first examples. */
void report(const std::vector<std::string>& failures, std::size_t total) {
  std::map<std::string, int> reasons;
  for (const auto& f : failures) {
    auto colon = f.find(": ", f.find(' ') + 1);
    std::string reason = colon == std::string::npos ? f : f.substr(colon + 2);
    auto at = reason.find("\"message\":");
    if (at != std::string::npos) reason = reason.substr(0, reason.find(' ')) + " " + reason.substr(at, 80);
    ++reasons[reason.substr(0, 120)];
  }
  UNSCOPED_INFO(failures.size() << " of " << total << " cases failed");
  for (const auto& [reason, count] : reasons)
    UNSCOPED_INFO(count << " x " << reason);
  for (std::size_t i = 0; i < failures.size() && i < 10; ++i)
    UNSCOPED_INFO(failures[i].substr(0, 200));
}

void corpus_case(const Engine& engine) {
  BerthdProcess berthd(config_for(engine));
  HttpClient c(berthd.port());
  // Both engines take the whole corpus (every byte alone, inside, leading and trailing): file operations go through
  // berth-agent, not one Engine API exec each (Podman once ran a third of it, as its execs wedged the engine).
  const auto cases = corpus(true);
  REQUIRE(cases.size() >= 1000);
  constexpr int kSandboxes = 2;
  constexpr int kThreads = 8;
  std::vector<std::string> ids;
  for (int i = 0; i < kSandboxes; ++i)
    ids.push_back(create(c));

  // write -> read -> download, concurrently; each case in the sandbox of its index.
  std::mutex mutex;
  std::vector<std::string> failures;
  std::atomic<std::size_t> next{0};
  auto worker = [&](auto&& step) {
    for (std::size_t i; (i = next++) < cases.size();) {
      std::string what;
      try {
        what = step(i);
      } catch (const std::exception& e) {  // a client timeout or reset is this case's failure, not the run's end
        what = std::string("exception: ") + e.what();
      }
      if (!what.empty()) {
        std::lock_guard lock(mutex);
        failures.push_back("#" + std::to_string(i) + " " + b64(cases[i].path()) + ": " + what);
      }
    }
  };
  auto in_parallel = [&](auto&& step) {
    next = 0;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&] { worker(step); });
    for (auto& th : threads)
      th.join();
  };
  in_parallel([&](std::size_t i) { return round_trip(c, ids[i % kSandboxes], cases[i], i); });
  report(failures, cases.size());
  CHECK(failures.empty());

  // Listing: every directory of every sandbox lists exactly its names, byte for byte.
  std::map<std::pair<int, std::string>, std::set<std::string>> expected;
  for (std::size_t i = 0; i < cases.size(); ++i)
    expected[{static_cast<int>(i % kSandboxes), cases[i].dir}].insert(cases[i].name);
  for (const auto& [where, names] : expected) {
    INFO("directory " << b64(where.second));
    CHECK(listed_names(c, ids[where.first], where.second) == names);
  }

  // remove: each file goes (the listings below must then be empty).
  failures.clear();
  in_parallel([&](std::size_t i) -> std::string {
    const std::string& id = ids[i % kSandboxes];
    auto r = c.del(sb(id) + "/filesystem/files?" + path_query(cases[i].path()));
    if (r.status != 200 && r.status != 204) return "remove: " + std::to_string(r.status) + " " + r.body;
    return "";
  });
  report(failures, cases.size());
  CHECK(failures.empty());
  for (const auto& [where, names] : expected)
    CHECK(listed_names(c, ids[where.first], where.second).empty());

  // Refused with 400, never a crash: NUL (by path_b64 and by JSON escape), a 256-byte name, a 4001-byte path.
  const std::string& id = ids[0];
  {
    Poco::JSON::Object body;
    body.set("path_b64", b64(std::string("nul\0inside", 10)));
    body.set("content", "x");
    CHECK(c.put(sb(id) + "/filesystem/files", json_of(body)).status == 400);
    CHECK(c.put(sb(id) + "/filesystem/files", R"({"path": "nul\u0000inside", "content": "x"})").status == 400);
    CHECK(c.get(sb(id) + "/filesystem/files?path=nul%00inside").status == 400);
  }
  for (const std::string& bad : {std::string(256, 'n'), std::string(4001, 'p'), [] {
                                   std::string s;
                                   while (s.size() <= 4000)
                                     s += std::string(100, 'q') + "/";
                                   return s + "f";
                                 }()}) {
    Poco::JSON::Object body;
    body.set("path", bad);
    body.set("content", "x");
    CHECK(c.put(sb(id) + "/filesystem/files", json_of(body)).status == 400);
  }

  // The server is alive and well after all of it.
  CHECK(berthd.running());
  CHECK(c.get("/health").status == 200);
  for (const auto& sid : ids)
    CHECK(c.del(sb(sid)).status == 204);
}

// ---- exec --------------------------------------------------------------------------------------------------------

void long_code_case(const Engine& engine) {
  BerthdProcess berthd(config_for(engine));
  HttpClient c(berthd.port());
  auto id = create(c);
  for (std::size_t size : {std::size_t{131072}, std::size_t{1000000}}) {
    INFO("code bytes " << size);
    std::string py = "print('py', len(open('/proc/self/cmdline', 'rb').read()) < 4096)\n#";
    py += std::string(size - py.size(), 'x');
    auto p = exec(c, id, true, py);
    INFO(p.body.substr(0, 400));
    REQUIRE(p.status == 200);
    CHECK(p.json()->getValue<std::string>("output") == "py True\n");
    CHECK(p.json()->getValue<int>("exit_code") == 0);
    std::string shell = "echo sh-ok\n#";
    shell += std::string(size - shell.size(), 'y');
    auto s = exec(c, id, false, shell);
    INFO(s.body.substr(0, 400));
    REQUIRE(s.status == 200);
    CHECK(s.json()->getValue<std::string>("output") == "sh-ok\n");
    CHECK(s.json()->getValue<int>("exit_code") == 0);
  }
  // The user's program sees EOF on its stdin (the code does not leak into it).
  auto eof = exec(c, id, true, "import sys\nprint(repr(sys.stdin.read()))");
  REQUIRE(eof.status == 200);
  CHECK(eof.json()->getValue<std::string>("output") == "''\n");
  CHECK(c.del(sb(id)).status == 204);
}

// Shell commands at the argv/stdin boundary (core::kShellArgvMax): up to it a command goes in argv, beyond it on
// stdin. Filled with 2-byte characters, which the engine exec path escapes to 5 bytes each, so the longest argv
// command is 80 KiB on its way through the engine: still under the kernel's 128 KiB for one argument. On the agent
// and on the Engine exec path (agent = false).
void argv_boundary_case(const Engine& engine, bool agent) {
  auto cfg = config_for(engine);
  if (!agent) cfg.driver_settings = "agent = false";
  BerthdProcess berthd(cfg);
  HttpClient c(berthd.port());
  auto id = create(c);
  for (std::size_t size :
       {berth::core::kShellArgvMax - 1, berth::core::kShellArgvMax, berth::core::kShellArgvMax + 1}) {
    INFO("command bytes " << size << (agent ? " (agent)" : " (engine exec)"));
    std::string command = "printf '%s|' \"$0\" \"$#\"; cat; echo \"\u00e9-ok\"\n#";
    while (command.size() + 2 <= size)
      command += "\u00e9";
    command.append(size - command.size(), 'z');
    Poco::JSON::Object body;
    body.set("command", command);
    auto r = c.post(sb(id) + "/shell/exec", json_of(body));
    INFO(r.body.substr(0, 400));
    REQUIRE(r.status == 200);
    // $0 is /bin/sh with no arguments on either path; the command's own stdin is empty (EOF at once).
    CHECK(r.json()->getValue<std::string>("output") == "/bin/sh|0|\u00e9-ok\n");
    CHECK(r.json()->getValue<int>("exit_code") == 0);
  }
  // A command starting with '-' or '+' is a command, never an option of sh (argv: `sh -c -- COMMAND`).
  for (const char* lead : {"-h", "+x"}) {
    Poco::JSON::Object body;
    body.set("command", std::string(lead) + " 2>/dev/null || echo after");
    auto r = c.post(sb(id) + "/shell/exec", json_of(body));
    INFO(r.body);
    REQUIRE(r.status == 200);
    CHECK(r.json()->getValue<std::string>("output") == "after\n");
  }
  CHECK(c.del(sb(id)).status == 204);
}

// agent_transport = "exec": every connection to the agent is an Engine API exec of it (--stdio) on a hijacked stream,
// as for an engine on another machine. The routes work as over the socket, concurrent execs each get a connection,
// and a connection berthd closes takes its agent with it: after a restart only the new connection's agent runs.
void exec_transport_case(const Engine& engine) {
  auto cfg = config_for(engine);
  cfg.driver_settings = "agent_transport = \"exec\"";
  BerthdProcess berthd(cfg);
  HttpClient c(berthd.port());
  auto id = create(c);
  auto hi = exec(c, id, false, "echo hi; id -u");
  INFO(hi.body);
  REQUIRE(hi.status == 200);
  CHECK(hi.json()->getValue<std::string>("output") == "hi\n1000\n");
  REQUIRE(exec(c, id, true, "x = 41").status == 200);  // a context: a long-lived process on its own connection
  auto cell = exec(c, id, true, "x + 1");
  INFO(cell.body);
  REQUIRE(cell.status == 200);
  CHECK(cell.json()->getObject("data")->getValue<std::string>("text") == "42");
  Poco::JSON::Object file;
  set_path(file, "notes/\u00e9t\u00e9.txt");
  file.set("content", "over the engine\n");
  REQUIRE(c.put(sb(id) + "/filesystem/files", json_of(file)).status == 200);
  auto read = c.get(sb(id) + "/filesystem/files?" + path_query("notes/\u00e9t\u00e9.txt"));
  REQUIRE(read.status == 200);
  CHECK(read.json()->getValue<std::string>("content") == "over the engine\n");

  std::atomic<int> good{0};
  std::vector<std::thread> callers;
  for (int i = 0; i < 10; ++i) {
    callers.emplace_back([&, i] {
      HttpClient mine(berthd.port());
      auto r = exec(mine, id, false, "sleep 0.3; echo " + std::to_string(i));
      if (r.status == 200 && r.json()->getValue<std::string>("output") == std::to_string(i) + "\n") ++good;
    });
  }
  for (auto& t : callers)
    t.join();
  CHECK(good.load() == 10);

  // The processes of the agent: one --init-only main process, no socket agent, and the --stdio agents of open
  // connections (the pool keeps up to 8 idle; the context holds one).
  const std::string list_agents =
      "for d in /proc/[0-9]*; do printf '%s ' \"${d#/proc/}\"; tr '\\000' ' ' <\"$d/cmdline\"; echo; done "
      "2>/dev/null | grep -E '^[0-9]+ /.berth/agent' | sed 's/ --root.*//' | sort -n";
  auto agents_of = [&](const std::string& mode) {  // pids of the agents started with `mode`
    auto r = exec(c, id, false, list_agents);
    INFO(r.body);
    REQUIRE(r.status == 200);
    std::set<std::string> pids;
    std::istringstream lines(r.json()->getValue<std::string>("output"));
    for (std::string line; std::getline(lines, line);) {
      CHECK(line.find("--listen") == std::string::npos);
      if (line.size() > mode.size() && line.compare(line.size() - mode.size(), mode.size(), mode) == 0)
        pids.insert(line.substr(0, line.find(' ')));
    }
    return pids;
  };
  CHECK(agents_of("--init-only").size() == 1);
  const auto before = agents_of("--stdio");
  CHECK_FALSE(before.empty());

  // berthd goes, its connections close, their agents exit (the session itself keeps running); the next berthd
  // adopts the session and reaches it through new execs.
  berthd.restart();
  std::set<std::string> left;
  for (int i = 0; i < 100; ++i) {  // the old agents exit once they read EOF: wait for that (bounded), not a time
    left.clear();
    for (const auto& pid : agents_of("--stdio"))
      if (before.count(pid)) left.insert(pid);
    if (left.empty()) break;
    std::this_thread::sleep_for(100ms);
  }
  CHECK(left.empty());
  CHECK(agents_of("--init-only").size() == 1);
  auto again = exec(c, id, false, "cat notes/\u00e9t\u00e9.txt");
  REQUIRE(again.status == 200);
  CHECK(again.json()->getValue<std::string>("output") == "over the engine\n");
  CHECK(c.del(sb(id)).status == 204);
}

void killed_session_case(const Engine& engine) {
  BerthdProcess berthd(config_for(engine));
  HttpClient c(berthd.port());
  auto id = create(c);
  auto first = exec(c, id, false, "echo hi > kept.txt; kill -9 -1");
  INFO(first.body);
  // Linux spares the caller of kill(-1): the shell may exit 0 before the dying session takes it (137); both are
  // results of the program. What matters is the next call.
  REQUIRE(first.status == 200);
  // At once: the dead session is detected and replaced; the engine's message is never the program's output.
  auto again = exec(c, id, false, "echo alive; cat kept.txt");
  INFO(again.body);
  REQUIRE(again.status == 200);
  CHECK(again.json()->getValue<std::string>("output") == "alive\nhi\n");
  CHECK(again.json()->getValue<int>("exit_code") == 0);
  CHECK(c.del(sb(id)).status == 204);
}

void timeout_case(const Engine& engine) {
  BerthdProcess berthd(config_for(engine));
  HttpClient c(berthd.port());
  auto id = create(c);
  auto t = exec(c, id, false,
                "env -i sleep 3001 & setsid sleep 3002 & nohup sleep 3003 >/dev/null 2>&1 & (sleep 3004 &); "
                "(env -i setsid sh -c 'sleep 3005 &' &); echo started; sleep 60",
                2);
  INFO(t.body);
  REQUIRE(t.status == 200);
  CHECK(t.json()->getValue<bool>("timed_out"));
  auto ps = exec(c, id, false,
                 "for f in /proc/[0-9]*/cmdline; do tr '\\000' ' ' <\"$f\"; echo; done 2>/dev/null | "
                 "grep -c '^sleep 300[0-9]'");
  INFO(ps.body);
  REQUIRE(ps.status == 200);
  CHECK(ps.json()->getValue<std::string>("output") == "0\n");
  CHECK(c.del(sb(id)).status == 204);
}

}  // namespace

TEST_CASE("docker: file name corpus through every file route", "[engine][docker]") {
  corpus_case(engine_named("docker"));
}
TEST_CASE("podman: file name corpus through every file route", "[engine][podman]") {
  corpus_case(engine_named("podman"));
}
TEST_CASE("docker: code of 131072 and 1000000 bytes runs", "[engine][docker]") {
  long_code_case(engine_named("docker"));
}
TEST_CASE("podman: code of 131072 and 1000000 bytes runs", "[engine][podman]") {
  long_code_case(engine_named("podman"));
}
TEST_CASE("docker: shell commands around the argv limit run on the agent and the engine exec path",
          "[engine][docker]") {
  argv_boundary_case(engine_named("docker"), true);
  argv_boundary_case(engine_named("docker"), false);
}
TEST_CASE("podman: shell commands around the argv limit run on the agent and the engine exec path",
          "[engine][podman]") {
  argv_boundary_case(engine_named("podman"), true);
  argv_boundary_case(engine_named("podman"), false);
}
TEST_CASE("docker: the agent over Engine exec streams serves every route and leaves no agent behind",
          "[engine][docker]") {
  exec_transport_case(engine_named("docker"));
}
TEST_CASE("podman: the agent over Engine exec streams serves every route and leaves no agent behind",
          "[engine][podman]") {
  exec_transport_case(engine_named("podman"));
}
TEST_CASE("docker: kill -9 -1 then exec again succeeds", "[engine][docker]") {
  killed_session_case(engine_named("docker"));
}
TEST_CASE("podman: kill -9 -1 then exec again succeeds", "[engine][podman]") {
  killed_session_case(engine_named("podman"));
}
TEST_CASE("docker: a timeout leaves no process behind", "[engine][docker]") {
  timeout_case(engine_named("docker"));
}
TEST_CASE("podman: a timeout leaves no process behind", "[engine][podman]") {
  timeout_case(engine_named("podman"));
}
