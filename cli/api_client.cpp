#include "api_client.hpp"

#include <Poco/Base64Encoder.h>
#include <Poco/Exception.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/FilePartSource.h>
#include <Poco/Net/HTMLForm.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/SocketStream.h>
#include <Poco/Net/WebSocket.h>
#include <utf8.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <functional>
#include <sstream>

#include "settings.hpp"

namespace berth::cli {
namespace {

using Poco::Net::HTTPMessage;
using Poco::Net::HTTPRequest;
using Poco::Net::HTTPResponse;

// Connecting is quick or hopeless; an answer may take long: an exec runs up to 300 s, after waiting up to
// start_wait (60 s) for its session and up to work_queue_timeout (120 s) for a slot, so the bound is generous.
const Poco::Timespan kConnectTimeout(10, 0);
const Poco::Timespan kIoTimeout(900, 0);

std::string read_all(std::istream& in) {
  std::string out;
  char buf[16384];
  while (in.read(buf, sizeof buf) || in.gcount() > 0)
    out.append(buf, static_cast<std::size_t>(in.gcount()));
  if (in.bad()) throw ConnectionError("the response was cut off");
  return out;
}

/** The error envelope of docs/api.md, or a generic error when the body is not one (e.g. a proxy's page). */
ServerError error_from(int status, const std::string& reason, const std::string& body) {
  try {
    Poco::JSON::Parser parser;
    auto root = parser.parse(body).extract<Poco::JSON::Object::Ptr>();
    auto error = root ? root->getObject("error") : nullptr;
    if (error && error->has("code")) {
      std::map<std::string, std::string> details;
      if (auto d = error->getObject("details")) {
        for (const auto& [k, v] : *d)
          details[k] = v.isString() ? v.extract<std::string>() : v.toString();
      }
      return ServerError(status, error->getValue<std::string>("code"), error->optValue<std::string>("message", ""),
                         error->optValue<std::string>("request_id", ""), std::move(details), body);
    }
  } catch (const std::exception&) {
    // not an envelope: fall through
  }
  std::string snippet = body.substr(0, 200);
  return ServerError(status, "http_" + std::to_string(status), reason + (snippet.empty() ? "" : ": " + snippet), "", {},
                     body);
}

bool is_success(int status) {
  return status >= 200 && status < 300;
}

}  // namespace

Poco::JSON::Object::Ptr Reply::json() const {
  try {
    Poco::JSON::Parser parser;
    auto v = parser.parse(body);
    if (v.type() == typeid(Poco::JSON::Object::Ptr)) return v.extract<Poco::JSON::Object::Ptr>();
  } catch (const Poco::Exception&) {
    // reported below
  }
  throw ConnectionError("the server's answer is not a JSON object: " + body.substr(0, 200));
}

std::string encode_component(const std::string& value) {
  // Poco encodes bytes outside printable ASCII and its "illegal" set; the gen- and sub-delimiters of RFC 3986 are
  // added so that the value stays one path segment or one query value.
  std::string out;
  Poco::URI::encode(value, ":/?#[]@!$&'()*+,;=% ", out);
  return out;
}

std::string query_string(const std::vector<std::pair<std::string, std::optional<std::string>>>& params) {
  std::string out;
  for (const auto& [name, value] : params) {
    if (!value) continue;
    out += (out.empty() ? "?" : "&") + name + "=" + encode_component(*value);
  }
  return out;
}

std::pair<std::string, std::optional<std::string>> path_param(const std::string& remote) {
  if (utf8::is_valid(remote.begin(), remote.end())) return {"path", remote};
  std::ostringstream b64;
  Poco::Base64Encoder encoder(b64);
  encoder.rdbuf()->setLineLength(0);
  encoder << remote;
  encoder.close();
  return {"path_b64", b64.str()};
}

ApiClient::ApiClient(const std::string& base_url, std::string api_key)
    : base_url_(base_url), api_key_(std::move(api_key)) {
  // A key goes into a header line: a control byte would end it early or add a header of its own.
  if (std::any_of(api_key_.begin(), api_key_.end(),
                  [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; })) {
    throw UsageError("the API key must not contain control characters (newline, CR, tab, ...)");
  }
  try {
    uri_ = Poco::URI(base_url);
  } catch (const Poco::Exception& e) {
    throw UsageError("server URL '" + base_url + "': " + e.message());
  }
  if (uri_.getScheme() != "http" || uri_.getHost().empty() || !uri_.getRawQuery().empty() ||
      !uri_.getFragment().empty()) {
    throw UsageError("server URL '" + base_url + "': expected http://HOST[:PORT][/PATH]");
  }
  prefix_ = uri_.getPath();
  while (!prefix_.empty() && prefix_.back() == '/')
    prefix_.pop_back();
}

std::string ApiClient::target(const std::string& path) const {
  return prefix_ + path;
}

namespace {

/**
 * Sends `rq` (its body written by `write_body`) and hands status, reason and the response stream to `read`.
 * Poco and stream failures become ConnectionError. When the server answers before reading the whole body and
 * closes (e.g. 413 decided from Content-Length), the answer is still read from the socket, as curl does.
 */
void perform(const Poco::URI& uri, HTTPRequest& rq, const std::function<void(std::ostream&)>& write_body,
             const std::function<void(const HTTPResponse&, std::istream&)>& read) {
  try {
    Poco::Net::HTTPClientSession session(uri.getHost(), uri.getPort());
    session.setTimeout(kConnectTimeout, kIoTimeout, kIoTimeout);
    auto& out = session.sendRequest(rq);
    if (write_body) {
      write_body(out);
      out.flush();
    }
    HTTPResponse rs;
    if (session.networkException() || out.bad()) {
      Poco::Net::SocketInputStream in(session.socket());
      rs.read(in);
      read(rs, in);
      return;
    }
    auto& in = session.receiveResponse(rs);
    read(rs, in);
  } catch (const Poco::TimeoutException&) {
    throw ConnectionError("no answer within " + std::to_string(kIoTimeout.totalSeconds()) + " s");
  } catch (const Poco::Net::NoMessageException&) {
    throw ConnectionError("the connection was closed without an answer");
  } catch (const Poco::Exception& e) {
    throw ConnectionError(e.displayText());
  }
}

}  // namespace

namespace {

/** A client session that hands out the body of a refused WebSocket handshake (Poco's WebSocket keeps it unread). */
class HandshakeSession final : public Poco::Net::HTTPClientSession {
 public:
  using HTTPClientSession::HTTPClientSession;
  /** Up to `max` bytes of what follows the response head (until the connection ends). */
  std::string rest(std::size_t max) {
    std::string out;
    char buf[4096];
    while (out.size() < max) {
      int n = read(buf, static_cast<std::streamsize>(std::min(sizeof buf, max - out.size())));
      if (n <= 0) break;
      out.append(buf, static_cast<std::size_t>(n));
    }
    return out;
  }
};

}  // namespace

std::unique_ptr<Poco::Net::WebSocket> ApiClient::open_terminal(const std::string& sandbox_path, int rows, int cols,
                                                               const std::string& term) {
  std::string path = sandbox_path + "/terminal";
  std::vector<std::pair<std::string, std::optional<std::string>>> q;
  if (rows > 0) q.emplace_back("rows", std::to_string(rows));
  if (cols > 0) q.emplace_back("cols", std::to_string(cols));
  if (!term.empty()) q.emplace_back("term", term);
  HTTPRequest rq(HTTPRequest::HTTP_GET, target(path + query_string(q)), HTTPMessage::HTTP_1_1);
  if (!api_key_.empty()) rq.set("Authorization", "Bearer " + api_key_);
  HandshakeSession session(uri_.getHost(), uri_.getPort());
  session.setTimeout(kConnectTimeout, kIoTimeout, kIoTimeout);
  HTTPResponse rs;
  try {
    return std::make_unique<Poco::Net::WebSocket>(session, rq, rs);
  } catch (const Poco::Net::WebSocketException& e) {
    if (rs.getStatus() == HTTPResponse::HTTP_SWITCHING_PROTOCOLS) throw ConnectionError(e.displayText());
    std::string body;
    try {
      const auto length = rs.getContentLength64();
      body = session.rest(length >= 0 ? static_cast<std::size_t>(std::min<Poco::Int64>(length, 1 << 20)) : 1 << 20);
    } catch (const Poco::Exception&) {
      // The envelope is lost; the status still says what happened.
    }
    throw error_from(static_cast<int>(rs.getStatus()), rs.getReason(), body);
  } catch (const Poco::TimeoutException&) {
    throw ConnectionError("no answer within " + std::to_string(kIoTimeout.totalSeconds()) + " s");
  } catch (const Poco::Exception& e) {
    throw ConnectionError(e.displayText());
  }
}

Reply ApiClient::call(const std::string& method, const std::string& path, const std::optional<std::string>& body) {
  HTTPRequest rq(method, target(path), HTTPMessage::HTTP_1_1);
  rq.setKeepAlive(false);
  if (!api_key_.empty()) rq.set("Authorization", "Bearer " + api_key_);
  if (body) {
    rq.setContentType("application/json");
    rq.setContentLength(static_cast<std::streamsize>(body->size()));
  } else if (method == HTTPRequest::HTTP_POST || method == HTTPRequest::HTTP_PUT) {
    rq.setContentLength(0);
  }
  return exchange(rq, body ? std::function<void(std::ostream&)>([&](std::ostream& out) {
                    out.write(body->data(), static_cast<std::streamsize>(body->size()));
                  })
                           : nullptr);
}

Reply ApiClient::exchange(HTTPRequest& rq, const std::function<void(std::ostream&)>& write_body) {
  Reply reply;
  std::string reason;
  perform(uri_, rq, write_body, [&](const HTTPResponse& rs, std::istream& in) {
    reply.status = static_cast<int>(rs.getStatus());
    reason = rs.getReason();
    reply.body = read_all(in);
  });
  if (!is_success(reply.status)) throw error_from(reply.status, reason, reply.body);
  return reply;
}

ExecResult ApiClient::exec(const std::string& path, const std::string& body, ExecSink& sink) {
  HTTPRequest rq(HTTPRequest::HTTP_POST, target(path), HTTPMessage::HTTP_1_1);
  rq.setKeepAlive(false);
  if (!api_key_.empty()) rq.set("Authorization", "Bearer " + api_key_);
  rq.set("Accept", "text/event-stream, application/json");  // docs/api.md, "Streaming output"
  rq.setContentType("application/json");
  rq.setContentLength(static_cast<std::streamsize>(body.size()));
  Reply reply;
  std::string reason;
  bool streamed = false;
  std::string streamed_err;  // stderr as the events gave it
  perform(
      uri_, rq, [&](std::ostream& out) { out.write(body.data(), static_cast<std::streamsize>(body.size())); },
      [&](const HTTPResponse& rs, std::istream& in) {
        reply.status = static_cast<int>(rs.getStatus());
        reason = rs.getReason();
        if (!is_success(reply.status) || rs.getContentType().rfind("text/event-stream", 0) != 0) {
          reply.body = read_all(in);
          return;
        }
        // Server-Sent Events: output as it comes, then `result` (the JSON answer) or `error` (the envelope).
        streamed = true;
        std::string event;
        std::string data;
        std::string line;
        while (std::getline(in, line)) {
          if (!line.empty() && line.back() == '\r') line.pop_back();
          if (!line.empty()) {
            if (line.rfind("event:", 0) == 0) event = line.substr(line.size() > 6 && line[6] == ' ' ? 7 : 6);
            if (line.rfind("data:", 0) == 0) {
              data += (data.empty() ? "" : "\n") + line.substr(line.size() > 5 && line[5] == ' ' ? 6 : 5);
            }
            continue;
          }
          if (event == "stdout" || event == "stderr") {
            Reply chunk{200, data};
            const auto text = chunk.json()->optValue<std::string>("data", "");
            if (event == "stdout") {
              sink.on_stdout(text);
            } else {
              sink.on_stderr(text);
              streamed_err += text;
            }
          } else if (event == "result") {
            reply.body = data;
          } else if (event == "error") {
            reply.status = 500;  // the exec failed after its output began: the envelope says why
            reply.body = data;
          }
          event.clear();
          data.clear();
        }
      });
  if (!is_success(reply.status)) throw error_from(reply.status, reason, reply.body);
  if (streamed && reply.body.empty()) throw ConnectionError("the event stream ended without a result");
  auto json = reply.json();
  ExecResult result;
  result.body = reply.body;
  result.timed_out = json->optValue<bool>("timed_out", false);
  if (json->has("exit_code") && !json->isNull("exit_code")) result.exit_code = json->getValue<int>("exit_code");
  const auto error = json->optValue<std::string>("error", "");
  if (!streamed) {  // a server without streaming: the whole output at the end
    sink.on_stdout(json->optValue<std::string>("output", ""));
    sink.on_stderr(error);
  } else if (error.size() > streamed_err.size() && error.compare(0, streamed_err.size(), streamed_err) == 0) {
    sink.on_stderr(error.substr(streamed_err.size()));  // what the server added: "execution timed out after <n>s"
  } else if (result.timed_out) {
    // The streamed stderr was longer than the capped `error`: print the server's note on its own.
    if (auto at = error.rfind("execution timed out"); at != std::string::npos) {
      sink.on_stderr(std::string(streamed_err.empty() || streamed_err.back() == '\n' ? "" : "\n") + error.substr(at));
    }
  }
  return result;
}

Reply ApiClient::upload(const std::string& sandbox_path, const std::filesystem::path& local,
                        const std::string& remote) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(local, ec)) throw UsageError(local.string() + ": not a regular file");
  Poco::Net::HTMLForm form(Poco::Net::HTMLForm::ENCODING_MULTIPART);
  auto [name, value] = path_param(remote);
  form.set(name, *value);
  try {
    // The part's filename is a fixed ASCII word: the `path` field names the file, and a header stays ASCII.
    form.addPart("file", new Poco::Net::FilePartSource(local.string(), "upload", "application/octet-stream"));
  } catch (const Poco::Exception& e) {
    throw UsageError(local.string() + ": " + e.displayText());
  }
  HTTPRequest rq(HTTPRequest::HTTP_POST, target(sandbox_path + "/filesystem/upload"), HTTPMessage::HTTP_1_1);
  rq.setKeepAlive(false);
  if (!api_key_.empty()) rq.set("Authorization", "Bearer " + api_key_);
  form.prepareSubmit(rq, Poco::Net::HTMLForm::OPT_USE_CONTENT_LENGTH);
  return exchange(rq, [&](std::ostream& out) { form.write(out); });
}

