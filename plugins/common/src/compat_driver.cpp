#include "berth/engine/compat_driver.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Parser.h>
#include <dlfcn.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "agent_exec_stream.hpp"
#include "agent_pool.hpp"
#include "agent_volume.hpp"
#include "berth/engine/agent_client.hpp"
#include "berth/engine/client.hpp"
#include "berth/engine/hijack.hpp"
#include "process_watcher.hpp"
#include "scripts.hpp"

namespace berth::engine::compat {

namespace {

using Poco::JSON::Array;
using Poco::JSON::Object;
using std::chrono::milliseconds;

constexpr size_t kMaxScriptOutput = 64 * 1024 * 1024;  // helper output cap (when captured, not streamed)
constexpr size_t kMaxRecordBytes = 64 * 1024;          // one dir_list record: type/size/mode/name
constexpr size_t kMaxStderr = 64 * 1024;
constexpr const char* kAgentPathInside = "/.berth/agent";  // the agent binary's bind mount in every agent session
constexpr const char* kAgentRunInside = "/.berth/run";     // the "socket" transport's directory in the container
constexpr const char* kAgentDirInside = "/.berth";         // agent_delivery = "volume": the agent volume's mount

// ---------------------------------------------------------------------------------------------------------------
// ABI struct helpers

/** Copies an input struct the caller may have sized differently (rule 3 of driver.h). */
template <class T>
T copy_in(const T* source) {
  T local;
  std::memset(&local, 0, sizeof local);
  if (source) {
    size_t n = std::min<size_t>(source->struct_size, sizeof(T));
    std::memcpy(&local, source, n);
  }
  local.struct_size = sizeof(T);
  return local;
}

/** Writes an output struct without touching bytes beyond the caller's struct_size (kept as the caller set it). */
template <class T>
void copy_out(T* destination, const T& value) {
  if (!destination) return;
  size_t n = std::min<size_t>(destination->struct_size, sizeof(T));
  if (n <= sizeof(uint32_t)) return;
  std::memcpy(reinterpret_cast<char*>(destination) + sizeof(uint32_t),
              reinterpret_cast<const char*>(&value) + sizeof(uint32_t), n - sizeof(uint32_t));
}

void copy_string(char* destination, size_t capacity, const std::string& value) {
  size_t n = std::min(value.size(), capacity - 1);
  std::memcpy(destination, value.data(), n);
  destination[n] = '\0';
}

// ---------------------------------------------------------------------------------------------------------------
// The instance

struct Instance {
  Instance(const Flavor& f, Config c, const berth_host_api& h)
      : flavor(f), config(std::move(c)), host(h), client(make_client_options(flavor, config)) {}

  static ClientOptions make_client_options(const Flavor& flavor, const Config& config) {
    ClientOptions options;
    options.socket_path = config.socket;
    options.api_version = config.api_version.empty() ? flavor.pinned_api_version : config.api_version;
    options.max_api_version = flavor.max_api_version;
    options.connect_timeout = milliseconds(config.connect_timeout_ms);
    options.request_timeout = milliseconds(config.request_timeout_ms);
    options.engine_name = flavor.name;
    return options;
  }

  std::uint64_t now_ns() const {
    if (host.monotonic_ns) return host.monotonic_ns(host.host_ctx);
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
            .count());
  }

  bool is_cancelled(const berth_cancel_token* token) const {
    return token && host.is_cancelled && host.is_cancelled(token) != 0;
  }

  void log(berth_log_level level, const char* event, std::initializer_list<std::pair<const char*, std::string>> f) {
    if (!host.log) return;
    std::vector<berth_kv> fields;
    fields.reserve(f.size());
    for (const auto& [k, v] : f)
      fields.push_back(berth_kv{k, v.c_str()});
    host.log(host.host_ctx, level, event, fields.data(), fields.size());
  }

  std::string event(const char* suffix) const { return flavor.name + "." + suffix; }

  /** What the driver keeps per session, read from the container's inspect (its labels and environment). */
  struct SessionMeta {
    std::string workspace = "/workspace";
    bool agent = false;               // kLabelTransport = "agent"
    std::string agent_dir;            // the host directory holding agent.sock
    std::vector<std::string> env;     // the container's environment (image ENV + the session's env)
    std::shared_ptr<AgentPool> pool;  // connections to the agent (agent sessions only)
    // PATH lookups that succeeded ("PATH\0name" -> the path that ran), tried first next time: a python exec then
    // costs one START instead of one per PATH directory before /usr/local/bin. A stale entry only costs the search.
    std::mutex resolved_mutex;
    std::unordered_map<std::string, std::string> resolved;
  };

  /** berth_session_info.endpoint of a session, "<transport>:<address>": `agent:unix:<agent_dir>/agent.sock`,
   *  `agent:exec:<container id>` (agent_transport = "exec") or `engine-exec:<container id>` (the Engine exec
   *  fallback). */
  static std::string endpoint_of(const Object::Ptr& labels, const std::string& container) {
    const std::string transport = labels ? labels->optValue<std::string>(kLabelTransport, "") : "";
    if (transport == "agent" && labels->optValue<std::string>(kLabelAgentTransport, "") == "exec")
      return "agent:exec:" + container;
    if (transport == "agent" && labels->has(kLabelAgentDir))
      return "agent:unix:" + labels->getValue<std::string>(kLabelAgentDir) + "/agent.sock";
    return "engine-exec:" + container;
  }

  /** Connections of the "exec" transport to `container`'s agent: an Engine exec of the agent with --stdio each
   *  (docs/agent-protocol.md). Uses this instance's client: the instance outlives every pool it makes. */
  AgentPool::Connector exec_connector(const std::string& container, const std::string& workspace) {
    return [this, container, argv = std::vector<std::string>{kAgentPathInside, "--stdio", "--root", workspace}](
               AgentDeadline deadline) { return connect_over_exec(client, container, argv, deadline); };
  }

  /** The session's meta from its container's inspect. Its agent pool (if any) uses this instance's engine client:
   *  the instance outlives every meta it caches. */
  std::shared_ptr<SessionMeta> meta_from_inspect(const Object::Ptr& object) {
    auto meta = std::make_shared<SessionMeta>();
    if (auto cfg = object->getObject("Config"); cfg) {
      if (auto labels = cfg->getObject("Labels"); labels) {
        if (labels->has(kLabelWorkspace)) meta->workspace = labels->getValue<std::string>(kLabelWorkspace);
        if (labels->optValue<std::string>(kLabelTransport, "") == "agent") {
          if (labels->optValue<std::string>(kLabelAgentTransport, "") == "exec") {
            meta->agent = true;
            const std::string container = object->optValue<std::string>("Id", "");
            meta->pool = std::make_shared<AgentPool>(exec_connector(container, meta->workspace));
          } else if (labels->has(kLabelAgentDir)) {
            meta->agent = true;
            meta->agent_dir = labels->getValue<std::string>(kLabelAgentDir);
            meta->pool = std::make_shared<AgentPool>(AgentPool::socket_connector(meta->agent_dir + "/agent.sock"));
          }
        }
      }
      if (auto env = cfg->getArray("Env"); env) {
        for (size_t i = 0; i < env->size(); ++i)
          meta->env.push_back(env->getElement<std::string>(static_cast<unsigned>(i)));
      }
    }
    return meta;
  }

  /** The session's meta (cached; NOT_FOUND if the container does not exist). Thread-safe. */
  std::shared_ptr<SessionMeta> meta_of(const std::string& handle) {
    {
      std::lock_guard lock(meta_mutex);
      if (auto it = meta_by_handle.find(handle); it != meta_by_handle.end()) return it->second;
    }
    Response r = client.call("GET", "/containers/" + url_encode(handle) + "/json");
    auto meta = meta_from_inspect(r.json_object());
    remember(handle, meta);
    return meta;
  }

  /** The workspace mount path of a session (cached; NOT_FOUND if the container does not exist). */
  std::string workspace_of(const std::string& handle) { return meta_of(handle)->workspace; }

  void remember(const std::string& handle, std::shared_ptr<SessionMeta> meta) {
    std::lock_guard lock(meta_mutex);
    if (meta_by_handle.size() > 4096) meta_by_handle.clear();
    meta_by_handle[handle] = std::move(meta);
  }

  void forget(const std::string& handle) {
    std::lock_guard lock(meta_mutex);
    meta_by_handle.erase(handle);
  }

  Flavor flavor;
  Config config;
  berth_host_api host;
  Client client;
  std::mutex meta_mutex;
  std::unordered_map<std::string, std::shared_ptr<SessionMeta>> meta_by_handle;
  std::string agent_binary;  // resolved at configure; "" = none (agent_missing says why)
  std::string agent_missing;
  std::mutex volume_mutex;  // makes volume_create's check-then-create atomic within this instance
  // agent_delivery = "volume": the binary's bytes and its volume (configure), and whether this instance has made sure
  // of that volume since it started (the first agent session does, under agent_volume_mutex).
  std::string agent_bytes;
  std::string agent_volume;
  std::mutex agent_volume_mutex;
  bool agent_volume_checked = false;
  std::uint64_t agent_volume_retry_ns = 0;  ///< after a failed fill, not again before this (now_ns clock)

