// Python contexts: the kernel protocol's host side and the registry of contexts (python_context.hpp).
#include "core/python_context.hpp"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <csignal>
#include <sstream>

#include "core/errors.hpp"
#include "core/ids.hpp"
#include "core/log.hpp"

namespace berth::core {

using namespace std::chrono_literals;

// ---- frames
// ----------------------------------------------------------------------------------------------------------

std::optional<KernelFrame> KernelFrameParser::next() {
  const std::size_t nl = buffer_.find('\n', pos_);
  if (nl == std::string::npos) {
    if (buffer_.size() - pos_ > 64) throw std::runtime_error("kernel frame header longer than 64 bytes");
    return std::nullopt;
  }
  if (nl - pos_ > 64) throw std::runtime_error("kernel frame header longer than 64 bytes");
  const std::string_view header(buffer_.data() + pos_, nl - pos_);
  const std::size_t space = header.find(' ');
  if (space == std::string_view::npos || space == 0) throw std::runtime_error("kernel frame header without a type");
  const std::string_view type = header.substr(0, space);
  const std::string_view digits = header.substr(space + 1);
  for (char c : type) {
    if (c < 'a' || c > 'z') throw std::runtime_error("kernel frame type is not a lowercase word");
  }
  if (digits.empty() || digits.size() > 12) throw std::runtime_error("kernel frame length is malformed");
  std::size_t length = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') throw std::runtime_error("kernel frame length is malformed");
    length = length * 10 + static_cast<std::size_t>(c - '0');
  }
  if (length > max_payload_)
    throw std::runtime_error("kernel frame of " + std::to_string(length) + " bytes is too large");
  if (buffer_.size() - (nl + 1) < length) return std::nullopt;
  KernelFrame frame{std::string(type), buffer_.substr(nl + 1, length)};
  pos_ = nl + 1 + length;
  if (pos_ == buffer_.size()) {
    buffer_.clear();
    if (buffer_.capacity() > (1u << 20)) buffer_.shrink_to_fit();  // a big result does not pin its memory
    pos_ = 0;
  } else if (pos_ > (1u << 16) && pos_ * 2 > buffer_.size()) {
    buffer_.erase(0, pos_);  // keep memory to what is unread
    pos_ = 0;
  }
  return frame;
}

// ---- the kernel
// ------------------------------------------------------------------------------------------------------

namespace {

constexpr std::size_t kStderrKept = 4096;
constexpr int kKernelProtocol = 1;  // docs/python-contexts.md, "Versioning"
/** argv[3] of the kernel: reads "<length>\n<source>" from fd 0 unbuffered (the frames that follow stay on fd 0). */
constexpr const char* kBootstrap =
    "# berth python kernel bootstrap (docs/python-contexts.md)\n"
    "import sys\n"
    "if sys.path and sys.path[0] == '':\n"  // no workspace file may stand in for a module the kernel imports
    "    del sys.path[0]\n"
    "import os\n"
    "def _berth_read(n):\n"
    "    b = b''\n"
    "    while len(b) < n:\n"
    "        c = os.read(0, n - len(b))\n"
    "        if not c:\n"
    "            raise SystemExit(3)\n"
    "        b += c\n"
    "    return b\n"
    "_berth_h = b''\n"
    "while not _berth_h.endswith(b'\\n'):\n"
    "    _berth_h += _berth_read(1)\n"
    "exec(compile(_berth_read(int(_berth_h)), '<berth-kernel>', 'exec'))\n";  // of a kernel that fails to start, for
                                                                              // the error message

std::string describe_exit(const ProcessExit& exit) {
  if (exit.timed_out) return "the interpreter was stopped by the driver's timeout";
  if (exit.killed) return "the interpreter was killed";
  if (exit.signal != 0) return "the interpreter was ended by signal " + std::to_string(exit.signal);
  return "the interpreter exited (code " + std::to_string(exit.exit_code) + ")";
}

std::string get_string(const Poco::JSON::Object::Ptr& o, const std::string& key) {
  if (!o || !o->has(key) || o->isNull(key)) return "";
  return o->getValue<std::string>(key);
}

std::string stringify(const Poco::Dynamic::Var& v) {
  std::ostringstream s;
  Poco::JSON::Stringifier::condense(v, s);
  return s.str();
}

}  // namespace

