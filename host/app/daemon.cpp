#include "app/daemon.hpp"

#include <Poco/Environment.h>
#include <Poco/SHA1Engine.h>

#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "api/http_api.hpp"
#include "app/crash_handler.hpp"
#include "config/config.hpp"
#include "core/cleanup_task.hpp"
#include "core/clock.hpp"
#include "core/idempotency.hpp"
#include "core/instance_registry.hpp"
#include "core/log.hpp"
#include "core/metered_driver.hpp"
#include "core/sandbox_service.hpp"
#include "metrics/prometheus_metrics.hpp"
#include "plugin/driver_library.hpp"
#include "store/store.hpp"

namespace berth::app {
namespace {

constexpr int kExitConfig = 78;
constexpr int kExitDriver = 69;
constexpr int kExitSoftware = 70;
/** After the grace, how long cancelled execs get to unwind before berthd leaves without them. */
constexpr std::chrono::seconds kCancelWait{5};

std::vector<std::filesystem::path> search_path(const config::DriverConfig& d) {
  std::vector<std::filesystem::path> out(d.search_path.begin(), d.search_path.end());
  auto defaults = plugin::default_search_path();
  out.insert(out.end(), defaults.begin(), defaults.end());
  return out;
}

/** Stable across restarts, so a restarted berthd recognises (and adopts or cleans) its own containers. */
std::string instance_id(const config::Config& cfg) {
  if (!cfg.driver.instance_id.empty()) return cfg.driver.instance_id;
  Poco::SHA1Engine sha;
  if (cfg.store.kind == "mysql") {
    // Several berthd share one database: the instance is this host and listen address on that database.
    sha.update(Poco::Environment::nodeName() + "|" + cfg.server.host + ":" + std::to_string(cfg.server.port) + "|" +
               store::parse_mysql_url(cfg.store.url).redacted_url());
  } else {
    sha.update(std::filesystem::absolute(cfg.store.path).lexically_normal().string());
  }
  return "berth-" + Poco::DigestEngine::digestToHex(sha.digest()).substr(0, 12);
}

/** The configured store, opened and migrated; logs store.opened (a MySQL URL without its password). */
std::unique_ptr<store::Store> open_store(const config::StoreConfig& cfg) {
  if (cfg.kind == "mysql") {
    auto options = store::parse_mysql_url(cfg.url);
    options.password = cfg.password;
    options.pool_size = cfg.pool_size;
    options.connect_timeout = cfg.connect_timeout;
    options.statement_timeout = cfg.statement_timeout;
    auto opened = store::open_mysql_store(options);
    log::info("store.opened",
              {{"kind", cfg.kind}, {"url", options.redacted_url()}, {"pool_size", std::to_string(cfg.pool_size)}});
    return opened;
  }
  auto opened = store::open_sqlite_store(cfg.path);
  log::info("store.opened", {{"kind", cfg.kind}, {"path", cfg.path}});
  return opened;
}

/** Profiles over the API and in the store are read by the config loader's own rules (config::profile_from_json). */
core::ProfileCodec profile_codec(const config::Config& cfg) {
  core::ProfileCodec codec;
  codec.parse = [cfg](const std::string& name, const std::string& json) {
    try {
      return config::profile_from_json(name, json, cfg);
    } catch (const config::ConfigError& e) {
      std::map<std::string, std::string> details;
      if (!e.key().empty()) details["field"] = e.key();
      throw core::Error(core::ErrorCode::validation_error, e.what(), std::move(details));
    }
  };
  codec.serialize = [](const core::Profile& p) { return config::profile_to_json(p); };
  return codec;
}

core::Settings core_settings(const config::Config& cfg) {
  core::Settings s;
  s.profiles = cfg.profiles;
  s.default_profile = cfg.default_profile;
  s.profile_codec = profile_codec(cfg);
  s.instance_id = instance_id(cfg);
  s.start_wait = cfg.server.start_wait;
  s.exec_via_processes = cfg.server.exec_via_processes;
  s.max_contexts_per_sandbox = static_cast<std::size_t>(cfg.server.max_contexts_per_sandbox);
  s.max_terminals = static_cast<std::size_t>(cfg.server.max_terminals);
  s.max_terminals_per_sandbox = static_cast<std::size_t>(cfg.server.max_terminals_per_sandbox);
  // Per-owner caps share a berthd between tenants; without tenant keys every caller is the one anonymous owner,
  // and a per-owner cap would only lower the server's own limits.
  const bool tenants = !cfg.auth.keys.empty();
  s.max_terminals_per_owner = tenants ? static_cast<std::size_t>(cfg.server.max_terminals_per_owner) : 0;
  s.max_async_per_owner = tenants ? static_cast<std::size_t>(cfg.server.max_async_per_owner) : 0;
  s.max_file_size = cfg.server.max_file_size;
  s.limits = cfg.limits;
  s.dir_page_max = static_cast<std::size_t>(cfg.listing.max_entries);
  s.history_field_cap = cfg.history.output_cap;
  s.history_response_bytes = cfg.history.response_max_bytes;
  s.history_max_age = cfg.history.max_age;
  s.history_max_records = static_cast<std::size_t>(cfg.history.max_records);
  s.cleanup_call_deadline = cfg.cleanup.call_deadline;
  return s;
}

core::ClusterSettings cluster_settings(const config::Config& cfg) {
  core::ClusterSettings c;
  c.heartbeat_interval = cfg.cluster.heartbeat_interval;
  c.instance_timeout = cfg.cluster.instance_timeout;
  c.orphan_grace = cfg.cluster.orphan_grace;
  c.instance_retention = cfg.cluster.instance_retention;
  c.lease_ttl = cfg.cluster.lease_ttl;
  return c;
}

api::ApiSettings api_settings(const config::Config& cfg) {
  api::ApiSettings a;
  a.host = cfg.server.host;
  a.port = cfg.server.port;
  a.threads = cfg.server.threads;
  a.queue = cfg.server.queue;
  a.admission.slots = cfg.server.work_slots;
  a.admission.queue = cfg.server.work_queue;
  a.admission.queue_timeout = cfg.server.work_queue_timeout;
  a.max_body = cfg.server.max_body;
  a.terminal_origins = cfg.server.terminal_origins;
  a.max_file_size = cfg.server.max_file_size;
  a.connection.header_timeout = cfg.server.header_timeout;
  a.connection.keep_alive_timeout = cfg.server.keep_alive_timeout;
  a.connection.min_transfer_rate = cfg.server.min_transfer_rate;
  a.connection.rate_window = cfg.server.transfer_rate_window;
  a.connection.max_connections_per_client = cfg.server.max_connections_per_client;
  a.api_keys = cfg.auth.keys;
  a.admin_keys = cfg.auth.admin_keys;
  a.allow_anonymous = cfg.auth.allow_anonymous;
  a.anonymous_owner = cfg.auth.anonymous_owner;
  a.metrics_bearer_token = cfg.metrics.bearer_token;
  return a;
}

}  // namespace

int run_daemon(const std::string& config_path, bool check_only, const std::function<void()>& wait_for_termination) {
  // A client that hangs up mid-response makes a write fail with EPIPE; the default SIGPIPE would kill the daemon.
  std::signal(SIGPIPE, SIG_IGN);
  config::Config cfg;
  try {
    cfg = config::load(config_path);
  } catch (const config::ConfigError& e) {
    std::cerr << "berthd: config error: " << e.what() << "\n";
    return kExitConfig;
  }
  log::init(cfg.log.format == "json" ? log::Format::json : log::Format::text, log::parse_level(cfg.log.level),
            cfg.log.file);
  try {
    install_crash_handler(cfg.log.file, cfg.log.format == "json");
  } catch (const std::exception& e) {
    std::cerr << "berthd: " << e.what() << "\n";
    return kExitConfig;
  }
  crash_if_requested_for_test();

  auto clock = std::make_shared<core::SystemClock>();
  std::shared_ptr<plugin::DriverLibrary> library;
  std::unique_ptr<core::Driver> driver;
  try {
    auto file =
        plugin::resolve_driver(cfg.driver.path.empty() ? cfg.driver.name : cfg.driver.path, search_path(cfg.driver));
    library = plugin::DriverLibrary::open(file);
    driver = library->configure(cfg.driver.settings_json, clock);
  } catch (const plugin::LoadError& e) {
    std::cerr << "berthd: " << e.what() << "\n";
    return kExitDriver;
  }
  const auto& id = driver->identity();
  log::info("driver.loaded", {{"name", id.name},
                              {"version", id.version},
                              {"abi", std::to_string(id.abi_major) + "." + std::to_string(id.abi_minor)},
                              {"path", id.path}});
  if (check_only) {
    std::cout << "berthd: configuration " << config_path << " is valid (driver " << id.name << " " << id.version
              << ")\n";
    return 0;
  }

  try {
    auto store = open_store(cfg.store);
    // Metrics: the registry counts requests (HTTP layer), execs and cleanup passes (core) and driver calls (the
    // MeteredDriver around the plugin). Disabled, the core talks to the plugin directly and counts nothing.
    std::unique_ptr<metrics::PrometheusMetrics> registry;
    std::unique_ptr<core::MeteredDriver> metered;
    core::Driver* core_driver = driver.get();
    if (cfg.metrics.enabled) {
      registry = std::make_unique<metrics::PrometheusMetrics>(api::metric_routes());
      metered = std::make_unique<core::MeteredDriver>(*driver, *registry);
      core_driver = metered.get();
    }
    log::info("metrics.configured", {{"enabled", cfg.metrics.enabled ? "true" : "false"},
                                     {"bearer_token", cfg.metrics.bearer_token.empty() ? "none" : "set"}});
    core::SandboxService service(*store, *core_driver, clock, core_settings(cfg),
                                 registry ? static_cast<core::Metrics&>(*registry) : core::null_metrics());
    core::IdempotencyRegistry idempotency(*store, clock);
    core::CleanupTask cleanup(service, cfg.cleanup.interval);
    api::HttpApi server(api_settings(cfg), service, idempotency, clock, registry.get());
    // Both SQL stores keep instance rows and cleanup leases (core::InstanceStore): several berthd on one database
    // hand over each other's sessions and never clean one sandbox twice.
    std::unique_ptr<core::InstanceRegistry> instances;
    if (auto* instance_store = dynamic_cast<core::InstanceStore*>(store.get())) {
      core::InstanceRecord self;
      self.id = service.settings().instance_id;
      self.host = Poco::Environment::nodeName();
      self.pid = ::getpid();
      instances = std::make_unique<core::InstanceRegistry>(*instance_store, service, clock, cluster_settings(cfg),
                                                           std::move(self));
    }
    service.recover();  // before serving: sessions a killed predecessor left starting are settled at once
    if (instances) instances->start();
    server.start();
    if (cfg.cleanup.enabled) cleanup.start();
    log::info("berthd.started", {{"listen", cfg.server.host + ":" + std::to_string(server.port())},
                                 {"version", BERTH_VERSION},
                                 {"instance", service.settings().instance_id}});
    wait_for_termination();
    // Shutdown order: refuse new work, let running requests finish within the grace, then cancel the execs still
    // running, and only once every handler has returned close the store (the destructors below run in reverse
    // order: server, cleanup, idempotency, service, store last).
    log::info("berthd.stopping", {{"grace_s", std::to_string(cfg.server.shutdown_grace.count())}});
    server.begin_shutdown();
    cleanup.stop();
    const auto shutdown_started = std::chrono::steady_clock::now();
    int left = server.wait_for_handlers(cfg.server.shutdown_grace);
    if (left > 0) {
      service.begin_shutdown();  // cancelled execs answer 503 shutting_down
      left = server.wait_for_handlers(kCancelWait);
    }
    // Async executions run on without a handler: what is left of the grace, then cancelled (failed, in the history).
    const auto grace_left = std::chrono::duration_cast<std::chrono::milliseconds>(
        cfg.server.shutdown_grace - (std::chrono::steady_clock::now() - shutdown_started));
    left += static_cast<int>(service.stop_async(std::max(grace_left, std::chrono::milliseconds(0)), kCancelWait));
    if (left > 0) {
      // Closing the store (or freeing the service) under a running handler is a use after close: leave instead.
      // SQLite's journal keeps the database consistent; the next start reconciles sessions. The execution records
      // the recorder still holds are written first (the store is still open).
      try {
        service.flush_records(kCancelWait);
      } catch (const std::exception& e) {
        log::error("exec_recorder.flush_failed", {{"error", e.what()}});
      }
      log::warn("berthd.shutdown_forced", {{"handlers_running", std::to_string(left)}});
      log::flush();
      std::_Exit(0);
    }
    // The last execution records and idle timers first: once this instance is marked stopped, the others adopt its
    // sessions and judge their idleness from the rows.
    try {
      service.flush_records(kCancelWait);
    } catch (const std::exception& e) {
      log::error("exec_recorder.flush_failed", {{"error", e.what()}});
    }
    if (instances) instances->stop();  // no handler runs any more: the others may adopt what is left at once
    server.close();
  } catch (const std::exception& e) {
    std::cerr << "berthd: " << e.what() << "\n";
    log::error("berthd.failed", {{"error", e.what()}});
    return kExitSoftware;
  }
  log::info("berthd.stopped");
  return 0;
}

}  // namespace berth::app
