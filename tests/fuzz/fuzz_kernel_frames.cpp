// libFuzzer target: what a Python kernel sends berthd (docs/python-contexts.md). The kernel runs in the tenant's
// sandbox, so its stdout is hostile input: the frame parser (fed in pieces whose sizes come from the first byte) must
// find exactly the frames a one-shot parse finds, refuse a bad header with std::runtime_error and never buffer past
// one frame; parse_kernel_result must take any `result` payload without crashing or throwing anything else.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/python_context.hpp"

using berth::core::CellOutcome;
using berth::core::KernelFrame;
using berth::core::KernelFrameParser;

namespace {

/** Every frame of `bytes` one feed at a time in pieces of `split`; stops at the first error (true then). */
std::vector<KernelFrame> parse_all(const std::string& bytes, std::size_t split, bool& failed) {
  KernelFrameParser parser(1 << 16);
  std::vector<KernelFrame> out;
  failed = false;
  for (std::size_t off = 0; off < bytes.size() && !failed;) {
    const std::size_t take = std::min(split, bytes.size() - off);
    parser.feed(std::string_view(bytes).substr(off, take));
    off += take;
    try {
      while (auto f = parser.next())
        out.push_back(std::move(*f));
    } catch (const std::runtime_error&) {
      failed = true;
    }
    if (parser.buffered() > (1 << 16) + 64 + split) std::abort();  // more than one frame held
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::size_t split = data[0] % 23 + 1;
  const std::string bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  bool failed_pieces = false;
  bool failed_whole = false;
  const auto pieces = parse_all(bytes, split, failed_pieces);
  const auto whole = parse_all(bytes, bytes.size() + 1, failed_whole);
  if (failed_pieces != failed_whole || pieces.size() != whole.size()) std::abort();
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    if (pieces[i].type != whole[i].type || pieces[i].payload != whole[i].payload) std::abort();
    CellOutcome out;
    try {
      (void)berth::core::parse_kernel_result(pieces[i].payload, out);
    } catch (const std::runtime_error&) {
    }
  }
  // The payload alone as a result (JSON-shaped inputs reach the field checks).
  CellOutcome out;
  try {
    (void)berth::core::parse_kernel_result(bytes, out);
  } catch (const std::runtime_error&) {
  }
  return 0;
}
