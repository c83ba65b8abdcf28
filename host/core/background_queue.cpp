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

bool BackgroundQueue::post(const std::string& key, std::function<void()> work) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ || queued_.count(key)) return false;
    queued_.emplace(key, std::move(work));
  }
  wake_.notify_one();
  return true;
}

void BackgroundQueue::loop() {
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [this] { return stopping_ || !queued_.empty(); });
    if (stopping_) return;
    auto next = queued_.begin();
    std::function<void()> work = std::move(next->second);
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
