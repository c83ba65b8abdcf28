// The SQLite implementation of Store, on Poco::Data. One connection per store, serialized by a mutex: SQLite
// serializes writers anyway, and the compare-and-swap on sandboxes.version keeps several stores (threads or
// processes) on one file honest. Times are integer milliseconds since the epoch; labels and env are JSON objects.
#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/SQLite/SQLiteException.h>
#include <Poco/Data/SQLite/Utility.h>
#include <Poco/Data/Session.h>
#include <Poco/Data/Statement.h>
#include <Poco/Dynamic/Var.h>
#include <Poco/Exception.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Nullable.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <sqlite3.h>

#include "store/rows.hpp"
#include "store/store.hpp"

namespace berth::store {
namespace {

using Poco::Int64;
using Poco::Data::Session;
using Poco::Data::Statement;
using Poco::Data::Keywords::bind;
using Poco::Data::Keywords::into;
using Poco::Data::Keywords::now;

// ---- schema ---------------------------------------------------------------------------------------------------

/**
 * A numbered schema step. Applied once, in its own transaction, recorded in schema_migrations. Never edit a
 * released migration: append a new one. Statements run one at a time (Poco runs one statement per execute).
 */
struct Migration {
  int version;
  const char* description;
  std::vector<const char*> statements;
};

// `key` is an SQLite keyword usable as a column name; the MySQL schema will need to quote it.
const std::vector<Migration> kMigrations = {
    {1,
     "initial schema",
     {
         "CREATE TABLE workspaces ("
         "  id TEXT NOT NULL PRIMARY KEY,"
         "  owner TEXT NOT NULL,"
         "  volume TEXT NOT NULL,"
         "  managed INTEGER NOT NULL DEFAULT 0,"
         "  created_at INTEGER NOT NULL,"
         "  deleted_at INTEGER)",

         // live_key = key while the row is live, NULL once deleted_at is set: UNIQUE(owner, live_key) then allows
         // one live sandbox per (owner, key) and any number of deleted ones (NULLs are distinct, as in MySQL).
         "CREATE TABLE sandboxes ("
         "  id TEXT NOT NULL PRIMARY KEY,"
         "  owner TEXT NOT NULL,"
         "  profile TEXT NOT NULL,"
         "  workspace_id TEXT NOT NULL REFERENCES workspaces(id),"
         "  key TEXT,"
         "  live_key TEXT,"
         "  labels TEXT NOT NULL DEFAULT '{}',"
         "  env TEXT NOT NULL DEFAULT '{}',"
         "  current_session_id TEXT,"
         "  version INTEGER NOT NULL,"
         "  expires_at INTEGER,"
         "  idle_expires_at INTEGER,"
         "  last_error TEXT NOT NULL DEFAULT '',"
         "  created_at INTEGER NOT NULL,"
         "  deleted_at INTEGER,"
         "  CONSTRAINT sandboxes_owner_live_key UNIQUE (owner, live_key))",
         "CREATE INDEX sandboxes_owner_id ON sandboxes (owner, id)",
         "CREATE INDEX sandboxes_workspace_id ON sandboxes (workspace_id)",

         "CREATE TABLE sessions ("
         "  id TEXT NOT NULL PRIMARY KEY,"
         "  sandbox_id TEXT NOT NULL REFERENCES sandboxes(id),"
         "  handle TEXT NOT NULL DEFAULT '',"
         "  endpoint TEXT NOT NULL DEFAULT '',"
         "  state TEXT NOT NULL,"
         "  error TEXT NOT NULL DEFAULT '',"
         "  created_at INTEGER NOT NULL,"
         "  last_active_at INTEGER NOT NULL)",
         "CREATE INDEX sessions_sandbox_id ON sessions (sandbox_id)",
         "CREATE INDEX sessions_state ON sessions (state)",

         "CREATE TABLE executions ("
         "  id TEXT NOT NULL PRIMARY KEY,"
         "  sandbox_id TEXT NOT NULL,"
         "  session_id TEXT NOT NULL,"
         "  kind TEXT NOT NULL,"
         "  code TEXT NOT NULL,"
         "  exit_code INTEGER,"
         "  success INTEGER NOT NULL,"
         "  output TEXT NOT NULL,"
         "  error TEXT NOT NULL,"
         "  duration_ms INTEGER NOT NULL,"
         "  created_at INTEGER NOT NULL)",
         "CREATE INDEX executions_sandbox_created ON executions (sandbox_id, created_at)",

         "CREATE TABLE idempotency_keys ("
         "  owner TEXT NOT NULL,"
         "  key TEXT NOT NULL,"
         "  request_hash TEXT NOT NULL,"
         "  status INTEGER NOT NULL DEFAULT 0,"
         "  body TEXT NOT NULL DEFAULT '',"
         "  created_at INTEGER NOT NULL,"
         "  PRIMARY KEY (owner, key))",
         "CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at)",
     }},
    {2,
     "sessions.starter: the berthd instance that started each session (crash recovery)",
     {
         "ALTER TABLE sessions ADD COLUMN starter TEXT NOT NULL DEFAULT ''",
     }},
    {3,
     "executions.truncated: stored output is capped (issue 8); per-sandbox expiry reads the newest first",
     {
         "ALTER TABLE executions ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0",
     }},
    {4,
     "profiles: profiles created over the API (issue 13); sandboxes are counted per profile before a delete",
     {
         "CREATE TABLE profiles ("
         "  name TEXT PRIMARY KEY,"
         "  spec TEXT NOT NULL,"
         "  created_at INTEGER NOT NULL,"
         "  updated_at INTEGER NOT NULL)",
         "CREATE INDEX sandboxes_live_profile ON sandboxes (profile) WHERE deleted_at IS NULL",
     }},
    {5,
     "instances and cleanup leases: several berthd on one database (issue 11)",
     {
         "CREATE TABLE instances ("
         "  id TEXT NOT NULL PRIMARY KEY,"
         "  host TEXT NOT NULL,"
         "  pid INTEGER NOT NULL,"
         "  started_at INTEGER NOT NULL,"
         "  heartbeat_at INTEGER NOT NULL,"
         "  beats INTEGER NOT NULL DEFAULT 0,"
         "  stopped_at INTEGER)",
         // One row per candidate being acted on; a row whose lease_expires_at passed is free to claim.
         "CREATE TABLE cleanup_leases ("
         "  lease_key TEXT NOT NULL PRIMARY KEY,"
         "  claimed_by TEXT NOT NULL,"
         "  lease_expires_at INTEGER NOT NULL,"
         "  claims INTEGER NOT NULL DEFAULT 1)",
         "CREATE INDEX cleanup_leases_claimed_by ON cleanup_leases (claimed_by)",
         "CREATE INDEX sessions_starter ON sessions (starter)",
     }},
};

constexpr int kBusyTimeoutMs = 5000;

constexpr const char* kSandboxColumns =
    "id, owner, profile, workspace_id, key, labels, env, current_session_id, version, expires_at, idle_expires_at, "
    "last_error, created_at, deleted_at";
constexpr const char* kWorkspaceColumns = "id, owner, volume, managed, created_at, deleted_at";
constexpr const char* kSessionColumns =
    "id, sandbox_id, handle, endpoint, state, error, created_at, last_active_at, starter";
constexpr const char* kExecutionColumns =
    "id, sandbox_id, session_id, kind, code, exit_code, success, output, error, duration_ms, created_at, truncated";
// Statements built once here, not per call: the sandbox and session reads (two on every exec), the recorder's batch and
// the transactions. The others are written where they are used; all of them are prepared once (PreparedStatements).
const std::string kGetSandboxSql = std::string("SELECT ") + kSandboxColumns + " FROM sandboxes WHERE id = ?1";
const std::string kGetSessionSql = std::string("SELECT ") + kSessionColumns + " FROM sessions WHERE id = ?1";
const std::string kFindLiveByKeySql =
    std::string("SELECT ") + kSandboxColumns + " FROM sandboxes WHERE owner = ?1 AND live_key = ?2";
const std::string kListSandboxesSql = std::string("SELECT ") + kSandboxColumns +
                                      " FROM sandboxes WHERE owner = ?1 AND deleted_at IS NULL AND id > ?2"
                                      " ORDER BY id LIMIT ?3";
const std::string kListLiveSandboxesSql =
    std::string("SELECT ") + kSandboxColumns + " FROM sandboxes WHERE deleted_at IS NULL ORDER BY id";
const std::string kListActiveSessionsSql =
    std::string("SELECT ") + kSessionColumns +
    " FROM sessions WHERE state IN ('starting', 'ready') ORDER BY created_at, id";
const std::string kInsertExecutionSql = std::string("INSERT INTO executions (") + kExecutionColumns +
                                        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";
const std::string kReplaceExecutionSql = "INSERT OR REPLACE" + kInsertExecutionSql.substr(std::string("INSERT").size());
// Never backwards: a delayed or retried batch must not undo a newer timer (another instance's keepalive).
const std::string kTouchSandboxSql =
    "UPDATE sandboxes SET idle_expires_at = ?1, version = version + 1 WHERE id = ?2 AND deleted_at IS NULL"
    " AND (idle_expires_at IS NULL OR idle_expires_at < ?1)";
const std::string kBeginSql = "BEGIN";
const std::string kBeginImmediateSql = "BEGIN IMMEDIATE";
const std::string kCommitSql = "COMMIT";
const std::string kRollbackSql = "ROLLBACK";
constexpr const char* kIdempotencyColumns = "owner, key, request_hash, status, body, created_at";
constexpr const char* kProfileColumns = "name, spec, created_at, updated_at";
constexpr const char* kInstanceColumns = "id, host, pid, started_at, heartbeat_at, stopped_at";

using namespace rows;  // conversions and row readers shared with mysql_store.cpp

/** The (owner, live_key) constraint refused a write: a second live sandbox for one key. */
bool is_live_key_violation(const Poco::Exception& e) {
  const std::string text = e.displayText();
  return text.find("UNIQUE constraint failed") != std::string::npos &&
         text.find("sandboxes.live_key") != std::string::npos;
}

/** A failure of the SQLite C API under PreparedStatements; SqliteStore::locked() names the operation in front of it,
 *  as it does for Poco's exceptions. */
class SqliteFailure : public StoreError {
 public:
  using StoreError::StoreError;
};

/**
 * Statements prepared once on the store's connection and reused: every read of a sandbox or session row (two on
 * every exec), the exec recorder's batch and the transactions around it. Poco::Data compiles every statement on every
 * execution, which was a sixth of berthd's CPU per warm shell exec (docs/BENCHMARKS.md, "berthd's own share"). The
 * SQLite C API straight on the connection Poco opened (Poco::Data::SQLite::Utility::dbHandle), so busy_timeout and the
 * schema are the same; a statement SQLite finds stale after a schema change is prepared again by SQLite itself
 * (sqlite3_prepare_v3). Not thread-safe: used only under the store's mutex. Errors throw StoreError with SQLite's
 * message.
 */
class PreparedStatements {
 public:
  explicit PreparedStatements(sqlite3* db) : db_(db) {}
  PreparedStatements(const PreparedStatements&) = delete;
  PreparedStatements& operator=(const PreparedStatements&) = delete;
  /** Finalized before the connection closes (members are destroyed before the Session they follow). */
  ~PreparedStatements() {
    for (auto& [sql, stmt] : cache_)
      sqlite3_finalize(stmt);
  }

