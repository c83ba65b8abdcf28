// libFuzzer target: the berth-agent frame decoder and payload codecs (agent/protocol, shared by the agent and
// plugins/common's AgentClient). The input is fed in pieces whose sizes come from its first byte; the frames that
// come out must be exactly the ones a one-shot parse finds, each must re-encode to its own bytes, and every
// payload decoder must stay inside its payload whatever the bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "berth/agent/protocol.hpp"

using namespace berth::agent;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const unsigned split = data[0] % 17 + 1;
  const char* bytes = reinterpret_cast<const char*>(data + 1);
  const std::size_t n = size - 1;

  // Reference: whole frames from the start until a short or oversized one.
  std::vector<std::string> expected;
  bool too_large = false;
  for (std::size_t i = 0; i + kHeaderSize <= n;) {
    const auto* p = reinterpret_cast<const unsigned char*>(bytes + i);
    const std::uint32_t len =
        (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
    if (len > kMaxPayload) {
      too_large = true;
      break;
    }
    if (i + kHeaderSize + len > n) break;
    expected.emplace_back(bytes + i, kHeaderSize + len);
    i += kHeaderSize + len;
  }

  FrameDecoder dec;
  std::size_t got = 0;
  bool saw_too_large = false;
  for (std::size_t off = 0; off < n && !saw_too_large;) {
    const std::size_t take = std::min<std::size_t>(split, n - off);
    dec.feed(bytes + off, take);
    off += take;
    Frame f;
    for (;;) {
      const auto st = dec.next(f);
      if (st == FrameDecoder::Status::kNeedMore) break;
      if (st == FrameDecoder::Status::kTooLarge) {
        saw_too_large = true;
        break;
      }
      if (got >= expected.size()) std::abort();
      std::string original = expected[got++];
      original[6] = original[7] = 0;  // flags are reserved: encode_frame writes 0
      if (encode_frame(static_cast<MsgType>(f.type), f.channel, f.payload) != original) std::abort();
      // Every decoder on every payload: bounds-checked, never past the end.
      (void)StartRequest::decode(f.payload);
      (void)ExitInfo::decode(f.payload);
      (void)ErrorInfo::decode(f.payload);
      PayloadReader r(f.payload);
      const auto count = r.u32();
      for (std::uint32_t i = 0; i < count && !r.failed(); ++i)
        (void)FileInfo::decode_from(r);
      if (auto s = StartRequest::decode(f.payload)) {
        if (StartRequest::decode(s->encode())->encode() != s->encode()) std::abort();
      }
    }
  }
  if (got != expected.size() || saw_too_large != too_large) std::abort();
  return 0;
}
