#include "plugin/abi_driver.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string_view>

#include "core/log.hpp"
#include "plugin/driver_library.hpp"

// The host's definitions of the SDK's opaque types.
struct berth_error {
  std::string message;
  bool set = false;
};

namespace berth::plugin {
namespace {

static_assert(core::cap::exec == BERTH_CAP_EXEC && core::cap::exec_stream == BERTH_CAP_EXEC_STREAM &&
                  core::cap::exec_cancel == BERTH_CAP_EXEC_CANCEL && core::cap::files == BERTH_CAP_FILES &&
                  core::cap::volumes == BERTH_CAP_VOLUMES && core::cap::stats == BERTH_CAP_STATS &&
                  core::cap::readonly_rootfs == BERTH_CAP_READONLY_ROOTFS &&
                  core::cap::network_policy == BERTH_CAP_NETWORK_POLICY && core::cap::process == BERTH_CAP_PROCESS &&
                  core::cap::process_pty == BERTH_CAP_PROCESS_PTY,
              "core capability bits mirror the SDK's");

using core::DriverErrc;
using core::DriverError;

// ---- host services ------------------------------------------------------------------------------------------
// Everything below is called by driver code through C frames: each function is noexcept and catches everything,
// because an exception unwinding through a C caller is undefined behaviour (and std::terminate at best). Strings
// from a driver are read up to a cap, so an unterminated or runaway string cannot make the host read or copy
// without bound.

/** Longest error message kept from set_error; longer ones are cut and marked. */
constexpr std::size_t kMaxErrorBytes = std::size_t{16} * 1024;
/** Longest log event name, field key and field value kept from log. */
constexpr std::size_t kMaxLogEventBytes = 256;
constexpr std::size_t kMaxLogKeyBytes = 256;
constexpr std::size_t kMaxLogValueBytes = 4096;
/** Most fields of one driver log line (the rest are dropped and counted). */
constexpr std::size_t kMaxLogFields = 64;

struct HostContext {
  std::string driver_name;
  std::shared_ptr<const core::Clock> clock;
};

/** `s` up to its NUL or `cap` bytes, whichever comes first; "" for NULL. `truncated` tells which. */
std::string_view bounded(const char* s, std::size_t cap, bool* truncated = nullptr) noexcept {
  if (s == nullptr) return {};
  const std::size_t n = strnlen(s, cap + 1);
  if (truncated != nullptr) *truncated = n > cap;
  return {s, std::min(n, cap)};
}

void host_log(void* ctx, berth_log_level level, const char* event, const berth_kv* fields, size_t count) noexcept {
  try {
    auto* host = static_cast<HostContext*>(ctx);
    if (host == nullptr) return;
    log::Fields out;
    const std::size_t kept = fields != nullptr ? std::min(count, kMaxLogFields) : 0;
    out.reserve(kept + 2);
    out.emplace_back("driver", host->driver_name);
    for (size_t i = 0; i < kept; ++i) {
      if (fields[i].key == nullptr) continue;
      bool cut = false;
      std::string value(bounded(fields[i].value, kMaxLogValueBytes, &cut));
      if (cut) value += "...(truncated)";
      out.emplace_back(bounded(fields[i].key, kMaxLogKeyBytes), std::move(value));  // a view: borrowed for the call
    }
    if (fields != nullptr && count > kept) out.emplace_back("dropped_fields", std::to_string(count - kept));
    std::string_view ev = event != nullptr ? bounded(event, kMaxLogEventBytes) : std::string_view("driver.log");
    switch (level) {
      case BERTH_LOG_DEBUG:
        log::debug(ev, out);
        break;
      case BERTH_LOG_WARN:
        log::warn(ev, out);
        break;
      case BERTH_LOG_ERROR:
        log::error(ev, out);
        break;
      default:
        log::info(ev, out);
    }
  } catch (...) {
    // Logging must never take the driver's call down with it; a lost log line is the lesser harm.
  }
}

uint64_t host_monotonic_ns(void* ctx) noexcept {
  try {
    auto* host = static_cast<HostContext*>(ctx);
    const auto since_epoch = host != nullptr ? host->clock->monotonic().time_since_epoch()
                                             : std::chrono::steady_clock::now().time_since_epoch();
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(since_epoch).count());
  } catch (...) {
    return static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
            .count());
  }
}

