// One store test definition, two backends: every case runs against SqliteStore on a file in a temporary directory
// and, with BERTH_TEST_STORE=mysql, against MySqlStore on a fresh MariaDB/MySQL database (berth_test_<pid>_<n>,
// dropped afterwards; the server from BERTH_TEST_MYSQL_URL, default root over the local unix socket). Cases tagged
// [sqlite] or [mysql] are about one backend only. Schema migrations, round trips, the unique live key, the version
// compare-and-swap (threads and two stores on one database), paging, idempotency.
#include <catch2/catch.hpp>

#include <Poco/Data/MySQL/Connector.h>
#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Session.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/instance_store.hpp"
#include "store/store.hpp"

using namespace berth::store;
using namespace std::chrono_literals;
using Poco::Data::Keywords::into;
using Poco::Data::Keywords::now;

namespace {

/** A fresh directory removed at the end of the test. */
class TempDir {
 public:
  TempDir() {
    std::string templ = (std::filesystem::temp_directory_path() / "berth-store-XXXXXX").string();
    if (!mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed");
    path_ = templ;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

/** A raw connection, for looking under the store (schema_migrations) or tampering with it. */
Poco::Data::Session raw_session(const std::string& path) {
  Poco::Data::SQLite::Connector::registerConnector();
  return {Poco::Data::SQLite::Connector::KEY, path};
}

bool on_mysql() {
  const char* backend = std::getenv("BERTH_TEST_STORE");
  return backend && std::string(backend) == "mysql";
}

/** The server the MySQL run uses; its database part names where the admin connection logs in. */
MySqlOptions mysql_admin_options() {
  const char* url = std::getenv("BERTH_TEST_MYSQL_URL");
  return parse_mysql_url(url ? url : "mysql://root@localhost/mysql");
}

Poco::Data::Session mysql_session(const MySqlOptions& o) {
  Poco::Data::MySQL::Connector::registerConnector();
  return {Poco::Data::MySQL::Connector::KEY, "host=" + o.host + ";port=" + std::to_string(o.port) + ";user=" + o.user +
                                                 ";password=" + o.password + ";db=" + o.database};
}

/**
 * The database one test case works on, on the backend under test: a file in a temporary directory (SQLite) or a
 * fresh database on the server (MySQL), removed at the end. open() may be called several times: stores on one
 * database, as several berthd processes are.
 */
class TestDb {
 public:
  TestDb() {
    if (!on_mysql()) return;
    static int counter = 0;
    options_ = mysql_admin_options();
    const std::string name = "berth_test_" + std::to_string(::getpid()) + "_" + std::to_string(++counter);
    auto admin = mysql_session(options_);
    admin << "DROP DATABASE IF EXISTS " + name, now;
    admin << "CREATE DATABASE " + name + " CHARACTER SET utf8mb4", now;
    options_.database = name;
    options_.pool_size = 8;
  }
  TestDb(const TestDb&) = delete;
  TestDb& operator=(const TestDb&) = delete;
  ~TestDb() {
    if (options_.database.empty()) return;
    try {
      auto admin = mysql_session(mysql_admin_options());
      admin << "DROP DATABASE IF EXISTS " + options_.database, now;
    } catch (...) {  // NOLINT(bugprone-empty-catch): a leftover test database is no reason to fail a test
    }
  }
  std::unique_ptr<Store> open() const {
    return on_mysql() ? open_mysql_store(options_) : open_sqlite_store(dir_.file("berth.db"));
  }
  /** A raw connection to the same database. */
  Poco::Data::Session raw() const { return on_mysql() ? mysql_session(options_) : raw_session(dir_.file("berth.db")); }
  const MySqlOptions& mysql() const { return options_; }

 private:
  TempDir dir_;
  MySqlOptions options_;
};

// Millisecond-aligned times: the store keeps milliseconds.
const TimePoint t0 = TimePoint{std::chrono::seconds{1'800'000'000}} + 123ms;

WorkspaceRow workspace(const std::string& id, const std::string& owner = "alice") {
  WorkspaceRow w;
  w.id = id;
  w.owner = owner;
  w.volume = "berth-" + id;
  w.managed = true;
  w.created_at = t0;
  return w;
}

SandboxRow sandbox(const std::string& id, const std::string& workspace_id, const std::string& owner = "alice",
                   std::optional<std::string> key = std::nullopt) {
  SandboxRow s;
  s.id = id;
  s.owner = owner;
  s.profile = "default";
  s.workspace_id = workspace_id;
  s.key = std::move(key);
  s.created_at = t0;
  return s;
}

SessionRow session_row(const std::string& id, const std::string& sandbox_id, SessionState state) {
  SessionRow s;
  s.id = id;
  s.sandbox_id = sandbox_id;
  s.state = state;
  s.created_at = t0;
  s.last_active_at = t0;
  return s;
}

ExecutionRow execution(const std::string& id, const std::string& sandbox_id, const std::string& kind, TimePoint at) {
  ExecutionRow e;
  e.id = id;
  e.sandbox_id = sandbox_id;
  e.session_id = "sess-1";
  e.kind = kind;
  e.code = "print(1)";
  e.exit_code = 0;
  e.success = true;
  e.output = "1\n";
  e.duration_ms = 12;
  e.created_at = at;
  return e;
}

IdempotencyRow idem(const std::string& owner, const std::string& key, const std::string& hash, TimePoint at) {
  IdempotencyRow r;
  r.owner = owner;
  r.key = key;
  r.request_hash = hash;
  r.created_at = at;
  return r;
}

std::vector<std::string> ids_of(const std::vector<SandboxRow>& rows) {
  std::vector<std::string> ids;
  ids.reserve(rows.size());
  for (const auto& r : rows)
    ids.push_back(r.id);
  return ids;
}

std::vector<std::string> ids_of(const std::vector<ExecutionRow>& rows) {
  std::vector<std::string> ids;
  ids.reserve(rows.size());
  for (const auto& r : rows)
    ids.push_back(r.id);
  return ids;
}

/** A sandbox id that sorts by n: sandbox-000000000007. */
std::string sandbox_id(int n) {
  std::string digits = std::to_string(n);
  return "sandbox-" + std::string(12 - digits.size(), '0') + digits;
}

std::string error_of_open(const std::string& path) {
  try {
    open_sqlite_store(path);
  } catch (const StoreError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// ---- schema ---------------------------------------------------------------------------------------------------

TEST_CASE("migrations are applied once and data survives a re-open") {
  TestDb db;
  {
    auto store = db.open();
    store->insert_workspace(workspace("ws-1"));
    store->insert_sandbox(sandbox("sandbox-1", "ws-1", "alice", "k"));
  }
  Poco::Int64 migrations = 0;
  Poco::Int64 versions = 0;
  {
    auto s = db.raw();
    s << "SELECT COUNT(*), COUNT(DISTINCT version) FROM schema_migrations", into(migrations), into(versions), now;
  }
  REQUIRE(migrations == 5);  // the same numbered migrations on both backends
  CHECK(versions == migrations);

  for (int i = 0; i < 2; ++i) {  // re-open = restart
    auto store = db.open();
    auto row = store->get_sandbox("sandbox-1");
    REQUIRE(row);
    CHECK(row->key == "k");
    CHECK(store->find_live_by_key("alice", "k"));
  }
  Poco::Int64 after = 0;
  {
    auto s = db.raw();
    s << "SELECT COUNT(*) FROM schema_migrations", into(after), now;
  }
  CHECK(after == migrations);
}

TEST_CASE("stores opening one new database at once apply each migration exactly once") {
  TestDb db;
  constexpr std::size_t n = 6;
  std::vector<std::unique_ptr<Store>> stores(n);
  std::vector<std::string> errors(n);  // one slot per thread: Catch2 assertions are not thread-safe
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (std::size_t t = 0; t < n; ++t) {
    threads.emplace_back([&, t] {
      try {
        stores[t] = db.open();
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    });
  }
  for (auto& th : threads)
    th.join();
  for (const auto& e : errors)
    CHECK(e.empty());
  REQUIRE(std::all_of(stores.begin(), stores.end(), [](const auto& s) { return s != nullptr; }));
  stores[0]->insert_workspace(workspace("ws-1"));
  CHECK(stores[5]->get_workspace("ws-1"));
  Poco::Int64 rows = 0;
  Poco::Int64 versions = 0;
  auto s = db.raw();
  s << "SELECT COUNT(*), COUNT(DISTINCT version) FROM schema_migrations WHERE applied_at IS NOT NULL", into(rows),
      into(versions), now;
  CHECK(rows == 5);
  CHECK(rows == versions);
}

TEST_CASE("the database is opened in WAL mode with foreign keys enforced", "[sqlite]") {
  TempDir dir;
  const auto path = dir.file("berth.db");
  auto store = open_sqlite_store(path);
  {
    auto s = raw_session(path);
    std::string mode;
    s << "PRAGMA journal_mode", into(mode), now;
    CHECK(mode == "wal");
  }
  // foreign_keys is per connection: the store's own connection must refuse a dangling workspace.
  CHECK_THROWS_AS(store->insert_sandbox(sandbox("sandbox-1", "ws-missing")), StoreError);
  CHECK_FALSE(store->get_sandbox("sandbox-1"));
}

TEST_CASE("a database with a newer schema than the code knows is refused clearly") {
  TestDb db;
  db.open();
  {
    auto s = db.raw();
    s << "INSERT INTO schema_migrations (version, applied_at) VALUES (9999, 'the future')", now;
  }
  std::string error;
  try {
    db.open();
  } catch (const StoreError& e) {
    error = e.what();
  }
  CHECK_THAT(error, Catch::Contains("schema version 9999") && Catch::Contains("newer"));
}

TEST_CASE("foreign keys are enforced on every connection") {
  TestDb db;
  auto store = db.open();
  CHECK_THROWS_AS(store->insert_sandbox(sandbox("sandbox-1", "ws-missing")), StoreError);
  CHECK_FALSE(store->get_sandbox("sandbox-1"));
  store->insert_workspace(workspace("ws-1"));
  store->insert_sandbox(sandbox("sandbox-1", "ws-1"));
  CHECK_THROWS_AS(store->insert_session(session_row("sess-1", "sandbox-missing", SessionState::starting)), StoreError);
  CHECK_FALSE(store->get_session("sess-1"));
}

TEST_CASE("sessions record their starter, and a schema-1 database gains the column with existing rows kept") {
  TestDb db;
  {
    auto store = db.open();
    store->insert_workspace(workspace("ws-1"));
    store->insert_sandbox(sandbox("sandbox-1", "ws-1"));
    auto row = session_row("sess-1", "sandbox-1", SessionState::starting);
    row.starter = "berth-abc";
    store->insert_session(row);
    auto got = store->get_session("sess-1");
    REQUIRE(got);
    CHECK(got->starter == "berth-abc");
    got->starter = "someone-else";  // immutable: update_session does not write it
    got->state = SessionState::ready;
    store->update_session(*got);
    CHECK(store->get_session("sess-1")->starter == "berth-abc");
  }
  {
    // Roll the file back to schema 1 (as a berthd from before the starter column left it).
    auto s = db.raw();
    s << "DROP TABLE instances", now;                          // schema 5
    s << "DROP TABLE cleanup_leases", now;                     // schema 5
    if (!on_mysql()) s << "DROP INDEX sessions_starter", now;  // MySQL drops it with its column
    s << "ALTER TABLE sessions DROP COLUMN starter", now;
    s << "ALTER TABLE executions DROP COLUMN truncated", now;  // schema 3
    s << "DROP TABLE profiles", now;                           // schema 4
    if (on_mysql()) {
      s << "ALTER TABLE sandboxes DROP COLUMN live_profile", now;  // its index goes with it
    } else {
      s << "DROP INDEX sandboxes_live_profile", now;
    }
    s << "DELETE FROM schema_migrations WHERE version >= 2", now;
  }
  auto store = db.open();
  auto old = store->get_session("sess-1");
  REQUIRE(old);
  CHECK(old->state == SessionState::ready);
  CHECK(old->starter.empty());
  auto row = session_row("sess-2", "sandbox-1", SessionState::starting);
  row.starter = "berth-def";
  store->insert_session(row);
  CHECK(store->get_session("sess-2")->starter == "berth-def");
}

TEST_CASE("a database that cannot be opened is a StoreError", "[sqlite]") {
  TempDir dir;
  CHECK_THAT(error_of_open(dir.file("no-such-dir/berth.db")), Catch::Contains("no-such-dir"));
  {
    std::FILE* f = std::fopen(dir.file("garbage.db").c_str(), "wb");
    REQUIRE(f);
    std::fputs("this is not an SQLite database, not even a little bit, not at all......................", f);
    std::fclose(f);
  }
  CHECK_FALSE(error_of_open(dir.file("garbage.db")).empty());
}

TEST_CASE("an in-memory database works (for tests of other layers)", "[sqlite]") {
  auto store = open_sqlite_store(":memory:");
  store->insert_workspace(workspace("ws-1"));
  CHECK(store->get_workspace("ws-1"));
}

// ---- round trips ------------------------------------------------------------------------------------------------

TEST_CASE("workspaces round trip and deletion is marked once") {
  TestDb db;
  auto store = db.open();
  auto w = workspace("ws-1", "bob");
  w.managed = false;
  store->insert_workspace(w);
  auto got = store->get_workspace("ws-1");
  REQUIRE(got);
  CHECK(got->id == "ws-1");
  CHECK(got->owner == "bob");
  CHECK(got->volume == "berth-ws-1");
  CHECK_FALSE(got->managed);
  CHECK(got->created_at == t0);
  CHECK_FALSE(got->deleted_at);
  CHECK_FALSE(store->get_workspace("ws-none"));

  CHECK(store->mark_workspace_deleted("ws-1", t0 + 5s));
  CHECK_FALSE(store->mark_workspace_deleted("ws-1", t0 + 6s));
  CHECK_FALSE(store->mark_workspace_deleted("ws-none", t0));
  got = store->get_workspace("ws-1");
  REQUIRE(got);
  CHECK(got->deleted_at == t0 + 5s);

  auto managed = workspace("ws-2");
  managed.deleted_at = t0 + 1ms;
  store->insert_workspace(managed);
  got = store->get_workspace("ws-2");
  REQUIRE(got);
  CHECK(got->managed);
  CHECK(got->deleted_at == t0 + 1ms);

  CHECK_THROWS_AS(store->insert_workspace(workspace("ws-1")), StoreError);  // duplicate id
}

TEST_CASE("count_live_sandboxes_using counts live rows only") {
  TestDb db;
  auto store = db.open();
  store->insert_workspace(workspace("ws-1"));
  store->insert_workspace(workspace("ws-2"));
  CHECK(store->count_live_sandboxes_using("ws-1") == 0);
  store->insert_sandbox(sandbox("sandbox-1", "ws-1"));
  store->insert_sandbox(sandbox("sandbox-2", "ws-1"));
  store->insert_sandbox(sandbox("sandbox-3", "ws-2"));
  CHECK(store->count_live_sandboxes_using("ws-1") == 2);
  auto row = *store->get_sandbox("sandbox-1");
  row.deleted_at = t0 + 1s;
  REQUIRE(store->update_sandbox_cas(row, row.version));
  CHECK(store->count_live_sandboxes_using("ws-1") == 1);
  CHECK(store->count_live_sandboxes_using("ws-none") == 0);
}

TEST_CASE("abandoned managed workspaces: managed, not deleted, used only by deleted sandboxes") {
  TestDb db;
  auto store = db.open();
  store->insert_workspace(workspace("ws-abandoned"));
  store->insert_workspace(workspace("ws-live"));
  store->insert_workspace(workspace("ws-fresh"));  // created, its sandbox row not inserted yet
  auto external = workspace("ws-external");
  external.managed = false;
  store->insert_workspace(external);
  store->insert_sandbox(sandbox("sandbox-a", "ws-abandoned"));
  store->insert_sandbox(sandbox("sandbox-b", "ws-live"));
  store->insert_sandbox(sandbox("sandbox-c", "ws-external"));
  for (const auto* id : {"sandbox-a", "sandbox-c"}) {
    auto row = *store->get_sandbox(id);
    row.deleted_at = t0 + 1s;
    REQUIRE(store->update_sandbox_cas(row, row.version));
  }
  auto found = store->list_abandoned_managed_workspaces();
  REQUIRE(found.size() == 1);
  CHECK(found[0].id == "ws-abandoned");
  store->mark_workspace_deleted("ws-abandoned", t0 + 2s);
  CHECK(store->list_abandoned_managed_workspaces().empty());
}

TEST_CASE("sandboxes round trip with every optional field and map") {
  TestDb db;
  auto store = db.open();
  store->insert_workspace(workspace("ws-1"));

  auto full = sandbox("sandbox-full", "ws-1", "alice", "my-key");
  full.profile = "py";
  full.labels = {{"team", "ml"}, {"quote\"s", "new\nline"}, {"unicode", "h\xC3\xA9llo \xE2\x9C\x93"}, {"empty", ""}};
  full.env = {{"PATH", "/usr/bin:/bin"}, {"JSON", R"({"a": [1, 2]})"}};
  full.current_session_id = "sess-1";
  full.version = 42;  // ignored: inserts start at version 1
  full.expires_at = t0 + 1h;
  full.idle_expires_at = t0 + 30min;
  full.last_error = "image not found";
  store->insert_sandbox(full);

  auto got = store->get_sandbox("sandbox-full");
  REQUIRE(got);
  CHECK(got->id == "sandbox-full");
  CHECK(got->owner == "alice");
  CHECK(got->profile == "py");
  CHECK(got->workspace_id == "ws-1");
  CHECK(got->key == "my-key");
  CHECK(got->labels == full.labels);
  CHECK(got->env == full.env);
  CHECK(got->current_session_id == "sess-1");
  CHECK(got->version == 1);
  CHECK(got->expires_at == t0 + 1h);
  CHECK(got->idle_expires_at == t0 + 30min);
  CHECK(got->last_error == "image not found");
  CHECK(got->created_at == t0);
  CHECK_FALSE(got->deleted_at);

  store->insert_sandbox(sandbox("sandbox-bare", "ws-1"));
  got = store->get_sandbox("sandbox-bare");
  REQUIRE(got);
  CHECK_FALSE(got->key);
  CHECK(got->labels.empty());
  CHECK(got->env.empty());
  CHECK_FALSE(got->current_session_id);
  CHECK_FALSE(got->expires_at);
  CHECK_FALSE(got->idle_expires_at);
  CHECK(got->last_error.empty());
  CHECK_FALSE(got->deleted_at);

  CHECK_FALSE(store->get_sandbox("sandbox-none"));
  CHECK_THROWS_AS(store->insert_sandbox(sandbox("sandbox-bare", "ws-1")), StoreError);  // duplicate id
}

TEST_CASE("times before the epoch and sub-millisecond times are kept to the millisecond") {
  TestDb db;
  auto store = db.open();
  auto w = workspace("ws-1");
  w.created_at = TimePoint{} - 1500ms;
  store->insert_workspace(w);
  CHECK(store->get_workspace("ws-1")->created_at == TimePoint{} - 1500ms);

  auto s = sandbox("sandbox-1", "ws-1");
  s.created_at = t0 + 999us;  // truncated (floored) to the millisecond
  store->insert_sandbox(s);
  CHECK(store->get_sandbox("sandbox-1")->created_at == t0);
}

TEST_CASE("sessions round trip, update, delete and list the active ones") {
  TestDb db;
  auto store = db.open();
  store->insert_workspace(workspace("ws-1"));
  store->insert_sandbox(sandbox("sandbox-1", "ws-1"));

  store->insert_session(session_row("sess-1", "sandbox-1", SessionState::starting));
  auto got = store->get_session("sess-1");
  REQUIRE(got);
  CHECK(got->sandbox_id == "sandbox-1");
  CHECK(got->handle.empty());
  CHECK(got->endpoint.empty());
  CHECK(got->state == SessionState::starting);
  CHECK(got->error.empty());
  CHECK(got->created_at == t0);
  CHECK(got->last_active_at == t0);

  CHECK(got->starter.empty());

  got->handle = "container-abc";
  got->endpoint = "unix:///run/berth/abc.sock";
  got->state = SessionState::failed;
  got->error = "boom";
  got->last_active_at = t0 + 2s;
  got->created_at = t0 + 1h;  // immutable: not written
  store->update_session(*got);
  auto updated = store->get_session("sess-1");
  REQUIRE(updated);
  CHECK(updated->handle == "container-abc");
  CHECK(updated->endpoint == "unix:///run/berth/abc.sock");
  CHECK(updated->state == SessionState::failed);
  CHECK(updated->error == "boom");
  CHECK(updated->last_active_at == t0 + 2s);
  CHECK(updated->created_at == t0);

  store->insert_session(session_row("sess-2", "sandbox-1", SessionState::ready));
  store->insert_session(session_row("sess-3", "sandbox-1", SessionState::starting));
  store->insert_session(session_row("sess-4", "sandbox-1", SessionState::stopped));
  store->insert_session(session_row("sess-5", "sandbox-1", SessionState::dead));
  std::vector<std::string> active;
  for (const auto& s : store->list_active_sessions())
    active.push_back(s.id);
  CHECK(active == std::vector<std::string>{"sess-2", "sess-3"});

  store->delete_session("sess-2");
  CHECK_FALSE(store->get_session("sess-2"));
  CHECK(store->list_active_sessions().size() == 1);
  store->delete_session("sess-none");  // no-op

  CHECK_THROWS_AS(store->insert_session(session_row("sess-x", "sandbox-none", SessionState::starting)), StoreError);
}

TEST_CASE("session states convert to and from text") {
  for (auto s :
       {SessionState::starting, SessionState::ready, SessionState::failed, SessionState::stopped, SessionState::dead}) {
    CHECK(session_state_from(to_string(s)) == s);
  }
  CHECK(to_string(SessionState::ready) == "ready");
  CHECK_THROWS_AS(session_state_from("running"), StoreError);
}

// ---- the unique live key ----------------------------------------------------------------------------------------

TEST_CASE("one live sandbox per (owner, key) and the key is released by deletion") {
  TestDb db;
  auto store = db.open();
  store->insert_workspace(workspace("ws-1"));
  store->insert_sandbox(sandbox("sandbox-1", "ws-1", "alice", "k"));

  CHECK_THROWS_AS(store->insert_sandbox(sandbox("sandbox-2", "ws-1", "alice", "k")), UniqueViolation);
  CHECK_FALSE(store->get_sandbox("sandbox-2"));

  // another owner, or no key at all, never conflicts
  store->insert_sandbox(sandbox("sandbox-3", "ws-1", "bob", "k"));
  store->insert_sandbox(sandbox("sandbox-4", "ws-1", "alice"));
  store->insert_sandbox(sandbox("sandbox-5", "ws-1", "alice"));
  CHECK(store->find_live_by_key("bob", "k")->id == "sandbox-3");
  CHECK(store->find_live_by_key("alice", "k")->id == "sandbox-1");
  CHECK_FALSE(store->find_live_by_key("alice", "other"));
  CHECK_FALSE(store->find_live_by_key("carol", "k"));

  // delete through the CAS: the key is free again, the deleted row keeps its key for the record
  auto row = *store->get_sandbox("sandbox-1");
  row.deleted_at = t0 + 1min;
  REQUIRE(store->update_sandbox_cas(row, row.version));
  CHECK_FALSE(store->find_live_by_key("alice", "k"));
  auto deleted = store->get_sandbox("sandbox-1");
  REQUIRE(deleted);
  CHECK(deleted->key == "k");
  CHECK(deleted->deleted_at == t0 + 1min);

  store->insert_sandbox(sandbox("sandbox-2", "ws-1", "alice", "k"));
  CHECK(store->find_live_by_key("alice", "k")->id == "sandbox-2");

  // and again: any number of deleted rows may have held the key
  row = *store->get_sandbox("sandbox-2");
  row.deleted_at = t0 + 2min;
  REQUIRE(store->update_sandbox_cas(row, row.version));
  store->insert_sandbox(sandbox("sandbox-6", "ws-1", "alice", "k"));
  CHECK(store->find_live_by_key("alice", "k")->id == "sandbox-6");
}

TEST_CASE("a duplicate id is a StoreError, not a key conflict") {
  TestDb db;
  auto store = db.open();
  store->insert_workspace(workspace("ws-1"));
  store->insert_sandbox(sandbox("sandbox-1", "ws-1", "alice", "k1"));
  try {
    store->insert_sandbox(sandbox("sandbox-1", "ws-1", "alice", "k2"));
    FAIL("no exception");
  } catch (const UniqueViolation&) {
    FAIL("UniqueViolation for a duplicate id");
  } catch (const StoreError& e) {
    CHECK_THAT(e.what(), Catch::Contains("insert_sandbox"));
  }
}

// ---- compare-and-swap -----------------------------------------------------------------------------------------

TEST_CASE("the CAS writes every mutable field and bumps the version and a stale version loses") {
  TestDb db;
  auto store = db.open();
  store->insert_workspace(workspace("ws-1"));
  auto original = sandbox("sandbox-1", "ws-1", "alice", "k");
  original.labels = {{"a", "1"}};
  original.expires_at = t0 + 1h;
  original.last_error = "old";
  store->insert_sandbox(original);

  auto seen = *store->get_sandbox("sandbox-1");
  REQUIRE(seen.version == 1);

  auto first = seen;
  first.current_session_id = "sess-1";
  first.expires_at = std::nullopt;
  first.idle_expires_at = t0 + 10min;
  first.last_error = "";
  auto second = seen;
  second.current_session_id = "sess-2";

  CHECK(store->update_sandbox_cas(first, seen.version));
  CHECK_FALSE(store->update_sandbox_cas(second, seen.version));

  auto got = *store->get_sandbox("sandbox-1");
  CHECK(got.version == 2);
  CHECK(got.current_session_id == "sess-1");
  CHECK_FALSE(got.expires_at);
  CHECK(got.idle_expires_at == t0 + 10min);
  CHECK(got.last_error.empty());
  CHECK(got.labels == original.labels);  // immutable fields untouched
  CHECK(got.key == "k");
  CHECK_FALSE(got.deleted_at);

  got.current_session_id = std::nullopt;
  CHECK(store->update_sandbox_cas(got, 2));
  got = *store->get_sandbox("sandbox-1");
  CHECK(got.version == 3);
  CHECK_FALSE(got.current_session_id);
  CHECK(store->find_live_by_key("alice", "k"));  // still live, still holds its key

  auto missing = sandbox("sandbox-none", "ws-1");
  CHECK_FALSE(store->update_sandbox_cas(missing, 1));
}

TEST_CASE("8 threads CAS from the same seen version: exactly one wins") {
  TestDb db;
  auto store = db.open();
  store->insert_workspace(workspace("ws-1"));
  store->insert_sandbox(sandbox("sandbox-1", "ws-1"));

  for (int round = 0; round < 10; ++round) {
    const auto seen = *store->get_sandbox("sandbox-1");
    std::atomic<int> wins{0};
    std::atomic<int> errors{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    threads.reserve(8);
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        while (!go.load())
          std::this_thread::yield();
        auto mine = seen;
        mine.current_session_id = "sess-" + std::to_string(t);
        try {
          if (store->update_sandbox_cas(mine, seen.version)) ++wins;
        } catch (...) {
          ++errors;
        }
      });
    }
    go = true;
    for (auto& th : threads)
      th.join();
    CHECK(errors == 0);
    REQUIRE(wins == 1);
    CHECK(store->get_sandbox("sandbox-1")->version == seen.version + 1);
  }
}

TEST_CASE("touch bumps the version of a live row, invalidating a snapshot") {
  TestDb db;
  auto store = db.open();
  store->insert_workspace(workspace("ws-1"));
  store->insert_sandbox(sandbox("sandbox-1", "ws-1"));
  const auto snapshot = *store->get_sandbox("sandbox-1");

  CHECK(store->touch_sandbox("sandbox-1", t0 + 15min));
  auto got = *store->get_sandbox("sandbox-1");
  CHECK(got.version == snapshot.version + 1);
  CHECK(got.idle_expires_at == t0 + 15min);

  auto stale = snapshot;
  stale.deleted_at = t0 + 1h;
  CHECK_FALSE(store->update_sandbox_cas(stale, snapshot.version));
  CHECK_FALSE(store->get_sandbox("sandbox-1")->deleted_at);

  got.deleted_at = t0 + 1h;
  REQUIRE(store->update_sandbox_cas(got, got.version));
  CHECK_FALSE(store->touch_sandbox("sandbox-1", t0 + 2h));  // deleted: not touched
  CHECK(store->get_sandbox("sandbox-1")->idle_expires_at == t0 + 15min);
  CHECK_FALSE(store->touch_sandbox("sandbox-none", t0));
}

TEST_CASE(
    "write_batch inserts executions and applies touches in one transaction, a retried batch changes nothing, a newer "
    "row replaces") {
  TestDb db;
  auto store = db.open();
  store->insert_workspace(workspace("ws-1"));
  store->insert_sandbox(sandbox("sandbox-1", "ws-1"));
  store->insert_sandbox(sandbox("sandbox-2", "ws-1"));
  auto gone = *store->get_sandbox("sandbox-2");
  gone.deleted_at = t0 + 1h;
  REQUIRE(store->update_sandbox_cas(gone, gone.version));
  const auto before = *store->get_sandbox("sandbox-1");

  std::vector<ExecutionRow> rows;
  for (int i = 0; i < 30; ++i)
    rows.push_back(execution("exec-b" + std::to_string(100 + i), "sandbox-1", i % 2 ? "python" : "shell",
                             t0 + std::chrono::seconds(i)));
  const std::vector<SandboxTouch> touches{{"sandbox-1", t0 + 20min}, {"sandbox-2", t0 + 20min}};
  store->write_batch(rows, touches);

  auto [page, total] = store->list_executions("sandbox-1", "", 100, 0);
  CHECK(total == 30);
  REQUIRE(page.size() == 30);
  CHECK(page.front().id == "exec-b129");
  CHECK(page.front().kind == "python");
  const auto after = *store->get_sandbox("sandbox-1");
  CHECK(after.idle_expires_at == t0 + 20min);
  CHECK(after.version == before.version + 1);
  CHECK(store->get_sandbox("sandbox-2")->idle_expires_at != t0 + 20min);  // deleted: not touched

  // A touch never moves the timer backwards (a batch that waited behind a newer keepalive of another instance),
  // and one that changes nothing leaves the version, so no snapshot is invalidated for nothing.
  store->write_batch({}, {{"sandbox-1", t0 + 5min}});
  CHECK(store->get_sandbox("sandbox-1")->idle_expires_at == t0 + 20min);
  CHECK(store->get_sandbox("sandbox-1")->version == after.version);
  store->write_batch({}, {{"sandbox-1", t0 + 40min}});
  CHECK(store->get_sandbox("sandbox-1")->idle_expires_at == t0 + 40min);
  CHECK(store->get_sandbox("sandbox-1")->version == after.version + 1);

  // The same batch again (its commit acknowledgement was lost): the rows are there once, no error.
  CHECK_NOTHROW(store->write_batch(rows, {}));
  CHECK(store->list_executions("sandbox-1", "", 100, 0).second == 30);
  CHECK_NOTHROW(store->write_batch({}, {}));

  // A row with an id already written replaces it: an async execution's result over its "running" row.
  auto running = *store->get_execution("exec-b105", 1 << 20);
  CHECK(running.output == rows[5].output);
  auto done = rows[5];
  done.output = "finished\n";
  done.exit_code = 4;
  done.success = false;
  store->write_batch({done}, {});
  auto got = store->get_execution("exec-b105", 1 << 20);
  REQUIRE(got);
  CHECK(got->output == "finished\n");
  CHECK(got->exit_code == 4);
  CHECK(store->list_executions("sandbox-1", "", 100, 0).second == 30);
  auto cut = store->get_execution("exec-b105", 3);
  CHECK(cut->output == "fin");
  CHECK(cut->truncated);
  CHECK_FALSE(store->get_execution("exec-none", 10));
}

// ---- listing ----------------------------------------------------------------------------------------------------

TEST_CASE("list_sandboxes pages live rows of one owner by id") {
  TestDb db;
  auto store = db.open();
  store->insert_workspace(workspace("ws-1"));
  for (int i = 1; i <= 25; ++i)
    store->insert_sandbox(sandbox(sandbox_id(i), "ws-1", "alice"));
  for (int i = 26; i <= 30; ++i)
    store->insert_sandbox(sandbox(sandbox_id(i), "ws-1", "bob"));
  for (int i : {3, 12}) {  // deleted rows never show
    auto row = *store->get_sandbox(sandbox_id(i));
    row.deleted_at = t0;
    REQUIRE(store->update_sandbox_cas(row, row.version));
  }

  std::vector<std::string> all;
  SandboxFilter filter;
  filter.owner = "alice";
  filter.limit = 10;
  int pages = 0;
  for (;;) {
    auto page = store->list_sandboxes(filter);
    ++pages;
    REQUIRE(page.size() <= 10);
    for (const auto& r : page)
      all.push_back(r.id);
    if (page.size() < 10) break;
    filter.after_id = page.back().id;
  }
  CHECK(pages == 3);
  std::vector<std::string> expected;
  for (int i = 1; i <= 25; ++i) {
    if (i != 3 && i != 12) expected.push_back(sandbox_id(i));
  }
  CHECK(all == expected);

  filter = SandboxFilter{};
  filter.owner = "bob";
  CHECK(ids_of(store->list_sandboxes(filter)).size() == 5);
  filter.owner = "nobody";
  CHECK(store->list_sandboxes(filter).empty());
  filter.owner = "alice";
  filter.limit = 0;
  CHECK(store->list_sandboxes(filter).empty());

  auto live = store->list_live_sandboxes();
  CHECK(live.size() == 28);
  CHECK(std::is_sorted(live.begin(), live.end(), [](auto& a, auto& b) { return a.id < b.id; }));
}

TEST_CASE("list_sandboxes with a label keeps pages full across sparse matches") {
  TestDb db;
  auto store = db.open();
  store->insert_workspace(workspace("ws-1"));
  // 600 sandboxes; every 97th has env=prod (more than one internal batch between matches), others env=dev
  std::vector<std::string> prod;
  for (int i = 1; i <= 600; ++i) {
    auto s = sandbox(sandbox_id(i), "ws-1");
    s.labels = {{"env", i % 97 == 0 ? "prod" : "dev"}, {"n", std::to_string(i)}};
    if (i % 97 == 0) prod.push_back(s.id);
    store->insert_sandbox(s);
  }
  auto other = sandbox("sandbox-zzz", "ws-1", "bob");
  other.labels = {{"env", "prod"}};
  store->insert_sandbox(other);
  REQUIRE(prod.size() == 6);

  SandboxFilter filter;
  filter.owner = "alice";
  filter.label = std::make_pair(std::string("env"), std::string("prod"));
  filter.limit = 2;
  std::vector<std::string> seen;
  for (int guard = 0; guard < 10; ++guard) {
    auto page = store->list_sandboxes(filter);
    for (const auto& r : page) {
      CHECK(r.labels.at("env") == "prod");
      seen.push_back(r.id);
    }
    if (page.size() < 2) break;
    CHECK(page.size() == 2);
    filter.after_id = page.back().id;
  }
  CHECK(seen == prod);

  filter.after_id.clear();
  filter.limit = 50;
  CHECK(ids_of(store->list_sandboxes(filter)) == prod);
  filter.label = std::make_pair(std::string("env"), std::string("staging"));
  CHECK(store->list_sandboxes(filter).empty());
  filter.label = std::make_pair(std::string("missing"), std::string(""));
  CHECK(store->list_sandboxes(filter).empty());
  filter.label = std::make_pair(std::string("n"), std::string("599"));
  CHECK(ids_of(store->list_sandboxes(filter)) == std::vector<std::string>{sandbox_id(599)});
}

TEST_CASE("list_executions: newest first, paged, filtered by kind, with the total") {
  TestDb db;
  auto store = db.open();
  store->insert_workspace(workspace("ws-1"));
  store->insert_sandbox(sandbox("sandbox-1", "ws-1"));
  // exec-01..exec-10, one second apart; exec-05 and exec-06 share a timestamp (tie broken by id, descending)
  for (int i = 1; i <= 10; ++i) {
    const auto at = t0 + std::chrono::seconds(i == 6 ? 5 : i);
    auto e = execution("exec-" + std::string(i < 10 ? "0" : "") + std::to_string(i), "sandbox-1",
                       i % 2 ? "python" : "shell", at);
    store->insert_execution(e);
  }
  store->insert_execution(execution("exec-other", "sandbox-2", "python", t0 + 1h));

  auto [page, total] = store->list_executions("sandbox-1", "", 4, 0);
  CHECK(total == 10);
  CHECK(ids_of(page) == std::vector<std::string>{"exec-10", "exec-09", "exec-08", "exec-07"});
  std::tie(page, total) = store->list_executions("sandbox-1", "", 4, 4);
  CHECK(total == 10);
  CHECK(ids_of(page) == std::vector<std::string>{"exec-06", "exec-05", "exec-04", "exec-03"});
  std::tie(page, total) = store->list_executions("sandbox-1", "", 4, 8);
  CHECK(ids_of(page) == std::vector<std::string>{"exec-02", "exec-01"});
  std::tie(page, total) = store->list_executions("sandbox-1", "", 4, 100);
  CHECK(page.empty());
  CHECK(total == 10);

  std::tie(page, total) = store->list_executions("sandbox-1", "shell", 50, 0);
  CHECK(total == 5);
  CHECK(ids_of(page) == std::vector<std::string>{"exec-10", "exec-08", "exec-06", "exec-04", "exec-02"});
  std::tie(page, total) = store->list_executions("sandbox-1", "python", 2, 1);
  CHECK(total == 5);
  CHECK(ids_of(page) == std::vector<std::string>{"exec-07", "exec-05"});
  std::tie(page, total) = store->list_executions("sandbox-none", "", 10, 0);
  CHECK(page.empty());
  CHECK(total == 0);
}

TEST_CASE("executions round trip, including a missing exit code") {
  TestDb db;
  auto store = db.open();
  auto e = execution("exec-1", "sandbox-1", "shell", t0);
  e.code = "echo 'hi' && exit 3";
  e.exit_code = 3;
  e.success = false;
  e.output = std::string(100'000, 'x') + "\n";
  e.error = "stderr \xE2\x9C\x93";
  e.duration_ms = 1234567;
  store->insert_execution(e);
  auto timed_out = execution("exec-2", "sandbox-1", "python", t0 - 1s);
  timed_out.exit_code = std::nullopt;
  timed_out.success = false;
  timed_out.output.clear();
  timed_out.error = "timed out";
  store->insert_execution(timed_out);

  auto [page, total] = store->list_executions("sandbox-1", "", 10, 0);
  REQUIRE(total == 2);
  REQUIRE(page.size() == 2);
  const auto& got = page[0];
  CHECK(got.id == "exec-1");
  CHECK(got.sandbox_id == "sandbox-1");
  CHECK(got.session_id == "sess-1");
  CHECK(got.kind == "shell");
  CHECK(got.code == e.code);
  CHECK(got.exit_code == 3);
  CHECK_FALSE(got.success);
  CHECK(got.output == e.output);
  CHECK(got.error == e.error);
  CHECK(got.duration_ms == 1234567);
  CHECK(got.created_at == t0);
  CHECK_FALSE(page[1].exit_code);
  CHECK(page[1].output.empty());
  CHECK(page[1].error == "timed out");
}

// ---- idempotency ------------------------------------------------------------------------------------------------

TEST_CASE("idempotency: claim, replay, complete, release, purge") {
  TestDb db;
  auto store = db.open();

  auto claim = idem("alice", "req-1", "hash-a", t0);
  claim.status = 201;  // ignored: a claim is always in progress
  claim.body = "ignored";
  CHECK_FALSE(store->claim_idempotency(claim));

  auto again = store->claim_idempotency(idem("alice", "req-1", "hash-b", t0 + 1s));
  REQUIRE(again);  // in progress, unchanged by the second claim
  CHECK(again->owner == "alice");
  CHECK(again->key == "req-1");
  CHECK(again->request_hash == "hash-a");
  CHECK(again->status == 0);
  CHECK(again->body.empty());
  CHECK(again->created_at == t0);

  CHECK_FALSE(store->claim_idempotency(idem("bob", "req-1", "hash-a", t0)));  // keys are per owner

  store->complete_idempotency("alice", "req-1", 201, R"({"id":"sandbox-1"})");
  auto replay = store->claim_idempotency(idem("alice", "req-1", "hash-a", t0 + 2s));
  REQUIRE(replay);
  CHECK(replay->status == 201);
  CHECK(replay->body == R"({"id":"sandbox-1"})");
  CHECK(replay->created_at == t0);

  store->release_idempotency("bob", "req-1");
  CHECK_FALSE(store->claim_idempotency(idem("bob", "req-1", "hash-c", t0 + 3s)));  // free again
  store->release_idempotency("nobody", "nothing");                                 // no-op

  store->claim_idempotency(idem("carol", "old-1", "h", t0 - 2h));
  store->claim_idempotency(idem("carol", "old-2", "h", t0 - 1h));
  CHECK(store->purge_idempotency(t0 - 1h) == 1);  // strictly before the cutoff
  CHECK(store->purge_idempotency(t0) == 1);       // old-2
  CHECK(store->purge_idempotency(t0) == 0);
  CHECK(store->claim_idempotency(idem("alice", "req-1", "x", t0)));  // newer rows survive
  CHECK(store->purge_idempotency(t0 + 1h) == 2);                     // alice/req-1, bob/req-1
  CHECK_FALSE(store->claim_idempotency(idem("alice", "req-1", "x", t0)));
}

TEST_CASE("idempotency: concurrent claims of one key have exactly one winner") {
  TestDb db;
  auto a = db.open();
  auto b = db.open();
  std::atomic<int> winners{0};
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  threads.reserve(8);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      try {
        auto& store = t % 2 ? *a : *b;
        if (!store.claim_idempotency(idem("alice", "race", "hash-" + std::to_string(t), t0))) ++winners;
      } catch (...) {
        ++errors;
      }
    });
  }
  for (auto& th : threads)
    th.join();
  CHECK(errors == 0);
  CHECK(winners == 1);
}

// ---- two stores on one file (two processes) ---------------------------------------------------------------------

TEST_CASE("two stores on one file see each other's writes and share one CAS") {
  TestDb db;
  auto a = db.open();
  auto b = db.open();

  a->insert_workspace(workspace("ws-1"));
  a->insert_sandbox(sandbox("sandbox-1", "ws-1", "alice", "k"));
  REQUIRE(b->get_sandbox("sandbox-1"));
  CHECK_THROWS_AS(b->insert_sandbox(sandbox("sandbox-2", "ws-1", "alice", "k")), UniqueViolation);

  // sequential: a stale version from one store loses against the other's write
  const auto seen = *a->get_sandbox("sandbox-1");
  auto via_b = seen;
  via_b.current_session_id = "sess-b";
  REQUIRE(b->update_sandbox_cas(via_b, seen.version));
  auto via_a = seen;
  via_a.current_session_id = "sess-a";
  CHECK_FALSE(a->update_sandbox_cas(via_a, seen.version));
  CHECK(a->get_sandbox("sandbox-1")->current_session_id == "sess-b");

  // concurrent: threads split across the two stores, one winner per round
  for (int round = 0; round < 10; ++round) {
    const auto current = *b->get_sandbox("sandbox-1");
    std::atomic<int> wins{0};
    std::atomic<int> errors{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    threads.reserve(8);
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        while (!go.load())
          std::this_thread::yield();
        auto& store = t % 2 ? *a : *b;
        auto mine = current;
        mine.current_session_id = "sess-" + std::to_string(t);
        try {
          if (store.update_sandbox_cas(mine, current.version)) ++wins;
        } catch (...) {
          ++errors;
        }
      });
    }
    go = true;
    for (auto& th : threads)
      th.join();
    CHECK(errors == 0);
    REQUIRE(wins == 1);
    CHECK(a->get_sandbox("sandbox-1")->version == current.version + 1);
  }

  // a deletion through one store frees the key for the other
  auto row = *a->get_sandbox("sandbox-1");
  row.deleted_at = t0;
  REQUIRE(a->update_sandbox_cas(row, row.version));
  b->insert_sandbox(sandbox("sandbox-2", "ws-1", "alice", "k"));
  CHECK(a->find_live_by_key("alice", "k")->id == "sandbox-2");
}

TEST_CASE("a connection that ran a transaction commits the writes after it: other stores see them at once") {
  // Found by two berthd racing execs on MariaDB: Poco's MySQL begin() is mysql_autocommit(0) and its commit()
  // never turns autocommit back on, so every later single statement on that pooled connection joined an open
  // transaction that nothing committed. Its writes stayed invisible to other connections and its row locks held
  // every other writer of the row until the connection's next transaction, a deadlock once the pool ran dry.
  TestDb db;
  auto a = db.open();
  auto b = db.open();
  a->insert_workspace(workspace("ws-1"));
  a->insert_sandbox(sandbox("sandbox-1", "ws-1", "alice", "k"));
  // Both transactional calls of the store, each on the connection a one-connection-at-a-time caller gets back.
  for (int round = 0; round < 2; ++round) {
    if (round == 0) {
      (void)a->list_executions("sandbox-1", "", 10, 0);
    } else {
      (void)a->purge_executions(t0, 100);
    }
    const std::string id = "sandbox-after-" + std::to_string(round);
    a->insert_sandbox(sandbox(id, "ws-1", "alice", "k" + std::to_string(round + 1)));
    INFO("round " << round);
    REQUIRE(b->get_sandbox(id));  // committed, not waiting in an open transaction of a's connection
    auto row = *b->get_sandbox("sandbox-1");
    row.current_session_id = "sess-b-" + std::to_string(round);
    REQUIRE(b->update_sandbox_cas(row, row.version));  // no row lock left behind by a's connection
  }
}

TEST_CASE("list_executions caps each field and the page bytes, and purge_executions expires by age and count") {
  TestDb db;
  auto store = db.open();
  for (int i = 1; i <= 10; ++i) {
    auto e = execution("exec-" + std::string(i < 10 ? "0" : "") + std::to_string(i), "sandbox-1", "shell",
                       t0 + std::chrono::seconds(i));
    e.output = std::string(1000, 'o');  // a legacy row: stored before the core capped output
    e.error = "e";
    store->insert_execution(e);
  }
  store->insert_execution(execution("exec-other", "sandbox-2", "shell", t0));
  ExecutionPageLimits bounds;
  bounds.field_cap = 100;
  bounds.byte_budget = 350;  // records of about 100 + 1 + code bytes: the fourth one reaches the budget
  auto [page, total] = store->list_executions("sandbox-1", "", 50, 0, bounds);
  CHECK(total == 10);
  REQUIRE(page.size() == 4);
  CHECK(page[0].id == "exec-10");
  for (const auto& r : page) {
    CHECK(r.output == std::string(100, 'o'));
    CHECK(r.error == "e");
    CHECK(r.truncated);
  }
  // A budget smaller than one record still gives that record.
  bounds.byte_budget = 1;
  std::tie(page, total) = store->list_executions("sandbox-1", "", 50, 2, bounds);
  REQUIRE(page.size() == 1);
  CHECK(page[0].id == "exec-08");
  // Without bounds: whole and not flagged.
  std::tie(page, total) = store->list_executions("sandbox-1", "", 1, 0);
  CHECK(page.at(0).output.size() == 1000);
  CHECK_FALSE(page.at(0).truncated);

  CHECK(store->purge_executions(t0 + std::chrono::seconds(3), 0) == 3);  // exec-other, exec-01, exec-02
  CHECK(store->purge_executions(t0, 5) == 3);                            // exec-03..05: five newest kept
  std::tie(page, total) = store->list_executions("sandbox-1", "", 50, 0);
  CHECK(total == 5);
  CHECK(page.back().id == "exec-06");
  CHECK(store->list_executions("sandbox-2", "", 50, 0).second == 0);
}

TEST_CASE("profiles: insert, unique names, list in order, update, delete, count live sandboxes per profile") {
  TestDb db;
  auto store = db.open();
  const auto t0 = std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000));
  ProfileRow b{"b", R"({"image":"x"})", t0, t0};
  ProfileRow a{"a", R"({"image":"y"})", t0, t0};
  store->insert_profile(b);
  store->insert_profile(a);
  CHECK_THROWS_AS(store->insert_profile(a), UniqueViolation);
  auto all = store->list_profiles();
  REQUIRE(all.size() == 2);
  CHECK(all[0].name == "a");
  CHECK(all[1].spec == R"({"image":"x"})");
  CHECK(all[1].created_at == t0);
  b.spec = R"({"image":"z"})";
  b.updated_at = t0 + std::chrono::seconds(5);
  CHECK(store->update_profile(b));
  CHECK(store->list_profiles()[1].spec == R"({"image":"z"})");
  CHECK(store->list_profiles()[1].updated_at == b.updated_at);
  CHECK_FALSE(store->update_profile(ProfileRow{"nope", "{}", t0, t0}));

