// The `fake` driver: Berth's reference "hello driver". Everything lives in memory and every answer is
// deterministic, so the host's tests can run without a container engine. Copy this file to start a driver.
//
// Reading order: configuration, the in-memory model (file trees, volumes, sessions), the Engine (one per
// configured instance; every public method is one ABI call and may throw berth::sdk::Error), and at the bottom
// the C entry points, each forwarding to the Engine inside berth::sdk::call_guarded so no exception crosses
// the ABI. Thread safety: one mutex per Engine guards all state; host callbacks (output, sources, sinks,
// listings) are always invoked without it held, on copies taken under it.
#include <berth/driver.h>
#include <berth/driver.hpp>

#include <Poco/Exception.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "fake_exec.h"

namespace berth::fake {
namespace {

using sdk::Error;
using StringMap = std::map<std::string, std::string>;

constexpr std::chrono::milliseconds kPollInterval{5};  // cancel/timeout/kill are noticed within this
constexpr uint64_t kRunningMemoryBytes = 8u << 20;     // what session_stats reports for a running session
constexpr int32_t kKilledExitCode = 137;
constexpr size_t kChunkBytes = size_t{64} * 1024;  // file transfers move at most this much per callback
/** Everything the fake can do; an instance configured with "processes": false offers less (instance_capabilities). */
constexpr uint64_t kCapabilities = BERTH_CAP_EXEC | BERTH_CAP_EXEC_STREAM | BERTH_CAP_EXEC_CANCEL | BERTH_CAP_FILES |
                                   BERTH_CAP_VOLUMES | BERTH_CAP_STATS | BERTH_CAP_READONLY_ROOTFS |
                                   BERTH_CAP_NETWORK_POLICY | BERTH_CAP_PROCESS | BERTH_CAP_PROCESS_PTY;

// --- configuration ------------------------------------------------------------------------------------------

/** The ABI slots that count as calls (for latency_ms and "unavailable"). */
constexpr std::string_view kSlots[] = {"volume_create",
                                       "volume_remove",
                                       "volume_exists",
                                       "session_create",
                                       "session_inspect",
                                       "session_stop",
                                       "session_remove",
                                       "session_list",
                                       "exec",
                                       "file_put",
                                       "file_get",
                                       "dir_list",
                                       "path_remove",
                                       "session_stats",
                                       "image_exists",
                                       "process_start",
                                       "process_write_stdin",
                                       "process_close_stdin",
                                       "process_signal",
                                       "process_resize",
                                       "process_kill",
                                       "process_next_event"};

/** The "unavailable" config key: calls 1..after_calls succeed, then every call fails for for_ms. */
struct Outage {
  uint64_t after_calls = 0;
  uint64_t for_ms = 0;
};

/** The driver's config section (keys in README.md). Immutable once parsed. */
struct Config {
  std::map<std::string, uint64_t, std::less<>> latency_ms;  // slot name or "default" -> milliseconds
  uint64_t fail_create_nth = 0;                             // 0 = never
  uint64_t fail_create_every = 0;                           // 0 = never
  std::optional<std::pair<std::string, std::string>> fail_stop_label;
  std::optional<Outage> unavailable;
  bool hang_exec = false;
  bool killed_exec_conflict = false;  // an exec whose session ends meanwhile fails with CONFLICT, not exit 137
  std::string name_prefix = "fake";
  // image_exists answers 0 for these and 1 for every other image; the default is the conformance kit's "absent" image
  std::vector<std::string> missing_images{"berth-conformance/absent:0"};
  bool processes = true;  // false: this instance offers no interactive processes (instance_capabilities narrows)
};

Error config_error(const std::string& key, const std::string& problem) {
  return {BERTH_INVALID_ARGUMENT, "fake config: '" + key + "' " + problem};
}

uint64_t config_count(const Poco::Dynamic::Var& value, const std::string& key) {
  if (!value.isInteger() || value.isBoolean() || value.convert<Poco::Int64>() < 0) {
    throw config_error(key, "must be a non-negative integer");
  }
  return value.convert<Poco::UInt64>();
}

Poco::JSON::Object::Ptr config_object(const Poco::Dynamic::Var& value, const std::string& key) {
  if (value.type() != typeid(Poco::JSON::Object::Ptr)) throw config_error(key, "must be an object");
  return value.extract<Poco::JSON::Object::Ptr>();
}

std::string config_string(const Poco::Dynamic::Var& value, const std::string& key) {
  if (!value.isString() || value.extract<std::string>().empty()) throw config_error(key, "must be a non-empty string");
  return value.extract<std::string>();
}

Config parse_config_object(const Poco::Dynamic::Var& root) {
  Config config;
  if (root.type() != typeid(Poco::JSON::Object::Ptr)) throw Error(BERTH_INVALID_ARGUMENT, "fake config: not an object");
  for (const auto& [key, value] : *root.extract<Poco::JSON::Object::Ptr>()) {
    if (key == "latency_ms") {
      for (const auto& [slot, ms] : *config_object(value, key)) {
        if (slot != "default" && std::find(std::begin(kSlots), std::end(kSlots), slot) == std::end(kSlots)) {
          throw config_error(key + "." + slot, "is not a driver call");
        }
        config.latency_ms[slot] = config_count(ms, key + "." + slot);
      }
    } else if (key == "fail_create_nth") {
      config.fail_create_nth = config_count(value, key);
    } else if (key == "fail_create_every") {
      config.fail_create_every = config_count(value, key);
    } else if (key == "fail_stop_label") {
      const std::string label = config_string(value, key);
      const size_t equals = label.find('=');
      if (equals == std::string::npos || equals == 0) throw config_error(key, "must look like \"key=value\"");
      config.fail_stop_label.emplace(label.substr(0, equals), label.substr(equals + 1));
    } else if (key == "unavailable") {
      Outage& outage = config.unavailable.emplace();
      for (const auto& [field, number] : *config_object(value, key)) {
        if (field != "after_calls" && field != "for_ms") throw config_error(key + "." + field, "is not a known key");
        (field == "after_calls" ? outage.after_calls : outage.for_ms) = config_count(number, key + "." + field);
      }
    } else if (key == "hang_exec") {
      if (!value.isBoolean()) throw config_error(key, "must be true or false");
      config.hang_exec = value.extract<bool>();
    } else if (key == "killed_exec_conflict") {
      if (!value.isBoolean()) throw config_error(key, "must be true or false");
      config.killed_exec_conflict = value.extract<bool>();
    } else if (key == "missing_images") {
      if (value.type() != typeid(Poco::JSON::Array::Ptr)) throw config_error(key, "must be an array of strings");
      config.missing_images.clear();
      for (const auto& item : *value.extract<Poco::JSON::Array::Ptr>()) {
        config.missing_images.push_back(config_string(item, key));
      }
    } else if (key == "processes") {
      if (!value.isBoolean()) throw config_error(key, "must be true or false");
      config.processes = value.extract<bool>();
    } else if (key == "name_prefix") {
      config.name_prefix = config_string(value, key);
    } else {
      throw config_error(key, "is not a known key");
    }
  }
  return config;
}

/** Throws Error(INVALID_ARGUMENT) naming the key for an unknown key or a wrong type. */
Config parse_config(const char* json) {
  try {
    return parse_config_object(Poco::JSON::Parser().parse(json != nullptr && *json != '\0' ? json : "{}"));
  } catch (const Poco::Exception& e) {  // bad JSON, or a number out of range
    throw Error(BERTH_INVALID_ARGUMENT, "fake config: " + e.displayText());
  }
}

// --- the in-memory model ------------------------------------------------------------------------------------

/** A file or directory. Directories have no bytes. */
struct Node {
  bool is_dir = false;
  std::string bytes;
  uint32_t mode = 0;
};

/** A workspace: normalised relative path ("a/b.txt") -> node. The root "." always exists and is implicit. */
using Tree = std::map<std::string, Node>;

/** Prefix shared by every path below `dir` in a Tree ("" for the root). */
std::string children_prefix(const std::string& dir) {
  return dir == "." ? "" : dir + "/";
}

/**
 * sdk::workspace_path plus the limits every driver shares (driver.h): a name of at most 255 bytes, a path of at
 * most 4000 bytes; INVALID_ARGUMENT otherwise. Any other byte but NUL is allowed.
 */
std::string limited_workspace_path(const char* path) {
  const std::string_view raw = path != nullptr ? path : "";
  if (raw.size() > 4000) throw Error(BERTH_INVALID_ARGUMENT, "path is longer than 4000 bytes");
  for (size_t start = 0; start <= raw.size();) {
    size_t end = raw.find('/', start);
    if (end == std::string_view::npos) end = raw.size();
    if (end - start > 255) throw Error(BERTH_INVALID_ARGUMENT, "a path component is longer than 255 bytes");
    start = end + 1;
  }
  return sdk::workspace_path(path);
}

/** The directory node at `path` (the root included); throws NOT_FOUND or INVALID_ARGUMENT. */
void require_dir(const Tree& tree, const std::string& path) {
  if (path == ".") return;
  const auto it = tree.find(path);
  if (it == tree.end()) throw Error(BERTH_NOT_FOUND, "no such directory: " + path);
  if (!it->second.is_dir) throw Error(BERTH_INVALID_ARGUMENT, "not a directory: " + path);
}

struct Volume {
  StringMap labels;
  std::shared_ptr<Tree> files = std::make_shared<Tree>();
};

struct Session {
  std::string handle;
  std::string session_id;
  std::string volume;  // "" = the files live in a tree private to the session
  std::string mount_path;
  std::string spec_text;  // what `__fake spec` prints
  StringMap labels;
  StringMap env;
  std::shared_ptr<Tree> files;  // the volume's tree or a private one
  // Guarded by Engine::mutex_:
  berth_session_state state = BERTH_SESSION_RUNNING;
  int32_t exit_code = 0;
  uint64_t running_execs = 0;
  uint64_t cpu_time_ns = 0;  // wall time spent in exec calls
};

/** The `__fake spec` text: the spec fields a test may want to see arrive. */
std::string describe_spec(const berth_session_spec& spec) {
  const auto text = [](const char* s) { return std::string(s != nullptr ? s : ""); };
  return "image=" + text(spec.image) + "\nnano_cpus=" + std::to_string(spec.nano_cpus) +
         "\nmemory_bytes=" + std::to_string(spec.memory_bytes) + "\npids_limit=" + std::to_string(spec.pids_limit) +
         "\nnetwork_enabled=" + std::to_string(spec.network_enabled) +
         "\nread_only_rootfs=" + std::to_string(spec.read_only_rootfs) + "\nuser=" + text(spec.user) +
         "\nworking_dir=" + text(spec.working_dir) + "\nworkspace_volume=" + text(spec.workspace_volume) + "\n";
}

// --- the engine ---------------------------------------------------------------------------------------------

/** One configured instance. Every method is thread-safe; the ABI methods throw sdk::Error on failure. */
class Engine {
 public:
  Engine(const berth_host_api& host, Config config) : host_(host), config_(std::move(config)) {}

