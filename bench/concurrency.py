#!/usr/bin/env python3
"""Concurrency and crash recovery of berthd on a real engine, with the raw engine as baseline in the same run.

  bench/concurrency.py [--build build] [--driver docker|podman] [--image berth/python:3.11] [--skip-recovery]

Starts the built berthd (SQLite in a temp dir) on a free loopback port and measures:
  one sandbox:   100 concurrent POST python/exec `time.sleep(1)` on one idle sandbox: successes (HTTP 200 and
                 exit 0), p50/p99 latency, containers started for it (must be 1), berthd threads and peak RSS.
  50 sandboxes:  500 concurrent execs across 50 sandboxes (10 each), same figures.
  baseline:      100 concurrent exec create/start/inspect of `python3 -c 'import time; time.sleep(1)'` straight
                 against the Engine API on one running container (docker only).
  recovery:      creates and execs in flight, kill -9 berthd, start it again on the same database: seconds from
                 the restart until every sandbox has answered one exec, and how many did.
Prints markdown tables. Only the Python 3 standard library is used.
"""
import argparse
import concurrent.futures as cf
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import benchlib  # bench/benchlib.py: shared Engine API and berthd request helpers

SOCKETS = {"docker": "/var/run/docker.sock", "podman": "/run/podman/podman.sock"}


def engine(sock, method, path, body=None, raw=False):
    return benchlib.engine_call(sock, method, path, body, raw)


