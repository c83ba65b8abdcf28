// GET /openapi.json: the OpenAPI 3.1 document (https://spec.openapis.org/oas/v3.1.0), built from routes() and the
// RouteDoc table at the bottom of this file. Schemas are JSON Schema 2020-12 (OpenAPI 3.1's dialect): nullable is
// `"type": [..., "null"]`. Response schemas are closed (`additionalProperties: false`) so that a field berthd sends
// but this file does not describe fails tests/api/openapi_conformance.py.
#include "api/openapi.hpp"

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include "core/errors.hpp"

namespace berth::api {
namespace {

using Poco::JSON::Array;
using Poco::JSON::Object;

// ---- component schemas, parameters and headers -----------------------------------------------------------------
// Error, the Error<status> responses and the error-code enum are generated from core::ErrorCode (see build()).

constexpr const char* kSchemas = R"json({
  "Id": {"type": "string", "pattern": "^(sandbox|ws|sess|exec)-[0-9a-f]{12}$"},
  "Time": {"type": "string", "format": "date-time", "description": "RFC 3339 UTC with milliseconds"},
  "NullableTime": {"type": ["string", "null"], "format": "date-time"},
  "StringMap": {"type": "object", "additionalProperties": {"type": "string"}},
  "Health": {"type": "object", "additionalProperties": false, "required": ["status", "version", "uptime_s"],
    "properties": {"status": {"const": "ok"}, "version": {"type": "string"},
                   "uptime_s": {"type": "integer", "minimum": 0}}},
  "Profile": {"type": "object", "additionalProperties": false,
    "required": ["name", "builtin", "image", "cpus", "memory_bytes", "pids", "network", "read_only_rootfs", "ttl_s",
                 "idle_timeout_s", "disk_limit_bytes", "capabilities", "shell", "created_at", "updated_at"],
    "properties": {"name": {"type": "string"}, "builtin": {"type": "boolean", "description": "from the config file"},
      "image": {"type": "string"}, "cpus": {"type": "number"},
      "memory_bytes": {"type": "integer"}, "pids": {"type": "integer"}, "network": {"type": "boolean"},
      "read_only_rootfs": {"type": "boolean"},
      "ttl_s": {"type": ["integer", "null"], "description": "default sandbox TTL in seconds; null = never expires"},
      "idle_timeout_s": {"type": "integer"},
      "disk_limit_bytes": {"type": "integer", "minimum": 0, "description": "workspace + writable layer; 0 = no limit"},
      "capabilities": {"type": "array", "items": {"enum": ["python", "shell", "filesystem"]}},
      "shell": {"type": "string", "description": "what a terminal (GET /v1/sandboxes/{id}/terminal) runs"},
      "created_at": {"$ref": "#/components/schemas/NullableTime"},
      "updated_at": {"$ref": "#/components/schemas/NullableTime"},
      "spec": {"$ref": "#/components/schemas/ProfileSpec", "description": "admins only: the profile as POST/PUT take it"}}},
  "ProfileSpec": {"type": "object", "additionalProperties": false,
    "description": "the keys of a [profiles.<name>] table of the config file, read by the config loader's own rules",
    "properties": {"name": {"type": "string", "description": "PUT: if given, must equal the path's name"},
      "image": {"type": "string", "minLength": 1}, "cpus": {"type": "number", "minimum": 0.01, "maximum": 1024},
      "memory": {"type": ["integer", "string"], "description": "bytes, or a size such as \"512MiB\" (at least 6 MiB)"},
      "pids": {"type": "integer", "minimum": 8}, "network": {"type": "boolean"}, "read_only_rootfs": {"type": "boolean"},
      "user": {"type": "string", "description": "uid[:gid] or a name; never root"},
      "shell": {"type": "string", "pattern": "^/", "maxLength": 255, "description": "what a terminal runs on its PTY"},
      "env": {"$ref": "#/components/schemas/StringMap"},
      "ttl": {"type": ["integer", "string"], "description": "seconds, or a duration such as \"1h\""},
      "idle_timeout": {"type": ["integer", "string"], "description": "seconds, or a duration such as \"30m\""},
      "disk_limit_mb": {"type": "integer", "minimum": 0, "description": "MiB of workspace + writable layer; 0 = off"},
      "capabilities": {"type": "array", "items": {"enum": ["python", "shell", "filesystem"]}}}},
  "CreateProfileRequest": {"allOf": [{"$ref": "#/components/schemas/ProfileSpec"}], "required": ["name"]},
  "ProfileList": {"type": "object", "additionalProperties": false, "required": ["items"],
    "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Profile"}}}},
  "Meta": {"type": "object", "additionalProperties": false,
    "required": ["name", "version", "api_version", "driver", "capabilities", "profiles", "sessions"],
    "properties": {"name": {"const": "berth"}, "version": {"type": "string"}, "api_version": {"const": "v1"},
      "driver": {"type": "object", "additionalProperties": false, "required": ["name", "version", "abi"],
        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                       "abi": {"type": "string", "pattern": "^[0-9]+\\.[0-9]+$"}}},
      "capabilities": {"type": "array", "items": {"enum": ["exec", "exec_stream", "exec_cancel", "files", "volumes",
                                                            "stats", "readonly_rootfs", "network_policy", "process",
                                                            "process_pty"]}},
      "profiles": {"type": "array", "items": {"$ref": "#/components/schemas/Profile"}},
      "sessions": {"type": "object", "additionalProperties": false, "required": ["running", "by_transport"],
        "description": "running sessions, and how berthd reaches them (agent, engine-exec after a fallback, ...)",
        "properties": {"running": {"type": "integer", "minimum": 0},
                       "by_transport": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}}}}},
  "OpenApiDocument": {"type": "object", "required": ["openapi", "info", "paths"],
    "description": "this document (OpenAPI 3.1)"},
  "Sandbox": {"type": "object", "additionalProperties": false,
    "required": ["id", "status", "profile", "workspace_id", "key", "labels", "capabilities", "session_id",
                 "transport", "created_at", "expires_at", "idle_expires_at"],
    "properties": {"id": {"$ref": "#/components/schemas/Id"},
      "status": {"enum": ["idle", "starting", "ready", "failed", "expired"]},
      "profile": {"type": "string"}, "workspace_id": {"$ref": "#/components/schemas/Id"},
      "key": {"type": ["string", "null"], "description": "the get-or-create key in canonical form"},
      "labels": {"$ref": "#/components/schemas/StringMap"},
      "capabilities": {"type": "array", "items": {"enum": ["python", "shell", "filesystem"]}},
      "session_id": {"oneOf": [{"$ref": "#/components/schemas/Id"}, {"type": "null"}]},
      "transport": {"type": ["string", "null"],
        "description": "how berthd reaches the session: agent, or engine-exec for a session that fell back"},
      "created_at": {"$ref": "#/components/schemas/Time"},
      "expires_at": {"$ref": "#/components/schemas/NullableTime"},
      "idle_expires_at": {"$ref": "#/components/schemas/NullableTime"},
      "error": {"type": "string", "description": "only while status is failed: why the last start failed"},
      "disk": {"oneOf": [{"type": "null"}, {"type": "object", "additionalProperties": false,
        "required": ["bytes", "workspace_bytes", "rootfs_bytes", "limit_bytes", "exceeded", "measured_at"],
        "description": "the last disk measurement (docs/api.md Disk limits); null until measured",
        "properties": {"bytes": {"type": "integer", "minimum": 0}, "workspace_bytes": {"type": "integer", "minimum": 0},
          "rootfs_bytes": {"type": "integer", "minimum": 0}, "limit_bytes": {"type": "integer", "minimum": 0},
          "exceeded": {"type": "boolean"}, "measured_at": {"$ref": "#/components/schemas/Time"}}}]}}},
  "SandboxPage": {"type": "object", "additionalProperties": false, "required": ["items", "next_cursor"],
    "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Sandbox"}},
      "next_cursor": {"oneOf": [{"$ref": "#/components/schemas/Id"}, {"type": "null"}]}}},
  "CreateSandboxRequest": {"type": "object", "additionalProperties": false,
    "properties": {"profile": {"type": "string"}, "ttl": {"type": "integer", "minimum": 1, "description": "seconds"},
      "workspace_id": {"type": "string"}, "key": {"type": "string", "minLength": 1, "maxLength": 256},
      "labels": {"$ref": "#/components/schemas/StringMap"}, "env": {"$ref": "#/components/schemas/StringMap"}}},
  "ExtendTtlRequest": {"type": "object", "additionalProperties": false, "required": ["extend_by"],
    "properties": {"extend_by": {"type": "integer", "minimum": 1, "description": "seconds"}}},
  "Stopped": {"type": "object", "additionalProperties": false, "required": ["status"],
    "properties": {"status": {"const": "stopped"}}},
  "Ok": {"type": "object", "additionalProperties": false, "required": ["status"],
    "properties": {"status": {"const": "ok"}}},
  "PythonExecRequest": {"type": "object", "additionalProperties": false,
    "description": "code is required unless an event is given (then a handler(event) defined by an earlier cell may be called)",
    "properties": {"code": {"type": "string"},
      "timeout": {"type": "integer", "minimum": 1, "maximum": 300, "default": 30},
      "context_id": {"type": "string", "default": "default", "description": "the context whose interpreter runs the cell"},
      "stateless": {"type": "boolean", "default": false, "description": "a fresh python3 for this call alone (no context)"},
      "event": {"description": "any JSON value: the code's handler(event) is called with it and its return value comes back as result"},
      "async": {"type": "boolean", "default": false, "description": "answer 202 at once; the execution runs on (GET .../executions/{execution_id})"}}},
  "CellData": {"type": "object", "description": "rich results of a cell",
    "properties": {"text": {"type": "string", "description": "repr() of the final expression's value"},
      "html": {"type": "string"}, "markdown": {"type": "string"},
      "png": {"type": "string", "contentEncoding": "base64"},
      "images": {"type": "array", "items": {"type": "object", "required": ["format", "data"],
        "properties": {"format": {"const": "png"}, "data": {"type": "string", "contentEncoding": "base64"}}}},
      "display": {"type": "array", "items": {"type": "object", "required": ["text"],
        "properties": {"text": {"type": "string"}, "html": {"type": "string"}, "markdown": {"type": "string"},
          "png": {"type": "string", "contentEncoding": "base64"}}}}}},
  "CellException": {"type": "object", "additionalProperties": false, "required": ["name", "value", "traceback"],
    "properties": {"name": {"type": "string"}, "value": {"type": "string"}, "traceback": {"type": "string"}}},
  "Context": {"type": "object", "additionalProperties": false,
    "required": ["id", "sandbox_id", "cwd", "env", "created_at", "last_used_at", "execution_count", "running", "busy",
                 "python_version"],
    "properties": {"id": {"type": "string"}, "sandbox_id": {"$ref": "#/components/schemas/Id"},
      "cwd": {"type": "string", "description": "relative to /workspace, where the interpreter starts"},
      "env": {"$ref": "#/components/schemas/StringMap"}, "created_at": {"$ref": "#/components/schemas/Time"},
      "last_used_at": {"$ref": "#/components/schemas/NullableTime"},
      "execution_count": {"type": "integer", "minimum": 0}, "running": {"type": "boolean"}, "busy": {"type": "boolean"},
      "python_version": {"type": ["string", "null"]}}},
  "ContextList": {"type": "object", "additionalProperties": false, "required": ["items"],
    "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Context"}}}},
  "CreateContextRequest": {"type": "object", "additionalProperties": false,
    "properties": {"cwd": {"type": "string", "description": "relative to /workspace"},
      "env": {"$ref": "#/components/schemas/StringMap"}}},
  "ShellExecRequest": {"type": "object", "additionalProperties": false, "required": ["command"],
    "properties": {"command": {"type": "string", "minLength": 1},
      "timeout": {"type": "integer", "minimum": 1, "maximum": 300, "default": 30},
      "cwd": {"type": "string", "description": "relative to /workspace"},
      "cwd_b64": {"type": "string", "contentEncoding": "base64", "description": "instead of cwd: its raw bytes"},
      "async": {"type": "boolean", "default": false, "description": "answer 202 at once; the execution runs on (GET .../executions/{execution_id})"}}},
  "Execution": {"type": "object", "additionalProperties": false,
    "required": ["id", "sandbox_id", "exec_type", "status", "async", "created_at", "finished_at", "reason", "error_code", "result"],
    "properties": {"id": {"$ref": "#/components/schemas/Id"}, "sandbox_id": {"$ref": "#/components/schemas/Id"},
      "exec_type": {"enum": ["python", "shell"]},
      "status": {"enum": ["running", "succeeded", "failed", "timed_out", "cancelled"]},
      "async": {"type": "boolean", "description": "false: a synchronous exec, read from the history"},
      "created_at": {"$ref": "#/components/schemas/Time"}, "finished_at": {"$ref": "#/components/schemas/NullableTime"},
      "reason": {"type": ["string", "null"], "description": "why it failed or was cancelled without a result"},
      "error_code": {"type": ["string", "null"], "description": "the error code when it failed without a result"},
      "result": {"oneOf": [{"$ref": "#/components/schemas/ExecResult"}, {"type": "null"}],
        "description": "what the synchronous call would have answered, once it has ended with a result"}}},
  "ExecResult": {"type": "object", "additionalProperties": false,
    "required": ["success", "output", "error", "exit_code", "timed_out", "execution_id", "execution_time_ms"],
    "properties": {"success": {"type": "boolean"}, "output": {"type": "string"}, "error": {"type": "string"},
      "exit_code": {"type": ["integer", "null"]}, "timed_out": {"type": "boolean"},
      "execution_id": {"$ref": "#/components/schemas/Id"}, "execution_time_ms": {"type": "integer", "minimum": 0},
      "context_id": {"type": ["string", "null"], "description": "python/exec in a context: its id (null: a one-off interpreter)"},
      "execution_count": {"type": "integer", "minimum": 0},
      "context_restarted": {"type": "boolean", "description": "the context's earlier state is gone (restart_reason says why)"},
      "restart_reason": {"type": ["string", "null"]},
      "data": {"oneOf": [{"$ref": "#/components/schemas/CellData"}, {"type": "null"}]},
      "result": {"description": "handler(event)'s return value (only when an event was given)"},
      "exception": {"oneOf": [{"$ref": "#/components/schemas/CellException"}, {"type": "null"}]}}},
  "HistoryEntry": {"type": "object", "additionalProperties": false,
    "required": ["id", "session_id", "exec_type", "code", "success", "exit_code", "output", "error", "truncated",
                 "execution_time_ms", "created_at"],
    "properties": {"id": {"$ref": "#/components/schemas/Id"},
      "session_id": {"oneOf": [{"$ref": "#/components/schemas/Id"}, {"type": "null"}],
        "description": "null for an async execution without a session yet (running) or that ended before it had one"},
      "exec_type": {"enum": ["python", "shell"]}, "code": {"type": "string"}, "success": {"type": "boolean"},
      "exit_code": {"type": ["integer", "null"]}, "output": {"type": "string"}, "error": {"type": "string"},
      "truncated": {"type": "boolean"}, "execution_time_ms": {"type": "integer", "minimum": 0},
      "created_at": {"$ref": "#/components/schemas/Time"}}},
  "HistoryPage": {"type": "object", "additionalProperties": false, "required": ["entries", "total", "bytes_capped"],
    "properties": {"entries": {"type": "array", "items": {"$ref": "#/components/schemas/HistoryEntry"}},
      "total": {"type": "integer", "minimum": 0}, "bytes_capped": {"type": "boolean"}}},
  "FileContent": {"type": "object", "additionalProperties": false, "required": ["path", "content"],
    "properties": {"path": {"type": "string"}, "path_b64": {"type": "string", "contentEncoding": "base64"},
                   "content": {"type": "string"}}},
  "WriteFileRequest": {"type": "object", "additionalProperties": false, "required": ["content"],
    "oneOf": [{"required": ["path"]}, {"required": ["path_b64"]}],
    "properties": {"path": {"type": "string"}, "path_b64": {"type": "string", "contentEncoding": "base64"},
      "content": {"type": "string"}, "mode": {"type": "integer", "minimum": 0, "maximum": 511, "default": 420}}},
  "FileWritten": {"type": "object", "additionalProperties": false, "required": ["status", "path", "size"],
    "properties": {"status": {"const": "ok"}, "path": {"type": "string"},
      "path_b64": {"type": "string", "contentEncoding": "base64"}, "size": {"type": "integer", "minimum": 0}}},
  "UploadForm": {"type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "contentMediaType": "application/octet-stream"},
      "path": {"type": "string", "description": "defaults to the file part's filename"},
      "path_b64": {"type": "string", "contentEncoding": "base64"}}},
  "DirectoryEntry": {"type": "object", "additionalProperties": false, "required": ["name", "type", "size", "mode"],
    "properties": {"name": {"type": "string"}, "name_b64": {"type": "string", "contentEncoding": "base64"},
      "type": {"enum": ["file", "directory", "symlink", "other"]}, "size": {"type": "integer", "minimum": 0},
      "mode": {"type": "integer", "minimum": 0}}},
  "DirectoryPage": {"type": "object", "additionalProperties": false, "required": ["path", "entries", "next_cursor"],
    "properties": {"path": {"type": "string"}, "path_b64": {"type": "string", "contentEncoding": "base64"},
      "entries": {"type": "array", "items": {"$ref": "#/components/schemas/DirectoryEntry"}},
      "next_cursor": {"type": ["string", "null"], "description": "opaque; URL-encode it"}}},
  "CreateWorkspaceRequest": {"type": "object", "additionalProperties": false, "maxProperties": 0},
  "Workspace": {"type": "object", "additionalProperties": false, "required": ["id", "managed", "created_at"],
    "properties": {"id": {"$ref": "#/components/schemas/Id"}, "managed": {"type": "boolean"},
                   "created_at": {"$ref": "#/components/schemas/Time"}}},
  "IdList": {"type": "array", "items": {"type": "string"}},
  "GcReport": {"type": "object", "additionalProperties": false,
    "required": ["idle_stopped", "expired_deleted", "orphans_removed", "workspaces_removed", "dead_sessions",
                 "skipped_stale", "skipped_in_use", "failed", "disk_stopped"],
    "properties": {"idle_stopped": {"$ref": "#/components/schemas/IdList"},
      "expired_deleted": {"$ref": "#/components/schemas/IdList"},
      "orphans_removed": {"$ref": "#/components/schemas/IdList"},
      "workspaces_removed": {"$ref": "#/components/schemas/IdList"},
      "disk_stopped": {"$ref": "#/components/schemas/IdList"},
      "dead_sessions": {"$ref": "#/components/schemas/IdList"},
      "skipped_stale": {"$ref": "#/components/schemas/IdList"},
      "skipped_in_use": {"$ref": "#/components/schemas/IdList"},
      "skipped_leased": {"$ref": "#/components/schemas/IdList"},
      "failed": {"$ref": "#/components/schemas/IdList"}}}
})json";

