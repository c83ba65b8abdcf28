// SandboxService: construction, views and lookups, create / get / list, the lifecycle calls (start, stop, delete,
// keepalive, TTL), the lifecycle snapshot and shutdown. The other concerns have their own units: session_start.cpp,
// session_recovery.cpp, exec_files.cpp, workspaces.cpp, cleanup_passes.cpp, disk_limits.cpp.
#include "core/sandbox_service.hpp"

#include <algorithm>

#include "core/ids.hpp"
#include "core/log.hpp"
#include "core/sandbox_service_internal.hpp"

namespace berth::core {

using namespace service_internal;
using namespace std::chrono_literals;

std::string_view to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid_request:
      return "invalid_request";
    case ErrorCode::validation_error:
      return "validation_error";
    case ErrorCode::not_found:
      return "not_found";
    case ErrorCode::conflict:
      return "conflict";
    case ErrorCode::sandbox_expired:
      return "sandbox_expired";
    case ErrorCode::sandbox_ttl_infinite:
      return "sandbox_ttl_infinite";
    case ErrorCode::payload_too_large:
      return "payload_too_large";
    case ErrorCode::unauthorized:
      return "unauthorized";
    case ErrorCode::capability_not_supported:
      return "capability_not_supported";
    case ErrorCode::session_not_ready:
      return "session_not_ready";
    case ErrorCode::driver_unavailable:
      return "driver_unavailable";
    case ErrorCode::server_busy:
      return "server_busy";
    case ErrorCode::shutting_down:
      return "shutting_down";
    case ErrorCode::store_unavailable:
      return "store_unavailable";
    case ErrorCode::quota_exceeded:
      return "quota_exceeded";
    case ErrorCode::rate_limited:
      return "rate_limited";
    case ErrorCode::disk_quota_exceeded:
      return "disk_quota_exceeded";
    case ErrorCode::internal:
      return "internal";
  }
  return "internal";
}

std::string_view to_string(SandboxStatus s) {
  switch (s) {
    case SandboxStatus::idle:
      return "idle";
    case SandboxStatus::starting:
      return "starting";
    case SandboxStatus::ready:
      return "ready";
    case SandboxStatus::failed:
      return "failed";
    case SandboxStatus::expired:
      return "expired";
  }
  return "idle";
}

void rethrow_driver_error(const DriverError& e, const std::string& context) {
  std::string msg = context + ": " + e.what();
  switch (e.code()) {
    case DriverErrc::not_found:
      throw Error(ErrorCode::not_found, msg);
    case DriverErrc::invalid_argument:
      throw Error(ErrorCode::validation_error, msg);
    case DriverErrc::conflict:
      throw Error(ErrorCode::conflict, msg);
    case DriverErrc::unavailable:
    case DriverErrc::timeout:
      throw Error(ErrorCode::driver_unavailable, msg).with_retry_after(5s);
    case DriverErrc::unsupported:
      throw Error(ErrorCode::capability_not_supported, msg);
    case DriverErrc::cancelled:
    case DriverErrc::internal:
      throw Error(ErrorCode::internal, msg);
  }
  throw Error(ErrorCode::internal, msg);
}

SandboxService::SandboxService(store::Store& store, Driver& driver, std::shared_ptr<const Clock> clock,
                               Settings settings, Metrics& metrics)
    : store_(store),
      driver_(driver),
      clock_(std::move(clock)),
      settings_(std::move(settings)),
      profiles_(settings_.profiles, settings_.default_profile, store_, driver_, clock_, settings_.profile_codec),
      metrics_(metrics) {
  profiles_.load();
  for (const auto& [name, profile] : settings_.profiles) {
    if (profile.disk_limit_bytes != 0 && !driver_.has_capability(cap::stats)) {
      // The limit is measured through session_stats: without it nothing is enforced, and the operator must know.
      log::warn("disk.unenforced", {{"profile", name},
                                    {"limit_bytes", std::to_string(profile.disk_limit_bytes)},
                                    {"reason", "driver " + driver_.identity().name + " has no session_stats"}});
    }
  }
}

