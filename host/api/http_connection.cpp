#include "api/http_connection.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Object.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/HTTPServerRequestImpl.h>
#include <Poco/Net/HTTPServerResponseImpl.h>
#include <Poco/Net/HTTPServerSession.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/StreamSocketImpl.h>
#include <Poco/RunnableAdapter.h>
#include <Poco/String.h>
#include <Poco/ThreadPool.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <system_error>
#include <thread>
#include <vector>

#include "core/log.hpp"

namespace berth::api {
namespace {

using Clock = std::chrono::steady_clock;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

/**
 * The connection's socket: serves bytes the poller already read first, then the kernel's; counts bytes moved and
 * the time spent blocked on the client, which the watchdog turns into a transfer rate.
 */
class ConnSocketImpl final : public Poco::Net::StreamSocketImpl {
 public:
  explicit ConnSocketImpl(poco_socket_t fd) : StreamSocketImpl(fd) {}

  std::string prebuf;  // read by the poller, not yet consumed (only touched by the thread owning the connection)
  std::size_t prebuf_pos = 0;
  std::atomic<std::uint64_t> bytes{0};
  std::atomic<std::int64_t> waiting_since{0};  // ns on the steady clock; 0 = not blocked
  std::atomic<std::int64_t> waited{0};         // ns blocked since the watchdog last looked
  /**
   * A 101 Switching Protocols response was sent (a WebSocket): the handler owns the connection until it returns, the
   * watchdog no longer judges its transfer rate (an idle terminal is not a slow client), and it is never kept alive.
   */
  std::atomic<bool> upgraded{false};

  /**
   * The next `head_bytes` are a request head with a chunked body after it: Poco gets the head, then the decoded
   * body (berthd decodes chunks itself, strictly), then end-of-stream until end_body().
   */
  void begin_chunked(std::size_t head_bytes) {
    head_limit_ = prebuf_pos + head_bytes;
    state_ = State::size_line;
  }
  bool in_chunked_body() const { return state_ != State::raw; }
  bool chunked_done() const { return state_ == State::done; }
  void end_body() {
    state_ = State::raw;
    head_limit_ = std::string::npos;
  }

  int receiveBytes(void* buffer, int length, int flags) override {
    if (state_ != State::raw && prebuf_pos >= head_limit_) {
      head_limit_ = 0;  // past the head: every later read is body (prebuf is reused from offset 0)
      return decode(static_cast<char*>(buffer), length);
    }
    return raw_receive(static_cast<char*>(buffer), length, flags);
  }
  int sendBytes(const void* buffer, int length, int flags) override {
    Wait w(*this);
    int n = StreamSocketImpl::sendBytes(buffer, length, flags);
    if (n > 0) bytes += static_cast<std::uint64_t>(n);
    return n;
  }
  /** Unconsumed pre-read bytes, and forgets them. */
  std::string take_prebuf() {
    std::string rest = prebuf.substr(prebuf_pos);
    prebuf.clear();
    prebuf_pos = 0;
    return rest;
  }

 private:
  enum class State { raw, size_line, data, data_crlf, trailers, done };

  struct Wait {
    explicit Wait(ConnSocketImpl& s) : s(s) { s.waiting_since = now_ns(); }
    ~Wait() {
      auto since = s.waiting_since.exchange(0);
      if (since) s.waited += now_ns() - since;
    }
    ConnSocketImpl& s;
  };

  int raw_receive(char* buffer, int length, int flags) {
    if (prebuf_pos < prebuf.size() && !(flags & MSG_PEEK)) {
      auto avail = std::min(prebuf.size(), head_limit_) - prebuf_pos;
      auto n = std::min<std::size_t>(static_cast<std::size_t>(length), avail);
      std::memcpy(buffer, prebuf.data() + prebuf_pos, n);
      prebuf_pos += n;
      return static_cast<int>(n);
    }
    Wait w(*this);
    int n = StreamSocketImpl::receiveBytes(buffer, length, flags);
    if (n > 0) bytes += static_cast<std::uint64_t>(n);
    return n;
  }

  /** One raw byte (prebuf first); -1 at end of stream. */
  int raw_byte() {
    if (prebuf_pos >= prebuf.size()) {
      prebuf.clear();
      prebuf_pos = 0;
      char tmp[16384];
      int n = raw_receive(tmp, sizeof tmp, 0);
      if (n <= 0) return -1;
      prebuf.assign(tmp, static_cast<std::size_t>(n));
    }
    return static_cast<unsigned char>(prebuf[prebuf_pos++]);
  }

  [[noreturn]] static void malformed(const std::string& why) {
    throw Poco::Net::MessageException("malformed chunked body: " + why);
  }

