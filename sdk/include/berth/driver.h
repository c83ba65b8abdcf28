/*
 * berth/driver.h — the Berth driver ABI (plain C).
 *
 * A Berth driver is a shared library that runs sandboxes on some container runtime. The host (`berthd`)
 * loads it at start-up and talks to it only through the tables declared in this file.
 *
 * ABI RULES
 * ---------
 * 1. Entry points. BERTH_DRIVER_EXPORT(table) generates the driver's exported symbols and nothing else may be
 *    exported: `berth_driver_negotiate` (ABI >= 1.3, preferred by hosts >= 1.3) and `berth_driver_entry` (every
 *    version; what hosts < 1.3 and drivers built before 1.3 use). Both hand out a pointer to a static, immutable
 *    `berth_driver_api`. Build drivers with hidden visibility (-fvisibility=hidden); the macro marks them visible.
 * 2. Versioning. `abi_major` must equal the host's BERTH_ABI_VERSION_MAJOR.
 *    Two-way negotiation (ABI >= 1.3, as Vulkan's loader <-> ICD negotiation): the host calls
 *    berth_driver_negotiate with the newest minor it speaks; the driver answers the table and the minor it will
 *    speak (<= the host's minor and <= its table's abi_minor), or BERTH_UNSUPPORTED to refuse a host too old for
 *    it. The host then uses only the slots and struct fields of the agreed minor, whatever the table's own
 *    abi_minor and struct_size say, so a driver rebuilt against a newer header still loads on an older host.
 *    Without berth_driver_negotiate (a driver built before 1.3) the old one-way rule holds: the table's
 *    `abi_minor` must be <= the host's minor; an old driver always loads on a newer host.
 * 3. Growth. Every struct that crosses the boundary starts with `uint32_t struct_size` set by whoever filled it
 *    in. Tables and structs only grow at the end; a slot once released is frozen (never removed, never retyped).
 *    A reader copies min(struct_size, sizeof(own struct)) into a zeroed struct, so trailing fields a writer
 *    does not know read as 0/NULL, which means "not supported". The driver table must be at least
 *    BERTH_DRIVER_API_SIZE_1_0 bytes and no larger than the size its declared minor defines.
 * 4. Required slots. name, version, configure, destroy and every slot of ABI 1.0 are required (non-NULL).
 *    Slots added after 1.0 are optional: NULL means BERTH_UNSUPPORTED. The eight process_* slots of 1.3 come as a
 *    set: all of them or none.
 * 5. Ownership. Every pointer passed into a call is borrowed for the duration of that call only. Results come
 *    back through fixed-size buffers in caller-provided structs or through caller-provided callbacks
 *    (sinks/sources); nothing allocated by one side is freed by the other, except buffers obtained from
 *    berth_host_api.alloc, which are freed with berth_host_api.free. Output structs (session_info, exec_result,
 *    session_stats) are zeroed by the caller, which sets struct_size; the driver writes at most that many bytes.
 *    Callbacks that return int32_t stop the call early when they return non-zero: listings (session_list,
 *    dir_list) then end with BERTH_OK; data sinks and output callbacks make the call return BERTH_CANCELLED.
 *    A byte source that returns -1 makes file_put return BERTH_CANCELLED; one that ends before `size` bytes
 *    makes it return BERTH_INVALID_ARGUMENT; in both cases no partial file is left behind.
 * 6. Errors. Every call returns a berth_status. On failure the driver may describe the problem by calling
 *    host->set_error(err, message) (the message is copied by the host). BERTH_UNAVAILABLE is the only status
 *    the host treats as retryable. No C++ exception, longjmp or signal may cross the boundary.
 * 7. Threading. `configure` and `destroy` are serialized by the host, and no other call on an instance is in
 *    flight when it is destroyed (every process handle of the instance is released first). Every other call may
 *    be made concurrently from several host threads, on the same instance and on the same session; the driver
 *    must be thread-safe. Callbacks are invoked on the thread that made the call, before the call returns, with
 *    one exception: a process's `on_ready` notification (rule 11). Several instances may live in one process.
 * 8. Strings are NUL-terminated UTF-8, except paths, file names (berth_dir_entry.name), argv words, cwd and
 *    stdin: those are raw bytes (any byte but NUL; not necessarily UTF-8) and must be carried byte for byte,
 *    never converted or repaired. Byte buffers come with explicit lengths and may contain NUL.
 * 9. Paths given to file calls are relative to the session's workspace mount (e.g. "src/main.py"); the host
 *    validates them (and refuses NUL, which a C string cannot carry), and a driver must still refuse absolute
 *    paths, ".." escapes and paths whose symlinks resolve outside the workspace (BERTH_INVALID_ARGUMENT).
 *    Limits every driver enforces (BERTH_INVALID_ARGUMENT): a component of at most 255 bytes, a whole path of
 *    at most 4000 bytes.
 * 10. A session that is gone. BERTH_NOT_FOUND from exec or a file call means *nothing ran and nothing changed*:
 *    the session's container does not exist or is not running (or, for files, the path does not exist; for
 *    exec, the cwd does not exist). A driver never reports an engine's refusal to start a process in a dead
 *    session ("cannot exec in a stopped state") as a result or as the program's output. A session that ends
 *    while a call runs gives a result (the program's exit code, e.g. 137) or BERTH_CONFLICT, never NOT_FOUND, so
 *    that the host may replace the session and retry only after NOT_FOUND without running anything twice.
 * 11. Interactive processes (ABI 1.3, optional, BERTH_CAP_PROCESS): a pull model with deadlines, so that one host
 *    thread can serve thousands of processes. process_start returns an opaque driver-owned berth_process handle
 *    at once; nothing on it blocks except process_next_event, which waits at most `wait_ms` for the next event
 *    (an output chunk, or the exit) and returns BERTH_OK with type NONE when the wait ends without one. A driver
 *    may also call the spec's `on_ready(ready_ctx)` from any of its threads, whenever an event may have become
 *    available (spurious calls allowed; it must not call back into the driver and returns at once), so the host
 *    can wait for many processes in one place and then pull with wait_ms 0.
 *    Per handle: at most one process_next_event at a time. process_write_stdin, process_close_stdin,
 *    process_signal, process_resize and process_kill may run concurrently with it and with each other (from
 *    other threads: e.g. a cancel while a reader waits); they queue the request and return without waiting for
 *    the process. process_release must be the last call on a handle, with no other call on it in flight; it kills
 *    the process tree if it still runs. Calls on different handles, and on handles of different sessions, may
 *    run fully in parallel.
 * 12. Unknown values from a newer peer. An enum value a reader does not know is read as the type's documented
 *    fallback, never as "absent": a status as BERTH_INTERNAL (not retryable); a session state as
 *    BERTH_SESSION_UNKNOWN (the session exists in a state this side cannot name: never treated as MISSING, so
 *    never cleaned up for it); an entry type as BERTH_ENTRY_OTHER; an output stream as BERTH_STREAM_STDERR (the
 *    bytes are kept, off the program's stdout); a process event type as NONE (the event is consumed and skipped);
 *    a log level as INFO. Unknown capability bits are ignored. An unknown bit in a flags field the host sends
 *    (berth_process_spec.flags) is refused by the driver with BERTH_UNSUPPORTED.
 * 13. Capabilities may depend on configuration (ABI 1.3): the optional instance_capabilities slot returns the
 *    bits an instance really offers. It may only narrow the table's `capabilities` (the host ANDs the two), and
 *    the host uses the result for what it advertises (GET /meta) and for which optional slots it calls.
 *
 * VERSION HISTORY
 * ---------------
 *   1.0  Initial table: identity, configure/destroy, volumes, sessions, exec, files.
 *   1.1  Adds berth_driver_api.session_stats (optional).
 *        Clarified without a layout change: raw-byte paths and argv (rule 8), path limits (rule 9), NOT_FOUND
 *        means nothing ran (rule 10), timeout/cancel leave no process of the exec.
 *   1.2  Adds berth_driver_api.image_exists (optional): profiles created over the API name only images the engine
 *        has. berth_session_stats gains disk usage fields (workspace_bytes, rootfs_bytes): a 1.1 driver writes 32
 *        bytes of the struct and its disk fields read as 0 (unknown).
 *   1.3  Adds interactive processes (optional slots process_start ... process_release, rule 11; capabilities
 *        BERTH_CAP_PROCESS and BERTH_CAP_PROCESS_PTY), the optional instance_capabilities slot (rule 13), and two-way
 *        version negotiation through the new exported `berth_driver_negotiate` (rule 2; `berth_driver_entry`
 *        stays for older hosts, and older drivers keep using it alone). Defines how unknown enum values are read
 *        (rule 12) and adds BERTH_SESSION_UNKNOWN as the fallback session state.
 *        Later, documentation only (no layout or version change): berth_session_info.endpoint's convention
 *        "<transport>:<address>", whose scheme berthd reports as the session's transport.
 */