std::uint64_t parse_kernel_result(const std::string& payload, CellOutcome& out) {
  Poco::JSON::Parser parser;
  Poco::JSON::Object::Ptr o;
  try {
    o = parser.parse(payload).extract<Poco::JSON::Object::Ptr>();
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string("kernel result is not a JSON object: ") + e.what());
  }
  if (!o) throw std::runtime_error("kernel result is not a JSON object");
  try {
    out.execution_count = o->has("execution_count") ? o->getValue<int>("execution_count") : 0;
    out.success = o->has("success") && o->getValue<bool>("success");
    out.exit_code = o->has("exit_code") ? o->getValue<int>("exit_code") : (out.success ? 0 : 1);
    out.cwd = get_string(o, "cwd");
    if (auto err = o->getObject("error")) {
      out.error_name = get_string(err, "ename");
      out.error_value = get_string(err, "evalue");
      out.traceback = get_string(err, "traceback");
    }
    if (o->has("data") && !o->isNull("data")) out.data_json = stringify(o->get("data"));
    if (o->has("result")) out.result_json = stringify(o->get("result"));  // null is a value a handler may return
  } catch (const Poco::Exception& e) {
    throw std::runtime_error("kernel result has a field of the wrong type: " + e.displayText());
  }
  out.finished = true;
  try {
    return o->has("cell") && o->get("cell").isInteger() ? o->getValue<std::uint64_t>("cell") : 0;
  } catch (const Poco::Exception&) {
    return 0;  // a negative or huge number: no cell of this kernel
  }
}

std::unique_ptr<PythonKernel> PythonKernel::start(Driver& driver, const std::string& handle,
                                                  const std::map<std::string, std::string>& env, const std::string& cwd,
                                                  std::chrono::milliseconds wait, const CancelToken* cancel) {
  ProcessSpec spec;
  // A small bootstrap in argv reads the kernel from stdin: argv stays short (and tenant-visible in ps), like code.
  spec.argv = {"python3", "-u", "-c", kBootstrap};
  spec.env = env;
  spec.env.emplace("MPLBACKEND", "Agg");  // figures render to PNG without a display
  spec.cwd = cwd;
  std::unique_ptr<PythonKernel> kernel(new PythonKernel(driver.process_start(handle, spec)));
  const std::string_view source = python_kernel_source();
  std::string preamble = std::to_string(source.size()) + "\n";
  preamble.append(source);
  try {
    kernel->process_->write_stdin(preamble);  // about 12 KiB: far below any driver's stdin buffer (driver.h: 8 MiB)
  } catch (const DriverError& e) {
    kernel->kill();
    if (e.code() == DriverErrc::cancelled || e.code() == DriverErrc::internal) throw;
    // Otherwise the process no longer reads: its exit event below says why.
  }
  const auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    const auto now = std::chrono::steady_clock::now();
    if (cancel != nullptr && cancel->cancelled()) {
      kernel->kill();
      throw DriverError(DriverErrc::cancelled, "the kernel's start was cancelled");
    }
    if (now >= deadline) {
      kernel->kill();
      throw Error(ErrorCode::session_not_ready,
                  "the Python kernel did not start within " +
                      std::to_string(std::chrono::duration_cast<std::chrono::seconds>(wait).count()) + "s" +
                      (kernel->kernel_stderr_.empty() ? std::string() : ": " + kernel->kernel_stderr_));
    }
    auto ev = kernel->process_->next_event(std::min<std::chrono::milliseconds>(
        250ms, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now)));
    if (ev.kind == ProcessEvent::Kind::exit) {
      kernel->dead_ = true;
      std::string why = kernel->kernel_stderr_;
      while (!why.empty() && (why.back() == '\n' || why.back() == '\r'))
        why.pop_back();
      // 127 (or 126): no python3 to run in the image, which will not change; anything else (an OOM kill, a crash) is
      // this start's failure.
      const bool missing = !ev.exit.killed && !ev.exit.timed_out && ev.exit.signal == 0 &&
                           (ev.exit.exit_code == 127 || ev.exit.exit_code == 126);
      throw Error(missing ? ErrorCode::capability_not_supported : ErrorCode::internal,
                  "python3 did not start in the sandbox (" + describe_exit(ev.exit) + ")" +
                      (why.empty() ? std::string() : ": " + why),
                  {{"exit_code", std::to_string(ev.exit.exit_code)}});
    }
    if (ev.kind != ProcessEvent::Kind::output) continue;
    if (ev.stream == Stream::err) {
      if (kernel->kernel_stderr_.size() < kStderrKept)
        kernel->kernel_stderr_.append(ev.data.substr(0, kStderrKept - kernel->kernel_stderr_.size()));
      continue;
    }
    kernel->parser_.feed(ev.data);
    std::optional<KernelFrame> frame;
    try {
      frame = kernel->parser_.next();
    } catch (const std::exception& e) {
      kernel->kill();
      throw Error(ErrorCode::capability_not_supported,
                  std::string("python3 in the sandbox did not speak the kernel protocol: ") + e.what());
    }
    if (!frame) continue;
    if (frame->type != "ready") {
      kernel->kill();
      throw Error(ErrorCode::capability_not_supported,
                  "python3 in the sandbox did not speak the kernel protocol (first frame '" + frame->type + "')");
    }
    int protocol = 0;
    try {
      Poco::JSON::Parser parser;
      auto o = parser.parse(frame->payload).extract<Poco::JSON::Object::Ptr>();
      kernel->python_version_ = get_string(o, "python");
      protocol = o->optValue<int>("protocol", 0);
    } catch (const std::exception&) {
      protocol = 0;
    }
    if (protocol != kKernelProtocol) {
      kernel->kill();
      throw Error(ErrorCode::capability_not_supported, "the Python kernel speaks protocol " + std::to_string(protocol) +
                                                           ", berthd speaks " + std::to_string(kKernelProtocol));
    }
    kernel->kernel_stderr_.clear();
    return kernel;
  }
}