// ---- views and lookups ----------------------------------------------------------------------------------------

std::shared_ptr<const Profile> SandboxService::profile_of(const SandboxRow& row) const {
  auto p = profiles_.find(row.profile);
  // A profile removed from the config after the sandbox was created falls back to the default.
  return p ? p : profiles_.default_profile();
}

SandboxView SandboxService::view_live(const std::string& owner, const std::string& id) {
  std::map<std::string, store::TimePoint> before;
  if (auto t = recorder_.pending_touch(id)) before.emplace(id, *t);
  return view(load_live(owner, id), &before);
}

SandboxView SandboxService::view(SandboxRow row, const std::map<std::string, store::TimePoint>* touched_before) {
  SandboxView v;
  v.capabilities = profile_of(row)->capabilities;
  if (!driver_.has_capability(cap::files)) v.capabilities.erase("filesystem");
  if (row.current_session_id) {
    v.session = store_.get_session(*row.current_session_id);
  }
  if (row.expires_at && *row.expires_at <= clock_->now()) {
    v.status = SandboxStatus::expired;
  } else if (v.session && v.session->state == SS::ready) {
    v.status = SandboxStatus::ready;
  } else if (v.session && v.session->state == SS::starting) {
    v.status = SandboxStatus::starting;
  } else if (!row.last_error.empty()) {
    v.status = SandboxStatus::failed;
  } else {
    v.status = SandboxStatus::idle;
  }
  {
    std::lock_guard lock(disk_mutex_);
    if (auto it = disk_.find(row.id); it != disk_.end()) v.disk = it->second;
  }
  // An idle-timer touch still queued in the recorder is what the row will say in a few milliseconds; one that was
  // pending before the row was read may have been written since (the row predates it). Touches never go backwards.
  if (row.current_session_id && !row.deleted_at) {
    std::optional<store::TimePoint> touch = recorder_.pending_touch(row.id);
    if (touched_before != nullptr) {
      if (auto it = touched_before->find(row.id); it != touched_before->end() && (!touch || it->second > *touch)) {
        touch = it->second;
      }
    }
    if (touch && (!row.idle_expires_at || *touch > *row.idle_expires_at)) row.idle_expires_at = *touch;
  }
  v.row = std::move(row);
  return v;
}

SandboxRow SandboxService::load_live(const std::string& owner, const std::string& id) {
  if (!is_valid_id(id, "sandbox")) {
    throw Error(ErrorCode::not_found, "no sandbox '" + id + "'", {{"sandbox_id", id}});
  }
  auto row = store_.get_sandbox(id);
  if (!row || row->deleted_at || row->owner != owner) {
    throw Error(ErrorCode::not_found, "no sandbox '" + id + "'", {{"sandbox_id", id}});
  }
  return *row;
}

void SandboxService::require_capability(const SandboxRow& row, const std::string& capability) {
  const auto held = profile_of(row);
  const auto& p = *held;
  if (!p.capabilities.count(capability)) {
    throw Error(ErrorCode::capability_not_supported,
                "profile '" + p.name + "' does not offer the '" + capability + "' capability",
                {{"profile", p.name}, {"capability", capability}});
  }
  if (capability == "filesystem" && !driver_.has_capability(cap::files)) {
    throw Error(ErrorCode::capability_not_supported, "driver '" + driver_.identity().name + "' has no file access");
  }
}

// ---- create / read / list -------------------------------------------------------------------------------------