  const berth_host_api* host() const { return &host_; }

  /** Prologue of every call: the injected latency, then the unavailability gate. */
  void enter(std::string_view slot, const berth_cancel_token* cancel) {
    auto latency = config_.latency_ms.find(slot);
    if (latency == config_.latency_ms.end()) latency = config_.latency_ms.find("default");
    if (latency != config_.latency_ms.end() && !wait_ms(latency->second, cancel)) {
      throw Error(BERTH_CANCELLED, "cancelled");
    }
    std::lock_guard lock(mutex_);
    ++calls_;
    if (config_.unavailable && calls_ == config_.unavailable->after_calls + 1) {
      unavailable_until_ns_ = now_ns() + config_.unavailable->for_ms * 1'000'000;
    }
    if (now_ns() < unavailable_until_ns_) throw Error(BERTH_UNAVAILABLE, "fake engine unavailable");
  }

  void volume_create(const char* name, StringMap labels) {
    const std::string volume = required(name, "volume name");
    std::lock_guard lock(mutex_);
    if (!volumes_.try_emplace(volume, std::make_shared<Volume>(Volume{std::move(labels)})).second) {
      throw Error(BERTH_CONFLICT, "volume already exists: " + volume);
    }
    log(BERTH_LOG_INFO, "fake.volume_create", {{"volume", volume.c_str()}});
  }

  void volume_remove(const char* name) {
    const std::string volume = required(name, "volume name");
    std::lock_guard lock(mutex_);
    if (volumes_.count(volume) == 0) throw Error(BERTH_NOT_FOUND, "no such volume: " + volume);
    for (const auto& [handle, session] : sessions_) {
      if (session->volume == volume) throw Error(BERTH_CONFLICT, "volume " + volume + " is used by " + handle);
    }
    volumes_.erase(volume);
    log(BERTH_LOG_INFO, "fake.volume_remove", {{"volume", volume.c_str()}});
  }

  bool image_exists(const char* image) {
    const std::string ref = required(image, "image");
    return std::find(config_.missing_images.begin(), config_.missing_images.end(), ref) == config_.missing_images.end();
  }

  bool volume_exists(const char* name) {
    const std::string volume = required(name, "volume name");
    std::lock_guard lock(mutex_);
    return volumes_.count(volume) != 0;
  }

  berth_session_info session_create(const berth_session_spec* spec_in) {
    const berth_session_spec spec = sdk::read_struct(spec_in);
    required(spec.image, "image");
    auto session = std::make_shared<Session>();
    session->session_id = spec.session_id != nullptr ? spec.session_id : "";
    session->volume = spec.workspace_volume != nullptr ? spec.workspace_volume : "";
    session->mount_path = spec.workspace_mount_path != nullptr && *spec.workspace_mount_path != '\0'
                              ? spec.workspace_mount_path
                              : "/workspace";
    session->spec_text = describe_spec(spec);
    session->labels = sdk::kv_map(spec.labels, spec.label_count);
    session->env = sdk::kv_map(spec.env, spec.env_count);

    std::lock_guard lock(mutex_);
    ++creates_;
    if ((config_.fail_create_nth != 0 && creates_ == config_.fail_create_nth) ||
        (config_.fail_create_every != 0 && creates_ % config_.fail_create_every == 0)) {
      log(BERTH_LOG_WARN, "fake.injected_failure", {{"call", "session_create"}});
      throw Error(BERTH_INTERNAL, "injected failure");
    }
    session->handle = config_.name_prefix + "-" +
                      (session->session_id.empty() ? std::to_string(next_handle_++) : session->session_id);
    if (session->handle.size() >= BERTH_HANDLE_MAX) throw Error(BERTH_INVALID_ARGUMENT, "session_id is too long");
    if (sessions_.count(session->handle) != 0) throw Error(BERTH_CONFLICT, "session exists: " + session->handle);
    if (session->volume.empty()) {
      session->files = std::make_shared<Tree>();
    } else {
      const auto volume = volumes_.find(session->volume);
      if (volume == volumes_.end()) throw Error(BERTH_NOT_FOUND, "no such volume: " + session->volume);
      session->files = volume->second->files;
    }
    sessions_.emplace(session->handle, session);
    log(BERTH_LOG_INFO, "fake.session_create",
        {{"session", session->session_id.c_str()}, {"handle", session->handle.c_str()}});
    berth_session_info info{};
    info.state = BERTH_SESSION_RUNNING;
    sdk::copy_string(info.handle, session->handle);
    sdk::copy_string(info.endpoint, "in-process:" + session->handle);  // driver.h: "<transport>:<address>"
    return info;
  }

