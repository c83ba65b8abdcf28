#include "core/metered_driver.hpp"

#include <chrono>
#include <type_traits>

namespace berth::core {

template <typename Fn>
auto MeteredDriver::timed(std::string_view call, Fn&& fn) -> decltype(fn()) {
  auto t0 = std::chrono::steady_clock::now();
  auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  try {
    if constexpr (std::is_void_v<decltype(fn())>) {
      fn();
      metrics_.driver_call_done(call, "ok", seconds());
    } else {
      auto result = fn();
      metrics_.driver_call_done(call, "ok", seconds());
      return result;
    }
  } catch (const DriverError& e) {
    metrics_.driver_call_done(call, to_string(e.code()), seconds());
    throw;
  } catch (...) {
    metrics_.driver_call_done(call, "error", seconds());
    throw;
  }
}

void MeteredDriver::volume_create(const std::string& name, const Labels& labels) {
  timed("volume_create", [&] { inner_.volume_create(name, labels); });
}
void MeteredDriver::volume_remove(const std::string& name) {
  timed("volume_remove", [&] { inner_.volume_remove(name); });
}
bool MeteredDriver::volume_exists(const std::string& name) {
  return timed("volume_exists", [&] { return inner_.volume_exists(name); });
}
SessionInfo MeteredDriver::session_create(const SessionSpec& spec) {
  return timed("session_create", [&] { return inner_.session_create(spec); });
}
SessionInfo MeteredDriver::session_inspect(const std::string& handle) {
  return timed("session_inspect", [&] { return inner_.session_inspect(handle); });
}
void MeteredDriver::session_stop(const std::string& handle, std::chrono::milliseconds grace) {
  timed("session_stop", [&] { inner_.session_stop(handle, grace); });
}
void MeteredDriver::session_remove(const std::string& handle) {
  timed("session_remove", [&] { inner_.session_remove(handle); });
}
std::vector<SessionListing> MeteredDriver::session_list(const Labels& filter) {
  return timed("session_list", [&] { return inner_.session_list(filter); });
}
std::optional<bool> MeteredDriver::image_exists(const std::string& image) {
  return timed("image_exists", [&] { return inner_.image_exists(image); });
}

std::unique_ptr<Process> MeteredDriver::process_start(const std::string& handle, const ProcessSpec& spec) {
  return timed("process_start", [&] { return inner_.process_start(handle, spec); });
}

SessionStats MeteredDriver::session_stats(const std::string& handle) {
  return timed("session_stats", [&] { return inner_.session_stats(handle); });
}
ExecResult MeteredDriver::exec(const std::string& handle, const ExecRequest& request, const OutputSink& on_output,
                               const CancelToken* cancel) {
  return timed("exec", [&] { return inner_.exec(handle, request, on_output, cancel); });
}
void MeteredDriver::file_put(const std::string& handle, const std::string& path, std::uint32_t mode, std::uint64_t size,
                             const ByteSource& source) {
  timed("file_put", [&] { inner_.file_put(handle, path, mode, size, source); });
}
void MeteredDriver::file_get(const std::string& handle, const std::string& path, const ByteSink& sink) {
  timed("file_get", [&] { inner_.file_get(handle, path, sink); });
}
void MeteredDriver::dir_scan(const std::string& handle, const std::string& path, const DirEntrySink& on_entry) {
  timed("dir_scan", [&] { inner_.dir_scan(handle, path, on_entry); });
}
void MeteredDriver::path_remove(const std::string& handle, const std::string& path) {
  timed("path_remove", [&] { inner_.path_remove(handle, path); });
}

}  // namespace berth::core
