// Session starting: ensure_running's compare-and-swap race (one caller installs the session, the others wait for
// it), starting and clearing a session, and the marks that keep recover() away from sessions started here.
#include "core/ids.hpp"
#include "core/log.hpp"
#include "core/sandbox_service.hpp"
#include "core/sandbox_service_internal.hpp"

namespace berth::core {

using namespace service_internal;
using namespace std::chrono_literals;

SandboxService::StartingHere::StartingHere(SandboxService& service, std::string session_id)
    : service_(service), session_id_(std::move(session_id)) {
  std::lock_guard lock(service_.starting_mutex_);
  service_.starting_here_.insert(session_id_);
}

SandboxService::StartingHere::~StartingHere() {
  std::lock_guard lock(service_.starting_mutex_);
  service_.starting_here_.erase(session_id_);
}

bool SandboxService::started_here(const std::string& session_id) {
  std::lock_guard lock(starting_mutex_);
  return starting_here_.count(session_id) != 0;
}

void SandboxService::notify_sessions_changed() {
  std::lock_guard lock(wait_mutex_);
  sessions_changed_.notify_all();
}

// ---- ensure_running ---------------------------------------------------------------------------------------------

store::SessionRow SandboxService::ensure_running(const std::string& owner, const std::string& id) {
  auto started = clock_->monotonic();
  auto deadline = started + settings_.start_wait;
  std::string waited_on;  // the session this caller waits for; its failure is this caller's failure
  for (int round = 0;; ++round) {
    auto row = load_live(owner, id);
    if (row.expires_at && *row.expires_at <= clock_->now()) {
      throw Error(ErrorCode::sandbox_expired, "sandbox '" + id + "' has expired", {{"sandbox_id", id}});
    }
    if (row.current_session_id) {
      auto session = store_.get_session(*row.current_session_id);
      if (session && session->state == SS::ready) return *session;
      if (session && session->state == SS::starting) {
        waited_on = session->id;
        if (clock_->monotonic() >= deadline) {
          throw Error(ErrorCode::session_not_ready, "session of sandbox '" + id + "' is not ready yet",
                      {{"sandbox_id", id}, {"session_id", session->id}})
              .with_retry_after(2s);
        }
        // Wake on an in-process state change; re-read the database at least every 100 ms for other processes.
        std::unique_lock lock(wait_mutex_);
        sessions_changed_.wait_for(lock, 100ms);
        continue;
      }
      // The current session failed, stopped or died: clear it by CAS so that a new one can start.
      if (session && session->id == waited_on && session->state == SS::failed) {
        throw Error(ErrorCode::driver_unavailable, "sandbox '" + id + "' failed to start: " + session->error,
                    {{"sandbox_id", id}})
            .with_retry_after(1s);
      }
      auto cleared = row;
      cleared.current_session_id.reset();
      store_.update_sandbox_cas(cleared, row.version);
      continue;
    }
    if (!waited_on.empty()) {
      // The session we waited for is gone; if its start failed, report that rather than starting again.
      if (auto s = store_.get_session(waited_on); s && s->state == SS::failed) {
        throw Error(ErrorCode::driver_unavailable, "sandbox '" + id + "' failed to start: " + s->error,
                    {{"sandbox_id", id}})
            .with_retry_after(1s);
      }
    }
    // No session: race to install one. Exactly one CAS wins; the others loop and wait for it.
    SessionRow session;
    session.id = new_id("sess");
    StartingHere mark(*this, session.id);  // from before its row exists: a late recover() must leave it alone
    session.sandbox_id = row.id;
    session.state = SS::starting;
    session.created_at = clock_->now();
    session.last_active_at = session.created_at;
    session.starter = settings_.instance_id;
    store_.insert_session(session);
    auto claimed = row;
    claimed.current_session_id = session.id;
    if (!store_.update_sandbox_cas(claimed, row.version)) {
      store_.delete_session(session.id);
      continue;
    }
    claimed.version = row.version + 1;
    log::info("session.create",
              {{"sandbox", row.id}, {"session", session.id}, {"attempts", std::to_string(round + 1)}});
    return start_session(claimed, session, round + 1);
  }
}

store::SessionRow SandboxService::start_session(SandboxRow row, SessionRow session, int attempts) {
  auto t0 = std::chrono::steady_clock::now();
  const auto held_profile = profile_of(row);
  const auto& profile = *held_profile;
  auto workspace = store_.get_workspace(row.workspace_id);
  SessionSpec spec;
  spec.session_id = session.id;
  spec.image = profile.image;
  spec.env = profile.env;
  for (const auto& [k, v] : row.env)
    spec.env[k] = v;
  spec.labels = {{"berth.managed", "true"},
                 {"berth.instance", settings_.instance_id},
                 {"berth.sandbox", row.id},
                 {"berth.session", session.id},
                 {"berth.workspace", row.workspace_id}};
  // User labels travel along under their own prefix, so operators can find containers by them; they can never
  // collide with (or forge) the berth.* labels the host relies on.
  for (const auto& [k, v] : row.labels)
    spec.labels["berth.label." + k] = v;
  spec.nano_cpus = profile.nano_cpus;
  spec.memory_bytes = profile.memory_bytes;
  spec.pids_limit = profile.pids_limit;
  spec.network_enabled = profile.network;
  spec.read_only_rootfs = profile.read_only_rootfs;
  spec.workspace_volume = workspace ? workspace->volume : "";
  spec.workspace_mount_path = "/workspace";
  spec.user = profile.user;
  spec.working_dir = "/workspace";
  try {
    auto info = driver_.session_create(spec);
    session.handle = info.handle;
    session.endpoint = info.endpoint;
    session.state = SS::ready;
    session.last_active_at = clock_->now();
    store_.update_session(session);
  } catch (const DriverError& e) {
    session.state = SS::failed;
    session.error = e.what();
    store_.update_session(session);
    log::warn("session.start_failed", {{"sandbox", row.id}, {"session", session.id}, {"error", e.what()}});
    clear_session(row.id, session.id, SS::failed, e.what());
    notify_sessions_changed();
    rethrow_driver_error(e, "starting sandbox '" + row.id + "'");
  }
  // The sandbox may have been stopped or deleted while the container started: then this container is not wanted.
  auto now_row = store_.get_sandbox(row.id);
  if (!now_row || now_row->deleted_at || now_row->current_session_id != session.id) {
    destroy_session(session);
    notify_sessions_changed();
    throw Error(ErrorCode::conflict, "sandbox '" + row.id + "' was stopped or deleted while starting");
  }
  if (!now_row->last_error.empty()) {
    auto ok = *now_row;
    ok.last_error.clear();
    store_.update_sandbox_cas(ok, now_row->version);
  }
  touch(*now_row);
  notify_sessions_changed();
  log::info("session.runtime_ready", {{"sandbox", row.id},
                                      {"session", session.id},
                                      {"handle", session.handle},
                                      {"attempts", std::to_string(attempts)},
                                      {"elapsed_ms", ms_since(t0)}});
  return session;
}

void SandboxService::clear_session(const std::string& sandbox_id, const std::string& session_id, SS final_state,
                                   const std::string& error) {
  for (int i = 0; i < 20; ++i) {
    auto row = store_.get_sandbox(sandbox_id);
    if (!row || row->current_session_id != session_id) break;
    auto cleared = *row;
    cleared.current_session_id.reset();
    if (final_state == SS::failed) cleared.last_error = error;
    if (store_.update_sandbox_cas(cleared, row->version)) break;
  }
  if (auto s = store_.get_session(session_id); s && s->state != final_state) {
    s->state = final_state;
    if (!error.empty()) s->error = error;
    store_.update_session(*s);
  }
}

void SandboxService::destroy_session(const SessionRow& session) {
  contexts_.drop_session(session.sandbox_id, session.id, "session_ended");  // the kernels go with the container
  if (session.handle.empty()) return;
  try {
    driver_.session_stop(session.handle, settings_.stop_grace);
  } catch (const DriverError& e) {
    if (e.code() != DriverErrc::not_found) {
      log::warn("session.stop_failed", {{"session", session.id}, {"handle", session.handle}, {"error", e.what()}});
    }
  }
  try {
    driver_.session_remove(session.handle);
  } catch (const DriverError& e) {
    if (e.code() != DriverErrc::not_found) throw;
  }
  auto s = session;
  s.state = SS::stopped;
  store_.update_session(s);
  log::info("session.stop", {{"sandbox", session.sandbox_id}, {"session", session.id}, {"handle", session.handle}});
}

void SandboxService::retire_dead_session(const SessionRow& session, const std::string& why) {
  // Only a session still active: one that stop, delete or another caller already ended keeps its final state.
  auto stored = store_.get_session(session.id);
  if (!stored || (stored->state != SS::ready && stored->state != SS::starting)) return;
  contexts_.drop_session(session.sandbox_id, session.id, "session_ended");
  log::warn("session.dead",
            {{"sandbox", session.sandbox_id}, {"session", session.id}, {"handle", session.handle}, {"reason", why}});
  clear_session(session.sandbox_id, session.id, SS::dead, why);
  if (!session.handle.empty()) {
    try {
      driver_.session_remove(session.handle);
    } catch (const DriverError& e) {
      // not_found: another caller removed it first. Otherwise the orphan pass retries the removal.
      if (e.code() != DriverErrc::not_found) {
        log::warn("session.remove_failed", {{"session", session.id}, {"handle", session.handle}, {"error", e.what()}});
      }
    }
  }
  notify_sessions_changed();
}

}  // namespace berth::core
