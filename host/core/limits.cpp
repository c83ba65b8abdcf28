#include "core/limits.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include <utf8.h>

#include "core/errors.hpp"

namespace berth::core {
namespace {

bool is_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

bool has_control(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

/** A printable rendering of a name for messages (the envelope makes it UTF-8 anyway). */
std::string shown(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 64)) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[(static_cast<unsigned char>(c) >> 4) & 0xf];
      out += kHex[c & 0xf];
    } else {
      out += c;
    }
  }
  return out;
}

[[noreturn]] void refuse(const std::string& field, const std::string& name_key, std::string_view name,
                         const std::string& why) {
  throw Error(ErrorCode::validation_error, field + " '" + shown(name) + "': " + why,
              {{"field", field}, {name_key, shown(name)}});
}

}  // namespace

void validate_labels(const std::map<std::string, std::string>& labels, const Limits& limits) {
  if (labels.size() > limits.max_labels) {
    throw Error(ErrorCode::validation_error,
                "at most " + std::to_string(limits.max_labels) + " labels, got " + std::to_string(labels.size()),
                {{"field", "labels"}, {"limit", std::to_string(limits.max_labels)}});
  }
  for (const auto& [k, v] : labels) {
    if (k.empty() || k.size() > limits.max_label_key_bytes) {
      refuse("labels", "key", k, "a label key has 1 to " + std::to_string(limits.max_label_key_bytes) + " bytes");
    }
    bool ok = is_alnum(k.front()) && std::all_of(k.begin(), k.end(), [](char c) {
                return is_alnum(c) || c == '.' || c == '_' || c == '-' || c == '/';
              });
    if (!ok) refuse("labels", "key", k, "a label key is [A-Za-z0-9] then [A-Za-z0-9._/-]");
    std::string lower(k.size(), '\0');
    std::transform(k.begin(), k.end(), lower.begin(), [](char c) { return static_cast<char>(std::tolower(c)); });
    if (lower.rfind("berth.", 0) == 0) refuse("labels", "key", k, "the prefix 'berth.' is reserved");
    if (v.size() > limits.max_label_value_bytes) {
      refuse("labels", "key", k,
             "a label value has at most " + std::to_string(limits.max_label_value_bytes) + " bytes");
    }
    if (has_control(v) || !utf8::is_valid(v.begin(), v.end())) {
      refuse("labels", "key", k, "a label value is UTF-8 without control characters");
    }
  }
}

void validate_env(const std::map<std::string, std::string>& env, const Limits& limits) {
  if (env.size() > limits.max_env) {
    throw Error(ErrorCode::validation_error,
                "at most " + std::to_string(limits.max_env) + " env entries, got " + std::to_string(env.size()),
                {{"field", "env"}, {"limit", std::to_string(limits.max_env)}});
  }
  for (const auto& [k, v] : env) {
    if (k.empty() || k.size() > limits.max_env_name_bytes) {
      refuse("env", "name", k, "an env name has 1 to " + std::to_string(limits.max_env_name_bytes) + " bytes");
    }
    bool ok = (k.front() == '_' || (is_alnum(k.front()) && !(k.front() >= '0' && k.front() <= '9'))) &&
              std::all_of(k.begin(), k.end(), [](char c) { return is_alnum(c) || c == '_'; });
    if (!ok) refuse("env", "name", k, "an env name is [A-Za-z_][A-Za-z0-9_]*");
    // PATH is the tenant's own business: every program the engine runs for berthd has an absolute path and a clean
    // environment (env -i). LD_* would load code into those programs' start-up; BERTH_* names berthd's own markers.
    if (k.rfind("LD_", 0) == 0 || k.rfind("BERTH_", 0) == 0) {
      refuse("env", "name", k, "LD_* and BERTH_* are reserved: the engine's own programs run with them");
    }
    if (v.size() > limits.max_env_value_bytes) {
      refuse("env", "name", k, "an env value has at most " + std::to_string(limits.max_env_value_bytes) + " bytes");
    }
    if (v.find('\0') != std::string::npos) refuse("env", "name", k, "an env value must not contain NUL");
  }
}

std::chrono::system_clock::time_point saturating_add(std::chrono::system_clock::time_point t, std::chrono::seconds d) {
  using TP = std::chrono::system_clock::time_point;
  using Rep = TP::duration::rep;
  // Work in the clock's own ticks, with the conversion of `d` itself clamped first.
  constexpr Rep kMaxSeconds = std::numeric_limits<Rep>::max() / TP::period::den * TP::period::num;
  Rep secs = std::clamp<Rep>(d.count(), -kMaxSeconds, kMaxSeconds);
  Rep ticks = std::chrono::duration_cast<TP::duration>(std::chrono::seconds(secs)).count();
  Rep base = t.time_since_epoch().count();
  Rep out;
  if (__builtin_add_overflow(base, ticks, &out)) {
    out = ticks > 0 ? std::numeric_limits<Rep>::max() : std::numeric_limits<Rep>::min();
  }
  return TP(TP::duration(out));
}

std::chrono::seconds CreateRateLimiter::take(const std::string& owner, std::chrono::steady_clock::time_point now) {
  if (per_minute_ <= 0) return std::chrono::seconds(0);
  const double burst = std::max(1, burst_);
  const double per_second = per_minute_ / 60.0;
  std::lock_guard lock(mutex_);
  // Forget owners whose bucket has refilled: the map holds only recent creators.
  for (auto it = buckets_.begin(); it != buckets_.end();) {
    double elapsed = std::chrono::duration<double>(now - it->second.at).count();
    if (it->first != owner && it->second.tokens + elapsed * per_second >= burst) {
      it = buckets_.erase(it);
    } else {
      ++it;
    }
  }
  auto [it, inserted] = buckets_.try_emplace(owner, Bucket{burst, now});
  Bucket& b = it->second;
  if (!inserted) {
    double elapsed = std::max(0.0, std::chrono::duration<double>(now - b.at).count());
    b.tokens = std::min(burst, b.tokens + elapsed * per_second);
    b.at = now;
  }
  if (b.tokens >= 1.0) {
    b.tokens -= 1.0;
    return std::chrono::seconds(0);
  }
  auto wait = static_cast<std::int64_t>(std::ceil((1.0 - b.tokens) / per_second));
  return std::chrono::seconds(std::max<std::int64_t>(1, wait));
}

}  // namespace berth::core
