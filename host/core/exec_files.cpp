// Exec and files: every call that runs inside a sandbox's session (with_session: in-use marking, one replacement
// of a dead session when nothing ran), the execution history, and the file operations.
#include <algorithm>

#include "core/ids.hpp"
#include "core/limits.hpp"
#include "core/log.hpp"
#include "core/paths.hpp"
#include "core/sandbox_service.hpp"
#include "core/sandbox_service_internal.hpp"
#include "core/with_session.hpp"

namespace berth::core {

using namespace service_internal;
using namespace std::chrono_literals;

namespace {

/** Appends to `out` up to `cap` bytes; remembers whether anything was dropped. */
struct CappedBuffer {
  std::string data;
  std::size_t cap;
  bool truncated = false;
  void append(std::string_view chunk) {
    if (data.size() >= cap) {
      truncated = truncated || !chunk.empty();
      return;
    }
    std::size_t room = cap - data.size();
    if (chunk.size() > room) truncated = true;
    data.append(chunk.substr(0, room));
  }
  std::string finish() {
    if (truncated) data += "\n[output truncated]";
    return std::move(data);
  }
};

}  // namespace

// ---- exec and files -----------------------------------------------------------------------------------------------

std::optional<ExecResult> SandboxService::exec_as_process(const std::string& handle, const ExecRequest& rq,
                                                          const OutputSink& on_output, const CancelToken& token) {
  if (token.cancelled()) throw DriverError(DriverErrc::cancelled, "the exec was cancelled");
  ProcessSpec spec;
  spec.argv = rq.argv;
  spec.env = rq.env;
  spec.cwd = rq.cwd;
  spec.timeout = rq.timeout;
  std::unique_ptr<Process> process;
  try {
    process = driver_.process_start(handle, spec);
  } catch (const DriverError& e) {
    if (e.code() == DriverErrc::unsupported) return std::nullopt;  // e.g. an engine session without the agent
    throw;
  }
  // The driver kills the process tree at spec.timeout and reports it; this backstop only guards against a driver
  // that never sends the exit event.
  const auto backstop = std::chrono::steady_clock::now() + rq.timeout + 30s;
  const std::string_view input = rq.stdin_data;
  std::size_t fed = 0;
  bool stdin_open = true;
  constexpr std::size_t kStdinChunk = 1 << 20;
  for (;;) {
    // Feed stdin as far as the driver takes it; a full buffer (unavailable) is retried after the next event.
    while (stdin_open) {
      if (fed == input.size()) {
        process->close_stdin();
        stdin_open = false;
        break;
      }
      const auto chunk = input.substr(fed, kStdinChunk);
      try {
        process->write_stdin(chunk);
        fed += chunk.size();
      } catch (const DriverError& e) {
        if (e.code() == DriverErrc::unavailable) break;
        if (e.code() == DriverErrc::cancelled || e.code() == DriverErrc::internal) throw;
        // The process no longer reads (it exited or closed stdin): its exit event tells the rest.
        log::debug("exec.stdin_refused", {{"session", handle}, {"error", e.what()}});
        stdin_open = false;
      }
    }
    if (token.cancelled()) {
      process->kill();
      throw DriverError(DriverErrc::cancelled, "the exec was cancelled");
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= backstop) {
      process->kill();
      log::warn("exec.process_backstop", {{"session", handle}});
      ExecResult late;
      late.timed_out = true;
      return late;
    }
    // Short waits while stdin is still being fed (room comes with events or time); otherwise wake up for the cancel
    // token a few times a second. The pull runs on this (the request's) thread: no thread per exec.
    const auto wait = stdin_open
                          ? 10ms
                          : std::min<std::chrono::milliseconds>(
                                250ms, std::chrono::duration_cast<std::chrono::milliseconds>(backstop - now) + 1ms);
    ProcessEvent event;
    try {
      event = process->next_event(wait);
    } catch (const DriverError& e) {
      if (e.code() != DriverErrc::conflict) throw;
      // The process's connection broke, or its session ended, after it started: the program was killed (the agent
      // kills what it started when its connection closes). That is its result (137), never a second run; the
      // exit-code check below retires a session that died with it. A program's own `kill -9 -1` ends this way with
      // the container still running (engine.*: "kill -9 -1 then exec again succeeds").
      log::warn("exec.process_connection_lost", {{"session", handle}, {"error", e.what()}});
      ExecResult killed;
      killed.exit_code = 128 + 9;
      return killed;
    }
    if (event.kind == ProcessEvent::Kind::output) {
      if (!on_output(event.stream, event.data)) {
        process->kill();
        throw DriverError(DriverErrc::cancelled, "the output consumer ended the exec");
      }
    } else if (event.kind == ProcessEvent::Kind::exit) {
      if (event.exit.output_dropped > 0) {
        log::warn("exec.output_dropped", {{"session", handle}, {"bytes", std::to_string(event.exit.output_dropped)}});
      }
      ExecResult result;
      result.exit_code = event.exit.exit_code;
      result.timed_out = event.exit.timed_out;
      return result;
    }
  }
}

bool SandboxService::engine_exec_only(const std::string& session_id) {
  std::lock_guard lock(engine_exec_mutex_);
  return engine_exec_sessions_.count(session_id) != 0;
}

void SandboxService::remember_engine_exec_only(const std::string& session_id) {
  std::lock_guard lock(engine_exec_mutex_);
  // Bounded: forgetting costs one process_start that answers unsupported again.
  if (engine_exec_sessions_.size() >= 10'000) engine_exec_sessions_.clear();
  engine_exec_sessions_.insert(session_id);
}

ExecOutcome SandboxService::exec(const std::string& owner, const std::string& id, ExecKind kind,
                                 const std::string& code, std::optional<std::chrono::seconds> timeout,
                                 const std::string& cwd, const ExecChunkSink& on_chunk) {
  return exec_code(owner, id, kind, code, timeout, cwd, nullptr, on_chunk);
}

ExecOutcome SandboxService::run_python(const std::string& owner, const std::string& id, const std::string& code,
                                       std::optional<std::chrono::seconds> timeout, const PythonExecOptions& opts,
                                       const ExecChunkSink& on_chunk) {
  return exec_code(owner, id, ExecKind::python, code, timeout, "", &opts, on_chunk);
}

ExecOutcome SandboxService::exec_code(const std::string& owner, const std::string& id, ExecKind kind,
                                      const std::string& code, std::optional<std::chrono::seconds> timeout,
                                      const std::string& cwd, const PythonExecOptions* py,
                                      const ExecChunkSink& on_chunk, const std::string& execution_id,
                                      const std::atomic<bool>* cancel) {
  // An async cell's place in its context's queue is given up whichever way this call ends (else it would block the
  // cells behind it until the execution's thread is gone).
  struct LeaveQueue {
    const PythonExecOptions* py;
    ~LeaveQueue() {
      if (py != nullptr && py->queued) py->queued->release();
    }
  } leave_queue{py};
  const auto to = checked_exec_request(kind, code, timeout, py);
  std::string capability = kind == ExecKind::python ? "python" : "shell";
  auto row = load_live(owner, id);
  require_capability(row, capability);
  require_disk_space(owner, id);
  std::string dir = cwd.empty() ? "" : workspace_path(cwd, true);
  if (dir == ".") dir.clear();

  ExecRequest rq;
  // `python3 -` reads its program from stdin (no argv limit). A shell command up to kShellArgvMax bytes without a NUL
  // goes in argv (`/bin/sh -c -- CODE /bin/sh`: one process start fewer, a third of a warm shell exec); a longer one
  // travels on stdin, because the kernel caps one argument at 128 KiB: the shell reads the whole command with `cat`
  // first, so the user's program sees EOF either way. /bin/cat by absolute path: the session's PATH is the
  // tenant's, and a planted `cat` must not replace the command.
  if (kind == ExecKind::python) {
    rq.argv = {"python3", "-"};
    rq.stdin_data = code;
  } else if (code.size() <= kShellArgvMax && code.find('\0') == std::string::npos) {
    rq.argv = {"/bin/sh", "-c", "--", code, "/bin/sh"};  // "--": a command starting with '-' or '+' is no option
  } else {
    rq.argv = {"/bin/sh", "-c", "eval \"$(/bin/cat)\""};
    rq.stdin_data = code;
  }
  rq.cwd = dir;
  rq.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(to);
  log::info(kind == ExecKind::python ? "capability.python.exec" : "capability.shell.exec",
            {{"sandbox", id}, {"code_len", std::to_string(code.size())}});

  // Refused once shutdown began; an exec already running is cancelled through its in-flight token.
  if (shutting_down_.load()) {
    throw Error(ErrorCode::shutting_down, "berthd is shutting down").with_retry_after(5s);
  }
  // Room for the record before the code runs: a slow or absent database answers store_unavailable now, never
  // after the code ran (then the answer would be lost).
  auto record_slot = recorder_.reserve();

  // python/exec in a context: the context's entry, its cell lock held for the whole call (one cell at a time; later
  // callers wait up to their own timeout). Stateless with an event: a one-off kernel, killed at the end.
  std::shared_ptr<PythonContexts::Entry> entry;
  std::shared_ptr<FifoMutex::Ticket> cell_turn;  // held for the whole call once served
  if (py && (!py->stateless || py->event_json)) {
    if (!driver_.supports_processes()) {
      if (py->event_json) {
        throw Error(ErrorCode::capability_not_supported,
                    "handler(event) needs interactive processes, which this driver does not offer",
                    {{"sandbox_id", id}});
      }
      if (py->context_id != "default") {
        throw Error(ErrorCode::capability_not_supported,
                    "contexts need interactive processes, which this driver does not offer", {{"sandbox_id", id}});
      }
    } else if (py->stateless) {
      entry = std::make_shared<PythonContexts::Entry>();
      entry->sandbox_id = id;
      entry->created_at = clock_->now();
    } else {
      entry = contexts_.find(id, py->context_id, true, clock_->now());
      if (!entry) {
        throw Error(ErrorCode::not_found, "no context '" + py->context_id + "' in sandbox '" + id + "'",
                    {{"sandbox_id", id}, {"context_id", py->context_id}});
      }
    }
    if (entry) {
      // An async cell took its place when it was started; any other call queues now.
      if (py->queued && py->queued_in != entry) py->queued->release();  // its context was replaced meanwhile
      cell_turn =
          py->queued && py->queued_in == entry ? py->queued : std::make_shared<FifoMutex::Ticket>(entry->cell.take());
      const auto wait_until = std::chrono::steady_clock::now() + to;
      while (!cell_turn->wait(100ms) && std::chrono::steady_clock::now() < wait_until) {
        if (shutting_down_.load()) {
          throw Error(ErrorCode::shutting_down, "berthd is shutting down").with_retry_after(5s);
        }
        if (cancel != nullptr && cancel->load())
          throw DriverError(DriverErrc::cancelled, "the execution was cancelled");
      }
      if (!cell_turn->holds()) {
        throw Error(ErrorCode::conflict,
                    "context '" + entry->id + "' of sandbox '" + id +
                        "' ran another cell for longer than this call's " + std::to_string(to.count()) + "s timeout",
                    {{"sandbox_id", id}, {"context_id", entry->id}});
      }
      contexts_.locked([&] { entry->busy = true; });
    }
  }
  struct CellDone {
    PythonContexts& contexts;
    const std::shared_ptr<PythonContexts::Entry>& entry;
    ~CellDone() {
      if (!entry) return;
      std::shared_ptr<PythonKernel> one_off;
      contexts.locked([&] {
        entry->busy = false;
        if (entry->id.empty()) one_off = std::move(entry->kernel);
      });
      if (one_off) one_off->kill();
    }
  } cell_done{contexts_, entry};
  CellInfo cell;
  bool in_kernel = false;  // the code ran as a cell (else as a process: no context, or a driver without processes)

  ExecOutcome out;
  std::string session_id;
  auto t0 = std::chrono::steady_clock::now();
  // Reported however the exec ends from here on: an exception leaves `end` at error.
  ExecEnd end = ExecEnd::error;
  struct ReportExec {
    Metrics& metrics;
    std::string_view kind;
    const ExecEnd& end;
    std::chrono::steady_clock::time_point t0;
    ~ReportExec() {
      metrics.exec_done(kind, end, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  } report_exec{metrics_, kind == ExecKind::python ? "python" : "shell", end, t0};
  ExecResult result;
  CappedBuffer stdout_buf{{}, settings_.exec_output_cap};
  CappedBuffer stderr_buf{{}, settings_.exec_output_cap};
  std::atomic<bool> started{false};  // output arrived: the program ran, so it must never be run again
  std::string handle;
  std::uint64_t sequence = 0;
  const OutputSink on_output = [&](Stream s, std::string_view chunk) {
    started = true;
    (s == Stream::out ? stdout_buf : stderr_buf).append(chunk);
    if (!on_chunk) return true;
    return on_chunk(ExecChunk{s, sequence++, clock_->now(), chunk});
  };
  const bool via_process = settings_.exec_via_processes && driver_.supports_processes();
  try {
    result = with_session(
        row, started,
        [&](const store::SessionRow& session, const CancelToken& token) {
          session_id = session.id;
          handle = session.handle;
          // The token is registered in in_flight_: begin_shutdown() cancels it.
          if (entry && !engine_exec_only(session.id)) {
            try {
              auto r = run_cell(*entry, session, code, py->event_json, rq.timeout, on_output, token, started, cell);
              in_kernel = true;
              return r;
            } catch (const DriverError& e) {
              if (e.code() != DriverErrc::unsupported) throw;
              remember_engine_exec_only(session.id);
              log::info("exec.process_unsupported", {{"sandbox", id}, {"session", session.id}});
            }
          }
          if (entry && py->event_json) {
            throw Error(ErrorCode::capability_not_supported,
                        "handler(event) needs interactive processes, which this sandbox's session does not offer",
                        {{"sandbox_id", id}});
          }
          if (via_process && !engine_exec_only(session.id)) {
            if (auto done = exec_as_process(session.handle, rq, on_output, token)) return *done;
            remember_engine_exec_only(session.id);
            log::info("exec.process_unsupported", {{"sandbox", id}, {"session", session.id}});
          }
          return driver_.exec(session.handle, rq, on_output, &token);
        },
        execution_id, cancel);
  } catch (const DriverError& e) {
    if (e.code() == DriverErrc::cancelled && shutting_down_.load()) {
      throw Error(ErrorCode::shutting_down, "berthd is shutting down; the exec was cancelled", {{"sandbox_id", id}})
          .with_retry_after(5s);
    }
    rethrow_driver_error(e, "exec in sandbox '" + id + "'");
  }
  out.duration_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  out.output = stdout_buf.finish();
  out.error = stderr_buf.finish();
  out.timed_out = result.timed_out;
  if (in_kernel) out.cell = cell;
  end = result.timed_out ? ExecEnd::timeout : result.exit_code == 0 ? ExecEnd::success : ExecEnd::nonzero_exit;
  if (result.timed_out) {
    if (!out.error.empty() && out.error.back() != '\n') out.error += '\n';
    out.error += "execution timed out after " + std::to_string(to.count()) + "s";
    out.success = false;
  } else {
    out.exit_code = result.exit_code;
    out.success = result.exit_code == 0;
  }
  if (!result.timed_out && result.exit_code >= 128) {
    // Killed by a signal: maybe with its whole container (`kill -9 -1`, the OOM killer). Find out now, so that GET
    // stops saying ready and the next call starts a new session instead of failing on a dead one.
    try {
      if (auto info = driver_.session_inspect(handle); !alive(info.state)) {
        if (auto session = store_.get_session(session_id)) {
          retire_dead_session(*session, "container " + std::string(to_string(info.state)) + " after exit code " +
                                            std::to_string(result.exit_code));
        }
      }
    } catch (const DriverError& e) {
      log::warn("session.inspect_failed", {{"sandbox", id}, {"session", session_id}, {"error", e.what()}});
    }
  }

  store::ExecutionRow record;
  record.id = execution_id.empty() ? new_id("exec") : execution_id;
  record.sandbox_id = id;
  record.session_id = session_id;
  record.kind = capability;
  record.code = code;
  record.exit_code = out.exit_code;
  record.success = out.success;
  // The stored record is capped apart from the response (history keeps far less than one exec may return), so
  // what a tenant stores, and what a history page costs to read, is bounded by configuration.
  record.output = out.output;
  record.error = out.error;
  for (std::string* field : {&record.code, &record.output, &record.error}) {
    if (field->size() > settings_.history_field_cap) {
      field->resize(utf8_prefix_length(*field, settings_.history_field_cap));
      record.truncated = true;
    }
  }
  record.duration_ms = out.duration_ms;
  record.created_at = clock_->now();
  out.execution_id = record.id;
  recorder_.record(std::move(record_slot), std::move(record));
  schedule_disk_check(row);  // what the code wrote is measured in the background (docs/security.md)
  return out;
}

HistoryPage SandboxService::history(const std::string& owner, const std::string& id, const std::string& kind, int limit,
                                    int offset) {
  load_live(owner, id);
  if (!kind.empty() && kind != "python" && kind != "shell") {
    throw Error(ErrorCode::validation_error, "exec_type must be 'python' or 'shell'");
  }
  if (limit < 1 || limit > 500) throw Error(ErrorCode::validation_error, "limit must be between 1 and 500");
  if (offset < 0) throw Error(ErrorCode::validation_error, "offset must not be negative");
  store::ExecutionPageLimits bounds;
  bounds.field_cap = static_cast<std::int64_t>(settings_.history_field_cap);
  bounds.byte_budget = static_cast<std::int64_t>(settings_.history_response_bytes);
  recorder_.flush();  // the execs that already answered are in the page
  HistoryPage page;
  std::tie(page.entries, page.total) = store_.list_executions(id, kind, limit, offset, bounds);
  page.bytes_capped = page.entries.size() < static_cast<std::size_t>(limit) &&
                      static_cast<std::size_t>(offset) + page.entries.size() < static_cast<std::size_t>(page.total);
  return page;
}

std::string SandboxService::read_file(const std::string& owner, const std::string& id, const std::string& path,
                                      std::size_t max_bytes) {
  std::string out;
  download(owner, id, path, [&](std::string_view chunk) {
    if (out.size() + chunk.size() > max_bytes) {
      throw Error(ErrorCode::payload_too_large,
                  "file is larger than " + std::to_string(max_bytes) + " bytes; use filesystem/download");
    }
    out.append(chunk);
    return true;
  });
  return out;
}

void SandboxService::download(const std::string& owner, const std::string& id, const std::string& path,
                              const ByteSink& sink) {
  auto row = load_live(owner, id);
  require_capability(row, "filesystem");
  auto p = workspace_path(path, false);
  std::atomic<bool> started{false};  // bytes reached the sink: a repeat would send them twice
  try {
    with_session(row, started, [&](const store::SessionRow& s, const CancelToken&) {
      driver_.file_get(s.handle, p, [&](std::string_view chunk) {
        started = true;
        return sink(chunk);
      });
      return 0;
    });
  } catch (const DriverError& e) {
    rethrow_driver_error(e, "reading '" + p + "'");
  }
}

void SandboxService::write_file(const std::string& owner, const std::string& id, const std::string& path,
                                std::uint64_t size, const ByteSource& source, std::uint32_t mode) {
  auto row = load_live(owner, id);
  require_capability(row, "filesystem");
  auto p = workspace_path(path, false);
  if (size > settings_.max_file_size) {
    throw Error(ErrorCode::payload_too_large,
                "file is larger than the limit of " + std::to_string(settings_.max_file_size) + " bytes");
  }
  if (const std::uint64_t limit = profile_of(row)->disk_limit_bytes; limit != 0 && size > limit) {
    throw Error(ErrorCode::disk_quota_exceeded,
                "file of " + std::to_string(size) + " bytes is larger than the sandbox's disk limit of " +
                    std::to_string(limit) + " bytes",
                {{"sandbox_id", id}, {"limit_bytes", std::to_string(limit)}});
  }
  require_disk_space(owner, id);
  try {
    std::atomic<bool> started{false};  // the source was read from: it cannot be replayed from its start
    with_session(row, started, [&](const store::SessionRow& s, const CancelToken&) {
      driver_.file_put(s.handle, p, mode, size, [&](std::uint8_t* buffer, std::size_t capacity) {
        started = true;
        return source(buffer, capacity);
      });
      return 0;
    });
  } catch (const DriverError& e) {
    rethrow_driver_error(e, "writing '" + p + "'");
  }
  if (write_may_exceed(row, size)) schedule_disk_check(row);
}

void SandboxService::remove_path(const std::string& owner, const std::string& id, const std::string& path) {
  auto row = load_live(owner, id);
  require_capability(row, "filesystem");
  auto p = workspace_path(path, false);
  const std::atomic<bool> started{false};  // by the driver contract, not_found from a dead session means not run
  try {
    with_session(row, started, [&](const store::SessionRow& s, const CancelToken&) {
      driver_.path_remove(s.handle, p);
      recheck_disk_after_delete(row, s.handle);
      return 0;
    });
  } catch (const DriverError& e) {
    rethrow_driver_error(e, "removing '" + p + "'");
  }
}

DirPage SandboxService::list_dir(const std::string& owner, const std::string& id, const std::string& path,
                                 const std::string& after, std::size_t limit) {
  if (limit < 1 || limit > settings_.dir_page_max) {
    throw Error(ErrorCode::validation_error, "limit must be between 1 and " + std::to_string(settings_.dir_page_max),
                {{"field", "limit"}});
  }
  auto row = load_live(owner, id);
  require_capability(row, "filesystem");
  auto p = workspace_path(path, true);
  const std::atomic<bool> started{false};  // a listing has no effect: repeating it is always safe
  // A max-heap of the limit + 1 smallest names after the cursor (one more than the page tells whether more follow).
  const auto by_name = [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; };  // raw bytes
  std::vector<DirEntry> heap;
  try {
    with_session(row, started, [&](const store::SessionRow& s, const CancelToken&) {
      heap.clear();  // a repeated attempt starts over
      heap.reserve(limit + 1);
      driver_.dir_scan(s.handle, p, [&](const DirEntry& e) {
        if (!after.empty() && !(after < e.name)) return true;
        if (heap.size() <= limit) {
          heap.push_back(e);
          std::push_heap(heap.begin(), heap.end(), by_name);
        } else if (e.name < heap.front().name) {
          std::pop_heap(heap.begin(), heap.end(), by_name);
          heap.back() = e;
          std::push_heap(heap.begin(), heap.end(), by_name);
        }
        return true;
      });
      return 0;
    });
  } catch (const DriverError& e) {
    rethrow_driver_error(e, "listing '" + p + "'");
  }
  std::sort_heap(heap.begin(), heap.end(), by_name);
  DirPage page;
  if (heap.size() > limit) {
    heap.pop_back();
    page.next_cursor = heap.back().name;
  }
  page.entries = std::move(heap);
  return page;
}

// A context starts its kernel through with_session; its other calls are in python_exec.cpp.
ContextView SandboxService::create_context(const std::string& owner, const std::string& id, const ContextSpec& spec) {
  auto row = load_live(owner, id);
  require_capability(row, "python");
  ContextSpec clean = spec;
  clean.cwd = spec.cwd.empty() ? "" : workspace_path(spec.cwd, true);
  if (clean.cwd == ".") clean.cwd.clear();
  validate_env(clean.env, settings_.limits);
  if (!driver_.supports_processes()) {
    throw Error(ErrorCode::capability_not_supported,
                "contexts need interactive processes, which this driver does not offer (stateless python/exec works)",
                {{"sandbox_id", id}});
  }
  if (shutting_down_.load()) throw Error(ErrorCode::shutting_down, "berthd is shutting down").with_retry_after(5s);
  auto entry = contexts_.add(id, clean, settings_.max_contexts_per_sandbox, clock_->now());
  if (!entry) {
    throw Error(ErrorCode::conflict,
                "sandbox '" + id + "' has " + std::to_string(settings_.max_contexts_per_sandbox) +
                    " contexts, the most it may hold; delete one first",
                {{"sandbox_id", id}, {"limit", std::to_string(settings_.max_contexts_per_sandbox)}});
  }
  std::unique_lock cell_lock(entry->cell);
  try {
    std::atomic<bool> started{false};  // starting a kernel runs no user code: a retry on a new session is safe
    with_session(row, started, [&](const store::SessionRow& session, const CancelToken& token) {
      if (engine_exec_only(session.id)) {
        throw Error(ErrorCode::capability_not_supported,
                    "contexts need interactive processes, which this sandbox's session does not offer");
      }
      CellInfo ignored;
      kernel_for(*entry, session, ignored, &token);
      return 0;
    });
  } catch (const DriverError& e) {
    cell_lock.unlock();
    contexts_.remove(id, entry->id);
    if (e.code() == DriverErrc::unsupported) {
      throw Error(ErrorCode::capability_not_supported,
                  "contexts need interactive processes, which this sandbox's session does not offer");
    }
    rethrow_driver_error(e, "starting a context in sandbox '" + id + "'");
  } catch (...) {
    cell_lock.unlock();
    contexts_.remove(id, entry->id);
    throw;
  }
  log::info("context.create", {{"sandbox", id}, {"context", entry->id}, {"cwd", clean.cwd}});
  return contexts_.locked([&] { return contexts_.view(*entry); });
}

}  // namespace berth::core
