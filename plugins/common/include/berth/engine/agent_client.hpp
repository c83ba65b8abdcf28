// The driver side of the berth-agent protocol (docs/agent-protocol.md): one AgentClient per agent connection (a
// unix socket in the session's host directory, or any fd pair such as an engine attach stream), multiplexing any
// number of processes and file requests over it without a thread per process.
//
// Model: requests are queued (start, write_stdin, ...) and return at once; next_event() / next_event_for() flush
// queued bytes and read frames until an event is available or the deadline passes (a pull model with deadlines).
// A driver serving thousands of processes runs one pump per connection (its own thread or event loop, using
// fd() for readiness) and routes events by channel; the synchronous helpers (run, read_file, ...) are built on
// the same pump and leave other channels' events queued for later next_event() calls.
//
// Thread-safety: none. One thread at a time per AgentClient (callers serialise with their own mutex).
// Errors: AgentError (the agent's ERROR frame, or a broken connection: code kProtocol), AgentTimeout (deadline).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "berth/agent/protocol.hpp"

namespace berth::engine {

/** Absolute deadlines for every blocking call. */
using AgentDeadline = std::chrono::steady_clock::time_point;

/** The agent answered ERROR, or the connection broke (code kProtocol, sys_errno = the errno seen). */
class AgentError : public std::runtime_error {
 public:
  AgentError(agent::ErrorCode code, std::uint32_t sys_errno, const std::string& what)
      : std::runtime_error(what), code_(code), sys_errno_(sys_errno) {}
  agent::ErrorCode code() const { return code_; }
  std::uint32_t sys_errno() const { return sys_errno_; }

 private:
  agent::ErrorCode code_;
  std::uint32_t sys_errno_;
};

/** A deadline passed before the awaited event. The connection stays usable. */
class AgentTimeout : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/** One decoded agent→client message. Which fields are set depends on `type`. */
struct AgentEvent {
  agent::MsgType type{};
  std::uint32_t channel = 0;
  int stream = 0;                        ///< kOutput: 1 stdout, 2 stderr
  std::string data;                      ///< kOutput / kFileData bytes
  std::uint32_t pid = 0;                 ///< kStarted
  agent::ExitInfo exit;                  ///< kExit
  agent::ErrorInfo error;                ///< kError
  agent::FileInfo info;                  ///< kStatResult
  std::vector<agent::FileInfo> entries;  ///< kListEntries
  std::uint64_t value = 0;               ///< kDone (bytes / entries), kPong (token)
};

/** What run() collected. */
struct AgentRunResult {
  std::uint32_t pid = 0;
  std::string out, err;
  agent::ExitInfo exit;
};

/** A connection to one berth-agent. Owns its fds (closed on destruction). Not copyable; movable. */
class AgentClient {
 public:
  /** Connects to `path` (a unix socket) and performs HELLO. Throws AgentError / AgentTimeout. */
  static AgentClient connect_unix(const std::string& path, AgentDeadline deadline);
  /** Wraps an fd pair (may be the same fd twice; ownership taken) and performs HELLO. */
  static AgentClient over_fds(int read_fd, int write_fd, AgentDeadline deadline);

  AgentClient(AgentClient&& other) noexcept;
  AgentClient& operator=(AgentClient&&) = delete;
  AgentClient(const AgentClient&) = delete;
  ~AgentClient();

  /** Negotiated protocol version. */
  std::uint16_t version() const { return version_; }
  /** The agent's pid (in its own pid namespace). */
  std::uint32_t agent_pid() const { return agent_pid_; }
  /** The fd to poll for readability (frames from the agent). */
  int fd() const { return rfd_; }
  /**
   * An extra fd (not owned; -1 = none, the default) that the waits of next_event* also watch: once it is readable
   * the wait ends early with nothing (as if its deadline passed), so another thread can make a waiter send what it
   * queued meanwhile without the waiter polling in short slices. The caller drains it (an eventfd read).
   */
  void set_wake_fd(int fd) { wake_fd_ = fd; }