def call(port, method, path, body=None, timeout=300):
    """One HTTP request to berthd; returns (status, parsed body or None, seconds)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = None
        return resp.status, parsed, time.perf_counter() - t0
    except OSError:
        return 0, None, time.perf_counter() - t0
    finally:
        conn.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pct(samples, p):
    samples = sorted(samples)
    return samples[min(len(samples) - 1, int(round(p * (len(samples) - 1))))] if samples else float("nan")


class Berthd:
    def __init__(self, build, driver, image, work):
        self.berthd = os.path.join(build, "bin", "berthd")
        self.work = work
        self.port = free_port()
        lib = os.path.abspath(os.path.join(build, "lib", "berth", f"berth_driver_{driver}.so"))
        with open(os.path.join(work, "berth.toml"), "w") as f:
            f.write(f'[server]\nlisten = "127.0.0.1:{self.port}"\n[store]\npath = "{work}/berth.db"\n'
                    f'[driver]\npath = "{lib}"\ninstance_id = "berth-bench-conc"\n'
                    f'[driver.settings]\nsocket = "{SOCKETS[driver]}"\n'
                    f'[profiles.default]\nimage = "{image}"\n[log]\nlevel = "warn"\n')
        self.proc = None
        self.peak_threads = 0
        self.sampling = False

    def start(self):
        log = open(os.path.join(self.work, "berthd.log"), "a")
        self.proc = subprocess.Popen([self.berthd, "--config", os.path.join(self.work, "berth.toml")], stderr=log)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 60:
            if call(self.port, "GET", "/health", timeout=2)[0] == 200:
                return time.perf_counter() - t0
            time.sleep(0.05)
        raise RuntimeError("berthd did not answer /health")

    def status(self, key):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        return 0

    def sample(self):
        self.sampling = True
        self.peak_threads = 0

        def loop():
            while self.sampling:
                try:
                    self.peak_threads = max(self.peak_threads, self.status("Threads"))
                except OSError:
                    return
                time.sleep(0.05)

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        return t

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def containers_for(sock, sandbox_id):
    flt = json.dumps({"label": [f"berth.sandbox={sandbox_id}"]})
    from urllib.parse import quote
    return len(engine(sock, "GET", f"/containers/json?all=true&filters={quote(flt)}"))


def burst(b, targets, code):
    """Fires one exec per target at once; returns (ok count, latencies, statuses)."""
    sampler = b.sample()
    barrier = threading.Barrier(len(targets))

    def one(sb):
        barrier.wait()
        return call(b.port, "POST", f"/v1/sandboxes/{sb}/python/exec",
                    {"code": code, "timeout": 120, "stateless": True})  # side by side, not one cell at a time

    with cf.ThreadPoolExecutor(max_workers=len(targets)) as pool:
        results = list(pool.map(one, targets))
    b.sampling = False
    sampler.join()
    ok = [r for r in results if r[0] == 200 and r[1] and r[1].get("exit_code") == 0]
    statuses = {}
    for r in results:
        statuses[r[0]] = statuses.get(r[0], 0) + 1
    return len(ok), [r[2] for r in results], statuses


def row(name, n, ok, lat, threads, rss, extra=""):
    return (f"| {name} | {n} | {ok} | {pct(lat, 0.5) * 1000:.0f} | {pct(lat, 0.99) * 1000:.0f} | "
            f"{threads} | {rss} | {extra} |")


def engine_baseline(sock, image, n):
    c = engine(sock, "POST", "/containers/create", {
        "Image": image, "Cmd": ["sleep", "infinity"], "User": "1000:1000", "NetworkDisabled": True,
        "HostConfig": {"Init": True, "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges"], "NetworkMode": "none",
                       "Memory": 512 << 20, "PidsLimit": 256, "NanoCpus": 10**9}})
    engine(sock, "POST", f"/containers/{c['Id']}/start")
    barrier = threading.Barrier(n)

    def one(_):
        barrier.wait()
        t0 = time.perf_counter()
        try:
            ex = engine(sock, "POST", f"/containers/{c['Id']}/exec",
                        {"AttachStdout": True, "AttachStderr": True,
                         "Cmd": ["python3", "-c", "import time; time.sleep(1)"]})
            engine(sock, "POST", f"/exec/{ex['Id']}/start", {"Detach": False, "Tty": False}, raw=True)
            code = engine(sock, "GET", f"/exec/{ex['Id']}/json")["ExitCode"]
        except (RuntimeError, OSError):
            code = -1
        return code == 0, time.perf_counter() - t0

    try:
        with cf.ThreadPoolExecutor(max_workers=n) as pool:
            results = list(pool.map(one, range(n)))
    finally:
        engine(sock, "DELETE", f"/containers/{c['Id']}?force=true")
    return sum(1 for ok, _ in results if ok), [t for _, t in results]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--driver", default="docker", choices=sorted(SOCKETS))
    ap.add_argument("--image", default="berth/python:3.11")
    ap.add_argument("--skip-recovery", action="store_true")
    args = ap.parse_args()
    sock = SOCKETS[args.driver]
    work = tempfile.mkdtemp(prefix="berth-bench-conc-")
    b = Berthd(args.build, args.driver, args.image, work)
    b.start()
    rows = []
    created = []
    try:
        sleep1 = "import time; time.sleep(1)"
        status, sb, _ = call(b.port, "POST", "/v1/sandboxes", {})
        assert status in (200, 201), (status, sb)
        created.append(sb["id"])
        ok, lat, statuses = burst(b, [sb["id"]] * 100, sleep1)
        rows.append(row("100 execs, one idle sandbox", 100, ok, lat, b.peak_threads, b.status("VmHWM"),
                        f"containers for it: {containers_for(sock, sb['id'])}; statuses {statuses}"))
        many = []
        for _ in range(50):
            status, s, _ = call(b.port, "POST", "/v1/sandboxes", {})
            assert status in (200, 201), (status, s)
            many.append(s["id"])
        created += many
        ok, lat, statuses = burst(b, [s for s in many for _ in range(10)], sleep1)
        extra = sum(1 for s in many if containers_for(sock, s) != 1)
        rows.append(row("500 execs, 50 sandboxes x 10", 500, ok, lat, b.peak_threads, b.status("VmHWM"),
                        f"sandboxes with != 1 container: {extra}; statuses {statuses}"))
        if args.driver == "docker":
            ok, lat = engine_baseline(sock, args.image, 100)
            rows.append(row("baseline: 100 raw Engine API execs, one container", 100, ok, lat, "-", "-"))
        print(f"berth concurrency, driver {args.driver}, image {args.image}, "
              f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, load {os.getloadavg()[0]:.2f}")
        print("| scenario | requests | ok | p50 ms | p99 ms | berthd peak threads | berthd peak RSS KiB | notes |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))

        if not args.skip_recovery:
            # Creates and execs in flight, then kill -9.
            inflight = []
            pool = cf.ThreadPoolExecutor(max_workers=40)
            for i in range(20):
                inflight.append(pool.submit(call, b.port, "POST", "/v1/sandboxes", {}))
            for s in many[:20]:
                inflight.append(pool.submit(call, b.port, "POST", f"/v1/sandboxes/{s}/python/exec",
                                            {"code": "import time; time.sleep(3)"}))
            time.sleep(0.5)
            b.kill9()
            pool.shutdown(wait=True)
            for f in inflight[:20]:
                st, body, _ = f.result()
                if st in (200, 201) and body:
                    created.append(body["id"])
            t0 = time.perf_counter()
            b.start()
            status, listing, _ = call(b.port, "GET", "/v1/sandboxes")
            ids = [s["id"] for s in (listing.get("items") or listing.get("sandboxes") or [])] if listing else []
            ids = ids or created
            with cf.ThreadPoolExecutor(max_workers=len(ids)) as p2:
                res = list(p2.map(lambda s: call(b.port, "POST", f"/v1/sandboxes/{s}/python/exec",
                                                 {"code": "print(1)"}), ids))
            elapsed = time.perf_counter() - t0
            answered = sum(1 for r in res if r[0] == 200 and r[1] and r[1].get("exit_code") == 0)
            print()
            print("| recovery after kill -9 (creates + execs in flight) | sandboxes | answered an exec | "
                  "seconds from restart until all answered | slowest exec s |")
            print("|---|---|---|---|---|")
            print(f"| restart on the same database | {len(ids)} | {answered} | {elapsed:.2f} | "
                  f"{max(r[2] for r in res):.2f} |")
    finally:
        for s in created:
            call(b.port, "DELETE", f"/v1/sandboxes/{s}")
        b.stop()


if __name__ == "__main__":
    sys.exit(main())
