#include "berth/engine/client.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/JSONException.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/StreamCopier.h>
#include <Poco/Timespan.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <sstream>

#include "berth/engine/hijack.hpp"

namespace berth::engine {

namespace {

constexpr std::string_view kHostHeader = "docker";

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

std::string trim(std::string_view text) {
  size_t b = 0, e = text.size();
  while (b < e && std::isspace(static_cast<unsigned char>(text[b])))
    ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(text[e - 1])))
    --e;
  return std::string(text.substr(b, e - b));
}

Poco::Timespan timespan(std::chrono::milliseconds ms) {
  return Poco::Timespan(static_cast<Poco::Timespan::TimeDiff>(ms.count()) * 1000);
}

void collect_headers(const Poco::Net::HTTPResponse& rs, Response& out) {
  out.status = static_cast<int>(rs.getStatus());
  out.reason = rs.getReason();
  for (const auto& [name, value] : rs)
    out.headers[lower(name)] = value;
}

/** Applies the per-operation timeouts to a session built on an already connected socket. */
void apply_timeouts(Poco::Net::HTTPClientSession& session, std::chrono::milliseconds timeout) {
  session.setTimeout(timespan(timeout));
  session.socket().setReceiveTimeout(timespan(timeout));
  session.socket().setSendTimeout(timespan(timeout));
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------

Errc errc_from_http_status(int status) {
  switch (status) {
    case 400:
      return Errc::invalid_argument;
    case 401:
    case 403:
      return Errc::invalid_argument;  // "not allowed" (e.g. writing to a read-only rootfs)
    case 404:
      return Errc::not_found;
    case 409:
      return Errc::conflict;
    case 503:
      return Errc::unavailable;
    case 504:
      return Errc::timeout;
    default:
      return status >= 400 && status < 500 ? Errc::invalid_argument : Errc::internal;
  }
}

std::string engine_message(std::string_view body) {
  try {
    Poco::JSON::Parser parser;
    auto value = parser.parse(std::string(body));
    auto object = value.extract<Poco::JSON::Object::Ptr>();
    if (object && object->has("message")) return object->getValue<std::string>("message");
  } catch (...) {
  }
  std::string text = trim(body);
  if (text.size() > 2000) text = text.substr(0, 2000) + "...";
  return text;
}

void throw_http_error(std::string_view what, int status, std::string_view body) {
  std::string message(what);
  message += ": HTTP ";
  message += std::to_string(status);
  std::string detail = engine_message(body);
  if (!detail.empty()) {
    message += ": ";
    message += detail;
  }
  throw Error(errc_from_http_status(status), message, status);
}

std::string url_encode(std::string_view text) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size() * 3);
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

Poco::Dynamic::Var parse_json(std::string_view text) {
  try {
    Poco::JSON::Parser parser;
    return parser.parse(std::string(text));
  } catch (const Poco::Exception& e) {
    throw Error(Errc::internal, "engine answered malformed JSON: " + e.displayText());
  }
}

Poco::JSON::Object::Ptr parse_json_object(std::string_view text) {
  auto value = parse_json(text);
  try {
    auto object = value.extract<Poco::JSON::Object::Ptr>();
    if (object) return object;
  } catch (...) {
  }
  throw Error(Errc::internal, "engine answered JSON that is not an object");
}

std::string to_json(const Poco::JSON::Object::Ptr& object) {
  std::ostringstream out;
  object->stringify(out);
  return out.str();
}

std::string to_json(const Poco::JSON::Array::Ptr& array) {
  std::ostringstream out;
  array->stringify(out);
  return out.str();
}

int compare_api_versions(std::string_view a, std::string_view b) {
  auto parts = [](std::string_view v) {
    long major = 0, minor = 0;
    size_t dot = v.find('.');
    try {
      major = std::stol(std::string(v.substr(0, dot)));
      if (dot != std::string_view::npos) minor = std::stol(std::string(v.substr(dot + 1)));
    } catch (...) {
    }
    return std::pair<long, long>(major, minor);
  };
  auto pa = parts(a), pb = parts(b);
  if (pa < pb) return -1;
  if (pb < pa) return 1;
  return 0;
}

// ---------------------------------------------------------------------------------------------------------------

SigpipeGuard::SigpipeGuard() {
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGPIPE);
  sigset_t pending;
  sigemptyset(&pending);
  if (sigpending(&pending) == 0) pending_before_ = sigismember(&pending, SIGPIPE) == 1;
  active_ = pthread_sigmask(SIG_BLOCK, &block, &old_mask_) == 0;
}

