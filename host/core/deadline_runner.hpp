// Runs one unit of background work (a cleanup pass's driver calls for one sandbox) with a deadline, so that a call
// stuck on one tenant's sandbox (an engine lock held by a slow download, a hung engine) does not delay the rest.
#pragma once

#include <chrono>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace berth::core {

/**
 * Each run() executes `work` on a thread of its own and waits at most `deadline` for it. Work that overruns is left
 * to finish alone and stays registered under its key: until it ends, run() refuses new work for that key (busy), so
 * one stuck sandbox holds at most one thread however many passes come. Thread-safe; the destructor waits for work
 * still running (it may block as long as that work does).
 */
class DeadlineRunner {
 public:
  enum class Outcome {
    done,       // the work finished within the deadline (its exception, if any, was rethrown by run())
    timed_out,  // the deadline passed; the work goes on in the background
    busy,       // earlier work for this key is still running: nothing was started
  };

  DeadlineRunner() = default;
  ~DeadlineRunner();
  DeadlineRunner(const DeadlineRunner&) = delete;
  DeadlineRunner& operator=(const DeadlineRunner&) = delete;

  /**
   * Runs `work` under `key`. `work` must own everything it uses (capture by value): it may outlive the caller's
   * frame. A deadline of zero or less runs it inline, without a deadline. Rethrows what `work` threw when it
   * finished in time.
   */
  Outcome run(const std::string& key, std::chrono::milliseconds deadline, std::function<void()> work);

  /** Keys whose work overran and is still running (for tests and logs). */
  std::size_t overrunning();

 private:
  struct Overrun {
    std::thread thread;
    std::future<void> done;
  };
  /** Joins finished overruns; caller holds mutex_. */
  void reap_locked();

  std::mutex mutex_;
  std::map<std::string, Overrun> overruns_;
};

}  // namespace berth::core
