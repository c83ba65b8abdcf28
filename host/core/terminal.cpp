// Terminals (core/terminal.hpp): the Terminal itself and SandboxService::open_terminal, which starts the shell in
// the sandbox's session through with_session (defined in exec_files.cpp, instantiated there for this unit's call).
#include "core/terminal.hpp"

#include <algorithm>
#include <thread>

#include "core/errors.hpp"
#include "core/log.hpp"
#include "core/sandbox_service.hpp"
#include "core/sandbox_service_internal.hpp"
#include "core/with_session.hpp"

namespace berth::core {

using namespace std::chrono_literals;

void validate_terminal_spec(const TerminalSpec& spec) {
  auto side = [](const char* field, std::uint16_t v) {
    if (v < 1 || v > kMaxTerminalSide) {
      throw Error(ErrorCode::validation_error,
                  std::string(field) + " must be 1.." + std::to_string(kMaxTerminalSide) + ", got " + std::to_string(v),
                  {{"field", field}});
    }
  };
  side("rows", spec.rows);
  side("cols", spec.cols);
  const bool term_ok =
      !spec.term.empty() && spec.term.size() <= 64 && std::all_of(spec.term.begin(), spec.term.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
               c == '+' || c == '-';
      });
  if (!term_ok) {
    throw Error(ErrorCode::validation_error, "term must be 1-64 of [A-Za-z0-9._+-] (a terminfo name)",
                {{"field", "term"}});
  }
}

Terminal::Terminal(std::string sandbox_id, std::string session_id, std::string shell, std::unique_ptr<Process> process,
                   InFlightCalls::Guard in_use, Hooks hooks)
    : sandbox_id_(std::move(sandbox_id)),
      session_id_(std::move(session_id)),
      shell_(std::move(shell)),
      process_(std::move(process)),
      in_use_(std::move(in_use)),
      hooks_(std::move(hooks)) {}

Terminal::~Terminal() {
  try {
    process_->kill();
  } catch (const DriverError&) {
    // The process is gone already; releasing it below is what matters.
  }
  process_.reset();
  if (hooks_.touch) hooks_.touch();  // the terminal's end is the sandbox's last activity
  if (hooks_.release) hooks_.release();
  log::info("terminal.close", {{"sandbox", sandbox_id_}, {"session", session_id_}});
}

bool Terminal::write(std::string_view keys) {
  for (;;) {
    if (ended_.load() || closing()) return false;
    try {
      process_->write_stdin(keys);
      return true;
    } catch (const DriverError& e) {
      if (e.code() == DriverErrc::unavailable) {
        std::this_thread::sleep_for(5ms);  // the driver's buffer is full: the shell reads slower than the client types
        continue;
      }
      if (e.code() == DriverErrc::conflict || e.code() == DriverErrc::not_found) return false;  // no longer reading
      throw;
    }
  }
}

void Terminal::resize(std::uint16_t rows, std::uint16_t cols) {
  TerminalSpec spec;
  spec.rows = rows;
  spec.cols = cols;
  validate_terminal_spec(spec);
  process_->resize(rows, cols);
}

ProcessEvent Terminal::next_event(std::chrono::milliseconds wait) {
  if (shutting_down()) close();
  if (ended_.load()) return last_exit_;
  ProcessEvent ev;
  try {
    ev = process_->next_event(wait);
  } catch (const DriverError& e) {
    // The engine drivers report a process whose session went away as conflict/not_found, not as an exit.
    if (e.code() != DriverErrc::conflict && e.code() != DriverErrc::not_found) throw;
    session_ended_ = !closing();  // the driver says the session is gone (a stale store row cannot say otherwise)
    ev.kind = ProcessEvent::Kind::exit;
    ev.exit.killed = true;
    ev.exit.signal = 9;  // what ended it, as far as anyone can tell: the container's end
    ev.exit.exit_code = 128 + 9;
  }
  if (ev.kind == ProcessEvent::Kind::exit) {
    // Not ended by close() or a shutdown: either the shell exited, or its session ended under it (stop, delete,
    // expiry, disk limit). Only the session's state tells them apart (a stopped container's shell may report a
    // plain exit by SIGKILL/SIGTERM).
    if (!session_ended_ && !closing() && hooks_.session_running) session_ended_ = !hooks_.session_running();
    last_exit_ = ev;
    ended_ = true;
  }
  const auto now = std::chrono::steady_clock::now();
  if (hooks_.touch && now - last_touch_ >= hooks_.touch_every) {
    last_touch_ = now;
    hooks_.touch();
  }
  return ev;
}

void Terminal::close() {
  closed_ = true;
  if (killed_.exchange(true)) return;
  try {
    process_->kill();
  } catch (const DriverError&) {
    // Already gone: its exit event says so.
  }
}

// ---- SandboxService --------------------------------------------------------------------------------------------

