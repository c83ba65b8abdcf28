#include "core/ids.hpp"

#include <cctype>
#include <random>

#include "core/errors.hpp"

namespace berth::core {

std::string new_id(std::string_view prefix) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id(prefix);
  id += '-';
  auto bits = rng();
  for (int i = 0; i < 12; ++i) {
    id += kHex[bits & 0xf];
    bits >>= 4;
  }
  return id;
}

bool is_valid_id(std::string_view id, std::string_view prefix) {
  if (id.size() != prefix.size() + 13 || id.substr(0, prefix.size()) != prefix || id[prefix.size()] != '-') {
    return false;
  }
  for (char c : id.substr(prefix.size() + 1)) {
    if (!(std::isdigit(static_cast<unsigned char>(c)) || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

std::string canonical_key(std::string_view key) {
  while (!key.empty() && std::isspace(static_cast<unsigned char>(key.front())))
    key.remove_prefix(1);
  while (!key.empty() && std::isspace(static_cast<unsigned char>(key.back())))
    key.remove_suffix(1);
  if (key.empty()) throw Error(ErrorCode::validation_error, "key must not be empty");
  if (key.size() > 256) throw Error(ErrorCode::validation_error, "key must be at most 256 bytes");
  for (char c : key) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      throw Error(ErrorCode::validation_error, "key must not contain control characters");
    }
  }
  // UUID spellings: strip urn:uuid:, braces and dashes; 32 hex digits then mean a UUID.
  std::string_view s = key;
  std::string lower_prefix;
  for (std::size_t i = 0; i < std::min<std::size_t>(9, s.size()); ++i) {
    lower_prefix += static_cast<char>(std::tolower(static_cast<unsigned char>(s[i])));
  }
  if (lower_prefix == "urn:uuid:") s.remove_prefix(9);
  if (s.size() >= 2 && s.front() == '{' && s.back() == '}') s = s.substr(1, s.size() - 2);
  std::string hex;
  bool uuid = true;
  for (char c : s) {
    if (c == '-') continue;
    if (!std::isxdigit(static_cast<unsigned char>(c))) {
      uuid = false;
      break;
    }
    hex += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  if (uuid && hex.size() == 32) {
    // Dashes are only accepted in the standard positions (or not at all).
    std::string dashed = hex.substr(0, 8) + "-" + hex.substr(8, 4) + "-" + hex.substr(12, 4) + "-" + hex.substr(16, 4) +
                         "-" + hex.substr(20);
    std::string given(s);
    for (auto& c : given)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (given == hex || given == dashed) return dashed;
  }
  return std::string(key);
}

}  // namespace berth::core
