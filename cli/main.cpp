// berth: the command line for berthd (docs/cli.md). main() only wires CLI11 to the command functions and maps
// exceptions to exit codes; commands.cpp does the work.
#include <Poco/Exception.h>
#include <CLI/CLI.hpp>

#include <iostream>

#include "commands.hpp"
#include "settings.hpp"

namespace {

using namespace berth::cli;

/** CLI11 checks for a duration flag, so `--ttl 1x` is a usage error before anything is sent. */
const CLI::Validator kDuration(
    [](std::string& text) {
      try {
        parse_duration(text);
        return std::string();
      } catch (const UsageError& e) {
        return std::string(e.what());
      }
    },
    "DURATION");

}  // namespace

/** Parses the command line and runs one command; returns the exit code (docs/cli.md). */
static int run_cli(int argc, char** argv) {
  CLI::App app{"berth: the command line for a berthd server (docs/cli.md)", "berth"};
  app.require_subcommand(1);
  app.fallthrough();  // global flags work after the command too: `berth ls --json`
  app.set_version_flag("-V,--version", std::string("berth ") + BERTH_VERSION);

  std::optional<std::string> url, api_key;
  bool json = false;
  app.add_option("--url", url, "berthd URL (else $BERTH_URL, the config file, http://127.0.0.1:8080)");
  app.add_option("--api-key", api_key, "API key sent as a Bearer token (else $BERTH_API_KEY, the config file)");
  app.add_flag("--json", json, "print the server's JSON instead of tables");

  std::function<int(Context&)> run;

  CreateOptions create;
  auto* c = app.add_subcommand("create", "create a sandbox (or get the live one for --key); prints its id");
  c->add_option("--profile", create.profile, "profile name (GET /v1/profiles; default: the server's)");
  c->add_option("--ttl", create.ttl, "time to live, e.g. 1h, 30m, 2d (default: the profile's)")->check(kDuration);
  c->add_option("--key", create.key, "get-or-create key: returns the live sandbox with this key if there is one");
  c->add_option("--workspace", create.workspace, "mount this external workspace (ws-...) instead of a new one");
  c->add_option("--label", create.labels, "NAME=VALUE label (repeatable)")->take_all();
  c->add_option("--env", create.env, "NAME=VALUE environment of every exec (repeatable)")->take_all();
  c->callback([&] { run = [&](Context& ctx) { return cmd_create(ctx, create); }; });

  ListOptions list;
  auto* ls = app.add_subcommand("ls", "list sandboxes (every page unless --limit)");
  ls->alias("list");
  ls->add_option("--status", list.status, "idle, starting, ready, failed or expired");
  ls->add_option("--label", list.label, "NAME=VALUE: only sandboxes with this label");
  ls->add_option("--limit", list.limit, "one page of at most this many (1-500)");
  ls->callback([&] { run = [&](Context& ctx) { return cmd_list(ctx, list); }; });

  std::string one;
  auto* get = app.add_subcommand("get", "show one sandbox");
  get->add_option("sandbox", one, "sandbox id")->required();
  get->callback([&] { run = [&](Context& ctx) { return cmd_get(ctx, one); }; });

  ExecOptions exec;
  auto* ex = app.add_subcommand("exec", "run a command (argv, quoted for /bin/sh -c); exits with its exit code");
  ex->add_option("sandbox", exec.sandbox, "sandbox id")->required();
  ex->add_option("command", exec.command, "the command and its arguments, after --")->required();
  ex->add_option("--timeout", exec.timeout, "kill it after this long (1s-300s; default 30s)")->check(kDuration);
  ex->add_option("--cwd", exec.cwd, "working directory relative to /workspace");
  ex->callback([&] { run = [&](Context& ctx) { return cmd_exec(ctx, exec); }; });

  PythonOptions py;
  auto* p = app.add_subcommand("python", "run Python code (-c CODE, a FILE, or - for stdin); exits with its code");
  p->add_option("sandbox", py.sandbox, "sandbox id")->required();
  p->add_option("-c,--code", py.code, "the code");
  p->add_option("file", py.file, "a file with the code, or - for stdin");
  p->add_option("--timeout", py.timeout, "kill it after this long (1s-300s; default 30s)")->check(kDuration);
  p->callback([&] { run = [&](Context& ctx) { return cmd_python(ctx, py); }; });

  TerminalOptions term;
  auto* tm = app.add_subcommand("terminal", "an interactive shell in the sandbox; exits with the shell's exit code");
  tm->add_option("sandbox", term.sandbox, "sandbox id")->required();
  tm->add_option("--rows", term.rows, "terminal rows (default: this window's, else 24)")->check(CLI::Range(1, 1000));
  tm->add_option("--cols", term.cols, "terminal columns (default: this window's, else 80)")->check(CLI::Range(1, 1000));
  tm->callback([&] { run = [&](Context& ctx) { return cmd_terminal(ctx, term); }; });

  CopyOptions copy;
  auto* cp = app.add_subcommand("cp", "copy a file: LOCAL SANDBOX:PATH or SANDBOX:PATH LOCAL (LOCAL - = stdout)");
  cp->add_option("from", copy.from, "source")->required();
  cp->add_option("to", copy.to, "destination")->required();
  cp->callback([&] { run = [&](Context& ctx) { return cmd_copy(ctx, copy); }; });

  std::vector<std::string> many;
  auto* rm = app.add_subcommand("rm", "delete sandboxes (with their managed workspaces)");
  rm->add_option("sandbox", many, "sandbox ids")->required();
  rm->callback([&] { run = [&](Context& ctx) { return cmd_remove(ctx, many); }; });

  auto* stop = app.add_subcommand("stop", "stop a sandbox's session (files stay)");
  stop->add_option("sandbox", one, "sandbox id")->required();
  stop->callback([&] { run = [&](Context& ctx) { return cmd_stop(ctx, one); }; });

  auto* start = app.add_subcommand("start", "start a sandbox's session and wait until it is ready");
  start->add_option("sandbox", one, "sandbox id")->required();
  start->callback([&] { run = [&](Context& ctx) { return cmd_start(ctx, one); }; });

  auto* keep = app.add_subcommand("keepalive", "reset a sandbox's idle timer");
  keep->add_option("sandbox", one, "sandbox id")->required();
  keep->callback([&] { run = [&](Context& ctx) { return cmd_keepalive(ctx, one); }; });

  std::string by;
  auto* extend = app.add_subcommand("extend", "move a sandbox's expiry later");
  extend->add_option("sandbox", one, "sandbox id")->required();
  extend->add_option("--by", by, "how much, e.g. 1h")->required()->check(kDuration);
  extend->callback([&] { run = [&](Context& ctx) { return cmd_extend(ctx, one, by); }; });

  HistoryOptions history;
  auto* h = app.add_subcommand("history", "list a sandbox's executions, newest first");
  h->add_option("sandbox", history.sandbox, "sandbox id")->required();
  h->add_option("--type", history.type, "python or shell");
  h->add_option("--limit", history.limit, "entries (1-500, default 50)");
  h->add_option("--offset", history.offset, "entries to skip");
  h->callback([&] { run = [&](Context& ctx) { return cmd_history(ctx, history); }; });

  app.add_subcommand("profiles", "list the server's profiles")->callback([&] {
    run = [&](Context& ctx) { return cmd_profiles(ctx); };
  });
  app.add_subcommand("gc", "run one cleanup pass now (admin key)")->callback([&] {
    run = [&](Context& ctx) { return cmd_gc(ctx); };
  });
  app.add_subcommand("version", "print the CLI's and the server's version")->callback([&] {
    run = [&](Context& ctx) { return cmd_version(ctx); };
  });

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);  // --help, -V
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitUsage;
  }

  Connection connection;
  try {
    connection = resolve_connection(url, api_key);
    ApiClient client(connection.url, connection.api_key);
    Context ctx{client, json};
    return run(ctx);
  } catch (const UsageError& e) {
    std::cerr << "berth: " << e.what() << '\n';
    return kExitUsage;
  } catch (const ServerError& e) {
    report(e, json);
    return kExitServer;
  } catch (const ConnectionError& e) {
    std::cerr << "berth: cannot reach berthd at " << connection.url << ": " << e.what() << '\n';
    return kExitConnection;
  } catch (const Poco::Exception& e) {  // an answer without the fields docs/api.md promises
    std::cerr << "berth: unexpected answer from " << connection.url << ": " << e.displayText() << '\n';
    return kExitConnection;
  } catch (const std::exception& e) {  // local trouble, e.g. a file system error while saving a download
    std::cerr << "berth: " << e.what() << '\n';
    return kExitUsage;
  }
}

int main(int argc, char** argv) {
  try {
    return run_cli(argc, argv);
  } catch (const std::exception& e) {  // setting up the parser failed: nothing was sent
    std::cerr << "berth: " << e.what() << '\n';
    return kExitUsage;
  }
}
