// Issue 8, finding 1: the files API against a hostile sandbox, through berthd's HTTP API. The tenant chooses the
// session's environment (`env` at create), plants programs and symlinks in the workspace and swaps a directory with
// a symlink to /etc while berthd reads and writes through it. No call may return a root-only file, write outside
// the workspace, leave a root-owned file or run a planted program. On the fake engine (no processes, no symlinks)
// only the API calls on the hostile names run; the conformance kit holds every driver to the same attacks.
#include <catch2/catch.hpp>

#include <Poco/JSON/Object.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "security/harness.hpp"
#include "support/hostile.hpp"

using namespace berth::test;
using namespace berth::test::security;
using berth::test::hostile::kEvidence;
using berth::test::hostile::kPlant;
using namespace std::chrono_literals;

namespace {

/** Every variable that shells, the dynamic loader or common programs read, set as a hostile tenant would. */
Poco::JSON::Object hostile_env() {
  Poco::JSON::Object env;
  env.set("PATH", "/workspace/.bin:/tmp/.bin:/usr/bin:/bin");
  env.set("ENV", "/workspace/.bin/rc");
  env.set("BASH_ENV", "/workspace/.bin/rc");
  env.set("LD_PRELOAD", "/workspace/.bin/pwn.so");
  env.set("LD_LIBRARY_PATH", "/workspace/.bin");
  env.set("IFS", "/");
  env.set("CDPATH", "/etc");
  env.set("HOME", "/etc");
  env.set("TMPDIR", "/etc");
  env.set("LC_ALL", "xx_XX.UTF-8");
  env.set("SHELLOPTS", "xtrace");
  env.set("POSIXLY_CORRECT", "1");
  env.set("GCONV_PATH", "/workspace/.bin");
  return env;
}

/**
 * Creates alice's sandbox with the hostile environment. A berthd that refuses some of those variables at create
 * (400) is defending too; the finding's own input, PATH alone, must be accepted.
 */
std::string create_hostile(Env& env) {
  Poco::JSON::Object body;
  body.set("env", hostile_env());
  auto r = env.alice().post("/v1/sandboxes", to_json(body));
  if (r.status == 201) return r.json()->getValue<std::string>("id");
  INFO(r.body);
  CHECK(r.status == 400);
  Poco::JSON::Object path_only;
  Poco::JSON::Object e;
  e.set("PATH", "/workspace/.bin:/tmp/.bin:/usr/bin:/bin");
  path_only.set("env", e);
  return env.create(env.alice(), to_json(path_only));
}

std::string files_uri(const std::string& id, const std::string& path) {
  return sandbox_path(id) + "/filesystem/files?path=" + url_encode(path);
}

HttpResponse put_file(const HttpClient& c, const std::string& id, const std::string& path, const std::string& content) {
  Poco::JSON::Object body;
  body.set("path", path);
  body.set("content", content);
  return c.put(sandbox_path(id) + "/filesystem/files", to_json(body));
}

HttpResponse upload(const HttpClient& c, const std::string& id, const std::string& path, const std::string& data) {
  auto [type, body] = multipart({{"path", path, ""}, {"file", data, "blob.bin"}});
  return c.request("POST", sandbox_path(id) + "/filesystem/upload", body, type);
}

HttpResponse download(const HttpClient& c, const std::string& id, const std::string& path) {
  return c.get(sandbox_path(id) + "/filesystem/download?path=" + url_encode(path));
}

/** What kEvidence prints when nothing is wrong. */
const std::string kClean = "evidence-checked\n";

/** What the evidence script prints (kClean = clean); real engines only. */
std::string evidence(const HttpClient& c, const std::string& id) {
  return shell(c, id, kEvidence)->getValue<std::string>("output");
}

/** True if a response body carries a line of /etc/shadow or /etc/passwd ("root:" starts both). */
bool leaks_etc(const HttpResponse& r) {
  return r.body.find("root:") != std::string::npos;
}

}  // namespace

TEST_CASE("files API: a tenant's PATH, environment and planted programs never act for berthd", "[files]") {
  Env env;
  auto alice = env.alice();
  const std::string id = create_hostile(env);
  if (env.real_engine()) {
    auto planted = shell(alice, id, kPlant);
    INFO(to_json(*planted));
    REQUIRE(planted->getValue<int>("exit_code") == 0);
    REQUIRE(evidence(alice, id) == kClean);
  }

  // Every route on the finding's name PWN works, with the right bytes.
  CHECK(put_file(alice, id, "PWN", "mine\n").status == 200);
  auto got = alice.get(files_uri(id, "PWN"));
  REQUIRE(got.status == 200);
  CHECK(got.json()->getValue<std::string>("content") == "mine\n");
  auto listed = alice.get(sandbox_path(id) + "/filesystem/directories?path=.");
  REQUIRE(listed.status == 200);
  CHECK(listed.body.find("\"PWN\"") != std::string::npos);
  auto down = download(alice, id, "PWN");
  CHECK(down.status == 200);
  CHECK(down.body == "mine\n");
  CHECK(upload(alice, id, "PWN2", "uploaded").status == 200);
  CHECK(download(alice, id, "PWN2").body == "uploaded");
  CHECK(alice.del(files_uri(id, "PWN")).status == 200);
  auto gone = alice.get(files_uri(id, "PWN"));
  CHECK(gone.status == 404);
  // A preload the loader could not open would have said so on the helper's stderr, which becomes the message.
  CHECK(gone.body.find("ld.so") == std::string::npos);
  if (!env.real_engine()) return;

  // Through the tenant's symlinks to /etc: refused on every route, never /etc's bytes, nothing created there.
  for (const std::string path : {"etc-link/shadow", "etc-link/passwd", "shadow-link"}) {
    INFO(path);
    auto r = alice.get(files_uri(id, path));
    CHECK(r.status == 400);
    CHECK_FALSE(leaks_etc(r));
    auto d = download(alice, id, path);
    CHECK(d.status == 400);
    CHECK_FALSE(leaks_etc(d));
  }
  CHECK(put_file(alice, id, "etc-link/berth-pwn", "x").status == 400);
  CHECK(put_file(alice, id, "shadow-link", "x").status == 400);
  CHECK(upload(alice, id, "etc-link/berth-pwn-upload", "x").status == 400);
  CHECK(alice.del(files_uri(id, "etc-link/passwd")).status == 400);
  auto etc_list = alice.get(sandbox_path(id) + "/filesystem/directories?path=etc-link");
  CHECK(etc_list.status == 400);
  CHECK(etc_list.body.find("shadow") == std::string::npos);
  CHECK(evidence(alice, id) == kClean);

  // After a stop the session restarts with the tenant's environment over a workspace full of planted programs:
  // its main process and the exec wrapper must not be one of them.
  CHECK(alice.post(sandbox_path(id) + "/stop").status == 200);
  CHECK(shell(alice, id, "/bin/echo alive")->getValue<std::string>("output") == "alive\n");
  CHECK(put_file(alice, id, "again", "ok").status == 200);
  CHECK(alice.get(files_uri(id, "again")).json()->getValue<std::string>("content") == "ok");
  CHECK(evidence(alice, id) == kClean);
}

