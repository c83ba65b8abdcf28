// The core's view of a container runtime. Implemented by plugin::AbiDriver (a loaded driver plugin); the core
// never sees the C ABI, Boost.DLL or a particular engine.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace berth::core {

/** Why a driver call failed. Mirrors the SDK status codes one to one. */
enum class DriverErrc { not_found, invalid_argument, conflict, unavailable, timeout, unsupported, internal, cancelled };

/** Stable lowercase name of a code, for logs ("unavailable"). */
std::string_view to_string(DriverErrc code);

/** Thrown by every Driver call that fails. `unavailable` is the only retryable code. */
class DriverError : public std::runtime_error {
 public:
  DriverError(DriverErrc code, const std::string& message) : std::runtime_error(message), code_(code) {}
  DriverErrc code() const { return code_; }
  bool retryable() const { return code_ == DriverErrc::unavailable; }

 private:
  DriverErrc code_;
};

using Labels = std::map<std::string, std::string>;

/** Capability bits of DriverIdentity::capabilities (same values as the SDK's BERTH_CAP_*; checked in plugin/). */
namespace cap {
inline constexpr std::uint64_t exec = 1u << 0;
inline constexpr std::uint64_t exec_stream = 1u << 1;
inline constexpr std::uint64_t exec_cancel = 1u << 2;
inline constexpr std::uint64_t files = 1u << 3;
inline constexpr std::uint64_t volumes = 1u << 4;
inline constexpr std::uint64_t stats = 1u << 5;
inline constexpr std::uint64_t readonly_rootfs = 1u << 6;
inline constexpr std::uint64_t network_policy = 1u << 7;
inline constexpr std::uint64_t process = 1u << 8;      // interactive processes (Driver::process_start)
inline constexpr std::uint64_t process_pty = 1u << 9;  // ProcessSpec::pty honoured, Process::resize
}  // namespace cap

/** What to start. Zero limits mean "driver default". */
struct SessionSpec {
  std::string session_id;
  std::string image;
  std::map<std::string, std::string> env;
  Labels labels;
  std::int64_t nano_cpus = 0;
  std::int64_t memory_bytes = 0;
  std::int64_t pids_limit = 0;
  bool network_enabled = false;
  bool read_only_rootfs = false;
  std::string workspace_volume;
  std::string workspace_mount_path = "/workspace";
  std::string user;
  std::string working_dir;
};

/**
 * What the driver says of a session. `unknown` is a state a newer driver reported that this host cannot name: the
 * session exists, so it is never treated as `missing` (driver.h rule 12).
 */
enum class SessionState { starting, running, exited, missing, unknown };
std::string_view to_string(SessionState state);

/**
 * Whether a session in `state` may still run user code, so that nothing may destroy it or run a call again
 * elsewhere: `running`, and `unknown` (a newer driver's state: it exists, rule 12). Pure; thread-safe.
 */
constexpr bool alive(SessionState state) {
  return state == SessionState::running || state == SessionState::unknown;
}

struct SessionInfo {
  SessionState state = SessionState::missing;
  int exit_code = 0;
  std::string handle;
  std::string endpoint;  ///< "<transport>:<address>" by convention (driver.h), or ""
};

/**
 * The transport named by a session endpoint (driver.h, berth_session_info.endpoint: "<transport>:<address>"): the
 * part before the first ':', e.g. "agent", "engine-exec", "in-process". nullopt for "" or an endpoint without a
 * scheme. A scheme that is not 1-32 of [a-z0-9+.-] is "other", so that a driver cannot grow label cardinality.
 */
std::optional<std::string> transport_of(const std::string& endpoint);

struct SessionListing {
  std::string handle;
  SessionState state = SessionState::missing;
  Labels labels;
};

enum class Stream { out = 1, err = 2 };

struct ExecRequest {
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;
  std::string cwd;  // relative to the workspace
  std::string stdin_data;
  std::chrono::milliseconds timeout{0};
};