  /** One use of a cached statement: bind (1-based, as SQLite), step, read columns; reset and unbound on scope exit. */
  class Use {
   public:
    Use(sqlite3* db, sqlite3_stmt* stmt) : db_(db), stmt_(stmt) {}
    Use(const Use&) = delete;
    Use& operator=(const Use&) = delete;
    ~Use() {
      sqlite3_reset(stmt_);
      sqlite3_clear_bindings(stmt_);
    }
    Use& text(int i, const std::string& v) {
      return check(sqlite3_bind_text64(stmt_, i, v.data(), v.size(), SQLITE_STATIC, SQLITE_UTF8));
    }
    Use& text(int i, const std::optional<std::string>& v) { return v ? text(i, *v) : null(i); }
    Use& integer(int i, std::int64_t v) { return check(sqlite3_bind_int64(stmt_, i, v)); }
    Use& integer(int i, const std::optional<std::int64_t>& v) { return v ? integer(i, *v) : null(i); }
    Use& null(int i) { return check(sqlite3_bind_null(stmt_, i)); }
    /** text() or integer() by the value's type (select's arguments). */
    Use& bind(int i, const std::string& v) { return text(i, v); }
    Use& bind(int i, std::int64_t v) { return integer(i, v); }
    /** The next row (true) or the end (false). */
    bool step() {
      const int rc = sqlite3_step(stmt_);
      if (rc == SQLITE_ROW) return true;
      if (rc == SQLITE_DONE) return false;
      throw SqliteFailure(sqlite3_errmsg(db_));
    }
    /** Runs a statement that returns no rows; the number of rows it changed. */
    int run() {
      while (step()) {
      }
      return sqlite3_changes(db_);
    }
    sqlite3_stmt* get() const { return stmt_; }

