#include "api/http_api.hpp"

#include <Poco/DateTimeFormatter.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServer.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/StreamCopier.h>
#include <Poco/URI.h>

#include <cmath>
#include <sstream>
#include <thread>

#include "api/request.hpp"
#include "core/log.hpp"

namespace berth::api {
namespace {

using core::Error;
using core::ErrorCode;

int http_status(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid_request:
    case ErrorCode::validation_error:
    case ErrorCode::capability_not_supported:
      return 400;
    case ErrorCode::unauthorized:
      return 401;
    case ErrorCode::not_found:
      return 404;
    case ErrorCode::conflict:
    case ErrorCode::sandbox_expired:
    case ErrorCode::sandbox_ttl_infinite:
      return 409;
    case ErrorCode::payload_too_large:
      return 413;
    case ErrorCode::session_not_ready:
    case ErrorCode::driver_unavailable:
      return 503;
    case ErrorCode::internal:
      return 500;
  }
  return 500;
}

void send_error(Exchange& ex, int status, std::string_view code, const std::string& message,
                const std::map<std::string, std::string>& details = {},
                std::optional<std::chrono::seconds> retry_after = std::nullopt) {
  if (ex.sent()) return;  // a streamed response already started: nothing more can be said
  Poco::JSON::Object err;
  err.set("code", std::string(code));
  // Messages and details echo client input (paths, field names) that may be any bytes: the body stays UTF-8.
  err.set("message", to_utf8_lossy(message));
  err.set("request_id", ex.request_id);
  Poco::JSON::Object d;
  for (const auto& [k, v] : details)
    d.set(to_utf8_lossy(k), to_utf8_lossy(v));
  err.set("details", d);
  Poco::JSON::Object body;
  body.set("error", err);
  if (retry_after) ex.response.set("Retry-After", std::to_string(retry_after->count()));
  ex.send_json(status, body);
}

/**
 * Reads and drops what is left of a refused body (up to 64 MiB), so that a client that sends its whole body before
 * reading gets the 413 instead of a connection reset.
 */
void drain_body(Exchange& ex) {
  if (ex.sent()) return;
  ex.response.setKeepAlive(false);
  try {
    char buf[65536];
    std::uint64_t total = 0;
    auto& in = ex.request.stream();
    while (in && total < (64u << 20)) {
      in.read(buf, sizeof buf);
      total += static_cast<std::uint64_t>(in.gcount());
    }
  } catch (const Poco::Exception&) {
  }
}

bool match(const std::string& pattern, const std::vector<std::string>& segments, std::vector<std::string>& params) {
  std::vector<std::string> parts;
  std::stringstream ss(pattern);
  std::string item;
  while (std::getline(ss, item, '/')) {
    if (!item.empty()) parts.push_back(item);
  }
  if (parts.size() != segments.size()) return false;
  std::vector<std::string> found;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (parts[i] == "{}") {
      found.push_back(segments[i]);
    } else if (parts[i] != segments[i]) {
      return false;
    }
  }
  params = std::move(found);
  return true;
}

class Handler final : public Poco::Net::HTTPRequestHandler {
 public:
  explicit Handler(std::shared_ptr<ApiContext> ctx) : ctx_(std::move(ctx)) {}

  void handleRequest(Poco::Net::HTTPServerRequest& rq, Poco::Net::HTTPServerResponse& rs) override {
    auto t0 = std::chrono::steady_clock::now();
    std::string request_id = "req-" + std::to_string(ctx_->next_request++);
    rs.set("X-Request-Id", request_id);
    Exchange ex(*ctx_, rq, rs, request_id);
    bool heavy_counted = false;
    try {
      dispatch(ex, heavy_counted);
    } catch (const Error& e) {
      if (e.code() == ErrorCode::payload_too_large) drain_body(ex);
      send_error(ex, http_status(e.code()), core::to_string(e.code()), e.what(), e.details(), e.retry_after());
    } catch (const Poco::Exception& e) {
      // Client-side stream problems (reset connection, bad chunking) are not server errors.
      log::warn("http.exception", {{"request_id", request_id}, {"error", e.displayText()}});
      send_error(ex, 400, "invalid_request", "could not read the request: " + e.displayText());
    } catch (const std::exception& e) {
      log::error("http.internal_error", {{"request_id", request_id}, {"error", e.what()}});
      send_error(ex, 500, "internal", "internal error (request " + request_id + ")");
    }
    if (heavy_counted) --ctx_->heavy_in_flight;
    log::info(
        "http.access",
        {{"request_id", request_id},
         {"method", rq.getMethod()},
         {"path", ex.path()},
         {"status", std::to_string(static_cast<int>(rs.getStatus()))},
         {"owner", ex.owner},
         {"ms",
          std::to_string(
              std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count())}});
  }

