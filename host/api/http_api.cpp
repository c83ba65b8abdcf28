#include "api/http_api.hpp"

#include <Poco/Base64Decoder.h>
#include <Poco/Base64Encoder.h>
#include <Poco/DateTimeFormatter.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/SHA1Engine.h>
#include <Poco/StreamCopier.h>
#include <Poco/String.h>
#include <Poco/URI.h>
#include <utf8.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "api/openapi.hpp"
#include "api/request.hpp"
#include "core/log.hpp"
#include "core/store.hpp"

namespace berth::api {

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
    case ErrorCode::disk_quota_exceeded:
    case ErrorCode::sandbox_expired:
    case ErrorCode::sandbox_ttl_infinite:
      return 409;
    case ErrorCode::payload_too_large:
      return 413;
    case ErrorCode::quota_exceeded:
    case ErrorCode::rate_limited:
      return 429;
    case ErrorCode::session_not_ready:
    case ErrorCode::driver_unavailable:
    case ErrorCode::server_busy:
    case ErrorCode::shutting_down:
    case ErrorCode::store_unavailable:
      return 503;
    case ErrorCode::internal:
      return 500;
  }
  return 500;
}

namespace {

/** The error envelope. Message and details may quote names from inside a sandbox: they are made lossy UTF-8. */
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
  if (status == 401) ex.response.set("WWW-Authenticate", "Bearer realm=\"berth\"");  // RFC 6750 section 3
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
    std::vector<char> buf(65536);
    std::uint64_t total = 0;
    auto& in = ex.request.stream();
    while (in && total < (64u << 20)) {
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      total += static_cast<std::uint64_t>(in.gcount());
    }
  } catch (const Poco::Exception&) {
  }
}

/** The non-empty '/'-separated pieces of `path`, as they are ("/v1/sandboxes/{}" -> {"v1", "sandboxes", "{}"}). */
std::vector<std::string> path_pieces(std::string_view path) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (start <= path.size()) {
    const auto slash = std::min(path.find('/', start), path.size());
    if (slash > start) parts.emplace_back(path.substr(start, slash - start));
    start = slash + 1;
  }
  return parts;
}

/** The pieces of each route's pattern, in routes() order, split once: splitting every pattern on every request was a
 *  fifth of berthd's instructions per request (bench/callgrind-guard). Thread-safe (built on first use, then
 *  read-only). */
const std::vector<std::vector<std::string>>& route_segments() {
  static const std::vector<std::vector<std::string>> all = [] {
    std::vector<std::vector<std::string>> out;
    for (const auto& route : routes())
      out.push_back(path_pieces(route.pattern));
    return out;
  }();
  return all;
}

