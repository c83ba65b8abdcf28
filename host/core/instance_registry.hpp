// This berthd as a row in the store (issue 11): it registers itself, writes a heartbeat every heartbeat_interval,
// and hands over what dead instances (no heartbeat for instance_timeout, or stopped) left behind: their sessions at
// once (SandboxService::adopt_sessions_of), their containers after orphan_grace (sweep_containers_of).
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "core/clock.hpp"
#include "core/instance_store.hpp"
#include "core/sandbox_service.hpp"

namespace berth::core {

/** The [cluster] settings. */
struct ClusterSettings {
  std::chrono::milliseconds heartbeat_interval{5'000};
  std::chrono::milliseconds instance_timeout{30'000};  // longer than heartbeat_interval
  std::chrono::milliseconds orphan_grace{300'000};     // after death, before a dead instance's containers are swept
  std::chrono::milliseconds instance_retention{86'400'000};  // after the sweep, before a dead instance's row is deleted
  std::chrono::milliseconds lease_ttl{120'000};              // a cleanup lease of a crashed holder is free after this
};

/**
 * Runs two threads: the heartbeat (beat() every heartbeat_interval, nothing else, so that no slow hand-over or driver
 * call can make this live instance look dead to the others) and the hand-over (hand_over() at the same interval).
 * `store`, `service` and `clock` are borrowed and must outlive the registry. start() and stop() are for the daemon's
 * thread; tick() may be called by tests instead of start().
 */
class InstanceRegistry {
 public:
  /** `self` names this process (id = Settings::instance_id, host, pid); its times are set by start(). */
  InstanceRegistry(InstanceStore& store, SandboxService& service, std::shared_ptr<const Clock> clock,
                   ClusterSettings settings, InstanceRecord self);
  ~InstanceRegistry();
  InstanceRegistry(const InstanceRegistry&) = delete;
  InstanceRegistry& operator=(const InstanceRegistry&) = delete;

  /**
   * Registers this instance (store::StoreError propagates: berthd does not serve unregistered), hands the service
   * its cleanup leases, and starts the thread, whose first round runs at once. Log instance.registered.
   */
  void start();
  /** Stops the thread and, if start() ran, marks this instance stopped and frees its leases. Idempotent; never throws.
   */
  void stop();
  /** One round of both: beat(), then hand_over(). Returns how many dead instances were looked at. */
  int tick();
  /** The heartbeat, re-registering if the row went missing or was marked stopped. Store failures are logged
   *  (instance.heartbeat_failed) and retried next round. */
  void beat();
  /**
   * The hand-over from every dead instance: its leases are freed (a holder that died mid-pass would otherwise block
   * its sandboxes for lease_ttl), its sessions adopted or cleared, and after orphan_grace its containers swept once.
   * Store failures are logged (instance.handover_failed) and retried next round; returns how many dead instances
   * were looked at.
   */
  int hand_over();

 private:
  void loop(void (InstanceRegistry::*round)());
  void beat_round() { beat(); }
  void hand_over_round() { hand_over(); }

  InstanceStore& store_;
  SandboxService& service_;
  std::shared_ptr<const Clock> clock_;
  ClusterSettings settings_;
  InstanceRecord self_;
  std::map<std::string, std::chrono::system_clock::time_point> swept_;  // dead id -> heartbeat_at it was swept at
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  bool registered_ = false;
  std::thread heartbeat_thread_;
  std::thread thread_;  // the hand-over
};

}  // namespace berth::core
