// The `berth` CLI end to end: the real binary as a child process against a real berthd (tests/api's harness), on
// the fake driver for the commands and their errors, and on Docker (through scripts/require-service) for exec,
// python and cp against a real engine. Each run has its own HOME, so no user config leaks in.
#include <Poco/DateTimeFormat.h>
#include <Poco/DateTimeParser.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Parser.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <thread>

#include "api/berthd_process.hpp"

#ifndef BERTH_CLI_PATH
#error "BERTH_CLI_PATH must name the berth binary"
#endif

namespace {

using berth::test::BerthdConfig;
using berth::test::BerthdProcess;
using berth::test::HttpClient;
using Poco::JSON::Object;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

const std::string kTenantKey = "tenant-key-0123456789";
const std::string kAdminKey = "admin-key-0123456789abcdef";

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

Object::Ptr parse(const std::string& text) {
  Poco::JSON::Parser parser;
  auto v = parser.parse(text);
  REQUIRE(v.type() == typeid(Object::Ptr));
  return v.extract<Object::Ptr>();
}

/** Seconds between two RFC 3339 times of the API. */
long long seconds_between(const std::string& from, const std::string& to) {
  int tz = 0;
  auto a = Poco::DateTimeParser::parse(Poco::DateTimeFormat::ISO8601_FRAC_FORMAT, from, tz);
  auto b = Poco::DateTimeParser::parse(Poco::DateTimeFormat::ISO8601_FRAC_FORMAT, to, tz);
  return (b - a).totalSeconds();
}

struct Run {
  int code = -1;
  std::string out, err;
};

/** A scratch directory, removed at the end. */
struct TempDir {
  fs::path path;
  TempDir() {
    std::string templ = (fs::temp_directory_path() / "berth-cli-XXXXXX").string();
    REQUIRE(mkdtemp(templ.data()) != nullptr);
    path = templ;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

/**
 * Runs `berth` with exactly the given environment (plus PATH and HOME = a fresh directory), stdin from `input`,
 * stdout and stderr captured in files. A run still going after 120 s (generous: each takes well under one) is
 * killed and fails the test.
 */
class Cli {
 public:
  explicit Cli(std::map<std::string, std::string> env = {}) : env_(std::move(env)) {
    env_["PATH"] = "/usr/bin:/bin";
    env_["HOME"] = (home() / "home").string();
    fs::create_directories(home() / "home");
  }
  const fs::path& home() const { return dir_.path; }
  fs::path config_file() const { return dir_.path / "home" / ".config" / "berth" / "config.toml"; }
  std::map<std::string, std::string>& env() { return env_; }

  Run operator()(const std::vector<std::string>& args, const std::map<std::string, std::string>& extra_env = {},
                 const std::string& input = "") const {
    auto env = env_;
    for (const auto& [k, v] : extra_env)
      env[k] = v;
    std::vector<std::string> env_strings;
    for (const auto& [k, v] : env)
      env_strings.push_back(k + "=" + v);
    std::vector<std::string> argv_strings{BERTH_CLI_PATH};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    std::vector<char*> argv, envp;
    for (auto& s : argv_strings)
      argv.push_back(s.data());
    for (auto& s : env_strings)
      envp.push_back(s.data());
    argv.push_back(nullptr);
    envp.push_back(nullptr);
    std::string in_path = (dir_.path / "stdin").string(), out_path = (dir_.path / "stdout").string(),
                err_path = (dir_.path / "stderr").string();
    write_file(in_path, input);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int in = open(in_path.c_str(), O_RDONLY);
      int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (in < 0 || out < 0 || err < 0) _exit(126);
      dup2(in, 0);
      dup2(out, 1);
      dup2(err, 2);
      if (chdir(dir_.path.c_str()) != 0) _exit(126);
      execve(argv[0], argv.data(), envp.data());
      _exit(127);
    }
    int status = 0;
    auto deadline = std::chrono::steady_clock::now() + 120s;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        FAIL("berth did not finish within 120 s");
      }
      std::this_thread::sleep_for(5ms);
    }
    Run r;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    r.out = read_file(out_path);
    r.err = read_file(err_path);
    return r;
  }

