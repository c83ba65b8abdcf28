#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "config/config.hpp"

using namespace berth::config;

namespace {
std::string error_of(const std::string& text) {
  try {
    parse(text, "t.toml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("a full config parses into typed values") {
  auto cfg = parse(R"(
default_profile = "py"
[server]
listen = "0.0.0.0:9000"
threads = 8
max_body = "2MiB"
shutdown_grace = "5s"
exec_via_processes = true
[driver]
name = "fake"
[driver.settings]
latency_ms = { exec = 5 }
[profiles.py]
image = "berth/python:3.11"
cpus = 0.5
memory = "256m"
ttl = "1h"
env = { A = "1" }
capabilities = ["python", "filesystem"]
[cleanup]
interval = 30
[auth.keys]
"secret-key-1" = "alice"
)",
                   "t.toml");
  CHECK(cfg.server.host == "0.0.0.0");
  CHECK(cfg.server.port == 9000);
  CHECK(cfg.server.threads == 8);
  CHECK(cfg.server.max_body == 2u << 20);
  CHECK(cfg.server.shutdown_grace == std::chrono::seconds(5));
  CHECK(cfg.server.exec_via_processes);
  CHECK_FALSE(ServerConfig{}.exec_via_processes);  // off unless asked for
  CHECK(cfg.driver.name == "fake");
  CHECK(cfg.driver.settings_json.find("\"exec\" : 5") != std::string::npos);
  const auto& p = cfg.profiles.at("py");
  CHECK(p.nano_cpus == 500'000'000);
  CHECK(p.memory_bytes == 256 << 20);
  CHECK(p.ttl == std::chrono::seconds(3600));
  CHECK(p.env.at("A") == "1");
  CHECK(p.capabilities == std::set<std::string>{"python", "filesystem"});
  CHECK(p.idle_timeout == std::chrono::seconds(1800));  // [cleanup] default
  CHECK(cfg.cleanup.interval == std::chrono::seconds(30));
  CHECK(cfg.auth.keys.at("secret-key-1") == "alice");
}

TEST_CASE("unknown keys name the key and the line") {
  CHECK(error_of("[driver]\nname = \"fake\"\n[server]\nthreds = 4\n") == "t.toml:4:10: server.threds: unknown key");
  CHECK(error_of("[driver]\nname = \"fake\"\nbogus = 1\n").find("t.toml:3:9: driver.bogus: unknown key") == 0);
  CHECK(error_of("[driver]\nname=\"fake\"\n[profiles.x]\nimgae=\"a\"\n").find("profiles.x.imgae: unknown key") !=
        std::string::npos);
}

TEST_CASE("bad values are rejected with a reason") {
  const std::string d = "[driver]\nname = \"fake\"\n";
  CHECK(error_of(d + "[server]\nthreads = \"many\"\n").find("server.threads: expected an integer") !=
        std::string::npos);
  CHECK(error_of(d + "[server]\nthreads = 0\n").find("server.threads: must be between 2 and 16384") !=
        std::string::npos);
  CHECK(error_of(d + "[server]\nlisten = \"nowhere\"\n").find("server.listen: expected host:port") !=
        std::string::npos);
  CHECK(error_of(d + "[profiles.a]\nmemory = \"12 parsecs\"\n").find("profiles.a.memory: bad size") !=
        std::string::npos);
  CHECK(error_of(d + "[profiles.a]\nuser = \"root\"\n").find("never run as root") != std::string::npos);
  CHECK(error_of(d + "[cleanup]\ninterval = \"soon\"\n").find("cleanup.interval: bad duration") != std::string::npos);
  CHECK(error_of("default_profile = \"nope\"\n" + d).find("no profile named 'nope'") != std::string::npos);
  CHECK(error_of("[server]\nthreads = 4\n").find("set [driver] name") != std::string::npos);
  CHECK(error_of("[server\n").find("t.toml:1:") == 0);
}

TEST_CASE("disk_limit_mb: 1 GiB by default, explicit values, 0 turns it off, negative refused") {
  const std::string d = "[driver]\nname = \"fake\"\n";
  CHECK(parse(d + "[profiles.default]\n", "t.toml").profiles.at("default").disk_limit_bytes == 1024ull << 20);
  CHECK(parse(d + "[profiles.default]\ndisk_limit_mb = 20\n", "t.toml").profiles.at("default").disk_limit_bytes ==
        20ull << 20);
  CHECK(parse(d + "[profiles.default]\ndisk_limit_mb = 0\n", "t.toml").profiles.at("default").disk_limit_bytes == 0);
  CHECK(error_of(d + "[profiles.a]\ndisk_limit_mb = -1\n").find("profiles.a.disk_limit_mb") != std::string::npos);
}

TEST_CASE("durations and sizes") {
  CHECK(parse_duration("90") == std::chrono::seconds(90));
  CHECK(parse_duration("5m") == std::chrono::seconds(300));
  CHECK(parse_duration("2h") == std::chrono::seconds(7200));
  CHECK(parse_duration("1d") == std::chrono::seconds(86400));
  CHECK_THROWS_AS(parse_duration("-1s"), std::invalid_argument);
  CHECK(parse_size("1k") == 1024);
  CHECK(parse_size("512MiB") == 512u << 20);
  CHECK(parse_size("1G") == 1u << 30);
  CHECK_THROWS_AS(parse_size("1t"), std::invalid_argument);
}

TEST_CASE("the shipped example config is valid") {
  auto cfg = load(std::string(BERTH_SOURCE_DIR) + "/berth.example.toml");
  CHECK_FALSE(cfg.profiles.empty());
}

TEST_CASE("capacity keys: defaults, shrink-to-fit for small pools, and explicit values that must fit") {
  const std::string d = "[driver]\nname = \"fake\"\n";
  auto defaults = parse(d, "t.toml");
  CHECK(defaults.server.threads == 1024);
  CHECK(defaults.server.work_slots == 64);
  CHECK(defaults.server.work_queue == 512);
  CHECK(defaults.server.work_queue_timeout == std::chrono::seconds(120));

  // A small pool without explicit work keys: slots and queue shrink so that headroom stays free.
  // Terminals hold a thread each while open: left out, they come after the slots and before the queue (at most
  // 64), so a pool sized for execs keeps its slots.
  auto mid = parse(d + "[server]\nthreads = 512\n", "t.toml");
  CHECK(mid.server.work_slots == 64);
  CHECK(mid.server.max_terminals == 64);
  CHECK(mid.server.work_queue == 512 - 16 - 64 - 64);
  CHECK(defaults.server.work_queue == 512);
  CHECK(defaults.server.max_terminals == 64);
  auto small = parse(d + "[server]\nthreads = 64\n", "t.toml");
  CHECK(small.server.work_slots == 48);
  CHECK(small.server.work_queue == 0);
  CHECK(small.server.max_terminals == 0);
  auto tiny = parse(d + "[server]\nthreads = 8\n", "t.toml");
  CHECK(tiny.server.work_slots == 6);
  CHECK(tiny.server.work_queue == 0);
  auto room = parse(d + "[server]\nthreads = 32\nwork_slots = 4\nwork_queue = 12\n", "t.toml");
  CHECK(room.server.max_terminals == 8);
  // Given terminals come first: omitted work keys shrink around them.
  auto given_terminals = parse(d + "[server]\nthreads = 64\nmax_terminals = 8\n", "t.toml");
  CHECK(given_terminals.server.work_slots == 40);
  CHECK(given_terminals.server.max_terminals == 8);
  // Given terminals count in the rule.
  CHECK(error_of(d + "[server]\nthreads = 32\nwork_slots = 4\nwork_queue = 12\nmax_terminals = 16\n")
            .find("server.max_terminals: work_slots (4) + work_queue (12) + max_terminals (16) + 8 threads kept for "
                  "cheap requests must not exceed threads (32)") != std::string::npos);
  CHECK(error_of(d + "[server]\nthreads = 32\nmax_terminals = 17\n").find("server.max_terminals: must be between") !=
        std::string::npos);

  auto given =
      parse(d + "[server]\nthreads = 32\nwork_slots = 4\nwork_queue = 12\nwork_queue_timeout = \"30s\"\n", "t.toml");
  CHECK(given.server.work_slots == 4);
  CHECK(given.server.work_queue == 12);
  CHECK(given.server.work_queue_timeout == std::chrono::seconds(30));
  // Given keys that do not fit next to the headroom are an error naming the rule.
  CHECK(error_of(d + "[server]\nthreads = 32\nwork_slots = 4\nwork_queue = 40\n")
            .find("server.work_queue: work_slots (4) + work_queue (40) + 8 threads kept for cheap requests must not "
                  "exceed threads (32)") != std::string::npos);
  CHECK(error_of(d + "[server]\nwork_slots = 2000\n").find("server.work_slots: work_slots (2000)") !=
        std::string::npos);
  CHECK(error_of(d + "[server]\nwork_queue_timeout = 0\n").find("server.work_queue_timeout: must be at least 1s") !=
        std::string::npos);
  CHECK(error_of(d + "[server]\nwork_slots = 0\n").find("server.work_slots: must be between 1 and 16384") !=
        std::string::npos);
}

TEST_CASE("admin keys: long, distinct from tenant keys, and parsed apart from them") {
  const std::string d = "[driver]\nname = \"fake\"\n";
  auto cfg =
      parse(d + "[auth.keys]\n\"tenant-key-1\" = \"alice\"\n[auth.admin_keys]\n\"admin-key-0123456789\" = \"ops\"\n",
            "t.toml");
  CHECK(cfg.auth.keys.size() == 1);
  CHECK(cfg.auth.admin_keys.at("admin-key-0123456789") == "ops");
  CHECK(error_of(d + "[auth.admin_keys]\n\"short-admin-key\" = \"ops\"\n").find("at least 16 characters") !=
        std::string::npos);
  CHECK(error_of(d + "[auth.admin_keys]\n\"admin-key-0123456789\" = \"\"\n").find("name must not be empty") !=
        std::string::npos);
  CHECK(error_of(d + "[auth.keys]\n\"same-key-0123456789\" = \"alice\"\n[auth.admin_keys]\n\"same-key-0123456789\" = "
                     "\"ops\"\n")
            .find("both a tenant and an admin key") != std::string::npos);
}

// ---- [limits]: per-owner quotas and create validation caps, and the cap on every duration key ----

TEST_CASE("[limits]: defaults, explicit values, and no duration that could overflow a time") {
  const std::string d = "[driver]\nname = \"fake\"\n";
  auto defaults = parse(d, "t.toml");
  CHECK(defaults.limits.max_sandboxes_per_owner == 100);
  CHECK(defaults.limits.create_rate_per_minute == 60);
  CHECK(defaults.limits.max_ttl == std::chrono::hours(24 * 365));
  auto set = parse(d + "[limits]\nmax_sandboxes_per_owner = 3\ncreate_rate_per_minute = 0\nmax_ttl = \"2h\"\n"
                       "max_labels = 5\nmax_env_value_bytes = 10\n",
                   "t.toml");
  CHECK(set.limits.max_sandboxes_per_owner == 3);
  CHECK(set.limits.create_rate_per_minute == 0);
  CHECK(set.limits.max_ttl == std::chrono::seconds(7200));
  CHECK(set.limits.max_labels == 5);
  CHECK(set.limits.max_env_value_bytes == 10);
  CHECK(error_of(d + "[limits]\nmax_labels = -1\n").find("limits.max_labels: must be between") != std::string::npos);
  CHECK(error_of(d + "[limits]\nmax_quota = 1\n").find("limits.max_quota: unknown key") != std::string::npos);
  CHECK(error_of(d + "[limits]\nmax_ttl = \"1h\"\n[profiles.a]\nttl = \"2h\"\n")
            .find("profiles.a.ttl: longer than [limits] max_ttl") != std::string::npos);
  // 10^11 days is 2.7e8 years: nanoseconds since 1970 would wrap. Every duration key is capped at 100 years.
  CHECK(error_of(d + "[profiles.a]\nidle_timeout = \"99999999999d\"\n").find("must be at most") != std::string::npos);
  CHECK(error_of(d + "[cleanup]\nidle_timeout = 9223372036\n").find("must be at most") != std::string::npos);
}

TEST_CASE("[metrics]: on and open by default, a bearer token inline or from a file, never both") {
  const std::string base = "[driver]\nname = \"fake\"\n";
  auto defaults = parse(base, "t.toml");
  CHECK(defaults.metrics.enabled);
  CHECK(defaults.metrics.bearer_token.empty());
  auto inline_token = parse(base + "[metrics]\nenabled = false\nbearer_token = \"0123456789abcdef\"\n", "t.toml");
  CHECK_FALSE(inline_token.metrics.enabled);
  CHECK(inline_token.metrics.bearer_token == "0123456789abcdef");
  CHECK(error_of(base + "[metrics]\nbearer_token = \"short\"\n")
            .find("metrics.bearer_token: the token must be at "
                  "least 16 characters") != std::string::npos);
  CHECK(error_of(base + "[metrics]\nbearer_token = \"0123456789 abcdef\"\n").find("spaces") != std::string::npos);
  CHECK(error_of(base + "[metrics]\ntoken = \"0123456789abcdef\"\n").find("metrics.token: unknown key") !=
        std::string::npos);

  auto file = std::filesystem::temp_directory_path() / ("berth-token-" + std::to_string(::getpid()));
  std::ofstream(file) << "fedcba9876543210-from-file\r\n";
  auto from_file = parse(base + "[metrics]\nbearer_token_file = \"" + file.string() + "\"\n", "t.toml");
  CHECK(from_file.metrics.bearer_token == "fedcba9876543210-from-file");  // the line ending is not part of it
  CHECK(
      error_of(base + "[metrics]\nbearer_token = \"0123456789abcdef\"\nbearer_token_file = \"" + file.string() + "\"\n")
          .find("not both") != std::string::npos);
  std::filesystem::remove(file);
  CHECK(error_of(base + "[metrics]\nbearer_token_file = \"" + file.string() + "\"\n").find("cannot read") !=
        std::string::npos);
}

TEST_CASE("[store] kind = mysql: a URL, the password from the URL, an environment variable or a file, never logged") {
  const std::string base = "[driver]\nname = \"fake\"\n[store]\nkind = \"mysql\"\n";
  auto inline_pw = parse(base +
                             "url = \"mysql://berth:pw%40x@db:3307/berth\"\npool_size = 4\n"
                             "connect_timeout = \"3s\"\nstatement_timeout = 20\n",
                         "t.toml");
  CHECK(inline_pw.store.kind == "mysql");
  CHECK(inline_pw.store.password == "pw@x");
  CHECK(inline_pw.store.pool_size == 4);
  CHECK(inline_pw.store.connect_timeout == std::chrono::seconds(3));
  CHECK(inline_pw.store.statement_timeout == std::chrono::seconds(20));
  CHECK(error_of(base).find("store.url: kind = \"mysql\" needs url") != std::string::npos);
  CHECK(error_of(base + "url = \"postgres://a@b/c\"\n").find("mysql://") != std::string::npos);
  CHECK(error_of("[driver]\nname = \"fake\"\n[store]\nkind = \"postgres\"\n").find("sqlite | mysql") !=
        std::string::npos);

  const std::string var = "BERTH_TEST_DB_PW_" + std::to_string(::getpid());
  ::setenv(var.c_str(), "from-env-secret", 1);
  auto from_env = parse(base + "url = \"mysql://berth@db/berth\"\npassword_env = \"" + var + "\"\n", "t.toml");
  CHECK(from_env.store.password == "from-env-secret");
  ::unsetenv(var.c_str());
  CHECK(error_of(base + "url = \"mysql://berth@db/berth\"\npassword_env = \"" + var + "\"\n").find("is not set") !=
        std::string::npos);
  const std::string both = error_of(base + "url = \"mysql://berth:url-secret@db/berth\"\npassword_env = \"X\"\n");
  CHECK(both.find("give the password once") != std::string::npos);
  CHECK(both.find("url-secret") == std::string::npos);  // the error names the key, never the secret

  auto file = std::filesystem::temp_directory_path() / ("berth-dbpw-" + std::to_string(::getpid()));
  std::ofstream(file) << "file-secret\r\n";
  auto from_file =
      parse(base + "url = \"mysql://berth@db/berth\"\npassword_file = \"" + file.string() + "\"\n", "t.toml");
  CHECK(from_file.store.password == "file-secret");
  std::filesystem::remove(file);
}

TEST_CASE("[cluster]: defaults, explicit values, and a timeout that must outlast the heartbeat") {
  const std::string d = "[driver]\nname = \"fake\"\n";
  auto defaults = parse(d, "t.toml");
  CHECK(defaults.cluster.heartbeat_interval == std::chrono::seconds(5));
  CHECK(defaults.cluster.instance_timeout == std::chrono::seconds(30));
  CHECK(defaults.cluster.orphan_grace == std::chrono::seconds(300));
  CHECK(defaults.cluster.lease_ttl == std::chrono::seconds(120));
  CHECK(defaults.cluster.instance_retention == std::chrono::hours(24));
  auto set = parse(d + "[cluster]\nheartbeat_interval = \"1s\"\ninstance_timeout = \"3s\"\norphan_grace = \"0\"\n"
                       "lease_ttl = \"10m\"\ninstance_retention = \"1h\"\n",
                   "t.toml");
  CHECK(set.cluster.heartbeat_interval == std::chrono::seconds(1));
  CHECK(set.cluster.instance_timeout == std::chrono::seconds(3));
  CHECK(set.cluster.orphan_grace == std::chrono::seconds(0));
  CHECK(set.cluster.lease_ttl == std::chrono::seconds(600));
  CHECK(set.cluster.instance_retention == std::chrono::hours(1));
  CHECK_THAT(error_of(d + "[cluster]\nheartbeat_interval = \"10s\"\ninstance_timeout = \"10s\"\n"),
             Catch::Contains("cluster.instance_timeout") && Catch::Contains("longer than heartbeat_interval"));
  CHECK_THAT(error_of(d + "[cluster]\nbeat = \"1s\"\n"), Catch::Contains("cluster.beat"));
}
