/*
 * berth/driver.hpp — optional, header-only C++17 helpers for driver authors.
 *
 * Nothing here is part of the ABI: a driver may ignore this file and use berth/driver.h alone. The helpers
 * only make the ABI rules easy to follow from C++: no exception crosses the boundary (call_guarded), structs
 * are read and written by their struct_size (read_struct, write_struct), fixed buffers are always
 * NUL-terminated (copy_string) and workspace paths never escape the workspace (workspace_path).
 */
#ifndef BERTH_DRIVER_HPP
#define BERTH_DRIVER_HPP

#include <berth/driver.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <map>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace berth::sdk {

/** A failure with a specific status. Throw it inside call_guarded to fail the current call with that status. */
class Error : public std::runtime_error {
 public:
  /** `message` becomes the host-visible error text (host->set_error). */
  Error(berth_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  /** The status the ABI call returns. */
  berth_status status() const noexcept { return status_; }

 private:
  berth_status status_;
};

/**
 * Runs `body` (which returns a berth_status) and turns every exception into a status, reporting its message
 * through host->set_error(err, ...): Error -> its status, anything else -> BERTH_INTERNAL. Never throws, so the
 * body of each exported ABI function can simply be `return call_guarded(host, err, [&] { ... });`.
 */
template <typename Body>
berth_status call_guarded(const berth_host_api* host, berth_error* err, Body&& body) noexcept {
  static_assert(std::is_invocable_r_v<berth_status, Body>, "the body must return a berth_status");
  const auto report = [&](const char* message) noexcept {
    if (host != nullptr && host->set_error != nullptr) host->set_error(err, message);
  };
  try {
    return std::forward<Body>(body)();
  } catch (const Error& e) {
    report(e.what());
    return e.status() == BERTH_OK ? BERTH_INTERNAL : e.status();
  } catch (const std::bad_alloc&) {
    report("out of memory");
  } catch (const std::exception& e) {
    report(e.what());
  } catch (...) {
    report("unknown C++ exception");
  }
  return BERTH_INTERNAL;
}

/**
 * Reads a struct the other side filled in (ABI rule 3): copies min(src->struct_size, sizeof(T)) bytes into a
 * zeroed T, so fields the writer did not know about read as 0/NULL. Throws Error(INVALID_ARGUMENT) if src is NULL.
 */
template <typename T>
T read_struct(const T* src) {
  static_assert(std::is_trivially_copyable_v<T>, "ABI structs are plain C");
  if (src == nullptr) throw Error(BERTH_INVALID_ARGUMENT, "a required struct argument is NULL");
  T out{};
  std::memcpy(&out, src, std::min<size_t>(src->struct_size, sizeof(T)));
  return out;
}

/**
 * Fills a caller-provided output struct whose struct_size the caller set (ABI rule 3): copies the fields of
 * `value` that follow struct_size, never more than min(dst->struct_size, sizeof(T)) bytes, so a smaller (older)
 * struct is never overrun. dst->struct_size is left as the caller set it. A NULL dst is a no-op.
 */
template <typename T>
void write_struct(T* dst, const T& value) noexcept {
  static_assert(std::is_trivially_copyable_v<T>, "ABI structs are plain C");
  constexpr size_t kHeader = sizeof(uint32_t);  // struct_size, always the first member
  if (dst == nullptr) return;
  const size_t size = std::min<size_t>(dst->struct_size, sizeof(T));
  if (size > kHeader) {
    std::memcpy(reinterpret_cast<char*>(dst) + kHeader, reinterpret_cast<const char*>(&value) + kHeader,
                size - kHeader);
  }
}

/**
 * Copies `src` into the fixed buffer `dst` of `capacity` bytes. The result is always NUL-terminated; when it
 * does not fit it is cut at a UTF-8 character boundary. Returns false if the text was truncated.
 */
inline bool copy_string(char* dst, size_t capacity, std::string_view src) noexcept {
  if (dst == nullptr || capacity == 0) return src.empty();
  size_t length = src.size();
  const bool fits = length < capacity;
  if (!fits) {
    length = capacity - 1;
    // Never keep the first half of a multi-byte character: back off while src[length] is a continuation byte.
    while (length > 0 && (static_cast<unsigned char>(src[length]) & 0xC0) == 0x80)
      --length;
  }
  std::memcpy(dst, src.data(), length);
  dst[length] = '\0';
  return fits;
}

/** copy_string for a char array member such as berth_session_info.handle. */
template <size_t N>
bool copy_string(char (&dst)[N], std::string_view src) noexcept {
  return copy_string(dst, N, src);
}

/** Copies a borrowed berth_kv array into a map. NULL keys are skipped, NULL values read as "", later keys win. */
inline std::map<std::string, std::string> kv_map(const berth_kv* kv, size_t count) {
  std::map<std::string, std::string> out;
  for (size_t i = 0; kv != nullptr && i < count; ++i) {
    if (kv[i].key != nullptr) out.insert_or_assign(kv[i].key, kv[i].value != nullptr ? kv[i].value : "");
  }
  return out;
}

/** A berth_kv array that borrows its strings from `map` (keep the map alive and unchanged while it is used). */
inline std::vector<berth_kv> kv_array(const std::map<std::string, std::string>& map) {
  std::vector<berth_kv> out;
  out.reserve(map.size());
  for (const auto& [key, value] : map)
    out.push_back(berth_kv{key.c_str(), value.c_str()});
  return out;
}

/**
 * Normalises a workspace-relative path (ABI rule 9): "a//b/./c/" -> "a/b/c", "" and "." -> ".". Returns
 * std::nullopt for an absolute path, a ".." component or an embedded NUL.
 */
inline std::optional<std::string> normalize_workspace_path(std::string_view path) {
  if (path.find('\0') != std::string_view::npos || (!path.empty() && path.front() == '/')) return std::nullopt;
  std::string out;
  while (!path.empty()) {
    const size_t slash = path.find('/');
    const std::string_view part = path.substr(0, slash);
    path = slash == std::string_view::npos ? std::string_view() : path.substr(slash + 1);
    if (part == "..") return std::nullopt;
    if (part.empty() || part == ".") continue;
    if (!out.empty()) out += '/';
    out += part;
  }
  return out.empty() ? std::string(".") : out;
}

/** normalize_workspace_path for an ABI argument: NULL reads as "."; throws Error(INVALID_ARGUMENT) if refused. */
inline std::string workspace_path(const char* path) {
  std::optional<std::string> normalized = normalize_workspace_path(path != nullptr ? path : "");
  if (!normalized) throw Error(BERTH_INVALID_ARGUMENT, std::string("path escapes the workspace: ") + path);
  return *normalized;
}

/** Emits a structured log line through host->log; a no-op if the host has no logger. Never throws. */
inline void log(const berth_host_api* host, berth_log_level level, const char* event,
                std::initializer_list<berth_kv> fields = {}) noexcept {
  if (host != nullptr && host->log != nullptr) host->log(host->host_ctx, level, event, fields.begin(), fields.size());
}

}  // namespace berth::sdk

#endif  // BERTH_DRIVER_HPP
