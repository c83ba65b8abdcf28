// The core's persistence port: sandboxes, sessions, workspaces, executions, idempotency records and API profiles.
// The core owns this interface and its record types (it is what the core needs, nothing more); the store layer
// (host/store/: SqliteStore, MySqlStore for several berthd on one MySQL / MariaDB database) implements it, so the
// dependency points from store/ to core/, never back. The names keep the namespace berth::store: they are the
// vocabulary of persistence, wherever it is implemented. Every mutation of a sandbox is a compare-and-swap on its
// version column: that is what keeps one session per sandbox across threads and processes.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace berth::store {

using TimePoint = std::chrono::system_clock::time_point;
using StringMap = std::map<std::string, std::string>;

/** A unique constraint refused an insert (e.g. a second live sandbox for one (owner, key)). */
class UniqueViolation : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/** The database failed (I/O, lock timeout, corruption). */
class StoreError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/**
 * The database cannot be reached right now (connection refused or lost, server restarting, conflicts still
 * unresolved after the bounded retries). Nothing was half-written: a lost transaction is rolled back by the
 * server. The API answers 503 store_unavailable with Retry-After; the caller may retry the whole request.
 */
class StoreUnavailable : public StoreError {
 public:
  using StoreError::StoreError;
};

struct WorkspaceRow {
  std::string id;  // ws-<12 hex>
  std::string owner;
  std::string volume;    // driver volume name
  bool managed = false;  // created with a sandbox and deleted with it
  TimePoint created_at;
  std::optional<TimePoint> deleted_at;
};

struct SandboxRow {
  std::string id;  // sandbox-<12 hex>
  std::string owner;
  std::string profile;
  std::string workspace_id;
  std::optional<std::string> key;  // canonical form; unique per owner among live sandboxes
  StringMap labels;
  StringMap env;
  std::optional<std::string> current_session_id;
  std::int64_t version = 0;
  std::optional<TimePoint> expires_at;
  std::optional<TimePoint> idle_expires_at;
  std::string last_error;  // why the last start failed; empty when the last start succeeded
  TimePoint created_at;
  std::optional<TimePoint> deleted_at;
};

enum class SessionState { starting, ready, failed, stopped, dead };
std::string to_string(SessionState s);
SessionState session_state_from(const std::string& s);

struct SessionRow {
  std::string id;  // sess-<12 hex>
  std::string sandbox_id;
  std::string handle;  // driver handle, empty until started
  std::string endpoint;
  SessionState state = SessionState::starting;
  std::string error;
  TimePoint created_at;
  TimePoint last_active_at;
  // The berthd instance (Settings::instance_id) that started the session; empty for rows from before schema 2.
  // After a crash, the restarted instance reconciles exactly the sessions it started (SandboxService::recover).
  std::string starter;
};

struct ExecutionRow {
  std::string id;  // exec-<12 hex>
  std::string sandbox_id;
  std::string session_id;
  std::string kind;  // "python" | "shell"
  std::string code;
  std::optional<int> exit_code;
  bool success = false;
  std::string output;  // capped by the core
  std::string error;
  std::int64_t duration_ms = 0;
  TimePoint created_at;
  bool truncated = false;  // code, output or error was cut to a byte cap (when stored or when read)
};

/** Bounds on one page of executions, so reading a page costs memory set by configuration, not by the rows. */
struct ExecutionPageLimits {
  static constexpr std::int64_t kMaxFieldCap = INT32_MAX;  // SQLite's substr takes a 32-bit length
  static constexpr std::int64_t kUnbounded = std::int64_t{1} << 40;
  std::int64_t field_cap = kMaxFieldCap;  // code, output and error are each cut to this many bytes (truncated set)
  std::int64_t byte_budget = kUnbounded;  // the page ends after the record that reaches this many bytes in total
};

struct IdempotencyRow {
  std::string owner;
  std::string key;
  std::string request_hash;
  int status = 0;  // 0 while the first request is still running
  std::string body;
  TimePoint created_at;
};

/** A profile created over the API (the config file's profiles are not stored). */
struct ProfileRow {
  std::string name;
  std::string spec;  // the profile's JSON object, canonical form (config::profile_to_json)
  TimePoint created_at;
  TimePoint updated_at;
};

/** A deferred idle-timer write: touch_sandbox(sandbox_id, idle_expires_at) as part of a batch (Store::write_batch). */
struct SandboxTouch {
  std::string sandbox_id;
  TimePoint idle_expires_at;
};

struct SandboxFilter {
  std::string owner;
  std::optional<std::pair<std::string, std::string>> label;  // label key=value must match
  std::string after_id;                                      // cursor: ids strictly greater
  int limit = 50;
};

/**
 * Thread-safe. Every method throws StoreError on database failure. Reads of sandboxes return live and deleted
 * rows alike unless stated; callers check deleted_at.
 */
class Store {
 public:
  virtual ~Store() = default;

  // ---- workspaces ----
  virtual void insert_workspace(const WorkspaceRow& row) = 0;
  virtual std::optional<WorkspaceRow> get_workspace(const std::string& id) = 0;
  /** Sets deleted_at; returns false if it was already deleted or does not exist. */
  virtual bool mark_workspace_deleted(const std::string& id, TimePoint at) = 0;
  /** Live (not deleted) sandboxes using the workspace. */
  virtual int count_live_sandboxes_using(const std::string& workspace_id) = 0;
  /**
   * Managed workspaces that are not deleted although every sandbox that used them is: their volume removal failed
   * (or berthd died) when the sandbox was deleted. A workspace with no sandbox row yet is never returned.
   */
  virtual std::vector<WorkspaceRow> list_abandoned_managed_workspaces() = 0;

