// Disk limits: measuring a session's disk use, stopping a session over its profile's limit, and the gate that
// refuses exec and file writes while a sandbox is over it (docs/security.md).
#include "core/log.hpp"
#include "core/sandbox_service.hpp"
#include "core/sandbox_service_internal.hpp"

namespace berth::core {

using namespace service_internal;
using namespace std::chrono_literals;

// ---- disk limits ------------------------------------------------------------------------------------------------

std::optional<DiskUsage> SandboxService::measure_disk(const SandboxRow& row, const std::string& handle) {
  const std::uint64_t limit = profile_of(row)->disk_limit_bytes;
  if (limit == 0 || !driver_.has_capability(cap::stats)) return std::nullopt;
  SessionStats stats;
  const auto t0 = clock_->monotonic();
  try {
    stats = driver_.session_stats(handle);
  } catch (const DriverError& e) {
    log::warn("disk.measure_failed", {{"sandbox", row.id}, {"handle", handle}, {"error", e.what()}});
    return std::nullopt;
  }
  log::debug(
      "disk.measured",
      {{"sandbox", row.id},
       {"workspace_bytes", std::to_string(stats.workspace_bytes)},
       {"rootfs_bytes", std::to_string(stats.rootfs_bytes)},
       {"elapsed_ms",
        std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(clock_->monotonic() - t0).count())}});
  // 0 = unknown (ABI 1.2): a driver that does not tell, or a du that saw no workspace (the session stopping under
  // it). Without the workspace there is no total to judge, and a half measurement must not clear a mark.
  if (stats.workspace_bytes == 0) return std::nullopt;
  DiskUsage usage;
  usage.workspace_bytes = stats.workspace_bytes;
  usage.rootfs_bytes = stats.rootfs_bytes;
  usage.limit_bytes = limit;
  usage.exceeded = usage.total() > limit;
  usage.measured_at = clock_->now();
  bool recovered = false;
  {
    std::lock_guard lock(disk_mutex_);
    auto& stored = disk_[row.id];
    recovered = stored.exceeded && !usage.exceeded;
    stored = usage;
  }
  if (recovered) {
    log::info("sandbox.disk_recovered",
              {{"sandbox", row.id}, {"bytes", std::to_string(usage.total())}, {"limit_bytes", std::to_string(limit)}});
  }
  return usage;
}

bool SandboxService::enforce_disk(const SandboxRow& row, const std::string& session_id, const DiskUsage& usage) {
  if (!usage.exceeded) return false;
  // Stop only the session that was measured: a slow measurement must not stop the fresh session a later call
  // started (that one has a new, empty writable layer; the next measurement judges it).
  for (;;) {
    auto live = store_.get_sandbox(row.id);
    // The mark stays: exec and writes measure again before they refuse (require_disk_space).
    if (!live || live->deleted_at || live->current_session_id != session_id) return false;
    auto cleared = *live;
    cleared.current_session_id.reset();
    cleared.idle_expires_at.reset();
    if (!store_.update_sandbox_cas(cleared, live->version)) continue;
    log::warn("sandbox.disk_exceeded", {{"sandbox", row.id},
                                        {"owner", row.owner},
                                        {"session", session_id},
                                        {"workspace_bytes", std::to_string(usage.workspace_bytes)},
                                        {"rootfs_bytes", std::to_string(usage.rootfs_bytes)},
                                        {"limit_bytes", std::to_string(usage.limit_bytes)}});
    if (auto session = store_.get_session(session_id)) {
      try {
        destroy_session(*session);  // the writer dies with the container; the writable layer goes, the workspace stays
      } catch (const DriverError& e) {
        // The row no longer points at the container: the cleanup task's orphan pass removes it later.
        log::warn("sandbox.disk_stop_failed", {{"sandbox", row.id}, {"error", e.what()}});
      }
    }
    notify_sessions_changed();
    return true;
  }
}

bool SandboxService::disk_exceeded(const std::string& sandbox_id) {
  std::lock_guard lock(disk_mutex_);
  auto it = disk_.find(sandbox_id);
  return it != disk_.end() && it->second.exceeded;
}

void SandboxService::throw_disk_quota(const std::string& sandbox_id, const DiskUsage& usage) {
  throw Error(ErrorCode::disk_quota_exceeded,
              "sandbox '" + sandbox_id + "' uses " + std::to_string(usage.total()) +
                  " bytes of disk, over its limit of " + std::to_string(usage.limit_bytes) +
                  " bytes: delete files (DELETE filesystem/files) until it is under; exec and file writes are refused "
                  "until then",
              {{"sandbox_id", sandbox_id},
               {"disk_bytes", std::to_string(usage.total())},
               {"workspace_bytes", std::to_string(usage.workspace_bytes)},
               {"rootfs_bytes", std::to_string(usage.rootfs_bytes)},
               {"limit_bytes", std::to_string(usage.limit_bytes)}});
}

void SandboxService::require_disk_space(const std::string& owner, const std::string& id) {
  if (!disk_exceeded(id)) return;
  // Measure again on a running session: the stop discarded the writable layer, and files may have been deleted.
  auto session = ensure_running(owner, id);
  auto row = load_live(owner, id);
  auto usage = measure_disk(row, session.handle);
  if (!usage) return;  // the limit was lifted (config) or cannot be measured now: the mark is not proof enough
  if (usage->exceeded) throw_disk_quota(id, *usage);
}

void SandboxService::recheck_disk_after_delete(const SandboxRow& row, const std::string& handle) {
  if (disk_exceeded(row.id)) measure_disk(row, handle);
}

bool SandboxService::write_may_exceed(const SandboxRow& row, std::uint64_t size) {
  constexpr std::uint64_t kSlack = 1 << 20;  // block rounding, new directories
  const std::uint64_t limit = profile_of(row)->disk_limit_bytes;
  if (limit == 0) return false;
  std::lock_guard lock(disk_mutex_);
  auto it = disk_.find(row.id);
  return it == disk_.end() || it->second.total() + size + kSlack > limit;
}

void SandboxService::schedule_disk_check(const SandboxRow& row) {
  if (profile_of(row)->disk_limit_bytes == 0 || !driver_.has_capability(cap::stats)) return;
  BackgroundQueue::TimePoint not_before{};
  {
    std::lock_guard lock(disk_mutex_);
    if (auto it = disk_check_began_.find(row.id); it != disk_check_began_.end())
      not_before = it->second + settings_.disk_check_spacing;
  }
  disk_checks_.post(
      row.id,
      [this, id = row.id] {
        try {
          auto live = store_.get_sandbox(id);
          if (!live || live->deleted_at || !live->current_session_id) return;
          auto session = store_.get_session(*live->current_session_id);
          if (!session || session->state != SS::ready) return;
          {
            std::lock_guard lock(disk_mutex_);
            disk_check_began_[id] = std::chrono::steady_clock::now();
          }
          if (auto usage = measure_disk(*live, session->handle)) enforce_disk(*live, session->id, *usage);
        } catch (const std::exception& e) {
          log::warn("disk.check_failed", {{"sandbox", id}, {"error", e.what()}});
        }
      },
      not_before);
}

}  // namespace berth::core
