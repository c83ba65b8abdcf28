#!/usr/bin/env python3
"""bench/exec_before_after.py: rows P11 and P2 of issue 12 for two berthd builds, interleaved in one run.

  bench/exec_before_after.py --before /path/to/old/build --after build [--rounds 3] [--warm-runs 100]

P11: warm `python/exec print(1)` throughput on the fake driver, 50 connections for 6 s (wrk, as bench/run-all), the
two builds alternating (before, after, before, after, ...), a fresh berthd each time. P2: warm `shell/exec echo hi`
and `python/exec print(1)` through berthd on Docker, one berthd of each build running side by side, one ready
sandbox each, requests alternating between the builds on persistent connections. Prints medians and p90s. Uses
bench/run-all's helpers (Berthd, wrk, Conn); needs wrk and Docker with the sandbox image.
"""
import argparse
import os
import shutil
import statistics
import sys

sys.dont_write_bytecode = True
import benchlib  # noqa: E402  (after dont_write_bytecode) bench/benchlib.py

runall = benchlib.load_run_all()


def pct(samples, p):
    return runall.pct(samples, p) * 1000.0


def p11(builds, image, rounds, secs):
    rps = {name: [] for name in builds}
    for r in range(rounds):
        for name, build in builds.items():
            b = runall.Berthd(build, "fake", image, '[cleanup]\nenabled = false\n')
            b.start()
            try:
                sb = b.create()
                runall.call(b.port, "POST", f"/v1/sandboxes/{sb}/python/exec", {"code": "print(1)"})
                lua = runall.lua_file(b.work, "exec.lua", "POST", {"code": "print(1)"})
                url = f"http://127.0.0.1:{b.port}/v1/sandboxes/{sb}/python/exec"
                runall.wrk(url, 50, 2, lua)  # warm-up
                res = runall.wrk(url, 50, secs, lua)
                if res["non2xx"]:
                    raise RuntimeError(f"{name}: {res['non2xx']} non-2xx answers")
                rps[name].append(res["rps"])
                print(f"P11 round {r + 1} {name}: {res['rps']:.0f} exec/s", flush=True)
            finally:
                b.stop()
                shutil.rmtree(b.work, ignore_errors=True)
    return rps


def p2(builds, image, warm_runs):
    servers = {}
    try:
        for name, build in builds.items():
            b = runall.Berthd(build, "docker", image, instance=f"berth-bench-{name}")
            b.start()
            servers[name] = b
        conns, sbs = {}, {}
        for name, b in servers.items():
            sbs[name] = b.create()
            st, r, _ = runall.call(b.port, "POST", f"/v1/sandboxes/{sbs[name]}/python/exec", {"code": "print(1)"})
            if st != 200:
                raise RuntimeError(f"{name}: first exec {st} {r}")
            conns[name] = runall.Conn(b.port)
        res = {(name, kind): [] for name in servers for kind in ("shell", "python")}
        for i in range(warm_runs + 2):
            for kind, path, body in (("shell", "shell/exec", {"command": "echo hi"}),
                                     ("python", "python/exec", {"code": "print(1)"})):
                for name in servers:
                    t0 = runall.time.perf_counter()
                    out = conns[name].request("POST", f"/v1/sandboxes/{sbs[name]}/{path}", body)
                    dt = runall.time.perf_counter() - t0
                    if out[0] != 200 or not out[1].get("success"):
                        raise RuntimeError(f"{name} {kind}: {out}")
                    if i >= 2:
                        res[(name, kind)].append(dt)
        for c in conns.values():
            c.close()
        return res
    finally:
        for b in servers.values():
            b.stop()
            shutil.rmtree(b.work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="build dir of the baseline (bin/berthd, lib/berth/*.so)")
    ap.add_argument("--after", required=True, help="build dir under test")
    ap.add_argument("--image", default="berth/python:3.11")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=int, default=6)
    ap.add_argument("--warm-runs", type=int, default=100)
    ap.add_argument("--skip-p2", action="store_true")
    args = ap.parse_args()
    builds = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    rps = p11(builds, args.image, args.rounds, args.secs)
    print("\n| row | build | n | median | min | max |\n|---|---|---|---|---|---|")
    for name, v in rps.items():
        print(f"| P11 exec/s (fake, 50 conns, wrk {args.secs} s) | {name} | {len(v)} | {statistics.median(v):.0f} "
              f"| {min(v):.0f} | {max(v):.0f} |")
    if args.skip_p2:
        return
    res = p2(builds, args.image, args.warm_runs)
    print("\n| row | build | n | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|---|---|")
    for (name, kind), v in sorted(res.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"| P2 warm {kind} exec (docker) | {name} | {len(v)} | {pct(v, 0.5):.1f} | {pct(v, 0.9):.1f} "
              f"| {pct(v, 0.99):.1f} |")


if __name__ == "__main__":
    main()