   private:
    Use& check(int rc) {
      if (rc != SQLITE_OK) throw SqliteFailure(std::string("bind: ") + sqlite3_errmsg(db_));
      return *this;
    }
    sqlite3* db_;
    sqlite3_stmt* stmt_;
  };

  /** The statement for `sql` (the cache's key: the store's statements are a fixed set of texts), prepared on first
   *  use. */
  Use use(const std::string& sql) {
    auto& stmt = cache_[sql];
    if (!stmt && sqlite3_prepare_v3(db_, sql.c_str(), static_cast<int>(sql.size() + 1), SQLITE_PREPARE_PERSISTENT,
                                    &stmt, nullptr) != SQLITE_OK) {
      stmt = nullptr;
      throw SqliteFailure(std::string("prepare: ") + sqlite3_errmsg(db_));
    }
    return Use(db_, stmt);
  }

 private:
  sqlite3* db_;
  std::unordered_map<std::string, sqlite3_stmt*> cache_;
};

/** RowReader's methods over the current row of a prepared statement, left to right (rows::sandbox_from and co.).
 *  Text comes as the stored bytes (sqlite3_column_blob: no conversion, NULs kept). */
class StatementRow {
 public:
  explicit StatementRow(sqlite3_stmt* stmt) : stmt_(stmt) {}
  std::optional<std::string> optional_text() {
    const int col = col_++;
    if (sqlite3_column_type(stmt_, col) == SQLITE_NULL) return std::nullopt;
    const auto* data = static_cast<const char*>(sqlite3_column_blob(stmt_, col));
    const int size = sqlite3_column_bytes(stmt_, col);
    // NULL is also an empty value's pointer; with SQLITE_NOMEM it is a failed conversion, never an empty text.
    if (!data && sqlite3_errcode(sqlite3_db_handle(stmt_)) == SQLITE_NOMEM) throw SqliteFailure("out of memory");
    return data ? std::string(data, static_cast<std::size_t>(size)) : std::string();
  }
  std::string text() { return optional_text().value_or(std::string()); }
  std::optional<Int64> optional_integer() {
    const int col = col_++;
    if (sqlite3_column_type(stmt_, col) == SQLITE_NULL) return std::nullopt;
    return sqlite3_column_int64(stmt_, col);
  }
  Int64 integer() { return optional_integer().value_or(0); }
  TimePoint time() { return rows::from_ms(integer()); }
  std::optional<TimePoint> optional_time() {
    const auto ms = optional_integer();
    if (!ms) return std::nullopt;
    return rows::from_ms(*ms);
  }

 private:
  sqlite3_stmt* stmt_;
  int col_ = 0;
};

/** Every row `st` yields, each read by `read` (rows::sandbox_from, rows::session_from) from a StatementRow. */
template <typename Read>
auto all(PreparedStatements::Use& st, Read read) {
  std::vector<std::invoke_result_t<Read, StatementRow&>> out;
  while (st.step()) {
    StatementRow r(st.get());
    out.push_back(read(r));
  }
  return out;
}

/** The first of `rows`, if any. */
template <typename Row>
std::optional<Row> first(std::vector<Row> rows) {
  if (rows.empty()) return std::nullopt;
  return std::move(rows.front());
}

/** A raw BEGIN ... COMMIT that rolls back unless committed. Statements, not Session::begin(), so that the mode
 * (IMMEDIATE takes the write lock up front, avoiding read-to-write upgrade deadlocks) is ours to choose; prepared
 * once (PreparedStatements), as every write_batch runs one. */
class Transaction {
 public:
  /** `begin`: kBeginSql or kBeginImmediateSql. */
  Transaction(PreparedStatements& prepared, const std::string& begin) : prepared_(prepared) {
    prepared_.use(begin).run();
  }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction() {
    if (open_) {
      try {
        prepared_.use(kRollbackSql).run();
      } catch (...) {  // NOLINT(bugprone-empty-catch): nothing better to do in a destructor
      }
    }
  }
  void commit() {
    prepared_.use(kCommitSql).run();
    open_ = false;
  }