#ifndef BERTH_DRIVER_H
#define BERTH_DRIVER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BERTH_ABI_VERSION_MAJOR 1
#define BERTH_ABI_VERSION_MINOR 3

/** Name of the exported entry point every driver has (the one-way entry of ABI 1.0-1.2). */
#define BERTH_DRIVER_ENTRY_SYMBOL "berth_driver_entry"
/** Name of the exported two-way negotiation entry point (ABI >= 1.3; optional for drivers built earlier). */
#define BERTH_DRIVER_NEGOTIATE_SYMBOL "berth_driver_negotiate"

/* ---------------------------------------------------------------------------------------------------------- */
/* Status codes                                                                                                */

typedef int32_t berth_status;
enum {
  BERTH_OK = 0,
  BERTH_NOT_FOUND = 1,        /* the session, volume, path or exec does not exist */
  BERTH_INVALID_ARGUMENT = 2, /* the request is malformed or not allowed (e.g. path escape) */
  BERTH_CONFLICT = 3,         /* the object exists already or is in a state that forbids the call */
  BERTH_UNAVAILABLE = 4,      /* engine unreachable or busy: retryable */
  BERTH_TIMEOUT = 5,          /* the engine did not answer in time */
  BERTH_UNSUPPORTED = 6,      /* the driver does not implement this call or option */
  BERTH_INTERNAL = 7,         /* anything else */
  BERTH_CANCELLED = 8         /* the host cancelled the call (cancel token or a sink refused data) */
};