  /** The on_ready watcher of this instance's interactive processes, started on first use. Thread-safe. */
  ProcessWatcher& process_watcher() {
    std::lock_guard lock(watcher_mutex);
    if (!watcher) watcher = std::make_unique<ProcessWatcher>();
    return *watcher;
  }
  std::mutex watcher_mutex;
  std::unique_ptr<ProcessWatcher> watcher;  // last member: destroyed (its thread joined) first
};

Instance* instance_of(berth_instance* inst) {
  if (!inst) throw Error(Errc::invalid_argument, "instance is NULL");
  return reinterpret_cast<Instance*>(inst);
}

void report(const berth_host_api* host, berth_error* err, const std::string& message) {
  if (host && host->set_error && err) host->set_error(err, message.c_str());
}

/** Runs `body`, turning every exception into a status (+ message); nothing crosses the ABI. */
template <class F>
berth_status guarded(berth_instance* inst, berth_error* err, F&& body) {
  const berth_host_api* host = inst ? &reinterpret_cast<Instance*>(inst)->host : nullptr;
  try {
    return body();
  } catch (const Error& e) {
    report(host, err, e.what());
    return static_cast<berth_status>(e.code());
  } catch (const Poco::Exception& e) {
    report(host, err, "internal error: " + e.displayText());
    return BERTH_INTERNAL;
  } catch (const std::bad_alloc&) {
    report(host, err, "out of memory");
    return BERTH_INTERNAL;
  } catch (const std::exception& e) {
    report(host, err, std::string("internal error: ") + e.what());
    return BERTH_INTERNAL;
  } catch (...) {
    report(host, err, "internal error: unknown exception");
    return BERTH_INTERNAL;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Validation

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

/** Engine object names (containers, volumes): [a-zA-Z0-9][a-zA-Z0-9_.-]+ */
void require_name(const char* value, const char* what) {
  if (!value || !*value) throw Error(Errc::invalid_argument, std::string(what) + " is empty");
  std::string_view v(value);
  bool ok = v.size() >= 2 && v.size() <= 200 && is_name_char(v[0]) && v[0] != '_' && v[0] != '.' && v[0] != '-' &&
            std::all_of(v.begin(), v.end(), is_name_char);
  if (!ok) {
    throw Error(Errc::invalid_argument, std::string(what) + " '" + std::string(v) +
                                            "' is not a valid engine name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)");
  }
}

/** A session handle: a container id or name. */
std::string require_handle(const char* handle) {
  if (!handle || !*handle) throw Error(Errc::invalid_argument, "session handle is empty");
  std::string_view v(handle);
  if (v.size() >= BERTH_HANDLE_MAX || !std::all_of(v.begin(), v.end(), is_name_char)) {
    throw Error(Errc::invalid_argument, "malformed session handle '" + std::string(v) + "'");
  }
  return std::string(v);
}

std::string escape_word(std::string_view word);

/** An absolute, clean mount path inside the container. */
std::string require_mount_path(const char* path) {
  std::string p = path && *path ? path : "/workspace";
  std::string error, normalized;
  if (p.size() < 2 || p[0] != '/' || !normalize_relative_path(p.c_str() + 1, &normalized, &error) ||
      normalized.empty()) {
    throw Error(Errc::invalid_argument,
                "workspace_mount_path '" + escape_word(p) + "' must be an absolute path below /");
  }
  return "/" + normalized;
}

std::string relative_path(const char* path, bool allow_root) {
  std::string normalized, error;
  if (!normalize_relative_path(path, &normalized, &error)) throw Error(Errc::invalid_argument, error);
  if (normalized.empty() && !allow_root) {
    throw Error(Errc::invalid_argument, "the path names the workspace itself, not a file");
  }
  return normalized;
}

std::string join(const std::string& base, const std::string& rel) {
  return rel.empty() ? base : base + "/" + rel;
}

std::vector<std::string> env_strings(const berth_kv* env, size_t count, const char* what) {
  std::vector<std::string> out;
  if (count && !env) throw Error(Errc::invalid_argument, std::string(what) + " is NULL but its count is not 0");
  for (size_t i = 0; i < count; ++i) {
    if (!env[i].key || !*env[i].key || std::strchr(env[i].key, '=')) {
      throw Error(Errc::invalid_argument, std::string("malformed ") + what + " name");
    }
    out.push_back(std::string(env[i].key) + "=" + (env[i].value ? env[i].value : ""));
  }
  return out;
}

Object::Ptr labels_object(const berth_kv* labels, size_t count) {
  Object::Ptr out = new Object;
  if (count && !labels) throw Error(Errc::invalid_argument, "labels is NULL but label_count is not 0");
  for (size_t i = 0; i < count; ++i) {
    if (!labels[i].key || !*labels[i].key || std::strchr(labels[i].key, '=')) {
      throw Error(Errc::invalid_argument, "a label key is empty or contains '='");
    }
    out->set(labels[i].key, std::string(labels[i].value ? labels[i].value : ""));
  }
  return out;
}

Array::Ptr string_array(const std::vector<std::string>& values) {
  Array::Ptr out = new Array;
  for (const auto& v : values)
    out->add(v);
  return out;
}

std::uint64_t u64_at(const Object::Ptr& object, std::initializer_list<const char*> path) {
  Object::Ptr current = object;
  const char* last = nullptr;
  size_t i = 0;
  for (const char* key : path) {
    if (++i == path.size()) {
      last = key;
      break;
    }
    if (!current) return 0;
    current = current->getObject(key);
  }
  if (!current || !last || !current->has(last)) return 0;
  try {
    auto v = current->get(last);
    if (v.isEmpty()) return 0;
    double d = v.convert<double>();
    if (d <= 0) return 0;
    return v.convert<std::uint64_t>();
  } catch (...) {
    return 0;
  }
}

std::string random_token() {
  thread_local std::mt19937_64 engine{[] {
    std::random_device device;
    return (static_cast<std::uint64_t>(device()) << 32) ^ device() ^
           static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  }()};
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 2; ++i) {
    std::uint64_t v = engine();
    for (int j = 0; j < 16; ++j)
      out += hex[(v >> (j * 4)) & 15];
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Exec core

/**
 * One word for scripts::kExecWrap: a backslash and every byte outside printable ASCII become `\0ooo` (decoded
 * there by `printf %b`), so that the engine's JSON API (which turns invalid UTF-8 into U+FFFD) carries any byte but
 * NUL. Plain ASCII words without a backslash pass unchanged.
 */
std::string escape_word(std::string_view word) {
  std::string out;
  out.reserve(word.size());
  for (unsigned char c : word) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += '\\';
      out += '0';
      out += static_cast<char>('0' + ((c >> 6) & 7));
      out += static_cast<char>('0' + ((c >> 3) & 7));
      out += static_cast<char>('0' + (c & 7));
    }
  }
  return out;
}

/** True if the string is printable ASCII only (safe to put into the engine's JSON as it is). */
bool plain_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
}

/**
 * What the engine puts over the container's environment for the driver's own helpers (file operations, the
 * killer): it only has to start /usr/bin/env cleanly (no loader variable of the tenant's applies), which then
 * replaces the whole environment with kHelperInnerEnv (see run_exec). The tenant sets the container's environment
 * at create (`env`), so nothing of it may reach a helper: not PATH, ENV/BASH_ENV, IFS, CDPATH, HOME, TMPDIR, LC_*,
 * nor any variable some program might read in the future.
 */
const std::vector<std::string>& fixed_helper_env() {
  static const std::vector<std::string> env = {
      "PATH=/usr/bin:/bin", "LD_PRELOAD=", "LD_LIBRARY_PATH=", "LD_AUDIT=",        "ENV=",
      "BASH_ENV=",          "CDPATH=",     "LC_ALL=C",         "POSIXLY_CORRECT=",
  };
  return env;
}

/**
 * The whole environment of a helper, set by `/usr/bin/env -i` in front of it (argv, not the engine's Env, which
 * the engine merges over the container's). PATH has only the system directories that are root-owned in every
 * supported image (not /usr/local, where images install their own programs).
 */
constexpr const char* kHelperInnerEnv[] = {"PATH=/usr/bin:/bin", "LC_ALL=C"};

struct ExecSpec {
  std::vector<std::string> argv;
  std::vector<std::string> env;
  std::string working_dir;  // "" = the container's
  std::string inner_cwd;    // a directory entered by the wrapper (raw bytes; "" = none)
  bool wrap = true;         // run under scripts::kExecWrap (false only for the killer)
  bool helper_env = false;  // the driver's own helper: fixed_helper_env() instead of `env`
  const std::uint8_t* stdin_data = nullptr;
  size_t stdin_size = 0;
  /** More stdin after stdin_data: bytes read, 0 = end, < 0 = the source failed (stdin is then closed early). */
  std::function<std::int64_t(std::uint8_t*, size_t)> stdin_source;
  std::uint64_t stdin_source_limit = UINT64_MAX;  // never read more than this from stdin_source
  bool attach_stdin = false;
  std::uint64_t timeout_ms = 0;  // 0 = none
  const berth_cancel_token* cancel = nullptr;
  bool kill_on_stop = true;  // kill the process tree on timeout/cancel (false for the killer itself)
  /** stream 1 = stdout, 2 = stderr; return false to cancel. */
  std::function<bool(int stream, const std::uint8_t* data, size_t size)> on_output;
};

struct ExecOutcome {
  int exit_code = -1;
  bool timed_out = false;
  bool cancelled = false;       // token or refused output
  bool output_refused = false;  // on_output returned false
  bool never_started = false;   // the runtime could not start the process (message in start_error)
  bool source_failed = false;   // stdin_source returned < 0
  std::string start_error;
};

/**
 * Whether the session's container is running, asked of the engine. A container that does not exist is not
 * running. Engine failures propagate.
 */
bool container_running(Instance& inst, const std::string& container) {
  try {
    auto object = inst.client.call("GET", "/containers/" + url_encode(container) + "/json").json_object();
    auto state = object->getObject("State");
    return state && state->optValue<bool>("Running", false);
  } catch (const Error& e) {
    if (e.code() == Errc::not_found) return false;
    throw;
  }
}

/**
 * The driver contract for a session that is gone: NOT_FOUND means nothing ran. The engine may still call a dying
 * container running for a moment after it refused an exec ("cannot exec in a stopped state"); wait (up to 5 s) until
 * its inspect agrees, so that the host, which asks session_inspect to tell a dead session from a missing path, sees
 * the session as ended.
 */
[[noreturn]] void throw_session_gone(Instance& inst, const std::string& container, const std::string& detail) {
  for (int i = 0; i < 50; ++i) {
    try {
      if (!container_running(inst, container)) break;
    } catch (const std::exception&) {
      break;  // the engine itself is failing: the error below still says what happened
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  inst.log(BERTH_LOG_INFO, inst.event("exec.session_gone").c_str(), {{"container", container}, {"detail", detail}});
  throw Error(Errc::not_found, "the session's container '" + container + "' is not running (" + detail + ")");
}

/**
 * How engines and runtimes word a process that never started, as the first frame of the exec's stream: runc via
 * Docker ("OCI runtime exec failed: ..."), Docker on a container that stopped meanwhile ("cannot exec in a stopped
 * state: unknown"), crun/runc via Podman. Such a first frame is held back until the exec's inspect tells whether a
 * process ran; a program that prints one of these itself only sees that first frame delayed to its exit.
 */
constexpr std::string_view kRuntimeFailurePrefixes[] = {"OCI runtime", "cannot exec in a stopped state",
                                                        "crun:", "runc:", "Error: OCI runtime"};

ExecOutcome run_exec(Instance& inst, const std::string& container, const ExecSpec& spec);

/**
 * Asks the session's reaper (scripts::kReaper, its main process) to kill the exec's processes: one line on the
 * container's stdin. No process has to start in the session for that. False if the line could not be sent.
 */
bool signal_reaper(Instance& inst, const std::string& container, const std::string& token) {
  try {
    HijackedStream attach =
        inst.client.hijack("/containers/" + url_encode(container) + "/attach?stream=1&stdin=1", "", milliseconds(5000));
    const std::string line = token + "\n";
    size_t offset = 0;
    const std::uint64_t give_up = inst.now_ns() + 2000ull * 1000000ull;
    while (offset < line.size()) {
      if (inst.now_ns() > give_up) return false;
      auto ready = attach.wait(milliseconds(50), true);
      if (!ready.writable) continue;
      auto n = attach.write_some(reinterpret_cast<const std::uint8_t*>(line.data()) + offset, line.size() - offset);
      if (n < 0) return false;
      offset += static_cast<size_t>(n);
    }
    return true;
  } catch (const std::exception& e) {
    inst.log(BERTH_LOG_DEBUG, inst.event("exec.reaper_unreachable").c_str(),
             {{"container", container}, {"error", e.what()}});
    return false;
  }
}

/**
 * Kills every process carrying the exec's token (see scripts::kKillByToken). Best effort: returns false when the
 * killer could not run (e.g. the session's pids limit is exhausted, so that no process can start in it).
 */
bool kill_exec_tree(Instance& inst, const std::string& container, const std::string& token) {
  ExecSpec killer;
  killer.argv = {"/bin/sh", "-c", scripts::kKillByToken, "berth-kill", token};
  killer.timeout_ms = 10000;
  killer.kill_on_stop = false;
  killer.wrap = false;
  killer.helper_env = true;
  killer.on_output = [](int, const std::uint8_t*, size_t) { return true; };
  std::string failure;
  for (int attempt = 0; attempt < 3; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(milliseconds(100));
    try {
      ExecOutcome outcome = run_exec(inst, container, killer);
      if (outcome.exit_code == 0) return true;
      failure = outcome.never_started ? outcome.start_error : "exit code " + std::to_string(outcome.exit_code);
      if (!outcome.never_started) break;  // it ran: retrying would not do better
    } catch (const Error& e) {
      failure = e.what();
      if (e.code() != Errc::internal) break;  // container gone, engine down: nothing left to kill with
    } catch (const std::exception& e) {
      failure = e.what();
      break;
    }
  }
  inst.log(BERTH_LOG_WARN, inst.event("exec.kill_failed").c_str(), {{"container", container}, {"error", failure}});
  return false;
}

ExecOutcome run_exec(Instance& inst, const std::string& container, const ExecSpec& spec) {
  const std::string token = random_token();
  Object::Ptr create = new Object;
  const bool attach_stdin = spec.attach_stdin || spec.stdin_data != nullptr || static_cast<bool>(spec.stdin_source);
  create->set("AttachStdin", attach_stdin);
  create->set("AttachStdout", true);
  create->set("AttachStderr", true);
  create->set("Tty", false);
  std::vector<std::string> cmd;
  if (spec.helper_env) {
    // A helper's environment is exactly kHelperInnerEnv plus its token: nothing of the container's survives.
    cmd = {"/usr/bin/env", "-i"};
    cmd.insert(cmd.end(), std::begin(kHelperInnerEnv), std::end(kHelperInnerEnv));
    cmd.push_back("BERTH_EXEC_TOKEN=" + token);
  }
  if (spec.wrap) {
    for (const char* word : {"/bin/sh", "-c", scripts::kExecWrap, "berth-exec"})
      cmd.emplace_back(word);
    cmd.push_back(token);
    cmd.push_back(escape_word(spec.inner_cwd));
    for (const auto& word : spec.argv)
      cmd.push_back(escape_word(word));
  } else {
    cmd.insert(cmd.end(), spec.argv.begin(), spec.argv.end());
  }
  create->set("Cmd", string_array(cmd));
  std::vector<std::string> env = spec.helper_env ? fixed_helper_env() : spec.env;
  env.push_back("BERTH_EXEC_TOKEN=" + token);
  create->set("Env", string_array(env));
  if (!spec.working_dir.empty()) create->set("WorkingDir", spec.working_dir);
  // No "User": the engine then runs the exec as the container's user.

  const std::uint64_t started = inst.now_ns();
  const std::uint64_t deadline = spec.timeout_ms ? started + spec.timeout_ms * 1000000ull : 0;
  Response created;
  try {
    created = inst.client.call_json("POST", "/containers/" + url_encode(container) + "/exec", create);
  } catch (const Error& e) {
    // Docker answers 409 "is not running", Podman 409/500 "container state improper": nothing ran.
    if (e.code() == Errc::not_found) throw_session_gone(inst, container, e.what());
    if ((e.code() == Errc::conflict || e.code() == Errc::internal) && !container_running(inst, container)) {
      throw_session_gone(inst, container, e.what());
    }
    throw;
  }
  const std::string exec_id = created.json_object()->optValue<std::string>("Id", "");
  if (exec_id.empty()) throw Error(Errc::internal, inst.flavor.name + ": exec create returned no Id");

  Object::Ptr start = new Object;
  start->set("Detach", false);
  start->set("Tty", false);
  // Built in place (no move: a moved-from HijackedStream would still close the shared socket when destroyed).
  HijackedStream stream = [&]() -> HijackedStream {
    try {
      return inst.client.hijack("/exec/" + exec_id + "/start", to_json(start));
    } catch (const Error& e) {
      // Docker refuses the start with 409/500 "Container ... is not running" when the session died in between.
      if (e.code() == Errc::not_found) throw_session_gone(inst, container, e.what());
      if ((e.code() == Errc::conflict || e.code() == Errc::internal) && !container_running(inst, container)) {
        throw_session_gone(inst, container, e.what());
      }
      throw;
    }
  }();

  ExecOutcome outcome;
  FrameDemuxer demuxer;
  // The runtime reports a failed start ("OCI runtime exec failed: ...") as one stdout frame; hold back a first
  // frame that looks like it until we know whether the process started.
  bool first_payload = true;
  bool holding = false;
  int held_stream = 1;
  std::string held;
  std::uint64_t hold_checked_ns = 0;  // when the held frame's process was last asked about
  auto deliver = [&](int stream_id, const std::uint8_t* data, size_t size) -> bool {
    if (stream_id == 0) return true;
    if (stream_id != 1 && stream_id != 2) stream_id = 2;
    if (first_payload) {
      first_payload = false;
      // A short first frame may be the engine's or the runtime's words about a process that never started; hold it
      // until the exec's inspect tells (the wording varies by engine and version, so no prefix is trusted alone).
      const std::string_view frame(reinterpret_cast<const char*>(data), size);
      bool known = false;
      for (std::string_view prefix : kRuntimeFailurePrefixes)
        known = known || frame.substr(0, prefix.size()) == prefix;
      if (known || size < 4096) {
        holding = true;
        held_stream = stream_id;
        hold_checked_ns = inst.now_ns();
      }
    }
    if (holding) {
      if (stream_id == held_stream && held.size() + size < 64 * 1024) {
        held.append(reinterpret_cast<const char*>(data), size);
        return true;
      }
      holding = false;  // more output follows: the process runs, release what was held first
      bool ok =
          held.empty() || spec.on_output(held_stream, reinterpret_cast<const std::uint8_t*>(held.data()), held.size());
      held.clear();
      if (!ok) {
        outcome.output_refused = true;
        return false;
      }
    }
    if (!spec.on_output(stream_id, data, size)) {
      outcome.output_refused = true;
      return false;
    }
    return true;
  };

  // Stdin: stdin_data first, then chunks of stdin_source.
  const std::uint8_t* chunk = spec.stdin_data;
  size_t chunk_size = spec.stdin_data ? spec.stdin_size : 0;
  size_t chunk_offset = 0;
  std::vector<std::uint8_t> source_buffer;
  std::uint64_t source_total = 0;
  bool source_open = static_cast<bool>(spec.stdin_source);
  auto refill = [&]() -> bool {  // false: no more stdin
    while (chunk_offset >= chunk_size) {
      if (!source_open || source_total >= spec.stdin_source_limit) return false;
      source_buffer.resize(64 * 1024);
      size_t want =
          static_cast<size_t>(std::min<std::uint64_t>(source_buffer.size(), spec.stdin_source_limit - source_total));
      std::int64_t n = spec.stdin_source(source_buffer.data(), want);
      if (n <= 0 || static_cast<std::uint64_t>(n) > want) {
        if (n != 0) outcome.source_failed = true;
        source_open = false;
        return false;
      }
      source_total += static_cast<std::uint64_t>(n);
      chunk = source_buffer.data();
      chunk_size = static_cast<size_t>(n);
      chunk_offset = 0;
    }
    return true;
  };
  bool stdin_done = !attach_stdin || !refill();
  if (stdin_done) stream.shutdown_send();
  std::vector<std::uint8_t> buffer(64 * 1024);
  bool eof = false;
  bool stop = false;  // timeout, cancel or refused output: kill
  while (!eof && !stop) {
    std::uint64_t now = inst.now_ns();
    if (deadline && now >= deadline) {
      outcome.timed_out = true;
      stop = true;
      break;
    }
    if (inst.is_cancelled(spec.cancel)) {
      outcome.cancelled = true;
      stop = true;
      break;
    }
    long long wait_ms = 50;
    if (deadline) wait_ms = std::clamp<long long>(static_cast<long long>((deadline - now + 999999) / 1000000), 1, 50);
    auto ready = stream.wait(milliseconds(wait_ms), !stdin_done);
    if (ready.writable && !stdin_done) {
      auto n = stream.write_some(chunk + chunk_offset, chunk_size - chunk_offset);
      if (n < 0) {
        stdin_done = true;  // the process no longer reads its stdin
      } else {
        chunk_offset += static_cast<size_t>(n);
        if (!refill()) stdin_done = true;
      }
      if (stdin_done) stream.shutdown_send();
    }
    if (ready.readable) {
      // Drain what is there (bounded, so that the clock and the token are still looked at regularly).
      for (int round = 0; round < 16; ++round) {
        auto n = stream.read_some(buffer.data(), buffer.size());
        if (n < 0) break;
        if (n == 0) {
          eof = true;
          break;
        }
        if (!demuxer.feed(buffer.data(), static_cast<size_t>(n), deliver)) {
          outcome.cancelled = true;
          stop = true;
          break;
        }
      }
    }
    // A held first frame is released as soon as the exec has a process (every 200 ms the exec is asked), so that
    // output still streams and a sink that refuses it still stops the program.
    if (holding && !stop && inst.now_ns() - hold_checked_ns >= 200ull * 1000000ull) {
      hold_checked_ns = inst.now_ns();
      bool has_process = false;
      try {
        has_process = inst.client.call("GET", "/exec/" + exec_id + "/json").json_object()->optValue<int>("Pid", 0) != 0;
      } catch (const Error&) {
        // the engine will answer again below; keep holding
      }
      if (has_process) {
        holding = false;
        bool ok = held.empty() ||
                  spec.on_output(held_stream, reinterpret_cast<const std::uint8_t*>(held.data()), held.size());
        held.clear();
        if (!ok) {
          outcome.output_refused = true;
          outcome.cancelled = true;
          stop = true;
        }
      }
    }
  }

  // The streams are closed, but the process may still run (it closed stdout/stderr): wait for its exit code.
  auto inspect_exec = [&]() { return inst.client.call("GET", "/exec/" + exec_id + "/json").json_object(); };
  if (!stop) {
    int delay_ms = 1;
    for (;;) {
      auto info = inspect_exec();
      bool running = info->optValue<bool>("Running", false);
      if (!running) {
        auto code = info->get("ExitCode");
        outcome.exit_code = code.isEmpty() ? -1 : code.convert<int>();
        const bool no_pid = info->optValue<int>("Pid", 0) == 0;
        if (no_pid && (outcome.exit_code == 126 || outcome.exit_code == 127 || outcome.exit_code == -1)) {
          // "cannot exec in a stopped state" and friends: the engine's message is not the program's output.
          if (held.find("stopped state") != std::string::npos || !container_running(inst, container)) {
            stream.close();
            throw_session_gone(inst, container, held.empty() ? "the exec never started" : held);
          }
        }
        if (holding && no_pid && outcome.exit_code == 126) {
          outcome.never_started = true;
          outcome.start_error = held;
          while (!outcome.start_error.empty() &&
                 (outcome.start_error.back() == '\n' || outcome.start_error.back() == '\r')) {
            outcome.start_error.pop_back();
          }
        } else if (holding && !held.empty()) {
          if (!spec.on_output(held_stream, reinterpret_cast<const std::uint8_t*>(held.data()), held.size())) {
            outcome.output_refused = true;
            outcome.cancelled = true;
          }
        }
        holding = false;
        break;
      }
      std::uint64_t now = inst.now_ns();
      if (deadline && now >= deadline) {
        outcome.timed_out = true;
        stop = true;
        break;
      }
      if (inst.is_cancelled(spec.cancel)) {
        outcome.cancelled = true;
        stop = true;
        break;
      }
      std::this_thread::sleep_for(milliseconds(delay_ms));
      delay_ms = std::min(delay_ms * 2, 50);
    }
  }

  if (stop) {
    outcome.exit_code = -1;
    if (holding && !held.empty() && !outcome.output_refused) {
      spec.on_output(held_stream, reinterpret_cast<const std::uint8_t*>(held.data()), held.size());
    }
    holding = false;
    held.clear();
    if (spec.kill_on_stop) {
      stream.shutdown_send();
      // Waits until the exec is over: its stream ended (remaining output is discarded) and it no longer runs.
      auto wait_gone = [&](milliseconds limit) {
        const std::uint64_t until = inst.now_ns() + static_cast<std::uint64_t>(limit.count()) * 1000000ull;
        while (inst.now_ns() < until) {
          if (!eof) {
            auto ready = stream.wait(milliseconds(20), false);
            for (int round = 0; ready.readable && round < 16; ++round) {
              auto n = stream.read_some(buffer.data(), buffer.size());
              if (n < 0) break;
              if (n == 0) eof = true;
              if (n == 0) break;
            }
            if (!eof) continue;
          }
          try {
            if (!inspect_exec()->optValue<bool>("Running", false)) return true;
          } catch (...) {
            return false;
          }
          std::this_thread::sleep_for(milliseconds(20));
        }
        return false;
      };
      // The reaper needs no new process (it works when the pids limit is exhausted) but sees only the token in
      // the environment; the killer also finds processes by the marker on fd 9 (`env -i` drops the token). Both
      // run, so that no process of the exec survives however it detached.
      bool reaped = inst.flavor.reaper && signal_reaper(inst, container, token) && wait_gone(milliseconds(1500));
      bool killed = kill_exec_tree(inst, container, token);
      bool gone = (killed && wait_gone(milliseconds(2000))) || reaped;
      if (!gone) {
        inst.log(BERTH_LOG_WARN, inst.event("exec.not_killed").c_str(), {{"container", container}, {"exec", exec_id}});
      }
    }
  }
  stream.close();
  return outcome;
}

// ---------------------------------------------------------------------------------------------------------------
// The agent path: execs and file operations over the session's berth-agent (docs/agent-protocol.md)

using AgentClock = std::chrono::steady_clock;
using SessionMeta = Instance::SessionMeta;

/**
 * The agent cannot be reached or the connection broke. A container that is no longer running is a session that is
 * gone (NOT_FOUND, "nothing ran") unless a process may have started; a running container with a silent agent is
 * an internal error. Either way the exec is never retried here.
 */
/** Whether the container stops within 5 s (an agent that died takes its session down a moment later: the engine's
 *  init exits with it). False when it keeps running or the engine cannot tell. */
bool container_stops(Instance& inst, const std::string& container) {
  for (int i = 0; i < 50; ++i) {
    try {
      if (!container_running(inst, container)) return true;
    } catch (const std::exception&) {
      return false;
    }
    std::this_thread::sleep_for(milliseconds(100));
  }
  return false;
}

[[noreturn]] void agent_failed(Instance& inst, const std::string& container, SessionMeta& meta, const std::string& what,
                               bool maybe_started) {
  meta.pool->clear();
  const bool running = !container_stops(inst, container);
  if (!running && !maybe_started) throw_session_gone(inst, container, what);
  inst.log(BERTH_LOG_WARN, inst.event("agent.unreachable").c_str(),
           {{"container", container}, {"error", what}, {"running", running ? "true" : "false"}});
  throw Error(Errc::internal, std::string(maybe_started ? "the connection to the session's agent broke while the "
                                                          "process ran (it was killed; not retried): "
                                                        : "the session's agent does not answer: ") +
                                  what);
}

AgentPool::Lease lease_agent(Instance& inst, const std::string& container, SessionMeta& meta) {
  try {
    // The connect itself is immediate (a dead agent refuses it at once); HELLO waits for the agent's loop, which
    // may be busy with other connections' work (a 100,000-entry listing), so it gets the request timeout.
    return meta.pool->lease(AgentClock::now() + milliseconds(inst.config.request_timeout_ms));
  } catch (const std::exception& e) {
    agent_failed(inst, container, meta, e.what(), false);
  }
}

/** A file operation's ERROR as the engine path reports it: missing → NOT_FOUND, refusals → INVALID_ARGUMENT. */
[[noreturn]] void raise_agent_fs(const AgentError& e, const std::string& rel, bool enotdir_is_type) {
  const std::string shown = "'" + escape_word(rel) + "'";
  if (e.code() == agent::ErrorCode::kFs || e.code() == agent::ErrorCode::kPermission) {
    const int n = static_cast<int>(e.sys_errno());
    if (n == ENOENT || (n == ENOTDIR && !enotdir_is_type)) throw Error(Errc::not_found, shown + " does not exist");
    if (n == EXDEV || n == ELOOP) throw Error(Errc::invalid_argument, shown + " resolves outside the workspace");
    if (n == EINVAL || n == EISDIR) throw Error(Errc::invalid_argument, shown + " is not a regular file");
    if (n == ENOTDIR) throw Error(Errc::invalid_argument, shown + " is not a directory");
    throw Error(Errc::invalid_argument, "cannot access " + shown + ": " + std::strerror(n));
  }
  throw Error(Errc::internal, std::string("agent file operation failed: ") + e.what());
}

/** Runs one file operation on a leased connection, mapping the agent's errors (see raise_agent_fs). */
template <class F>
auto with_agent_fs(Instance& inst, const std::string& container, SessionMeta& meta, const std::string& rel,
                   bool enotdir_is_type, F&& body) {
  auto lease = lease_agent(inst, container, meta);
  try {
    auto result = body(*lease, AgentClock::now() + milliseconds(inst.config.request_timeout_ms));
    // A streaming body stopped by its consumer (false) leaves the reply half read: that connection is not reused.
    if constexpr (std::is_same_v<decltype(result), bool>) {
      if (!result) lease.discard();
    }
    return result;
  } catch (const AgentError& e) {
    if (e.code() == agent::ErrorCode::kProtocol) {
      lease.discard();
      agent_failed(inst, container, meta, e.what(), true);
    }
    raise_agent_fs(e, rel, enotdir_is_type);
  } catch (const AgentTimeout& e) {
    lease.discard();  // a request may still be answered later: the connection's state is unknown
    throw Error(Errc::timeout, std::string("the agent did not finish the file operation in time: ") + e.what());
  } catch (...) {
    lease.discard();  // e.g. a sink that threw mid-stream: the reply is half read
    throw;
  }
}

/** The exec's environment: the container's (image ENV and the session's env), then the request's, by name. */
std::vector<std::string> merged_env(const std::vector<std::string>& base, const std::vector<std::string>& request) {
  std::vector<std::string> out;
  auto key_of = [](const std::string& e) { return e.substr(0, e.find('=')); };
  for (const auto& e : base) {
    const std::string key = key_of(e);
    bool overridden =
        std::any_of(request.begin(), request.end(), [&](const std::string& r) { return key_of(r) == key; });
    if (!overridden) out.push_back(e);
  }
  out.insert(out.end(), request.begin(), request.end());
  return out;
}

/** argv[0] candidates as execvp tries them: a name with '/' as it is, else each PATH directory (the runtime's default
 *  PATH when the environment has none). */
std::vector<std::string> program_candidates(const std::string& program, const std::vector<std::string>& env) {
  if (program.find('/') != std::string::npos) return {program};
  std::string path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  for (const auto& e : env)
    if (e.rfind("PATH=", 0) == 0) path = e.substr(5);
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find(':', start);
    if (end == std::string::npos) end = path.size();
    std::string dir = path.substr(start, end - start);
    out.push_back((dir.empty() ? std::string(".") : dir) + "/" + program);
    start = end + 1;
  }
  return out;
}

/** NOT_FOUND (nothing ran) unless `cwd_rel` ("" = the workspace) is a directory the session user reaches. Throws
 *  AgentError(kProtocol) / AgentTimeout when the connection fails. */
void require_agent_cwd(Instance& inst, AgentClient& client, const std::string& cwd_rel) {
  if (cwd_rel.empty()) return;
  agent::FileInfo info;
  try {
    info = client.stat(cwd_rel, agent::kKeepId, agent::kKeepId,
                       AgentClock::now() + milliseconds(inst.config.request_timeout_ms));
  } catch (const AgentError& e) {
    if (e.code() == agent::ErrorCode::kProtocol) throw;
    info.kind = agent::FileKind::kOther;
  }
  if (info.kind != agent::FileKind::kDirectory) {
    throw Error(Errc::not_found, "the working directory '" + escape_word(cwd_rel) + "' does not exist");
  }
}

/** What start_on_agent did: the channel of a started process, or why nothing started. */
struct AgentStart {
  bool started = false;
  std::uint32_t channel = 0;
  int sys_errno = 0;  // !started: ENOENT (not found anywhere), EACCES, ...
  std::string error;  // !started: "not found" or strerror(sys_errno)
};

/**
 * Starts `req` (argv[0] as given) on `client` as execvp would: a name without '/' is tried in each PATH directory
 * (remembered per session), one START per candidate (a failed exec runs nothing). Throws AgentError / AgentTimeout
 * when the connection fails, Error(internal) when the agent refuses the request itself.
 */
AgentStart start_on_agent(Instance& inst, SessionMeta& meta, AgentClient& client, agent::StartRequest req) {
  AgentStart out;
  const std::string program = req.argv[0];
  int start_errno = ENOENT;
  std::vector<std::string> candidates = program_candidates(program, req.env);
  std::string cache_key;
  if (program.find('/') == std::string::npos) {
    for (const auto& e : req.env)
      if (e.rfind("PATH=", 0) == 0) cache_key = e;
    cache_key += '\0' + program;
    std::lock_guard lock(meta.resolved_mutex);
    if (auto it = meta.resolved.find(cache_key); it != meta.resolved.end()) {
      candidates.insert(candidates.begin(), it->second);
    }
  }
  for (const auto& candidate : candidates) {
    req.argv[0] = candidate;
    const std::uint32_t channel = client.start(req);
    auto ev = client.next_event_for(channel, AgentClock::now() + milliseconds(inst.config.request_timeout_ms));
    if (!ev) throw AgentTimeout("no answer to START");
    if (ev->type == agent::MsgType::kStarted) {
      if (!cache_key.empty()) {
        std::lock_guard lock(meta.resolved_mutex);
        if (meta.resolved.size() > 256) meta.resolved.clear();
        meta.resolved[cache_key] = candidate;
      }
      out.started = true;
      out.channel = channel;
      return out;
    }
    if (ev->type == agent::MsgType::kError && ev->error.code == agent::ErrorCode::kExecFailed) {
      const int n = static_cast<int>(ev->error.sys_errno);
      if (n == ENOENT || n == ENOTDIR) continue;
      start_errno = n;
      if (n == EACCES) continue;  // execvp goes on too, and reports EACCES at the end
      break;
    }
    throw Error(Errc::internal, "the agent refused the exec: " + ev->error.message);
  }
  out.sys_errno = start_errno;
  out.error = start_errno == ENOENT ? std::string("not found") : std::string(std::strerror(start_errno));
  return out;
}

/** One exec over the agent. */
struct AgentExec {
  std::vector<std::string> argv;
  std::vector<std::string> env;  // the request's (merged over the container's)
  std::string cwd_rel;           // normalised, relative to the workspace ("" = the workspace)
  const std::uint8_t* stdin_data = nullptr;
  size_t stdin_size = 0;
  std::uint64_t timeout_ms = 0;
  const berth_cancel_token* cancel = nullptr;
  std::function<bool(int stream, const std::uint8_t* data, size_t size)> on_output;
};

/**
 * Runs `x` through the session's agent: START (PATH searched here, one START per candidate: a failed exec runs
 * nothing), stdin then EOF, OUTPUT frames to on_output as they arrive, EXIT. A timeout is the agent's (it kills the
 * tree); cancel and a refused output send KILL. Same outcome shape as run_exec.
 */
ExecOutcome agent_exec(Instance& inst, const std::string& container, SessionMeta& meta, const AgentExec& x) {
  ExecOutcome outcome;
  auto lease = lease_agent(inst, container, meta);
  AgentClient& client = *lease;
  bool start_sent = false;  // a START went out: from here on a broken connection may follow a process that ran
  try {
    require_agent_cwd(inst, client, x.cwd_rel);
    agent::StartRequest req;
    req.argv = x.argv;
    req.env = merged_env(meta.env, x.env);
    req.cwd = x.cwd_rel;
    req.timeout_ms = static_cast<std::uint32_t>(std::min<std::uint64_t>(x.timeout_ms, UINT32_MAX));
    req.output_cap = UINT64_MAX;  // the host caps what it keeps
    start_sent = true;
    const AgentStart st = start_on_agent(inst, meta, client, req);
    if (!st.started) {
      outcome.never_started = true;
      outcome.start_error = escape_word(x.argv[0]) + ": " + st.error;
      return outcome;
    }
    const std::uint32_t channel = st.channel;
    if (x.stdin_data && x.stdin_size) {
      client.write_stdin(channel, std::string_view(reinterpret_cast<const char*>(x.stdin_data), x.stdin_size));
    }
    client.close_stdin(channel);
    bool killing = false;
    AgentClock::time_point kill_deadline{};
    // The agent enforces the timeout; this bound only guards against an agent that never sends EXIT.
    const auto hard_deadline = x.timeout_ms ? AgentClock::now() + milliseconds(x.timeout_ms) + std::chrono::seconds(60)
                                            : AgentClock::time_point::max();
    for (;;) {
      if (!killing && inst.is_cancelled(x.cancel)) {
        outcome.cancelled = true;
        killing = true;
      }
      if (!killing && AgentClock::now() >= hard_deadline) {
        outcome.timed_out = true;
        killing = true;
      }
      if (killing && kill_deadline == AgentClock::time_point{}) {
        client.kill(channel);
        kill_deadline = AgentClock::now() + std::chrono::seconds(30);
      }
      if (killing && AgentClock::now() >= kill_deadline) throw AgentTimeout("no EXIT after KILL");
      // The slice only bounds how late a cancel (shutdown) is noticed: output and EXIT wake the wait at once. Every
      // running exec's thread wakes once per slice, so 1,000 concurrent execs at 50 ms cost berthd 20,000 polls a
      // second doing nothing (capacity.docker: a fifth of berthd's CPU during the burst was that loop).
      auto ev = client.next_event_for(channel, AgentClock::now() + milliseconds(250));
      if (!ev) continue;
      if (ev->type == agent::MsgType::kOutput) {
        if (killing || ev->data.empty()) continue;
        if (!x.on_output(ev->stream == 2 ? 2 : 1, reinterpret_cast<const std::uint8_t*>(ev->data.data()),
                         ev->data.size())) {
          outcome.output_refused = true;
          outcome.cancelled = true;
          killing = true;
        }
      } else if (ev->type == agent::MsgType::kExit) {
        if (ev->exit.timed_out) outcome.timed_out = true;
        outcome.exit_code = ev->exit.signaled ? 128 + ev->exit.code : ev->exit.code;
        if (outcome.timed_out || outcome.cancelled) outcome.exit_code = -1;
        return outcome;
      } else if (ev->type == agent::MsgType::kError) {
        throw Error(Errc::internal, "the agent reported an error for the exec: " + ev->error.message);
      }
    }
  } catch (const AgentError& e) {
    lease.discard();
    if (start_sent && e.code() == agent::ErrorCode::kProtocol && container_stops(inst, container)) {
      // The agent died once the program may have started (even before STARTED reached us: the program's own
      // `kill -9 -1` can be that quick), and the session ended with it (an OOM kill and a stop do the same). The
      // program was killed with the session: that is its result, as on the engine path (137), never a second run.
      meta.pool->clear();
      inst.log(BERTH_LOG_INFO, inst.event("exec.session_ended").c_str(),
               {{"container", container}, {"detail", e.what()}});
      outcome.exit_code = 128 + SIGKILL;
      return outcome;
    }
    agent_failed(inst, container, meta, e.what(), start_sent);
  } catch (const AgentTimeout& e) {
    lease.discard();  // closing the connection makes the agent kill whatever it started on it
    throw Error(Errc::internal, std::string("the session's agent stopped answering: ") + e.what());
  } catch (...) {
    lease.discard();
    throw;
  }
}

struct Captured {
  int exit_code = -1;
  bool source_failed = false;
  std::string out;
  std::string err;
};

/** Where a helper's stdin comes from and its stdout goes (all optional). */
struct HelperIo {
  std::function<std::int64_t(std::uint8_t*, size_t)> stdin_source;
  std::uint64_t stdin_limit = UINT64_MAX;
  /** Receives stdout instead of Captured::out; return false to stop (the call then fails with cancelled). */
  std::function<bool(const std::uint8_t*, size_t)> stdout_sink;
};

/**
 * Runs one of the driver's helpers (as the session user, fixed environment, argv[0] = /bin/sh) to completion and
 * captures its output. Throws not_found if the session is gone, timeout, cancelled (the sink refused data).
 */
Captured run_capture(Instance& inst, const std::string& container, std::vector<std::string> argv,
                     const HelperIo& io = {}, size_t max_out = kMaxScriptOutput) {
  Captured captured;
  ExecSpec spec;
  spec.argv = std::move(argv);
  spec.helper_env = true;
  spec.timeout_ms = inst.config.request_timeout_ms;
  spec.stdin_source = io.stdin_source;
  spec.stdin_source_limit = io.stdin_limit;
  spec.attach_stdin = static_cast<bool>(io.stdin_source);
  bool overflow = false;
  bool refused = false;
  spec.on_output = [&](int stream, const std::uint8_t* data, size_t size) {
    if (stream == 1 && io.stdout_sink) {
      if (!io.stdout_sink(data, size)) refused = true;
      return !refused;
    }
    std::string& target = stream == 1 ? captured.out : captured.err;
    size_t cap = stream == 1 ? max_out : kMaxStderr;
    if (target.size() + size > cap) {
      if (stream == 1) {
        overflow = true;
        return false;
      }
      size = cap - std::min(cap, target.size());
    }
    target.append(reinterpret_cast<const char*>(data), size);
    return true;
  };
  ExecOutcome outcome = run_exec(inst, container, spec);
  if (refused) throw Error(Errc::cancelled, "the sink refused data");
  if (overflow) throw Error(Errc::internal, "the helper command's output exceeds the limit");
  if (outcome.timed_out) throw Error(Errc::timeout, "the helper command did not finish in time");
  if (outcome.never_started) throw Error(Errc::internal, "cannot run a helper command: " + outcome.start_error);
  captured.exit_code = outcome.exit_code;
  captured.source_failed = outcome.source_failed;
  return captured;
}

/**
 * Runs scripts::kFiles (paths octal-escaped, see escape_word) and maps its exit codes to errors. `extra` are the
 * operation's further arguments. Returns its stdout (empty when io.stdout_sink takes it).
 */
std::string run_files_script(Instance& inst, const std::string& container, const std::string& op,
                             const std::string& workspace, const std::string& rel, std::vector<std::string> extra = {},
                             const HelperIo& io = {}) {
  std::vector<std::string> argv = {"/bin/sh",       "-c", scripts::kFiles, "berth-files", op, escape_word(workspace),
                                   escape_word(rel)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  Captured c = run_capture(inst, container, std::move(argv), io);
  std::string message = c.err;
  while (!message.empty() && (message.back() == '\n' || message.back() == '\r'))
    message.pop_back();
  if (c.source_failed) throw Error(Errc::cancelled, "the byte source failed: nothing was written");
  switch (c.exit_code) {
    case 0:
      return c.out;
    case 10:
      throw Error(Errc::not_found, message.empty() ? "no such file or directory" : message);
    case 11:
    case 12:
    case 14:
    case 15:  // the tenant's own filesystem said no (permissions, a path changing under the call): not our fault
      throw Error(Errc::invalid_argument, message);
    default:
      throw Error(Errc::internal, "file helper (" + op + ") failed with exit code " + std::to_string(c.exit_code) +
                                      (message.empty() ? "" : ": " + message));
  }
}

berth_session_state state_from_status(const std::string& status) {
  if (status == "running" || status == "paused") return BERTH_SESSION_RUNNING;
  if (status == "created" || status == "restarting" || status == "configured" || status == "initialized") {
    return BERTH_SESSION_STARTING;
  }
  return BERTH_SESSION_EXITED;  // exited, dead, removing, stopped
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Paths and config

bool normalize_relative_path(const char* path, std::string* out, std::string* error) {
  out->clear();
  if (!path) {
    *error = "path is NULL";
    return false;
  }
  std::string_view p(path);
  if (p.size() > kMaxPathBytes) {
    *error = "path is too long (" + std::to_string(p.size()) + " bytes; at most " + std::to_string(kMaxPathBytes) + ")";
    return false;
  }
  if (!p.empty() && p[0] == '/') {
    *error = "path '" + escape_word(p) + "' is absolute; paths are relative to the workspace";
    return false;
  }
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find('/', start);
    if (end == std::string_view::npos) end = p.size();
    std::string_view part = p.substr(start, end - start);
    if (part == "..") {
      *error = "path '" + escape_word(p) + "' contains '..'";
      return false;
    }
    if (part.size() > kMaxNameBytes) {
      *error = "a path component is " + std::to_string(part.size()) + " bytes long (at most " +
               std::to_string(kMaxNameBytes) + ")";
      return false;
    }
    if (!part.empty() && part != ".") {
      if (!out->empty()) *out += '/';
      *out += part;
    }
    start = end + 1;
  }
  return true;
}

berth_status parse_config(const Flavor& flavor, const char* json, Config* out, std::string* error) {
  Config config;
  config.socket = flavor.default_socket;
  std::string text = json && *json ? json : "{}";
  Object::Ptr object;
  try {
    Poco::JSON::Parser parser;
    object = parser.parse(text).extract<Object::Ptr>();
  } catch (...) {
    object = nullptr;
  }
  if (!object) {
    *error = flavor.name + " driver config is not a JSON object";
    return BERTH_INVALID_ARGUMENT;
  }
  auto want_string = [&](const std::string& key, std::string& target, bool allow_empty) {
    auto v = object->get(key);
    if (v.isEmpty()) return true;  // null: keep the default
    if (!v.isString()) {
      *error = flavor.name + " driver config: '" + key + "' must be a string";
      return false;
    }
    std::string s = v.extract<std::string>();
    if (s.empty() && !allow_empty) {
      *error = flavor.name + " driver config: '" + key + "' must not be empty";
      return false;
    }
    target = s;
    return true;
  };
  auto want_int = [&](const std::string& key, auto& target, long long min, long long max) {
    auto v = object->get(key);
    if (v.isEmpty()) return true;
    long long n = 0;
    try {
      if (!v.isInteger()) throw Poco::Exception("not an integer");
      n = v.convert<long long>();
    } catch (...) {
      *error = flavor.name + " driver config: '" + key + "' must be an integer";
      return false;
    }
    if (n < min || n > max) {
      *error = flavor.name + " driver config: '" + key + "' must be between " + std::to_string(min) + " and " +
               std::to_string(max);
      return false;
    }
    target = static_cast<std::remove_reference_t<decltype(target)>>(n);
    return true;
  };
  for (const auto& [key, value] : *object) {
    bool ok = true;
    if (key == "socket") {
      ok = want_string(key, config.socket, false);
    } else if (key == "api_version") {
      ok = want_string(key, config.api_version, true);
      if (ok && !config.api_version.empty()) {
        const std::string& v = config.api_version;
        size_t dot = v.find('.');
        bool digits = dot != std::string::npos && dot > 0 && dot + 1 < v.size() &&
                      std::all_of(v.begin(), v.end(), [](char c) { return (c >= '0' && c <= '9') || c == '.'; }) &&
                      v.find('.', dot + 1) == std::string::npos;
        if (!digits) {
          *error = flavor.name + " driver config: 'api_version' must look like \"1.41\"";
          ok = false;
        }
      }
    } else if (key == "connect_timeout_ms") {
      ok = want_int(key, config.connect_timeout_ms, 1, 600000);
    } else if (key == "request_timeout_ms") {
      ok = want_int(key, config.request_timeout_ms, 1, 86400000);
    } else if (key == "default_user") {
      ok = want_string(key, config.default_user, true);
    } else if (key == "ulimit_nofile") {
      ok = want_int(key, config.ulimit_nofile, 1, 1 << 30);
    } else if (key == "ulimit_nproc") {
      ok = want_int(key, config.ulimit_nproc, 1, 1 << 30);
    } else if (key == "stop_timeout_s") {
      ok = want_int(key, config.stop_timeout_s, 0, 3600);
    } else if (key == "tmp_size_mb") {
      ok = want_int(key, config.tmp_size_mb, 0, 1 << 20);
    } else if (key == "agent") {
      auto v = object->get(key);
      if (!v.isEmpty()) {
        if (!v.isBoolean()) {
          *error = flavor.name + " driver config: 'agent' must be a boolean";
          ok = false;
        } else {
          config.agent = v.extract<bool>();
        }
      }
    } else if (key == "agent_path") {
      ok = want_string(key, config.agent_path, true);
    } else if (key == "agent_run_dir") {
      ok = want_string(key, config.agent_run_dir, false);
      if (ok && config.agent_run_dir[0] != '/') {
        *error = flavor.name + " driver config: 'agent_run_dir' must be an absolute path";
        ok = false;
      }
    } else if (key == "agent_transport") {
      ok = want_string(key, config.agent_transport, false);
      if (ok && config.agent_transport != "socket" && config.agent_transport != "exec") {
        *error = flavor.name + " driver config: 'agent_transport' must be \"socket\" or \"exec\"";
        ok = false;
      }
    } else if (key == "agent_delivery") {
      ok = want_string(key, config.agent_delivery, false);
      if (ok && config.agent_delivery != "bind" && config.agent_delivery != "volume") {
        *error = flavor.name + " driver config: 'agent_delivery' must be \"bind\" or \"volume\"";
        ok = false;
      }
    } else if (key == "agent_ready_timeout_ms") {
      ok = want_int(key, config.agent_ready_timeout_ms, 1, 600000);
    } else {
      *error = flavor.name + " driver config: unknown key '" + key + "'";
      ok = false;
    }
    if (!ok) return BERTH_INVALID_ARGUMENT;
  }
  *out = std::move(config);
  return BERTH_OK;
}

// ---------------------------------------------------------------------------------------------------------------
// Lifecycle

namespace {

bool is_executable_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

/**
 * The berth-agent binary to mount into sessions: `configured` if set (it must exist), else the first of
 * <this driver's .so dir>/../../bin/berth-agent (the build tree: build/lib/berth -> build/bin),
 * BERTH_AGENT_INSTALL_PATH (the installed <libexecdir>/berth/berth-agent), /usr/lib/berth/berth-agent and
 * /usr/bin/berth-agent. "" with the reason in *why when none is usable.
 */
std::string find_agent_binary(const std::string& configured, std::string* why) {
  if (!configured.empty()) {
    if (is_executable_file(configured)) return std::filesystem::absolute(configured).lexically_normal().string();
    *why = "agent_path '" + configured + "' is not an executable file";
    return "";
  }
  std::vector<std::string> candidates;
  Dl_info info{};
  if (::dladdr(reinterpret_cast<const void*>(&find_agent_binary), &info) != 0 && info.dli_fname) {
    std::filesystem::path so = std::filesystem::absolute(info.dli_fname);
    candidates.push_back((so.parent_path() / ".." / ".." / "bin" / "berth-agent").lexically_normal().string());
  }
#ifdef BERTH_AGENT_INSTALL_PATH
  candidates.emplace_back(BERTH_AGENT_INSTALL_PATH);
#endif
  candidates.emplace_back("/usr/lib/berth/berth-agent");
  candidates.emplace_back("/usr/bin/berth-agent");
  for (const auto& c : candidates)
    if (is_executable_file(c)) return c;
  *why = "no berth-agent binary found (looked at";
  for (const auto& c : candidates)
    *why += " " + c;
  *why += ")";
  return "";
}

}  // namespace

berth_status configure(const Flavor& flavor, const berth_host_api* host, const char* config_json, berth_instance** out,
                       berth_error* err) {
  berth_host_api h;
  std::memset(&h, 0, sizeof h);
  if (host) std::memcpy(&h, host, std::min<size_t>(host->struct_size, sizeof h));
  try {
    if (!host || !out) {
      report(host ? &h : nullptr, err, "configure: host and out must not be NULL");
      return BERTH_INVALID_ARGUMENT;
    }
    *out = nullptr;
    Config config;
    std::string error;
    berth_status status = parse_config(flavor, config_json, &config, &error);
    if (status != BERTH_OK) {
      report(&h, err, error);
      return status;
    }
    auto instance = std::make_unique<Instance>(flavor, std::move(config), h);
    if (instance->config.agent) {
      instance->agent_binary = find_agent_binary(instance->config.agent_path, &instance->agent_missing);
      if (!instance->agent_binary.empty() && instance->config.agent_delivery == "volume") {
        std::error_code ec;
        const auto size = std::filesystem::file_size(instance->agent_binary, ec);
        std::ifstream in(instance->agent_binary, std::ios::binary);
        std::string bytes(ec ? 0 : static_cast<std::size_t>(size), '\0');
        if (!ec && in.read(bytes.data(), static_cast<std::streamsize>(bytes.size())) &&
            in.gcount() == static_cast<std::streamsize>(bytes.size()) && !bytes.empty()) {
          instance->agent_bytes = std::move(bytes);
          instance->agent_volume = agent_volume_name(instance->agent_bytes);
        } else {  // as a missing binary: sessions take the Engine exec path and say why
          instance->agent_missing = "cannot read the agent binary " + instance->agent_binary + " for agent_delivery";
          instance->agent_binary.clear();
        }
      }
    } else {
      instance->agent_missing = "the driver config sets agent = false";
    }
    instance->log(BERTH_LOG_INFO, instance->event("configured").c_str(),
                  {{"socket", instance->config.socket},
                   {"api_version", instance->config.api_version.empty() ? "negotiate" : instance->config.api_version},
                   {"transport", instance->agent_binary.empty() ? "engine-exec" : "agent"},
                   {"agent", instance->agent_binary.empty() ? instance->agent_missing : instance->agent_binary},
                   {"agent_delivery", instance->agent_volume.empty() ? "bind" : "volume " + instance->agent_volume}});
    *out = reinterpret_cast<berth_instance*>(instance.release());
    return BERTH_OK;
  } catch (const std::exception& e) {
    report(&h, err, std::string("configure failed: ") + e.what());
    return BERTH_INTERNAL;
  } catch (...) {
    report(&h, err, "configure failed");
    return BERTH_INTERNAL;
  }
}

void destroy(berth_instance* inst) {
  try {
    delete reinterpret_cast<Instance*>(inst);
  } catch (...) {
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Volumes

berth_status volume_create(berth_instance* inst, const char* name, const berth_kv* labels, size_t label_count,
                           berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    Instance& self = *instance_of(inst);
    require_name(name, "volume name");
    Object::Ptr body = new Object;
    body->set("Name", std::string(name));
    body->set("Driver", std::string("local"));
    body->set("Labels", labels_object(labels, label_count));
    std::lock_guard lock(self.volume_mutex);
    Response existing = self.client.call("GET", "/volumes/" + url_encode(name), {}, {404});
    if (existing.status == 200) throw Error(Errc::conflict, "volume '" + std::string(name) + "' exists already");
    self.client.call_json("POST", "/volumes/create", body);
    self.log(BERTH_LOG_INFO, self.event("volume.created").c_str(), {{"volume", name}});
    return BERTH_OK;
  });
}

berth_status volume_remove(berth_instance* inst, const char* name, berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    Instance& self = *instance_of(inst);
    require_name(name, "volume name");
    self.client.call("DELETE", "/volumes/" + url_encode(name));
    self.log(BERTH_LOG_INFO, self.event("volume.removed").c_str(), {{"volume", name}});
    return BERTH_OK;
  });
}

berth_status volume_exists(berth_instance* inst, const char* name, int32_t* exists, berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    Instance& self = *instance_of(inst);
    if (!exists) throw Error(Errc::invalid_argument, "exists is NULL");
    *exists = 0;
    require_name(name, "volume name");
    Response r = self.client.call("GET", "/volumes/" + url_encode(name), {}, {404});
    *exists = r.status == 200 ? 1 : 0;
    return BERTH_OK;
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Sessions

namespace {

/** Where the agent binary and the session's agent directory appear inside the container. */

/** The agent could not be started or did not answer: session_create falls back to the Engine exec path. */
class AgentStartFailed : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/** "uid" or "uid:gid", both decimal (the engines' numeric User form). */
bool numeric_user(const std::string& user, unsigned* uid, unsigned* gid) {
  auto number = [](std::string_view text, unsigned* out) {
    if (text.empty() || text.size() > 9 ||
        !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return false;
    *out = static_cast<unsigned>(std::stoul(std::string(text)));
    return true;
  };
  size_t colon = user.find(':');
  if (colon == std::string::npos) {
    if (!number(user, uid)) return false;
    *gid = *uid;
    return true;
  }
  return number(std::string_view(user).substr(0, colon), uid) && number(std::string_view(user).substr(colon + 1), gid);
}

/** Creates the session's agent directory and lends it to the agent until it has bound its socket (then berthd
 *  takes it back, 0700). Privileged berthd: 0700, owned by the session's uid:gid. Unprivileged berthd (the packaged
 *  unit, which can chown nothing): 0777 and owned by berthd; the agent then creates its socket 0666
 *  (agent_socket_mode()). Either way the parent stays closed to other host users: it is created 0750 if missing, and
 *  the packaged unit's RuntimeDirectory is 0750 berth:berth. A stale directory of the same name (a session removed
 *  while berthd was down) is replaced. Throws filesystem_error. */
void make_agent_dir(const std::string& run_dir, const std::string& dir, unsigned uid, unsigned gid) {
  if (!std::filesystem::exists(run_dir)) {
    std::filesystem::create_directories(run_dir);
    ::chmod(run_dir.c_str(), 0750);  // best effort: an operator's own mode on an existing directory is kept
  }
  std::filesystem::remove_all(dir);
  const bool privileged = ::geteuid() == 0;
  if (::mkdir(dir.c_str(), 0700) != 0 ||
      (privileged ? ::chown(dir.c_str(), uid, gid) : ::chmod(dir.c_str(), 0777)) != 0) {
    throw std::filesystem::filesystem_error("mkdir/chown", dir, std::error_code(errno, std::generic_category()));
  }
}

/** The agent's --socket-mode: 0600 when berthd is root (the agent chowns the socket to berthd), 0666 otherwise. */
const char* agent_socket_mode() {
  return ::geteuid() == 0 ? "0600" : "0666";
}

/** Best effort: the directory holds only the agent's socket. */
void remove_agent_dir(const std::string& dir) {
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
}

/**
 * Waits until the container's agent answers HELLO and PING on a connection from `connect` (the socket, or an exec
 * stream; Config::agent_ready_timeout_ms at most, an attempt every `retry_delay`, the container's state looked at
 * every 100 ms) and returns that connection. Throws AgentStartFailed.
 */
std::unique_ptr<AgentClient> wait_for_agent(Instance& inst, const std::string& container,
                                            const AgentPool::Connector& connect, milliseconds retry_delay) {
  using Clock = std::chrono::steady_clock;
  const auto give_up = Clock::now() + milliseconds(inst.config.agent_ready_timeout_ms);
  auto next_state_check = Clock::now() + milliseconds(100);
  std::string last = "no answer";
  for (;;) {
    try {
      auto client = connect(std::min(give_up, Clock::now() + milliseconds(2000)));
      client->ping(std::min(give_up, Clock::now() + milliseconds(2000)));
      return client;
    } catch (const std::exception& e) {
      last = e.what();
    }
    if (Clock::now() >= give_up) {
      throw AgentStartFailed("the agent did not answer within " + std::to_string(inst.config.agent_ready_timeout_ms) +
                             " ms: " + last);
    }
    if (Clock::now() >= next_state_check) {
      next_state_check = Clock::now() + milliseconds(100);
      auto state = inst.client.call("GET", "/containers/" + container + "/json").json_object()->getObject("State");
      if (!state || !state->optValue<bool>("Running", false)) {
        throw AgentStartFailed("the container stopped before its agent answered (exit code " +
                               std::to_string(state ? state->optValue<int>("ExitCode", -1) : -1) + "): " + last);
      }
    }
    std::this_thread::sleep_for(retry_delay);
  }
}

}  // namespace

berth_status session_create(berth_instance* inst, const berth_session_spec* spec_in, berth_session_info* info,
                            berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    Instance& self = *instance_of(inst);
    if (!spec_in) throw Error(Errc::invalid_argument, "spec is NULL");
    const berth_session_spec spec = copy_in(spec_in);
    require_name(spec.session_id, "session_id");
    if (!spec.image || !*spec.image) throw Error(Errc::invalid_argument, "spec.image is empty");
    if (spec.nano_cpus < 0 || spec.memory_bytes < 0 || spec.pids_limit < 0) {
      throw Error(Errc::invalid_argument, "negative resource limit");
    }
    const std::string workspace = require_mount_path(spec.workspace_mount_path);
    std::string working_dir = workspace;
    if (spec.working_dir && *spec.working_dir) {
      if (spec.working_dir[0] != '/') throw Error(Errc::invalid_argument, "working_dir must be an absolute path");
      working_dir = spec.working_dir;
    }
    const std::string user = spec.user && *spec.user ? spec.user : self.config.default_user;
    const std::string name = "berth-" + std::string(spec.session_id);
    const std::uint64_t t0 = self.now_ns();

    Object::Ptr labels = labels_object(spec.labels, spec.label_count);
    Array::Ptr label_keys = new Array;
    for (const auto& [key, value] : *labels)
      label_keys->add(key);
    labels->set(kLabelKeys, to_json(label_keys));
    labels->set(kLabelDriver, self.flavor.name);
    labels->set(kLabelWorkspace, workspace);

    Object::Ptr host_config = new Object;
    Array::Ptr mounts = new Array;
    if (spec.workspace_volume && *spec.workspace_volume) {
      require_name(spec.workspace_volume, "workspace_volume");
      // The engine would silently create a missing volume (without the host's labels): refuse instead.
      Response v = self.client.call("GET", "/volumes/" + url_encode(spec.workspace_volume), {}, {404});
      if (v.status == 404) {
        throw Error(Errc::not_found, "workspace volume '" + std::string(spec.workspace_volume) + "' does not exist");
      }
      Object::Ptr mount = new Object;
      mount->set("Type", std::string("volume"));
      mount->set("Source", std::string(spec.workspace_volume));
      mount->set("Target", workspace);
      mount->set("ReadOnly", false);
      mounts->add(mount);
    }
    host_config->set("Mounts", mounts);
    host_config->set("CapDrop", string_array({"ALL"}));
    host_config->set("SecurityOpt", string_array({"no-new-privileges"}));
    if (spec.pids_limit > 0) host_config->set("PidsLimit", static_cast<Poco::Int64>(spec.pids_limit));
    if (spec.memory_bytes > 0) {
      host_config->set("Memory", static_cast<Poco::Int64>(spec.memory_bytes));
      host_config->set("MemorySwap", static_cast<Poco::Int64>(spec.memory_bytes));
    }
    if (spec.nano_cpus > 0) host_config->set("NanoCpus", static_cast<Poco::Int64>(spec.nano_cpus));
    Array::Ptr ulimits = new Array;
    for (auto [ulimit_name, value] : {std::pair<const char*, std::int64_t>{"nofile", self.config.ulimit_nofile},
                                      std::pair<const char*, std::int64_t>{"nproc", self.config.ulimit_nproc}}) {
      Object::Ptr u = new Object;
      u->set("Name", std::string(ulimit_name));
      u->set("Soft", static_cast<Poco::Int64>(value));
      u->set("Hard", static_cast<Poco::Int64>(value));
      ulimits->add(u);
    }
    host_config->set("Ulimits", ulimits);
    host_config->set("NetworkMode", spec.network_enabled ? self.flavor.network_mode_enabled : std::string("none"));
    host_config->set("PublishAllPorts", false);
    host_config->set("Privileged", false);
    host_config->set("Init", self.flavor.init);
    Object::Ptr restart = new Object;
    restart->set("Name", std::string("no"));
    host_config->set("RestartPolicy", restart);
    if (spec.read_only_rootfs) host_config->set("ReadonlyRootfs", true);
    // /tmp is a sized tmpfs: a sandbox filling it gets ENOSPC, the host disk stays untouched. Neither engine can cap
    // the writable layer on this host's overlay-over-ext4 (StorageOpt size needs xfs with pquota).
    if (std::uint32_t tmp_mb = spec.read_only_rootfs && !self.config.tmp_size_mb ? 64 : self.config.tmp_size_mb) {
      Object::Ptr tmpfs = new Object;
      tmpfs->set("/tmp", "rw,exec,nosuid,nodev,mode=1777,size=" + std::to_string(tmp_mb) + "m");
      host_config->set("Tmpfs", tmpfs);
    }

    // berth-agent: the session's host directory (0700, owned by the session user) and the two bind mounts. Any
    // reason not to use the agent (or its failing to answer) leaves the session on the Engine exec path.
    // The "socket" transport's host directory; the "exec" transport needs none (nothing is shared with the engine's
    // machine but the agent binary at agent_path).
    const bool exec_transport = self.config.agent_transport == "exec";
    const std::string agent_dir = exec_transport ? std::string() : self.config.agent_run_dir + "/" + name;
    std::string fallback_reason = self.agent_binary.empty() ? self.agent_missing : "";
    unsigned agent_uid = 0, agent_gid = 0;
    if (fallback_reason.empty() && !numeric_user(user, &agent_uid, &agent_gid)) {
      fallback_reason = "the session user '" + user + "' is not a numeric uid[:gid]";
    }
    if (fallback_reason.empty() && !self.agent_volume.empty()) {
      std::lock_guard lock(self.agent_volume_mutex);
      try {
        // Checked once per berthd, but the volume can go behind its back (`volume prune` while no session runs, an
        // operator): then the engine would create an empty one of that name at the container's create.
        if (self.agent_volume_checked &&
            self.client.call("GET", "/volumes/" + url_encode(self.agent_volume), {}, {404}).status == 404) {
          self.agent_volume_checked = false;
          self.agent_volume_retry_ns = 0;
        }
        if (!self.agent_volume_checked && self.now_ns() < self.agent_volume_retry_ns) {
          fallback_reason = "the agent volume " + self.agent_volume + " could not be filled a moment ago";
        } else if (!self.agent_volume_checked) {
          Object::Ptr helper_host_config = new Object;
          helper_host_config->set("Ulimits", host_config->get("Ulimits"));
          ensure_agent_volume(self.client, self.agent_volume, self.agent_bytes, helper_host_config,
                              milliseconds(self.config.agent_ready_timeout_ms));
          self.agent_volume_checked = true;
          self.log(BERTH_LOG_INFO, self.event("agent_volume.ready").c_str(), {{"volume", self.agent_volume}});
        }
      } catch (const std::exception& e) {
        self.agent_volume_retry_ns =
            self.now_ns() + 60ull * 1000000000ull;  // a fill is MBs and containers: once a minute
        fallback_reason = std::string("the agent volume ") + self.agent_volume + " could not be filled: " + e.what();
      }
    }
    const Array::Ptr base_mounts = mounts;
    std::unique_ptr<AgentClient> ready_connection;  // the readiness check's, kept as the pool's first

    // Creates and starts the container; with `use_agent`, also waits until its agent answers PING (AgentStartFailed
    // otherwise, the container then removed). Returns the container id and its last inspect.
    auto create_and_start = [&](bool use_agent) -> std::pair<std::string, Object::Ptr> {
      Array::Ptr attempt_mounts = new Array(*base_mounts);
      labels->remove(kLabelAgentDir);
      labels->remove(kLabelAgentTransport);
      if (use_agent) {
        // The agent: its binary bound from agent_path, or the agent volume at /.berth (its run/ directory is the
        // mount point of the socket transport's directory); then the socket transport's directory.
        std::vector<std::tuple<const char*, std::string, const char*, bool>> agent_mounts;
        if (self.agent_volume.empty())
          agent_mounts.emplace_back("bind", self.agent_binary, kAgentPathInside, true);
        else
          agent_mounts.emplace_back("volume", self.agent_volume, kAgentDirInside, true);  // (NoCopy: below)
        if (!exec_transport) agent_mounts.emplace_back("bind", agent_dir, kAgentRunInside, false);
        for (auto [type, source, target, read_only] : agent_mounts) {
          Object::Ptr m = new Object;
          m->set("Type", std::string(type));
          m->set("Source", source);
          m->set("Target", std::string(target));
          m->set("ReadOnly", read_only);
          if (std::string_view(type) == "volume") {
            // Never filled from the session's image: an empty agent volume (gone meanwhile) must not take the
            // image's /.berth, which every later session would run.
            Object::Ptr options = new Object;
            options->set("NoCopy", true);
            m->set("VolumeOptions", options);
          }
          attempt_mounts->add(m);
        }
        labels->set(kLabelTransport, std::string("agent"));
        labels->set(kLabelAgentTransport, self.config.agent_transport);
        if (!exec_transport) labels->set(kLabelAgentDir, agent_dir);
      } else {
        labels->set(kLabelTransport, std::string("engine-exec"));
      }
      host_config->set("Mounts", attempt_mounts);
      // The engine's init (docker-init / catatonit) stays PID 1 in front of the agent, so that the session ends as it
      // always did when its user kills everything it may signal (`kill -9 -1` spares only PID 1): the agent dies,
      // init exits, and the next call finds the session gone. The agent then makes itself a child sub-reaper.
      host_config->set("Init", self.flavor.init);

      Object::Ptr body = new Object;
      body->set("Image", std::string(spec.image));
      // The main process keeps the session alive: the agent, else the reaper (it also kills exec process trees on
      // request). Absolute program paths: the container's PATH is the tenant's, and a kept workspace may hold
      // programs they planted.
      if (use_agent && exec_transport) {
        // The main process serves no connection (init duties only); every connection is an exec of the agent
        // (exec_agent_argv).
        body->set("Entrypoint", string_array({kAgentPathInside}));
        body->set("Cmd", string_array({"--init-only", "--root", workspace}));
      } else if (use_agent) {
        body->set("Entrypoint", string_array({kAgentPathInside}));
        body->set("Cmd", string_array({"--listen", std::string("unix:") + kAgentRunInside + "/agent.sock", "--root",
                                       workspace, "--socket-mode", agent_socket_mode()}));
      } else {
        if (self.flavor.reaper) {
          body->set("Cmd", string_array({"/bin/sh", "-c", scripts::kReaper, "berth-reaper"}));
        } else {
          body->set("Cmd", string_array({"/bin/sleep", "infinity"}));
        }
        body->set("Entrypoint", Array::Ptr(new Array));
      }
      body->set("Env", string_array(env_strings(spec.env, spec.env_count, "env")));
      body->set("Labels", labels);
      if (!user.empty()) body->set("User", user);
      body->set("WorkingDir", working_dir);
      body->set("Tty", false);
      body->set("OpenStdin", !use_agent && self.flavor.reaper);  // the reaper's request channel
      body->set("StdinOnce", false);
      body->set("AttachStdin", false);
      body->set("AttachStdout", false);
      body->set("AttachStderr", false);
      body->set("NetworkDisabled", !spec.network_enabled);
      body->set("StopTimeout", static_cast<Poco::Int64>(self.config.stop_timeout_s));
      body->set("HostConfig", host_config);

      Response created;
      try {
        created = self.client.call_json("POST", "/containers/create?name=" + url_encode(name), body);
      } catch (const Error& e) {
        if (e.http_status() == 404) {
          throw Error(Errc::invalid_argument,
                      std::string(e.what()) + " (images are never pulled: build or load '" + spec.image + "' first)");
        }
        throw;
      }
      const std::string id = created.json_object()->optValue<std::string>("Id", "");
      if (id.empty()) throw Error(Errc::internal, self.flavor.name + ": container create returned no Id");

      // From here on, a failure removes the container: no half-created sessions.
      Object::Ptr inspect;
      try {
        self.client.call("POST", "/containers/" + id + "/start", {}, {304});
        const std::uint64_t give_up = self.now_ns() + 30ull * 1000000000ull;
        int delay_ms = 2;
        for (;;) {
          inspect = self.client.call("GET", "/containers/" + id + "/json").json_object();
          auto state = inspect->getObject("State");
          if (state && state->optValue<bool>("Running", false)) break;
          std::string status = state ? state->optValue<std::string>("Status", "") : "";
          if (status == "exited" || status == "dead") {
            std::string detail = state->optValue<std::string>("Error", "");
            std::string what = "container exited right after start (exit code " +
                               std::to_string(state->optValue<int>("ExitCode", -1)) + ")" +
                               (detail.empty() ? "" : ": " + detail);
            if (use_agent) throw AgentStartFailed(what);
            throw Error(Errc::internal, what);
          }
          if (self.now_ns() > give_up) throw Error(Errc::timeout, "container did not reach the running state");
          std::this_thread::sleep_for(milliseconds(delay_ms));
          delay_ms = std::min(delay_ms * 2, 50);
        }
        if (use_agent && exec_transport) {
          // Each attempt is an Engine exec: not every 2 ms.
          ready_connection = wait_for_agent(self, id, self.exec_connector(id, workspace), milliseconds(50));
        } else if (use_agent) {
          ready_connection =
              wait_for_agent(self, id, AgentPool::socket_connector(agent_dir + "/agent.sock"), milliseconds(2));
          // The agent has bound its socket: the directory goes back to berthd, so that the sandbox user can neither
          // swap agent.sock for a symlink berthd would follow (to any host socket) nor fill the host's /run.
          if (::chown(agent_dir.c_str(), ::geteuid(), ::getegid()) != 0 || ::chmod(agent_dir.c_str(), 0700) != 0) {
            throw AgentStartFailed("cannot take the agent directory back: " + std::string(std::strerror(errno)));
          }
        }
      } catch (...) {
        try {
          self.client.call("DELETE", "/containers/" + id + "?force=true&v=false", {}, {404});
        } catch (...) {
          self.log(BERTH_LOG_ERROR, self.event("session.cleanup_failed").c_str(), {{"container", id}});
        }
        throw;
      }
      return {id, inspect};
    };

    std::pair<std::string, Object::Ptr> started;
    if (fallback_reason.empty()) {
      try {
        if (!exec_transport) make_agent_dir(self.config.agent_run_dir, agent_dir, agent_uid, agent_gid);
        started = create_and_start(true);
      } catch (const AgentStartFailed& e) {
        fallback_reason = e.what();
      } catch (const Error& e) {
        // The engine refused the agent's container (an exotic image or runtime: a mount point it cannot create; with
        // the agent volume, a volume emptied meanwhile: no entrypoint). Anything else (engine unavailable, a missing
        // image or volume) fails the fallback the same way.
        const bool volume_refused = !self.agent_volume.empty() && e.code() == Errc::invalid_argument;
        if (volume_refused) {
          std::lock_guard lock(self.agent_volume_mutex);
          self.agent_volume_checked = false;  // checked anew by the next session
        }
        if (e.code() != Errc::internal && !volume_refused) {
          if (!exec_transport) remove_agent_dir(agent_dir);
          throw;
        }
        fallback_reason = std::string("the engine refused the agent's container: ") + e.what();
      } catch (const std::filesystem::filesystem_error& e) {
        fallback_reason = std::string("cannot prepare the agent directory: ") + e.what();
      }
      if (!fallback_reason.empty() && !exec_transport) remove_agent_dir(agent_dir);
    }
    if (!fallback_reason.empty()) {
      self.log(BERTH_LOG_WARN, self.event("agent.fallback").c_str(),
               {{"session_id", spec.session_id}, {"transport", "engine-exec"}, {"reason", fallback_reason}});
      started = create_and_start(false);
    }
    const std::string id = started.first;
    const std::uint64_t t_created = self.now_ns();
    auto meta = self.meta_from_inspect(started.second);
    if (meta->pool && ready_connection) meta->pool->adopt(std::move(ready_connection));
    self.remember(id, meta);

    berth_session_info out;
    std::memset(&out, 0, sizeof out);
    out.struct_size = sizeof out;
    out.state = BERTH_SESSION_RUNNING;
    copy_string(out.handle, sizeof out.handle, id);
    auto created_cfg = started.second->getObject("Config");
    copy_string(out.endpoint, sizeof out.endpoint,
                Instance::endpoint_of(created_cfg ? created_cfg->getObject("Labels") : nullptr, id));
    copy_out(info, out);
    const std::uint64_t t1 = self.now_ns();
    self.log(BERTH_LOG_INFO, self.event("session.created").c_str(),
             {{"session_id", spec.session_id},
              {"container", id},
              {"create_ms", std::to_string((t_created - t0) / 1000000)},
              {"transport", meta->agent ? "agent" : "engine-exec"},
              {"total_ms", std::to_string((t1 - t0) / 1000000)}});
    return BERTH_OK;
  });
}

berth_status session_inspect(berth_instance* inst, const char* handle, berth_session_info* info, berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    Instance& self = *instance_of(inst);
    std::string h = require_handle(handle);
    berth_session_info out;
    std::memset(&out, 0, sizeof out);
    out.struct_size = sizeof out;
    Response r = self.client.call("GET", "/containers/" + url_encode(h) + "/json", {}, {404});
    if (r.status == 404) {
      out.state = BERTH_SESSION_MISSING;
      copy_string(out.handle, sizeof out.handle, h);
      self.forget(h);
      copy_out(info, out);
      return BERTH_OK;
    }
    auto object = r.json_object();
    auto state = object->getObject("State");
    std::string status = state ? state->optValue<std::string>("Status", "") : "";
    out.state = state_from_status(status);
    if (out.state == BERTH_SESSION_EXITED && state) out.exit_code = state->optValue<int>("ExitCode", 0);
    const std::string id = object->optValue<std::string>("Id", h);
    copy_string(out.handle, sizeof out.handle, id);
    auto cfg = object->getObject("Config");
    copy_string(out.endpoint, sizeof out.endpoint, Instance::endpoint_of(cfg ? cfg->getObject("Labels") : nullptr, id));
    copy_out(info, out);
    return BERTH_OK;
  });
}

