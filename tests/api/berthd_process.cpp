#include "api/berthd_process.hpp"

#include <Poco/Base64Encoder.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/SocketStream.h>
#include <Poco/Net/StreamSocket.h>
#include <Poco/StreamCopier.h>
#include <Poco/URI.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <atomic>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#ifndef BERTHD_PATH
#error "BERTHD_PATH must name the berthd binary"
#endif
#ifndef BERTH_FAKE_DRIVER
#error "BERTH_FAKE_DRIVER must name berth_driver_fake.so"
#endif

namespace berth::test {
namespace {

using namespace std::chrono_literals;

std::filesystem::path make_temp_dir() {
  std::string templ = (std::filesystem::temp_directory_path() / "berth-api-XXXXXX").string();
  if (!mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed");
  return templ;
}

/** TOML basic string. Paths from mkdtemp and CMake need no escaping beyond backslash and quote. */
std::string toml_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    out += c;
  }
  return out + "\"";
}

HttpResponse read_after_failed_write(Poco::Net::StreamSocket& socket, const std::string& write_error,
                                     std::chrono::steady_clock::time_point t0) {
  HttpResponse r;
  Poco::Net::HTTPResponse rs;
  try {
    Poco::Net::SocketInputStream in(socket);
    rs.read(in);
    r.status = static_cast<int>(rs.getStatus());
    if (rs.hasContentLength()) {
      r.body.resize(static_cast<std::size_t>(rs.getContentLength64()));
      in.read(r.body.data(), static_cast<std::streamsize>(r.body.size()));
      r.body.resize(static_cast<std::size_t>(in.gcount()));
    } else {
      Poco::StreamCopier::copyToString(in, r.body);
    }
  } catch (const Poco::Exception& e) {
    throw std::runtime_error("sending the body failed (" + write_error + ") and no response was readable (" +
                             e.displayText() + ")");
  }
  r.headers = rs;
  r.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  return r;
}

}  // namespace

// ---- BerthdProcess --------------------------------------------------------------------------------------------------

BerthdProcess::BerthdProcess(BerthdConfig config) : config_(std::move(config)), dir_(make_temp_dir()) {
  // The first start listens on port 0, so the kernel hands berthd a free port that no other (concurrently running)
  // test can be handed too; the harness reads it from berthd's own "berthd.started listen=..." line and writes it
  // into the config, so restarts come back on the same port. (Picking a port in the test and closing it races with
  // other test processes; with a listener that sets SO_REUSEPORT two berthds can then silently share one port.)
  write_config();
  std::string why;
  if (!spawn_and_wait_healthy(why)) {
    if (!std::getenv("BERTH_TEST_KEEP_DIRS")) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
    throw std::runtime_error("berthd did not start: " + why);
  }
  write_config();
}

BerthdProcess::~BerthdProcess() {
  if (pid_ > 0) kill9();
  remove_engine_leftovers();
  if (!std::getenv("BERTH_TEST_KEEP_DIRS")) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

void BerthdProcess::write_config() {
  std::ofstream out(config_path(), std::ios::trunc);
  out << "[server]\n"
      << "listen = " << toml_string("127.0.0.1:" + std::to_string(port_)) << "\n"
      << config_.server << "\n"
      << "[store]\n"
      << "path = " << toml_string((dir_ / "berth.db").string()) << "\n"
      << "[driver]\n"
      << "path = " << toml_string(config_.driver_path.empty() ? BERTH_FAKE_DRIVER : config_.driver_path) << "\n"
      << "[driver.settings]\n"
      << config_.driver_settings << "\n"
      << config_.extra << "\n";
  if (!out) throw std::runtime_error("cannot write " + config_path().string());
}

namespace {

/** Spawns `binary --config config` with stdout and stderr appended to `log_file`; dies with the test binary. */
pid_t spawn_berthd(const std::string& config, const std::string& log_file) {
  // Everything the child needs is prepared before fork(): after it, only async-signal-safe calls.
  std::string binary = BERTHD_PATH;
  const char* argv[] = {binary.c_str(), "--config", config.c_str(), nullptr};
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test binary
    if (getppid() != parent) _exit(127);
    int fd = open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
    }
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    // The test binary's signal state must not leak into berthd (it waits for SIGTERM with sigwait).
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    execv(argv[0], const_cast<char* const*>(argv));
    _exit(127);
  }
  return pid;
}

std::uintmax_t file_size_or_zero(const std::filesystem::path& p) {
  std::error_code ec;
  auto n = std::filesystem::file_size(p, ec);
  return ec ? 0 : n;
}

}  // namespace

