// agent_delivery = "volume": berth-agent delivered into a named volume of the engine, through the Engine API alone,
// for an engine on another machine than berthd (a remote Docker host, a Swarm node) where no host path of berthd's
// machine can be bind-mounted. Sessions then mount the volume read-only at /.berth (the agent at /.berth/agent, an
// empty /.berth/run for the socket transport's directory).
#pragma once

#include <Poco/JSON/Object.h>

#include <chrono>
#include <string>

#include "berth/engine/client.hpp"

namespace berth::engine::compat {

/** "berth-agent-" followed by the first 16 hex digits of the SHA-256 of `agent_bytes`: a new binary gets a new volume,
 *  so a volume never holds another agent than its name says. */
std::string agent_volume_name(const std::string& agent_bytes);

/** A tar (POSIX pax) of `.berth/` and `.berth/run/` (directories, 0755) and `.berth/agent` (0755, `agent_bytes`), all
 *  owned by root: the root file system of the one-file image that fills the volume. Throws Error(internal). */
std::string agent_volume_tar(const std::string& agent_bytes);

/**
 * Makes sure the engine has volume `name` holding this agent, and that the agent in it runs:
 *  1. imports agent_volume_tar() as an image (POST /images/create?fromSrc=-, what `docker import -` does);
 *  2. creates a helper container of that image with the volume at /.berth and starts it: an empty volume is filled
 *     from the image (Docker at create, Podman at start), an existing one is used as it is;
 *  3. requires the helper's `/.berth/agent --version` (run from the volume) to exit 0 within `helper_timeout`. If it
 *     does not (or cannot start: no agent there), it is run once more after 200 ms (another instance's fill of the
 *     same volume may have been half done), then the volume is removed (refused while sessions use it) and filled
 *     once more.
 * The helper container and the image are removed whatever happens. `host_config` is the base of the helper's
 * HostConfig (the driver's ulimits: some engines cannot start a container without them). Blocking, a few hundred ms;
 * not thread-safe for one `name` (the driver calls it under a mutex). Throws Error (unavailable, internal, ...).
 */
void ensure_agent_volume(Client& client, const std::string& name, const std::string& agent_bytes,
                         const Poco::JSON::Object::Ptr& host_config, std::chrono::milliseconds helper_timeout);

}  // namespace berth::engine::compat
