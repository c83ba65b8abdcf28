// Per-tenant limits checked at the door: what a create or extend_ttl may store (validation) and how much one owner
// may hold and how fast (quotas). Plain data filled in by config/ ([limits]) and enforced by SandboxService.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "core/clock.hpp"

namespace berth::core {

/** Caps on what one request may store and on what one owner may hold. Defaults suit a shared host. */
struct Limits {
  std::size_t max_labels = 64;                      // labels per sandbox
  std::size_t max_label_key_bytes = 63;             // [A-Za-z0-9][A-Za-z0-9._/-]*, never "berth." (reserved)
  std::size_t max_label_value_bytes = 256;          // UTF-8, no control characters
  std::size_t max_env = 64;                         // env entries per sandbox
  std::size_t max_env_name_bytes = 128;             // [A-Za-z_][A-Za-z0-9_]*, never PATH, LD_* or BERTH_* (reserved)
  std::size_t max_env_value_bytes = 4096;           // no NUL
  std::chrono::seconds max_ttl{365ll * 24 * 3600};  // longest lifetime: ttl at create, and created_at..expires_at
  int max_sandboxes_per_owner = 100;                // live (not deleted) sandboxes; 0 = unlimited
  int create_rate_per_minute = 60;                  // sustained creates per owner; 0 = unlimited
  int create_burst = 30;                            // creates an owner may make at once before the rate applies
};

/**
 * Throws Error(validation_error) with details.field = "labels" (and details.key) unless every label fits `limits`:
 * count, key syntax and length, the reserved "berth." prefix, value length, UTF-8 and no control characters.
 */
void validate_labels(const std::map<std::string, std::string>& labels, const Limits& limits);

/**
 * Throws Error(validation_error) with details.field = "env" (and details.name) unless every entry fits `limits`:
 * count, POSIX name syntax and length, reserved names (PATH, LD_*, BERTH_*: the engine's own programs run with the
 * container environment), value length and no NUL.
 */
void validate_env(const std::map<std::string, std::string>& env, const Limits& limits);

/** `t + d`, clamped to the range of system_clock::time_point instead of overflowing. */
std::chrono::system_clock::time_point saturating_add(std::chrono::system_clock::time_point t, std::chrono::seconds d);

/**
 * A token bucket per owner for sandbox creates: `burst` tokens, refilled at `per_minute`. Thread-safe. Memory is one
 * entry per owner that created recently; entries whose bucket is full again are dropped on the next take().
 */
class CreateRateLimiter {
 public:
  CreateRateLimiter(int per_minute, int burst) : per_minute_(per_minute), burst_(burst) {}
  /**
   * Takes one token for `owner` at monotonic time `now`. Returns 0 s when taken, otherwise the whole seconds
   * (at least 1) until a token is available; nothing is taken then. Always 0 s when the rate is 0 (unlimited).
   */
  std::chrono::seconds take(const std::string& owner, std::chrono::steady_clock::time_point now);

 private:
  struct Bucket {
    double tokens = 0;
    std::chrono::steady_clock::time_point at;
  };
  int per_minute_;
  int burst_;
  std::mutex mutex_;
  std::map<std::string, Bucket> buckets_;
};

}  // namespace berth::core