/* ---------------------------------------------------------------------------------------------------------- */
/* Capability bits (berth_driver_api.capabilities)                                                             */

#define BERTH_CAP_EXEC ((uint64_t)1 << 0)            /* exec with exit code */
#define BERTH_CAP_EXEC_STREAM ((uint64_t)1 << 1)     /* output chunks arrive while the process runs */
#define BERTH_CAP_EXEC_CANCEL ((uint64_t)1 << 2)     /* cancel tokens are honoured */
#define BERTH_CAP_FILES ((uint64_t)1 << 3)           /* file_put/file_get/dir_list/path_remove */
#define BERTH_CAP_VOLUMES ((uint64_t)1 << 4)         /* persistent workspace volumes */
#define BERTH_CAP_STATS ((uint64_t)1 << 5)           /* session_stats (ABI >= 1.1) */
#define BERTH_CAP_READONLY_ROOTFS ((uint64_t)1 << 6) /* berth_session_spec.read_only_rootfs honoured */
#define BERTH_CAP_NETWORK_POLICY ((uint64_t)1 << 7)  /* berth_session_spec.network_enabled honoured */
#define BERTH_CAP_PROCESS ((uint64_t)1 << 8)         /* interactive processes: the process_* slots (ABI >= 1.3) */
#define BERTH_CAP_PROCESS_PTY ((uint64_t)1 << 9)     /* process_start honours BERTH_PROCESS_PTY, process_resize */

/* ---------------------------------------------------------------------------------------------------------- */
/* Host services                                                                                               */

/** Opaque, host-owned error slot. Fill it with berth_host_api.set_error. */
typedef struct berth_error berth_error;
/** Opaque, host-owned cancellation token. Poll it with berth_host_api.is_cancelled. */
typedef struct berth_cancel_token berth_cancel_token;

typedef int32_t berth_log_level;
enum { BERTH_LOG_DEBUG = 0, BERTH_LOG_INFO = 1, BERTH_LOG_WARN = 2, BERTH_LOG_ERROR = 3 };

/** A key/value pair of strings (labels, environment, log fields). Both borrowed. */
typedef struct berth_kv {
  const char* key;
  const char* value;
} berth_kv;

/**
 * Services the host offers a driver instance. Passed to configure; valid until destroy returns.
 * Every function is thread-safe.
 */
typedef struct berth_host_api {
  uint32_t struct_size;
  uint32_t abi_major; /* the host's ABI version */
  uint32_t abi_minor;
  uint32_t reserved0;
  void* host_ctx; /* pass back as the first argument of log/monotonic_ns */
  /** Structured log line: `event` is a stable dotted name; fields are copied before return. */
  void (*log)(void* host_ctx, berth_log_level level, const char* event, const berth_kv* fields, size_t field_count);
  /** Monotonic clock in nanoseconds (injectable by the host; use it for every timeout). */
  uint64_t (*monotonic_ns)(void* host_ctx);
  /** Allocation for buffers handed across the boundary; free with `free`. Returns NULL on failure. */
  void* (*alloc)(size_t size);
  void (*free)(void* ptr);
  /** Records a human-readable failure message (copied) for the call that received `err`. NULL err is a no-op. */
  void (*set_error)(berth_error* err, const char* message);
  /** Non-zero once the host asked to cancel the call that received `token`. NULL token never cancels. */
  int32_t (*is_cancelled)(const berth_cancel_token* token);
} berth_host_api;

/* ---------------------------------------------------------------------------------------------------------- */
/* Sessions                                                                                                    */

/** Opaque driver instance, created by configure. */
typedef struct berth_instance berth_instance;

#define BERTH_HANDLE_MAX 128
#define BERTH_ENDPOINT_MAX 256

