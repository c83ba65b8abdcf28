// Finding 5 (issue 8), disk: a sandbox cannot fill the host disk through /workspace or its container's writable
// layer. Usage is measured (driver session_stats, ABI 1.2) against the profile's disk_limit_mb; a sandbox over it is
// stopped (workspace kept), exec and file writes answer 409 disk_quota_exceeded, and deleting files lets work resume.
// Probes write 40 MiB past a 20 MiB limit; the cleanup pass (POST /v1/admin/gc/run) makes the check deterministic.
#include <catch2/catch.hpp>

#include <Poco/JSON/Object.h>

#include <string>

#include "security/harness.hpp"

using namespace berth::test;
using namespace berth::test::security;

namespace {

constexpr long long kLimit = 20ll << 20;
constexpr long long kWrite = 40ll << 20;

const Options kDiskLimit{.profile = "disk_limit_mb = 20\n"};

std::string files_uri(const std::string& id, const std::string& path) {
  return sandbox_path(id) + "/filesystem/files?path=" + url_encode(path);
}

HttpResponse put_file(const HttpClient& c, const std::string& id, const std::string& path, const std::string& content) {
  Poco::JSON::Object body;
  body.set("path", path);
  body.set("content", content);
  return c.put(sandbox_path(id) + "/filesystem/files", to_json(body));
}

HttpResponse run(const HttpClient& c, const std::string& id, const std::string& command) {
  Poco::JSON::Object body;
  body.set("command", command);
  body.set("timeout", 120);
  return c.post(sandbox_path(id) + "/shell/exec", to_json(body));
}

/** REQUIREs 409 disk_quota_exceeded with the limit in its details. */
void require_disk_refusal(const HttpResponse& r) {
  INFO(r.body);
  REQUIRE(r.status == 409);
  auto error = r.json()->getObject("error");
  CHECK(error->getValue<std::string>("code") == "disk_quota_exceeded");
  CHECK(error->getObject("details")->getValue<std::string>("limit_bytes") == std::to_string(kLimit));
}

/** Runs one cleanup pass as the operator; returns its report. */
Poco::JSON::Object::Ptr gc(const Env& env) {
  auto r = env.admin().post("/v1/admin/gc/run");
  INFO(r.body);
  REQUIRE(r.status == 200);
  return r.json();
}

Poco::JSON::Object::Ptr sandbox(const HttpClient& c, const std::string& id) {
  auto r = c.get(sandbox_path(id));
  INFO(r.body);
  REQUIRE(r.status == 200);
  return r.json();
}

/** Tenant code writing `bytes` zero bytes to `path` (relative: the workspace; absolute: the container's own disk). */
std::string fill_command(const Env& env, const std::string& path, long long bytes) {
  if (!env.real_engine()) return "__fake fill " + path + " " + std::to_string(bytes);
  return "head -c " + std::to_string(bytes) + " /dev/zero > " + path + "; echo rc=$?";
}

}  // namespace

