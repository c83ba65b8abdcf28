// Loading driver plugins: find the shared library, negotiate the ABI version, validate the table, and create
// configured instances (plugin::AbiDriver) that the core uses through core::Driver.
#pragma once

#include <berth/driver.h>

#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/driver.hpp"

namespace berth::plugin {

/** A driver could not be loaded or configured. what() is one actionable line naming the file and the reason. */
class LoadError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/**
 * Finds a driver: `name_or_path` containing a '/' or ending in ".so" is a path; otherwise it is a driver name
 * looked up as `berth_driver_<name>.so` in each directory of `search_path`, in order. Throws LoadError listing
 * every place it looked.
 */
std::filesystem::path resolve_driver(const std::string& name_or_path,
                                     const std::vector<std::filesystem::path>& search_path);

/**
 * Default search path, in order: $BERTH_DRIVER_PATH (colon-separated); next to the running executable
 * ../lib/berth/drivers (the installed layout), ../lib/berth (the build tree) and its own directory; then
 * /usr/local/lib/berth/drivers, /usr/lib/berth/drivers, /usr/local/lib/berth, /usr/lib/berth. Thread-safe.
 */
std::vector<std::filesystem::path> default_search_path();

/**
 * A loaded, validated driver library. Immutable after open(); safe to share between threads. Instances created by
 * configure() keep the library loaded for as long as they live.
 */
class DriverLibrary : public std::enable_shared_from_this<DriverLibrary> {
 public:
  /** Loads and validates the library at `file`. Throws LoadError on any rule of driver.h that is broken. */
  static std::shared_ptr<DriverLibrary> open(const std::filesystem::path& file);

  ~DriverLibrary();
  DriverLibrary(const DriverLibrary&) = delete;
  DriverLibrary& operator=(const DriverLibrary&) = delete;

  const core::DriverIdentity& identity() const { return identity_; }
  /** The driver's table as the host sees it: zero-filled beyond the driver's struct_size. */
  const berth_driver_api& api() const { return api_; }

  /**
   * Creates an instance from the driver's config section (a JSON object). Throws LoadError when configure fails,
   * throws, or returns garbage. `clock` feeds the host's monotonic_ns service.
   */
  std::unique_ptr<core::Driver> configure(const std::string& config_json,
                                          std::shared_ptr<const core::Clock> clock) const;

 private:
  DriverLibrary() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  berth_driver_api api_{};
  core::DriverIdentity identity_;
};

}  // namespace berth::plugin
