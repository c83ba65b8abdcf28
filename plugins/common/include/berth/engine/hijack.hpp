// The raw stream of a hijacked engine connection (exec/attach) and the demultiplexer of its 8-byte frames.
#pragma once

#include <Poco/Net/StreamSocket.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace berth::engine {

/**
 * A connection the engine upgraded to a raw byte stream. Non-blocking: use wait() then read_some()/write_some().
 * Movable, not copyable; closes the socket when destroyed.
 */
class HijackedStream {
 public:
  HijackedStream(Poco::Net::StreamSocket socket, std::string already_read);
  HijackedStream(HijackedStream&&) noexcept = default;
  HijackedStream& operator=(HijackedStream&&) noexcept = default;
  ~HijackedStream();

  struct Ready {
    bool readable = false;  // data or EOF waiting
    bool writable = false;
  };
  /** Waits up to `timeout` until the stream is readable (or writable too, when want_write). */
  Ready wait(std::chrono::milliseconds timeout, bool want_write);

  /** Reads what is available: >0 bytes, 0 at EOF, -1 when nothing is available yet. Throws Error on failure. */
  std::ptrdiff_t read_some(std::uint8_t* buffer, std::size_t capacity);

  /** Writes what fits without blocking: the count (maybe 0); -1 when the peer no longer reads (EPIPE/reset). */
  std::ptrdiff_t write_some(const std::uint8_t* data, std::size_t size);

  /** Half-closes the connection: the engine sees EOF on the process's stdin. */
  void shutdown_send();
  void close();
  /** The socket, for a poll() that watches other fds too (-1 once closed). Bytes that arrived with the HTTP head
   *  are not visible there: has_pending() tells; read_some() returns them first. */
  int fd() const;
  bool has_pending() const { return pending_pos_ < pending_.size(); }
  /** Whether shutdown_send() was called. */
  bool send_shut() const { return send_shut_; }

 private:
  Poco::Net::StreamSocket socket_;
  std::string pending_;  // bytes that arrived with the HTTP answer head
  std::size_t pending_pos_ = 0;
  bool send_shut_ = false;
};

/**
 * Demultiplexes the engine's stdcopy framing: [stream, 0, 0, 0, u32 big-endian length] + payload, repeated.
 * Payload is passed on as it arrives, so a frame may reach the sink in several pieces.
 */
class FrameDemuxer {
 public:
  /** stream: 0 stdin, 1 stdout, 2 stderr (3 = systemerr in newer engines). Return false to stop. */
  using Sink = std::function<bool(int stream, const std::uint8_t* data, std::size_t size)>;

  /** Feeds bytes; returns false as soon as the sink returned false. */
  bool feed(const std::uint8_t* data, std::size_t size, const Sink& sink);
  /** True between frames (no partial header or payload pending). */
  bool at_boundary() const { return header_len_ == 0 && remaining_ == 0; }

 private:
  std::uint8_t header_[8] = {};
  std::size_t header_len_ = 0;
  std::uint32_t remaining_ = 0;
  int stream_ = 0;
};

}  // namespace berth::engine
