// A Server-Sent Events client for the tests (the WHATWG HTML standard, "Server-sent events"): a streaming POST to
// berthd that hands each event over as it arrives, as `curl -N` or a browser's EventSource would read it.
#pragma once

#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/StreamCopier.h>

#include <cstdint>
#include <functional>
#include <istream>
#include <string>
#include <utility>
#include <vector>

namespace berth::test {

/** One event: its `event:` name (default "message"), `id:` and `data:` (lines joined by "\n"). */
struct SseEvent {
  std::string event = "message";
  std::string id;
  std::string data;
};

/** What a streaming call answered: the status and type, every event (SSE), or the body (any other type). */
struct SseReply {
  int status = 0;
  std::string content_type;
  std::vector<SseEvent> events;
  std::string body;
};

/**
 * Sends `method` (POST with `body` as JSON, or GET) to 127.0.0.1:`port` `uri` with `Accept: text/event-stream` and
 * reads the answer. For an event
 * stream, `on_event` (optional) sees each event the moment its blank line arrives, before the next is read; the
 * call returns when the server ends the response. Timeout per read: `timeout_s` seconds (a hang fails the test).
 * `headers` are added to the request.
 */
inline SseReply request_events(const std::string& method, std::uint16_t port, const std::string& uri,
                               const std::string& body, const std::function<void(const SseEvent&)>& on_event,
                               int timeout_s, const std::vector<std::pair<std::string, std::string>>& headers) {
  Poco::Net::HTTPClientSession session("127.0.0.1", port);
  session.setTimeout(Poco::Timespan(timeout_s, 0));
  Poco::Net::HTTPRequest rq(method, uri, Poco::Net::HTTPMessage::HTTP_1_1);
  rq.set("Accept", "text/event-stream");
  for (const auto& [name, value] : headers)
    rq.set(name, value);
  if (method == Poco::Net::HTTPRequest::HTTP_GET) {
    session.sendRequest(rq);
  } else {
    rq.setContentType("application/json");
    rq.setContentLength(static_cast<std::streamsize>(body.size()));
    session.sendRequest(rq) << body;
  }
  Poco::Net::HTTPResponse rs;
  std::istream& in = session.receiveResponse(rs);
  SseReply reply;
  reply.status = rs.getStatus();
  reply.content_type = rs.getContentType();
  if (reply.content_type.rfind("text/event-stream", 0) != 0) {
    Poco::StreamCopier::copyToString(in, reply.body);
    return reply;
  }
  SseEvent current;
  bool any = false;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) {
      if (any) {
        reply.events.push_back(current);
        if (on_event) on_event(reply.events.back());
      }
      current = SseEvent{};
      any = false;
      continue;
    }
    if (line[0] == ':') continue;  // a comment
    const auto colon = line.find(':');
    const std::string field = line.substr(0, colon);
    std::string value = colon == std::string::npos ? "" : line.substr(colon + 1);
    if (!value.empty() && value[0] == ' ') value.erase(0, 1);
    if (field == "event") {
      current.event = value;
    } else if (field == "id") {
      current.id = value;
    } else if (field == "data") {
      current.data += (current.data.empty() ? "" : "\n") + value;
    }
    any = true;
  }
  return reply;
}

inline SseReply post_events(std::uint16_t port, const std::string& uri, const std::string& body,
                            const std::function<void(const SseEvent&)>& on_event = {}, int timeout_s = 120,
                            const std::vector<std::pair<std::string, std::string>>& headers = {}) {
  return request_events(Poco::Net::HTTPRequest::HTTP_POST, port, uri, body, on_event, timeout_s, headers);
}

/** GET `uri` as an event stream (an execution's events): as post_events, with `headers` (e.g. Last-Event-ID). */
inline SseReply get_events(std::uint16_t port, const std::string& uri,
                           const std::vector<std::pair<std::string, std::string>>& headers = {}, int timeout_s = 120,
                           const std::function<void(const SseEvent&)>& on_event = {}) {
  return request_events(Poco::Net::HTTPRequest::HTTP_GET, port, uri, "", on_event, timeout_s, headers);
}

}  // namespace berth::test