 private:
  PreparedStatements& prepared_;
  bool open_ = true;
};

void register_connector() {
  static const bool registered = [] {
    Poco::Data::SQLite::Connector::registerConnector();
    return true;
  }();
  (void)registered;
}

// ---- the store --------------------------------------------------------------------------------------------------

class SqliteStore final : public Store, public core::InstanceStore {
 public:
  explicit SqliteStore(const std::string& path) : path_(path), session_(open_session(path)) {
    configure();
    migrate();
  }

  // ---- workspaces ----
  void insert_workspace(const WorkspaceRow& row) override {
    locked("insert_workspace", [&] {
      session_ << "INSERT INTO workspaces (" << kWorkspaceColumns << ") VALUES (?, ?, ?, ?, ?, ?)", bind(row.id),
          bind(row.owner), bind(row.volume), bind(Int64(row.managed ? 1 : 0)), bind(to_ms(row.created_at)),
          bind(nullable_ms(row.deleted_at)), now;
    });
  }

  std::optional<WorkspaceRow> get_workspace(const std::string& id) override {
    return locked("get_workspace", [&] {
      return first(select(std::string("SELECT ") + kWorkspaceColumns + " FROM workspaces WHERE id = ?1",
                          rows::workspace_from<StatementRow>, id));
    });
  }

  bool mark_workspace_deleted(const std::string& id, TimePoint at) override {
    return locked("mark_workspace_deleted", [&] {
      Statement st(session_);
      st << "UPDATE workspaces SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL", bind(to_ms(at)), bind(id);
      return st.execute() == 1;
    });
  }

  int count_live_sandboxes_using(const std::string& workspace_id) override {
    return locked("count_live_sandboxes_using", [&] {
      Int64 count = 0;
      session_ << "SELECT COUNT(*) FROM sandboxes WHERE workspace_id = ? AND deleted_at IS NULL", bind(workspace_id),
          into(count), now;
      return static_cast<int>(count);
    });
  }

  std::vector<WorkspaceRow> list_abandoned_managed_workspaces() override {
    return locked("list_abandoned_managed_workspaces", [&] {
      return select(
          std::string("SELECT ") + kWorkspaceColumns +
              " FROM workspaces w WHERE w.managed = 1 AND w.deleted_at IS NULL"
              " AND EXISTS (SELECT 1 FROM sandboxes s WHERE s.workspace_id = w.id)"
              " AND NOT EXISTS (SELECT 1 FROM sandboxes s WHERE s.workspace_id = w.id AND s.deleted_at IS NULL)"
              " ORDER BY w.id",
          rows::workspace_from<StatementRow>);
    });
  }

  // ---- sandboxes ----
  void insert_sandbox(const SandboxRow& row) override {
    locked("insert_sandbox", [&] {
      const std::optional<std::string> live_key = row.deleted_at ? std::nullopt : row.key;
      session_ << "INSERT INTO sandboxes (" << kSandboxColumns
               << ", live_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?)",
          bind(row.id), bind(row.owner), bind(row.profile), bind(row.workspace_id), bind(nullable_text(row.key)),
          bind(to_json(row.labels)), bind(to_json(row.env)), bind(nullable_text(row.current_session_id)),
          bind(nullable_ms(row.expires_at)), bind(nullable_ms(row.idle_expires_at)), bind(row.last_error),
          bind(to_ms(row.created_at)), bind(nullable_ms(row.deleted_at)), bind(nullable_text(live_key)), now;
    });
  }

  std::optional<SandboxRow> get_sandbox(const std::string& id) override {
    return locked("get_sandbox", [&]() -> std::optional<SandboxRow> {
      return first(select(kGetSandboxSql, rows::sandbox_from<StatementRow>, id));
    });
  }

  std::optional<SandboxRow> find_live_by_key(const std::string& owner, const std::string& key) override {
    return locked("find_live_by_key",
                  [&] { return first(select(kFindLiveByKeySql, rows::sandbox_from<StatementRow>, owner, key)); });
  }

  std::vector<SandboxRow> list_sandboxes(const SandboxFilter& filter) override {
    return locked("list_sandboxes", [&] {
      std::vector<SandboxRow> out;
      if (filter.limit <= 0) return out;
      const auto limit = static_cast<std::size_t>(filter.limit);
      // Labels are JSON text, matched here rather than in SQL: fetch in batches until the page is full or the
      // owner's sandboxes are exhausted, so a sparse label never shortens a page that has more matches behind it.
      const Int64 batch = filter.label ? std::max<Int64>(filter.limit, 200) : filter.limit;
      std::string cursor = filter.after_id;
      for (;;) {
        auto rows = select(kListSandboxesSql, rows::sandbox_from<StatementRow>, filter.owner, cursor, batch);
        for (auto& row : rows) {
          cursor = row.id;
          if (filter.label) {
            const auto it = row.labels.find(filter.label->first);
            if (it == row.labels.end() || it->second != filter.label->second) continue;
          }
          out.push_back(std::move(row));
          if (out.size() == limit) return out;
        }
        if (static_cast<Int64>(rows.size()) < batch) return out;
      }
    });
  }

  std::vector<SandboxRow> list_live_sandboxes() override {
    return locked("list_live_sandboxes",
                  [&] { return select(kListLiveSandboxesSql, rows::sandbox_from<StatementRow>); });
  }

