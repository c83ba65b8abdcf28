#include "app/daemon.hpp"

#include <Poco/Net/HTTPServer.h>

#include <iostream>

#include "api/http_api.hpp"
#include "config/config.hpp"
#include "core/clock.hpp"
#include "core/log.hpp"
#include "plugin/driver_library.hpp"

namespace berth::app {
namespace {

constexpr int kExitConfig = 78;
constexpr int kExitDriver = 69;
constexpr int kExitSoftware = 70;

std::vector<std::filesystem::path> search_path(const config::DriverConfig& d) {
  std::vector<std::filesystem::path> out(d.search_path.begin(), d.search_path.end());
  auto defaults = plugin::default_search_path();
  out.insert(out.end(), defaults.begin(), defaults.end());
  return out;
}

}  // namespace

int run_daemon(const std::string& config_path, bool check_only, const std::function<void()>& wait_for_termination) {
  config::Config cfg;
  try {
    cfg = config::load(config_path);
  } catch (const config::ConfigError& e) {
    std::cerr << "berthd: config error: " << e.what() << "\n";
    return kExitConfig;
  }
  log::init(cfg.log.format == "json" ? log::Format::json : log::Format::text, log::parse_level(cfg.log.level),
            cfg.log.file);

  auto clock = std::make_shared<core::SystemClock>();
  std::shared_ptr<plugin::DriverLibrary> library;
  std::unique_ptr<core::Driver> driver;
  try {
    auto file = plugin::resolve_driver(cfg.driver.path.empty() ? cfg.driver.name : cfg.driver.path,
                                       search_path(cfg.driver));
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
    api::HttpApi server(cfg, *driver, clock);
    server.start();
    log::info("berthd.started", {{"listen", cfg.server.host + ":" + std::to_string(server.port())},
                                 {"version", BERTH_VERSION}});
    wait_for_termination();
    log::info("berthd.stopping", {{"grace_s", std::to_string(cfg.server.shutdown_grace.count())}});
    server.stop(cfg.server.shutdown_grace);
  } catch (const std::exception& e) {
    std::cerr << "berthd: " << e.what() << "\n";
    log::error("berthd.failed", {{"error", e.what()}});
    return kExitSoftware;
  }
  log::info("berthd.stopped");
  return 0;
}

}  // namespace berth::app