constexpr const char* kParameters = R"json({
  "Limit": {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
  "Offset": {"name": "offset", "in": "query", "description": "entries to skip",
    "schema": {"type": "integer", "minimum": 0, "default": 0}},
  "SandboxCursor": {"name": "cursor", "in": "query", "description": "the next_cursor of the previous page",
    "schema": {"$ref": "#/components/schemas/Id"}},
  "Status": {"name": "status", "in": "query", "schema": {"enum": ["idle", "starting", "ready", "failed", "expired"]}},
  "Label": {"name": "label", "in": "query", "description": "name=value (the first = splits)",
    "schema": {"type": "string", "pattern": "^[^=]+="}},
  "ExecType": {"name": "exec_type", "in": "query", "schema": {"enum": ["python", "shell"]}},
  "Path": {"name": "path", "in": "query", "description": "relative to /workspace; give this or path_b64",
    "schema": {"type": "string"}},
  "PathB64": {"name": "path_b64", "in": "query", "description": "instead of path: base64 of the raw bytes",
    "schema": {"type": "string", "contentEncoding": "base64"}},
  "DirectoryLimit": {"name": "limit", "in": "query",
    "description": "entries per page, 1 to [listing] max_entries (the default)", "schema": {"type": "integer", "minimum": 1}},
  "DirectoryCursor": {"name": "cursor", "in": "query", "description": "the next_cursor of the previous page",
    "schema": {"type": "string", "contentEncoding": "base64"}}
})json";

