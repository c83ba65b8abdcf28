// BackgroundQueue: keyed coalescing, work held until its not_before, due work first, and a destructor that drops
// what is not due instead of waiting for it.
#include <catch2/catch.hpp>

#include <atomic>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/background_queue.hpp"

using namespace berth;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

TEST_CASE("background queue: work runs no earlier than its not_before, and due work goes first") {
  std::mutex mutex;
  std::vector<std::string> order;
  std::promise<void> both;
  auto record = [&](const std::string& what) {
    std::lock_guard lock(mutex);
    order.push_back(what);
    if (order.size() == 2) both.set_value();
  };
  core::BackgroundQueue queue;
  const auto later = Clock::now() + 300ms;
  Clock::time_point ran_late{};
  REQUIRE(queue.post(
      "a", [&] { ran_late = Clock::now(), record("late"); }, later));
  REQUIRE(queue.post("b", [&] { record("now"); }));  // posted after, due at once: runs first
  both.get_future().wait();
  CHECK(order == std::vector<std::string>{"now", "late"});
  CHECK(ran_late >= later);
}

TEST_CASE("background queue: a key already queued is dropped, and may be queued again once it ran") {
  core::BackgroundQueue queue;
  std::atomic<int> runs{0};
  std::promise<void> first;
  REQUIRE(queue.post(
      "k", [&] { ++runs, first.set_value(); }, Clock::now() + 100ms));
  CHECK_FALSE(queue.post("k", [&] { runs += 100; }));  // dropped: the queued one will see the newer state
  first.get_future().wait();
  std::promise<void> second;
  // Queued again once taken off the queue (posting may race the end of the first run: retry until accepted).
  while (!queue.post("k", [&] { ++runs, second.set_value(); }))
    std::this_thread::sleep_for(1ms);
  second.get_future().wait();
  CHECK(runs.load() == 2);
}

TEST_CASE("background queue: the destructor drops work that is not due instead of waiting for it") {
  std::atomic<bool> ran{false};
  {
    core::BackgroundQueue queue;
    REQUIRE(queue.post(
        "k", [&] { ran = true; }, Clock::now() + std::chrono::hours(1)));
  }  // returns at once (a wait for the hour would time the test out)
  CHECK_FALSE(ran.load());
}
