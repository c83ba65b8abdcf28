// Workspace-relative paths: the only file paths the API accepts.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace berth::core {

/** Longest path the API accepts, in bytes (the drivers' limit, driver.h rule 8; PATH_MAX leaves room for /workspace).
 */
inline constexpr std::size_t kMaxPathBytes = 4000;
/** Longest single path component, in bytes (NAME_MAX of Linux filesystems). */
inline constexpr std::size_t kMaxNameBytes = 255;

/**
 * Normalises a path relative to /workspace: strips "./" segments and duplicate slashes. A path is bytes: any byte but
 * NUL is allowed (control bytes, newlines and invalid UTF-8 included: Linux file names are bytes). Throws Error
 * validation_error for absolute paths, ".." segments, NUL, a component over kMaxNameBytes and a path over
 * kMaxPathBytes. An empty path or "." is the workspace itself and returns "." when allow_root, else is an error.
 */
std::string workspace_path(std::string_view path, bool allow_root);

}  // namespace berth::core