constexpr const char* kHeaders = R"json({
  "X-Request-Id": {"description": "req-<n>, repeated in error bodies as error.request_id", "required": true,
    "schema": {"type": "string", "pattern": "^req-[0-9]+$"}},
  "Retry-After": {"description": "seconds to wait before retrying (RFC 9110 section 10.2.3)", "required": true,
    "schema": {"type": "string", "pattern": "^[0-9]+$"}},
  "WWW-Authenticate": {"description": "RFC 6750 section 3", "required": true,
    "schema": {"const": "Bearer realm=\"berth\""}},
  "Idempotent-Replayed": {"description": "present when the request carried an Idempotency-Key: true for a replay",
    "schema": {"enum": ["true", "false"]}},
  "Content-Disposition": {"description": "attachment; filename=\"<ASCII fallback>\"; filename*=UTF-8''<percent-encoded> (RFC 6266, RFC 8187)",
    "required": true, "schema": {"type": "string", "pattern": "^attachment; filename=\""}}
})json";

constexpr const char* kDescription =
    "Berth runs code in sandboxes (containers started by a driver plugin). docs/api.md is the human description of "
    "this API. Every error is the Error envelope with a stable `code`; retryable errors (429, 503) carry "
    "Retry-After. Before any route runs, the connection layer may refuse a request head: 400 (framing), 408 "
    "(header_timeout), 429 (too_many_connections), 431 (headers too large), 503 (connection_queue_full) or 505 "
    "(HTTP version), each with the Error envelope and Connection: close (docs/api.md, HTTP framing and limits). A "
    "known path with another method is 405 invalid_request; an unknown path is 404 not_found.";