typedef int32_t berth_session_state;
enum {
  BERTH_SESSION_STARTING = 0,
  BERTH_SESSION_RUNNING = 1,
  BERTH_SESSION_EXITED = 2,
  BERTH_SESSION_MISSING = 3,
  BERTH_SESSION_UNKNOWN = 4 /* 1.3: exists, in a state the reader cannot name (rule 12); never means MISSING */
};

/** What to run. All pointers borrowed for the call. Zero/NULL means "driver default / no limit". */
typedef struct berth_session_spec {
  uint32_t struct_size;
  uint32_t reserved0;
  const char* session_id; /* host id (e.g. "sess-0123456789ab"); drivers derive container names from it */
  const char* image;
  const berth_kv* env;
  size_t env_count;
  const berth_kv* labels; /* drivers must attach them and return them from session_list */
  size_t label_count;
  int64_t nano_cpus;    /* 1e9 = one CPU */
  int64_t memory_bytes; /* hard limit; swap limited to the same */
  int64_t pids_limit;
  int32_t network_enabled;          /* 0: no network at all */
  int32_t read_only_rootfs;         /* non-zero: root filesystem read-only, writable tmpfs at /tmp */
  const char* workspace_volume;     /* volume name to mount, or NULL */
  const char* workspace_mount_path; /* e.g. "/workspace" */
  const char* user;                 /* "uid[:gid]" or a name; NULL = the driver's configured default */
  const char* working_dir;          /* the main process's cwd; NULL = workspace_mount_path. Exec uses its own cwd */
} berth_session_spec;

/** Filled by session_create / session_inspect. The caller zeroes it and sets struct_size. */
typedef struct berth_session_info {
  uint32_t struct_size;
  berth_session_state state;
  int32_t exit_code; /* valid when state == EXITED */
  int32_t reserved0;
  char handle[BERTH_HANDLE_MAX]; /* driver's id for the session (e.g. container id) */
  /* optional: how the host side reaches the session, "" if none. By convention "<transport>:<address>": berthd
   * reports the part before the first ':' as the session's transport (docker/podman: "agent:unix:<socket path>" or
   * "engine-exec:<container id>"). */
  char endpoint[BERTH_ENDPOINT_MAX];
} berth_session_info;

/** One item of session_list. Valid only during the callback. */
typedef struct berth_session_listing {
  uint32_t struct_size;
  berth_session_state state;
  const char* handle;
  const berth_kv* labels;
  size_t label_count;
} berth_session_listing;

/** Return 0 to continue, non-zero to stop the listing early. */
typedef int32_t (*berth_session_list_fn)(void* ctx, const berth_session_listing* item);

/**
 * Resource usage of a session (ABI 1.1; the disk fields since 1.2). The caller zeroes it and sets struct_size; a
 * field the driver does not fill stays 0, which means "unknown", never "empty".
 */
typedef struct berth_session_stats {
  uint32_t struct_size;
  uint32_t reserved0;
  uint64_t memory_bytes; /* current memory use of the session's processes, bytes */
  uint64_t cpu_time_ns;  /* CPU time consumed so far, nanoseconds */
  uint64_t pids;         /* live processes */
  /* --- ABI 1.2 --- */
  /** Disk space the workspace mount holds (allocated blocks, bytes, as `du -sx --block-size=1` counts), as far as
   *  the measurement can see it; 0 = unknown. May take a walk of the workspace: the slowest field of the call. */
  uint64_t workspace_bytes;
  /** Bytes the session wrote to its container's own writable layer (outside the workspace and any tmpfs; the
   *  engines' SizeRw); 0 = unknown or nothing written. Discarded when the session is removed. */
  uint64_t rootfs_bytes;
} berth_session_stats;

/* ---------------------------------------------------------------------------------------------------------- */
/* Exec                                                                                                        */

/** Output stream of a process. An unknown value is read as BERTH_STREAM_STDERR (rule 12). */
typedef int32_t berth_stream;
enum { BERTH_STREAM_STDOUT = 1, BERTH_STREAM_STDERR = 2 };

typedef struct berth_exec_request {
  uint32_t struct_size;
  uint32_t timeout_ms;     /* 0 = no timeout */
  const char* const* argv; /* argv[0] is the program; searched in the session's PATH */
  size_t argc;
  const berth_kv* env;
  size_t env_count;
  const char* cwd;           /* relative to the workspace mount; NULL or "" = the workspace itself */
  const uint8_t* stdin_data; /* fed to the process, then stdin is closed; may be NULL */
  size_t stdin_size;
} berth_exec_request;

/**
 * Receives output while the process runs. `data` is borrowed for the callback. Return 0 to continue; non-zero
 * asks the driver to stop the process and return BERTH_CANCELLED.
 */
typedef int32_t (*berth_output_fn)(void* ctx, berth_stream stream, const uint8_t* data, size_t size);

