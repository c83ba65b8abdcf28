#!/usr/bin/env python3
"""What counting costs: warm exec and GET latency with [metrics] enabled versus disabled, fake driver, one run.

  bench/metrics_overhead.py [--build build] [--rounds 5] [--n 400]

Starts two berthd processes from the build (fake driver, SQLite in temp dirs): one with metrics on (the default),
one with [metrics] enabled = false. Each holds one ready sandbox. In every round, each daemon in turn (order
alternating per round) serves --n sequential requests of each kind over one keep-alive connection:
  exec: POST /v1/sandboxes/{id}/python/exec print(1)   (a warm exec: session ready)
  get:  GET  /v1/sandboxes/{id}
  scrape: GET /metrics on the metrics-on daemon (what one Prometheus scrape costs berthd)
Prints a markdown table of median and p90 latencies (microseconds) over all rounds. Standard library only.
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, build, metrics_on):
        self.dir = tempfile.mkdtemp(prefix="berth-bench-metrics-")
        self.port = free_port()
        cfg = os.path.join(self.dir, "berth.toml")
        with open(cfg, "w") as f:
            f.write(f'[server]\nlisten = "127.0.0.1:{self.port}"\n[store]\npath = "{self.dir}/berth.db"\n'
                    f'[driver]\npath = "{build}/lib/berth/berth_driver_fake.so"\n[log]\nlevel = "warn"\n'
                    + ("" if metrics_on else "[metrics]\nenabled = false\n"))
        self.proc = subprocess.Popen([f"{build}/bin/berthd", "--config", cfg], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if self.call("GET", "/health")[0] == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        status, body = self.call("POST", "/v1/sandboxes", "{}")
        self.sandbox = json.loads(body)["id"]
        assert self.call("POST", f"/v1/sandboxes/{self.sandbox}/start")[0] == 200

    def call(self, method, path, body=None):
        self.conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        r = self.conn.getresponse()
        return r.status, r.read()

    def timed(self, n, method, path, body=None):
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            status, _ = self.call(method, path, body)
            out.append((time.perf_counter() - t0) * 1e6)
            assert status == 200, status
        return out

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=400)
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    on, off = Daemon(build, True), Daemon(build, False)
    samples = {(k, d): [] for k in ("exec", "get") for d in ("on", "off")}
    scrape = []
    code = json.dumps({"code": "print(1)"})
    try:
        for r in range(a.rounds):
            order = [("on", on), ("off", off)] if r % 2 == 0 else [("off", off), ("on", on)]
            for name, d in order:
                samples[("exec", name)] += d.timed(a.n, "POST", f"/v1/sandboxes/{d.sandbox}/python/exec", code)
                samples[("get", name)] += d.timed(a.n, "GET", f"/v1/sandboxes/{d.sandbox}")
            scrape += on.timed(max(a.n // 10, 10), "GET", "/metrics")
        print(f"| request ({a.rounds} rounds x {a.n}) | metrics on median / p90 (us) | metrics off median / p90 (us) "
              "| median difference |")
        print("|---|---|---|---|")
        for kind in ("exec", "get"):
            row = []
            for name in ("on", "off"):
                xs = sorted(samples[(kind, name)])
                row.append((statistics.median(xs), xs[int(len(xs) * 0.9)]))
            diff = row[0][0] - row[1][0]
            print(f"| {kind} | {row[0][0]:.0f} / {row[0][1]:.0f} | {row[1][0]:.0f} / {row[1][1]:.0f} | "
                  f"{diff:+.0f} us ({diff / row[1][0] * 100:+.1f}%) |")
        xs = sorted(scrape)
        print(f"| GET /metrics (on) | {statistics.median(xs):.0f} / {xs[int(len(xs) * 0.9)]:.0f} | - | - |")
    finally:
        on.stop()
        off.stop()


if __name__ == "__main__":
    main()
