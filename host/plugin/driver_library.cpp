#include "plugin/driver_library.hpp"

#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "core/log.hpp"
#include "plugin/abi_driver.hpp"

namespace berth::plugin {
namespace fs = std::filesystem;

struct DriverLibrary::Impl {
  boost::dll::shared_library library;
};

namespace {

std::string version_string(std::uint32_t major, std::uint32_t minor) {
  return std::to_string(major) + "." + std::to_string(minor);
}

/** Size of the driver table a given 1.x minor defines; 0 for a minor this host does not know. */
std::uint32_t table_size_for_minor(std::uint32_t minor) {
  switch (minor) {
    case 0:
      return BERTH_DRIVER_API_SIZE_1_0;
    case 1:
      return BERTH_DRIVER_API_SIZE_1_1;
    case 2:
      return BERTH_DRIVER_API_SIZE_1_2;
    case 3:
      return BERTH_DRIVER_API_SIZE_1_3;
    default:
      return 0;
  }
}

bool is_sane_identifier(const char* s, std::size_t max_len) {
  if (s == nullptr) return false;
  std::size_t n = strnlen(s, max_len + 1);
  if (n == 0 || n > max_len) return false;
  for (std::size_t i = 0; i < n; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (!(std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '+')) return false;
  }
  return true;
}

[[noreturn]] void reject(const fs::path& file, const std::string& reason) {
  log::error("driver.load_failed", {{"path", file.string()}, {"reason", reason}});
  throw LoadError("cannot load driver " + file.string() + ": " + reason);
}

}  // namespace

std::vector<fs::path> default_search_path() {
  std::vector<fs::path> out;
  if (const char* env = std::getenv("BERTH_DRIVER_PATH"); env != nullptr && *env != '\0') {
    std::stringstream ss(env);
    std::string item;
    while (std::getline(ss, item, ':')) {
      if (!item.empty()) out.emplace_back(item);
    }
  }
  boost::system::error_code ec;
  auto exe = boost::dll::program_location(ec);
  if (!ec) {
    fs::path dir = fs::path(exe.string()).parent_path();
    out.push_back(dir.parent_path() / "lib" / "berth" / "drivers");  // installed layout (cmake --install, .deb)
    out.push_back(dir.parent_path() / "lib" / "berth");              // build tree
    out.push_back(dir);
  }
  out.emplace_back("/usr/local/lib/berth/drivers");
  out.emplace_back("/usr/lib/berth/drivers");
  out.emplace_back("/usr/local/lib/berth");
  out.emplace_back("/usr/lib/berth");
  return out;
}

fs::path resolve_driver(const std::string& name_or_path, const std::vector<fs::path>& search_path) {
  if (name_or_path.empty()) throw LoadError("no driver configured: set [driver] name or path");
  bool is_path = name_or_path.find('/') != std::string::npos ||
                 (name_or_path.size() > 3 && name_or_path.compare(name_or_path.size() - 3, 3, ".so") == 0);
  if (is_path) {
    fs::path p(name_or_path);
    if (!fs::exists(p)) throw LoadError("cannot load driver " + p.string() + ": no such file");
    return p;
  }
  std::string file = "berth_driver_" + name_or_path + ".so";
  std::string tried;
  for (const auto& dir : search_path) {
    fs::path candidate = dir / file;
    if (fs::exists(candidate)) return candidate;
    tried += (tried.empty() ? "" : ", ") + dir.string();
  }
  throw LoadError("cannot find driver '" + name_or_path + "' (" + file + ") in: " + tried +
                  "; set [driver] path or BERTH_DRIVER_PATH");
}

DriverLibrary::~DriverLibrary() = default;

std::shared_ptr<DriverLibrary> DriverLibrary::open(const fs::path& file) {
  std::shared_ptr<DriverLibrary> self(new DriverLibrary());
  self->impl_ = std::make_unique<Impl>();
  auto& lib = self->impl_->library;
  try {
    // rtld_local keeps each driver's symbols to itself; rtld_now surfaces missing symbols at load, not mid-call.
    lib.load(file.string(), boost::dll::load_mode::rtld_local | boost::dll::load_mode::rtld_now);
  } catch (const std::exception& e) {
    reject(file, std::string("not a loadable shared library (") + e.what() + ")");
  }
  if (!lib.has(BERTH_DRIVER_ENTRY_SYMBOL)) {
    reject(file, std::string("missing entry symbol '") + BERTH_DRIVER_ENTRY_SYMBOL +
                     "' (define it with BERTH_DRIVER_EXPORT)");
  }
  const berth_driver_api* table = nullptr;
  std::uint32_t minor = 0;  // the minor both sides speak
  if (lib.has(BERTH_DRIVER_NEGOTIATE_SYMBOL)) {
    // ABI >= 1.3: two-way negotiation (driver.h rule 2). The driver answers the minor it will speak.
    auto negotiate = lib.get<berth_status(berth_negotiation*)>(BERTH_DRIVER_NEGOTIATE_SYMBOL);
    berth_negotiation n{};
    n.struct_size = sizeof n;
    n.host_abi_major = BERTH_ABI_VERSION_MAJOR;
    n.host_abi_minor = BERTH_ABI_VERSION_MINOR;
    berth_status status = BERTH_INTERNAL;
    try {
      status = negotiate(&n);
    } catch (...) {
      reject(file, "negotiate threw an exception");
    }
    const std::string host_version = version_string(BERTH_ABI_VERSION_MAJOR, BERTH_ABI_VERSION_MINOR);
    if (status != BERTH_OK) {
      const std::string wants =
          n.api != nullptr ? " (driver speaks " + version_string(n.api->abi_major, n.abi_minor) + ")" : "";
      reject(file, "driver refused host ABI " + host_version + wants + " in negotiation, status " +
                       std::to_string(status) +
                       (n.api != nullptr && n.api->abi_major == BERTH_ABI_VERSION_MAJOR
                            ? " (upgrade berthd)"
                            : " (rebuild the driver against this SDK)"));
    }
    table = n.api;
    if (table == nullptr) reject(file, "negotiation succeeded without a driver table");
    if (table->abi_major != BERTH_ABI_VERSION_MAJOR) {
      reject(file, "ABI major mismatch: driver speaks " + version_string(table->abi_major, table->abi_minor) +
                       ", host speaks " + host_version + " (rebuild the driver against this SDK)");
    }
    if (n.abi_minor > BERTH_ABI_VERSION_MINOR || n.abi_minor > table->abi_minor) {
      reject(file, "negotiation answered ABI " + version_string(BERTH_ABI_VERSION_MAJOR, n.abi_minor) +
                       ", newer than the host (" + host_version + ") or the driver's table (" +
                       version_string(table->abi_major, table->abi_minor) + ")");
    }
    minor = n.abi_minor;
  } else {
    auto entry = lib.get<const berth_driver_api*(std::uint32_t, std::uint32_t)>(BERTH_DRIVER_ENTRY_SYMBOL);
    try {
      table = entry(BERTH_ABI_VERSION_MAJOR, BERTH_ABI_VERSION_MINOR);
    } catch (...) {
      reject(file, "entry point threw an exception");
    }
    if (table == nullptr) {
      reject(file, "driver refused host ABI " + version_string(BERTH_ABI_VERSION_MAJOR, BERTH_ABI_VERSION_MINOR));
    }
    // The header fields (struct_size + versions) are 16 bytes in every 1.x table; read them before anything else.
    if (table->abi_major != BERTH_ABI_VERSION_MAJOR) {
      reject(file, "ABI major mismatch: driver speaks " + version_string(table->abi_major, table->abi_minor) +
                       ", host speaks " + version_string(BERTH_ABI_VERSION_MAJOR, BERTH_ABI_VERSION_MINOR) +
                       " (rebuild the driver against this SDK)");
    }
    if (table->abi_minor > BERTH_ABI_VERSION_MINOR) {
      reject(file, "driver needs ABI " + version_string(table->abi_major, table->abi_minor) + " but host provides " +
                       version_string(BERTH_ABI_VERSION_MAJOR, BERTH_ABI_VERSION_MINOR) + " (upgrade berthd)");
    }
    minor = table->abi_minor;
  }
  if (table->struct_size < BERTH_DRIVER_API_SIZE_1_0) {
    reject(file, "driver table too small: struct_size " + std::to_string(table->struct_size) + " < " +
                     std::to_string(BERTH_DRIVER_API_SIZE_1_0) + " bytes required by ABI 1.0");
  }
  // A table may not claim more than its own minor defines (a minor newer than the host is not ours to size).
  if (const std::uint32_t declared = table_size_for_minor(table->abi_minor);
      table->abi_minor <= BERTH_ABI_VERSION_MINOR && table->struct_size > declared) {
    reject(file, "driver table too large: struct_size " + std::to_string(table->struct_size) + " > " +
                     std::to_string(declared) + " bytes defined by ABI " +
                     version_string(table->abi_major, table->abi_minor));
  }
  // Only the slots of the agreed minor are used: the rest of the host's copy stays zero (NULL = unsupported).
  const std::size_t used = std::min<std::size_t>(table->struct_size, table_size_for_minor(minor));
  std::memcpy(&self->api_, table, used);
  self->api_.struct_size = static_cast<std::uint32_t>(used);
  self->api_.abi_minor = minor;
  const auto& api = self->api_;

  if (!is_sane_identifier(api.name, 64)) reject(file, "driver name missing or not [A-Za-z0-9._+-]{1,64}");
  if (api.version == nullptr || strnlen(api.version, 65) == 0 || strnlen(api.version, 65) > 64) {
    reject(file, "driver version string missing or longer than 64 bytes");
  }
  struct Required {
    const char* name;
    bool present;
  };
  const Required required[] = {
      {"configure", api.configure != nullptr},
      {"destroy", api.destroy != nullptr},
      {"volume_create", api.volume_create != nullptr},
      {"volume_remove", api.volume_remove != nullptr},
      {"volume_exists", api.volume_exists != nullptr},
      {"session_create", api.session_create != nullptr},
      {"session_inspect", api.session_inspect != nullptr},
      {"session_stop", api.session_stop != nullptr},
      {"session_remove", api.session_remove != nullptr},
      {"session_list", api.session_list != nullptr},
      {"exec", api.exec != nullptr},
      {"file_put", api.file_put != nullptr},
      {"file_get", api.file_get != nullptr},
      {"dir_list", api.dir_list != nullptr},
      {"path_remove", api.path_remove != nullptr},
  };
  for (const auto& r : required) {
    if (!r.present) reject(file, std::string("required callback '") + r.name + "' is NULL");
  }
  // Interactive processes come as a set (driver.h rule 11): a handle the host cannot release would leak.
  const bool any_process =
      api.process_start != nullptr || api.process_next_event != nullptr || api.process_release != nullptr;
  const bool all_process = api.process_start != nullptr && api.process_write_stdin != nullptr &&
                           api.process_close_stdin != nullptr && api.process_signal != nullptr &&
                           api.process_resize != nullptr && api.process_kill != nullptr &&
                           api.process_next_event != nullptr && api.process_release != nullptr;
  if (any_process && !all_process) reject(file, "the process_* callbacks (ABI 1.3) must all be set or all be NULL");

  self->identity_.name = api.name;
  self->identity_.version = api.version;
  self->identity_.abi_major = api.abi_major;
  self->identity_.abi_minor = api.abi_minor;
  self->identity_.capabilities = api.capabilities;
  self->identity_.path = fs::absolute(file).string();
  // Do not advertise a capability whose slot the driver's ABI does not have.
  if (api.session_stats == nullptr) self->identity_.capabilities &= ~BERTH_CAP_STATS;
  if (api.process_start == nullptr) self->identity_.capabilities &= ~(BERTH_CAP_PROCESS | BERTH_CAP_PROCESS_PTY);
  return self;
}

std::unique_ptr<core::Driver> DriverLibrary::configure(const std::string& config_json,
                                                       std::shared_ptr<const core::Clock> clock) const {
  return AbiDriver::create(shared_from_this(), config_json, std::move(clock));
}

}  // namespace berth::plugin
