// The OpenAPI 3.1 description of API v1 (served as GET /openapi.json), produced from the one route table
// (routes() in routes.cpp) and a sibling table of per-route descriptions keyed by the same route ids. What the route
// table already knows (path parameters, public or bearer, admin, heavy, Idempotency-Key treatment) is never written
// twice: it is turned into parameters, security, headers and error responses here. docs/api.md is the human
// description of the same API; tests/api/openapi_conformance.py keeps the two, errors.hpp and the wire in agreement.
#pragma once

#include <string>
#include <vector>

#include "api/request.hpp"

namespace berth::api {

/** A route's id: "<METHOD> <pattern>", e.g. "POST /v1/sandboxes/{}/python/exec". Unique in routes(). */
std::string route_id(const Route& route);

/**
 * The hand-written part of one route's OpenAPI Operation Object. `operation` is JSON text of an Operation Object
 * (OpenAPI 3.1 section 4.8.10) with three shorthands, expanded by openapi_json():
 *  - a `parameters` entry that is a string names a components.parameters entry;
 *  - `"body": "<Schema>"` / `"optionalBody": "<Schema>"` is an application/json requestBody of that component schema;
 *  - a `responses` value that is a string is an error response: the shared components.responses.Error<status> (the
 *    error envelope with the codes that status carries) with the string as its description; an object with
 *    `"schema": "<Schema>"` is an application/json body of that component schema.
 */
struct RouteDoc {
  std::string id;                        // route_id() of the route it describes
  std::vector<std::string> path_params;  // OpenAPI names of the pattern's {} segments, in order
  std::string operation;                 // JSON text, see above
};

/** One RouteDoc per route of routes(), in any order. Static, immutable: safe from any thread. */
const std::vector<RouteDoc>& route_docs();

/**
 * What keeps the two tables from agreeing: "undocumented: <route id>" for a route without a RouteDoc, "stale: <id>"
 * for a RouteDoc without a route, "duplicate: <id>" for an id given twice, "params: <id>" when path_params does not
 * name every {} segment. Empty when every route is described. Thread-safe.
 */
std::vector<std::string> route_doc_problems();
/** The same check for any pair of tables (tests hand it a route table with a route too many). */
std::vector<std::string> route_doc_problems(const std::vector<Route>& routes, const std::vector<RouteDoc>& docs);

/**
 * The whole OpenAPI 3.1 document as compact JSON text, built on first use from routes(), route_docs(), the
 * component schemas in openapi.cpp and every core::ErrorCode (with its HTTP status from http_status()). Thread-safe
 * (a function-local static). Throws std::logic_error naming the problems when route_doc_problems() is not empty or a
 * RouteDoc is not valid JSON; HttpApi::start() calls it, so berthd refuses to start with an undescribed route.
 */
const std::string& openapi_json();

}  // namespace berth::api