 private:
  TempDir dir_;
  std::map<std::string, std::string> env_;
};

std::string url_of(const BerthdProcess& b) {
  return "http://127.0.0.1:" + std::to_string(b.port());
}

/** "sandbox-...\n" → the id; fails the run otherwise. */
std::string created_id(const Run& r) {
  INFO("stdout: " << r.out << " stderr: " << r.err);
  REQUIRE(r.code == 0);
  REQUIRE(r.out.rfind("sandbox-", 0) == 0);
  REQUIRE(r.out.back() == '\n');
  return r.out.substr(0, r.out.size() - 1);
}

std::string auth_toml() {
  return "[auth]\n[auth.keys]\n\"" + kTenantKey + "\" = \"alice\"\n[auth.admin_keys]\n\"" + kAdminKey +
         "\" = \"ops\"\n";
}

/** Bytes 0..255 in a pseudo-random order, many times over: NULs, CR/LF, invalid UTF-8, everything. */
std::string binary_blob(std::size_t size) {
  std::mt19937 rng(1234);
  std::string bytes(size, '\0');
  for (std::size_t i = 0; i < size; ++i)
    bytes[i] = static_cast<char>(i < 256 ? i : rng() & 0xff);
  return bytes;
}

const std::string kOddName = "données ☃ 名前 'q\" $x.bin";

}  // namespace

TEST_CASE("create, ls, get, start, stop, keepalive, extend and rm, as tables and as JSON") {
  BerthdProcess berthd;
  Cli berth({{"BERTH_URL", url_of(berthd)}});
  HttpClient http(berthd.port());

  auto created = berth({"create", "--ttl", "1h", "--label", "team=a", "--label", "tier=dev", "--env", "FOO=bar",
                        "--key", "chat-1", "--json"});
  REQUIRE(created.code == 0);
  auto first = parse(created.out);
  std::string a = first->getValue<std::string>("id");
  CHECK(first->getValue<std::string>("status") == "idle");
  CHECK(first->getValue<std::string>("key") == "chat-1");
  CHECK(first->getObject("labels")->getValue<std::string>("team") == "a");
  CHECK(first->getObject("labels")->getValue<std::string>("tier") == "dev");
  CHECK(seconds_between(first->getValue<std::string>("created_at"), first->getValue<std::string>("expires_at")) ==
        3600);

  // The same key gets the same sandbox back; a human create prints only the id.
  CHECK(created_id(berth({"create", "--key", "chat-1"})) == a);
  std::string b = created_id(berth({"create", "--ttl", "2d", "--profile", "default"}));
  CHECK(b != a);
  auto bj = http.get("/v1/sandboxes/" + b).json();
  CHECK(seconds_between(bj->getValue<std::string>("created_at"), bj->getValue<std::string>("expires_at")) == 172800);

  auto ls = berth({"ls", "--json"});
  REQUIRE(ls.code == 0);
  auto items = parse(ls.out)->getArray("items");
  REQUIRE(items->size() == 2);
  CHECK(parse(ls.out)->isNull("next_cursor"));
  auto filtered = berth({"ls", "--label", "team=a", "--json"});
  REQUIRE(filtered.code == 0);
  REQUIRE(parse(filtered.out)->getArray("items")->size() == 1);
  CHECK(parse(filtered.out)->getArray("items")->getObject(0)->getValue<std::string>("id") == a);
  auto one_page = berth({"ls", "--limit", "1", "--json"});
  REQUIRE(one_page.code == 0);
  CHECK(parse(one_page.out)->getArray("items")->size() == 1);
  CHECK(!parse(one_page.out)->isNull("next_cursor"));
  auto table = berth({"ls"});
  REQUIRE(table.code == 0);
  CHECK(table.out.rfind("ID ", 0) == 0);
  CHECK(table.out.find(a) != std::string::npos);
  CHECK(table.out.find(b) != std::string::npos);
  CHECK(table.out.find("team=a,tier=dev") != std::string::npos);

  auto got = berth({"get", a, "--json"});
  REQUIRE(got.code == 0);
  CHECK(parse(got.out)->getValue<std::string>("id") == a);
  auto fields = berth({"get", a});
  REQUIRE(fields.code == 0);
  CHECK(fields.out.find("status: ") != std::string::npos);
  CHECK(fields.out.find("id:") == 0);

  auto started = berth({"start", a, "--json"});
  REQUIRE(started.code == 0);
  CHECK(parse(started.out)->getValue<std::string>("status") == "ready");
  CHECK(http.get("/v1/sandboxes/" + a).json()->getValue<std::string>("status") == "ready");
  auto stopped = berth({"stop", a});
  REQUIRE(stopped.code == 0);
  CHECK(stopped.out == a + " stopped\n");
  CHECK(http.get("/v1/sandboxes/" + a).json()->getValue<std::string>("status") == "idle");

  REQUIRE(berth({"keepalive", a}).code == 0);
  CHECK(!http.get("/v1/sandboxes/" + a).json()->isNull("idle_expires_at"));
  auto extended = berth({"extend", a, "--by", "1h30m", "--json"});
  REQUIRE(extended.code == 0);
  CHECK(seconds_between(first->getValue<std::string>("expires_at"),
                        parse(extended.out)->getValue<std::string>("expires_at")) == 5400);

  auto removed = berth({"rm", a, b});
  REQUIRE(removed.code == 0);
  CHECK(removed.out == a + "\n" + b + "\n");
  CHECK(http.get("/v1/sandboxes/" + a).status == 404);
  CHECK(http.get("/v1/sandboxes/" + b).status == 404);
  auto again = berth({"rm", a});
  CHECK(again.code == 2);
  CHECK(again.err.find("not_found") != std::string::npos);
}

