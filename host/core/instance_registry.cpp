#include "core/instance_registry.hpp"

#include <algorithm>
#include <exception>
#include <string>

#include "core/log.hpp"

namespace berth::core {
namespace {

std::string ms(std::chrono::milliseconds d) {
  return std::to_string(d.count());
}

}  // namespace

InstanceRegistry::InstanceRegistry(InstanceStore& store, SandboxService& service, std::shared_ptr<const Clock> clock,
                                   ClusterSettings settings, InstanceRecord self)
    : store_(store), service_(service), clock_(std::move(clock)), settings_(settings), self_(std::move(self)) {}

InstanceRegistry::~InstanceRegistry() {
  stop();
}

void InstanceRegistry::start() {
  std::lock_guard lock(mutex_);
  if (thread_.joinable()) return;
  self_.started_at = clock_->now();
  self_.heartbeat_at = self_.started_at;
  self_.stopped_at.reset();
  store_.register_instance(self_);
  registered_ = true;
  service_.use_cleanup_leases(store_, settings_.lease_ttl);
  log::info("instance.registered", {{"instance", self_.id},
                                    {"host", self_.host},
                                    {"pid", std::to_string(self_.pid)},
                                    {"heartbeat_interval_ms", ms(settings_.heartbeat_interval)},
                                    {"instance_timeout_ms", ms(settings_.instance_timeout)}});
  stopping_ = false;
  heartbeat_thread_ = std::thread([this] { loop(&InstanceRegistry::beat_round); });
  thread_ = std::thread([this] { loop(&InstanceRegistry::hand_over_round); });
}

void InstanceRegistry::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
  if (thread_.joinable()) thread_.join();
  std::lock_guard lock(mutex_);
  if (!registered_) return;
  registered_ = false;
  try {
    store_.mark_instance_stopped(self_.id, clock_->now());
    store_.release_leases(self_.id + "#cleanup");
    store_.release_leases(self_.id + "#reconcile");
    log::info("instance.stopped", {{"instance", self_.id}});
  } catch (const std::exception& e) {
    // The others find this instance dead by its heartbeat instead, and its leases expire.
    log::warn("instance.stop_failed", {{"instance", self_.id}, {"error", e.what()}});
  }
}

int InstanceRegistry::tick() {
  beat();
  return hand_over();
}

void InstanceRegistry::beat() {
  const auto now = clock_->now();
  try {
    if (!store_.heartbeat_instance(self_.id, now)) {
      // Our row was deleted, or marked stopped by someone: register again, so the others stop adopting from us.
      InstanceRecord again = self_;
      again.heartbeat_at = now;
      again.stopped_at.reset();
      store_.register_instance(again);
      log::warn("instance.reregistered", {{"instance", self_.id}});
    }
  } catch (const std::exception& e) {
    log::warn("instance.heartbeat_failed", {{"instance", self_.id}, {"error", e.what()}});
  }
}

int InstanceRegistry::hand_over() {
  const auto now = clock_->now();
  int looked_at = 0;
  try {
    const auto dead_instances = store_.list_dead_instances(now - settings_.instance_timeout);
    // Forget what this process swept of instances no longer listed (deleted by another instance, or back alive).
    std::erase_if(swept_, [&](const auto& entry) {
      return std::none_of(dead_instances.begin(), dead_instances.end(),
                          [&](const InstanceRecord& d) { return d.id == entry.first; });
    });
    for (const auto& dead : dead_instances) {
      if (dead.id == self_.id) continue;
      ++looked_at;
      // A holder that died mid-pass keeps its sandboxes leased until lease_ttl: free them first.
      store_.release_leases(dead.id + "#cleanup");
      store_.release_leases(dead.id + "#reconcile");
      service_.adopt_sessions_of(dead.id, now - settings_.instance_timeout);
      // The containers wait out the grace: a berthd that was only slow (or is restarting with the same id) gets
      // the chance to settle its own. Swept once per death (heartbeat_at), not every round.
      const auto died = dead.stopped_at ? *dead.stopped_at : dead.heartbeat_at;
      if (now - died < settings_.orphan_grace) continue;
      auto swept = swept_.find(dead.id);
      if (swept != swept_.end() && swept->second == dead.heartbeat_at) {
        // Swept by this process; after the retention the row goes, so that rows of instances long gone (every
        // restart with a fresh id leaves one) do not grow every round's work without end.
        const auto dead_before = now - settings_.orphan_grace - settings_.instance_retention;
        if (died < dead_before && store_.delete_dead_instance(dead.id, dead_before)) {
          swept_.erase(swept);
          log::info("instance.forgotten", {{"instance", dead.id}});
        }
        continue;
      }
      auto removed = service_.sweep_containers_of(dead.id);
      swept_[dead.id] = dead.heartbeat_at;
      log::info("instance.swept", {{"instance", dead.id}, {"containers_removed", std::to_string(removed.size())}});
    }
  } catch (const std::exception& e) {
    log::warn("instance.handover_failed", {{"instance", self_.id}, {"error", e.what()}});
  }
  return looked_at;
}

void InstanceRegistry::loop(void (InstanceRegistry::*round)()) {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    lock.unlock();
    (this->*round)();
    lock.lock();
    wake_.wait_for(lock, settings_.heartbeat_interval, [this] { return stopping_; });
  }
}

}  // namespace berth::core