 private:
  void authenticate(Exchange& ex) {
    const auto& s = ctx_->settings;
    if (s.api_keys.empty()) {
      if (!s.allow_anonymous) throw Error(ErrorCode::unauthorized, "anonymous access is disabled");
      ex.owner = s.anonymous_owner;
      return;
    }
    std::string auth = ex.request.get("Authorization", "");
    const std::string prefix = "Bearer ";
    if (auth.size() <= prefix.size() || auth.compare(0, prefix.size(), prefix) != 0) {
      throw Error(ErrorCode::unauthorized, "missing 'Authorization: Bearer <key>' header");
    }
    auto it = s.api_keys.find(auth.substr(prefix.size()));
    if (it == s.api_keys.end()) throw Error(ErrorCode::unauthorized, "unknown API key");
    ex.owner = it->second;
  }

  void dispatch(Exchange& ex, bool& heavy_counted) {
    std::vector<std::string> segments;
    {
      std::stringstream ss(ex.path());
      std::string item;
      while (std::getline(ss, item, '/')) {
        if (!item.empty()) segments.push_back(item);
      }
    }
    bool path_matched = false;
    for (const auto& route : routes()) {
      std::vector<std::string> params;
      if (!match(route.pattern, segments, params)) continue;
      path_matched = true;
      if (route.method != ex.request.getMethod()) continue;
      ex.params = std::move(params);
      if (!route.public_) authenticate(ex);
      if (route.heavy) {
        heavy_counted = true;
        if (++ctx_->heavy_in_flight > ctx_->heavy_limit) {
          throw Error(ErrorCode::session_not_ready, "server is at its concurrent work limit; retry shortly",
                      {{"reason", "server_busy"}})
              .with_retry_after(std::chrono::seconds(1));
        }
      }
      route.handler(ex);
      if (!ex.sent()) ex.send_empty(204);
      return;
    }
    if (path_matched) {
      send_error(ex, 405, "invalid_request", "method " + ex.request.getMethod() + " not allowed on " + ex.path());
      return;
    }
    send_error(ex, 404, "not_found", "no route for " + ex.request.getMethod() + " " + ex.path());
  }

  std::shared_ptr<ApiContext> ctx_;
};

class Factory final : public Poco::Net::HTTPRequestHandlerFactory {
 public:
  explicit Factory(std::shared_ptr<ApiContext> ctx) : ctx_(std::move(ctx)) {}
  Poco::Net::HTTPRequestHandler* createRequestHandler(const Poco::Net::HTTPServerRequest&) override {
    return new Handler(ctx_);
  }

 private:
  std::shared_ptr<ApiContext> ctx_;
};

}  // namespace

// ---- Exchange -------------------------------------------------------------------------------------------------

Exchange::Exchange(ApiContext& c, Poco::Net::HTTPServerRequest& rq, Poco::Net::HTTPServerResponse& rs, std::string id)
    : ctx(c), request(rq), response(rs), request_id(std::move(id)) {
  try {
    Poco::URI uri(rq.getURI());
    path_ = uri.getPath();
    for (const auto& [k, v] : uri.getQueryParameters())
      query_[k] = v;
  } catch (const Poco::Exception&) {
    path_ = rq.getURI();
  }
}

std::optional<std::string> Exchange::query(const std::string& name) const {
  auto it = query_.find(name);
  if (it == query_.end()) return std::nullopt;
  return it->second;
}