  bool update_sandbox_cas(const SandboxRow& row, std::int64_t expected_version) override {
    return locked("update_sandbox_cas", [&] {
      // live_key follows deleted_at: the key while live, NULL (released) once deleted.
      const auto deleted_at = nullable_ms(row.deleted_at);
      Statement st(session_);
      st << "UPDATE sandboxes SET current_session_id = ?, expires_at = ?, idle_expires_at = ?, last_error = ?, "
            "deleted_at = ?, live_key = CASE WHEN ? IS NULL THEN key ELSE NULL END, version = version + 1 "
            "WHERE id = ? AND version = ?",
          bind(nullable_text(row.current_session_id)), bind(nullable_ms(row.expires_at)),
          bind(nullable_ms(row.idle_expires_at)), bind(row.last_error), bind(deleted_at), bind(deleted_at),
          bind(row.id), bind(Int64(expected_version));
      return st.execute() == 1;
    });
  }

  bool touch_sandbox(const std::string& id, TimePoint idle_expires_at) override {
    return locked("touch_sandbox", [&] {
      Statement st(session_);
      st << "UPDATE sandboxes SET idle_expires_at = ?, version = version + 1 WHERE id = ? AND deleted_at IS NULL",
          bind(to_ms(idle_expires_at)), bind(id);
      return st.execute() == 1;
    });
  }

  // ---- sessions ----
  void insert_session(const SessionRow& row) override {
    locked("insert_session", [&] {
      session_ << "INSERT INTO sessions (" << kSessionColumns << ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", bind(row.id),
          bind(row.sandbox_id), bind(row.handle), bind(row.endpoint), bind(to_string(row.state)), bind(row.error),
          bind(to_ms(row.created_at)), bind(to_ms(row.last_active_at)), bind(row.starter), now;
    });
  }

  std::optional<SessionRow> get_session(const std::string& id) override {
    return locked("get_session", [&]() -> std::optional<SessionRow> {
      return first(select(kGetSessionSql, rows::session_from<StatementRow>, id));
    });
  }

  void update_session(const SessionRow& row) override {
    locked("update_session", [&] {
      session_ << "UPDATE sessions SET handle = ?, endpoint = ?, state = ?, error = ?, last_active_at = ? "
                  "WHERE id = ?",
          bind(row.handle), bind(row.endpoint), bind(to_string(row.state)), bind(row.error),
          bind(to_ms(row.last_active_at)), bind(row.id), now;
    });
  }

  void delete_session(const std::string& id) override {
    locked("delete_session", [&] { session_ << "DELETE FROM sessions WHERE id = ?", bind(id), now; });
  }

  std::vector<SessionRow> list_active_sessions() override {
    return locked("list_active_sessions",
                  [&] { return select(kListActiveSessionsSql, rows::session_from<StatementRow>); });
  }

  // ---- executions ----
  void insert_execution(const ExecutionRow& row) override {
    locked("insert_execution", [&] {
      auto st = prepared_.use(kInsertExecutionSql);
      bind_execution(st, row);
      st.run();
    });
  }

  void write_batch(const std::vector<ExecutionRow>& executions, const std::vector<SandboxTouch>& touches) override {
    if (executions.empty() && touches.empty()) return;
    locked("write_batch", [&] {
      Transaction tx(prepared_, kBeginImmediateSql);
      for (const auto& row : executions) {
        // An async execution's result replaces its running row.
        auto st = prepared_.use(kReplaceExecutionSql);
        bind_execution(st, row);
        st.run();
      }
      for (const auto& t : touches) {
        auto st = prepared_.use(kTouchSandboxSql);
        st.integer(1, to_ms(t.idle_expires_at)).text(2, t.sandbox_id);
        st.run();
      }
      tx.commit();
    });
  }

  std::optional<ExecutionRow> get_execution(const std::string& id, std::int64_t field_cap) override {
    return locked("get_execution", [&]() -> std::optional<ExecutionRow> {
      return first(
          select("SELECT id, sandbox_id, session_id, kind, CAST(substr(CAST(code AS BLOB), 1, ?2) AS TEXT),"
                 " exit_code, success, CAST(substr(CAST(output AS BLOB), 1, ?2) AS TEXT),"
                 " CAST(substr(CAST(error AS BLOB), 1, ?2) AS TEXT), duration_ms, created_at,"
                 " (truncated OR length(CAST(code AS BLOB)) > ?2 OR length(CAST(output AS BLOB)) > ?2"
                 "  OR length(CAST(error AS BLOB)) > ?2)"
                 " FROM executions WHERE id = ?1",
                 rows::execution_from<StatementRow>, id,
                 std::int64_t{std::clamp<std::int64_t>(field_cap, 0, ExecutionPageLimits::kMaxFieldCap)}));
    });
  }

