// The exec and file calls running right now. Idle cleanup asks it whether a sandbox is in use (a session with a
// running call is never stopped for idleness), and shutdown cancels every running exec through it.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "core/driver.hpp"

namespace berth::core {

/**
 * A registry of in-flight calls per sandbox, each with its own CancelToken. Thread-safe: every method may be called
 * from any thread. Counts only this process's calls (another berthd on the same database is seen through the idle
 * timer, which every call touches when it starts).
 */
class InFlightCalls {
 public:
  /**
   * Marks one call as running on a sandbox until destroyed (RAII). Move-only. The token it owns is registered for
   * cancel_all() and stays valid for the guard's lifetime; pass it to the driver call.
   */
  class Guard {
   public:
    Guard(Guard&& other) noexcept;
    Guard& operator=(Guard&&) = delete;
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    ~Guard();

    /** The call's cancel token; cancelled by InFlightCalls::cancel_all(). Owned by the guard. */
    const CancelToken& token() const { return *token_; }

   private:
    friend class InFlightCalls;
    Guard(InFlightCalls& owner, std::string sandbox_id);

    InFlightCalls* owner_;  // null once moved from
    std::string sandbox_id_;
    std::unique_ptr<CancelToken> token_;
  };

  /**
   * Registers a call on `sandbox_id`; the call counts as in use until the guard is destroyed. A non-empty `tag` (an
   * async execution's id) lets cancel_tagged() cancel this call alone.
   */
  [[nodiscard]] Guard enter(const std::string& sandbox_id, const std::string& tag = "");
  /** Cancels the token of the running call entered with `tag`; false if none runs now. */
  bool cancel_tagged(const std::string& tag);
  /** True while at least one call on the sandbox runs. */
  bool in_use(const std::string& sandbox_id) const;
  /** Calls running now, over all sandboxes. */
  std::size_t count() const;
  /**
   * Cancels the token of every call running now (for shutdown); returns how many. Calls entered afterwards are not
   * affected. Drivers without cap::exec_cancel may still let an exec run to its timeout.
   */
  std::size_t cancel_all();

 private:
  void leave(const std::string& sandbox_id, CancelToken* token);

  mutable std::mutex mutex_;
  std::map<std::string, int> per_sandbox_;      // sandbox id -> running calls (entries > 0 only)
  std::set<CancelToken*> tokens_;               // owned by the live guards
  std::map<std::string, CancelToken*> tagged_;  // tag -> token of a live guard entered with that tag
};

}  // namespace berth::core
