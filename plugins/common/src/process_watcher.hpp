// One thread per driver instance that turns "an agent connection became readable" into the host's on_ready
// notification of the process using it (driver.h rule 11): the host can wait for thousands of processes in one
// place, and the driver still starts no thread per process.
#pragma once

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include <berth/driver.h>

namespace berth::engine::compat {

/**
 * Watches fds for readability, one-shot: after a notification the fd stays quiet until rearm(). Thread-safe.
 * unwatch() returns only once no notification for that key runs or will run, so the caller may free the key's
 * context right after. Notifications run on the watcher's thread and must not call back into the watcher.
 * Errors: the constructor throws std::runtime_error when epoll or eventfd cannot be created.
 */
class ProcessWatcher {
 public:
  ProcessWatcher() {
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    wake_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (epfd_ < 0 || wake_ < 0) {
      close_fds();
      throw std::runtime_error("process watcher: epoll/eventfd failed");
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = nullptr;
    ::epoll_ctl(epfd_, EPOLL_CTL_ADD, wake_, &ev);
    thread_ = std::thread([this] { run(); });
  }
  ~ProcessWatcher() {
    stop_ = true;
    const std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_, &one, sizeof one);
    thread_.join();
    close_fds();
  }
  ProcessWatcher(const ProcessWatcher&) = delete;
  ProcessWatcher& operator=(const ProcessWatcher&) = delete;

  /** Starts watching `fd` for `key`: `notify(ctx)` runs once it is readable (then rearm() to hear of it again). */
  void watch(void* key, int fd, berth_process_ready_fn notify, void* ctx) {
    std::lock_guard lock(mutex_);
    entries_[key] = Entry{fd, notify, ctx};
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT;
    ev.data.ptr = key;
    ::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
  }
  /** Arms `key`'s fd again after a notification (level-triggered: data already waiting notifies at once). */
  void rearm(void* key) {
    std::lock_guard lock(mutex_);
    auto it = entries_.find(key);
    if (it == entries_.end()) return;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLONESHOT;
    ev.data.ptr = key;
    ::epoll_ctl(epfd_, EPOLL_CTL_MOD, it->second.fd, &ev);
  }
  /** Stops watching `key`; no notification for it runs after this returns. */
  void unwatch(void* key) {
    std::lock_guard lock(mutex_);
    auto it = entries_.find(key);
    if (it == entries_.end()) return;
    ::epoll_ctl(epfd_, EPOLL_CTL_DEL, it->second.fd, nullptr);
    entries_.erase(it);
  }

 private:
  struct Entry {
    int fd = -1;
    berth_process_ready_fn notify = nullptr;
    void* ctx = nullptr;
  };

  void run() {
    epoll_event events[64];
    while (!stop_) {
      const int n = ::epoll_wait(epfd_, events, 64, -1);
      for (int i = 0; i < n; ++i) {
        if (!events[i].data.ptr) continue;  // the wake-up eventfd
        std::lock_guard lock(mutex_);       // held while notifying: unwatch() waits for a running notification
        auto it = entries_.find(events[i].data.ptr);
        if (it != entries_.end() && it->second.notify) it->second.notify(it->second.ctx);
      }
    }
  }
  void close_fds() {
    if (epfd_ >= 0) ::close(epfd_);
    if (wake_ >= 0) ::close(wake_);
  }

  int epfd_ = -1, wake_ = -1;
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::unordered_map<void*, Entry> entries_;
  std::thread thread_;
};

}  // namespace berth::engine::compat
