#!/usr/bin/env python3
"""bench/compare_builds.py: two builds of Berth, interleaved in one run on one engine: a change against its baseline.

  bench/compare_builds.py --a BUILD_DIR --b BUILD_DIR [--engine docker|podman] [--runs 100] [--cold-runs 20]
                          [--gap-ms 20]

Each build dir holds its own bin/berthd and lib/berth/berth_driver_<engine>.so (and bin/berth-agent where it has
one); each runs as a berthd of its own, with its own sandboxes. A baseline build, e.g. the commit before a change:

  git worktree add /tmp/base <commit> && cmake -S /tmp/base -B /tmp/base/build -G Ninja \\
      -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build /tmp/base/build --target berthd berth-agent \\
      berth_driver_docker berth_driver_podman

Warm rows (one sandbox per build, A and B alternating which goes first each round, --gap-ms idle before each call,
the way a client that thinks between calls meets berthd):
  shell              POST shell/exec {"command": "echo hi"} on a keep-alive connection
  shell new conn     the same on a new connection
  cell               POST python/exec {"code": "1"}
  health             GET /health (the HTTP floor of the same connection)
Cold rows: POST /v1/sandboxes then the first python/exec print(1), timed together, A and B alternating, the sandbox
deleted after each (not timed). Prints p50 and p90 in ms per build. Python standard library only.
"""
import argparse
import os
import statistics
import sys
import time

sys.dont_write_bytecode = True
import benchlib  # noqa: E402  bench/benchlib.py

runall = benchlib.load_run_all()


def settings_for(build, name):
    # A build without the agent (before issue 9) has no agent_run_dir key: its driver refuses unknown keys.
    if not os.path.exists(os.path.join(build, "bin", "berth-agent")):
        return ""
    return f'agent_run_dir = "/run/berth/compare-{name.lower()}"'


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="the baseline build dir")
    ap.add_argument("--b", required=True, help="the build under test")
    ap.add_argument("--engine", default="docker", choices=["docker", "podman"])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--cold-runs", type=int, default=20)
    ap.add_argument("--gap-ms", type=float, default=20.0)
    args = ap.parse_args()
    builds = {"A": os.path.abspath(args.a), "B": os.path.abspath(args.b)}
    servers = {}
    try:
        for name, build in builds.items():
            b = runall.Berthd(build, args.engine, "berth/python:3.11", "[cleanup]\nenabled = false\n",
                              instance=f"berth-compare-{name.lower()}", driver_settings=settings_for(build, name))
            servers[name] = b  # cleaned up in `finally` even if it does not start
            b.start()
        sandboxes = {n: b.create() for n, b in servers.items()}
        conns = {n: runall.Conn(b.port) for n, b in servers.items()}

        def shell(n, conn):
            st, r = conn.request("POST", f"/v1/sandboxes/{sandboxes[n]}/shell/exec", {"command": "echo hi"})
            if st != 200 or r.get("output") != "hi\n":
                raise RuntimeError(f"shell/exec on {n}: {st} {r}")

        def cell(n, conn):
            st, r = conn.request("POST", f"/v1/sandboxes/{sandboxes[n]}/python/exec", {"code": "print(1)"})
            if st != 200 or r.get("output") != "1\n":
                raise RuntimeError(f"python/exec on {n}: {st} {r}")

        calls = {
            "shell": lambda n: shell(n, conns[n]),
            "shell new conn": lambda n: shell(n, runall.Conn(servers[n].port)),
            "cell": lambda n: cell(n, conns[n]),
            "health": lambda n: conns[n].request("GET", "/health"),
        }
        for n in servers:  # sessions up, kernels started
            calls["shell"](n)
            calls["cell"](n)
        res = {(k, n): [] for k in calls for n in servers}
        for i in range(args.runs + 3):
            order = list(servers) if i % 2 else list(reversed(list(servers)))
            for k, fn in calls.items():
                for n in order:
                    time.sleep(args.gap_ms / 1000)
                    t0 = time.perf_counter()
                    fn(n)
                    if i >= 3:
                        res[(k, n)].append((time.perf_counter() - t0) * 1000)
        for n, b in servers.items():
            conns[n].request("DELETE", f"/v1/sandboxes/{sandboxes[n]}")
        cold = {n: [] for n in servers}
        for i in range(args.cold_runs + 2):
            for n in (list(servers) if i % 2 else list(reversed(list(servers)))):
                conn = runall.Conn(servers[n].port)
                time.sleep(0.3)
                t0 = time.perf_counter()
                st, sb = conn.request("POST", "/v1/sandboxes", {})
                if st not in (200, 201):
                    raise RuntimeError(f"create on {n}: {st} {sb}")
                servers[n].created.append(sb["id"])  # deleted by cleanup() if this run fails before its DELETE
                st, r = conn.request("POST", f"/v1/sandboxes/{sb['id']}/python/exec", {"code": "print(1)"})
                ms = (time.perf_counter() - t0) * 1000
                if st != 200 or r.get("output") != "1\n":
                    raise RuntimeError(f"first python/exec on {n}: {st} {r}")
                if i >= 2:
                    cold[n].append(ms)
                conn.request("DELETE", f"/v1/sandboxes/{sb['id']}")
        print(f"compare builds, {args.engine}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"load {os.getloadavg()[0]:.2f}; A = {builds['A']}, B = {builds['B']}")
        print(f"| call ({args.runs} warm rounds, {args.gap_ms:g} ms idle before each; {args.cold_runs} cold) "
              "| A p50 | A p90 | B p50 | B p90 | B / A (p50) |\n|---|---:|---:|---:|---:|---:|")
        rows = [(k, res[(k, "A")], res[(k, "B")]) for k in calls]
        rows.append(("cold create -> first python/exec", cold["A"], cold["B"]))
        for k, a, b in rows:
            print(f"| {k} | {statistics.median(a):.2f} | {pct(a, 90):.2f} | {statistics.median(b):.2f} | "
                  f"{pct(b, 90):.2f} | {statistics.median(b) / statistics.median(a):.2f} |")
    finally:
        for b in servers.values():
            b.cleanup()


if __name__ == "__main__":
    main()
