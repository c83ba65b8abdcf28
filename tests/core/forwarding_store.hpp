// A store::Store for tests that passes every call on to a real store; a test derives from it and overrides only the
// calls it stalls, fails or races (see exec_process_test.cpp, cleanup_test.cpp).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/store.hpp"

namespace berth::test {

/**
 * Forwards each store::Store call to `inner`, which must outlive it (write_batch too, so the real store's one
 * transaction is kept). Thread-safety and errors are `inner`'s: nothing is added or caught here.
 */
class ForwardingStore : public store::Store {
 public:
  explicit ForwardingStore(store::Store& inner) : inner_(inner) {}

  void insert_workspace(const store::WorkspaceRow& r) override { inner_.insert_workspace(r); }
  std::optional<store::WorkspaceRow> get_workspace(const std::string& id) override { return inner_.get_workspace(id); }
  bool mark_workspace_deleted(const std::string& id, store::TimePoint at) override {
    return inner_.mark_workspace_deleted(id, at);
  }
  int count_live_sandboxes_using(const std::string& id) override { return inner_.count_live_sandboxes_using(id); }
  std::vector<store::WorkspaceRow> list_abandoned_managed_workspaces() override {
    return inner_.list_abandoned_managed_workspaces();
  }
  void insert_sandbox(const store::SandboxRow& r) override { inner_.insert_sandbox(r); }
  std::optional<store::SandboxRow> get_sandbox(const std::string& id) override { return inner_.get_sandbox(id); }
  std::optional<store::SandboxRow> find_live_by_key(const std::string& o, const std::string& k) override {
    return inner_.find_live_by_key(o, k);
  }
  std::vector<store::SandboxRow> list_sandboxes(const store::SandboxFilter& f) override {
    return inner_.list_sandboxes(f);
  }
  std::vector<store::SandboxRow> list_live_sandboxes() override { return inner_.list_live_sandboxes(); }
  bool update_sandbox_cas(const store::SandboxRow& r, std::int64_t v) override {
    return inner_.update_sandbox_cas(r, v);
  }
  bool touch_sandbox(const std::string& id, store::TimePoint t) override { return inner_.touch_sandbox(id, t); }
  void insert_session(const store::SessionRow& r) override { inner_.insert_session(r); }
  std::optional<store::SessionRow> get_session(const std::string& id) override { return inner_.get_session(id); }
  void update_session(const store::SessionRow& r) override { inner_.update_session(r); }
  void delete_session(const std::string& id) override { inner_.delete_session(id); }
  std::vector<store::SessionRow> list_active_sessions() override { return inner_.list_active_sessions(); }
  void insert_execution(const store::ExecutionRow& r) override { inner_.insert_execution(r); }
  std::pair<std::vector<store::ExecutionRow>, int> list_executions(const std::string& s, const std::string& k, int l,
                                                                   int o,
                                                                   const store::ExecutionPageLimits& b) override {
    return inner_.list_executions(s, k, l, o, b);
  }
  std::optional<store::ExecutionRow> get_execution(const std::string& id, std::int64_t cap) override {
    return inner_.get_execution(id, cap);
  }
  void write_batch(const std::vector<store::ExecutionRow>& e, const std::vector<store::SandboxTouch>& t) override {
    inner_.write_batch(e, t);
  }
  int purge_executions(store::TimePoint c, std::size_t keep) override { return inner_.purge_executions(c, keep); }
  std::optional<store::IdempotencyRow> claim_idempotency(const store::IdempotencyRow& r) override {
    return inner_.claim_idempotency(r);
  }
  void complete_idempotency(const std::string& o, const std::string& k, int s, const std::string& b) override {
    inner_.complete_idempotency(o, k, s, b);
  }
  void release_idempotency(const std::string& o, const std::string& k) override { inner_.release_idempotency(o, k); }
  int purge_idempotency(store::TimePoint c) override { return inner_.purge_idempotency(c); }
  void insert_profile(const store::ProfileRow& r) override { inner_.insert_profile(r); }
  std::vector<store::ProfileRow> list_profiles() override { return inner_.list_profiles(); }
  bool update_profile(const store::ProfileRow& r) override { return inner_.update_profile(r); }
  bool delete_profile(const std::string& n) override { return inner_.delete_profile(n); }
  int count_live_sandboxes_with_profile(const std::string& n) override {
    return inner_.count_live_sandboxes_with_profile(n);
  }
  std::uint64_t transaction_retries() const override { return inner_.transaction_retries(); }

 protected:
  store::Store& inner_;
};

}  // namespace berth::test
