// `berth terminal SANDBOX`: an interactive shell in a sandbox over GET .../terminal (docs/api.md, "Terminal").
// On a terminal, the local one is put in raw mode (every key goes to the sandbox's shell, Ctrl-C included) and its
// size follows the window (SIGWINCH); from a pipe, stdin is typed as is and its end is the terminal's ^D.
#include <Poco/Buffer.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/WebSocket.h>

#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <iostream>
#include <mutex>
#include <thread>

#include "commands.hpp"

namespace berth::cli {

namespace {

using Poco::Net::WebSocket;

std::atomic<bool> g_resized{false};

extern "C" void on_winch(int) {
  g_resized = true;
}

/** The local terminal in raw mode while it lives (restored on every way out, exceptions included). */
class RawMode {
 public:
  explicit RawMode(int fd) : fd_(fd) {
    if (::tcgetattr(fd_, &saved_) != 0) return;
    termios raw = saved_;
    ::cfmakeraw(&raw);
    active_ = ::tcsetattr(fd_, TCSANOW, &raw) == 0;
  }
  ~RawMode() {
    if (active_) ::tcsetattr(fd_, TCSANOW, &saved_);
  }
  RawMode(const RawMode&) = delete;
  RawMode& operator=(const RawMode&) = delete;

 private:
  int fd_;
  termios saved_{};
  bool active_ = false;
};

bool window_size(int fd, int& rows, int& cols) {
  winsize ws{};
  if (::ioctl(fd, TIOCGWINSZ, &ws) != 0 || ws.ws_row == 0 || ws.ws_col == 0) return false;
  rows = std::min<int>(ws.ws_row, 1000);
  cols = std::min<int>(ws.ws_col, 1000);
  return true;
}

void write_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // stdout is gone: nothing to show the output on
    data += n;
    size -= static_cast<std::size_t>(n);
  }
}

/** What the reader thread learned: how the shell ended, or why the connection did. */
struct Ending {
  std::atomic<bool> done{false};
  std::mutex m;
  std::optional<int> exit_code;  // from the exit message
  std::string problem;           // the connection ended without one
};

void read_frames(WebSocket& ws, Ending& end, std::mutex& send_mutex) {
  Poco::Buffer<char> frame(0);
  try {
    for (;;) {
      int flags = 0;
      frame.resize(0);
      int n = ws.receiveFrame(frame, flags);
      const int op = flags & WebSocket::FRAME_OP_BITMASK;
      if (n == 0 && flags == 0) break;
      if (op == WebSocket::FRAME_OP_BINARY || op == WebSocket::FRAME_OP_CONT) {
        write_all(STDOUT_FILENO, frame.begin(), frame.size());
      } else if (op == WebSocket::FRAME_OP_TEXT) {
        auto msg =
            Poco::JSON::Parser().parse(std::string(frame.begin(), frame.size())).extract<Poco::JSON::Object::Ptr>();
        const auto type = msg->optValue<std::string>("type", "");
        if (type == "exit") {
          std::lock_guard lock(end.m);
          end.exit_code = msg->optValue<int>("exit_code", 1);
        } else if (type == "error") {
          std::cerr << "\r\nberth: " << msg->optValue<std::string>("code", "error") << ": "
                    << msg->optValue<std::string>("message", "") << "\r\n";
        }
      } else if (op == WebSocket::FRAME_OP_PING) {
        std::lock_guard lock(send_mutex);
        ws.sendFrame(frame.begin(), static_cast<int>(frame.size()),
                     WebSocket::FRAME_FLAG_FIN | WebSocket::FRAME_OP_PONG);
      } else if (op == WebSocket::FRAME_OP_CLOSE) {
        std::lock_guard lock(end.m);
        if (!end.exit_code && frame.size() > 2) end.problem = std::string(frame.begin() + 2, frame.size() - 2);
        break;
      }
    }
  } catch (const std::exception& e) {
    std::lock_guard lock(end.m);
    end.problem = e.what();
  }
  end.done = true;
}

}  // namespace

int cmd_terminal(Context& ctx, const TerminalOptions& o) {
  const bool tty = ::isatty(STDIN_FILENO) == 1;
  int rows = o.rows.value_or(0), cols = o.cols.value_or(0);
  if (tty && !o.rows && !o.cols) window_size(STDIN_FILENO, rows, cols);
  auto ws = ctx.client.open_terminal("/v1/sandboxes/" + encode_component(o.sandbox), rows, cols);
  ws->setReceiveTimeout(Poco::Timespan(0));  // the server pings; a quiet shell is not an error
  std::mutex send_mutex;
  auto send = [&](const char* data, std::size_t size, int flags) {
    std::lock_guard lock(send_mutex);
    ws->sendFrame(data, static_cast<int>(size), flags);
  };

  Ending end;
  std::optional<RawMode> raw;
  if (tty) raw.emplace(STDIN_FILENO);
  struct sigaction sa {};
  sa.sa_handler = on_winch;
  ::sigemptyset(&sa.sa_mask);
  struct sigaction old_winch {};
  ::sigaction(SIGWINCH, &sa, &old_winch);
  std::thread reader([&] { read_frames(*ws, end, send_mutex); });
  bool stdin_open = true;
  try {
    while (!end.done.load()) {
      if (g_resized.exchange(false) && tty && window_size(STDIN_FILENO, rows, cols)) {
        const std::string msg =
            "{\"type\":\"resize\",\"rows\":" + std::to_string(rows) + ",\"cols\":" + std::to_string(cols) + "}";
        send(msg.data(), msg.size(), WebSocket::FRAME_TEXT);
      }
      if (!stdin_open) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      pollfd p{STDIN_FILENO, POLLIN, 0};
      int ready = ::poll(&p, 1, 100);
      if (ready <= 0) continue;  // timeout or EINTR (SIGWINCH): look at the flags again
      char buf[16384];
      ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        // The end of piped input: the terminal's EOF character, which ends the shell at an empty prompt.
        send("\x04", 1, WebSocket::FRAME_BINARY);
        stdin_open = false;
        continue;
      }
      send(buf, static_cast<std::size_t>(n), WebSocket::FRAME_BINARY);
    }
  } catch (const Poco::Exception&) {
    // The connection broke while sending; the reader reports why.
  }
  try {
    std::lock_guard lock(send_mutex);
    ws->shutdown();  // our close frame: answered by the server's, which ends the reader
  } catch (const Poco::Exception&) {
  }
  if (!end.done.load()) ws->shutdownReceive();
  reader.join();
  ::sigaction(SIGWINCH, &old_winch, nullptr);
  raw.reset();
  std::lock_guard lock(end.m);
  if (end.exit_code) return *end.exit_code;
  std::cerr << "berth: the terminal closed without the shell's exit" << (end.problem.empty() ? "" : ": ") << end.problem
            << "\n";
  return kExitConnection;
}

}  // namespace berth::cli