typedef struct berth_exec_result {
  uint32_t struct_size;
  int32_t exit_code; /* -1 when unknown (timed out, cancelled) */
  int32_t timed_out; /* non-zero: killed because timeout_ms passed; the call still returns BERTH_OK */
  int32_t cancelled; /* non-zero: killed because the token was cancelled; the call returns BERTH_CANCELLED */
} berth_exec_result;

/* ---------------------------------------------------------------------------------------------------------- */
/* Files                                                                                                       */

/** Source of bytes: fill up to `capacity` bytes, return the count, 0 at end, -1 on error. */
typedef int64_t (*berth_read_fn)(void* ctx, uint8_t* buffer, size_t capacity);
/** Sink of bytes: return 0 to continue, non-zero to abort (the call then returns BERTH_CANCELLED). */
typedef int32_t (*berth_write_fn)(void* ctx, const uint8_t* data, size_t size);

/** Kind of a directory entry. An unknown value is read as BERTH_ENTRY_OTHER (rule 12). */
typedef int32_t berth_entry_type;
enum { BERTH_ENTRY_FILE = 0, BERTH_ENTRY_DIRECTORY = 1, BERTH_ENTRY_SYMLINK = 2, BERTH_ENTRY_OTHER = 3 };

/** One item of dir_list. Valid only during the callback. */
typedef struct berth_dir_entry {
  uint32_t struct_size;
  berth_entry_type type;
  const char* name; /* base name, never "." or ".." */
  uint64_t size;
  uint32_t mode; /* permission bits */
  uint32_t reserved0;
} berth_dir_entry;

typedef int32_t (*berth_dir_list_fn)(void* ctx, const berth_dir_entry* entry);

/* ---------------------------------------------------------------------------------------------------------- */
/* Interactive processes (ABI 1.3, rule 11)                                                                    */

/** Opaque, driver-owned handle of one started process; valid from process_start until process_release. */
typedef struct berth_process berth_process;

/**
 * "An event of this process may be ready": called by the driver from any thread, possibly concurrently and
 * spuriously, until process_release returns. Must return at once and must not call into the driver.
 */
typedef void (*berth_process_ready_fn)(void* ready_ctx);

/** berth_process_spec.flags: run the process on a new pseudo-terminal (stdin/stdout/stderr all on it). */
#define BERTH_PROCESS_PTY ((uint32_t)1 << 0)

/** What process_start runs. All pointers borrowed for the call (on_ready/ready_ctx: until process_release). */
typedef struct berth_process_spec {
  uint32_t struct_size;
  uint32_t flags;          /* BERTH_PROCESS_*; a bit the driver does not know is BERTH_UNSUPPORTED */
  const char* const* argv; /* argv[0] is the program; searched in the session's PATH (raw bytes, rule 8) */
  size_t argc;
  const berth_kv* env; /* overlaid on the session's environment */
  size_t env_count;
  const char* cwd;     /* relative to the workspace mount; NULL or "" = the workspace itself */
  uint32_t timeout_ms; /* 0 = none; when it passes the driver kills the whole process tree (exit.timed_out) */
  uint16_t pty_rows;   /* with BERTH_PROCESS_PTY: terminal size in characters; 0 = 24 rows, 80 columns */
  uint16_t pty_cols;
  berth_process_ready_fn on_ready; /* optional (NULL: the host only waits in process_next_event) */
  void* ready_ctx;
} berth_process_spec;

/** What process_next_event delivers. An unknown value is read as NONE and skipped (rule 12). */
typedef int32_t berth_process_event_type;
enum {
  BERTH_PROCESS_EVENT_NONE = 0,   /* the wait ended without an event: call again */
  BERTH_PROCESS_EVENT_OUTPUT = 1, /* a chunk of output: stream, data, size */
  BERTH_PROCESS_EVENT_EXIT = 2    /* the process ended: the last event; repeated by every later call */
};

/**
 * One event, filled by process_next_event. The caller zeroes it and sets struct_size. `data` points into memory
 * the driver owns: valid until the next process_next_event or process_release on the same handle (never freed by
 * the host). Every OUTPUT event comes before the EXIT event; with a PTY the output is one stream (STDOUT).
 */
typedef struct berth_process_event {
  uint32_t struct_size;
  berth_process_event_type type;
  berth_stream stream; /* OUTPUT */
  uint32_t reserved0;
  const uint8_t* data; /* OUTPUT: at least one byte */
  size_t size;
  int32_t exit_code;       /* EXIT: 0-255 if it exited; 128 + signal if a signal ended it */
  int32_t signal;          /* EXIT: the (Linux) signal number that ended it, 0 if it exited on its own */
  int32_t timed_out;       /* EXIT: non-zero if timeout_ms passed and the driver killed it */
  int32_t killed;          /* EXIT: non-zero if process_kill (or the session's end) killed it */
  uint64_t output_dropped; /* EXIT: output bytes the driver had to discard (its own buffer limit); 0 = none */
} berth_process_event;