bool BerthdProcess::spawn_and_wait_healthy(std::string& why) {
  auto log_offset = file_size_or_zero(log_path());
  pid_ = spawn_berthd(config_path().string(), log_path().string());

  // Wait for this process's own "berthd.started listen=HOST:PORT" line (after its bind succeeded), then for /health.
  const std::string marker = "berthd.started listen=";
  auto deadline = std::chrono::steady_clock::now() + 20s;
  std::uint16_t bound = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      why = "berthd exited during start-up (status " + std::to_string(status) + "); log:\n" + log();
      return false;
    }
    if (bound == 0) {
      std::string text = log();
      auto at = text.find(marker, std::min<std::size_t>(log_offset, text.size()));
      if (at != std::string::npos) {
        auto end = text.find_first_of(" \n", at + marker.size());
        std::string listen = text.substr(at + marker.size(), end - at - marker.size());
        bound = static_cast<std::uint16_t>(std::stoi(listen.substr(listen.rfind(':') + 1)));
        if (port_ != 0 && bound != port_) {
          kill9();
          why = "berthd listens on " + listen + ", expected port " + std::to_string(port_);
          return false;
        }
        port_ = bound;
      }
    }
    if (bound != 0) {
      try {
        auto r = HttpClient(port_).get("/health");
        if (r.status == 200 && r.body.find("\"ok\"") != std::string::npos) return true;
      } catch (const std::exception&) {
        // not answering yet
      }
    }
    std::this_thread::sleep_for(20ms);
  }
  kill9();
  why = "berthd did not answer GET /health within 20 s; log:\n" + log();
  return false;
}

ExitResult run_berthd_until_exit(const std::string& toml, std::chrono::milliseconds timeout) {
  auto dir = make_temp_dir();
  auto config = dir / "berth.toml";
  auto log_file = dir / "berthd.log";
  {
    std::string text = toml;
    for (auto at = text.find("@DIR@"); at != std::string::npos; at = text.find("@DIR@"))
      text.replace(at, 5, dir.string());
    std::ofstream out(config);
    out << text;
  }
  pid_t pid = spawn_berthd(config.string(), log_file.string());
  ExitResult result;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      result.exited = true;
      result.code = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
      break;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      ::kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(20ms);
  }
  std::ifstream in(log_file, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  result.log = ss.str();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return result;
}

void BerthdProcess::start() {
  if (pid_ > 0) throw std::logic_error("berthd is already running");
  std::string why;
  if (!spawn_and_wait_healthy(why)) throw std::runtime_error("berthd did not restart: " + why);
}

int BerthdProcess::wait_exit(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_ || (r < 0 && errno == ECHILD)) {
      pid_ = -1;
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return -WTERMSIG(status);
      return -1000;
    }
    if (std::chrono::steady_clock::now() >= deadline) return -2000;  // still running
    std::this_thread::sleep_for(10ms);
  }
}

int BerthdProcess::stop(std::chrono::seconds timeout) {
  if (pid_ <= 0) throw std::logic_error("berthd is not running");
  ::kill(pid_, SIGTERM);
  int rc = wait_exit(timeout);
  if (rc == -2000) {
    kill9();
    throw std::runtime_error("berthd did not exit within " + std::to_string(timeout.count()) + " s of SIGTERM");
  }
  return rc;
}

void BerthdProcess::kill9() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  wait_exit(10s);
  pid_ = -1;
}

void BerthdProcess::restart() {
  stop();
  start();
}

bool BerthdProcess::running() {
  if (pid_ <= 0) return false;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

void BerthdProcess::remove_engine_leftovers() const {
  std::string cli;
  if (config_.driver_path.find("berth_driver_docker") != std::string::npos) cli = "docker";
  if (config_.driver_path.find("berth_driver_podman") != std::string::npos) cli = "podman";
  if (cli.empty() || std::getenv("BERTH_TEST_KEEP_DIRS")) return;
  // The instance id every start logged ("berthd.started ... instance=<id>"); ids are [A-Za-z0-9._-].
  std::set<std::string> instances;
  std::istringstream in(log());
  for (std::string line; std::getline(in, line);) {
    const auto at = line.find("berthd.started");
    const auto key = at == std::string::npos ? at : line.find(" instance=", at);
    if (key == std::string::npos) continue;
    std::string id = line.substr(key + 10, line.find(' ', key + 10) - key - 10);
    if (!id.empty() &&
        id.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == std::string::npos)
      instances.insert(id);
  }
  for (const auto& id : instances) {
    const std::string filter = " --filter label=berth.instance=" + id;
    const std::string cmd = cli + " ps -aq" + filter + " | xargs -r " + cli + " rm -f >/dev/null 2>&1; " + cli +
                            " volume ls -q" + filter + " | xargs -r " + cli + " volume rm -f >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      // best effort: the engine may be the thing a test took away
    }
  }
}