berth_status session_stop(berth_instance* inst, const char* handle, uint32_t timeout_ms, berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    Instance& self = *instance_of(inst);
    std::string h = require_handle(handle);
    std::uint32_t seconds = timeout_ms ? (timeout_ms + 999) / 1000 : self.config.stop_timeout_s;
    milliseconds request_timeout = milliseconds(self.config.request_timeout_ms) + std::chrono::seconds(seconds);
    self.client.call("POST", "/containers/" + url_encode(h) + "/stop?t=" + std::to_string(seconds), {}, {304},
                     request_timeout);
    return BERTH_OK;
  });
}

berth_status session_remove(berth_instance* inst, const char* handle, berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    Instance& self = *instance_of(inst);
    std::string h = require_handle(handle);
    std::shared_ptr<Instance::SessionMeta> meta;
    try {
      meta = self.meta_of(h);
    } catch (const Error&) {
      // the DELETE below reports a missing container
    }
    self.forget(h);
    if (meta && meta->pool) meta->pool->clear();
    self.client.call("DELETE", "/containers/" + url_encode(h) + "?force=true&v=false");
    if (meta && meta->agent && meta->agent_dir.rfind(self.config.agent_run_dir + "/", 0) == 0) {
      remove_agent_dir(meta->agent_dir);
    }
    self.log(BERTH_LOG_INFO, self.event("session.removed").c_str(), {{"container", h}});
    return BERTH_OK;
  });
}

