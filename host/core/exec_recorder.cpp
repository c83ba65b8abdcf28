#include "core/exec_recorder.hpp"

#include <algorithm>
#include <utility>
#include <vector>

#include "core/log.hpp"

namespace berth::core {

using namespace std::chrono_literals;

ExecRecorder::Slot::~Slot() {
  if (owner_ != nullptr) owner_->release_slot();
}

ExecRecorder::ExecRecorder(store::Store& store, Options options)
    : store_(store), options_(options), writer_([this] { loop(); }) {}

ExecRecorder::~ExecRecorder() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  work_.notify_all();
  progress_.notify_all();
  writer_.join();
}

ExecRecorder::Slot ExecRecorder::reserve() {
  std::unique_lock lock(mutex_);
  if (!progress_.wait_for(lock, options_.reserve_wait, [&] { return occupied_ < options_.capacity; })) {
    throw store::StoreUnavailable("the execution record queue is full (" + std::to_string(occupied_) +
                                  " records wait for the database" +
                                  (last_error_.empty() ? std::string() : "; last error: " + last_error_) + ")");
  }
  ++occupied_;
  stats_.max_pending = std::max(stats_.max_pending, occupied_);
  return Slot(this);
}

void ExecRecorder::release_slot() {
  {
    std::lock_guard lock(mutex_);
    --occupied_;
  }
  progress_.notify_all();
}

// The writer waits for the first item, then lingers for a batch until it is full (loop()). Only those two events
// can end its waits, so only they notify: a notify for every item woke it during the linger just to sleep again
// (three wake-ups per exec, each a context switch on the request path's cores).
void ExecRecorder::record(Slot slot, store::ExecutionRow row) {
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    wake = (records_.empty() && touches_.empty()) || records_.size() + 1 >= options_.batch_max;
    records_.push_back({++enqueued_seq_, std::move(row)});
    slot.owner_ = nullptr;  // the slot now holds the queued record; the writer frees it
  }
  if (wake) work_.notify_one();
}

void ExecRecorder::touch(const std::string& sandbox_id, store::TimePoint idle_expires_at) {
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    wake = records_.empty() && touches_.empty();
    touches_[sandbox_id] = {++enqueued_seq_, idle_expires_at};
  }
  if (wake) work_.notify_one();
}

std::optional<store::TimePoint> ExecRecorder::pending_touch(const std::string& sandbox_id) const {
  std::lock_guard lock(mutex_);
  if (auto it = touches_.find(sandbox_id); it != touches_.end()) return it->second.at;  // the newest
  if (auto it = writing_touches_.find(sandbox_id); it != writing_touches_.end()) return it->second.at;
  return std::nullopt;
}

std::map<std::string, store::TimePoint> ExecRecorder::pending_touches() const {
  std::lock_guard lock(mutex_);
  std::map<std::string, store::TimePoint> out;
  for (const auto& [id, t] : writing_touches_)
    out[id] = t.at;
  for (const auto& [id, t] : touches_)
    out[id] = t.at;  // the newer one
  return out;
}

void ExecRecorder::flush(std::chrono::milliseconds wait) {
  std::unique_lock lock(mutex_);
  const std::uint64_t target = enqueued_seq_;
  if (written_seq_ >= target) return;
  flush_wanted_ = std::max(flush_wanted_, target);
  work_.notify_one();
  if (!progress_.wait_for(lock, wait, [&] { return written_seq_ >= target; })) {
    throw store::StoreUnavailable("execution records are not yet written to the database" +
                                  (last_error_.empty() ? std::string() : " (last error: " + last_error_ + ")"));
  }
}

bool ExecRecorder::writing() const {
  std::lock_guard lock(mutex_);
  return last_error_.empty();
}

ExecRecorder::Stats ExecRecorder::stats() const {
  std::lock_guard lock(mutex_);
  Stats s = stats_;
  s.pending = occupied_;
  return s;
}

