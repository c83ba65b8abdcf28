#include "security/harness.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <sstream>

namespace berth::test::security {

Env::Env(Options options) {
  const char* e = std::getenv("BERTH_SECURITY_ENGINE");
  engine_ = e && *e ? e : "fake";
  BerthdConfig cfg;
  // The suite's pool sizes, unless the probe sets its own (a TOML key may appear only once).
  cfg.server = options.server.find("threads") == std::string::npos
                   ? "threads = 64\nwork_slots = 16\nwork_queue = 32\n" + options.server
                   : options.server;
  if (engine_ == "docker") {
    cfg.driver_path = BERTH_DOCKER_DRIVER;
  } else if (engine_ == "podman") {
    cfg.driver_path = BERTH_PODMAN_DRIVER;
  } else if (engine_ != "fake") {
    FAIL("BERTH_SECURITY_ENGINE must be docker, podman or fake, not " << engine_);
  }
  cfg.extra = "[profiles.default]\nimage = \"" + kImage + "\"\nmemory = \"256MiB\"\npids = 128\n" + options.profile +
              "\n[auth]\n" + options.auth + "\n[auth.keys]\n\"" + kAliceKey + "\" = \"alice\"\n\"" + kBobKey +
              "\" = \"bob\"\n[auth.admin_keys]\n\"" + kAdminKey + "\" = \"ops\"\n" + options.extra + "\n";
  if (engine_ != "fake") cfg.driver_settings = options.engine_settings;
  berthd_ = std::make_unique<BerthdProcess>(cfg);
}

std::string Env::create(const HttpClient& client, const std::string& body) {
  auto r = client.post("/v1/sandboxes", body);
  INFO(r.body);
  REQUIRE(r.status == 201);
  return r.json()->getValue<std::string>("id");
}

std::string sandbox_path(const std::string& id) {
  return "/v1/sandboxes/" + id;
}

std::string to_json(const Poco::JSON::Object& o) {
  std::ostringstream out;
  o.stringify(out);
  return out.str();
}

Poco::JSON::Object::Ptr shell(const HttpClient& client, const std::string& id, const std::string& command,
                              int timeout_s) {
  Poco::JSON::Object body;
  body.set("command", command);
  body.set("timeout", timeout_s);
  auto r = client.post(sandbox_path(id) + "/shell/exec", to_json(body));
  INFO(command << " -> " << r.body);
  REQUIRE(r.status == 200);
  return r.json();
}

}  // namespace berth::test::security