std::unique_ptr<Terminal> SandboxService::open_terminal(const std::string& owner, const std::string& id,
                                                        const TerminalSpec& spec) {
  validate_terminal_spec(spec);
  auto row = load_live(owner, id);
  require_capability(row, "shell");
  if (!driver_.supports_processes() || !driver_.has_capability(cap::process_pty)) {
    throw Error(ErrorCode::capability_not_supported,
                "a terminal needs interactive processes on a pseudo-terminal, which driver '" +
                    driver_.identity().name + "' does not offer",
                {{"sandbox_id", id}});
  }
  if (shutting_down_.load()) throw Error(ErrorCode::shutting_down, "berthd is shutting down").with_retry_after(5s);
  if (settings_.max_terminals == 0) {
    throw Error(ErrorCode::capability_not_supported,
                "terminals are off on this berthd ([server] max_terminals = 0, or no thread left for them)",
                {{"reason", "terminals_disabled"}});
  }

  // A slot first: refused requests cost no process.
  {
    std::lock_guard lock(terminals_mutex_);
    if (terminals_open_ >= settings_.max_terminals) {
      throw Error(ErrorCode::server_busy,
                  "berthd has " + std::to_string(settings_.max_terminals) + " terminals open, its limit; retry later",
                  {{"reason", "terminal_limit"}, {"limit", std::to_string(settings_.max_terminals)}})
          .with_retry_after(5s);
    }
    if (settings_.max_terminals_per_owner > 0 && terminals_by_owner_.count(owner) &&
        terminals_by_owner_[owner] >= settings_.max_terminals_per_owner) {
      throw Error(ErrorCode::rate_limited,
                  "you have " + std::to_string(settings_.max_terminals_per_owner) +
                      " terminals open on this berthd, the most one owner may; close one first",
                  {{"reason", "terminals_per_owner"}, {"limit", std::to_string(settings_.max_terminals_per_owner)}})
          .with_retry_after(5s);
    }
    auto& per_sandbox = terminals_[id];
    if (per_sandbox >= settings_.max_terminals_per_sandbox) {
      throw Error(ErrorCode::conflict,
                  "sandbox '" + id + "' has " + std::to_string(settings_.max_terminals_per_sandbox) +
                      " terminals open, the most it may have; close one first",
                  {{"sandbox_id", id}, {"limit", std::to_string(settings_.max_terminals_per_sandbox)}});
    }
    ++per_sandbox;
    ++terminals_by_owner_[owner];
    ++terminals_open_;
  }
  auto release = [this, id, owner] {
    std::lock_guard lock(terminals_mutex_);
    if (--terminals_[id] == 0) terminals_.erase(id);
    if (--terminals_by_owner_[owner] == 0) terminals_by_owner_.erase(owner);
    --terminals_open_;
  };
  struct SlotGuard {
    std::function<void()> fn;
    ~SlotGuard() {
      if (fn) fn();
    }
  } slot{release};

  const auto profile = profile_of(row);
  auto in_use = in_flight_.enter(id);
  std::unique_ptr<Process> process;
  std::string session_id;
  try {
    std::atomic<bool> started{
        false};  // starting a shell runs nothing the client sent: a retry on a new session is safe
    with_session(row, started, [&](const store::SessionRow& session, const CancelToken&) {
      if (engine_exec_only(session.id)) {
        throw Error(ErrorCode::capability_not_supported,
                    "a terminal needs interactive processes, which this sandbox's session does not offer");
      }
      ProcessSpec ps;
      ps.argv = {profile->shell};
      ps.env = {{"TERM", spec.term}};
      ps.pty = true;
      ps.rows = spec.rows;
      ps.cols = spec.cols;
      process = driver_.process_start(session.handle, ps);
      session_id = session.id;
      return 0;
    });
  } catch (const DriverError& e) {
    if (e.code() == DriverErrc::unsupported) {
      throw Error(ErrorCode::capability_not_supported,
                  "a terminal needs interactive processes, which this sandbox's session does not offer");
    }
    rethrow_driver_error(e, "starting a terminal in sandbox '" + id + "'");
  }
  log::info("terminal.open", {{"sandbox", id},
                              {"session", session_id},
                              {"shell", profile->shell},
                              {"rows", std::to_string(spec.rows)},
                              {"cols", std::to_string(spec.cols)}});
  Terminal::Hooks hooks;
  hooks.touch = [this, row] {
    try {
      touch_later(row);
    } catch (const std::exception&) {
      // A touch that cannot be queued is retried by the next one.
    }
  };
  hooks.release = std::exchange(slot.fn, nullptr);
  hooks.session_running = [this, id, session_id] {
    try {
      auto row = store_.get_sandbox(id);
      return row && row->current_session_id && *row->current_session_id == session_id && !row->deleted_at;
    } catch (const std::exception&) {
      return true;  // cannot tell: the shell's own exit it is
    }
  };
  hooks.touch_every = std::max<std::chrono::milliseconds>(200ms, profile->idle_timeout / 4);
  return std::make_unique<Terminal>(id, session_id, profile->shell, std::move(process), std::move(in_use),
                                    std::move(hooks));
}

std::size_t SandboxService::terminals_open() const {
  std::lock_guard lock(terminals_mutex_);
  return terminals_open_;
}

}  // namespace berth::core
