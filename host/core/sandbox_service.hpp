// The lifecycle core: sandboxes, their one session, workspaces, executions and files. Knows nothing of HTTP,
// TOML or a particular driver; every failure is a core::Error with a stable code. The class is implemented in one
// unit per concern: sandbox_service.cpp (create/get/list/delete/TTL), session_start.cpp, session_recovery.cpp,
// exec_files.cpp, workspaces.cpp, cleanup_passes.cpp and disk_limits.cpp (shared names: sandbox_service_internal.hpp).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/async_executions.hpp"
#include "core/background_queue.hpp"
#include "core/clock.hpp"
#include "core/deadline_runner.hpp"
#include "core/driver.hpp"
#include "core/errors.hpp"
#include "core/exec_recorder.hpp"
#include "core/in_flight.hpp"
#include "core/instance_store.hpp"
#include "core/limits.hpp"
#include "core/metrics.hpp"
#include "core/profile.hpp"
#include "core/profile_catalog.hpp"
#include "core/python_context.hpp"
#include "core/store.hpp"
#include "core/terminal.hpp"

namespace berth::core {

struct Settings {
  std::map<std::string, Profile> profiles;  // the built-ins (config file); more live in the store (profiles())
  std::string default_profile = "default";
  ProfileCodec profile_codec;         // JSON form of a profile for the API and the store; empty = no API profiles
  std::string instance_id = "berth";  // value of the berth.instance label
  std::chrono::milliseconds start_wait{60'000};
  std::chrono::milliseconds stop_grace{2'000};
  std::size_t exec_output_cap = 1 << 20;  // per stream, in bytes
  std::uint64_t max_file_size = 100ull << 20;
  std::chrono::seconds max_exec_timeout{300};
  std::chrono::seconds default_exec_timeout{30};
  Limits limits;  // what a create may store, and how many sandboxes an owner may hold and create per minute
  std::size_t dir_page_max = 10'000;                    // most entries in one directory page (and the default page)
  std::size_t history_field_cap = 64 << 10;             // bytes kept per stored code/output/error of one execution
  std::size_t history_response_bytes = 4 << 20;         // a history page stops adding records beyond this many bytes
  std::chrono::seconds history_max_age{7 * 24 * 3600};  // the cleanup task deletes older records; 0 = keep
  std::size_t history_max_records = 1000;               // newest records kept per sandbox; 0 = no limit
  std::chrono::milliseconds cleanup_call_deadline{30'000};  // one sandbox's driver work inside a cleanup pass
  ExecRecorder::Options exec_recorder;  // how execution records and idle-timer touches are batched (exec_recorder.hpp)
  // Run execs through Driver::process_start when the driver supports it. Off: with 1,000 concurrent execs on the
  // docker and podman agents (capacity.*) most processes never reported their exit (backstop after timeout + 30 s)
  // where Driver::exec's agent path ran all 1,000; on until that is found, the process path only serves tests.
  bool exec_via_processes = false;
  std::size_t max_contexts_per_sandbox = 8;               // Python contexts per sandbox, "default" included
  std::chrono::milliseconds context_start_wait{30'000};   // for a kernel's ready frame after process_start
  std::chrono::milliseconds cell_interrupt_grace{2'000};  // after a cell's SIGINT, before its kernel is killed
  std::size_t max_async_executions = 256;                 // running at once on this berthd (server_busy beyond)
  std::size_t max_async_per_owner = 64;        // running at once for one owner (rate_limited beyond); 0: no cap
  std::size_t async_output_buffer = 1 << 20;   // bytes of output kept per async execution for replay
  std::chrono::seconds async_retention{3600};  // a finished one stays in memory this long (then: history)
  std::size_t max_terminals = 64;              // terminals open at once on this berthd (server_busy beyond)
  std::size_t max_terminals_per_sandbox = 4;   // terminals open at once on one sandbox (conflict beyond)
  std::size_t max_terminals_per_owner = 16;    // terminals open at once for one owner (rate_limited); 0: no cap
  // After an exec or a file write a sandbox's disk use is measured in the background (a du in its session and the
  // engine's writable-layer size): at once, unless its last measurement began less than this long ago; then when
  // this much has passed. A burst of execs costs one measurement per spacing, not one each. 0: every time.
  std::chrono::milliseconds disk_check_spacing{1000};
};

enum class SandboxStatus { idle, starting, ready, failed, expired };
std::string_view to_string(SandboxStatus s);

/**
 * Disk use berthd last measured for a sandbox (driver session_stats), kept in memory: after a restart it is unknown
 * until the next measurement (cleanup pass or file write).
 */
struct DiskUsage {
  std::uint64_t workspace_bytes = 0;  // allocated bytes in the workspace
  std::uint64_t rootfs_bytes = 0;     // bytes in the container's writable layer (gone once the session stops)
  std::uint64_t limit_bytes = 0;      // the profile's limit; 0 = none
  /** Over the limit when last measured: the session was stopped; exec and file writes answer disk_quota_exceeded
   *  until a measurement finds the sandbox under its limit again. */
  bool exceeded = false;
  std::chrono::system_clock::time_point measured_at{};
  std::uint64_t total() const { return workspace_bytes + rootfs_bytes; }
};

/** A sandbox as clients see it. */
struct SandboxView {
  store::SandboxRow row;
  SandboxStatus status = SandboxStatus::idle;
  std::set<std::string> capabilities;
  std::optional<store::SessionRow> session;
  std::optional<DiskUsage> disk;  // nullopt: never measured by this process
};

struct CreateSandboxRequest {
  std::optional<std::string> profile;
  std::optional<std::chrono::seconds> ttl;  // overrides the profile's
  std::optional<std::string> workspace_id;  // an external workspace to mount
  std::optional<std::string> key;
  std::map<std::string, std::string> labels;
  std::map<std::string, std::string> env;
};

struct CreateSandboxResult {
  SandboxView sandbox;
  bool created = true;  // false: an existing sandbox was returned for the key
};

enum class ExecKind { python, shell };

/**
 * Longest shell/exec command (bytes) passed in argv as `/bin/sh -c -- CODE /bin/sh`; a longer one, or one holding a
 * NUL, is sent on stdin. An engine's exec path escapes every byte outside printable ASCII to 5 bytes, and the kernel
 * caps one argument at 128 KiB (MAX_ARG_STRLEN): 16 KiB stays under it whatever the bytes.
 */
inline constexpr std::size_t kShellArgvMax = 16 * 1024;

/**
 * One output chunk of a running exec, as the driver produced it (ExecChunkSink). `data` is borrowed for the call.
 * `sequence` counts the exec's chunks from 0 over both streams, so a consumer can restore the interleaving.
 */
struct ExecChunk {
  Stream stream = Stream::out;
  std::uint64_t sequence = 0;
  std::chrono::system_clock::time_point at;  // when berthd received it (the service's clock)
  std::string_view data;
};

/**
 * Receives an exec's output as it arrives, on the thread that runs the exec (the request's worker), before it is
 * capped for the result: a streaming route (SSE/WebSocket) forwards it. Returns false to cancel the exec (it then
 * fails like a cancelled one). Must not call back into the service for the same sandbox.
 */
using ExecChunkSink = std::function<bool(const ExecChunk&)>;

/** What a python/exec run in a context (a kernel) adds to its outcome (docs/python-contexts.md). */
struct CellInfo {
  std::string context_id;          // "default", "ctx-...", or "" for a one-off kernel (stateless with an event)
  int execution_count = 0;         // the context's cell counter (0 when no result came)
  bool context_restarted = false;  // the state of the context is gone: this cell runs on (or left) a fresh kernel
  std::string restart_reason;      // why: "session_ended", "timeout", "cancelled", "the interpreter exited (code 3)"
  std::string data_json;           // the kernel's "data" object (text, html, images, display), JSON text; "" none
  std::string result_json;         // handler(event)'s return value as JSON text; "" when no event was given
  std::string error_name;          // exception class name ("" on success)
  std::string error_value;
  std::string traceback;
};

/** How python/exec runs its code. */
struct PythonExecOptions {
  std::string context_id = "default";     // the context whose kernel runs the cell
  bool stateless = false;                 // a fresh `python3 -` (no context), as before contexts
  std::optional<std::string> event_json;  // handler(event): the event as JSON text (validated by the caller)
  // Internal (start_async): the context's place in its cell queue, taken when the async execution was started, so
  // that async cells run in the order they were started. Used only if `queued_in` is still the context's entry.
  std::shared_ptr<const void> queued_in;
  std::shared_ptr<FifoMutex::Ticket> queued;
};

struct ExecOutcome {
  std::string execution_id;
  bool success = false;
  std::string output;  // stdout (capped)
  std::string error;   // stderr (capped), or why it did not finish
  std::optional<int> exit_code;
  bool timed_out = false;
  std::int64_t duration_ms = 0;
  std::optional<CellInfo> cell;  // python/exec in a context (or with an event); nullopt for a plain process
};

struct CleanupReport {
  std::vector<std::string> idle_stopped;        // sandbox ids
  std::vector<std::string> expired_deleted;     // sandbox ids
  std::vector<std::string> orphans_removed;     // driver handles
  std::vector<std::string> workspaces_removed;  // managed workspaces whose removal at delete had failed
  std::vector<std::string> dead_sessions;       // session ids
  std::vector<std::string> skipped_stale;       // sandbox ids whose snapshot went stale
  std::vector<std::string> skipped_in_use;      // idle sandbox ids left alone: an exec or file call was running
  std::vector<std::string> failed;              // sandbox ids or handles whose driver call failed or overran
  std::vector<std::string> disk_stopped;        // sandbox ids stopped for being over their disk limit
  int executions_expired = 0;                   // history records deleted (age or per-sandbox count)
  std::vector<std::string> skipped_leased;      // candidates another instance holds the cleanup lease of
};

/** What SandboxService::recover() did with the sessions this instance had starting or running. */
struct RecoveryReport {
  std::vector<std::string> adopted;  // session ids whose container runs: kept (a starting one is now ready)
  std::vector<std::string> cleared;  // session ids without a running container: cleared, container removed
  std::vector<std::string> failed;   // session ids left as they were (the driver failed); cleanup retries later
};

/** One page of a directory listing. */
struct DirPage {
  std::vector<DirEntry> entries;           // sorted by the names' raw bytes; at most the page limit
  std::optional<std::string> next_cursor;  // the last name of this page when more entries follow; nullopt at the end
};

/** One page of execution history. */
struct HistoryPage {
  std::vector<store::ExecutionRow> entries;  // newest first
  int total = 0;                             // records of the sandbox (matching the kind filter)
  bool bytes_capped = false;  // fewer than `limit` records: the page reached Settings::history_response_bytes
};

struct ListResult {
  std::vector<SandboxView> items;
  std::string next_cursor;  // empty: no more
};

/**
 * Thread-safe: every method may be called from any HTTP worker thread concurrently. Driver calls are never made
 * while holding an internal lock.
 */
class SandboxService {
 public:
  /** `metrics` (borrowed, must outlive the service) receives exec and cleanup events; see core/metrics.hpp. */
  SandboxService(store::Store& store, Driver& driver, std::shared_ptr<const Clock> clock, Settings settings,
                 Metrics& metrics = null_metrics());

  const Settings& settings() const { return settings_; }
  /** Every profile a sandbox may be created with (built-ins and API-created); thread-safe. */
  ProfileCatalog& profiles() { return profiles_; }
  const ProfileCatalog& profiles() const { return profiles_; }
  const DriverIdentity& driver_identity() const { return driver_.identity(); }

  /**
   * Lazy create: rows and the managed workspace volume, no container. Get-or-create when `key` is given (a reuse
   * counts against no quota). Every field is validated first (validation_error with details.field: profile, ttl,
   * key, workspace_id, labels, env; see Limits); then the owner's create rate (rate_limited) and live sandbox count
   * (quota_exceeded), both with Retry-After.
   */
  CreateSandboxResult create_sandbox(const std::string& owner, const CreateSandboxRequest& request);
  SandboxView get_sandbox(const std::string& owner, const std::string& id);
  ListResult list_sandboxes(const std::string& owner, const std::optional<SandboxStatus>& status,
                            const std::optional<std::pair<std::string, std::string>>& label, int limit,
                            const std::string& cursor);
  /** Starts the session if needed and returns once it is ready. */
  SandboxView start(const std::string& owner, const std::string& id);
  /** Stops and removes the session's container; the workspace stays. Idempotent. */
  void stop(const std::string& owner, const std::string& id);
  /** Destroys the session and a managed workspace; soft-deletes the row. */
  void delete_sandbox(const std::string& owner, const std::string& id);
  /** Resets the idle timer; never starts compute. */
  void keepalive(const std::string& owner, const std::string& id);
  /**
   * Moves expires_at by `by` (1 s .. Limits::max_ttl). validation_error (field extend_by) when the sandbox would then
   * live longer than Limits::max_ttl from its creation; sandbox_ttl_infinite / sandbox_expired as before.
   */
  SandboxView extend_ttl(const std::string& owner, const std::string& id, std::chrono::seconds by);

  /**
   * Runs code; starts the sandbox if it is idle. The code goes in on stdin. With a driver that supports processes
   * (Settings::exec_via_processes) it runs as a Process whose events this thread pulls; a session whose driver
   * answers process_start with unsupported (an engine session without the agent) falls back to Driver::exec, and
   * is remembered so later execs go there directly. `on_chunk` (optional) sees every output chunk as it arrives.
   * The execution record is written by the ExecRecorder after the answer (history() and cleanup flush it first);
   * a full record queue (the database is slow or down) answers store_unavailable before the code runs.
   */
  ExecOutcome exec(const std::string& owner, const std::string& id, ExecKind kind, const std::string& code,
                   std::optional<std::chrono::seconds> timeout, const std::string& cwd,
                   const ExecChunkSink& on_chunk = {});
  /**
   * python/exec: like exec(ExecKind::python), but in the sandbox's context `opts.context_id` (its kernel is started
   * on first use, replaced when its session ended, and kept across calls), unless `opts.stateless`. With an event,
   * a stateless call runs on a one-off kernel. A driver without interactive processes runs every call stateless (the
   * outcome has no `cell`). Throws as exec() does, plus not_found for an unknown context and conflict when the
   * context's running cell does not end within this call's timeout.
   */
  ExecOutcome run_python(const std::string& owner, const std::string& id, const std::string& code,
                         std::optional<std::chrono::seconds> timeout, const PythonExecOptions& opts,
                         const ExecChunkSink& on_chunk = {});
  /**
   * A named context with its own kernel, started now (in the sandbox's session, which is started if needed) in
   * `spec.cwd` with `spec.env`. Throws Error: validation_error (cwd, env), conflict at
   * Settings::max_contexts_per_sandbox, capability_not_supported (no processes or no python3), plus what starting a
   * session throws.
   */
  ContextView create_context(const std::string& owner, const std::string& id, const ContextSpec& spec);
  /** The sandbox's contexts (those this berthd holds), sorted by id. */
  std::vector<ContextView> list_contexts(const std::string& owner, const std::string& id);
  ContextView get_context(const std::string& owner, const std::string& id, const std::string& context_id);
  /** Removes a context and kills its kernel (a cell running in it ends with its kernel lost). not_found if unknown. */
  void delete_context(const std::string& owner, const std::string& id, const std::string& context_id);
  /**
   * Starts an exec (exec() or run_python() when `py` is given) that runs on after this call returns: the checks an
   * exec makes before it runs throw here (validation_error, not_found, capability_not_supported, ...), then the
   * execution is registered, its history record written as running, and the view (status running) returned.
   * server_busy (Retry-After) when Settings::max_async_executions run already, rate_limited (Retry-After) when the
   * owner runs Settings::max_async_per_owner. Its output is buffered
   * (Settings::async_output_buffer bytes, oldest first out) for execution_events(); its result lands in the history.
   */
  ExecutionView start_async(const std::string& owner, const std::string& id, ExecKind kind, const std::string& code,
                            std::optional<std::chrono::seconds> timeout, const std::string& cwd,
                            const PythonExecOptions* py);
  /**
   * An execution of the sandbox: an async one this berthd holds, else its history record (a synchronous exec, an
   * async one past retention; one whose berthd restarted while it ran reports failed). not_found otherwise.
   */
  ExecutionView execution(const std::string& owner, const std::string& id, const std::string& execution_id);
  /**
   * The buffered output after sequence number `after` (all with nullopt), waiting up to `wait` for more or the end.
   * An execution not held in memory (history) has no chunks and is finished. not_found for an unknown one.
   */
  ExecutionEvents execution_events(const std::string& owner, const std::string& id, const std::string& execution_id,
                                   std::optional<std::uint64_t> after, std::chrono::milliseconds wait);
  /**
   * Shutdown: waits up to `grace` for the running async executions to end, then cancels the rest and waits up to
   * `cancel_wait` for them. Returns how many still run (the daemon then exits without closing the store).
   */
  std::size_t stop_async(std::chrono::milliseconds grace, std::chrono::milliseconds cancel_wait);
  /** Cancels a running async execution and waits up to 10 s for its end; conflict if it has ended, not_found. */
  ExecutionView cancel_execution(const std::string& owner, const std::string& id, const std::string& execution_id);
  /**
   * A terminal: the profile's shell (Profile::shell) on a pseudo-terminal in the sandbox's session, started now (the
   * session too, if the sandbox is idle), with TERM=`spec.term`. The caller owns it; while it lives the sandbox counts
   * as in use (see Terminal). Throws Error: validation_error (rows, cols, term), not_found, capability_not_supported
   * (the profile lacks "shell", or the driver or session has no PTY processes), conflict at
   * Settings::max_terminals_per_sandbox, rate_limited (Retry-After) at Settings::max_terminals_per_owner, server_busy
   * (Retry-After) at Settings::max_terminals, shutting_down, plus what starting a session throws.
   */
  std::unique_ptr<Terminal> open_terminal(const std::string& owner, const std::string& id, const TerminalSpec& spec);
  /** Terminals open now on this berthd. */
  std::size_t terminals_open() const;
  /**
   * Writes every pending execution record and idle-timer touch now (the daemon calls it on SIGTERM before a forced
   * exit; tests before reading the store). Throws store::StoreUnavailable when the store did not take them in time.
   */
  void flush_records(std::chrono::milliseconds wait = std::chrono::milliseconds(10'000));
  /**
   * A page of the sandbox's executions, newest first, `limit` 1..500 after `offset`. Memory is bounded by
   * configuration: every text field is at most Settings::history_field_cap bytes (older, longer rows are cut and
   * flagged truncated) and the page stops once it holds Settings::history_response_bytes (always at least one
   * record). Throws Error (validation_error, not_found).
   */
  HistoryPage history(const std::string& owner, const std::string& id, const std::string& kind, int limit, int offset);

  /** Reads a whole file into memory; payload_too_large beyond `max_bytes`. */
  std::string read_file(const std::string& owner, const std::string& id, const std::string& path,
                        std::size_t max_bytes);
  /** Streams a file to `sink` (which may throw to abort). */
  void download(const std::string& owner, const std::string& id, const std::string& path, const ByteSink& sink);
  void write_file(const std::string& owner, const std::string& id, const std::string& path, std::uint64_t size,
                  const ByteSource& source, std::uint32_t mode = 0644);
  void remove_path(const std::string& owner, const std::string& id, const std::string& path);
  /**
   * One page of a directory: the `limit` (1..Settings::dir_page_max) smallest names greater than `after` (raw
   * bytes; empty = from the start), sorted. The driver streams the directory and only limit + 1 entries are held,
   * so memory does not grow with the directory. Throws Error (validation_error, not_found, ...).
   */
  DirPage list_dir(const std::string& owner, const std::string& id, const std::string& path, const std::string& after,
                   std::size_t limit);

  store::WorkspaceRow create_workspace(const std::string& owner);
  store::WorkspaceRow get_workspace(const std::string& owner, const std::string& id);
  void delete_workspace(const std::string& owner, const std::string& id);

  /**
   * Crash recovery, called once by the daemon before it serves: every session this instance (Settings::instance_id,
   * recorded as SessionRow::starter) left `starting` or `ready` is reconciled at once with one driver listing:
   * adopted if its container runs, else cleared (state dead) and its container removed, so the next call starts a
   * fresh one instead of waiting out a start deadline. Sessions of other instances and rows from before schema 2
   * are left to the cleanup task. Never throws a DriverError: a failed listing leaves every session as it was
   * (reported as failed, logged as recovery.failed) and the next run_cleanup() tries again; sessions this process
   * is starting at that time are skipped. Throws store::StoreError.
   */
  RecoveryReport recover();

  /**
   * Several berthd on one store (InstanceRegistry): from now on every cleanup_call claims the cleanup lease of its
   * candidate (holder "<instance_id>#cleanup", until now + `ttl`) before acting, and skips the candidate when another
   * holder has it (CleanupReport::skipped_leased, log cleanup.lease_busy); a pass releases its leases when it ends.
   * `leases` is borrowed and must outlive the service. Call once, before the cleanup task starts.
   */
  void use_cleanup_leases(InstanceStore& leases, std::chrono::milliseconds ttl);

  /**
   * Hand-over from a dead instance (InstanceRegistry): every session `dead_instance` left `starting` or `ready` is
   * reconciled at once, as recover() does for this instance's own: per session the lease on its sandbox is claimed
   * (holder "<instance_id>#reconcile") and the session taken over (sessions.starter, a CAS), then it is adopted if
   * its container (labelled with the dead instance) runs, else cleared and its container removed. A session whose
   * lease or take-over another instance won is left to it, and so is every session if `dead_instance` beat at or
   * after `heartbeat_before` in the meantime (InstanceStore::take_over_session). Needs use_cleanup_leases(). Never
   * throws a DriverError (a failed listing reports every session failed; the next call retries); throws
   * store::StoreError.
   */
  RecoveryReport adopt_sessions_of(const std::string& dead_instance,
                                   std::chrono::system_clock::time_point heartbeat_before);

  /**
   * After the grace period (InstanceRegistry): the containers labelled with `dead_instance` are settled through the
   * database, never guessed from the engine: one whose session is live and wanted by its sandbox is kept (and its
   * session taken over if still the dead instance's), every other one is stopped and removed, each under the lease
   * of its sandbox. Returns the removed handles. Needs use_cleanup_leases(). Throws DriverError, store::StoreError.
   */
  std::vector<std::string> sweep_containers_of(const std::string& dead_instance);

  /**
   * Shutdown hook: cancels every exec in flight (each then fails with ErrorCode::shutting_down) and refuses new
   * execs the same way. Thread-safe and idempotent; called by the daemon on SIGTERM once the shutdown grace has run
   * out.
   */
  void begin_shutdown();

  /** One pass of the cleanup task (see CleanupTask); also behind POST /v1/admin/gc/run. */
  CleanupReport run_cleanup();

  /**
   * Live sandboxes per status and active sessions per state, counted with two store reads (no driver call), plus
   * the store's transaction retries: what GET /metrics reports as gauges. Throws store::StoreError.
   */
  LifecycleSnapshot lifecycle_snapshot();

 private:
  /**
   * The client's view of a row. `touched_before` holds pending idle-timer touches taken BEFORE the row was read: a
   * touch the recorder writes between the read and this call is then still seen (the row is older than the touch,
   * and pending_touch no longer has it). The timer shown is the latest of the row's and the touches'.
   */
  SandboxView view(store::SandboxRow row, const std::map<std::string, store::TimePoint>* touched_before = nullptr);
  /** view() of the live row of (owner, id), with the pending touch taken before the read. */
  SandboxView view_live(const std::string& owner, const std::string& id);
  store::SandboxRow load_live(const std::string& owner, const std::string& id);
  /** The sandbox's profile; the default one if its profile is gone (deleted from the config file). Never null. */
  std::shared_ptr<const Profile> profile_of(const store::SandboxRow& row) const;
  void require_capability(const store::SandboxRow& row, const std::string& capability);
  store::SessionRow ensure_running(const std::string& owner, const std::string& id);
  /** Starts the container of a session this caller installed by CAS; `attempts` = CAS rounds it took (logged). */
  store::SessionRow start_session(store::SandboxRow row, store::SessionRow session, int attempts);
  void clear_session(const std::string& sandbox_id, const std::string& session_id, store::SessionState final_state,
                     const std::string& error);
  void destroy_session(const store::SessionRow& session);
  void delete_row_and_resources(const store::SandboxRow& row);
  /** Sets the idle timer now (through the recorder, then flushed): keepalive's write. */
  void touch(const store::SandboxRow& row);
  /** Queues an idle-timer touch on the recorder (written within a batch linger). */
  void touch_later(const store::SandboxRow& row);
  /**
   * Runs an exec as a Process: stdin fed in chunks as the driver takes it, then closed; events pulled on this thread
   * until the exit (output to `on_output`; false from it, or `token`, kills the process and throws
   * DriverError(cancelled)). nullopt when process_start answered unsupported (nothing ran).
   */
  std::optional<ExecResult> exec_as_process(const std::string& handle, const ExecRequest& rq,
                                            const OutputSink& on_output, const CancelToken& token);
  /**
   * exec() and run_python(): `py` null for a plain process, else how python/exec runs the code. `execution_id` names
   * the record (empty: a new id); `cancel` (an async execution's flag, may be null) stops a wait for a busy context.
   */
  ExecOutcome exec_code(const std::string& owner, const std::string& id, ExecKind kind, const std::string& code,
                        std::optional<std::chrono::seconds> timeout, const std::string& cwd,
                        const PythonExecOptions* py, const ExecChunkSink& on_chunk,
                        const std::string& execution_id = "", const std::atomic<bool>* cancel = nullptr);
  /** The request's own checks (timeout range, code present): the timeout to use. validation_error otherwise. */
  std::chrono::seconds checked_exec_request(ExecKind kind, const std::string& code,
                                            std::optional<std::chrono::seconds> timeout,
                                            const PythonExecOptions* py) const;
  /** The checks an exec makes before it runs (timeout, code, capability, cwd, context), for an async start. */
  void validate_exec(const std::string& owner, const std::string& id, ExecKind kind, const std::string& code,
                     std::optional<std::chrono::seconds> timeout, const std::string& cwd, const PythonExecOptions* py);
  /** An async execution's record without a result (running, or ended before it had one): code cut as history's. */
  store::ExecutionRow async_row(const ExecutionView& view, const std::string& code, std::string error) const;
  /** Writes async_row(view, code, error) through the recorder. */
  void record_async(const ExecutionView& view, const std::string& code, const std::string& error);
  /**
   * The kernel of `entry` for `session`: the running one, or a new one (the old one, from an ended session or dead,
   * is killed and the reason kept for the answer). Throws what PythonKernel::start throws.
   */
  std::shared_ptr<PythonKernel> kernel_for(PythonContexts::Entry& entry, const store::SessionRow& session,
                                           CellInfo& info, const CancelToken* cancel = nullptr);
  /** The cleanup pass's sweep of the context registry: contexts of gone sandboxes, kernels of ended sessions. */
  void sweep_contexts();
  /** Runs one cell on the session's kernel of `entry` (see run_python); fills `info`, sets `started` once sent. */
  ExecResult run_cell(PythonContexts::Entry& entry, const store::SessionRow& session, const std::string& code,
                      const std::optional<std::string>& event_json, std::chrono::milliseconds timeout,
                      const OutputSink& on_output, const CancelToken& token, std::atomic<bool>& started,
                      CellInfo& info);
  /** Whether a session's process_start answered unsupported before (its execs go to Driver::exec). */
  bool engine_exec_only(const std::string& session_id);
  void remember_engine_exec_only(const std::string& session_id);
  /**
   * Runs `fn(session, cancel_token)` on the sandbox's ready session while the sandbox counts as in use (idle cleanup
   * skips it; the idle timer is touched when the call starts and when it ends). A session found dead after a
   * not_found/conflict failure is cleared at once; the call is repeated on a new session only once, and only if the
   * driver said not_found and `started` is still false (the caller sets it when the call consumed input or produced
   * output). Otherwise a conflict Error says the call was not repeated. `row` is the caller's live row (capability
   * checked).
   */
  template <typename Fn>
  auto with_session(const store::SandboxRow& row, const std::atomic<bool>& started, Fn&& fn,
                    const std::string& tag = "", const std::atomic<bool>* cancelled = nullptr);
  /** Clears a session known dead (CAS, state dead) and removes its container; GET stops saying ready. */
  void retire_dead_session(const store::SessionRow& session, const std::string& why);
  void notify_sessions_changed();
  void cleanup_dead_sessions(CleanupReport& report);
  void cleanup_idle(CleanupReport& report);
  void cleanup_expired(CleanupReport& report);
  void cleanup_orphans(CleanupReport& report);
  void cleanup_abandoned_workspaces(CleanupReport& report);
  void cleanup_history(CleanupReport& report);
  /** Measures every ready session whose profile has a disk limit; stops those over it (see enforce_disk). */
  void cleanup_disk(CleanupReport& report);
  /**
   * Asks the driver for the session's disk use and records it. nullopt when the profile has no limit, the driver
   * reports no disk use (an ABI < 1.2 driver, no stats) or the call failed (logged as disk.measure_failed).
   */
  std::optional<DiskUsage> measure_disk(const store::SandboxRow& row, const std::string& handle);
  /** Over the limit: stops the measured session `session_id` if it is still the sandbox's current one (workspace
   *  kept) and logs sandbox.disk_exceeded. Returns whether it stopped it. */
  bool enforce_disk(const store::SandboxRow& row, const std::string& session_id, const DiskUsage& usage);
  /**
   * The gate of exec and file writes: when the sandbox was found over its limit, measures again on a running
   * session (starting one; a stop discarded the writable layer) and throws disk_quota_exceeded while still over;
   * clears the mark (sandbox.disk_recovered) once under.
   */
  void require_disk_space(const std::string& owner, const std::string& id);
  /** After a call that may have freed space (a delete): re-measures when the sandbox is marked exceeded. */
  void recheck_disk_after_delete(const store::SandboxRow& row, const std::string& handle);
  bool disk_exceeded(const std::string& sandbox_id);
  /**
   * After an exec or a file write: measures and enforces on disk_checks_' thread, so the caller does not wait for a
   * walk of the workspace; a request for a sandbox whose check is still queued is dropped (that check comes later).
   * A check runs at once, or Settings::disk_check_spacing after the start of the sandbox's previous one.
   */
  void schedule_disk_check(const store::SandboxRow& row);
  /**
   * Whether a file write of `size` bytes may have taken the sandbox over its limit: true without a measurement, or
   * when the last one plus `size` (and 1 MiB of slack) is over. Growth by execs is checked after each exec, so small
   * writes into a sandbox far from its limit cost no measurement.
   */
  bool write_may_exceed(const store::SandboxRow& row, std::uint64_t size);
  [[noreturn]] void throw_disk_quota(const std::string& sandbox_id, const DiskUsage& usage);
  /** The cleanup lease on `candidate` for this pass (claim_lease, holder "<instance_id>#cleanup"); false, reported
   *  in skipped_leased and logged (cleanup.lease_busy), while another instance holds it. */
  bool cleanup_lease(CleanupReport& report, const std::string& candidate, const char* action);
  /**
   * Runs one candidate's driver work within Settings::cleanup_call_deadline (see DeadlineRunner). `key` names what
   * the work touches (a container handle when there is one, so every step of a pass shares it). Returns true when
   * it finished (rethrowing what it threw); false when it overran or earlier work for `key` is still running: then
   * `candidate` is reported failed and logged, and the pass goes on with the next one. `work` captures by value.
   */
  bool cleanup_call(CleanupReport& report, const std::string& candidate, const std::string& key, const char* action,
                    std::function<void()> work);
  /**
   * The per-session half of recover() and adopt_sessions_of(): adopts `s` if its container in `containers` (keyed by
   * the berth.session label) runs and its sandbox still wants it, else clears it and removes the container. `step`
   * names the caller in the log. Records the outcome in `report`; never throws a DriverError.
   */
  void reconcile_session(store::SessionRow s, const std::map<std::string, SessionListing>& containers,
                         RecoveryReport& report, const char* step);
  /** The cleanup lease of `key` for `holder` (see use_cleanup_leases); true without leases. */
  bool claim_lease(const std::string& key, const std::string& holder);
  std::string lease_holder(const char* role) const { return settings_.instance_id + "#" + role; }

  store::Store& store_;
  Driver& driver_;
  std::shared_ptr<const Clock> clock_;
  Settings settings_;
  ProfileCatalog profiles_;
  Metrics& metrics_;
  InFlightCalls in_flight_;
  std::atomic<bool> shutting_down_{false};  // set once by begin_shutdown()
  CreateRateLimiter create_rate_{settings_.limits.create_rate_per_minute, settings_.limits.create_burst};
  std::mutex quota_mutex_;
  std::map<std::string, int> creating_;  // owner -> creates past the quota check and not yet inserted

  /** Marks a session as being started by this process (RAII), so that a late recover() leaves it alone. */
  class StartingHere {
   public:
    StartingHere(SandboxService& service, std::string session_id);
    ~StartingHere();
    StartingHere(const StartingHere&) = delete;
    StartingHere& operator=(const StartingHere&) = delete;

   private:
    SandboxService& service_;
    std::string session_id_;
  };
  bool started_here(const std::string& session_id);
  std::mutex starting_mutex_;
  std::set<std::string> starting_here_;        // session ids this process is starting right now
  std::atomic<bool> recovery_pending_{false};  // recover() could not list the driver's sessions: run_cleanup retries
  std::mutex wait_mutex_;
  std::condition_variable sessions_changed_;
  std::mutex cleanup_mutex_;  // one cleanup pass at a time
  std::mutex disk_mutex_;
  std::map<std::string, DiskUsage> disk_;  // sandbox id -> last measurement (erased on delete)
  std::map<std::string, std::chrono::steady_clock::time_point> disk_check_began_;  // by schedule_disk_check (erased
                                                                                   // on delete)
  InstanceStore* leases_ = nullptr;  // set once by use_cleanup_leases(), before the cleanup task starts
  std::chrono::milliseconds lease_ttl_{120'000};
  std::mutex engine_exec_mutex_;
  std::set<std::string> engine_exec_sessions_;  // session ids whose process_start said unsupported (bounded, see .cpp)
  mutable std::mutex terminals_mutex_;
  std::map<std::string, std::size_t> terminals_;           // sandbox id -> open terminals (entries > 0 only)
  std::map<std::string, std::size_t> terminals_by_owner_;  // owner -> open terminals (entries > 0 only)
  std::size_t terminals_open_ = 0;
  PythonContexts contexts_;  // the kernels (processes): killed before the driver goes (the service's destructor)
  // Destroyed before the members above (and before the store): drains what is pending into the store.
  ExecRecorder recorder_{store_, settings_.exec_recorder};
  // Destroyed before the members above, it waits for overrunning cleanup work, which uses them.
  DeadlineRunner cleanup_calls_;
  // Destroyed before the members above, it waits for the running disk check, which uses them.
  BackgroundQueue disk_checks_;
  // Last member: destroyed first, it cancels the running async executions and joins their threads (they use all of
  // the above).
  AsyncExecutions async_{settings_.max_async_executions, 100, settings_.async_retention,
                         [this](const std::string& id) { in_flight_.cancel_tagged(id); },
                         settings_.max_async_per_owner};
};

/** Maps a driver failure to the core's vocabulary (unavailable -> driver_unavailable with Retry-After, ...). */
[[noreturn]] void rethrow_driver_error(const DriverError& e, const std::string& context);

}  // namespace berth::core
