#include "core/paths.hpp"

#include "core/errors.hpp"

namespace berth::core {

std::string workspace_path(std::string_view path, bool allow_root) {
  if (path.size() > kMaxPathBytes) {
    throw Error(ErrorCode::validation_error, "path is longer than " + std::to_string(kMaxPathBytes) + " bytes");
  }
  if (path.find('\0') != std::string_view::npos) {
    throw Error(ErrorCode::validation_error, "path must not contain NUL");
  }
  if (!path.empty() && path.front() == '/') {
    throw Error(ErrorCode::validation_error, "path must be relative to /workspace, not absolute",
                {{"path", std::string(path)}});
  }
  std::string out;
  std::size_t i = 0;
  while (i <= path.size()) {
    std::size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    std::string_view seg = path.substr(i, j - i);
    if (seg == "..") {
      throw Error(ErrorCode::validation_error, "path must not contain '..'", {{"path", std::string(path)}});
    }
    if (seg.size() > kMaxNameBytes) {
      throw Error(ErrorCode::validation_error,
                  "a path component is longer than " + std::to_string(kMaxNameBytes) + " bytes");
    }
    if (!seg.empty() && seg != ".") {
      if (!out.empty()) out += '/';
      out += seg;
    }
    i = j + 1;
  }
  if (out.empty()) {
    if (!allow_root) throw Error(ErrorCode::validation_error, "path must name a file inside /workspace");
    return ".";
  }
  return out;
}

}  // namespace berth::core