  /** A CRLF-terminated line (without it), at most `max` bytes. */
  std::string line(std::size_t max) {
    std::string out;
    for (;;) {
      int c = raw_byte();
      if (c < 0) malformed("ended early");
      if (c == '\r') {
        if (raw_byte() != '\n') malformed("CR without LF");
        return out;
      }
      if (c == '\n') malformed("bare LF");
      out += static_cast<char>(c);
      if (out.size() > max) malformed("line too long");
    }
  }

  int decode(char* buffer, int length) {
    for (;;) {
      switch (state_) {
        case State::raw:
        case State::done:
          return 0;
        case State::size_line: {
          auto l = line(4096);
          auto semi = l.find(';');
          auto digits = l.substr(0, semi);
          if (digits.empty() || digits.size() > 15 ||
              digits.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
            malformed("invalid chunk size '" + digits.substr(0, 32) + "'");
          remaining_ = std::stoull(digits, nullptr, 16);
          state_ = remaining_ == 0 ? State::trailers : State::data;
          break;
        }
        case State::data: {
          if (prebuf_pos >= prebuf.size()) {
            int c = raw_byte();  // refill (blocking); puts the byte back
            if (c < 0) malformed("ended early");
            --prebuf_pos;
          }
          auto n =
              std::min<std::uint64_t>({remaining_, static_cast<std::uint64_t>(length), prebuf.size() - prebuf_pos});
          std::memcpy(buffer, prebuf.data() + prebuf_pos, n);
          prebuf_pos += n;
          remaining_ -= n;
          if (remaining_ == 0) state_ = State::data_crlf;
          return static_cast<int>(n);
        }
        case State::data_crlf:
          if (!line(0).empty()) malformed("chunk data longer than its size");
          state_ = State::size_line;
          break;
        case State::trailers: {
          std::size_t total = 0;
          for (;;) {
            auto l = line(8192);
            if (l.empty()) break;
            total += l.size();
            if (total > 8192 || l.front() == ' ' || l.front() == '\t' || l.find(':') == std::string::npos)
              malformed("invalid trailer");
          }
          state_ = State::done;
          return 0;
        }
      }
    }
  }

  State state_ = State::raw;
  std::size_t head_limit_ = std::string::npos;
  std::uint64_t remaining_ = 0;
};

/** Exposes the bytes Poco's session read ahead (the start of a pipelined request). */
class Session final : public Poco::Net::HTTPServerSession {
 public:
  using HTTPServerSession::HTTPServerSession;
  std::string take_buffered() {
    std::string out(static_cast<std::size_t>(buffered()), '\0');
    if (!out.empty()) out.resize(static_cast<std::size_t>(read(out.data(), static_cast<std::streamsize>(out.size()))));
    return out;
  }
};

struct Conn {
  Conn(ConnSocketImpl* i, std::string ip) : impl(i), socket(i), client(std::move(ip)) {}
  ConnSocketImpl* impl;  // owned by socket
  Poco::Net::StreamSocket socket;
  std::string client;
  bool served_one = false;           // a request was answered on it (now idle under keep_alive_timeout)
  bool closing = false;              // answered and shut down for sending: the poller drops what still arrives
  Clock::time_point idle_since{};    // poller phase start
  Clock::time_point head_started{};  // first byte of the current head (time_point{} = none yet)
  // watchdog (worker phase)
  Clock::time_point window_start{};
  std::uint64_t window_bytes = 0;
  std::function<void()> on_close;  // per-client count release
  /** Releases the connection's per-client count (before the socket closes, so a client seeing EOF sees room). */
  void release() {
    if (on_close) on_close();
    on_close = nullptr;
  }
  ~Conn() { release(); }
};

/** Length of the head in `data` (through the empty line), or 0 when it is not complete yet. */
std::size_t head_end(std::string_view data) {
  // Leading empty lines before a request line are tolerated (RFC 9112 section 2.2).
  std::size_t start = 0;
  while (start + 1 < data.size() && data[start] == '\r' && data[start + 1] == '\n')
    start += 2;
  auto p = data.find("\n\r\n", start);
  auto q = data.find("\n\n", start);
  if (p == std::string_view::npos && q == std::string_view::npos) return 0;
  if (q != std::string_view::npos && (p == std::string_view::npos || q < p)) return q + 2;
  return p + 3;
}

bool is_tchar(unsigned char c) {
  return std::isalnum(c) || std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

std::string trim_ows(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t'))
    v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t'))
    v.remove_suffix(1);
  return std::string(v);
}

HeadRefusal refuse(int status, std::string reason, std::string message) {
  return HeadRefusal{status, std::move(reason), std::move(message)};
}

const char* reason_phrase(int status) {
  return Poco::Net::HTTPResponse::getReasonForStatus(static_cast<Poco::Net::HTTPResponse::HTTPStatus>(status)).c_str();
}

std::string code_for(int status) {
  switch (status) {
    case 413:
      return "payload_too_large";
    case 429:
    case 503:
      return "server_busy";
    case 408:
    case 431:
    case 505:
    default:
      return "invalid_request";
  }
}

/** Writes a whole response with the envelope and `Connection: close`, best effort (never throws). */
void send_refusal(int fd, int status, const std::string& request_id, const std::string& reason,
                  const std::string& message, bool nonblocking) {
  std::string body = error_envelope(code_for(status), message, request_id, reason);
  std::ostringstream os;
  os << "HTTP/1.1 " << status << ' ' << reason_phrase(status) << "\r\n"
     << "Content-Type: application/json; charset=utf-8\r\nContent-Length: " << body.size()
     << "\r\nConnection: close\r\nX-Request-Id: " << request_id << "\r\n";
  if (status == 429 || status == 503) os << "Retry-After: 1\r\n";
  os << "\r\n" << body;
  std::string out = os.str();
  std::size_t off = 0;
  while (off < out.size()) {
    ssize_t n = ::send(fd, out.data() + off, out.size() - off, MSG_NOSIGNAL | (nonblocking ? MSG_DONTWAIT : 0));
    if (n <= 0) break;
    off += static_cast<std::size_t>(n);
  }
}

/** After a response with `Connection: close`: stop sending, read and drop what the client still sends (bounded). */
void lingering_close(Poco::Net::StreamSocket& s) {
  try {
    s.shutdownSend();
    s.setReceiveTimeout(Poco::Timespan(1, 0));
    char buf[16384];
    std::size_t total = 0;
    while (total < (256u << 10)) {
      int n = s.receiveBytes(buf, sizeof buf);
      if (n <= 0) break;
      total += static_cast<std::size_t>(n);
    }
  } catch (const Poco::Exception&) {
  }
  try {
    s.close();
  } catch (const Poco::Exception&) {
  }
}

/** Poco's response, made to always say HTTP/1.1 with the standard reason, and to settle the request body first. */
class Response final : public Poco::Net::HTTPServerResponseImpl {
 public:
  Response(Session& s, ConnSocketImpl& socket, std::uint64_t drain_limit)
      : HTTPServerResponseImpl(s), socket_(socket), drain_limit_(drain_limit) {}
  void attach(Poco::Net::HTTPServerRequest* rq) { request_ = rq; }

  std::ostream& send() override {
    prepare();
    if (getStatus() == HTTP_SWITCHING_PROTOCOLS) socket_.upgraded = true;  // before the client can see the 101
    return HTTPServerResponseImpl::send();
  }
  void sendBuffer(const void* buffer, std::size_t length) override {
    prepare();
    HTTPServerResponseImpl::sendBuffer(buffer, length);
  }
  void sendFile(const std::string& path, const std::string& type) override {
    prepare();
    HTTPServerResponseImpl::sendFile(path, type);
  }
  void redirect(const std::string& uri, HTTPStatus status) override {
    prepare();
    HTTPServerResponseImpl::redirect(uri, status);
  }
  void requireAuthentication(const std::string& realm) override {
    prepare();
    HTTPServerResponseImpl::requireAuthentication(realm);
  }
  void sendContinue() override {
    setVersion(HTTP_1_1);
    HTTPServerResponseImpl::sendContinue();
  }

  /** Reads what is left of the request body, up to the drain limit; false when the connection must close. */
  bool settle_body() {
    if (body_settled_ || !request_) return body_ok_;
    body_settled_ = true;
    try {
      auto& in = request_->stream();
      char buf[16384];
      std::uint64_t total = 0;
      while (in && total <= drain_limit_) {
        in.read(buf, sizeof buf);
        total += static_cast<std::uint64_t>(in.gcount());
      }
      body_ok_ = in.eof() && !in.bad();
    } catch (const std::exception&) {
      body_ok_ = false;  // bad chunking or a reset: the framing of what follows is unknown
    }
    return body_ok_;
  }

 private:
  void prepare() {
    setVersion(HTTP_1_1);
    setReason(getReasonForStatus(getStatus()));
    if (!settle_body()) setKeepAlive(false);
  }
  Poco::Net::HTTPServerRequest* request_ = nullptr;
  ConnSocketImpl& socket_;
  std::uint64_t drain_limit_;
  bool body_settled_ = false;
  bool body_ok_ = true;
};

}  // namespace

// ---- head checks ------------------------------------------------------------------------------------------------

std::optional<HeadRefusal> check_request_head(std::string_view head) {
  std::vector<std::string_view> lines;
  std::size_t pos = 0;
  while (pos < head.size()) {
    auto nl = head.find('\n', pos);
    if (nl == std::string_view::npos) return refuse(400, "malformed_head", "request head does not end with CRLF");
    if (nl == pos || head[nl - 1] != '\r') return refuse(400, "bare_lf", "header lines must end with CRLF");
    lines.push_back(head.substr(pos, nl - 1 - pos));
    pos = nl + 1;
  }
  // Empty lines before the request line are tolerated; the last line is the empty line ending the head.
  std::size_t first = 0;
  while (first < lines.size() && lines[first].empty())
    ++first;
  if (first >= lines.size() || !lines.back().empty()) return refuse(400, "malformed_head", "incomplete request head");
  for (auto line : lines) {
    if (line.find('\r') != std::string_view::npos) return refuse(400, "bare_cr", "CR inside a header line");
  }
  // Request line.
  auto rl = lines[first];
  auto sp1 = rl.find(' ');
  auto sp2 = sp1 == std::string_view::npos ? sp1 : rl.find(' ', sp1 + 1);
  if (sp1 == std::string_view::npos || sp2 == std::string_view::npos || rl.find(' ', sp2 + 1) != std::string_view::npos)
    return refuse(400, "malformed_request_line", "request line must be 'METHOD target HTTP/1.1'");
  auto method = rl.substr(0, sp1);
  auto target = rl.substr(sp1 + 1, sp2 - sp1 - 1);
  auto version = rl.substr(sp2 + 1);
  if (method.empty() || target.empty())
    return refuse(400, "malformed_request_line", "request line must be 'METHOD target HTTP/1.1'");
  for (char c : method) {
    if (!is_tchar(static_cast<unsigned char>(c))) return refuse(400, "malformed_request_line", "invalid method");
  }
  for (char c : target) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) return refuse(400, "malformed_request_line", "invalid byte in the request target");
  }
  if (version != "HTTP/1.1" && version != "HTTP/1.0") {
    bool shaped = version.size() == 8 && version.substr(0, 5) == "HTTP/" && std::isdigit(version[5]) &&
                  version[6] == '.' && std::isdigit(version[7]);
    if (shaped) return refuse(505, "unsupported_version", "only HTTP/1.1 and HTTP/1.0 are served");
    return refuse(400, "malformed_request_line", "invalid HTTP version");
  }
  // Header fields.
  int content_lengths = 0, transfer_encodings = 0, hosts = 0, fields = 0;
  std::string te;
  for (std::size_t i = first + 1; i + 1 < lines.size(); ++i) {
    auto line = lines[i];
    if (line.front() == ' ' || line.front() == '\t')
      return refuse(400, "obs_fold", "folded header lines (obs-fold) are not accepted");
    auto colon = line.find(':');
    if (colon == std::string_view::npos) return refuse(400, "malformed_header", "header line without a colon");
    auto name = line.substr(0, colon);
    if (name.empty()) return refuse(400, "malformed_header", "empty header name");
    for (char c : name) {
      if (!is_tchar(static_cast<unsigned char>(c)))
        return refuse(400, "malformed_header", "invalid byte in a header name (whitespace before ':'?)");
    }
    auto value = line.substr(colon + 1);
    for (char c : value) {
      auto u = static_cast<unsigned char>(c);
      if ((u < 0x20 && c != '\t') || u == 0x7f)
        return refuse(400, "malformed_header", "control byte in a header value");
      // Poco's header reader takes byte 0xFF for end-of-stream and would parse what follows it as the next
      // request (found by fuzz_http_wire): never let it reach Poco.
      if (u == 0xff) return refuse(400, "malformed_header", "byte 0xFF in a header value");
    }
    if (++fields > 100) return refuse(431, "too_many_headers", "more than 100 header fields");
    if (name.size() > 256 || value.size() > 8192)
      return refuse(431, "header_too_large", "header name over 256 or value over 8192 bytes");
    std::string n(name);
    if (Poco::icompare(n, "Content-Length") == 0) {
      if (++content_lengths > 1) return refuse(400, "duplicate_content_length", "more than one Content-Length");
      auto v = trim_ows(value);
      if (v.empty() || v.size() > 18 || v.find_first_not_of("0123456789") != std::string::npos)
        return refuse(400, "invalid_content_length", "Content-Length must be 1-18 decimal digits");
    } else if (Poco::icompare(n, "Transfer-Encoding") == 0) {
      if (++transfer_encodings > 1)
        return refuse(400, "duplicate_transfer_encoding", "more than one Transfer-Encoding");
      te = Poco::toLower(trim_ows(value));
    } else if (Poco::icompare(n, "Host") == 0) {
      if (++hosts > 1) return refuse(400, "duplicate_host", "more than one Host header");
    }
  }
  if (transfer_encodings) {
    if (content_lengths)
      return refuse(400, "conflicting_framing", "both Content-Length and Transfer-Encoding: the framing is ambiguous");
    if (te != "chunked") return refuse(400, "unsupported_transfer_encoding", "Transfer-Encoding must be 'chunked'");
    if (version == "HTTP/1.0") return refuse(400, "unsupported_transfer_encoding", "Transfer-Encoding on HTTP/1.0");
  }
  return std::nullopt;
}

std::string error_envelope(std::string_view code, const std::string& message, const std::string& request_id,
                           const std::string& reason) {
  Poco::JSON::Object err;
  err.set("code", std::string(code));
  err.set("message", message);
  err.set("request_id", request_id);
  Poco::JSON::Object d;
  if (!reason.empty()) d.set("reason", reason);
  err.set("details", d);
  Poco::JSON::Object body;
  body.set("error", err);
  std::ostringstream os;
  body.stringify(os);
  return os.str();
}

// ---- the server -------------------------------------------------------------------------------------------------

struct HttpServer::State : std::enable_shared_from_this<HttpServer::State> {
  Poco::Net::ServerSocket listener;
  ConnectionLimits limits;
  Handler handler;
  std::function<std::string()> next_request_id;
  Poco::Net::HTTPServerParams::Ptr params{new Poco::Net::HTTPServerParams};
  int max_threads;
  std::size_t max_queue;
  Poco::ThreadPool pool;

