#include "core/background_queue.hpp"

namespace berth::core {

BackgroundQueue::BackgroundQueue() : worker_([this] { loop(); }) {}

BackgroundQueue::~BackgroundQueue() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    queued_.clear();
  }
  wake_.notify_all();
  worker_.join();
}

bool BackgroundQueue::post(const std::string& key, std::function<void()> work, TimePoint not_before) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || queued_.count(key)) return false;
    // "At once" is now: work that became due earlier goes first, so a stream of new keys cannot starve it.
    if (not_before == TimePoint{}) not_before = std::chrono::steady_clock::now();
    queued_.emplace(key, Item{std::move(work), not_before});
  }
  wake_.notify_one();
  return true;
}

void BackgroundQueue::loop() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [this] { return stopping_ || !queued_.empty(); });
    if (stopping_) return;
    // The earliest due item; a linear scan, as the queue holds one item per sandbox at most.
    auto next = queued_.begin();
    for (auto it = queued_.begin(); it != queued_.end(); ++it)
      if (it->second.not_before < next->second.not_before) next = it;
    if (next->second.not_before > std::chrono::steady_clock::now()) {
      // A copy: the wait releases the lock, and the item may be erased meanwhile (the destructor clears the queue);
      // wait_until reads its deadline again after each wake-up (ASan caught the reference).
      const TimePoint when = next->second.not_before;
      wake_.wait_until(lock, when);  // or a post (maybe due earlier) or the destructor
      continue;
    }
    std::function<void()> work = std::move(next->second.work);
    queued_.erase(next);
    lock.unlock();
    try {
      work();
    } catch (...) {  // documented: work must not throw; a stray exception must not end the worker
    }
    lock.lock();
  }
}

}  // namespace berth::core