PythonKernel::~PythonKernel() {
  try {
    if (!dead_) process_->kill();
  } catch (const std::exception&) {
    // the session is gone; so is the process
  }
}

bool PythonKernel::alive() {
  if (dead_) return false;
  for (;;) {  // what came since the last cell: stray output stays in the parser for the next one
    ProcessEvent ev;
    try {
      ev = process_->next_event(std::chrono::milliseconds(0));
    } catch (const DriverError&) {
      dead_ = true;  // its connection or session is gone
      return false;
    }
    if (ev.kind == ProcessEvent::Kind::exit) {
      dead_ = true;
      return false;
    }
    if (ev.kind == ProcessEvent::Kind::none) return true;
    if (ev.kind == ProcessEvent::Kind::output && ev.stream == Stream::out) parser_.feed(ev.data);
  }
}

void PythonKernel::kill() {
  dead_ = true;
  try {
    process_->kill();
  } catch (const DriverError&) {
    // already gone with its session
  }
}

CellOutcome PythonKernel::run(const std::string& request_json, std::chrono::milliseconds timeout,
                              std::chrono::milliseconds interrupt_grace, const OutputSink& on_output,
                              const CancelToken& cancel) {
  CellOutcome out;
  // The request object gets this cell's number, which its result echoes ({"code": ...} -> {"cell": N, "code": ...}).
  const std::uint64_t cell_id = ++cells_;
  std::string request = request_json;
  request.insert(1, "\"cell\":" + std::to_string(cell_id) + (request.size() > 2 ? "," : ""));
  const std::string frame = "exec " + std::to_string(request.size()) + "\n" + request;
  std::size_t fed = 0;
  constexpr std::size_t kStdinChunk = 1 << 20;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::optional<std::chrono::steady_clock::time_point> kill_at;
  if (cancel.cancelled()) throw DriverError(DriverErrc::cancelled, "the cell was cancelled");  // before it is sent
  const auto lose = [&](std::string why) {
    kill();
    out.kernel_lost = true;
    out.lost_reason = std::move(why);
    return out;
  };
  for (;;) {
    while (fed < frame.size()) {
      const std::string_view chunk = std::string_view(frame).substr(fed, kStdinChunk);
      try {
        process_->write_stdin(chunk);
        fed += chunk.size();
      } catch (const DriverError& e) {
        if (e.code() == DriverErrc::unavailable) break;  // the driver's buffer is full: after the next event
        if (e.code() == DriverErrc::cancelled || e.code() == DriverErrc::internal) throw;
        fed = frame.size();  // the kernel no longer reads: its exit event tells why
      }
    }
    if (cancel.cancelled()) {
      kill();
      throw DriverError(DriverErrc::cancelled, "the cell was cancelled");
    }
    const auto now = std::chrono::steady_clock::now();
    if (!kill_at && now >= deadline) {
      out.timed_out = true;
      kill_at = now + interrupt_grace;
      try {
        // To the interpreter only, as Jupyter does: KeyboardInterrupt in the cell (subprocess.run kills its child on
        // it); servers the context started in the background (Popen) are not its to end.
        process_->signal(SIGINT, false);
      } catch (const DriverError&) {
        // gone already: the exit event follows
      }
    }
    if (kill_at && now >= *kill_at) return lose("timeout");
    const auto until = kill_at ? *kill_at : deadline;
    const auto wait = fed < frame.size()
                          ? 10ms
                          : std::clamp(std::chrono::duration_cast<std::chrono::milliseconds>(until - now) + 1ms, 1ms,
                                       std::chrono::milliseconds(250));
    ProcessEvent ev;
    try {
      ev = process_->next_event(wait);
    } catch (const DriverError& e) {
      if (e.code() == DriverErrc::conflict) dead_ = true;  // its connection or session ended
      throw;
    }
    if (ev.kind == ProcessEvent::Kind::exit) {
      dead_ = true;
      out.kernel_lost = true;
      out.lost_reason = describe_exit(ev.exit);
      return out;
    }
    if (ev.kind != ProcessEvent::Kind::output) continue;
    if (ev.stream == Stream::err) {  // the interpreter's own stderr (a fatal error): the cell's stderr
      if (!on_output(Stream::err, ev.data)) {
        kill();
        throw DriverError(DriverErrc::cancelled, "the output consumer ended the cell");
      }
      continue;
    }
    parser_.feed(ev.data);
    for (;;) {
      std::optional<KernelFrame> f;
      try {
        f = parser_.next();
      } catch (const std::exception& e) {
        return lose(std::string("kernel protocol error: ") + e.what());
      }
      if (!f) break;
      if (f->type == "stdout" || f->type == "stderr") {
        if (!on_output(f->type == "stdout" ? Stream::out : Stream::err, f->payload)) {
          kill();
          throw DriverError(DriverErrc::cancelled, "the output consumer ended the cell");
        }
      } else if (f->type == "result") {
        CellOutcome parsed;
        std::uint64_t cell = 0;
        try {
          cell = parse_kernel_result(f->payload, parsed);
        } catch (const std::exception& e) {
          return lose(std::string("kernel protocol error: ") + e.what());
        }
        if (cell != cell_id) continue;  // a result of an earlier cell (one that was cut short): not this one's
        parsed.timed_out = out.timed_out;
        return parsed;
      } else {
        return lose("kernel protocol error: unexpected frame '" + f->type + "'");
      }
    }
  }
}