  int epfd = -1;
  int wakefd = -1;
  std::thread poller;
  std::atomic<bool> stopping{false};
  std::atomic<bool> accepting{true};

  std::mutex m;                                // guards everything below
  std::map<int, std::shared_ptr<Conn>> idle;   // fd -> connection waiting for a head (in epoll)
  std::deque<std::shared_ptr<Conn>> returned;  // kept-alive connections handed back by workers
  std::set<std::shared_ptr<Conn>> busy;        // connections on a worker (watchdog)
  std::deque<std::shared_ptr<Conn>> ready;     // complete heads waiting for a worker
  std::mutex clients_m;                        // guards per_client only (a Conn may be destroyed while `m` is held)
  std::map<std::string, int> per_client;       // open connections per client IP
  std::condition_variable cv;
  int workers = 0, idle_workers = 0;

  State(Poco::Net::ServerSocket s, int threads, int queue, std::size_t stack, ConnectionLimits l, Handler h,
        std::function<std::string()> ids)
      : listener(std::move(s)),
        limits(l),
        handler(std::move(h)),
        next_request_id(std::move(ids)),
        max_threads(threads),
        max_queue(static_cast<std::size_t>(queue)),
        pool("berth-http", 1, threads, 60, static_cast<int>(stack)) {
    params->setKeepAlive(true);
    params->setTimeout(Poco::Timespan(60, 0));  // per recv/send backstop; the watchdog enforces the rates
  }

