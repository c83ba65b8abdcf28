// What the two SQL stores (sqlite_store.cpp, mysql_store.cpp) share to turn values and rows into the store's types:
// times are integer milliseconds since the Unix epoch (UTC), string maps are JSON objects, and each read_* function
// takes its columns in the order of the matching k*Columns list of the store. Pure functions over Poco::Data record
// sets: thread-safe as long as a record set is used by one thread. Errors: Poco exceptions from a value that does
// not convert (a corrupt row), which the stores turn into their own errors.
#pragma once

#include <Poco/Data/RecordSet.h>
#include <Poco/Data/Statement.h>
#include <Poco/Dynamic/Var.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Nullable.h>

#include <chrono>
#include <cstddef>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "core/instance_store.hpp"
#include "store/store.hpp"

namespace berth::store::rows {

using Poco::Int64;
using Poco::Data::RecordSet;
using Poco::Data::Statement;

inline Int64 to_ms(TimePoint t) {
  return std::chrono::floor<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

inline TimePoint from_ms(Int64 ms) {
  return TimePoint(std::chrono::duration_cast<TimePoint::duration>(std::chrono::milliseconds(ms)));
}

inline Poco::Nullable<Int64> nullable_ms(const std::optional<TimePoint>& t) {
  return t ? Poco::Nullable<Int64>(to_ms(*t)) : Poco::Nullable<Int64>();
}

inline Poco::Nullable<std::string> nullable_text(const std::optional<std::string>& s) {
  return s ? Poco::Nullable<std::string>(*s) : Poco::Nullable<std::string>();
}

inline std::string to_json(const StringMap& map) {
  Poco::JSON::Object object;
  for (const auto& [k, v] : map)
    object.set(k, v);
  std::ostringstream out;
  object.stringify(out);
  return out.str();
}

inline StringMap from_json(const std::string& text) {
  StringMap map;
  if (text.empty()) return map;
  Poco::JSON::Parser parser;
  const auto object = parser.parse(text).extract<Poco::JSON::Object::Ptr>();
  if (!object) return map;
  for (const auto& [k, v] : *object)
    map[k] = v.isEmpty() ? std::string() : v.toString();
  return map;
}

/** Reads one row of a RecordSet left to right, in the order of the SELECT's column list (MySQL BLOB columns arrive as
 *  Poco::Data::BLOB, which Var converts to a string). */
class RowReader {
 public:
  RowReader(const RecordSet& rs, std::size_t row) : rs_(rs), row_(row) {}

  std::optional<std::string> optional_text() {
    auto v = next();
    if (!v) return std::nullopt;
    return v->convert<std::string>();
  }
  std::string text() { return optional_text().value_or(std::string()); }
  std::optional<Int64> optional_integer() {
    auto v = next();
    if (!v) return std::nullopt;
    return v->convert<Int64>();
  }
  Int64 integer() { return optional_integer().value_or(0); }
  TimePoint time() { return from_ms(integer()); }
  std::optional<TimePoint> optional_time() {
    const auto ms = optional_integer();
    if (!ms) return std::nullopt;
    return from_ms(*ms);
  }

 private:
  std::optional<Poco::Dynamic::Var> next() {
    const std::size_t col = col_++;
    if (rs_.isNull(col, row_)) return std::nullopt;
    return rs_.value(col, row_);
  }

  const RecordSet& rs_;
  std::size_t row_;
  std::size_t col_ = 0;
};

/** A workspace row from any reader (as sandbox_from). */
template <typename Reader>
WorkspaceRow workspace_from(Reader& r) {
  WorkspaceRow row;
  row.id = r.text();
  row.owner = r.text();
  row.volume = r.text();
  row.managed = r.integer() != 0;
  row.created_at = r.time();
  row.deleted_at = r.optional_time();
  return row;
}

inline WorkspaceRow read_workspace(const RecordSet& rs, std::size_t i) {
  RowReader r(rs, i);
  return workspace_from(r);
}

/** A profile row from any reader (as sandbox_from). */
template <typename Reader>
ProfileRow profile_from(Reader& r) {
  ProfileRow row;
  row.name = r.text();
  row.spec = r.text();
  row.created_at = r.time();
  row.updated_at = r.time();
  return row;
}

inline ProfileRow read_profile(const RecordSet& rs, std::size_t i) {
  RowReader r(rs, i);
  return profile_from(r);
}

/** A sandbox row from any reader with RowReader's methods (text, optional_text, integer, optional_integer, time,
 *  optional_time), columns in kSandboxColumns order: RowReader here, the SQLite store's prepared statements too. */
template <typename Reader>
SandboxRow sandbox_from(Reader& r) {
  SandboxRow row;
  row.id = r.text();
  row.owner = r.text();
  row.profile = r.text();
  row.workspace_id = r.text();
  row.key = r.optional_text();
  row.labels = from_json(r.text());
  row.env = from_json(r.text());
  row.current_session_id = r.optional_text();
  row.version = r.integer();
  row.expires_at = r.optional_time();
  row.idle_expires_at = r.optional_time();
  row.last_error = r.text();
  row.created_at = r.time();
  row.deleted_at = r.optional_time();
  return row;
}

inline SandboxRow read_sandbox(const RecordSet& rs, std::size_t i) {
  RowReader r(rs, i);
  return sandbox_from(r);
}

/** A session row from any reader (as sandbox_from), columns in kSessionColumns order. */
template <typename Reader>
SessionRow session_from(Reader& r) {
  SessionRow row;
  row.id = r.text();
  row.sandbox_id = r.text();
  row.handle = r.text();
  row.endpoint = r.text();
  row.state = session_state_from(r.text());
  row.error = r.text();
  row.created_at = r.time();
  row.last_active_at = r.time();
  row.starter = r.text();
  return row;
}

inline SessionRow read_session(const RecordSet& rs, std::size_t i) {
  RowReader r(rs, i);
  return session_from(r);
}

/** A execution row from any reader (as sandbox_from). */
template <typename Reader>
ExecutionRow execution_from(Reader& r) {
  ExecutionRow row;
  row.id = r.text();
  row.sandbox_id = r.text();
  row.session_id = r.text();
  row.kind = r.text();
  row.code = r.text();
  const auto exit_code = r.optional_integer();
  if (exit_code) row.exit_code = static_cast<int>(*exit_code);
  row.success = r.integer() != 0;
  row.output = r.text();
  row.error = r.text();
  row.duration_ms = r.integer();
  row.created_at = r.time();
  row.truncated = r.integer() != 0;
  return row;
}

inline ExecutionRow read_execution(const RecordSet& rs, std::size_t i) {
  RowReader r(rs, i);
  return execution_from(r);
}

/** A idempotency row from any reader (as sandbox_from). */
template <typename Reader>
IdempotencyRow idempotency_from(Reader& r) {
  IdempotencyRow row;
  row.owner = r.text();
  row.key = r.text();
  row.request_hash = r.text();
  row.status = static_cast<int>(r.integer());
  row.body = r.text();
  row.created_at = r.time();
  return row;
}

inline IdempotencyRow read_idempotency(const RecordSet& rs, std::size_t i) {
  RowReader r(rs, i);
  return idempotency_from(r);
}

/** A instance row from any reader (as sandbox_from). */
template <typename Reader>
core::InstanceRecord instance_from(Reader& r) {
  core::InstanceRecord row;
  row.id = r.text();
  row.host = r.text();
  row.pid = r.integer();
  row.started_at = r.time();
  row.heartbeat_at = r.time();
  row.stopped_at = r.optional_time();
  return row;
}

inline core::InstanceRecord read_instance(const RecordSet& rs, std::size_t i) {
  RowReader r(rs, i);
  return instance_from(r);
}

template <typename Row>
std::vector<Row> read_all(Statement& statement, Row (*read)(const RecordSet&, std::size_t)) {
  statement.execute();
  RecordSet rs(statement);
  std::vector<Row> rows;
  rows.reserve(rs.rowCount());
  for (std::size_t i = 0; i < rs.rowCount(); ++i)
    rows.push_back(read(rs, i));
  return rows;
}

template <typename Row>
std::optional<Row> read_one(Statement& statement, Row (*read)(const RecordSet&, std::size_t)) {
  auto rows = read_all(statement, read);
  if (rows.empty()) return std::nullopt;
  return std::move(rows.front());
}

}  // namespace berth::store::rows