  /** Queues START on a fresh channel and returns the channel. STARTED or ERROR follows as an event. */
  std::uint32_t start(const agent::StartRequest& req);
  /** Queues stdin bytes (split into chunks of at most agent::kMaxChunk). */
  void write_stdin(std::uint32_t channel, std::string_view data);
  /** Queues EOF on stdin. */
  void close_stdin(std::uint32_t channel);
  /** Queues a signal for the process (to_group: its whole process group). */
  void signal(std::uint32_t channel, int signo, bool to_group);
  /** Queues a PTY resize. */
  void resize(std::uint32_t channel, std::uint16_t rows, std::uint16_t cols);
  /** Queues a cancel: the agent kills the process tree; EXIT follows. */
  void kill(std::uint32_t channel);
  /** Writes what is queued as far as the socket takes it without blocking, and reads what already arrived (its
   *  events stay queued for next_event*). Throws AgentError when the connection is broken. */
  void flush() { pump(AgentDeadline{}); }
  /** Bytes queued but not yet written to the agent (stdin the agent is not reading piles up here). */
  std::size_t unsent() const { return out_.size() - out_pos_; }
  /** Nothing of this connection waits in berthd: no byte queued to send, no event decoded and unclaimed, no partial
   *  frame received. Only such a connection goes back to a pool (AgentPool refuses the others); frames the agent
   *  sends later are AgentPool::lease's to find. */
  bool quiescent() const { return out_pos_ == out_.size() && events_.empty() && decoder_.buffered() == 0; }
  /** Whether an event of `channel` is already decoded and waiting (next_event_for would return it at once). */
  bool has_event_for(std::uint32_t channel) const;
  /** Queues a raw frame (tests and future messages). */
  void send_raw(std::string bytes);

  /** The next event of any channel, or nullopt when the deadline passes. Throws AgentError if the connection
   *  breaks. Connection-level ERRORs (channel 0) are returned as events too. */
  std::optional<AgentEvent> next_event(AgentDeadline deadline);
  /** The next event of `channel`; events of other channels stay queued in order. */
  std::optional<AgentEvent> next_event_for(std::uint32_t channel, AgentDeadline deadline);

  /** Starts a process, feeds `stdin_data` then EOF, collects its output and exit. Throws AgentError when the
   *  start fails, AgentTimeout at the deadline (the process is then killed). */
  AgentRunResult run(const agent::StartRequest& req, std::string_view stdin_data, AgentDeadline deadline);
  /** Round trip of a PING; returns the elapsed time. */
  std::chrono::nanoseconds ping(AgentDeadline deadline);

  /** File operations as uid/gid (agent::kKeepId = the agent's own), paths relative to the workspace root. */
  std::string read_file(const std::string& path, std::uint32_t uid, std::uint32_t gid, AgentDeadline deadline);
  /** Streams the file to `sink` chunk by chunk (at most agent::kMaxChunk bytes each) as it arrives, so nothing is
   *  buffered whole. `sink` returns false to stop: read_file then returns false and the connection is mid-reply (the
   *  caller must discard it). True once the whole file went to `sink`. `idle_timeout` bounds the wait for each
   *  frame (not the whole transfer, which a slow sink may stretch): AgentTimeout when it passes. */
  bool read_file(const std::string& path, std::uint32_t uid, std::uint32_t gid,
                 const std::function<bool(std::string_view)>& sink, std::chrono::milliseconds idle_timeout);
  std::uint64_t write_file(const std::string& path, std::string_view data, std::uint32_t uid, std::uint32_t gid,
                           std::uint32_t mode, AgentDeadline deadline);
  agent::FileInfo stat(const std::string& path, std::uint32_t uid, std::uint32_t gid, AgentDeadline deadline);
  std::vector<agent::FileInfo> list(const std::string& path, std::uint32_t uid, std::uint32_t gid,
                                    AgentDeadline deadline);
  /** Streams the directory's entries to `on_entry` as they arrive; returns false when `on_entry` returned false
   *  (the connection is then mid-reply and must be discarded), true once every entry went out. `idle_timeout` as for
   *  the streaming read_file. */
  bool list(const std::string& path, std::uint32_t uid, std::uint32_t gid,
            const std::function<bool(const agent::FileInfo&)>& on_entry, std::chrono::milliseconds idle_timeout);
  void remove(const std::string& path, bool recursive, std::uint32_t uid, std::uint32_t gid, AgentDeadline deadline);
  void mkdir(const std::string& path, std::uint32_t mode, bool parents, std::uint32_t uid, std::uint32_t gid,
             AgentDeadline deadline);

 private:
  AgentClient(int rfd, int wfd);
  void hello(AgentDeadline deadline);
  void queue(agent::MsgType type, std::uint32_t channel, std::string_view payload);
  bool pump(AgentDeadline deadline);  // false: deadline passed with nothing new
  std::uint32_t next_channel() { return ++last_channel_; }
  AgentEvent await(std::uint32_t channel, AgentDeadline deadline, const char* what);
  [[noreturn]] static void raise(const AgentEvent& e);

  int rfd_ = -1, wfd_ = -1;
  int wake_fd_ = -1;  // not owned
  std::string out_;
  std::size_t out_pos_ = 0;
  agent::FrameDecoder decoder_;
  std::deque<AgentEvent> events_;
  std::uint32_t last_channel_ = 0;
  std::uint16_t version_ = 0;
  std::uint32_t agent_pid_ = 0;
};

}  // namespace berth::engine
