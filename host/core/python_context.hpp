// Python contexts: long-lived interpreters ("kernels") in a sandbox's session that keep variables, imports and the
// working directory between python/exec calls, as a notebook does. A kernel is a python3 process started through the
// interactive-process API (Driver::process_start) running host/core/python_kernel.py; berthd speaks a small framed
// protocol with it over the process's stdin/stdout (docs/python-contexts.md, "Kernel protocol").
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/driver.hpp"
#include "core/fifo_mutex.hpp"

namespace berth::core {

/** The kernel's Python source (host/core/python_kernel.py, embedded at build time). */
std::string_view python_kernel_source();

/** One frame of the kernel protocol: `<type> <length>\n` then <length> payload bytes. */
struct KernelFrame {
  std::string type;  // "ready", "stdout", "stderr", "result"
  std::string payload;
};

/**
 * Splits the kernel's stdout into frames. Not thread-safe. A header longer than 64 bytes, a type that is not a
 * lowercase word, a length that is not decimal or over `max_payload` is a protocol error (std::runtime_error from
 * next()): the kernel is then killed, never trusted again.
 */
class KernelFrameParser {
 public:
  explicit KernelFrameParser(std::size_t max_payload = 64u << 20) : max_payload_(max_payload) {}
  void feed(std::string_view bytes) { buffer_.append(bytes); }
  /** The next complete frame, or nullopt until more bytes come. Throws std::runtime_error on a malformed frame. */
  std::optional<KernelFrame> next();
  /** Bytes buffered and not yet returned as frames. */
  std::size_t buffered() const { return buffer_.size() - pos_; }

 private:
  std::string buffer_;
  std::size_t pos_ = 0;
  std::size_t max_payload_;
};

/** What one cell of a context ended with (what the kernel's `result` frame said, or why there is none). */
struct CellOutcome {
  bool finished = false;     // a result frame came (else the cell timed out, was cancelled or the kernel died)
  bool timed_out = false;    // the timeout passed; finished too if SIGINT stopped the cell in time
  bool kernel_lost = false;  // the kernel is gone (killed after a timeout, exited, or broke the protocol)
  std::string lost_reason;   // why, for the answer ("timeout", "interpreter exited (code 3)", ...)
  int execution_count = 0;   // the kernel's counter for this cell (0 when no result came)
  bool success = false;      // the cell ran to its end without an exception (SystemExit(0) included)
  int exit_code = 1;         // what `python3 -` would have exited with: 0, the SystemExit code, or 1
  std::string error_name;    // the exception's class name, "" on success
  std::string error_value;   // str() of the exception
  std::string traceback;     // the formatted traceback (also written to the cell's stderr)
  std::string data_json;     // the result's "data" object as JSON text ("" when none): text, html, images, ...
  std::string result_json;   // handler(event)'s return value as JSON text ("" when no event was given)
  std::string cwd;           // the kernel's working directory after the cell
};

/**
 * Fills `out` from a kernel's `result` frame payload and returns the cell number it echoes (0 without one). Throws
 * std::runtime_error when the payload is not the protocol's object (a field of the wrong type included). Pure.
 */
std::uint64_t parse_kernel_result(const std::string& payload, CellOutcome& out);

/**
 * One running kernel (RAII: destroying it kills the process). Threading: run() from one thread at a time (the
 * context's cell lock); kill() from any thread. Every driver failure is a DriverError.
 */
class PythonKernel {
 public:
  /**
   * Starts the kernel (`python3 -u -c <bootstrap>`, the kernel's source on stdin) in the session `handle` with `env`
   * (overlaid on the session's), in `cwd` (workspace-relative, "" = the root), and waits at most `wait` for its ready
   * frame. Throws DriverError from process_start (unsupported, not_found
   * ...) and Error(capability_not_supported) when the process ends or stays silent before it is ready (no python3 in
   * the image, a broken interpreter): the message carries what it wrote to stderr.
   */
  static std::unique_ptr<PythonKernel> start(Driver& driver, const std::string& handle,
                                             const std::map<std::string, std::string>& env, const std::string& cwd,
                                             std::chrono::milliseconds wait, const CancelToken* cancel = nullptr);
  ~PythonKernel();
  PythonKernel(const PythonKernel&) = delete;
  PythonKernel& operator=(const PythonKernel&) = delete;