// ---- the registry
// ----------------------------------------------------------------------------------------------------

std::shared_ptr<PythonContexts::Entry> PythonContexts::find(const std::string& sandbox_id,
                                                            const std::string& context_id, bool create_default,
                                                            std::chrono::system_clock::time_point now) {
  std::lock_guard lock(mutex_);
  auto& contexts = by_sandbox_[sandbox_id];
  if (auto it = contexts.find(context_id); it != contexts.end()) return it->second;
  if (context_id != "default" || !create_default) {
    if (contexts.empty()) by_sandbox_.erase(sandbox_id);
    return nullptr;
  }
  auto e = std::make_shared<Entry>();
  e->id = "default";
  e->sandbox_id = sandbox_id;
  e->created_at = now;
  contexts.emplace(e->id, e);
  return e;
}

std::shared_ptr<PythonContexts::Entry> PythonContexts::add(const std::string& sandbox_id, ContextSpec spec,
                                                           std::size_t limit,
                                                           std::chrono::system_clock::time_point now) {
  std::lock_guard lock(mutex_);
  auto& contexts = by_sandbox_[sandbox_id];
  // "default" counts whether it exists yet or not: it must always fit.
  if (contexts.size() + (contexts.count("default") ? 0 : 1) >= limit) return nullptr;
  auto e = std::make_shared<Entry>();
  e->id = new_id("ctx");
  e->sandbox_id = sandbox_id;
  e->spec = std::move(spec);
  e->created_at = now;
  contexts.emplace(e->id, e);
  return e;
}