void* host_alloc(size_t size) noexcept {
  return std::malloc(size);
}
void host_free(void* p) noexcept {
  std::free(p);
}

void host_set_error(berth_error* err, const char* message) noexcept {
  if (err == nullptr) return;
  err->set = true;
  try {
    bool cut = false;
    err->message.assign(bounded(message, kMaxErrorBytes, &cut));
    if (cut) err->message += "...(truncated)";
  } catch (...) {
    err->message.clear();  // out of memory: the status alone still describes the failure
  }
}

int32_t host_is_cancelled(const berth_cancel_token* token) noexcept {
  if (token == nullptr) return 0;
  return reinterpret_cast<const core::CancelToken*>(token)->cancelled() ? 1 : 0;
}

/**
 * What a driver handed the host (a listing, a directory entry), read as driver.h rule 3 says: at most
 * min(struct_size, sizeof(T)) bytes into a zeroed T, so fields a (smaller, older or broken) writer did not
 * provide read as 0/NULL and the host never reads past what the driver filled in. The size is rounded down to
 * whole alignof(T) units, so that a pointer the writer covered only in part reads as NULL, never as half a pointer.
 */
template <typename T>
T read_sized(const T* in) noexcept {
  T out{};
  if (in == nullptr) return out;
  std::size_t n = std::min<std::size_t>(in->struct_size, sizeof(T));
  n -= n % alignof(T);
  std::memcpy(static_cast<void*>(&out), static_cast<const void*>(in), n);
  out.struct_size = static_cast<uint32_t>(n);
  return out;
}

/** Longest string a driver may hand back in a listing (handle, label, entry name); longer is a driver bug. */
constexpr std::size_t kMaxDriverStringBytes = std::size_t{64} * 1024;

/** A driver's string (NULL reads as ""), or DriverError(internal) when it runs past kMaxDriverStringBytes. */
std::string driver_string(const char* s, const char* what) {
  bool cut = false;
  auto view = bounded(s, kMaxDriverStringBytes, &cut);
  if (cut) {
    throw DriverError(DriverErrc::internal, std::string("driver returned a ") + what + " longer than " +
                                                std::to_string(kMaxDriverStringBytes) + " bytes");
  }
  return std::string(view);
}

const berth_cancel_token* to_token(const core::CancelToken* token) {
  return reinterpret_cast<const berth_cancel_token*>(token);
}

// ---- status mapping -----------------------------------------------------------------------------------------

const char* status_name(berth_status s) {
  switch (s) {
    case BERTH_OK:
      return "ok";
    case BERTH_NOT_FOUND:
      return "not found";
    case BERTH_INVALID_ARGUMENT:
      return "invalid argument";
    case BERTH_CONFLICT:
      return "conflict";
    case BERTH_UNAVAILABLE:
      return "unavailable";
    case BERTH_TIMEOUT:
      return "timeout";
    case BERTH_UNSUPPORTED:
      return "unsupported";
    case BERTH_INTERNAL:
      return "internal error";
    case BERTH_CANCELLED:
      return "cancelled";
    default:
      return "invalid status";
  }
}

/** Throws DriverError for a failed call; `what` names the call for the message. */
void check(berth_status status, const berth_error& err, const char* what) {
  if (status == BERTH_OK) return;
  std::string message = std::string(what) + ": ";
  if (status < BERTH_OK || status > BERTH_CANCELLED) {
    message += "driver returned unknown status " + std::to_string(status);
  } else {
    message += err.set && !err.message.empty() ? err.message : status_name(status);
  }
  throw DriverError(to_errc(status), message);
}

/**
 * Runs one C call, turning a C++ exception that a (misbehaving) driver let escape into DriverError, and a
 * callback's exception back into itself.
 */