SigpipeGuard::~SigpipeGuard() {
  if (!active_) return;
  if (!pending_before_) {
    sigset_t pending;
    sigemptyset(&pending);
    if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
      sigset_t only;
      sigemptyset(&only);
      sigaddset(&only, SIGPIPE);
      struct timespec zero = {0, 0};
      while (sigtimedwait(&only, nullptr, &zero) == -1 && errno == EINTR) {
      }
    }
  }
  pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
}

// ---------------------------------------------------------------------------------------------------------------

Client::Client(ClientOptions options) : options_(std::move(options)) {}
Client::~Client() = default;

std::chrono::milliseconds Client::effective(std::chrono::milliseconds timeout) const {
  return timeout.count() > 0 ? timeout : options_.request_timeout;
}

void Client::reset_api_version() {
  std::lock_guard lock(mutex_);
  negotiated_.clear();
}

Poco::Net::StreamSocket Client::connect() {
  try {
    Poco::Net::SocketAddress address(Poco::Net::SocketAddress::UNIX_LOCAL, options_.socket_path);
    Poco::Net::StreamSocket socket(Poco::Net::SocketAddress::UNIX_LOCAL);
    socket.connect(address, timespan(options_.connect_timeout));
    return socket;
  } catch (const Poco::Exception& e) {
    reset_api_version();
    throw Error(Errc::unavailable, options_.engine_name + " engine unreachable at unix://" + options_.socket_path +
                                       ": " + e.displayText());
  } catch (const std::exception& e) {
    reset_api_version();
    throw Error(Errc::unavailable,
                options_.engine_name + " engine unreachable at unix://" + options_.socket_path + ": " + e.what());
  }
}

void Client::rethrow_transport(std::string_view what) {
  try {
    throw;
  } catch (const Error&) {
    throw;
  } catch (const Poco::TimeoutException& e) {
    throw Error(Errc::timeout, std::string(what) + ": " + options_.engine_name + " engine did not answer in time (" +
                                   e.displayText() + ")");
  } catch (const Poco::Exception& e) {
    // The engine went away in the middle of the exchange (reset, EOF before an answer, ...).
    reset_api_version();
    throw Error(Errc::unavailable, std::string(what) + ": connection to the " + options_.engine_name +
                                       " engine failed: " + e.displayText());
  } catch (const std::ios_base::failure& e) {
    reset_api_version();
    throw Error(Errc::unavailable,
                std::string(what) + ": connection to the " + options_.engine_name + " engine failed: " + e.what());
  }
}

std::string Client::api_version() {
  {
    std::lock_guard lock(mutex_);
    if (!options_.api_version.empty()) return options_.api_version;
    if (!negotiated_.empty()) return negotiated_;
  }
  SigpipeGuard guard;
  std::string body;
  int status = 0;
  try {
    Poco::Net::HTTPClientSession session(connect());
    // As long as any other request may take: a loaded Podman answered /version in more than 10 s (the old bound) in
    // a full CI run, and every call behind it failed with 503 although the engine was only slow.
    apply_timeouts(session, options_.request_timeout);
    Poco::Net::HTTPRequest request(Poco::Net::HTTPRequest::HTTP_GET, "/version", Poco::Net::HTTPMessage::HTTP_1_1);
    request.setHost(std::string(kHostHeader));
    session.sendRequest(request);
    Poco::Net::HTTPResponse response;
    std::istream& in = session.receiveResponse(response);
    Poco::StreamCopier::copyToString(in, body);
    status = static_cast<int>(response.getStatus());
  } catch (...) {
    rethrow_transport("GET /version");
  }
  if (status != 200) throw_http_error("GET /version", status, body);
  std::string engine_version;
  try {
    engine_version = parse_json_object(body)->optValue<std::string>("ApiVersion", "");
  } catch (...) {
  }
  if (engine_version.empty()) {
    throw Error(Errc::internal, options_.engine_name + " engine: GET /version did not report an ApiVersion");
  }
  std::string chosen =
      compare_api_versions(engine_version, options_.max_api_version) < 0 ? engine_version : options_.max_api_version;
  std::lock_guard lock(mutex_);
  negotiated_ = chosen;
  return chosen;
}

std::string Client::versioned(std::string_view path) {
  std::string out = "/v" + api_version();
  out += path;
  return out;
}

