// A keyed, coalescing queue of background work served by one thread of its own (the disk checks that follow execs
// and file writes), so that a request never waits for work it only triggers.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace berth::core {

/**
 * post(key, work, not_before) queues `work` to run no earlier than `not_before` (steady clock; the default: at once)
 * unless work for `key` is already queued (then the call is dropped: the queued work will see the newer state
 * anyway). One worker thread runs what is due, earliest `not_before` first ("at once" is the time of the post, so due
 * work runs in the order it became due); work for a key that is running may be queued again. `work` must not throw
 * (what it throws is swallowed) and must own what it uses beyond the queue's lifetime. Thread-safe. The destructor
 * drops what is still queued (due or not) and waits for the running work.
 */
class BackgroundQueue {
 public:
  BackgroundQueue();
  ~BackgroundQueue();
  BackgroundQueue(const BackgroundQueue&) = delete;
  BackgroundQueue& operator=(const BackgroundQueue&) = delete;

  using TimePoint = std::chrono::steady_clock::time_point;

  /** Returns false when work for `key` was already queued (nothing added) or the queue is stopping. */
  bool post(const std::string& key, std::function<void()> work, TimePoint not_before = {});

 private:
  void loop();

  std::mutex mutex_;
  std::condition_variable wake_;
  struct Item {
    std::function<void()> work;
    TimePoint not_before;
  };
  std::map<std::string, Item> queued_;
  bool stopping_ = false;
  std::thread worker_;  // last: started once the members above exist
};

}  // namespace berth::core
