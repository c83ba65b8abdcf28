#include "app/crash_handler.hpp"

#include <execinfo.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <stdexcept>

namespace berth::app {
namespace {

struct FatalSignal {
  int number;
  const char* name;
};
constexpr FatalSignal kFatalSignals[] = {
    {SIGSEGV, "SIGSEGV"}, {SIGBUS, "SIGBUS"}, {SIGFPE, "SIGFPE"}, {SIGILL, "SIGILL"}, {SIGABRT, "SIGABRT"}};

int g_log_fd = STDERR_FILENO;  // where the crash line goes
int g_scratch_fd = -1;         // memfd that backtrace_symbols_fd writes to, read back into one line
bool g_json = false;
std::atomic_flag g_crashing = ATOMIC_FLAG_INIT;

// Static buffers: the handler may run on a small alternate stack.
char g_symbols[32768];
char g_line[40000];
char g_altstack[65536];

/** Appends to g_line; every helper below is async-signal-safe (no allocation, no locks, no stdio). */
struct LineWriter {
  std::size_t len = 0;
  void put(char c) {
    if (len + 1 < sizeof g_line) g_line[len++] = c;
  }
  void str(const char* s) {
    while (*s)
      put(*s++);
  }
  void num(unsigned long long v, int min_digits = 1) {
    char digits[24];
    int n = 0;
    do {
      digits[n++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v != 0);
    while (n < min_digits)
      digits[n++] = '0';
    while (n > 0)
      put(digits[--n]);
  }
  /** A value inside double quotes: newlines become " | ", quotes and backslashes are escaped, controls dropped. */
  void quoted_frames(const char* s, std::size_t n) {
    // Frames are separated by newlines; the last one ends with one too.
    for (std::size_t i = 0; i < n; ++i) {
      char c = s[i];
      if (c == '\n') {
        if (i + 1 < n) str(" | ");
      } else if (c == '"' || c == '\\') {
        put('\\');
        put(c);
      } else if (static_cast<unsigned char>(c) >= 0x20 && c != 0x7f) {
        put(c);
      }
    }
  }
  /** UTC time as the text log lines print it: 2026-12-04T16:41:20.123Z. */
  void timestamp() {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    long long days = ts.tv_sec / 86400;
    long long secs = ts.tv_sec % 86400;
    // Howard Hinnant's civil_from_days.
    long long z = days + 719468;
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    long long doe = z - era * 146097;
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long y = yoe + era * 400;
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    long long mp = (5 * doy + 2) / 153;
    long long d = doy - (153 * mp + 2) / 5 + 1;
    long long m = mp < 10 ? mp + 3 : mp - 9;
    if (m <= 2) ++y;
    num(static_cast<unsigned long long>(y), 4);
    put('-');
    num(static_cast<unsigned long long>(m), 2);
    put('-');
    num(static_cast<unsigned long long>(d), 2);
    put('T');
    num(static_cast<unsigned long long>(secs / 3600), 2);
    put(':');
    num(static_cast<unsigned long long>(secs / 60 % 60), 2);
    put(':');
    num(static_cast<unsigned long long>(secs % 60), 2);
    put('.');
    num(static_cast<unsigned long long>(ts.tv_nsec / 1'000'000), 3);
    put('Z');
  }
};

const char* signal_name(int sig) {
  for (const auto& s : kFatalSignals) {
    if (s.number == sig) return s.name;
  }
  return "unknown";
}

/** Reads what backtrace_symbols_fd wrote; returns the byte count (0 if the scratch file is unusable). */
std::size_t symbolise(void* const* frames, int count) {
  if (g_scratch_fd < 0) return 0;
  if (ftruncate(g_scratch_fd, 0) != 0 || lseek(g_scratch_fd, 0, SEEK_SET) != 0) return 0;
  backtrace_symbols_fd(frames, count, g_scratch_fd);
  if (lseek(g_scratch_fd, 0, SEEK_SET) != 0) return 0;
  std::size_t total = 0;
  while (total < sizeof g_symbols) {
    ssize_t n = read(g_scratch_fd, g_symbols + total, sizeof g_symbols - total);
    if (n <= 0) break;
    total += static_cast<std::size_t>(n);
  }
  return total;
}

void on_fatal_signal(int sig) {
  if (!g_crashing.test_and_set()) {
    void* frames[64];
    int count = backtrace(frames, 64);
    std::size_t symbols = symbolise(frames, count);
    LineWriter w;
    if (g_json) {
      w.str("{\"event\":\"berthd.crash\",\"level\":\"error\",\"signal\":\"");
      w.str(signal_name(sig));
      w.str("\",\"pid\":\"");
      w.num(static_cast<unsigned long long>(getpid()));
      w.str("\",\"frames\":\"");
      w.num(static_cast<unsigned long long>(count));
      w.str("\",\"backtrace\":\"");
      w.quoted_frames(g_symbols, symbols);
      w.str("\"}\n");
    } else {
      w.timestamp();
      w.str(" error berthd.crash signal=");
      w.str(signal_name(sig));
      w.str(" pid=");
      w.num(static_cast<unsigned long long>(getpid()));
      w.str(" frames=");
      w.num(static_cast<unsigned long long>(count));
      w.str(" backtrace=\"");
      w.quoted_frames(g_symbols, symbols);
      w.str("\"\n");
    }
    if (w.len + 1 >= sizeof g_line) g_line[w.len - 1] = '\n';  // truncated: still end the line
    std::size_t off = 0;
    while (off < w.len) {
      ssize_t n = write(g_log_fd, g_line + off, w.len - off);
      if (n <= 0) break;
      off += static_cast<std::size_t>(n);
    }
  }
  // SA_RESETHAND restored the default action: re-raise so the process dies of the same signal (and dumps core).
  signal(sig, SIG_DFL);
  raise(sig);
}

}  // namespace

void install_crash_handler(const std::string& log_file, bool json) {
  g_json = json;
  if (!log_file.empty()) {
    int fd = open(log_file.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) throw std::runtime_error("cannot open " + log_file + " for the crash handler: " + std::strerror(errno));
    g_log_fd = fd;
  }
  g_scratch_fd = memfd_create("berth-crash-backtrace", MFD_CLOEXEC);
  // The first backtrace() call loads libgcc_s (it allocates): do it now, not inside the handler.
  void* warmup[4];
  backtrace(warmup, 4);
  // An alternate stack for this thread, so that a stack overflow there is reported too; but never in place of one
  // already set (a sanitizer's runtime owns and later unmaps its own: replacing it aborts the process at exit).
  stack_t current{};
  if (sigaltstack(nullptr, &current) == 0 && (current.ss_flags & SS_DISABLE) != 0) {
    stack_t ss{};
    ss.ss_sp = g_altstack;
    ss.ss_size = sizeof g_altstack;
    sigaltstack(&ss, nullptr);
  }
  struct sigaction sa {};
  sa.sa_handler = on_fatal_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND | SA_ONSTACK;
  for (const auto& s : kFatalSignals)
    sigaction(s.number, &sa, nullptr);
}

void crash_if_requested_for_test() {
  const char* wanted = std::getenv("BERTH_DEBUG_CRASH");
  if (wanted == nullptr) return;
  for (const auto& s : kFatalSignals) {
    if (std::strcmp(wanted, s.name) == 0) raise(s.number);
  }
}

}  // namespace berth::app