  store->insert_workspace(workspace("ws-1"));
  auto live = sandbox("sandbox-1", "ws-1");
  live.profile = "a";
  store->insert_sandbox(live);
  auto dead = sandbox("sandbox-2", "ws-1");
  dead.profile = "a";
  dead.deleted_at = t0;
  store->insert_sandbox(dead);
  CHECK(store->count_live_sandboxes_with_profile("a") == 1);
  CHECK(store->count_live_sandboxes_with_profile("b") == 0);

  CHECK(store->delete_profile("b"));
  CHECK_FALSE(store->delete_profile("b"));
  CHECK(store->list_profiles().size() == 1);
}

// ---- bytes ------------------------------------------------------------------------------------------------------

TEST_CASE("owners and keys are bytes: case, accents and invalid UTF-8 are distinct and kept exactly") {
  TestDb db;
  auto store = db.open();
  store->insert_workspace(workspace("ws-1"));
  const std::string odd_owner = std::string("al\xff\xfe", 4) + "ice";
  store->insert_sandbox(sandbox("sandbox-1", "ws-1", odd_owner, "key"));
  store->insert_sandbox(sandbox("sandbox-2", "ws-1", odd_owner, "KEY"));         // another key (no case folding)
  store->insert_sandbox(sandbox("sandbox-3", "ws-1", odd_owner, "k\xc3\xa9y"));  // é
  store->insert_sandbox(sandbox("sandbox-4", "ws-1", odd_owner, "key "));        // trailing space is part of the key
  CHECK_THROWS_AS(store->insert_sandbox(sandbox("sandbox-5", "ws-1", odd_owner, "key")), UniqueViolation);
  auto row = store->get_sandbox("sandbox-1");
  REQUIRE(row);
  CHECK(row->owner == odd_owner);
  CHECK(store->find_live_by_key(odd_owner, "KEY")->id == "sandbox-2");
  CHECK(store->find_live_by_key(odd_owner, "key ")->id == "sandbox-4");
  CHECK_FALSE(store->find_live_by_key("alice", "key"));
  auto exec = execution("exec-1", "sandbox-1", "python", t0);
  exec.output = "\xff\x80 bytes";
  store->insert_execution(exec);
  auto [page, total] = store->list_executions("sandbox-1", "", 10, 0);
  REQUIRE(page.size() == 1);
  CHECK(page[0].output == exec.output);
}

TEST_CASE(
    "sandbox and session rows read back byte for byte on every read, and a failed write leaves the next one "
    "working") {
  // The SQLite store reads sandboxes and sessions and writes executions through statements it prepares once and
  // reuses: NUL bytes and invalid UTF-8 come back whole whichever read returns the row, and a statement that failed
  // (a duplicate id) is reset for the next caller instead of staying stuck in its error.
  TestDb db;
  auto store = db.open();
  store->insert_workspace(workspace("ws-1"));
  auto sb = sandbox("sandbox-1", "ws-1", "alice", "key-1");
  sb.last_error = std::string("before\0after \xff\xfe", 15);
  sb.labels = {{"k\xc3\xa9y", "v\xe2\x82\xac"}};  // labels are JSON: valid UTF-8 (the API checks)
  store->insert_sandbox(sb);
  for (int round = 0; round < 2; ++round) {  // the second read reuses the statement
    auto row = store->get_sandbox("sandbox-1");
    REQUIRE(row);
    CHECK(row->last_error == sb.last_error);
    CHECK(row->labels == sb.labels);
    CHECK(row->key == "key-1");
    CHECK(row->current_session_id == std::nullopt);
    CHECK_FALSE(store->get_sandbox(std::string("sandbox-1\0x", 11)));
  }
  auto by_key = store->find_live_by_key("alice", "key-1");
  REQUIRE(by_key);
  CHECK(by_key->last_error == sb.last_error);
  SandboxFilter filter;
  filter.owner = "alice";
  filter.limit = 10;
  auto listed = store->list_sandboxes(filter);
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].last_error == sb.last_error);
  auto live = store->list_live_sandboxes();
  REQUIRE(live.size() == 1);
  CHECK(live[0].last_error == sb.last_error);
  auto ses = session_row("session-1", "sandbox-1", SessionState::ready);
  ses.endpoint = std::string("agent:unix:/run/\0\xff", 18);
  store->insert_session(ses);
  auto got = store->get_session("session-1");
  REQUIRE(got);
  CHECK(got->endpoint == ses.endpoint);
  CHECK(got->state == SessionState::ready);
  CHECK_FALSE(store->get_session("session-2"));
  auto active = store->list_active_sessions();
  REQUIRE(active.size() == 1);
  CHECK(active[0].endpoint == ses.endpoint);

  auto exec = execution("exec-1", "sandbox-1", "shell", t0);
  exec.output = std::string("a\0b\xff", 4);
  exec.exit_code = std::nullopt;
  store->insert_execution(exec);
  CHECK_THROWS_AS(store->insert_execution(exec), StoreError);  // the same id again
  auto second = execution("exec-2", "sandbox-1", "shell", t0);
  second.exit_code = 3;
  CHECK_NOTHROW(store->insert_execution(second));
  store->write_batch({second}, {});  // replaces its own row
  auto [page, total] = store->list_executions("sandbox-1", "", 10, 0);
  CHECK(total == 2);
  for (const auto& row : page) {
    if (row.id == "exec-1") CHECK_FALSE(row.exit_code);
    if (row.id == "exec-2") CHECK(row.exit_code == 3);
  }
}