/** Whether `segments` (the request path's, decoded) fit a route's pattern `parts`; its "{}" segments into `params`. */
bool match(const std::vector<std::string>& parts, const std::vector<std::string>& segments,
           std::vector<std::string>& params) {
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

std::string sha1_hex(const std::string& data) {
  Poco::SHA1Engine engine;
  engine.update(data);
  return Poco::DigestEngine::digestToHex(engine.digest());
}

// ---- in-memory request and response (handle_request, and capturing a response for Idempotency-Key) -------------

class InMemoryResponse final : public Poco::Net::HTTPServerResponse {
 public:
  void sendContinue() override {}
  std::ostream& send() override {
    sent_ = true;
    return body_;
  }
  void sendFile(const std::string&, const std::string&) override { throw Poco::NotImplementedException("sendFile"); }
  void sendBuffer(const void* buffer, std::size_t length) override {
    sent_ = true;
    body_.write(static_cast<const char*>(buffer), static_cast<std::streamsize>(length));
  }
  void redirect(const std::string& uri, HTTPStatus status) override {
    setStatus(status);
    set("Location", uri);
    sent_ = true;
  }
  void requireAuthentication(const std::string&) override { setStatus(HTTP_UNAUTHORIZED), sent_ = true; }
  bool sent() const override { return sent_; }
  std::string body() const { return body_.str(); }

 private:
  bool sent_ = false;
  std::ostringstream body_;
};

class InMemoryRequest final : public Poco::Net::HTTPServerRequest {
 public:
  InMemoryRequest(Poco::Net::HTTPServerResponse& response, const std::string& body)
      : response_(response), body_(body), params_(new Poco::Net::HTTPServerParams) {}
  std::istream& stream() override { return body_; }
  const Poco::Net::SocketAddress& clientAddress() const override { return address_; }
  const Poco::Net::SocketAddress& serverAddress() const override { return address_; }
  const Poco::Net::HTTPServerParams& serverParams() const override { return *params_; }
  Poco::Net::HTTPServerResponse& response() const override { return response_; }
  bool secure() const override { return false; }

 private:
  Poco::Net::HTTPServerResponse& response_;
  std::istringstream body_;
  Poco::Net::HTTPServerParams::Ptr params_;
  Poco::Net::SocketAddress address_;
};

// ---- one request, start to end ---------------------------------------------------------------------------------

/**
 * Sets ex.owner and ex.admin from the one `Authorization: Bearer <key>` header. With no keys configured at all
 * (single-user mode, allow_anonymous) every caller is the anonymous owner and may use admin routes. More than one
 * Authorization header is refused (a proxy and berthd could pick different ones).
 */
void authenticate(Exchange& ex) {
  const auto& s = ex.ctx.settings;
  std::size_t headers = 0;
  for (const auto& [name, value] : ex.request) {
    if (Poco::icompare(name, "Authorization") == 0) ++headers;
  }
  if (headers > 1) {
    throw Error(ErrorCode::invalid_request, "more than one Authorization header", {{"reason", "duplicate_header"}});
  }
  if (s.api_keys.empty() && s.admin_keys.empty()) {
    if (!s.allow_anonymous) throw Error(ErrorCode::unauthorized, "anonymous access is disabled");
    ex.owner = s.anonymous_owner;
    ex.admin = true;
    return;
  }
  std::string auth = ex.request.get("Authorization", "");
  const std::string prefix = "Bearer ";
  if (auth.size() <= prefix.size() || auth.compare(0, prefix.size(), prefix) != 0) {
    throw Error(ErrorCode::unauthorized, "missing 'Authorization: Bearer <key>' header");
  }
  std::string key = auth.substr(prefix.size());
  if (auto it = s.api_keys.find(key); it != s.api_keys.end()) {
    ex.owner = it->second;
    return;
  }
  if (auto it = s.admin_keys.find(key); it != s.admin_keys.end()) {
    ex.owner = it->second;
    ex.admin = true;
    return;
  }
  throw Error(ErrorCode::unauthorized, "unknown API key");
}

/** Takes an admission slot for a heavy route (the caller releases it), or throws server_busy / shutting_down. */
void admit(Exchange& ex) {
  switch (ex.ctx.admission.enter()) {
    case Admission::Refusal::none:
      return;
    case Admission::Refusal::queue_full:
      log::warn("http.busy", {{"request_id", ex.request_id}, {"reason", "queue_full"}});
      throw Error(ErrorCode::server_busy, "server is at its concurrent work limit and its queue is full; retry shortly",
                  {{"reason", "queue_full"}})
          .with_retry_after(std::chrono::seconds(1));
    case Admission::Refusal::queue_timeout:
      log::warn("http.busy", {{"request_id", ex.request_id}, {"reason", "queue_timeout"}});
      throw Error(ErrorCode::server_busy, "request waited too long for a work slot; retry shortly",
                  {{"reason", "queue_timeout"}})
          .with_retry_after(std::chrono::seconds(5));
    case Admission::Refusal::shutting_down:
      break;
  }
  throw Error(ErrorCode::shutting_down, "berthd is shutting down").with_retry_after(std::chrono::seconds(5));
}

/**
 * Runs the route, honouring an Idempotency-Key: on routes that replay, the first response per (owner, key) is stored
 * with a hash of method, target and body, and replayed to retries; a different request under the same key is 422.
 */
void run_route(Exchange& ex, const Route& route) {
  if (!ex.request.has("Idempotency-Key") || route.idempotency == Route::Idempotency::not_applicable) {
    route.handler(ex);
    if (!ex.sent()) ex.send_empty(204);
    return;
  }
  if (route.idempotency == Route::Idempotency::refuse) {
    throw Error(ErrorCode::invalid_request,
                "Idempotency-Key is not supported on " + ex.request.getMethod() + " " + route.pattern +
                    " (a streamed body cannot be replayed); send the request without it",
                {{"reason", "idempotency_unsupported"}});
  }
  std::string key = ex.request.get("Idempotency-Key", "");
  if (!core::IdempotencyRegistry::valid_key(key)) {
    throw Error(ErrorCode::invalid_request, "Idempotency-Key must match [A-Za-z0-9_-]{1,128}",
                {{"reason", "invalid_idempotency_key"}});
  }
  const std::string& body = ex.body();
  std::string hash = sha1_hex(ex.request.getMethod() + " " + ex.uri() + "\n" + body);
  auto stored = ex.ctx.idempotency.run(ex.owner, key, hash, [&]() -> core::StoredResponse {
    InMemoryResponse captured;
    Exchange inner(ex.ctx, ex.request, captured, ex.request_id);
    inner.owner = ex.owner;
    inner.params = ex.params;
    inner.preset_body(body);
    route.handler(inner);
    if (!inner.sent()) inner.send_empty(204);
    return {static_cast<int>(captured.getStatus()), captured.body()};
  });
  ex.response.set("Idempotent-Replayed", stored.replayed ? "true" : "false");
  if (stored.replayed && ex.ctx.metrics) ex.ctx.metrics->idempotency_replayed();
  if (stored.body.empty()) {
    ex.send_empty(stored.status);
  } else {
    ex.send_raw_json(stored.status, stored.body);
  }
}

void dispatch(Exchange& ex) {
  if (!ex.uri_valid()) {
    throw Error(ErrorCode::invalid_request, "malformed request target (bad percent-encoding?): " + ex.uri());
  }
  // Segments are split on the raw target's '/' and decoded one by one (RFC 3986 3.3): an encoded "%2F" inside an
  // id stays part of that segment, so `/v1/sandboxes/x%2Fhistory` is one unknown id, never the history route.
  std::vector<std::string> segments;
  {
    std::string raw = ex.request.getURI();
    raw = raw.substr(0, raw.find_first_of("?#"));
    if (raw.empty() || raw.front() != '/') raw = ex.path();  // absolute-form targets: Poco's parsed path
    for (const auto& item : path_pieces(raw)) {
      std::string decoded;
      try {
        Poco::URI::decode(item, decoded);
      } catch (const Poco::Exception&) {
        throw Error(ErrorCode::invalid_request, "malformed request target (bad percent-encoding?): " + ex.uri());
      }
      segments.push_back(std::move(decoded));
    }
  }
  // Tenants learn nothing about admin routes: not their methods, not that they exist (the 404 of any unknown path).
  if (!segments.empty() && segments[0] == "v1" && segments.size() > 1 && segments[1] == "admin") {
    authenticate(ex);
    if (!ex.admin) {
      send_error(ex, 404, "not_found", "no route for " + ex.request.getMethod() + " " + ex.path());
      return;
    }
  }
  bool path_matched = false;
  const auto& table = routes();
  const auto& patterns = route_segments();
  for (std::size_t i = 0; i < table.size(); ++i) {
    const auto& route = table[i];
    std::vector<std::string> params;
    if (!match(patterns[i], segments, params)) continue;
    path_matched = true;
    if (route.method != ex.request.getMethod()) continue;
    ex.params = std::move(params);
    ex.route_index = i;
    if (!route.public_) authenticate(ex);
    // An admin method on a path tenants may read (POST/PUT/DELETE /v1/profiles): the 404 of an unknown route.
    if (route.admin && !ex.admin) {
      send_error(ex, 404, "not_found", "no route for " + ex.request.getMethod() + " " + ex.path());
      return;
    }
    std::optional<AdmissionSlot> slot;  // released when the route returns or throws
    if (route.heavy) {
      admit(ex);
      slot.emplace(ex.ctx.admission);
    }
    run_route(ex, route);
    return;
  }
  if (path_matched) {
    send_error(ex, 405, "invalid_request", "method " + ex.request.getMethod() + " not allowed on " + ex.path());
    return;
  }
  send_error(ex, 404, "not_found", "no route for " + ex.request.getMethod() + " " + ex.path());
}

/** Every request, from a socket or from handle_request, goes through here. Never throws. */
void serve(ApiContext& ctx, Poco::Net::HTTPServerRequest& rq, Poco::Net::HTTPServerResponse& rs) {
  ++ctx.handlers_running;
  struct Done {
    ApiContext& ctx;
    ~Done() { --ctx.handlers_running; }
  } done{ctx};
  auto t0 = std::chrono::steady_clock::now();
  std::string request_id = "req-" + std::to_string(ctx.next_request++);
  rs.set("X-Request-Id", request_id);
  Exchange ex(ctx, rq, rs, request_id);
  try {
    try {
      if (ctx.shutting_down.load()) {
        rs.setKeepAlive(false);
        throw Error(ErrorCode::shutting_down, "berthd is shutting down").with_retry_after(std::chrono::seconds(5));
      }
      dispatch(ex);
    } catch (const Error& e) {
      bool refused_unread = e.details().count("reason") && e.details().at("reason") == "idempotency_unsupported";
      if (e.code() == ErrorCode::payload_too_large || refused_unread) drain_body(ex);
      int status = http_status(e.code());
      // Same Idempotency-Key, different request: unprocessable as sent (not a state conflict of the resource).
      if (e.details().count("reason") && e.details().at("reason") == "idempotency_mismatch") status = 422;
      send_error(ex, status, core::to_string(e.code()), e.what(), e.details(), e.retry_after());
    } catch (const store::StoreUnavailable& e) {
      // The database is down or restarting: retryable, and nothing was half-written (the server rolled back).
      log::warn("store.unavailable", {{"request_id", request_id}, {"error", e.what()}});
      send_error(ex, 503, core::to_string(ErrorCode::store_unavailable), "the database is unavailable; retry shortly",
                 {}, std::chrono::seconds(2));
    } catch (const Poco::Exception& e) {
      // Client-side stream problems (reset connection, bad chunking) are not server errors.
      log::warn("http.exception", {{"request_id", request_id}, {"error", e.displayText()}});
      send_error(ex, 400, "invalid_request", "could not read the request: " + e.displayText());
    } catch (const std::exception& e) {
      log::error("http.internal_error", {{"request_id", request_id}, {"error", e.what()}});
      send_error(ex, 500, "internal", "internal error (request " + request_id + ")");
    }
  } catch (const std::exception& e) {
    // Sending the error itself failed (the client is gone): nothing more can be said.
    log::warn("http.send_failed", {{"request_id", request_id}, {"error", e.what()}});
  } catch (...) {
    log::error("http.internal_error", {{"request_id", request_id}, {"error", "unknown exception"}});
  }
  const auto elapsed = std::chrono::steady_clock::now() - t0;
  const int status = static_cast<int>(rs.getStatus());
  if (ctx.metrics) {
    ctx.metrics->request_done(ex.route_index, rq.getMethod(), status, std::chrono::duration<double>(elapsed).count());
  }
  log::info("http.access",
            {{"request_id", request_id},
             {"method", rq.getMethod()},
             {"path", ex.path()},
             {"status", std::to_string(status)},
             {"owner", ex.owner},
             {"ms", std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count())}});
}

}  // namespace

