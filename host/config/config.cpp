#include "config/config.hpp"

#include "core/errors.hpp"
#include "store/store.hpp"

#include <Poco/Dynamic/Var.h>
#include <Poco/Exception.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/JSON/Stringifier.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>

namespace berth::config {
namespace {

std::string where(const std::string& source, const toml::node& node) {
  const auto& b = node.source().begin;
  if (b.line == 0) return source;  // a table built from JSON (profile_from_json) has no positions
  return source + ":" + std::to_string(b.line) + ":" + std::to_string(b.column);
}

/** Reads one TOML table, remembering which keys were used so that leftovers can be reported as unknown. */
/** The longest duration any key accepts. */
constexpr std::chrono::seconds kMaxDuration{100ll * 365 * 24 * 3600};

class TableReader {
 public:
  TableReader(const toml::table& table, std::string prefix, const std::string& source)
      : table_(table), prefix_(std::move(prefix)), source_(source) {}

  [[noreturn]] void fail(const toml::node& node, const std::string& key, const std::string& reason) const {
    throw ConfigError(where(source_, node) + ": " + qualified(key) + ": " + reason, key);
  }

  std::string qualified(const std::string& key) const { return prefix_.empty() ? key : prefix_ + "." + key; }

  const toml::node* get(const std::string& key) {
    used_.insert(key);
    return table_.get(key);
  }

  void string(const std::string& key, std::string& out) {
    if (auto* n = get(key)) {
      if (!n->is_string()) fail(*n, key, "expected a string");
      out = n->as_string()->get();
    }
  }

  void boolean(const std::string& key, bool& out) {
    if (auto* n = get(key)) {
      if (!n->is_boolean()) fail(*n, key, "expected true or false");
      out = n->as_boolean()->get();
    }
  }

  template <typename Int>
  void integer(const std::string& key, Int& out, std::int64_t min, std::int64_t max) {
    if (auto* n = get(key)) {
      if (!n->is_integer()) fail(*n, key, "expected an integer");
      auto v = n->as_integer()->get();
      if (v < min || v > max) {
        fail(*n, key, "must be between " + std::to_string(min) + " and " + std::to_string(max));
      }
      out = static_cast<Int>(v);
    }
  }

  void number(const std::string& key, double& out, double min, double max) {
    if (auto* n = get(key)) {
      double v = 0;
      if (n->is_integer()) {
        v = static_cast<double>(n->as_integer()->get());
      } else if (n->is_floating_point()) {
        v = n->as_floating_point()->get();
      } else {
        fail(*n, key, "expected a number");
      }
      if (!(v >= min && v <= max)) fail(*n, key, "must be between " + fmt(min) + " and " + fmt(max));
      out = v;
    }
  }

  /** Durations are "30s"/"5m"/"2h"/"1d" strings or integer seconds. */
  bool duration(const std::string& key, std::chrono::seconds& out, std::chrono::seconds min) {
    if (auto* n = get(key)) {
      try {
        if (n->is_integer()) {
          out = std::chrono::seconds(n->as_integer()->get());
        } else if (n->is_string()) {
          out = parse_duration(n->as_string()->get());
        } else {
          fail(*n, key, "expected a duration such as \"30s\", \"5m\" or an integer of seconds");
        }
      } catch (const std::invalid_argument& e) {
        fail(*n, key, e.what());
      }
      if (out < min) fail(*n, key, "must be at least " + std::to_string(min.count()) + "s");
      // Times are kept as nanoseconds since 1970 (good until 2262): no duration may push one past that.
      if (out > kMaxDuration)
        fail(*n, key, "must be at most " + std::to_string(kMaxDuration.count()) + "s (100 years)");
      return true;
    }
    return false;
  }