TEST_CASE("exec passes argv, prints stdout and stderr, and exits with the remote code") {
  BerthdProcess berthd;
  Cli berth({{"BERTH_URL", url_of(berthd)}});
  std::string id = created_id(berth({"create", "--env", "FOO=from env"}));

  auto hello = berth({"exec", id, "--", "echo", "hello  world", "it's"});
  CHECK(hello.code == 0);
  CHECK(hello.out == "hello  world it's\n");
  CHECK(hello.err.empty());

  auto mixed = berth({"exec", id, "--", "sh", "-c", "echo out; echo err >&2; exit 7"});
  CHECK(mixed.code == 7);
  CHECK(mixed.out == "out\n");
  CHECK(mixed.err == "err\n");

  auto env = berth({"exec", id, "--", "printenv", "FOO"});
  CHECK(env.code == 0);
  CHECK(env.out == "from env\n");

  REQUIRE(berth({"exec", id, "--", "mkdir", "-p", "sub/dir"}).code == 0);
  auto pwd = berth({"exec", id, "--cwd", "sub/dir", "--", "pwd"});
  CHECK(pwd.code == 0);
  CHECK(pwd.out == "/workspace/sub/dir\n");

  auto json = berth({"exec", id, "--json", "--", "sh", "-c", "echo x; exit 3"});
  CHECK(json.code == 3);
  auto body = parse(json.out);
  CHECK(body->getValue<int>("exit_code") == 3);
  CHECK(body->getValue<std::string>("output") == "x\n");
  CHECK(body->getValue<std::string>("execution_id").rfind("exec-", 0) == 0);

  auto timed_out = berth({"exec", id, "--timeout", "1s", "--", "hang"});
  CHECK(timed_out.code == 124);
  CHECK(timed_out.err.find("timed out") != std::string::npos);
  CHECK(timed_out.err.back() == '\n');

  auto missing = berth({"exec", id, "--", "no-such-command"});
  CHECK(missing.code == 127);

  auto no_command = berth({"exec", id});
  CHECK(no_command.code == 1);
  auto bad_timeout = berth({"exec", id, "--timeout", "301s", "--", "true"});
  CHECK(bad_timeout.code == 2);
  CHECK(bad_timeout.err.find("validation_error") != std::string::npos);
}

