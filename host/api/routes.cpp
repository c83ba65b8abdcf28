// Every route of the HTTP API v1, in one table at the bottom of this file. Handlers translate HTTP to core calls
// and core results to JSON; they hold no logic of their own. docs/api.md documents each route.
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Parser.h>
#include <Poco/JSONString.h>
#include <Poco/Net/HTMLForm.h>
#include <Poco/Net/MessageHeader.h>
#include <Poco/Net/PartHandler.h>
#include <Poco/String.h>
#include <Poco/TemporaryFile.h>

#include <charconv>
#include <fstream>
#include <sstream>
#include <utility>

#include "api/openapi.hpp"
#include "api/request.hpp"
#include "api/terminal.hpp"
#include "core/ids.hpp"
#include "core/log.hpp"
#include "metrics/prometheus_metrics.hpp"

namespace berth::api {
namespace {

using core::Error;
using core::ErrorCode;
using Poco::JSON::Array;
using Poco::JSON::Object;

Poco::Dynamic::Var opt_time(const std::optional<std::chrono::system_clock::time_point>& t) {
  return t ? Poco::Dynamic::Var(rfc3339(*t)) : Poco::Dynamic::Var();
}

Object string_map(const std::map<std::string, std::string>& m) {
  Object o;
  for (const auto& [k, v] : m)
    o.set(k, v);
  return o;
}

Object sandbox_json(const core::SandboxView& v) {
  Object o;
  o.set("id", v.row.id);
  o.set("status", std::string(core::to_string(v.status)));
  o.set("profile", v.row.profile);
  o.set("workspace_id", v.row.workspace_id);
  o.set("key", v.row.key ? Poco::Dynamic::Var(*v.row.key) : Poco::Dynamic::Var());
  o.set("labels", string_map(v.row.labels));
  Array caps;
  for (const auto& c : v.capabilities)
    caps.add(c);
  o.set("capabilities", caps);
  o.set("session_id", v.session ? Poco::Dynamic::Var(v.session->id) : Poco::Dynamic::Var());
  // How berthd reaches the session (driver.h: berth_session_info.endpoint, "<transport>:<address>"), e.g. "agent",
  // or "engine-exec" for a docker/podman session that fell back; null without a session or a driver that says none.
  const auto transport = v.session ? core::transport_of(v.session->endpoint) : std::nullopt;
  o.set("transport", transport ? Poco::Dynamic::Var(*transport) : Poco::Dynamic::Var());
  o.set("created_at", rfc3339(v.row.created_at));
  o.set("expires_at", opt_time(v.row.expires_at));
  o.set("idle_expires_at", opt_time(v.row.idle_expires_at));
  if (v.status == core::SandboxStatus::failed) o.set("error", v.row.last_error);
  if (v.disk) {
    Object disk;
    disk.set("bytes", v.disk->total());
    disk.set("workspace_bytes", v.disk->workspace_bytes);
    disk.set("rootfs_bytes", v.disk->rootfs_bytes);
    disk.set("limit_bytes", v.disk->limit_bytes);
    disk.set("exceeded", v.disk->exceeded);
    disk.set("measured_at", rfc3339(v.disk->measured_at));
    o.set("disk", disk);
  } else {
    o.set("disk", Poco::Dynamic::Var());
  }
  return o;
}

Object workspace_json(const store::WorkspaceRow& w) {
  Object o;
  o.set("id", w.id);
  o.set("managed", w.managed);
  o.set("created_at", rfc3339(w.created_at));
  return o;
}

const std::string& sandbox_id(Exchange& ex) {
  return ex.params.at(0);
}

// ---- meta ---------------------------------------------------------------------------------------------------------

void health(Exchange& ex) {
  Object o;
  o.set("status", "ok");
  o.set("version", ex.ctx.settings.version);
  o.set("uptime_s",
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - ex.ctx.started).count());
  ex.send_json(200, o);
}

/** Constant-time comparison, so a wrong metrics token's timing does not reveal how much of it matched. */
bool same_secret(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

/**
 * The Prometheus scrape. Open like /health unless [metrics] bearer_token is set: then exactly one
 * `Authorization: Bearer <token>` header with that token (API keys do not count). 404 when metrics are disabled.
 */
void metrics(Exchange& ex) {
  auto* registry = ex.ctx.metrics;
  if (!registry) throw Error(ErrorCode::not_found, "metrics are disabled ([metrics] enabled = false)");
  const auto& token = ex.ctx.settings.metrics_bearer_token;
  if (!token.empty()) {
    std::size_t headers = 0;
    for (const auto& [name, value] : ex.request) {
      if (Poco::icompare(name, "Authorization") == 0) ++headers;
    }
    if (headers != 1 || !same_secret(ex.request.get("Authorization"), "Bearer " + token)) {
      throw Error(ErrorCode::unauthorized, "GET /metrics needs 'Authorization: Bearer <[metrics] bearer_token>'");
    }
  }
  std::string text = registry->render(ex.ctx.service.lifecycle_snapshot());
  ex.response.setStatusAndReason(Poco::Net::HTTPResponse::HTTP_OK);
  ex.response.setContentType(std::string(metrics::PrometheusMetrics::kContentType));
  // The body (some KiB) in one write rather than through send()'s 4 KiB stream buffer.
  ex.response.sendBuffer(text.data(), text.size());
}

/**
 * A profile as every caller sees it; `with_spec` (admins) adds `spec`, the profile's JSON object in the form
 * POST/PUT take (its env values included).
 */
Object profile_json(const core::SandboxService& service, const core::ProfileEntry& e, bool with_spec) {
  const auto& p = *e.profile;
  Object o;
  o.set("name", p.name);
  o.set("builtin", e.builtin);
  o.set("image", p.image);
  o.set("cpus", static_cast<double>(p.nano_cpus) / 1e9);
  o.set("memory_bytes", p.memory_bytes);
  o.set("pids", p.pids_limit);
  o.set("network", p.network);
  o.set("read_only_rootfs", p.read_only_rootfs);
  o.set("ttl_s", p.ttl ? Poco::Dynamic::Var(p.ttl->count()) : Poco::Dynamic::Var());
  o.set("idle_timeout_s", p.idle_timeout.count());
  o.set("disk_limit_bytes", p.disk_limit_bytes);
  Array caps;
  for (const auto& c : p.capabilities)
    caps.add(c);
  o.set("capabilities", caps);
  o.set("shell", p.shell);
  o.set("created_at", opt_time(e.created_at));
  o.set("updated_at", opt_time(e.updated_at));
  if (with_spec) {
    const std::string spec = service.profiles().to_json(p);
    if (!spec.empty()) o.set("spec", Poco::JSON::Parser().parse(spec));
  }
  return o;
}

Array profiles_json(const core::SandboxService& service, bool with_spec = false) {
  Array arr;
  for (const auto& e : service.profiles().list())
    arr.add(profile_json(service, e, with_spec));
  return arr;
}

void meta(Exchange& ex) {
  const auto& id = ex.ctx.service.driver_identity();
  Object driver;
  driver.set("name", id.name);
  driver.set("version", id.version);
  driver.set("abi", std::to_string(id.abi_major) + "." + std::to_string(id.abi_minor));
  Array caps;
  static const std::pair<std::uint64_t, const char*> kCaps[] = {{core::cap::exec, "exec"},
                                                                {core::cap::exec_stream, "exec_stream"},
                                                                {core::cap::exec_cancel, "exec_cancel"},
                                                                {core::cap::files, "files"},
                                                                {core::cap::volumes, "volumes"},
                                                                {core::cap::stats, "stats"},
                                                                {core::cap::readonly_rootfs, "readonly_rootfs"},
                                                                {core::cap::network_policy, "network_policy"},
                                                                {core::cap::process, "process"},
                                                                {core::cap::process_pty, "process_pty"}};
  for (const auto& [bit, name] : kCaps) {
    if (id.capabilities & bit) caps.add(std::string(name));
  }
  Object o;
  o.set("name", "berth");
  o.set("version", ex.ctx.settings.version);
  o.set("api_version", "v1");
  o.set("driver", driver);
  o.set("capabilities", caps);
  o.set("profiles", profiles_json(ex.ctx.service));
  // Running sessions by transport: how many fell back to the Engine exec path (each logs <engine>.agent.fallback).
  const auto snapshot = ex.ctx.service.lifecycle_snapshot();
  Object sessions, by_transport;
  sessions.set("running", snapshot.sessions_running);
  for (const auto& [transport, n] : snapshot.sessions_running_by_transport)
    by_transport.set(transport, n);
  sessions.set("by_transport", by_transport);
  o.set("sessions", sessions);
  ex.send_json(200, o);
}

void openapi(Exchange& ex) {
  ex.send_raw_json(200, openapi_json());  // built once from routes() and route_docs() (api/openapi.cpp)
}

void list_profiles(Exchange& ex) {
  Object o;
  o.set("items", profiles_json(ex.ctx.service, ex.admin));
  ex.send_json(200, o);
}

void get_profile(Exchange& ex) {
  ex.send_json(200, profile_json(ex.ctx.service, ex.ctx.service.profiles().get(ex.params.at(0)), ex.admin));
}

/** The body of POST/PUT without `name`, as JSON text for the catalog (which reads it by the config file's rules). */
std::string profile_spec(Object::Ptr body, const std::string& name) {
  if (body->has("name")) {
    const auto v = body->get("name");
    if (!v.isString() || v.extract<std::string>() != name) {
      throw Error(ErrorCode::validation_error, "name must be a string equal to the profile's name",
                  {{"field", "name"}});
    }
    body->remove("name");
  }
  std::ostringstream os;
  body->stringify(os);
  return os.str();
}

void create_profile(Exchange& ex) {
  auto body = ex.json_body();
  const auto v = body->get("name");
  if (!v.isString()) throw Error(ErrorCode::validation_error, "name is required (a string)", {{"field", "name"}});
  const std::string name = v.extract<std::string>();
  auto entry = ex.ctx.service.profiles().create(name, profile_spec(body, name));
  ex.send_json(201, profile_json(ex.ctx.service, entry, true));
}

void replace_profile(Exchange& ex) {
  const std::string& name = ex.params.at(0);
  auto entry = ex.ctx.service.profiles().replace(name, profile_spec(ex.json_body(), name));
  ex.send_json(200, profile_json(ex.ctx.service, entry, true));
}

void delete_profile(Exchange& ex) {
  ex.ctx.service.profiles().remove(ex.params.at(0));
  ex.send_empty(204);
}

// ---- sandboxes ------------------------------------------------------------------------------------------------------

core::CreateSandboxRequest parse_create(const Object::Ptr& body) {
  only_fields(body, {"profile", "ttl", "workspace_id", "key", "labels", "env"});
  core::CreateSandboxRequest rq;
  rq.profile = opt_string(body, "profile");
  if (auto ttl = opt_int(body, "ttl")) rq.ttl = std::chrono::seconds(*ttl);
  rq.workspace_id = opt_string(body, "workspace_id");
  rq.key = opt_string(body, "key");
  rq.labels = opt_string_map(body, "labels");
  rq.env = opt_string_map(body, "env");  // names, values and counts: checked by the core (core/limits.hpp)
  return rq;
}

void create_sandbox(Exchange& ex) {
  auto rq = parse_create(ex.json_body());
  auto result = ex.ctx.service.create_sandbox(ex.owner, rq);
  ex.send_json(result.created ? 201 : 200, sandbox_json(result.sandbox));
}

void list_sandboxes(Exchange& ex) {
  std::optional<core::SandboxStatus> status;
  if (auto s = ex.query("status")) {
    static const std::pair<const char*, core::SandboxStatus> kStatuses[] = {{"idle", core::SandboxStatus::idle},
                                                                            {"starting", core::SandboxStatus::starting},
                                                                            {"ready", core::SandboxStatus::ready},
                                                                            {"failed", core::SandboxStatus::failed},
                                                                            {"expired", core::SandboxStatus::expired}};
    for (const auto& [name, value] : kStatuses) {
      if (*s == name) status = value;
    }
    if (!status) throw Error(ErrorCode::validation_error, "unknown status '" + *s + "'", {{"field", "status"}});
  }
  std::optional<std::pair<std::string, std::string>> label;
  if (auto l = ex.query("label")) {
    auto eq = l->find('=');
    if (eq == std::string::npos || eq == 0) {
      throw Error(ErrorCode::validation_error, "label filter must be key=value", {{"field", "label"}});
    }
    label = std::make_pair(l->substr(0, eq), l->substr(eq + 1));
  }
  std::string cursor = ex.query("cursor").value_or("");
  if (!cursor.empty() && !core::is_valid_id(cursor, "sandbox")) {
    throw Error(ErrorCode::validation_error, "malformed cursor", {{"field", "cursor"}});
  }
  auto result = ex.ctx.service.list_sandboxes(ex.owner, status, label, ex.query_int("limit", 50, 1, 500), cursor);
  Array items;
  for (const auto& v : result.items)
    items.add(sandbox_json(v));
  Object o;
  o.set("items", items);
  o.set("next_cursor", result.next_cursor.empty() ? Poco::Dynamic::Var() : Poco::Dynamic::Var(result.next_cursor));
  ex.send_json(200, o);
}

void get_sandbox(Exchange& ex) {
  ex.send_json(200, sandbox_json(ex.ctx.service.get_sandbox(ex.owner, sandbox_id(ex))));
}

void start_sandbox(Exchange& ex) {
  ex.send_json(200, sandbox_json(ex.ctx.service.start(ex.owner, sandbox_id(ex))));
}

void stop_sandbox(Exchange& ex) {
  ex.ctx.service.stop(ex.owner, sandbox_id(ex));
  Object o;
  o.set("status", "stopped");
  ex.send_json(200, o);
}

void delete_sandbox(Exchange& ex) {
  ex.ctx.service.delete_sandbox(ex.owner, sandbox_id(ex));
  ex.send_empty(204);
}

void keepalive(Exchange& ex) {
  ex.ctx.service.keepalive(ex.owner, sandbox_id(ex));
  Object o;
  o.set("status", "ok");
  ex.send_json(200, o);
}

void extend_ttl(Exchange& ex) {
  auto body = ex.json_body();
  only_fields(body, {"extend_by"});
  auto by = opt_int(body, "extend_by");
  if (!by) throw Error(ErrorCode::validation_error, "'extend_by' (seconds) is required", {{"field", "extend_by"}});
  ex.send_json(200, sandbox_json(ex.ctx.service.extend_ttl(ex.owner, sandbox_id(ex), std::chrono::seconds(*by))));
}

// ---- exec -----------------------------------------------------------------------------------------------------------

/** The JSON body of an exec's answer (python/exec, shell/exec; also the `result` event of their event stream). */
Object exec_json(const core::ExecOutcome& r) {
  Object o;
  o.set("success", r.success);
  o.set("output", to_utf8_lossy(r.output));
  o.set("error", to_utf8_lossy(r.error));
  o.set("exit_code", r.exit_code ? Poco::Dynamic::Var(*r.exit_code) : Poco::Dynamic::Var());
  o.set("timed_out", r.timed_out);
  o.set("execution_id", r.execution_id);
  o.set("execution_time_ms", r.duration_ms);
  if (r.cell) {
    const auto& c = *r.cell;
    const auto parse = [](const std::string& json) -> Poco::Dynamic::Var {
      // Any JSON value: Poco's parser takes an object or an array at the top only (a handler may return "ping").
      Poco::JSON::Parser parser;
      return parser.parse("[" + json + "]").extract<Poco::JSON::Array::Ptr>()->get(0);
    };
    o.set("context_id", c.context_id.empty() ? Poco::Dynamic::Var() : Poco::Dynamic::Var(c.context_id));
    o.set("execution_count", c.execution_count);
    o.set("context_restarted", c.context_restarted);
    o.set("restart_reason", c.restart_reason.empty() ? Poco::Dynamic::Var() : Poco::Dynamic::Var(c.restart_reason));
    o.set("data", c.data_json.empty() ? Poco::Dynamic::Var() : parse(c.data_json));
    if (!c.result_json.empty()) o.set("result", parse(c.result_json));
    if (c.error_name.empty()) {
      o.set("exception", Poco::Dynamic::Var());
    } else {
      Object e;
      e.set("name", to_utf8_lossy(c.error_name));
      e.set("value", to_utf8_lossy(c.error_value));
      e.set("traceback", to_utf8_lossy(c.traceback));
      o.set("exception", e);
    }
  }
  return o;
}

void send_exec(Exchange& ex, const core::ExecOutcome& r) {
  ex.send_json(200, exec_json(r));
}

/**
 * Whether the exec answers as Server-Sent Events: `Accept` names `text/event-stream` (anywhere in its list), the
 * request is HTTP/1.1 (a stream needs chunked framing, which HTTP/1.0 does not have: RFC 9112, section 6.1), and it
 * has no Idempotency-Key (its answer is stored and replayed whole, as JSON). Otherwise the ordinary JSON answer.
 */
bool wants_event_stream(const Exchange& ex) {
  return Poco::toLower(ex.request.get("Accept", "")).find("text/event-stream") != std::string::npos &&
         ex.request.getVersion() == Poco::Net::HTTPMessage::HTTP_1_1 && !ex.request.has("Idempotency-Key");
}

/**
 * The bytes at the end of `text` that begin a UTF-8 sequence the text does not complete (0-3): an output chunk can
 * end inside a character, whose rest comes with the next chunk of the same stream.
 */
std::size_t incomplete_utf8_tail(std::string_view text) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  for (std::size_t back = 1; back <= 3 && back <= text.size(); ++back) {
    const unsigned char b = bytes[text.size() - back];
    if ((b & 0xC0) == 0x80) continue;  // a continuation byte: the sequence starts further back
    // The lead byte says the sequence's length (RFC 3629): 110xxxxx 2, 1110xxxx 3, 11110xxx 4; ASCII or an invalid
    // byte stands alone (to_utf8_lossy replaces what is invalid).
    const std::size_t length = (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 1;
    return length > back ? back : 0;
  }
  return 0;
}

/**
 * One exec answered as Server-Sent Events (the WHATWG HTML standard, "Server-sent events"; `curl -N`, EventSource):
 * `stdout` and `stderr` events while the program runs, each `id: <seq>` and `data: {"seq", "stream", "time", "data"}`
 * (seq counts the exec's chunks over both streams from 0; time is when berthd received the chunk, RFC 3339 with
 * milliseconds; data is the chunk as UTF-8, a character split between chunks sent whole with the next one), then
 * one `result` event whose data is exactly the JSON the same call answers without streaming, or one `error` event
 * with the error envelope, then the response ends. The response (200, chunked) starts with the first event, so a
 * call refused before any output (404, 409, 400 ...) is an ordinary JSON error with its status. A client that goes
 * away cancels the exec at its next output. Used on the request's worker thread only.
 */
class ExecEventStream {
 public:
  explicit ExecEventStream(Exchange& ex) : ex_(ex) {}

  /** The exec's ExecChunkSink: false (cancel the exec) once the client is gone. */
  bool chunk(const core::ExecChunk& c) {
    const bool err = c.stream == core::Stream::err;
    std::string& carry = err ? err_carry_ : out_carry_;
    std::string text = carry;
    text.append(c.data);
    const std::size_t keep = incomplete_utf8_tail(text);
    carry = text.substr(text.size() - keep);
    text.resize(text.size() - keep);
    next_seq_ = std::max(next_seq_, c.sequence + 1);
    if (text.empty()) return true;
    return output(err ? "stderr" : "stdout", c.sequence, c.at, text);
  }

  /** The final event: the non-streaming answer's JSON. Sends what is left of a split character first. */
  void result(const Object& body) {
    const auto now = std::chrono::system_clock::now();
    if (!out_carry_.empty()) output("stdout", next_seq_++, now, std::exchange(out_carry_, {}));
    if (!err_carry_.empty()) output("stderr", next_seq_++, now, std::exchange(err_carry_, {}));
    event("result", "", body);
  }

  /** The final event after a failure once the stream started: the error envelope, as a JSON answer carries it. */
  void error(const std::string& code, const std::string& message) {
    Object err;
    err.set("code", code);
    err.set("message", to_utf8_lossy(message));
    err.set("request_id", ex_.request_id);
    err.set("details", Object());
    Object body;
    body.set("error", err);
    event("error", "", body);
  }

  bool started() const { return out_ != nullptr; }

  /** An SSE comment line (ignored by clients): keeps the connection alive; false once the client is gone. */
  bool keepalive() {
    if (out_ == nullptr) begin();
    *out_ << ": keepalive\n\n";
    out_->flush();
    return static_cast<bool>(*out_);
  }

 private:
  bool output(const char* stream, std::uint64_t seq, std::chrono::system_clock::time_point at,
              const std::string& text) {
    Object o;
    o.set("seq", seq);
    o.set("stream", stream);
    o.set("time", rfc3339(at));
    o.set("data", to_utf8_lossy(text));
    return event(stream, std::to_string(seq), o);
  }

  void begin() {
    ex_.response.setStatus(Poco::Net::HTTPResponse::HTTP_OK);
    ex_.response.setContentType("text/event-stream; charset=utf-8");
    ex_.response.set("Cache-Control", "no-cache");
    ex_.response.set("X-Accel-Buffering", "no");  // a proxy in front (nginx) must not hold the events back
    ex_.response.setChunkedTransferEncoding(true);
    out_ = &ex_.response.send();
  }

  bool event(const char* name, const std::string& id, const Object& data) {
    if (out_ == nullptr) begin();
    std::ostringstream frame;
    frame << "event: " << name << "\n";
    if (!id.empty()) frame << "id: " << id << "\n";
    frame << "data: ";
    data.stringify(frame);  // one line: JSON strings escape their line breaks
    frame << "\n\n";
    *out_ << frame.str();
    out_->flush();  // one chunk per event, on the wire now
    return static_cast<bool>(*out_);
  }

  Exchange& ex_;
  std::ostream* out_ = nullptr;
  std::string out_carry_;
  std::string err_carry_;
  std::uint64_t next_seq_ = 0;
};

/** Runs an exec (`run`, given the chunk sink or none) and answers it as JSON, or as Server-Sent Events when the
 *  client asks for them. */
void answer_exec(Exchange& ex, const std::function<core::ExecOutcome(const core::ExecChunkSink&)>& run) {
  if (!wants_event_stream(ex)) {
    send_exec(ex, run({}));
    return;
  }
  ExecEventStream events(ex);
  core::ExecOutcome outcome;
  try {
    outcome = run([&](const core::ExecChunk& c) { return events.chunk(c); });
  } catch (const Error& e) {
    if (!events.started()) throw;  // nothing sent yet: the ordinary JSON error with its status
    events.error(std::string(core::to_string(e.code())), e.what());
    return;
  } catch (const store::StoreUnavailable& e) {
    if (!events.started()) throw;
    events.error("store_unavailable", e.what());
    return;
  } catch (const std::exception& e) {
    if (!events.started()) throw;
    log::error("api.exec_stream_failed", {{"request_id", ex.request_id}, {"error", e.what()}});
    events.error("internal", "the exec failed after its output began; see the server log for request " + ex.request_id);
    return;
  }
  events.result(exec_json(outcome));
}

std::optional<std::chrono::seconds> exec_timeout(const Object::Ptr& body) {
  auto t = opt_int(body, "timeout");
  if (!t) return std::nullopt;
  return std::chrono::seconds(*t);
}

/** A boolean field; false when absent or null. validation_error for any other type. */
bool opt_bool(const Object::Ptr& body, const std::string& field) {
  if (!body->has(field) || body->isNull(field)) return false;
  auto v = body->get(field);
  if (v.type() != typeid(bool))
    throw Error(ErrorCode::validation_error, "'" + field + "' must be a boolean", {{"field", field}});
  return v.extract<bool>();
}

/** An execution as GET .../executions/{id} answers it (docs/api.md, "Async executions"). */
Object execution_json(const core::ExecutionView& v) {
  Object o;
  o.set("id", v.id);
  o.set("sandbox_id", v.sandbox_id);
  o.set("exec_type", v.kind);
  o.set("status", std::string(core::to_string(v.status)));
  o.set("async", v.async);
  o.set("created_at", rfc3339(v.created_at));
  o.set("finished_at", opt_time(v.finished_at));
  o.set("reason", v.reason.empty() ? Poco::Dynamic::Var() : Poco::Dynamic::Var(to_utf8_lossy(v.reason)));
  o.set("error_code", v.error_code.empty() ? Poco::Dynamic::Var() : Poco::Dynamic::Var(v.error_code));
  o.set("result", v.outcome ? Poco::Dynamic::Var(exec_json(*v.outcome)) : Poco::Dynamic::Var());
  return o;
}

/** 202 for an async start: the execution (status running) and where to find it. */
void send_started(Exchange& ex, const core::ExecutionView& v) {
  ex.response.set("Location", "/v1/sandboxes/" + v.sandbox_id + "/executions/" + v.id);
  ex.send_json(202, execution_json(v));
}

void python_exec(Exchange& ex) {
  auto body = ex.json_body();
  only_fields(body, {"code", "timeout", "context_id", "stateless", "event", "async"});
  core::PythonExecOptions opts;
  if (auto c = opt_string(body, "context_id")) opts.context_id = *c;
  opts.stateless = opt_bool(body, "stateless");
  if (opts.stateless && body->has("context_id") && !body->isNull("context_id")) {
    throw Error(ErrorCode::validation_error, "give either 'stateless' or 'context_id', not both",
                {{"field", "context_id"}});
  }
  if (body->has("event") && !body->isNull("event")) {
    std::ostringstream event;
    Poco::JSON::Stringifier::condense(body->get("event"), event);
    opts.event_json = event.str();
  }
  const std::string code = opts.event_json ? opt_string(body, "code").value_or("") : req_string(body, "code");
  const auto timeout = exec_timeout(body);
  if (opt_bool(body, "async")) {
    send_started(
        ex, ex.ctx.service.start_async(ex.owner, sandbox_id(ex), core::ExecKind::python, code, timeout, "", &opts));
    return;
  }
  answer_exec(ex, [&](const core::ExecChunkSink& sink) {
    return ex.ctx.service.run_python(ex.owner, sandbox_id(ex), code, timeout, opts, sink);
  });
}

Object context_json(const core::ContextView& v) {
  Object o;
  o.set("id", v.id);
  o.set("sandbox_id", v.sandbox_id);
  o.set("cwd", to_utf8_lossy(v.cwd));
  o.set("env", string_map(v.env));
  o.set("created_at", rfc3339(v.created_at));
  o.set("last_used_at", opt_time(v.last_used_at));
  o.set("execution_count", v.execution_count);
  o.set("running", v.running);
  o.set("busy", v.busy);
  o.set("python_version", v.python_version.empty() ? Poco::Dynamic::Var() : Poco::Dynamic::Var(v.python_version));
  return o;
}

void create_context(Exchange& ex) {
  core::ContextSpec spec;
  auto body = ex.json_body();  // an empty body is {}
  only_fields(body, {"cwd", "env"});
  spec.cwd = opt_string(body, "cwd").value_or("");
  spec.env = opt_string_map(body, "env");  // names, values and counts: checked by the core (core/limits.hpp)
  ex.send_json(201, context_json(ex.ctx.service.create_context(ex.owner, sandbox_id(ex), spec)));
}

void list_contexts(Exchange& ex) {
  Array items;
  for (const auto& v : ex.ctx.service.list_contexts(ex.owner, sandbox_id(ex)))
    items.add(context_json(v));
  Object o;
  o.set("items", items);
  ex.send_json(200, o);
}

void get_context(Exchange& ex) {
  ex.send_json(200, context_json(ex.ctx.service.get_context(ex.owner, sandbox_id(ex), ex.params.at(1))));
}

void delete_context(Exchange& ex) {
  ex.ctx.service.delete_context(ex.owner, sandbox_id(ex), ex.params.at(1));
  ex.send_empty(204);
}

void shell_exec(Exchange& ex) {
  auto body = ex.json_body();
  only_fields(body, {"command", "timeout", "cwd", "cwd_b64", "async"});
  auto cwd = opt_string(body, "cwd");
  if (body->has("cwd_b64")) {
    if (cwd)
      throw Error(ErrorCode::validation_error, "give either 'cwd' or 'cwd_b64', not both", {{"field", "cwd_b64"}});
    cwd = base64_decode(req_string(body, "cwd_b64"), "cwd_b64");
  }
  const std::string command = req_string(body, "command");
  const auto timeout = exec_timeout(body);
  if (opt_bool(body, "async")) {
    send_started(ex, ex.ctx.service.start_async(ex.owner, sandbox_id(ex), core::ExecKind::shell, command, timeout,
                                                cwd.value_or(""), nullptr));
    return;
  }
  answer_exec(ex, [&](const core::ExecChunkSink& sink) {
    return ex.ctx.service.exec(ex.owner, sandbox_id(ex), core::ExecKind::shell, command, timeout, cwd.value_or(""),
                               sink);
  });
}

void get_execution(Exchange& ex) {
  ex.send_json(200, execution_json(ex.ctx.service.execution(ex.owner, sandbox_id(ex), ex.params.at(1))));
}

void cancel_execution(Exchange& ex) {
  ex.json_body();  // read whatever came (an empty body is {}), so that the connection stays in step
  ex.send_json(200, execution_json(ex.ctx.service.cancel_execution(ex.owner, sandbox_id(ex), ex.params.at(1))));
}

/**
 * GET .../executions/{id}/events: the execution's output as Server-Sent Events (as a streamed exec: `stdout` and
 * `stderr` events with `id: <seq>`), from the sequence number after `Last-Event-ID` (or `?after=`; from the start
 * without either), live until it ends, then its `result` event, or an `error` event when it ended without a result.
 * Chunks dropped from the bounded buffer are skipped (the seq numbers show the gap). A comment every 15 s keeps the
 * connection alive and finds a client that left. HTTP/1.0 (no chunked framing) gets the execution's JSON instead.
 */
void execution_events(Exchange& ex) {
  const std::string eid = ex.params.at(1);
  std::optional<std::uint64_t> after;
  std::string last = ex.request.get("Last-Event-ID", "");
  if (last.empty()) last = ex.query("after").value_or("");
  if (!last.empty()) {
    std::uint64_t n = 0;
    const auto [end, ec] = std::from_chars(last.data(), last.data() + last.size(), n);
    if (ec != std::errc() || end != last.data() + last.size()) {
      throw Error(ErrorCode::validation_error, "Last-Event-ID (or after) must be a sequence number",
                  {{"field", "Last-Event-ID"}});
    }
    after = n;
  }
  auto& service = ex.ctx.service;
  auto first = service.execution_events(ex.owner, sandbox_id(ex), eid, after, std::chrono::milliseconds(0));
  if (ex.request.getVersion() != Poco::Net::HTTPMessage::HTTP_1_1) {
    ex.send_json(200, execution_json(service.execution(ex.owner, sandbox_id(ex), eid)));
    return;
  }
  ExecEventStream events(ex);
  try {
    auto page = std::move(first);
    for (;;) {
      for (const auto& c : page.chunks) {
        if (!events.chunk(core::ExecChunk{c.stream, c.seq, c.at, c.data})) return;  // the client left
        after = c.seq;
      }
      if (page.finished) break;
      if (ex.ctx.shutting_down.load()) {
        events.error("shutting_down", "berthd is shutting down; re-attach with Last-Event-ID to another instance");
        return;
      }
      if (page.chunks.empty() && !events.keepalive()) return;
      page = service.execution_events(ex.owner, sandbox_id(ex), eid, after, std::chrono::seconds(15));
    }
    const auto v = service.execution(ex.owner, sandbox_id(ex), eid);
    if (v.outcome) {
      events.result(exec_json(*v.outcome));
    } else {
      events.error(v.error_code.empty() ? std::string(core::to_string(v.status)) : v.error_code, v.reason);
    }
  } catch (const Error& e) {  // the sandbox went away, the store failed: the stream ends with what happened
    if (!events.started()) throw;
    events.error(std::string(core::to_string(e.code())), e.what());
  } catch (const store::StoreUnavailable& e) {
    if (!events.started()) throw;
    events.error("store_unavailable", e.what());
  }
}

void history(Exchange& ex) {
  auto page = ex.ctx.service.history(ex.owner, sandbox_id(ex), ex.query("exec_type").value_or(""),
                                     ex.query_int("limit", 50, 1, 500), ex.query_int("offset", 0, 0, 1 << 30));
  Array entries;
  for (const auto& r : page.entries) {
    Object o;
    o.set("id", r.id);
    // null: an async execution that has no session yet (running) or ended before it had one
    o.set("session_id", r.session_id.empty() ? Poco::Dynamic::Var() : Poco::Dynamic::Var(r.session_id));
    o.set("exec_type", r.kind);
    o.set("code", to_utf8_lossy(r.code));
    o.set("success", r.success);
    o.set("exit_code", r.exit_code ? Poco::Dynamic::Var(*r.exit_code) : Poco::Dynamic::Var());
    o.set("output", to_utf8_lossy(r.output));
    o.set("error", to_utf8_lossy(r.error));
    o.set("truncated", r.truncated);
    o.set("execution_time_ms", r.duration_ms);
    o.set("created_at", rfc3339(r.created_at));
    entries.add(o);
  }
  Object o;
  o.set("entries", entries);
  o.set("total", page.total);
  o.set("bytes_capped", page.bytes_capped);
  ex.send_json(200, o);
}

// ---- files ----------------------------------------------------------------------------------------------------------

/** The target path: query `path` or `path_b64` (raw bytes); `fallback` when neither is given, else required. */
std::string path_param(Exchange& ex, const char* fallback = nullptr) {
  auto p = query_path(ex);
  if (!p) {
    if (fallback) return fallback;
    throw Error(ErrorCode::validation_error, "query parameter 'path' (or 'path_b64') is required", {{"field", "path"}});
  }
  return *p;
}

void read_file(Exchange& ex) {
  auto path = path_param(ex);
  auto content = ex.ctx.service.read_file(ex.owner, sandbox_id(ex), path, ex.ctx.settings.max_body);
  if (!is_utf8(content)) {
    throw Error(ErrorCode::validation_error, "file is not UTF-8 text; use filesystem/download for binary files",
                {{"path", to_utf8_lossy(path)}});
  }
  Object o;
  set_name(o, "path", path);
  o.set("content", content);
  ex.send_json(200, o);
}

void write_file(Exchange& ex) {
  auto body = ex.json_body();
  only_fields(body, {"path", "path_b64", "content", "mode"});
  auto path = body_path(body);
  if (!path) throw Error(ErrorCode::validation_error, "'path' (or 'path_b64') is required", {{"field", "path"}});
  auto content = req_string(body, "content");
  auto mode = opt_int(body, "mode").value_or(0644);
  if (mode < 0 || mode > 0777) throw Error(ErrorCode::validation_error, "mode must be between 0 and 0777");
  std::size_t offset = 0;
  ex.ctx.service.write_file(
      ex.owner, sandbox_id(ex), *path, content.size(),
      [&](std::uint8_t* buf, std::size_t cap) -> std::int64_t {
        std::size_t n = std::min(cap, content.size() - offset);
        std::memcpy(buf, content.data() + offset, n);
        offset += n;
        return static_cast<std::int64_t>(n);
      },
      static_cast<std::uint32_t>(mode));
  Object o;
  o.set("status", "ok");
  set_name(o, "path", *path);
  o.set("size", static_cast<std::uint64_t>(content.size()));
  ex.send_json(200, o);
}

void delete_file(Exchange& ex) {
  ex.ctx.service.remove_path(ex.owner, sandbox_id(ex), path_param(ex));
  Object o;
  o.set("status", "ok");
  ex.send_json(200, o);
}

void list_directory(Exchange& ex) {
  auto path = path_param(ex, ".");
  const auto max = static_cast<int>(ex.ctx.service.settings().dir_page_max);
  const auto limit = ex.query_int("limit", max, 1, max);
  // The cursor is opaque to clients: base64 of the previous page's last name (raw bytes).
  const auto cursor = ex.query("cursor");
  auto page =
      ex.ctx.service.list_dir(ex.owner, sandbox_id(ex), path, cursor ? base64_decode(*cursor, "cursor") : std::string(),
                              static_cast<std::size_t>(limit));
  // Written as text, entry by entry: a JSON object tree costs kilobytes per entry, this about its own length.
  std::string body = "{\"path\":" + Poco::toJSON(to_utf8_lossy(path));
  if (!is_utf8(path)) body += ",\"path_b64\":" + Poco::toJSON(base64_encode(path));
  body += ",\"entries\":[";
  bool first = true;
  for (const auto& e : page.entries) {
    body += first ? "{\"name\":" : ",{\"name\":";
    first = false;
    body += Poco::toJSON(to_utf8_lossy(e.name));
    if (!is_utf8(e.name)) body += ",\"name_b64\":" + Poco::toJSON(base64_encode(e.name));
    body += ",\"type\":\"" + std::string(core::to_string(e.type)) + "\",\"size\":" + std::to_string(e.size) +
            ",\"mode\":" + std::to_string(e.mode) + "}";
  }
  body += "],\"next_cursor\":";
  body += page.next_cursor ? Poco::toJSON(base64_encode(*page.next_cursor)) : std::string("null");
  body += "}";
  ex.send_raw_json(200, body);
}

/** Spools the multipart "file" part to a temporary file, enforcing the size limit while reading. */
class SpoolingPartHandler final : public Poco::Net::PartHandler {
 public:
  explicit SpoolingPartHandler(std::uint64_t limit) : limit_(limit) {}

  void handlePart(const Poco::Net::MessageHeader& header, std::istream& stream) override {
    std::string disposition;
    Poco::Net::NameValueCollection params;
    Poco::Net::MessageHeader::splitParameters(header.get("Content-Disposition", ""), disposition, params);
    if (params.get("name", "") != "file") {
      char sink[4096];
      while (stream.read(sink, sizeof sink) || stream.gcount() > 0) {
      }
      return;
    }
    filename_ = params.get("filename", "");
    std::ofstream out(file_.path(), std::ios::binary | std::ios::trunc);
    char buf[65536];
    while (stream) {
      stream.read(buf, sizeof buf);
      auto n = static_cast<std::uint64_t>(stream.gcount());
      size_ += n;
      if (size_ > limit_) {
        throw Error(ErrorCode::payload_too_large,
                    "uploaded file is larger than the limit of " + std::to_string(limit_) + " bytes");
      }
      out.write(buf, static_cast<std::streamsize>(n));
    }
    if (!out) throw Error(ErrorCode::internal, "could not spool the upload to disk");
    received_ = true;
  }

  bool received() const { return received_; }
  std::uint64_t size() const { return size_; }
  const std::string& filename() const { return filename_; }
  std::string spool_path() const { return file_.path(); }

 private:
  std::uint64_t limit_;
  Poco::TemporaryFile file_;
  bool received_ = false;
  std::uint64_t size_ = 0;
  std::string filename_;
};

void upload(Exchange& ex) {
  if (ex.request.getContentType().rfind("multipart/form-data", 0) != 0) {
    throw Error(ErrorCode::invalid_request, "upload expects multipart/form-data with parts 'file' and 'path'");
  }
  auto limit = ex.ctx.settings.max_file_size;
  if (ex.request.hasContentLength() && static_cast<std::uint64_t>(ex.request.getContentLength64()) > limit + 65536) {
    throw Error(ErrorCode::payload_too_large, "upload is larger than the limit of " + std::to_string(limit) + " bytes");
  }
  SpoolingPartHandler part(limit);
  Poco::Net::HTMLForm form;
  form.setFieldLimit(1000);
  try {
    form.load(ex.request, ex.request.stream(), part);
  } catch (const Error&) {
    throw;
  } catch (const Poco::Exception& e) {
    throw Error(ErrorCode::invalid_request, "malformed multipart body: " + e.message());
  }
  if (!part.received())
    throw Error(ErrorCode::validation_error, "multipart part 'file' is missing", {{"field", "file"}});
  if (form.has("path") && form.has("path_b64")) {
    throw Error(ErrorCode::validation_error, "give either 'path' or 'path_b64', not both", {{"field", "path_b64"}});
  }
  std::string path = form.has("path_b64") ? base64_decode(form.get("path_b64"), "path_b64") : form.get("path", "");
  if (path.empty()) path = part.filename();
  if (path.empty()) throw Error(ErrorCode::validation_error, "multipart field 'path' is missing", {{"field", "path"}});
  std::ifstream in(part.spool_path(), std::ios::binary);
  ex.ctx.service.write_file(ex.owner, sandbox_id(ex), path, part.size(),
                            [&](std::uint8_t* buf, std::size_t cap) -> std::int64_t {
                              in.read(reinterpret_cast<char*>(buf), static_cast<std::streamsize>(cap));
                              if (in.bad()) return -1;
                              return in.gcount();
                            });
  Object o;
  o.set("status", "ok");
  set_name(o, "path", path);
  o.set("size", part.size());
  ex.send_json(200, o);
}

void download(Exchange& ex) {
  auto path = path_param(ex);
  std::ostream* out = nullptr;
  std::uint64_t sent = 0;
  auto limit = ex.ctx.settings.max_file_size;
  auto begin = [&] {
    auto slash = path.find_last_of('/');
    std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
    ex.response.setStatus(Poco::Net::HTTPResponse::HTTP_OK);
    ex.response.setContentType("application/octet-stream");
    ex.response.set("Content-Disposition", content_disposition(name));
    ex.response.setChunkedTransferEncoding(true);
    out = &ex.response.send();
  };
  ex.ctx.service.download(ex.owner, sandbox_id(ex), path, [&](std::string_view chunk) {
    sent += chunk.size();
    if (sent > limit) {
      if (!out) {
        throw Error(ErrorCode::payload_too_large, "file is larger than the limit of " + std::to_string(limit));
      }
      return false;  // mid-stream: abort; the client sees a truncated chunked response
    }
    if (!out) begin();
    out->write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    return static_cast<bool>(*out);
  });
  if (!out) begin();  // an empty file
}

// ---- workspaces and admin -------------------------------------------------------------------------------------------

void create_workspace(Exchange& ex) {
  auto body = ex.json_body();
  only_fields(body, {});
  ex.send_json(201, workspace_json(ex.ctx.service.create_workspace(ex.owner)));
}

void get_workspace(Exchange& ex) {
  ex.send_json(200, workspace_json(ex.ctx.service.get_workspace(ex.owner, ex.params.at(0))));
}

void delete_workspace(Exchange& ex) {
  ex.ctx.service.delete_workspace(ex.owner, ex.params.at(0));
  ex.send_empty(204);
}

void run_gc(Exchange& ex) {
  auto report = ex.ctx.service.run_cleanup();
  ex.ctx.idempotency.purge();
  auto list = [](const std::vector<std::string>& v) {
    Array a;
    for (const auto& s : v)
      a.add(s);
    return a;
  };
  Object o;
  o.set("idle_stopped", list(report.idle_stopped));
  o.set("expired_deleted", list(report.expired_deleted));
  o.set("orphans_removed", list(report.orphans_removed));
  o.set("workspaces_removed", list(report.workspaces_removed));
  o.set("dead_sessions", list(report.dead_sessions));
  o.set("skipped_stale", list(report.skipped_stale));
  o.set("skipped_in_use", list(report.skipped_in_use));
  o.set("skipped_leased", list(report.skipped_leased));
  o.set("disk_stopped", list(report.disk_stopped));
  o.set("failed", list(report.failed));
  ex.send_json(200, o);
}

}  // namespace

const std::vector<Route>& routes() {
  using I = Route::Idempotency;
  // method, pattern, handler, heavy (admission), public (no auth), Idempotency-Key treatment.
  // Every POST replays under an Idempotency-Key except the streamed upload, which refuses the header.
  static const std::vector<Route> kRoutes = {
      {"GET", "/health", health, false, true},
      {"GET", "/meta", meta, false, true},
      {"GET", "/openapi.json", openapi, false, true},
      {"GET", "/metrics", metrics, false, true},
      {"GET", "/v1/profiles", list_profiles},
      {"GET", "/v1/profiles/{}", get_profile},
      {"POST", "/v1/profiles", create_profile, false, false, I::replay, true},
      {"PUT", "/v1/profiles/{}", replace_profile, false, false, I::not_applicable, true},
      {"DELETE", "/v1/profiles/{}", delete_profile, false, false, I::not_applicable, true},
      {"POST", "/v1/sandboxes", create_sandbox, false, false, I::replay},
      {"GET", "/v1/sandboxes", list_sandboxes},
      {"GET", "/v1/sandboxes/{}", get_sandbox},
      {"DELETE", "/v1/sandboxes/{}", delete_sandbox},
      {"POST", "/v1/sandboxes/{}/start", start_sandbox, true, false, I::replay},
      {"POST", "/v1/sandboxes/{}/stop", stop_sandbox, false, false, I::replay},
      {"POST", "/v1/sandboxes/{}/keepalive", keepalive, false, false, I::replay},
      {"POST", "/v1/sandboxes/{}/extend_ttl", extend_ttl, false, false, I::replay},
      {"POST", "/v1/sandboxes/{}/python/exec", python_exec, true, false, I::replay},
      {"POST", "/v1/sandboxes/{}/contexts", create_context, true, false, I::replay},
      {"GET", "/v1/sandboxes/{}/contexts", list_contexts},
      {"GET", "/v1/sandboxes/{}/contexts/{}", get_context},
      {"DELETE", "/v1/sandboxes/{}/contexts/{}", delete_context},
      {"POST", "/v1/sandboxes/{}/shell/exec", shell_exec, true, false, I::replay},
      {"GET", "/v1/sandboxes/{}/executions/{}", get_execution},
      {"GET", "/v1/sandboxes/{}/executions/{}/events", execution_events},
      {"POST", "/v1/sandboxes/{}/executions/{}/cancel", cancel_execution, false, false, I::replay},
      {"GET", "/v1/sandboxes/{}/terminal", terminal},
      {"GET", "/v1/sandboxes/{}/history", history},
      {"GET", "/v1/sandboxes/{}/filesystem/files", read_file, true},
      {"PUT", "/v1/sandboxes/{}/filesystem/files", write_file, true},
      {"DELETE", "/v1/sandboxes/{}/filesystem/files", delete_file, true},
      {"GET", "/v1/sandboxes/{}/filesystem/directories", list_directory, true},
      {"POST", "/v1/sandboxes/{}/filesystem/upload", upload, true, false, I::refuse},
      {"GET", "/v1/sandboxes/{}/filesystem/download", download, true},
      {"POST", "/v1/workspaces", create_workspace, false, false, I::replay},
      {"GET", "/v1/workspaces/{}", get_workspace},
      {"DELETE", "/v1/workspaces/{}", delete_workspace},
      {"POST", "/v1/admin/gc/run", run_gc, false, false, I::replay, true},
  };
  return kRoutes;
}

}  // namespace berth::api
