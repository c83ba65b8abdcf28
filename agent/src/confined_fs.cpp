#include "confined_fs.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <stdexcept>

namespace berth::agent {

namespace {

FileKind kind_of(mode_t m) {
  if (S_ISREG(m)) return FileKind::kRegular;
  if (S_ISDIR(m)) return FileKind::kDirectory;
  if (S_ISLNK(m)) return FileKind::kSymlink;
  return FileKind::kOther;
}

FileInfo info_of(const struct stat& st, std::string name) {
  FileInfo f;
  f.name = std::move(name);
  f.kind = kind_of(st.st_mode);
  f.mode = st.st_mode & 07777;
  f.size = static_cast<std::uint64_t>(st.st_size);
  f.mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  f.uid = st.st_uid;
  f.gid = st.st_gid;
  return f;
}

std::string join(const std::vector<std::string>& parts, std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    if (i) s += '/';
    s += parts[i];
  }
  return s;
}

int remove_tree(int parent, const std::string& name) {
  const int fd = ::openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return -errno;
  DIR* d = ::fdopendir(fd);
  if (!d) {
    const int e = errno;
    ::close(fd);
    return -e;
  }
  int rc = 0;
  while (dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    if (::unlinkat(fd, n.c_str(), 0) == 0) continue;
    if (errno != EISDIR && errno != EPERM) {
      rc = -errno;
      break;
    }
    if ((rc = remove_tree(fd, n)) < 0) break;
  }
  ::closedir(d);
  if (rc < 0) return rc;
  return ::unlinkat(parent, name.c_str(), AT_REMOVEDIR) == 0 ? 0 : -errno;
}

}  // namespace

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i <= path.size()) {
    const std::size_t j = path.find('/', i);
    const std::size_t end = j == std::string::npos ? path.size() : j;
    std::string c = path.substr(i, end - i);
    if (!c.empty() && c != ".") out.push_back(std::move(c));
    if (j == std::string::npos) break;
    i = j + 1;
  }
  return out;
}

FsIdentity::FsIdentity(std::uint32_t uid, std::uint32_t gid) {
  const bool want_uid = uid != kKeepId && uid != ::geteuid();
  const bool want_gid = gid != kKeepId && gid != ::getegid();
  if (!want_uid && !want_gid) return;
  if (::geteuid() != 0) {
    ok_ = false;
    errno = EPERM;
    return;
  }
  switched_ = true;
  ::setfsgid(gid == kKeepId ? ::getegid() : gid);
  ::setfsuid(uid == kKeepId ? ::geteuid() : uid);
}

FsIdentity::~FsIdentity() {
  if (!switched_) return;
  ::setfsuid(::geteuid());
  ::setfsgid(::getegid());
}

ConfinedFs::ConfinedFs(const std::string& root, bool use_openat2) : root_path_(root), openat2_(use_openat2) {
  root_fd_ = ::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (root_fd_ < 0) throw std::runtime_error("cannot open the workspace root " + root);
}

ConfinedFs::~ConfinedFs() {
  if (root_fd_ >= 0) ::close(root_fd_);
}

int ConfinedFs::walk(const std::string& path, int flags, mode_t mode) {
  const auto parts = split_path(path);
  int cur = ::dup(root_fd_);
  if (cur < 0) return -errno;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (parts[i] == "..") {
      ::close(cur);
      return -EXDEV;
    }
    const bool last = i + 1 == parts.size();
    const int next = last ? ::openat(cur, parts[i].c_str(), flags | O_NOFOLLOW | O_CLOEXEC, mode)
                          : ::openat(cur, parts[i].c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    const int e = errno;
    ::close(cur);
    if (next < 0) return -e;
    cur = next;
  }
  if (parts.empty()) {  // the root itself, reopened with the requested flags
    const int fd = ::openat(cur, ".", flags | O_CLOEXEC, mode);
    const int e = errno;
    ::close(cur);
    return fd < 0 ? -e : fd;
  }
  return cur;
}

