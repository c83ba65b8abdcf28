// The berth-agent wire protocol (docs/agent-protocol.md): frame layout, message types, payload codecs. Shared by
// the agent (agent/src) and its client (plugins/common, berth/engine/agent_client.hpp) so both sides encode and
// decode with the same code. Header-only, C++20, no dependencies beyond the standard library: the agent links
// fully static.
//
// Every integer is big-endian (network order). A frame is a 12-byte header followed by `length` payload bytes:
//   u32 length | u16 type | u16 flags (reserved, 0; ignored by readers) | u32 channel
// Payloads are sequences of fields (u8/u16/u32/u64/i32/i64, `bytes` = u32 length + raw bytes, `list` = u32 count
// + that many `bytes`). A reader ignores trailing bytes it does not know: a newer peer may append fields.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace berth::agent {

/** Protocol version this code speaks (HELLO negotiates; see docs/agent-protocol.md, "Versioning"). */
inline constexpr std::uint16_t kProtocolVersion = 1;
/** Oldest protocol version this code still speaks. */
inline constexpr std::uint16_t kProtocolMinVersion = 1;
/** Size of a frame header in bytes. */
inline constexpr std::size_t kHeaderSize = 12;
/** Largest payload either side accepts (1 MiB). A larger length is a framing error: the connection is closed. */
inline constexpr std::uint32_t kMaxPayload = 1u << 20;
/** Largest data chunk (OUTPUT, STDIN, FILE_DATA) either side sends; a receiver accepts up to kMaxPayload. */
inline constexpr std::size_t kMaxChunk = 64 * 1024;
/** uid/gid value meaning "the agent's own" (no switch). */
inline constexpr std::uint32_t kKeepId = 0xFFFFFFFFu;

/** Message types. Values are stable; new types are only added. An unknown type is answered with ERROR
 *  kUnknownType on the same channel and otherwise ignored (never fatal). */
enum class MsgType : std::uint16_t {
  kHello = 0x01,        ///< c→a, channel 0: u16 min_version, u16 max_version, bytes client_name
  kHelloOk = 0x02,      ///< a→c, channel 0: u16 version, u32 max_payload, bytes agent_name, u32 features, u32 pid
  kPing = 0x03,         ///< either way: u64 token
  kPong = 0x04,         ///< answer to PING: the same u64 token
  kError = 0x05,        ///< u32 code, u32 errno, u16 about_type, bytes message
  kStart = 0x10,        ///< c→a: StartRequest (the channel becomes the process's)
  kStarted = 0x11,      ///< a→c: u32 pid
  kStdin = 0x12,        ///< c→a: raw bytes for the process's stdin (or PTY)
  kStdinClose = 0x13,   ///< c→a: EOF on stdin (PTY: the terminal's VEOF character is written)
  kSignal = 0x14,       ///< c→a: u32 signo, u8 to_group
  kResize = 0x15,       ///< c→a: u16 rows, u16 cols
  kOutput = 0x16,       ///< a→c: u8 stream (1 stdout, 2 stderr), raw bytes
  kExit = 0x17,         ///< a→c: ExitInfo; the last frame of the channel
  kKill = 0x18,         ///< c→a: cancel: kill the whole process tree now (EXIT follows)
  kFileRead = 0x20,     ///< c→a: bytes path, u32 uid, u32 gid → FILE_DATA* then DONE(u64 size)
  kFileData = 0x21,     ///< either way: raw bytes of a file
  kFileWrite = 0x22,    ///< c→a: bytes path, u32 uid, u32 gid, u32 mode → FILE_DATA* from c, FILE_END, DONE(size)
  kFileEnd = 0x23,      ///< c→a: end of a FILE_WRITE's data
  kDone = 0x24,         ///< a→c: u64 value; success of a file request, the last frame of its channel
  kStat = 0x25,         ///< c→a: bytes path, u32 uid, u32 gid → STAT_RESULT
  kStatResult = 0x26,   ///< a→c: FileInfo
  kList = 0x27,         ///< c→a: bytes path, u32 uid, u32 gid → LIST_ENTRIES* then DONE(count)
  kListEntries = 0x28,  ///< a→c: u32 n, then n FileInfo
  kRemove = 0x29,       ///< c→a: bytes path, u32 uid, u32 gid, u8 recursive → DONE(0)
  kMkdir = 0x2A,        ///< c→a: bytes path, u32 uid, u32 gid, u32 mode, u8 parents → DONE(0)
};

