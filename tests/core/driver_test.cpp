// core/driver.hpp helpers that need no driver.
#include "core/driver.hpp"

#include <catch2/catch.hpp>

using berth::core::transport_of;

TEST_CASE("transport_of names the endpoint's scheme and keeps label values bounded", "[driver]") {
  CHECK(transport_of("agent:unix:/run/berth/agent/berth-sess-1/agent.sock") == "agent");
  CHECK(transport_of("engine-exec:0123abcd") == "engine-exec");
  CHECK(transport_of("in-process:h1") == "in-process");
  CHECK(transport_of("ssh+tcp:host:22") == "ssh+tcp");
  CHECK_FALSE(transport_of(""));
  CHECK_FALSE(transport_of("no-scheme-at-all"));
  CHECK_FALSE(transport_of(":address-without-scheme"));
  CHECK(transport_of("Agent:x") == "other");                    // upper case is not a scheme berthd reports
  CHECK(transport_of("a\"gent:x") == "other");                  // nothing that could break a label or JSON key
  CHECK(transport_of(std::string(33, 'a') + ":x") == "other");  // at most 32 characters
  CHECK(transport_of(std::string(32, 'a') + ":x") == std::string(32, 'a'));
}