int Exchange::query_int(const std::string& name, int fallback, int min, int max) const {
  auto v = query(name);
  if (!v) return fallback;
  try {
    std::size_t used = 0;
    long long n = std::stoll(*v, &used);
    if (used == v->size() && n >= min && n <= max) return static_cast<int>(n);
  } catch (const std::exception&) {
  }
  throw Error(ErrorCode::validation_error,
              "query parameter '" + name + "' must be an integer between " + std::to_string(min) + " and " +
                  std::to_string(max),
              {{"field", name}});
}

const std::string& Exchange::body() {
  if (body_) return *body_;
  auto limit = ctx.settings.max_body;
  if (request.hasContentLength() && static_cast<std::uint64_t>(request.getContentLength64()) > limit) {
    throw Error(ErrorCode::payload_too_large, "request body is larger than " + std::to_string(limit) + " bytes");
  }
  std::string data;
  char buf[8192];
  auto& in = request.stream();
  while (in) {
    in.read(buf, sizeof buf);
    data.append(buf, static_cast<std::size_t>(in.gcount()));
    if (data.size() > limit) {
      throw Error(ErrorCode::payload_too_large, "request body is larger than " + std::to_string(limit) + " bytes");
    }
  }
  body_ = std::move(data);
  return *body_;
}

Poco::JSON::Object::Ptr Exchange::json_body() {
  const auto& text = body();
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) return new Poco::JSON::Object;
  Poco::Dynamic::Var parsed;
  try {
    Poco::JSON::Parser parser;
    parsed = parser.parse(text);
  } catch (const Poco::Exception& e) {
    throw Error(ErrorCode::invalid_request, "malformed JSON body: " + e.message());
  }
  if (parsed.type() != typeid(Poco::JSON::Object::Ptr)) {
    throw Error(ErrorCode::invalid_request, "the JSON body must be an object");
  }
  return parsed.extract<Poco::JSON::Object::Ptr>();
}

void Exchange::send_raw_json(int status, const std::string& text) {
  response.setStatus(static_cast<Poco::Net::HTTPResponse::HTTPStatus>(status));
  response.setContentType("application/json; charset=utf-8");
  response.setContentLength(static_cast<std::streamsize>(text.size()));
  response.send() << text;
}

void Exchange::send_json(int status, const Poco::JSON::Object& body) {
  std::ostringstream os;
  body.stringify(os);
  send_raw_json(status, os.str());
}

void Exchange::send_json(int status, const Poco::Dynamic::Var& body) {
  std::ostringstream os;
  Poco::JSON::Stringifier::stringify(body, os);
  send_raw_json(status, os.str());
}

void Exchange::send_empty(int status) {
  response.setStatus(static_cast<Poco::Net::HTTPResponse::HTTPStatus>(status));
  response.setContentLength(0);
  response.send();
}

// ---- JSON field helpers ---------------------------------------------------------------------------------------

std::optional<std::string> opt_string(const Poco::JSON::Object::Ptr& o, const std::string& field) {
  if (!o->has(field) || o->isNull(field)) return std::nullopt;
  auto v = o->get(field);
  if (!v.isString()) throw Error(ErrorCode::validation_error, "'" + field + "' must be a string", {{"field", field}});
  return v.extract<std::string>();
}

std::string req_string(const Poco::JSON::Object::Ptr& o, const std::string& field) {
  auto v = opt_string(o, field);
  if (!v) throw Error(ErrorCode::validation_error, "'" + field + "' is required", {{"field", field}});
  return *v;
}

std::optional<std::int64_t> opt_int(const Poco::JSON::Object::Ptr& o, const std::string& field) {
  if (!o->has(field) || o->isNull(field)) return std::nullopt;
  auto v = o->get(field);
  if (!v.isInteger() || v.type() == typeid(bool)) {
    // Accept integral floats such as 30.0, refuse 1.5 and strings.
    if (v.isNumeric() && v.type() != typeid(bool)) {
      double d = v.convert<double>();
      // In range before the cast: converting an out-of-range double (1e300, inf, nan) is undefined behaviour.
      if (d >= -0x1p63 && d < 0x1p63 && d == std::trunc(d)) return static_cast<std::int64_t>(d);
    }
    throw Error(ErrorCode::validation_error, "'" + field + "' must be an integer", {{"field", field}});
  }
  return v.convert<std::int64_t>();
}

