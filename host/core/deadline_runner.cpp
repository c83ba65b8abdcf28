#include "core/deadline_runner.hpp"

#include <memory>

namespace berth::core {

DeadlineRunner::~DeadlineRunner() {
  std::lock_guard lock(mutex_);
  for (auto& [key, overrun] : overruns_) {
    if (overrun.thread.joinable()) overrun.thread.join();
  }
}

void DeadlineRunner::reap_locked() {
  for (auto it = overruns_.begin(); it != overruns_.end();) {
    if (it->second.done.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
      it->second.thread.join();
      it = overruns_.erase(it);
    } else {
      ++it;
    }
  }
}

std::size_t DeadlineRunner::overrunning() {
  std::lock_guard lock(mutex_);
  reap_locked();
  return overruns_.size();
}

DeadlineRunner::Outcome DeadlineRunner::run(const std::string& key, std::chrono::milliseconds deadline,
                                            std::function<void()> work) {
  {
    std::lock_guard lock(mutex_);
    reap_locked();
    if (overruns_.count(key)) return Outcome::busy;
  }
  if (deadline.count() <= 0) {
    work();
    return Outcome::done;
  }
  std::promise<void> promise;
  std::future<void> done = promise.get_future();
  std::thread thread([work = std::move(work), promise = std::move(promise)]() mutable {
    try {
      work();
      promise.set_value();
    } catch (...) {
      promise.set_exception(std::current_exception());
    }
  });
  if (done.wait_for(deadline) == std::future_status::ready) {
    thread.join();
    done.get();  // rethrows
    return Outcome::done;
  }
  std::lock_guard lock(mutex_);
  overruns_[key] = Overrun{std::move(thread), std::move(done)};
  return Outcome::timed_out;
}

}  // namespace berth::core
