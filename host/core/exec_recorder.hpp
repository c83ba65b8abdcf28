// The exec recorder: execution records and idle-timer touches leave the request path. They are queued and written
// by one thread of their own in batches (Store::write_batch: one transaction per batch), so that a warm exec does
// not wait for a database write (issue 11, "fast paths stay fast").
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "core/store.hpp"

namespace berth::core {

/**
 * A bounded, batching writer of ExecutionRows and sandbox touches in front of a Store.
 *
 * Records: an exec first reserve()s a slot (the back-pressure point: it waits while `capacity` records are queued
 * or reserved, and throws store::StoreUnavailable once Options::reserve_wait passed), runs, then record()s into the
 * slot without waiting, so an exec that ran never loses its response to a slow store. Touches are coalesced per
 * sandbox (the latest idle_expires_at wins), so they are bounded by the number of live sandboxes.
 *
 * The writer thread waits Options::linger after the first item (or until Options::batch_max records are queued, or
 * a flush() asks) and writes everything pending in one Store::write_batch. A failed batch stays queued in order and
 * is retried with a backoff (100 ms doubling to 2 s); its records keep their slots, so a store outage turns into
 * back-pressure and then 503 store_unavailable for new execs, never into unbounded memory.
 *
 * Durability: a record is in the database at most Options::linger (plus one batch write) after its exec answered; a
 * kill -9 of berthd loses at most what is pending then. The destructor drains the queue (up to
 * Options::drain_wait; what it cannot write then is logged as exec_recorder.lost).
 *
 * Thread-safe: every method may be called from any thread. The store must outlive the recorder.
 */
class ExecRecorder {
 public:
  struct Options {
    std::size_t capacity = 4096;                     // records queued or reserved at once
    std::size_t batch_max = 512;                     // records in one transaction
    std::chrono::milliseconds linger{2};             // how long the writer gathers a batch after its first item
    std::chrono::milliseconds reserve_wait{10'000};  // how long reserve() waits for room before StoreUnavailable
    std::chrono::milliseconds drain_wait{10'000};    // how long the destructor tries to write what is pending
  };

  /** A reserved place for one record (move-only RAII): released unless record() used it. */
  class Slot {
   public:
    Slot(Slot&& other) noexcept : owner_(other.owner_) { other.owner_ = nullptr; }
    Slot& operator=(Slot&&) = delete;
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    ~Slot();

   private:
    friend class ExecRecorder;
    explicit Slot(ExecRecorder* owner) : owner_(owner) {}
    ExecRecorder* owner_;  // null once used or moved from
  };

  /** Counters since construction (for tests and logs). */
  struct Stats {
    std::uint64_t batches = 0;    // successful write_batch calls
    std::uint64_t records = 0;    // records written
    std::uint64_t touches = 0;    // touches written (after coalescing)
    std::uint64_t failures = 0;   // failed write_batch calls
    std::uint64_t dropped = 0;    // records the database refused on their own (logged as exec_recorder.dropped)
    std::size_t pending = 0;      // records queued or reserved now
    std::size_t max_pending = 0;  // the most records queued or reserved at once
  };

  ExecRecorder(store::Store& store, Options options);
  /** Drains (see the class comment) and stops the writer. */
  ~ExecRecorder();
  ExecRecorder(const ExecRecorder&) = delete;
  ExecRecorder& operator=(const ExecRecorder&) = delete;

  /** Waits for room for one record; throws store::StoreUnavailable after Options::reserve_wait. */
  Slot reserve();
  /** Queues `row` in `slot` (consumed). Never waits. */
  void record(Slot slot, store::ExecutionRow row);
  /** Queues an idle-timer write (Store::touch_sandbox), replacing one still pending for the sandbox. Never waits. */
  void touch(const std::string& sandbox_id, store::TimePoint idle_expires_at);
  /** The pending touch of a sandbox, if one is not yet known written: queued, or in the batch being written now (reads
   *  overlay it on the stored row, so no read sees the older stored timer in between). */
  std::optional<store::TimePoint> pending_touch(const std::string& sandbox_id) const;
  /** Every pending touch (as pending_touch), copied: a list reads it before its rows (see SandboxService::view). */
  std::map<std::string, store::TimePoint> pending_touches() const;
  /** False while the last write failed (the database is down or refusing): queued items may wait long. */
  bool writing() const;
  /**
   * Returns once everything queued before the call is written. Throws store::StoreUnavailable (naming the last
   * store error) when that did not happen within `wait`.
   */
  void flush(std::chrono::milliseconds wait = std::chrono::milliseconds(10'000));
  Stats stats() const;

 private:
  struct Pending {
    std::uint64_t seq;
    store::ExecutionRow row;
  };
  struct PendingTouch {
    std::uint64_t seq;
    store::TimePoint at;
  };
  void loop();
  void release_slot();

  store::Store& store_;
  const Options options_;
  mutable std::mutex mutex_;
  std::condition_variable work_;      // the writer waits here
  std::condition_variable progress_;  // reserve() and flush() wait here
  std::deque<Pending> records_;
  std::map<std::string, PendingTouch> touches_;
  std::map<std::string, PendingTouch> writing_touches_;  // taken by the writer, not yet known to be written
  std::size_t occupied_ = 0;                             // records queued, being written or reserved
  std::uint64_t enqueued_seq_ = 0;                       // the sequence number of the newest queued item
  std::uint64_t written_seq_ = 0;                        // every item with seq <= this is written
  std::uint64_t flush_wanted_ = 0;  // a flush() waits for this sequence: the writer skips its linger
  bool stopping_ = false;
  std::string last_error_;
  Stats stats_;
  std::thread writer_;  // last: started once the members above exist
};

}  // namespace berth::core
