// MySqlStore on a three-node MariaDB Galera cluster (scripts/galera): stores pointed at DIFFERENT nodes race the
// session compare-and-swap, the live-key uniqueness and the idempotency claim. Galera does not lock across nodes;
// what keeps one winner is the CAS (UPDATE ... WHERE version = ?) and the unique indexes, with a racer on another
// node failing certification (1213) and retrying. Each case works on a fresh database berth_galera_<pid>_<n>
// created through node 1, as $BERTH_TEST_GALERA_URL's user (default mysql://berth:berth@127.0.0.1:3311/...), with
// one store per port of $BERTH_TEST_GALERA_PORTS (default 3311,3312,3313). Run through scripts/require-service
// galera (tests/CMakeLists.txt); the number of retried conflicts is printed (and logged as `store.retry`).
#include <catch2/catch.hpp>

#include <Poco/Data/MySQL/Connector.h>
#include <Poco/Data/Session.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "store/store.hpp"

using namespace berth::store;
using namespace std::chrono_literals;
using Poco::Data::Keywords::now;

namespace {

constexpr int kThreadsPerNode = 4;
constexpr int kRounds = 20;

MySqlOptions admin_options() {
  const char* url = std::getenv("BERTH_TEST_GALERA_URL");
  return parse_mysql_url(url ? url : "mysql://berth:berth@127.0.0.1:3311/berth_galera");
}

std::vector<unsigned> node_ports() {
  const char* env = std::getenv("BERTH_TEST_GALERA_PORTS");
  std::istringstream in(env ? env : "3311,3312,3313");
  std::vector<unsigned> ports;
  for (std::string part; std::getline(in, part, ',');)
    ports.push_back(static_cast<unsigned>(std::stoul(part)));
  return ports;
}

Poco::Data::Session admin_session(const MySqlOptions& o) {
  Poco::Data::MySQL::Connector::registerConnector();
  return {Poco::Data::MySQL::Connector::KEY, "host=" + o.host + ";port=" + std::to_string(o.port) + ";user=" + o.user +
                                                 ";password=" + o.password + ";db=" + o.database};
}

/** A fresh database on the cluster (created through the first node, dropped at the end) and one store per node. */
class ClusterDb {
 public:
  ClusterDb() {
    static int counter = 0;
    options_ = admin_options();
    name_ = "berth_galera_" + std::to_string(::getpid()) + "_" + std::to_string(++counter);
    auto admin = admin_session(options_);
    admin << "DROP DATABASE IF EXISTS " + name_, now;
    admin << "CREATE DATABASE " + name_ + " CHARACTER SET utf8mb4", now;
    for (unsigned port : node_ports()) {
      MySqlOptions o = options_;
      o.port = port;
      o.database = name_;
      o.pool_size = kThreadsPerNode;
      stores_.push_back(open_mysql_store(o));
    }
  }
  ClusterDb(const ClusterDb&) = delete;
  ClusterDb& operator=(const ClusterDb&) = delete;
  ~ClusterDb() {
    stores_.clear();
    try {
      auto admin = admin_session(options_);
      admin << "DROP DATABASE IF EXISTS " + name_, now;
    } catch (...) {  // NOLINT(bugprone-empty-catch): a leftover test database is no reason to fail a test
    }
  }
  /** One store per node, in the order of BERTH_TEST_GALERA_PORTS. */
  std::vector<std::unique_ptr<Store>>& stores() { return stores_; }
  std::uint64_t retries() const {
    std::uint64_t total = 0;
    for (const auto& s : stores_)
      total += s->transaction_retries();
    return total;
  }

