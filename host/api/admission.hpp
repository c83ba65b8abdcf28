// The admission stage in front of heavy routes (exec, files, start): at most `slots` run at once, up to `queue` more
// wait their turn (for at most `queue_timeout`), and only beyond that is a request refused with 503 server_busy.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>

namespace berth::api {

/** Capacity knobs, from [server] work_slots / work_queue / work_queue_timeout. */
struct AdmissionLimits {
  int slots = 64;                                    // heavy requests running at once
  int queue = 512;                                   // heavy requests waiting for a slot
  std::chrono::milliseconds queue_timeout{120'000};  // longest wait for a slot
};

/**
 * A counting gate with a bounded wait queue. Thread-safe: every method may be called from any server thread.
 * Waiters are woken in no particular order (a condition variable), which is fair enough for equal-cost requests.
 */
class Admission {
 public:
  explicit Admission(AdmissionLimits limits) : limits_(limits) {}

  /** Why enter() did not admit. */
  enum class Refusal { none, queue_full, queue_timeout, shutting_down };

  /**
   * Takes a slot, waiting in the queue when all are taken. Returns Refusal::none once admitted (the caller must then
   * call leave() exactly once), or why it was refused (nothing to release).
   */
  Refusal enter();
  /** Releases a slot taken by enter() and wakes one waiter. */
  void leave();
  /** Wakes every waiter (they get Refusal::shutting_down) and refuses every later enter(). Idempotent. */
  void shut_down();

  const AdmissionLimits& limits() const { return limits_; }
  /** Snapshot of {running, waiting}; for logs and tests. */
  std::pair<int, int> load() const;

 private:
  AdmissionLimits limits_;
  mutable std::mutex mutex_;
  std::condition_variable freed_;
  int running_ = 0;
  int waiting_ = 0;
  bool shut_down_ = false;
};

/** RAII slot: leaves the admission when destroyed, if it entered. */
class AdmissionSlot {
 public:
  AdmissionSlot() = default;
  explicit AdmissionSlot(Admission& a) : admission_(&a) {}
  AdmissionSlot(const AdmissionSlot&) = delete;
  AdmissionSlot& operator=(const AdmissionSlot&) = delete;
  ~AdmissionSlot() {
    if (admission_) admission_->leave();
  }

 private:
  Admission* admission_ = nullptr;
};

}  // namespace berth::api
