// Python contexts in the service: a cell on a context's kernel, and the context routes' calls (python_context.hpp
// holds the kernel and the registry; exec_files.cpp the exec path both share).
#include <Poco/JSONString.h>

#include "core/limits.hpp"
#include "core/log.hpp"
#include "core/paths.hpp"
#include "core/sandbox_service.hpp"
#include "core/sandbox_service_internal.hpp"

namespace berth::core {

using namespace service_internal;
using namespace std::chrono_literals;

namespace {

/** The exec frame's JSON: {"code": ..., "event": ...} (the event as the client sent it: JSON text the API parsed). */
std::string cell_request(const std::string& code, const std::optional<std::string>& event_json) {
  std::string out = "{\"code\":" + Poco::toJSON(code);
  if (event_json) out += ",\"event\":" + *event_json;
  return out + "}";
}

}  // namespace

std::shared_ptr<PythonKernel> SandboxService::kernel_for(PythonContexts::Entry& entry, const store::SessionRow& session,
                                                         CellInfo& info, const CancelToken* cancel) {
  std::shared_ptr<PythonKernel> kernel;
  std::shared_ptr<PythonKernel> old;
  contexts_.locked([&] {
    if (entry.kernel && (entry.session_id != session.id || entry.kernel->dead())) {
      if (entry.restart_reason.empty()) {
        entry.restart_reason = entry.session_id != session.id ? "session_ended" : "the interpreter exited";
      }
      old = std::move(entry.kernel);
    }
    kernel = entry.kernel;
  });
  if (old) old->kill();
  if (kernel) return kernel;

  std::map<std::string, std::string> env = entry.spec.env;
  std::unique_ptr<PythonKernel> started =
      PythonKernel::start(driver_, session.handle, env, entry.spec.cwd, settings_.context_start_wait, cancel);
  kernel = std::shared_ptr<PythonKernel>(std::move(started));
  bool deleted = false;
  contexts_.locked([&] {
    deleted = entry.deleted;
    if (deleted) return;
    entry.kernel = kernel;
    entry.session_id = session.id;
    entry.execution_count = 0;
    if (entry.ever_started && !entry.restart_reason.empty()) {
      info.context_restarted = true;
      info.restart_reason = entry.restart_reason;
    }
    entry.restart_reason.clear();
    entry.ever_started = true;
  });
  if (deleted) {
    kernel->kill();
    throw Error(ErrorCode::not_found, "context '" + entry.id + "' was deleted",
                {{"sandbox_id", entry.sandbox_id}, {"context_id", entry.id}});
  }
  log::info("context.kernel_started", {{"sandbox", entry.sandbox_id},
                                       {"context", entry.id.empty() ? "one-off" : entry.id},
                                       {"session", session.id},
                                       {"python", kernel->python_version()},
                                       {"restart_reason", info.restart_reason}});
  return kernel;
}

ExecResult SandboxService::run_cell(PythonContexts::Entry& entry, const store::SessionRow& session,
                                    const std::string& code, const std::optional<std::string>& event_json,
                                    std::chrono::milliseconds timeout, const OutputSink& on_output,
                                    const CancelToken& token, std::atomic<bool>& started, CellInfo& info) {
  info.context_id = entry.id;
  auto kernel = kernel_for(entry, session, info, &token);
  // Forget `k` in the entry (if it is still the entry's) and say why on the next cell (tell_next), or on this one.
  const auto forget = [&](const std::shared_ptr<PythonKernel>& k, const std::string& reason, bool tell_next) {
    k->kill();
    contexts_.locked([&] {
      if (entry.kernel == k) {
        entry.kernel.reset();
        entry.execution_count = 0;
      }
      if (tell_next) {
        if (entry.restart_reason.empty()) entry.restart_reason = reason;
      } else if (!entry.kernel) {
        entry.restart_reason.clear();  // this cell says it (a session end seen meanwhile must not say it twice)
      }
    });
  };
  if (!kernel->alive()) {
    // It died since its last cell, unseen (its session ended, a thread of the cell called os._exit): nothing ran yet,
    // so a fresh kernel takes this cell, and the answer says the state is gone.
    forget(kernel, "the interpreter exited", true);
    kernel = kernel_for(entry, session, info, &token);
  }
  const std::string request = cell_request(code, event_json);
  started = true;  // the cell may run from here on: never run it twice
  CellOutcome c;
  try {
    c = kernel->run(request, timeout, settings_.cell_interrupt_grace, on_output, token);
  } catch (const DriverError& e) {
    forget(kernel, e.code() == DriverErrc::cancelled ? "cancelled" : "session_ended", true);
    throw;
  } catch (...) {  // mid-cell (memory, the output consumer): the kernel may still run it, so it is not used again
    forget(kernel, "the cell's call failed in berthd", true);
    throw;
  }
  contexts_.locked([&] { entry.last_used_at = clock_->now(); });
  ExecResult result;
  result.timed_out = c.timed_out;
  if (c.kernel_lost) {
    forget(kernel, c.lost_reason, false);
    info.context_restarted = true;
    info.restart_reason = c.lost_reason;
    const std::string note = "\n[berth] the context's interpreter is gone (" + c.lost_reason +
                             "); its variables are lost and the next call starts a fresh one\n";
    on_output(Stream::err, note);
    log::warn(
        "context.kernel_lost",
        {{"sandbox", entry.sandbox_id}, {"context", entry.id}, {"session", session.id}, {"reason", c.lost_reason}});
    result.exit_code = c.timed_out ? -1 : 137;
    return result;
  }
  contexts_.locked([&] { entry.execution_count = c.execution_count; });
  info.execution_count = c.execution_count;
  info.data_json = std::move(c.data_json);
  info.result_json = std::move(c.result_json);
  info.error_name = std::move(c.error_name);
  info.error_value = std::move(c.error_value);
  info.traceback = std::move(c.traceback);
  result.exit_code = c.exit_code;
  return result;
}

void SandboxService::sweep_contexts() {
  // Contexts whose sandbox is gone (deleted or expired by another instance) or whose kernel runs in a session that is
  // no longer the sandbox's: their kernels are killed and the registry forgets them.
  for (const auto& [sandbox_id, sessions] : contexts_.kernel_sessions()) {
    std::optional<store::SandboxRow> row;
    try {
      row = store_.get_sandbox(sandbox_id);
    } catch (const store::StoreError&) {
      return;  // the next pass
    }
    if (!row || row->deleted_at) {
      contexts_.drop_sandbox(sandbox_id);
      continue;
    }
    for (const auto& session_id : sessions) {
      if (!row->current_session_id || *row->current_session_id != session_id) {
        contexts_.drop_session(sandbox_id, session_id, "session_ended");
      }
    }
  }
}

// ---- the context routes' calls
// ---------------------------------------------------------------------------------------

std::vector<ContextView> SandboxService::list_contexts(const std::string& owner, const std::string& id) {
  load_live(owner, id);
  return contexts_.list(id);
}

ContextView SandboxService::get_context(const std::string& owner, const std::string& id,
                                        const std::string& context_id) {
  load_live(owner, id);
  for (auto& v : contexts_.list(id)) {
    if (v.id == context_id) return v;
  }
  throw Error(ErrorCode::not_found, "no context '" + context_id + "' in sandbox '" + id + "'",
              {{"sandbox_id", id}, {"context_id", context_id}});
}

void SandboxService::delete_context(const std::string& owner, const std::string& id, const std::string& context_id) {
  load_live(owner, id);
  if (!contexts_.remove(id, context_id)) {
    throw Error(ErrorCode::not_found, "no context '" + context_id + "' in sandbox '" + id + "'",
                {{"sandbox_id", id}, {"context_id", context_id}});
  }
  log::info("context.delete", {{"sandbox", id}, {"context", context_id}});
}

}  // namespace berth::core
