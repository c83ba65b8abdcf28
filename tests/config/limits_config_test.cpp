// The [limits] table: per-owner quotas and create validation caps, and the cap on every duration key.
#include <catch2/catch.hpp>

#include "config/config.hpp"

using namespace berth::config;

namespace {
std::string error_of(const std::string& text) {
  try {
    parse(text, "t.toml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("[limits]: defaults, explicit values, and no duration that could overflow a time") {
  const std::string d = "[driver]\nname = \"fake\"\n";
  auto defaults = parse(d, "t.toml");
  CHECK(defaults.limits.max_sandboxes_per_owner == 100);
  CHECK(defaults.limits.create_rate_per_minute == 60);
  CHECK(defaults.limits.max_ttl == std::chrono::hours(24 * 365));
  auto set = parse(d + "[limits]\nmax_sandboxes_per_owner = 3\ncreate_rate_per_minute = 0\nmax_ttl = \"2h\"\n"
                       "max_labels = 5\nmax_env_value_bytes = 10\n",
                   "t.toml");
  CHECK(set.limits.max_sandboxes_per_owner == 3);
  CHECK(set.limits.create_rate_per_minute == 0);
  CHECK(set.limits.max_ttl == std::chrono::seconds(7200));
  CHECK(set.limits.max_labels == 5);
  CHECK(set.limits.max_env_value_bytes == 10);
  CHECK(error_of(d + "[limits]\nmax_labels = -1\n").find("limits.max_labels: must be between") != std::string::npos);
  CHECK(error_of(d + "[limits]\nmax_quota = 1\n").find("limits.max_quota: unknown key") != std::string::npos);
  CHECK(error_of(d + "[limits]\nmax_ttl = \"1h\"\n[profiles.a]\nttl = \"2h\"\n")
            .find("profiles.a.ttl: longer than [limits] max_ttl") != std::string::npos);
  // 10^11 days is 2.7e8 years: nanoseconds since 1970 would wrap. Every duration key is capped at 100 years.
  CHECK(error_of(d + "[profiles.a]\nidle_timeout = \"99999999999d\"\n").find("must be at most") != std::string::npos);
  CHECK(error_of(d + "[cleanup]\nidle_timeout = 9223372036\n").find("must be at most") != std::string::npos);
}