  void size(const std::string& key, std::uint64_t& out, std::uint64_t min) {
    if (auto* n = get(key)) {
      try {
        if (n->is_integer()) {
          if (n->as_integer()->get() < 0) fail(*n, key, "must not be negative");
          out = static_cast<std::uint64_t>(n->as_integer()->get());
        } else if (n->is_string()) {
          out = parse_size(n->as_string()->get());
        } else {
          fail(*n, key, "expected a size such as \"512MiB\" or an integer of bytes");
        }
      } catch (const std::invalid_argument& e) {
        fail(*n, key, e.what());
      }
      if (out < min) fail(*n, key, "must be at least " + std::to_string(min) + " bytes");
    }
  }

  const toml::table* table(const std::string& key) {
    if (auto* n = get(key)) {
      if (!n->is_table()) fail(*n, key, "expected a table");
      return n->as_table();
    }
    return nullptr;
  }

  std::map<std::string, std::string> string_map(const std::string& key) {
    std::map<std::string, std::string> out;
    if (const auto* t = table(key)) {
      for (auto&& [k, v] : *t) {
        if (!v.is_string()) fail(v, key + "." + std::string(k.str()), "expected a string");
        out[std::string(k.str())] = v.as_string()->get();
      }
    }
    return out;
  }

  /** Every key that no reader asked for is an error. */
  void reject_unknown() const {
    for (auto&& [k, v] : table_) {
      std::string key(k.str());
      if (!used_.count(key)) fail(v, key, "unknown key");
    }
  }

 private:
  static std::string fmt(double v) {
    std::ostringstream os;
    os << v;
    return os.str();
  }