TEST_CASE("python runs -c, a file and stdin") {
  BerthdProcess berthd;
  Cli berth({{"BERTH_URL", url_of(berthd)}});
  std::string id = created_id(berth({"create"}));

  auto inline_code = berth({"python", id, "-c", "print(1+2)"});
  CHECK(inline_code.code == 0);
  CHECK(inline_code.out == "3\n");

  write_file(berth.home() / "script.py", "import sys\nprint('from file')\nsys.exit(4)\n");
  auto from_file = berth({"python", id, (berth.home() / "script.py").string()});
  CHECK(from_file.code == 4);
  CHECK(from_file.out == "from file\n");

  auto from_stdin = berth({"python", id, "-"}, {}, "import sys\nprint(40+2)\nprint('x', file=sys.stderr)\n");
  CHECK(from_stdin.code == 0);
  CHECK(from_stdin.out == "42\n");
  CHECK(from_stdin.err == "x\n");

  auto raised = berth({"python", id, "-c", "raise ValueError('no')"});
  CHECK(raised.code == 1);
  CHECK(raised.err.find("ValueError: no") != std::string::npos);

  // Code goes up to the server's body limit (1 MiB by default); beyond, the server's 413 is reported.
  std::string near_limit = "print('big')\n#" + std::string(1000 * 1000, 'x') + "\n";
  auto big = berth({"python", id, "-"}, {}, near_limit);
  CHECK(big.code == 0);
  CHECK(big.out == "big\n");
  auto too_big = berth({"python", id, "-"}, {}, "#" + std::string(3 * 1024 * 1024, 'x') + "\n");
  CHECK(too_big.code == 2);
  CHECK(too_big.err.find("payload_too_large") != std::string::npos);

  CHECK(berth({"python", id}).code == 1);
  CHECK(berth({"python", id, "-c", "print(1)", "-"}).code == 1);
  CHECK(berth({"python", id, (berth.home() / "missing.py").string()}).code == 1);
}

TEST_CASE("cp round-trips a binary file with a non-ASCII name") {
  BerthdProcess berthd;
  Cli berth({{"BERTH_URL", url_of(berthd)}});
  std::string id = created_id(berth({"create"}));
  std::string blob = binary_blob(300000);
  fs::path local = berth.home() / kOddName;
  write_file(local, blob);

  auto up = berth({"cp", local.string(), id + ":in/" + kOddName, "--json"});
  REQUIRE(up.code == 0);
  auto up_body = parse(up.out);
  CHECK(up_body->getValue<std::string>("path") == "in/" + kOddName);
  CHECK(up_body->getValue<std::uint64_t>("size") == blob.size());

  fs::path out_dir = berth.home() / "out";
  fs::create_directories(out_dir);
  auto down = berth({"cp", id + ":/workspace/in/" + kOddName, out_dir.string()});
  REQUIRE(down.code == 0);
  CHECK(read_file(out_dir / kOddName) == blob);
  CHECK(std::distance(fs::directory_iterator(out_dir), fs::directory_iterator()) == 1);  // no temporary left

  auto to_stdout = berth({"cp", id + ":in/" + kOddName, "-"});
  REQUIRE(to_stdout.code == 0);
  CHECK(to_stdout.out == blob);

  // Upload into a directory keeps the local name.
  REQUIRE(berth({"cp", local.string(), id + ":dir/"}).code == 0);
  auto listed = berth({"cp", id + ":dir/" + kOddName, "-"});
  CHECK(listed.code == 0);
  CHECK(listed.out == blob);

  // A name that is not UTF-8 travels as path_b64, both ways.
  const std::string latin1 = "caf\xe9 \xff.bin";
  write_file(berth.home() / latin1, blob.substr(0, 1000));
  REQUIRE(berth({"cp", (berth.home() / latin1).string(), id + ":"}).code == 0);
  REQUIRE(berth({"cp", id + ":" + latin1, (berth.home() / "latin1.copy").string()}).code == 0);
  CHECK(read_file(berth.home() / "latin1.copy") == blob.substr(0, 1000));
  CHECK(HttpClient(berthd.port())
            .get("/v1/sandboxes/" + id + "/filesystem/download?path_b64=Y2Fm6SD/LmJpbg%3D%3D")
            .body == blob.substr(0, 1000));

  auto missing = berth({"cp", id + ":nope.bin", (out_dir / "nope.bin").string()});
  CHECK(missing.code == 2);
  CHECK(missing.err.find("not_found") != std::string::npos);
  CHECK(!fs::exists(out_dir / "nope.bin"));
  CHECK(std::distance(fs::directory_iterator(out_dir), fs::directory_iterator()) == 1);

  CHECK(berth({"cp", local.string(), (out_dir / "x").string()}).code == 1);  // no side is remote
  CHECK(berth({"cp", (berth.home() / "absent").string(), id + ":x"}).code == 1);
  auto escape = berth({"cp", local.string(), id + ":../x"});
  CHECK(escape.code == 2);
  CHECK(escape.err.find("validation_error") != std::string::npos);
}

