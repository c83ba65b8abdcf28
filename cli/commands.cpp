#include "commands.hpp"

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Stringifier.h>
#include <Poco/Net/HTTPRequest.h>
#include <unistd.h>
#include <utf8.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "output.hpp"
#include "settings.hpp"

namespace berth::cli {
namespace {

using Poco::JSON::Object;
using Poco::Net::HTTPRequest;

std::string sandbox_path(const std::string& id) {
  return "/v1/sandboxes/" + encode_component(id);
}

std::string to_json(const Object& o) {
  std::ostringstream out;
  o.stringify(out);
  return out.str();
}

void print_body(const Reply& reply) {
  std::cout << reply.body;
  if (reply.body.empty() || reply.body.back() != '\n') std::cout << '\n';
}

void require_utf8(const std::string& text, const std::string& what) {
  if (!utf8::is_valid(text.begin(), text.end())) throw UsageError(what + " is not valid UTF-8");
}

/** Timeouts are whole seconds on the wire; the CLI takes durations (`30s`, `2m`). */
std::optional<std::int64_t> seconds(const std::optional<std::string>& duration) {
  if (!duration) return std::nullopt;
  return parse_duration(*duration);
}

std::vector<std::pair<std::string, std::string>> sandbox_fields(const Object::Ptr& s) {
  std::vector<std::pair<std::string, std::string>> fields;
  for (const char* key : {"id", "status", "profile", "workspace_id", "key", "labels", "capabilities", "session_id",
                          "created_at", "expires_at", "idle_expires_at"}) {
    fields.emplace_back(key, cell(s, key));
  }
  if (s->has("error")) fields.emplace_back("error", cell(s, "error"));
  return fields;
}

/** Writes stdout and stderr of a program straight through, flushed, as they arrive. */
class TerminalSink : public ExecSink {
 public:
  void on_stdout(std::string_view bytes) override {
    std::cout.write(bytes.data(), static_cast<std::streamsize>(bytes.size())).flush();
  }
  void on_stderr(std::string_view bytes) override {
    std::cerr.write(bytes.data(), static_cast<std::streamsize>(bytes.size())).flush();
    if (!bytes.empty()) stderr_ends_line = bytes.back() == '\n';
  }
  bool stderr_ends_line = true;
};

/** --json: the output is in the body printed at the end. */
class DiscardSink : public ExecSink {
 public:
  void on_stdout(std::string_view) override {}
  void on_stderr(std::string_view) override {}
};

int run_exec(Context& ctx, const std::string& route, const Object& body) {
  TerminalSink terminal;
  DiscardSink discard;
  ExecResult result = ctx.client.exec(route, to_json(body), ctx.json ? static_cast<ExecSink&>(discard) : terminal);
  if (ctx.json) print_body(Reply{200, result.body});
  if (result.timed_out) {
    if (!ctx.json && !terminal.stderr_ends_line) std::cerr << '\n';  // the server's "timed out" note has none
    return kExitTimedOut;
  }
  return result.exit_code ? (*result.exit_code & 0xff) : kExitServer;
}

/** `SANDBOX:PATH` as docker cp reads it: a ':' with a non-empty text before it that holds no '/'. */
std::optional<std::pair<std::string, std::string>> remote_spec(const std::string& arg) {
  auto colon = arg.find(':');
  if (colon == std::string::npos || colon == 0 || arg.substr(0, colon).find('/') != std::string::npos) {
    return std::nullopt;
  }
  std::string path = arg.substr(colon + 1);
  // Paths are relative to /workspace on the wire; accept the absolute spelling a user sees inside the sandbox.
  if (path == "/workspace")
    path.clear();
  else if (path.rfind("/workspace/", 0) == 0)
    path = path.substr(11);
  return std::make_pair(arg.substr(0, colon), path);
}

std::string base_name(const std::string& path) {
  std::string p = path;
  while (!p.empty() && p.back() == '/')
    p.pop_back();
  auto slash = p.rfind('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

int copy_down(Context& ctx, const std::string& sandbox, const std::string& remote, const std::string& local) {
  if (remote.empty() || remote.back() == '/') throw UsageError("'" + sandbox + ":" + remote + "' names no file");
  if (local == "-") {
    auto bytes = ctx.client.download(sandbox_path(sandbox), remote, std::cout);
    std::cout.flush();
    (void)bytes;
    return kExitOk;
  }
  std::filesystem::path target = local;
  std::error_code ec;
  if (std::filesystem::is_directory(target, ec)) target /= base_name(remote);
  // Bytes go to a temporary file next to the target, renamed over it only when the whole file arrived.
  std::string temp = target.string() + ".berth-XXXXXX";
  int fd = mkstemp(temp.data());
  if (fd < 0) throw UsageError(target.string() + ": cannot create a file next to it");
  ::close(fd);
  std::uint64_t bytes = 0;
  try {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    bytes = ctx.client.download(sandbox_path(sandbox), remote, out);
    out.close();
    if (!out) throw UsageError(temp + ": write failed");
    std::filesystem::permissions(temp, std::filesystem::perms(0644), ec);
    std::filesystem::rename(temp, target);
  } catch (...) {
    std::filesystem::remove(temp, ec);
    throw;
  }
  if (ctx.json) {
    Object o;
    o.set("sandbox_id", sandbox);
    o.set("path", remote);
    o.set("local", target.string());
    o.set("size", bytes);
    std::cout << to_json(o) << '\n';
  }
  return kExitOk;
}

int copy_up(Context& ctx, const std::string& local, const std::string& sandbox, std::string remote) {
  if (remote.empty() || remote.back() == '/') remote += base_name(local);
  Reply reply = ctx.client.upload(sandbox_path(sandbox), local, remote);
  if (ctx.json) print_body(reply);
  return kExitOk;
}

}  // namespace

std::string shell_join(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& word : argv) {
    if (!out.empty()) out += ' ';
    bool safe = !word.empty() && word.find_first_not_of(
                                     "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                     "0123456789_-+=.,/:@%") == std::string::npos;
    if (safe) {
      out += word;
      continue;
    }
    out += '\'';
    for (char c : word) {
      if (c == '\'')
        out += "'\\''";
      else
        out += c;
    }
    out += '\'';
  }
  return out;
}

void report(const ServerError& e, bool json) {
  if (json && !e.body.empty() && e.body.front() == '{') {
    std::cerr << e.body << (e.body.back() == '\n' ? "" : "\n");
    return;
  }
  std::string line = "berth: " + e.code + ": " + e.what();
  std::string extra;
  for (const auto& [k, v] : e.details)
    extra.append(extra.empty() ? "" : ", ").append(k).append("=").append(v);
  if (!extra.empty()) line += " (" + extra + ")";
  line += " [HTTP " + std::to_string(e.status) + (e.request_id.empty() ? "" : ", " + e.request_id) + "]";
  std::cerr << line << '\n';
}

int cmd_create(Context& ctx, const CreateOptions& o) {
  Object body;
  if (o.profile) body.set("profile", *o.profile);
  if (auto ttl = seconds(o.ttl)) body.set("ttl", *ttl);
  if (o.key) body.set("key", *o.key);
  if (o.workspace) body.set("workspace_id", *o.workspace);
  if (!o.labels.empty()) {
    Object::Ptr labels = new Object;
    for (const auto& l : o.labels) {
      auto [k, v] = split_assignment(l, "--label");
      labels->set(k, v);
    }
    body.set("labels", labels);
  }
  if (!o.env.empty()) {
    Object::Ptr env = new Object;
    for (const auto& e : o.env) {
      auto [k, v] = split_assignment(e, "--env");
      env->set(k, v);
    }
    body.set("env", env);
  }
  Reply reply = ctx.client.call(HTTPRequest::HTTP_POST, "/v1/sandboxes", to_json(body));
  if (ctx.json)
    print_body(reply);
  else
    std::cout << reply.json()->getValue<std::string>("id") << '\n';
  return kExitOk;
}

int cmd_list(Context& ctx, const ListOptions& o) {
  Poco::JSON::Array::Ptr items = new Poco::JSON::Array;
  std::optional<std::string> cursor;
  Reply last;
  do {
    std::optional<std::string> limit = o.limit ? std::to_string(*o.limit) : std::string("500");
    last = ctx.client.call(
        HTTPRequest::HTTP_GET,
        "/v1/sandboxes" +
            query_string({{"status", o.status}, {"label", o.label}, {"limit", limit}, {"cursor", cursor}}));
    auto page = last.json();
    auto page_items = page->getArray("items");
    for (std::size_t i = 0; page_items && i < page_items->size(); ++i)
      items->add(page_items->get(i));
    cursor.reset();
    if (!o.limit && page->has("next_cursor") && !page->isNull("next_cursor")) {
      cursor = page->getValue<std::string>("next_cursor");
    }
  } while (cursor);
  if (ctx.json) {
    if (o.limit) {
      print_body(last);  // one page: the server's answer as is
    } else {
      Object all;
      all.set("items", items);
      all.set("next_cursor", Poco::Dynamic::Var());
      std::cout << to_json(all) << '\n';
    }
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows;
  for (std::size_t i = 0; i < items->size(); ++i) {
    auto s = items->getObject(static_cast<unsigned>(i));
    rows.push_back({cell(s, "id"), cell(s, "status"), cell(s, "profile"), cell(s, "key"), cell(s, "expires_at"),
                    cell(s, "labels")});
  }
  print_table(std::cout, {"ID", "STATUS", "PROFILE", "KEY", "EXPIRES", "LABELS"}, rows);
  return kExitOk;
}

int cmd_get(Context& ctx, const std::string& sandbox) {
  Reply reply = ctx.client.call(HTTPRequest::HTTP_GET, sandbox_path(sandbox));
  if (ctx.json)
    print_body(reply);
  else
    print_fields(std::cout, sandbox_fields(reply.json()));
  return kExitOk;
}

int cmd_exec(Context& ctx, const ExecOptions& o) {
  if (o.command.empty()) throw UsageError("exec: no command given (berth exec SANDBOX -- CMD...)");
  Object body;
  std::string command = shell_join(o.command);
  require_utf8(command, "the command");
  body.set("command", command);
  if (auto t = seconds(o.timeout)) body.set("timeout", *t);
  if (o.cwd) {
    auto [name, value] = path_param(*o.cwd);
    body.set(name == "path" ? "cwd" : "cwd_b64", *value);
  }
  return run_exec(ctx, sandbox_path(o.sandbox) + "/shell/exec", body);
}

int cmd_python(Context& ctx, const PythonOptions& o) {
  if (o.code.has_value() == o.file.has_value()) {
    throw UsageError("python: give exactly one of -c CODE, FILE or - (stdin)");
  }
  std::string code;
  if (o.code) {
    code = *o.code;
  } else if (*o.file == "-") {
    code.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    std::ifstream in(*o.file, std::ios::binary);
    if (!in) throw UsageError(*o.file + ": cannot open");
    code.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (in.bad()) throw UsageError(*o.file + ": read failed");
  }
  require_utf8(code, "the code");
  Object body;
  body.set("code", code);
  if (auto t = seconds(o.timeout)) body.set("timeout", *t);
  return run_exec(ctx, sandbox_path(o.sandbox) + "/python/exec", body);
}

int cmd_copy(Context& ctx, const CopyOptions& o) {
  auto from = remote_spec(o.from), to = remote_spec(o.to);
  if (from.has_value() == to.has_value()) {
    throw UsageError("cp: exactly one side must be SANDBOX:PATH (write a local path with ':' as ./" + o.from + ")");
  }
  if (from) return copy_down(ctx, from->first, from->second, o.to);
  return copy_up(ctx, o.from, to->first, to->second);
}

int cmd_remove(Context& ctx, const std::vector<std::string>& sandboxes) {
  int rc = kExitOk;
  for (const auto& id : sandboxes) {
    try {
      ctx.client.call(HTTPRequest::HTTP_DELETE, sandbox_path(id));
      if (!ctx.json) std::cout << id << '\n';
    } catch (const ServerError& e) {
      report(e, ctx.json);
      rc = kExitServer;
    }
  }
  return rc;
}

int cmd_stop(Context& ctx, const std::string& sandbox) {
  Reply reply = ctx.client.call(HTTPRequest::HTTP_POST, sandbox_path(sandbox) + "/stop");
  if (ctx.json)
    print_body(reply);
  else
    std::cout << sandbox << " stopped\n";
  return kExitOk;
}

int cmd_start(Context& ctx, const std::string& sandbox) {
  Reply reply = ctx.client.call(HTTPRequest::HTTP_POST, sandbox_path(sandbox) + "/start");
  if (ctx.json)
    print_body(reply);
  else
    std::cout << sandbox << ' ' << cell(reply.json(), "status") << '\n';
  return kExitOk;
}

int cmd_keepalive(Context& ctx, const std::string& sandbox) {
  Reply reply = ctx.client.call(HTTPRequest::HTTP_POST, sandbox_path(sandbox) + "/keepalive");
  if (ctx.json)
    print_body(reply);
  else
    std::cout << sandbox << " kept alive\n";
  return kExitOk;
}

int cmd_extend(Context& ctx, const std::string& sandbox, const std::string& by) {
  Object body;
  body.set("extend_by", parse_duration(by));
  Reply reply = ctx.client.call(HTTPRequest::HTTP_POST, sandbox_path(sandbox) + "/extend_ttl", to_json(body));
  if (ctx.json)
    print_body(reply);
  else
    std::cout << sandbox << " expires_at " << cell(reply.json(), "expires_at") << '\n';
  return kExitOk;
}

int cmd_history(Context& ctx, const HistoryOptions& o) {
  auto num = [](const std::optional<int>& v) {
    return v ? std::optional<std::string>(std::to_string(*v)) : std::nullopt;
  };
  Reply reply =
      ctx.client.call(HTTPRequest::HTTP_GET,
                      sandbox_path(o.sandbox) + "/history" +
                          query_string({{"exec_type", o.type}, {"limit", num(o.limit)}, {"offset", num(o.offset)}}));
  if (ctx.json) {
    print_body(reply);
    return kExitOk;
  }
  auto page = reply.json();
  auto entries = page->getArray("entries");
  std::vector<std::vector<std::string>> rows;
  for (std::size_t i = 0; entries && i < entries->size(); ++i) {
    auto e = entries->getObject(static_cast<unsigned>(i));
    rows.push_back({cell(e, "id"), cell(e, "exec_type"), cell(e, "exit_code"), cell(e, "execution_time_ms"),
                    cell(e, "created_at"), first_line(e->optValue<std::string>("code", ""), 48)});
  }
  print_table(std::cout, {"ID", "TYPE", "EXIT", "MS", "CREATED", "CODE"}, rows);
  auto total = page->optValue<std::int64_t>("total", 0);
  if (total > static_cast<std::int64_t>(rows.size())) {
    std::cerr << "berth: " << rows.size() << " of " << total << " entries shown (--limit, --offset for more)\n";
  }
  return kExitOk;
}

int cmd_profiles(Context& ctx) {
  Reply reply = ctx.client.call(HTTPRequest::HTTP_GET, "/v1/profiles");
  if (ctx.json) {
    print_body(reply);
    return kExitOk;
  }
  auto items = reply.json()->getArray("items");
  std::vector<std::vector<std::string>> rows;
  for (std::size_t i = 0; items && i < items->size(); ++i) {
    auto p = items->getObject(static_cast<unsigned>(i));
    rows.push_back({cell(p, "name"), cell(p, "image"), cell(p, "cpus"), cell(p, "memory_bytes"), cell(p, "pids"),
                    cell(p, "network"), cell(p, "ttl_s"), cell(p, "idle_timeout_s"), cell(p, "capabilities")});
  }
  print_table(std::cout,
              {"NAME", "IMAGE", "CPUS", "MEMORY_BYTES", "PIDS", "NETWORK", "TTL_S", "IDLE_S", "CAPABILITIES"}, rows);
  return kExitOk;
}

int cmd_gc(Context& ctx) {
  Reply reply = ctx.client.call(HTTPRequest::HTTP_POST, "/v1/admin/gc/run");
  if (ctx.json) {
    print_body(reply);
    return kExitOk;
  }
  auto result = reply.json();
  std::vector<std::pair<std::string, std::string>> fields;
  for (const char* key : {"idle_stopped", "expired_deleted", "orphans_removed", "workspaces_removed", "dead_sessions",
                          "skipped_stale", "skipped_in_use", "disk_stopped", "failed"}) {
    auto list = result->getArray(key);
    std::size_t n = list ? list->size() : 0;
    fields.emplace_back(key, std::to_string(n) + (n ? "  " + cell(result, key) : ""));
  }
  print_fields(std::cout, fields);
  return kExitOk;
}

int cmd_version(Context& ctx) {
  Object::Ptr client = new Object;
  client->set("version", std::string(BERTH_VERSION));
  if (!ctx.json) std::cout << "berth " << BERTH_VERSION << '\n' << std::flush;
  Reply meta;
  try {
    meta = ctx.client.call(HTTPRequest::HTTP_GET, "/meta");
  } catch (const ConnectionError&) {
    if (ctx.json) {
      Object out;
      out.set("client", client);
      out.set("server", Poco::Dynamic::Var());
      std::cout << to_json(out) << '\n';
    }
    throw;
  }
  auto m = meta.json();
  if (ctx.json) {
    Object out;
    out.set("client", client);
    out.set("server", m);
    std::cout << to_json(out) << '\n';
    return kExitOk;
  }
  auto driver = m->getObject("driver");
  std::cout << "berthd " << cell(m, "version") << " (api " << cell(m, "api_version") << ", driver "
            << cell(driver, "name") << ' ' << cell(driver, "version") << ", abi " << cell(driver, "abi") << ") at "
            << ctx.client.base_url() << '\n';
  return kExitOk;
}

}  // namespace berth::cli