 private:
  MySqlOptions options_;
  std::string name_;
  std::vector<std::unique_ptr<Store>> stores_;
};

const TimePoint t0 = TimePoint{std::chrono::seconds{1'800'000'000}};

WorkspaceRow workspace(const std::string& id) {
  WorkspaceRow w;
  w.id = id;
  w.owner = "alice";
  w.volume = "berth-" + id;
  w.created_at = t0;
  return w;
}

SandboxRow sandbox(const std::string& id, std::optional<std::string> key = std::nullopt) {
  SandboxRow s;
  s.id = id;
  s.owner = "alice";
  s.profile = "default";
  s.workspace_id = "ws-1";
  s.key = std::move(key);
  s.created_at = t0;
  return s;
}

/** Runs fn(store, thread index) on kThreadsPerNode threads per node, released together. */
template <typename Fn>
void race(ClusterDb& db, Fn fn) {
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  const auto nodes = db.stores().size();
  for (std::size_t t = 0; t < nodes * kThreadsPerNode; ++t) {
    threads.emplace_back([&, t] {
      while (!go.load())
        std::this_thread::yield();
      fn(*db.stores()[t % nodes], static_cast<int>(t));
    });
  }
  go = true;
  for (auto& th : threads)
    th.join();
}

void report(const char* what, std::uint64_t retries) {
  std::cout << "galera: " << what << ": " << retries << " transactions retried (transaction_retries)" << std::endl;
}

}  // namespace

TEST_CASE("stores on three nodes race the session CAS: exactly one winner per round, seen by every node") {
  ClusterDb db;
  REQUIRE(db.stores().size() >= 2);
  auto& first = *db.stores()[0];
  first.insert_workspace(workspace("ws-1"));
  first.insert_sandbox(sandbox("sandbox-1"));
  for (int round = 0; round < kRounds; ++round) {
    // Every racer read the same version, on its own node (wsrep_sync_wait: the previous round's commit is seen).
    const auto seen = *first.get_sandbox("sandbox-1");
    std::atomic<int> wins{0};
    std::atomic<int> errors{0};
    std::string winner;
    std::mutex m;
    std::string failure;
    race(db, [&](Store& store, int t) {
      auto mine = seen;
      mine.current_session_id = "sess-" + std::to_string(round) + "-" + std::to_string(t);
      try {
        if (store.update_sandbox_cas(mine, seen.version)) {
          ++wins;
          std::lock_guard lock(m);
          winner = *mine.current_session_id;
        }
      } catch (const std::exception& e) {
        ++errors;
        std::lock_guard lock(m);
        failure = e.what();
      }
    });
    INFO("round " << round << ": " << failure);
    CHECK(errors == 0);
    REQUIRE(wins == 1);
    for (auto& store : db.stores()) {
      const auto now_row = *store->get_sandbox("sandbox-1");
      CHECK(now_row.version == seen.version + 1);
      CHECK(now_row.current_session_id == winner);
    }
  }
  // Racers on different nodes do not block each other on a row lock as they would on one server: the losers'
  // commits fail certification (1213) and are retried. None at all would mean the stores never raced across nodes.
  CHECK(db.retries() > 0);
  report("session CAS", db.retries());
}

TEST_CASE("creates with one key on three nodes: one live sandbox per key, the others refused as duplicates") {
  ClusterDb db;
  auto& first = *db.stores()[0];
  first.insert_workspace(workspace("ws-1"));
  for (int round = 0; round < kRounds; ++round) {
    const std::string key = "key-" + std::to_string(round);
    std::atomic<int> inserted{0};
    std::atomic<int> duplicates{0};
    std::atomic<int> errors{0};
    std::mutex m;
    std::string winner;
    std::string failure;
    race(db, [&](Store& store, int t) {
      const std::string id = "sandbox-" + std::to_string(round) + "-" + std::to_string(t);
      try {
        store.insert_sandbox(sandbox(id, key));
        ++inserted;
        std::lock_guard lock(m);
        winner = id;
      } catch (const UniqueViolation&) {
        ++duplicates;
      } catch (const std::exception& e) {
        ++errors;
        std::lock_guard lock(m);
        failure = e.what();
      }
    });
    INFO("round " << round << ": " << failure);
    CHECK(errors == 0);
    REQUIRE(inserted == 1);
    CHECK(duplicates == static_cast<int>(db.stores().size()) * kThreadsPerNode - 1);
    for (auto& store : db.stores()) {
      const auto live = store->find_live_by_key("alice", key);
      REQUIRE(live);
      CHECK(live->id == winner);
    }
  }
  SandboxFilter all;
  all.owner = "alice";
  all.limit = 1000;
  CHECK(first.list_sandboxes(all).size() == static_cast<std::size_t>(kRounds));
  report("live key", db.retries());
}

TEST_CASE("idempotency claims of one key on three nodes: exactly one winner per key") {
  ClusterDb db;
  for (int round = 0; round < kRounds; ++round) {
    std::atomic<int> winners{0};
    std::atomic<int> errors{0};
    std::mutex m;
    std::string failure;
    race(db, [&](Store& store, int t) {
      IdempotencyRow row;
      row.owner = "alice";
      row.key = "idem-" + std::to_string(round);
      row.request_hash = "hash-" + std::to_string(t);
      row.created_at = t0;
      try {
        if (!store.claim_idempotency(row)) ++winners;
      } catch (const std::exception& e) {
        ++errors;
        std::lock_guard lock(m);
        failure = e.what();
      }
    });
    INFO("round " << round << ": " << failure);
    CHECK(errors == 0);
    CHECK(winners == 1);
  }
  report("idempotency", db.retries());
}