template <typename Fn>
berth_status guarded(const char* what, std::exception_ptr& callback_error, Fn&& fn) {
  berth_status status = BERTH_INTERNAL;
  try {
    status = fn();
  } catch (const DriverError&) {
    throw;  // raised by the adapter itself before the call (e.g. an argument that cannot cross as a C string)
  } catch (...) {
    throw DriverError(DriverErrc::internal, std::string(what) + ": driver let an exception escape");
  }
  if (callback_error) std::rethrow_exception(callback_error);
  return status;
}

template <typename Fn>
berth_status guarded(const char* what, Fn&& fn) {
  std::exception_ptr none;
  return guarded(what, none, std::forward<Fn>(fn));
}

struct KvArray {
  std::vector<berth_kv> items;
  explicit KvArray(const std::map<std::string, std::string>& m) {
    items.reserve(m.size());
    for (const auto& [k, v] : m)
      items.push_back({k.c_str(), v.c_str()});
  }
  const berth_kv* data() const { return items.empty() ? nullptr : items.data(); }
  size_t size() const { return items.size(); }
};

/** C strings end at the first NUL: a string with an embedded NUL would reach the driver cut short. */
const char* c_str(const std::string& s, const char* what) {
  if (s.find('\0') != std::string::npos) {
    throw DriverError(DriverErrc::invalid_argument, std::string(what) + " must not contain NUL");
  }
  return s.c_str();
}

core::SessionState to_state(berth_session_state s) {
  switch (s) {
    case BERTH_SESSION_STARTING:
      return core::SessionState::starting;
    case BERTH_SESSION_RUNNING:
      return core::SessionState::running;
    case BERTH_SESSION_EXITED:
      return core::SessionState::exited;
    case BERTH_SESSION_MISSING:
      return core::SessionState::missing;
    default:  // BERTH_SESSION_UNKNOWN or a value from a newer driver: it exists (rule 12), never "missing"
      return core::SessionState::unknown;
  }
}

core::SessionInfo to_info(const berth_session_info& in) {
  core::SessionInfo out;
  out.state = to_state(in.state);
  out.exit_code = in.exit_code;
  out.handle.assign(in.handle, strnlen(in.handle, sizeof in.handle));
  out.endpoint.assign(in.endpoint, strnlen(in.endpoint, sizeof in.endpoint));
  return out;
}

/** An output stream as the core sees it: an unknown value from a newer driver is stderr (driver.h rule 12). */
core::Stream to_stream(berth_stream stream) {
  return stream == BERTH_STREAM_STDOUT ? core::Stream::out : core::Stream::err;
}

berth_session_info blank_info() {
  berth_session_info info{};
  info.struct_size = sizeof info;
  return info;
}

}  // namespace

core::DriverErrc to_errc(berth_status status) {
  switch (status) {
    case BERTH_NOT_FOUND:
      return DriverErrc::not_found;
    case BERTH_INVALID_ARGUMENT:
      return DriverErrc::invalid_argument;
    case BERTH_CONFLICT:
      return DriverErrc::conflict;
    case BERTH_UNAVAILABLE:
      return DriverErrc::unavailable;
    case BERTH_TIMEOUT:
      return DriverErrc::timeout;
    case BERTH_UNSUPPORTED:
      return DriverErrc::unsupported;
    case BERTH_CANCELLED:
      return DriverErrc::cancelled;
    default:
      return DriverErrc::internal;
  }
}

AbiDriver::AbiDriver(std::shared_ptr<const DriverLibrary> library, std::shared_ptr<const core::Clock> clock)
    : library_(std::move(library)), clock_(std::move(clock)) {}

