#include "core/async_executions.hpp"

#include "core/log.hpp"

namespace berth::core {

std::string_view to_string(ExecutionStatus s) {
  switch (s) {
    case ExecutionStatus::running:
      return "running";
    case ExecutionStatus::succeeded:
      return "succeeded";
    case ExecutionStatus::failed:
      return "failed";
    case ExecutionStatus::timed_out:
      return "timed_out";
    case ExecutionStatus::cancelled:
      return "cancelled";
  }
  return "failed";
}

// ---- one execution
// ---------------------------------------------------------------------------------------------------

/** What a buffered chunk costs: its bytes and its bookkeeping (a flood of 1-byte chunks counts too). */
std::size_t cost(const BufferedChunk& c) {
  return sizeof(BufferedChunk) + c.data.size();
}

bool AsyncExecution::append(const BufferedChunk& chunk) {
  {
    std::lock_guard lock(mutex_);
    bytes_ += cost(chunk);
    chunks_.push_back(chunk);
    // Bounded: the oldest chunks go first; the newest one always stays (a replay starts at first_kept).
    while (bytes_ > cap_ && chunks_.size() > 1) {
      bytes_ -= cost(chunks_.front());
      dropped_upto_ = chunks_.front().seq + 1;
      chunks_.pop_front();
    }
  }
  changed_.notify_all();
  return !cancel_.load();
}

void AsyncExecution::finish(ExecutionStatus status, std::shared_ptr<const ExecOutcome> outcome, std::string error_code,
                            std::string reason, std::chrono::system_clock::time_point at) {
  {
    std::lock_guard lock(mutex_);
    view_.status = status;
    view_.outcome = std::move(outcome);
    view_.error_code = std::move(error_code);
    view_.reason = std::move(reason);
    view_.finished_at = at;
  }
  changed_.notify_all();
}

bool AsyncExecution::request_cancel() {
  std::lock_guard lock(mutex_);
  if (view_.status != ExecutionStatus::running) return false;
  cancel_ = true;
  return true;
}

ExecutionEvents AsyncExecution::events_after(std::optional<std::uint64_t> after, std::chrono::milliseconds wait) {
  std::unique_lock lock(mutex_);
  const auto has_new = [&] {
    return view_.status != ExecutionStatus::running || (!chunks_.empty() && (!after || chunks_.back().seq > *after));
  };
  changed_.wait_for(lock, wait, has_new);
  ExecutionEvents out;
  out.first_kept = chunks_.empty() ? dropped_upto_ : chunks_.front().seq;
  for (const auto& c : chunks_) {
    if (!after || c.seq > *after) out.chunks.push_back(c);
  }
  out.finished = view_.status != ExecutionStatus::running;
  return out;
}

ExecutionView AsyncExecution::wait_end(std::chrono::milliseconds wait) {
  std::unique_lock lock(mutex_);
  changed_.wait_for(lock, wait, [&] { return view_.status != ExecutionStatus::running; });
  return view_;
}

ExecutionView AsyncExecution::view() const {
  std::lock_guard lock(mutex_);
  return view_;
}

// ---- the registry
// ----------------------------------------------------------------------------------------------------

AsyncExecutions::~AsyncExecutions() {
  std::vector<Worker> workers;
  std::vector<std::string> running;
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, e] : by_id_) {
      if (e->request_cancel()) running.push_back(id);
    }
    workers.swap(workers_);
  }
  for (const auto& id : running)
    on_cancel_(id);
  for (auto& w : workers)
    if (w.thread.joinable()) w.thread.join();
}

std::shared_ptr<AsyncExecution> AsyncExecutions::add(ExecutionView view, std::size_t buffer_bytes,
                                                     const std::string& owner, Refusal* why) {
  std::lock_guard lock(mutex_);
  evict_locked(std::chrono::steady_clock::now());
  reap_threads_locked();
  const auto mine = running_by_owner_.find(owner);
  const auto why_not = running_ >= max_running_ ? Refusal::server_full
                       : max_per_owner_ > 0 && mine != running_by_owner_.end() && mine->second >= max_per_owner_
                           ? Refusal::owner_full
                           : Refusal::none;
  if (why) *why = why_not;
  if (why_not != Refusal::none) return nullptr;
  auto e = std::make_shared<AsyncExecution>(view, buffer_bytes, owner);
  by_id_[view.id] = e;
  ++running_;
  ++running_by_owner_[owner];
  return e;
}

void AsyncExecutions::ended_locked(const AsyncExecution& e) {
  --running_;
  if (auto it = running_by_owner_.find(e.owner()); it != running_by_owner_.end() && --it->second == 0) {
    running_by_owner_.erase(it);
  }
  finished_.emplace_back(std::chrono::steady_clock::now(), e.id());
}

void AsyncExecutions::abandon(const std::shared_ptr<AsyncExecution>& execution,
                              std::chrono::system_clock::time_point at) {
  execution->finish(ExecutionStatus::failed, nullptr, "internal", "the execution could not be started", at);
  std::lock_guard lock(mutex_);
  ended_locked(*execution);
}

std::size_t AsyncExecutions::cancel_all() {
  std::vector<std::string> ids;
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, e] : by_id_) {
      if (e->request_cancel()) ids.push_back(id);
    }
  }
  for (const auto& id : ids)
    on_cancel_(id);
  return ids.size();
}

void AsyncExecutions::start(const std::shared_ptr<AsyncExecution>& execution, std::function<void()> body) {
  auto done = std::make_shared<std::atomic<bool>>(false);
  {
    std::lock_guard lock(mutex_);
    workers_.reserve(workers_.size() + 1);  // the push_back below cannot throw once the thread runs
  }
  std::thread t;
  try {
    t = std::thread([this, execution, body = std::move(body), done] {
      try {
        body();
      } catch (const std::exception& e) {  // the body reports its own failures; this is the last guard
        log::error("exec.async_failed", {{"execution", execution->id()}, {"error", e.what()}});
      }
      {
        std::lock_guard lock(mutex_);
        ended_locked(*execution);
      }
      *done = true;
    });
  } catch (...) {  // no thread (EAGAIN under a pids limit): it never ran
    abandon(execution, std::chrono::system_clock::now());
    throw;
  }
  std::lock_guard lock(mutex_);
  workers_.push_back({std::move(t), done});
}

std::shared_ptr<AsyncExecution> AsyncExecutions::find(const std::string& id) {
  std::lock_guard lock(mutex_);
  evict_locked(std::chrono::steady_clock::now());
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : it->second;
}

bool AsyncExecutions::cancel(const std::string& id) {
  auto e = find(id);
  if (!e || !e->request_cancel()) return false;
  on_cancel_(id);
  return true;
}

std::size_t AsyncExecutions::running() const {
  std::lock_guard lock(mutex_);
  return running_;
}

void AsyncExecutions::evict_locked(std::chrono::steady_clock::time_point now) {
  while (!finished_.empty() && (finished_.front().first + retention_ <= now || finished_.size() > max_kept_)) {
    by_id_.erase(finished_.front().second);
    finished_.pop_front();
  }
}

void AsyncExecutions::reap_threads_locked() {
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (*it->done) {
      if (it->thread.joinable()) it->thread.join();  // it has returned (or is about to): no wait worth the name
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace berth::core
