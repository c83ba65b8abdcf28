#include "core/cleanup_task.hpp"

#include "core/log.hpp"

namespace berth::core {

CleanupTask::CleanupTask(SandboxService& service, std::chrono::milliseconds interval)
    : service_(service), interval_(interval) {}

CleanupTask::~CleanupTask() {
  stop();
}

void CleanupTask::start() {
  std::lock_guard lock(mutex_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { loop(); });
}

void CleanupTask::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void CleanupTask::loop() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    lock.unlock();
    try {
      service_.run_cleanup();
    } catch (const std::exception& e) {
      // A failing pass (database down, ...) must not end the task: log and try again next interval.
      log::error("cleanup.failed", {{"error", e.what()}});
    }
    lock.lock();
    wake_.wait_for(lock, interval_, [this] { return stopping_; });
  }
}

}  // namespace berth::core
