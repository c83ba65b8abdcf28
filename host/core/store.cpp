#include "core/store.hpp"

namespace berth::store {

std::string to_string(SessionState s) {
  switch (s) {
    case SessionState::starting:
      return "starting";
    case SessionState::ready:
      return "ready";
    case SessionState::failed:
      return "failed";
    case SessionState::stopped:
      return "stopped";
    case SessionState::dead:
      return "dead";
  }
  return "unknown";
}

SessionState session_state_from(const std::string& s) {
  if (s == "starting") return SessionState::starting;
  if (s == "ready") return SessionState::ready;
  if (s == "failed") return SessionState::failed;
  if (s == "stopped") return SessionState::stopped;
  if (s == "dead") return SessionState::dead;
  throw StoreError("unknown session state '" + s + "'");
}

}  // namespace berth::store