  // ---- sandboxes ----
  /** Inserts with version 1. Throws UniqueViolation when (owner, key) already has a live sandbox. */
  virtual void insert_sandbox(const SandboxRow& row) = 0;
  virtual std::optional<SandboxRow> get_sandbox(const std::string& id) = 0;
  virtual std::optional<SandboxRow> find_live_by_key(const std::string& owner, const std::string& key) = 0;
  /** Live sandboxes of an owner, ordered by id, at most filter.limit. */
  virtual std::vector<SandboxRow> list_sandboxes(const SandboxFilter& filter) = 0;
  /** Every live sandbox (all owners): the cleanup task's snapshot. */
  virtual std::vector<SandboxRow> list_live_sandboxes() = 0;
  /**
   * The compare-and-swap: writes every mutable field of `row` (current_session_id, expires_at, idle_expires_at,
   * last_error, deleted_at; a deleted row also releases its key) and sets version = expected_version + 1, only if
   * the stored version is still expected_version. Returns true if this call won.
   */
  virtual bool update_sandbox_cas(const SandboxRow& row, std::int64_t expected_version) = 0;
  /** Unconditionally sets idle_expires_at and bumps the version (invalidating cleanup snapshots) of a live row. */
  virtual bool touch_sandbox(const std::string& id, TimePoint idle_expires_at) = 0;

  // ---- sessions ----
  virtual void insert_session(const SessionRow& row) = 0;
  virtual std::optional<SessionRow> get_session(const std::string& id) = 0;
  virtual void update_session(const SessionRow& row) = 0;
  virtual void delete_session(const std::string& id) = 0;
  /** Sessions in state starting or ready (the ones that may own a container). */
  virtual std::vector<SessionRow> list_active_sessions() = 0;

  // ---- executions ----
  virtual void insert_execution(const ExecutionRow& row) = 0;
  /**
   * Newest first; kind empty = all. Returns the page and the total count. The page holds at most `limit` records
   * and ends early once the records' capped code + output + error bytes reach `bounds.byte_budget` (the first
   * record always comes).
   */
  virtual std::pair<std::vector<ExecutionRow>, int> list_executions(const std::string& sandbox_id,
                                                                    const std::string& kind, int limit, int offset,
                                                                    const ExecutionPageLimits& bounds = {}) = 0;
  /** One execution by id, its code/output/error each cut to `field_cap` bytes (truncated set), or nullopt. */
  virtual std::optional<ExecutionRow> get_execution(const std::string& id, std::int64_t field_cap) = 0;
  /**
   * The exec recorder's write (core/exec_recorder.hpp): inserts every execution and applies every touch (as
   * touch_sandbox: live rows only, version bumped) in ONE transaction, so a batch is written whole or not at all.
   * A touch never moves a timer backwards: one not later than the stored idle_expires_at changes nothing (a batch
   * that waited or was retried must not undo another instance's newer keepalive).
   * An execution whose id already exists is replaced by the batch's row (an async execution's "running" row by its
   * result; a batch retried after a lost commit acknowledgement writes the same values again). The default runs the
   * single-row calls one by one (not atomic); SqliteStore and MySqlStore override it. Throws StoreError /
   * StoreUnavailable; then nothing of the batch was written by an overriding store.
   */
  virtual void write_batch(const std::vector<ExecutionRow>& executions, const std::vector<SandboxTouch>& touches) {
    for (const auto& e : executions)
      insert_execution(e);
    for (const auto& t : touches)
      touch_sandbox(t.sandbox_id, t.idle_expires_at);
  }
  /**
   * Expiry: deletes executions created before `cutoff` and, per sandbox, all but the newest `keep_per_sandbox`
   * (0 = no count limit). Returns how many were deleted.
   */
  virtual int purge_executions(TimePoint cutoff, std::size_t keep_per_sandbox) = 0;

  // ---- idempotency ----
  /**
   * Claims (owner, key) for a request with `request_hash`: inserts an in-progress row (status 0) and returns
   * nullopt if the key is new; otherwise returns the existing row (in progress or completed) without changing it.
   */
  virtual std::optional<IdempotencyRow> claim_idempotency(const IdempotencyRow& row) = 0;
  virtual void complete_idempotency(const std::string& owner, const std::string& key, int status,
                                    const std::string& body) = 0;
  virtual void release_idempotency(const std::string& owner, const std::string& key) = 0;
  /** Deletes records created before `cutoff`; returns how many. */
  virtual int purge_idempotency(TimePoint cutoff) = 0;

  // ---- profiles ----
  /** Throws UniqueViolation when the name is taken. */
  virtual void insert_profile(const ProfileRow& row) = 0;
  /** Every stored profile, ordered by name. */
  virtual std::vector<ProfileRow> list_profiles() = 0;
  /** Writes spec and updated_at of an existing profile; false if there is none. */
  virtual bool update_profile(const ProfileRow& row) = 0;
  /** False if there was none. */
  virtual bool delete_profile(const std::string& name) = 0;
  /** Live (not deleted) sandboxes created with the profile. */
  virtual int count_live_sandboxes_with_profile(const std::string& name) = 0;
  // ---- observability ----
  /**
   * How many times, since the store was opened, a transaction or statement was run again after a conflict with
   * another connection (e.g. an idempotency key released between insert and read). A store without such retries
   * returns 0. Pure, so that a wrapping store cannot hide the retries of the one it wraps. Thread-safe; never throws.
   */
  virtual std::uint64_t transaction_retries() const = 0;
};

}  // namespace berth::store