InProcessResponse handle_request(ApiContext& ctx, const std::string& method, const std::string& uri,
                                 const std::vector<std::pair<std::string, std::string>>& headers,
                                 const std::string& body) {
  InMemoryResponse response;
  InMemoryRequest request(response, body);
  InProcessResponse out;
  try {
    request.setMethod(method);
    request.setURI(uri);
    for (const auto& [k, v] : headers)
      request.add(k, v);
    if (!request.has("Content-Length") && !request.getChunkedTransferEncoding()) {
      request.setContentLength64(static_cast<Poco::Int64>(body.size()));
    }
  } catch (const Poco::Exception& e) {
    out.status = 400;  // a header Poco itself refuses (e.g. a malformed Content-Length) never reaches routing
    out.body = e.displayText();
    return out;
  }
  serve(ctx, request, response);
  out.status = static_cast<int>(response.getStatus());
  for (const auto& [k, v] : response)
    out.headers.emplace_back(k, v);
  out.body = response.body();
  return out;
}

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
    uri_valid_ = false;
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
  // The stream swallows a framing error (bad chunk size, early end) into badbit: never take a cut body as whole.
  if (in.bad() ||
      (request.hasContentLength() && data.size() < static_cast<std::uint64_t>(request.getContentLength64()))) {
    throw Error(ErrorCode::invalid_request,
                "could not read the request body (malformed chunked framing or an early end)",
                {{"reason", "malformed_body"}});
  }
  body_ = std::move(data);
  return *body_;
}