  berth_session_info session_inspect(const char* handle) {
    berth_session_info info{};
    std::lock_guard lock(mutex_);
    const auto it = sessions_.find(handle != nullptr ? handle : "");
    if (it == sessions_.end()) {
      info.state = BERTH_SESSION_MISSING;
      return info;
    }
    info.state = it->second->state;
    info.exit_code = it->second->exit_code;
    sdk::copy_string(info.handle, it->second->handle);
    sdk::copy_string(info.endpoint, "in-process:" + it->second->handle);
    return info;
  }

  /** Graceful and instant: a running session becomes EXITED with exit code 0; timeout_ms is not needed. */
  void session_stop(const char* handle) {
    std::lock_guard lock(mutex_);
    Session& session = find(handle);
    inject_stop_failure(session, "session_stop");
    if (session.state != BERTH_SESSION_RUNNING) return;
    session.state = BERTH_SESSION_EXITED;
    session.exit_code = 0;
    log(BERTH_LOG_INFO, "fake.session_stop", {{"handle", session.handle.c_str()}});
  }

  void session_remove(const char* handle) {
    std::lock_guard lock(mutex_);
    const std::shared_ptr<Session> session = find_shared(handle);
    inject_stop_failure(*session, "session_remove");
    session->state = BERTH_SESSION_EXITED;  // running execs notice and end as killed
    sessions_.erase(session->handle);
    log(BERTH_LOG_INFO, "fake.session_remove", {{"handle", session->handle.c_str()}});
  }

  void session_list(StringMap filter, berth_session_list_fn on_item, void* ctx) {
    if (on_item == nullptr) throw Error(BERTH_INVALID_ARGUMENT, "session_list needs a callback");
    struct Item {
      std::string handle;
      berth_session_state state;
      StringMap labels;
    };
    std::vector<Item> items;
    {
      std::lock_guard lock(mutex_);
      for (const auto& entry : sessions_) {
        const Session& session = *entry.second;
        const bool matches = std::all_of(filter.begin(), filter.end(), [&](const auto& wanted) {
          const auto label = session.labels.find(wanted.first);
          return label != session.labels.end() && label->second == wanted.second;
        });
        if (matches) items.push_back({session.handle, session.state, session.labels});
      }
    }
    for (const Item& item : items) {
      const std::vector<berth_kv> labels = sdk::kv_array(item.labels);
      berth_session_listing listing{};
      listing.struct_size = sizeof(listing);
      listing.state = item.state;
      listing.handle = item.handle.c_str();
      listing.labels = labels.data();
      listing.label_count = labels.size();
      if (on_item(ctx, &listing) != 0) break;
    }
  }

  /** What `du -sx --block-size=1` would say of `tree`: 4 KiB per directory (the root too), files in 4 KiB blocks. */
  static uint64_t workspace_bytes(const Tree& tree) {
    constexpr uint64_t kBlock = 4096;
    uint64_t total = kBlock;
    for (const auto& [path, node] : tree)
      total += node.is_dir ? kBlock : (node.bytes.size() + kBlock - 1) / kBlock * kBlock;
    return total;
  }

  berth_session_stats session_stats(const char* handle) {
    std::lock_guard lock(mutex_);
    const Session& session = find(handle);
    const bool running = session.state == BERTH_SESSION_RUNNING;
    berth_session_stats stats{};
    stats.memory_bytes = running ? kRunningMemoryBytes : 0;
    stats.cpu_time_ns = session.cpu_time_ns;
    stats.pids = running ? 1 + session.running_execs : 0;
    stats.workspace_bytes = workspace_bytes(*session.files);
    stats.rootfs_bytes = 0;  // the fake has no writable layer: tenant code writes only the workspace
    return stats;
  }

  const Config& config() const { return config_; }

  /**
   * The start of an interactive process: the session must be running (NOT_FOUND otherwise: nothing ran); fills
   * the process's env (the session's overlaid by `env`) and pwd and counts it as running until end_process.
   */
  std::shared_ptr<Session> begin_process(const char* handle, const std::map<std::string, std::string>& env,
                                         const std::string& cwd, Process& process) {
    std::lock_guard lock(mutex_);
    std::shared_ptr<Session> session = find_shared(handle);
    if (session->state != BERTH_SESSION_RUNNING)
      throw Error(BERTH_NOT_FOUND, "session is not running (nothing ran): " + session->handle);
    process.env = session->env;
    for (const auto& [key, value] : env)
      process.env[key] = value;
    process.pwd = session->mount_path + (cwd == "." ? "" : "/" + cwd);
    ++session->running_execs;
    return session;
  }

  /** The end of a process begun with begin_process. */
  void end_process(Session& session, uint64_t start_ns) {
    std::lock_guard lock(mutex_);
    --session.running_execs;
    session.cpu_time_ns += now_ns() - start_ns;
  }

  /** Fills `result` and returns BERTH_OK, or throws (CANCELLED for a cancel token or a refusing sink). */
  void exec(const char* handle, const berth_exec_request* request_in, berth_output_fn on_output, void* output_ctx,
            const berth_cancel_token* cancel, berth_exec_result& result);

  void file_put(const char* handle, const char* path_in, uint32_t mode, uint64_t size, berth_read_fn source,
                void* source_ctx) {
    const std::string path = file_path(path_in);
    std::string bytes;  // read everything first: the source is a host callback, never called under the lock
    bytes.reserve(std::min<uint64_t>(size, 1u << 20));
    std::vector<uint8_t> chunk(kChunkBytes);
    while (bytes.size() < size) {
      if (source == nullptr) throw Error(BERTH_INVALID_ARGUMENT, "file_put needs a source");
      const size_t wanted = std::min<uint64_t>(chunk.size(), size - bytes.size());
      const int64_t got = source(source_ctx, chunk.data(), wanted);
      if (got < 0) throw Error(BERTH_CANCELLED, "the file source failed");
      if (got == 0 || static_cast<uint64_t>(got) > wanted) {
        throw Error(BERTH_INVALID_ARGUMENT,
                    "the file source gave " + std::to_string(bytes.size()) + " of " + std::to_string(size) + " bytes");
      }
      bytes.append(reinterpret_cast<const char*>(chunk.data()), static_cast<size_t>(got));
    }
    std::lock_guard lock(mutex_);
    Tree& tree = *find(handle).files;
    std::vector<std::string> parents;  // check every parent before creating any
    for (size_t slash = path.find('/'); slash != std::string::npos; slash = path.find('/', slash + 1)) {
      parents.push_back(path.substr(0, slash));
      const auto it = tree.find(parents.back());
      if (it != tree.end() && !it->second.is_dir) throw Error(BERTH_INVALID_ARGUMENT, "not a directory: " + it->first);
    }
    const auto existing = tree.find(path);
    if (existing != tree.end() && existing->second.is_dir)
      throw Error(BERTH_INVALID_ARGUMENT, "is a directory: " + path);
    for (const std::string& parent : parents)
      tree.try_emplace(parent, Node{true, "", 0755});
    tree[path] = Node{false, std::move(bytes), mode != 0 ? (mode & 07777) : 0644};
  }

