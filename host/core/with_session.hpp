// SandboxService::with_session, the template every call into a sandbox's session runs through (in-use marking, the
// idle-timer touch, one replacement of a dead session when nothing ran). Included only by the service's own units
// that call it (exec_files.cpp, terminal.cpp); declared and documented in sandbox_service.hpp.
#pragma once

#include "core/log.hpp"
#include "core/sandbox_service.hpp"
#include "core/sandbox_service_internal.hpp"

namespace berth::core {

template <typename Fn>
auto SandboxService::with_session(const store::SandboxRow& row, const std::atomic<bool>& started, Fn&& fn,
                                  const std::string& tag, const std::atomic<bool>* cancelled) {
  using service_internal::RuntimeState;
  const std::string& id = row.id;
  auto in_use = in_flight_.enter(id, tag);
  // An async execution cancelled before it got here: its tag was not registered then (cancel_tagged found none), so
  // its token is cancelled now. The flag is set before cancel_tagged looks, the tag registered before this reads it.
  if (cancelled != nullptr && cancelled->load())
    in_flight_.cancel_tagged(tag);  // from here on, idle cleanup in this process leaves this sandbox alone
  // A long call must not look idle from its start. A timer within half its length of running out is written now,
  // so that idle cleanup (also another berthd's) sees the call before it could judge the sandbox idle; a timer far
  // from it rides the recorder's next batch (milliseconds), off the request path — unless the recorder's last
  // write failed: then other instances might not see a queued timer in time, and the call writes its own.
  const auto idle = profile_of(row)->idle_timeout;
  if (!row.idle_expires_at || *row.idle_expires_at <= saturating_add(clock_->now(), idle / 2) || !recorder_.writing()) {
    touch(row);
  } else {
    touch_later(row);
  }
  for (int attempt = 0;; ++attempt) {
    auto session = ensure_running(row.owner, id);
    try {
      auto result = fn(session, in_use.token());
      touch_later(row);
      return result;
    } catch (const DriverError& e) {
      if (e.code() != DriverErrc::not_found && e.code() != DriverErrc::conflict) throw;
      // not_found may be about a path rather than the container: only the session's state tells them apart.
      auto original = std::current_exception();
      RuntimeState state = RuntimeState::missing;
      try {
        state = driver_.session_inspect(session.handle).state;
      } catch (const DriverError&) {
        std::rethrow_exception(original);
      }
      if (alive(state)) throw;
      retire_dead_session(session, "container " + std::string(to_string(state)));
      // By the driver contract not_found means nothing ran; `started` covers what the driver cannot know (an
      // upload's source already read, output already delivered). Anything else may have run: never run it twice.
      bool untouched = e.code() == DriverErrc::not_found && !started.load();
      if (untouched && attempt == 0) {
        log::info("session.replaced", {{"sandbox", id}, {"session", session.id}, {"reason", e.what()}});
        continue;
      }
      log::warn(
          "session.lost_mid_call",
          {{"sandbox", id}, {"session", session.id}, {"attempt", std::to_string(attempt + 1)}, {"error", e.what()}});
      throw Error(ErrorCode::conflict,
                  "the session of sandbox '" + id + "' ended during the call (" + e.what() +
                      "); it was not repeated, so it may have run in part. The next call starts a new session",
                  {{"sandbox_id", id}, {"session_id", session.id}});
    }
  }
}

}  // namespace berth::core