berth_status session_list(berth_instance* inst, const berth_kv* filter, size_t filter_count,
                          berth_session_list_fn on_item, void* ctx, berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    Instance& self = *instance_of(inst);
    if (!on_item) throw Error(Errc::invalid_argument, "on_item is NULL");
    if (filter_count && !filter) throw Error(Errc::invalid_argument, "filter is NULL but filter_count is not 0");
    std::vector<std::string> wanted = {std::string(kLabelDriver) + "=" + self.flavor.name};
    for (size_t i = 0; i < filter_count; ++i) {
      if (!filter[i].key || !*filter[i].key || std::strchr(filter[i].key, '=')) {
        throw Error(Errc::invalid_argument, "a filter label key is empty or contains '='");
      }
      wanted.push_back(std::string(filter[i].key) + "=" + (filter[i].value ? filter[i].value : ""));
    }
    Object::Ptr filters = new Object;
    filters->set("label", string_array(wanted));
    Response r = self.client.call("GET", "/containers/json?all=true&filters=" + url_encode(to_json(filters)));
    auto list = r.json().extract<Array::Ptr>();
    if (!list) return BERTH_OK;
    for (size_t i = 0; i < list->size(); ++i) {
      auto item = list->getObject(static_cast<unsigned>(i));
      if (!item) continue;
      std::vector<std::pair<std::string, std::string>> kv;
      if (auto labels = item->getObject("Labels"); labels) {
        // Only the labels the spec gave (the container also carries its image's labels).
        std::optional<std::vector<std::string>> keys;
        if (labels->has(kLabelKeys)) {
          try {
            auto array = parse_json(labels->getValue<std::string>(kLabelKeys)).extract<Array::Ptr>();
            keys.emplace();
            for (size_t k = 0; array && k < array->size(); ++k)
              keys->push_back(array->getElement<std::string>(k));
          } catch (...) {
            keys.reset();
          }
        }
        for (const auto& [k, v] : *labels) {
          if (k.rfind(kLabelPrefix, 0) == 0) continue;
          if (keys && std::find(keys->begin(), keys->end(), k) == keys->end()) continue;
          kv.emplace_back(k, v.isEmpty() ? std::string() : v.convert<std::string>());
        }
      }
      // The engine filters already; check again, so that an engine ignoring the filter cannot leak sessions.
      bool matches = true;
      for (size_t f = 0; f < filter_count && matches; ++f) {
        matches = std::any_of(kv.begin(), kv.end(), [&](const auto& p) {
          return p.first == filter[f].key && p.second == (filter[f].value ? filter[f].value : "");
        });
      }
      if (!matches) continue;
      std::vector<berth_kv> labels;
      labels.reserve(kv.size());
      for (const auto& [k, v] : kv)
        labels.push_back(berth_kv{k.c_str(), v.c_str()});
      std::string id = item->optValue<std::string>("Id", "");
      berth_session_listing listing;
      std::memset(&listing, 0, sizeof listing);
      listing.struct_size = sizeof listing;
      listing.state = state_from_status(item->optValue<std::string>("State", ""));
      listing.handle = id.c_str();
      listing.labels = labels.data();
      listing.label_count = labels.size();
      if (on_item(ctx, &listing) != 0) break;
    }
    return BERTH_OK;
  });
}