  void file_get(const char* handle, const char* path_in, berth_write_fn sink, void* sink_ctx) {
    if (sink == nullptr) throw Error(BERTH_INVALID_ARGUMENT, "file_get needs a sink");
    const std::string path = file_path(path_in);
    std::string bytes;
    {
      std::lock_guard lock(mutex_);
      const Tree& tree = *find(handle).files;
      const auto it = tree.find(path);
      if (it == tree.end()) throw Error(BERTH_NOT_FOUND, "no such file: " + path);
      if (it->second.is_dir) throw Error(BERTH_INVALID_ARGUMENT, "is a directory: " + path);
      bytes = it->second.bytes;
    }
    for (size_t offset = 0; offset < bytes.size(); offset += kChunkBytes) {
      const size_t length = std::min(kChunkBytes, bytes.size() - offset);
      if (sink(sink_ctx, reinterpret_cast<const uint8_t*>(bytes.data() + offset), length) != 0) {
        throw Error(BERTH_CANCELLED, "the file sink refused data");
      }
    }
  }

  /** Entries come sorted by name. A callback returning non-zero ends the listing early (still BERTH_OK). */
  void dir_list(const char* handle, const char* path_in, berth_dir_list_fn on_entry, void* ctx) {
    if (on_entry == nullptr) throw Error(BERTH_INVALID_ARGUMENT, "dir_list needs a callback");
    const std::string path = limited_workspace_path(path_in);
    struct Item {
      std::string name;
      bool is_dir;
      std::uint64_t size;
      std::uint32_t mode;
    };
    std::vector<Item> entries;  // names and sizes only, never the files' bytes
    {
      std::lock_guard lock(mutex_);
      const Tree& tree = *find(handle).files;
      require_dir(tree, path);
      const std::string prefix = children_prefix(path);
      for (auto it = tree.lower_bound(prefix); it != tree.end() && it->first.starts_with(prefix); ++it) {
        const std::string name = it->first.substr(prefix.size());
        if (name.find('/') == std::string::npos) {
          entries.push_back({name, it->second.is_dir, it->second.bytes.size(), it->second.mode});
        }
      }
    }
    for (const auto& item : entries) {
      berth_dir_entry entry{};
      entry.struct_size = sizeof(entry);
      entry.type = item.is_dir ? BERTH_ENTRY_DIRECTORY : BERTH_ENTRY_FILE;
      entry.name = item.name.c_str();
      entry.size = item.size;
      entry.mode = item.is_dir ? 0755 : item.mode;
      if (on_entry(ctx, &entry) != 0) break;
    }
  }

  void path_remove(const char* handle, const char* path_in) {
    const std::string path = limited_workspace_path(path_in);
    if (path == ".") throw Error(BERTH_INVALID_ARGUMENT, "cannot remove the workspace root");
    std::lock_guard lock(mutex_);
    Tree& tree = *find(handle).files;
    if (tree.erase(path) == 0) throw Error(BERTH_NOT_FOUND, "no such file or directory: " + path);
    const std::string prefix = children_prefix(path);
    for (auto it = tree.lower_bound(prefix); it != tree.end() && it->first.starts_with(prefix);)
      it = tree.erase(it);
  }

  // --- services for ExecRun ---

  uint64_t now_ns() const {
    if (host_.monotonic_ns != nullptr) return host_.monotonic_ns(host_.host_ctx);
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  bool cancelled(const berth_cancel_token* cancel) const {
    return cancel != nullptr && host_.is_cancelled != nullptr && host_.is_cancelled(cancel) != 0;
  }

  /** Waits `ms` milliseconds, polling `cancel`; false if it was cancelled first. */
  bool wait_ms(uint64_t ms, const berth_cancel_token* cancel) const {
    const uint64_t until = now_ns() + ms * 1'000'000;
    while (now_ns() < until) {
      if (cancelled(cancel)) return false;
      std::this_thread::sleep_for(kPollInterval);
    }
    return true;
  }

  /** Why an exec on `session` must stop now, or kNone. */
  Interruption poll_exec(const Session& session, const berth_cancel_token* cancel, uint64_t deadline_ns) {
    if (cancelled(cancel)) return Interruption::kCancelled;
    if (deadline_ns != 0 && now_ns() >= deadline_ns) return Interruption::kTimedOut;
    std::lock_guard lock(mutex_);
    return session.state == BERTH_SESSION_RUNNING ? Interruption::kNone : Interruption::kKilled;
  }

  std::optional<std::string> read_file(const Session& session, const std::string& path) {
    std::lock_guard lock(mutex_);
    const auto it = session.files->find(path);
    if (it == session.files->end() || it->second.is_dir) return std::nullopt;
    return it->second.bytes;
  }

  bool make_dir(const Session& session, const std::string& path) {
    std::lock_guard lock(mutex_);
    Tree& tree = *session.files;
    for (size_t slash = 0; slash != std::string::npos;) {
      slash = path.find('/', slash + 1);
      const std::string prefix = path.substr(0, slash);
      const auto [it, inserted] = tree.try_emplace(prefix, Node{true, "", 0755});
      if (!it->second.is_dir) return false;
    }
    return true;
  }

  bool fill_file(const Session& session, const std::string& path, uint64_t bytes) {
    std::lock_guard lock(mutex_);
    Tree& tree = *session.files;
    const size_t slash = path.rfind('/');
    const std::string parent = slash == std::string::npos ? "." : path.substr(0, slash);
    if (parent != "." && !(tree.count(parent) && tree.at(parent).is_dir)) return false;
    if (auto it = tree.find(path); it != tree.end() && it->second.is_dir) return false;
    tree[path] = Node{false, std::string(bytes, '\0'), 0644};
    return true;
  }

  void make_unavailable(uint64_t ms) {
    std::lock_guard lock(mutex_);
    unavailable_until_ns_ = std::max(unavailable_until_ns_, now_ns() + ms * 1'000'000);
    log(BERTH_LOG_WARN, "fake.unavailable", {{"for_ms", std::to_string(ms).c_str()}});
  }

  void crash(Session& session) {
    std::lock_guard lock(mutex_);
    if (session.state != BERTH_SESSION_RUNNING) return;
    session.state = BERTH_SESSION_EXITED;
    session.exit_code = kKilledExitCode;
    log(BERTH_LOG_WARN, "fake.session_crash", {{"handle", session.handle.c_str()}});
  }

 private:
  void log(berth_log_level level, const char* event, std::initializer_list<berth_kv> fields) const {
    sdk::log(&host_, level, event, fields);
  }

  static std::string required(const char* value, const char* what) {
    if (value == nullptr || *value == '\0') throw Error(BERTH_INVALID_ARGUMENT, std::string(what) + " is required");
    return value;
  }

  /** A path naming a file: checked by the workspace rule, and not the workspace root itself. */
  static std::string file_path(const char* path_in) {
    std::string path = limited_workspace_path(path_in);
    if (path == ".") throw Error(BERTH_INVALID_ARGUMENT, "the workspace root is a directory");
    return path;
  }

  /** The session `handle` (not removed); NOT_FOUND otherwise. Requires mutex_. */
  std::shared_ptr<Session> find_shared(const char* handle) {
    const std::string key = handle != nullptr ? handle : "";
    const auto it = sessions_.find(key);
    if (it == sessions_.end()) throw Error(BERTH_NOT_FOUND, "no such session: " + key);
    return it->second;
  }

  Session& find(const char* handle) { return *find_shared(handle); }

  /** `fail_stop_label`: stop/remove of a session carrying the label fails. Requires mutex_. */
  void inject_stop_failure(const Session& session, const char* call) const {
    if (!config_.fail_stop_label) return;
    const auto label = session.labels.find(config_.fail_stop_label->first);
    if (label == session.labels.end() || label->second != config_.fail_stop_label->second) return;
    log(BERTH_LOG_WARN, "fake.injected_failure", {{"call", call}, {"handle", session.handle.c_str()}});
    throw Error(BERTH_INTERNAL, "injected failure");
  }

  const berth_host_api host_;
  const Config config_;
  std::mutex mutex_;  // guards everything below and the mutable fields of every Session
  std::map<std::string, std::shared_ptr<Volume>> volumes_;
  std::map<std::string, std::shared_ptr<Session>> sessions_;  // removed sessions are erased
  uint64_t calls_ = 0;
  uint64_t creates_ = 0;
  uint64_t next_handle_ = 1;
  uint64_t unavailable_until_ns_ = 0;
};

/** One exec call as the interpreter sees it (fake_exec.h). Lives on the calling thread for the call. */
class ExecRun final : public ProcessHost {
 public:
  ExecRun(Engine& engine, std::shared_ptr<Session> session, const berth_cancel_token* cancel, uint64_t deadline_ns,
          berth_output_fn on_output, void* output_ctx, std::string stdin_data)
      : stdin_(std::move(stdin_data)),
        engine_(engine),
        session_(std::move(session)),
        cancel_(cancel),
        deadline_ns_(deadline_ns),
        on_output_(on_output),
        output_ctx_(output_ctx) {}