/** ERROR codes. Stable; documented in docs/agent-protocol.md. */
enum class ErrorCode : std::uint32_t {
  kProtocol = 1,            ///< framing broken (length > max): the sender closes the connection after this
  kUnsupportedVersion = 2,  ///< HELLO ranges do not overlap: connection closed
  kUnknownType = 3,         ///< a type this side does not know: ignored, connection stays
  kBadPayload = 4,          ///< payload too short / invalid field: request refused, connection stays
  kBadChannel = 5,          ///< channel 0 for a request, channel in use, or no such channel
  kExecFailed = 6,          ///< fork/exec/uid switch failed (errno set)
  kFs = 7,                  ///< a file operation failed (errno set; EXDEV/ELOOP = path escapes the root)
  kPermission = 8,          ///< uid/gid switch requested but the agent is not root
  kLimit = 9,               ///< too many processes or open requests on this connection
  kNotReady = 10,           ///< a request before HELLO
};

/** START flags (u32 bit set). */
inline constexpr std::uint32_t kStartPty = 1u << 0;

/** The name (/proc/PID/comm, what `ps` shows) of the agent's spare shim and of its main process while they wait for
 *  the next START (docs/agent-protocol.md, "Process starts"): two processes per agent that are not a request's. */
inline constexpr char kSpareName[] = "berth-spare";

/** One decoded frame. `payload` is owned. */
struct Frame {
  std::uint16_t type = 0;
  std::uint32_t channel = 0;
  std::string payload;
};

/** Encodes one frame (header + payload) into a new string. Throws std::length_error if payload > kMaxPayload. */
inline std::string encode_frame(MsgType type, std::uint32_t channel, std::string_view payload) {
  if (payload.size() > kMaxPayload) throw std::length_error("agent frame payload too large");
  std::string out;
  out.resize(kHeaderSize + payload.size());
  auto* p = reinterpret_cast<unsigned char*>(out.data());
  const auto len = static_cast<std::uint32_t>(payload.size());
  const auto t = static_cast<std::uint16_t>(type);
  p[0] = len >> 24, p[1] = len >> 16, p[2] = len >> 8, p[3] = len;
  p[4] = t >> 8, p[5] = t & 0xFF, p[6] = 0, p[7] = 0;
  p[8] = channel >> 24, p[9] = channel >> 16, p[10] = channel >> 8, p[11] = channel;
  if (!payload.empty()) out.replace(kHeaderSize, payload.size(), payload);
  return out;
}

/** Incremental frame decoder: feed() bytes as they arrive (any split), next() yields complete frames in order.
 *  Not thread-safe. Memory is bounded by kHeaderSize + kMaxPayload + the last feed. */
class FrameDecoder {
 public:
  enum class Status { kFrame, kNeedMore, kTooLarge };

  /** Appends received bytes (copied). */
  void feed(const char* data, std::size_t size) { buf_.append(data, size); }

