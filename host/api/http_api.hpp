// The HTTP front door: owns Poco's HTTPServer, authenticates, routes, and maps core results and errors to JSON.
// Route handlers (api/routes.cpp) only translate HTTP to core calls.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "core/clock.hpp"
#include "core/idempotency.hpp"
#include "core/sandbox_service.hpp"

namespace Poco::Net {
class HTTPServer;
}

namespace berth::api {

struct ApiSettings {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8080;
  int threads = 64;
  int queue = 64;
  std::uint64_t max_body = 1 << 20;
  std::uint64_t max_file_size = 100ull << 20;
  std::map<std::string, std::string> api_keys;  // key -> owner
  bool allow_anonymous = true;
  std::string anonymous_owner = "default";
  std::string version = BERTH_VERSION;
};

/** Everything a request handler may use. Shared by all worker threads; every member is thread-safe. */
struct ApiContext {
  ApiContext(ApiSettings s, core::SandboxService& svc, core::IdempotencyRegistry& idem,
             std::shared_ptr<const core::Clock> c)
      : settings(std::move(s)), service(svc), idempotency(idem), clock(std::move(c)) {}
  ApiSettings settings;
  core::SandboxService& service;
  core::IdempotencyRegistry& idempotency;
  std::shared_ptr<const core::Clock> clock;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::atomic<std::uint64_t> next_request{1};
  std::atomic<int> heavy_in_flight{0};  // exec/file/start requests now running
  int heavy_limit = 1;                  // beyond this, 503 server_busy (keeps threads free for /health)
};

class HttpApi {
 public:
  HttpApi(ApiSettings settings, core::SandboxService& service, core::IdempotencyRegistry& idempotency,
          std::shared_ptr<const core::Clock> clock);
  ~HttpApi();

  /** Binds and starts serving. Throws on bind failure. */
  void start();
  /** The bound port (useful with port 0). */
  std::uint16_t port() const;
  /** Stops accepting, lets in-flight requests finish for up to `grace`. */
  void stop(std::chrono::seconds grace);

 private:
  std::shared_ptr<ApiContext> ctx_;
  std::unique_ptr<Poco::Net::HTTPServer> server_;
};

}  // namespace berth::api
