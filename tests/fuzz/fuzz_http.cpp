// libFuzzer target: the whole HTTP API in process — berthd's own start-up (app::run_daemon) on the fake driver and
// SQLite, serving loopback; each input is one request to one of api::routes(). This reaches every JSON request
// body parser, query string parsing, path validation and multipart upload parsing exactly as a client does.
// Oracles: berthd never answers 500 (an exception nothing mapped), every JSON answer parses as strict JSON, and
// berthd stays up. (When api::handle_request lands, an in-process entry can replace the loopback hop.)
//
// Input: byte 0 picks the route, byte 1 holds flags, the rest is lines:
//   flags & 1: the first line is the path parameter ({}), else the sandbox/workspace created at start-up
//   flags & 2: the body is sent as multipart/form-data with boundary "fuzzb"
//   flags & 4: an Idempotency-Key header is sent (the next line)
//   then one line of query string (may be empty), then the body (the rest, any bytes).
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/StreamCopier.h>

#include <unistd.h>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include "api/request.hpp"
#include "app/daemon.hpp"
#include "fuzz_daemon.hpp"

namespace {

struct Daemon : berth::fuzz::FuzzDaemon {
  std::string sandbox_id;
  std::string workspace_id;
};

Daemon* g_daemon = nullptr;

std::string percent_encode(std::string_view in, std::string_view keep) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : in) {
    if (std::isalnum(c) != 0 || std::string_view("-._~").find(static_cast<char>(c)) != std::string_view::npos ||
        keep.find(static_cast<char>(c)) != std::string_view::npos) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

struct Answer {
  int status = 0;
  std::string content_type;
  std::string body;
};

Answer send(const std::string& method, const std::string& uri, const std::string& body,
            const std::string& content_type = "application/json", const std::string& idempotency_key = "") {
  static Poco::Net::HTTPClientSession session("127.0.0.1", g_daemon->port);
  session.setTimeout(Poco::Timespan(5, 0));
  Poco::Net::HTTPRequest rq(method, uri, Poco::Net::HTTPMessage::HTTP_1_1);
  rq.setContentType(content_type);
  rq.setContentLength(static_cast<std::streamsize>(body.size()));
  if (!idempotency_key.empty()) rq.set("Idempotency-Key", idempotency_key);
  Answer a;
  try {
    session.sendRequest(rq) << body;
    Poco::Net::HTTPResponse rs;
    auto& in = session.receiveResponse(rs);
    Poco::StreamCopier::copyToString(in, a.body);
    a.status = static_cast<int>(rs.getStatus());
    a.content_type = rs.getContentType();
  } catch (const Poco::TimeoutException&) {
    session.reset();  // a slow program (the fake's sleep) is not a finding; start over on a fresh connection
    a.status = -1;
  } catch (const Poco::Exception& e) {
    session.reset();
    a.status = -2;
    a.body = e.displayText();
  }
  return a;
}

std::string json_id(const std::string& body, const char* field) {
  Poco::JSON::Parser parser;
  auto object = parser.parse(body).extract<Poco::JSON::Object::Ptr>();
  return object->getValue<std::string>(field);
}

void ensure_sandbox() {
  if (!g_daemon->sandbox_id.empty() && send("GET", "/v1/sandboxes/" + g_daemon->sandbox_id, "").status == 200) return;
  auto a = send("POST", "/v1/sandboxes", "{}");
  if (a.status != 201 && a.status != 200) {
    std::fprintf(stderr, "fuzz_http: cannot create a sandbox: %d %s\n", a.status, a.body.c_str());
    std::abort();
  }
  g_daemon->sandbox_id = json_id(a.body, "id");
}

void ensure_workspace() {
  if (!g_daemon->workspace_id.empty() && send("GET", "/v1/workspaces/" + g_daemon->workspace_id, "").status == 200) {
    return;
  }
  auto a = send("POST", "/v1/workspaces", "{}");
  if (a.status == 201 || a.status == 200) g_daemon->workspace_id = json_id(a.body, "id");
}

void stop_daemon() {
  if (g_daemon != nullptr) berth::fuzz::halt(*g_daemon);
}

void start_daemon() {
  g_daemon = new Daemon;
  berth::fuzz::launch(*g_daemon, "fuzz-http");
  for (int i = 0; i < 200; ++i) {
    if (send("GET", "/health", "").status == 200) break;
    ::usleep(50'000);
  }
  if (send("GET", "/health", "").status != 200) {
    std::fprintf(stderr, "fuzz_http: berthd did not come up (see %s)\n", (g_daemon->dir / "berthd.log").c_str());
    std::abort();
  }
  std::atexit(stop_daemon);
  ensure_sandbox();
  ensure_workspace();
}

std::string next_line(std::string_view& rest) {
  auto nl = rest.find('\n');
  std::string line(rest.substr(0, nl));
  rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
  return line;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  start_daemon();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const auto& routes = berth::api::routes();
  const auto& route = routes[data[0] % routes.size()];
  const std::uint8_t flags = data[1];
  std::string_view rest(reinterpret_cast<const char*>(data + 2), size - 2);

  std::string param;
  if ((flags & 1) != 0) {
    param = percent_encode(next_line(rest), "");
  } else {
    param = route.pattern.find("/workspaces/") != std::string::npos ? g_daemon->workspace_id : g_daemon->sandbox_id;
  }
  const std::string key = (flags & 4) != 0 ? next_line(rest) : std::string();
  const std::string query = percent_encode(next_line(rest), "=&%+;,/:");
  const std::string body(rest);

  std::string uri = route.pattern;
  for (auto at = uri.find("{}"); at != std::string::npos; at = uri.find("{}", at + param.size())) {
    uri.replace(at, 2, param);
  }
  if (!query.empty()) uri += "?" + query;
  const std::string content_type = (flags & 2) != 0 ? "multipart/form-data; boundary=fuzzb" : "application/json";
  auto a = send(route.method, uri, body, content_type, percent_encode(key, " "));

  if (a.status == 500) {
    std::fprintf(stderr, "fuzz_http: %s %s answered 500: %s\n", route.method.c_str(), uri.c_str(), a.body.c_str());
    std::abort();
  }
  if (a.status > 0 && a.content_type.rfind("application/json", 0) == 0 && !a.body.empty()) {
    try {
      Poco::JSON::Parser parser;
      (void)parser.parse(a.body);
    } catch (const Poco::Exception& e) {
      std::fprintf(stderr, "fuzz_http: %s %s answered JSON that does not parse (%s)\n", route.method.c_str(),
                   uri.c_str(), e.displayText().c_str());
      std::abort();
    }
  }
  if (route.method == "DELETE" || route.pattern.find("/stop") != std::string::npos) {
    ensure_sandbox();  // the next input should find a live sandbox again
    ensure_workspace();
  }
  if (send("GET", "/health", "").status != 200) {
    std::fprintf(stderr, "fuzz_http: /health failed after %s %s\n", route.method.c_str(), uri.c_str());
    std::abort();
  }
  return 0;
}