  const toml::table& table_;
  std::string prefix_;
  const std::string& source_;
  std::set<std::string> used_;
};

void read_server(TableReader r, ServerConfig& s) {
  std::string listen;
  r.string("listen", listen);
  if (!listen.empty()) {
    auto colon = listen.rfind(':');
    const auto* node = r.get("listen");
    if (colon == std::string::npos) r.fail(*node, "listen", "expected host:port, e.g. \"127.0.0.1:8080\"");
    s.host = listen.substr(0, colon);
    try {
      std::size_t used = 0;
      int port = std::stoi(listen.substr(colon + 1), &used);
      if (used != listen.size() - colon - 1 || port < 0 || port > 65535) throw std::invalid_argument("port");
      s.port = static_cast<std::uint16_t>(port);
    } catch (const std::exception&) {
      r.fail(*node, "listen", "port must be an integer between 0 and 65535");
    }
    if (s.host.empty()) s.host = "0.0.0.0";
  }
  r.integer("threads", s.threads, 2, 16384);
  r.integer("queue", s.queue, 1, 65536);
  r.boolean("exec_via_processes", s.exec_via_processes);
  r.integer("max_contexts_per_sandbox", s.max_contexts_per_sandbox, 1, 256);
  // An open terminal holds a server thread for as long as its WebSocket is open, so terminals count in the thread
  // budget below like work slots. Left out: 64, or fewer when the work keys leave fewer threads.
  const bool terminals_given = r.get("max_terminals") != nullptr;
  if (terminals_given) r.integer("max_terminals", s.max_terminals, 0, std::max(0, s.threads / 2));
  r.integer("max_terminals_per_sandbox", s.max_terminals_per_sandbox, 1, 1024);
  r.integer("max_terminals_per_owner", s.max_terminals_per_owner, 0, 16384);
  r.integer("max_async_per_owner", s.max_async_per_owner, 0, 256);
  if (const auto* n = r.get("terminal_origins")) {
    if (!n->is_array()) r.fail(*n, "terminal_origins", "expected an array such as [\"https://console.example.com\"]");
    for (const auto& item : *n->as_array()) {
      const std::string o = item.is_string() ? item.as_string()->get() : "";
      const bool ok = o == "*" || ((o.rfind("http://", 0) == 0 || o.rfind("https://", 0) == 0) &&
                                   o.find_first_of("/", o.find("//") + 2) == std::string::npos && o.size() <= 255);
      if (!ok) r.fail(item, "terminal_origins", "an origin is \"*\" or scheme://host[:port] (no path)");
      s.terminal_origins.push_back(o);
    }
  }
  // Every queued heavy request parks a server thread, so slots + queue + headroom must fit in the thread pool.
  // Keys left out shrink to fit a smaller pool (threads = 64 alone still starts); keys given must fit as given.
  const bool slots_given = r.get("work_slots") != nullptr;
  const bool queue_given = r.get("work_queue") != nullptr;
  r.integer("work_slots", s.work_slots, 1, 16384);
  r.integer("work_queue", s.work_queue, 0, 16384);
  r.duration("work_queue_timeout", s.work_queue_timeout, std::chrono::seconds(1));
  const int headroom = thread_headroom(s.threads);
  const int room = s.threads - headroom;
  // Keys left out are sized in the order slots, terminals, queue around the ones given: a pool sized for execs keeps
  // its slots, terminals come before the (optional) queue, and the queue takes the rest.
  const int given_terminals = terminals_given ? s.max_terminals : 0;
  const int given_queue = queue_given ? s.work_queue : 0;
  if (!slots_given) s.work_slots = std::max(1, std::min(s.work_slots, room - given_terminals - given_queue));
  if (!terminals_given) s.max_terminals = std::max(0, std::min(s.max_terminals, room - s.work_slots - given_queue));
  if (!queue_given) s.work_queue = std::max(0, std::min(s.work_queue, room - s.work_slots - s.max_terminals));
  if (s.work_slots + s.work_queue + s.max_terminals > room) {
    const auto* node = r.get(terminals_given ? "max_terminals"
                             : queue_given   ? "work_queue"
                             : slots_given   ? "work_slots"
                                             : "threads");
    r.fail(*(node ? node : r.get("threads")),
           terminals_given ? "max_terminals"
           : queue_given   ? "work_queue"
                           : "work_slots",
           "work_slots (" + std::to_string(s.work_slots) + ") + work_queue (" + std::to_string(s.work_queue) + ") + " +
               (s.max_terminals > 0 ? "max_terminals (" + std::to_string(s.max_terminals) + ") + " : "") +
               std::to_string(headroom) + " threads kept for cheap requests must not exceed threads (" +
               std::to_string(s.threads) + ")");
  }
  r.size("max_body", s.max_body, 1024);
  r.size("max_file_size", s.max_file_size, 1);
  r.duration("shutdown_grace", s.shutdown_grace, std::chrono::seconds(0));
  std::chrono::seconds wait{60};
  if (r.duration("start_wait", wait, std::chrono::seconds(1))) s.start_wait = wait;
  r.duration("header_timeout", s.header_timeout, std::chrono::seconds(1));
  r.duration("keep_alive_timeout", s.keep_alive_timeout, std::chrono::seconds(1));
  r.size("min_transfer_rate", s.min_transfer_rate, 0);
  r.duration("transfer_rate_window", s.transfer_rate_window, std::chrono::seconds(1));
  r.integer("max_connections_per_client", s.max_connections_per_client, 0, 1 << 20);
  r.reject_unknown();
}

void read_store(TableReader r, StoreConfig& s) {
  r.string("kind", s.kind);
  if (s.kind != "sqlite" && s.kind != "mysql") {
    r.fail(*r.get("kind"), "kind", "unsupported store kind '" + s.kind + "' (sqlite | mysql)");
  }
  r.string("path", s.path);
  if (s.path.empty()) r.fail(*r.get("path"), "path", "must not be empty");
  r.string("url", s.url);
  r.string("password_env", s.password_env);
  r.string("password_file", s.password_file);
  r.integer("pool_size", s.pool_size, 1, 1024);
  r.duration("connect_timeout", s.connect_timeout, std::chrono::seconds(1));
  r.duration("statement_timeout", s.statement_timeout, std::chrono::seconds(1));
  if (s.kind == "mysql") {
    const auto* url = r.get("url");
    if (!url) r.fail(*r.get("kind"), "url", "kind = \"mysql\" needs url = \"mysql://user@host:port/database\"");
    store::MySqlOptions parsed;
    try {
      parsed = store::parse_mysql_url(s.url);  // its messages never quote the password
    } catch (const store::StoreError& e) {
      r.fail(*url, "url", e.what());
    }
    const int sources = int(!parsed.password.empty()) + int(!s.password_env.empty()) + int(!s.password_file.empty());
    if (sources > 1) r.fail(*url, "url", "give the password once: in url, password_env or password_file");
    s.password = parsed.password;
    if (!s.password_env.empty()) {
      const char* value = std::getenv(s.password_env.c_str());
      if (!value)
        r.fail(*r.get("password_env"), "password_env", "environment variable " + s.password_env + " is not set");
      s.password = value;
    }
    if (!s.password_file.empty()) {
      std::ifstream in(s.password_file);
      if (!in || !std::getline(in, s.password)) {
        r.fail(*r.get("password_file"), "password_file", "cannot read " + s.password_file);
      }
      if (!s.password.empty() && s.password.back() == '\r') s.password.pop_back();
    }
    if (s.password.find(';') != std::string::npos) {
      r.fail(*url, "url", "the password must not contain ';' (the MySQL client's option separator)");
    }
  }
  r.reject_unknown();
}

void read_driver(TableReader r, DriverConfig& d) {
  r.string("name", d.name);
  r.string("path", d.path);
  r.string("instance_id", d.instance_id);
  if (const auto* n = r.get("search_path")) {
    if (!n->is_array()) r.fail(*n, "search_path", "expected an array of strings");
    for (const auto& item : *n->as_array()) {
      if (!item.is_string()) r.fail(item, "search_path", "expected an array of strings");
      d.search_path.push_back(item.as_string()->get());
    }
  }
  if (const auto* t = r.table("settings")) {
    std::ostringstream os;
    os << toml::json_formatter{*t};
    d.settings_json = os.str();
  }
  r.reject_unknown();
}

void read_profile(TableReader r, core::Profile& p, std::chrono::seconds default_idle_timeout) {
  r.string("image", p.image);
  double cpus = 1.0;
  r.number("cpus", cpus, 0.01, 1024);
  p.nano_cpus = static_cast<std::int64_t>(cpus * 1e9);
  std::uint64_t memory = static_cast<std::uint64_t>(p.memory_bytes);
  r.size("memory", memory, 6ull << 20);
  p.memory_bytes = static_cast<std::int64_t>(memory);
  r.integer("pids", p.pids_limit, 8, 1 << 22);
  r.boolean("network", p.network);
  r.boolean("read_only_rootfs", p.read_only_rootfs);
  std::int64_t disk_limit_mb = static_cast<std::int64_t>(p.disk_limit_bytes >> 20);
  r.integer("disk_limit_mb", disk_limit_mb, 0, std::int64_t{1} << 30);  // 0 = off
  p.disk_limit_bytes = static_cast<std::uint64_t>(disk_limit_mb) << 20;
  r.string("shell", p.shell);
  if (p.shell.empty() || p.shell.front() != '/' || p.shell.size() > 255 || p.shell.find('\0') != std::string::npos) {
    r.fail(*r.get("shell"), "shell", "must be an absolute path in the image (at most 255 bytes), e.g. \"/bin/bash\"");
  }
  r.string("user", p.user);
  if (p.user == "0" || p.user == "root" || p.user.rfind("0:", 0) == 0 || p.user.rfind("root:", 0) == 0) {
    r.fail(*r.get("user"), "user", "sandboxes never run as root");
  }
  p.env = r.string_map("env");
  std::chrono::seconds d{};
  if (r.duration("ttl", d, std::chrono::seconds(1))) p.ttl = d;
  p.idle_timeout = default_idle_timeout;
  if (r.duration("idle_timeout", d, std::chrono::seconds(1))) p.idle_timeout = d;
  if (const auto* n = r.get("capabilities")) {
    if (!n->is_array()) r.fail(*n, "capabilities", "expected an array such as [\"python\", \"shell\"]");
    p.capabilities.clear();
    for (const auto& item : *n->as_array()) {
      std::string c = item.is_string() ? item.as_string()->get() : "";
      if (c != "python" && c != "shell" && c != "filesystem") {
        r.fail(item, "capabilities", "unknown capability (python, shell, filesystem)");
      }
      p.capabilities.insert(c);
    }
  }
  if (p.image.empty()) r.fail(*r.get("image"), "image", "must not be empty");
  if (p.image.size() > 255) r.fail(*r.get("image"), "image", "must be at most 255 bytes (an image reference)");
  r.reject_unknown();
}

/** Bounds a profile gets from other sections, checked after the whole file is read (and for API profiles). */
void check_profile_bounds(const core::Profile& p, const Config& cfg, const std::string& source) {
  // The profile's env reaches the same containers as a sandbox's: the same rules (LD_*/BERTH_* reserved, names,
  // sizes, no NUL), whether it comes from this file or over the API.
  try {
    core::validate_env(p.env, cfg.limits);
  } catch (const core::Error& e) {
    throw ConfigError(source + ": profiles." + p.name + ".env: " + e.what(), "env");
  }
  if (p.ttl && *p.ttl > cfg.limits.max_ttl) {
    throw ConfigError(source + ": profiles." + p.name + ".ttl: longer than [limits] max_ttl (" +
                          std::to_string(cfg.limits.max_ttl.count()) + "s)",
                      "ttl");
  }
}

/** A JSON value (Poco) as a TOML node; null has no TOML form and is refused naming `path`. */
std::unique_ptr<toml::node> to_toml(const Poco::Dynamic::Var& v, const std::string& source, const std::string& path) {
  auto refuse = [&](const std::string& why) {
    // The key as a table reader names it (relative to the profile), e.g. "memory" or "env.A".
    const auto dot = path.find('.', path.find('.') + 1);
    throw ConfigError(source + ": " + path + ": " + why, dot == std::string::npos ? path : path.substr(dot + 1));
  };
  if (v.isEmpty()) refuse("null is not a value; leave the key out instead");
  if (v.type() == typeid(Poco::JSON::Object::Ptr)) {
    auto t = std::make_unique<toml::table>();
    for (const auto& [k, item] : *v.extract<Poco::JSON::Object::Ptr>()) {
      auto child = to_toml(item, source, path + "." + k);
      t->insert(k, std::move(*child));
    }
    return t;
  }
  if (v.type() == typeid(Poco::JSON::Array::Ptr)) {
    auto a = std::make_unique<toml::array>();
    for (const auto& item : *v.extract<Poco::JSON::Array::Ptr>()) {
      auto child = to_toml(item, source, path);
      a->push_back(std::move(*child));
    }
    return a;
  }
  if (v.isBoolean()) return std::make_unique<toml::value<bool>>(v.extract<bool>());
  if (v.isString()) return std::make_unique<toml::value<std::string>>(v.extract<std::string>());
  if (v.isInteger()) {
    if (!v.isSigned() && v.convert<Poco::UInt64>() > static_cast<Poco::UInt64>(INT64_MAX)) refuse("number too large");
    return std::make_unique<toml::value<std::int64_t>>(v.convert<Poco::Int64>());
  }
  if (v.isNumeric()) return std::make_unique<toml::value<double>>(v.convert<double>());
  refuse("unsupported JSON value");
  return nullptr;  // not reached: refuse throws
}

void read_cleanup(TableReader r, CleanupConfig& c) {
  r.boolean("enabled", c.enabled);
  r.duration("interval", c.interval, std::chrono::seconds(1));
  r.duration("idle_timeout", c.idle_timeout, std::chrono::seconds(1));
  r.duration("call_deadline", c.call_deadline, std::chrono::seconds(1));
  r.reject_unknown();
}

void read_cluster(TableReader r, ClusterConfig& c, const std::string& source) {
  r.duration("heartbeat_interval", c.heartbeat_interval, std::chrono::seconds(1));
  r.duration("instance_timeout", c.instance_timeout, std::chrono::seconds(1));
  r.duration("orphan_grace", c.orphan_grace, std::chrono::seconds(0));
  r.duration("instance_retention", c.instance_retention, std::chrono::seconds(0));
  r.duration("lease_ttl", c.lease_ttl, std::chrono::seconds(1));
  if (c.instance_timeout <= c.heartbeat_interval) {
    throw ConfigError(source +
                          ": cluster.instance_timeout: must be longer than heartbeat_interval (a live instance "
                          "would look dead)",
                      "instance_timeout");
  }
  r.reject_unknown();
}

void read_history(TableReader r, HistoryConfig& h) {
  r.size("output_cap", h.output_cap, 1024);
  r.size("response_max_bytes", h.response_max_bytes, 64 << 10);
  r.duration("max_age", h.max_age, std::chrono::seconds(0));
  r.integer("max_records", h.max_records, 0, 1'000'000'000);
  r.reject_unknown();
}

void read_listing(TableReader r, ListingConfig& l) {
  r.integer("max_entries", l.max_entries, 1, 100'000);
  r.reject_unknown();
}

void read_auth(TableReader r, AuthConfig& a) {
  r.boolean("allow_anonymous", a.allow_anonymous);
  r.string("anonymous_owner", a.anonymous_owner);
  a.keys = r.string_map("keys");
  for (const auto& [key, owner] : a.keys) {
    if (key.size() < 8) r.fail(*r.get("keys"), "keys", "API keys must be at least 8 characters");
    if (owner.empty()) r.fail(*r.get("keys"), "keys." + key, "owner must not be empty");
  }
  a.admin_keys = r.string_map("admin_keys");
  for (const auto& [key, name] : a.admin_keys) {
    if (key.size() < 16) r.fail(*r.get("admin_keys"), "admin_keys", "admin keys must be at least 16 characters");
    if (name.empty()) r.fail(*r.get("admin_keys"), "admin_keys." + key, "name must not be empty");
    if (a.keys.count(key)) r.fail(*r.get("admin_keys"), "admin_keys", "a key cannot be both a tenant and an admin key");
  }
  r.reject_unknown();
}

void read_limits(TableReader r, core::Limits& l) {
  constexpr std::int64_t kBig = 1'000'000;
  r.integer("max_labels", l.max_labels, 0, 10'000);
  r.integer("max_label_key_bytes", l.max_label_key_bytes, 1, 1024);
  r.integer("max_label_value_bytes", l.max_label_value_bytes, 0, 65'536);
  r.integer("max_env", l.max_env, 0, 10'000);
  r.integer("max_env_name_bytes", l.max_env_name_bytes, 1, 1024);
  r.integer("max_env_value_bytes", l.max_env_value_bytes, 0, 1 << 20);
  r.duration("max_ttl", l.max_ttl, std::chrono::seconds(1));
  r.integer("max_sandboxes_per_owner", l.max_sandboxes_per_owner, 0, kBig);
  r.integer("create_rate_per_minute", l.create_rate_per_minute, 0, kBig);
  r.integer("create_burst", l.create_burst, 1, kBig);
  r.reject_unknown();
}

void read_metrics(TableReader r, MetricsConfig& m) {
  r.boolean("enabled", m.enabled);
  r.string("bearer_token", m.bearer_token);
  std::string file;
  r.string("bearer_token_file", file);
  if (!file.empty()) {
    if (!m.bearer_token.empty()) {
      r.fail(*r.get("bearer_token_file"), "bearer_token_file", "set bearer_token or bearer_token_file, not both");
    }
    std::ifstream in(file, std::ios::binary);
    if (!in) r.fail(*r.get("bearer_token_file"), "bearer_token_file", "cannot read '" + file + "'");
    std::getline(in, m.bearer_token);  // the first line; a trailing CR (or the newline) is not part of the token
    if (!m.bearer_token.empty() && m.bearer_token.back() == '\r') m.bearer_token.pop_back();
  }
  const char* key = file.empty() ? "bearer_token" : "bearer_token_file";
  if (!m.bearer_token.empty()) {
    if (m.bearer_token.size() < 16) r.fail(*r.get(key), key, "the token must be at least 16 characters");
    for (char c : m.bearer_token) {
      if (c <= ' ' || c == 0x7f) r.fail(*r.get(key), key, "the token must not contain spaces or control characters");
    }
  } else if (!file.empty()) {
    r.fail(*r.get(key), key, "the file's first line is empty");
  }
  r.reject_unknown();
}

void read_log(TableReader r, LogConfig& l) {
  r.string("format", l.format);
  if (l.format != "text" && l.format != "json") r.fail(*r.get("format"), "format", "expected \"text\" or \"json\"");
  r.string("level", l.level);
  if (l.level != "debug" && l.level != "info" && l.level != "warn" && l.level != "error") {
    r.fail(*r.get("level"), "level", "expected debug, info, warn or error");
  }
  r.string("file", l.file);
  r.reject_unknown();
}

}  // namespace

std::chrono::seconds parse_duration(const std::string& text) {
  std::size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])))
    ++i;
  if (i == 0 || i > 12) throw std::invalid_argument("bad duration '" + text + "' (e.g. \"30s\", \"5m\", \"2h\")");
  long long n = std::stoll(text.substr(0, i));
  std::string unit = text.substr(i);
  if (unit.empty() || unit == "s") return std::chrono::seconds(n);
  if (unit == "m") return std::chrono::minutes(n);
  if (unit == "h") return std::chrono::hours(n);
  if (unit == "d") return std::chrono::hours(24 * n);
  throw std::invalid_argument("bad duration unit in '" + text + "' (s, m, h, d)");
}

std::uint64_t parse_size(const std::string& text) {
  std::size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])))
    ++i;
  if (i == 0 || i > 15) throw std::invalid_argument("bad size '" + text + "' (e.g. \"512MiB\", \"1g\")");
  std::uint64_t n = std::stoull(text.substr(0, i));
  std::string unit;
  for (char c : text.substr(i))
    unit += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (unit.empty() || unit == "b") return n;
  if (unit == "k" || unit == "kb" || unit == "kib") return n << 10;
  if (unit == "m" || unit == "mb" || unit == "mib") return n << 20;
  if (unit == "g" || unit == "gb" || unit == "gib") return n << 30;
  throw std::invalid_argument("bad size unit in '" + text + "' (k, m, g; binary multiples)");
}