/**
 * Bytes in the container's writable layer: the engine's SizeRw from `GET /containers/{id}/json?size=1`, which walks
 * the layer's upper directory (tens of ms; /system/df walks every volume and took 5-10 s here, and Podman's reports
 * volume sizes as 0). 0 when the engine does not say.
 */
std::uint64_t writable_layer_bytes(Instance& inst, const std::string& handle) {
  auto object = inst.client.call("GET", "/containers/" + url_encode(handle) + "/json?size=1").json_object();
  return u64_at(object, {"SizeRw"});
}

/**
 * Space the session's workspace holds: `du -sx --block-size=1` run as a helper inside the session (the session user,
 * fixed environment, absolute path), so it works wherever the engine runs (rootless, remote) and never walks a
 * tenant's tree as root. Allocated blocks, not apparent sizes: a sparse file costs the host nothing, a million 1-byte
 * files cost it 4 GiB. du exits 1 when a directory is unreadable to the session user (the tenant can chmod its own
 * directories): the total it printed for the rest still counts (docs/security.md names that gap). 0 when du
 * printed no total.
 */
std::uint64_t workspace_bytes(Instance& inst, const std::string& handle) {
  auto meta = inst.meta_of(handle);
  const std::string workspace = meta->workspace;
  Captured c;
  if (meta->agent) {
    AgentExec x;
    x.argv = {"/usr/bin/du", "-sx", "--block-size=1", "--", workspace};
    x.env = {"PATH=/usr/bin:/bin", "LC_ALL=C"};
    x.timeout_ms = inst.config.request_timeout_ms;
    x.on_output = [&](int stream, const std::uint8_t* data, size_t size) {
      std::string& target = stream == 1 ? c.out : c.err;
      target.append(reinterpret_cast<const char*>(data),
                    std::min<size_t>(size, 4096 - std::min<size_t>(4096, target.size())));
      return true;
    };
    ExecOutcome outcome = agent_exec(inst, handle, *meta, x);
    if (outcome.timed_out) throw Error(Errc::timeout, "the helper command did not finish in time");
    c.exit_code = outcome.never_started ? 127 : outcome.exit_code;
    if (outcome.never_started) c.err = outcome.start_error;
  } else {
    c = run_capture(inst, handle, {"/usr/bin/du", "-sx", "--block-size=1", "--", workspace}, {}, 4096);
  }
  std::uint64_t total = 0;
  size_t i = 0;
  while (i < c.out.size() && c.out[i] >= '0' && c.out[i] <= '9' && total < (UINT64_MAX - 9) / 10)
    total = total * 10 + static_cast<std::uint64_t>(c.out[i++] - '0');
  if (i == 0 && c.exit_code != 0) {
    inst.log(BERTH_LOG_WARN, inst.event("disk_measure_failed").c_str(),
             {{"handle", handle}, {"exit_code", std::to_string(c.exit_code)}, {"error", c.err.substr(0, 200)}});
  }
  return total;
}

