// GET /openapi.json in-process: the document is produced from the route table and its sibling table of
// descriptions, every route is described, and a route without a description is caught. What berthd answers on the
// wire is compared with the document by tests/api/openapi_conformance.py; its validity by a real OpenAPI validator
// (tests/api/openapi_validate.sh).
#include <catch2/catch.hpp>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <algorithm>
#include <cctype>
#include <set>
#include <string>

#include "api/openapi.hpp"
#include "core/errors.hpp"

using Poco::JSON::Object;

namespace {

Object::Ptr document() {
  return Poco::JSON::Parser().parse(berth::api::openapi_json()).extract<Object::Ptr>();
}

std::string lower(std::string s) {
  for (auto& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

TEST_CASE("openapi: every route of the table is described, once, and nothing else is", "[openapi]") {
  INFO("problems: " << berth::api::route_doc_problems().size());
  for (const auto& p : berth::api::route_doc_problems())
    UNSCOPED_INFO(p);
  CHECK(berth::api::route_doc_problems().empty());
  CHECK(berth::api::route_docs().size() == berth::api::routes().size());
}

TEST_CASE("openapi: a route without a description, a stale description and a missing path name are caught",
          "[openapi]") {
  auto routes = berth::api::routes();
  auto docs = berth::api::route_docs();
  routes.push_back({"GET", "/v1/undescribed/{}", [](berth::api::Exchange&) {}});
  docs.push_back({"DELETE /v1/gone", {}, "{}"});
  docs.front().path_params.push_back("surplus");
  auto problems = berth::api::route_doc_problems(routes, docs);
  std::set<std::string> got(problems.begin(), problems.end());
  CHECK(got == std::set<std::string>{"undocumented: GET /v1/undescribed/{}", "stale: DELETE /v1/gone",
                                     "params: " + docs.front().id});
}

TEST_CASE("openapi: the document has one operation per route, bearer security and every error code", "[openapi]") {
  auto doc = document();
  CHECK(doc->getValue<std::string>("openapi") == "3.1.0");
  auto paths = doc->getObject("paths");
  std::size_t operations = 0;
  for (const auto& [path, item] : *paths)
    operations += item.extract<Object::Ptr>()->size();
  CHECK(operations == berth::api::routes().size());

  // Each route is found under its pattern with named parameters, with security matching public_.
  for (const auto& route : berth::api::routes()) {
    INFO(berth::api::route_id(route));
    bool found = false;
    for (const auto& [path, item] : *paths) {
      std::string pattern;
      for (std::size_t i = 0; i < path.size(); ++i) {
        if (path[i] == '{') {
          pattern += "{}";
          i = path.find('}', i);
        } else {
          pattern += path[i];
        }
      }
      auto op = item.extract<Object::Ptr>()->getObject(lower(route.method));
      if (pattern != route.pattern || !op) continue;
      found = true;
      CHECK(op->has("operationId"));
      CHECK(op->getObject("responses")->size() > 1);
      // Public routes opt out of the document-wide bearer requirement with an empty list.
      CHECK((op->has("security") && op->getArray("security")->size() == 0) == route.public_);
      if (!route.public_) CHECK(op->getObject("responses")->has("401"));
    }
    CHECK(found);
  }
  auto schemes = doc->getObject("components")->getObject("securitySchemes")->getObject("bearer");
  CHECK(schemes->getValue<std::string>("scheme") == "bearer");

  auto codes = doc->getObject("components")
                   ->getObject("schemas")
                   ->getObject("Error")
                   ->getObject("properties")
                   ->getObject("error")
                   ->getObject("properties")
                   ->getObject("code")
                   ->getArray("enum");
  std::set<std::string> documented;
  for (const auto& c : *codes)
    documented.insert(c.extract<std::string>());
  std::set<std::string> all;
  for (auto code : berth::core::kAllErrorCodes)
    all.insert(std::string(berth::core::to_string(code)));
  CHECK(documented == all);
}
