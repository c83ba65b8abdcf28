// core::Driver over a driver plugin's C table. This adapter is the only place where SDK statuses become
// exceptions (core::DriverError); nothing else in the host sees berth_status.
#pragma once

#include <berth/driver.h>

#include <memory>
#include <string>

#include "core/clock.hpp"
#include "core/driver.hpp"

namespace berth::plugin {

class DriverLibrary;

/** Maps an SDK status to the core's error code (unknown values map to internal). */
core::DriverErrc to_errc(berth_status status);

/** A configured driver instance. Thread-safe as far as the driver is (driver.h rule 7 requires it). */
class AbiDriver final : public core::Driver {
 public:
  /** Calls the driver's configure; throws LoadError when it fails, throws or returns garbage. */
  static std::unique_ptr<AbiDriver> create(std::shared_ptr<const DriverLibrary> library, const std::string& config_json,
                                           std::shared_ptr<const core::Clock> clock);
  ~AbiDriver() override;

  const core::DriverIdentity& identity() const override;

  void volume_create(const std::string& name, const core::Labels& labels) override;
  void volume_remove(const std::string& name) override;
  bool volume_exists(const std::string& name) override;

  core::SessionInfo session_create(const core::SessionSpec& spec) override;
  core::SessionInfo session_inspect(const std::string& handle) override;
  void session_stop(const std::string& handle, std::chrono::milliseconds grace) override;
  void session_remove(const std::string& handle) override;
  std::vector<core::SessionListing> session_list(const core::Labels& filter) override;
  core::SessionStats session_stats(const std::string& handle) override;
  std::optional<bool> image_exists(const std::string& image) override;

  core::ExecResult exec(const std::string& handle, const core::ExecRequest& request, const core::OutputSink& on_output,
                        const core::CancelToken* cancel) override;

  void file_put(const std::string& handle, const std::string& path, std::uint32_t mode, std::uint64_t size,
                const core::ByteSource& source) override;
  void file_get(const std::string& handle, const std::string& path, const core::ByteSink& sink) override;
  void dir_scan(const std::string& handle, const std::string& path, const core::DirEntrySink& on_entry) override;
  void path_remove(const std::string& handle, const std::string& path) override;

  /** True when the driver has the process slots and this instance offers BERTH_CAP_PROCESS. */
  bool supports_processes() const override;
  /** process_start over the C slots; the returned Process keeps the library loaded and must die before this. */
  std::unique_ptr<core::Process> process_start(const std::string& handle, const core::ProcessSpec& spec) override;

 private:
  AbiDriver(std::shared_ptr<const DriverLibrary> library, std::shared_ptr<const core::Clock> clock);

  std::shared_ptr<const DriverLibrary> library_;
  std::shared_ptr<const core::Clock> clock_;
  berth_host_api host_{};  // stable address: the driver keeps a pointer to it
  berth_instance* instance_ = nullptr;
  core::DriverIdentity identity_;  // the library's, with this instance's capabilities
};

}  // namespace berth::plugin