TEST_CASE("files API: a directory swapped with a symlink to /etc during GET and PUT never leads outside", "[files]") {
  Env env;
  auto alice = env.alice();
  const std::string id = env.create(alice);
  constexpr int kAttempts = 25;  // each of GET, download and PUT: a fixed number, not "until it happens"
  if (!env.real_engine()) {
    REQUIRE(put_file(alice, id, "race/d/shadow", "inside\n").status == 200);
    for (int i = 0; i < kAttempts; ++i)
      CHECK(alice.get(files_uri(id, "race/d/shadow")).json()->getValue<std::string>("content") == "inside\n");
    return;
  }
  // d (a directory holding `shadow`) and l (a symlink to /etc) trade places every 0.3 ms with renameat2.
  const std::string setup = berth::test::hostile::race_setup(200);
  REQUIRE(shell(alice, id, setup)->getValue<int>("exit_code") == 0);
  HttpResponse swapped;  // filled by the thread (no REQUIRE off the main thread)
  std::thread swapper([&] {
    Poco::JSON::Object body;
    body.set("command", "python3 /workspace/race/swap.py");
    body.set("timeout", 240);
    swapped = alice.post(sandbox_path(id) + "/shell/exec", to_json(body));
  });
  bool started = false;
  for (int i = 0; i < 600 && !started; ++i) {  // bounded: 60 s for something that takes well under a second
    started = alice.get(files_uri(id, "race/started")).status == 200;
    if (!started) std::this_thread::sleep_for(100ms);
  }
  CHECK(started);
  int inside = 0;
  int put_ok = 0;
  std::vector<std::string> leaked;
  for (int i = 0; i < kAttempts; ++i) {
    auto g = alice.get(files_uri(id, "race/d/shadow"));
    if (g.status == 200) {
      if (g.json()->getValue<std::string>("content") == "inside\n") {
        ++inside;
      } else {
        leaked.push_back("GET: " + g.body.substr(0, 200));
      }
    } else if (leaks_etc(g)) {
      leaked.push_back("GET error: " + g.body.substr(0, 200));
    } else if (g.status >= 500) {
      leaked.push_back("GET answered " + std::to_string(g.status) + " (the sandbox's doing is a 4xx): " + g.body);
    }
    auto d = download(alice, id, "race/d/shadow");
    if ((d.status == 200 && d.body != "inside\n") || leaks_etc(d))
      leaked.push_back("download: " + d.body.substr(0, 200));
    if (put_file(alice, id, "race/d/berth-race-" + std::to_string(i), "x").status == 200) ++put_ok;
  }
  CHECK(put_file(alice, id, "race/stop", "").status == 200);
  swapper.join();
  INFO("swapper: " << swapped.body << "; GETs of the workspace file: " << inside << ", PUTs: " << put_ok);
  REQUIRE(swapped.status == 200);
  CHECK(swapped.json()->getValue<int>("exit_code") == 0);
  for (const auto& l : leaked)
    UNSCOPED_INFO(l);
  CHECK(leaked.empty());
  CHECK(evidence(alice, id) == kClean);
}

TEST_CASE("files API: what the sandbox's own permissions refuse is a 4xx, never a 500", "[files]") {
  Env env;
  auto alice = env.alice();
  auto id = env.create(alice);
  REQUIRE(put_file(alice, id, "locked/secret", "s").status == 200);
  if (env.real_engine()) {
    // The session user takes its own rights away: reading, listing, writing and removing then fail inside.
    shell(alice, id,
          "chmod 000 /workspace/locked/secret && chmod 500 /workspace/locked && mkdir -p ro && chmod 555 ro");
    for (const auto& r : {alice.get(files_uri(id, "locked/secret")), download(alice, id, "locked/secret"),
                          put_file(alice, id, "locked/new", "x"), put_file(alice, id, "ro/new", "x"),
                          alice.del(files_uri(id, "locked/secret"))}) {
      INFO(r.status << " " << r.body);
      CHECK(r.status >= 400);
      CHECK(r.status < 500);
    }
    shell(alice, id, "chmod 000 /workspace/locked");
    auto listed = alice.get(sandbox_path(id) + "/filesystem/directories?path=locked");
    INFO(listed.body);
    CHECK(listed.status >= 400);
    CHECK(listed.status < 500);
  }
  CHECK(env.anonymous().get("/health").status == 200);
}
