// The core's error vocabulary. Codes are stable API strings; the HTTP layer maps each to a status code, the core
// never sees HTTP.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace berth::core {

enum class ErrorCode {
  invalid_request,           // malformed request (syntax, bad id format)
  validation_error,          // well-formed but invalid values
  not_found,                 // no such object (or not the caller's)
  conflict,                  // state forbids the call (e.g. workspace in use, idempotency key reused)
  sandbox_expired,           // the sandbox's TTL has passed
  sandbox_ttl_infinite,      // extend_ttl on a sandbox without TTL
  payload_too_large,         // body or file over a configured limit
  unauthorized,              // missing or wrong API key
  capability_not_supported,  // profile or driver lacks the capability
  session_not_ready,         // the session did not become ready in time (retryable)
  driver_unavailable,        // the engine is unreachable (retryable)
  server_busy,               // the admission queue is full or waited too long (retryable)
  shutting_down,             // berthd is stopping; retry against the next instance (retryable)
  quota_exceeded,            // the owner holds as many sandboxes as [limits] allows (429, Retry-After)
  rate_limited,              // the owner creates faster than [limits] allows (429, Retry-After)
  disk_quota_exceeded,       // the sandbox's disk use is over its profile's disk_limit_mb (409; free space)
  store_unavailable,         // the database cannot be reached or stays in conflict (503, Retry-After; retryable)
  internal,                  // anything else
};

/** Every ErrorCode in declaration order: GET /openapi.json enumerates them (a test compares it with the enum). */
inline constexpr ErrorCode kAllErrorCodes[] = {ErrorCode::invalid_request,
                                               ErrorCode::validation_error,
                                               ErrorCode::not_found,
                                               ErrorCode::conflict,
                                               ErrorCode::sandbox_expired,
                                               ErrorCode::sandbox_ttl_infinite,
                                               ErrorCode::payload_too_large,
                                               ErrorCode::unauthorized,
                                               ErrorCode::capability_not_supported,
                                               ErrorCode::session_not_ready,
                                               ErrorCode::driver_unavailable,
                                               ErrorCode::server_busy,
                                               ErrorCode::shutting_down,
                                               ErrorCode::quota_exceeded,
                                               ErrorCode::rate_limited,
                                               ErrorCode::disk_quota_exceeded,
                                               ErrorCode::store_unavailable,
                                               ErrorCode::internal};

/** Stable wire name, e.g. "session_not_ready". */
std::string_view to_string(ErrorCode code);

/** An error the API reports to the client as-is. */
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message, std::map<std::string, std::string> details = {})
      : std::runtime_error(message), code_(code), details_(std::move(details)) {}
  ErrorCode code() const { return code_; }
  const std::map<std::string, std::string>& details() const { return details_; }
  /** Seconds a client should wait before retrying (set for retryable errors). */
  std::optional<std::chrono::seconds> retry_after() const { return retry_after_; }
  Error& with_retry_after(std::chrono::seconds s) {
    retry_after_ = s;
    return *this;
  }

 private:
  ErrorCode code_;
  std::map<std::string, std::string> details_;
  std::optional<std::chrono::seconds> retry_after_;
};

}  // namespace berth::core