namespace {

/**
 * Poco's JSON parser cuts an object key at an escaped NUL ("a\u0000b" becomes "a"): a stored name would silently
 * differ from the one sent. Scans well-formed JSON `text` for such a key and returns the top-level field that holds
 * it (the key itself at the top level), or nothing.
 */
std::optional<std::string> key_with_nul(std::string_view text) {
  std::vector<bool> in_object;  // the open containers: true = object
  std::string top_key;
  std::size_t i = 0;
  while (i < text.size()) {
    char c = text[i];
    if (c == '{' || c == '[') {
      in_object.push_back(c == '{');
    } else if (c == '}' || c == ']') {
      if (!in_object.empty()) in_object.pop_back();
    } else if (c == '"') {
      std::string raw;
      bool nul = false;
      for (++i; i < text.size() && text[i] != '"'; ++i) {
        if (text[i] == '\\' && i + 1 < text.size()) {
          if (text.compare(i, 6, "\\u0000") == 0) nul = true;
          raw += text[i++];
        }
        raw += text[i];
      }
      std::size_t j = i + 1;
      while (j < text.size() && (text[j] == ' ' || text[j] == '\t' || text[j] == '\r' || text[j] == '\n'))
        ++j;
      bool is_key = j < text.size() && text[j] == ':' && !in_object.empty() && in_object.back();
      if (is_key && in_object.size() == 1) top_key = raw;
      if (is_key && nul) return top_key;
    }
    ++i;
  }
  return std::nullopt;
}

}  // namespace

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
  if (text.find("\\u0000") == std::string::npos) return parsed.extract<Poco::JSON::Object::Ptr>();
  if (auto field = key_with_nul(text)) {
    throw Error(ErrorCode::validation_error, "JSON object keys must not contain NUL", {{"field", *field}});
  }
  return parsed.extract<Poco::JSON::Object::Ptr>();
}