  std::pair<std::vector<ExecutionRow>, int> list_executions(const std::string& sandbox_id, const std::string& kind,
                                                            int limit, int offset,
                                                            const ExecutionPageLimits& bounds) override {
    return locked("list_executions", [&] {
      // One read transaction: the page and the total come from the same snapshot.
      Transaction tx(prepared_, kBeginSql);
      Int64 total = 0;
      session_ << "SELECT COUNT(*) FROM executions WHERE sandbox_id = ? AND (? = '' OR kind = ?)", bind(sandbox_id),
          bind(kind), bind(kind), into(total), now;
      std::vector<ExecutionRow> page;
      if (limit > 0) {
        // SQLite cuts each field to field_cap bytes (substr on the BLOB counts bytes) and keeps a running byte sum
        // (a window over the page), so neither a long row nor a long page is ever materialised here.
        page =
            select(std::string("SELECT ") + kExecutionColumns +
                       " FROM (SELECT *, SUM(len) OVER (ORDER BY created_at DESC, rid DESC ROWS UNBOUNDED PRECEDING) "
                       "AS running"
                       " FROM (SELECT rid, id, sandbox_id, session_id, kind,"
                       "   CAST(substr(CAST(code AS BLOB), 1, ?5) AS TEXT) AS code, exit_code, success,"
                       "   CAST(substr(CAST(output AS BLOB), 1, ?5) AS TEXT) AS output,"
                       "   CAST(substr(CAST(error AS BLOB), 1, ?5) AS TEXT) AS error, duration_ms, created_at,"
                       "   (truncated OR length(CAST(code AS BLOB)) > ?5 OR length(CAST(output AS BLOB)) > ?5"
                       "    OR length(CAST(error AS BLOB)) > ?5) AS truncated,"
                       "   min(length(CAST(code AS BLOB)), ?5) + min(length(CAST(output AS BLOB)), ?5)"
                       "    + min(length(CAST(error AS BLOB)), ?5) AS len"
                       "  FROM (SELECT rowid AS rid, * FROM executions WHERE sandbox_id = ?1 AND (?2 = '' OR kind = ?2)"
                       "        ORDER BY created_at DESC, rowid DESC LIMIT ?3 OFFSET ?4)))"
                       " WHERE running - len < ?6 ORDER BY created_at DESC, rid DESC",
                   rows::execution_from<StatementRow>, sandbox_id, kind, std::int64_t{limit},
                   std::int64_t{std::max(offset, 0)},
                   std::int64_t{std::clamp<std::int64_t>(bounds.field_cap, 0, ExecutionPageLimits::kMaxFieldCap)},
                   std::int64_t{std::clamp<std::int64_t>(bounds.byte_budget, 1, ExecutionPageLimits::kUnbounded)});
      }
      tx.commit();
      return std::make_pair(std::move(page), static_cast<int>(total));
    });
  }

  int purge_executions(TimePoint cutoff, std::size_t keep_per_sandbox) override {
    return locked("purge_executions", [&] {
      Transaction tx(prepared_, kBeginImmediateSql);
      Statement by_age(session_);
      by_age << "DELETE FROM executions WHERE created_at < ?", bind(to_ms(cutoff));
      auto deleted = static_cast<int>(by_age.execute());
      if (keep_per_sandbox > 0) {
        Statement by_count(session_);
        by_count
            << "DELETE FROM executions WHERE rowid IN (SELECT rid FROM (SELECT rowid AS rid, ROW_NUMBER() OVER"
               " (PARTITION BY sandbox_id ORDER BY created_at DESC, rowid DESC) AS n FROM executions) WHERE n > ?)",
            bind(Int64(std::min<std::size_t>(keep_per_sandbox, INT64_MAX)));
        deleted += static_cast<int>(by_count.execute());
      }
      tx.commit();
      return deleted;
    });
  }

  // ---- idempotency ----
  std::optional<IdempotencyRow> claim_idempotency(const IdempotencyRow& row) override {
    return locked("claim_idempotency", [&]() -> std::optional<IdempotencyRow> {
      // Insert-or-read. The existing row may be released by another process between the two statements; then
      // the key is free again and the insert is retried.
      for (int attempt = 0; attempt < 8; ++attempt) {
        if (attempt > 0) ++retries_;
        Statement insert(session_);
        insert << "INSERT INTO idempotency_keys (" << kIdempotencyColumns
               << ") VALUES (?, ?, ?, 0, '', ?) ON CONFLICT (owner, key) DO NOTHING",
            bind(row.owner), bind(row.key), bind(row.request_hash), bind(to_ms(row.created_at));
        if (insert.execute() == 1) return std::nullopt;
        if (auto existing = first(select(
                std::string("SELECT ") + kIdempotencyColumns + " FROM idempotency_keys WHERE owner = ?1 AND key = ?2",
                rows::idempotency_from<StatementRow>, row.owner, row.key))) {
          return existing;
        }
      }
      throw StoreError("idempotency key keeps appearing and disappearing");
    });
  }

  void complete_idempotency(const std::string& owner, const std::string& key, int status,
                            const std::string& body) override {
    locked("complete_idempotency", [&] {
      session_ << "UPDATE idempotency_keys SET status = ?, body = ? WHERE owner = ? AND key = ?", bind(Int64(status)),
          bind(body), bind(owner), bind(key), now;
    });
  }

  void release_idempotency(const std::string& owner, const std::string& key) override {
    locked("release_idempotency", [&] {
      session_ << "DELETE FROM idempotency_keys WHERE owner = ? AND key = ?", bind(owner), bind(key), now;
    });
  }

  int purge_idempotency(TimePoint cutoff) override {
    return locked("purge_idempotency", [&] {
      Statement st(session_);
      st << "DELETE FROM idempotency_keys WHERE created_at < ?", bind(to_ms(cutoff));
      return static_cast<int>(st.execute());
    });
  }

  // ---- profiles ----
  void insert_profile(const ProfileRow& row) override {
    locked("insert_profile", [&] {
      Int64 taken = 0;
      session_ << "SELECT COUNT(*) FROM profiles WHERE name = ?", bind(row.name), into(taken), now;
      if (taken != 0) throw UniqueViolation("insert_profile: profile '" + row.name + "' exists");
      session_ << "INSERT INTO profiles (" << kProfileColumns << ") VALUES (?, ?, ?, ?)", bind(row.name),
          bind(row.spec), bind(to_ms(row.created_at)), bind(to_ms(row.updated_at)), now;
    });
  }

  std::vector<ProfileRow> list_profiles() override {
    return locked("list_profiles", [&] {
      return select(std::string("SELECT ") + kProfileColumns + " FROM profiles ORDER BY name",
                    rows::profile_from<StatementRow>);
    });
  }

