// A core::Driver for tests that passes every call on to a real driver; a test derives from it and overrides only the
// calls it counts, stalls or bends (see sandbox_service_test.cpp, cleanup_test.cpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/driver.hpp"

namespace berth::test {

/**
 * Forwards each core::Driver call to `inner`, which must outlive it. Thread-safety and errors are `inner`'s: nothing
 * is added or caught here.
 */
class ForwardingDriver : public core::Driver {
 public:
  explicit ForwardingDriver(core::Driver& inner) : inner_(inner) {}

  const core::DriverIdentity& identity() const override { return inner_.identity(); }
  void volume_create(const std::string& n, const core::Labels& l) override { inner_.volume_create(n, l); }
  void volume_remove(const std::string& n) override { inner_.volume_remove(n); }
  bool volume_exists(const std::string& n) override { return inner_.volume_exists(n); }
  core::SessionInfo session_create(const core::SessionSpec& s) override { return inner_.session_create(s); }
  core::SessionInfo session_inspect(const std::string& h) override { return inner_.session_inspect(h); }
  void session_stop(const std::string& h, std::chrono::milliseconds g) override { inner_.session_stop(h, g); }
  void session_remove(const std::string& h) override { inner_.session_remove(h); }
  std::vector<core::SessionListing> session_list(const core::Labels& f) override { return inner_.session_list(f); }
  core::SessionStats session_stats(const std::string& h) override { return inner_.session_stats(h); }
  std::optional<bool> image_exists(const std::string& i) override { return inner_.image_exists(i); }
  core::ExecResult exec(const std::string& h, const core::ExecRequest& r, const core::OutputSink& o,
                        const core::CancelToken* c) override {
    return inner_.exec(h, r, o, c);
  }
  void file_put(const std::string& h, const std::string& p, std::uint32_t m, std::uint64_t s,
                const core::ByteSource& src) override {
    inner_.file_put(h, p, m, s, src);
  }
  void file_get(const std::string& h, const std::string& p, const core::ByteSink& s) override {
    inner_.file_get(h, p, s);
  }
  void dir_scan(const std::string& h, const std::string& p, const core::DirEntrySink& s) override {
    inner_.dir_scan(h, p, s);
  }
  void path_remove(const std::string& h, const std::string& p) override { inner_.path_remove(h, p); }
  bool supports_processes() const override { return inner_.supports_processes(); }
  std::unique_ptr<core::Process> process_start(const std::string& h, const core::ProcessSpec& s) override {
    return inner_.process_start(h, s);
  }

 protected:
  core::Driver& inner_;
};

}  // namespace berth::test
