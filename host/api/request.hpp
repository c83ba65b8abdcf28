// One HTTP exchange as the route handlers see it: path parameters, query, the caller's owner, JSON helpers.
#pragma once

#include <Poco/JSON/Object.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "api/http_api.hpp"

namespace berth::api {

class Exchange {
 public:
  Exchange(ApiContext& ctx, Poco::Net::HTTPServerRequest& rq, Poco::Net::HTTPServerResponse& rs,
           std::string request_id);

  ApiContext& ctx;
  Poco::Net::HTTPServerRequest& request;
  Poco::Net::HTTPServerResponse& response;
  const std::string request_id;
  std::string owner;                // set after authentication
  std::vector<std::string> params;  // values of {} segments in the matched route, in order

  const std::string& path() const { return path_; }
  /** A query parameter, or nullopt. */
  std::optional<std::string> query(const std::string& name) const;
  /** Integer query parameter within [min, max]; validation_error otherwise. */
  int query_int(const std::string& name, int fallback, int min, int max) const;

  /** The request body, read once, at most max_body bytes (payload_too_large beyond). */
  const std::string& body();
  /** The body parsed as a JSON object (invalid_request when it is not one). An empty body is {}. */
  Poco::JSON::Object::Ptr json_body();

  void send_json(int status, const Poco::JSON::Object& body);
  void send_json(int status, const Poco::Dynamic::Var& body);
  void send_raw_json(int status, const std::string& body);
  void send_empty(int status);
  bool sent() const { return response.sent(); }

 private:
  std::string path_;
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

/** True if `s` is well-formed UTF-8 (JSON strings must be). */
bool is_utf8(std::string_view s);
/** `s` with every invalid UTF-8 byte replaced by U+FFFD (for process output, which may be any bytes). */
std::string to_utf8_lossy(std::string_view s);

/** RFC 3339 UTC with milliseconds, e.g. 2026-11-23T14:07:00.123Z. */
std::string rfc3339(std::chrono::system_clock::time_point t);

using RouteHandler = std::function<void(Exchange&)>;

struct Route {
  std::string method;
  std::string pattern;  // e.g. "/v1/sandboxes/{}/python/exec"
  RouteHandler handler;
  bool heavy = false;    // counts against ApiContext::heavy_limit
  bool public_ = false;  // no authentication
};

/** Every route of API v1, defined in routes.cpp. */
const std::vector<Route>& routes();

}  // namespace berth::api