  bool update_profile(const ProfileRow& row) override {
    return locked("update_profile", [&] {
      Statement st(session_);
      st << "UPDATE profiles SET spec = ?, updated_at = ? WHERE name = ?", bind(row.spec), bind(to_ms(row.updated_at)),
          bind(row.name);
      return st.execute() == 1;
    });
  }

  bool delete_profile(const std::string& name) override {
    return locked("delete_profile", [&] {
      Statement st(session_);
      st << "DELETE FROM profiles WHERE name = ?", bind(name);
      return st.execute() == 1;
    });
  }

  int count_live_sandboxes_with_profile(const std::string& name) override {
    return locked("count_live_sandboxes_with_profile", [&] {
      Int64 count = 0;
      session_ << "SELECT COUNT(*) FROM sandboxes WHERE profile = ? AND deleted_at IS NULL", bind(name), into(count),
          now;
      return static_cast<int>(count);
    });
  }
  std::uint64_t transaction_retries() const override { return retries_.load(std::memory_order_relaxed); }

  // ---- instances and cleanup leases (core::InstanceStore) ----
  void register_instance(const core::InstanceRecord& row) override {
    locked("register_instance", [&] {
      session_ << "INSERT INTO instances (" << kInstanceColumns
               << ") VALUES (?, ?, ?, ?, ?, NULL) ON CONFLICT (id) DO UPDATE SET host = excluded.host,"
                  " pid = excluded.pid, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,"
                  " stopped_at = NULL",
          bind(row.id), bind(row.host), bind(Int64(row.pid)), bind(to_ms(row.started_at)),
          bind(to_ms(row.heartbeat_at)), now;
    });
  }

  bool heartbeat_instance(const std::string& id, TimePoint at) override {
    return locked("heartbeat_instance", [&] {
      Statement st(session_);
      st << "UPDATE instances SET heartbeat_at = ?, beats = beats + 1 WHERE id = ? AND stopped_at IS NULL",
          bind(to_ms(at)), bind(id);
      return st.execute() == 1;
    });
  }

  void mark_instance_stopped(const std::string& id, TimePoint at) override {
    locked("mark_instance_stopped",
           [&] { session_ << "UPDATE instances SET stopped_at = ? WHERE id = ?", bind(to_ms(at)), bind(id), now; });
  }

  std::vector<core::InstanceRecord> list_instances() override {
    return locked("list_instances", [&] {
      return select(std::string("SELECT ") + kInstanceColumns + " FROM instances ORDER BY id",
                    rows::instance_from<StatementRow>);
    });
  }

  std::vector<core::InstanceRecord> list_dead_instances(TimePoint heartbeat_before) override {
    return locked("list_dead_instances", [&] {
      return select(std::string("SELECT ") + kInstanceColumns +
                        " FROM instances WHERE stopped_at IS NOT NULL OR heartbeat_at < ?1 ORDER BY id",
                    rows::instance_from<StatementRow>, std::int64_t{to_ms(heartbeat_before)});
    });
  }

  bool delete_dead_instance(const std::string& id, TimePoint dead_before) override {
    return locked("delete_dead_instance", [&] {
      Statement st(session_);
      st << "DELETE FROM instances WHERE id = ? AND COALESCE(stopped_at, heartbeat_at) < ? AND NOT EXISTS (SELECT 1"
            " FROM sessions WHERE starter = ? AND state IN ('starting', 'ready'))",
          bind(id), bind(to_ms(dead_before)), bind(id);
      return st.execute() == 1;
    });
  }

  bool take_over_session(const std::string& session_id, const std::string& from, const std::string& to,
                         TimePoint heartbeat_before) override {
    return locked("take_over_session", [&] {
      Statement st(session_);
      st << "UPDATE sessions SET starter = ? WHERE id = ? AND starter = ? AND NOT EXISTS (SELECT 1 FROM instances i"
            " WHERE i.id = ? AND i.stopped_at IS NULL AND i.heartbeat_at >= ?)",
          bind(to), bind(session_id), bind(from), bind(from), bind(to_ms(heartbeat_before));
      return st.execute() == 1;
    });
  }

  bool claim_lease(const std::string& key, const std::string& holder, TimePoint now_at, TimePoint expires_at) override {
    return locked("claim_lease", [&] {
      // One upsert: the conflict branch writes only when the lease is ours or expired, so exactly one claimant of a
      // free lease changes the row.
      Statement st(session_);
      st << "INSERT INTO cleanup_leases (lease_key, claimed_by, lease_expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT (lease_key) DO UPDATE SET claimed_by = excluded.claimed_by,"
            " lease_expires_at = excluded.lease_expires_at, claims = cleanup_leases.claims + 1"
            " WHERE cleanup_leases.claimed_by = excluded.claimed_by OR cleanup_leases.lease_expires_at <= ?",
          bind(key), bind(holder), bind(to_ms(expires_at)), bind(to_ms(now_at));
      return st.execute() == 1;
    });
  }

  bool release_lease(const std::string& key, const std::string& holder) override {
    return locked("release_lease", [&] {
      Statement st(session_);
      st << "DELETE FROM cleanup_leases WHERE lease_key = ? AND claimed_by = ?", bind(key), bind(holder);
      return st.execute() == 1;
    });
  }

  int release_leases(const std::string& holder) override {
    return locked("release_leases", [&] {
      Statement st(session_);
      st << "DELETE FROM cleanup_leases WHERE claimed_by = ?", bind(holder);
      return static_cast<int>(st.execute());
    });
  }

 private:
  static Session open_session(const std::string& path) {
    register_connector();
    try {
      // Login timeout 0: one open attempt. Poco retries a failing sqlite3_open for the whole login timeout
      // (60 s by default), which only delays the error. Lock waits are busy_timeout's business (configure()).
      return {Poco::Data::SQLite::Connector::KEY, path, 0};
    } catch (const Poco::Exception& e) {
      throw StoreError("cannot open SQLite database '" + path + "': " + e.displayText());
    }
  }