TEST_CASE("every text a store keeps reads back with its NUL bytes") {
  // A program may print NUL (valid UTF-8, JSON's \u0000): the exec record keeps it on every read, as do the other
  // tables' text columns.
  TestDb db;
  auto store = db.open();
  const std::string nul = std::string("a\0b\0", 4);
  auto ws = workspace("ws-1");
  ws.volume = "vol" + nul;
  store->insert_workspace(ws);
  CHECK(store->get_workspace("ws-1")->volume == ws.volume);
  store->insert_sandbox(sandbox("sandbox-1", "ws-1"));
  auto exec = execution("exec-1", "sandbox-1", "shell", t0);
  exec.code = "printf 'a\\0b'" + nul;
  exec.output = nul;
  exec.error = "e" + nul;
  store->insert_execution(exec);
  auto one = store->get_execution("exec-1", 1 << 20);
  REQUIRE(one);
  CHECK(one->code == exec.code);
  CHECK(one->output == exec.output);
  CHECK(one->error == exec.error);
  auto [page, total] = store->list_executions("sandbox-1", "", 10, 0);
  REQUIRE(page.size() == 1);
  CHECK(page[0].output == exec.output);
  CHECK(page[0].code == exec.code);
  IdempotencyRow idem;
  idem.owner = "alice";
  idem.key = "k";
  idem.request_hash = "h";
  idem.status = 200;
  idem.created_at = t0;
  CHECK_FALSE(store->claim_idempotency(idem));
  const std::string body = "{\"x\":\"" + nul + "\"}";
  store->complete_idempotency("alice", "k", 200, body);
  auto again = store->claim_idempotency(idem);
  REQUIRE(again);
  CHECK(again->body == body);
}

