// What the core needs from the database to run several berthd on one store (issue 11): instances as rows with a
// heartbeat, the hand-over of a dead instance's sessions, and cleanup leases. A port the core owns; SqliteStore and
// MySqlStore implement it next to store::Store (schema migration 5: tables `instances` and `cleanup_leases`; the
// instance that started a session is sessions.starter, since migration 2).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace berth::core {

/** One berthd process as the database knows it. Times are wall-clock, kept to the millisecond. */
struct InstanceRecord {
  std::string id;    // Settings::instance_id: the berth.instance label of its containers
  std::string host;  // node name, for operators
  std::int64_t pid = 0;
  std::chrono::system_clock::time_point started_at;
  std::chrono::system_clock::time_point heartbeat_at;
  std::optional<std::chrono::system_clock::time_point> stopped_at;  // set by a clean shutdown
};

/**
 * The instance and lease rows. Thread-safe; every method throws store::StoreError (store::StoreUnavailable when the
 * database cannot be reached). Nothing here holds a lock across calls: every claim is a single-row compare-and-swap,
 * so it stays correct across processes and Galera nodes.
 */
class InstanceStore {
 public:
  virtual ~InstanceStore() = default;

  /** Inserts the instance or, when the id is known (a restart), replaces host, pid and times and clears stopped_at. */
  virtual void register_instance(const InstanceRecord& row) = 0;
  /** Sets heartbeat_at of a registered, not stopped instance. False if there is no such row (re-register then). */
  virtual bool heartbeat_instance(const std::string& id, std::chrono::system_clock::time_point at) = 0;
  /** Clean shutdown: sets stopped_at. Its sessions are adopted by the other instances at once. */
  virtual void mark_instance_stopped(const std::string& id, std::chrono::system_clock::time_point at) = 0;
  /** Every registered instance, ordered by id. */
  virtual std::vector<InstanceRecord> list_instances() = 0;
  /** Instances that stopped, or whose last heartbeat is older than `heartbeat_before`; ordered by id. */
  virtual std::vector<InstanceRecord> list_dead_instances(std::chrono::system_clock::time_point heartbeat_before) = 0;
  /**
   * Forgets a long-dead instance: deletes its row, in one statement, only if it died before `dead_before` (stopped
   * then, or its last heartbeat older) and no starting or ready session still names it as starter (those are still
   * to be adopted). True if the row was deleted. An instance that comes back later simply registers again.
   */
  virtual bool delete_dead_instance(const std::string& id, std::chrono::system_clock::time_point dead_before) = 0;

  /**
   * The hand-over of one session: sets sessions.starter to `to` only if it is still `from` (`from` != `to`) and `from`
   * is still dead in the same statement (no instances row for it that is not stopped and beat at or after
   * `heartbeat_before`), so an instance that came back (a restart with the same id, a heartbeat that was only late)
   * keeps its sessions. True if this call won; of several instances adopting one dead instance's session exactly one
   * does.
   */
  virtual bool take_over_session(const std::string& session_id, const std::string& from, const std::string& to,
                                 std::chrono::system_clock::time_point heartbeat_before) = 0;

  /**
   * Claims the cleanup lease on `key` (a sandbox id, or the handle / workspace id a pass acts on) for `holder` until
   * `expires_at`: wins if the lease is free, expired (lease_expires_at <= now) or already held by `holder` (then
   * renewed). True if `holder` holds it afterwards.
   */
  virtual bool claim_lease(const std::string& key, const std::string& holder, std::chrono::system_clock::time_point now,
                           std::chrono::system_clock::time_point expires_at) = 0;
  /** Releases the lease on `key` if `holder` holds it; false otherwise. */
  virtual bool release_lease(const std::string& key, const std::string& holder) = 0;
  /** Releases every lease `holder` holds; returns how many. */
  virtual int release_leases(const std::string& holder) = 0;
};

}  // namespace berth::core
