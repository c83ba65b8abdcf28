// A mutex that is handed over in the order it was asked for: a Python context's cell lock, so that cells (and async
// cells, which take their place when they are started) run in the order their requests came in.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>

namespace berth::core {

/**
 * A first-come, first-served mutex. A caller takes a Ticket (its place in the queue) and waits on it, in pieces if
 * it has other things to check meanwhile, without losing its place; giving up leaves the queue. lock()/unlock()
 * make it BasicLockable for plain use (std::unique_lock). Thread-safe; must outlive its tickets. Not recursive.
 */
class FifoMutex {
 public:
  /** A place in the queue, then the lock once served (RAII: leaves the queue, or unlocks). Move-only. */
  class Ticket {
   public:
    Ticket(Ticket&& other) noexcept : owner_(other.owner_), id_(other.id_), holds_(other.holds_) {
      other.owner_ = nullptr;
    }
    Ticket& operator=(Ticket&&) = delete;
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;
    ~Ticket() { release(); }

    /** Waits up to `wait` for this ticket's turn; true once it holds the lock (at once if it already does). */
    bool wait(std::chrono::milliseconds wait) {
      if (holds_ || owner_ == nullptr) return holds_;
      std::unique_lock lock(owner_->m_);
      if (!owner_->cv_.wait_for(lock, wait, [&] { return !owner_->held_ && owner_->queue_.front() == id_; })) {
        return false;
      }
      owner_->held_ = true;
      owner_->queue_.pop_front();
      holds_ = true;
      return true;
    }
    bool holds() const { return holds_; }
    /** Unlocks (when served) or leaves the queue (when not yet). Idempotent. */
    void release() {
      if (owner_ == nullptr) return;
      {
        std::lock_guard lock(owner_->m_);
        if (holds_) {
          owner_->held_ = false;
        } else {
          for (auto it = owner_->queue_.begin(); it != owner_->queue_.end(); ++it) {
            if (*it == id_) {
              owner_->queue_.erase(it);
              break;
            }
          }
        }
      }
      owner_->cv_.notify_all();
      owner_ = nullptr;
      holds_ = false;
    }

   private:
    friend class FifoMutex;
    Ticket(FifoMutex& owner, std::uint64_t id) : owner_(&owner), id_(id) {}
    FifoMutex* owner_;
    std::uint64_t id_;
    bool holds_ = false;
  };

  /** Joins the queue now. */
  Ticket take() {
    std::lock_guard lock(m_);
    queue_.push_back(next_);
    return Ticket(*this, next_++);
  }

  /** Blocks until served (first come, first served). */
  void lock() {
    auto t = take();
    while (!t.wait(std::chrono::hours(1))) {
    }
    t.owner_ = nullptr;  // the lock stays held; unlock() releases it
  }
  void unlock() {
    {
      std::lock_guard lock(m_);
      held_ = false;
    }
    cv_.notify_all();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::uint64_t> queue_;  // waiting tickets, in the order taken
  std::uint64_t next_ = 0;
  bool held_ = false;
};

}  // namespace berth::core