CreateSandboxResult SandboxService::create_sandbox(const std::string& owner, const CreateSandboxRequest& rq) {
  std::string profile_name = rq.profile.value_or(settings_.default_profile);
  // Held until the row is stored: a profile delete waits for it, and then sees this sandbox.
  const auto profile_in_use = profiles_.use_lock();
  const auto held_profile = profiles_.find(profile_name);
  if (!held_profile) {
    throw Error(ErrorCode::validation_error, "unknown profile '" + profile_name + "'",
                {{"field", "profile"}, {"profile", profile_name}});
  }
  const Profile& profile = *held_profile;
  // Everything stored here is used again at every start: validate it all now, not at the first start.
  const Limits& limits = settings_.limits;
  if (rq.ttl && (rq.ttl->count() < 1 || *rq.ttl > limits.max_ttl)) {
    throw Error(ErrorCode::validation_error,
                "ttl must be between 1 and " + std::to_string(limits.max_ttl.count()) + " seconds",
                {{"field", "ttl"}, {"max_ttl_s", std::to_string(limits.max_ttl.count())}});
  }
  std::optional<std::string> key;
  if (rq.key) {
    try {
      key = canonical_key(*rq.key);
    } catch (const Error& e) {
      throw Error(e.code(), e.what(), {{"field", "key"}});
    }
  }
  if (rq.workspace_id && !is_valid_id(*rq.workspace_id, "ws")) {
    throw Error(ErrorCode::validation_error, "malformed workspace_id", {{"field", "workspace_id"}});
  }
  validate_labels(rq.labels, limits);
  validate_env(rq.env, limits);

  // Get-or-create by key: a live, unexpired sandbox is reused; an expired one is replaced.
  if (key) {
    for (int attempt = 0; attempt < 5; ++attempt) {
      auto existing = store_.find_live_by_key(owner, *key);
      if (!existing) break;
      if (!existing->expires_at || *existing->expires_at > clock_->now()) {
        log::info("sandbox_reused", {{"sandbox", existing->id}, {"key", *key}, {"owner", owner}});
        return {view(*existing), false};
      }
      log::info("sandbox_replaced", {{"sandbox", existing->id}, {"key", *key}, {"owner", owner}});
      auto stale = *existing;
      stale.deleted_at = clock_->now();
      stale.current_session_id.reset();
      if (store_.update_sandbox_cas(stale, existing->version)) delete_row_and_resources(*existing);
    }
  }

  // Quotas apply to new sandboxes only. `creating_` counts this owner's creates between the check and the insert,
  // so concurrent creates cannot all pass one count.
  if (auto wait = create_rate_.take(owner, clock_->monotonic()); wait.count() > 0) {
    log::info("quota.rate_limited", {{"owner", owner}, {"retry_after_s", std::to_string(wait.count())}});
    throw Error(ErrorCode::rate_limited,
                "owner creates sandboxes faster than " + std::to_string(limits.create_rate_per_minute) +
                    " per minute; retry later",
                {{"limit_per_minute", std::to_string(limits.create_rate_per_minute)}})
        .with_retry_after(wait);
  }
  struct Reservation {
    SandboxService* self = nullptr;
    std::string owner;
    ~Reservation() {
      if (!self) return;
      std::lock_guard lock(self->quota_mutex_);
      if (--self->creating_[owner] <= 0) self->creating_.erase(owner);
    }
  } reservation;
  if (limits.max_sandboxes_per_owner > 0) {
    store::SandboxFilter filter;
    filter.owner = owner;
    filter.limit = limits.max_sandboxes_per_owner + 1;
    // Counted under the same lock that releases reservations: a create that finished between a count outside the
    // lock and the check would be in neither `live` nor `pending` (found by the parallel-create probe).
    std::lock_guard lock(quota_mutex_);
    const auto live = static_cast<int>(store_.list_sandboxes(filter).size());
    auto pending = creating_.count(owner) ? creating_[owner] : 0;
    if (live + pending >= limits.max_sandboxes_per_owner) {
      log::info("quota.exceeded", {{"owner", owner}, {"live", std::to_string(live)}});
      throw Error(ErrorCode::quota_exceeded,
                  "owner already holds " + std::to_string(limits.max_sandboxes_per_owner) +
                      " sandboxes (the limit); delete one first",
                  {{"limit", std::to_string(limits.max_sandboxes_per_owner)}})
          .with_retry_after(std::chrono::seconds(60));
    }
    ++creating_[owner];
    reservation.self = this;
    reservation.owner = owner;
  }

  auto now = clock_->now();
  store::WorkspaceRow workspace;
  bool managed = !rq.workspace_id;
  if (rq.workspace_id) {
    workspace = get_workspace(owner, *rq.workspace_id);
  } else {
    workspace.id = new_id("ws");
    workspace.owner = owner;
    workspace.volume = "berth-ws-" + workspace.id;
    workspace.managed = true;
    workspace.created_at = now;
  }

  SandboxRow row;
  row.id = new_id("sandbox");
  row.owner = owner;
  row.profile = profile.name;
  row.workspace_id = workspace.id;
  row.key = key;
  row.labels = rq.labels;
  row.env = rq.env;
  row.version = 1;
  row.created_at = now;
  auto ttl = rq.ttl ? rq.ttl : profile.ttl;
  if (ttl) row.expires_at = saturating_add(now, *ttl);

  log::info("sandbox.create",
            {{"sandbox", row.id}, {"owner", owner}, {"profile", profile.name}, {"workspace", workspace.id}});
  if (managed) {
    try {
      driver_.volume_create(
          workspace.volume,
          {{"berth.managed", "true"}, {"berth.instance", settings_.instance_id}, {"berth.workspace", workspace.id}});
    } catch (const DriverError& e) {
      rethrow_driver_error(e, "creating workspace volume");
    }
    store_.insert_workspace(workspace);
  }
  try {
    store_.insert_sandbox(row);
  } catch (const store::UniqueViolation&) {
    // Another request created the keyed sandbox first: undo ours, return theirs.
    if (managed) {
      try {
        driver_.volume_remove(workspace.volume);
      } catch (const DriverError& e) {
        log::warn("workspace.delete_failed", {{"workspace", workspace.id}, {"error", e.what()}});
      }
      store_.mark_workspace_deleted(workspace.id, clock_->now());
    }
    auto winner = store_.find_live_by_key(owner, *key);
    if (!winner) throw Error(ErrorCode::conflict, "sandbox key is being replaced concurrently; retry");
    log::info("sandbox_reused", {{"sandbox", winner->id}, {"key", *key}, {"owner", owner}});
    return {view(*winner), false};
  } catch (...) {
    if (managed) {
      try {
        driver_.volume_remove(workspace.volume);
      } catch (const DriverError&) {
      }
      store_.mark_workspace_deleted(workspace.id, clock_->now());
    }
    throw;
  }
  log::info("sandbox_created", {{"sandbox", row.id}, {"owner", owner}, {"key", key.value_or("")}});
  return {view(row), true};
}