TEST_CASE("a sandbox writing 40 MiB past a 20 MiB disk limit is stopped and refused until it deletes", "[disk]") {
  Env env(kDiskLimit);
  auto alice = env.alice();
  auto id = env.create(alice);
  auto wrote = run(alice, id, fill_command(env, "big.bin", kWrite));
  INFO(wrote.body);
  REQUIRE(wrote.status == 200);  // the write itself is not interrupted by a measurement

  gc(env);  // the pass measures every ready session with a limit (the exec's background check may come first)
  auto after = sandbox(alice, id);
  INFO(to_json(*after));
  REQUIRE(!after->isNull("disk"));
  auto disk = after->getObject("disk");
  CHECK(disk->getValue<bool>("exceeded"));
  CHECK(disk->getValue<long long>("limit_bytes") == kLimit);
  CHECK(disk->getValue<long long>("workspace_bytes") >= kWrite);
  CHECK(disk->getValue<long long>("bytes") >= kWrite);
  CHECK(after->getValue<std::string>("status") != "ready");  // stopped: the writer is gone
  CHECK(after->isNull("session_id"));

  // Exec and writes are refused (and stay refused: nothing was freed) ...
  require_disk_refusal(run(alice, id, "echo hi"));
  require_disk_refusal(put_file(alice, id, "small.txt", "x"));
  require_disk_refusal(run(alice, id, "echo again"));
  // ... reading and listing still work, and the workspace survived the stop.
  auto listing = alice.get(sandbox_path(id) + "/filesystem/directories?path=.");
  INFO(listing.body);
  REQUIRE(listing.status == 200);
  CHECK(listing.body.find("\"big.bin\"") != std::string::npos);
  CHECK(listing.body.find(std::to_string(kWrite)) != std::string::npos);

  // Freeing space lets work resume at once.
  auto removed = alice.del(files_uri(id, "big.bin"));
  INFO(removed.body);
  REQUIRE(removed.status == 200);
  auto resumed = run(alice, id, "echo resumed");
  INFO(resumed.body);
  REQUIRE(resumed.status == 200);
  CHECK(resumed.json()->getValue<std::string>("output") == "resumed\n");
  auto freed = sandbox(alice, id)->getObject("disk");
  CHECK_FALSE(freed->getValue<bool>("exceeded"));
  CHECK(freed->getValue<long long>("bytes") < kLimit);
  REQUIRE(put_file(alice, id, "small.txt", "x").status == 200);

  // Another tenant's sandbox on the same profile was never affected.
  auto bob = env.bob();
  auto other = env.create(bob);
  auto fine = run(bob, other, "echo bob");
  REQUIRE(fine.status == 200);
}

TEST_CASE("an upload larger than the whole disk limit is refused before anything is written", "[disk]") {
  Env env(Options{.profile = "disk_limit_mb = 1\n"});
  auto alice = env.alice();
  auto id = env.create(alice);
  auto [type, body] = multipart({{"path", "two-mib.txt", ""}, {"file", std::string(2 << 20, 'x'), "blob.bin"}});
  auto r = alice.request("POST", sandbox_path(id) + "/filesystem/upload", body, type);
  INFO(r.body);
  REQUIRE(r.status == 409);
  CHECK(r.json()->getObject("error")->getValue<std::string>("code") == "disk_quota_exceeded");
  CHECK(alice.get(files_uri(id, "two-mib.txt")).status == 404);
  REQUIRE(put_file(alice, id, "small.txt", "fits").status == 200);
}

TEST_CASE("filling the container's writable layer stops the session, and the stop frees it", "[disk]") {
  Env env(kDiskLimit);
  if (!env.real_engine()) {
    SUCCEED("the fake driver has no writable layer");
    return;
  }
  auto alice = env.alice();
  auto id = env.create(alice);
  // /var/tmp is on the container's own layer (not the workspace, not the /tmp tmpfs) and writable by the user.
  auto wrote = run(alice, id, fill_command(env, "/var/tmp/big.bin", kWrite));
  INFO(wrote.body);
  REQUIRE(wrote.status == 200);
  CHECK(wrote.json()->getValue<std::string>("output").find("rc=0") != std::string::npos);

  gc(env);
  auto disk = sandbox(alice, id)->getObject("disk");
  INFO(to_json(*disk));
  CHECK(disk->getValue<bool>("exceeded"));
  CHECK(disk->getValue<long long>("rootfs_bytes") >= kWrite);
  CHECK(disk->getValue<long long>("workspace_bytes") < kLimit);

  // The stop removed the container and its layer: the next exec measures again, finds the sandbox under its
  // limit and runs on a fresh container.
  auto next = run(alice, id, "test -e /var/tmp/big.bin && echo still-there || echo gone");
  INFO(next.body);
  REQUIRE(next.status == 200);
  CHECK(next.json()->getValue<std::string>("output") == "gone\n");
  CHECK_FALSE(sandbox(alice, id)->getObject("disk")->getValue<bool>("exceeded"));
}

TEST_CASE("disk_limit_mb = 0 turns the limit off", "[disk]") {
  Env env(Options{.profile = "disk_limit_mb = 0\n"});
  auto alice = env.alice();
  auto id = env.create(alice);
  REQUIRE(run(alice, id, fill_command(env, "big.bin", 2ll << 20)).status == 200);
  auto report = gc(env);
  CHECK(report->getArray("disk_stopped")->size() == 0);
  CHECK(sandbox(alice, id)->isNull("disk"));  // never measured
  REQUIRE(run(alice, id, "echo fine").status == 200);
}