  /** Binds `row` to an execution INSERT (kInsertExecutionSql, kReplaceExecutionSql: kExecutionColumns' order). */
  static void bind_execution(PreparedStatements::Use& st, const ExecutionRow& row) {
    st.text(1, row.id).text(2, row.sandbox_id).text(3, row.session_id).text(4, row.kind).text(5, row.code);
    st.integer(6, row.exit_code ? std::optional<std::int64_t>(*row.exit_code) : std::nullopt);
    st.integer(7, row.success ? 1 : 0).text(8, row.output).text(9, row.error).integer(10, row.duration_ms);
    st.integer(11, to_ms(row.created_at)).integer(12, row.truncated ? 1 : 0);
  }

  /** Every row of `sql` with `args` bound in order (?1, ?2, ...), each read by `read` (rows::*_from) from a
   *  StatementRow: text comes back byte for byte, where Poco's SQLite reads cut it at the first NUL. Under the
   *  mutex (inside locked()). */
  template <typename Read, typename... Args>
  std::vector<std::invoke_result_t<Read, StatementRow&>> select(const std::string& sql, Read read,
                                                                const Args&... args) {
    auto st = prepared_.use(sql);
    [[maybe_unused]] int i = 0;  // unused without args
    (st.bind(++i, args), ...);
    return all(st, read);
  }

  /** Runs `fn` under the mutex; Poco (and any other library) failures become StoreError. */
  template <typename Fn>
  std::invoke_result_t<Fn&> locked(const char* what, Fn&& fn) {
    std::lock_guard lock(mutex_);
    try {
      return fn();
    } catch (const UniqueViolation&) {
      throw;
    } catch (const SqliteFailure& e) {
      throw StoreError(std::string(what) + ": " + e.what());
    } catch (const StoreError&) {
      throw;
    } catch (const Poco::Exception& e) {
      if (is_live_key_violation(e)) {
        throw UniqueViolation(std::string(what) + ": a live sandbox already has this key for this owner (" +
                              e.displayText() + ")");
      }
      throw StoreError(std::string(what) + ": " + e.displayText());
    } catch (const std::exception& e) {
      throw StoreError(std::string(what) + ": " + e.what());
    }
  }

  void configure() {
    locked("open", [&] {
      // busy_timeout first: everything after it may meet a lock another connection holds.
      session_ << "PRAGMA busy_timeout = " << kBusyTimeoutMs, now;
      enable_wal();
      session_ << "PRAGMA foreign_keys = ON", now;
      session_ << "PRAGMA synchronous = NORMAL", now;
    });
  }

  /**
   * Switching to WAL needs an exclusive lock, and SQLite reports a conflict there at once instead of calling the
   * busy handler (seen when several stores open one new file together): retry for as long as busy_timeout would.
   */
  void enable_wal() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kBusyTimeoutMs);
    for (;;) {
      try {
        std::string mode;
        session_ << "PRAGMA journal_mode", into(mode), now;
        if (mode == "wal" || mode == "memory") return;  // memory: ":memory:" databases have no WAL
        session_ << "PRAGMA journal_mode = WAL", into(mode), now;
        return;
      } catch (const Poco::Data::SQLite::DBLockedException&) {
        if (std::chrono::steady_clock::now() >= deadline) throw;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
  }

  /** Applies every migration newer than the database's version, one transaction each. */
  void migrate() {
    locked("migrate", [&] {
      session_
          << "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
          now;
      const int newest_known = kMigrations.back().version;
      for (;;) {
        // IMMEDIATE: two processes opening one new file at once must not both apply a migration; the second
        // waits for the write lock (busy_timeout) and then sees the first one's version.
        Transaction tx(prepared_, kBeginImmediateSql);
        Poco::Nullable<Int64> stored;
        session_ << "SELECT MAX(version) FROM schema_migrations", into(stored), now;
        const Int64 current = stored.isNull() ? 0 : stored.value();
        if (current > newest_known) {
          throw StoreError("database '" + path_ + "' has schema version " + std::to_string(current) +
                           ", newer than this berthd supports (" + std::to_string(newest_known) +
                           "); upgrade berthd or point it at another database");
        }
        const auto next = std::find_if(kMigrations.begin(), kMigrations.end(),
                                       [&](const Migration& m) { return m.version > current; });
        if (next == kMigrations.end()) {
          tx.commit();
          return;
        }
        try {
          for (const char* sql : next->statements)
            session_ << sql, now;
          session_ << "INSERT INTO schema_migrations (version, applied_at) "
                      "VALUES (?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
              bind(Int64(next->version)), now;
          tx.commit();
        } catch (const Poco::Exception& e) {
          throw StoreError("migration " + std::to_string(next->version) + " (" + next->description + ") failed on '" +
                           path_ + "': " + e.displayText());
        } catch (const SqliteFailure& e) {
          throw StoreError("migration " + std::to_string(next->version) + " (" + next->description + ") failed on '" +
                           path_ + "': " + e.what());
        }
      }
    });
  }

  const std::string path_;
  std::mutex mutex_;
  Session session_;
  PreparedStatements prepared_{Poco::Data::SQLite::Utility::dbHandle(session_)};  // after session_: closed first
  std::atomic<std::uint64_t> retries_{0};  // claim_idempotency rounds after the first (transaction_retries)
};

}  // namespace

std::unique_ptr<Store> open_sqlite_store(const std::string& path) {
  return std::make_unique<SqliteStore>(path);
}

}  // namespace berth::store
