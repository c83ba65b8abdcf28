#include "settings.hpp"

#include <toml++/toml.h>

#include <cctype>
#include <cstdlib>
#include <limits>

namespace berth::cli {
namespace {

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

struct FileSettings {
  std::optional<std::string> url;
  std::optional<std::string> api_key;
};

FileSettings read_config_file(const std::filesystem::path& path) {
  FileSettings out;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return out;
  toml::table table;
  try {
    table = toml::parse_file(path.string());
  } catch (const toml::parse_error& e) {
    throw UsageError(path.string() + ": " + std::string(e.description()));
  }
  for (const auto& [key, value] : table) {
    std::string name(key.str());
    if (name != "url" && name != "api_key") {
      throw UsageError(path.string() + ": unknown key '" + name + "' (known: url, api_key)");
    }
    const auto* text = value.as_string();
    if (!text) throw UsageError(path.string() + ": '" + name + "' must be a string");
    (name == "url" ? out.url : out.api_key) = text->get();
  }
  return out;
}

}  // namespace

std::optional<std::filesystem::path> config_file_path() {
  if (auto xdg = env("XDG_CONFIG_HOME"); xdg && xdg->front() == '/') {
    return std::filesystem::path(*xdg) / "berth" / "config.toml";
  }
  if (auto home = env("HOME")) return std::filesystem::path(*home) / ".config" / "berth" / "config.toml";
  return std::nullopt;
}

Connection resolve_connection(const std::optional<std::string>& flag_url, const std::optional<std::string>& flag_key) {
  Connection c;
  std::optional<std::string> url = flag_url, key = flag_key;
  if (url) c.url_source = "flag";
  if (key) c.key_source = "flag";
  if (!url && (url = env("BERTH_URL"))) c.url_source = "env";
  if (!key && (key = env("BERTH_API_KEY"))) c.key_source = "env";
  if (!url || !key) {
    if (auto path = config_file_path()) {
      FileSettings file = read_config_file(*path);
      if (!url && (url = file.url)) c.url_source = "config";
      if (!key && (key = file.api_key)) c.key_source = "config";
    }
  }
  if (!url) {
    url = kDefaultUrl;
    c.url_source = "default";
  }
  if (!key) c.key_source = "none";
  c.url = *url;
  c.api_key = key.value_or("");
  return c;
}

std::int64_t parse_duration(const std::string& text) {
  auto bad = [&] {
    return UsageError("'" + text + "' is not a duration (examples: 90s, 30m, 1h, 2d, 1h30m, or seconds)");
  };
  if (text.empty()) throw bad();
  constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
  std::int64_t total = 0;
  std::size_t i = 0;
  while (i < text.size()) {
    if (!std::isdigit(static_cast<unsigned char>(text[i]))) throw bad();
    const std::size_t start = i;
    std::int64_t n = 0;
    for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
      if (n > (kMax - 9) / 10) throw bad();
      n = n * 10 + (text[i] - '0');
    }
    std::int64_t unit = 1;
    if (i < text.size()) {
      switch (text[i++]) {
        case 's':
          unit = 1;
          break;
        case 'm':
          unit = 60;
          break;
        case 'h':
          unit = 3600;
          break;
        case 'd':
          unit = 86400;
          break;
        default:
          throw bad();
      }
    } else if (start != 0) {
      throw bad();  // "1h30": a bare number only as the whole text
    }
    if (n > (kMax - total) / unit) throw bad();
    total += n * unit;
  }
  return total;
}

std::pair<std::string, std::string> split_assignment(const std::string& text, const std::string& flag) {
  auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0) throw UsageError(flag + " '" + text + "': expected NAME=VALUE");
  return {text.substr(0, eq), text.substr(eq + 1)};
}

}  // namespace berth::cli