std::string BerthdProcess::log() const {
  std::ifstream in(log_path(), std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::size_t BerthdProcess::count_log_lines(std::string_view needle) const {
  std::istringstream in(log());
  std::string line;
  std::size_t n = 0;
  while (std::getline(in, line)) {
    if (line.find(needle) != std::string::npos) ++n;
  }
  return n;
}

bool BerthdProcess::wait_for_log(std::string_view needle, std::chrono::milliseconds timeout) const {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (count_log_lines(needle) > 0) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
}

// ---- HTTP -----------------------------------------------------------------------------------------------------------

Poco::JSON::Object::Ptr HttpResponse::json() const {
  Poco::JSON::Parser parser;
  auto v = parser.parse(body);
  if (v.type() != typeid(Poco::JSON::Object::Ptr)) throw std::runtime_error("response is not a JSON object: " + body);
  return v.extract<Poco::JSON::Object::Ptr>();
}

namespace {

std::string base64(const std::string& bytes) {
  std::ostringstream os;
  Poco::Base64Encoder encoder(os);
  encoder.rdbuf()->setLineLength(0);
  encoder << bytes;
  encoder.close();
  return os.str();
}

/**
 * With BERTH_RECORD_RESPONSES=DIR set, appends the exchange to DIR/<pid>.jsonl, one JSON object a line: method,
 * uri_b64, status, headers, and body_b64 (or body_truncated for a body over 1 MiB). tests/api/openapi_conformance.py
 * --suite checks every recorded answer against GET /openapi.json. Thread-safe.
 */
void record_exchange(const std::string& method, const std::string& uri, const HttpResponse& r) {
  static const char* dir = std::getenv("BERTH_RECORD_RESPONSES");
  if (dir == nullptr || *dir == '\0') return;
  Poco::JSON::Object o;
  o.set("method", method);
  o.set("uri_b64", base64(uri));
  o.set("status", r.status);
  Poco::JSON::Object headers;
  for (const auto& [name, value] : r.headers)
    headers.set(name, value);
  o.set("headers", headers);
  if (r.body.size() > (1u << 20)) {
    o.set("body_truncated", true);
  } else {
    o.set("body_b64", base64(r.body));
  }
  std::ostringstream line;
  o.stringify(line);
  static std::mutex mutex;
  std::lock_guard lock(mutex);
  std::ofstream(std::string(dir) + "/" + std::to_string(::getpid()) + ".jsonl", std::ios::app) << line.str() << "\n";
}

}  // namespace

HttpResponse HttpClient::request(const std::string& method, const std::string& uri, const std::string& body,
                                 const std::string& content_type, const Headers& headers) const {
  try {
    auto r = exchange(method, uri, body, content_type, headers);
    record_exchange(method, uri, r);
    return r;
  } catch (const Poco::Exception& e) {
    throw std::runtime_error(method + " " + uri + " (" + std::to_string(body.size()) +
                             " body bytes): " + e.displayText());
  }
}

HttpResponse HttpClient::exchange(const std::string& method, const std::string& uri, const std::string& body,
                                  const std::string& content_type, const Headers& headers) const {
  auto t0 = std::chrono::steady_clock::now();
  Poco::Net::HTTPClientSession session("127.0.0.1", port_);
  session.setTimeout(Poco::Timespan(60, 0));
  Poco::Net::HTTPRequest rq(method, uri, Poco::Net::HTTPMessage::HTTP_1_1);
  rq.setKeepAlive(false);
  if (!token_.empty()) rq.set("Authorization", "Bearer " + token_);
  for (const auto& [k, v] : headers)
    rq.set(k, v);
  bool with_body = !body.empty() || method == "POST" || method == "PUT";
  if (with_body) {
    if (!content_type.empty()) rq.setContentType(content_type);
    rq.setContentLength(static_cast<std::streamsize>(body.size()));
  }
  auto& out = session.sendRequest(rq);
  if (with_body) {
    out.write(body.data(), static_cast<std::streamsize>(body.size()));
    out.flush();
  }
  if (const auto* failed = session.networkException()) {
    // The server answered and closed before reading the whole body (e.g. 413 decided from Content-Length). Like
    // curl, still read the response it sent; Poco's session would only rethrow the write error.
    return read_after_failed_write(session.socket(), failed->displayText(), t0);
  }
  Poco::Net::HTTPResponse rs;
  auto& in = session.receiveResponse(rs);
  HttpResponse r;
  r.status = static_cast<int>(rs.getStatus());
  Poco::StreamCopier::copyToString(in, r.body);
  r.headers = rs;
  r.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  return r;
}

std::string url_encode(const std::string& value) {
  std::string out;
  Poco::URI::encode(value, "!#$&'()*+,/:;=?@[]% \"<>\\^`{|}", out);
  return out;
}

}  // namespace berth::test

namespace berth::test {

std::pair<std::string, std::string> multipart(const std::vector<Part>& parts) {
  static std::atomic<unsigned> counter{0};
  std::string boundary = "berth-test-boundary-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  std::string body;
  for (const auto& p : parts) {
    body += "--" + boundary + "\r\n";
    body += "Content-Disposition: form-data; name=\"" + p.name + "\"";
    if (!p.filename.empty()) body += "; filename=\"" + p.filename + "\"\r\nContent-Type: application/octet-stream";
    body += "\r\n\r\n" + p.value + "\r\n";
  }
  body += "--" + boundary + "--\r\n";
  return {"multipart/form-data; boundary=" + boundary, body};
}

}  // namespace berth::test
