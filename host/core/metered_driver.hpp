// A Driver decorator that times every call into the wrapped driver and reports it to core::Metrics
// (driver_call_done: method name, "ok" or the DriverErrc name, seconds). The daemon wraps the loaded driver in it
// when metrics are enabled, so neither the core nor the plugin layer measures anything itself.
#pragma once

#include "core/driver.hpp"
#include "core/metrics.hpp"

namespace berth::core {

/**
 * Forwards every Driver call to `inner` unchanged (results, exceptions, callbacks) and reports its duration and
 * outcome to `metrics`. Both are borrowed and must outlive this object. Thread-safe as far as `inner` is.
 */
class MeteredDriver final : public Driver {
 public:
  MeteredDriver(Driver& inner, Metrics& metrics) : inner_(inner), metrics_(metrics) {}

  const DriverIdentity& identity() const override { return inner_.identity(); }
  void volume_create(const std::string& name, const Labels& labels) override;
  void volume_remove(const std::string& name) override;
  bool volume_exists(const std::string& name) override;
  SessionInfo session_create(const SessionSpec& spec) override;
  SessionInfo session_inspect(const std::string& handle) override;
  void session_stop(const std::string& handle, std::chrono::milliseconds grace) override;
  void session_remove(const std::string& handle) override;
  std::vector<SessionListing> session_list(const Labels& filter) override;
  SessionStats session_stats(const std::string& handle) override;
  std::optional<bool> image_exists(const std::string& image) override;
  ExecResult exec(const std::string& handle, const ExecRequest& request, const OutputSink& on_output,
                  const CancelToken* cancel) override;
  void file_put(const std::string& handle, const std::string& path, std::uint32_t mode, std::uint64_t size,
                const ByteSource& source) override;
  void file_get(const std::string& handle, const std::string& path, const ByteSink& sink) override;
  void dir_scan(const std::string& handle, const std::string& path, const DirEntrySink& on_entry) override;
  void path_remove(const std::string& handle, const std::string& path) override;
  bool supports_processes() const override { return inner_.supports_processes(); }
  /** Times the start only; the returned Process talks to the inner driver directly. */
  std::unique_ptr<Process> process_start(const std::string& handle, const ProcessSpec& spec) override;

 private:
  /** Runs `fn`, reporting `call` with its outcome; rethrows what `fn` threw. */
  template <typename Fn>
  auto timed(std::string_view call, Fn&& fn) -> decltype(fn());

  Driver& inner_;
  Metrics& metrics_;
};

}  // namespace berth::core