/* ---------------------------------------------------------------------------------------------------------- */
/* The driver table                                                                                            */

typedef struct berth_driver_api {
  uint32_t struct_size; /* sizeof(berth_driver_api) as the driver was compiled, see BERTH_DRIVER_API_INIT */
  uint32_t abi_major;
  uint32_t abi_minor;
  uint32_t reserved0;
  const char* name;    /* short identifier, e.g. "docker" */
  const char* version; /* the driver's own version, e.g. "0.3.1" */
  uint64_t capabilities;

  /* --- lifecycle of an instance -------------------------------------------------------------------- */
  /**
   * Creates an instance from the driver's config section (a JSON object, "{}" if empty). `host` stays valid
   * until destroy. On success stores a non-NULL instance in *out.
   */
  berth_status (*configure)(const berth_host_api* host, const char* config_json, berth_instance** out,
                            berth_error* err);
  /** Releases the instance. Sessions and volumes it created are left running. */
  void (*destroy)(berth_instance* inst);

  /* --- volumes (workspaces) ------------------------------------------------------------------------ */
  /** Creates a named volume; CONFLICT if it exists. */
  berth_status (*volume_create)(berth_instance* inst, const char* name, const berth_kv* labels, size_t label_count,
                                berth_error* err);
  /** Removes a volume; NOT_FOUND if absent; CONFLICT if in use. */
  berth_status (*volume_remove)(berth_instance* inst, const char* name, berth_error* err);
  /** Sets *exists to 1 or 0. */
  berth_status (*volume_exists)(berth_instance* inst, const char* name, int32_t* exists, berth_error* err);

  /* --- sessions ------------------------------------------------------------------------------------ */
  /**
   * Creates and starts a session; returns once it is running (info->state RUNNING) or failed, leaving nothing
   * behind on failure. Never pulls images: a missing image is INVALID_ARGUMENT, a missing workspace volume is
   * NOT_FOUND, a name clash with an existing session is CONFLICT.
   */
  berth_status (*session_create)(berth_instance* inst, const berth_session_spec* spec, berth_session_info* info,
                                 berth_error* err);
  /** Reports the state; a session that does not exist is BERTH_OK with state MISSING. */
  berth_status (*session_inspect)(berth_instance* inst, const char* handle, berth_session_info* info, berth_error* err);
  /** Stops the session's processes (graceful for up to timeout_ms, then kill). Idempotent; NOT_FOUND if absent. */
  berth_status (*session_stop)(berth_instance* inst, const char* handle, uint32_t timeout_ms, berth_error* err);
  /** Removes a (stopped or running) session. NOT_FOUND if absent. Never removes the workspace volume. */
  berth_status (*session_remove)(berth_instance* inst, const char* handle, berth_error* err);
  /** Lists sessions carrying every label in `filter` (all sessions of this driver if filter_count is 0). */
  berth_status (*session_list)(berth_instance* inst, const berth_kv* filter, size_t filter_count,
                               berth_session_list_fn on_item, void* ctx, berth_error* err);

  /* --- exec ---------------------------------------------------------------------------------------- */
  /**
   * Runs a process in the session, streaming output to on_output, and fills *result. A process that exits is
   * BERTH_OK whatever its exit code; a timeout is BERTH_OK with result->timed_out set; a cancelled token (or an
   * on_output that returned non-zero) kills the process and returns BERTH_CANCELLED. `cancel` may be NULL.
   * Timeout and cancel kill every process the exec started, however it detached (new session, double fork,
   * cleared environment), never the session. A program that cannot be started is BERTH_OK with exit code 127
   * (not found) or 126 (not executable) and the reason on stderr; a missing cwd is NOT_FOUND; a session that is
   * not running is NOT_FOUND (nothing ran, rule 10). Large programs belong on stdin, not in argv (the kernel
   * caps one argument at 128 KiB). Paths must resolve inside the workspace after following symlinks (INVALID_ARGUMENT
   * otherwise).
   */
  berth_status (*exec)(berth_instance* inst, const char* handle, const berth_exec_request* request,
                       berth_output_fn on_output, void* output_ctx, const berth_cancel_token* cancel,
                       berth_exec_result* result, berth_error* err);

  /* --- files (paths relative to the workspace) ----------------------------------------------------- */
  /** Writes a file of exactly `size` bytes read from `source`, creating parent directories. */
  berth_status (*file_put)(berth_instance* inst, const char* handle, const char* path, uint32_t mode, uint64_t size,
                           berth_read_fn source, void* source_ctx, berth_error* err);
  /** Streams a regular file into `sink`. NOT_FOUND if absent; INVALID_ARGUMENT if it is not a regular file. */
  berth_status (*file_get)(berth_instance* inst, const char* handle, const char* path, berth_write_fn sink,
                           void* sink_ctx, berth_error* err);
  /** Lists a directory's entries. NOT_FOUND if absent; INVALID_ARGUMENT if not a directory. */
  berth_status (*dir_list)(berth_instance* inst, const char* handle, const char* path, berth_dir_list_fn on_entry,
                           void* ctx, berth_error* err);
  /** Removes a file, or a directory with everything below it. NOT_FOUND if absent. */
  berth_status (*path_remove)(berth_instance* inst, const char* handle, const char* path, berth_error* err);

  /* --- ABI 1.1 ------------------------------------------------------------------------------------- */
  /** Optional: current resource usage of a running session; CONFLICT if it is not running. Since 1.2 it also
   *  reports disk usage (berth_session_stats.workspace_bytes, rootfs_bytes), which the host's disk limits use. */
  berth_status (*session_stats)(berth_instance* inst, const char* handle, berth_session_stats* stats, berth_error* err);

  /* --- ABI 1.2 ------------------------------------------------------------------------------------- */
  /**
   * Optional: sets *exists to 1 if the engine holds `image` (a reference as a profile names it, e.g.
   * "berth/python:3.11") locally, 0 if not. Never pulls. INVALID_ARGUMENT for a reference the engine refuses.
   */
  berth_status (*image_exists)(berth_instance* inst, const char* image, int32_t* exists, berth_error* err);

  /* --- ABI 1.3 ------------------------------------------------------------------------------------- */
  /**
   * Optional (rule 13): the capability bits this configured instance offers; the host ANDs them with the table's.
   * Called after configure, whenever the host decides what to advertise or call. Thread-safe, never blocks.
   */
  uint64_t (*instance_capabilities)(berth_instance* inst);
  /**
   * Optional (BERTH_CAP_PROCESS, rule 11): starts a process in the session and stores a handle in *out; returns
   * without waiting for output or exit. Errors as exec: a session that is not running or a missing cwd is
   * NOT_FOUND (nothing ran); a program that cannot be started is a started process whose EXIT is 127 / 126 with
   * the reason on stderr; BERTH_PROCESS_PTY without BERTH_CAP_PROCESS_PTY is UNSUPPORTED. Timeout and
   * process_kill kill every process it started, however it detached (new session, double fork, env -i).
   */
  berth_status (*process_start)(berth_instance* inst, const char* handle, const berth_process_spec* spec,
                                berth_process** out, berth_error* err);
  /**
   * Optional: queues `size` bytes (copied before return) for the process's stdin; never waits for the process to
   * read them. A driver buffers at least 8 MiB of unread stdin per process; beyond its limit it returns
   * BERTH_UNAVAILABLE having taken nothing (retry after the next event). CONFLICT once stdin is closed; after
   * the process exited the bytes are discarded (BERTH_OK).
   */
  berth_status (*process_write_stdin)(berth_instance* inst, berth_process* process, const uint8_t* data, size_t size,
                                      berth_error* err);
  /** Optional: end of stdin once the queued bytes are delivered (PTY: the terminal's EOF character). Idempotent. */
  berth_status (*process_close_stdin)(berth_instance* inst, berth_process* process, berth_error* err);
  /**
   * Optional: sends the Linux signal `signo` (1-64) to the process, or with `to_group` non-zero to its whole process
   * group. INVALID_ARGUMENT for another number; BERTH_OK (nothing happens) once it exited.
   */
  berth_status (*process_signal)(berth_instance* inst, berth_process* process, int32_t signo, int32_t to_group,
                                 berth_error* err);
  /** Optional: new terminal size of a PTY process (rows, cols >= 1); INVALID_ARGUMENT without a PTY. */
  berth_status (*process_resize)(berth_instance* inst, berth_process* process, uint16_t rows, uint16_t cols,
                                 berth_error* err);
  /** Optional: kills the whole process tree now (as a timeout does); EXIT (killed) follows. Idempotent. */
  berth_status (*process_kill)(berth_instance* inst, berth_process* process, berth_error* err);
  /**
   * Optional: waits at most `wait_ms` (0 = do not wait) for the next event and fills *event (rule 11; see
   * berth_process_event for who owns its data). BERTH_OK with type NONE when the wait ends first. A session
   * that breaks the process's stream may give BERTH_CONFLICT instead of an EXIT (as exec, rule 10).
   */
  berth_status (*process_next_event)(berth_instance* inst, berth_process* process, uint32_t wait_ms,
                                     berth_process_event* event, berth_error* err);
  /** Optional (required with process_start): kills the process if it still runs and frees the handle. */
  void (*process_release)(berth_instance* inst, berth_process* process);
} berth_driver_api;

