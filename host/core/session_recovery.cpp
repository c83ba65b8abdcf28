// Crash recovery: what a restarted berthd does with the sessions its previous run left starting or running, and
// what another berthd does with the sessions and containers of an instance that stopped heartbeating (issue 11).
// Without it, a session left `starting` (its starter was killed) blocks its sandbox until the cleanup task gives up
// on it after 2 x start_wait, and every exec meanwhile waits for the start deadline and fails.
#include <chrono>
#include <map>

#include "core/log.hpp"
#include "core/sandbox_service.hpp"
#include "core/sandbox_service_internal.hpp"

namespace berth::core {
using namespace service_internal;
namespace {

/** One listing of the containers labelled with `instance`, keyed by their berth.session label. Throws DriverError. */
std::map<std::string, SessionListing> containers_by_session(Driver& driver, const std::string& instance) {
  std::map<std::string, SessionListing> containers;
  for (auto& c : driver.session_list({{"berth.managed", "true"}, {"berth.instance", instance}})) {
    auto label = c.labels.find("berth.session");
    if (label != c.labels.end()) containers[label->second] = std::move(c);
  }
  return containers;
}

}  // namespace

RecoveryReport SandboxService::recover() {
  RecoveryReport report;
  auto t0 = std::chrono::steady_clock::now();
  std::vector<SessionRow> mine;
  for (auto& s : store_.list_active_sessions()) {
    if (s.starter == settings_.instance_id && !started_here(s.id)) mine.push_back(std::move(s));
  }
  if (mine.empty()) {
    recovery_pending_ = false;
    log::info("recovery.done", {{"sessions", "0"}, {"elapsed_ms", ms_since(t0)}});
    return report;
  }

  // One listing for all of them: recovery time must not grow with a driver round trip per sandbox.
  std::map<std::string, SessionListing> containers;
  try {
    containers = containers_by_session(driver_, settings_.instance_id);
  } catch (const DriverError& e) {
    for (const auto& s : mine)
      report.failed.push_back(s.id);
    log::warn("recovery.failed", {{"sessions", std::to_string(mine.size())}, {"error", e.what()}});
    recovery_pending_ = true;
    return report;
  }
  recovery_pending_ = false;

  for (auto& s : mine)
    reconcile_session(std::move(s), containers, report, "recovery");
  notify_sessions_changed();
  log::info("recovery.done", {{"sessions", std::to_string(mine.size())},
                              {"adopted", std::to_string(report.adopted.size())},
                              {"cleared", std::to_string(report.cleared.size())},
                              {"failed", std::to_string(report.failed.size())},
                              {"elapsed_ms", ms_since(t0)}});
  return report;
}

void SandboxService::reconcile_session(SessionRow s, const std::map<std::string, SessionListing>& containers,
                                       RecoveryReport& report, const char* step) {
  auto container = containers.find(s.id);
  // `unknown` (a newer driver's state this host cannot name) is never read as dead: it is adopted like running.
  bool running = container != containers.end() && alive(container->second.state);
  auto row = store_.get_sandbox(s.sandbox_id);
  bool wanted = row && !row->deleted_at && row->current_session_id == s.id;
  try {
    if (running && wanted) {
      if (s.state == SS::starting) {
        // The container came up but its starter died before recording it: adopt it.
        auto info = driver_.session_inspect(container->second.handle);
        if (!alive(info.state)) running = false;
        if (running) {
          s.handle = info.handle.empty() ? container->second.handle : info.handle;
          s.endpoint = info.endpoint;
          s.state = SS::ready;
          s.last_active_at = clock_->now();
          store_.update_session(s);
          touch(*row);
        }
      }
      if (running) {
        report.adopted.push_back(s.id);
        log::info("session.adopted",
                  {{"sandbox", s.sandbox_id}, {"session", s.id}, {"handle", s.handle}, {"step", step}});
        return;
      }
    }
    std::string why = !wanted   ? "sandbox no longer uses it"
                      : running ? "container not running"
                      : container == containers.end()
                          ? (s.state == SS::starting ? "its starter stopped while starting it" : "container missing")
                          : "container " + std::string(to_string(container->second.state));
    clear_session(s.sandbox_id, s.id, SS::dead, why);
    if (container != containers.end()) {
      try {
        driver_.session_stop(container->second.handle, settings_.stop_grace);
      } catch (const DriverError& e) {
        if (e.code() != DriverErrc::not_found) throw;
      }
      try {
        driver_.session_remove(container->second.handle);
      } catch (const DriverError& e) {
        if (e.code() != DriverErrc::not_found) throw;
      }
    }
    report.cleared.push_back(s.id);
    // The same event as the state sync's: a session found dead and cleared; `step` says who found it.
    log::info("session.dead", {{"sandbox", s.sandbox_id}, {"session", s.id}, {"reason", why}, {"step", step}});
  } catch (const DriverError& e) {
    // The row is already cleared (or adoption failed): the cleanup task's orphan pass removes the container.
    report.failed.push_back(s.id);
    log::warn("recovery.session_failed",
              {{"sandbox", s.sandbox_id}, {"session", s.id}, {"error", e.what()}, {"step", step}});
  }
}

void SandboxService::use_cleanup_leases(InstanceStore& leases, std::chrono::milliseconds ttl) {
  leases_ = &leases;
  lease_ttl_ = ttl;
}

namespace {

/** Releases a claimed lease when its scope ends, whatever ends it (a StoreError included): a leaked lease would keep
 *  every instance, this one's cleanup too, off the sandbox for lease_ttl. */
struct LeaseRelease {
  InstanceStore* leases;
  std::string key, holder;
  ~LeaseRelease() {
    if (!leases) return;
    try {
      leases->release_lease(key, holder);
    } catch (const std::exception& e) {
      log::warn("cleanup.lease_release_failed", {{"candidate", key}, {"holder", holder}, {"error", e.what()}});
    }
  }
};

}  // namespace

bool SandboxService::claim_lease(const std::string& key, const std::string& holder) {
  if (!leases_) return true;
  const auto now = clock_->now();
  return leases_->claim_lease(key, holder, now, now + lease_ttl_);
}

RecoveryReport SandboxService::adopt_sessions_of(const std::string& dead_instance,
                                                 std::chrono::system_clock::time_point heartbeat_before) {
  RecoveryReport report;
  if (dead_instance == settings_.instance_id) return report;  // our own are recover()'s
  auto t0 = std::chrono::steady_clock::now();
  std::vector<SessionRow> theirs;
  for (auto& s : store_.list_active_sessions()) {
    if (s.starter == dead_instance) theirs.push_back(std::move(s));
  }
  if (theirs.empty()) return report;
  std::map<std::string, SessionListing> containers;
  try {
    containers = containers_by_session(driver_, dead_instance);
  } catch (const DriverError& e) {
    for (const auto& s : theirs)
      report.failed.push_back(s.id);
    log::warn("instance.adopt_failed", {{"instance", dead_instance}, {"error", e.what()}});
    return report;
  }
  const std::string holder = lease_holder("reconcile");
  std::size_t skipped = 0;
  for (auto& s : theirs) {
    const std::string sandbox_id = s.sandbox_id;
    // The lease keeps a second adopter (or this instance's own cleanup pass) off the sandbox while we act; the
    // take-over makes the hand-over happen once even if a lease expired under a slow adopter.
    if (!claim_lease(sandbox_id, holder)) {
      ++skipped;
      log::info("cleanup.lease_busy", {{"candidate", sandbox_id}, {"action", "adopt"}});
      continue;
    }
    LeaseRelease release{leases_, sandbox_id, holder};
    if (!leases_ || leases_->take_over_session(s.id, dead_instance, settings_.instance_id, heartbeat_before)) {
      s.starter = settings_.instance_id;
      reconcile_session(std::move(s), containers, report, "adoption");
    } else {
      ++skipped;
    }
  }
  notify_sessions_changed();
  log::info("instance.adopted", {{"instance", dead_instance},
                                 {"sessions", std::to_string(theirs.size())},
                                 {"adopted", std::to_string(report.adopted.size())},
                                 {"cleared", std::to_string(report.cleared.size())},
                                 {"failed", std::to_string(report.failed.size())},
                                 {"skipped", std::to_string(skipped)},
                                 {"elapsed_ms", ms_since(t0)}});
  return report;
}

std::vector<std::string> SandboxService::sweep_containers_of(const std::string& dead_instance) {
  std::vector<std::string> removed;
  if (dead_instance == settings_.instance_id) return removed;  // our own are the orphan pass's
  const std::string holder = lease_holder("reconcile");
  for (const auto& c : driver_.session_list({{"berth.managed", "true"}, {"berth.instance", dead_instance}})) {
    auto inst = c.labels.find("berth.instance");
    if (inst == c.labels.end() || inst->second != dead_instance) continue;  // defence in depth, as the orphan pass
    auto label = c.labels.find("berth.session");
    auto sandbox_label = c.labels.find("berth.sandbox");
    const std::string key = sandbox_label != c.labels.end() ? sandbox_label->second : c.handle;
    if (!claim_lease(key, holder)) continue;  // another instance settles it
    LeaseRelease release{leases_, key, holder};
    bool keep = false;
    if (label != c.labels.end()) {
      auto session = store_.get_session(label->second);
      if (session && (session->state == SS::starting || session->state == SS::ready)) {
        auto sandbox = store_.get_sandbox(session->sandbox_id);
        const bool wanted = sandbox && !sandbox->deleted_at && sandbox->current_session_id == session->id;
        // Still the dead instance's (its adoption failed or runs elsewhere): adopt_sessions_of decides, not us.
        keep = wanted || session->starter == dead_instance;
      }
    }
    if (!keep) {
      try {
        try {
          driver_.session_stop(c.handle, settings_.stop_grace);
        } catch (const DriverError& e) {
          if (e.code() != DriverErrc::not_found) throw;
        }
        driver_.session_remove(c.handle);
        removed.push_back(c.handle);
        log::info("sandbox_cleaned", {{"action", "dead_instance_orphan_remove"},
                                      {"instance", dead_instance},
                                      {"handle", c.handle},
                                      {"sandbox", sandbox_label != c.labels.end() ? sandbox_label->second : ""}});
      } catch (const DriverError& e) {
        if (e.code() != DriverErrc::not_found) {
          log::warn("sandbox_clean_failed",
                    {{"action", "dead_instance_orphan_remove"}, {"handle", c.handle}, {"error", e.what()}});
        }
      }
    }
  }
  return removed;
}

}  // namespace berth::core
