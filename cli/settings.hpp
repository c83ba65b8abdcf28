// Where the CLI finds its server and API key, and how it reads durations. No HTTP here.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>

namespace berth::cli {

/** A mistake of the user (bad flag value, unreadable config file, missing local file): exit code 1. */
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/** The server URL when nothing else names one. */
inline constexpr const char* kDefaultUrl = "http://127.0.0.1:8080";

/** The server and key the CLI talks to, and where each came from ("flag", "env", "config", "default", "none"). */
struct Connection {
  std::string url;
  std::string api_key;  // empty = no Authorization header
  std::string url_source;
  std::string key_source;
};

/**
 * The config file: `$XDG_CONFIG_HOME/berth/config.toml` when XDG_CONFIG_HOME is set and absolute (XDG Base
 * Directory spec), else `$HOME/.config/berth/config.toml`; nullopt when neither variable is usable.
 */
std::optional<std::filesystem::path> config_file_path();

/**
 * Resolves the connection, first match wins: the flags (`--url`, `--api-key`), the environment (`BERTH_URL`,
 * `BERTH_API_KEY`; empty values count as unset), the config file (top-level keys `url` and `api_key`), then
 * kDefaultUrl and no key. The file is read only when flags and environment leave something open; then a missing
 * file is fine, and an unreadable or malformed one, or one with other keys or non-string values, throws UsageError
 * naming the file.
 */
Connection resolve_connection(const std::optional<std::string>& flag_url, const std::optional<std::string>& flag_key);

/**
 * Seconds in a duration: a sequence of <integer><unit> with units `s`, `m`, `h`, `d` (`90s`, `30m`, `1h`, `2d`,
 * `1h30m`), or a bare integer of seconds. Throws UsageError for anything else, or on overflow of int64.
 */
std::int64_t parse_duration(const std::string& text);

/** Splits `name=value` at the first '='; throws UsageError (naming `flag`) when there is no '=' or no name. */
std::pair<std::string, std::string> split_assignment(const std::string& text, const std::string& flag);

}  // namespace berth::cli
