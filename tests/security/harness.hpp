// The security suite's harness (issue 8): a real berthd on the engine named by BERTH_SECURITY_ENGINE (docker,
// podman or fake; CTest sets it per entry), with two tenants (alice, bob) and an operator holding an admin key.
// Each finding's probes live in their own file (files_test.cpp, http_test.cpp, ...) and carry one tag per area, so
// CTest runs one entry per engine and area (tests/CMakeLists.txt). Probes are bounded: races and slow clients run a
// fixed number of attempts, never "until it works".
#pragma once

#include <Poco/JSON/Object.h>

#include <memory>
#include <string>

#include "api/berthd_process.hpp"

namespace berth::test::security {

/** API keys the harness configures; owners are "alice" and "bob"; the admin key has the admin role ("ops"). */
inline const std::string kAliceKey = "alice-key-0123456789abcdef";
inline const std::string kBobKey = "bob-key-0123456789abcdef";
inline const std::string kAdminKey = "admin-key-0123456789abcdef";
/** The sandbox image every engine has (scripts/start-services builds it). */
inline const std::string kImage = "berth/python:3.11";

/** Knobs a probe may add to the generated berth.toml (each string is TOML lines for that table). */
struct Options {
  std::string server;           // extra lines under [server]
  std::string profile;          // extra lines under [profiles.default] (image, memory and pids are set already)
  std::string auth;             // extra lines under [auth] (the three keys are set already)
  std::string extra;            // whole extra tables: [cleanup], [limits], [profiles.other], ...
  std::string engine_settings;  // extra lines under [driver.settings] for docker and podman (ignored on fake)
};

/**
 * One berthd for one probe. The engine comes from $BERTH_SECURITY_ENGINE ("docker", "podman", default "fake").
 * Not thread-safe to construct; its clients may be used from many threads.
 */
class Env {
 public:
  explicit Env(Options options = {});
  /** "docker", "podman" or "fake". */
  const std::string& engine() const { return engine_; }
  bool real_engine() const { return engine_ != "fake"; }
  BerthdProcess& berthd() { return *berthd_; }
  std::uint16_t port() const { return berthd_->port(); }
  HttpClient alice() const { return HttpClient(port(), kAliceKey); }
  HttpClient bob() const { return HttpClient(port(), kBobKey); }
  HttpClient admin() const { return HttpClient(port(), kAdminKey); }
  HttpClient anonymous() const { return HttpClient(port()); }

  /** Creates a sandbox as `client` with `body` (JSON); REQUIREs 201 and returns its id. */
  std::string create(const HttpClient& client, const std::string& body = "{}");

 private:
  std::string engine_;
  std::unique_ptr<BerthdProcess> berthd_;
};

/** "/v1/sandboxes/<id>". */
std::string sandbox_path(const std::string& id);
/** Serialises a JSON object. */
std::string to_json(const Poco::JSON::Object& o);
/** Runs `command` through shell/exec as `client`; REQUIREs 200 and returns the parsed body. */
Poco::JSON::Object::Ptr shell(const HttpClient& client, const std::string& id, const std::string& command,
                              int timeout_s = 60);

}  // namespace berth::test::security