std::unique_ptr<AbiDriver> AbiDriver::create(std::shared_ptr<const DriverLibrary> library,
                                             const std::string& config_json, std::shared_ptr<const core::Clock> clock) {
  std::unique_ptr<AbiDriver> self(new AbiDriver(std::move(library), std::move(clock)));
  const auto& api = self->library_->api();
  const auto& id = self->library_->identity();
  auto ctx = new HostContext{id.name, self->clock_};
  self->host_.struct_size = sizeof(berth_host_api);
  self->host_.abi_major = BERTH_ABI_VERSION_MAJOR;
  self->host_.abi_minor = BERTH_ABI_VERSION_MINOR;
  self->host_.host_ctx = ctx;
  self->host_.log = host_log;
  self->host_.monotonic_ns = host_monotonic_ns;
  self->host_.alloc = host_alloc;
  self->host_.free = host_free;
  self->host_.set_error = host_set_error;
  self->host_.is_cancelled = host_is_cancelled;

  berth_error err;
  berth_instance* instance = nullptr;
  berth_status status = BERTH_INTERNAL;
  const std::string where = "cannot configure driver " + id.path + ": ";
  try {
    status = api.configure(&self->host_, config_json.c_str(), &instance, &err);
  } catch (...) {
    delete ctx;
    self->host_.host_ctx = nullptr;
    log::error("driver.configure_failed", {{"driver", id.name}, {"reason", "configure threw an exception"}});
    throw LoadError(where + "configure threw an exception (drivers must not let exceptions cross the ABI)");
  }
  std::string reason;
  if (status < BERTH_OK || status > BERTH_CANCELLED) {
    reason = "configure returned unknown status " + std::to_string(status);
  } else if (status != BERTH_OK) {
    reason = std::string(status_name(status)) + (err.set ? ": " + err.message : std::string());
  } else if (instance == nullptr) {
    reason = "configure returned OK but no instance";
  }
  if (!reason.empty()) {
    if (status == BERTH_OK && instance != nullptr) {
      try {
        api.destroy(instance);
      } catch (...) {
        log::error("driver.destroy_failed", {{"driver", id.name}});
      }
    }
    delete ctx;
    self->host_.host_ctx = nullptr;
    log::error("driver.configure_failed", {{"driver", id.name}, {"reason", reason}});
    throw LoadError(where + reason);
  }
  self->instance_ = instance;
  // Capabilities of this instance (rule 13): the table's, narrowed by the instance's configuration, never widened.
  self->identity_ = id;
  if (api.instance_capabilities != nullptr) {
    std::uint64_t offered = id.capabilities;
    try {
      offered = api.instance_capabilities(instance);
    } catch (...) {
      log::error("driver.instance_capabilities_failed", {{"driver", id.name}, {"reason", "threw an exception"}});
    }
    self->identity_.capabilities &= offered;
  }
  return self;
}

AbiDriver::~AbiDriver() {
  if (instance_ != nullptr) {
    try {
      library_->api().destroy(instance_);
    } catch (...) {
      log::error("driver.destroy_failed", {{"driver", library_->identity().name}});
    }
  }
  delete static_cast<HostContext*>(host_.host_ctx);
}

const core::DriverIdentity& AbiDriver::identity() const {
  return identity_;
}

void AbiDriver::volume_create(const std::string& name, const core::Labels& labels) {
  berth_error err;
  KvArray kv(labels);
  check(guarded("volume_create",
                [&] {
                  return library_->api().volume_create(instance_, c_str(name, "volume name"), kv.data(), kv.size(),
                                                       &err);
                }),
        err, "volume_create");
}

void AbiDriver::volume_remove(const std::string& name) {
  berth_error err;
  check(guarded("volume_remove",
                [&] { return library_->api().volume_remove(instance_, c_str(name, "volume name"), &err); }),
        err, "volume_remove");
}

bool AbiDriver::volume_exists(const std::string& name) {
  berth_error err;
  int32_t exists = 0;
  check(guarded("volume_exists",
                [&] { return library_->api().volume_exists(instance_, c_str(name, "volume name"), &exists, &err); }),
        err, "volume_exists");
  return exists != 0;
}

std::optional<bool> AbiDriver::image_exists(const std::string& image) {
  if (library_->api().image_exists == nullptr) return std::nullopt;
  berth_error err;
  int32_t exists = 0;
  check(guarded("image_exists",
                [&] { return library_->api().image_exists(instance_, c_str(image, "image"), &exists, &err); }),
        err, "image_exists");
  return exists != 0;
}

