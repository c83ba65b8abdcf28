// The HTTP front door: owns Poco's HTTPServer and routes requests to handlers. Handlers only translate HTTP to
// core calls and core results/errors back to JSON.
#pragma once

#include <chrono>
#include <memory>

#include "config/config.hpp"
#include "core/clock.hpp"
#include "core/driver.hpp"

namespace Poco::Net {
class HTTPServer;
}

namespace berth::api {

class HttpApi {
 public:
  HttpApi(const config::Config& cfg, core::Driver& driver, std::shared_ptr<const core::Clock> clock);
  ~HttpApi();

  /** Binds and starts serving. Throws on bind failure. */
  void start();
  /** The bound port (useful with port 0). */
  std::uint16_t port() const;
  /** Stops accepting, lets in-flight requests finish for up to `grace`. */
  void stop(std::chrono::seconds grace);

  struct State;  // shared with the per-request handlers

 private:
  std::shared_ptr<State> state_;
  std::unique_ptr<Poco::Net::HTTPServer> server_;
};

}  // namespace berth::api
