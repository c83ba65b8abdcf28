#include "berth/engine/tar.hpp"

#include <archive.h>
#include <archive_entry.h>

#include <exception>
#include <memory>
#include <vector>

#include "berth/engine/client.hpp"

namespace berth::engine {

namespace {

constexpr size_t kBlock = 64 * 1024;

struct WriteContext {
  std::ostream* out = nullptr;
  std::exception_ptr failure;
};

la_ssize_t write_callback(struct archive*, void* ctx, const void* buffer, size_t length) {
  auto* context = static_cast<WriteContext*>(ctx);
  try {
    context->out->write(static_cast<const char*>(buffer), static_cast<std::streamsize>(length));
    if (!*context->out) throw Error(Errc::unavailable, "the upload stream to the engine failed");
    return static_cast<la_ssize_t>(length);
  } catch (...) {
    context->failure = std::current_exception();
    return -1;
  }
}

struct ReadContext {
  std::istream* in = nullptr;
  std::vector<char> buffer = std::vector<char>(kBlock);
  std::exception_ptr failure;
};

la_ssize_t read_callback(struct archive*, void* ctx, const void** buffer) {
  auto* context = static_cast<ReadContext*>(ctx);
  try {
    context->in->read(context->buffer.data(), static_cast<std::streamsize>(context->buffer.size()));
    *buffer = context->buffer.data();
    auto n = context->in->gcount();
    if (n == 0 && context->in->bad()) throw Error(Errc::unavailable, "the download stream from the engine failed");
    return static_cast<la_ssize_t>(n);
  } catch (...) {
    context->failure = std::current_exception();
    return -1;
  }
}

struct ArchiveWriteDeleter {
  void operator()(struct archive* a) const { archive_write_free(a); }
};
struct ArchiveReadDeleter {
  void operator()(struct archive* a) const { archive_read_free(a); }
};
struct EntryDeleter {
  void operator()(struct archive_entry* e) const { archive_entry_free(e); }
};

}  // namespace

void write_single_file_tar(std::ostream& out, const TarFileEntry& entry, const ByteSource& source) {
  std::unique_ptr<struct archive, ArchiveWriteDeleter> a(archive_write_new());
  if (!a) throw Error(Errc::internal, "archive_write_new failed");
  WriteContext context{&out, nullptr};
  auto check = [&](int rc, const char* what) {
    if (rc >= ARCHIVE_WARN) return;
    if (context.failure) std::rethrow_exception(context.failure);
    const char* message = archive_error_string(a.get());
    throw Error(Errc::internal, std::string("tar: ") + what + ": " + (message ? message : "failed"));
  };
  check(archive_write_set_format_pax_restricted(a.get()), "set format");
  // Raw name bytes, no locale conversion: converting a non-ASCII name in the "C" locale crashed libarchive.
  check(archive_write_set_options(a.get(), "hdrcharset=BINARY"), "set hdrcharset");
  check(archive_write_open(a.get(), &context, nullptr, write_callback, nullptr), "open");

  std::unique_ptr<struct archive_entry, EntryDeleter> e(archive_entry_new());
  archive_entry_copy_pathname(e.get(), entry.name.c_str());  // raw bytes (hdrcharset=BINARY)
  archive_entry_set_filetype(e.get(), AE_IFREG);
  archive_entry_set_perm(e.get(), entry.mode & 07777);
  archive_entry_set_size(e.get(), static_cast<la_int64_t>(entry.size));
  archive_entry_set_uid(e.get(), entry.uid);
  archive_entry_set_gid(e.get(), entry.gid);
  archive_entry_set_mtime(e.get(), entry.mtime, 0);
  check(archive_write_header(a.get(), e.get()), "write header");

  std::vector<std::uint8_t> buffer(kBlock);
  std::uint64_t left = entry.size;
  while (left > 0) {
    size_t want = static_cast<size_t>(std::min<std::uint64_t>(left, buffer.size()));
    std::int64_t got = source(buffer.data(), want);
    if (got < 0) throw Error(Errc::cancelled, "the data source reported an error");
    if (got == 0) {
      throw Error(Errc::invalid_argument, "the data source ended after " + std::to_string(entry.size - left) + " of " +
                                              std::to_string(entry.size) + " bytes");
    }
    if (static_cast<std::uint64_t>(got) > want) throw Error(Errc::invalid_argument, "the data source overran");
    la_ssize_t written = archive_write_data(a.get(), buffer.data(), static_cast<size_t>(got));
    if (written < 0) check(static_cast<int>(written), "write data");
    left -= static_cast<std::uint64_t>(got);
  }
  check(archive_write_finish_entry(a.get()), "finish entry");
  check(archive_write_close(a.get()), "close");
}

TarReadResult read_single_file_tar(std::istream& in, const ByteSink& sink) {
  std::unique_ptr<struct archive, ArchiveReadDeleter> a(archive_read_new());
  if (!a) throw Error(Errc::internal, "archive_read_new failed");
  ReadContext context;
  context.in = &in;
  auto check = [&](int rc, const char* what) {
    if (rc >= ARCHIVE_WARN) return;
    if (context.failure) std::rethrow_exception(context.failure);
    const char* message = archive_error_string(a.get());
    throw Error(Errc::internal, std::string("tar: ") + what + ": " + (message ? message : "failed"));
  };
  check(archive_read_support_format_tar(a.get()), "support tar");
  check(archive_read_open(a.get(), &context, nullptr, read_callback, nullptr), "open");
  struct archive_entry* e = nullptr;
  int rc = archive_read_next_header(a.get(), &e);
  if (rc == ARCHIVE_EOF) throw Error(Errc::not_found, "the engine returned an empty archive");
  check(rc, "read header");
  TarReadResult result;
  const char* name = archive_entry_pathname(e);
  result.name = name ? name : "";
  result.size = static_cast<std::uint64_t>(archive_entry_size(e));
  if (archive_entry_filetype(e) != AE_IFREG) return result;
  result.regular_file = true;
  std::vector<std::uint8_t> buffer(kBlock);
  for (;;) {
    la_ssize_t n = archive_read_data(a.get(), buffer.data(), buffer.size());
    if (n == 0) break;
    if (n < 0) check(static_cast<int>(n), "read data");
    if (n < 0) continue;  // ARCHIVE_WARN
    if (!sink(buffer.data(), static_cast<size_t>(n))) throw Error(Errc::cancelled, "the data sink refused data");
  }
  return result;
}

}  // namespace berth::engine