core::SessionInfo AbiDriver::session_create(const core::SessionSpec& spec) {
  KvArray env(spec.env);
  KvArray labels(spec.labels);
  berth_session_spec s{};
  s.struct_size = sizeof s;
  s.session_id = spec.session_id.c_str();
  s.image = spec.image.c_str();
  s.env = env.data();
  s.env_count = env.size();
  s.labels = labels.data();
  s.label_count = labels.size();
  s.nano_cpus = spec.nano_cpus;
  s.memory_bytes = spec.memory_bytes;
  s.pids_limit = spec.pids_limit;
  s.network_enabled = spec.network_enabled ? 1 : 0;
  s.read_only_rootfs = spec.read_only_rootfs ? 1 : 0;
  s.workspace_volume = spec.workspace_volume.empty() ? nullptr : spec.workspace_volume.c_str();
  s.workspace_mount_path = spec.workspace_mount_path.c_str();
  s.user = spec.user.empty() ? nullptr : spec.user.c_str();
  s.working_dir = spec.working_dir.empty() ? nullptr : spec.working_dir.c_str();
  berth_error err;
  auto info = blank_info();
  check(guarded("session_create", [&] { return library_->api().session_create(instance_, &s, &info, &err); }), err,
        "session_create");
  return to_info(info);
}

core::SessionInfo AbiDriver::session_inspect(const std::string& handle) {
  berth_error err;
  auto info = blank_info();
  check(guarded("session_inspect",
                [&] { return library_->api().session_inspect(instance_, c_str(handle, "handle"), &info, &err); }),
        err, "session_inspect");
  auto out = to_info(info);
  if (out.handle.empty()) out.handle = handle;
  return out;
}

void AbiDriver::session_stop(const std::string& handle, std::chrono::milliseconds grace) {
  berth_error err;
  auto ms = static_cast<uint32_t>(std::max<int64_t>(0, grace.count()));
  check(guarded("session_stop",
                [&] { return library_->api().session_stop(instance_, c_str(handle, "handle"), ms, &err); }),
        err, "session_stop");
}

void AbiDriver::session_remove(const std::string& handle) {
  berth_error err;
  check(guarded("session_remove",
                [&] { return library_->api().session_remove(instance_, c_str(handle, "handle"), &err); }),
        err, "session_remove");
}

std::vector<core::SessionListing> AbiDriver::session_list(const core::Labels& filter) {
  struct Ctx {
    std::vector<core::SessionListing> items;
    std::exception_ptr error;
  } ctx;
  auto on_item = [](void* p, const berth_session_listing* raw) noexcept -> int32_t {
    auto* c = static_cast<Ctx*>(p);
    try {
      const auto item = read_sized(raw);
      core::SessionListing l;
      l.handle = driver_string(item.handle, "session handle");
      l.state = to_state(item.state);
      for (size_t i = 0; item.labels != nullptr && i < item.label_count; ++i) {
        if (item.labels[i].key != nullptr) {
          l.labels[driver_string(item.labels[i].key, "label key")] = driver_string(item.labels[i].value, "label value");
        }
      }
      c->items.push_back(std::move(l));
      return 0;
    } catch (...) {
      c->error = std::current_exception();
      return 1;
    }
  };
  KvArray kv(filter);
  berth_error err;
  check(guarded("session_list", ctx.error,
                [&] { return library_->api().session_list(instance_, kv.data(), kv.size(), on_item, &ctx, &err); }),
        err, "session_list");
  return std::move(ctx.items);
}

core::SessionStats AbiDriver::session_stats(const std::string& handle) {
  const bool withdrawn = (library_->identity().capabilities & BERTH_CAP_STATS) != 0 && !has_capability(BERTH_CAP_STATS);
  if (library_->api().session_stats == nullptr || withdrawn) {
    throw DriverError(DriverErrc::unsupported, "session_stats: not supported by driver " + identity().name);
  }
  berth_error err;
  berth_session_stats st{};
  st.struct_size = sizeof st;
  check(guarded("session_stats",
                [&] { return library_->api().session_stats(instance_, c_str(handle, "handle"), &st, &err); }),
        err, "session_stats");
  return {st.memory_bytes, st.cpu_time_ns, st.pids, st.workspace_bytes, st.rootfs_bytes};
}

