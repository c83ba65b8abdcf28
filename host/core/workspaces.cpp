// Workspaces: the volumes that outlive sessions (a managed one is created and deleted with its sandbox).
#include "core/ids.hpp"
#include "core/log.hpp"
#include "core/sandbox_service.hpp"
#include "core/sandbox_service_internal.hpp"

namespace berth::core {

using namespace service_internal;
using namespace std::chrono_literals;

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

}  // namespace berth::core
