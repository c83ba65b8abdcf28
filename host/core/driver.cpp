#include "core/driver.hpp"

#include <algorithm>

namespace berth::core {

std::string_view to_string(DriverErrc code) {
  switch (code) {
    case DriverErrc::not_found:
      return "not_found";
    case DriverErrc::invalid_argument:
      return "invalid_argument";
    case DriverErrc::conflict:
      return "conflict";
    case DriverErrc::unavailable:
      return "unavailable";
    case DriverErrc::timeout:
      return "timeout";
    case DriverErrc::unsupported:
      return "unsupported";
    case DriverErrc::internal:
      return "internal";
    case DriverErrc::cancelled:
      return "cancelled";
  }
  return "internal";
}

std::string_view to_string(SessionState state) {
  switch (state) {
    case SessionState::starting:
      return "starting";
    case SessionState::running:
      return "running";
    case SessionState::exited:
      return "exited";
    case SessionState::missing:
      return "missing";
    case SessionState::unknown:
      return "unknown";
  }
  return "unknown";
}

std::string_view to_string(EntryType type) {
  switch (type) {
    case EntryType::file:
      return "file";
    case EntryType::directory:
      return "directory";
    case EntryType::symlink:
      return "symlink";
    case EntryType::other:
      return "other";
  }
  return "other";
}

std::vector<DirEntry> Driver::dir_list(const std::string& handle, const std::string& path) {
  std::vector<DirEntry> entries;
  dir_scan(handle, path, [&](const DirEntry& e) {
    entries.push_back(e);
    return true;
  });
  std::sort(entries.begin(), entries.end(), [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
  return entries;
}

std::unique_ptr<Process> Driver::process_start(const std::string&, const ProcessSpec&) {
  throw DriverError(DriverErrc::unsupported, "process_start: driver " + identity().name +
                                                 " has no interactive processes (ABI 1.3, BERTH_CAP_PROCESS)");
}

std::optional<std::string> transport_of(const std::string& endpoint) {
  const auto colon = endpoint.find(':');
  if (colon == std::string::npos || colon == 0) return std::nullopt;
  std::string scheme = endpoint.substr(0, colon);
  const bool plain =
      scheme.size() <= 32 && scheme.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789+.-") == std::string::npos;
  return plain ? scheme : "other";
}

}  // namespace berth::core
