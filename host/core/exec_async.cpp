// Async executions in the service: start one (202), its status from memory or the history, its buffered output, its
// cancel (async_executions.hpp holds the registry; exec_files.cpp the exec path every execution runs).
#include "core/ids.hpp"
#include "core/log.hpp"
#include "core/paths.hpp"
#include "core/sandbox_service.hpp"
#include "core/sandbox_service_internal.hpp"

namespace berth::core {

using namespace service_internal;
using namespace std::chrono_literals;

namespace {

/** The error text of an async execution's history record while it runs (docs/api.md, "Async executions"). */
constexpr std::string_view kRunningMarker = "[berth] running (async) on instance ";
constexpr std::string_view kEndedMarker = "[berth] ";

}  // namespace

std::chrono::seconds SandboxService::checked_exec_request(ExecKind kind, const std::string& code,
                                                          std::optional<std::chrono::seconds> timeout,
                                                          const PythonExecOptions* py) const {
  const auto to = timeout.value_or(settings_.default_exec_timeout);
  if (to.count() < 1 || to > settings_.max_exec_timeout) {
    throw Error(ErrorCode::validation_error,
                "timeout must be between 1 and " + std::to_string(settings_.max_exec_timeout.count()) + " seconds");
  }
  if (code.empty() && !(py && py->event_json))  // a handler call may reuse what earlier cells defined
    throw Error(ErrorCode::validation_error, kind == ExecKind::python ? "code is empty" : "command is empty");
  return to;
}

void SandboxService::validate_exec(const std::string& owner, const std::string& id, ExecKind kind,
                                   const std::string& code, std::optional<std::chrono::seconds> timeout,
                                   const std::string& cwd, const PythonExecOptions* py) {
  checked_exec_request(kind, code, timeout, py);
  auto row = load_live(owner, id);
  require_capability(row, kind == ExecKind::python ? "python" : "shell");
  if (!cwd.empty()) workspace_path(cwd, true);
  if (py && !py->stateless && py->context_id != "default" && driver_.supports_processes() &&
      !contexts_.find(id, py->context_id, false, clock_->now())) {
    throw Error(ErrorCode::not_found, "no context '" + py->context_id + "' in sandbox '" + id + "'",
                {{"sandbox_id", id}, {"context_id", py->context_id}});
  }
}

store::ExecutionRow SandboxService::async_row(const ExecutionView& view, const std::string& code,
                                              std::string error) const {
  store::ExecutionRow row;
  row.id = view.id;
  row.sandbox_id = view.sandbox_id;
  row.kind = view.kind;
  row.code = code.substr(0, utf8_prefix_length(code, settings_.history_field_cap));
  row.truncated = row.code.size() < code.size();
  row.error = std::move(error);
  row.created_at = view.created_at;
  return row;
}

void SandboxService::record_async(const ExecutionView& view, const std::string& code, const std::string& error) {
  recorder_.record(recorder_.reserve(), async_row(view, code, error));
}

ExecutionView SandboxService::start_async(const std::string& owner, const std::string& id, ExecKind kind,
                                          const std::string& code, std::optional<std::chrono::seconds> timeout,
                                          const std::string& cwd, const PythonExecOptions* py) {
  validate_exec(owner, id, kind, code, timeout, cwd, py);
  if (shutting_down_.load()) throw Error(ErrorCode::shutting_down, "berthd is shutting down").with_retry_after(5s);
  ExecutionView view;
  view.id = new_id("exec");
  view.sandbox_id = id;
  view.kind = kind == ExecKind::python ? "python" : "shell";
  view.created_at = clock_->now();
  auto slot = recorder_.reserve();  // a slow database answers store_unavailable now, before anything runs
  AsyncExecutions::Refusal refused = AsyncExecutions::Refusal::none;
  auto execution = async_.add(view, settings_.async_output_buffer, owner, &refused);
  if (refused == AsyncExecutions::Refusal::owner_full) {
    throw Error(ErrorCode::rate_limited,
                "you run " + std::to_string(settings_.max_async_per_owner) +
                    " async executions on this berthd already, the most one owner may; wait for one to end",
                {{"reason", "async_executions_per_owner"}, {"limit", std::to_string(settings_.max_async_per_owner)}})
        .with_retry_after(5s);
  }
  if (!execution) {
    throw Error(ErrorCode::server_busy,
                std::to_string(settings_.max_async_executions) + " async executions run on this berthd already",
                {{"reason", "async_executions"}})
        .with_retry_after(5s);
  }
  try {
    recorder_.record(std::move(slot), async_row(view, code, std::string(kRunningMarker) + settings_.instance_id));
    log::info("exec.async_start", {{"sandbox", id}, {"execution", view.id}, {"kind", view.kind}});
  } catch (...) {
    async_.abandon(execution, clock_->now());  // registered but never started: its slot is given back
    throw;
  }
  const bool has_py = py != nullptr;
  PythonExecOptions opts;
  try {
    if (has_py) opts = *py;
    if (has_py && !opts.stateless && driver_.supports_processes()) {
      // Its place in the context's cell queue now, in the order of the requests (its thread may start later).
      if (auto entry = contexts_.find(id, opts.context_id, true, clock_->now())) {
        opts.queued_in = entry;
        opts.queued = std::make_shared<FifoMutex::Ticket>(entry->cell.take());
      }
    }
  } catch (...) {
    async_.abandon(execution, clock_->now());  // registered but never started: its slots are given back
    throw;
  }
  async_.start(execution, [this, execution, owner, id, kind, code, timeout, cwd, opts, has_py, view] {
    const ExecChunkSink sink = [&](const ExecChunk& c) {
      return execution->append(BufferedChunk{c.sequence, c.stream, c.at, std::string(c.data)});
    };
    const auto ended = [&](const std::string& error_code, const std::string& reason) {
      const auto status = execution->cancel_requested() ? ExecutionStatus::cancelled : ExecutionStatus::failed;
      try {
        record_async(view, code, std::string(kEndedMarker) + std::string(to_string(status)) + ": " + reason);
      } catch (const std::exception& e) {
        log::warn("exec.async_record_failed", {{"execution", view.id}, {"error", e.what()}});
      }
      execution->finish(status, nullptr, status == ExecutionStatus::cancelled ? "" : error_code, reason, clock_->now());
      log::info("exec.async_end",
                {{"execution", view.id}, {"status", std::string(to_string(status))}, {"reason", reason}});
    };
    try {
      auto out = std::make_shared<ExecOutcome>(exec_code(owner, id, kind, code, timeout, cwd, has_py ? &opts : nullptr,
                                                         sink, view.id, &execution->cancel_flag()));
      // A result is what happened, even when a cancel came too late to stop it (the history says the same).
      const auto status = out->timed_out ? ExecutionStatus::timed_out
                          : out->success ? ExecutionStatus::succeeded
                                         : ExecutionStatus::failed;
      execution->finish(status, out, "", "", clock_->now());
      log::info("exec.async_end", {{"execution", view.id}, {"status", std::string(to_string(status))}});
    } catch (const Error& e) {
      ended(std::string(to_string(e.code())), e.what());
    } catch (const DriverError& e) {
      ended(e.code() == DriverErrc::cancelled ? "conflict" : "internal", e.what());
    } catch (const store::StoreUnavailable& e) {
      ended("store_unavailable", e.what());
    } catch (const std::exception& e) {
      ended("internal", e.what());
    }
  });
  return execution->view();
}

ExecutionView SandboxService::execution(const std::string& owner, const std::string& id,
                                        const std::string& execution_id) {
  load_live(owner, id);
  if (auto e = async_.find(execution_id); e && e->view().sandbox_id == id) return e->view();
  const auto unknown = [&] {
    return Error(ErrorCode::not_found, "no execution '" + execution_id + "' in sandbox '" + id + "'",
                 {{"sandbox_id", id}, {"execution_id", execution_id}});
  };
  if (!is_valid_id(execution_id, "exec")) throw unknown();
  recorder_.flush();  // an exec that already answered is in the table
  auto row = store_.get_execution(execution_id, static_cast<std::int64_t>(settings_.history_field_cap));
  if (!row || row->sandbox_id != id) throw unknown();
  ExecutionView v;
  v.id = row->id;
  v.sandbox_id = row->sandbox_id;
  v.kind = row->kind;
  v.created_at = row->created_at;
  v.async = false;
  // The markers are berthd's only on rows without a session (a running async execution, or one that ended before it
  // had a result): a program's own stderr that starts the same way is its output, whatever it says.
  const bool marked = row->session_id.empty() && !row->exit_code && !row->success;
  if (marked && row->error.rfind(kRunningMarker, 0) == 0) {
    v.async = true;
    const std::string instance = row->error.substr(kRunningMarker.size());
    if (instance == settings_.instance_id) {
      v.status = ExecutionStatus::failed;
      v.error_code = "internal";
      v.reason = "berthd restarted while the execution ran; its result is lost";
    } else {
      v.reason = "runs on berthd instance " + instance + ", which holds its output";
    }
    return v;
  }
  if (marked && row->error.rfind(kEndedMarker, 0) == 0) {
    v.async = true;
    const std::string text = row->error.substr(kEndedMarker.size());
    v.status = text.rfind("cancelled", 0) == 0 ? ExecutionStatus::cancelled : ExecutionStatus::failed;
    v.reason = text.substr(std::min(text.size(), text.find(": ") == std::string::npos ? 0 : text.find(": ") + 2));
    v.finished_at = row->created_at;
    return v;
  }
  auto out = std::make_shared<ExecOutcome>();
  out->execution_id = row->id;
  out->success = row->success;
  out->output = row->output;
  out->error = row->error;
  out->exit_code = row->exit_code;
  out->timed_out = !row->exit_code && !row->success;
  out->duration_ms = row->duration_ms;
  v.status = out->timed_out ? ExecutionStatus::timed_out
             : out->success ? ExecutionStatus::succeeded
                            : ExecutionStatus::failed;
  v.finished_at = row->created_at;
  v.outcome = std::move(out);
  return v;
}

ExecutionEvents SandboxService::execution_events(const std::string& owner, const std::string& id,
                                                 const std::string& execution_id, std::optional<std::uint64_t> after,
                                                 std::chrono::milliseconds wait) {
  load_live(owner, id);
  if (auto e = async_.find(execution_id); e && e->view().sandbox_id == id) return e->events_after(after, wait);
  auto v = execution(owner, id, execution_id);  // throws not_found
  if (v.status == ExecutionStatus::running) {
    // Held by another berthd (its output is there): answered once, never polled here.
    throw Error(ErrorCode::conflict, "execution '" + execution_id + "' " + v.reason,
                {{"execution_id", execution_id}, {"status", "running"}});
  }
  ExecutionEvents out;
  out.finished = true;
  return out;
}

std::size_t SandboxService::stop_async(std::chrono::milliseconds grace, std::chrono::milliseconds cancel_wait) {
  const auto wait_until = [&](std::chrono::steady_clock::time_point deadline) {
    while (async_.running() > 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(50ms);
    return async_.running();
  };
  if (wait_until(std::chrono::steady_clock::now() + grace) == 0) return 0;
  const auto cancelled = async_.cancel_all();
  log::info("exec.async_cancelled_for_shutdown", {{"executions", std::to_string(cancelled)}});
  return wait_until(std::chrono::steady_clock::now() + cancel_wait);
}

ExecutionView SandboxService::cancel_execution(const std::string& owner, const std::string& id,
                                               const std::string& execution_id) {
  load_live(owner, id);
  auto e = async_.find(execution_id);
  if (!e || e->view().sandbox_id != id) {
    auto v = execution(owner, id, execution_id);  // not_found, or one that ended (or runs elsewhere)
    throw Error(ErrorCode::conflict,
                v.status == ExecutionStatus::running
                    ? "execution '" + execution_id + "' " + v.reason + "; cancel it there"
                    : "execution '" + execution_id + "' has ended (" + std::string(to_string(v.status)) + ")",
                {{"execution_id", execution_id}, {"status", std::string(to_string(v.status))}});
  }
  if (!async_.cancel(execution_id)) {
    throw Error(ErrorCode::conflict,
                "execution '" + execution_id + "' has ended (" + std::string(to_string(e->view().status)) + ")",
                {{"execution_id", execution_id}, {"status", std::string(to_string(e->view().status))}});
  }
  log::info("exec.async_cancel", {{"sandbox", id}, {"execution", execution_id}});
  return e->wait_end(10s);
}

}  // namespace berth::core