Config parse(const std::string& text, const std::string& source) {
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    const auto& b = e.source().begin;
    throw ConfigError(source + ":" + std::to_string(b.line) + ":" + std::to_string(b.column) + ": " +
                      std::string(e.description()));
  }
  Config cfg;
  cfg.source = source;
  TableReader top(root, "", source);
  if (const auto* t = top.table("server")) read_server(TableReader(*t, "server", source), cfg.server);
  if (const auto* t = top.table("store")) read_store(TableReader(*t, "store", source), cfg.store);
  if (const auto* t = top.table("driver")) read_driver(TableReader(*t, "driver", source), cfg.driver);
  if (const auto* t = top.table("cleanup")) read_cleanup(TableReader(*t, "cleanup", source), cfg.cleanup);
  if (const auto* t = top.table("cluster")) read_cluster(TableReader(*t, "cluster", source), cfg.cluster, source);
  if (const auto* t = top.table("history")) read_history(TableReader(*t, "history", source), cfg.history);
  if (const auto* t = top.table("listing")) read_listing(TableReader(*t, "listing", source), cfg.listing);
  if (const auto* t = top.table("auth")) read_auth(TableReader(*t, "auth", source), cfg.auth);
  if (const auto* t = top.table("log")) read_log(TableReader(*t, "log", source), cfg.log);
  if (const auto* t = top.table("metrics")) read_metrics(TableReader(*t, "metrics", source), cfg.metrics);
  if (const auto* t = top.table("limits")) read_limits(TableReader(*t, "limits", source), cfg.limits);
  top.string("default_profile", cfg.default_profile);
  if (const auto* t = top.table("profiles")) {
    for (auto&& [k, v] : *t) {
      std::string name(k.str());
      if (!v.is_table()) top.fail(v, "profiles." + name, "expected a table");
      core::Profile p;
      p.name = name;
      read_profile(TableReader(*v.as_table(), "profiles." + name, source), p, cfg.cleanup.idle_timeout);
      cfg.profiles[name] = std::move(p);
    }
  }
  top.reject_unknown();

  if (cfg.driver.name.empty() && cfg.driver.path.empty()) {
    throw ConfigError(source + ": driver: set [driver] name (e.g. \"docker\", \"fake\") or path");
  }
  if (cfg.profiles.empty()) {
    core::Profile p;
    p.name = "default";
    p.idle_timeout = cfg.cleanup.idle_timeout;
    cfg.profiles["default"] = p;
  }
  for (const auto& [name, p] : cfg.profiles)
    check_profile_bounds(p, cfg, source);
  if (!cfg.profiles.count(cfg.default_profile)) {
    throw ConfigError(source + ": default_profile: no profile named '" + cfg.default_profile + "'");
  }
  return cfg;
}

