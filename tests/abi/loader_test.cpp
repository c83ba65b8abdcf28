// The plugin loader against real shared libraries: a valid C driver, a driver built for ABI 1.0, and one broken
// driver per rule of sdk/include/berth/driver.h.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <functional>

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
      {"negotiate_refuse", "driver refused host ABI"},
      {"broken_half_process", "the process_* callbacks (ABI 1.3) must all be set or all be NULL"},
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

// ---- ABI 1.3: negotiation, old headers, unknown values, instance capabilities ---------------------------------

namespace {

std::unique_ptr<core::Driver> configure_variant(const std::string& name, const std::string& config = "{}") {
  return plugin::DriverLibrary::open(variant(name))->configure(config, std::make_shared<core::SystemClock>());
}

/** Every event of a process until its exit (bounded: the drivers here script a handful of events). */
std::vector<core::ProcessEvent> drain(core::Process& p) {
  std::vector<core::ProcessEvent> events;
  for (int i = 0; i < 100; ++i) {
    events.push_back(p.next_event(std::chrono::milliseconds(0)));
    if (events.back().kind == core::ProcessEvent::Kind::exit) break;
  }
  return events;
}

}  // namespace

TEST_CASE("drivers built from the old 1.1 and 1.2 headers load and work on a 1.3 host") {
  for (const std::string old : {"1_1", "1_2"}) {
    INFO("header " << old);
    auto lib = plugin::DriverLibrary::open(variant("header_" + old));
    CHECK(lib->identity().name == "old-header");
    CHECK(lib->identity().abi_minor == (old == "1_1" ? 1u : 2u));
    CHECK(lib->api().process_start == nullptr);  // beyond its table: never read, so NULL
    CHECK(lib->api().instance_capabilities == nullptr);
    auto driver = lib->configure("{}", std::make_shared<core::SystemClock>());
    CHECK_FALSE(driver->supports_processes());
    CHECK((driver->identity().capabilities & BERTH_CAP_PROCESS) == 0);
    CHECK(driver->session_create(core::SessionSpec{.session_id = "s1"}).handle == "s1");
    CHECK(driver->session_inspect("s1").state == core::SessionState::running);
    core::ExecRequest rq;
    rq.argv = {"cat"};
    rq.stdin_data = "fed on stdin";
    std::string out;
    driver->exec(
        "s1", rq, [&](core::Stream s, std::string_view d) { return s == core::Stream::out && (out.append(d), true); },
        nullptr);
    CHECK(out == "fed on stdin");
    CHECK(driver->session_stats("s1").pids == 2);
    if (old == "1_1") {
      CHECK_FALSE(driver->image_exists("old/present:1").has_value());
    } else {
      CHECK(driver->image_exists("old/present:1") == std::optional<bool>(true));
      CHECK(driver->image_exists("old/absent:1") == std::optional<bool>(false));
    }
    try {
      driver->process_start("s1", core::ProcessSpec{.argv = {"cat"}});
      FAIL("expected unsupported");
    } catch (const core::DriverError& e) {
      CHECK(e.code() == core::DriverErrc::unsupported);
    }
  }
}

TEST_CASE("a 1.3 driver that negotiates down to 1.1 is used as a 1.1 driver") {
  auto lib = plugin::DriverLibrary::open(variant("negotiate_down"));
  CHECK(lib->identity().abi_minor == 1);
  // Its table has the 1.2 and 1.3 slots, but the agreed version does not: the host must not call them.
  CHECK(lib->api().image_exists == nullptr);
  CHECK(lib->api().instance_capabilities == nullptr);
  CHECK(lib->api().process_start == nullptr);
  CHECK(lib->api().session_stats != nullptr);
  auto driver = lib->configure("{}", std::make_shared<core::SystemClock>());
  CHECK_FALSE(driver->supports_processes());
  CHECK((driver->identity().capabilities & BERTH_CAP_PROCESS) == 0);  // no slot, so the capability is withdrawn
  CHECK(driver->identity().abi_minor == 1);
  CHECK(driver->session_stats("h").pids == 1);
}

TEST_CASE("a driver with a newer minor than the host loads when it negotiates down") {
  auto lib = plugin::DriverLibrary::open(variant("newer_minor_negotiated"));
  CHECK(lib->identity().abi_minor == BERTH_ABI_VERSION_MINOR);  // the host's, not the table's
  CHECK(lib->api().struct_size == BERTH_DRIVER_API_SIZE_1_3);   // the host read no byte beyond what it knows
  auto driver = lib->configure("{}", std::make_shared<core::SystemClock>());
  CHECK(driver->supports_processes());
  auto p = driver->process_start("h", core::ProcessSpec{.argv = {"x"}});
  p->write_stdin("hi");
  auto events = drain(*p);
  REQUIRE_FALSE(events.empty());
  CHECK(events.back().kind == core::ProcessEvent::Kind::exit);
  CHECK(events.back().exit.exit_code == 3);
  // Without negotiation the same newer table is refused (the one-way rule of ABI <= 1.2).
  CHECK(load_error(variant("broken_minor_newer")).find("but host provides") != std::string::npos);
}

