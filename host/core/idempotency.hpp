// Idempotency-Key support for creating requests: the first request's response is stored (in the database) and
// replayed to every retry with the same key and body, per owner, for 24 hours.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "core/clock.hpp"
#include "core/store.hpp"

namespace berth::core {

struct StoredResponse {
  int status = 0;
  std::string body;
  bool replayed = false;  // true when this is the stored response of an earlier request
};

class IdempotencyRegistry {
 public:
  IdempotencyRegistry(store::Store& store, std::shared_ptr<const Clock> clock,
                      std::chrono::hours retention = std::chrono::hours(24));

  /** True if `key` matches [A-Za-z0-9_-]{1,128}. */
  static bool valid_key(const std::string& key);

  /**
   * Runs `fn` once per (owner, key): the first caller runs it and stores its response; concurrent and later
   * callers with the same request hash get that response; with a different hash, Error conflict (details
   * reason=idempotency_mismatch). If `fn` throws, nothing is stored and the key is free again.
   */
  StoredResponse run(const std::string& owner, const std::string& key, const std::string& request_hash,
                     const std::function<StoredResponse()>& fn);

  /** Drops records past retention; returns how many. */
  int purge();

 private:
  store::Store& store_;
  std::shared_ptr<const Clock> clock_;
  std::chrono::hours retention_;
};

}  // namespace berth::core