TEST_CASE("history lists executions newest first") {
  BerthdProcess berthd;
  Cli berth({{"BERTH_URL", url_of(berthd)}});
  std::string id = created_id(berth({"create"}));
  REQUIRE(berth({"exec", id, "--", "echo", "one"}).code == 0);
  REQUIRE(berth({"python", id, "-c", "print(2)"}).code == 0);

  auto all = berth({"history", id, "--json"});
  REQUIRE(all.code == 0);
  auto page = parse(all.out);
  CHECK(page->getValue<int>("total") == 2);
  auto entries = page->getArray("entries");
  REQUIRE(entries->size() == 2);
  CHECK(entries->getObject(0)->getValue<std::string>("exec_type") == "python");
  CHECK(entries->getObject(1)->getValue<std::string>("exec_type") == "shell");

  auto shell_only = berth({"history", id, "--type", "shell", "--json"});
  REQUIRE(shell_only.code == 0);
  CHECK(parse(shell_only.out)->getValue<int>("total") == 1);

  auto table = berth({"history", id, "--limit", "1"});
  REQUIRE(table.code == 0);
  CHECK(table.out.rfind("ID ", 0) == 0);
  CHECK(table.out.find("print(2)") != std::string::npos);
  CHECK(table.out.find("echo one") == std::string::npos);
  CHECK(table.err.find("1 of 2") != std::string::npos);
}

TEST_CASE("terminal types piped input into the sandbox's shell and exits with the shell's code") {
  BerthdProcess berthd;
  Cli berth({{"BERTH_URL", url_of(berthd)}});
  std::string id = created_id(berth({"create"}));

  auto r = berth({"terminal", id, "--rows", "30", "--cols", "90"}, {}, "echo hi\nstty size\nexit 5\n");
  INFO(r.out << r.err);
  CHECK(r.code == 5);
  CHECK(r.out.find("hi\r\n") != std::string::npos);
  CHECK(r.out.find("30 90\r\n") != std::string::npos);
  CHECK(r.err.empty());

  // The end of piped input is the terminal's ^D: the shell ends with the last command's status.
  auto eof = berth({"terminal", id}, {}, "echo bye\n");
  INFO(eof.out << eof.err);
  CHECK(eof.code == 0);
  CHECK(eof.out.find("bye\r\n") != std::string::npos);

  auto missing = berth({"terminal", "sandbox-000000000000"});
  CHECK(missing.code == 2);
  CHECK(missing.err.find("not_found") != std::string::npos);
  auto bad = berth({"terminal", id, "--rows", "0"});
  CHECK(bad.code == 1);
}