  /**
   * Runs one cell: sends `request_json` (the exec frame's JSON) and pulls events until its result. Output frames go
   * to `on_output` as they come (false from it cancels: the kernel is killed, DriverError(cancelled) thrown, as for
   * `cancel`). At `timeout` the process group gets SIGINT; a result within `interrupt_grace` after it keeps the
   * kernel (timed_out, finished), else the kernel is killed (timed_out, kernel_lost). A kernel that exits or breaks
   * the protocol is reported kernel_lost. Throws DriverError(cancelled) and DriverError(conflict) when the session
   * ended under the cell.
   */
  CellOutcome run(const std::string& request_json, std::chrono::milliseconds timeout,
                  std::chrono::milliseconds interrupt_grace, const OutputSink& on_output, const CancelToken& cancel);
  /**
   * Whether the kernel can take a cell: takes what the process sent since the last cell without waiting; false once
   * it exited or its session (connection) is gone. Same thread rule as run().
   */
  bool alive();
  /** Kills the kernel's process tree (any thread). Idempotent. */
  void kill();
  /** Whether the kernel is known dead (it exited, was killed or broke the protocol): it must be replaced. */
  bool dead() const { return dead_; }
  /** The interpreter's version as the ready frame said (e.g. "3.11.2"). */
  const std::string& python_version() const { return python_version_; }

 private:
  explicit PythonKernel(std::unique_ptr<Process> process) : process_(std::move(process)) {}
  std::unique_ptr<Process> process_;
  KernelFrameParser parser_;
  std::string python_version_;
  std::string kernel_stderr_;      // what the process itself wrote to stderr before it was ready (bounded)
  std::uint64_t cells_ = 0;        // cells sent; each exec frame carries its number, its result echoes it
  std::atomic<bool> dead_{false};  // kill() may come from another thread
};

/** A context as clients see it. */
struct ContextView {
  std::string id;  // "default" or "ctx-..."
  std::string sandbox_id;
  std::string cwd;                         // workspace-relative, where the kernel started ("" = the root)
  std::map<std::string, std::string> env;  // overlaid on the session's environment
  std::chrono::system_clock::time_point created_at;
  std::optional<std::chrono::system_clock::time_point> last_used_at;
  int execution_count = 0;     // cells run by its current kernel
  bool running = false;        // a kernel is up (it may still die with its session)
  bool busy = false;           // a cell runs now
  std::string python_version;  // of the current kernel, "" before the first start
};

/** What CreateContext takes. */
struct ContextSpec {
  std::string cwd;  // workspace-relative; "" = the workspace root
  std::map<std::string, std::string> env;
};

/**
 * The contexts of every sandbox this berthd serves, in memory (a context lives in the berthd that created it: a
 * kernel is a process this instance's driver connection owns). Thread-safe: one mutex for the map, held briefly; a
 * cell holds its context's own lock.
 */
class PythonContexts {
 public:
  struct Entry {
    std::string id;
    std::string sandbox_id;
    ContextSpec spec;
    std::chrono::system_clock::time_point created_at;
    std::optional<std::chrono::system_clock::time_point> last_used_at;
    FifoMutex cell;  // one cell at a time; later callers wait (up to their timeout), first come first served
    // Guarded by PythonContexts::mutex_ (read by list while a cell runs):
    std::shared_ptr<PythonKernel> kernel;
    std::string session_id;      // the session the kernel runs in
    std::string restart_reason;  // set when the kernel was lost unseen (its session ended): the next cell says so
    bool ever_started = false;
    int execution_count = 0;
    bool busy = false;
    bool deleted = false;
  };

  /** The entry of (sandbox, context), creating "default" on first use; nullptr for an unknown named context. */
  std::shared_ptr<Entry> find(const std::string& sandbox_id, const std::string& context_id, bool create_default,
                              std::chrono::system_clock::time_point now);
  /** Adds a named context; nullptr when the sandbox holds `limit` contexts already ("default" counts always). */
  std::shared_ptr<Entry> add(const std::string& sandbox_id, ContextSpec spec, std::size_t limit,
                             std::chrono::system_clock::time_point now);
  std::vector<ContextView> list(const std::string& sandbox_id);
  ContextView view(const Entry& e);
  /** Removes a context and kills its kernel; false if unknown. */
  bool remove(const std::string& sandbox_id, const std::string& context_id);
  /** The sandbox is gone: every context of it is removed and its kernel killed. */
  void drop_sandbox(const std::string& sandbox_id);
  /** The session ended: its kernels are dropped (killed) and the next cell of each context says it restarted. */
  void drop_session(const std::string& sandbox_id, const std::string& session_id, const std::string& reason);
  /** Per sandbox, the sessions its live kernels run in (for the cleanup pass's sweep). */
  std::map<std::string, std::set<std::string>> kernel_sessions();
  /** Runs `fn(entry)` under the map's mutex (the guarded fields of an entry). */
  template <typename Fn>
  auto locked(Fn&& fn) {
    std::lock_guard lock(mutex_);
    return fn();
  }

 private:
  std::mutex mutex_;
  std::map<std::string, std::map<std::string, std::shared_ptr<Entry>>> by_sandbox_;
};

}  // namespace berth::core
