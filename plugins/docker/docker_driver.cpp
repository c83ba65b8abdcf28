// berth_driver_docker: runs Berth sandboxes as Docker containers through the Engine API on a unix socket.
//
// Config (JSON, every key optional; unknown keys are refused):
//   {"socket": "/var/run/docker.sock", "api_version": "1.41" (pin; default: negotiated), "connect_timeout_ms": 2000,
//    "request_timeout_ms": 60000, "default_user": "1000:1000", "ulimit_nofile": 1024, "ulimit_nproc": 8192,
//    "stop_timeout_s": 2, "tmp_size_mb": 256 (sized tmpfs at /tmp; 0 = none)}
// The engine need not be up at configure time: calls then fail with BERTH_UNAVAILABLE until it is back.
#include <berth/driver.h>

#include "berth/engine/compat_driver.hpp"

#ifndef BERTH_DOCKER_DRIVER_VERSION
#define BERTH_DOCKER_DRIVER_VERSION "0.0.0"
#endif

namespace {

const berth::engine::compat::Flavor& docker_flavor() {
  static const berth::engine::compat::Flavor flavor = [] {
    berth::engine::compat::Flavor f;
    f.name = "docker";
    f.default_socket = "/var/run/docker.sock";
    f.max_api_version = "1.41";
    f.network_mode_enabled = "bridge";
    f.init = true;
    return f;
  }();
  return flavor;
}

berth_status docker_configure(const berth_host_api* host, const char* config_json, berth_instance** out,
                              berth_error* err) {
  try {
    return berth::engine::compat::configure(docker_flavor(), host, config_json, out, err);
  } catch (...) {
    return BERTH_INTERNAL;
  }
}

const berth_driver_api kDockerDriver = {BERTH_DRIVER_API_INIT,
                                        "docker",
                                        BERTH_DOCKER_DRIVER_VERSION,
                                        berth::engine::compat::kCapabilities,
                                        docker_configure,
                                        BERTH_ENGINE_COMPAT_SLOTS};

}  // namespace

BERTH_DRIVER_EXPORT(kDockerDriver)