TEST_CASE("errors print the server's code and exit 2, usage errors 1, an unreachable server 3") {
  BerthdProcess berthd(BerthdConfig{.extra = auth_toml()});
  Cli berth({{"BERTH_URL", url_of(berthd)}, {"BERTH_API_KEY", kTenantKey}});

  auto unknown = berth({"get", "sandbox-000000000000"});
  CHECK(unknown.code == 2);
  CHECK(unknown.err.find("berth: not_found: ") == 0);
  CHECK(unknown.err.find("[HTTP 404, req-") != std::string::npos);

  auto bad_key = berth({"ls"}, {{"BERTH_API_KEY", "wrong-key-0123456789"}});
  CHECK(bad_key.code == 2);
  CHECK(bad_key.err.find("unauthorized") != std::string::npos);
  auto bad_key_json = berth({"ls", "--json"}, {{"BERTH_API_KEY", "wrong-key-0123456789"}});
  CHECK(bad_key_json.code == 2);
  CHECK(parse(bad_key_json.err)->getObject("error")->getValue<std::string>("code") == "unauthorized");
  CHECK(bad_key_json.out.empty());

  // gc is an admin route: a tenant gets the same 404 as for any unknown path, the admin key runs a pass.
  auto tenant_gc = berth({"gc"});
  CHECK(tenant_gc.code == 2);
  CHECK(tenant_gc.err.find("not_found") != std::string::npos);
  auto admin_gc = berth({"gc", "--json"}, {{"BERTH_API_KEY", kAdminKey}});
  REQUIRE(admin_gc.code == 0);
  CHECK(parse(admin_gc.out)->getArray("idle_stopped") != nullptr);
  auto admin_gc_table = berth({"gc"}, {{"BERTH_API_KEY", kAdminKey}});
  REQUIRE(admin_gc_table.code == 0);
  CHECK(admin_gc_table.out.find("expired_deleted:") != std::string::npos);

  auto bad_ttl = berth({"create", "--ttl", "5x"});
  CHECK(bad_ttl.code == 1);
  CHECK(bad_ttl.err.find("not a duration") != std::string::npos);
  CHECK(berth({"create", "--ttl", "1h30"}).code == 1);
  CHECK(berth({"create", "--ttl", "99999999999999999999d"}).code == 1);
  CHECK(berth({"create", "--label", "novalue"}).code == 1);
  CHECK(berth({"frobnicate"}).code == 1);
  CHECK(berth({}).code == 1);
  auto listed = berth({"ls", "--json"});
  REQUIRE(listed.code == 0);
  CHECK(parse(listed.out)->getArray("items")->size() == 0);  // none of the refused creates reached the server

  auto version = berth({"version", "--json"});
  REQUIRE(version.code == 0);
  auto v = parse(version.out);
  CHECK(v->getObject("client")->getValue<std::string>("version") == BERTH_VERSION_STRING);
  CHECK(v->getObject("server")->getObject("driver")->getValue<std::string>("name") == "fake");
  auto profiles = berth({"profiles", "--json"});
  REQUIRE(profiles.code == 0);
  CHECK(parse(profiles.out)->getArray("items")->size() >= 1);

  REQUIRE(berthd.stop() == 0);
  auto down = berth({"ls"});
  CHECK(down.code == 3);
  CHECK(down.err.find("cannot reach berthd at " + url_of(berthd)) != std::string::npos);
  auto version_down = berth({"version"});
  CHECK(version_down.code == 3);
  CHECK(version_down.out == std::string("berth ") + BERTH_VERSION_STRING + "\n");
}