  void wake() {
    std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wakefd, &one, sizeof one);
  }

  // ---- poller ----

  void run_poller() {
    std::vector<epoll_event> events(256);
    while (!stopping.load()) {
      int n = ::epoll_wait(epfd, events.data(), static_cast<int>(events.size()), 200);
      for (int i = 0; i < n; ++i) {
        int fd = events[static_cast<std::size_t>(i)].data.fd;
        if (fd == wakefd) {
          std::uint64_t v;
          [[maybe_unused]] auto r = ::read(wakefd, &v, sizeof v);
        } else if (fd == listener.impl()->sockfd()) {
          accept_all();
        } else {
          readable(fd);
        }
      }
      take_returned();
      watchdog();
    }
  }

  void accept_all() {
    while (accepting.load()) {
      int fd = ::accept4(listener.impl()->sockfd(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) return;
      auto* impl = new ConnSocketImpl(fd);
      // TCP_NODELAY, as HTTP servers set it for keep-alive: a response goes out as head + body writes, and with Nagle
      // a body of some KiB (a /metrics scrape) waited for the client's delayed ACK: 40 ms per keep-alive request.
      try {
        impl->setNoDelay(true);
      } catch (const Poco::Exception&) {
      }
      std::string ip;
      try {
        ip = impl->peerAddress().host().toString();
      } catch (const Poco::Exception&) {
      }
      auto conn = std::make_shared<Conn>(impl, ip);
      bool over = false;
      {
        std::lock_guard lk(clients_m);
        int& count = per_client[ip];
        over = limits.max_connections_per_client > 0 && count >= limits.max_connections_per_client;
        if (!over) {
          ++count;
          std::weak_ptr<State> self = weak_from_this();
          conn->on_close = [self, ip] {
            if (auto s = self.lock()) {
              std::lock_guard lk2(s->clients_m);
              if (--s->per_client[ip] <= 0) s->per_client.erase(ip);
            }
          };
        }
      }
      if (over) {
        auto id = next_request_id();
        log::warn("http.client_cap", {{"request_id", id}, {"client", ip}});
        send_refusal(
            fd, 429, id, "too_many_connections",
            "more than " + std::to_string(limits.max_connections_per_client) + " open connections from this client",
            true);
        linger(conn);
        continue;
      }
      conn->idle_since = Clock::now();
      watch(conn);
    }
  }

  /** Puts a connection (non-blocking) into epoll, or straight to a worker when a whole head is already buffered. */
  void watch(const std::shared_ptr<Conn>& conn) {
    int fd = conn->impl->sockfd();
    if (head_end(conn->impl->prebuf) > 0) {
      dispatch(conn);
      return;
    }
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    {
      std::lock_guard lk(m);
      idle[fd] = conn;
    }
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
    ev.data.fd = fd;
    ::epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
  }

  /**
   * After a refusal written by the poller: stop sending, and keep reading (and dropping) for a moment, so the
   * client's unread request does not turn the close into a reset that destroys the answer.
   */
  void linger(const std::shared_ptr<Conn>& conn) {
    int fd = conn->impl->sockfd();
    conn->release();
    ::shutdown(fd, SHUT_WR);
    conn->closing = true;
    conn->idle_since = Clock::now();
    bool added = false;
    {
      std::lock_guard lk(m);
      added = idle.emplace(fd, conn).second;
    }
    if (added) {
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
      ev.data.fd = fd;
      ::epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    }
  }

  void forget(int fd) {
    ::epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nullptr);
    std::lock_guard lk(m);
    idle.erase(fd);
  }

