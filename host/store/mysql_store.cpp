// The MySQL / MariaDB implementation of Store, on Poco::Data MySQL. Several berthd processes (possibly on different
// Galera nodes) share one database, so nothing here relies on a lock held across statements: every sandbox
// mutation is the same single-row compare-and-swap on sandboxes.version as in SqliteStore, and uniqueness (one live
// sandbox per key, one idempotency record per key) is a unique index the server enforces. Times are integer
// milliseconds since the epoch; ids, owners, keys and free text are stored as bytes (VARBINARY / LONGBLOB), so no
// character set can reject or change them.
#include <Poco/Data/MySQL/Connector.h>
#include <Poco/Data/MySQL/MySQLException.h>
#include <Poco/Data/RecordSet.h>
#include <Poco/Data/Session.h>
#include <Poco/Data/Statement.h>
#include <Poco/Dynamic/Var.h>
#include <Poco/Exception.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Nullable.h>
#include <Poco/URI.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/log.hpp"
#include "store/rows.hpp"
#include "store/store.hpp"

namespace berth::store {
namespace {

using Poco::Int64;
using Poco::Data::RecordSet;
using Poco::Data::Session;
using Poco::Data::Statement;
using Poco::Data::Keywords::bind;
using Poco::Data::Keywords::into;
using Poco::Data::Keywords::now;

// ---- schema ---------------------------------------------------------------------------------------------------

/**
 * A numbered schema step, the MySQL dialect of the migration with the same number in sqlite_store.cpp (a new
 * migration is appended to both lists). MySQL commits DDL implicitly, so a step is claimed by inserting its row
 * into schema_migrations first (applied_at NULL) and marked applied at the end; a second process waits for that.
 * What SQLite does with a partial index is a generated column with an index here.
 */
struct Migration {
  int version;
  const char* description;
  std::vector<const char*> statements;
};

const std::vector<Migration> kMigrations = {
    {1,
     "initial schema",
     {
         "CREATE TABLE workspaces ("
         "  id VARBINARY(255) NOT NULL PRIMARY KEY,"
         "  owner VARBINARY(255) NOT NULL,"
         "  volume VARBINARY(255) NOT NULL,"
         "  managed INT NOT NULL DEFAULT 0,"
         "  created_at BIGINT NOT NULL,"
         "  deleted_at BIGINT NULL"
         ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",

         // live_key = key while the row is live, NULL once deleted_at is set (SQLite writes it; here the server
         // derives it): UNIQUE(owner, live_key) allows one live sandbox per (owner, key) and any deleted ones.
         "CREATE TABLE sandboxes ("
         "  id VARBINARY(255) NOT NULL PRIMARY KEY,"
         "  owner VARBINARY(255) NOT NULL,"
         "  profile VARBINARY(255) NOT NULL,"
         "  workspace_id VARBINARY(255) NOT NULL,"
         "  `key` VARBINARY(512) NULL,"
         "  live_key VARBINARY(512) AS (CASE WHEN deleted_at IS NULL THEN `key` END) STORED,"
         "  labels LONGBLOB NOT NULL,"
         "  env LONGBLOB NOT NULL,"
         "  current_session_id VARBINARY(255) NULL,"
         "  version BIGINT NOT NULL,"
         "  expires_at BIGINT NULL,"
         "  idle_expires_at BIGINT NULL,"
         "  last_error LONGBLOB NOT NULL,"
         "  created_at BIGINT NOT NULL,"
         "  deleted_at BIGINT NULL,"
         "  UNIQUE KEY sandboxes_owner_live_key (owner, live_key),"
         "  KEY sandboxes_owner_id (owner, id),"
         "  KEY sandboxes_workspace_id (workspace_id),"
         "  CONSTRAINT sandboxes_workspace_fk FOREIGN KEY (workspace_id) REFERENCES workspaces (id)"
         ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",

         "CREATE TABLE sessions ("
         "  id VARBINARY(255) NOT NULL PRIMARY KEY,"
         "  sandbox_id VARBINARY(255) NOT NULL,"
         "  handle VARBINARY(1024) NOT NULL DEFAULT '',"
         "  endpoint VARBINARY(1024) NOT NULL DEFAULT '',"
         "  state VARBINARY(16) NOT NULL,"
         "  error LONGBLOB NOT NULL,"
         "  created_at BIGINT NOT NULL,"
         "  last_active_at BIGINT NOT NULL,"
         "  KEY sessions_sandbox_id (sandbox_id),"
         "  KEY sessions_state (state),"
         "  CONSTRAINT sessions_sandbox_fk FOREIGN KEY (sandbox_id) REFERENCES sandboxes (id)"
         ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",

         // seq is SQLite's rowid: the insertion order that breaks ties between equal created_at.
         "CREATE TABLE executions ("
         "  id VARBINARY(255) NOT NULL PRIMARY KEY,"
         "  seq BIGINT NOT NULL AUTO_INCREMENT,"
         "  sandbox_id VARBINARY(255) NOT NULL,"
         "  session_id VARBINARY(255) NOT NULL,"
         "  kind VARBINARY(16) NOT NULL,"
         "  code LONGBLOB NOT NULL,"
         "  exit_code INT NULL,"
         "  success INT NOT NULL,"
         "  output LONGBLOB NOT NULL,"
         "  error LONGBLOB NOT NULL,"
         "  duration_ms BIGINT NOT NULL,"
         "  created_at BIGINT NOT NULL,"
         "  UNIQUE KEY executions_seq (seq),"
         "  KEY executions_sandbox_created (sandbox_id, created_at)"
         ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",

         "CREATE TABLE idempotency_keys ("
         "  owner VARBINARY(255) NOT NULL,"
         "  `key` VARBINARY(512) NOT NULL,"
         "  request_hash VARBINARY(255) NOT NULL,"
         "  status INT NOT NULL DEFAULT 0,"
         "  body LONGBLOB NOT NULL,"
         "  created_at BIGINT NOT NULL,"
         "  PRIMARY KEY (owner, `key`),"
         "  KEY idempotency_keys_created_at (created_at)"
         ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
     }},
    {2,
     "sessions.starter: the berthd instance that started each session (crash recovery)",
     {
         "ALTER TABLE sessions ADD COLUMN starter VARBINARY(255) NOT NULL DEFAULT ''",
     }},
    {3,
     "executions.truncated: stored output is capped (issue 8); per-sandbox expiry reads the newest first",
     {
         "ALTER TABLE executions ADD COLUMN truncated INT NOT NULL DEFAULT 0",
     }},
    {4,
     "profiles: profiles created over the API (issue 13); sandboxes are counted per profile before a delete",
     {
         "CREATE TABLE profiles ("
         "  name VARBINARY(255) NOT NULL PRIMARY KEY,"
         "  spec LONGBLOB NOT NULL,"
         "  created_at BIGINT NOT NULL,"
         "  updated_at BIGINT NOT NULL"
         ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
         // SQLite: CREATE INDEX ... (profile) WHERE deleted_at IS NULL. Here: an indexed generated column.
         "ALTER TABLE sandboxes ADD COLUMN live_profile VARBINARY(255)"
         "  AS (CASE WHEN deleted_at IS NULL THEN profile END) VIRTUAL,"
         "  ADD KEY sandboxes_live_profile (live_profile)",
     }},
    {5,
     "instances and cleanup leases: several berthd on one database (issue 11)",
     {
         "CREATE TABLE instances ("
         "  id VARBINARY(255) NOT NULL PRIMARY KEY,"
         "  host VARBINARY(255) NOT NULL,"
         "  pid BIGINT NOT NULL,"
         "  started_at BIGINT NOT NULL,"
         "  heartbeat_at BIGINT NOT NULL,"
         "  beats BIGINT NOT NULL DEFAULT 0,"
         "  stopped_at BIGINT NULL"
         ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
         // One row per candidate being acted on; a row whose lease_expires_at passed is free to claim.
         "CREATE TABLE cleanup_leases ("
         "  lease_key VARBINARY(255) NOT NULL PRIMARY KEY,"
         "  claimed_by VARBINARY(255) NOT NULL,"
         "  lease_expires_at BIGINT NOT NULL,"
         "  claims BIGINT NOT NULL DEFAULT 1,"
         "  KEY cleanup_leases_claimed_by (claimed_by)"
         ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
         "ALTER TABLE sessions ADD KEY sessions_starter (starter)",
     }},
};

// Poco 1.11's MySQL result buffers are sized by each column's declared length (4 GiB for LONGBLOB, which breaks the
// fetch): every long column is read through LEFT(column, literal), whose declared length is the literal. What is
// written is checked against the same caps (check_cap), so a read never cuts a stored value.
constexpr std::size_t kMapCap = 1 << 20;          // labels, env (JSON), profile specs, idempotent response bodies
constexpr std::size_t kMessageCap = 65535;        // last_error, sessions.error: longer messages are cut when stored
constexpr std::int64_t kExecFieldCap = 16 << 20;  // code / output / error of one execution, as read

// Column lists for INSERT (every column) and for SELECT (the same order, long columns bounded).
constexpr const char* kSandboxColumns =
    "id, owner, profile, workspace_id, `key`, labels, env, current_session_id, version, expires_at, "
    "idle_expires_at, last_error, created_at, deleted_at";
constexpr const char* kSandboxSelect =
    "id, owner, profile, workspace_id, `key`, LEFT(labels, 1048576), LEFT(env, 1048576), current_session_id, "
    "version, expires_at, idle_expires_at, LEFT(last_error, 65535), created_at, deleted_at";
constexpr const char* kWorkspaceColumns = "id, owner, volume, managed, created_at, deleted_at";
constexpr const char* kSessionColumns =
    "id, sandbox_id, handle, endpoint, state, error, created_at, last_active_at, starter";
constexpr const char* kSessionSelect =
    "id, sandbox_id, handle, endpoint, state, LEFT(error, 65535), created_at, last_active_at, starter";
constexpr const char* kExecutionColumns =
    "id, sandbox_id, session_id, kind, code, exit_code, success, output, error, duration_ms, created_at, truncated";
constexpr const char* kIdempotencyColumns = "owner, `key`, request_hash, status, body, created_at";
constexpr const char* kIdempotencySelect = "owner, `key`, request_hash, status, LEFT(body, 1048576), created_at";
constexpr const char* kProfileColumns = "name, spec, created_at, updated_at";
constexpr const char* kProfileSelect = "name, LEFT(spec, 1048576), created_at, updated_at";
constexpr const char* kInstanceColumns = "id, host, pid, started_at, heartbeat_at, stopped_at";

constexpr int kMaxAttempts = 10;        // a conflicting transaction runs at most this often
constexpr int kMaxAttemptsGalera = 20;  // on Galera: certification conflicts are frequent and cheap (see execute)
constexpr std::chrono::milliseconds kBackoffBase{5};       // first wait; doubles per attempt
constexpr std::chrono::milliseconds kBackoffCap{250};      // no single wait is longer
constexpr std::chrono::seconds kMigrationWait{60};         // how long a second process waits for a claimed migration
constexpr std::chrono::milliseconds kPingAfterIdle{1000};  // a connection idle this long is pinged before use

using namespace rows;  // conversions and row readers shared with sqlite_store.cpp

/** A value stored in a column read back through LEFT(column, cap): refused when longer, never cut silently. */
const std::string& within_cap(const std::string& value, std::size_t cap, const char* what) {
  if (value.size() > cap) {
    throw StoreError(std::string(what) + " is " + std::to_string(value.size()) +
                     " bytes; the MySQL store keeps at most " + std::to_string(cap));
  }
  return value;
}

/** A diagnostic message, cut to what its column returns. */
std::string message(const std::string& text) {
  return text.size() > kMessageCap ? text.substr(0, kMessageCap) : text;
}

// ---- errors -----------------------------------------------------------------------------------------------------

/** The server's or client library's error number behind a Poco exception (0 if none is known). */
int error_number(const Poco::Exception& e) {
  // Poco 1.11 puts the number into the message ("[mysql_stmt_errno]: 1213"), not reliably into code().
  static const std::regex number(R"(\[mysql_(?:stmt_)?errno\]: (\d+))");
  std::smatch m;
  const std::string text = e.displayText();
  if (std::regex_search(text, m, number)) return std::stoi(m[1].str());
  return e.code();
}

/** Deadlock (also Galera's certification failure) or lock wait timeout: the work was rolled back, run it again. */
bool is_conflict(int n) {
  return n == 1213 || n == 1205;
}

/**
 * The connection is gone or the server is not serving: 2002/2003 cannot connect, 2005 unknown host, 2006 gone away,
 * 2013 lost during a query, 2026 TLS, 2055 lost at handshake, 1053 shutdown in progress, 1927 connection killed,
 * 4031 disconnected for inactivity, 1047 a Galera node not ready (non-primary), 1040 too many connections.
 */
bool is_connection_loss(int n) {
  switch (n) {
    case 1040:
    case 1047:
    case 1053:
    case 1927:
    case 2002:
    case 2003:
    case 2005:
    case 2006:
    case 2013:
    case 2026:
    case 2055:
    case 4031:
      return true;
    default:
      return false;
  }
}

constexpr int kDuplicateKey = 1062;

/** A duplicate on the (owner, live_key) index, as opposed to a duplicate primary key. */
bool is_live_key_violation(const Poco::Exception& e) {
  return error_number(e) == kDuplicateKey && e.displayText().find("sandboxes_owner_live_key") != std::string::npos;
}

void register_connector() {
  static const bool registered = [] {
    Poco::Data::MySQL::Connector::registerConnector();
    return true;
  }();
  (void)registered;
}

/** Removes every occurrence of the secret from a message (client libraries may echo connection parameters). */
std::string redact(std::string text, const std::string& secret) {
  if (secret.empty()) return text;
  for (auto pos = text.find(secret); pos != std::string::npos; pos = text.find(secret, pos))
    text.replace(pos, secret.size(), "***");
  return text;
}

// ---- the connection pool ----------------------------------------------------------------------------------------

/** A pooled connection and when it was last handed back. */
struct Connection {
  std::unique_ptr<Session> session;
  std::chrono::steady_clock::time_point idle_since;
};

// ---- the store --------------------------------------------------------------------------------------------------

class MySqlStore final : public Store, public core::InstanceStore {
 public:
  explicit MySqlStore(MySqlOptions options) : options_(std::move(options)) {
    register_connector();
    options_.pool_size = std::max(1, options_.pool_size);
    migrate();
  }