  Interruption write(berth_stream stream, std::string_view data) override {
    if (on_output_ == nullptr || data.empty()) return Interruption::kNone;
    const auto* bytes = reinterpret_cast<const uint8_t*>(data.data());
    return on_output_(output_ctx_, stream, bytes, data.size()) == 0 ? Interruption::kNone : Interruption::kCancelled;
  }

  Interruption poll() override { return engine_.poll_exec(*session_, cancel_, deadline_ns_); }

  Interruption sleep_ms(double ms) override {
    constexpr double kForeverMs = 1e12;  // ~30 years; also keeps the conversion below in range
    const uint64_t until = ms < 0 || ms > kForeverMs ? UINT64_MAX : engine_.now_ns() + static_cast<uint64_t>(ms * 1e6);
    while (true) {
      if (const Interruption why = poll(); why != Interruption::kNone) return why;
      if (engine_.now_ns() >= until) return Interruption::kNone;
      std::this_thread::sleep_for(kPollInterval);
    }
  }

  void make_unavailable(uint64_t ms) override { engine_.make_unavailable(ms); }
  void crash_session() override { engine_.crash(*session_); }
  std::string describe_session() override { return session_->spec_text; }
  std::optional<std::string> read_file(const std::string& path) override { return engine_.read_file(*session_, path); }
  bool make_dir(const std::string& path) override { return engine_.make_dir(*session_, path); }
  bool fill_file(const std::string& path, uint64_t bytes) override { return engine_.fill_file(*session_, path, bytes); }
  /** An exec's stdin is all there from the start: one chunk, then the end. */
  Interruption read_stdin(std::string& chunk) override {
    chunk = std::exchange(stdin_, std::string());
    return Interruption::kNone;
  }
  std::optional<std::pair<uint16_t, uint16_t>> terminal_size() override { return std::nullopt; }

 private:
  std::string stdin_;  // what nothing has read yet
  Engine& engine_;
  std::shared_ptr<Session> session_;  // kept alive even if the session is removed meanwhile
  const berth_cancel_token* cancel_;
  uint64_t deadline_ns_;  // 0 = no timeout
  berth_output_fn on_output_;
  void* output_ctx_;
};

/**
 * One interactive process (ABI 1.3): the interpreter runs on a thread of its own (the fake is a test double; a
 * real driver multiplexes its processes over its engine connection) and talks to the host through queues: stdin
 * in, events out. The host pulls events with next_event (driver.h rule 11). A fake PTY echoes stdin, turns "\n"
 * into "\r\n" (and a typed "\r" into "\n"), merges stderr into stdout, and answers `stty size`; `sh` with no script on
 * a PTY is an interactive shell (a "$ " prompt, one line at a time).
 */
class FakeProcess : public ProcessHost {
 public:
  /** Most output bytes queued before the process blocks in its next write (a flood does not grow memory). */
  static constexpr size_t kMaxQueuedOutput = size_t{1} << 20;
  /** Most unread stdin bytes accepted; beyond it process_write_stdin is UNAVAILABLE (driver.h asks >= 8 MiB). */
  static constexpr size_t kMaxStdin = size_t{16} << 20;

  FakeProcess(Engine& engine, std::shared_ptr<Session> session, Process process, uint64_t deadline_ns,
              const berth_process_spec& spec, uint64_t start_ns)
      : engine_(engine),
        session_(std::move(session)),
        process_(std::move(process)),
        deadline_ns_(deadline_ns),
        start_ns_(start_ns),
        pty_((spec.flags & BERTH_PROCESS_PTY) != 0),
        on_ready_(spec.on_ready),
        ready_ctx_(spec.ready_ctx),
        rows_(spec.pty_rows != 0 ? spec.pty_rows : 24),
        cols_(spec.pty_cols != 0 ? spec.pty_cols : 80) {}

  /** Kills the process if it still runs and waits for its thread (process_release). */
  virtual ~FakeProcess() {
    kill();
    if (thread_.joinable()) thread_.join();
  }

  FakeProcess(const FakeProcess&) = delete;
  FakeProcess& operator=(const FakeProcess&) = delete;

  void start() {
    thread_ = std::thread([this] { run(); });
  }

  void write_stdin(const uint8_t* data, size_t size) {
    if (data == nullptr && size != 0) throw Error(BERTH_INVALID_ARGUMENT, "NULL stdin data");
    std::string bytes(reinterpret_cast<const char*>(data), size);
    if (pty_) {
      std::replace(bytes.begin(), bytes.end(), '\r', '\n');  // the line discipline's ICRNL: Enter is "\r"
      // ^D (VEOF) hands over the line at once: the interactive shell takes a line holding it for the end of input.
      for (auto at = bytes.find('\x04'); at != std::string::npos; at = bytes.find('\x04', at + 2))
        bytes.insert(at + 1, "\n");
    }
    {
      std::lock_guard lock(mutex_);
      if (stdin_closed_) throw Error(BERTH_CONFLICT, "stdin is closed");
      if (exit_) return;  // nobody reads any more: discarded
      if (stdin_.size() + size > kMaxStdin) throw Error(BERTH_UNAVAILABLE, "stdin buffer full: retry after an event");
      stdin_ += bytes;
      if (pty_ && !bytes.empty()) push_locked(BERTH_STREAM_STDOUT, terminal_text(bytes));  // the terminal echoes
    }
    wake();
  }

  void close_stdin() {
    {
      std::lock_guard lock(mutex_);
      stdin_closed_ = true;
    }
    wake();
  }

  /** Signals that end a process by default end it (signal N: exit 128 + N); the others are ignored. */
  void signal(int32_t signo) {
    if (signo < 1 || signo > 64) throw Error(BERTH_INVALID_ARGUMENT, "not a signal number: " + std::to_string(signo));
    constexpr int32_t kIgnored[] = {17, 18, 19, 20, 21, 22, 23, 28};  // CHLD CONT STOP TSTP TTIN TTOU URG WINCH
    if (std::find(std::begin(kIgnored), std::end(kIgnored), signo) != std::end(kIgnored)) return;
    {
      std::lock_guard lock(mutex_);
      if (signal_ == 0) signal_ = signo;
    }
    wake();
  }