std::uint64_t ApiClient::download(const std::string& sandbox_path, const std::string& remote, std::ostream& out) {
  auto [name, value] = path_param(remote);
  HTTPRequest rq(HTTPRequest::HTTP_GET, target(sandbox_path + "/filesystem/download" + query_string({{name, value}})),
                 HTTPMessage::HTTP_1_1);
  rq.setKeepAlive(false);
  if (!api_key_.empty()) rq.set("Authorization", "Bearer " + api_key_);
  std::uint64_t bytes = 0;
  int status = 0;
  std::string reason, error_body;
  perform(uri_, rq, nullptr, [&](const HTTPResponse& rs, std::istream& in) {
    status = static_cast<int>(rs.getStatus());
    reason = rs.getReason();
    if (!is_success(status)) {
      error_body = read_all(in);
      return;
    }
    char buf[65536];
    while (in.read(buf, sizeof buf) || in.gcount() > 0) {
      out.write(buf, in.gcount());
      bytes += static_cast<std::uint64_t>(in.gcount());
    }
    if (in.bad()) throw ConnectionError("the download was cut off after " + std::to_string(bytes) + " bytes");
    if (!out) throw UsageError("writing the downloaded bytes failed");
  });
  if (!is_success(status)) throw error_from(status, reason, error_body);
  return bytes;
}

}  // namespace berth::cli