  // ---- workspaces ----
  void insert_workspace(const WorkspaceRow& row) override {
    run("insert_workspace", [&](Session& s) {
      s << "INSERT INTO workspaces (" << kWorkspaceColumns << ") VALUES (?, ?, ?, ?, ?, ?)", bind(row.id),
          bind(row.owner), bind(row.volume), bind(Int64(row.managed ? 1 : 0)), bind(to_ms(row.created_at)),
          bind(nullable_ms(row.deleted_at)), now;
    });
  }

  std::optional<WorkspaceRow> get_workspace(const std::string& id) override {
    return run("get_workspace", [&](Session& s) {
      Statement st(s);
      st << "SELECT " << kWorkspaceColumns << " FROM workspaces WHERE id = ?", bind(id);
      return read_one(st, read_workspace);
    });
  }

  bool mark_workspace_deleted(const std::string& id, TimePoint at) override {
    return run("mark_workspace_deleted", [&](Session& s) {
      Statement st(s);
      st << "UPDATE workspaces SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL", bind(to_ms(at)), bind(id);
      return st.execute() == 1;
    });
  }

  int count_live_sandboxes_using(const std::string& workspace_id) override {
    return run("count_live_sandboxes_using", [&](Session& s) {
      Int64 count = 0;
      s << "SELECT COUNT(*) FROM sandboxes WHERE workspace_id = ? AND deleted_at IS NULL", bind(workspace_id),
          into(count), now;
      return static_cast<int>(count);
    });
  }

