// berth_driver_podman: runs Berth sandboxes as Podman containers through Podman's Docker-compatible REST API
// (`podman system service`, /v1.41/...) on a unix socket. Same engine driver as docker, with Podman's defaults.
//
// Config (JSON, every key optional; unknown keys are refused):
//   {"socket": "/run/podman/podman.sock", "api_version": "1.41" (pin; default: negotiated), "connect_timeout_ms": 2000,
//    "request_timeout_ms": 60000, "default_user": "1000:1000", "ulimit_nofile": 1024, "ulimit_nproc": 8192,
//    "stop_timeout_s": 2, "tmp_size_mb": 256 (sized tmpfs at /tmp; 0 = none)}
// Podman on some kernels needs explicit nofile/nproc ulimits on every container: the engine driver always sets them.
#include <berth/driver.h>

#include "berth/engine/compat_driver.hpp"

#ifndef BERTH_PODMAN_DRIVER_VERSION
#define BERTH_PODMAN_DRIVER_VERSION "0.0.0"
#endif

namespace {

const berth::engine::compat::Flavor& podman_flavor() {
  static const berth::engine::compat::Flavor flavor = [] {
    berth::engine::compat::Flavor f;
    f.name = "podman";
    f.default_socket = "/run/podman/podman.sock";
    f.max_api_version = "1.41";
    f.network_mode_enabled = "bridge";
    f.init = true;  // catatonit
    return f;
  }();
  return flavor;
}

berth_status podman_configure(const berth_host_api* host, const char* config_json, berth_instance** out,
                              berth_error* err) {
  try {
    return berth::engine::compat::configure(podman_flavor(), host, config_json, out, err);
  } catch (...) {
    return BERTH_INTERNAL;
  }
}

const berth_driver_api kPodmanDriver = {BERTH_DRIVER_API_INIT,
                                        "podman",
                                        BERTH_PODMAN_DRIVER_VERSION,
                                        berth::engine::compat::kCapabilities,
                                        podman_configure,
                                        BERTH_ENGINE_COMPAT_SLOTS};

}  // namespace

BERTH_DRIVER_EXPORT(kPodmanDriver)
