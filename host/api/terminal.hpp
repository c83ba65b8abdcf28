// GET /v1/sandboxes/{id}/terminal: a WebSocket (RFC 6455, Poco's WebSocket) bound to a core::Terminal. The wire
// protocol is documented in docs/api.md, "Terminal"; the handler only translates frames to Terminal calls.
#pragma once

#include "api/request.hpp"

namespace berth::api {

/**
 * The terminal route. Before the upgrade every failure is an ordinary error envelope (invalid_request when the
 * request is not a WebSocket handshake for version 13, validation_error for rows/cols/term, then what
 * SandboxService::open_terminal throws). After it the handler runs the WebSocket until the shell ends, the client
 * closes, the client stays silent for 90 s, or berthd shuts down, holding its server thread (and one more for the
 * output pump) all along. Thread-safe like every handler.
 */
void terminal(Exchange& ex);

}  // namespace berth::api