berth_status session_stats(berth_instance* inst, const char* handle, berth_session_stats* stats, berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    Instance& self = *instance_of(inst);
    std::string h = require_handle(handle);
    std::string path = "/containers/" + url_encode(h) + "/stats?stream=false";
    if (compare_api_versions(self.client.api_version(), "1.41") >= 0) path += "&one-shot=true";
    auto object = self.client.call("GET", path).json_object();
    std::string read = object->optValue<std::string>("read", "");
    if (read.rfind("0001-", 0) == 0) throw Error(Errc::conflict, "session '" + h + "' is not running");
    berth_session_stats out;
    std::memset(&out, 0, sizeof out);
    out.struct_size = sizeof out;
    out.memory_bytes = u64_at(object, {"memory_stats", "usage"});
    out.cpu_time_ns = u64_at(object, {"cpu_stats", "cpu_usage", "total_usage"});
    out.pids = u64_at(object, {"pids_stats", "current"});
    if (stats &&
        stats->struct_size > offsetof(berth_session_stats, workspace_bytes)) {  // an ABI 1.2 host asks for disk use
      out.rootfs_bytes = writable_layer_bytes(self, h);
      out.workspace_bytes = workspace_bytes(self, h);
    }
    copy_out(stats, out);
    return BERTH_OK;
  });
}