  /** Extracts the next complete frame into `out`. kTooLarge means the stream cannot be resynchronised. */
  Status next(Frame& out) {
    if (buf_.size() - pos_ < kHeaderSize) return compact(), Status::kNeedMore;
    const auto* p = reinterpret_cast<const unsigned char*>(buf_.data() + pos_);
    const std::uint32_t len =
        (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
    if (len > kMaxPayload) return Status::kTooLarge;
    if (buf_.size() - pos_ < kHeaderSize + len) return compact(), Status::kNeedMore;
    out.type = static_cast<std::uint16_t>((p[4] << 8) | p[5]);
    out.channel = (std::uint32_t{p[8]} << 24) | (std::uint32_t{p[9]} << 16) | (std::uint32_t{p[10]} << 8) | p[11];
    out.payload.assign(buf_, pos_ + kHeaderSize, len);
    pos_ += kHeaderSize + len;
    return Status::kFrame;
  }

  /** Bytes buffered but not yet returned as frames. */
  std::size_t buffered() const { return buf_.size() - pos_; }

 private:
  void compact() {
    if (pos_ > 0) buf_.erase(0, pos_), pos_ = 0;
  }
  std::string buf_;
  std::size_t pos_ = 0;
};

/** Builds a payload field by field (big-endian). */
class PayloadWriter {
 public:
  PayloadWriter& u8(std::uint8_t v) { return out_.push_back(static_cast<char>(v)), *this; }
  PayloadWriter& u16(std::uint16_t v) { return put(v, 2); }
  PayloadWriter& u32(std::uint32_t v) { return put(v, 4); }
  PayloadWriter& u64(std::uint64_t v) { return put(v, 8); }
  PayloadWriter& i32(std::int32_t v) { return put(static_cast<std::uint32_t>(v), 4); }
  PayloadWriter& i64(std::int64_t v) { return put(static_cast<std::uint64_t>(v), 8); }
  PayloadWriter& bytes(std::string_view v) {
    u32(static_cast<std::uint32_t>(v.size()));
    return out_.append(v), *this;
  }
  PayloadWriter& list(const std::vector<std::string>& v) {
    u32(static_cast<std::uint32_t>(v.size()));
    for (const auto& s : v)
      bytes(s);
    return *this;
  }
  const std::string& str() const { return out_; }
  std::string take() { return std::move(out_); }

 private:
  PayloadWriter& put(std::uint64_t v, int n) {
    for (int i = n - 1; i >= 0; --i)
      out_.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
    return *this;
  }
  std::string out_;
};

/** Reads a payload field by field. A read past the end sets failed() and yields zero/empty; callers check
 *  failed() once after reading every field they need. Trailing bytes are ignored (newer peers append fields). */
class PayloadReader {
 public:
  explicit PayloadReader(std::string_view data) : data_(data) {}
  std::uint8_t u8() { return static_cast<std::uint8_t>(get(1)); }
  std::uint16_t u16() { return static_cast<std::uint16_t>(get(2)); }
  std::uint32_t u32() { return static_cast<std::uint32_t>(get(4)); }
  std::uint64_t u64() { return get(8); }
  std::int32_t i32() { return static_cast<std::int32_t>(static_cast<std::uint32_t>(get(4))); }
  std::int64_t i64() { return static_cast<std::int64_t>(get(8)); }
  std::string bytes() {
    const std::uint32_t n = u32();
    if (failed_ || n > data_.size() - pos_) return failed_ = true, std::string();
    std::string s(data_.substr(pos_, n));
    pos_ += n;
    return s;
  }
  /** A list of `bytes`; at most `max_items` entries (more sets failed()). */
  std::vector<std::string> list(std::uint32_t max_items = 65536) {
    const std::uint32_t n = u32();
    std::vector<std::string> v;
    if (failed_ || n > max_items || n > (data_.size() - pos_) / 4) return failed_ = true, v;
    v.reserve(n);
    for (std::uint32_t i = 0; i < n && !failed_; ++i)
      v.push_back(bytes());
    return v;
  }
  /** The bytes not read yet (a chunk's data after its fixed fields). */
  std::string_view rest() const { return data_.substr(pos_); }
  bool failed() const { return failed_; }

 private:
  std::uint64_t get(int n) {
    if (failed_ || data_.size() - pos_ < static_cast<std::size_t>(n)) return failed_ = true, 0;
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i)
      v = (v << 8) | static_cast<unsigned char>(data_[pos_ + i]);
    pos_ += n;
    return v;
  }
  std::string_view data_;
  std::size_t pos_ = 0;
  bool failed_ = false;
};

/** START payload: argv (≥1, argv[0] is the program path, not searched in PATH), env as "K=V" entries, cwd (empty =
 *  the agent's workspace root), uid/gid (kKeepId = the agent's own), flags (kStartPty), PTY size, timeout in ms
 *  (0 = none), output cap in bytes (0 = agent default; output beyond it is read and discarded, EXIT says so). */
