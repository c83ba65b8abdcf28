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
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <iostream>
#include <mutex>
#include <optional>
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
  std::string reason;            // its reason: exited, session_ended, closed
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
          end.reason = msg->optValue<std::string>("reason", "exited");
        } else if (type == "error") {
          std::cerr << "\r\nberth: " << msg->optValue<std::string>("code", "error") << ": "
                    << msg->optValue<std::string>("message", "") << "\r\n";
        }
      } else if (op == WebSocket::FRAME_OP_PING) {
        std::lock_guard lock(send_mutex);
        ws.sendFrame(frame.begin(), static_cast<int>(frame.size()),
                     WebSocket::FRAME_FLAG_FIN | static_cast<int>(WebSocket::FRAME_OP_PONG));
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

/** SIGTERM/SIGHUP while the terminal runs: leave cleanly (the local terminal restored), not mid-write. */
std::atomic<int> g_stop_signal{0};

extern "C" void on_stop(int signo) {
  g_stop_signal = signo;
}

/** A TERM the server takes (1-64 of [A-Za-z0-9._+-]), else none: the server's default then applies. */
bool usable_term(const char* term) {
  if (term == nullptr || *term == '\0' || std::strlen(term) > 64) return false;
  for (const char* c = term; *c; ++c) {
    if (!std::isalnum(static_cast<unsigned char>(*c)) && std::strchr("._+-", *c) == nullptr) return false;
  }
  return true;
}

}  // namespace

int cmd_terminal(Context& ctx, const TerminalOptions& o) {
  const bool tty = ::isatty(STDIN_FILENO) == 1;
  // The window's size unless the flags fix it; a side that is not given comes from the window.
  const bool follow_window = tty && !o.rows && !o.cols;
  int rows = 0, cols = 0;
  if (tty) window_size(STDIN_FILENO, rows, cols);
  if (o.rows) rows = *o.rows;
  if (o.cols) cols = *o.cols;
  auto ws = ctx.client.open_terminal("/v1/sandboxes/" + encode_component(o.sandbox), rows, cols,
                                     usable_term(std::getenv("TERM")) ? std::getenv("TERM") : "");
  // The server pings every 30 s: nothing for 100 s means the connection is gone, whatever TCP still believes.
  ws->setReceiveTimeout(Poco::Timespan(100, 0));
  ws->setSendTimeout(Poco::Timespan(100, 0));
  std::mutex send_mutex;
  auto send = [&](const char* data, std::size_t size, int flags) {
    std::lock_guard lock(send_mutex);
    ws->sendFrame(data, static_cast<int>(size), flags);
  };

  // Signals: a write to a vanished server or a closed stdout must fail, not kill the CLI with the terminal raw.
  struct SignalScope {
    struct sigaction winch {
    }, term{}, hup{}, pipe{};
    SignalScope() {
      struct sigaction sa {};
      ::sigemptyset(&sa.sa_mask);
      sa.sa_handler = on_winch;
      ::sigaction(SIGWINCH, &sa, &winch);
      sa.sa_handler = on_stop;
      ::sigaction(SIGTERM, &sa, &term);
      ::sigaction(SIGHUP, &sa, &hup);
      sa.sa_handler = SIG_IGN;
      ::sigaction(SIGPIPE, &sa, &pipe);
    }
    ~SignalScope() {
      ::sigaction(SIGWINCH, &winch, nullptr);
      ::sigaction(SIGTERM, &term, nullptr);
      ::sigaction(SIGHUP, &hup, nullptr);
      ::sigaction(SIGPIPE, &pipe, nullptr);
    }
  } signals;
  Ending end;
  std::optional<RawMode> raw;
  if (tty) raw.emplace(STDIN_FILENO);
  std::thread reader([&] { read_frames(*ws, end, send_mutex); });
  // Whatever happens below, the reader is stopped and joined before the terminal is restored (never terminate()):
  // it gets a moment for the server's last frames (the exit message, the close), then its read is cut.
  auto stop_reader = [&reader, &end, &ws] {
    for (int i = 0; i < 40 && !end.done.load(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (!end.done.load()) {
      try {
        ws->shutdownReceive();
      } catch (const Poco::Exception&) {
        // Already closed: the reader's read fails on its own.
      }
    }
    if (reader.joinable()) reader.join();
  };
  struct Finally {
    const decltype(stop_reader)& fn;
    ~Finally() { fn(); }
  } finally{stop_reader};

  bool stdin_open = true;
  try {
    while (!end.done.load() && g_stop_signal.load() == 0) {
      if (follow_window && g_resized.exchange(false) && window_size(STDIN_FILENO, rows, cols)) {
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
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
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
  stop_reader();  // (then finally's call finds it joined)
  raw.reset();
  std::lock_guard lock(end.m);
  if (g_stop_signal.load() != 0) {
    std::cerr << "berth: terminal left on signal " << g_stop_signal.load() << "\n";
    return 128 + g_stop_signal.load();
  }
  if (end.exit_code && end.reason == "exited") return *end.exit_code;
  if (end.exit_code) {
    std::cerr << "berth: the shell did not exit by itself (" << end.reason << ")\n";
    return kExitConnection;
  }
  std::cerr << "berth: the terminal closed without the shell's exit" << (end.problem.empty() ? "" : ": ") << end.problem
            << "\n";
  return kExitConnection;
}

}  // namespace berth::cli
