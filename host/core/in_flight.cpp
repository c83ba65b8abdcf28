#include "core/in_flight.hpp"

namespace berth::core {

InFlightCalls::Guard::Guard(InFlightCalls& owner, std::string sandbox_id)
    : owner_(&owner), sandbox_id_(std::move(sandbox_id)), token_(std::make_unique<CancelToken>()) {}

InFlightCalls::Guard::Guard(Guard&& other) noexcept
    : owner_(other.owner_), sandbox_id_(std::move(other.sandbox_id_)), token_(std::move(other.token_)) {
  other.owner_ = nullptr;
}

InFlightCalls::Guard::~Guard() {
  if (owner_ != nullptr) owner_->leave(sandbox_id_, token_.get());
}

InFlightCalls::Guard InFlightCalls::enter(const std::string& sandbox_id, const std::string& tag) {
  Guard guard(*this, sandbox_id);
  std::lock_guard lock(mutex_);
  ++per_sandbox_[sandbox_id];
  tokens_.insert(guard.token_.get());
  if (!tag.empty()) tagged_[tag] = guard.token_.get();
  return guard;
}

bool InFlightCalls::cancel_tagged(const std::string& tag) {
  std::lock_guard lock(mutex_);
  auto it = tagged_.find(tag);
  if (it == tagged_.end()) return false;
  it->second->cancel();
  return true;
}

void InFlightCalls::leave(const std::string& sandbox_id, CancelToken* token) {
  std::lock_guard lock(mutex_);
  tokens_.erase(token);
  for (auto it = tagged_.begin(); it != tagged_.end(); ++it) {
    if (it->second == token) {
      tagged_.erase(it);
      break;
    }
  }
  auto it = per_sandbox_.find(sandbox_id);
  if (it != per_sandbox_.end() && --it->second <= 0) per_sandbox_.erase(it);
}

bool InFlightCalls::in_use(const std::string& sandbox_id) const {
  std::lock_guard lock(mutex_);
  return per_sandbox_.count(sandbox_id) != 0;
}

std::size_t InFlightCalls::count() const {
  std::lock_guard lock(mutex_);
  std::size_t n = 0;
  for (const auto& [id, calls] : per_sandbox_)
    n += static_cast<std::size_t>(calls);
  return n;
}

std::size_t InFlightCalls::cancel_all() {
  std::lock_guard lock(mutex_);
  for (CancelToken* token : tokens_)
    token->cancel();
  return tokens_.size();
}

}  // namespace berth::core
