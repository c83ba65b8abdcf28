#include <catch2/catch.hpp>

#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/paths.hpp"

using namespace berth::core;

TEST_CASE("ids are a prefix and 12 lowercase hex digits") {
  auto id = new_id("sandbox");
  CHECK(is_valid_id(id, "sandbox"));
  CHECK(id != new_id("sandbox"));
  CHECK_FALSE(is_valid_id("sandbox-XYZ", "sandbox"));
  CHECK_FALSE(is_valid_id("sandbox-0123456789AB", "sandbox"));
  CHECK_FALSE(is_valid_id("sess-0123456789ab", "sandbox"));
}

TEST_CASE("keys: UUID spellings share one canonical form, other keys are kept") {
  const std::string canon = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
  CHECK(canonical_key("3F2504E0-4F89-11D3-9A0C-0305E82C3301") == canon);
  CHECK(canonical_key("{3f2504e0-4f89-11d3-9a0c-0305e82c3301}") == canon);
  CHECK(canonical_key("urn:uuid:3f2504e0-4f89-11d3-9a0c-0305e82c3301") == canon);
  CHECK(canonical_key("3f2504e04f8911d39a0c0305e82c3301") == canon);
  CHECK(canonical_key("  chat-42 ") == "chat-42");
  CHECK(canonical_key("Chat-42") == "Chat-42");
  CHECK_THROWS_AS(canonical_key(""), Error);
  CHECK_THROWS_AS(canonical_key("a\nb"), Error);
}

TEST_CASE("workspace paths are normalised and confined") {
  CHECK(workspace_path("a/./b//c.txt", false) == "a/b/c.txt");
  CHECK(workspace_path(".", true) == ".");
  CHECK(workspace_path("", true) == ".");
  CHECK_THROWS_AS(workspace_path("", false), Error);
  CHECK_THROWS_AS(workspace_path("/etc/passwd", false), Error);
  CHECK_THROWS_AS(workspace_path("../x", false), Error);
  CHECK_THROWS_AS(workspace_path("a/../../x", false), Error);
  CHECK_THROWS_AS(workspace_path(std::string("a\0b", 3), false), Error);
}

TEST_CASE("workspace paths are bytes: every byte but NUL passes, limits are 255 per name and 4000 in all") {
  for (int b = 1; b < 256; ++b) {
    if (b == '/' || b == '.') continue;
    std::string name = "n" + std::string(1, static_cast<char>(b));
    CHECK(workspace_path("d/" + name, false) == "d/" + name);
  }
  CHECK(workspace_path("line\nbreak\x01\xff\x7f", false) == "line\nbreak\x01\xff\x7f");
  CHECK(workspace_path(std::string(255, 'x'), false) == std::string(255, 'x'));
  CHECK_THROWS_AS(workspace_path(std::string(256, 'x'), false), Error);
  std::string deep;
  while (deep.size() + 101 <= 4000)
    deep += std::string(100, 'd') + "/";
  deep += std::string(4000 - deep.size(), 'f');
  CHECK(workspace_path(deep, false) == deep);
  CHECK_THROWS_AS(workspace_path(deep + "g", false), Error);
}