SandboxView SandboxService::get_sandbox(const std::string& owner, const std::string& id) {
  return view_live(owner, id);
}

ListResult SandboxService::list_sandboxes(const std::string& owner, const std::optional<SandboxStatus>& status,
                                          const std::optional<std::pair<std::string, std::string>>& label, int limit,
                                          const std::string& cursor) {
  ListResult out;
  store::SandboxFilter f;
  f.owner = owner;
  f.label = label;
  f.after_id = cursor;
  f.limit = limit;
  // Status is derived, so filter after reading; keep reading pages until the page is full or rows run out.
  while (static_cast<int>(out.items.size()) < limit) {
    const auto touched_before = recorder_.pending_touches();
    auto rows = store_.list_sandboxes(f);
    for (auto& r : rows) {
      f.after_id = r.id;
      auto v = view(std::move(r), &touched_before);
      if (!status || v.status == *status) out.items.push_back(std::move(v));
      if (static_cast<int>(out.items.size()) == limit) break;
    }
    if (static_cast<int>(rows.size()) < f.limit) {
      if (static_cast<int>(out.items.size()) == limit) out.next_cursor = f.after_id;
      return out;
    }
  }
  out.next_cursor = out.items.empty() ? "" : out.items.back().row.id;
  return out;
}

void SandboxService::touch(const SandboxRow& row) {
  // Through the recorder, so that an older touch still pending cannot land after this one and shorten the timer.
  touch_later(row);
  recorder_.flush();
}