Config load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path + ": cannot read config file");
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), path);
}

core::Profile profile_from_json(const std::string& name, const std::string& json, const Config& cfg) {
  const std::string source = "profile";
  const std::string prefix = "profiles." + name;
  Poco::Dynamic::Var root;
  try {
    root = Poco::JSON::Parser().parse(json);
  } catch (const Poco::Exception& e) {
    throw ConfigError(source + ": " + prefix + ": not valid JSON: " + e.message(), "");
  }
  if (root.type() != typeid(Poco::JSON::Object::Ptr)) {
    throw ConfigError(source + ": " + prefix + ": expected a JSON object", "");
  }
  std::unique_ptr<toml::node> node;
  try {
    node = to_toml(root, source, prefix);
  } catch (const Poco::Exception& e) {  // a number Poco cannot convert
    throw ConfigError(source + ": " + prefix + ": " + e.message(), "");
  }
  core::Profile p;
  p.name = name;
  read_profile(TableReader(*node->as_table(), prefix, source), p, cfg.cleanup.idle_timeout);
  check_profile_bounds(p, cfg, source);
  return p;
}

std::string profile_to_json(const core::Profile& p) {
  Poco::JSON::Object o(Poco::JSON_PRESERVE_KEY_ORDER);
  o.set("image", p.image);
  o.set("cpus", static_cast<double>(p.nano_cpus) / 1e9);
  o.set("memory", static_cast<Poco::Int64>(p.memory_bytes));
  o.set("pids", static_cast<Poco::Int64>(p.pids_limit));
  o.set("network", p.network);
  o.set("read_only_rootfs", p.read_only_rootfs);
  o.set("user", p.user);
  o.set("shell", p.shell);
  Poco::JSON::Object env;
  for (const auto& [k, v] : p.env)
    env.set(k, v);
  o.set("env", env);
  if (p.ttl) o.set("ttl", static_cast<Poco::Int64>(p.ttl->count()));
  o.set("idle_timeout", static_cast<Poco::Int64>(p.idle_timeout.count()));
  o.set("disk_limit_mb", static_cast<Poco::Int64>(p.disk_limit_bytes >> 20));
  Poco::JSON::Array caps;
  for (const auto& c : p.capabilities)
    caps.add(c);
  o.set("capabilities", caps);
  std::ostringstream os;
  Poco::JSON::Stringifier::stringify(o, os);
  return os.str();
}

}  // namespace berth::config
