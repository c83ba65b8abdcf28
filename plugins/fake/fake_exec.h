// The fake driver's "processes": a deterministic mini shell and mini Python (the language is in README.md).
// Nothing here knows about sessions or the ABI table; the driver plugs one exec call in through ProcessHost.
#pragma once

#include <berth/driver.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace berth::fake {

/** Why a fake process stopped before it finished on its own. */
enum class Interruption { kNone, kTimedOut, kCancelled, kKilled, kSignaled };

/** The outside world of one fake process, implemented by the driver for one exec call (used on that thread). */
class ProcessHost {
 public:
  virtual ~ProcessHost() = default;
  /** Delivers one output chunk; kCancelled if the host's sink refused it. */
  virtual Interruption write(berth_stream stream, std::string_view data) = 0;
  /** Why the process must stop now (timeout, cancel token, session stopped or removed), or kNone. */
  virtual Interruption poll() = 0;
  /** Waits `ms` milliseconds (forever if negative), polling; returns early with the interruption. */
  virtual Interruption sleep_ms(double ms) = 0;
  /** `__fake unavailable <ms>`: the whole driver instance answers BERTH_UNAVAILABLE for `ms` milliseconds. */
  virtual void make_unavailable(uint64_t ms) = 0;
  /** `__fake crash-session`: the session dies (EXITED, exit code 137). */
  virtual void crash_session() = 0;
  /** `__fake spec`: the session's spec as "key=value" lines. */
  virtual std::string describe_session() = 0;
  /** The bytes of a workspace file (path relative to the workspace), or nullopt if it is not a regular file. */
  virtual std::optional<std::string> read_file(const std::string& path) = 0;
  /** Creates a workspace directory and its parents; false if a file is in the way. */
  virtual bool make_dir(const std::string& path) = 0;
  /** `__fake fill PATH BYTES`: (re)writes a workspace file of BYTES zero bytes; false if its directory is missing. */
  virtual bool fill_file(const std::string& path, uint64_t bytes) = 0;
  /**
   * The next stdin bytes into `chunk`, waiting (polling) until some arrive; an empty chunk means end of stdin.
   * Returns early with the interruption.
   */
  virtual Interruption read_stdin(std::string& chunk) = 0;
  /** The terminal's rows and columns when the process runs on a (fake) PTY, else nothing. */
  virtual std::optional<std::pair<uint16_t, uint16_t>> terminal_size() = 0;
};

/** What to run: the exec request after the driver resolved the session. */
struct Process {
  std::vector<std::string> argv;           // non-empty
  std::map<std::string, std::string> env;  // session env overlaid by the request env
  std::string pwd;                         // absolute, e.g. "/workspace/src"
};

/** How a fake process ended. exit_code is -1 for kTimedOut, kCancelled and kSignaled, 137 for kKilled. */
struct ProcessOutcome {
  Interruption interruption = Interruption::kNone;
  int exit_code = 0;
};

/** Runs `process` to its end. Deterministic: the same inputs give the same chunks and exit code. */
ProcessOutcome run_process(const Process& process, ProcessHost& host);

}  // namespace berth::fake
