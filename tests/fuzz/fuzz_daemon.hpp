// berthd inside a fuzz target's process (fuzz_http, fuzz_http_wire): the real daemon (app::run_daemon) on the fake
// driver, on a free loopback port, in a fresh temporary directory, with quotas off (the fuzzer creates sandboxes far
// faster than any tenant may; the quotas have their own probes in tests/security).
#pragma once

#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/StreamSocket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>

#include "app/daemon.hpp"

namespace berth::fuzz {

/** One in-process berthd. launch() once, halt() at exit (from one thread: the fuzzer's). */
struct FuzzDaemon {
  std::filesystem::path dir;  // berth.toml, berth.db and berthd.log
  std::uint16_t port = 0;
  std::thread thread;  // runs app::run_daemon until halt()
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;   // guarded by mu: run_daemon's wait returns once set
  int exit_code = -1;  // run_daemon's, once the thread ended
};

/**
 * Writes berth.toml in a fresh directory /tmp/berth-<name>-<pid> (`server_extra` lines are appended to [server]) and
 * starts app::run_daemon on d.thread. Does not wait for berthd to answer: the caller polls /health its own way.
 * Throws Poco or filesystem exceptions when no port or directory can be had.
 */
inline void launch(FuzzDaemon& d, const std::string& name, const std::string& server_extra = "") {
  d.dir = std::filesystem::temp_directory_path() / ("berth-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::create_directories(d.dir);
  {
    Poco::Net::ServerSocket probe(0);  // a free port, released again for berthd
    d.port = probe.address().port();
  }
  const auto config = (d.dir / "berth.toml").string();
  std::ofstream(config) << "[server]\nlisten = \"127.0.0.1:" << d.port << "\"\nshutdown_grace = \"1s\"\n"
                        << server_extra << "[store]\npath = \"" << (d.dir / "berth.db").string() << "\"\n"
                        << "[driver]\npath = \"" << BERTH_FAKE_DRIVER << "\"\n"
                        << "[profiles.default]\nimage = \"berth/python:3.11\"\n"
                        << "[limits]\nmax_sandboxes_per_owner = 0\ncreate_rate_per_minute = 0\n"
                        << "[log]\nlevel = \"error\"\nfile = \"" << (d.dir / "berthd.log").string() << "\"\n";
  d.thread = std::thread([&d, config] {
    d.exit_code = berth::app::run_daemon(config, false, [&d] {
      std::unique_lock lock(d.mu);
      d.cv.wait(lock, [&d] { return d.stop; });
    });
  });
}

/**
 * Everything the peer sends on `s` until it closes (a reset after the answer ends it too); `timed_out` when that
 * takes longer than `limit` in all, not per read (a peer that keeps sending but never closes is a hang).
 */
inline std::string read_until_closed(Poco::Net::StreamSocket& s, bool& timed_out,
                                     std::chrono::seconds limit = std::chrono::seconds(20)) {
  std::string out;
  char buf[65536];
  timed_out = false;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    s.setReceiveTimeout(Poco::Timespan(left.count() / 1000, static_cast<long>(left.count() % 1000) * 1000));
    try {
      int n = s.receiveBytes(buf, sizeof buf);
      if (n <= 0) break;
      out.append(buf, static_cast<std::size_t>(n));
    } catch (const Poco::TimeoutException&) {
      timed_out = true;
      break;
    } catch (const Poco::Exception&) {
      break;  // reset after the answer
    }
  }
  return out;
}

/**
 * Sends one raw HTTP request to d's berthd on a fresh connection and returns everything it answers until it closes
 * (send `Connection: close`). Throws Poco exceptions when it cannot connect.
 */
inline std::string raw_exchange(const FuzzDaemon& d, const std::string& request) {
  Poco::Net::StreamSocket s;
  s.connect(Poco::Net::SocketAddress("127.0.0.1", d.port));
  s.sendBytes(request.data(), static_cast<int>(request.size()));
  bool timed_out = false;
  return read_until_closed(s, timed_out, std::chrono::seconds(30));
}

/** Polls GET /health for up to 10 s; aborts the fuzz target (naming `target` and the log) when berthd never answers. */
inline void wait_healthy(const FuzzDaemon& d, const char* target) {
  for (int i = 0; i < 200; ++i) {
    try {
      if (raw_exchange(d, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").rfind("HTTP/1.1 200", 0) == 0)
        return;
    } catch (const Poco::Exception&) {
      // not listening yet
    }
    ::usleep(50'000);
  }
  std::fprintf(stderr, "%s: berthd did not come up (see %s)\n", target, (d.dir / "berthd.log").c_str());
  std::abort();
}

/** Lets run_daemon return, joins its thread and removes the directory. Safe to call twice. */
inline void halt(FuzzDaemon& d) {
  {
    std::lock_guard lock(d.mu);
    d.stop = true;
  }
  d.cv.notify_all();
  if (d.thread.joinable()) d.thread.join();
  std::error_code ec;
  std::filesystem::remove_all(d.dir, ec);
}

}  // namespace berth::fuzz