  void resize(uint16_t rows, uint16_t cols) {
    if (!pty_) throw Error(BERTH_INVALID_ARGUMENT, "the process has no terminal");
    if (rows == 0 || cols == 0) throw Error(BERTH_INVALID_ARGUMENT, "a terminal needs at least one row and column");
    std::lock_guard lock(mutex_);
    rows_ = rows;
    cols_ = cols;
  }

  void kill() {
    {
      std::lock_guard lock(mutex_);
      kill_requested_ = true;
    }
    wake();
  }

  /** The next event within wait_ms; an OUTPUT's data stays valid until the next call (held_). */
  berth_process_event next_event(uint32_t wait_ms) {
    berth_process_event event{};
    std::unique_lock lock(mutex_);
    held_.clear();
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
    while (true) {
      if (!events_.empty()) {
        event.type = BERTH_PROCESS_EVENT_OUTPUT;
        event.stream = events_.front().first;
        held_ = std::move(events_.front().second);
        events_.pop_front();
        queued_bytes_ -= held_.size();
        event.data = reinterpret_cast<const uint8_t*>(held_.data());
        event.size = held_.size();
        cv_.notify_all();  // a writer may wait for room
        return event;
      }
      if (exit_) {
        if (conflict_) throw Error(BERTH_CONFLICT, "the session ended during the process: " + session_->handle);
        return *exit_;
      }
      if (cv_.wait_until(lock, until) == std::cv_status::timeout && events_.empty() && !exit_) return event;
    }
  }

  // --- ProcessHost: the interpreter's side, on the process's own thread ---

  Interruption write(berth_stream stream, std::string_view data) override {
    if (data.empty()) return Interruption::kNone;
    std::string bytes = pty_ ? terminal_text(data) : std::string(data);
    while (true) {
      {
        std::unique_lock lock(mutex_);
        if (queued_bytes_ < kMaxQueuedOutput) {
          push_locked(pty_ ? BERTH_STREAM_STDOUT : stream, std::move(bytes));
          break;
        }
      }
      if (const Interruption why = poll(); why != Interruption::kNone) return why;  // kill, signal, timeout, session
      std::unique_lock lock(mutex_);
      cv_.wait_for(lock, kPollInterval);
    }
    wake();  // next_event waits on cv_: without the notify it slept out its whole wait for every chunk
    return Interruption::kNone;
  }

  Interruption poll() override {
    {
      std::lock_guard lock(mutex_);
      if (const Interruption why = interruption_locked(); why != Interruption::kNone) return why;
    }
    return engine_.poll_exec(*session_, nullptr, deadline_ns_);
  }

  Interruption sleep_ms(double ms) override {
    constexpr double kForeverMs = 1e12;
    const uint64_t until = ms < 0 || ms > kForeverMs ? UINT64_MAX : engine_.now_ns() + static_cast<uint64_t>(ms * 1e6);
    while (true) {
      if (const Interruption why = poll(); why != Interruption::kNone) return why;
      if (engine_.now_ns() >= until) return Interruption::kNone;
      std::unique_lock lock(mutex_);
      cv_.wait_for(lock, kPollInterval);
    }
  }

  Interruption read_stdin(std::string& chunk) override {
    while (true) {
      if (const Interruption why = poll(); why != Interruption::kNone) return why;
      std::unique_lock lock(mutex_);
      if (!stdin_.empty() || stdin_closed_) {
        chunk = std::exchange(stdin_, std::string());
        return Interruption::kNone;  // empty: the end of stdin
      }
      cv_.wait_for(lock, kPollInterval);
    }
  }

  std::optional<std::pair<uint16_t, uint16_t>> terminal_size() override {
    if (!pty_) return std::nullopt;
    std::lock_guard lock(mutex_);
    return std::make_pair(rows_, cols_);
  }

  void make_unavailable(uint64_t ms) override { engine_.make_unavailable(ms); }
  void crash_session() override { engine_.crash(*session_); }
  std::string describe_session() override { return session_->spec_text; }
  std::optional<std::string> read_file(const std::string& path) override { return engine_.read_file(*session_, path); }
  bool make_dir(const std::string& path) override { return engine_.make_dir(*session_, path); }
  bool fill_file(const std::string& path, uint64_t bytes) override { return engine_.fill_file(*session_, path, bytes); }

 private:
  /** The thread body: run the program, then publish its EXIT event. */
  void run() {
    ProcessOutcome outcome;
    try {
      outcome = run_process(process_, *this);
    } catch (...) {  // only std::bad_alloc leaves the interpreter
      outcome = {Interruption::kNone, 1};
    }
    engine_.end_process(*session_, start_ns_);
    berth_process_event exit{};
    exit.type = BERTH_PROCESS_EVENT_EXIT;
    {
      std::lock_guard lock(mutex_);
      switch (outcome.interruption) {
        case Interruption::kNone:
          exit.exit_code = outcome.exit_code;
          break;
        case Interruption::kSignaled:
          exit.signal = signal_;
          exit.exit_code = 128 + signal_;
          break;
        case Interruption::kTimedOut:
          exit.timed_out = 1;
          exit.signal = 9;
          exit.exit_code = 128 + 9;
          break;
        default:  // process_kill, or the session ended under it
          exit.killed = 1;
          exit.signal = 9;
          exit.exit_code = 128 + 9;
          conflict_ = !kill_requested_ && engine_.config().killed_exec_conflict;
      }
      exit_ = exit;
    }
    wake();
  }

  /** Why the process must stop (requested kill or signal), or kNone. Requires mutex_. */
  Interruption interruption_locked() const {
    if (kill_requested_) return Interruption::kKilled;
    if (signal_ != 0) return Interruption::kSignaled;
    return Interruption::kNone;
  }

  void push_locked(berth_stream stream, std::string bytes) {
    queued_bytes_ += bytes.size();
    events_.emplace_back(stream, std::move(bytes));
  }

  /** What a terminal shows for `text`: "\n" becomes "\r\n" (the line discipline's ONLCR). */
  static std::string terminal_text(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (const char c : text) {
      if (c == '\n') out += '\r';
      out += c;
    }
    return out;
  }

  /** Wakes the process thread and a waiting next_event, and tells the host (never with mutex_ held). */
  void wake() {
    cv_.notify_all();
    notify_ready();
  }

  void notify_ready() const {
    if (on_ready_ != nullptr) on_ready_(ready_ctx_);
  }

  Engine& engine_;
  const std::shared_ptr<Session> session_;
  const Process process_;
  const uint64_t deadline_ns_;  // 0 = no timeout
  const uint64_t start_ns_;
  const bool pty_;
  const berth_process_ready_fn on_ready_;
  void* const ready_ctx_;
  std::thread thread_;