std::map<std::string, std::string> opt_string_map(const Poco::JSON::Object::Ptr& o, const std::string& field) {
  std::map<std::string, std::string> out;
  if (!o->has(field) || o->isNull(field)) return out;
  auto obj = o->getObject(field);
  if (!obj) {
    throw Error(ErrorCode::validation_error, "'" + field + "' must be an object of strings", {{"field", field}});
  }
  for (const auto& [k, v] : *obj) {
    if (!v.isString()) {
      throw Error(ErrorCode::validation_error, "'" + field + "." + k + "' must be a string", {{"field", field}});
    }
    if (k.empty() || k.size() > 256) {
      throw Error(ErrorCode::validation_error, "'" + field + "' keys must be 1-256 bytes", {{"field", field}});
    }
    out[k] = v.extract<std::string>();
  }
  return out;
}

void only_fields(const Poco::JSON::Object::Ptr& o, std::initializer_list<const char*> allowed) {
  for (const auto& [k, v] : *o) {
    bool known = false;
    for (const char* a : allowed)
      known = known || k == a;
    if (!known) throw Error(ErrorCode::validation_error, "unknown field '" + k + "'", {{"field", k}});
  }
}

namespace {
/** Length of the valid UTF-8 sequence at s[i], or 0 if there is none. */
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
  auto c = static_cast<unsigned char>(s[i]);
  std::size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  std::uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1f) : n == 3 ? (c & 0x0f) : (c & 0x07);
  for (std::size_t k = 1; k < n; ++k) {
    auto cc = static_cast<unsigned char>(s[i + k]);
    if ((cc >> 6) != 0x2) return 0;
    cp = (cp << 6) | (cc & 0x3f);
  }
  static constexpr std::uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}
}  // namespace

bool is_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    auto n = utf8_sequence(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string to_utf8_lossy(std::string_view s) {
  if (is_utf8(s)) return std::string(s);
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    auto n = utf8_sequence(s, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

std::string rfc3339(std::chrono::system_clock::time_point t) {
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
  return Poco::DateTimeFormatter::format(Poco::Timestamp(us), "%Y-%m-%dT%H:%M:%S.%iZ");
}

// ---- HttpApi --------------------------------------------------------------------------------------------------

HttpApi::HttpApi(ApiSettings settings, core::SandboxService& service, core::IdempotencyRegistry& idempotency,
                 std::shared_ptr<const core::Clock> clock)
    : ctx_(std::make_shared<ApiContext>(std::move(settings), service, idempotency, std::move(clock))) {
  // Keep a few workers free for cheap requests (/health, GET) however many long execs run.
  ctx_->heavy_limit = std::max(1, ctx_->settings.threads - 4);
}

HttpApi::~HttpApi() {
  if (server_) server_->stopAll(true);
}

void HttpApi::start() {
  // No SO_REUSEPORT (Poco's address constructor turns it on): a second berthd on a used port must fail to start,
  // not silently share the port.
  Poco::Net::ServerSocket socket;
  socket.bind(Poco::Net::SocketAddress(ctx_->settings.host, ctx_->settings.port), true, false);
  socket.listen(256);
  auto* params = new Poco::Net::HTTPServerParams;
  params->setMaxThreads(ctx_->settings.threads);
  params->setMaxQueued(ctx_->settings.queue);
  params->setKeepAlive(true);
  params->setKeepAliveTimeout(Poco::Timespan(2, 0));
  params->setTimeout(Poco::Timespan(60, 0));
  server_ = std::make_unique<Poco::Net::HTTPServer>(new Factory(ctx_), socket, params);
  server_->start();
}

std::uint16_t HttpApi::port() const {
  return server_ ? server_->port() : 0;
}

void HttpApi::stop(std::chrono::seconds grace) {
  if (!server_) return;
  server_->stop();  // stop accepting
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (server_->currentConnections() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  server_->stopAll(true);
}

}  // namespace berth::api
