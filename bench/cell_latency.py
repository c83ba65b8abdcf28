#!/usr/bin/env python3
"""bench/cell_latency.py: issue 10's stateful cell latency through berthd, next to its baselines in the same run.

  bench/cell_latency.py [--build build] [--engine docker|podman] [--runs 200] [--image IMAGE]

One berthd on the engine, one ready sandbox, and one plain container of the same image. Interleaved by rounds (one
of each per round, two warm-up rounds not counted), timed whole from the client on keep-alive connections:
  cell       POST python/exec {"code": "x += 1\\nx"} in the sandbox's default context (a long-lived interpreter)
  stateless  POST python/exec {"code": "print(1)", "stateless": true} (a new python3 per call, as before contexts)
  shell      POST shell/exec {"command": "echo hi"}
  engine     one Engine API exec of `python3 -c print(1)` on the plain container (create + start + wait)
Prints n, p50, p90, p99 in ms. Uses bench/run-all's helpers; Python standard library only.
"""
import argparse
import sys
import time

sys.dont_write_bytecode = True
import benchlib  # noqa: E402  (after dont_write_bytecode) bench/benchlib.py

runall = benchlib.load_run_all()

SOCKETS = {"docker": "/var/run/docker.sock", "podman": "/run/podman/podman.sock"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--engine", default="docker", choices=sorted(SOCKETS))
    ap.add_argument("--image", default="berth/python:3.11")
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    sock = SOCKETS[args.engine]
    b = runall.Berthd(args.build, args.engine, args.image, "[cleanup]\nenabled = false\n")
    b.start()
    cid = None
    res = {k: [] for k in ("cell", "stateless", "shell", "engine")}
    try:
        sb = b.create()
        st, r, _ = runall.call(b.port, "POST", f"/v1/sandboxes/{sb}/python/exec", {"code": "x = 0"})
        if st != 200 or not r.get("success"):
            raise RuntimeError(f"first cell: {st} {r}")
        cid = runall.engine_create_start(sock, args.image)
        conn = runall.Conn(b.port)
        calls = (
            ("cell", lambda: conn.request("POST", f"/v1/sandboxes/{sb}/python/exec", {"code": "x += 1\nx"})),
            ("stateless", lambda: conn.request("POST", f"/v1/sandboxes/{sb}/python/exec",
                                               {"code": "print(1)", "stateless": True})),
            ("shell", lambda: conn.request("POST", f"/v1/sandboxes/{sb}/shell/exec", {"command": "echo hi"})),
            ("engine", lambda: runall.engine_exec(sock, cid, ["python3", "-c", "print(1)"])),
        )
        for i in range(args.runs + 2):
            for key, fn in calls:
                t0 = time.perf_counter()
                out = fn()
                dt = time.perf_counter() - t0
                if key != "engine" and (out[0] != 200 or not out[1].get("success")):
                    raise RuntimeError(f"{key}: {out}")
                if i >= 2:
                    res[key].append(dt)
        conn.close()
    finally:
        if cid:
            runall.engine_remove(sock, cid)
        b.cleanup()
    print(f"{args.engine}: {'what':58} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    names = {"cell": "python/exec in the default context (a cell)",
             "stateless": "python/exec stateless (a new python3)",
             "shell": "shell/exec echo hi",
             "engine": "baseline: one Engine API exec of python3 -c"}
    for key in ("cell", "stateless", "shell", "engine"):
        s = res[key]
        print(f"{args.engine}: {names[key]:58} {len(s):5d} {runall.pct(s, 0.5) * 1000:8.2f} "
              f"{runall.pct(s, 0.9) * 1000:8.2f} {runall.pct(s, 0.99) * 1000:8.2f}")


if __name__ == "__main__":
    main()
