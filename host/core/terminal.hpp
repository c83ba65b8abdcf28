// Terminals: the profile's shell on a pseudo-terminal in a sandbox's session (Driver::process_start with
// ProcessSpec::pty), as GET /v1/sandboxes/{id}/terminal serves it over a WebSocket (docs/api.md, "Terminal"). The
// core knows nothing of WebSockets: a Terminal takes keystrokes and resizes and hands out the terminal's output.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "core/driver.hpp"
#include "core/in_flight.hpp"

namespace berth::core {

/** What SandboxService::open_terminal starts. */
struct TerminalSpec {
  std::uint16_t rows = 24;              // 1..kMaxTerminalSide
  std::uint16_t cols = 80;              // 1..kMaxTerminalSide
  std::string term = "xterm-256color";  // TERM of the shell: 1-64 of [A-Za-z0-9._+-]
};

/** The largest terminal side (rows or columns) a terminal may have. */
inline constexpr std::uint16_t kMaxTerminalSide = 1000;

/**
 * Throws Error validation_error (details.field rows, cols or term) when `spec` breaks the rules of TerminalSpec.
 * Pure; thread-safe.
 */
void validate_terminal_spec(const TerminalSpec& spec);

/**
 * An open terminal: a shell process on a PTY in a sandbox's session. While it lives, the sandbox counts as in use
 * (idle cleanup leaves its session alone, and the idle timer is touched at least every quarter of the profile's
 * idle timeout so that other berthd instances see it too). Destroying it kills the shell with its whole process
 * tree and releases the sandbox's terminal slot.
 *
 * Threading: next_event() from one thread at a time (the output pump); write(), resize(), close() and the getters
 * from any thread, concurrently with it. The SandboxService that opened it must outlive it.
 */
class Terminal {
 public:
  /** How a Terminal reaches back into its service; each hook must be callable from any thread and never throw. */
  struct Hooks {
    std::function<void()> touch;            // queues an idle-timer touch of the sandbox
    std::function<void()> release;          // frees the terminal slot (called once, from the destructor)
    std::function<bool()> session_running;  // whether the terminal's session is still its sandbox's current one
    std::chrono::milliseconds touch_every{60'000};
  };

  Terminal(std::string sandbox_id, std::string session_id, std::string shell, std::unique_ptr<Process> process,
           InFlightCalls::Guard in_use, Hooks hooks);
  ~Terminal();
  Terminal(const Terminal&) = delete;
  Terminal& operator=(const Terminal&) = delete;

  const std::string& sandbox_id() const { return sandbox_id_; }
  const std::string& session_id() const { return session_id_; }
  /** The program running on the terminal (the profile's shell, an absolute path). */
  const std::string& shell() const { return shell_; }

  /**
   * Queues keystrokes (any bytes) for the shell. Blocks while the driver's stdin buffer is full (the shell does not
   * read), retrying every few milliseconds, so a client that types faster than the shell reads is slowed down rather
   * than buffered without bound. Returns false, dropping the bytes, once the shell has ended or close() was called.
   * Throws DriverError for any other driver failure.
   */
  bool write(std::string_view keys);
  /** New terminal size (the shell gets SIGWINCH). validation_error (field rows/cols) outside 1..kMaxTerminalSide. */
  void resize(std::uint16_t rows, std::uint16_t cols);
  /**
   * The next output chunk or the exit (the last event, repeated on every later call), Kind::none after `wait`.
   * A daemon shutdown (the in-use token is cancelled) kills the shell, so its exit follows; a driver that reports
   * the session gone (conflict, not_found) is an exit too (killed, session_ended()). Other DriverErrors as
   * Process::next_event throws them.
   */
  ProcessEvent next_event(std::chrono::milliseconds wait);
  /** Kills the shell and its process tree; its exit event follows. Idempotent. */
  void close();
  /**
   * After the exit event: true when the shell did not end by itself or by close() but with its session (the sandbox
   * was stopped, deleted, expired or over its disk limit). next_event's thread only.
   */
  bool session_ended() const { return session_ended_; }
  /** True once close() was called or the daemon began shutting down (the in-use token was cancelled). */
  bool closing() const { return closed_.load() || shutting_down(); }
  /** True once the service began shutting down (SandboxService::begin_shutdown cancelled the in-use token). */
  bool shutting_down() const { return in_use_.token().cancelled(); }

 private:
  std::string sandbox_id_;
  std::string session_id_;
  std::string shell_;
  std::unique_ptr<Process> process_;
  InFlightCalls::Guard in_use_;
  Hooks hooks_;
  std::atomic<bool> closed_{false};
  std::atomic<bool> killed_{false};  // Process::kill was called (once is enough)
  std::atomic<bool> ended_{false};
  bool session_ended_ = false;                                                           // next_event's thread only
  ProcessEvent last_exit_;                                                               // repeated once ended_
  std::chrono::steady_clock::time_point last_touch_ = std::chrono::steady_clock::now();  // next_event's thread only
};

}  // namespace berth::core