  void readable(int fd) {
    std::shared_ptr<Conn> conn;
    {
      std::lock_guard lk(m);
      auto it = idle.find(fd);
      if (it == idle.end()) return;
      conn = it->second;
    }
    char tmp[16384];
    if (conn->closing) {
      for (;;) {
        ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
        if (n > 0) continue;
        if (n < 0 && errno == EINTR) continue;
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) forget(fd);
        return;
      }
    }
    auto& buf = conn->impl->prebuf;
    bool closed = false;
    for (;;) {
      ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
      if (n > 0) {
        if (conn->head_started == Clock::time_point{}) conn->head_started = Clock::now();
        buf.append(tmp, static_cast<std::size_t>(n));
        conn->impl->bytes += static_cast<std::uint64_t>(n);
        if (buf.size() > limits.max_header_bytes + sizeof tmp) break;  // enough to decide
        continue;
      }
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) closed = true;
      if (n < 0 && errno == EINTR) continue;
      break;
    }
    auto end = head_end(buf);
    if (end > 0 && end <= limits.max_header_bytes) {
      forget(fd);
      dispatch(conn);
    } else if (end > limits.max_header_bytes || (end == 0 && buf.size() > limits.max_header_bytes)) {
      forget(fd);
      auto id = next_request_id();
      log::warn("http.refused", {{"request_id", id}, {"client", conn->client}, {"reason", "head_too_large"}});
      send_refusal(fd, 431, id, "head_too_large",
                   "request head over " + std::to_string(limits.max_header_bytes) + " bytes", true);
      linger(conn);
    } else if (closed) {
      forget(fd);  // the client left (a partial head is simply dropped)
    }
  }

  void take_returned() {
    std::deque<std::shared_ptr<Conn>> back;
    {
      std::lock_guard lk(m);
      back.swap(returned);
    }
    for (auto& c : back) {
      if (stopping.load()) continue;
      watch(c);
      readable(c->impl->sockfd());  // bytes that arrived before it was watched
    }
  }

  /** Header/keep-alive deadlines for idle connections; transfer rates for busy ones. */
  void watchdog() {
    auto now = Clock::now();
    std::vector<std::shared_ptr<Conn>> expired;
    {
      std::lock_guard lk(m);
      for (auto& [fd, c] : idle) {
        bool head = c->head_started != Clock::time_point{};
        auto deadline = c->closing      ? c->idle_since + std::chrono::seconds(2)
                        : head          ? c->head_started + limits.header_timeout
                        : c->served_one ? c->idle_since + limits.keep_alive_timeout
                                        : c->idle_since + limits.header_timeout;
        if (now >= deadline) expired.push_back(c);
      }
    }
    for (auto& c : expired) {
      int fd = c->impl->sockfd();
      forget(fd);
      if (!c->closing && c->head_started != Clock::time_point{}) {
        auto id = next_request_id();
        log::warn("http.header_timeout", {{"request_id", id}, {"client", c->client}});
        send_refusal(fd, 408, id, "header_timeout", "the request head did not arrive in time", true);
        linger(c);
      }
    }
    if (limits.min_transfer_rate == 0) return;
    std::lock_guard lk(m);
    for (auto& c : busy) {
      if (c->impl->upgraded.load()) continue;  // a WebSocket: its handler keeps its own liveness rules
      if (c->window_start == Clock::time_point{}) {
        c->window_start = now;
        c->window_bytes = c->impl->bytes.load();
        c->impl->waited.store(0);
        continue;
      }
      if (now - c->window_start < limits.rate_window) continue;
      auto since = c->impl->waiting_since.load();
      auto start_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(c->window_start.time_since_epoch()).count();
      std::int64_t waited = c->impl->waited.exchange(0) + (since ? now_ns() - std::max(since, start_ns) : 0);
      auto window_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(limits.rate_window).count();
      auto moved = c->impl->bytes.load() - c->window_bytes;
      auto needed = limits.min_transfer_rate * static_cast<std::uint64_t>(limits.rate_window.count()) / 1000;
      if (waited >= window_ns / 2 && moved < needed) {
        log::warn("http.slow_client", {{"client", c->client},
                                       {"bytes_in_window", std::to_string(moved)},
                                       {"window_ms", std::to_string(limits.rate_window.count())}});
        ::shutdown(c->impl->sockfd(), SHUT_RDWR);  // wakes the worker blocked on it
      }
      c->window_start = now;
      c->window_bytes = c->impl->bytes.load();
    }
  }

  // ---- workers ----

  void dispatch(const std::shared_ptr<Conn>& conn) {
    int fd = conn->impl->sockfd();
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    std::unique_lock lk(m);
    if (ready.size() >= max_queue && idle_workers == 0 && workers >= max_threads) {
      lk.unlock();
      auto id = next_request_id();
      log::warn("http.busy", {{"request_id", id}, {"reason", "connection_queue_full"}});
      send_refusal(fd, 503, id, "connection_queue_full", "server is at its connection limit; retry shortly", false);
      return;
    }
    ready.push_back(conn);
    // An idle worker counts as idle until it wakes: with one idle worker, requests dispatched in a burst would all
    // wait for it. Start a worker whenever the ready requests outnumber the idle workers (found by the capacity
    // test: 8 execs in one burst were served one after another instead of reaching admission together).
    if (ready.size() <= static_cast<std::size_t>(std::max(idle_workers, 0)) || workers >= max_threads) {
      cv.notify_one();
      return;
    }
    ++workers;
    lk.unlock();
    try {
      pool.start(runnable_);
    } catch (const Poco::Exception&) {
      std::lock_guard lk2(m);
      --workers;  // the pool is momentarily full; a running worker takes it
    }
  }

  void worker_loop() {
    std::unique_lock lk(m);
    for (;;) {
      ++idle_workers;
      bool got = cv.wait_for(lk, std::chrono::seconds(5), [&] { return !ready.empty() || stopping.load(); });
      --idle_workers;
      if (!got || stopping.load()) {
        --workers;
        return;
      }
      auto conn = ready.front();
      ready.pop_front();
      busy.insert(conn);
      lk.unlock();
      bool keep = false;
      try {
        keep = serve_connection(*conn);
      } catch (...) {
        keep = false;
      }
      lk.lock();
      busy.erase(conn);
      conn->window_start = {};
      if (keep && !stopping.load()) {
        returned.push_back(conn);
        lk.unlock();
        wake();
        lk.lock();
      } else {
        lk.unlock();
        if (!keep) {
          conn->release();
          lingering_close(conn->socket);
        }
        conn.reset();
        lk.lock();
      }
    }
  }

  /** Reads and drops the rest of a chunked body the handler left (a GET's body Poco never reads); false: close. */
  bool drain_chunked(ConnSocketImpl& impl) {
    try {
      char buf[16384];
      std::uint64_t total = 0;
      while (!impl.chunked_done() && total <= limits.drain_limit) {
        int n = impl.receiveBytes(buf, sizeof buf, 0);
        if (n <= 0 && !impl.chunked_done()) return false;
        total += static_cast<std::uint64_t>(std::max(n, 0));
      }
      return impl.chunked_done();
    } catch (const Poco::Exception&) {
      return false;
    }
  }

  /** Serves every complete request buffered on the connection; true when it stays open (kept alive). */
  bool serve_connection(Conn& conn) {
    auto& impl = *conn.impl;
    for (;;) {
      auto end = head_end(impl.prebuf.substr(impl.prebuf_pos));
      if (end == 0) return true;  // the next head is not complete: back to the poller
      std::string head = impl.prebuf.substr(impl.prebuf_pos, end);
      if (auto bad = check_request_head(head)) {
        auto id = next_request_id();
        auto line = head.substr(0, head.find('\n'));
        log::warn("http.refused", {{"request_id", id}, {"client", conn.client}, {"reason", bad->reason}});
        log::info("http.access", {{"request_id", id},
                                  {"request_line", line},
                                  {"status", std::to_string(bad->status)},
                                  {"client", conn.client}});
        send_refusal(impl.sockfd(), bad->status, id, bad->reason, bad->message, false);
        return false;
      }
      // A request without Content-Length or Transfer-Encoding has no body (RFC 9112 6.3); Poco would read a POST's
      // body until the connection closes, swallowing the requests pipelined after it.
      // A chunked body is decoded here, strictly (Poco's decoder takes a bad chunk size for the end of the body):
      // Poco sees the head without Transfer-Encoding and reads the decoded body to its end.
      std::string lower = Poco::toLower(head);
      auto te = lower.find("\ntransfer-encoding:");
      if (te != std::string::npos) {
        auto eol = lower.find('\n', te + 1);
        impl.prebuf.erase(impl.prebuf_pos + te + 1, eol - te);
        end -= eol - te;
        impl.begin_chunked(end);
      } else if (lower.find("\ncontent-length:") == std::string::npos) {
        impl.prebuf.insert(impl.prebuf_pos + end - 2, "Content-Length: 0\r\n");  // before the final CRLF
      }
      bool keep = false;
      std::string leftover;
      {
        Session session(conn.socket, params);
        {
          // The response must be destroyed before the socket is detached: its stream writes the rest of the body
          // (and a chunked body's last chunk) when it goes.
          Response response(session, impl, limits.drain_limit);
          try {
            Poco::Net::HTTPServerRequestImpl request(response, session, params.get());
            response.attach(&request);
            response.setDate(Poco::Timestamp());
            bool http11 = request.getVersion() == Poco::Net::HTTPMessage::HTTP_1_1;
            response.setKeepAlive(http11 && request.getKeepAlive() && !stopping.load());
            if (request.getExpectContinue()) response.sendContinue();
            handler(request, response);
            keep = response.sent() && response.getKeepAlive() && response.settle_body() && !stopping.load() &&
                   !impl.upgraded.load();  // an upgraded connection spoke another protocol: never HTTP again
            response.attach(nullptr);
            if (keep && impl.in_chunked_body()) keep = drain_chunked(impl);
          } catch (const Poco::Exception& e) {
            log::warn("http.connection_error", {{"client", conn.client}, {"error", e.displayText()}});
            if (!response.sent()) {
              send_refusal(impl.sockfd(), 400, next_request_id(), "malformed_head",
                           "could not read the request: " + e.displayText(), false);
            }
            keep = false;
          }
        }
        if (keep) leftover = session.take_buffered();
        if (impl.in_chunked_body()) {
          keep = keep && leftover.empty();  // decoded body bytes left unread: never parse them as a request
          leftover.clear();
          impl.end_body();
        }
        session.detachSocket();
      }
      conn.served_one = true;
      if (!keep) return false;
      impl.prebuf = leftover + impl.take_prebuf();
      impl.prebuf_pos = 0;
      conn.head_started = impl.prebuf.empty() ? Clock::time_point{} : Clock::now();
      conn.idle_since = Clock::now();
    }
  }

  Poco::RunnableAdapter<State> runnable_{*this, &State::worker_loop};
};

