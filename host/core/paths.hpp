// Workspace-relative paths: the only file paths the API accepts.
#pragma once

#include <string>
#include <string_view>

namespace berth::core {

/**
 * Normalises a path relative to /workspace: strips "./" segments and duplicate slashes. Throws Error
 * validation_error for absolute paths, ".." segments, NUL or control characters, and paths over 4096 bytes.
 * An empty path or "." is the workspace itself and returns "." when allow_root, else is an error.
 */
std::string workspace_path(std::string_view path, bool allow_root);

}  // namespace berth::core