/** Size of the table as ABI 1.0 defined it: the smallest table a host accepts. */
#define BERTH_DRIVER_API_SIZE_1_0 ((uint32_t)offsetof(berth_driver_api, session_stats))
/** Size of the table as ABI 1.1 defined it. */
#define BERTH_DRIVER_API_SIZE_1_1 ((uint32_t)offsetof(berth_driver_api, image_exists))
/** Size of the table as ABI 1.2 defined it. */
#define BERTH_DRIVER_API_SIZE_1_2 ((uint32_t)offsetof(berth_driver_api, instance_capabilities))
/** Size of the table as ABI 1.3 defines it. */
#define BERTH_DRIVER_API_SIZE_1_3 ((uint32_t)sizeof(berth_driver_api))

/** Initialises the header fields of a driver table: `static const berth_driver_api t = { BERTH_DRIVER_API_INIT, ...`.
 */
#define BERTH_DRIVER_API_INIT (uint32_t)sizeof(berth_driver_api), BERTH_ABI_VERSION_MAJOR, BERTH_ABI_VERSION_MINOR, 0

/** Signature of `berth_driver_entry`. The host passes its ABI version; return NULL to refuse it. */
typedef const berth_driver_api* (*berth_driver_entry_fn)(uint32_t host_abi_major, uint32_t host_abi_minor);

