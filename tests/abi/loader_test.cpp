// The plugin loader against real shared libraries: a valid C driver, a driver built for ABI 1.0, and one broken
// driver per rule of sdk/include/berth/driver.h.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "core/clock.hpp"
#include "core/log.hpp"
#include "plugin/driver_library.hpp"

using namespace berth;

namespace {

std::string variant(const std::string& name) {
  return std::string(BERTH_TEST_DRIVER_DIR) + "/abi_" + name + ".so";
}

std::string load_error(const std::string& path) {
  try {
    auto lib = plugin::DriverLibrary::open(path);
    lib->configure("{}", std::make_shared<core::SystemClock>());
  } catch (const plugin::LoadError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("a valid C driver loads, configures and answers calls") {
  auto lib = plugin::DriverLibrary::open(variant("valid"));
  CHECK(lib->identity().name == "abi-test");
  CHECK(lib->identity().version == "1.2.3");
  CHECK(lib->identity().abi_major == 1);
  CHECK(lib->identity().abi_minor == BERTH_ABI_VERSION_MINOR);
  auto driver = lib->configure("{}", std::make_shared<core::SystemClock>());
  std::string out;
  core::ExecRequest rq;
  rq.argv = {"echo-me"};
  driver->exec(
      "h", rq, [&](core::Stream, std::string_view d) { return out.append(d), true; }, nullptr);
  CHECK(out == "echo-me");
  const auto stats = driver->session_stats("h");
  CHECK(stats.pids == 1);
  CHECK(stats.workspace_bytes == 1u << 20);  // ABI 1.2 disk fields cross the boundary
  CHECK(stats.rootfs_bytes == 4096);
  // Status mapping: the driver's NOT_FOUND and its message reach the core as one DriverError.
  try {
    driver->volume_remove("v");
    FAIL("expected DriverError");
  } catch (const core::DriverError& e) {
    CHECK(e.code() == core::DriverErrc::not_found);
    CHECK(std::string(e.what()).find("no such volume") != std::string::npos);
    CHECK_FALSE(e.retryable());
  }
}

TEST_CASE("a failing configure is reported with the driver's message") {
  auto lib = plugin::DriverLibrary::open(variant("valid"));
  try {
    lib->configure("{\"fail\":true}", std::make_shared<core::SystemClock>());
    FAIL("expected LoadError");
  } catch (const plugin::LoadError& e) {
    CHECK(std::string(e.what()).find("config says fail") != std::string::npos);
  }
}

TEST_CASE("a driver built against an older minor (shorter table) still loads") {
  auto lib = plugin::DriverLibrary::open(variant("old_minor"));
  CHECK(lib->identity().abi_minor == 0);
  CHECK((lib->identity().capabilities & BERTH_CAP_STATS) == 0);  // no slot, so the capability is withdrawn
  CHECK(lib->api().session_stats == nullptr);
  auto driver = lib->configure("{}", std::make_shared<core::SystemClock>());
  CHECK(driver->session_create(core::SessionSpec{.session_id = "s1"}).handle == "s1");
  try {
    driver->session_stats("s1");
    FAIL("expected unsupported");
  } catch (const core::DriverError& e) {
    CHECK(e.code() == core::DriverErrc::unsupported);
  }
}

TEST_CASE("a driver built against the 1.1 header (no image_exists) loads and works") {
  auto lib = plugin::DriverLibrary::open(variant("old_minor_1"));
  CHECK(lib->identity().abi_minor == 1);
  CHECK(lib->api().session_stats != nullptr);
  CHECK(lib->api().image_exists == nullptr);
  auto driver = lib->configure("{}", std::make_shared<core::SystemClock>());
  CHECK(driver->session_stats("h").pids == 1);
  CHECK_FALSE(driver->image_exists("berth/python:3.11").has_value());  // "cannot tell", never "absent"
}

TEST_CASE("an ABI 1.1 driver still loads, and its stats carry no disk usage (0 = unknown)") {
  auto lib = plugin::DriverLibrary::open(variant("stats_1_1"));
  CHECK(lib->identity().abi_minor == 1);
  CHECK((lib->identity().capabilities & BERTH_CAP_STATS) != 0);
  auto driver = lib->configure("{}", std::make_shared<core::SystemClock>());
  const auto stats = driver->session_stats("h");
  CHECK(stats.pids == 1);
  CHECK(stats.workspace_bytes == 0);
  CHECK(stats.rootfs_bytes == 0);
}

TEST_CASE("each broken driver is rejected with a clear reason") {
  struct Case {
    const char* variant;
    const char* reason;
  };
  const Case cases[] = {
      {"broken_no_entry", "missing entry symbol 'berth_driver_entry'"},
      {"broken_entry_null", "driver refused host ABI"},
      {"broken_major", "ABI major mismatch: driver speaks 2."},
      {"broken_minor_newer", "but host provides"},
      {"broken_undersized", "driver table too small"},
      {"broken_oversized", "driver table too large"},
      {"broken_null_callback", "required callback 'exec' is NULL"},
      {"broken_bad_name", "driver name missing or not"},
      {"broken_configure_status", "configure returned unknown status 99"},
      {"broken_configure_null", "configure returned OK but no instance"},
      {"throwing", "configure threw an exception"},
  };
  for (const auto& c : cases) {
    INFO(c.variant);
    auto message = load_error(variant(c.variant));
    CHECK(message.find(c.reason) != std::string::npos);
    CHECK(message.find(variant(c.variant)) != std::string::npos);  // names the file
    CHECK(message.find('\n') == std::string::npos);                // one line
  }
}

TEST_CASE("a file that is not a shared library is rejected") {
  auto path = std::filesystem::temp_directory_path() / "berth-not-a-driver.so";
  { std::ofstream(path) << "not an ELF file"; }
  CHECK(load_error(path.string()).find("not a loadable shared library") != std::string::npos);
  std::filesystem::remove(path);
}

TEST_CASE("drivers are found by name on the search path") {
  auto fake = std::filesystem::path(BERTH_FAKE_DRIVER);
  CHECK(plugin::resolve_driver("fake", {"/nonexistent", fake.parent_path()}) == fake.parent_path() / fake.filename());
  CHECK(plugin::resolve_driver(fake.string(), {}) == fake);
  try {
    plugin::resolve_driver("nosuch", {"/nonexistent-a", "/nonexistent-b"});
    FAIL("expected LoadError");
  } catch (const plugin::LoadError& e) {
    std::string m = e.what();
    CHECK(m.find("berth_driver_nosuch.so") != std::string::npos);
    CHECK(m.find("/nonexistent-a, /nonexistent-b") != std::string::npos);
  }
}

TEST_CASE("the fake driver loads through the same loader") {
  auto lib = plugin::DriverLibrary::open(BERTH_FAKE_DRIVER);
  CHECK(lib->identity().name == "fake");
  CHECK((lib->identity().capabilities & BERTH_CAP_EXEC) != 0);
}

TEST_CASE("host callbacks are bounded and read only what the driver filled in") {
  // The HOSTILE variant makes legal calls with outsized contents (see tests/abi/test_driver.c).
  auto log_file = std::filesystem::temp_directory_path() / ("berth-abi-log-" + std::to_string(::getpid()));
  std::filesystem::remove(log_file);
  log::init(log::Format::text, log::Level::debug, log_file.string());
  auto lib = plugin::DriverLibrary::open(variant("hostile"));
  auto driver = lib->configure("{}", std::make_shared<core::SystemClock>());

  SECTION("a 1 MiB error message is cut, not copied whole") {
    try {
      driver->volume_remove("v");
      FAIL("expected DriverError");
    } catch (const core::DriverError& e) {
      CHECK(e.code() == core::DriverErrc::not_found);
      const std::string what = e.what();
      CHECK(what.find("mmmm") != std::string::npos);
      CHECK(what.find("(truncated)") != std::string::npos);
      CHECK(what.size() < 20 * 1024);
    }
  }
  SECTION("a log call with 1,000 fields and 1 MiB strings writes bounded lines") {
    driver->volume_create("v", {});
    log::init(log::Format::text, log::Level::warn);  // flush and release the file
    std::ifstream in(log_file);
    std::string line;
    int hostile_lines = 0;
    int long_event_lines = 0;
    while (std::getline(in, line)) {
      CHECK(line.size() < 16 * 1024);
      if (line.find("abi_test.hostile") != std::string::npos) {
        ++hostile_lines;
        CHECK(line.find("dropped_fields=936") != std::string::npos);  // 1,000 fields, 64 kept
        CHECK(line.find("(truncated)") != std::string::npos);
      }
      if (line.find(std::string(256, 'e')) != std::string::npos) {
        ++long_event_lines;
        CHECK(line.find(std::string(257, 'e')) == std::string::npos);  // the event name is cut at 256 bytes
      }
    }
    CHECK(hostile_lines == 1);
    CHECK(long_event_lines == 1);
  }
  SECTION("a listing entry is read only up to its struct_size; the rest reads as zero") {
    auto entries = driver->dir_list("h", ".");
    REQUIRE(entries.size() == 1);
    CHECK(entries[0].name == "short.txt");
    CHECK(entries[0].type == core::EntryType::file);
    CHECK(entries[0].size == 0);
    CHECK(entries[0].mode == 0);
  }
  SECTION("a label count without labels is no labels") {
    auto sessions = driver->session_list({});
    REQUIRE(sessions.size() == 1);
    CHECK(sessions[0].handle == "h1");
    CHECK(sessions[0].labels.empty());
  }
  driver.reset();
  log::init(log::Format::text, log::Level::warn);
  std::filesystem::remove(log_file);
}
