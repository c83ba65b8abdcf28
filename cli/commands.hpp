// One function per `berth` command: each turns its options into API calls (docs/api.md) and prints the answer,
// as a human table or, with --json, the server's JSON. They throw UsageError, ServerError and ConnectionError;
// main() maps those to exit codes (docs/cli.md).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "api_client.hpp"

namespace berth::cli {

// Process exit codes (docs/cli.md). `exec` and `python` exit with the remote program's code instead.
/** Success. */
inline constexpr int kExitOk = 0;
/** Bad arguments, config file or local file; nothing was sent. */
inline constexpr int kExitUsage = 1;
/** berthd answered with an error. */
inline constexpr int kExitServer = 2;
/** No usable answer from berthd. */
inline constexpr int kExitConnection = 3;
/** exec/python: the server's timeout killed the program (as timeout(1)). */
inline constexpr int kExitTimedOut = 124;

/** What every command needs: the client and the output mode. Single-threaded. */
struct Context {
  ApiClient& client;
  bool json = false;
};

struct CreateOptions {
  std::optional<std::string> profile, ttl, key, workspace;
  std::vector<std::string> labels, env;  // NAME=VALUE each
};
struct ListOptions {
  std::optional<std::string> status, label;
  std::optional<int> limit;  // set: one page of at most this many; unset: every page
};
struct ExecOptions {
  std::string sandbox;
  std::vector<std::string> command;  // argv, quoted for /bin/sh -c
  std::optional<std::string> timeout, cwd;
};
struct PythonOptions {
  std::string sandbox;
  std::optional<std::string> code;  // -c
  std::optional<std::string> file;  // a path, or "-" for stdin
  std::optional<std::string> timeout;
};
struct CopyOptions {
  std::string from, to;  // one of them SANDBOX:PATH
};
struct HistoryOptions {
  std::string sandbox;
  std::optional<std::string> type;
  std::optional<int> limit, offset;
};

struct TerminalOptions {
  std::string sandbox;
  std::optional<int> rows, cols;  // unset: the local window's size (on a terminal), else the server's 24 x 80
};

int cmd_create(Context& ctx, const CreateOptions& o);
int cmd_list(Context& ctx, const ListOptions& o);
int cmd_get(Context& ctx, const std::string& sandbox);
int cmd_exec(Context& ctx, const ExecOptions& o);
int cmd_python(Context& ctx, const PythonOptions& o);
int cmd_copy(Context& ctx, const CopyOptions& o);
/** Deletes each sandbox in turn; a failure is reported and the others still deleted. Exit: the last failure's. */
int cmd_remove(Context& ctx, const std::vector<std::string>& sandboxes);
int cmd_stop(Context& ctx, const std::string& sandbox);
int cmd_start(Context& ctx, const std::string& sandbox);
int cmd_keepalive(Context& ctx, const std::string& sandbox);
int cmd_extend(Context& ctx, const std::string& sandbox, const std::string& by);
int cmd_history(Context& ctx, const HistoryOptions& o);
/**
 * An interactive shell in the sandbox (GET .../terminal): stdin typed into it (raw mode on a terminal, whose
 * window size it follows; a pipe's end sends ^D), its output to stdout. Returns the shell's exit code, or
 * kExitConnection when the connection ended without it. Defined in terminal.cpp.
 */
int cmd_terminal(Context& ctx, const TerminalOptions& o);
int cmd_profiles(Context& ctx);
int cmd_gc(Context& ctx);
/** Prints the CLI's version, then the server's (GET /meta); exit 3 when the server cannot be reached. */
int cmd_version(Context& ctx);

/** Prints a ServerError to stderr: "berth: <code>: <message>" plus details and request id (--json: the body). */
void report(const ServerError& e, bool json);

/** POSIX sh quoting of an argv: words made only of safe characters stay bare, others go in single quotes. */
std::string shell_join(const std::vector<std::string>& argv);

}  // namespace berth::cli