Response Client::send(std::string_view method, std::string_view path, std::string_view body,
                      std::string_view content_type, std::chrono::milliseconds timeout) {
  const std::string target = versioned(path);
  const std::string what = std::string(method) + " " + std::string(path);
  SigpipeGuard guard;
  Response out;
  try {
    Poco::Net::HTTPClientSession session(connect());
    apply_timeouts(session, effective(timeout));
    Poco::Net::HTTPRequest request(std::string(method), target, Poco::Net::HTTPMessage::HTTP_1_1);
    request.setHost(std::string(kHostHeader));
    if (!content_type.empty()) {
      request.setContentType(std::string(content_type));
      request.setContentLength(static_cast<std::streamsize>(body.size()));
    } else if (method == "POST" || method == "PUT") {
      request.setContentLength(0);
    }
    std::ostream& os = session.sendRequest(request);
    if (!content_type.empty()) os.write(body.data(), static_cast<std::streamsize>(body.size()));
    Poco::Net::HTTPResponse response;
    std::istream& in = session.receiveResponse(response);
    collect_headers(response, out);
    Poco::StreamCopier::copyToString(in, out.body);
  } catch (...) {
    rethrow_transport(what);
  }
  return out;
}

Response Client::call(std::string_view method, std::string_view path, std::string_view body,
                      std::initializer_list<int> accept, std::chrono::milliseconds timeout) {
  Response response = send(method, path, body, body.empty() ? std::string_view{} : "application/json", timeout);
  if (response.status >= 300 && std::find(accept.begin(), accept.end(), response.status) == accept.end()) {
    throw_http_error(options_.engine_name + ": " + std::string(method) + " " + std::string(path), response.status,
                     response.body);
  }
  return response;
}

Response Client::call_json(std::string_view method, std::string_view path, const Poco::JSON::Object::Ptr& body,
                           std::initializer_list<int> accept, std::chrono::milliseconds timeout) {
  std::string text = to_json(body);
  Response response = send(method, path, text, "application/json", timeout);
  if (response.status >= 300 && std::find(accept.begin(), accept.end(), response.status) == accept.end()) {
    throw_http_error(options_.engine_name + ": " + std::string(method) + " " + std::string(path), response.status,
                     response.body);
  }
  return response;
}

Response Client::upload(std::string_view method, std::string_view path, std::string_view content_type,
                        const std::function<void(std::ostream&)>& writer, std::chrono::milliseconds timeout) {
  const std::string target = versioned(path);
  const std::string what = options_.engine_name + ": " + std::string(method) + " " + std::string(path);
  SigpipeGuard guard;
  Response out;
  try {
    Poco::Net::HTTPClientSession session(connect());
    apply_timeouts(session, effective(timeout));
    Poco::Net::HTTPRequest request(std::string(method), target, Poco::Net::HTTPMessage::HTTP_1_1);
    request.setHost(std::string(kHostHeader));
    request.setContentType(std::string(content_type));
    request.setChunkedTransferEncoding(true);
    std::ostream& os = session.sendRequest(request);
    bool write_failed = false;
    try {
      writer(os);
      os.flush();
      if (!os) write_failed = true;
    } catch (const Error&) {
      throw;  // the writer's own verdict (source failure, cancellation): drop the connection
    } catch (const Poco::Exception&) {
      write_failed = true;  // the engine may have answered early (e.g. 404): try to read its answer
    } catch (const std::ios_base::failure&) {
      write_failed = true;
    }
    Poco::Net::HTTPResponse response;
    std::istream* in = nullptr;
    try {
      in = &session.receiveResponse(response);
    } catch (...) {
      if (write_failed) throw Error(Errc::unavailable, what + ": the engine closed the connection during the upload");
      throw;
    }
    collect_headers(response, out);
    Poco::StreamCopier::copyToString(*in, out.body);
  } catch (...) {
    rethrow_transport(what);
  }
  if (out.status >= 300) throw_http_error(what, out.status, out.body);
  return out;
}

void Client::download(std::string_view method, std::string_view path,
                      const std::function<void(std::istream& body, const Response& head)>& reader,
                      std::chrono::milliseconds timeout) {
  const std::string target = versioned(path);
  const std::string what = options_.engine_name + ": " + std::string(method) + " " + std::string(path);
  SigpipeGuard guard;
  Response head;
  std::string error_body;
  try {
    Poco::Net::HTTPClientSession session(connect());
    apply_timeouts(session, effective(timeout));
    Poco::Net::HTTPRequest request(std::string(method), target, Poco::Net::HTTPMessage::HTTP_1_1);
    request.setHost(std::string(kHostHeader));
    session.sendRequest(request);
    Poco::Net::HTTPResponse response;
    std::istream& in = session.receiveResponse(response);
    collect_headers(response, head);
    if (head.status >= 300) {
      Poco::StreamCopier::copyToString(in, error_body);
    } else {
      reader(in, head);
    }
  } catch (...) {
    rethrow_transport(what);
  }
  if (head.status >= 300) throw_http_error(what, head.status, error_body);
}

