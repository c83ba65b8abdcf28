#include "core/idempotency.hpp"

#include <regex>
#include <thread>

#include "core/errors.hpp"

namespace berth::core {

IdempotencyRegistry::IdempotencyRegistry(store::Store& store, std::shared_ptr<const Clock> clock,
                                         std::chrono::hours retention)
    : store_(store), clock_(std::move(clock)), retention_(retention) {}

bool IdempotencyRegistry::valid_key(const std::string& key) {
  static const std::regex pattern("[A-Za-z0-9_-]{1,128}");
  return std::regex_match(key, pattern);
}

StoredResponse IdempotencyRegistry::run(const std::string& owner, const std::string& key,
                                        const std::string& request_hash, const std::function<StoredResponse()>& fn) {
  store::IdempotencyRow claim;
  claim.owner = owner;
  claim.key = key;
  claim.request_hash = request_hash;
  claim.created_at = clock_->now();
  // A concurrent duplicate waits for the first request to finish (up to ~30 s), then replays its response.
  for (int i = 0; i < 600; ++i) {
    auto existing = store_.claim_idempotency(claim);
    if (!existing) break;
    if (existing->created_at + retention_ <= clock_->now()) {
      store_.release_idempotency(owner, key);  // expired record: the key is new again
      continue;
    }
    if (existing->request_hash != request_hash) {
      throw Error(ErrorCode::conflict, "Idempotency-Key '" + key + "' was used with a different request body",
                  {{"reason", "idempotency_mismatch"}});
    }
    if (existing->status != 0) return {existing->status, existing->body, true};
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (i == 599) {
      throw Error(ErrorCode::conflict, "a request with Idempotency-Key '" + key + "' is still in progress");
    }
  }
  StoredResponse response;
  try {
    response = fn();
  } catch (...) {
    store_.release_idempotency(owner, key);
    throw;
  }
  store_.complete_idempotency(owner, key, response.status, response.body);
  return response;
}

int IdempotencyRegistry::purge() {
  return store_.purge_idempotency(clock_->now() - retention_);
}

}  // namespace berth::core