Object::Ptr parse_object(const std::string& text, const std::string& what) {
  try {
    Poco::JSON::Parser parser;
    auto value = parser.parse(text);
    if (value.type() != typeid(Object::Ptr)) throw std::logic_error("not a JSON object");
    return value.extract<Object::Ptr>();
  } catch (const Poco::Exception& e) {
    throw std::logic_error("openapi: " + what + " is not valid JSON: " + e.displayText());
  } catch (const std::logic_error& e) {
    throw std::logic_error("openapi: " + what + ": " + e.what());
  }
}

Object::Ptr component_ref(const std::string& target) {
  Object::Ptr o = new Object;
  o->set("$ref", "#/components/" + target);
  return o;
}

Object::Ptr json_content(const Poco::Dynamic::Var& schema) {
  Object::Ptr media = new Object;
  media->set("schema", schema);
  Object::Ptr content = new Object;
  content->set("application/json", media);
  return content;
}

/** Error codes per HTTP status as berthd sends them: http_status(), plus 422 for an Idempotency-Key mismatch. */
std::map<int, std::vector<std::string>> codes_by_status() {
  std::map<int, std::vector<std::string>> out;
  for (auto code : core::kAllErrorCodes)
    out[http_status(code)].emplace_back(core::to_string(code));
  out[422].emplace_back(core::to_string(core::ErrorCode::conflict));  // details.reason = idempotency_mismatch
  return out;
}

/** components.schemas.Error and components.responses.Error<status>, from every core::ErrorCode. */
void add_errors(Object& schemas, Object& responses) {
  Array all;
  for (auto code : core::kAllErrorCodes)
    all.add(std::string(core::to_string(code)));
  auto error = parse_object(R"json({"type": "object", "additionalProperties": false, "required": ["error"],
    "description": "the error envelope of every non-2xx answer (docs/api.md, Errors)",
    "properties": {"error": {"type": "object", "additionalProperties": false,
      "required": ["code", "message", "request_id", "details"],
      "properties": {"code": {"type": "string", "description": "stable; see the enum"},
        "message": {"type": "string", "description": "for humans"},
        "request_id": {"type": "string", "pattern": "^req-[0-9]+$"},
        "details": {"$ref": "#/components/schemas/StringMap"}}}}})json",
                            "Error");
  error->getObject("properties")->getObject("error")->getObject("properties")->getObject("code")->set("enum", all);
  schemas.set("Error", error);

  for (const auto& [status, codes] : codes_by_status()) {
    Array enumerated;
    std::string list;
    for (const auto& c : codes) {
      enumerated.add(c);
      list += (list.empty() ? "" : ", ") + c;
    }
    // The envelope, with `code` narrowed to the codes this status carries.
    Object::Ptr code = new Object;
    code->set("enum", enumerated);
    Object::Ptr inner_props = new Object;
    inner_props->set("code", code);
    Object::Ptr inner = new Object;
    inner->set("properties", inner_props);
    Object::Ptr props = new Object;
    props->set("error", inner);
    Object::Ptr narrowed = new Object;
    narrowed->set("properties", props);
    Array all_of;
    all_of.add(component_ref("schemas/Error"));
    all_of.add(narrowed);
    Object::Ptr schema = new Object;
    schema->set("allOf", all_of);

    Object::Ptr headers = new Object;
    headers->set("X-Request-Id", component_ref("headers/X-Request-Id"));
    if (status == 429 || status == 503) headers->set("Retry-After", component_ref("headers/Retry-After"));
    if (status == 401) headers->set("WWW-Authenticate", component_ref("headers/WWW-Authenticate"));
    Object::Ptr response = new Object;
    response->set("description", "error " + list);
    response->set("headers", headers);
    response->set("content", json_content(schema));
    responses.set("Error" + std::to_string(status), response);
  }
}