// ---------------------------------------------------------------------------------------------------------------

namespace {

/** Reads from a raw fd until the end of the HTTP head (CRLFCRLF) or the deadline. */
std::string read_http_head(int fd, std::chrono::milliseconds timeout, std::string& rest) {
  std::string data;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  char buffer[4096];
  for (;;) {
    size_t end = data.find("\r\n\r\n");
    if (end != std::string::npos) {
      rest = data.substr(end + 4);
      return data.substr(0, end + 2);
    }
    if (data.size() > 64 * 1024) throw Error(Errc::internal, "engine answered an oversized HTTP head");
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) throw Poco::TimeoutException("waiting for the HTTP answer");
    struct pollfd pfd = {fd, POLLIN, 0};
    int rc = ::poll(&pfd, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
    if (rc < 0) {
      if (errno == EINTR) continue;
      throw Poco::IOException(std::string("poll: ") + std::strerror(errno));
    }
    if (rc == 0) continue;
    ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      throw Poco::Net::ConnectionResetException(std::string("recv: ") + std::strerror(errno));
    }
    if (n == 0) throw Poco::Net::ConnectionResetException("engine closed the connection before answering");
    data.append(buffer, static_cast<size_t>(n));
  }
}

}  // namespace

HijackedStream Client::hijack(std::string_view path, std::string_view json_body, std::chrono::milliseconds timeout) {
  const std::string target = versioned(path);
  const std::string what = options_.engine_name + ": POST " + std::string(path);
  auto deadline_ms = effective(timeout);
  Poco::Net::StreamSocket socket = connect();
  int status = 0;
  std::string rest;
  std::map<std::string, std::string> headers;
  try {
    int fd = socket.impl()->sockfd();
    std::string request = "POST " + target + " HTTP/1.1\r\nHost: " + std::string(kHostHeader) +
                          "\r\nContent-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
                          "Content-Length: " +
                          std::to_string(json_body.size()) + "\r\n\r\n" + std::string(json_body);
    socket.setSendTimeout(timespan(deadline_ms));
    size_t sent = 0;
    while (sent < request.size()) {
      ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) throw Poco::TimeoutException("sending the request");
        throw Poco::Net::ConnectionResetException(std::string("send: ") + std::strerror(errno));
      }
      sent += static_cast<size_t>(n);
    }
    std::string head = read_http_head(fd, deadline_ms, rest);
    // Status line: HTTP/1.1 101 UPGRADED
    size_t sp = head.find(' ');
    if (sp == std::string::npos || head.compare(0, 5, "HTTP/") != 0) {
      throw Error(Errc::internal, what + ": malformed HTTP answer");
    }
    status = std::atoi(head.c_str() + sp + 1);
    size_t line = head.find("\r\n");
    while (line != std::string::npos && line + 2 < head.size()) {
      size_t next = head.find("\r\n", line + 2);
      std::string field = head.substr(line + 2, next - line - 2);
      size_t colon = field.find(':');
      if (colon != std::string::npos) headers[lower(field.substr(0, colon))] = trim(field.substr(colon + 1));
      line = next;
    }
    if (status >= 300) {
      // Error answer: read its body (Content-Length, or up to EOF) for the engine's message.
      size_t want = std::string::npos;
      if (auto it = headers.find("content-length"); it != headers.end()) want = std::stoul(it->second);
      socket.setReceiveTimeout(timespan(std::chrono::milliseconds(2000)));
      char buffer[4096];
      while (rest.size() < want && rest.size() < 64 * 1024) {
        ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
        if (n <= 0) break;
        rest.append(buffer, static_cast<size_t>(n));
      }
      throw_http_error(what, status, rest);
    }
  } catch (...) {
    rethrow_transport(what);
  }
  if (status != 101 && status != 200) {
    throw Error(Errc::internal, what + ": unexpected HTTP " + std::to_string(status) + " instead of an upgrade");
  }
  return HijackedStream(std::move(socket), std::move(rest));
}

}  // namespace berth::engine
