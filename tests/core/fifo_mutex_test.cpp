// FifoMutex (core/fifo_mutex.hpp): the cell lock of a Python context hands over in the order it was asked for, a
// ticket keeps its place across partial waits, and a ticket given up (timeout, cancel) leaves the queue.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "core/fifo_mutex.hpp"

using berth::core::FifoMutex;
using namespace std::chrono_literals;

TEST_CASE("fifo mutex: waiters are served in the order they took their tickets", "[fifo]") {
  FifoMutex m;
  auto holder = m.take();
  REQUIRE(holder.wait(0ms));
  std::vector<FifoMutex::Ticket> tickets;
  for (int i = 0; i < 8; ++i)
    tickets.push_back(m.take());
  std::mutex order_mutex;
  std::vector<int> order;
  std::vector<std::thread> threads;
  // Threads start in reverse order and each waits in short pieces: the order of the tickets still decides.
  for (int i = 7; i >= 0; --i) {
    threads.emplace_back([&, i] {
      auto& t = tickets[static_cast<std::size_t>(i)];
      while (!t.wait(5ms)) {
      }
      {
        std::lock_guard lock(order_mutex);
        order.push_back(i);
      }
      t.release();
    });
  }
  std::this_thread::sleep_for(50ms);
  holder.release();
  for (auto& t : threads)
    t.join();
  CHECK(order == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7});
}

TEST_CASE("fifo mutex: a ticket given up leaves the queue, and lock and unlock work as a plain mutex", "[fifo]") {
  FifoMutex m;
  auto a = m.take();
  REQUIRE(a.wait(0ms));
  auto b = m.take();
  auto c = m.take();
  CHECK_FALSE(b.wait(10ms));  // a holds it
  CHECK_FALSE(b.holds());
  b.release();  // gave up (its caller timed out): c is next
  a.release();
  CHECK(c.wait(1s));
  std::atomic<bool> locked{false};
  std::thread t([&] {
    std::lock_guard lock(m);  // BasicLockable: queues behind c
    locked = true;
  });
  std::this_thread::sleep_for(20ms);
  CHECK_FALSE(locked.load());
  c.release();
  t.join();
  CHECK(locked.load());
  {
    std::lock_guard lock(m);  // free again after the guard above
  }
  FifoMutex::Ticket moved = m.take();
  FifoMutex::Ticket to(std::move(moved));
  CHECK(to.wait(1s));  // the moved-from ticket no longer owns the place
}
