// A SandboxService wired to real parts: the fake driver plugin loaded through the plugin host, a SQLite store in a
// fresh temporary directory, and a clock the test controls.
#pragma once

#include <Poco/TemporaryFile.h>

#include <filesystem>
#include <memory>
#include <string>

#include "core/clock.hpp"
#include "core/ids.hpp"
#include "core/log.hpp"
#include "core/sandbox_service.hpp"
#include "plugin/driver_library.hpp"
#include "store/store.hpp"

namespace berth::test {

inline core::Settings test_settings() {
  core::Settings s;
  core::Profile p;
  p.name = "default";
  p.image = "berth/python:3.11";
  p.idle_timeout = std::chrono::seconds(60);
  s.profiles["default"] = p;
  core::Profile shortlived = p;
  shortlived.name = "short";
  shortlived.ttl = std::chrono::seconds(10);
  s.profiles["short"] = shortlived;
  core::Profile shell_only = p;
  shell_only.name = "shell-only";
  shell_only.capabilities = {"shell"};
  s.profiles["shell-only"] = shell_only;
  s.instance_id = "berth-test";
  s.start_wait = std::chrono::milliseconds(5000);
  s.limits.max_sandboxes_per_owner = 0;  // the fake clock never refills a bucket: quotas are tested on their own
  s.limits.create_rate_per_minute = 0;
  return s;
}

struct ServiceFixture {
  explicit ServiceFixture(const std::string& driver_config = "{}", core::Settings settings = test_settings(),
                          std::shared_ptr<core::Clock> clock_in = nullptr)
      : dir(std::filesystem::temp_directory_path() /
            ("berth-core-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++))),
        clock(clock_in ? clock_in : std::make_shared<core::FakeClock>()) {
    std::filesystem::create_directories(dir);
    log::init(log::Format::text, log::Level::warn);
    library = plugin::DriverLibrary::open(BERTH_FAKE_DRIVER);
    driver = library->configure(driver_config, clock);
    store = store::open_sqlite_store((dir / "berth.db").string());
    service = std::make_unique<core::SandboxService>(*store, *driver, clock, std::move(settings));
  }
  ~ServiceFixture() {
    service.reset();
    store.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  core::FakeClock& fake_clock() { return dynamic_cast<core::FakeClock&>(*clock); }

  std::string create(core::CreateSandboxRequest rq = {}) { return service->create_sandbox(owner, rq).sandbox.row.id; }

  core::ExecOutcome shell(const std::string& id, const std::string& command) {
    return service->exec(owner, id, core::ExecKind::shell, command, std::nullopt, "");
  }

  /** Containers the driver runs for one sandbox. */
  std::size_t containers_of(const std::string& id) { return driver->session_list({{"berth.sandbox", id}}).size(); }

  static int& counter() {
    static int n = 0;
    return n;
  }

  std::filesystem::path dir;
  std::shared_ptr<core::Clock> clock;
  std::shared_ptr<plugin::DriverLibrary> library;
  std::unique_ptr<core::Driver> driver;
  std::unique_ptr<store::Store> store;
  std::unique_ptr<core::SandboxService> service;
  std::string owner = "alice";
};

/** Runs `fn` and returns the core error code it throws (fails the test if it does not throw one). */
template <typename Fn>
core::ErrorCode error_code_of(Fn&& fn) {
  try {
    fn();
  } catch (const core::Error& e) {
    return e.code();
  }
  FAIL("expected a core::Error");
  return core::ErrorCode::internal;
}

}  // namespace berth::test
