// libFuzzer target: the typed JSON field access every request body goes through (api/request.hpp: opt_string,
// req_string, opt_int, opt_string_map, only_fields) after the same Poco parse as Exchange::json_body. A bad body
// must end as a Poco::Exception (malformed JSON, mapped to 400) or core::Error (validation); anything else
// escaping, and every sanitizer report (e.g. an out-of-range float to integer cast), is a crash.
#include <Poco/Exception.h>
#include <Poco/JSON/Parser.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "api/request.hpp"
#include "core/errors.hpp"

namespace {

template <typename Fn>
void expect_validation(Fn&& fn) {
  try {
    fn();
  } catch (const berth::core::Error&) {
  } catch (const Poco::Exception&) {  // e.g. a number too large for int64: Poco's RangeException -> 400
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  Poco::Dynamic::Var parsed;
  try {
    Poco::JSON::Parser parser;
    parsed = parser.parse(text);
  } catch (const Poco::Exception&) {
    return 0;  // malformed JSON: 400 invalid_request
  }
  if (parsed.type() != typeid(Poco::JSON::Object::Ptr)) return 0;
  auto object = parsed.extract<Poco::JSON::Object::Ptr>();
  if (!object) return 0;
  for (const auto& name : object->getNames()) {
    expect_validation([&] { (void)berth::api::opt_string(object, name); });
    expect_validation([&] { (void)berth::api::req_string(object, name); });
    expect_validation([&] { (void)berth::api::opt_int(object, name); });
    expect_validation([&] { (void)berth::api::opt_string_map(object, name); });
  }
  // The field names the routes use, present or not.
  for (const char* name : {"code", "command", "timeout", "path", "content", "cwd", "ttl", "profile", "env", "extend_by",
                           "labels", "workspace_id", "key", "mode"}) {
    expect_validation([&] { (void)berth::api::opt_string(object, name); });
    expect_validation([&] { (void)berth::api::opt_int(object, name); });
    expect_validation([&] { (void)berth::api::opt_string_map(object, name); });
  }
  expect_validation([&] { berth::api::only_fields(object, {"code", "timeout"}); });
  return 0;
}