/** Expands one RouteDoc (see openapi.hpp) with what the route table says about the route. */
Object::Ptr operation(const Route& route, const RouteDoc& doc) {
  auto op = parse_object(doc.operation, doc.id);

  Array params;
  for (const auto& name : doc.path_params) {
    auto p = parse_object(R"({"in": "path", "required": true, "schema": {"type": "string"}})", "path parameter");
    p->set("name", name);
    p->set("description", "an id; anything else is 404 not_found");
    params.add(p);
  }
  if (route.idempotency == Route::Idempotency::replay) {
    params.add(component_ref("parameters/Idempotency-Key"));
  } else if (route.idempotency == Route::Idempotency::refuse) {
    params.add(component_ref("parameters/Idempotency-Key-refused"));
  }
  if (auto given = op->getArray("parameters")) {
    for (const auto& p : *given)
      params.add(p.isString() ? Poco::Dynamic::Var(component_ref("parameters/" + p.extract<std::string>())) : p);
  }
  if (params.size() > 0) op->set("parameters", params);

  for (const char* key : {"body", "optionalBody"}) {
    if (!op->has(key)) continue;
    Object::Ptr body = new Object;
    body->set("required", std::string(key) == "body");
    body->set("content", json_content(component_ref("schemas/" + op->getValue<std::string>(key))));
    op->set("requestBody", body);
    op->remove(key);
  }

  auto responses = op->getObject("responses");
  if (!responses) throw std::logic_error("openapi: " + doc.id + " has no responses");
  // Errors every route of this kind can answer, whatever its handler does (http_api.cpp dispatch / run_route).
  std::map<int, std::string> implied = {
      {400, "invalid_request: a malformed request target"},
      {500, "internal"},
      {503, route.heavy ? "server_busy (no work slot), shutting_down" : "shutting_down"}};
  if (!route.public_) {
    implied[400] = "invalid_request: malformed target, more than one Authorization header";
    implied[401] = "unauthorized: missing or unknown API key";
  }
  if (route.admin) implied[404] = "not_found: a key without the admin role (the route does not exist for it)";
  if (route.idempotency == Route::Idempotency::replay) {
    implied[400] += ", malformed Idempotency-Key";
    implied[413] = "payload_too_large: body over [server] max_body";
    implied[422] = "conflict (details.reason = idempotency_mismatch): the Idempotency-Key was used for another request";
  }
  if (route.idempotency == Route::Idempotency::refuse) implied[400] += ", an Idempotency-Key (idempotency_unsupported)";
  for (const auto& [status, text] : implied) {
    auto key = std::to_string(status);
    if (!responses->has(key)) responses->set(key, text);
  }

  Object::Ptr expanded = new Object;
  for (const auto& [status, value] : *responses) {
    if (value.isString()) {
      auto r = component_ref("responses/Error" + status);
      r->set("description", value.extract<std::string>());
      expanded->set(status, r);
      continue;
    }
    auto r = value.extract<Object::Ptr>();
    if (r->has("schema")) {
      r->set("content", json_content(component_ref("schemas/" + r->getValue<std::string>("schema"))));
      r->remove("schema");
    }
    if (r->has("events")) {
      // `"events": true`: the same call also answers `Accept: text/event-stream` (docs/api.md, Streaming).
      auto media = parse_object(
          "{\"schema\": {\"type\": \"string\", \"description\": \"Server-Sent Events: stdout and stderr events (id ="
          " seq; data {seq, stream, time, data}), then one result event whose data is the JSON answer, or one error"
          " event with the error envelope\"}}",
          "text/event-stream");
      r->getObject("content")->set("text/event-stream", media);
      r->remove("events");
    }
    auto headers = r->getObject("headers");
    if (!headers) headers = new Object;
    headers->set("X-Request-Id", component_ref("headers/X-Request-Id"));
    if (route.idempotency == Route::Idempotency::replay) {
      headers->set("Idempotent-Replayed", component_ref("headers/Idempotent-Replayed"));
    }
    r->set("headers", headers);
    expanded->set(status, r);
  }
  op->set("responses", expanded);

  if (route.public_) op->set("security", Array());
  if (route.heavy) op->set("x-berth-heavy", true);  // passes admission ([server] work_slots / work_queue)
  if (route.admin) op->set("x-berth-admin", true);
  return op;
}

std::string openapi_path(const Route& route, const RouteDoc& doc) {
  std::string out;
  std::size_t next = 0;
  for (std::size_t i = 0; i < route.pattern.size(); ++i) {
    if (route.pattern.compare(i, 2, "{}") == 0) {
      out += "{" + doc.path_params.at(next++) + "}";
      ++i;
    } else {
      out += route.pattern[i];
    }
  }
  return out;
}

std::string build() {
  auto problems = route_doc_problems();
  if (!problems.empty()) {
    std::string text;
    for (const auto& p : problems)
      text += (text.empty() ? "" : "; ") + p;
    throw std::logic_error("openapi: the route table and its descriptions (host/api/openapi.cpp) disagree: " + text);
  }
  std::map<std::string, const RouteDoc*> docs;
  for (const auto& d : route_docs())
    docs[d.id] = &d;

  Object::Ptr paths = new Object;
  for (const auto& route : routes()) {
    const auto& doc = *docs.at(route_id(route));
    auto path = openapi_path(route, doc);
    auto item = paths->getObject(path);
    if (!item) {
      item = new Object;
      paths->set(path, item);
    }
    std::string method = route.method;
    for (auto& c : method)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    item->set(method, operation(route, doc));
  }

  auto schemas = parse_object(kSchemas, "component schemas");
  Object::Ptr responses = new Object;
  add_errors(*schemas, *responses);
  auto parameters = parse_object(kParameters, "component parameters");
  parameters->set("Idempotency-Key", parse_object(R"json({"name": "Idempotency-Key", "in": "header",
    "description": "replays the first response to a retry of the same request (per owner, 24 h); another request under the same key is 422",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}})json",
                                                  "Idempotency-Key"));
  parameters->set("Idempotency-Key-refused", parse_object(R"json({"name": "Idempotency-Key", "in": "header",
    "description": "refused on this route (a streamed body cannot be replayed): 400 invalid_request, details.reason = idempotency_unsupported",
    "schema": {"not": {}}})json",
                                                          "Idempotency-Key-refused"));
  Object::Ptr components = new Object;
  components->set("schemas", schemas);
  components->set("responses", responses);
  components->set("parameters", parameters);
  components->set("headers", parse_object(kHeaders, "component headers"));
  components->set("securitySchemes", parse_object(R"json({"bearer": {"type": "http", "scheme": "bearer",
    "description": "Authorization: Bearer <key> from [auth.keys] (tenants) or [auth.admin_keys] (admin role). With no keys configured and allow_anonymous (the default) no header is needed."}})json",
                                                  "securitySchemes"));

  Object doc;
  doc.set("openapi", "3.1.0");
  Object::Ptr info = new Object;
  info->set("title", "Berth HTTP API");
  info->set("version", BERTH_VERSION);
  info->set("description", kDescription);
  doc.set("info", info);
  doc.set("jsonSchemaDialect", "https://spec.openapis.org/oas/3.1/dialect/base");
  // Bearer, or nothing at all in single-user mode (no keys configured).
  doc.set("security", parse_object(R"({"s": [{"bearer": []}, {}]})", "security")->getArray("s"));
  Array tags;
  for (const char* t : {"meta", "profiles", "sandboxes", "exec", "history", "files", "workspaces", "admin"}) {
    Object::Ptr tag = new Object;
    tag->set("name", std::string(t));
    tags.add(tag);
  }
  doc.set("tags", tags);
  doc.set("paths", paths);
  doc.set("components", components);
  std::ostringstream os;
  doc.stringify(os);
  return os.str();
}

}  // namespace

std::string route_id(const Route& route) {
  return route.method + " " + route.pattern;
}

std::vector<std::string> route_doc_problems() {
  return route_doc_problems(routes(), route_docs());
}

