// berthd's configuration, read from one TOML file. Every key is listed in berth.example.toml; unknown keys and
// bad values are errors naming the key and file:line.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/limits.hpp"
#include "core/profile.hpp"

namespace berth::config {

/** A configuration problem: what() is "file:line:col: key: reason". */
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  ConfigError(const std::string& message, std::string key) : std::runtime_error(message), key_(std::move(key)) {}
  /** The key within its table that is wrong (e.g. "cpus", "env.PATH"); empty when the problem is not one key. */
  const std::string& key() const { return key_; }

 private:
  std::string key_;
};

struct ServerConfig {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8080;
  int threads = 1024;    // HTTP worker threads: one per request being handled (small stacks; idle ones exit)
  int queue = 64;        // accepted connections waiting for a thread; beyond: refused
  int work_slots = 64;   // heavy requests (exec, files, start) running at once
  int work_queue = 512;  // heavy requests waiting for a slot; beyond: 503 server_busy
  std::chrono::seconds work_queue_timeout{120};  // longest wait for a slot; then 503 server_busy
  std::uint64_t max_body = 1ull << 20;           // JSON request bodies
  std::uint64_t max_file_size = 100ull << 20;    // upload/download/file content limit
  std::chrono::seconds shutdown_grace{10};       // in-flight requests get this long on SIGTERM
  std::chrono::milliseconds start_wait{60'000};  // how long a request waits for a session to become ready
  // Connection layer (docs/api.md, "HTTP framing and limits"):
  std::chrono::seconds header_timeout{10};        // a whole request head must arrive within this
  std::chrono::seconds keep_alive_timeout{5};     // idle kept-alive connections are closed after this
  std::uint64_t min_transfer_rate = 1024;         // bytes/s while berthd waits on a client; 0 disables
  std::chrono::seconds transfer_rate_window{10};  // the window that rate is measured over
  int max_connections_per_client = 64;            // open connections per client IP; 0 = no cap
  bool exec_via_processes = false;   // run execs as interactive processes (ABI 1.3) where the driver offers them
  int max_contexts_per_sandbox = 8;  // Python contexts (interpreters) per sandbox, "default" included
  int max_terminals = 64;            // open terminals (WebSockets) on this berthd; default: 64 or what work keys leave
  int max_terminals_per_sandbox = 4;
  int max_terminals_per_owner = 16;  // 0 = no cap below max_terminals
  int max_async_per_owner = 64;      // async executions running at once for one owner (of 256); 0 = no cap
  /** Origins (scheme://host[:port]) whose pages may open a terminal besides berthd's own; "*" = any. A handshake
   *  with another Origin header is refused (cross-site WebSocket hijacking); one without (not a browser) is not. */
  std::vector<std::string> terminal_origins;
};

struct StoreConfig {
  std::string kind = "sqlite";    // "sqlite" | "mysql"
  std::string path = "berth.db";  // sqlite: the database file
  // mysql: "mysql://user[:password]@host[:port]/database"; the password may instead come from password_env (the
  // name of an environment variable) or password_file (a file's first line). `password` is the resolved secret:
  // never logged, never part of an error message.
  std::string url;
  std::string password_env;
  std::string password_file;
  std::string password;
  int pool_size = 16;                          // connections per berthd at most
  std::chrono::seconds connect_timeout{5};     // one connection attempt
  std::chrono::seconds statement_timeout{30};  // server-side cap of one statement and of a lock wait
};

struct DriverConfig {
  std::string name;                      // looked up as berth_driver_<name>.so on the search path
  std::string path;                      // or an explicit file
  std::vector<std::string> search_path;  // extra directories, searched first
  std::string settings_json = "{}";      // the [driver.settings] table, handed to the driver as JSON
  std::string instance_id;               // label value berth.instance; default: derived from the store path
};

struct CleanupConfig {
  bool enabled = true;
  std::chrono::seconds interval{60};
  std::chrono::seconds idle_timeout{1800};  // default for profiles that do not set one
  std::chrono::seconds call_deadline{30};  // one sandbox's driver work in a pass; beyond: reported failed, pass goes on
};

/** [history]: what execution history may cost (issue 8: memory bounded by configuration). */
struct HistoryConfig {
  std::uint64_t output_cap = 64 << 10;          // bytes kept of each execution's code, stdout and stderr
  std::uint64_t response_max_bytes = 4 << 20;   // a history page stops adding records beyond this many bytes
  std::chrono::seconds max_age{7 * 24 * 3600};  // records older than this are deleted by the cleanup task; 0 = keep
  std::int64_t max_records = 1000;              // newest records kept per sandbox; 0 = no limit
};

/** [listing]: directory listings are paged; a page holds at most max_entries entries. */
struct ListingConfig {
  int max_entries = 10'000;  // each page scans the whole directory: larger pages, fewer scans
};

struct AuthConfig {
  bool allow_anonymous = true;              // only when no keys are configured
  std::string anonymous_owner = "default";  // owner of anonymous requests
  std::map<std::string, std::string> keys;  // api key -> owner
  // api key -> operator name: the admin role (routes under /v1/admin); an admin key owns no sandboxes of its own
  // beyond those it creates under its name. Keys are at least 16 characters and never also tenant keys.
  std::map<std::string, std::string> admin_keys;
};

/** [cluster]: instances as rows in the store (issue 11): heartbeat, dead-instance hand-over, cleanup leases. */
struct ClusterConfig {
  std::chrono::seconds heartbeat_interval{5};       // how often this berthd writes its heartbeat row
  std::chrono::seconds instance_timeout{30};        // an instance without a heartbeat this long is dead
  std::chrono::seconds orphan_grace{300};           // a dead instance's containers are swept this long after its death
  std::chrono::seconds instance_retention{86'400};  // and its row is deleted this long after that
  std::chrono::seconds lease_ttl{120};              // a cleanup lease of a crashed holder is free after this long
};

/** [metrics]: GET /metrics (Prometheus text format; docs/api.md lists every series). */
struct MetricsConfig {
  bool enabled = true;       // false: nothing is counted and GET /metrics answers 404
  std::string bearer_token;  // non-empty: scrapes need "Authorization: Bearer <token>" (or read from bearer_token_file)
};

struct LogConfig {
  std::string format = "text";  // "text" | "json"
  std::string level = "info";
  std::string file;  // empty = stderr
};

struct Config {
  std::string source;  // file it came from
  ServerConfig server;
  StoreConfig store;
  DriverConfig driver;
  std::map<std::string, core::Profile> profiles;  // at least one; "default" is used when a request names none
  std::string default_profile = "default";
  CleanupConfig cleanup;
  ClusterConfig cluster;
  HistoryConfig history;
  ListingConfig listing;
  AuthConfig auth;
  LogConfig log;
  MetricsConfig metrics;
  core::Limits limits;  // [limits]: per-owner quotas and what a create may store
};

/**
 * Server threads kept free of heavy work (for /health and cheap reads): 16, or a quarter of a pool smaller than 64
 * (at least 1). The rule checked at load: work_slots + work_queue + thread_headroom(threads) <= threads.
 */
constexpr int thread_headroom(int threads) {
  return threads >= 64 ? 16 : (threads / 4 > 1 ? threads / 4 : 1);
}

/** Parses TOML text; `source` names the file in errors. Throws ConfigError. */
Config parse(const std::string& text, const std::string& source);
/** Reads and parses a file. Throws ConfigError (also when the file cannot be read). */
Config load(const std::string& path);

/**
 * Reads one profile given as a JSON object (the body of POST/PUT /v1/profiles) by exactly the rules of a
 * `[profiles.<name>]` table: the object becomes a TOML table that the config loader's own profile reader reads,
 * so the keys, types, ranges and messages are the same (see berth.example.toml). `cfg` gives the defaults and
 * bounds a profile depends on ([cleanup] idle_timeout, [limits] max_ttl). Throws ConfigError naming
 * `profiles.<name>.<key>` with key() set, also for JSON that is not an object, null values and numbers out of range.
 * Thread-safe (pure).
 */
core::Profile profile_from_json(const std::string& name, const std::string& json, const Config& cfg);

/**
 * The canonical JSON object of a profile: the keys of `[profiles.<name>]` with normalised values (cpus as a
 * number, memory in bytes, durations in seconds; ttl left out when the profile has none). profile_from_json of the
 * result gives the same profile. Thread-safe (pure).
 */
std::string profile_to_json(const core::Profile& profile);

/** "30s", "5m", "2h", "1d" or a bare integer of seconds. Throws std::invalid_argument. */
std::chrono::seconds parse_duration(const std::string& text);
/** "512MiB", "512m", "1g", "100k" or bare bytes. Throws std::invalid_argument. */
std::uint64_t parse_size(const std::string& text);

}  // namespace berth::config
