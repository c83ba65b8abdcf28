// The cleanup passes behind CleanupTask and POST /v1/admin/gc/run: state sync of dead sessions, idle stop, expiry,
// orphan containers, abandoned workspaces, history expiry and disk measurement, each driver call under a deadline.
#include "core/log.hpp"
#include "core/sandbox_service.hpp"
#include "core/sandbox_service_internal.hpp"

namespace berth::core {

using namespace service_internal;
using namespace std::chrono_literals;

namespace {

/** A report's actions as metrics count them (core/metrics.hpp); the names are the report's field names. */
CleanupActionCounts cleanup_action_counts(const CleanupReport& r) {
  return {{"idle_stopped", r.idle_stopped.size()},
          {"expired_deleted", r.expired_deleted.size()},
          {"orphans_removed", r.orphans_removed.size()},
          {"workspaces_removed", r.workspaces_removed.size()},
          {"dead_sessions", r.dead_sessions.size()},
          {"skipped_stale", r.skipped_stale.size()},
          {"skipped_in_use", r.skipped_in_use.size()},
          {"failed", r.failed.size()},
          {"disk_stopped", r.disk_stopped.size()},
          {"executions_expired", static_cast<std::uint64_t>(r.executions_expired)}};
}

}  // namespace

// ---- cleanup --------------------------------------------------------------------------------------------------------

CleanupReport SandboxService::run_cleanup() {
  std::lock_guard lock(cleanup_mutex_);
  CleanupReport report;
  auto t0 = std::chrono::steady_clock::now();
  if (recovery_pending_.load()) recover();  // the driver was unreachable when berthd started
  cleanup_dead_sessions(report);
  cleanup_idle(report);
  cleanup_expired(report);
  cleanup_orphans(report);
  cleanup_abandoned_workspaces(report);
  cleanup_history(report);
  cleanup_disk(report);
  sweep_contexts();
  if (leases_) leases_->release_leases(lease_holder("cleanup"));
  metrics_.cleanup_pass_done(cleanup_action_counts(report),
                             std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  log::info("cleanup.run", {{"idle_stopped", std::to_string(report.idle_stopped.size())},
                            {"expired_deleted", std::to_string(report.expired_deleted.size())},
                            {"orphans_removed", std::to_string(report.orphans_removed.size())},
                            {"workspaces_removed", std::to_string(report.workspaces_removed.size())},
                            {"dead_sessions", std::to_string(report.dead_sessions.size())},
                            {"skipped_stale", std::to_string(report.skipped_stale.size())},
                            {"skipped_in_use", std::to_string(report.skipped_in_use.size())},
                            {"skipped_leased", std::to_string(report.skipped_leased.size())},
                            {"failed", std::to_string(report.failed.size())},
                            {"executions_expired", std::to_string(report.executions_expired)},
                            {"disk_stopped", std::to_string(report.disk_stopped.size())},
                            {"elapsed_ms", ms_since(t0)}});
  return report;
}

void SandboxService::cleanup_dead_sessions(CleanupReport& report) {
  // State sync: a ready session whose container is gone or exited is marked dead and cleared, so GET shows the
  // truth. A session stuck in "starting" far beyond the start deadline (its starter died) is failed.
  for (const auto& s : store_.list_active_sessions()) {
    try {
      bool dead = false;
      std::string why;
      if (s.state == SS::ready) {
        auto info = std::make_shared<SessionInfo>();
        if (!cleanup_call(report, s.sandbox_id, s.handle, "state_sync",
                          [this, handle = s.handle, info] { *info = driver_.session_inspect(handle); })) {
          continue;
        }
        if (info->state == RuntimeState::missing || info->state == RuntimeState::exited) {
          dead = true;
          why = "container " + std::string(to_string(info->state));
        }
      } else if (s.state == SS::starting && clock_->now() - s.created_at > 2 * settings_.start_wait) {
        dead = true;
        why = "start did not complete";
      }
      if (!dead) continue;
      clear_session(s.sandbox_id, s.id, SS::dead, why);
      if (!s.handle.empty() &&
          !cleanup_call(report, s.sandbox_id, s.handle, "dead_session_remove", [this, handle = s.handle] {
            try {
              driver_.session_remove(handle);
            } catch (const DriverError& e) {
              if (e.code() != DriverErrc::not_found) throw;
            }
          })) {
        continue;
      }
      report.dead_sessions.push_back(s.id);
      log::info("session.dead", {{"sandbox", s.sandbox_id}, {"session", s.id}, {"reason", why}});
    } catch (const DriverError& e) {
      report.failed.push_back(s.sandbox_id);
      log::warn("sandbox_clean_failed", {{"sandbox", s.sandbox_id}, {"step", "state_sync"}, {"error", e.what()}});
    }
  }
}

void SandboxService::cleanup_idle(CleanupReport& report) {
  try {
    recorder_.flush();  // the idle timers that finished calls set must be in the rows judged below
  } catch (const store::StoreUnavailable& e) {
    // Judging idleness from rows that lack the newest timers could stop a sandbox in use: skip this pass only, the
    // other passes (expiry, orphans, history) do not depend on the timers.
    log::warn("cleanup.idle_skipped", {{"reason", "execution records not written"}, {"error", e.what()}});
    return;
  }
  auto now = clock_->now();
  const auto touched_before = recorder_.pending_touches();  // before the read: one written meanwhile is still seen
  for (const auto& snap : store_.list_live_sandboxes()) {
    if (!snap.current_session_id || !snap.idle_expires_at || *snap.idle_expires_at > now) continue;
    if (in_flight_.in_use(snap.id)) {
      // A call that started before the timer ran out is still running: stopping now would kill it mid-way. A call
      // entering after this check touches the row first, which makes the CAS below fail.
      report.skipped_in_use.push_back(snap.id);
      log::info("sandbox_clean_skipped", {{"sandbox", snap.id}, {"reason", "in use"}});
      continue;
    }
    auto queued = recorder_.pending_touch(snap.id);
    if (auto it = touched_before.find(snap.id); it != touched_before.end() && (!queued || it->second > *queued)) {
      queued = it->second;
    }
    if (queued && *queued > now) {
      // A call ended after the flush above and its timer still waits in the recorder: the sandbox was just used.
      report.skipped_in_use.push_back(snap.id);
      log::info("sandbox_clean_skipped", {{"sandbox", snap.id}, {"reason", "touch queued"}});
      continue;
    }
    // The lease first: the row is changed only by the instance that will also stop the container.
    if (!cleanup_lease(report, snap.id, "idle_stop")) continue;
    // Re-check under CAS: the row must still be exactly the snapshot we judged.
    auto cleared = snap;
    cleared.current_session_id.reset();
    cleared.idle_expires_at.reset();
    if (!store_.update_sandbox_cas(cleared, snap.version)) {
      report.skipped_stale.push_back(snap.id);
      log::info("sandbox_clean_skipped", {{"sandbox", snap.id}, {"reason", "stale snapshot"}});
      continue;
    }
    auto session = store_.get_session(*snap.current_session_id);
    try {
      if (session &&
          !cleanup_call(report, snap.id, session->handle, "idle_stop", [this, s = *session] { destroy_session(s); }))
        continue;
      report.idle_stopped.push_back(snap.id);
      log::info("sandbox_cleaned", {{"sandbox", snap.id}, {"action", "idle_stop"}});
    } catch (const DriverError& e) {
      // The container stays labelled and row-less: the orphan step retries its removal.
      report.failed.push_back(snap.id);
      log::warn("sandbox_clean_failed", {{"sandbox", snap.id}, {"action", "idle_stop"}, {"error", e.what()}});
    }
  }
  notify_sessions_changed();
}

void SandboxService::cleanup_expired(CleanupReport& report) {
  auto now = clock_->now();
  for (const auto& snap : store_.list_live_sandboxes()) {
    if (!snap.expires_at || *snap.expires_at > now) continue;  // the boundary counts as expired
    // The lease first: the row is deleted only by the instance that will also remove its resources.
    if (!cleanup_lease(report, snap.id, "expired_delete")) continue;
    auto deleted = snap;
    deleted.deleted_at = now;
    deleted.current_session_id.reset();
    if (!store_.update_sandbox_cas(deleted, snap.version)) {
      report.skipped_stale.push_back(snap.id);
      log::info("sandbox_clean_skipped", {{"sandbox", snap.id}, {"reason", "stale snapshot"}});
      continue;
    }
    std::string key = snap.id;  // the container's handle when it has one: the orphan step uses that key too
    if (snap.current_session_id) {
      if (auto session = store_.get_session(*snap.current_session_id); session && !session->handle.empty()) {
        key = session->handle;
      }
    }
    if (!cleanup_call(report, snap.id, key, "expired_delete", [this, snap] { delete_row_and_resources(snap); }))
      continue;
    report.expired_deleted.push_back(snap.id);
    log::info("sandbox_cleaned", {{"sandbox", snap.id}, {"action", "expired_delete"}});
  }
}

void SandboxService::cleanup_orphans(CleanupReport& report) {
  std::vector<SessionListing> listed;
  try {
    listed = driver_.session_list({{"berth.managed", "true"}, {"berth.instance", settings_.instance_id}});
  } catch (const DriverError& e) {
    report.failed.push_back("orphan-scan");
    log::warn("sandbox_clean_failed", {{"step", "orphans"}, {"error", e.what()}});
    return;
  }
  for (const auto& c : listed) {
    // Defence in depth: never touch a container without this instance's labels, whatever the driver returned.
    auto inst = c.labels.find("berth.instance");
    if (inst == c.labels.end() || inst->second != settings_.instance_id) continue;
    auto sid = c.labels.find("berth.session");
    bool orphan = true;
    if (sid != c.labels.end()) {
      auto session = store_.get_session(sid->second);
      if (session && (session->state == SS::starting || session->state == SS::ready)) {
        auto sandbox = store_.get_sandbox(session->sandbox_id);
        orphan = !sandbox || sandbox->deleted_at || sandbox->current_session_id != session->id;
        if (session->state == SS::starting) orphan = false;  // its starter decides
      }
    }
    if (!orphan) continue;
    try {
      if (!cleanup_call(report, c.handle, c.handle, "orphan_remove", [this, handle = c.handle] {
            try {
              driver_.session_stop(handle, settings_.stop_grace);
            } catch (const DriverError& e) {
              if (e.code() != DriverErrc::not_found) throw;
            }
            driver_.session_remove(handle);
          })) {
        continue;
      }
      report.orphans_removed.push_back(c.handle);
      log::info("sandbox_cleaned", {{"action", "orphan_remove"},
                                    {"handle", c.handle},
                                    {"sandbox", c.labels.count("berth.sandbox") ? c.labels.at("berth.sandbox") : ""}});
    } catch (const DriverError& e) {
      if (e.code() == DriverErrc::not_found) continue;
      report.failed.push_back(c.handle);
      log::warn("sandbox_clean_failed", {{"action", "orphan_remove"}, {"handle", c.handle}, {"error", e.what()}});
    }
  }
}

void SandboxService::cleanup_abandoned_workspaces(CleanupReport& report) {
  for (const auto& ws : store_.list_abandoned_managed_workspaces()) {
    try {
      if (!cleanup_call(report, ws.id, ws.volume, "workspace_remove", [this, volume = ws.volume] {
            try {
              driver_.volume_remove(volume);
            } catch (const DriverError& e) {
              if (e.code() != DriverErrc::not_found) throw;
            }
          })) {
        continue;
      }
      store_.mark_workspace_deleted(ws.id, clock_->now());
      report.workspaces_removed.push_back(ws.id);
      log::info("workspace.delete", {{"workspace", ws.id}, {"reason", "abandoned"}});
    } catch (const DriverError& e) {
      report.failed.push_back(ws.id);
      log::warn("sandbox_clean_failed", {{"action", "workspace_remove"}, {"workspace", ws.id}, {"error", e.what()}});
    }
  }
}

bool SandboxService::cleanup_lease(CleanupReport& report, const std::string& candidate, const char* action) {
  if (claim_lease(candidate, lease_holder("cleanup"))) return true;  // free, expired, or already this pass's
  report.skipped_leased.push_back(candidate);                        // another instance acts on it right now
  log::info("cleanup.lease_busy", {{"candidate", candidate}, {"action", action}});
  return false;
}

bool SandboxService::cleanup_call(CleanupReport& report, const std::string& candidate, const std::string& key,
                                  const char* action, std::function<void()> work) {
  if (!cleanup_lease(report, candidate, action)) return false;
  const auto outcome = cleanup_calls_.run(key, settings_.cleanup_call_deadline, std::move(work));
  if (outcome == DeadlineRunner::Outcome::done) return true;
  // This candidate's driver call is stuck (for instance behind an engine lock a slow client holds): report it and
  // move on, so no tenant's sandbox delays the pass for the others. The call finishes, or fails, on its own.
  report.failed.push_back(candidate);
  log::warn("sandbox_clean_failed",
            {{"candidate", candidate},
             {"key", key},
             {"action", action},
             {"error", outcome == DeadlineRunner::Outcome::busy
                           ? "an earlier cleanup call for it is still running"
                           : "the driver call exceeded the cleanup deadline of " +
                                 std::to_string(settings_.cleanup_call_deadline.count()) + " ms"}});
  return false;
}

void SandboxService::cleanup_history(CleanupReport& report) {
  // Expiry keeps the store, and so what one history page can cost, bounded by configuration.
  const auto cutoff =
      settings_.history_max_age.count() > 0 ? clock_->now() - settings_.history_max_age : store::TimePoint::min();
  try {
    report.executions_expired = store_.purge_executions(cutoff, settings_.history_max_records);
  } catch (const std::exception& e) {
    report.failed.push_back("history");
    log::warn("sandbox_clean_failed", {{"step", "history"}, {"error", e.what()}});
  }
}

void SandboxService::cleanup_disk(CleanupReport& report) {
  if (!driver_.has_capability(cap::stats)) return;
  for (const auto& snap : store_.list_live_sandboxes()) {
    if (!snap.current_session_id || profile_of(snap)->disk_limit_bytes == 0) continue;
    auto session = store_.get_session(*snap.current_session_id);
    if (!session || session->state != SS::ready) continue;
    auto usage = std::make_shared<std::optional<DiskUsage>>();
    if (!cleanup_call(report, snap.id, session->handle, "disk_measure",
                      [this, snap, handle = session->handle, usage] { *usage = measure_disk(snap, handle); })) {
      continue;
    }
    auto stopped = std::make_shared<bool>(false);
    if (*usage && (*usage)->exceeded &&
        cleanup_call(report, snap.id, session->handle, "disk_stop",
                     [this, snap, id = session->id, u = **usage, stopped] { *stopped = enforce_disk(snap, id, u); }) &&
        *stopped) {
      report.disk_stopped.push_back(snap.id);
    }
  }
}

}  // namespace berth::core