HttpServer::HttpServer(Poco::Net::ServerSocket socket, int threads, int queue, std::size_t thread_stack_bytes,
                       ConnectionLimits limits, Handler handler, std::function<std::string()> next_request_id)
    : state_(std::make_shared<State>(std::move(socket), threads, queue, thread_stack_bytes, limits, std::move(handler),
                                     std::move(next_request_id))) {}

HttpServer::~HttpServer() {
  close();
  state_->pool.joinAll();
}

void HttpServer::start() {
  auto& s = *state_;
  s.epfd = ::epoll_create1(EPOLL_CLOEXEC);
  s.wakefd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s.epfd < 0 || s.wakefd < 0) throw std::system_error(errno, std::generic_category(), "epoll/eventfd");
  s.listener.setBlocking(false);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = s.wakefd;
  ::epoll_ctl(s.epfd, EPOLL_CTL_ADD, s.wakefd, &ev);
  ev.data.fd = s.listener.impl()->sockfd();
  ::epoll_ctl(s.epfd, EPOLL_CTL_ADD, ev.data.fd, &ev);
  s.poller = std::thread([st = state_] { st->run_poller(); });
}

std::uint16_t HttpServer::port() const {
  return state_->listener.address().port();
}

void HttpServer::stop_accepting() {
  auto& s = *state_;
  if (!s.accepting.exchange(false)) return;
  ::epoll_ctl(s.epfd, EPOLL_CTL_DEL, s.listener.impl()->sockfd(), nullptr);
  s.wake();
}

void HttpServer::close() {
  auto& s = *state_;
  stop_accepting();
  if (s.stopping.exchange(true)) return;
  s.wake();
  if (s.poller.joinable()) s.poller.join();
  std::lock_guard lk(s.m);
  for (auto& [fd, c] : s.idle)
    ::epoll_ctl(s.epfd, EPOLL_CTL_DEL, fd, nullptr);
  s.idle.clear();
  s.returned.clear();
  s.ready.clear();
  for (auto& c : s.busy)
    ::shutdown(c->impl->sockfd(), SHUT_RDWR);
  s.cv.notify_all();
  try {
    s.listener.close();
  } catch (const Poco::Exception&) {
  }
}

}  // namespace berth::api
