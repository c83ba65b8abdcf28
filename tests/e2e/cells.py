#!/usr/bin/env python3
"""10,000 cells (issue 10): Python contexts on a real engine lose, empty or mix up no output.

  cells.py BERTHD DRIVER_SO --engine docker|podman [--cells 10000] [--contexts 20] [--json OUT]

Starts its own berthd (temp dir, SQLite, a unique instance id) and one sandbox, then runs
  1. sequential: --cells cells one after the other in the default context, each `n += 1; print(n, TAG); n * 3`;
  2. parallel: --cells cells across --contexts named contexts, one client thread per context, each context its own
     counter.
Every answer must be 200 and success, its output exactly "<n> <TAG>\\n" (TAG random per cell), its data.text
str(3n) and its execution_count the context's count so far: a lost, empty, repeated or foreign output fails the run
(exit 1). Reported: the stateful cell latency through berthd (p50/p90/p99, client side) of each phase and the
parallel throughput. Everything created is deleted at the end, also after a failure.
"""
import argparse
import concurrent.futures as cf
import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

SOCKETS = {"docker": "/var/run/docker.sock", "podman": "/run/podman/podman.sock"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """One keep-alive connection to berthd."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(self, method, path, body=None):
        data = json.dumps(body) if body is not None else None
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=data,
                                  headers={"Content-Type": "application/json"} if data is not None else {})
                r = self.conn.getresponse()
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
            except (ConnectionError, http.client.HTTPException):
                if attempt:
                    raise
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, int(round(p * (len(s) - 1)))))] if s else float("nan")


def summary(lat, wall):
    """p50/p90/p99 in ms and the throughput of one phase."""
    return {"p50_ms": round(pct(lat, 0.5) * 1e3, 2), "p90_ms": round(pct(lat, 0.9) * 1e3, 2),
            "p99_ms": round(pct(lat, 0.99) * 1e3, 2), "cells_per_s": round(len(lat) / wall)}


def run_cells(port, sandbox, context, count, start_count):
    """Runs `count` cells in `context`; returns (latencies in s, list of problems)."""
    c = Client(port)
    lat, problems = [], []
    for i in range(1, count + 1):
        tag = secrets.token_hex(6)
        body = {"code": f"n += 1\nprint(n, '{tag}')\nn * 3"}
        if context != "default":
            body["context_id"] = context
        t = time.perf_counter()
        st, r = c.call("POST", f"/v1/sandboxes/{sandbox}/python/exec", body)
        lat.append(time.perf_counter() - t)
        want_count = start_count + i
        if st != 200 or not r:
            problems.append(f"{context} cell {i}: HTTP {st} {r}")
        elif not r.get("success") or r.get("output") != f"{i} {tag}\n" or \
                (r.get("data") or {}).get("text") != str(3 * i) or r.get("execution_count") != want_count:
            problems.append(f"{context} cell {i}: output {r.get('output')!r} data {r.get('data')} "
                            f"count {r.get('execution_count')} (want {want_count}) error {r.get('error')!r}")
        if len(problems) > 20:
            break
    return lat, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("berthd")
    ap.add_argument("driver")
    ap.add_argument("--engine", choices=sorted(SOCKETS), required=True)
    ap.add_argument("--cells", type=int, default=10000)
    ap.add_argument("--contexts", type=int, default=20)
    ap.add_argument("--image", default="berth/python:3.11")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="berth-cells-")
    port = free_port()
    config = os.path.join(work, "berth.toml")
    with open(config, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\nmax_contexts_per_sandbox = {args.contexts + 1}\n'
                f'[store]\nkind = "sqlite"\npath = "{work}/berth.db"\n'
                f'[driver]\npath = "{os.path.abspath(args.driver)}"\ninstance_id = "berth-cells-{os.getpid()}"\n'
                f'[driver.settings]\nsocket = "{SOCKETS[args.engine]}"\n'
                f'[profiles.default]\nimage = "{args.image}"\nmemory = "512MiB"\npids = 256\n'
                f'[cleanup]\nenabled = false\n[log]\nlevel = "warn"\n')
    log = open(os.path.join(work, "berthd.log"), "a")
    proc = subprocess.Popen([args.berthd, "--config", config], stdout=log, stderr=log)
    failures, result = [], {"engine": args.engine, "cells": args.cells, "contexts": args.contexts}
    sandbox = None
    try:
        c = Client(port)
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError(f"berthd exited {proc.returncode}")
            try:
                if c.call("GET", "/health")[0] == 200:
                    break
            except OSError:
                c = Client(port)
            time.sleep(0.1)
        st, sb = c.call("POST", "/v1/sandboxes", {})
        if st != 201:
            raise RuntimeError(f"create: {st} {sb}")
        sandbox = sb["id"]
        st, r = c.call("POST", f"/v1/sandboxes/{sandbox}/python/exec", {"code": "n = 0"})  # warm-up: session + kernel
        if st != 200 or not r.get("success"):
            raise RuntimeError(f"first cell: {st} {r}")

        t0 = time.perf_counter()
        lat, problems = run_cells(port, sandbox, "default", args.cells, 1)
        wall = time.perf_counter() - t0
        failures += problems
        result["sequential"] = summary(lat, wall)
        print(f"sequential: {len(lat)} cells in {wall:.1f} s; p50 {result['sequential']['p50_ms']} ms, "
              f"p90 {result['sequential']['p90_ms']} ms, p99 {result['sequential']['p99_ms']} ms; "
              f"{len(problems)} problems", flush=True)

        contexts = []
        for _ in range(args.contexts):
            st, ctx = c.call("POST", f"/v1/sandboxes/{sandbox}/contexts", {})
            if st != 201:
                raise RuntimeError(f"context: {st} {ctx}")
            contexts.append(ctx["id"])
            st, r = c.call("POST", f"/v1/sandboxes/{sandbox}/python/exec", {"code": "n = 0", "context_id": ctx["id"]})
            if st != 200 or not r.get("success"):
                raise RuntimeError(f"context's first cell: {st} {r}")
        per = args.cells // args.contexts
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(max_workers=args.contexts) as pool:
            outcomes = list(pool.map(lambda ctx: run_cells(port, sandbox, ctx, per, 1), contexts))
        wall = time.perf_counter() - t0
        lat = [x for l, _ in outcomes for x in l]
        for _, p in outcomes:
            failures += p
        result["parallel"] = summary(lat, wall)
        print(f"parallel: {len(lat)} cells over {args.contexts} contexts in {wall:.1f} s "
              f"({result['parallel']['cells_per_s']}/s); p50 {result['parallel']['p50_ms']} ms, "
              f"p90 {result['parallel']['p90_ms']} ms; {sum(len(p) for _, p in outcomes)} problems", flush=True)
        result["problems"] = len(failures)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    except Exception as e:  # noqa: BLE001 - reported as the failure
        failures.append(f"{type(e).__name__}: {e}")
    finally:
        try:
            if sandbox:
                Client(port).call("DELETE", f"/v1/sandboxes/{sandbox}")
        except OSError:
            pass
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if failures:
            with open(os.path.join(work, "berthd.log")) as f:
                sys.stdout.write("---- berthd log (tail) ----\n" + "".join(f.readlines()[-40:]))
        shutil.rmtree(work, ignore_errors=True)
    for p in failures[:20]:
        print("FAIL " + p)
    print("cells: " + ("FAILED" if failures else "ok"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