struct ExecResult {
  int exit_code = -1;
  bool timed_out = false;
  bool cancelled = false;
};

/** Receives output chunks as they arrive; return false to cancel the exec. */
using OutputSink = std::function<bool(Stream, std::string_view)>;
/** Fills up to `capacity` bytes; returns the count, 0 at end, -1 on error. */
using ByteSource = std::function<std::int64_t(std::uint8_t* buffer, std::size_t capacity)>;
/** Receives file bytes; return false to abort. */
using ByteSink = std::function<bool(std::string_view)>;

/** Cancels an exec from another thread. Thread-safe; lives at least as long as the call it is passed to. */
class CancelToken {
 public:
  void cancel() { cancelled_.store(true, std::memory_order_release); }
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

 private:
  std::atomic<bool> cancelled_{false};
};

enum class EntryType { file, directory, symlink, other };
std::string_view to_string(EntryType type);

struct DirEntry {
  std::string name;
  EntryType type = EntryType::file;
  std::uint64_t size = 0;
  std::uint32_t mode = 0;
};

/** Receives one directory entry (borrowed for the call); false ends the listing. */
using DirEntrySink = std::function<bool(const DirEntry&)>;

/** Resource usage of a running session (see berth_session_stats); a 0 disk field means unknown. */
struct SessionStats {
  std::uint64_t memory_bytes = 0;
  std::uint64_t cpu_time_ns = 0;
  std::uint64_t pids = 0;
  std::uint64_t workspace_bytes = 0;  // space the workspace holds (allocated bytes)
  std::uint64_t rootfs_bytes = 0;     // bytes in the container's writable layer
};

/** What Driver::process_start runs. Zero sizes mean the driver's default (24 x 80). */
struct ProcessSpec {
  std::vector<std::string> argv;  // non-empty; argv[0] searched in the session's PATH
  std::map<std::string, std::string> env;
  std::string cwd;                       // relative to the workspace
  std::chrono::milliseconds timeout{0};  // 0 = none; the driver kills the whole process tree when it passes
  bool pty = false;                      // run on a pseudo-terminal (needs cap::process_pty)
  std::uint16_t rows = 0;
  std::uint16_t cols = 0;
  /**
   * Optional: "an event may be ready" (driver.h rule 11). Called from any driver thread, possibly spuriously and
   * concurrently, until the Process is destroyed; must return at once, must not call into the Process, must not
   * throw (an exception is swallowed).
   */
  std::function<void()> on_ready;
};

/** How a process ended (berth_process_event's EXIT fields). */
struct ProcessExit {
  int exit_code = -1;  // 0-255; 128 + signal when a signal ended it
  int signal = 0;      // the signal that ended it, 0 if it exited
  bool timed_out = false;
  bool killed = false;  // Process::kill (or the session's end) killed it
  std::uint64_t output_dropped = 0;
};

/** One event of a process: nothing yet, an output chunk, or the exit (the last, repeated on every later call). */
struct ProcessEvent {
  enum class Kind { none, output, exit };
  Kind kind = Kind::none;
  Stream stream = Stream::out;  // output
  std::string data;             // output (owned: a copy of the driver's buffer)
  ProcessExit exit;             // exit
};

/**
 * An interactive process started by Driver::process_start (RAII: destroying it kills the process if it still runs
 * and releases the driver's handle). Must be destroyed before the Driver that started it. Threading (driver.h
 * rule 11): next_event from one thread at a time; the other calls may come from any thread concurrently with it
 * and never wait for the process. Every failure is a DriverError.
 */
