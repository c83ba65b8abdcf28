// libFuzzer target: berthd's HTTP wire layer (api::HttpServer: request heads, framing checks, the chunked decoder,
// body draining, pipelining, keep-alive). berthd runs in process (app::run_daemon, fake driver, SQLite) on loopback;
// each input is written as raw bytes on a fresh connection (one or several pipelined requests, any bytes), the
// write side is then shut, and everything berthd answers is read until it closes.
// Oracles: berthd answers within a generous bound (no hang) and stays up; the answer is a sequence of well-formed
// HTTP/1.1 responses (status line "HTTP/1.1 NNN <standard reason>", header lines with ':', a body framed by
// Content-Length or chunked); every 4xx/5xx carries the JSON error envelope; no 500; and there are never more
// responses than request heads in the input.
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/StreamSocket.h>
#include <Poco/String.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>

#include "app/daemon.hpp"
#include "fuzz_daemon.hpp"

namespace {

using Daemon = berth::fuzz::FuzzDaemon;

Daemon* g_daemon = nullptr;
const std::string* g_input = nullptr;  // the input being run (for fail())

/**
 * Reports and aborts. berthd's crash handler takes SIGABRT before libFuzzer can write the input out, so the input
 * is written here: ./fuzz_http_wire-failure (keep it under tests/fuzz/regressions/fuzz_http_wire/).
 */
[[noreturn]] void fail(const std::string& why, const std::string& answer) {
  if (g_input) {
    std::ofstream("fuzz_http_wire-failure", std::ios::binary) << *g_input;
    std::fprintf(stderr, "fuzz_http_wire: input written to ./fuzz_http_wire-failure\n");
  }
  std::fprintf(stderr, "fuzz_http_wire: %s\n--- answer (%zu bytes) ---\n%.*s\n", why.c_str(), answer.size(),
               static_cast<int>(std::min<std::size_t>(answer.size(), 4000)), answer.data());
  std::abort();
}

/** (Not named exchange: ADL would pick std::exchange.) Writes `input`, shuts the write side, and returns everything
 * berthd sends until it closes (or "" on refusal). */
std::string converse(const std::string& input, bool& timed_out) {
  Poco::Net::StreamSocket s;
  s.connect(Poco::Net::SocketAddress("127.0.0.1", g_daemon->port));
  s.setReceiveTimeout(Poco::Timespan(30, 0));
  s.setSendTimeout(Poco::Timespan(30, 0));
  timed_out = false;
  try {
    std::size_t off = 0;
    while (off < input.size()) {
      int n = s.sendBytes(input.data() + off, static_cast<int>(input.size() - off));
      if (n <= 0) break;
      off += static_cast<std::size_t>(n);
    }
    s.shutdownSend();
  } catch (const Poco::Exception&) {
    // berthd closed first (a refused head): read what it said
  }
  return berth::fuzz::read_until_closed(s, timed_out, std::chrono::seconds(30));
}

std::size_t count(std::string_view s, std::string_view what) {
  std::size_t n = 0;
  for (auto at = s.find(what); at != std::string_view::npos; at = s.find(what, at + 1))
    ++n;
  return n;
}

/** Parses the whole answer; fails on anything that is not a sequence of well-formed responses. Returns their count. */
std::size_t check_answer(const std::string& a) {
  std::size_t pos = 0, responses = 0;
  auto line = [&](std::string& out) {
    auto nl = a.find("\r\n", pos);
    if (nl == std::string::npos) fail("truncated line", a);
    out = a.substr(pos, nl - pos);
    pos = nl + 2;
  };
  while (pos < a.size()) {
    std::string status_line;
    line(status_line);
    if (status_line.size() < 13 || status_line.compare(0, 9, "HTTP/1.1 ") != 0 || status_line[12] != ' ')
      fail("bad status line '" + status_line + "'", a);
    int status = std::atoi(status_line.substr(9, 3).c_str());
    auto reason = status_line.substr(13);
    if (reason != Poco::Net::HTTPResponse::getReasonForStatus(static_cast<Poco::Net::HTTPResponse::HTTPStatus>(status)))
      fail("non-standard reason in '" + status_line + "'", a);
    if (status == 500) fail("500", a);
    std::string h, content_type, length;
    bool chunked = false;
    for (;;) {
      line(h);
      if (h.empty()) break;
      auto colon = h.find(':');
      if (colon == std::string::npos || colon == 0) fail("header line without a colon", a);
      auto name = Poco::toLower(h.substr(0, colon));
      auto value = Poco::trim(h.substr(colon + 1));
      if (name == "content-type") content_type = value;
      if (name == "content-length") length = value;
      if (name == "transfer-encoding") chunked = Poco::icompare(value, "chunked") == 0;
    }
    if (status == 100) continue;  // interim
    std::string body;
    if (chunked) {
      for (;;) {
        std::string size_line;
        line(size_line);
        auto size = std::stoull(size_line, nullptr, 16);
        if (size == 0) {
          line(size_line);
          break;
        }
        if (pos + size + 2 > a.size()) fail("truncated chunk", a);
        body.append(a, pos, size);
        pos += size + 2;
      }
    } else if (!length.empty()) {
      auto n = std::stoull(length);
      if (pos + n > a.size()) fail("truncated body", a);
      body = a.substr(pos, n);
      pos += n;
    } else if (status != 204 && status != 304) {
      fail("response without framing", a);
    }
    if (status >= 400) {
      if (content_type.rfind("application/json", 0) != 0) fail("error without a JSON body", a);
      try {
        auto o = Poco::JSON::Parser().parse(body).extract<Poco::JSON::Object::Ptr>();
        auto err = o->getObject("error");
        if (!err || err->getValue<std::string>("code").empty()) fail("error without the envelope", a);
      } catch (const Poco::Exception&) {
        fail("error body is not the envelope", a);
      }
    }
    ++responses;
  }
  return responses;
}

void stop_daemon() {
  if (g_daemon != nullptr) berth::fuzz::halt(*g_daemon);
}

void start_daemon() {
  g_daemon = new Daemon;
  berth::fuzz::launch(*g_daemon, "fuzz-wire", "max_connections_per_client = 0\nthreads = 64\n");
  berth::fuzz::wait_healthy(*g_daemon, "fuzz_http_wire");
  std::atexit(stop_daemon);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  start_daemon();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string input(reinterpret_cast<const char*>(data), size);
  // A HEAD response declares a body length it does not send, which this oracle cannot tell from a truncated answer
  // without matching responses to requests: HEAD is turned into another (unknown) method.
  for (auto at = input.find("HEAD"); at != std::string::npos; at = input.find("HEAD", at))
    input[at + 3] = 'X';
  g_input = &input;
  bool timed_out = false;
  auto answer = converse(input, timed_out);
  if (timed_out) fail("no end of answer within 30 s (hang)", answer);
  auto responses = check_answer(answer);
  auto heads = count(input, "\n\n") + count(input, "\n\r\n");
  if (responses > heads) {
    fail("more responses (" + std::to_string(responses) + ") than request heads (" + std::to_string(heads) + ")",
         answer);
  }
  bool t = false;
  if (converse("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", t).rfind("HTTP/1.1 200 OK", 0) != 0)
    fail("/health failed after the input", answer);
  return 0;
}