void SandboxService::touch_later(const SandboxRow& row) {
  recorder_.touch(row.id, saturating_add(clock_->now(), profile_of(row)->idle_timeout));
}

void SandboxService::flush_records(std::chrono::milliseconds wait) {
  recorder_.flush(wait);
}

// ---- lifecycle calls ------------------------------------------------------------------------------------------------

SandboxView SandboxService::start(const std::string& owner, const std::string& id) {
  ensure_running(owner, id);
  return view_live(owner, id);
}

void SandboxService::stop(const std::string& owner, const std::string& id) {
  for (;;) {
    auto row = load_live(owner, id);
    if (!row.current_session_id) return;  // idle: nothing to stop
    auto session = store_.get_session(*row.current_session_id);
    auto cleared = row;
    cleared.current_session_id.reset();
    cleared.idle_expires_at.reset();
    if (!store_.update_sandbox_cas(cleared, row.version)) continue;
    log::info("sandbox.stop", {{"sandbox", id}, {"session", row.current_session_id.value_or("")}});
    if (session) {
      try {
        destroy_session(*session);
      } catch (const DriverError& e) {
        // The row no longer points at the container: the cleanup task's orphan pass removes it later.
        log::warn("session.stop_failed", {{"session", session->id}, {"error", e.what()}});
        rethrow_driver_error(e, "stopping sandbox '" + id + "'");
      }
    }
    notify_sessions_changed();
    return;
  }
}

void SandboxService::delete_row_and_resources(const SandboxRow& row) {
  contexts_.drop_sandbox(row.id);
  {
    // Every way a sandbox goes (delete, expiry, a replaced key) forgets its measurements: they were a leak per
    // expired sandbox while only delete_sandbox erased them.
    std::lock_guard lock(disk_mutex_);
    disk_.erase(row.id);
    disk_check_began_.erase(row.id);
  }
  if (row.current_session_id) {
    if (auto session = store_.get_session(*row.current_session_id)) {
      try {
        destroy_session(*session);
      } catch (const DriverError& e) {
        log::warn("session.stop_failed", {{"session", session->id}, {"error", e.what()}});
      }
    }
  }
  auto workspace = store_.get_workspace(row.workspace_id);
  if (workspace && workspace->managed && !workspace->deleted_at) {
    try {
      driver_.volume_remove(workspace->volume);
      store_.mark_workspace_deleted(workspace->id, clock_->now());
      log::info("workspace.delete", {{"workspace", workspace->id}, {"sandbox", row.id}});
    } catch (const DriverError& e) {
      if (e.code() == DriverErrc::not_found) {
        store_.mark_workspace_deleted(workspace->id, clock_->now());
      } else {
        // Left for the cleanup task: a managed workspace of a deleted sandbox is retried there.
        log::warn("workspace.delete_failed", {{"workspace", workspace->id}, {"error", e.what()}});
      }
    }
  }
  notify_sessions_changed();
}

void SandboxService::delete_sandbox(const std::string& owner, const std::string& id) {
  for (;;) {
    auto row = load_live(owner, id);
    auto deleted = row;
    deleted.deleted_at = clock_->now();
    deleted.current_session_id.reset();
    if (!store_.update_sandbox_cas(deleted, row.version)) continue;
    log::info("sandbox.delete", {{"sandbox", id}, {"owner", owner}});
    delete_row_and_resources(row);
    return;
  }
}

void SandboxService::keepalive(const std::string& owner, const std::string& id) {
  auto row = load_live(owner, id);
  if (row.expires_at && *row.expires_at <= clock_->now()) {
    throw Error(ErrorCode::sandbox_expired, "sandbox '" + id + "' has expired", {{"sandbox_id", id}});
  }
  touch(row);
}