core::ExecResult AbiDriver::exec(const std::string& handle, const core::ExecRequest& request,
                                 const core::OutputSink& on_output, const core::CancelToken* cancel) {
  std::vector<const char*> argv;
  argv.reserve(request.argv.size() + 1);
  for (const auto& a : request.argv)
    argv.push_back(a.c_str());
  argv.push_back(nullptr);
  KvArray env(request.env);
  berth_exec_request rq{};
  rq.struct_size = sizeof rq;
  rq.timeout_ms = static_cast<uint32_t>(std::max<int64_t>(0, request.timeout.count()));
  rq.argv = argv.data();
  rq.argc = request.argv.size();
  rq.env = env.data();
  rq.env_count = env.size();
  rq.cwd = request.cwd.c_str();
  rq.stdin_data = reinterpret_cast<const uint8_t*>(request.stdin_data.data());
  rq.stdin_size = request.stdin_data.size();

  struct Ctx {
    const core::OutputSink* sink;
    std::exception_ptr error;
  } ctx{&on_output, nullptr};
  auto on_chunk = [](void* p, berth_stream stream, const uint8_t* data, size_t size) noexcept -> int32_t {
    auto* c = static_cast<Ctx*>(p);
    try {
      if (!*c->sink) return 0;
      auto s = to_stream(stream);
      if (data == nullptr) size = 0;
      return (*c->sink)(s, std::string_view(reinterpret_cast<const char*>(data), size)) ? 0 : 1;
    } catch (...) {
      c->error = std::current_exception();
      return 1;
    }
  };
  berth_exec_result result{};
  result.struct_size = sizeof result;
  result.exit_code = -1;
  berth_error err;
  auto status = guarded("exec", ctx.error, [&] {
    return library_->api().exec(instance_, c_str(handle, "handle"), &rq, on_chunk, &ctx, to_token(cancel), &result,
                                &err);
  });
  check(status, err, "exec");
  return {result.exit_code, result.timed_out != 0, result.cancelled != 0};
}

void AbiDriver::file_put(const std::string& handle, const std::string& path, std::uint32_t mode, std::uint64_t size,
                         const core::ByteSource& source) {
  struct Ctx {
    const core::ByteSource* source;
    std::exception_ptr error;
  } ctx{&source, nullptr};
  auto read = [](void* p, uint8_t* buf, size_t cap) noexcept -> int64_t {
    auto* c = static_cast<Ctx*>(p);
    try {
      return (*c->source)(buf, cap);
    } catch (...) {
      c->error = std::current_exception();
      return -1;
    }
  };
  berth_error err;
  check(guarded("file_put", ctx.error,
                [&] {
                  return library_->api().file_put(instance_, c_str(handle, "handle"), c_str(path, "path"), mode, size,
                                                  read, &ctx, &err);
                }),
        err, "file_put");
}

void AbiDriver::file_get(const std::string& handle, const std::string& path, const core::ByteSink& sink) {
  struct Ctx {
    const core::ByteSink* sink;
    std::exception_ptr error;
  } ctx{&sink, nullptr};
  auto write = [](void* p, const uint8_t* data, size_t size) noexcept -> int32_t {
    auto* c = static_cast<Ctx*>(p);
    try {
      if (data == nullptr) size = 0;
      return (*c->sink)(std::string_view(reinterpret_cast<const char*>(data), size)) ? 0 : 1;
    } catch (...) {
      c->error = std::current_exception();
      return 1;
    }
  };
  berth_error err;
  check(guarded("file_get", ctx.error,
                [&] {
                  return library_->api().file_get(instance_, c_str(handle, "handle"), c_str(path, "path"), write, &ctx,
                                                  &err);
                }),
        err, "file_get");
}