TEST_CASE("flags beat the environment, which beats the config file") {
  BerthdProcess berthd(BerthdConfig{.extra = auth_toml()});
  BerthdProcess gone;
  std::string dead = url_of(gone);
  REQUIRE(gone.stop() == 0);
  Cli berth;
  write_file(berth.config_file(), "url = \"" + url_of(berthd) + "\"\napi_key = \"" + kTenantKey + "\"\n");

  CHECK(berth({"ls"}).code == 0);                                                  // the file alone
  CHECK(berth({"ls"}, {{"BERTH_URL", dead}}).code == 3);                           // env over file
  CHECK(berth({"ls", "--url", url_of(berthd)}, {{"BERTH_URL", dead}}).code == 0);  // flag over env
  CHECK(berth({"ls"}, {{"BERTH_URL", ""}}).code == 0);                             // an empty variable is unset
  auto env_key = berth({"ls"}, {{"BERTH_API_KEY", "wrong-key-0123456789"}});
  CHECK(env_key.code == 2);
  CHECK(env_key.err.find("unauthorized") != std::string::npos);
  CHECK(berth({"ls", "--api-key", kTenantKey}, {{"BERTH_API_KEY", "wrong-key-0123456789"}}).code == 0);
  CHECK(berth({"--api-key", "wrong-key-0123456789", "ls"}).code == 2);  // flag over file, before the command too
  // A key with a line break would add a header of its own: a usage error, nothing sent.
  auto injected = berth({"ls", "--api-key", std::string(kTenantKey) + "\r\nX-Injected: 1"});
  CHECK(injected.code == 1);
  CHECK(injected.err.find("control characters") != std::string::npos);

  // $XDG_CONFIG_HOME replaces ~/.config.
  fs::path xdg = berth.home() / "xdg";
  write_file(xdg / "berth" / "config.toml", "url = \"" + dead + "\"\n");
  auto from_xdg = berth({"ls"}, {{"XDG_CONFIG_HOME", xdg.string()}});
  CHECK(from_xdg.code == 3);
  CHECK(from_xdg.err.find(dead) != std::string::npos);

  write_file(berth.config_file(), "url = \"" + url_of(berthd) + "\"\napi-key = \"x\"\n");
  auto typo = berth({"ls"});
  CHECK(typo.code == 1);
  CHECK(typo.err.find("config.toml: unknown key 'api-key'") != std::string::npos);
  write_file(berth.config_file(), "url = [\n");
  CHECK(berth({"ls"}).code == 1);
  CHECK(berth({"ls"}, {{"BERTH_URL", url_of(berthd)}, {"BERTH_API_KEY", kTenantKey}}).code == 0);  // not read
}

#ifdef BERTH_DOCKER_DRIVER
TEST_CASE("docker: exec, python and cp through the CLI", "[docker]") {
  BerthdConfig config;
  config.driver_path = BERTH_DOCKER_DRIVER;
  config.extra = "[profiles.default]\nimage = \"berth/python:3.11\"\nmemory = \"256MiB\"\npids = 128\ncpus = 1.0\n";
  BerthdProcess berthd(config);
  Cli berth({{"BERTH_URL", url_of(berthd)}});
  std::string id = created_id(berth({"create", "--label", "test=cli"}));
  struct Cleanup {  // the sandbox, its container and volume go even when a check fails
    HttpClient http;
    std::string id;
    ~Cleanup() {
      try {
        http.del("/v1/sandboxes/" + id);
      } catch (...) {
      }
    }
  } cleanup{HttpClient(berthd.port()), id};

  auto shell = berth({"exec", id, "--", "sh", "-c", "echo $((6*7)); echo oops >&2; exit 5"});
  CHECK(shell.code == 5);
  CHECK(shell.out == "42\n");
  CHECK(shell.err == "oops\n");

  auto python = berth({"python", id, "-"}, {}, "import sys\nprint(sys.version_info[0])\nsys.exit(9)\n");
  CHECK(python.code == 9);
  CHECK(python.out == "3\n");

  std::string blob = binary_blob(2 * 1024 * 1024 + 17);
  fs::path local = berth.home() / kOddName;
  write_file(local, blob);
  REQUIRE(berth({"cp", local.string(), id + ":d/" + kOddName}).code == 0);
  auto size = berth({"python", id, "-c", "import os\nprint(os.path.getsize('d/' + os.listdir('d')[0]))"});
  CHECK(size.code == 0);
  CHECK(size.out == std::to_string(blob.size()) + "\n");
  auto name = berth({"exec", id, "--cwd", "d", "--", "ls"});
  CHECK(name.out == kOddName + "\n");
  REQUIRE(berth({"cp", id + ":d/" + kOddName, (berth.home() / "back.bin").string()}).code == 0);
  CHECK(read_file(berth.home() / "back.bin") == blob);

  // A real bash on a PTY: piped keystrokes, the window size given, the exit code of the shell.
  auto terminal = berth({"terminal", id, "--rows", "33", "--cols", "101"}, {}, "echo t-$((6*7))\nstty size\nexit 4\n");
  INFO(terminal.out << terminal.err);
  CHECK(terminal.code == 4);
  CHECK(terminal.out.find("t-42") != std::string::npos);
  CHECK(terminal.out.find("33 101") != std::string::npos);

  auto removed = berth({"rm", id});
  CHECK(removed.code == 0);
}
#endif