void ExecRecorder::loop() {
  std::unique_lock lock(mutex_);
  auto backoff = std::chrono::milliseconds(100);
  std::optional<std::chrono::steady_clock::time_point> drain_deadline;
  for (;;) {
    work_.wait(lock, [&] { return stopping_ || !records_.empty() || !touches_.empty(); });
    if (records_.empty() && touches_.empty()) break;  // stopping, and everything is written
    if (stopping_ && !drain_deadline) drain_deadline = std::chrono::steady_clock::now() + options_.drain_wait;
    if (!stopping_ && flush_wanted_ <= written_seq_ && records_.size() < options_.batch_max) {
      // Gather a batch: execs finishing within the linger share one transaction.
      work_.wait_for(lock, options_.linger, [&] {
        return stopping_ || flush_wanted_ > written_seq_ || records_.size() >= options_.batch_max;
      });
    }
    const std::size_t n = std::min(records_.size(), options_.batch_max);
    std::vector<std::uint64_t> seqs;
    std::vector<store::ExecutionRow> rows;
    seqs.reserve(n);
    rows.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      seqs.push_back(records_.front().seq);
      rows.push_back(std::move(records_.front().row));
      records_.pop_front();
    }
    std::map<std::string, PendingTouch> taken_touches;
    taken_touches.swap(touches_);
    writing_touches_ = taken_touches;  // still visible to pending_touch() until the write's outcome is known
    // Every item up to here is in this batch, except the records left queued (all newer than the ones taken).
    const std::uint64_t done_upto = records_.empty() ? enqueued_seq_ : records_.front().seq - 1;
    std::vector<store::SandboxTouch> touches;
    touches.reserve(taken_touches.size());
    for (const auto& [id, t] : taken_touches)
      touches.push_back({id, t.at});
    lock.unlock();

    std::string error;
    bool unavailable = false;
    try {
      store_.write_batch(rows, touches);
    } catch (const store::StoreUnavailable& e) {
      error = e.what();
      unavailable = true;
    } catch (const std::exception& e) {
      error = e.what();
    }
    // What is left to write: all of the batch after an unavailable database, nothing after a success.
    std::vector<std::size_t> kept_rows;
    std::map<std::string, PendingTouch> kept_touches;
    std::size_t dropped = 0;
    if (unavailable) {
      for (std::size_t i = 0; i < n; ++i)
        kept_rows.push_back(i);
      kept_touches = taken_touches;
    } else if (!error.empty()) {
      // The database refused the batch itself (a constraint, a privilege, a full disk): one item by one, so that a
      // bad row costs only itself and cannot hold every record behind it forever. An item refused again is dropped
      // and logged; one that meets an unavailable database waits in the queue with the rest.
      bool outage = false;  // once one row meets an outage, it and every row after it wait, in order (a later row of
                            // the same execution must never be written before an earlier one: rows replace by id)
      for (std::size_t i = 0; i < n; ++i) {
        if (outage) {
          kept_rows.push_back(i);
          continue;
        }
        try {
          store_.write_batch({rows[i]}, {});
        } catch (const store::StoreUnavailable&) {
          outage = true;
          kept_rows.push_back(i);
        } catch (const std::exception& e) {
          ++dropped;
          log::error("exec_recorder.dropped",
                     {{"execution", rows[i].id}, {"sandbox", rows[i].sandbox_id}, {"error", e.what()}});
        }
      }
      for (const auto& [id, t] : taken_touches) {
        try {
          store_.write_batch({}, {store::SandboxTouch{id, t.at}});
        } catch (const store::StoreUnavailable&) {
          kept_touches.emplace(id, t);
        } catch (const std::exception& e) {
          log::error("exec_recorder.dropped", {{"touch", id}, {"error", e.what()}});
        }
      }
    }

    lock.lock();
    writing_touches_.clear();  // written, dropped, or put back into touches_ below
    stats_.dropped += dropped;
    if (kept_rows.empty() && kept_touches.empty()) {
      written_seq_ = std::max(written_seq_, done_upto);
      occupied_ -= n;
      ++stats_.batches;
      stats_.records += n - dropped;
      stats_.touches += touches.size();
      last_error_.clear();
      backoff = std::chrono::milliseconds(100);
      progress_.notify_all();
      continue;
    }
    // Put back what is left as it was: its records in front (older first), its touches unless a newer one came.
    occupied_ -= n - kept_rows.size();
    for (std::size_t k = kept_rows.size(); k-- > 0;)
      records_.push_front({seqs[kept_rows[k]], std::move(rows[kept_rows[k]])});
    for (auto& [id, t] : kept_touches)
      touches_.try_emplace(id, t);
    ++stats_.failures;
    last_error_ = error;
    log::warn("exec_recorder.write_failed", {{"records", std::to_string(records_.size())},
                                             {"touches", std::to_string(touches_.size())},
                                             {"retry_ms", std::to_string(backoff.count())},
                                             {"error", error}});
    progress_.notify_all();  // a flush() waiting for this batch may give up early only by its own deadline
    if (drain_deadline && std::chrono::steady_clock::now() >= *drain_deadline) {
      log::error("exec_recorder.lost", {{"records", std::to_string(records_.size())},
                                        {"touches", std::to_string(touches_.size())},
                                        {"error", error}});
      occupied_ -= records_.size();
      records_.clear();
      touches_.clear();
      break;
    }
    // Only a stop cuts the backoff short: new records must not turn an outage into a retry per request.
    const bool was_stopping = stopping_;
    work_.wait_for(lock, backoff, [&] { return stopping_ != was_stopping; });
    backoff = std::min<std::chrono::milliseconds>(backoff * 2, std::chrono::milliseconds(2000));
  }
}

}  // namespace berth::core