ContextView PythonContexts::view(const Entry& e) {
  ContextView v;
  v.id = e.id;
  v.sandbox_id = e.sandbox_id;
  v.cwd = e.spec.cwd;
  v.env = e.spec.env;
  v.created_at = e.created_at;
  v.last_used_at = e.last_used_at;
  v.execution_count = e.execution_count;
  v.running = e.kernel && !e.kernel->dead();
  v.busy = e.busy;
  if (e.kernel) v.python_version = e.kernel->python_version();
  return v;
}

std::vector<ContextView> PythonContexts::list(const std::string& sandbox_id) {
  std::lock_guard lock(mutex_);
  std::vector<ContextView> out;
  if (auto it = by_sandbox_.find(sandbox_id); it != by_sandbox_.end()) {
    for (const auto& [id, e] : it->second)
      out.push_back(view(*e));
  }
  return out;
}

std::map<std::string, std::set<std::string>> PythonContexts::kernel_sessions() {
  std::lock_guard lock(mutex_);
  std::map<std::string, std::set<std::string>> out;
  for (const auto& [sandbox, contexts] : by_sandbox_) {
    auto& sessions = out[sandbox];  // a sandbox with contexts but no kernel is listed too (it may be gone)
    for (const auto& [id, e] : contexts)
      if (e->kernel) sessions.insert(e->session_id);
  }
  return out;
}

bool PythonContexts::remove(const std::string& sandbox_id, const std::string& context_id) {
  std::shared_ptr<PythonKernel> kernel;
  {
    std::lock_guard lock(mutex_);
    auto it = by_sandbox_.find(sandbox_id);
    if (it == by_sandbox_.end()) return false;
    auto c = it->second.find(context_id);
    if (c == it->second.end()) return false;
    c->second->deleted = true;
    kernel = std::move(c->second->kernel);
    it->second.erase(c);
    if (it->second.empty()) by_sandbox_.erase(it);
  }
  if (kernel) kernel->kill();  // a cell running on it ends as its kernel lost; destroyed with the last holder
  return true;
}

void PythonContexts::drop_sandbox(const std::string& sandbox_id) {
  std::vector<std::shared_ptr<PythonKernel>> kernels;
  {
    std::lock_guard lock(mutex_);
    auto it = by_sandbox_.find(sandbox_id);
    if (it == by_sandbox_.end()) return;
    for (auto& [id, e] : it->second) {
      e->deleted = true;
      if (e->kernel) kernels.push_back(std::move(e->kernel));
    }
    by_sandbox_.erase(it);
  }
  for (auto& k : kernels)
    k->kill();
}

void PythonContexts::drop_session(const std::string& sandbox_id, const std::string& session_id,
                                  const std::string& reason) {
  std::vector<std::shared_ptr<PythonKernel>> kernels;
  {
    std::lock_guard lock(mutex_);
    auto it = by_sandbox_.find(sandbox_id);
    if (it == by_sandbox_.end()) return;
    for (auto& [id, e] : it->second) {
      if (!e->kernel || e->session_id != session_id) continue;
      kernels.push_back(std::move(e->kernel));
      if (e->restart_reason.empty()) e->restart_reason = reason;
      e->execution_count = 0;
    }
  }
  for (auto& k : kernels)
    k->kill();
}

}  // namespace berth::core