struct StartRequest {
  std::vector<std::string> argv;
  std::vector<std::string> env;
  std::string cwd;
  std::uint32_t uid = kKeepId;
  std::uint32_t gid = kKeepId;
  std::uint32_t flags = 0;
  std::uint16_t rows = 24;
  std::uint16_t cols = 80;
  std::uint32_t timeout_ms = 0;
  std::uint64_t output_cap = 0;

  std::string encode() const {
    PayloadWriter w;
    w.list(argv).list(env).bytes(cwd).u32(uid).u32(gid).u32(flags).u16(rows).u16(cols).u32(timeout_ms).u64(output_cap);
    return w.take();
  }
  static std::optional<StartRequest> decode(std::string_view payload) {
    PayloadReader r(payload);
    StartRequest s;
    s.argv = r.list(4096);
    s.env = r.list(4096);
    s.cwd = r.bytes();
    s.uid = r.u32();
    s.gid = r.u32();
    s.flags = r.u32();
    s.rows = r.u16();
    s.cols = r.u16();
    s.timeout_ms = r.u32();
    s.output_cap = r.u64();
    if (r.failed() || s.argv.empty() || s.argv[0].empty()) return std::nullopt;
    return s;
  }
};

/** EXIT payload: how the process ended. `signaled` false: `code` is the exit status; true: `code` is the signal.
 *  `timed_out` when the agent killed the tree for the START timeout; `output_dropped` = bytes read past the cap. */
struct ExitInfo {
  bool signaled = false;
  std::int32_t code = 0;
  bool timed_out = false;
  std::uint64_t output_dropped = 0;

  std::string encode() const {
    PayloadWriter w;
    w.u8(signaled ? 1 : 0).i32(code).u8(timed_out ? 1 : 0).u64(output_dropped);
    return w.take();
  }
  static std::optional<ExitInfo> decode(std::string_view payload) {
    PayloadReader r(payload);
    ExitInfo e;
    e.signaled = r.u8() != 0;
    e.code = r.i32();
    e.timed_out = r.u8() != 0;
    e.output_dropped = r.u64();
    if (r.failed()) return std::nullopt;
    return e;
  }
};

/** ERROR payload. `about_type` is the type of the frame that caused it (0 if none). */
struct ErrorInfo {
  ErrorCode code = ErrorCode::kProtocol;
  std::uint32_t sys_errno = 0;
  std::uint16_t about_type = 0;
  std::string message;

  std::string encode() const {
    PayloadWriter w;
    w.u32(static_cast<std::uint32_t>(code)).u32(sys_errno).u16(about_type).bytes(message);
    return w.take();
  }
  static std::optional<ErrorInfo> decode(std::string_view payload) {
    PayloadReader r(payload);
    ErrorInfo e;
    e.code = static_cast<ErrorCode>(r.u32());
    e.sys_errno = r.u32();
    e.about_type = r.u16();
    e.message = r.bytes();
    if (r.failed()) return std::nullopt;
    return e;
  }
};

/** File kinds in FileInfo. */
enum class FileKind : std::uint8_t { kOther = 0, kRegular = 1, kDirectory = 2, kSymlink = 3 };

/** STAT_RESULT payload and each LIST_ENTRIES entry. `name` is the raw entry name (empty for STAT); symlinks are
 *  reported, never followed. mtime in nanoseconds since the epoch. */
struct FileInfo {
  std::string name;
  FileKind kind = FileKind::kOther;
  std::uint32_t mode = 0;
  std::uint64_t size = 0;
  std::int64_t mtime_ns = 0;
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;

  void encode_into(PayloadWriter& w) const {
    w.bytes(name).u8(static_cast<std::uint8_t>(kind)).u32(mode).u64(size).i64(mtime_ns).u32(uid).u32(gid);
  }
  static FileInfo decode_from(PayloadReader& r) {
    FileInfo f;
    f.name = r.bytes();
    f.kind = static_cast<FileKind>(r.u8());
    f.mode = r.u32();
    f.size = r.u64();
    f.mtime_ns = r.i64();
    f.uid = r.u32();
    f.gid = r.u32();
    return f;
  }
};

}  // namespace berth::agent
