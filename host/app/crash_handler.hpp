// A fatal signal is never silent: one structured log line with a backtrace, then the default action (core dump).
#pragma once

#include <string>

namespace berth::app {

/**
 * Installs a handler for SIGSEGV, SIGBUS, SIGFPE, SIGILL and SIGABRT that writes one line, event `berthd.crash`
 * with `signal`, `pid` and a one-line symbolised `backtrace`, to `log_file` (opened now, appended to; stderr when
 * empty) in the log's `json` or text format, then re-raises the signal with its default action. Everything the
 * handler needs (file descriptors, a scratch memfd, the unwinder) is prepared here, so the handler itself only makes
 * async-signal-safe calls. Call once, from the main thread, after log::init. Throws std::runtime_error when the log
 * file cannot be opened.
 */
void install_crash_handler(const std::string& log_file, bool json);

/**
 * Test hook, not a feature: when the environment variable BERTH_DEBUG_CRASH names a signal handled above
 * ("SIGSEGV", "SIGABRT", ...), raises it now, so a test can check the crash line of a real berthd process.
 * Does nothing otherwise.
 */
void crash_if_requested_for_test();

}  // namespace berth::app
