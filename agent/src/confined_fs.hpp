// File operations confined to the workspace root, performed with the requesting user's filesystem identity.
// Paths are raw bytes relative to the root (leading '/' is stripped: "/a" means <root>/a). Every lookup goes
// through openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) from the root's fd, so neither "..", an absolute
// symlink, nor a symlink swapped in during the call can reach outside. Where openat2 is missing (ENOSYS) or
// disabled (--no-openat2), each component is opened with O_NOFOLLOW instead: symlinks are then refused anywhere
// in the path (ELOOP/ENOTDIR), ".." is refused (EXDEV). Single-threaded: used from the agent's event loop only.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "berth/agent/protocol.hpp"

namespace berth::agent {

/** Switches the calling thread's filesystem uid/gid (setfsuid/setfsgid) for its lifetime and drops back on
 *  destruction. kKeepId keeps the agent's own. Check ok() before use: false (errno EPERM) when the agent is not
 *  root and asks for another identity than its own. */
class FsIdentity {
 public:
  FsIdentity(std::uint32_t uid, std::uint32_t gid);
  ~FsIdentity();
  FsIdentity(const FsIdentity&) = delete;
  FsIdentity& operator=(const FsIdentity&) = delete;
  bool ok() const { return ok_; }

 private:
  bool ok_ = true;
  bool switched_ = false;
};

/** The workspace root and the operations on it. Every function returns 0 / an fd / a count on success and a
 *  negative errno on failure; nothing throws except std::bad_alloc. */
class ConfinedFs {
 public:
  /** Opens `root` (O_PATH directory). `use_openat2` false forces the O_NOFOLLOW walk. Throws std::runtime_error
   *  if the root cannot be opened. */
  ConfinedFs(const std::string& root, bool use_openat2);
  ~ConfinedFs();
  ConfinedFs(const ConfinedFs&) = delete;
  ConfinedFs& operator=(const ConfinedFs&) = delete;

  /** True when lookups use openat2 (false after ENOSYS or --no-openat2). */
  bool uses_openat2() const { return openat2_; }
  /** The root path as given. */
  const std::string& root() const { return root_path_; }

  /** Opens `path` beneath the root with open(2) `flags` / `mode` (O_CLOEXEC is added). Returns the fd (caller
   *  closes) or -errno. */
  int open(const std::string& path, int flags, mode_t mode = 0);
  /** Opens a regular file for reading (O_NONBLOCK, so a FIFO never blocks; anything but a regular file: -EINVAL). */
  int open_read(const std::string& path);
  /** Creates or truncates a regular file for writing with `mode` (anything but a regular file: -EINVAL). */
  int open_write(const std::string& path, mode_t mode);
  /** lstat of `path` (symlinks are reported, not followed); the root itself for "". */
  int stat(const std::string& path, FileInfo& out);
  /** The entries of directory `path` (without "." and ".."), each lstat'ed; names are raw bytes. */
  int list(const std::string& path, std::vector<FileInfo>& out);
  /** Removes a file, symlink or empty directory; `recursive` removes a directory tree (symlinks never followed).
   *  The root itself cannot be removed (-EINVAL). */
  int remove(const std::string& path, bool recursive);
  /** Creates directory `path` with `mode`; `parents` creates missing parents and accepts an existing directory. */
  int mkdir(const std::string& path, mode_t mode, bool parents);

 private:
  int open_parent(const std::string& path, std::string& name);
  int walk(const std::string& path, int flags, mode_t mode);

  std::string root_path_;
  int root_fd_ = -1;
  bool openat2_ = true;
};

/** Splits a relative path into components, dropping empty ones and "."; a leading '/' is ignored. */
std::vector<std::string> split_path(const std::string& path);

}  // namespace berth::agent