  std::vector<WorkspaceRow> list_abandoned_managed_workspaces() override {
    return run("list_abandoned_managed_workspaces", [&](Session& s) {
      Statement st(s);
      st << "SELECT " << kWorkspaceColumns
         << " FROM workspaces w WHERE w.managed = 1 AND w.deleted_at IS NULL"
            " AND EXISTS (SELECT 1 FROM sandboxes s WHERE s.workspace_id = w.id)"
            " AND NOT EXISTS (SELECT 1 FROM sandboxes s WHERE s.workspace_id = w.id AND s.deleted_at IS NULL)"
            " ORDER BY w.id";
      return read_all(st, read_workspace);
    });
  }

  // ---- sandboxes ----
  void insert_sandbox(const SandboxRow& row) override {
    run("insert_sandbox", [&](Session& s) {
      s << "INSERT INTO sandboxes (" << kSandboxColumns << ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)",
          bind(row.id), bind(row.owner), bind(row.profile), bind(row.workspace_id), bind(nullable_text(row.key)),
          bind(within_cap(to_json(row.labels), kMapCap, "labels")), bind(within_cap(to_json(row.env), kMapCap, "env")),
          bind(nullable_text(row.current_session_id)), bind(nullable_ms(row.expires_at)),
          bind(nullable_ms(row.idle_expires_at)), bind(message(row.last_error)), bind(to_ms(row.created_at)),
          bind(nullable_ms(row.deleted_at)), now;
    });
  }

  std::optional<SandboxRow> get_sandbox(const std::string& id) override {
    return run("get_sandbox", [&](Session& s) {
      Statement st(s);
      st << "SELECT " << kSandboxSelect << " FROM sandboxes WHERE id = ?", bind(id);
      return read_one(st, read_sandbox);
    });
  }

  std::optional<SandboxRow> find_live_by_key(const std::string& owner, const std::string& key) override {
    return run("find_live_by_key", [&](Session& s) {
      Statement st(s);
      st << "SELECT " << kSandboxSelect << " FROM sandboxes WHERE owner = ? AND live_key = ?", bind(owner), bind(key);
      return read_one(st, read_sandbox);
    });
  }