berth_status image_exists(berth_instance* inst, const char* image, int32_t* exists, berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    Instance& self = *instance_of(inst);
    if (!exists) throw Error(Errc::invalid_argument, "exists is NULL");
    *exists = 0;
    // A reference of the engines' grammar: name components, '/', ':' tag, '@' digest; all of it path-safe, so it
    // goes into the path as it is (the engines route /images/{name:.*}/json, slashes included).
    const std::string ref = image != nullptr ? image : "";
    const bool valid = !ref.empty() && ref.size() <= 255 && std::isalnum(static_cast<unsigned char>(ref[0])) &&
                       std::all_of(ref.begin(), ref.end(), [](char c) {
                         return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' ||
                                c == '/' || c == ':' || c == '@';
                       });
    if (!valid) throw Error(Errc::invalid_argument, "image '" + ref + "' is not a valid image reference");
    // GET /images/{name}/json (Docker and Podman's compat API): 200 if the engine holds it, 404 if not; never pulls.
    Response r = self.client.call("GET", "/images/" + ref + "/json", {}, {404});
    *exists = r.status == 200 ? 1 : 0;
    return BERTH_OK;
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Exec

namespace {

/** The exec's result from either path: a process that never started is reported like a shell does. */
berth_status finish_exec(ExecOutcome outcome, const std::string& cwd, berth_output_fn on_output, void* output_ctx,
                         berth_exec_result* result) {
  {
    if (outcome.never_started) {
      // The runtime could not start the process. A missing working directory is a missing path; anything else
      // (command not found, not executable) is reported like a shell does: 127/126 and the reason on stderr.
      if (outcome.start_error.find("chdir to cwd") != std::string::npos) {
        throw Error(Errc::not_found, "the working directory '" + escape_word(cwd) +
                                         "' does not exist: " + escape_word(outcome.start_error));
      }
      bool missing = outcome.start_error.find("not found") != std::string::npos ||
                     outcome.start_error.find("no such file") != std::string::npos;
      outcome.exit_code = missing ? 127 : 126;
      std::string line = outcome.start_error + "\n";
      if (on_output && on_output(output_ctx, BERTH_STREAM_STDERR, reinterpret_cast<const std::uint8_t*>(line.data()),
                                 line.size()) != 0) {
        outcome.cancelled = true;
      }
    }

    berth_exec_result out;
    std::memset(&out, 0, sizeof out);
    out.struct_size = sizeof out;
    out.exit_code = outcome.timed_out || outcome.cancelled ? -1 : outcome.exit_code;
    out.timed_out = outcome.timed_out ? 1 : 0;
    out.cancelled = outcome.cancelled ? 1 : 0;
    copy_out(result, out);
    if (outcome.cancelled) {
      throw Error(Errc::cancelled, outcome.output_refused ? "the output callback refused data: process killed"
                                                          : "cancelled: process killed");
    }
    return BERTH_OK;
  }
}

}  // namespace

berth_status exec(berth_instance* inst, const char* handle, const berth_exec_request* request_in,
                  berth_output_fn on_output, void* output_ctx, const berth_cancel_token* cancel,
                  berth_exec_result* result, berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    Instance& self = *instance_of(inst);
    std::string h = require_handle(handle);
    if (!request_in) throw Error(Errc::invalid_argument, "request is NULL");
    const berth_exec_request request = copy_in(request_in);
    if (request.argc == 0 || !request.argv) throw Error(Errc::invalid_argument, "argv is empty");
    ExecSpec spec;
    for (size_t i = 0; i < request.argc; ++i) {
      if (!request.argv[i]) throw Error(Errc::invalid_argument, "argv[" + std::to_string(i) + "] is NULL");
      spec.argv.emplace_back(request.argv[i]);
    }
    if (spec.argv[0].empty()) throw Error(Errc::invalid_argument, "argv[0] is empty");
    spec.env = env_strings(request.env, request.env_count, "env");
    std::string cwd = relative_path(request.cwd ? request.cwd : "", true);
    if (request.stdin_size && !request.stdin_data) throw Error(Errc::invalid_argument, "stdin_data is NULL");
    auto meta = self.meta_of(h);
    if (meta->agent) {
      AgentExec x;
      x.argv = std::move(spec.argv);
      x.env = std::move(spec.env);
      x.cwd_rel = cwd;
      x.stdin_data = request.stdin_data;
      x.stdin_size = request.stdin_size;
      x.timeout_ms = request.timeout_ms;
      x.cancel = cancel;
      x.on_output = [&](int stream, const std::uint8_t* data, size_t size) {
        if (!on_output) return true;
        return on_output(output_ctx, stream == 2 ? BERTH_STREAM_STDERR : BERTH_STREAM_STDOUT, data, size) == 0;
      };
      return finish_exec(agent_exec(self, h, *meta, x), cwd, on_output, output_ctx, result);
    }
    // A cwd that is not plain ASCII would not survive the engine's JSON: the wrapper enters it instead.
    const std::string workspace = meta->workspace;
    if (plain_ascii(cwd)) {
      spec.working_dir = join(workspace, cwd);
    } else {
      spec.working_dir = workspace;
      spec.inner_cwd = join(workspace, cwd);
    }
    spec.stdin_data = request.stdin_data;
    spec.stdin_size = request.stdin_size;
    spec.attach_stdin = request.stdin_data != nullptr;
    spec.timeout_ms = request.timeout_ms;
    spec.cancel = cancel;
    spec.on_output = [&](int stream, const std::uint8_t* data, size_t size) {
      if (!on_output) return true;
      return on_output(output_ctx, stream == 2 ? BERTH_STREAM_STDERR : BERTH_STREAM_STDOUT, data, size) == 0;
    };

    return finish_exec(run_exec(self, h, spec), cwd, on_output, output_ctx, result);
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Files

berth_status file_put(berth_instance* inst, const char* handle, const char* path, uint32_t mode, uint64_t size,
                      berth_read_fn source, void* source_ctx, berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    Instance& self = *instance_of(inst);
    std::string h = require_handle(handle);
    std::string rel = relative_path(path, false);
    if (!source && size > 0) throw Error(Errc::invalid_argument, "source is NULL");
    auto meta = self.meta_of(h);
    const unsigned file_mode = (mode & 07777) ? (mode & 07777) : 0644;
    if (meta->agent) {
      // The bytes are read first, so that a failing source leaves nothing behind; then the missing parents are
      // created and the file written (openat2-confined, as the session user).
      std::string data;
      data.reserve(static_cast<size_t>(std::min<std::uint64_t>(size, 64u << 20)));
      std::vector<std::uint8_t> buffer(64 * 1024);
      while (data.size() < size) {
        size_t want = static_cast<size_t>(std::min<std::uint64_t>(buffer.size(), size - data.size()));
        std::int64_t n = source(source_ctx, buffer.data(), want);
        if (n < 0 || static_cast<std::uint64_t>(n) > want) {
          throw Error(Errc::cancelled, "the byte source failed: nothing was written");
        }
        if (n == 0) {
          throw Error(Errc::invalid_argument, "short upload: " + std::to_string(data.size()) + " of " +
                                                  std::to_string(size) + " bytes arrived");
        }
        data.append(reinterpret_cast<const char*>(buffer.data()), static_cast<size_t>(n));
      }
      with_agent_fs(self, h, *meta, rel, false, [&](AgentClient& c, AgentDeadline deadline) {
        if (size_t slash = rel.rfind('/'); slash != std::string::npos) {
          c.mkdir(rel.substr(0, slash), 0755, true, agent::kKeepId, agent::kKeepId, deadline);
        }
        c.write_file(rel, data, agent::kKeepId, agent::kKeepId, file_mode, deadline);
        return 0;
      });
      return BERTH_OK;
    }
    const std::string workspace = meta->workspace;
    char mode_text[8];
    std::snprintf(mode_text, sizeof mode_text, "%o", file_mode);
    HelperIo io;
    io.stdin_limit = size;
    io.stdin_source = [&](std::uint8_t* buffer, size_t capacity) -> std::int64_t {
      if (!source) return 0;
      return source(source_ctx, buffer, capacity);
    };
    // One exec: the script writes a temporary file next to the target, checks the byte count, renames it.
    run_files_script(self, h, "put", workspace, rel, {mode_text, std::to_string(size), random_token()}, io);
    return BERTH_OK;
  });
}

berth_status file_get(berth_instance* inst, const char* handle, const char* path, berth_write_fn sink, void* sink_ctx,
                      berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    Instance& self = *instance_of(inst);
    std::string h = require_handle(handle);
    std::string rel = relative_path(path, true);
    if (!sink) throw Error(Errc::invalid_argument, "sink is NULL");
    if (rel.empty()) throw Error(Errc::invalid_argument, "the workspace is a directory, not a regular file");
    auto meta = self.meta_of(h);
    if (meta->agent) {
      // Streamed chunk by chunk: a tenant's 64 GiB sparse file must never be held in berthd (the host stops the
      // download at its own size limit through the sink).
      bool any = false;
      const bool whole = with_agent_fs(self, h, *meta, rel, false, [&](AgentClient& c, AgentDeadline) {
        return c.read_file(
            rel, agent::kKeepId, agent::kKeepId,
            [&](std::string_view chunk) {
              any = true;
              return sink(sink_ctx, reinterpret_cast<const std::uint8_t*>(chunk.data()), chunk.size()) == 0;
            },
            milliseconds(self.config.request_timeout_ms));  // per chunk: a slow client may take longer
      });
      if (!whole) throw Error(Errc::cancelled, "the sink refused data");
      static const std::uint8_t kNothing = 0;  // an empty file still reaches the sink once, as on the engine path
      if (!any && sink(sink_ctx, &kNothing, 0) != 0) throw Error(Errc::cancelled, "the sink refused data");
      return BERTH_OK;
    }
    const std::string workspace = meta->workspace;
    HelperIo io;
    io.stdout_sink = [&](const std::uint8_t* data, size_t size) { return sink(sink_ctx, data, size) == 0; };
    run_files_script(self, h, "get", workspace, rel, {}, io);
    return BERTH_OK;
  });
}

berth_status dir_list(berth_instance* inst, const char* handle, const char* path, berth_dir_list_fn on_entry, void* ctx,
                      berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    Instance& self = *instance_of(inst);
    std::string h = require_handle(handle);
    std::string rel = relative_path(path, true);
    if (!on_entry) throw Error(Errc::invalid_argument, "on_entry is NULL");
    auto meta = self.meta_of(h);
    if (meta->agent) {
      // Entries go to on_entry as they arrive: the driver's memory does not grow with the directory.
      auto emit_entry = [&](const agent::FileInfo& e) -> bool {
        if (e.name.empty() || e.name == "." || e.name == "..") return true;
        berth_dir_entry entry;
        std::memset(&entry, 0, sizeof entry);
        entry.struct_size = sizeof entry;
        entry.type = e.kind == agent::FileKind::kRegular     ? BERTH_ENTRY_FILE
                     : e.kind == agent::FileKind::kDirectory ? BERTH_ENTRY_DIRECTORY
                     : e.kind == agent::FileKind::kSymlink   ? BERTH_ENTRY_SYMLINK
                                                             : BERTH_ENTRY_OTHER;
        entry.size = e.size;
        entry.mode = e.mode & 07777;
        entry.name = e.name.c_str();
        return on_entry(ctx, &entry) == 0;
      };
      // false: on_entry ended the listing early (BERTH_OK); with_agent_fs then closes the connection mid-reply.
      with_agent_fs(self, h, *meta, rel, true, [&](AgentClient& c, AgentDeadline) {
        return c.list(rel, agent::kKeepId, agent::kKeepId, emit_entry, milliseconds(self.config.request_timeout_ms));
      });
      return BERTH_OK;
    }
    const std::string workspace = meta->workspace;
    // The script's output is parsed as it arrives: one record is held at a time, so the driver's memory does not
    // grow with the directory (a listing of 100,000 entries used to be buffered, parsed and sorted whole). Entries
    // go out in the order the script finds them; the host orders and pages them.
    std::string record;
    bool stopped = false;   // on_entry asked to end the listing: BERTH_OK, not an error
    bool too_long = false;  // a record beyond kMaxRecordBytes (the script's output is not what it should be)
    auto emit = [&](std::string_view rec) -> bool {
      // <type>/<size>/<octal mode>/<name>: names cannot contain '/'
      size_t s1 = rec.find('/');
      size_t s2 = s1 == std::string_view::npos ? s1 : rec.find('/', s1 + 1);
      size_t s3 = s2 == std::string_view::npos ? s2 : rec.find('/', s2 + 1);
      if (s3 == std::string_view::npos) return true;
      berth_dir_entry entry;
      std::memset(&entry, 0, sizeof entry);
      entry.struct_size = sizeof entry;
      char t = s1 > 0 ? rec[0] : '?';
      entry.type = t == 'f'   ? BERTH_ENTRY_FILE
                   : t == 'd' ? BERTH_ENTRY_DIRECTORY
                   : t == 'l' ? BERTH_ENTRY_SYMLINK
                              : BERTH_ENTRY_OTHER;
      try {
        entry.size = std::stoull(std::string(rec.substr(s1 + 1, s2 - s1 - 1)));
        entry.mode =
            static_cast<std::uint32_t>(std::stoul(std::string(rec.substr(s2 + 1, s3 - s2 - 1)), nullptr, 8)) & 07777;
      } catch (...) {
        return true;
      }
      const std::string name(rec.substr(s3 + 1));
      if (name.empty() || name == "." || name == "..") return true;
      entry.name = name.c_str();
      if (on_entry(ctx, &entry) != 0) {
        stopped = true;
        return false;
      }
      return true;
    };
    HelperIo io;
    io.stdout_sink = [&](const std::uint8_t* data, size_t size) {
      std::string_view chunk(reinterpret_cast<const char*>(data), size);
      while (!chunk.empty()) {
        size_t end = chunk.find('\0');
        if (end == std::string_view::npos) {
          if (record.size() + chunk.size() > kMaxRecordBytes) {
            too_long = true;
            return false;
          }
          record.append(chunk);
          return true;
        }
        bool go_on;
        if (record.empty()) {
          go_on = emit(chunk.substr(0, end));
        } else {
          record.append(chunk.substr(0, end));
          go_on = emit(record);
          record.clear();
        }
        if (!go_on) return false;
        chunk.remove_prefix(end + 1);
      }
      return true;
    };
    try {
      run_files_script(self, h, "list", workspace, rel, {}, io);
    } catch (const Error& e) {
      if (stopped && e.code() == Errc::cancelled) return BERTH_OK;
      if (too_long && e.code() == Errc::cancelled)
        throw Error(Errc::internal, "a directory listing record is too long");
      throw;
    }
    if (!record.empty()) emit(record);  // a last record without its NUL
    return BERTH_OK;
  });
}

