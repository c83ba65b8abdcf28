#include "core/sandbox_service.hpp"

#include <algorithm>
#include <thread>

#include "core/ids.hpp"
#include "core/log.hpp"
#include "core/paths.hpp"

namespace berth::core {
namespace {

using store::SandboxRow;
using store::SessionRow;
using SS = store::SessionState;           // what the database records
using RuntimeState = core::SessionState;  // what the driver reports
using namespace std::chrono_literals;

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

std::string ms_since(std::chrono::steady_clock::time_point t0) {
  return std::to_string(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());
}

/** Appends to `out` up to `cap` bytes; remembers whether anything was dropped. */
struct CappedBuffer {
  std::string data;
  std::size_t cap;
  bool truncated = false;
  void append(std::string_view chunk) {
    if (data.size() >= cap) {
      truncated = truncated || !chunk.empty();
      return;
    }
    std::size_t room = cap - data.size();
    if (chunk.size() > room) truncated = true;
    data.append(chunk.substr(0, room));
  }
  std::string finish() {
    if (truncated) data += "\n[output truncated]";
    return std::move(data);
  }
};

/** The longest prefix of `s` of at most `cap` bytes that does not end inside a UTF-8 sequence. */
std::size_t utf8_prefix_length(const std::string& s, std::size_t cap) {
  if (s.size() <= cap) return s.size();
  std::size_t n = cap;
  // Step back over at most three continuation bytes (10xxxxxx) to the lead byte, and cut before it.
  for (int i = 0; i < 3 && n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80; ++i)
    --n;
  return (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80 ? cap : n;
}

}  // namespace

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

SandboxView SandboxService::view(SandboxRow row) {
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

void SandboxService::notify_sessions_changed() {
  std::lock_guard lock(wait_mutex_);
  sessions_changed_.notify_all();
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
  return view(load_live(owner, id));
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
    auto rows = store_.list_sandboxes(f);
    for (auto& r : rows) {
      f.after_id = r.id;
      auto v = view(std::move(r));
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

void SandboxService::touch(const SandboxRow& row) {
  store_.touch_sandbox(row.id, saturating_add(clock_->now(), profile_of(row)->idle_timeout));
}

// ---- lifecycle calls ------------------------------------------------------------------------------------------------

SandboxView SandboxService::start(const std::string& owner, const std::string& id) {
  ensure_running(owner, id);
  return view(load_live(owner, id));
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
    {
      std::lock_guard lock(disk_mutex_);
      disk_.erase(id);
    }
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

// ---- exec and files -----------------------------------------------------------------------------------------------

template <typename Fn>
auto SandboxService::with_session(const SandboxRow& row, const std::atomic<bool>& started, Fn&& fn) {
  const std::string& id = row.id;
  auto in_use = in_flight_.enter(id);  // from here on, idle cleanup leaves this sandbox alone
  touch(row);                          // a long call must not look idle from its start
  for (int attempt = 0;; ++attempt) {
    auto session = ensure_running(row.owner, id);
    try {
      auto result = fn(session, in_use.token());
      touch(row);
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

void SandboxService::retire_dead_session(const SessionRow& session, const std::string& why) {
  // Only a session still active: one that stop, delete or another caller already ended keeps its final state.
  auto stored = store_.get_session(session.id);
  if (!stored || (stored->state != SS::ready && stored->state != SS::starting)) return;
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

ExecOutcome SandboxService::exec(const std::string& owner, const std::string& id, ExecKind kind,
                                 const std::string& code, std::optional<std::chrono::seconds> timeout,
                                 const std::string& cwd) {
  auto to = timeout.value_or(settings_.default_exec_timeout);
  if (to.count() < 1 || to > settings_.max_exec_timeout) {
    throw Error(ErrorCode::validation_error,
                "timeout must be between 1 and " + std::to_string(settings_.max_exec_timeout.count()) + " seconds");
  }
  if (code.empty())
    throw Error(ErrorCode::validation_error, kind == ExecKind::python ? "code is empty" : "command is empty");
  std::string capability = kind == ExecKind::python ? "python" : "shell";
  auto row = load_live(owner, id);
  require_capability(row, capability);
  require_disk_space(owner, id);
  std::string dir = cwd.empty() ? "" : workspace_path(cwd, true);
  if (dir == ".") dir.clear();

  ExecRequest rq;
  // The code travels on stdin, never in argv (the kernel caps one argument at 128 KiB): `python3 -` reads its
  // program from stdin; the shell form reads the whole command with `cat` first, so the user's program sees EOF.
  // /bin/cat by absolute path: the session's PATH is the tenant's, and a planted `cat` must not replace the command.
  rq.argv = kind == ExecKind::python ? std::vector<std::string>{"python3", "-"}
                                     : std::vector<std::string>{"/bin/sh", "-c", "eval \"$(/bin/cat)\""};
  rq.stdin_data = code;
  rq.cwd = dir;
  rq.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(to);
  log::info(kind == ExecKind::python ? "capability.python.exec" : "capability.shell.exec",
            {{"sandbox", id}, {"code_len", std::to_string(code.size())}});

  // Refused once shutdown began; an exec already running is cancelled through its in-flight token.
  if (shutting_down_.load()) {
    throw Error(ErrorCode::shutting_down, "berthd is shutting down").with_retry_after(5s);
  }

  ExecOutcome out;
  std::string session_id;
  auto t0 = std::chrono::steady_clock::now();
  // Reported however the exec ends from here on: an exception leaves `end` at error.
  ExecEnd end = ExecEnd::error;
  struct ReportExec {
    Metrics& metrics;
    std::string_view kind;
    const ExecEnd& end;
    std::chrono::steady_clock::time_point t0;
    ~ReportExec() {
      metrics.exec_done(kind, end, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  } report_exec{metrics_, kind == ExecKind::python ? "python" : "shell", end, t0};
  ExecResult result;
  CappedBuffer stdout_buf{{}, settings_.exec_output_cap};
  CappedBuffer stderr_buf{{}, settings_.exec_output_cap};
  std::atomic<bool> started{false};  // output arrived: the program ran, so it must never be run again
  std::string handle;
  try {
    result = with_session(row, started, [&](const store::SessionRow& session, const CancelToken& token) {
      session_id = session.id;
      handle = session.handle;
      return driver_.exec(
          session.handle, rq,
          [&](Stream s, std::string_view chunk) {
            started = true;
            (s == Stream::out ? stdout_buf : stderr_buf).append(chunk);
            return true;
          },
          &token);  // registered in in_flight_: begin_shutdown() cancels it
    });
  } catch (const DriverError& e) {
    if (e.code() == DriverErrc::cancelled && shutting_down_.load()) {
      throw Error(ErrorCode::shutting_down, "berthd is shutting down; the exec was cancelled", {{"sandbox_id", id}})
          .with_retry_after(5s);
    }
    rethrow_driver_error(e, "exec in sandbox '" + id + "'");
  }
  out.duration_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  out.output = stdout_buf.finish();
  out.error = stderr_buf.finish();
  out.timed_out = result.timed_out;
  end = result.timed_out ? ExecEnd::timeout : result.exit_code == 0 ? ExecEnd::success : ExecEnd::nonzero_exit;
  if (result.timed_out) {
    if (!out.error.empty() && out.error.back() != '\n') out.error += '\n';
    out.error += "execution timed out after " + std::to_string(to.count()) + "s";
    out.success = false;
  } else {
    out.exit_code = result.exit_code;
    out.success = result.exit_code == 0;
  }
  if (!result.timed_out && result.exit_code >= 128) {
    // Killed by a signal: maybe with its whole container (`kill -9 -1`, the OOM killer). Find out now, so that GET
    // stops saying ready and the next call starts a new session instead of failing on a dead one.
    try {
      if (auto info = driver_.session_inspect(handle); !alive(info.state)) {
        if (auto session = store_.get_session(session_id)) {
          retire_dead_session(*session, "container " + std::string(to_string(info.state)) + " after exit code " +
                                            std::to_string(result.exit_code));
        }
      }
    } catch (const DriverError& e) {
      log::warn("session.inspect_failed", {{"sandbox", id}, {"session", session_id}, {"error", e.what()}});
    }
  }

  store::ExecutionRow record;
  record.id = new_id("exec");
  record.sandbox_id = id;
  record.session_id = session_id;
  record.kind = capability;
  record.code = code;
  record.exit_code = out.exit_code;
  record.success = out.success;
  // The stored record is capped apart from the response (history keeps far less than one exec may return), so
  // what a tenant stores, and what a history page costs to read, is bounded by configuration.
  record.output = out.output;
  record.error = out.error;
  for (std::string* field : {&record.code, &record.output, &record.error}) {
    if (field->size() > settings_.history_field_cap) {
      field->resize(utf8_prefix_length(*field, settings_.history_field_cap));
      record.truncated = true;
    }
  }
  record.duration_ms = out.duration_ms;
  record.created_at = clock_->now();
  store_.insert_execution(record);
  out.execution_id = record.id;
  schedule_disk_check(row);  // what the code wrote is measured in the background (docs/security.md)
  return out;
}

HistoryPage SandboxService::history(const std::string& owner, const std::string& id, const std::string& kind, int limit,
                                    int offset) {
  load_live(owner, id);
  if (!kind.empty() && kind != "python" && kind != "shell") {
    throw Error(ErrorCode::validation_error, "exec_type must be 'python' or 'shell'");
  }
  if (limit < 1 || limit > 500) throw Error(ErrorCode::validation_error, "limit must be between 1 and 500");
  if (offset < 0) throw Error(ErrorCode::validation_error, "offset must not be negative");
  store::ExecutionPageLimits bounds;
  bounds.field_cap = static_cast<std::int64_t>(settings_.history_field_cap);
  bounds.byte_budget = static_cast<std::int64_t>(settings_.history_response_bytes);
  HistoryPage page;
  std::tie(page.entries, page.total) = store_.list_executions(id, kind, limit, offset, bounds);
  page.bytes_capped = page.entries.size() < static_cast<std::size_t>(limit) &&
                      static_cast<std::size_t>(offset) + page.entries.size() < static_cast<std::size_t>(page.total);
  return page;
}

std::string SandboxService::read_file(const std::string& owner, const std::string& id, const std::string& path,
                                      std::size_t max_bytes) {
  std::string out;
  download(owner, id, path, [&](std::string_view chunk) {
    if (out.size() + chunk.size() > max_bytes) {
      throw Error(ErrorCode::payload_too_large,
                  "file is larger than " + std::to_string(max_bytes) + " bytes; use filesystem/download");
    }
    out.append(chunk);
    return true;
  });
  return out;
}

void SandboxService::download(const std::string& owner, const std::string& id, const std::string& path,
                              const ByteSink& sink) {
  auto row = load_live(owner, id);
  require_capability(row, "filesystem");
  auto p = workspace_path(path, false);
  std::atomic<bool> started{false};  // bytes reached the sink: a repeat would send them twice
  try {
    with_session(row, started, [&](const store::SessionRow& s, const CancelToken&) {
      driver_.file_get(s.handle, p, [&](std::string_view chunk) {
        started = true;
        return sink(chunk);
      });
      return 0;
    });
  } catch (const DriverError& e) {
    rethrow_driver_error(e, "reading '" + p + "'");
  }
}

void SandboxService::write_file(const std::string& owner, const std::string& id, const std::string& path,
                                std::uint64_t size, const ByteSource& source, std::uint32_t mode) {
  auto row = load_live(owner, id);
  require_capability(row, "filesystem");
  auto p = workspace_path(path, false);
  if (size > settings_.max_file_size) {
    throw Error(ErrorCode::payload_too_large,
                "file is larger than the limit of " + std::to_string(settings_.max_file_size) + " bytes");
  }
  if (const std::uint64_t limit = profile_of(row)->disk_limit_bytes; limit != 0 && size > limit) {
    throw Error(ErrorCode::disk_quota_exceeded,
                "file of " + std::to_string(size) + " bytes is larger than the sandbox's disk limit of " +
                    std::to_string(limit) + " bytes",
                {{"sandbox_id", id}, {"limit_bytes", std::to_string(limit)}});
  }
  require_disk_space(owner, id);
  try {
    std::atomic<bool> started{false};  // the source was read from: it cannot be replayed from its start
    with_session(row, started, [&](const store::SessionRow& s, const CancelToken&) {
      driver_.file_put(s.handle, p, mode, size, [&](std::uint8_t* buffer, std::size_t capacity) {
        started = true;
        return source(buffer, capacity);
      });
      return 0;
    });
  } catch (const DriverError& e) {
    rethrow_driver_error(e, "writing '" + p + "'");
  }
  if (write_may_exceed(row, size)) schedule_disk_check(row);
}

void SandboxService::remove_path(const std::string& owner, const std::string& id, const std::string& path) {
  auto row = load_live(owner, id);
  require_capability(row, "filesystem");
  auto p = workspace_path(path, false);
  const std::atomic<bool> started{false};  // by the driver contract, not_found from a dead session means not run
  try {
    with_session(row, started, [&](const store::SessionRow& s, const CancelToken&) {
      driver_.path_remove(s.handle, p);
      recheck_disk_after_delete(row, s.handle);
      return 0;
    });
  } catch (const DriverError& e) {
    rethrow_driver_error(e, "removing '" + p + "'");
  }
}

DirPage SandboxService::list_dir(const std::string& owner, const std::string& id, const std::string& path,
                                 const std::string& after, std::size_t limit) {
  if (limit < 1 || limit > settings_.dir_page_max) {
    throw Error(ErrorCode::validation_error, "limit must be between 1 and " + std::to_string(settings_.dir_page_max),
                {{"field", "limit"}});
  }
  auto row = load_live(owner, id);
  require_capability(row, "filesystem");
  auto p = workspace_path(path, true);
  const std::atomic<bool> started{false};  // a listing has no effect: repeating it is always safe
  // A max-heap of the limit + 1 smallest names after the cursor (one more than the page tells whether more follow).
  const auto by_name = [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; };  // raw bytes
  std::vector<DirEntry> heap;
  try {
    with_session(row, started, [&](const store::SessionRow& s, const CancelToken&) {
      heap.clear();  // a repeated attempt starts over
      heap.reserve(limit + 1);
      driver_.dir_scan(s.handle, p, [&](const DirEntry& e) {
        if (!after.empty() && !(after < e.name)) return true;
        if (heap.size() <= limit) {
          heap.push_back(e);
          std::push_heap(heap.begin(), heap.end(), by_name);
        } else if (e.name < heap.front().name) {
          std::pop_heap(heap.begin(), heap.end(), by_name);
          heap.back() = e;
          std::push_heap(heap.begin(), heap.end(), by_name);
        }
        return true;
      });
      return 0;
    });
  } catch (const DriverError& e) {
    rethrow_driver_error(e, "listing '" + p + "'");
  }
  std::sort_heap(heap.begin(), heap.end(), by_name);
  DirPage page;
  if (heap.size() > limit) {
    heap.pop_back();
    page.next_cursor = heap.back().name;
  }
  page.entries = std::move(heap);
  return page;
}

// ---- workspaces -----------------------------------------------------------------------------------------------------

store::WorkspaceRow SandboxService::create_workspace(const std::string& owner) {
  store::WorkspaceRow ws;
  ws.id = new_id("ws");
  ws.owner = owner;
  ws.volume = "berth-ws-" + ws.id;
  ws.managed = false;
  ws.created_at = clock_->now();
  try {
    driver_.volume_create(
        ws.volume, {{"berth.managed", "true"}, {"berth.instance", settings_.instance_id}, {"berth.workspace", ws.id}});
  } catch (const DriverError& e) {
    rethrow_driver_error(e, "creating workspace volume");
  }
  store_.insert_workspace(ws);
  log::info("workspace.create", {{"workspace", ws.id}, {"owner", owner}});
  return ws;
}

store::WorkspaceRow SandboxService::get_workspace(const std::string& owner, const std::string& id) {
  auto ws = is_valid_id(id, "ws") ? store_.get_workspace(id) : std::nullopt;
  if (!ws || ws->deleted_at || ws->owner != owner) {
    throw Error(ErrorCode::not_found, "no workspace '" + id + "'", {{"workspace_id", id}});
  }
  return *ws;
}

void SandboxService::delete_workspace(const std::string& owner, const std::string& id) {
  auto ws = get_workspace(owner, id);
  if (int n = store_.count_live_sandboxes_using(id); n > 0) {
    throw Error(ErrorCode::conflict, "workspace '" + id + "' is used by " + std::to_string(n) + " live sandbox(es)",
                {{"workspace_id", id}});
  }
  try {
    driver_.volume_remove(ws.volume);
  } catch (const DriverError& e) {
    if (e.code() != DriverErrc::not_found) rethrow_driver_error(e, "removing workspace volume");
  }
  store_.mark_workspace_deleted(id, clock_->now());
  log::info("workspace.delete", {{"workspace", id}, {"owner", owner}});
}

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
  metrics_.cleanup_pass_done(cleanup_action_counts(report),
                             std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  log::info("cleanup.run", {{"idle_stopped", std::to_string(report.idle_stopped.size())},
                            {"expired_deleted", std::to_string(report.expired_deleted.size())},
                            {"orphans_removed", std::to_string(report.orphans_removed.size())},
                            {"workspaces_removed", std::to_string(report.workspaces_removed.size())},
                            {"dead_sessions", std::to_string(report.dead_sessions.size())},
                            {"skipped_stale", std::to_string(report.skipped_stale.size())},
                            {"skipped_in_use", std::to_string(report.skipped_in_use.size())},
                            {"failed", std::to_string(report.failed.size())},
                            {"executions_expired", std::to_string(report.executions_expired)},
                            {"disk_stopped", std::to_string(report.disk_stopped.size())},
                            {"elapsed_ms", ms_since(t0)}});
  return report;
}

LifecycleSnapshot SandboxService::lifecycle_snapshot() {
  LifecycleSnapshot snap;
  std::map<std::string, SS> session_state;
  for (auto& s : store_.list_active_sessions()) {
    if (s.state == SS::starting) ++snap.sessions_starting;
    if (s.state == SS::ready) ++snap.sessions_running;
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
  auto now = clock_->now();
  for (const auto& snap : store_.list_live_sandboxes()) {
    if (!snap.current_session_id || !snap.idle_expires_at || *snap.idle_expires_at > now) continue;
    if (in_flight_.in_use(snap.id)) {
      // A call that started before the timer ran out is still running: stopping now would kill it mid-way. A call
      // entering after this check touches the row first, which makes the CAS below fail.
      report.skipped_in_use.push_back(snap.id);
      log::info("sandbox_clean_skipped", {{"sandbox", snap.id}, {"reason", "in use"}});
      continue;
    }
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

bool SandboxService::cleanup_call(CleanupReport& report, const std::string& candidate, const std::string& key,
                                  const char* action, std::function<void()> work) {
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
  disk_checks_.post(row.id, [this, id = row.id] {
    try {
      auto live = store_.get_sandbox(id);
      if (!live || live->deleted_at || !live->current_session_id) return;
      auto session = store_.get_session(*live->current_session_id);
      if (!session || session->state != SS::ready) return;
      if (auto usage = measure_disk(*live, session->handle)) enforce_disk(*live, session->id, *usage);
    } catch (const std::exception& e) {
      log::warn("disk.check_failed", {{"sandbox", id}, {"error", e.what()}});
    }
  });
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

void SandboxService::begin_shutdown() {
  shutting_down_ = true;
  std::size_t cancelled = in_flight_.cancel_all();
  log::info("service.shutdown_begun", {{"calls_cancelled", std::to_string(cancelled)}});
}

}  // namespace berth::core