int ConfinedFs::open(const std::string& path, int flags, mode_t mode) {
  if (openat2_) {
    const auto parts = split_path(path);
    const std::string rel = join(parts, parts.size());
    open_how how{};
    how.flags = static_cast<std::uint64_t>(flags | O_CLOEXEC);
    how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    const long fd = ::syscall(SYS_openat2, root_fd_, rel.empty() ? "." : rel.c_str(), &how, sizeof how);
    if (fd >= 0) return static_cast<int>(fd);
    if (errno != ENOSYS) return -errno;
    openat2_ = false;  // old kernel: the O_NOFOLLOW walk from now on
  }
  return walk(path, flags, mode);
}

int ConfinedFs::open_read(const std::string& path) {
  const int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return fd;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return -EINVAL;
  }
  return fd;
}

int ConfinedFs::open_write(const std::string& path, mode_t mode) {
  if (split_path(path).empty()) return -EISDIR;
  const int fd = open(path, O_WRONLY | O_CREAT | O_NONBLOCK | O_NOCTTY, mode);
  if (fd < 0) return fd;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || ::ftruncate(fd, 0) != 0) {
    ::close(fd);
    return -EINVAL;
  }
  return fd;
}

int ConfinedFs::open_parent(const std::string& path, std::string& name) {
  auto parts = split_path(path);
  if (parts.empty()) return -EINVAL;
  name = parts.back();
  if (name == "..") return -EXDEV;
  return open(join(parts, parts.size() - 1), O_PATH | O_DIRECTORY);
}

int ConfinedFs::stat(const std::string& path, FileInfo& out) {
  struct stat st {};
  if (split_path(path).empty()) {
    if (::fstat(root_fd_, &st) != 0) return -errno;
    return out = info_of(st, ""), 0;
  }
  std::string name;
  const int dir = open_parent(path, name);
  if (dir < 0) return dir;
  const int rc = ::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : -errno;
  ::close(dir);
  if (rc == 0) out = info_of(st, "");
  return rc;
}

int ConfinedFs::list(const std::string& path, std::vector<FileInfo>& out) {
  const int fd = open(path, O_RDONLY | O_DIRECTORY);
  if (fd < 0) return fd;
  DIR* d = ::fdopendir(fd);
  if (!d) {
    const int e = errno;
    ::close(fd);
    return -e;
  }
  while (dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n == "." || n == "..") continue;
    struct stat st {};
    if (::fstatat(fd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // removed meanwhile
    out.push_back(info_of(st, n));
  }
  ::closedir(d);
  return static_cast<int>(out.size());
}

int ConfinedFs::remove(const std::string& path, bool recursive) {
  std::string name;
  const int dir = open_parent(path, name);
  if (dir < 0) return dir;
  int rc = 0;
  if (::unlinkat(dir, name.c_str(), 0) != 0) {
    rc = -errno;
    if (rc == -EISDIR || rc == -EPERM) {
      rc = recursive ? remove_tree(dir, name) : (::unlinkat(dir, name.c_str(), AT_REMOVEDIR) == 0 ? 0 : -errno);
    }
  }
  ::close(dir);
  return rc;
}

int ConfinedFs::mkdir(const std::string& path, mode_t mode, bool parents) {
  const auto parts = split_path(path);
  if (parts.empty()) return parents ? 0 : -EEXIST;
  for (std::size_t n = parents ? 1 : parts.size(); n <= parts.size(); ++n) {
    std::string name;
    const int dir = open_parent(join(parts, n), name);
    if (dir < 0) return dir;
    int rc = ::mkdirat(dir, name.c_str(), mode) == 0 ? 0 : -errno;
    if (rc == -EEXIST && parents) {
      struct stat st {};
      rc = ::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode) ? 0 : -EEXIST;
    }
    ::close(dir);
    if (rc < 0) return rc;
  }
  return 0;
}

}  // namespace berth::agent
