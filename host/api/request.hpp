// One HTTP exchange as the route handlers see it: path parameters, query, the caller's owner, JSON helpers.
#pragma once

#include <Poco/JSON/Object.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "api/http_api.hpp"

namespace berth::api {

/**
 * One request as a route handler sees it. Lives on the handling thread's stack for one request; not shared between
 * threads. Handlers throw core::Error for every failure; the caller maps it to the error envelope.
 */
class Exchange {
 public:
  Exchange(ApiContext& ctx, Poco::Net::HTTPServerRequest& rq, Poco::Net::HTTPServerResponse& rs,
           std::string request_id);

  ApiContext& ctx;
  Poco::Net::HTTPServerRequest& request;
  Poco::Net::HTTPServerResponse& response;
  const std::string request_id;
  std::string owner;                   // set after authentication
  bool admin = false;                  // set after authentication: the caller holds an admin key (or single-user mode)
  std::vector<std::string> params;     // values of {} segments in the matched route, in order
  std::size_t route_index = SIZE_MAX;  // the matched route's index in routes(); SIZE_MAX = none (metrics label)

  const std::string& path() const { return path_; }
  /** False when the request target could not be parsed (e.g. bad percent-encoding): dispatch answers 400. */
  bool uri_valid() const { return uri_valid_; }
  /** The request target as received (path and query). */
  const std::string& uri() const { return request.getURI(); }
  /** A query parameter, or nullopt. */
  std::optional<std::string> query(const std::string& name) const;
  /** Integer query parameter within [min, max]; validation_error otherwise. */
  int query_int(const std::string& name, int fallback, int min, int max) const;

  /** The request body, read once, at most max_body bytes (payload_too_large beyond). */
  const std::string& body();
  /** The body parsed as a JSON object (invalid_request when it is not one). An empty body is {}. */
  Poco::JSON::Object::Ptr json_body();
  /** Supplies the body already read by another exchange of the same request (body() then never reads the stream). */
  void preset_body(std::string body) { body_ = std::move(body); }

  /** Sends a JSON body; every send goes through send_raw_json's UTF-8 guard. */
  void send_json(int status, const Poco::JSON::Object& body);
  void send_json(int status, const Poco::Dynamic::Var& body);
  /**
   * Sends `body` as application/json. Final guard: a body that is not valid UTF-8 (a bug upstream) is repaired with
   * U+FFFD and logged as http.invalid_utf8, so no client ever receives invalid JSON text.
   */
  void send_raw_json(int status, const std::string& body);
  void send_empty(int status);
  bool sent() const { return response.sent(); }

 private:
  std::string path_;
  bool uri_valid_ = true;
  std::map<std::string, std::string> query_;
  std::optional<std::string> body_;
};

// ---- typed field access on JSON bodies; every violation is a validation_error naming the field ----

std::optional<std::string> opt_string(const Poco::JSON::Object::Ptr& o, const std::string& field);
std::string req_string(const Poco::JSON::Object::Ptr& o, const std::string& field);
std::optional<std::int64_t> opt_int(const Poco::JSON::Object::Ptr& o, const std::string& field);
std::map<std::string, std::string> opt_string_map(const Poco::JSON::Object::Ptr& o, const std::string& field);
/** Rejects fields not in `allowed` (typos must not be silently ignored). */
void only_fields(const Poco::JSON::Object::Ptr& o, std::initializer_list<const char*> allowed);

/** True if `s` is well-formed UTF-8 (JSON strings must be). utfcpp does the checking. */
bool is_utf8(std::string_view s);
/** `s` with every invalid UTF-8 sequence replaced by U+FFFD (for process output and names, which may be any bytes). */
std::string to_utf8_lossy(std::string_view s);

/** Standard base64 (RFC 4648, with padding, no line breaks) of the raw bytes. */
std::string base64_encode(std::string_view bytes);
/**
 * Decodes standard base64; only the canonical spelling is accepted (padding required, no whitespace). Throws
 * core::Error validation_error (details field=`field`, reason=invalid_base64) otherwise.
 */
std::string base64_decode(const std::string& text, const std::string& field);

/**
 * Sets `o[key]` to `raw` as lossy UTF-8 and, only when `raw` is not valid UTF-8, `o[key + "_b64"]` to its base64: the
 * lossless form of a name or path that came from inside a sandbox.
 */
void set_name(Poco::JSON::Object& o, const std::string& key, const std::string& raw);

/**
 * A path given either as query parameter `path` (UTF-8 text) or `path_b64` (base64 of the raw bytes): exactly one of
 * the two. nullopt when neither is present; validation_error when both are, or when path_b64 is not base64.
 */
std::optional<std::string> query_path(const Exchange& ex);
/** The same rule for JSON body fields `path` / `path_b64`. */
std::optional<std::string> body_path(const Poco::JSON::Object::Ptr& o);

/**
 * A Content-Disposition value for a download of the file named `raw` (the last path segment, any bytes):
 * `attachment; filename="<ASCII fallback>"; filename*=UTF-8''<percent-encoded lossy UTF-8>` (RFC 6266 / RFC 8187).
 */
std::string content_disposition(const std::string& raw);

/** RFC 3339 UTC with milliseconds, e.g. 2026-11-23T14:07:00.123Z. */
std::string rfc3339(std::chrono::system_clock::time_point t);

/** A route handler: translates one exchange into core calls and sends the response (or throws core::Error). */
using RouteHandler = std::function<void(Exchange&)>;

/** One row of the route table. */
struct Route {
  std::string method;
  std::string pattern;  // e.g. "/v1/sandboxes/{}/python/exec"
  RouteHandler handler;
  bool heavy = false;    // passes through ApiContext::admission (work_slots / work_queue)
  bool public_ = false;  // no authentication
  /** How the route treats an Idempotency-Key header (see docs/api.md "Idempotency-Key"). */
  enum class Idempotency { replay, refuse, not_applicable } idempotency = Idempotency::not_applicable;
  bool admin = false;  // needs the admin role (an [auth.admin_keys] key); anyone else gets 404 as for no route
};

/** Every route of API v1, defined in routes.cpp. */
const std::vector<Route>& routes();

}  // namespace berth::api
