// The store layer: the database implementations of the core's persistence port (core/store.hpp): SQLite, and MySQL /
// MariaDB for several berthd on one database. Only the daemon (app/), the config checks and the tests open a store;
// the core sees the interface only.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "core/store.hpp"

namespace berth::store {

/**
 * Opens (creating if needed) a SQLite database: WAL, foreign keys on, busy timeout, numbered migrations applied
 * at open. Throws StoreError.
 */
std::unique_ptr<Store> open_sqlite_store(const std::string& path);

/** Where and how a MySqlStore connects. The password is a secret: never logged, never in an error message. */
struct MySqlOptions {
  std::string host = "127.0.0.1";  // "localhost" means the client library's default unix socket
  unsigned port = 3306;
  std::string user;
  std::string password;
  std::string database;
  int pool_size = 16;                          // connections at most; requests beyond it wait for one
  std::chrono::seconds connect_timeout{5};     // one connection attempt (TCP connect + handshake)
  std::chrono::seconds statement_timeout{30};  // server-side cap of one statement (and of a lock wait)
  std::chrono::seconds pool_wait{30};          // how long a caller waits for a free connection
  /** "mysql://user@host:port/database": the URL without the password, for logs. */
  std::string redacted_url() const;
};

/**
 * Parses "mysql://user:password@host:port/database" (user and password percent-decoded; port defaults to 3306).
 * Throws StoreError naming what is wrong (the message never contains the password).
 */
MySqlOptions parse_mysql_url(const std::string& url);

/**
 * Opens a MySQL / MariaDB store: connects once to check the server, applies the numbered migrations (the same
 * versions as SQLite's, one schema_migrations table), keeps up to pool_size connections. Every table is InnoDB;
 * names are stored as bytes (VARBINARY / BLOB). Statements and transactions that fail with a deadlock (1213, also
 * a Galera certification failure) or a lock wait timeout (1205) are retried with bounded, jittered backoff and
 * counted in transaction_retries(). Where Galera is detected, every connection sets wsrep_sync_wait = 1 so reads
 * see other nodes' commits. A lost connection is replaced on the next call; the call that lost it throws
 * StoreUnavailable. Throws StoreUnavailable when the server cannot be reached, StoreError otherwise.
 */
std::unique_ptr<Store> open_mysql_store(const MySqlOptions& options);

}  // namespace berth::store