/** The two-way negotiation (rule 2), filled in by the host (in) and the driver (out). */
typedef struct berth_negotiation {
  uint32_t struct_size;        /* in: sizeof as the host was compiled */
  uint32_t host_abi_major;     /* in: BERTH_ABI_VERSION_MAJOR of the host */
  uint32_t host_abi_minor;     /* in: the newest minor the host speaks */
  uint32_t abi_minor;          /* out: the minor the driver will speak (<= host_abi_minor, <= api->abi_minor) or, with
                                  BERTH_UNSUPPORTED, the oldest minor it could speak */
  const berth_driver_api* api; /* out: the driver's static table */
} berth_negotiation;

/**
 * Signature of `berth_driver_negotiate`: BERTH_OK with `abi_minor` and `api` set, or BERTH_UNSUPPORTED to refuse
 * the host (another major, or a minor older than the driver can speak). Never blocks; thread-safe.
 */
typedef berth_status (*berth_driver_negotiate_fn)(berth_negotiation* negotiation);

/**
 * The negotiation BERTH_DRIVER_EXPORT uses: same major, then the older of the host's minor and the table's. A
 * driver that needs a newer host than that writes its own negotiate function and answers BERTH_UNSUPPORTED.
 */
static inline berth_status berth_negotiate_default(berth_negotiation* negotiation, const berth_driver_api* table) {
  if (negotiation == NULL || negotiation->struct_size < (uint32_t)sizeof(berth_negotiation)) {
    return BERTH_INVALID_ARGUMENT;
  }
  negotiation->api = table;
  negotiation->abi_minor =
      table->abi_minor < negotiation->host_abi_minor ? table->abi_minor : negotiation->host_abi_minor;
  return negotiation->host_abi_major == table->abi_major ? BERTH_OK : BERTH_UNSUPPORTED;
}

#if defined(_WIN32)
#define BERTH_DRIVER_VISIBLE __declspec(dllexport)
#else
#define BERTH_DRIVER_VISIBLE __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
#define BERTH_DRIVER_EXTERN_C extern "C"
#else
#define BERTH_DRIVER_EXTERN_C
#endif

/**
 * Defines the driver's entry points for `table` (a `berth_driver_api` object with static storage): the one-way
 * `berth_driver_entry` for hosts before 1.3, which always gets the table back so that the host can name the exact
 * version mismatch in its error, and `berth_driver_negotiate` (berth_negotiate_default). Use once per driver
 * library, at file scope.
 */
#define BERTH_DRIVER_EXPORT(table)                                                                                 \
  BERTH_DRIVER_EXTERN_C BERTH_DRIVER_VISIBLE const berth_driver_api* berth_driver_entry(uint32_t host_abi_major,   \
                                                                                        uint32_t host_abi_minor);  \
  BERTH_DRIVER_EXTERN_C BERTH_DRIVER_VISIBLE const berth_driver_api* berth_driver_entry(uint32_t host_abi_major,   \
                                                                                        uint32_t host_abi_minor) { \
    (void)host_abi_major;                                                                                          \
    (void)host_abi_minor;                                                                                          \
    return &(table);                                                                                               \
  }                                                                                                                \
  BERTH_DRIVER_EXTERN_C BERTH_DRIVER_VISIBLE berth_status berth_driver_negotiate(berth_negotiation* negotiation);  \
  BERTH_DRIVER_EXTERN_C BERTH_DRIVER_VISIBLE berth_status berth_driver_negotiate(berth_negotiation* negotiation) { \
    return berth_negotiate_default(negotiation, &(table));                                                         \
  }

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* BERTH_DRIVER_H */
