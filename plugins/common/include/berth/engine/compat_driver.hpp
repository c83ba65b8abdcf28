// A complete Berth driver for engines that speak the Docker Engine API (Docker itself, and Podman's
// Docker-compatible service). A concrete driver only supplies a Flavor (its name and defaults) and the table:
//
//   static berth_status configure(const berth_host_api* h, const char* c, berth_instance** o, berth_error* e) {
//     return berth::engine::compat::configure(kFlavor, h, c, o, e);
//   }
//   static const berth_driver_api kTable = {BERTH_DRIVER_API_INIT, "docker", "0.1.0",
//                                           berth::engine::compat::kCapabilities, configure,
//                                           BERTH_ENGINE_COMPAT_SLOTS};
//   BERTH_DRIVER_EXPORT(kTable)
//
// Every function below catches everything: no exception leaves it.
#pragma once

#include <berth/driver.h>

#include <cstdint>
#include <string>

namespace berth::engine::compat {

/** What differs between engines. */
struct Flavor {
  std::string name = "docker";                          // engine name in messages and the private label
  std::string default_socket = "/var/run/docker.sock";  // "socket" config default
  std::string max_api_version = "1.41";                 // newest API version spoken
  std::string pinned_api_version;                       // "" = negotiate from GET /version
  std::string network_mode_enabled = "bridge";          // NetworkMode when spec->network_enabled
  bool init = true;                                     // HostConfig.Init (docker-init / catatonit)
  /**
   * Main process: a sh "reaper" reading kill requests on its stdin (true), or `sleep infinity` (false). Either way
   * an exec that times out is killed by its token, the reaper only also works when no process can start.
   */
  bool reaper = true;
};

/** The driver's configuration (the JSON config section). */
struct Config {
  std::string socket;
  std::string api_version;  // optional pin
  std::uint32_t connect_timeout_ms = 2000;
  std::uint32_t request_timeout_ms = 60000;
  std::string default_user = "1000:1000";
  std::int64_t ulimit_nofile = 1024;
  // RLIMIT_NPROC counts every process of the container's uid on the whole host, not per container: all sessions run
  // as one uid (default_user), so this is one ceiling shared by every sandbox, and 1,024 let a few sandboxes at their
  // pids limit (or 1,000 concurrent execs across 100 sandboxes) starve all the others' forks (EAGAIN). The
  // per-sandbox bound is the profile's `pids` (PidsLimit); this only has to stay within the engine's own hard limit
  // (runc cannot raise it without capabilities: Podman then fails the start with "error setting rlimit type 6").
  std::int64_t ulimit_nproc = 8192;
  std::uint32_t stop_timeout_s = 2;
  // Size of the tmpfs every container gets at /tmp, in MiB (counted against the container's memory limit): writes
  // beyond it fail with ENOSPC instead of filling the host disk. 0 = no tmpfs (the image's /tmp, on the writable
  // layer), except with a read-only root filesystem, which always gets a 64 MiB one.
  std::uint32_t tmp_size_mb = 256;
  // berth-agent (docs/agent-protocol.md): every session runs the static agent as its main process and the driver
  // runs execs and file operations through it. `agent = false` keeps the Engine exec path for every session.
  bool agent = true;
  // The agent binary on the machine running berthd. "" = the first that exists of <driver .so
  // dir>/../../bin/berth-agent (a build tree), the installed <libexecdir>/berth/berth-agent,
  // /usr/lib/berth/berth-agent, /usr/bin/berth-agent.
  std::string agent_path;
  // Host directory holding one directory per session (<agent_run_dir>/<container name>, 0700, owned by the session
  // user), bind-mounted at /.berth/run; the agent's socket is agent.sock in it.
  std::string agent_run_dir = "/run/berth/agent";
  // How berthd reaches a session's agent (docs/driver-sdk.md, "Transports"):
  //   "socket" (default): a unix socket in agent_run_dir, bind-mounted into the container (the engine must run on
  //     berthd's machine; the engine daemon is not in the data path);
  //   "exec": each connection is one Engine API exec of the agent in --stdio mode on a hijacked stream (nothing but
  //     the Engine API connection is needed, as for an engine on another machine; the engine relays every byte).
  std::string agent_transport = "socket";
  // How the agent binary gets into the sessions:
  //   "bind" (default): agent_path is bind-mounted read-only at /.berth/agent (the file must be on the engine's
  //     machine: the engine resolves the path);
  //   "volume": the driver copies the binary into the engine's named volume berth-agent-<sha256 prefix> once, through
  //     the Engine API alone (an image import and a helper container), and sessions mount that volume read-only at
  //     /.berth. With agent_transport = "exec", nothing of berthd's machine is needed by the engine.
  std::string agent_delivery = "bind";
  // How long session_create waits for the agent to answer PING before it falls back to the Engine exec path.
  std::uint32_t agent_ready_timeout_ms = 10000;
};

/**
 * Parses the JSON config section over the flavor's defaults. Unknown keys and wrong types are errors
 * (BERTH_INVALID_ARGUMENT naming the key); the message goes to *error.
 */
berth_status parse_config(const Flavor& flavor, const char* json, Config* out, std::string* error);

inline constexpr std::uint64_t kCapabilities =
    BERTH_CAP_EXEC | BERTH_CAP_EXEC_STREAM | BERTH_CAP_EXEC_CANCEL | BERTH_CAP_FILES | BERTH_CAP_VOLUMES |
    BERTH_CAP_STATS | BERTH_CAP_READONLY_ROOTFS | BERTH_CAP_NETWORK_POLICY | BERTH_CAP_PROCESS | BERTH_CAP_PROCESS_PTY;

/** Labels this driver adds for itself (stripped from session_list results). */
inline constexpr const char* kLabelPrefix = "io.berth.driver.";
inline constexpr const char* kLabelDriver = "io.berth.driver.name";          // = Flavor::name
inline constexpr const char* kLabelWorkspace = "io.berth.driver.workspace";  // the workspace mount path
/** JSON array of the keys of the spec's labels: session_list returns those only (not the image's labels). */
inline constexpr const char* kLabelKeys = "io.berth.driver.label-keys";
/** How the driver reaches the session: "agent" (berth-agent over its socket) or "engine-exec" (the Engine API). */
inline constexpr const char* kLabelTransport = "io.berth.driver.transport";
/** The session's agent directory on the host (with kLabelTransport = "agent" over the "socket" transport). */
inline constexpr const char* kLabelAgentDir = "io.berth.driver.agent-dir";
/** With kLabelTransport = "agent": how the agent is reached, "socket" (kLabelAgentDir) or "exec" (Engine API execs
 *  of the agent in --stdio mode, Config::agent_transport). Absent on sessions made before it existed: "socket". */
inline constexpr const char* kLabelAgentTransport = "io.berth.driver.agent-transport";

berth_status configure(const Flavor& flavor, const berth_host_api* host, const char* config_json, berth_instance** out,
                       berth_error* err);
void destroy(berth_instance* inst);

berth_status volume_create(berth_instance* inst, const char* name, const berth_kv* labels, size_t label_count,
                           berth_error* err);
berth_status volume_remove(berth_instance* inst, const char* name, berth_error* err);
berth_status volume_exists(berth_instance* inst, const char* name, int32_t* exists, berth_error* err);

berth_status session_create(berth_instance* inst, const berth_session_spec* spec, berth_session_info* info,
                            berth_error* err);
berth_status session_inspect(berth_instance* inst, const char* handle, berth_session_info* info, berth_error* err);
berth_status session_stop(berth_instance* inst, const char* handle, uint32_t timeout_ms, berth_error* err);
berth_status session_remove(berth_instance* inst, const char* handle, berth_error* err);
berth_status session_list(berth_instance* inst, const berth_kv* filter, size_t filter_count,
                          berth_session_list_fn on_item, void* ctx, berth_error* err);
berth_status session_stats(berth_instance* inst, const char* handle, berth_session_stats* stats, berth_error* err);
/** ABI 1.3 instance_capabilities: kCapabilities without the process bits when the instance has no agent to inject. */
uint64_t instance_capabilities(berth_instance* inst);
/** ABI 1.3 interactive processes, on sessions that run the agent (UNSUPPORTED on an Engine exec fallback session):
 *  each process has an agent connection of its own; on_ready comes from one watcher thread per instance. */
berth_status process_start(berth_instance* inst, const char* handle, const berth_process_spec* spec,
                           berth_process** out, berth_error* err);
berth_status process_write_stdin(berth_instance* inst, berth_process* process, const uint8_t* data, size_t size,
                                 berth_error* err);
berth_status process_close_stdin(berth_instance* inst, berth_process* process, berth_error* err);
berth_status process_signal(berth_instance* inst, berth_process* process, int32_t signo, int32_t to_group,
                            berth_error* err);
berth_status process_resize(berth_instance* inst, berth_process* process, uint16_t rows, uint16_t cols,
                            berth_error* err);
berth_status process_kill(berth_instance* inst, berth_process* process, berth_error* err);
berth_status process_next_event(berth_instance* inst, berth_process* process, uint32_t wait_ms,
                                berth_process_event* event, berth_error* err);
void process_release(berth_instance* inst, berth_process* process);
/** ABI 1.2 image_exists: GET /images/{image}/json; 404 is "absent". Never pulls. */
berth_status image_exists(berth_instance* inst, const char* image, int32_t* exists, berth_error* err);

berth_status exec(berth_instance* inst, const char* handle, const berth_exec_request* request,
                  berth_output_fn on_output, void* output_ctx, const berth_cancel_token* cancel,
                  berth_exec_result* result, berth_error* err);

berth_status file_put(berth_instance* inst, const char* handle, const char* path, uint32_t mode, uint64_t size,
                      berth_read_fn source, void* source_ctx, berth_error* err);
berth_status file_get(berth_instance* inst, const char* handle, const char* path, berth_write_fn sink, void* sink_ctx,
                      berth_error* err);
berth_status dir_list(berth_instance* inst, const char* handle, const char* path, berth_dir_list_fn on_entry, void* ctx,
                      berth_error* err);
berth_status path_remove(berth_instance* inst, const char* handle, const char* path, berth_error* err);

/** Longest workspace-relative path the file calls accept, in bytes (the engine's exec argv carries it). */
inline constexpr std::size_t kMaxPathBytes = 4000;
/** Longest single path component (file name), in bytes: the Linux NAME_MAX. */
inline constexpr std::size_t kMaxNameBytes = 255;

/**
 * Normalises a workspace-relative path: drops "." and empty components; refuses absolute paths, "..", components
 * longer than kMaxNameBytes and paths longer than kMaxPathBytes. Any other byte (not UTF-8 too) is kept as it is;
 * NUL cannot occur (C string). Returns false with a reason in *error. Thread-safe (pure).
 */
bool normalize_relative_path(const char* path, std::string* out, std::string* error);

}  // namespace berth::engine::compat

/** The slots after `configure` of a berth_driver_api table, in order (destroy ... process_release). */
#define BERTH_ENGINE_COMPAT_SLOTS                                                                                    \
  berth::engine::compat::destroy, berth::engine::compat::volume_create, berth::engine::compat::volume_remove,        \
      berth::engine::compat::volume_exists, berth::engine::compat::session_create,                                   \
      berth::engine::compat::session_inspect, berth::engine::compat::session_stop,                                   \
      berth::engine::compat::session_remove, berth::engine::compat::session_list, berth::engine::compat::exec,       \
      berth::engine::compat::file_put, berth::engine::compat::file_get, berth::engine::compat::dir_list,             \
      berth::engine::compat::path_remove, berth::engine::compat::session_stats, berth::engine::compat::image_exists, \
      berth::engine::compat::instance_capabilities, berth::engine::compat::process_start,                            \
      berth::engine::compat::process_write_stdin, berth::engine::compat::process_close_stdin,                        \
      berth::engine::compat::process_signal, berth::engine::compat::process_resize,                                  \
      berth::engine::compat::process_kill, berth::engine::compat::process_next_event,                                \
      berth::engine::compat::process_release
