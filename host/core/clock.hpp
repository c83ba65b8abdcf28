// Time as the core sees it: injected everywhere so that tests can drive expiry and timeouts deterministically.
#pragma once

#include <chrono>
#include <mutex>

namespace berth::core {

/** Wall-clock time (for expiry and records) and a monotonic clock (for durations and deadlines). Thread-safe. */
class Clock {
 public:
  virtual ~Clock() = default;
  virtual std::chrono::system_clock::time_point now() const = 0;
  virtual std::chrono::steady_clock::time_point monotonic() const = 0;
};

/** The real clocks. */
class SystemClock final : public Clock {
 public:
  std::chrono::system_clock::time_point now() const override { return std::chrono::system_clock::now(); }
  std::chrono::steady_clock::time_point monotonic() const override { return std::chrono::steady_clock::now(); }
};

/** A clock that only moves when told to; both readings advance together. For tests. */
class FakeClock final : public Clock {
 public:
  explicit FakeClock(std::chrono::system_clock::time_point start =
                         std::chrono::system_clock::time_point{std::chrono::seconds{1'800'000'000}})
      : wall_(start) {}

  std::chrono::system_clock::time_point now() const override {
    std::lock_guard lock(mutex_);
    return wall_;
  }
  std::chrono::steady_clock::time_point monotonic() const override {
    std::lock_guard lock(mutex_);
    return mono_;
  }
  void advance(std::chrono::milliseconds by) {
    std::lock_guard lock(mutex_);
    wall_ += by;
    mono_ += by;
  }

 private:
  mutable std::mutex mutex_;
  std::chrono::system_clock::time_point wall_;
  std::chrono::steady_clock::time_point mono_{};
};

}  // namespace berth::core
