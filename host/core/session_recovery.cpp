// Crash recovery: what a restarted berthd does with the sessions its previous run left starting or running.
// Without it, a session left `starting` (its starter was killed) blocks its sandbox until the cleanup task gives up
// on it after 2 x start_wait, and every exec meanwhile waits for the start deadline and fails.
#include <chrono>
#include <map>

#include "core/log.hpp"
#include "core/sandbox_service.hpp"
#include "core/sandbox_service_internal.hpp"

namespace berth::core {
using namespace service_internal;

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
  std::map<std::string, SessionListing> containers;  // berth.session label -> container
  try {
    for (auto& c : driver_.session_list({{"berth.managed", "true"}, {"berth.instance", settings_.instance_id}})) {
      auto label = c.labels.find("berth.session");
      if (label != c.labels.end()) containers[label->second] = std::move(c);
    }
  } catch (const DriverError& e) {
    for (const auto& s : mine)
      report.failed.push_back(s.id);
    log::warn("recovery.failed", {{"sessions", std::to_string(mine.size())}, {"error", e.what()}});
    recovery_pending_ = true;
    return report;
  }
  recovery_pending_ = false;

  for (auto& s : mine) {
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
          log::info("session.adopted", {{"sandbox", s.sandbox_id}, {"session", s.id}, {"handle", s.handle}});
          continue;
        }
      }
      std::string why = !wanted   ? "sandbox no longer uses it"
                        : running ? "container not running"
                        : container == containers.end()
                            ? (s.state == SS::starting ? "berthd restarted while starting it" : "container missing")
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
      log::info("session.dead", {{"sandbox", s.sandbox_id}, {"session", s.id}, {"reason", why}, {"step", "recovery"}});
    } catch (const DriverError& e) {
      // The row is already cleared (or adoption failed): the cleanup task's orphan pass removes the container.
      report.failed.push_back(s.id);
      log::warn("recovery.session_failed", {{"sandbox", s.sandbox_id}, {"session", s.id}, {"error", e.what()}});
    }
  }
  notify_sessions_changed();
  log::info("recovery.done", {{"sessions", std::to_string(mine.size())},
                              {"adopted", std::to_string(report.adopted.size())},
                              {"cleared", std::to_string(report.cleared.size())},
                              {"failed", std::to_string(report.failed.size())},
                              {"elapsed_ms", ms_since(t0)}});
  return report;
}

}  // namespace berth::core