void Exchange::send_raw_json(int status, const std::string& text) {
  const std::string* out = &text;
  std::string repaired;
  if (!is_utf8(text)) {
    // A bug upstream let raw bytes into a body labelled UTF-8: repair it rather than send invalid JSON text.
    log::warn("http.invalid_utf8",
              {{"request_id", request_id}, {"path", path_}, {"bytes", std::to_string(text.size())}});
    repaired = to_utf8_lossy(text);
    out = &repaired;
  }
  response.setStatusAndReason(static_cast<Poco::Net::HTTPResponse::HTTPStatus>(status));
  response.setContentType("application/json; charset=utf-8");
  response.setContentLength(static_cast<std::streamsize>(out->size()));
  response.send() << *out;
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
  response.setStatusAndReason(static_cast<Poco::Net::HTTPResponse::HTTPStatus>(status));
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
  // JSON spells integers up to 2^64 - 1 (Poco holds those above 2^63 - 1 unsigned): out of range is the client's
  // mistake, not a conversion that throws.
  if (!v.isSigned() && v.convert<Poco::UInt64>() > static_cast<Poco::UInt64>(INT64_MAX)) {
    throw Error(ErrorCode::validation_error, "'" + field + "' is out of range", {{"field", field}});
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

bool is_utf8(std::string_view s) {
  return utf8::is_valid(s.begin(), s.end());
}

std::string to_utf8_lossy(std::string_view s) {
  if (is_utf8(s)) return std::string(s);
  std::string out;
  out.reserve(s.size() + 8);
  utf8::replace_invalid(s.begin(), s.end(), std::back_inserter(out), 0xFFFDu);
  return out;
}

std::string base64_encode(std::string_view bytes) {
  std::ostringstream os;
  Poco::Base64Encoder encoder(os);
  encoder.rdbuf()->setLineLength(0);
  encoder.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  encoder.close();
  return os.str();
}

std::string base64_decode(const std::string& text, const std::string& field) {
  std::string out;
  bool ok = true;
  try {
    std::istringstream in(text);
    Poco::Base64Decoder decoder(in);
    std::ostringstream os;
    os << decoder.rdbuf();
    out = os.str();
  } catch (const Poco::Exception&) {
    ok = false;
  }
  // Poco's decoder skips whitespace and tolerates some sloppiness: accept only the canonical spelling.
  if (!ok || base64_encode(out) != text) {
    throw Error(ErrorCode::validation_error, "'" + field + "' is not valid standard base64 (RFC 4648, padded)",
                {{"field", field}, {"reason", "invalid_base64"}});
  }
  return out;
}

void set_name(Poco::JSON::Object& o, const std::string& key, const std::string& raw) {
  o.set(key, to_utf8_lossy(raw));
  if (!is_utf8(raw)) o.set(key + "_b64", base64_encode(raw));
}

std::optional<std::string> query_path(const Exchange& ex) {
  auto text = ex.query("path");
  auto b64 = ex.query("path_b64");
  if (text && b64) {
    throw Error(ErrorCode::validation_error, "give either 'path' or 'path_b64', not both", {{"field", "path_b64"}});
  }
  if (b64) return base64_decode(*b64, "path_b64");
  return text;
}

std::optional<std::string> body_path(const Poco::JSON::Object::Ptr& o) {
  auto text = opt_string(o, "path");
  auto b64 = opt_string(o, "path_b64");
  if (text && b64) {
    throw Error(ErrorCode::validation_error, "give either 'path' or 'path_b64', not both", {{"field", "path_b64"}});
  }
  if (b64) return base64_decode(*b64, "path_b64");
  return text;
}

std::string content_disposition(const std::string& raw) {
  std::string fallback;
  for (char c : raw) {
    auto u = static_cast<unsigned char>(c);
    fallback += (u < 0x20 || u >= 0x7f || c == '"' || c == '\\') ? '_' : c;
  }
  // RFC 8187 attr-char is ALPHA / DIGIT / "!#$&+-.^_`|~"; Poco keeps only unreserved characters when told these
  // others are reserved, and encodes every byte >= 0x80 and every control byte.
  std::string encoded;
  Poco::URI::encode(to_utf8_lossy(raw), "!\"#$%&'()*+,/:;<=>?@[\\]^`{|}", encoded);
  return "attachment; filename=\"" + fallback + "\"; filename*=UTF-8''" + encoded;
}

std::string rfc3339(std::chrono::system_clock::time_point t) {
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
  return Poco::DateTimeFormatter::format(Poco::Timestamp(us), "%Y-%m-%dT%H:%M:%S.%iZ");
}

// ---- HttpApi --------------------------------------------------------------------------------------------------

std::vector<metrics::HttpRoute> metric_routes() {
  std::vector<metrics::HttpRoute> out;
  for (const auto& r : routes())
    out.push_back({r.method, r.pattern});
  return out;
}

HttpApi::HttpApi(ApiSettings settings, core::SandboxService& service, core::IdempotencyRegistry& idempotency,
                 std::shared_ptr<const core::Clock> clock, metrics::PrometheusMetrics* metrics)
    : ctx_(std::make_shared<ApiContext>(std::move(settings), service, idempotency, std::move(clock), metrics)) {}

HttpApi::~HttpApi() {
  if (server_) server_->close();
}

void HttpApi::start() {
  openapi_json();  // throws when a route of the table has no description: refuse to start rather than serve it
  // No SO_REUSEPORT (Poco's address constructor turns it on): a second berthd on a used port must fail to start,
  // not silently share the port.
  Poco::Net::ServerSocket socket;
  socket.bind(Poco::Net::SocketAddress(ctx_->settings.host, ctx_->settings.port), true, false);
  // The kernel caps the backlog at net.core.somaxconn (4096 by default). 256 overflowed when 1,000 clients connected
  // at once (capacity.docker): a dropped SYN costs its client a 1-second retransmit before berthd even sees it.
  socket.listen(4096);
  const auto& s = ctx_->settings;
  // Every request being handled holds one worker thread (a request queued for admission simply parks it); idle and
  // half-received connections hold none. Small stacks keep 1,024 threads cheap.
  auto ctx = ctx_;
  server_ = std::make_unique<HttpServer>(
      socket, s.threads, s.queue, s.thread_stack_bytes, s.connection,
      [ctx](Poco::Net::HTTPServerRequest& rq, Poco::Net::HTTPServerResponse& rs) { serve(*ctx, rq, rs); },
      [ctx] { return "req-" + std::to_string(ctx->next_request++); });
  server_->start();
  log::info("http.listening",
            {{"threads", std::to_string(s.threads)},
             {"work_slots", std::to_string(s.admission.slots)},
             {"work_queue", std::to_string(s.admission.queue)},
             {"work_queue_timeout_ms", std::to_string(s.admission.queue_timeout.count())},
             {"header_timeout_ms", std::to_string(s.connection.header_timeout.count())},
             {"min_transfer_rate", std::to_string(s.connection.min_transfer_rate)},
             {"max_connections_per_client", std::to_string(s.connection.max_connections_per_client)}});
}

std::uint16_t HttpApi::port() const {
  return server_ ? server_->port() : 0;
}

void HttpApi::begin_shutdown() {
  ctx_->shutting_down.store(true);
  ctx_->shutdown_hooks.run_all();
  ctx_->admission.shut_down();
  if (server_)
    server_->stop_accepting();  // stop accepting; open connections keep being served (with 503 shutting_down)
}

int HttpApi::wait_for_handlers(std::chrono::milliseconds grace) {
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (ctx_->handlers_running.load() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return ctx_->handlers_running.load();
}

void HttpApi::close() {
  if (server_) server_->close();
}

}  // namespace berth::api
