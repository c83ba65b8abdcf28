#include "api/http_api.hpp"

#include <Poco/JSON/Object.h>
#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServer.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/ServerSocket.h>

#include <atomic>
#include <thread>

#include "core/log.hpp"

namespace berth::api {

struct HttpApi::State {
  State(const config::Config& c, core::Driver& d, std::shared_ptr<const core::Clock> k)
      : cfg(c), driver(d), clock(std::move(k)) {}
  const config::Config& cfg;
  core::Driver& driver;
  std::shared_ptr<const core::Clock> clock;
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::atomic<std::uint64_t> next_request{1};
};

namespace {

using Poco::Net::HTTPResponse;

void send_json(Poco::Net::HTTPServerResponse& rs, HTTPResponse::HTTPStatus status, const Poco::JSON::Object& body) {
  std::ostringstream os;
  body.stringify(os);
  auto text = os.str();
  rs.setStatus(status);
  rs.setContentType("application/json");
  rs.setContentLength(static_cast<std::streamsize>(text.size()));
  rs.send() << text;
}

class Handler final : public Poco::Net::HTTPRequestHandler {
 public:
  explicit Handler(std::shared_ptr<HttpApi::State> state) : state_(std::move(state)) {}

  void handleRequest(Poco::Net::HTTPServerRequest& rq, Poco::Net::HTTPServerResponse& rs) override {
    auto t0 = std::chrono::steady_clock::now();
    std::string request_id = "req-" + std::to_string(state_->next_request++);
    rs.set("X-Request-Id", request_id);
    const std::string& path = rq.getURI();
    if (rq.getMethod() == "GET" && path == "/health") {
      Poco::JSON::Object body;
      body.set("status", "ok");
      body.set("version", BERTH_VERSION);
      body.set("uptime_s", std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() -
                                                                             state_->started)
                               .count());
      send_json(rs, HTTPResponse::HTTP_OK, body);
    } else {
      Poco::JSON::Object err;
      err.set("code", "not_found");
      err.set("message", "no route for " + rq.getMethod() + " " + path);
      err.set("request_id", request_id);
      Poco::JSON::Object body;
      body.set("error", err);
      send_json(rs, HTTPResponse::HTTP_NOT_FOUND, body);
    }
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
    log::info("http.access", {{"request_id", request_id},
                              {"method", rq.getMethod()},
                              {"path", path},
                              {"status", std::to_string(static_cast<int>(rs.getStatus()))},
                              {"ms", std::to_string(ms)}});
  }

 private:
  std::shared_ptr<HttpApi::State> state_;
};

class Factory final : public Poco::Net::HTTPRequestHandlerFactory {
 public:
  explicit Factory(std::shared_ptr<HttpApi::State> state) : state_(std::move(state)) {}
  Poco::Net::HTTPRequestHandler* createRequestHandler(const Poco::Net::HTTPServerRequest&) override {
    return new Handler(state_);
  }

 private:
  std::shared_ptr<HttpApi::State> state_;
};

}  // namespace

HttpApi::HttpApi(const config::Config& cfg, core::Driver& driver, std::shared_ptr<const core::Clock> clock)
    : state_(std::make_shared<State>(cfg, driver, std::move(clock))) {}

HttpApi::~HttpApi() {
  if (server_) server_->stopAll(true);
}

void HttpApi::start() {
  Poco::Net::ServerSocket socket(Poco::Net::SocketAddress(state_->cfg.server.host, state_->cfg.server.port));
  auto* params = new Poco::Net::HTTPServerParams;
  params->setMaxThreads(state_->cfg.server.threads);
  params->setMaxQueued(state_->cfg.server.queue);
  params->setKeepAlive(true);
  server_ = std::make_unique<Poco::Net::HTTPServer>(new Factory(state_), socket, params);
  server_->start();
}

std::uint16_t HttpApi::port() const { return server_ ? server_->port() : 0; }

void HttpApi::stop(std::chrono::seconds grace) {
  if (!server_) return;
  server_->stop();
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (server_->currentConnections() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  server_->stopAll(true);
}

}  // namespace berth::api
