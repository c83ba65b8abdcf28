#include "berth/engine/hijack.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "berth/engine/client.hpp"

namespace berth::engine {

HijackedStream::HijackedStream(Poco::Net::StreamSocket socket, std::string already_read)
    : socket_(std::move(socket)), pending_(std::move(already_read)) {
  int flags = ::fcntl(fd(), F_GETFL, 0);
  if (flags >= 0) ::fcntl(fd(), F_SETFL, flags | O_NONBLOCK);
}

HijackedStream::~HijackedStream() {
  close();
}

int HijackedStream::fd() const {
  auto* impl = socket_.impl();
  return impl ? static_cast<int>(impl->sockfd()) : -1;
}

void HijackedStream::close() {
  try {
    if (fd() >= 0) socket_.close();
  } catch (...) {
  }
}

HijackedStream::Ready HijackedStream::wait(std::chrono::milliseconds timeout, bool want_write) {
  Ready ready;
  if (pending_pos_ < pending_.size()) {
    ready.readable = true;
    ready.writable = want_write;
    return ready;
  }
  int descriptor = fd();
  if (descriptor < 0) throw Error(Errc::internal, "hijacked stream is closed");
  struct pollfd pfd = {descriptor, static_cast<short>(POLLIN | (want_write ? POLLOUT : 0)), 0};
  int rc = ::poll(&pfd, 1, static_cast<int>(timeout.count()));
  if (rc < 0) {
    if (errno == EINTR) return ready;
    throw Error(Errc::internal, std::string("poll on the exec stream failed: ") + std::strerror(errno));
  }
  if (rc == 0) return ready;
  ready.readable = (pfd.revents & (POLLIN | POLLHUP | POLLERR)) != 0;
  ready.writable = want_write && (pfd.revents & (POLLOUT | POLLERR)) != 0;
  return ready;
}

std::ptrdiff_t HijackedStream::read_some(std::uint8_t* buffer, std::size_t capacity) {
  if (pending_pos_ < pending_.size()) {
    size_t n = std::min(capacity, pending_.size() - pending_pos_);
    std::memcpy(buffer, pending_.data() + pending_pos_, n);
    pending_pos_ += n;
    if (pending_pos_ == pending_.size()) {
      pending_.clear();
      pending_pos_ = 0;
    }
    return static_cast<std::ptrdiff_t>(n);
  }
  for (;;) {
    ssize_t n = ::recv(fd(), buffer, capacity, 0);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return -1;
    if (errno == ECONNRESET) return 0;
    throw Error(Errc::unavailable, std::string("reading the exec stream failed: ") + std::strerror(errno));
  }
}

std::ptrdiff_t HijackedStream::write_some(const std::uint8_t* data, std::size_t size) {
  if (send_shut_) return -1;
  for (;;) {
    ssize_t n = ::send(fd(), data, size, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    if (errno == EPIPE || errno == ECONNRESET) return -1;
    throw Error(Errc::unavailable, std::string("writing the exec stream failed: ") + std::strerror(errno));
  }
}

void HijackedStream::shutdown_send() {
  if (send_shut_) return;
  send_shut_ = true;
  if (fd() >= 0) ::shutdown(fd(), SHUT_WR);
}

// ---------------------------------------------------------------------------------------------------------------

bool FrameDemuxer::feed(const std::uint8_t* data, std::size_t size, const Sink& sink) {
  while (size > 0) {
    if (remaining_ == 0) {
      size_t take = std::min(size, sizeof header_ - header_len_);
      std::memcpy(header_ + header_len_, data, take);
      header_len_ += take;
      data += take;
      size -= take;
      if (header_len_ < sizeof header_) return true;
      stream_ = header_[0];
      remaining_ = (static_cast<std::uint32_t>(header_[4]) << 24) | (static_cast<std::uint32_t>(header_[5]) << 16) |
                   (static_cast<std::uint32_t>(header_[6]) << 8) | static_cast<std::uint32_t>(header_[7]);
      header_len_ = 0;
      continue;
    }
    size_t take = std::min<size_t>(size, remaining_);
    remaining_ -= static_cast<std::uint32_t>(take);
    if (!sink(stream_, data, take)) return false;
    data += take;
    size -= take;
  }
  return true;
}

}  // namespace berth::engine