SandboxView SandboxService::extend_ttl(const std::string& owner, const std::string& id, std::chrono::seconds by) {
  const auto max_ttl = settings_.limits.max_ttl;
  if (by.count() < 1 || by > max_ttl) {
    throw Error(ErrorCode::validation_error,
                "extend_by must be between 1 and " + std::to_string(max_ttl.count()) + " seconds",
                {{"field", "extend_by"}, {"max_ttl_s", std::to_string(max_ttl.count())}});
  }
  for (;;) {
    auto row = load_live(owner, id);
    if (!row.expires_at) {
      throw Error(ErrorCode::sandbox_ttl_infinite, "sandbox '" + id + "' has no TTL to extend", {{"sandbox_id", id}});
    }
    if (*row.expires_at <= clock_->now()) {
      throw Error(ErrorCode::sandbox_expired, "sandbox '" + id + "' has expired", {{"sandbox_id", id}});
    }
    auto extended = row;
    // A sandbox lives at most max_ttl from its creation: repeated extensions can neither exceed that nor overflow.
    const auto latest = saturating_add(row.created_at, max_ttl);
    const auto wanted = saturating_add(*row.expires_at, by);
    if (wanted > latest) {
      throw Error(ErrorCode::validation_error,
                  "a sandbox lives at most " + std::to_string(max_ttl.count()) + " seconds from its creation",
                  {{"field", "extend_by"},
                   {"max_ttl_s", std::to_string(max_ttl.count())},
                   {"max_extend_by_s",
                    std::to_string(std::max<std::int64_t>(
                        0, std::chrono::duration_cast<std::chrono::seconds>(latest - *row.expires_at).count()))}});
    }
    *extended.expires_at = wanted;
    if (store_.update_sandbox_cas(extended, row.version)) {
      extended.version = row.version + 1;
      return view(extended);
    }
  }
}

LifecycleSnapshot SandboxService::lifecycle_snapshot() {
  LifecycleSnapshot snap;
  snap.terminals_open = static_cast<std::int64_t>(terminals_open());
  snap.async_executions_running = static_cast<std::int64_t>(async_.running());
  std::map<std::string, SS> session_state;
  for (auto& s : store_.list_active_sessions()) {
    if (s.state == SS::starting) ++snap.sessions_starting;
    if (s.state == SS::ready) {
      ++snap.sessions_running;
      ++snap.sessions_running_by_transport[transport_of(s.endpoint).value_or("none")];
    }
    session_state.emplace(std::move(s.id), s.state);
  }
  // The same rule as view(), over one listing of each table instead of a session read per sandbox.
  std::int64_t counts[5] = {};
  auto now = clock_->now();
  for (const auto& row : store_.list_live_sandboxes()) {
    std::optional<SS> state;
    if (row.current_session_id) {
      if (auto it = session_state.find(*row.current_session_id); it != session_state.end()) state = it->second;
    }
    SandboxStatus status = SandboxStatus::idle;
    if (row.expires_at && *row.expires_at <= now) {
      status = SandboxStatus::expired;
    } else if (state == SS::ready) {
      status = SandboxStatus::ready;
    } else if (state == SS::starting) {
      status = SandboxStatus::starting;
    } else if (!row.last_error.empty()) {
      status = SandboxStatus::failed;
    }
    ++counts[static_cast<int>(status)];
  }
  for (auto status : {SandboxStatus::idle, SandboxStatus::starting, SandboxStatus::ready, SandboxStatus::failed,
                      SandboxStatus::expired}) {
    snap.sandboxes_by_status.emplace_back(to_string(status), counts[static_cast<int>(status)]);
  }
  snap.store_transaction_retries = store_.transaction_retries();
  return snap;
}

void SandboxService::begin_shutdown() {
  shutting_down_ = true;
  std::size_t cancelled = in_flight_.cancel_all();
  log::info("service.shutdown_begun", {{"calls_cancelled", std::to_string(cancelled)}});
}

}  // namespace berth::core