std::vector<std::string> route_doc_problems(const std::vector<Route>& routes, const std::vector<RouteDoc>& docs) {
  std::vector<std::string> out;
  std::map<std::string, int> seen;
  for (const auto& d : docs) {
    if (++seen[d.id] == 2) out.push_back("duplicate: " + d.id);
  }
  std::set<std::string> ids;
  for (const auto& r : routes) {
    auto id = route_id(r);
    ids.insert(id);
    auto it = std::find_if(docs.begin(), docs.end(), [&](const RouteDoc& d) { return d.id == id; });
    if (it == docs.end()) {
      out.push_back("undocumented: " + id);
      continue;
    }
    std::size_t holes = 0;
    for (std::size_t i = r.pattern.find("{}"); i != std::string::npos; i = r.pattern.find("{}", i + 2))
      ++holes;
    if (holes != it->path_params.size()) out.push_back("params: " + id);
  }
  for (const auto& d : docs) {
    if (!ids.count(d.id)) out.push_back("stale: " + d.id);
  }
  return out;
}

const std::string& openapi_json() {
  static const std::string kDocument = build();
  return kDocument;
}

// ---- the descriptions, one per route of routes() ------------------------------------------------------------------
// Keep docs/api.md in step: tests/api/openapi_conformance.py checks that every operation here has its heading there.