  std::mutex mutex_;  // guards everything below
  std::condition_variable cv_;
  uint16_t rows_;
  uint16_t cols_;
  std::string stdin_;  // written by the host, not yet read by the program
  bool stdin_closed_ = false;
  bool kill_requested_ = false;
  int32_t signal_ = 0;  // the first terminating signal received
  std::deque<std::pair<berth_stream, std::string>> events_;
  size_t queued_bytes_ = 0;
  std::optional<berth_process_event> exit_;
  bool conflict_ = false;  // killed_exec_conflict: the session ended under it
  std::string held_;       // the data of the OUTPUT event handed out last
};

void Engine::exec(const char* handle, const berth_exec_request* request_in, berth_output_fn on_output, void* output_ctx,
                  const berth_cancel_token* cancel, berth_exec_result& result) {
  const berth_exec_request request = sdk::read_struct(request_in);
  Process process;
  if (request.argv == nullptr && request.argc != 0) throw Error(BERTH_INVALID_ARGUMENT, "argv is NULL");
  for (size_t i = 0; i < request.argc; ++i) {
    if (request.argv[i] == nullptr) throw Error(BERTH_INVALID_ARGUMENT, "NULL in argv");
    process.argv.emplace_back(request.argv[i]);
  }
  if (process.argv.empty()) throw Error(BERTH_INVALID_ARGUMENT, "argv is empty");
  if (config_.hang_exec) process.argv = {"hang"};
  if (request.stdin_data == nullptr && request.stdin_size != 0) throw Error(BERTH_INVALID_ARGUMENT, "NULL stdin");
  std::string stdin_data(reinterpret_cast<const char*>(request.stdin_data), request.stdin_size);
  const std::string cwd = limited_workspace_path(request.cwd);

  std::shared_ptr<Session> session;
  {
    std::lock_guard lock(mutex_);
    session = find_shared(handle);
    if (session->state != BERTH_SESSION_RUNNING)
      throw Error(BERTH_NOT_FOUND, "session is not running (nothing ran): " + session->handle);
    process.env = session->env;
    for (auto& [key, value] : sdk::kv_map(request.env, request.env_count))
      process.env[key] = value;
    ++session->running_execs;
  }
  process.pwd = session->mount_path + (cwd == "." ? "" : "/" + cwd);
  log(BERTH_LOG_DEBUG, "fake.exec", {{"handle", session->handle.c_str()}, {"program", process.argv[0].c_str()}});

  const uint64_t start_ns = now_ns();
  ExecRun run(*this, session, cancel, request.timeout_ms != 0 ? start_ns + request.timeout_ms * 1'000'000ull : 0,
              on_output, output_ctx, std::move(stdin_data));
  ProcessOutcome outcome;
  try {
    outcome = run_process(process, run);
  } catch (...) {
    std::lock_guard lock(mutex_);
    --session->running_execs;
    throw;
  }
  {
    std::lock_guard lock(mutex_);
    --session->running_execs;
    session->cpu_time_ns += now_ns() - start_ns;
  }
  result.exit_code = outcome.exit_code;
  result.timed_out = outcome.interruption == Interruption::kTimedOut ? 1 : 0;
  if (outcome.interruption == Interruption::kCancelled) throw Error(BERTH_CANCELLED, "exec cancelled");
  if (outcome.interruption == Interruption::kKilled && config_.killed_exec_conflict)
    throw Error(BERTH_CONFLICT, "the session ended during the exec: " + session->handle);
}

}  // namespace
}  // namespace berth::fake

/** The opaque instance of the ABI is simply the Engine. */
struct berth_instance : berth::fake::Engine {
  using Engine::Engine;
};

/** The opaque process handle of the ABI is a FakeProcess. */
struct berth_process : berth::fake::FakeProcess {
  using FakeProcess::FakeProcess;
};

namespace berth::fake {
namespace {

/** Runs one ABI call: the prologue, then `body(engine)`, with every exception turned into a status. */
template <typename Body>
berth_status call(berth_instance* inst, berth_error* err, std::string_view slot, Body&& body,
                  const berth_cancel_token* cancel = nullptr) noexcept {
  if (inst == nullptr) return BERTH_INVALID_ARGUMENT;
  return sdk::call_guarded(inst->host(), err, [&] {
    inst->enter(slot, cancel);
    body(*inst);
    return BERTH_OK;
  });
}

berth_status fake_configure(const berth_host_api* host, const char* config_json, berth_instance** out,
                            berth_error* err) noexcept {
  return sdk::call_guarded(host, err, [&] {
    if (host == nullptr || out == nullptr) throw Error(BERTH_INVALID_ARGUMENT, "configure needs host and out");
    auto instance = std::make_unique<berth_instance>(sdk::read_struct(host), parse_config(config_json));
    sdk::log(host, BERTH_LOG_INFO, "fake.configure", {{"config", config_json != nullptr ? config_json : "{}"}});
    *out = instance.release();
    return BERTH_OK;
  });
}

void fake_destroy(berth_instance* inst) noexcept {
  delete inst;
}

berth_status fake_volume_create(berth_instance* inst, const char* name, const berth_kv* labels, size_t label_count,
                                berth_error* err) noexcept {
  return call(inst, err, "volume_create", [&](Engine& e) { e.volume_create(name, sdk::kv_map(labels, label_count)); });
}

berth_status fake_volume_remove(berth_instance* inst, const char* name, berth_error* err) noexcept {
  return call(inst, err, "volume_remove", [&](Engine& e) { e.volume_remove(name); });
}

berth_status fake_volume_exists(berth_instance* inst, const char* name, int32_t* exists, berth_error* err) noexcept {
  return call(inst, err, "volume_exists", [&](Engine& e) {
    if (exists == nullptr) throw Error(BERTH_INVALID_ARGUMENT, "exists is NULL");
    *exists = e.volume_exists(name) ? 1 : 0;
  });
}

berth_status fake_image_exists(berth_instance* inst, const char* image, int32_t* exists, berth_error* err) noexcept {
  return call(inst, err, "image_exists", [&](Engine& e) {
    if (exists == nullptr) throw Error(BERTH_INVALID_ARGUMENT, "exists is NULL");
    *exists = e.image_exists(image) ? 1 : 0;
  });
}

berth_status fake_session_create(berth_instance* inst, const berth_session_spec* spec, berth_session_info* info,
                                 berth_error* err) noexcept {
  return call(inst, err, "session_create", [&](Engine& e) { sdk::write_struct(info, e.session_create(spec)); });
}

berth_status fake_session_inspect(berth_instance* inst, const char* handle, berth_session_info* info,
                                  berth_error* err) noexcept {
  return call(inst, err, "session_inspect", [&](Engine& e) { sdk::write_struct(info, e.session_inspect(handle)); });
}

berth_status fake_session_stop(berth_instance* inst, const char* handle, uint32_t /*timeout_ms*/,
                               berth_error* err) noexcept {
  return call(inst, err, "session_stop", [&](Engine& e) { e.session_stop(handle); });
}

berth_status fake_session_remove(berth_instance* inst, const char* handle, berth_error* err) noexcept {
  return call(inst, err, "session_remove", [&](Engine& e) { e.session_remove(handle); });
}

berth_status fake_session_list(berth_instance* inst, const berth_kv* filter, size_t filter_count,
                               berth_session_list_fn on_item, void* ctx, berth_error* err) noexcept {
  return call(inst, err, "session_list",
              [&](Engine& e) { e.session_list(sdk::kv_map(filter, filter_count), on_item, ctx); });
}

berth_status fake_exec(berth_instance* inst, const char* handle, const berth_exec_request* request,
                       berth_output_fn on_output, void* output_ctx, const berth_cancel_token* cancel,
                       berth_exec_result* result, berth_error* err) noexcept {
  berth_exec_result out{};
  out.exit_code = -1;
  const berth_status status = call(
      inst, err, "exec", [&](Engine& e) { e.exec(handle, request, on_output, output_ctx, cancel, out); }, cancel);
  out.cancelled = status == BERTH_CANCELLED ? 1 : 0;
  sdk::write_struct(result, out);
  return status;
}

berth_status fake_file_put(berth_instance* inst, const char* handle, const char* path, uint32_t mode, uint64_t size,
                           berth_read_fn source, void* source_ctx, berth_error* err) noexcept {
  return call(inst, err, "file_put", [&](Engine& e) { e.file_put(handle, path, mode, size, source, source_ctx); });
}

berth_status fake_file_get(berth_instance* inst, const char* handle, const char* path, berth_write_fn sink,
                           void* sink_ctx, berth_error* err) noexcept {
  return call(inst, err, "file_get", [&](Engine& e) { e.file_get(handle, path, sink, sink_ctx); });
}

berth_status fake_dir_list(berth_instance* inst, const char* handle, const char* path, berth_dir_list_fn on_entry,
                           void* ctx, berth_error* err) noexcept {
  return call(inst, err, "dir_list", [&](Engine& e) { e.dir_list(handle, path, on_entry, ctx); });
}

berth_status fake_path_remove(berth_instance* inst, const char* handle, const char* path, berth_error* err) noexcept {
  return call(inst, err, "path_remove", [&](Engine& e) { e.path_remove(handle, path); });
}

uint64_t fake_instance_capabilities(berth_instance* inst) noexcept {
  const uint64_t all = kCapabilities;
  if (inst == nullptr) return all;
  return inst->config().processes ? all : all & ~(BERTH_CAP_PROCESS | BERTH_CAP_PROCESS_PTY);
}

/** process_start: the spec checked as exec checks its request, then a FakeProcess on its own thread. */
berth_process* start_process(Engine& engine, const char* handle, const berth_process_spec* spec_in) {
  const berth_process_spec spec = sdk::read_struct(spec_in);
  if (!engine.config().processes) throw Error(BERTH_UNSUPPORTED, "interactive processes are off (config 'processes')");
  if ((spec.flags & ~BERTH_PROCESS_PTY) != 0) throw Error(BERTH_UNSUPPORTED, "unknown process flags");
  Process process;
  if (spec.argv == nullptr && spec.argc != 0) throw Error(BERTH_INVALID_ARGUMENT, "argv is NULL");
  for (size_t i = 0; i < spec.argc; ++i) {
    if (spec.argv[i] == nullptr) throw Error(BERTH_INVALID_ARGUMENT, "NULL in argv");
    process.argv.emplace_back(spec.argv[i]);
  }
  if (process.argv.empty()) throw Error(BERTH_INVALID_ARGUMENT, "argv is empty");
  if (engine.config().hang_exec) process.argv = {"hang"};
  const std::string cwd = limited_workspace_path(spec.cwd);
  std::shared_ptr<Session> session = engine.begin_process(handle, sdk::kv_map(spec.env, spec.env_count), cwd, process);
  const uint64_t start_ns = engine.now_ns();
  std::unique_ptr<berth_process> started;
  try {
    started = std::make_unique<berth_process>(engine, session, std::move(process),
                                              spec.timeout_ms != 0 ? start_ns + spec.timeout_ms * 1'000'000ull : 0,
                                              spec, start_ns);
    started->start();
  } catch (...) {
    if (!started) engine.end_process(*session, start_ns);
    throw;
  }
  return started.release();
}

berth_status fake_process_start(berth_instance* inst, const char* handle, const berth_process_spec* spec,
                                berth_process** out, berth_error* err) noexcept {
  return call(inst, err, "process_start", [&](Engine& e) {
    if (out == nullptr) throw Error(BERTH_INVALID_ARGUMENT, "out is NULL");
    *out = start_process(e, handle, spec);
  });
}

/** Runs one call on a process handle (the same prologue as every other call). */
template <typename Body>
berth_status on_process(berth_instance* inst, berth_process* process, berth_error* err, std::string_view slot,
                        Body&& body) noexcept {
  return call(inst, err, slot, [&](Engine&) {
    if (process == nullptr) throw Error(BERTH_INVALID_ARGUMENT, "process is NULL");
    body(*process);
  });
}

berth_status fake_process_write_stdin(berth_instance* inst, berth_process* process, const uint8_t* data, size_t size,
                                      berth_error* err) noexcept {
  return on_process(inst, process, err, "process_write_stdin", [&](FakeProcess& p) { p.write_stdin(data, size); });
}

berth_status fake_process_close_stdin(berth_instance* inst, berth_process* process, berth_error* err) noexcept {
  return on_process(inst, process, err, "process_close_stdin", [&](FakeProcess& p) { p.close_stdin(); });
}

berth_status fake_process_signal(berth_instance* inst, berth_process* process, int32_t signo, int32_t /*to_group*/,
                                 berth_error* err) noexcept {
  // A fake process has no children: the group is the process itself.
  return on_process(inst, process, err, "process_signal", [&](FakeProcess& p) { p.signal(signo); });
}

berth_status fake_process_resize(berth_instance* inst, berth_process* process, uint16_t rows, uint16_t cols,
                                 berth_error* err) noexcept {
  return on_process(inst, process, err, "process_resize", [&](FakeProcess& p) { p.resize(rows, cols); });
}

berth_status fake_process_kill(berth_instance* inst, berth_process* process, berth_error* err) noexcept {
  return on_process(inst, process, err, "process_kill", [&](FakeProcess& p) { p.kill(); });
}

berth_status fake_process_next_event(berth_instance* inst, berth_process* process, uint32_t wait_ms,
                                     berth_process_event* event, berth_error* err) noexcept {
  return on_process(inst, process, err, "process_next_event",
                    [&](FakeProcess& p) { sdk::write_struct(event, p.next_event(wait_ms)); });
}

void fake_process_release(berth_instance* /*inst*/, berth_process* process) noexcept {
  try {
    delete process;  // kills it if it still runs and joins its thread
  } catch (...) {
  }
}

berth_status fake_session_stats(berth_instance* inst, const char* handle, berth_session_stats* stats,
                                berth_error* err) noexcept {
  return call(inst, err, "session_stats", [&](Engine& e) { sdk::write_struct(stats, e.session_stats(handle)); });
}

}  // namespace

/** The driver table, in declaration order (volume_remove and session_remove share a signature: mind the order). */
constexpr berth_driver_api kDriverTable = {
    BERTH_DRIVER_API_INIT,
    /* name */ "fake",
    /* version */ "1.1.0",
    /* capabilities */ kCapabilities,
    /* configure */ fake_configure,
    /* destroy */ fake_destroy,
    /* volume_create */ fake_volume_create,
    /* volume_remove */ fake_volume_remove,
    /* volume_exists */ fake_volume_exists,
    /* session_create */ fake_session_create,
    /* session_inspect */ fake_session_inspect,
    /* session_stop */ fake_session_stop,
    /* session_remove */ fake_session_remove,
    /* session_list */ fake_session_list,
    /* exec */ fake_exec,
    /* file_put */ fake_file_put,
    /* file_get */ fake_file_get,
    /* dir_list */ fake_dir_list,
    /* path_remove */ fake_path_remove,
    /* session_stats (1.1) */ fake_session_stats,
    /* image_exists (1.2) */ fake_image_exists,
    /* instance_capabilities (1.3) */ fake_instance_capabilities,
    /* process_start (1.3) */ fake_process_start,
    /* process_write_stdin */ fake_process_write_stdin,
    /* process_close_stdin */ fake_process_close_stdin,
    /* process_signal */ fake_process_signal,
    /* process_resize */ fake_process_resize,
    /* process_kill */ fake_process_kill,
    /* process_next_event */ fake_process_next_event,
    /* process_release */ fake_process_release,
};

}  // namespace berth::fake

BERTH_DRIVER_EXPORT(berth::fake::kDriverTable)