void AbiDriver::dir_scan(const std::string& handle, const std::string& path, const core::DirEntrySink& on_entry) {
  struct Ctx {
    const core::DirEntrySink* sink;
    core::DirEntry entry;  // reused: one entry is held at a time
    std::exception_ptr error;
  } ctx{&on_entry, {}, nullptr};
  auto on_raw = [](void* p, const berth_dir_entry* raw) noexcept -> int32_t {
    auto* c = static_cast<Ctx*>(p);
    try {
      const auto entry = read_sized(raw);
      const auto* e = &entry;
      core::DirEntry& d = c->entry;
      d.name = driver_string(e->name, "directory entry name");
      switch (e->type) {
        case BERTH_ENTRY_FILE:
          d.type = core::EntryType::file;
          break;
        case BERTH_ENTRY_DIRECTORY:
          d.type = core::EntryType::directory;
          break;
        case BERTH_ENTRY_SYMLINK:
          d.type = core::EntryType::symlink;
          break;
        default:
          d.type = core::EntryType::other;
      }
      d.size = e->size;
      d.mode = e->mode;
      return (*c->sink)(d) ? 0 : 1;
    } catch (...) {
      c->error = std::current_exception();
      return 1;
    }
  };
  berth_error err;
  check(guarded("dir_list", ctx.error,
                [&] {
                  return library_->api().dir_list(instance_, c_str(handle, "handle"), c_str(path, "path"), on_raw, &ctx,
                                                  &err);
                }),
        err, "dir_list");
}

void AbiDriver::path_remove(const std::string& handle, const std::string& path) {
  berth_error err;
  check(guarded(
            "path_remove",
            [&] { return library_->api().path_remove(instance_, c_str(handle, "handle"), c_str(path, "path"), &err); }),
        err, "path_remove");
}

// ---- interactive processes (ABI 1.3) ------------------------------------------------------------------------

namespace {

/** Heap-pinned target of the driver's on_ready notifications: lives until process_release has returned. */
struct ReadyTarget {
  std::function<void()> notify;
};

void on_ready_trampoline(void* ctx) noexcept {
  try {
    auto* target = static_cast<ReadyTarget*>(ctx);
    if (target != nullptr && target->notify) target->notify();
  } catch (...) {
    // A notification is a hint; a throwing host callback must not unwind through the driver's thread.
  }
}

/** core::Process over one berth_process handle. Same error mapping and exception safety as AbiDriver. */
class AbiProcess final : public core::Process {
 public:
  AbiProcess(std::shared_ptr<const DriverLibrary> library, berth_instance* instance, berth_process* process,
             std::unique_ptr<ReadyTarget> ready)
      : library_(std::move(library)), instance_(instance), process_(process), ready_(std::move(ready)) {}

  ~AbiProcess() override {
    try {
      library_->api().process_release(instance_, process_);
    } catch (...) {
      log::error("driver.process_release_failed", {{"driver", library_->identity().name}});
    }
  }

  AbiProcess(const AbiProcess&) = delete;
  AbiProcess& operator=(const AbiProcess&) = delete;

  void write_stdin(std::string_view data) override {
    berth_error err;
    check(guarded("process_write_stdin",
                  [&] {
                    return api().process_write_stdin(instance_, process_, reinterpret_cast<const uint8_t*>(data.data()),
                                                     data.size(), &err);
                  }),
          err, "process_write_stdin");
  }

  void close_stdin() override {
    berth_error err;
    check(guarded("process_close_stdin", [&] { return api().process_close_stdin(instance_, process_, &err); }), err,
          "process_close_stdin");
  }

  void signal(int signo, bool to_group) override {
    berth_error err;
    check(guarded("process_signal",
                  [&] { return api().process_signal(instance_, process_, signo, to_group ? 1 : 0, &err); }),
          err, "process_signal");
  }

  void resize(std::uint16_t rows, std::uint16_t cols) override {
    berth_error err;
    check(guarded("process_resize", [&] { return api().process_resize(instance_, process_, rows, cols, &err); }), err,
          "process_resize");
  }

