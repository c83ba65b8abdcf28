// The daemon's start-up and shutdown sequence, separate from main() so that it reads top to bottom.
#pragma once

#include <functional>
#include <string>

namespace berth::app {

/**
 * Loads the config and the driver, then (unless check_only) serves the API until `wait_for_termination`
 * returns, and shuts down gracefully. Every start-up failure prints one actionable line to stderr and returns
 * a non-zero exit code: 78 for configuration errors, 69 for a driver that cannot be loaded, 70 otherwise.
 * Ignores SIGPIPE and installs the crash handler (app/crash_handler.hpp). Shutdown: new requests get 503
 * shutting_down, running requests get `[server] shutdown_grace` to finish, execs still running then are cancelled
 * (503 shutting_down) and get 5 s more to unwind; the store closes last. If a handler still runs after that, the
 * process exits 0 at once (std::_Exit) rather than free what it uses.
 */
int run_daemon(const std::string& config_path, bool check_only, const std::function<void()>& wait_for_termination);

}  // namespace berth::app
