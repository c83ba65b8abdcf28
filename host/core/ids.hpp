// Object ids: a prefix and 12 random lowercase hex digits (sandbox-, sess-, ws-, exec-).
#pragma once

#include <string>
#include <string_view>

namespace berth::core {

/** A new random id "<prefix>-<12 hex>". Thread-safe. */
std::string new_id(std::string_view prefix);
/** True if `id` is "<prefix>-" followed by exactly 12 lowercase hex digits. */
bool is_valid_id(std::string_view id, std::string_view prefix);

/**
 * Canonical form of a client key (e.g. a chat id): trimmed; a UUID in any accepted spelling ({...}, urn:uuid:,
 * upper case, without dashes) becomes lowercase 8-4-4-4-12; anything else is kept as given. Throws Error
 * validation_error for empty keys, keys over 256 bytes or keys with control characters.
 */
std::string canonical_key(std::string_view key);

}  // namespace berth::core
