// Runs SandboxService::run_cleanup every interval on its own thread until stopped.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "core/sandbox_service.hpp"

namespace berth::core {

class CleanupTask {
 public:
  CleanupTask(SandboxService& service, std::chrono::milliseconds interval);
  ~CleanupTask();
  CleanupTask(const CleanupTask&) = delete;
  CleanupTask& operator=(const CleanupTask&) = delete;

  /** Starts the thread; the first pass runs right away (it adopts or cleans what a previous run left). */
  void start();
  /** Stops the thread, waiting for a running pass to finish. Idempotent. */
  void stop();

 private:
  void loop();

  SandboxService& service_;
  std::chrono::milliseconds interval_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace berth::core
