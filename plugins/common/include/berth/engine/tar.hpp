// Single-file tar streams (libarchive) for the engines' archive API (PUT/GET /containers/{id}/archive).
#pragma once

#include <cstdint>
#include <ctime>
#include <functional>
#include <istream>
#include <ostream>
#include <string>

namespace berth::engine {

struct TarFileEntry {
  std::string name;  // path inside the archive (UTF-8), usually a base name
  std::uint64_t size = 0;
  std::uint32_t mode = 0644;  // permission bits
  std::int64_t uid = 0;
  std::int64_t gid = 0;
  std::time_t mtime = 0;
};

/** Fills up to `capacity` bytes: returns the count, 0 at the end, -1 on error. */
using ByteSource = std::function<std::int64_t(std::uint8_t* buffer, std::size_t capacity)>;
/** Takes a piece of data; returns false to stop. */
using ByteSink = std::function<bool(const std::uint8_t* data, std::size_t size)>;

/**
 * Writes a tar archive holding one regular file to `out`, streaming exactly entry.size bytes from `source`.
 * Throws Error(invalid_argument) if the source ends early, Error(cancelled) if it reports an error.
 */
void write_single_file_tar(std::ostream& out, const TarFileEntry& entry, const ByteSource& source);

/** What read_single_file_tar found. */
struct TarReadResult {
  bool regular_file = false;  // false: the first entry is not a regular file (nothing was streamed)
  std::string name;
  std::uint64_t size = 0;
};

/**
 * Reads a tar archive from `in` and streams the data of its first entry to `sink` if it is a regular file.
 * Throws Error(cancelled) when the sink returns false, Error(internal) on a malformed archive, Error(not_found)
 * when the archive is empty.
 */
TarReadResult read_single_file_tar(std::istream& in, const ByteSink& sink);

}  // namespace berth::engine
