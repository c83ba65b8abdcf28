// The harness itself: both tenants and the operator reach their berthd, and a tenant cannot see another's sandbox.
#include <catch2/catch.hpp>

#include "security/harness.hpp"

using namespace berth::test;
using namespace berth::test::security;

TEST_CASE("tenants are kept apart by their keys", "[smoke]") {
  Env env;
  auto id = env.create(env.alice());
  CHECK(env.alice().get(sandbox_path(id)).status == 200);
  CHECK(env.bob().get(sandbox_path(id)).status == 404);
  CHECK(env.anonymous().get(sandbox_path(id)).status == 401);
}
