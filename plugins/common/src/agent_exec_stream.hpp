// The "exec" agent transport: a connection to a session's berth-agent through the Engine API alone (no shared
// filesystem), for an engine on another machine than berthd.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "berth/engine/agent_client.hpp"
#include "berth/engine/client.hpp"
#include "berth/engine/hijack.hpp"

namespace berth::engine::compat {

/**
 * Opens one connection to the agent of `container` (agent_transport = "exec"): an Engine API exec of `agent_argv`
 * (the agent binary with --stdio, as the container's user) whose hijacked stream carries the agent protocol
 * (docs/agent-protocol.md), then HELLO within `deadline`.
 *
 * The engine frames what the exec writes (8-byte stdcopy headers) but passes stdin through as it is, so one pump
 * thread per connection (detached; it owns the stream) demultiplexes the agent's frames into one end of a socketpair
 * and copies what the client writes to the other end onto the stream. When the client closes its end, the pump
 * half-closes the stream: the exec'd agent sees EOF, kills what it started and exits; the pump ends when the engine
 * closes the stream. When the engine closes it first (the container stopped), the client sees EOF.
 *
 * Throws engine::Error from the exec create/start (conflict or not_found when the container is not running),
 * AgentError / AgentTimeout from HELLO. Thread-safe: calls are independent.
 */
std::unique_ptr<AgentClient> connect_over_exec(Client& client, const std::string& container,
                                               const std::vector<std::string>& agent_argv, AgentDeadline deadline);

/**
 * The pump of one connection, exposed for connect_over_exec and the tests: starts the detached thread that owns
 * `stream` and returns the client's end of the socketpair (owned by the caller; blocking mode as created). Throws
 * engine::Error when the socketpair cannot be made, std::system_error when the thread cannot start (the stream is
 * closed either way).
 */
int start_pump(std::unique_ptr<HijackedStream> stream);

}  // namespace berth::engine::compat