class Process {
 public:
  virtual ~Process() = default;
  /** Queues stdin bytes (copied); throws unavailable when the driver's buffer is full (retry after an event). */
  virtual void write_stdin(std::string_view data) = 0;
  /** End of stdin (PTY: the terminal's EOF character). Idempotent. */
  virtual void close_stdin() = 0;
  /** Sends signal `signo` to the process or, with `to_group`, its process group. */
  virtual void signal(int signo, bool to_group) = 0;
  /** New terminal size of a PTY process. */
  virtual void resize(std::uint16_t rows, std::uint16_t cols) = 0;
  /** Kills the whole process tree; an exit event (killed) follows. Idempotent. */
  virtual void kill() = 0;
  /** Waits at most `wait` for the next event; Kind::none when none came. */
  virtual ProcessEvent next_event(std::chrono::milliseconds wait) = 0;
};

/** Who the driver says it is. */
struct DriverIdentity {
  std::string name;
  std::string version;
  std::uint32_t abi_major = 0;
  std::uint32_t abi_minor = 0;
  std::uint64_t capabilities = 0;  // of this instance: the table's bits narrowed by its configuration (ABI 1.3)
  std::string path;                // the shared library it came from
};

/**
 * A configured driver instance. Every method may be called concurrently from any thread; every failure is a
 * DriverError. Handles are the driver's own session ids.
 */
class Driver {
 public:
  virtual ~Driver() = default;

  virtual const DriverIdentity& identity() const = 0;
  bool has_capability(std::uint64_t bit) const { return (identity().capabilities & bit) != 0; }

  virtual void volume_create(const std::string& name, const Labels& labels) = 0;
  virtual void volume_remove(const std::string& name) = 0;
  virtual bool volume_exists(const std::string& name) = 0;

  virtual SessionInfo session_create(const SessionSpec& spec) = 0;
  /** A session that does not exist is reported with state `missing`, not an error. */
  virtual SessionInfo session_inspect(const std::string& handle) = 0;
  virtual void session_stop(const std::string& handle, std::chrono::milliseconds grace) = 0;
  virtual void session_remove(const std::string& handle) = 0;
  virtual std::vector<SessionListing> session_list(const Labels& filter) = 0;
  virtual SessionStats session_stats(const std::string& handle) = 0;
  /**
   * Whether the engine holds `image` locally (never pulls): true/false, or nullopt when the driver cannot tell
   * (ABI < 1.2 or the optional slot is NULL). Throws DriverError when the engine fails. Pure, so that a wrapper
   * (MeteredDriver, test doubles) cannot silently answer "cannot tell" for the driver it wraps.
   */
  virtual std::optional<bool> image_exists(const std::string& image) = 0;

  /** Runs a process; a timeout is a result (timed_out), a cancellation throws DriverErrc::cancelled. */
  virtual ExecResult exec(const std::string& handle, const ExecRequest& request, const OutputSink& on_output,
                          const CancelToken* cancel) = 0;

  virtual void file_put(const std::string& handle, const std::string& path, std::uint32_t mode, std::uint64_t size,
                        const ByteSource& source) = 0;
  virtual void file_get(const std::string& handle, const std::string& path, const ByteSink& sink) = 0;
  /**
   * Streams a directory's entries to `on_entry`, one call per entry, in no particular order; `on_entry` returns
   * false to end the listing early (the call then returns normally). The entry is valid only during the call.
   * Nothing but the current entry is held, so memory does not grow with the directory. Throws DriverError.
   */
  virtual void dir_scan(const std::string& handle, const std::string& path, const DirEntrySink& on_entry) = 0;
  /** Convenience over dir_scan: every entry, sorted by name (raw bytes). Memory grows with the directory. */
  std::vector<DirEntry> dir_list(const std::string& handle, const std::string& path);
  virtual void path_remove(const std::string& handle, const std::string& path) = 0;

  /** Whether process_start may be called: the driver has the slots and this instance offers cap::process. */
  virtual bool supports_processes() const { return false; }
  /**
   * Starts an interactive process in the session and returns at once (see Process). Throws DriverError:
   * unsupported without supports_processes(), not_found when the session is not running or the cwd is missing
   * (nothing ran), invalid_argument for a bad spec.
   */
  virtual std::unique_ptr<Process> process_start(const std::string& handle, const ProcessSpec& spec);
};

}  // namespace berth::core
