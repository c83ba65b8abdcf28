// A small pool of connections to one session's berth-agent (the unix socket in the session's host directory, or
// one Engine exec stream each: the pool only knows how to open one).
// AgentClient is not thread-safe, so every concurrent call leases a connection of its own and gives it back when it
// is done: concurrent execs of one session never serialise, and no thread is started per process.
#pragma once

#include <poll.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "berth/engine/agent_client.hpp"

namespace berth::engine::compat {

/**
 * The connections to one agent. Thread-safe: lease() and the Lease's release may be called from any thread.
 * At most kMaxIdle idle connections are kept; more concurrent calls open more connections (each closed when given
 * back beyond kMaxIdle). A connection that broke (AgentError with code kProtocol) must be discarded, never returned;
 * one given back with unread bytes or events in berthd (not AgentClient::quiescent: a reply half read, an event
 * nobody claimed) is closed instead of kept. What the agent sends later is lease()'s to find (see there).
 */
class AgentPool {
 public:
  static constexpr std::size_t kMaxIdle = 8;

  /** Opens one new connection (connect + HELLO within the deadline); throws AgentError / AgentTimeout. Called
   *  without the pool's lock, possibly from several threads at once. */
  using Connector = std::function<std::unique_ptr<AgentClient>(AgentDeadline)>;

  explicit AgentPool(Connector connect) : connect_(std::move(connect)) {}
  /** Connections to the unix socket at `socket_path` (the "socket" transport). */
  static Connector socket_connector(const std::string& socket_path) {
    return [socket_path](AgentDeadline deadline) {
      return std::make_unique<AgentClient>(AgentClient::connect_unix(socket_path, deadline));
    };
  }

  /** One leased connection; goes back to the pool on destruction unless discard() was called. */
  class Lease {
   public:
    Lease(AgentPool* pool, std::unique_ptr<AgentClient> client) : pool_(pool), client_(std::move(client)) {}
    Lease(Lease&&) = default;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Lease& operator=(Lease&&) = delete;
    ~Lease() {
      if (pool_ && client_) pool_->give_back(std::move(client_));
    }
    AgentClient& operator*() { return *client_; }
    AgentClient* operator->() { return client_.get(); }
    /** The connection is broken or in an unknown state: close it instead of reusing it. */
    void discard() { client_.reset(); }

   private:
    AgentPool* pool_;
    std::unique_ptr<AgentClient> client_;
  };

  /**
   * An idle connection that still looks alive, or a new one (connect + HELLO within `deadline`). Throws AgentError /
   * AgentTimeout. An idle connection has nothing in flight that its last user waited for, so anything readable on
   * it means the agent went away (EOF, a hang-up) or sent a late answer to a request its last user no longer waits
   * for (an ERROR for a SIGNAL that met the process's exit): such connections are closed here, so that a call on a
   * dead agent fails at connect, before any request went out. A late answer that arrives after this check reaches
   * the next user as an event of a channel it never opened (channels only grow on a connection), which
   * next_event_for leaves queued; that user's give-back then closes the connection (not quiescent).
   */
  Lease lease(AgentDeadline deadline) {
    for (;;) {
      std::unique_ptr<AgentClient> c;
      {
        std::lock_guard lock(mutex_);
        if (idle_.empty()) break;
        c = std::move(idle_.back());
        idle_.pop_back();
      }
      pollfd p{c->fd(), POLLIN | POLLRDHUP, 0};
      if (::poll(&p, 1, 0) == 0) return Lease(this, std::move(c));
    }
    return Lease(this, connect_(deadline));
  }

  /** Adds a connection opened elsewhere (the readiness check's) to the idle set. */
  void adopt(std::unique_ptr<AgentClient> client) { give_back(std::move(client)); }

  /** Closes every idle connection (e.g. when the agent is known to be dead). */
  void clear() {
    std::lock_guard lock(mutex_);
    idle_.clear();
  }

 private:
  void give_back(std::unique_ptr<AgentClient> client) {
    if (!client->quiescent()) return;  // closed: see the class comment
    client->set_wake_fd(-1);
    std::lock_guard lock(mutex_);
    if (idle_.size() < kMaxIdle) idle_.push_back(std::move(client));
  }

  Connector connect_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<AgentClient>> idle_;
};

}  // namespace berth::engine::compat
