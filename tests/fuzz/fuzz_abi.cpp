// libFuzzer target: the host side of the driver ABI (plugin::DriverLibrary, plugin::AbiDriver and the host
// callbacks in berth_host_api). The input is the script of fuzz_driver.c: random statuses, NULL/huge/unterminated
// strings, short struct_size on listings and entries, repeated callbacks. Every failure must reach the core as
// core::DriverError (or LoadError from configure); anything else escaping, and every sanitizer report, is a crash.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/clock.hpp"
#include "core/driver.hpp"
#include "core/log.hpp"
#include "plugin/driver_library.hpp"

namespace {

template <typename Fn>
void call(Fn&& fn) {
  try {
    fn();
  } catch (const berth::core::DriverError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const auto library = [] {
    berth::log::init(berth::log::Format::text, berth::log::Level::debug, "/dev/null");  // logs run, quietly
    return berth::plugin::DriverLibrary::open(BERTH_FUZZ_DRIVER);
  }();
  static const auto clock = std::make_shared<berth::core::FakeClock>();
  static const char* kHex = "0123456789abcdef";
  std::string config = "{\"script\":\"";
  for (std::size_t i = 0; i < size; ++i) {
    config += kHex[data[i] >> 4];
    config += kHex[data[i] & 15];
  }
  config += "\"}";

  std::unique_ptr<berth::core::Driver> driver;
  try {
    driver = library->configure(config, clock);
  } catch (const berth::plugin::LoadError&) {
    return 0;
  }
  using namespace berth::core;
  call([&] { driver->volume_create("v", {{"berth.test", "1"}}); });
  call([&] { driver->volume_remove("v"); });
  call([&] { (void)driver->volume_exists("v"); });
  SessionSpec spec;
  spec.session_id = "sess-fuzz";
  spec.image = "img";
  spec.workspace_mount_path = "/workspace";
  call([&] {
    auto info = driver->session_create(spec);
    if (info.handle.size() > BERTH_HANDLE_MAX || info.endpoint.size() > BERTH_ENDPOINT_MAX) __builtin_trap();
  });
  call([&] {
    auto info = driver->session_inspect("h");
    if (info.handle.size() > BERTH_HANDLE_MAX) __builtin_trap();
  });
  call([&] { driver->session_stop("h", std::chrono::milliseconds(10)); });
  call([&] { driver->session_remove("h"); });
  call([&] { (void)driver->session_list({{"berth.instance", "fuzz"}}); });
  call([&] { (void)driver->session_stats("h"); });
  call([&] { (void)driver->image_exists("img"); });
  (void)driver->supports_processes();
  call([&] {
    ProcessSpec ps;
    ps.argv = {"cat"};
    ps.pty = true;
    auto process = driver->process_start("h", ps);
    call([&] { process->write_stdin("stdin bytes"); });
    call([&] { process->signal(15, true); });
    call([&] { process->resize(40, 100); });
    for (int i = 0; i < 4; ++i) {
      call([&] {
        auto event = process->next_event(std::chrono::milliseconds(0));
        if (event.data.size() > 256) __builtin_trap();  // never more than the driver's buffer
      });
    }
    call([&] { process->close_stdin(); });
    call([&] { process->kill(); });
  });
  ExecRequest rq;
  rq.argv = {"sh", "-c", "true"};
  CancelToken token;
  std::size_t output = 0;
  call([&] {
    (void)driver->exec(
        "h", rq,
        [&](Stream, std::string_view piece) {
          output += piece.size();
          return true;
        },
        &token);
  });
  std::string content(700, 'x');
  std::size_t pos = 0;
  call([&] {
    driver->file_put("h", "f", 0644, content.size(), [&](std::uint8_t* buf, std::size_t cap) -> std::int64_t {
      const std::size_t n = std::min(cap, content.size() - pos);
      std::copy_n(content.data() + pos, n, buf);
      pos += n;
      return static_cast<std::int64_t>(n);
    });
  });
  call([&] { driver->file_get("h", "f", [](std::string_view) { return true; }); });
  call([&] { (void)driver->dir_list("h", "."); });
  call([&] { driver->path_remove("h", "f"); });
  return 0;
}
