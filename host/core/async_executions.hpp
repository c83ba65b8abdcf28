// Async executions: an exec that answers 202 at once and runs on; its status, its buffered output (re-attachable
// from any sequence number) and its cancel. The registry and the per-execution buffer; the service's calls are in
// exec_async.cpp.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/driver.hpp"

namespace berth::core {

struct ExecOutcome;

/** Where an execution is. `running` until it ends; every other value is final. */
enum class ExecutionStatus { running, succeeded, failed, timed_out, cancelled };
/** Stable wire name: "running", "succeeded", "failed", "timed_out", "cancelled". */
std::string_view to_string(ExecutionStatus s);

/** One output chunk of an async execution, as buffered for replay (ExecChunk, owned). */
struct BufferedChunk {
  std::uint64_t seq = 0;  // counts the execution's chunks from 0 over both streams
  Stream stream = Stream::out;
  std::chrono::system_clock::time_point at;
  std::string data;
};

/** An execution as clients see it (GET .../executions/{id}). */
struct ExecutionView {
  std::string id;  // the execution id (also its history record's)
  std::string sandbox_id;
  std::string kind;  // "python" | "shell"
  ExecutionStatus status = ExecutionStatus::running;
  bool async = true;       // false: a synchronous exec found in the history
  std::string error_code;  // failed without a result: the error's code (e.g. "session_not_ready")
  std::string reason;      // failed / cancelled: why, for people
  std::chrono::system_clock::time_point created_at;
  std::optional<std::chrono::system_clock::time_point> finished_at;
  std::shared_ptr<const ExecOutcome> outcome;  // the exec's result once it has one (what the sync call answers)
};

/** What GET .../events gets per wait: the chunks after a sequence number, and whether the execution has ended. */
struct ExecutionEvents {
  std::vector<BufferedChunk> chunks;
  bool finished = false;
  std::uint64_t first_kept = 0;  // the oldest sequence number still buffered (older ones were dropped for room)
};

/**
 * One async execution: its state and a bounded buffer of its output. Thread-safe (one mutex); the exec's thread
 * appends and finishes, request threads read and cancel.
 */
class AsyncExecution {
 public:
  AsyncExecution(ExecutionView view, std::size_t buffer_bytes, std::string owner = "")
      : owner_(std::move(owner)), view_(std::move(view)), cap_(buffer_bytes) {}
  /** The tenant that started it (counted against AsyncExecutions' per-owner cap). */
  const std::string& owner() const { return owner_; }

  /** Buffers a chunk (the oldest ones go when over the cap). Returns false once a cancel was asked for. */
  bool append(const BufferedChunk& chunk);
  /** The end: `status` (not running) with the outcome, or with an error's code and message. Wakes every waiter. */
  void finish(ExecutionStatus status, std::shared_ptr<const ExecOutcome> outcome, std::string error_code,
              std::string reason, std::chrono::system_clock::time_point at);
  /** Asks the exec to stop; false if it had already ended. */
  bool request_cancel();
  bool cancel_requested() const { return cancel_.load(); }
  const std::atomic<bool>& cancel_flag() const { return cancel_; }
  /** The chunks with seq > `after` (all with nullopt), waiting up to `wait` for one or the end. */
  ExecutionEvents events_after(std::optional<std::uint64_t> after, std::chrono::milliseconds wait);
  /** Waits up to `wait` for the end; the view then. */
  ExecutionView wait_end(std::chrono::milliseconds wait);
  ExecutionView view() const;
  const std::string& id() const { return view_.id; }

 private:
  std::string owner_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  ExecutionView view_;
  std::deque<BufferedChunk> chunks_;
  std::size_t bytes_ = 0;
  std::size_t cap_;
  std::uint64_t dropped_upto_ = 0;  // every seq below this was dropped
  std::atomic<bool> cancel_{false};
};

/**
 * The async executions of this berthd: at most `max_running` at once (each on a thread of its own), finished ones
 * kept `retention` (and at most `max_kept`) for status and replay; after that the history table answers. Thread-safe.
 * Destroying it asks every running one to cancel (through `on_cancel`) and joins their threads.
 */
class AsyncExecutions {
 public:
  /** `max_per_owner`: running at once for one owner (0: no cap below max_running). */
  AsyncExecutions(std::size_t max_running, std::size_t max_kept, std::chrono::seconds retention,
                  std::function<void(const std::string&)> on_cancel, std::size_t max_per_owner = 0)
      : max_running_(max_running),
        max_per_owner_(max_per_owner),
        max_kept_(max_kept),
        retention_(retention),
        on_cancel_(std::move(on_cancel)) {}
  ~AsyncExecutions();

  /** Why add() refused. */
  enum class Refusal { none, server_full, owner_full };
  /**
   * Registers a new one for `owner`; nullptr (and `why`) when `max_running` run already on this berthd, or
   * `max_per_owner` for this owner.
   */
  std::shared_ptr<AsyncExecution> add(ExecutionView view, std::size_t buffer_bytes, const std::string& owner,
                                      Refusal* why = nullptr);
  /** Runs `body` on a thread of its own for `execution` (registered by add). */
  void start(const std::shared_ptr<AsyncExecution>& execution, std::function<void()> body);
  std::shared_ptr<AsyncExecution> find(const std::string& id);
  /** For an execution add() registered whose start failed: finished as failed, its running slot given back. */
  void abandon(const std::shared_ptr<AsyncExecution>& execution, std::chrono::system_clock::time_point at);
  /** Cancels every running one (shutdown); returns how many. */
  std::size_t cancel_all();
  /** Cancels `id` (flag + on_cancel); false if unknown or ended. */
  bool cancel(const std::string& id);
  std::size_t running() const;

 private:
  void evict_locked(std::chrono::steady_clock::time_point now);
  void ended_locked(const AsyncExecution& e);
  void reap_threads_locked();

  const std::size_t max_running_;
  const std::size_t max_per_owner_;
  const std::size_t max_kept_;
  const std::chrono::seconds retention_;
  std::function<void(const std::string&)> on_cancel_;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<AsyncExecution>> by_id_;
  std::deque<std::pair<std::chrono::steady_clock::time_point, std::string>> finished_;  // eviction order
  std::size_t running_ = 0;
  std::map<std::string, std::size_t> running_by_owner_;  // entries > 0 only
  struct Worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::vector<Worker> workers_;
};

}  // namespace berth::core