berth_status path_remove(berth_instance* inst, const char* handle, const char* path, berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    Instance& self = *instance_of(inst);
    std::string h = require_handle(handle);
    std::string rel = relative_path(path, false);
    auto meta = self.meta_of(h);
    if (meta->agent) {
      with_agent_fs(self, h, *meta, rel, false, [&](AgentClient& c, AgentDeadline deadline) {
        c.remove(rel, true, agent::kKeepId, agent::kKeepId, deadline);
        return 0;
      });
      return BERTH_OK;
    }
    const std::string workspace = meta->workspace;
    run_files_script(self, h, "remove", workspace, rel);
    return BERTH_OK;
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Interactive processes (ABI 1.3, driver.h rule 11), on agent sessions only. Each process has an agent connection
// of its own while it runs (the agent kills a connection's processes when it closes; after a clean EXIT the
// connection goes back to the session's pool), so a slow reader never holds up another process, and no thread is
// started per process: the host pulls with process_next_event, or waits on on_ready
// notifications from the instance's one ProcessWatcher thread.

namespace {

/** The driver side of one berth_process. */
struct AgentProcess {
  Instance* inst = nullptr;
  std::string container;
  std::shared_ptr<SessionMeta> meta;
  std::optional<AgentPool::Lease> lease;  // the dedicated connection; touched only under client_mutex
  std::uint32_t channel = 0;
  bool pty = false;
  bool watched = false;
  berth_process_ready_fn on_ready = nullptr;
  void* ready_ctx = nullptr;

  // The AgentClient is not thread-safe: process_next_event holds client_mutex while it waits; the other calls take
  // it when it is free, else queue their request in `pending`, which is sent between next_event's short waits. Whoever
  // holds the lock re-checks `pending` after unlocking (send_pending), so no request is left behind.
  std::mutex client_mutex;
  std::mutex pending_mutex;
  std::vector<std::function<void(AgentProcess&)>> pending;  // run under client_mutex
  std::uint64_t pending_stdin = 0;                          // stdin bytes in `pending`
  bool stdin_closed = false;                                // guarded by pending_mutex
  std::atomic<std::uint64_t> unsent{0};                     // stdin (and requests) the connection has not written yet
  std::atomic<bool> connected{false};  // false once the connection is closed (exit, kill by close, broken)
  std::atomic<bool> kill_requested{false};
  // An eventfd the connection's waits also watch (AgentClient::set_wake_fd): a request queued while
  // process_next_event holds the connection wakes it at once, so that wait needs no short polling slices (1,000
  // processes polling every 10 ms were 100,000 wake-ups a second on two cores).
  int wake_fd = -1;

  // Under client_mutex:
  bool broken = false;  // the connection failed: every later next_event is CONFLICT (`broken_reason`)
  std::string broken_reason;
  bool exited = false;
  berth_process_event exit_event{};

  /** However it goes away with the process still running (even a failed process_start), its connection is closed,
   *  never pooled with a process on it (release_process_connection pools it after EXIT). */
  ~AgentProcess() {
    if (lease) lease->discard();
    if (wake_fd >= 0) ::close(wake_fd);
  }

  // Used by process_next_event only (one call at a time per handle):
  std::string data;                               // the bytes of the last OUTPUT event
  std::deque<std::pair<int, std::string>> early;  // output produced here (a start failure's reason)
};

/** The most stdin a process may have waiting in the driver (queued or unsent) before write_stdin is UNAVAILABLE. */
constexpr std::uint64_t kMaxPendingStdin = 16ull << 20;

AgentProcess* process_of(berth_process* p) {
  if (!p) throw Error(Errc::invalid_argument, "process is NULL");
  return reinterpret_cast<AgentProcess*>(p);
}

void fill_exit(AgentProcess& p, const agent::ExitInfo& x) {
  p.exited = true;
  p.exit_event = berth_process_event{};
  p.exit_event.struct_size = sizeof(berth_process_event);
  p.exit_event.type = BERTH_PROCESS_EVENT_EXIT;
  p.exit_event.exit_code = x.signaled ? 128 + static_cast<int32_t>(x.code) : static_cast<int32_t>(x.code);
  p.exit_event.signal = x.signaled ? static_cast<int32_t>(x.code) : 0;
  p.exit_event.timed_out = x.timed_out ? 1 : 0;
  p.exit_event.killed = !x.timed_out && p.kill_requested ? 1 : 0;
  p.exit_event.output_dropped = x.output_dropped;
}

/** Ends `p`'s hold on its connection, under client_mutex: closed (the agent then kills what runs on it), or with
 *  `to_pool` (only after a clean EXIT: release_process_connection) given back to the session's pool. */
void close_process_connection(AgentProcess& p, bool to_pool = false) {
  if (p.watched) p.inst->process_watcher().unwatch(&p);  // before the fd number can be reused
  p.watched = false;
  if (p.lease && !to_pool) p.lease->discard();
  p.lease.reset();  // to_pool: given back (AgentPool::give_back clears the wake fd and refuses a busy connection)
  p.connected = false;
  p.unsent = 0;
}

/** Sends what `p` has queued; the caller holds p.client_mutex. A broken connection marks `p` broken. */
void drain_pending(AgentProcess& p) {
  std::vector<std::function<void(AgentProcess&)>> ops;
  std::uint64_t drained_stdin = 0;
  {
    std::lock_guard lock(p.pending_mutex);
    ops.swap(p.pending);
    drained_stdin = p.pending_stdin;
  }
  // Counted as pending until `unsent` holds them (so a concurrent write_stdin never sees them in neither).
  struct Uncount {
    AgentProcess& p;
    std::uint64_t n;
    ~Uncount() {
      std::lock_guard lock(p.pending_mutex);
      p.pending_stdin -= std::min(p.pending_stdin, n);
    }
  } uncount{p, drained_stdin};
  for (auto& op : ops) {
    if (p.broken || !p.lease) return;
    try {
      op(p);
    } catch (const AgentError& e) {
      p.broken = true;
      p.broken_reason = e.what();
    }
  }
  if (p.broken || !p.lease) return;
  try {
    (*p.lease)->flush();
    p.unsent = (*p.lease)->unsent();
    // flush() may have read this process's next events: the fd then looks idle to the watcher, so say it here.
    if (p.on_ready && (*p.lease)->has_event_for(p.channel)) p.on_ready(p.ready_ctx);
  } catch (const AgentError& e) {
    p.broken = true;
    p.broken_reason = e.what();
  }
}

/** After `p`'s EXIT (under client_mutex): nothing runs on its connection any more (the agent sends EXIT once the
 *  whole tree is gone), so the connection goes back to the session's pool for the next process or file operation,
 *  which then skips a connect and HELLO. Closed instead when a request of `p` is still queued: it would reach the
 *  agent after EXIT, and its answer could meet the next caller (the pool also closes a connection with anything in
 *  flight, AgentClient::quiescent). */
void release_process_connection(AgentProcess& p) {
  bool queued = false;
  {
    std::lock_guard lock(p.pending_mutex);
    queued = !p.pending.empty();
  }
  close_process_connection(p, !queued && !p.broken && !p.kill_requested);
}

/** Sends `p`'s queued requests unless another caller holds the connection (that caller sends them: it re-checks
 *  `pending` after unlocking, in this same function). */
void send_pending(AgentProcess& p) {
  for (;;) {
    {
      std::unique_lock lock(p.client_mutex, std::try_to_lock);
      if (!lock.owns_lock()) return;
      drain_pending(p);
    }
    std::lock_guard lock(p.pending_mutex);
    if (p.pending.empty()) return;
  }
}

/** Queues `op` for `p`'s connection and sends it now if no process_next_event holds the connection. */
void submit(AgentProcess& p, std::function<void(AgentProcess&)> op, std::uint64_t stdin_bytes = 0) {
  {
    std::lock_guard lock(p.pending_mutex);
    if (stdin_bytes && p.pending_stdin + p.unsent + stdin_bytes > kMaxPendingStdin) {
      throw Error(Errc::unavailable, "the process has 16 MiB of unread stdin waiting: wait for an event, then retry");
    }
    p.pending.push_back(std::move(op));
    p.pending_stdin += stdin_bytes;
  }
  send_pending(p);
  bool left = false;
  {
    std::lock_guard lock(p.pending_mutex);
    left = !p.pending.empty();
  }
  if (left && p.wake_fd >= 0) {
    // A process_next_event holds the connection: end its wait now, it sends the request before waiting again.
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto n = ::write(p.wake_fd, &one, sizeof one);
  }
}

/** Clears `p`'s wake-up (an eventfd counter) before the waiter looks at `pending` again. */
void clear_wake(AgentProcess& p) {
  if (p.wake_fd < 0) return;
  std::uint64_t count = 0;
  [[maybe_unused]] const auto n = ::read(p.wake_fd, &count, sizeof count);
}

/** Copies the fields of `e` that the caller's struct (struct_size) has room for. */
void deliver(berth_process_event* out, const berth_process_event& e) {
  const std::uint32_t size = std::min<std::uint32_t>(out->struct_size, sizeof(berth_process_event));
  berth_process_event copy = e;
  copy.struct_size = out->struct_size;
  std::memcpy(out, &copy, size);
}

}  // namespace

uint64_t instance_capabilities(berth_instance* inst) {
  if (!inst) return 0;
  const Instance& self = *reinterpret_cast<Instance*>(inst);
  // Processes need the agent: a driver configured without it (or without a binary to inject) offers none.
  return self.agent_binary.empty() ? kCapabilities & ~(BERTH_CAP_PROCESS | BERTH_CAP_PROCESS_PTY) : kCapabilities;
}

berth_status process_start(berth_instance* inst, const char* handle, const berth_process_spec* spec,
                           berth_process** out, berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    Instance& self = *instance_of(inst);
    std::string h = require_handle(handle);
    if (!spec || !out) throw Error(Errc::invalid_argument, "spec or out is NULL");
    berth_process_spec sp{};
    std::memcpy(&sp, spec, std::min<size_t>(spec->struct_size, sizeof sp));
    if (sp.flags & ~BERTH_PROCESS_PTY) throw Error(Errc::unsupported, "unknown process flags");
    if (sp.argc == 0 || !sp.argv) throw Error(Errc::invalid_argument, "argv is empty");
    std::vector<std::string> argv;
    for (size_t i = 0; i < sp.argc; ++i) {
      if (!sp.argv[i]) throw Error(Errc::invalid_argument, "argv[" + std::to_string(i) + "] is NULL");
      argv.emplace_back(sp.argv[i]);
    }
    if (argv[0].empty()) throw Error(Errc::invalid_argument, "argv[0] is empty");
    const std::vector<std::string> env = env_strings(sp.env, sp.env_count, "env");
    const std::string cwd = relative_path(sp.cwd ? sp.cwd : "", true);
    auto meta = self.meta_of(h);
    if (!meta->agent) {
      throw Error(Errc::unsupported,
                  "this session runs without the agent (Engine exec fallback): no interactive processes");
    }
    auto p = std::make_unique<AgentProcess>();
    p->inst = &self;
    p->container = h;
    p->meta = meta;
    p->pty = (sp.flags & BERTH_PROCESS_PTY) != 0;
    p->on_ready = sp.on_ready;
    p->ready_ctx = sp.ready_ctx;
    p->lease.emplace(lease_agent(self, h, *meta));
    AgentClient& client = **p->lease;
    bool start_sent = false;
    try {
      require_agent_cwd(self, client, cwd);
      agent::StartRequest req;
      req.argv = argv;
      req.env = merged_env(meta->env, env);
      req.cwd = cwd;
      req.timeout_ms = sp.timeout_ms;
      req.output_cap = UINT64_MAX;
      if (p->pty) {
        req.flags |= agent::kStartPty;
        req.rows = sp.pty_rows ? sp.pty_rows : 24;
        req.cols = sp.pty_cols ? sp.pty_cols : 80;
      }
      start_sent = true;
      const AgentStart st = start_on_agent(self, *meta, client, req);
      if (!st.started) {
        // As a shell reports it: a started process that exits 127 (not found) or 126 (cannot run).
        p->early.emplace_back(p->pty ? BERTH_STREAM_STDOUT : BERTH_STREAM_STDERR,
                              escape_word(argv[0]) + ": " + st.error + "\n");
        agent::ExitInfo x;
        x.code = st.sys_errno == ENOENT ? 127 : 126;
        fill_exit(*p, x);
        p->lease.reset();  // nothing runs on it: back to the pool
      } else {
        p->channel = st.channel;
        p->connected = true;
        p->wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (p->wake_fd >= 0) client.set_wake_fd(p->wake_fd);  // without one: short slices, as before
      }
    } catch (const AgentError& e) {
      p->lease->discard();
      if (e.code() == agent::ErrorCode::kProtocol) agent_failed(self, h, *meta, e.what(), start_sent);
      throw Error(Errc::internal, std::string("the agent refused the process: ") + e.what());
    } catch (const AgentTimeout& e) {
      p->lease->discard();
      throw Error(Errc::internal, std::string("the session's agent stopped answering: ") + e.what());
    } catch (...) {
      p->lease->discard();  // e.g. NOT_FOUND for the cwd: the connection is fine but simpler closed than reasoned about
      throw;
    }
    if (sp.on_ready) {
      if (p->lease) {
        p->watched = true;
        self.process_watcher().watch(p.get(), (*p->lease)->fd(), sp.on_ready, sp.ready_ctx);
      }
      if (!p->lease || (*p->lease)->has_event_for(p->channel)) sp.on_ready(sp.ready_ctx);
    }
    *out = reinterpret_cast<berth_process*>(p.release());
    return BERTH_OK;
  });
}

berth_status process_write_stdin(berth_instance* inst, berth_process* process, const uint8_t* data, size_t size,
                                 berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    AgentProcess& p = *process_of(process);
    if (size && !data) throw Error(Errc::invalid_argument, "data is NULL");
    {
      std::lock_guard lock(p.pending_mutex);
      if (p.stdin_closed) throw Error(Errc::conflict, "stdin is closed");
    }
    if (!size || !p.connected) return BERTH_OK;  // nothing to send, or the process is gone: discarded
    std::string bytes(reinterpret_cast<const char*>(data), size);
    submit(
        p, [bytes = std::move(bytes)](AgentProcess& q) { (*q.lease)->write_stdin(q.channel, bytes); }, size);
    return BERTH_OK;
  });
}

berth_status process_close_stdin(berth_instance* inst, berth_process* process, berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    AgentProcess& p = *process_of(process);
    {
      std::lock_guard lock(p.pending_mutex);
      if (p.stdin_closed) return BERTH_OK;
      p.stdin_closed = true;
    }
    if (!p.connected) return BERTH_OK;
    submit(p, [](AgentProcess& q) { (*q.lease)->close_stdin(q.channel); });
    return BERTH_OK;
  });
}

berth_status process_signal(berth_instance* inst, berth_process* process, int32_t signo, int32_t to_group,
                            berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    AgentProcess& p = *process_of(process);
    if (signo < 1 || signo > 64)
      throw Error(Errc::invalid_argument, "signal " + std::to_string(signo) + " is not 1-64");
    if (!p.connected) return BERTH_OK;
    submit(p, [signo, to_group](AgentProcess& q) { (*q.lease)->signal(q.channel, signo, to_group != 0); });
    return BERTH_OK;
  });
}

berth_status process_resize(berth_instance* inst, berth_process* process, uint16_t rows, uint16_t cols,
                            berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    AgentProcess& p = *process_of(process);
    if (!p.pty) throw Error(Errc::invalid_argument, "the process has no terminal");
    if (!rows || !cols) throw Error(Errc::invalid_argument, "rows and cols must be at least 1");
    if (!p.connected) return BERTH_OK;
    submit(p, [rows, cols](AgentProcess& q) { (*q.lease)->resize(q.channel, rows, cols); });
    return BERTH_OK;
  });
}

berth_status process_kill(berth_instance* inst, berth_process* process, berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    AgentProcess& p = *process_of(process);
    if (p.kill_requested.exchange(true) || !p.connected) return BERTH_OK;
    // By closing the process's connection: the agent kills every process of a connection that goes away, and nothing
    // queued ahead on it (stdin the process does not read, in berthd or in the socket) can hold a KILL frame back.
    submit(p, [](AgentProcess& q) {
      close_process_connection(q);
      agent::ExitInfo x;
      x.signaled = true;
      x.code = SIGKILL;
      fill_exit(q, x);
    });
    return BERTH_OK;
  });
}

berth_status process_next_event(berth_instance* inst, berth_process* process, uint32_t wait_ms,
                                berth_process_event* event, berth_error* err) {
  return guarded(inst, err, [&]() -> berth_status {
    AgentProcess& p = *process_of(process);
    if (!event || event->struct_size < offsetof(berth_process_event, exit_code)) {
      throw Error(Errc::invalid_argument, "event is NULL or too small");
    }
    berth_process_event ev{};
    ev.struct_size = sizeof ev;
    if (!p.early.empty()) {
      p.data = std::move(p.early.front().second);
      ev.type = BERTH_PROCESS_EVENT_OUTPUT;
      ev.stream = p.early.front().first;
      p.early.pop_front();
      ev.data = reinterpret_cast<const std::uint8_t*>(p.data.data());
      ev.size = p.data.size();
      deliver(event, ev);
      return BERTH_OK;
    }
    const auto deadline = AgentClock::now() + milliseconds(wait_ms);
    std::optional<AgentEvent> got;
    bool more = false;  // another event of this process is already decoded
    {
      std::unique_lock lock(p.client_mutex);
      for (;;) {
        clear_wake(p);  // before draining: a request queued after this point wakes the wait below again
        drain_pending(p);
        if (p.exited || p.broken || !p.lease) break;
        // Requests queued meanwhile (stdin, signals) wake the wait through wake_fd; without one, short waits send
        // them within about 10 ms.
        const auto slice = p.wake_fd >= 0 ? deadline : std::min(deadline, AgentClock::now() + milliseconds(10));
        try {
          got = (*p.lease)->next_event_for(p.channel, slice);
          p.unsent = (*p.lease)->unsent();
        } catch (const AgentError& e) {
          p.broken = true;
          p.broken_reason = e.what();
          break;
        }
        if (got || AgentClock::now() >= deadline) break;
      }
      if (p.broken && p.lease) {
        close_process_connection(p);
        // Once, without waiting: was it the session that ended?
        bool running = true;
        try {
          running = container_running(*p.inst, p.container);
        } catch (const std::exception&) {
        }
        p.broken_reason = running
                              ? "the connection to the session's agent broke while the process ran: " + p.broken_reason
                              : "the session ended while the process ran";
      }
      if (p.broken) throw Error(Errc::conflict, p.broken_reason);
      if (!got && p.exited) {
        deliver(event, p.exit_event);
        return BERTH_OK;
      }
      if (got && got->type == agent::MsgType::kExit) {
        fill_exit(p, got->exit);
        release_process_connection(p);  // nothing more will come on it for this process
      }
      more = p.lease && (*p.lease)->has_event_for(p.channel);
      if (p.watched) p.inst->process_watcher().rearm(&p);
    }
    send_pending(p);                                  // a request queued after the last drain above
    if (more && p.on_ready) p.on_ready(p.ready_ctx);  // already read from the fd: the watcher cannot see it
    if (!got) {
      ev.type = BERTH_PROCESS_EVENT_NONE;
    } else if (got->type == agent::MsgType::kOutput && !got->data.empty()) {
      p.data = std::move(got->data);
      ev.type = BERTH_PROCESS_EVENT_OUTPUT;
      ev.stream = got->stream == 2 ? BERTH_STREAM_STDERR : BERTH_STREAM_STDOUT;
      ev.data = reinterpret_cast<const std::uint8_t*>(p.data.data());
      ev.size = p.data.size();
    } else if (got->type == agent::MsgType::kExit) {
      ev = p.exit_event;
    } else if (got->type == agent::MsgType::kError) {
      // An ERROR about a SIGNAL, RESIZE or stdin request (the process had just exited, say) leaves the process
      // running: logged, not fatal. Only an ERROR about the process itself ends it.
      p.inst->log(BERTH_LOG_WARN, p.inst->event("process.request_refused").c_str(),
                  {{"container", p.container}, {"error", got->error.message}});
      ev.type = BERTH_PROCESS_EVENT_NONE;
    } else {
      ev.type = BERTH_PROCESS_EVENT_NONE;  // a message this driver does not use: skipped
    }
    deliver(event, ev);
    return BERTH_OK;
  });
}

void process_release(berth_instance* inst, berth_process* process) {
  if (!process) return;
  std::unique_ptr<AgentProcess> p(reinterpret_cast<AgentProcess*>(process));
  (void)inst;
  try {
    // Closing the process's own connection makes the agent kill its tree (docs/agent-protocol.md). A connection
    // pooled after EXIT (release_process_connection) is no longer the process's: nothing runs on it.
    std::lock_guard lock(p->client_mutex);
    close_process_connection(*p);
  } catch (...) {
  }
}

}  // namespace berth::engine::compat