// ---- MySQL only -------------------------------------------------------------------------------------------------

TEST_CASE("an unreachable MySQL server is StoreUnavailable and the password appears nowhere", "[mysql]") {
  MySqlOptions o = parse_mysql_url("mysql://berth:s3cret-pw%40x@127.0.0.1:1/berth");
  CHECK(o.password == "s3cret-pw@x");
  CHECK_THROWS_AS(parse_mysql_url("mysql://berth:a%3Bb@127.0.0.1/berth"), StoreError);  // no ; for the client
  o.password = "s3cret-pw";
  o.connect_timeout = std::chrono::seconds(2);
  CHECK(o.redacted_url() == "mysql://berth@127.0.0.1:1/berth");
  std::string error;
  try {
    open_mysql_store(o);
  } catch (const StoreUnavailable& e) {
    error = e.what();
  }
  CHECK_THAT(error, Catch::Contains("mysql://berth@127.0.0.1:1/berth"));
  CHECK_THAT(error, !Catch::Contains("s3cret"));
  CHECK_THROWS_AS(parse_mysql_url("postgres://a@b/c"), StoreError);
  CHECK_THROWS_AS(parse_mysql_url("mysql://a@b/"), StoreError);
}

TEST_CASE("a lock wait timeout is retried and counted, and the CAS then wins", "[mysql]") {
  TestDb db;
  MySqlOptions o = db.mysql();
  o.statement_timeout = std::chrono::seconds(1);  // innodb_lock_wait_timeout = 1 s
  auto setup = db.open();
  setup->insert_workspace(workspace("ws-1"));
  setup->insert_sandbox(sandbox("sandbox-1", "ws-1"));
  auto store = open_mysql_store(o);
  // Another connection holds the row lock until the store has lost at least one round against it.
  auto holder = db.raw();
  holder.begin();
  holder << "UPDATE sandboxes SET last_error = 'held' WHERE id = 'sandbox-1'", now;
  std::atomic<bool> won{false};
  std::string failure;
  std::thread cas([&] {
    try {
      auto row = *store->get_sandbox("sandbox-1");
      row.current_session_id = "sess-1";
      won = store->update_sandbox_cas(row, 1);
    } catch (const std::exception& e) {
      failure = e.what();
    }
  });
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (store->transaction_retries() == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  const auto retries_seen = store->transaction_retries();
  holder.rollback();
  cas.join();
  CHECK(retries_seen >= 1);
  INFO(failure);
  CHECK(failure.empty());
  CHECK(won);
  CHECK(store->get_sandbox("sandbox-1")->current_session_id == "sess-1");
}

TEST_CASE("connections killed by the server are replaced: a call fails at most with StoreUnavailable", "[mysql]") {
  TestDb db;
  auto store = db.open();
  store->insert_workspace(workspace("ws-1"));
  auto admin = db.raw();
  std::vector<Poco::Int64> ids;
  const std::string name = db.mysql().database;
  admin << "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
      Poco::Data::Keywords::bind(name), into(ids), now;
  REQUIRE_FALSE(ids.empty());
  for (auto id : ids)
    admin << "KILL CONNECTION " + std::to_string(id), now;
  int unavailable = 0;
  int found = 0;
  for (int i = 0; i < 3; ++i) {
    try {
      if (store->get_workspace("ws-1")) ++found;
    } catch (const StoreUnavailable&) {
      ++unavailable;  // the lost connection is dropped; the next call opens a new one
    }
  }
  CHECK(found + unavailable == 3);
  CHECK(unavailable <= 1);
  CHECK(store->get_workspace("ws-1"));
}

// ---- instances and cleanup leases (core::InstanceStore, schema 5) -----------------------------------------------

namespace {

/** Both SQL stores implement the core's instance port next to Store (the daemon reaches it the same way). */
berth::core::InstanceStore& instances(Store& store) {
  return dynamic_cast<berth::core::InstanceStore&>(store);
}

berth::core::InstanceRecord instance(const std::string& id, TimePoint at, std::int64_t pid = 100) {
  berth::core::InstanceRecord r;
  r.id = id;
  r.host = "node-" + id;
  r.pid = pid;
  r.started_at = at;
  r.heartbeat_at = at;
  return r;
}

std::vector<std::string> ids_of(const std::vector<berth::core::InstanceRecord>& rows) {
  std::vector<std::string> ids;
  ids.reserve(rows.size());
  for (const auto& r : rows)
    ids.push_back(r.id);
  return ids;
}

}  // namespace

TEST_CASE("a dead instance's row is deleted only once it died long enough ago and names no live session") {
  TestDb db;
  auto store = db.open();
  auto& inst = instances(*store);
  inst.register_instance(instance("berth-live", t0 + 1h));
  inst.register_instance(instance("berth-old", t0));              // last beat at t0
  inst.register_instance(instance("berth-stopped", t0 + 10min));  // beat late, but stopped early
  inst.mark_instance_stopped("berth-stopped", t0 + 1min);
  inst.register_instance(instance("berth-starter", t0));  // dead, but still starter of a live session
  store->insert_workspace(workspace("ws-1"));
  store->insert_sandbox(sandbox("sandbox-1", "ws-1"));
  auto s = session_row("sess-1", "sandbox-1", SessionState::ready);
  s.starter = "berth-starter";
  store->insert_session(s);

  CHECK_FALSE(inst.delete_dead_instance("berth-old", t0));  // died exactly at the cutoff: not before it
  CHECK_FALSE(inst.delete_dead_instance("berth-live", t0 + 30min));
  CHECK_FALSE(inst.delete_dead_instance("berth-starter", t0 + 30min));
  CHECK(inst.delete_dead_instance("berth-old", t0 + 30min));
  CHECK(inst.delete_dead_instance("berth-stopped", t0 + 30min));  // died by its stop, not its later heartbeat
  CHECK_FALSE(inst.delete_dead_instance("berth-nobody", t0 + 30min));
  CHECK(ids_of(inst.list_instances()) == std::vector<std::string>{"berth-live", "berth-starter"});

  // Once its session ended (or was taken over) the starter's row goes too.
  auto ended = *store->get_session("sess-1");
  ended.state = SessionState::stopped;
  store->update_session(ended);
  CHECK(inst.delete_dead_instance("berth-starter", t0 + 30min));
}

TEST_CASE("instances register, heartbeat, die by a stale heartbeat or a stop, and come back by re-registering") {
  TestDb db;
  auto store = db.open();
  auto& inst = instances(*store);
  inst.register_instance(instance("berth-a", t0));
  inst.register_instance(instance("berth-b", t0));
  auto all = inst.list_instances();
  REQUIRE(ids_of(all) == std::vector<std::string>{"berth-a", "berth-b"});
  CHECK(all[0].host == "node-berth-a");
  CHECK(all[0].pid == 100);
  CHECK(all[0].started_at == t0);
  CHECK_FALSE(all[0].stopped_at);

  // a beats at t0+10s, b stays at t0: with a 5 s timeout at t0+12s only b is dead
  CHECK(inst.heartbeat_instance("berth-a", t0 + 10s));
  CHECK(ids_of(inst.list_dead_instances(t0 + 12s - 5s)) == std::vector<std::string>{"berth-b"});
  CHECK(inst.list_dead_instances(t0).empty());  // a heartbeat exactly at the cutoff is alive
  CHECK(inst.list_instances()[0].heartbeat_at == t0 + 10s);

  // an unknown instance cannot beat: it has to register
  CHECK_FALSE(inst.heartbeat_instance("berth-nobody", t0 + 10s));

  // a clean stop is dead at once, whatever its heartbeat, and cannot beat until it registers again
  inst.mark_instance_stopped("berth-a", t0 + 11s);
  CHECK(ids_of(inst.list_dead_instances(t0)) == std::vector<std::string>{"berth-a"});
  CHECK_FALSE(inst.heartbeat_instance("berth-a", t0 + 12s));
  CHECK(inst.list_instances()[0].stopped_at == t0 + 11s);

  // a restart with the same id replaces pid and times and clears the stop
  inst.register_instance(instance("berth-a", t0 + 20s, 200));
  auto again = inst.list_instances();
  REQUIRE(again.size() == 2);
  CHECK(again[0].pid == 200);
  CHECK(again[0].started_at == t0 + 20s);
  CHECK_FALSE(again[0].stopped_at);
  CHECK(inst.heartbeat_instance("berth-a", t0 + 21s));
  CHECK(ids_of(inst.list_dead_instances(t0 + 15s)) == std::vector<std::string>{"berth-b"});
}

TEST_CASE("a heartbeat with an unchanged time still reports the instance alive") {
  // MySQL reports 0 affected rows for an UPDATE that changes nothing: the store must not read that as "unknown".
  TestDb db;
  auto store = db.open();
  auto& inst = instances(*store);
  inst.register_instance(instance("berth-a", t0));
  CHECK(inst.heartbeat_instance("berth-a", t0));
  CHECK(inst.heartbeat_instance("berth-a", t0));
}

TEST_CASE("take_over_session hands a session to one new starter only") {
  TestDb db;
  auto a = db.open();
  auto b = db.open();
  a->insert_workspace(workspace("ws-1"));
  a->insert_sandbox(sandbox("sandbox-1", "ws-1"));
  auto row = session_row("sess-1", "sandbox-1", SessionState::starting);
  row.starter = "berth-dead";
  a->insert_session(row);

  CHECK(instances(*a).take_over_session("sess-1", "berth-dead", "berth-a", t0));
  CHECK_FALSE(instances(*b).take_over_session("sess-1", "berth-dead", "berth-b", t0));  // a was first
  CHECK(b->get_session("sess-1")->starter == "berth-a");
  CHECK_FALSE(instances(*b).take_over_session("sess-missing", "berth-dead", "berth-b", t0));
  CHECK(instances(*b).take_over_session("sess-1", "berth-a", "berth-b", t0));  // from the current starter it works
  CHECK(a->get_session("sess-1")->starter == "berth-b");
  // The death is checked again in the same statement: an instance that beat at or after the cutoff (it came back,
  // or was only late) keeps its session; one that stopped loses it whatever its last beat.
  instances(*a).register_instance(instance("berth-b", t0 + 10s));
  CHECK_FALSE(instances(*a).take_over_session("sess-1", "berth-b", "berth-a", t0 + 5s));
  CHECK(a->get_session("sess-1")->starter == "berth-b");
  CHECK(instances(*a).take_over_session("sess-1", "berth-b", "berth-a", t0 + 20s));
  instances(*a).register_instance(instance("berth-a", t0 + 30s));
  instances(*a).mark_instance_stopped("berth-a", t0 + 31s);
  CHECK(instances(*b).take_over_session("sess-1", "berth-a", "berth-b", t0 + 5s));
}

TEST_CASE("a cleanup lease has one holder until it is released or expires") {
  TestDb db;
  auto a = db.open();
  auto b = db.open();
  auto& la = instances(*a);
  auto& lb = instances(*b);

  REQUIRE(la.claim_lease("sandbox-1", "berth-a", t0, t0 + 30s));
  CHECK_FALSE(lb.claim_lease("sandbox-1", "berth-b", t0 + 1s, t0 + 31s));
  CHECK(lb.claim_lease("sandbox-2", "berth-b", t0, t0 + 30s));       // leases are per candidate
  CHECK(la.claim_lease("sandbox-1", "berth-a", t0 + 2s, t0 + 32s));  // the holder renews
  CHECK(la.claim_lease("sandbox-1", "berth-a", t0 + 2s, t0 + 32s));  // an identical renewal is still held
  // the renewal moved the expiry: at t0+31s (after the first expiry, before the second) b still loses
  CHECK_FALSE(lb.claim_lease("sandbox-1", "berth-b", t0 + 31s, t0 + 61s));

  // only the holder releases
  CHECK_FALSE(lb.release_lease("sandbox-1", "berth-b"));
  CHECK(la.release_lease("sandbox-1", "berth-a"));
  CHECK_FALSE(la.release_lease("sandbox-1", "berth-a"));
  CHECK(lb.claim_lease("sandbox-1", "berth-b", t0 + 3s, t0 + 33s));

  // a crashed holder's lease is free once it expires (the expiry instant counts as expired)
  CHECK_FALSE(la.claim_lease("sandbox-1", "berth-a", t0 + 32s, t0 + 62s));
  CHECK(la.claim_lease("sandbox-1", "berth-a", t0 + 33s, t0 + 63s));
  CHECK_FALSE(lb.claim_lease("sandbox-1", "berth-b", t0 + 34s, t0 + 64s));

  // release_leases frees everything one holder has, nothing of the others
  CHECK(la.claim_lease("sandbox-3", "berth-a", t0 + 34s, t0 + 64s));
  CHECK(la.release_leases("berth-a") == 2);
  CHECK(lb.claim_lease("sandbox-1", "berth-b", t0 + 35s, t0 + 65s));
  CHECK(lb.claim_lease("sandbox-3", "berth-b", t0 + 35s, t0 + 65s));
  CHECK_FALSE(la.claim_lease("sandbox-2", "berth-a", t0 + 29s, t0 + 59s));  // b's own, held until t0+30s
}

TEST_CASE("threads on two stores race for free and expired leases: exactly one wins each") {
  TestDb db;
  auto a = db.open();
  auto b = db.open();
  instances(*a).claim_lease("expired", "berth-crashed", t0, t0 + 1s);
  for (const std::string key : {"free", "expired"}) {
    std::atomic<int> wins{0};
    std::atomic<int> errors{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    threads.reserve(8);
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        while (!go.load())
          std::this_thread::yield();
        try {
          auto& store = instances(t % 2 ? *a : *b);
          if (store.claim_lease(key, "berth-" + std::to_string(t), t0 + 10s, t0 + 40s)) ++wins;
        } catch (...) {
          ++errors;
        }
      });
    }
    go = true;
    for (auto& th : threads)
      th.join();
    INFO(key);
    CHECK(errors == 0);
    CHECK(wins == 1);
  }
}