TEST_CASE("unknown enum values from a newer driver read as the documented fallback, never as missing") {
  auto driver = configure_variant("unknown_enums");
  SECTION("a session state it does not know is unknown, not missing") {
    const auto info = driver->session_inspect("h");
    CHECK(info.state == core::SessionState::unknown);
    CHECK(info.handle == "h-new-state");
    CHECK(core::to_string(info.state) == "unknown");
  }
  SECTION("a directory entry type it does not know is other") {
    auto entries = driver->dir_list("h", ".");
    REQUIRE(entries.size() == 1);
    CHECK(entries[0].type == core::EntryType::other);
    CHECK(entries[0].name == "new-kind");
    CHECK(entries[0].size == 7);
  }
  SECTION("an exec chunk on a stream it does not know is kept, as stderr") {
    std::string out, err;
    core::ExecRequest rq;
    rq.argv = {"prog"};
    driver->exec(
        "h", rq,
        [&](core::Stream s, std::string_view d) {
          (s == core::Stream::out ? out : err).append(d);
          return true;
        },
        nullptr);
    CHECK(out == "prog");
    CHECK(err == "odd");
  }
  SECTION("a process event type it does not know is skipped; an unknown stream is stderr") {
    auto p = driver->process_start("h", core::ProcessSpec{.argv = {"x"}});
    p->write_stdin("abc");
    p->close_stdin();
    auto events = drain(*p);
    REQUIRE(events.size() == 4);
    CHECK(events[0].kind == core::ProcessEvent::Kind::none);
    CHECK(events[1].kind == core::ProcessEvent::Kind::output);
    CHECK(events[1].stream == core::Stream::err);
    CHECK(events[1].data == "odd");
    CHECK(events[2].stream == core::Stream::out);
    CHECK(events[2].data == "abc");  // the driver's buffer was copied before the next call
    CHECK(events[3].exit.exit_code == 3);
    CHECK_FALSE(events[3].exit.killed);
    CHECK(p->next_event(std::chrono::milliseconds(0)).kind == core::ProcessEvent::Kind::exit);  // repeated
    // Errors map as every other call does.
    try {
      p->signal(0, false);
      FAIL("expected invalid_argument");
    } catch (const core::DriverError& e) {
      CHECK(e.code() == core::DriverErrc::invalid_argument);
      CHECK(std::string(e.what()).find("bad signal") != std::string::npos);
    }
  }
}

TEST_CASE("instance capabilities narrow the table's, and never widen them") {
  const std::uint64_t table_caps = BERTH_CAP_EXEC | BERTH_CAP_STATS | BERTH_CAP_PROCESS;
  auto lib = plugin::DriverLibrary::open(variant("instance_caps"));
  CHECK(lib->identity().capabilities == table_caps);
  auto wide = lib->configure("{}", std::make_shared<core::SystemClock>());
  CHECK(wide->identity().capabilities == table_caps);  // it answered every bit: only the table's count
  CHECK(wide->supports_processes());
  CHECK(wide->session_stats("h").pids == 1);

  auto narrow = lib->configure("{\"narrow\":true}", std::make_shared<core::SystemClock>());
  CHECK(narrow->identity().capabilities == BERTH_CAP_EXEC);
  CHECK_FALSE(narrow->supports_processes());
  CHECK_FALSE(narrow->has_capability(BERTH_CAP_STATS));
  for (const auto& call : std::vector<std::function<void()>>{[&] { narrow->session_stats("h"); },
                                                             [&] { narrow->process_start("h", {.argv = {"x"}}); }}) {
    try {
      call();
      FAIL("expected unsupported");
    } catch (const core::DriverError& e) {
      CHECK(e.code() == core::DriverErrc::unsupported);
    }
  }
  CHECK(lib->identity().capabilities == table_caps);  // the library's view is not changed by an instance
}

TEST_CASE("the fake driver negotiates two-way and narrows its capabilities by configuration") {
  auto lib = plugin::DriverLibrary::open(BERTH_FAKE_DRIVER);
  CHECK(lib->identity().abi_minor == BERTH_ABI_VERSION_MINOR);
  auto on = lib->configure("{}", std::make_shared<core::SystemClock>());
  CHECK(on->supports_processes());
  CHECK(on->has_capability(BERTH_CAP_PROCESS_PTY));
  auto off = lib->configure("{\"processes\":false}", std::make_shared<core::SystemClock>());
  CHECK_FALSE(off->supports_processes());
  CHECK_FALSE(off->has_capability(BERTH_CAP_PROCESS_PTY));
  CHECK(off->has_capability(BERTH_CAP_EXEC));
}