const std::vector<RouteDoc>& route_docs() {
  static const std::vector<RouteDoc> kDocs = {
      {"GET /health", {}, R"json({"operationId": "getHealth", "tags": ["meta"], "summary": "liveness",
        "responses": {"200": {"description": "berthd serves", "schema": "Health"}}})json"},
      {"GET /meta", {}, R"json({"operationId": "getMeta", "tags": ["meta"],
        "summary": "server version, driver, its capabilities and the profiles",
        "responses": {"200": {"description": "what this berthd offers", "schema": "Meta"}}})json"},
      {"GET /openapi.json", {}, R"json({"operationId": "getOpenApi", "tags": ["meta"],
        "summary": "this OpenAPI 3.1 document, produced from berthd's route table",
        "responses": {"200": {"description": "the document", "schema": "OpenApiDocument"}}})json"},
      {"GET /metrics", {}, R"json({"operationId": "getMetrics", "tags": ["meta"],
        "summary": "Prometheus text exposition format 0.0.4; open unless [metrics] bearer_token is set",
        "responses": {"200": {"description": "every metric (docs/api.md lists them)",
            "content": {"text/plain": {"schema": {"type": "string"}}}},
          "401": "unauthorized: [metrics] bearer_token is set and the scrape does not carry it",
          "404": "not_found: [metrics] enabled = false"}})json"},
      {"GET /v1/profiles", {}, R"json({"operationId": "listProfiles", "tags": ["profiles"],
        "summary": "every profile: the config file's built-ins and those created over the API",
        "responses": {"200": {"description": "every profile, ordered by name", "schema": "ProfileList"}}})json"},
      {"GET /v1/profiles/{}", {"id"}, R"json({"operationId": "getProfile", "tags": ["profiles"],
        "summary": "one profile (admins also get its spec)",
        "responses": {"200": {"description": "the profile", "schema": "Profile"}, "404": "not_found"}})json"},
      {"POST /v1/profiles", {}, R"json({"operationId": "createProfile", "tags": ["profiles"],
        "summary": "admin: create a profile, kept in the database", "body": "CreateProfileRequest",
        "responses": {"201": {"description": "the new profile", "schema": "Profile"},
          "400": "invalid_request (not a JSON object), validation_error (details.field: name, a spec key, or image when the engine does not have it)",
          "404": "not_found: the caller is not an admin (as for an unknown route)",
          "409": "conflict: the name is taken (details.reason exists)",
          "503": "driver_unavailable: the engine could not check the image"}})json"},
      {"PUT /v1/profiles/{}", {"id"}, R"json({"operationId": "replaceProfile", "tags": ["profiles"],
        "summary": "admin: replace a stored profile; applies at each sandbox's next session start",
        "body": "ProfileSpec",
        "responses": {"200": {"description": "the profile as replaced", "schema": "Profile"},
          "400": "invalid_request, validation_error (details.field)",
          "404": "not_found: no such stored profile, or the caller is not an admin",
          "409": "conflict: a built-in profile (details.reason builtin)",
          "503": "driver_unavailable: the engine could not check the image"}})json"},
      {"DELETE /v1/profiles/{}", {"id"}, R"json({"operationId": "deleteProfile", "tags": ["profiles"],
        "summary": "admin: delete a stored profile no live sandbox uses",
        "responses": {"204": {"description": "deleted"},
          "404": "not_found: no such stored profile, or the caller is not an admin",
          "409": "conflict: a built-in (details.reason builtin) or used by live sandboxes (details.reason in_use, details.sandboxes)"}})json"},
      {"POST /v1/sandboxes", {}, R"json({"operationId": "createSandbox", "tags": ["sandboxes"],
        "summary": "create a sandbox (lazy: no container yet), or get the live one for `key`",
        "optionalBody": "CreateSandboxRequest",
        "responses": {"201": {"description": "the new sandbox (status idle)", "schema": "Sandbox"},
          "200": {"description": "the live sandbox already created with this key", "schema": "Sandbox"},
          "400": "invalid_request (not a JSON object), validation_error (a field; details.field names it)",
          "404": "not_found: unknown workspace_id",
          "429": "quota_exceeded (details.limit) or rate_limited (details.limit_per_minute), per owner",
          "503": "driver_unavailable: the workspace volume could not be created; shutting_down"}})json"},
      {"GET /v1/sandboxes", {}, R"json({"operationId": "listSandboxes", "tags": ["sandboxes"],
        "summary": "the caller's sandboxes, ordered by id, a page at a time",
        "parameters": ["Status", "Label", "Limit", "SandboxCursor"],
        "responses": {"200": {"description": "one page; next_cursor is null on the last", "schema": "SandboxPage"},
          "400": "validation_error: a bad query parameter (details.field)"}})json"},
      {"GET /v1/sandboxes/{}", {"id"}, R"json({"operationId": "getSandbox", "tags": ["sandboxes"],
        "summary": "one sandbox", "responses": {"200": {"description": "the sandbox", "schema": "Sandbox"},
          "404": "not_found"}})json"},
      {"DELETE /v1/sandboxes/{}", {"id"}, R"json({"operationId": "deleteSandbox", "tags": ["sandboxes"],
        "summary": "delete a sandbox, its session and its managed workspace",
        "responses": {"204": {"description": "deleted"}, "404": "not_found",
          "503": "driver_unavailable, shutting_down"}})json"},
      {"POST /v1/sandboxes/{}/start", {"id"}, R"json({"operationId": "startSandbox", "tags": ["sandboxes"],
        "summary": "start the session if needed; answers once it is ready",
        "responses": {"200": {"description": "the sandbox, status ready", "schema": "Sandbox"},
          "404": "not_found", "409": "sandbox_expired; conflict (stopped or deleted while starting)",
          "500": "internal: the driver failed to start the container",
          "503": "driver_unavailable, session_not_ready (start_wait passed), server_busy, shutting_down"}})json"},
      {"POST /v1/sandboxes/{}/stop", {"id"}, R"json({"operationId": "stopSandbox", "tags": ["sandboxes"],
        "summary": "stop and remove the session; the workspace stays",
        "responses": {"200": {"description": "stopped (also when it was idle)", "schema": "Stopped"},
          "404": "not_found", "503": "driver_unavailable, shutting_down"}})json"},
      {"POST /v1/sandboxes/{}/keepalive", {"id"}, R"json({"operationId": "keepaliveSandbox", "tags": ["sandboxes"],
        "summary": "reset the idle timer; never starts a session",
        "responses": {"200": {"description": "idle_expires_at moved", "schema": "Ok"}, "404": "not_found",
          "409": "sandbox_expired"}})json"},
      {"POST /v1/sandboxes/{}/extend_ttl", {"id"}, R"json({"operationId": "extendSandboxTtl", "tags": ["sandboxes"],
        "summary": "move expires_at by extend_by seconds", "body": "ExtendTtlRequest",
        "responses": {"200": {"description": "the sandbox with its new expires_at", "schema": "Sandbox"},
          "400": "invalid_request, validation_error (extend_by missing, out of range or past max_ttl)",
          "404": "not_found", "409": "sandbox_ttl_infinite (no TTL), sandbox_expired"}})json"},
      {"POST /v1/sandboxes/{}/python/exec", {"id"}, R"json({"operationId": "execPython", "tags": ["exec"],
        "summary": "run a cell in the sandbox's Python context (or a fresh python3 when stateless); starts the session if needed",
        "body": "PythonExecRequest",
        "responses": {"200": {"description": "the program ran (whatever its exit code); streamed as events on request",
          "schema": "ExecResult", "events": true},
          "202": {"description": "async: the execution runs on", "schema": "Execution"},
          "400": "invalid_request, validation_error, capability_not_supported (no python in the profile)",
          "404": "not_found (sandbox or context_id)",
          "409": "sandbox_expired; conflict (the session ended during the call, or the context ran another cell past this call's timeout); disk_quota_exceeded",
          "429": "rate_limited (details.reason async_executions_per_owner): the owner runs [server] max_async_per_owner async executions",
          "500": "internal: the session could not be started",
          "503": "driver_unavailable, session_not_ready, server_busy, shutting_down"}})json"},
      {"POST /v1/sandboxes/{}/contexts", {"id"}, R"json({"operationId": "createContext", "tags": ["exec"],
        "summary": "a named Python context: its own interpreter, cwd and env, started now", "optionalBody": "CreateContextRequest",
        "responses": {"201": {"description": "the context, running", "schema": "Context"},
          "400": "invalid_request, validation_error (cwd, env), capability_not_supported (no python, no interactive processes, no python3 in the image)",
          "404": "not_found (sandbox, or cwd missing)", "409": "sandbox_expired; conflict (the sandbox holds the most contexts it may: details.limit)",
          "500": "internal", "503": "driver_unavailable, session_not_ready, server_busy, shutting_down"}})json"},
      {"GET /v1/sandboxes/{}/contexts", {"id"}, R"json({"operationId": "listContexts", "tags": ["exec"],
        "summary": "the sandbox's contexts (default once used), by id",
        "responses": {"200": {"description": "the contexts", "schema": "ContextList"}, "404": "not_found"}})json"},
      {"GET /v1/sandboxes/{}/contexts/{}", {"id", "context_id"}, R"json({"operationId": "getContext", "tags": ["exec"],
        "summary": "one context", "responses": {"200": {"description": "the context", "schema": "Context"},
          "404": "not_found (sandbox or context)"}})json"},
      {"DELETE /v1/sandboxes/{}/contexts/{}",
       {"id", "context_id"},
       R"json({"operationId": "deleteContext", "tags": ["exec"],
        "summary": "remove a context and end its interpreter (a running cell ends with it)",
        "responses": {"204": {"description": "deleted"}, "404": "not_found (sandbox or context)"}})json"},
      {"POST /v1/sandboxes/{}/shell/exec", {"id"}, R"json({"operationId": "execShell", "tags": ["exec"],
        "summary": "run /bin/sh -c <command>; starts the session if needed", "body": "ShellExecRequest",
        "responses": {"200": {"description": "the program ran (whatever its exit code); streamed as events on request",
          "schema": "ExecResult", "events": true},
          "202": {"description": "async: the execution runs on", "schema": "Execution"},
          "400": "invalid_request, validation_error (also a bad cwd), capability_not_supported",
          "404": "not_found", "409": "sandbox_expired; conflict (the session ended during the call); disk_quota_exceeded",
          "429": "rate_limited (details.reason async_executions_per_owner): the owner runs [server] max_async_per_owner async executions",
          "500": "internal: the session could not be started",
          "503": "driver_unavailable, session_not_ready, server_busy, shutting_down"}})json"},
      {"GET /v1/sandboxes/{}/executions/{}", {"id", "execution_id"}, R"json({"operationId": "getExecution",
        "tags": ["exec"], "summary": "an execution's status and, once ended, its result (async ones from memory, others from the history)",
        "responses": {"200": {"description": "the execution", "schema": "Execution"},
          "404": "not_found (sandbox or execution)", "503": "store_unavailable"}})json"},
      {"GET /v1/sandboxes/{}/executions/{}/events", {"id", "execution_id"}, R"json({"operationId": "getExecutionEvents",
        "tags": ["exec"], "summary": "re-attach to an execution's output from a sequence number (Last-Event-ID or ?after=), live until its result",
        "responses": {"200": {"description": "stdout/stderr events from the buffer, then result (or error); the execution as JSON over HTTP/1.0",
          "schema": "Execution", "events": true},
          "400": "validation_error: Last-Event-ID or after is not a sequence number",
          "404": "not_found (sandbox or execution)"}})json"},
      {"GET /v1/sandboxes/{}/terminal", {"id"}, R"json({"operationId": "openTerminal", "tags": ["exec"],
        "summary": "a WebSocket (RFC 6455) bound to the profile's shell on a PTY; starts the session if needed",
        "description": "Binary frames carry keystrokes (client to server) and terminal output (server to client). Text frames are JSON control messages: the client sends {\"type\": \"resize\", \"rows\": R, \"cols\": C}; the server sends {\"type\": \"ready\", ...} first, {\"type\": \"error\", ...} for a control message it cannot use, and {\"type\": \"exit\", ...} when the shell ends, followed by a close frame. docs/api.md, Terminal.",
        "parameters": [
          {"name": "rows", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 24}},
          {"name": "cols", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 80}},
          {"name": "term", "in": "query", "schema": {"type": "string", "pattern": "^[A-Za-z0-9._+-]{1,64}$", "default": "xterm-256color"}}],
        "responses": {"101": {"description": "Switching Protocols: the WebSocket is open and the shell runs"},
          "400": "invalid_request (details.reason websocket_upgrade_required, unsupported_websocket_version, missing_websocket_key, body_not_allowed, origin_not_allowed); validation_error (rows, cols, term); capability_not_supported (no shell capability, or no PTY processes)",
          "404": "not_found",
          "409": "conflict: the sandbox has [server] max_terminals_per_sandbox terminals open; sandbox_expired",
          "429": "rate_limited (details.reason terminals_per_owner): the owner has [server] max_terminals_per_owner terminals open",
          "503": "server_busy: [server] max_terminals terminals open (Retry-After); session_not_ready, driver_unavailable, shutting_down"}})json"},
      {"POST /v1/sandboxes/{}/executions/{}/cancel", {"id", "execution_id"}, R"json({"operationId": "cancelExecution",
        "tags": ["exec"], "summary": "cancel a running async execution; answers once it has ended (at most 10 s)",
        "responses": {"200": {"description": "the execution (cancelled, or still running after 10 s)", "schema": "Execution"},
          "404": "not_found (sandbox or execution)",
          "409": "conflict: the execution has ended (details.status), or runs on another berthd"}})json"},
      {"GET /v1/sandboxes/{}/history", {"id"}, R"json({"operationId": "getHistory", "tags": ["history"],
        "summary": "past executions, newest first", "parameters": ["ExecType", "Limit", "Offset"],
        "responses": {"200": {"description": "one page", "schema": "HistoryPage"},
          "400": "validation_error: a bad query parameter", "404": "not_found"}})json"},
      {"GET /v1/sandboxes/{}/filesystem/files", {"id"}, R"json({"operationId": "readFile", "tags": ["files"],
        "summary": "a UTF-8 text file's content", "parameters": ["Path", "PathB64"],
        "responses": {"200": {"description": "the file", "schema": "FileContent"},
          "400": "validation_error: no or bad path, a directory, content not UTF-8; capability_not_supported",
          "404": "not_found (sandbox or file)", "409": "sandbox_expired, conflict",
          "413": "payload_too_large: larger than max_body (use download)",
          "500": "internal", "503": "driver_unavailable, session_not_ready, server_busy, shutting_down"}})json"},
      {"PUT /v1/sandboxes/{}/filesystem/files", {"id"}, R"json({"operationId": "writeFile", "tags": ["files"],
        "summary": "create or replace a file (parents are created)", "body": "WriteFileRequest",
        "responses": {"200": {"description": "written", "schema": "FileWritten"},
          "400": "invalid_request, validation_error, capability_not_supported", "404": "not_found",
          "409": "sandbox_expired, conflict, disk_quota_exceeded", "413": "payload_too_large: body over max_body or content over max_file_size",
          "500": "internal", "503": "driver_unavailable, session_not_ready, server_busy, shutting_down"}})json"},
      {"DELETE /v1/sandboxes/{}/filesystem/files", {"id"}, R"json({"operationId": "deleteFile", "tags": ["files"],
        "summary": "remove a file or a whole directory", "parameters": ["Path", "PathB64"],
        "responses": {"200": {"description": "removed", "schema": "Ok"},
          "400": "validation_error (no or bad path, the workspace root), capability_not_supported",
          "404": "not_found (sandbox or path)", "409": "sandbox_expired, conflict", "500": "internal",
          "503": "driver_unavailable, session_not_ready, server_busy, shutting_down"}})json"},
      {"GET /v1/sandboxes/{}/filesystem/directories", {"id"}, R"json({"operationId": "listDirectory",
        "tags": ["files"], "summary": "one page of a directory, in raw byte order of names",
        "parameters": ["Path", "PathB64", "DirectoryLimit", "DirectoryCursor"],
        "responses": {"200": {"description": "one page; next_cursor is null on the last", "schema": "DirectoryPage"},
          "400": "validation_error (bad path, a file, bad limit or cursor), capability_not_supported",
          "404": "not_found (sandbox or directory)", "409": "sandbox_expired, conflict", "500": "internal",
          "503": "driver_unavailable, session_not_ready, server_busy, shutting_down"}})json"},
      {"POST /v1/sandboxes/{}/filesystem/upload", {"id"}, R"json({"operationId": "uploadFile", "tags": ["files"],
        "summary": "write a file from a multipart/form-data part `file` (binary-safe, streamed)",
        "requestBody": {"required": true, "content": {"multipart/form-data": {
          "schema": {"$ref": "#/components/schemas/UploadForm"}}}},
        "responses": {"200": {"description": "written", "schema": "FileWritten"},
          "400": "invalid_request (not multipart, malformed, an Idempotency-Key), validation_error (no file part, no or bad path), capability_not_supported",
          "404": "not_found", "409": "sandbox_expired, conflict, disk_quota_exceeded", "413": "payload_too_large: over max_file_size",
          "500": "internal", "503": "driver_unavailable, session_not_ready, server_busy, shutting_down"}})json"},
      {"GET /v1/sandboxes/{}/filesystem/download", {"id"}, R"json({"operationId": "downloadFile", "tags": ["files"],
        "summary": "a file's raw bytes (chunked)", "parameters": ["Path", "PathB64"],
        "responses": {"200": {"description": "the bytes",
            "headers": {"Content-Disposition": {"$ref": "#/components/headers/Content-Disposition"}},
            "content": {"application/octet-stream": {"schema": {"type": "string",
              "contentMediaType": "application/octet-stream"}}}},
          "400": "validation_error (no or bad path, a directory), capability_not_supported",
          "404": "not_found (sandbox or file)", "409": "sandbox_expired, conflict",
          "413": "payload_too_large: over max_file_size (when known before the first byte)", "500": "internal",
          "503": "driver_unavailable, session_not_ready, server_busy, shutting_down"}})json"},
      {"POST /v1/workspaces", {}, R"json({"operationId": "createWorkspace", "tags": ["workspaces"],
        "summary": "create an external workspace volume (outlives sandboxes)", "optionalBody": "CreateWorkspaceRequest",
        "responses": {"201": {"description": "the workspace", "schema": "Workspace"},
          "400": "invalid_request, validation_error (any field)", "503": "driver_unavailable, shutting_down"}})json"},
      {"GET /v1/workspaces/{}", {"id"}, R"json({"operationId": "getWorkspace", "tags": ["workspaces"],
        "summary": "one workspace (external, or the managed one of a live sandbox)",
        "responses": {"200": {"description": "the workspace", "schema": "Workspace"}, "404": "not_found"}})json"},
      {"DELETE /v1/workspaces/{}", {"id"}, R"json({"operationId": "deleteWorkspace", "tags": ["workspaces"],
        "summary": "delete a workspace no live sandbox uses",
        "responses": {"204": {"description": "deleted"}, "404": "not_found",
          "409": "conflict: a live sandbox uses it", "503": "driver_unavailable, shutting_down"}})json"},
      {"POST /v1/admin/gc/run", {}, R"json({"operationId": "runGc", "tags": ["admin"],
        "summary": "one cleanup pass now, and purge idempotency records older than 24 h (admin role)",
        "responses": {"200": {"description": "what the pass did", "schema": "GcReport"}}})json"},
  };
  return kDocs;
}

}  // namespace berth::api
