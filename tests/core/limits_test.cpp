// core/limits: the validation rules, saturating time arithmetic and the per-owner create rate limiter.
#include <catch2/catch.hpp>

#include <functional>
#include <limits>

#include "core/errors.hpp"
#include "core/limits.hpp"

using namespace berth::core;

namespace {
std::string field_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::validation_error);
    return e.details().count("field") ? e.details().at("field") : "?";
  }
  return "";
}
}  // namespace

TEST_CASE("labels and env: accepted and refused shapes") {
  Limits l;
  CHECK(field_of([&] { validate_labels({{"team", "a"}, {"x/y.z_w-1", "ü"}}, l); }).empty());
  CHECK(field_of([&] { validate_labels({{"a=b", "x"}}, l); }) == "labels");
  CHECK(field_of([&] { validate_labels({{std::string("a\0b", 3), "x"}}, l); }) == "labels");
  CHECK(field_of([&] { validate_labels({{"Berth.x", "x"}}, l); }) == "labels");
  CHECK(field_of([&] { validate_labels({{"-a", "x"}}, l); }) == "labels");
  CHECK(field_of([&] { validate_labels({{"k", "\xff"}}, l); }) == "labels");
  std::map<std::string, std::string> many;
  for (int i = 0; i <= 64; ++i)
    many["l" + std::to_string(i)] = "";
  CHECK(field_of([&] { validate_labels(many, l); }) == "labels");
  CHECK(field_of([&] { validate_env({{"GREETING", "hi"}, {"_X1", ""}}, l); }).empty());
  CHECK(field_of([&] { validate_env({{"PATH", "/nonexistent"}}, l); }).empty());
  CHECK(field_of([&] { validate_env({{"LD_PRELOAD", "x"}}, l); }) == "env");
  CHECK(field_of([&] { validate_env({{std::string("A\0B", 3), "x"}}, l); }) == "env");
  CHECK(field_of([&] { validate_env({{"A", std::string("x\0y", 3)}}, l); }) == "env");
  CHECK(field_of([&] { validate_env({{"9A", "x"}}, l); }) == "env");
}

TEST_CASE("saturating_add clamps instead of wrapping") {
  using TP = std::chrono::system_clock::time_point;
  TP now{std::chrono::seconds(1'800'000'000)};
  CHECK(saturating_add(now, std::chrono::seconds(60)) == now + std::chrono::seconds(60));
  // 240 years past 2027 is beyond what int64 nanoseconds hold (2262): the maximum, never a date in 1678.
  auto far = saturating_add(now, std::chrono::seconds(240ll * 365 * 24 * 3600));
  CHECK(far == TP::max());
  CHECK(saturating_add(now, std::chrono::seconds(std::numeric_limits<std::int64_t>::max())) == TP::max());
  CHECK(saturating_add(TP::max(), std::chrono::seconds(1)) == TP::max());
  CHECK(saturating_add(TP::min(), std::chrono::seconds(-1)) == TP::min());
  CHECK(saturating_add(now, std::chrono::seconds(std::numeric_limits<std::int64_t>::min())) < now);
}

TEST_CASE("create rate: a burst, then the rate, per owner") {
  CreateRateLimiter limiter(60, 3);  // one a second after three
  std::chrono::steady_clock::time_point t{std::chrono::seconds(1000)};
  for (int i = 0; i < 3; ++i)
    CHECK(limiter.take("alice", t).count() == 0);
  CHECK(limiter.take("alice", t).count() == 1);
  CHECK(limiter.take("bob", t).count() == 0);
  t += std::chrono::milliseconds(1000);
  CHECK(limiter.take("alice", t).count() == 0);
  CHECK(limiter.take("alice", t).count() == 1);
  CreateRateLimiter unlimited(0, 1);
  for (int i = 0; i < 1000; ++i)
    REQUIRE(unlimited.take("alice", t).count() == 0);
}
