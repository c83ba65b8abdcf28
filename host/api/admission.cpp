#include "api/admission.hpp"

#include <utility>

namespace berth::api {

Admission::Refusal Admission::enter() {
  std::unique_lock lock(mutex_);
  if (shut_down_) return Refusal::shutting_down;
  if (running_ < limits_.slots && waiting_ == 0) {
    ++running_;
    return Refusal::none;
  }
  if (waiting_ >= limits_.queue) return Refusal::queue_full;
  ++waiting_;
  bool admitted = freed_.wait_for(lock, limits_.queue_timeout, [&] { return shut_down_ || running_ < limits_.slots; });
  --waiting_;
  if (shut_down_) return Refusal::shutting_down;
  if (!admitted) return Refusal::queue_timeout;
  ++running_;
  return Refusal::none;
}

void Admission::leave() {
  {
    std::lock_guard lock(mutex_);
    --running_;
  }
  freed_.notify_one();
}

void Admission::shut_down() {
  {
    std::lock_guard lock(mutex_);
    shut_down_ = true;
  }
  freed_.notify_all();
}

std::pair<int, int> Admission::load() const {
  std::lock_guard lock(mutex_);
  return {running_, waiting_};
}

}  // namespace berth::api
