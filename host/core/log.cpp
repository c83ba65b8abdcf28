#include "core/log.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <Poco/JSON/Object.h>
#include <utf8.h>

#include <atomic>
#include <iterator>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>

namespace berth::log {
namespace {

std::atomic<Format> g_format{Format::text};
std::shared_ptr<spdlog::logger> g_logger;
std::once_flag g_default_once;

std::shared_ptr<spdlog::logger> logger() {
  std::call_once(g_default_once, [] {
    auto lg = std::make_shared<spdlog::logger>("berth", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    lg->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %v", spdlog::pattern_time_type::utc);
    lg->set_level(spdlog::level::info);
    std::atomic_store(&g_logger, lg);
  });
  return std::atomic_load(&g_logger);
}

spdlog::level::level_enum to_spdlog(Level level) {
  switch (level) {
    case Level::debug:
      return spdlog::level::debug;
    case Level::info:
      return spdlog::level::info;
    case Level::warn:
      return spdlog::level::warn;
    case Level::error:
      return spdlog::level::err;
  }
  return spdlog::level::info;
}

/** True for bytes that would break a line or a terminal: C0 controls and DEL. */
bool is_control(unsigned char c) {
  return c < 0x20 || c == 0x7f;
}

bool needs_quotes(std::string_view v) {
  if (v.empty()) return true;
  for (char c : v) {
    auto u = static_cast<unsigned char>(c);
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || is_control(u) || u >= 0x80) return true;
  }
  return false;
}

void append_hex_escape(std::string& out, unsigned char c) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += "\\x";
  out += kHex[c >> 4];
  out += kHex[c & 0xf];
}

/**
 * Appends valid UTF-8 text with quotes, backslashes and control characters escaped: C0, DEL, and the C1 controls
 * U+0080-U+009F (UTF-8 C2 80-C2 9F; a terminal may take U+009B as CSI) as \xc2\xNN.
 */
void append_escaped_valid(std::string& out, std::string_view v) {
  for (std::size_t i = 0; i < v.size(); ++i) {
    char c = v[i];
    if (static_cast<unsigned char>(c) == 0xc2 && i + 1 < v.size() && static_cast<unsigned char>(v[i + 1]) <= 0x9f) {
      append_hex_escape(out, 0xc2);
      append_hex_escape(out, static_cast<unsigned char>(v[++i]));
      continue;
    }
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (is_control(static_cast<unsigned char>(c))) {
          append_hex_escape(out, static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
}

/**
 * A quoted value that is always one line of valid UTF-8: control bytes become \n, \t, \r or \xNN, and every byte that
 * is not part of valid UTF-8 (utfcpp finds them) becomes \xNN, so the raw bytes stay recoverable from the log.
 */
void append_quoted(std::string& out, std::string_view v) {
  out += '"';
  auto it = v.begin();
  while (it != v.end()) {
    auto bad = utf8::find_invalid(it, v.end());
    append_escaped_valid(out, std::string_view(&*it, static_cast<std::size_t>(bad - it)));
    if (bad == v.end()) break;
    append_hex_escape(out, static_cast<unsigned char>(*bad));
    it = bad + 1;
  }
  out += '"';
}

/** Valid UTF-8 for JSON lines: invalid sequences become U+FFFD (Poco's stringifier escapes control bytes). */
std::string utf8_for_json(std::string_view v) {
  if (utf8::is_valid(v.begin(), v.end())) return std::string(v);
  std::string out;
  utf8::replace_invalid(v.begin(), v.end(), std::back_inserter(out), 0xFFFDu);
  return out;
}

}  // namespace

void init(Format format, Level min_level, const std::string& file) {
  g_format.store(format);
  std::shared_ptr<spdlog::sinks::sink> sink;
  if (file.empty()) {
    sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  } else {
    sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(file);
  }
  auto fresh = std::make_shared<spdlog::logger>("berth", sink);
  // JSON lines carry their own timestamp and level, so the pattern is the message only.
  fresh->set_pattern(format == Format::json ? "%v" : "%Y-%m-%dT%H:%M:%S.%eZ %l %v", spdlog::pattern_time_type::utc);
  fresh->set_level(to_spdlog(min_level));
  fresh->flush_on(spdlog::level::info);
  logger();  // make sure the default is never installed after this one
  std::atomic_store(&g_logger, fresh);
}

Level parse_level(std::string_view name) {
  if (name == "debug") return Level::debug;
  if (name == "info") return Level::info;
  if (name == "warn") return Level::warn;
  if (name == "error") return Level::error;
  throw std::invalid_argument("unknown log level '" + std::string(name) + "' (debug, info, warn, error)");
}

std::string format_line(Format format, std::string_view event, const Fields& fields) {
  if (format == Format::json) {
    Poco::JSON::Object obj;
    obj.setEscapeUnicode(true);  // ASCII-only lines: C1 controls (U+0080-U+009F) and all non-ASCII as \uXXXX
    obj.set("event", utf8_for_json(event));
    for (const auto& [k, v] : fields)
      obj.set(utf8_for_json(k), utf8_for_json(v));
    std::ostringstream os;
    obj.stringify(os);
    return os.str();
  }
  std::string out(event);
  for (const auto& [k, v] : fields) {
    out += ' ';
    out += k;
    out += '=';
    if (needs_quotes(v)) {
      append_quoted(out, v);
    } else {
      out += v;
    }
  }
  return out;
}

void flush() {
  logger()->flush();
}

void write(Level level, std::string_view event, const Fields& fields) {
  auto lg = logger();
  auto lvl = to_spdlog(level);
  if (!lg->should_log(lvl)) return;
  if (g_format.load() == Format::json) {
    Fields with_meta = fields;
    with_meta.emplace_back("level", spdlog::level::to_string_view(lvl).data());
    auto now = std::chrono::system_clock::now();
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
    with_meta.emplace_back("ts_ms", std::to_string(ms));
    lg->log(lvl, format_line(Format::json, event, with_meta));
  } else {
    lg->log(lvl, format_line(Format::text, event, fields));
  }
}

}  // namespace berth::log
