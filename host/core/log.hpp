// Structured logging: every line is a stable event name plus key=value fields (or one JSON object per line).
// Grep for the event name to find where a line comes from.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace berth::log {

enum class Level { debug, info, warn, error };
enum class Format { text, json };

using Field = std::pair<std::string_view, std::string>;
using Fields = std::vector<Field>;

/** Configures the process-wide sink (stderr, or `file` when non-empty). Call once at start-up. */
void init(Format format, Level min_level, const std::string& file = {});
/** Level from "debug" / "info" / "warn" / "error"; throws std::invalid_argument otherwise. */
Level parse_level(std::string_view name);

/**
 * Writes one line. Thread-safe. Values are quoted when they contain spaces, quotes, '=', control bytes or non-ASCII;
 * inside quotes, control bytes and invalid UTF-8 are escaped (\n, \xNN), so one event is always one line.
 */
void write(Level level, std::string_view event, const Fields& fields);

inline void debug(std::string_view event, const Fields& fields = {}) {
  write(Level::debug, event, fields);
}
inline void info(std::string_view event, const Fields& fields = {}) {
  write(Level::info, event, fields);
}
inline void warn(std::string_view event, const Fields& fields = {}) {
  write(Level::warn, event, fields);
}
inline void error(std::string_view event, const Fields& fields = {}) {
  write(Level::error, event, fields);
}

/** Flushes the sink (before a deliberate _Exit). Thread-safe. */
void flush();

/** Formats a line without writing it (used by tests and by write). */
std::string format_line(Format format, std::string_view event, const Fields& fields);

}  // namespace berth::log