  void kill() override {
    berth_error err;
    check(guarded("process_kill", [&] { return api().process_kill(instance_, process_, &err); }), err, "process_kill");
  }

  core::ProcessEvent next_event(std::chrono::milliseconds wait) override {
    const auto wait_ms = static_cast<uint32_t>(std::clamp<int64_t>(wait.count(), 0, UINT32_MAX));
    berth_process_event raw{};
    raw.struct_size = sizeof raw;
    berth_error err;
    check(guarded("process_next_event",
                  [&] { return api().process_next_event(instance_, process_, wait_ms, &raw, &err); }),
          err, "process_next_event");
    const berth_process_event e = read_sized(&raw);
    core::ProcessEvent out;
    switch (e.type) {
      case BERTH_PROCESS_EVENT_OUTPUT:
        out.kind = core::ProcessEvent::Kind::output;
        out.stream = to_stream(e.stream);
        if (e.data != nullptr) out.data.assign(reinterpret_cast<const char*>(e.data), e.size);
        break;
      case BERTH_PROCESS_EVENT_EXIT:
        out.kind = core::ProcessEvent::Kind::exit;
        out.exit = {e.exit_code, e.signal, e.timed_out != 0, e.killed != 0, e.output_dropped};
        break;
      default:  // NONE, or a type from a newer driver: consumed and skipped (rule 12)
        out.kind = core::ProcessEvent::Kind::none;
    }
    return out;
  }

 private:
  const berth_driver_api& api() const { return library_->api(); }

  std::shared_ptr<const DriverLibrary> library_;
  berth_instance* instance_;
  berth_process* process_;
  std::unique_ptr<ReadyTarget> ready_;  // after process_, so it outlives the release in the destructor body
};

}  // namespace

bool AbiDriver::supports_processes() const {
  return library_->api().process_start != nullptr && has_capability(BERTH_CAP_PROCESS);
}

std::unique_ptr<core::Process> AbiDriver::process_start(const std::string& handle, const core::ProcessSpec& spec) {
  if (!supports_processes()) return core::Driver::process_start(handle, spec);  // throws unsupported
  if (spec.pty && !has_capability(BERTH_CAP_PROCESS_PTY)) {
    throw DriverError(DriverErrc::unsupported, "process_start: driver " + identity().name + " has no PTY support");
  }
  std::vector<const char*> argv;
  argv.reserve(spec.argv.size() + 1);
  for (const auto& a : spec.argv)
    argv.push_back(c_str(a, "argv word"));
  argv.push_back(nullptr);
  KvArray env(spec.env);
  auto ready = std::make_unique<ReadyTarget>(ReadyTarget{spec.on_ready});
  berth_process_spec s{};
  s.struct_size = sizeof s;
  s.flags = spec.pty ? BERTH_PROCESS_PTY : 0;
  s.argv = argv.data();
  s.argc = spec.argv.size();
  s.env = env.data();
  s.env_count = env.size();
  s.cwd = c_str(spec.cwd, "cwd");
  s.timeout_ms = static_cast<uint32_t>(std::clamp<int64_t>(spec.timeout.count(), 0, UINT32_MAX));
  s.pty_rows = spec.rows;
  s.pty_cols = spec.cols;
  s.on_ready = spec.on_ready ? on_ready_trampoline : nullptr;
  s.ready_ctx = spec.on_ready ? ready.get() : nullptr;
  berth_process* process = nullptr;
  berth_error err;
  check(guarded("process_start",
                [&] { return library_->api().process_start(instance_, c_str(handle, "handle"), &s, &process, &err); }),
        err, "process_start");
  if (process == nullptr) throw DriverError(DriverErrc::internal, "process_start: driver returned no handle");
  try {
    return std::make_unique<AbiProcess>(library_, instance_, process, std::move(ready));
  } catch (...) {  // out of memory: the handle must still be released, or the process would run on unowned
    library_->api().process_release(instance_, process);
    throw;
  }
}

}  // namespace berth::plugin
