// libFuzzer target: the engine's stdcopy frame demultiplexer (plugins/common, berth/engine/hijack.hpp). The input
// is fed in pieces whose sizes come from the input itself; the payload that reaches the sink must equal what a
// one-shot reference parse of the same bytes finds, whatever the split.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "berth/engine/hijack.hpp"

namespace {

struct Piece {
  int stream;
  std::string data;
};

/** Reference: whole frames at once; a trailing partial frame contributes the payload bytes present. */
std::vector<Piece> reference(const std::uint8_t* data, std::size_t size) {
  std::vector<Piece> out;
  std::size_t i = 0;
  while (i + 8 <= size) {
    const std::uint32_t len = (std::uint32_t{data[i + 4]} << 24) | (std::uint32_t{data[i + 5]} << 16) |
                              (std::uint32_t{data[i + 6]} << 8) | std::uint32_t{data[i + 7]};
    const int stream = data[i];
    i += 8;
    const std::size_t take = std::min<std::size_t>(len, size - i);
    if (take > 0) out.push_back({stream, std::string(reinterpret_cast<const char*>(data + i), take)});
    i += take;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::uint8_t split_seed = data[0];  // decides the chunk sizes fed to the demuxer
  data += 1;
  size -= 1;

  berth::engine::FrameDemuxer demux;
  std::string all;                        // every payload byte in arrival order
  std::map<int, std::string> per_stream;  // and split by stream
  auto sink = [&](int stream, const std::uint8_t* p, std::size_t n) {
    if (n == 0) __builtin_trap();  // the demuxer never hands out empty pieces
    all.append(reinterpret_cast<const char*>(p), n);
    per_stream[stream].append(reinterpret_cast<const char*>(p), n);
    return true;
  };
  std::size_t pos = 0;
  std::size_t step = (split_seed % 13) + 1;
  while (pos < size) {
    const std::size_t n = std::min(step, size - pos);
    if (!demux.feed(data + pos, n, sink)) __builtin_trap();  // the sink never refuses here
    pos += n;
    step = (step * 7 + split_seed) % 29 + 1;
  }
  std::string want_all;
  std::map<int, std::string> want_per_stream;
  for (const auto& piece : reference(data, size)) {
    want_all += piece.data;
    want_per_stream[piece.stream] += piece.data;
  }
  if (all != want_all || per_stream != want_per_stream) __builtin_trap();
  return 0;
}