  std::vector<SandboxRow> list_sandboxes(const SandboxFilter& filter) override {
    return run("list_sandboxes", [&](Session& s) {
      std::vector<SandboxRow> out;
      if (filter.limit <= 0) return out;
      const auto limit = static_cast<std::size_t>(filter.limit);
      // Labels are JSON bytes, matched here (as in SqliteStore): batches until the page is full or none are left.
      const Int64 batch = filter.label ? std::max<Int64>(filter.limit, 200) : filter.limit;
      std::string cursor = filter.after_id;
      for (;;) {
        Statement st(s);
        st << "SELECT " << kSandboxSelect
           << " FROM sandboxes WHERE owner = ? AND deleted_at IS NULL AND id > ? ORDER BY id LIMIT ?",
            bind(filter.owner), bind(cursor), bind(batch);
        auto rows = read_all(st, read_sandbox);
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
    return run("list_live_sandboxes", [&](Session& s) {
      Statement st(s);
      st << "SELECT " << kSandboxSelect << " FROM sandboxes WHERE deleted_at IS NULL ORDER BY id";
      return read_all(st, read_sandbox);
    });
  }

  bool update_sandbox_cas(const SandboxRow& row, std::int64_t expected_version) override {
    return run("update_sandbox_cas", [&](Session& s) {
      // One statement: InnoDB re-reads the committed row under its row lock, so of N racers from one version
      // exactly one matches; on Galera a racer on another node fails certification (1213) and is retried, then
      // finds the version moved and matches nothing. live_key follows deleted_at by itself (generated column).
      Statement st(s);
      st << "UPDATE sandboxes SET current_session_id = ?, expires_at = ?, idle_expires_at = ?, last_error = ?, "
            "deleted_at = ?, version = version + 1 WHERE id = ? AND version = ?",
          bind(nullable_text(row.current_session_id)), bind(nullable_ms(row.expires_at)),
          bind(nullable_ms(row.idle_expires_at)), bind(message(row.last_error)), bind(nullable_ms(row.deleted_at)),
          bind(row.id), bind(Int64(expected_version));
      return st.execute() == 1;
    });
  }

  bool touch_sandbox(const std::string& id, TimePoint idle_expires_at) override {
    return run("touch_sandbox", [&](Session& s) {
      Statement st(s);
      st << "UPDATE sandboxes SET idle_expires_at = ?, version = version + 1 WHERE id = ? AND deleted_at IS NULL",
          bind(to_ms(idle_expires_at)), bind(id);
      return st.execute() == 1;
    });
  }

  // ---- sessions ----
  void insert_session(const SessionRow& row) override {
    run("insert_session", [&](Session& s) {
      s << "INSERT INTO sessions (" << kSessionColumns << ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", bind(row.id),
          bind(row.sandbox_id), bind(row.handle), bind(row.endpoint), bind(to_string(row.state)),
          bind(message(row.error)), bind(to_ms(row.created_at)), bind(to_ms(row.last_active_at)), bind(row.starter),
          now;
    });
  }

  std::optional<SessionRow> get_session(const std::string& id) override {
    return run("get_session", [&](Session& s) {
      Statement st(s);
      st << "SELECT " << kSessionSelect << " FROM sessions WHERE id = ?", bind(id);
      return read_one(st, read_session);
    });
  }

  void update_session(const SessionRow& row) override {
    run("update_session", [&](Session& s) {
      s << "UPDATE sessions SET handle = ?, endpoint = ?, state = ?, error = ?, last_active_at = ? WHERE id = ?",
          bind(row.handle), bind(row.endpoint), bind(to_string(row.state)), bind(message(row.error)),
          bind(to_ms(row.last_active_at)), bind(row.id), now;
    });
  }

  void delete_session(const std::string& id) override {
    run("delete_session", [&](Session& s) { s << "DELETE FROM sessions WHERE id = ?", bind(id), now; });
  }

  std::vector<SessionRow> list_active_sessions() override {
    return run("list_active_sessions", [&](Session& s) {
      Statement st(s);
      st << "SELECT " << kSessionSelect
         << " FROM sessions WHERE state IN ('starting', 'ready') ORDER BY created_at, id";
      return read_all(st, read_session);
    });
  }

  // ---- executions ----
  void insert_execution(const ExecutionRow& row) override {
    run("insert_execution", [&](Session& s) { insert_execution_row(s, row, ""); });
  }

  void write_batch(const std::vector<ExecutionRow>& executions, const std::vector<SandboxTouch>& touches) override {
    if (executions.empty() && touches.empty()) return;
    transact("write_batch", [&](Session& s) {
      // A duplicate id is replaced: an async execution's result replaces its running row, and a retried batch (its
      // commit acknowledgement was lost) writes the same values again.
      for (const auto& row : executions) {
        insert_execution_row(s, row,
                             " ON DUPLICATE KEY UPDATE session_id = VALUES(session_id), exit_code = VALUES(exit_code),"
                             " success = VALUES(success), output = VALUES(output), error = VALUES(error),"
                             " duration_ms = VALUES(duration_ms), created_at = VALUES(created_at),"
                             " truncated = VALUES(truncated)");
      }
      for (const auto& t : touches) {
        // Never backwards: a delayed or retried batch must not undo a newer timer (another instance's keepalive).
        s << "UPDATE sandboxes SET idle_expires_at = ?, version = version + 1 WHERE id = ? AND deleted_at IS NULL"
             " AND (idle_expires_at IS NULL OR idle_expires_at < ?)",
            bind(to_ms(t.idle_expires_at)), bind(t.sandbox_id), bind(to_ms(t.idle_expires_at)), now;
      }
    });
  }

  std::pair<std::vector<ExecutionRow>, int> list_executions(const std::string& sandbox_id, const std::string& kind,
                                                            int limit, int offset,
                                                            const ExecutionPageLimits& bounds) override {
    return transact("list_executions", [&](Session& s) {
      // One transaction (REPEATABLE READ): the page and the total come from the same snapshot.
      Int64 total = 0;
      s << "SELECT COUNT(*) FROM executions WHERE sandbox_id = ? AND (? = '' OR kind = ?)", bind(sandbox_id),
          bind(kind), bind(kind), into(total), now;
      std::vector<ExecutionRow> page;
      if (limit > 0) {
        // As in SqliteStore: each field cut to field_cap bytes (LEFT and LENGTH count bytes on a BLOB) and the page
        // ended once the byte budget is reached. Two statements on one snapshot: the capped sizes of the page's
        // rows, then only the rows within the budget (a window function here would make the server declare the
        // columns 4 GiB long, which Poco cannot fetch).
        const Int64 cap = std::clamp<std::int64_t>(bounds.field_cap, 0, kExecFieldCap);
        const Int64 budget = std::clamp<std::int64_t>(bounds.byte_budget, 1, ExecutionPageLimits::kUnbounded);
        const Int64 skip = std::max(offset, 0);
        std::vector<Int64> sizes;
        s << "SELECT LEAST(LENGTH(code), ?) + LEAST(LENGTH(output), ?) + LEAST(LENGTH(error), ?) FROM executions"
             " WHERE sandbox_id = ? AND (? = '' OR kind = ?) ORDER BY created_at DESC, seq DESC LIMIT ? OFFSET ?",
            bind(cap), bind(cap), bind(cap), bind(sandbox_id), bind(kind), bind(kind), bind(Int64(limit)), bind(skip),
            into(sizes), now;
        Int64 rows = 0;
        for (Int64 used = 0; rows < static_cast<Int64>(sizes.size()) && used < budget; ++rows)
          used += sizes[static_cast<std::size_t>(rows)];
        if (rows > 0) {
          const std::string c = std::to_string(cap);
          Statement st(s);
          st << "SELECT id, sandbox_id, session_id, kind, LEFT(code, " << c << "), exit_code, success, LEFT(output, "
             << c << "), LEFT(error, " << c
             << "), duration_ms, created_at,"
                " (truncated <> 0 OR LENGTH(code) > ? OR LENGTH(output) > ? OR LENGTH(error) > ?)"
                " FROM executions WHERE sandbox_id = ? AND (? = '' OR kind = ?)"
                " ORDER BY created_at DESC, seq DESC LIMIT ? OFFSET ?",
              bind(cap), bind(cap), bind(cap), bind(sandbox_id), bind(kind), bind(kind), bind(rows), bind(skip);
          page = read_all(st, read_execution);
        }
      }
      return std::make_pair(std::move(page), static_cast<int>(total));
    });
  }

  std::optional<ExecutionRow> get_execution(const std::string& id, std::int64_t field_cap) override {
    return run("get_execution", [&](Session& s) -> std::optional<ExecutionRow> {
      const Int64 cap = std::clamp<std::int64_t>(field_cap, 0, kExecFieldCap);
      const std::string c = std::to_string(cap);
      Statement st(s);
      st << "SELECT id, sandbox_id, session_id, kind, LEFT(code, " << c << "), exit_code, success, LEFT(output, " << c
         << "), LEFT(error, " << c
         << "), duration_ms, created_at,"
            " (truncated <> 0 OR LENGTH(code) > ? OR LENGTH(output) > ? OR LENGTH(error) > ?)"
            " FROM executions WHERE id = ?",
          bind(cap), bind(cap), bind(cap), bind(id);
      auto rows = read_all(st, read_execution);
      if (rows.empty()) return std::nullopt;
      return rows.front();
    });
  }

  int purge_executions(TimePoint cutoff, std::size_t keep_per_sandbox) override {
    return transact("purge_executions", [&](Session& s) {
      Statement by_age(s);
      by_age << "DELETE FROM executions WHERE created_at < ?", bind(to_ms(cutoff));
      auto deleted = static_cast<int>(by_age.execute());
      if (keep_per_sandbox > 0) {
        Statement by_count(s);
        by_count << "DELETE FROM executions WHERE seq IN (SELECT seq FROM (SELECT seq, ROW_NUMBER() OVER"
                    " (PARTITION BY sandbox_id ORDER BY created_at DESC, seq DESC) AS n FROM executions) t"
                    " WHERE n > ?)",
            bind(Int64(std::min<std::size_t>(keep_per_sandbox, INT64_MAX)));
        deleted += static_cast<int>(by_count.execute());
      }
      return deleted;
    });
  }

  // ---- idempotency ----
  std::optional<IdempotencyRow> claim_idempotency(const IdempotencyRow& row) override {
    return run("claim_idempotency", [&](Session& s) -> std::optional<IdempotencyRow> {
      // Insert-or-read; the primary key decides the winner (no lock across statements). The existing row may be
      // released between the two statements: then the key is free again and the insert is tried again.
      for (int attempt = 0; attempt < 8; ++attempt) {
        if (attempt > 0) ++retries_;
        try {
          s << "INSERT INTO idempotency_keys (" << kIdempotencyColumns << ") VALUES (?, ?, ?, 0, '', ?)",
              bind(row.owner), bind(row.key), bind(row.request_hash), bind(to_ms(row.created_at)), now;
          return std::nullopt;
        } catch (const Poco::Exception& e) {
          if (error_number(e) != kDuplicateKey) throw;
        }
        Statement select(s);
        select << "SELECT " << kIdempotencySelect << " FROM idempotency_keys WHERE owner = ? AND `key` = ?",
            bind(row.owner), bind(row.key);
        if (auto existing = read_one(select, read_idempotency)) return existing;
      }
      throw StoreError("idempotency key keeps appearing and disappearing");
    });
  }

  void complete_idempotency(const std::string& owner, const std::string& key, int status,
                            const std::string& body) override {
    run("complete_idempotency", [&](Session& s) {
      s << "UPDATE idempotency_keys SET status = ?, body = ? WHERE owner = ? AND `key` = ?", bind(Int64(status)),
          bind(within_cap(body, kMapCap, "response body")), bind(owner), bind(key), now;
    });
  }

  void release_idempotency(const std::string& owner, const std::string& key) override {
    run("release_idempotency", [&](Session& s) {
      s << "DELETE FROM idempotency_keys WHERE owner = ? AND `key` = ?", bind(owner), bind(key), now;
    });
  }

  int purge_idempotency(TimePoint cutoff) override {
    return run("purge_idempotency", [&](Session& s) {
      Statement st(s);
      st << "DELETE FROM idempotency_keys WHERE created_at < ?", bind(to_ms(cutoff));
      return static_cast<int>(st.execute());
    });
  }

  // ---- profiles ----
  void insert_profile(const ProfileRow& row) override {
    run("insert_profile", [&](Session& s) {
      try {
        s << "INSERT INTO profiles (" << kProfileColumns << ") VALUES (?, ?, ?, ?)", bind(row.name),
            bind(within_cap(row.spec, kMapCap, "profile spec")), bind(to_ms(row.created_at)),
            bind(to_ms(row.updated_at)), now;
      } catch (const Poco::Exception& e) {
        if (error_number(e) == kDuplicateKey)
          throw UniqueViolation("insert_profile: profile '" + row.name + "' exists");
        throw;
      }
    });
  }

  std::vector<ProfileRow> list_profiles() override {
    return run("list_profiles", [&](Session& s) {
      Statement st(s);
      st << "SELECT " << kProfileSelect << " FROM profiles ORDER BY name";
      return read_all(st, read_profile);
    });
  }

  bool update_profile(const ProfileRow& row) override {
    return run("update_profile", [&](Session& s) {
      Statement st(s);
      st << "UPDATE profiles SET spec = ?, updated_at = ? WHERE name = ?",
          bind(within_cap(row.spec, kMapCap, "profile spec")), bind(to_ms(row.updated_at)), bind(row.name);
      if (st.execute() == 1) return true;
      // MySQL counts changed rows, not matched ones: an update to identical values reports 0.
      Int64 found = 0;
      s << "SELECT COUNT(*) FROM profiles WHERE name = ?", bind(row.name), into(found), now;
      return found != 0;
    });
  }

  bool delete_profile(const std::string& name) override {
    return run("delete_profile", [&](Session& s) {
      Statement st(s);
      st << "DELETE FROM profiles WHERE name = ?", bind(name);
      return st.execute() == 1;
    });
  }

  int count_live_sandboxes_with_profile(const std::string& name) override {
    return run("count_live_sandboxes_with_profile", [&](Session& s) {
      Int64 count = 0;
      s << "SELECT COUNT(*) FROM sandboxes WHERE live_profile = ?", bind(name), into(count), now;
      return static_cast<int>(count);
    });
  }

  std::uint64_t transaction_retries() const override { return retries_.load(std::memory_order_relaxed); }

  // ---- instances and cleanup leases (core::InstanceStore) ----
  // MySQL counts only changed rows as affected: where a write may leave a row as it was, a counter column (beats,
  // claims) changes with it, so the count still says whether the row matched.
  void register_instance(const core::InstanceRecord& row) override {
    run("register_instance", [&](Session& s) {
      s << "INSERT INTO instances (" << kInstanceColumns
        << ") VALUES (?, ?, ?, ?, ?, NULL) ON DUPLICATE KEY UPDATE host = VALUES(host), pid = VALUES(pid),"
           " started_at = VALUES(started_at), heartbeat_at = VALUES(heartbeat_at), stopped_at = NULL",
          bind(row.id), bind(row.host), bind(Int64(row.pid)), bind(to_ms(row.started_at)),
          bind(to_ms(row.heartbeat_at)), now;
    });
  }

  bool heartbeat_instance(const std::string& id, TimePoint at) override {
    return run("heartbeat_instance", [&](Session& s) {
      // beats always changes, so a live row always counts as affected (MySQL does not count an unchanged row).
      Statement st(s);
      st << "UPDATE instances SET heartbeat_at = ?, beats = beats + 1 WHERE id = ? AND stopped_at IS NULL",
          bind(to_ms(at)), bind(id);
      return st.execute() == 1;
    });
  }

  void mark_instance_stopped(const std::string& id, TimePoint at) override {
    run("mark_instance_stopped",
        [&](Session& s) { s << "UPDATE instances SET stopped_at = ? WHERE id = ?", bind(to_ms(at)), bind(id), now; });
  }

  std::vector<core::InstanceRecord> list_instances() override {
    return run("list_instances", [&](Session& s) {
      Statement st(s);
      st << "SELECT " << kInstanceColumns << " FROM instances ORDER BY id";
      return read_all(st, read_instance);
    });
  }

  std::vector<core::InstanceRecord> list_dead_instances(TimePoint heartbeat_before) override {
    return run("list_dead_instances", [&](Session& s) {
      Statement st(s);
      st << "SELECT " << kInstanceColumns
         << " FROM instances WHERE stopped_at IS NOT NULL OR heartbeat_at < ? ORDER BY id",
          bind(to_ms(heartbeat_before));
      return read_all(st, read_instance);
    });
  }

  bool delete_dead_instance(const std::string& id, TimePoint dead_before) override {
    return run("delete_dead_instance", [&](Session& s) {
      Statement st(s);
      st << "DELETE FROM instances WHERE id = ? AND COALESCE(stopped_at, heartbeat_at) < ? AND NOT EXISTS (SELECT 1"
            " FROM sessions WHERE starter = ? AND state IN ('starting', 'ready'))",
          bind(id), bind(to_ms(dead_before)), bind(id);
      return st.execute() == 1;
    });
  }

  bool take_over_session(const std::string& session_id, const std::string& from, const std::string& to,
                         TimePoint heartbeat_before) override {
    return run("take_over_session", [&](Session& s) {
      // from != to, so a matching row always changes and counts as affected.
      Statement st(s);
      st << "UPDATE sessions SET starter = ? WHERE id = ? AND starter = ? AND NOT EXISTS (SELECT 1 FROM instances i"
            " WHERE i.id = ? AND i.stopped_at IS NULL AND i.heartbeat_at >= ?)",
          bind(to), bind(session_id), bind(from), bind(from), bind(to_ms(heartbeat_before));
      return st.execute() == 1;
    });
  }

  bool claim_lease(const std::string& key, const std::string& holder, TimePoint now_at, TimePoint expires_at) override {
    return run("claim_lease", [&](Session& s) {
      // One statement decides, no transaction: the row changes only if the lease is free, expired or ours, and then
      // claims always changes with it, so "affected" (1 inserted, 2 updated; 0 unchanged) says who won. Assignments
      // apply left to right: claims and claimed_by test the old row, lease_expires_at follows the new claimed_by.
      // Racers on other Galera nodes fail certification (1213), are retried, and then find the lease taken.
      Statement st(s);
      st << "INSERT INTO cleanup_leases (lease_key, claimed_by, lease_expires_at) VALUES (?, ?, ?)"
            " ON DUPLICATE KEY UPDATE"
            " claims = IF(claimed_by = VALUES(claimed_by) OR lease_expires_at <= ?, claims + 1, claims),"
            " claimed_by = IF(claimed_by = VALUES(claimed_by) OR lease_expires_at <= ?, VALUES(claimed_by),"
            " claimed_by),"
            " lease_expires_at = IF(claimed_by = VALUES(claimed_by), VALUES(lease_expires_at), lease_expires_at)",
          bind(key), bind(holder), bind(to_ms(expires_at)), bind(to_ms(now_at)), bind(to_ms(now_at));
      return st.execute() > 0;
    });
  }

  bool release_lease(const std::string& key, const std::string& holder) override {
    return run("release_lease", [&](Session& s) {
      Statement st(s);
      st << "DELETE FROM cleanup_leases WHERE lease_key = ? AND claimed_by = ?", bind(key), bind(holder);
      return st.execute() == 1;
    });
  }

  int release_leases(const std::string& holder) override {
    return run("release_leases", [&](Session& s) {
      Statement st(s);
      st << "DELETE FROM cleanup_leases WHERE claimed_by = ?", bind(holder);
      return static_cast<int>(st.execute());
    });
  }

 private:
  // ---- connections ----

  std::string connection_string() const {
    // Poco splits on ';' and '=': a password holding ';' cannot be passed (config refuses it).
    std::ostringstream cs;
    cs << "host=" << options_.host << ";port=" << options_.port << ";user=" << options_.user
       << ";password=" << options_.password << ";db=" << options_.database
       << ";compress=false;auto-reconnect=false;secure-auth=true";
    return cs.str();
  }

  /** A new, configured connection. Throws StoreUnavailable if the server cannot be reached. */
  std::unique_ptr<Session> connect() {
    std::unique_ptr<Session> session;
    try {
      session = std::make_unique<Session>(Poco::Data::MySQL::Connector::KEY, connection_string(),
                                          static_cast<std::size_t>(options_.connect_timeout.count()));
    } catch (const Poco::Exception& e) {
      throw StoreUnavailable("cannot connect to " + options_.redacted_url() + ": " +
                             redact(e.displayText(), options_.password));
    }
    try {
      // Network reads/writes time out too (a server that stops answering is not waited for forever).
      session->setConnectionTimeout(static_cast<std::size_t>(options_.statement_timeout.count() + 5));
      *session << "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'", now;
      *session << "SET SESSION innodb_lock_wait_timeout = " << options_.statement_timeout.count(), now;
      std::string version;
      *session << "SELECT VERSION()", into(version), now;
      // The statement cap is a little longer than the lock wait, so that a lock conflict surfaces as 1205 (retried)
      // rather than as an interrupted statement.
      const auto cap = options_.statement_timeout.count() + 5;
      if (version.find("MariaDB") != std::string::npos) {
        *session << "SET SESSION max_statement_time = " << cap, now;
      } else {
        *session << "SET SESSION max_execution_time = " << cap * 1000, now;
      }
      Statement wsrep(*session);
      wsrep << "SHOW VARIABLES LIKE 'wsrep_on'";
      wsrep.execute();
      RecordSet rs(wsrep);
      if (rs.rowCount() == 1 && rs.value(1, 0).convert<std::string>() == "ON") {
        // Galera: a read waits until this node has applied every write committed anywhere before it.
        *session << "SET SESSION wsrep_sync_wait = 1", now;
        galera_.store(true);
      }
    } catch (const Poco::Exception& e) {
      const int n = error_number(e);
      const std::string text =
          "configuring a connection to " + options_.redacted_url() + ": " + redact(e.displayText(), options_.password);
      if (is_connection_loss(n)) throw StoreUnavailable(text);
      throw StoreError(text);
    }
    return session;
  }

  /** A connection for one call: an idle one (pinged if it idled long), else a new one while below pool_size. */
  std::unique_ptr<Session> acquire() {
    for (;;) {
      std::optional<Connection> idle;
      {
        std::unique_lock lock(mutex_);
        if (!available_.wait_for(lock, options_.pool_wait,
                                 [&] { return !idle_.empty() || open_ < options_.pool_size; })) {
          throw StoreUnavailable("all " + std::to_string(options_.pool_size) + " connections to " +
                                 options_.redacted_url() + " stayed busy for " +
                                 std::to_string(options_.pool_wait.count()) + " s");
        }
        if (!idle_.empty()) {
          idle = std::move(idle_.back());
          idle_.pop_back();
        } else {
          ++open_;
        }
      }
      if (!idle) {
        try {
          return connect();
        } catch (...) {
          discard();
          throw;
        }
      }
      // A connection that idled may have been closed by a server restart: check it before using it, so that the
      // restart costs a reconnect instead of a failed request.
      if (std::chrono::steady_clock::now() - idle->idle_since < kPingAfterIdle || idle->session->isGood()) {
        return std::move(idle->session);
      }
      idle->session.reset();
      discard();
    }
  }

  void release(std::unique_ptr<Session> session) {
    {
      std::lock_guard lock(mutex_);
      idle_.push_back(Connection{std::move(session), std::chrono::steady_clock::now()});
    }
    available_.notify_one();
  }

  /** A connection was closed (lost or failed to open): its slot is free for a new one. */
  void discard() {
    {
      std::lock_guard lock(mutex_);
      --open_;
    }
    available_.notify_one();
  }

  /** Waits before attempt `attempt` (1-based retry count): exponential, capped, full jitter. */
  static void backoff(int attempt) {
    thread_local std::minstd_rand rng{std::random_device{}()};
    const auto ceiling = std::min<std::int64_t>(kBackoffCap.count(), kBackoffBase.count() << std::min(attempt, 10));
    std::uniform_int_distribution<std::int64_t> pick(ceiling / 2, ceiling);
    std::this_thread::sleep_for(std::chrono::milliseconds(pick(rng)));
  }

  /**
   * Runs `fn(session)` on a pooled connection, in a transaction if `transactional`. Conflicts (1213, 1205) roll
   * back and run it again after a backoff, at most kMaxAttempts (Galera: kMaxAttemptsGalera) times; a lost connection
   * is dropped from the pool and becomes StoreUnavailable; a duplicate on the live-key index becomes UniqueViolation;
   * any other failure becomes StoreError. Never holds a lock while `fn` runs.
   */
  template <typename Fn>
  std::invoke_result_t<Fn&, Session&> execute(const char* what, bool transactional, Fn&& fn) {
    for (int attempt = 1;; ++attempt) {
      auto session = acquire();
      try {
        // Poco's MySQL begin() is mysql_autocommit(0), and neither its commit() nor its rollback() turns autocommit
        // back on: end_transaction() does, or the pooled connection would run every later statement inside an open
        // transaction that nothing commits. (Not START TRANSACTION/COMMIT statements: Poco prepares every
        // statement, and MySQL 8 and MariaDB before 10.6 refuse those in the prepared-statement protocol.)
        if (transactional) session->begin();
        if constexpr (std::is_void_v<std::invoke_result_t<Fn&, Session&>>) {
          fn(*session);
          if (transactional) end_transaction(*session, true);
          release(std::move(session));
          return;
        } else {
          auto result = fn(*session);
          if (transactional) end_transaction(*session, true);
          release(std::move(session));
          return result;
        }
      } catch (const UniqueViolation&) {
        rollback_and_release(std::move(session), transactional);
        throw;
      } catch (const StoreError&) {
        rollback_and_release(std::move(session), transactional);
        throw;
      } catch (const Poco::Exception& e) {
        const int n = error_number(e);
        const std::string text = std::string(what) + ": " + redact(e.displayText(), options_.password);
        if (n == 1969 || n == 3024) {  // statement_timeout ran out (MariaDB, MySQL): the server is overloaded
          rollback_and_release(std::move(session), transactional);
          throw StoreUnavailable(text);
        }
        if (is_connection_loss(n)) {
          session.reset();  // closes it; a transaction on it is rolled back by the server
          discard();
          throw StoreUnavailable(text);
        }
        rollback_and_release(std::move(session), transactional);
        if (is_conflict(n)) {
          // On a Galera cluster under load from several nodes, a write to `sandboxes` fails certification in
          // roughly one attempt out of three (measured by galera.node_outage): ten attempts left about one request
          // in a few thousand with 503. The backoff cap keeps twenty attempts within a few seconds.
          if (attempt >= (galera_.load() ? kMaxAttemptsGalera : kMaxAttempts)) {
            throw StoreUnavailable(text + " (still conflicting after " + std::to_string(attempt) + " attempts)");
          }
          const auto total = ++retries_;
          // One line per retried conflict: on Galera, mostly certification failures of racing nodes.
          log::info("store.retry", {{"op", what},
                                    {"error", std::to_string(n)},
                                    {"attempt", std::to_string(attempt)},
                                    {"galera", galera_.load() ? "true" : "false"},
                                    {"retries_total", std::to_string(total)}});
          backoff(attempt);
          continue;
        }
        if (is_live_key_violation(e)) {
          throw UniqueViolation(std::string(what) + ": a live sandbox already has this key for this owner");
        }
        throw StoreError(text);
      } catch (const std::exception& e) {
        rollback_and_release(std::move(session), transactional);
        throw StoreError(std::string(what) + ": " + e.what());
      }
    }
  }

  /** Commits or rolls back through the client library (mysql_commit / mysql_rollback), then autocommit on again. */
  static void end_transaction(Session& s, bool commit) {
    if (commit) {
      s.commit();
    } else {
      s.rollback();  // also when the server already rolled the transaction back (a deadlock): then a no-op
    }
    s.setFeature("autoCommit", true);
  }

  void rollback_and_release(std::unique_ptr<Session> session, bool transactional) {
    if (transactional) {
      try {
        end_transaction(*session, false);
      } catch (const Poco::Exception&) {
        session.reset();  // a connection that cannot roll back is not handed out again
        discard();
        return;
      }
    }
    release(std::move(session));
  }

  /** One INSERT of an execution on `s`, followed by `suffix` (empty, or an ON DUPLICATE KEY clause). */
  static void insert_execution_row(Session& s, const ExecutionRow& row, const char* suffix) {
    const Poco::Nullable<Int64> exit_code =
        row.exit_code ? Poco::Nullable<Int64>(*row.exit_code) : Poco::Nullable<Int64>();
    s << "INSERT INTO executions (" << kExecutionColumns << ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" << suffix,
        bind(row.id), bind(row.sandbox_id), bind(row.session_id), bind(row.kind), bind(row.code), bind(exit_code),
        bind(Int64(row.success ? 1 : 0)), bind(row.output), bind(row.error), bind(Int64(row.duration_ms)),
        bind(to_ms(row.created_at)), bind(Int64(row.truncated ? 1 : 0)), now;
  }

  template <typename Fn>
  std::invoke_result_t<Fn&, Session&> run(const char* what, Fn&& fn) {
    return execute(what, false, std::forward<Fn>(fn));
  }
  template <typename Fn>
  std::invoke_result_t<Fn&, Session&> transact(const char* what, Fn&& fn) {
    return execute(what, true, std::forward<Fn>(fn));
  }

  // ---- migrations ----

  /**
   * Applies every migration newer than the database's. DDL commits implicitly in MySQL, so a migration cannot be
   * one transaction: its schema_migrations row (applied_at NULL) is inserted first as a claim — the primary key
   * picks one process — and completed afterwards; other processes wait (up to kMigrationWait) for the claim to
   * complete. A process killed mid-migration leaves its claim: the error names it.
   */
  void migrate() {
    run("migrate", [&](Session& s) {
      s << "CREATE TABLE IF NOT EXISTS schema_migrations (version INT NOT NULL PRIMARY KEY,"
           " applied_at VARCHAR(40) NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
          now;
    });
    const int newest_known = kMigrations.back().version;
    const auto deadline = std::chrono::steady_clock::now() + kMigrationWait;
    for (;;) {
      const auto [claimed, applied] = run("migrate", [&](Session& s) {
        Poco::Nullable<Int64> any, done;
        s << "SELECT MAX(version) FROM schema_migrations", into(any), now;
        s << "SELECT MAX(version) FROM schema_migrations WHERE applied_at IS NOT NULL", into(done), now;
        return std::make_pair(any.isNull() ? Int64(0) : any.value(), done.isNull() ? Int64(0) : done.value());
      });
      if (applied > newest_known || claimed > newest_known) {
        throw StoreError("database " + options_.redacted_url() + " has schema version " +
                         std::to_string(std::max(applied, claimed)) + ", newer than this berthd supports (" +
                         std::to_string(newest_known) + "); upgrade berthd or point it at another database");
      }
      if (claimed > applied) {  // another process is applying `claimed`
        if (std::chrono::steady_clock::now() > deadline) {
          throw StoreError("migration " + std::to_string(claimed) + " on " + options_.redacted_url() +
                           " was claimed but not completed within " + std::to_string(kMigrationWait.count()) +
                           " s (a berthd died while applying it?): check the schema and delete or complete its "
                           "schema_migrations row");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
      const auto next = std::find_if(kMigrations.begin(), kMigrations.end(),
                                     [newest = applied](const Migration& m) { return m.version > newest; });
      if (next == kMigrations.end()) return;
      const bool won = run("migrate", [&](Session& s) {
        try {
          s << "INSERT INTO schema_migrations (version, applied_at) VALUES (?, NULL)", bind(next->version), now;
          return true;
        } catch (const Poco::Exception& e) {
          if (error_number(e) == kDuplicateKey) return false;
          throw;
        }
      });
      if (!won) continue;
      run("migrate", [&](Session& s) {
        try {
          for (const char* sql : next->statements)
            s << sql, now;
          s << "UPDATE schema_migrations SET applied_at = DATE_FORMAT(UTC_TIMESTAMP(3), '%Y-%m-%dT%H:%i:%s.%fZ')"
               " WHERE version = ?",
              bind(next->version), now;
        } catch (const Poco::Exception& e) {
          throw StoreError("migration " + std::to_string(next->version) + " (" + next->description + ") failed on " +
                           options_.redacted_url() + ": " + redact(e.displayText(), options_.password));
        }
      });
    }
  }

  MySqlOptions options_;
  std::mutex mutex_;  // guards idle_ and open_
  std::condition_variable available_;
  std::vector<Connection> idle_;
  int open_ = 0;  // connections open or being opened, idle or in use
  std::atomic<bool> galera_{false};
  std::atomic<std::uint64_t> retries_{0};
};

}  // namespace

std::string MySqlOptions::redacted_url() const {
  Poco::URI uri;
  uri.setScheme("mysql");
  uri.setUserInfo(user);
  uri.setHost(host);
  uri.setPort(static_cast<unsigned short>(port));
  uri.setPath("/" + database);
  return uri.toString();
}

MySqlOptions parse_mysql_url(const std::string& url) {
  Poco::URI uri;
  try {
    uri = Poco::URI(url);
  } catch (const Poco::Exception&) {
    throw StoreError("store url is not a valid URL (expected mysql://user:password@host:port/database)");
  }
  if (uri.getScheme() != "mysql") throw StoreError("store url must start with mysql://");
  MySqlOptions o;
  std::string info;
  Poco::URI::decode(uri.getUserInfo(), info);  // user and password may be percent-encoded
  const auto colon = info.find(':');
  o.user = info.substr(0, colon);
  if (colon != std::string::npos) o.password = info.substr(colon + 1);
  if (o.user.empty()) throw StoreError("store url names no user (mysql://user:password@host:port/database)");
  o.host = uri.getHost();
  if (o.host.empty()) throw StoreError("store url names no host");
  o.port = uri.getPort() == 0 ? 3306 : uri.getPort();
  std::string path = uri.getPath();
  if (!path.empty() && path.front() == '/') path.erase(0, 1);
  if (path.empty() || path.find('/') != std::string::npos) {
    throw StoreError("store url must name one database: mysql://user:password@host:port/database");
  }
  o.database = path;
  for (const auto& field : {o.user, o.password, o.host, o.database}) {
    if (field.find(';') != std::string::npos) throw StoreError("store url: ';' cannot be passed to the client");
  }
  return o;
}

std::unique_ptr<Store> open_mysql_store(const MySqlOptions& options) {
  return std::make_unique<MySqlStore>(options);
}

}  // namespace berth::store
