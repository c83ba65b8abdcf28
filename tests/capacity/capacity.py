#!/usr/bin/env python3
"""Capacity (issue 9 item 5, issue 12 row P12): one berthd on a real engine holds 1,000 concurrent long-running execs
across 100 sandboxes.

  capacity.py BERTHD DRIVER_SO --engine docker|podman [--sandboxes 100] [--per-sandbox 10] [--json OUT]

Starts its own berthd (temp dir, SQLite, a unique instance id) with the [server] pool sized for the load (see
CONFIG below: the sizes a deployment expecting 1,000 concurrent execs sets), creates the sandboxes and starts each
one's container with a first exec (the warm-up, not measured), then fires every `shell/exec` of
`sleep 5; echo done` at once (10 per sandbox, each on its own connection) while it probes GET /health every 20 ms
and samples berthd's /proc/<pid>/status (Threads, VmRSS) and open fds every 50 ms.

Asserted (exit 1 on failure): every exec answers 200 with output "done\\n" and exit code 0; every /health probe
answers 200; berthd's peak thread count stays below `threads` + 64 and its peak RSS below 1 GiB (bounds that tell
"bounded by the configuration" from "grows with the load" generously). Reported, never asserted: /health p50/p99,
the wall time of the burst, how much of each exec was spent in the driver, berthd's CPU seconds during the burst, peak
threads, RSS and fds. --json writes those numbers for bench/run-all (row P12).
Everything the run created (sandboxes, containers, volumes) is deleted at the end, also after a failure.
"""
import argparse
import concurrent.futures as cf
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

SOCKETS = {"docker": "/var/run/docker.sock", "podman": "/run/podman/podman.sock"}
# A worker thread holds each request being handled (docs/api.md, "Server pools"): 1,000 concurrent execs need 1,000
# work slots and the threads for them, plus headroom for /health and reads (work_slots + work_queue + 16 <= threads).
CONFIG = {"threads": 1100, "work_slots": 1000, "work_queue": 64}
COMMAND = "sleep 5; echo done"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, timeout=300):
    """(status, parsed JSON or None) of one request on its own connection; status 0 for a connection error."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers={"Content-Type": "application/json"} if body is not None else {})
        r = c.getresponse()
        data = r.read()
        c.close()
    except OSError as e:
        return 0, {"connection_error": str(e)}
    try:
        return r.status, json.loads(data) if data else None
    except ValueError:
        return r.status, None


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("engine", timeout=120)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def engine(sock, method, path):
    c = UnixHTTPConnection(sock)
    c.request(method, "/v1.41" + path)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, (json.loads(data) if data and data[:1] in (b"{", b"[") else None)


def proc_status(pid):
    """{Threads, VmRSS (KiB), fds} of a live process."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Threads", "VmRSS"):
                out[key] = int(value.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def cpu_seconds(pid):
    """User + system CPU time of a live process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, int(round(p * (len(s) - 1)))))] if s else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("berthd")
    ap.add_argument("driver")
    ap.add_argument("--engine", choices=sorted(SOCKETS), required=True)
    ap.add_argument("--sandboxes", type=int, default=100)
    ap.add_argument("--per-sandbox", type=int, default=10)
    ap.add_argument("--image", default="berth/python:3.11")
    ap.add_argument("--json", help="write the measurements here (for bench/run-all)")
    ap.add_argument("--exec-via-processes", action="store_true",
                    help="[server] exec_via_processes = true: the execs run as interactive processes (ABI 1.3)")
    args = ap.parse_args()
    sock = SOCKETS[args.engine]
    total = args.sandboxes * args.per_sandbox
    threading.stack_size(256 << 10)  # 1,000 client threads: small stacks

    work = tempfile.mkdtemp(prefix="berth-capacity-")
    port = free_port()
    instance = f"berth-capacity-{os.getpid()}"
    config = os.path.join(work, "berth.toml")
    with open(config, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\nmax_connections_per_client = 0\n'
                f'threads = {CONFIG["threads"]}\nwork_slots = {CONFIG["work_slots"]}\n'
                f'work_queue = {CONFIG["work_queue"]}\n'
                f'exec_via_processes = {"true" if args.exec_via_processes else "false"}\n'
                f'[store]\nkind = "sqlite"\npath = "{work}/berth.db"\n'
                f'[driver]\npath = "{os.path.abspath(args.driver)}"\ninstance_id = "{instance}"\n'
                f'[driver.settings]\nsocket = "{sock}"\n'
                f'[profiles.default]\nimage = "{args.image}"\nmemory = "256MiB"\npids = 128\n'
                f'[limits]\nmax_sandboxes_per_owner = 0\ncreate_rate_per_minute = 0\n'
                f'[cleanup]\nenabled = false\n[log]\nlevel = "warn"\n')
    log = open(os.path.join(work, "berthd.log"), "a")
    proc = subprocess.Popen([args.berthd, "--config", config], stdout=log, stderr=log)
    failures = []
    created = []
    result = {"engine": args.engine, "sandboxes": args.sandboxes, "execs": total, "config": CONFIG}

    def check(ok, what):
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        if not ok:
            failures.append(what)

    try:
        for _ in range(600):  # 60 s for start-up
            if proc.poll() is not None:
                raise RuntimeError(f"berthd exited {proc.returncode}")
            if request(port, "GET", "/health", timeout=2)[0] == 200:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("berthd did not answer /health within 60 s")
        base = proc_status(proc.pid)
        result["idle"] = base

        # Sandboxes and their containers (warm-up: each sandbox's first exec starts its container; not measured).
        t0 = time.perf_counter()

        def make(_):
            st, body = request(port, "POST", "/v1/sandboxes", {})
            if st != 201:
                return None, f"create: {st} {body}"
            created.append(body["id"])
            st, out = request(port, "POST", f"/v1/sandboxes/{body['id']}/shell/exec", {"command": "true"})
            return body["id"], None if st == 200 else f"first exec: {st} {out}"

        with cf.ThreadPoolExecutor(max_workers=8) as pool:
            made = list(pool.map(make, range(args.sandboxes)))
        ids = [i for i, err in made if i and not err]
        errors = [err for _, err in made if err]
        check(len(ids) == args.sandboxes, f"{len(ids)}/{args.sandboxes} sandboxes created and started "
                                          f"({time.perf_counter() - t0:.0f} s){'; first error ' + errors[0] if errors else ''}")
        if len(ids) != args.sandboxes:
            raise RuntimeError("warm-up failed")
        result["warmup_s"] = round(time.perf_counter() - t0, 1)

        # Probes while the burst runs.
        stop = threading.Event()
        health = []  # (status, seconds)
        peaks = dict(base)

        def probe_health():
            while not stop.is_set():
                t = time.perf_counter()
                st, _ = request(port, "GET", "/health", timeout=60)
                health.append((st, time.perf_counter() - t))
                stop.wait(0.02)

        def sample():
            while not stop.is_set():
                try:
                    s = proc_status(proc.pid)
                except OSError:
                    break
                for k, v in s.items():
                    peaks[k] = max(peaks.get(k, 0), v)
                stop.wait(0.05)

        watchers = [threading.Thread(target=probe_health), threading.Thread(target=sample)]
        barrier = threading.Barrier(total + 1)
        answers = [None] * total

        def one(i):
            sid = ids[i % len(ids)]
            barrier.wait()
            t = time.perf_counter()
            st, body = request(port, "POST", f"/v1/sandboxes/{sid}/shell/exec", {"command": COMMAND, "timeout": 120})
            answers[i] = (st, body, time.perf_counter() - t)

        clients = [threading.Thread(target=one, args=(i,)) for i in range(total)]
        for t in clients:
            t.start()
        for t in watchers:
            t.start()
        t0 = time.perf_counter()
        cpu0 = cpu_seconds(proc.pid)
        barrier.wait()
        for t in clients:
            t.join()
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(proc.pid) - cpu0
        stop.set()
        for t in watchers:
            t.join()

        done = [a for a in answers if a and a[0] == 200 and a[1] and a[1].get("output") == "done\n"
                and a[1].get("exit_code") == 0]
        statuses = {}
        for a in answers:
            key = a[0] if a else "none"
            statuses[key] = statuses.get(key, 0) + 1
        bad = next((a for a in answers if a not in done), None)
        check(len(done) == total, f"{len(done)}/{total} execs answered 200 with \"done\" (statuses {statuses})"
                                  + (f"; first failure {json.dumps(bad[1])[:300]}" if bad else ""))
        lat = [a[2] for a in answers if a]
        # execution_time_ms: the exec itself as berthd timed it (driver call); the rest of `lat` is waiting before it.
        inner = [a[1]["execution_time_ms"] / 1000 for a in answers if a and a[0] == 200 and a[1]
                 and "execution_time_ms" in a[1]]
        h_ok = sum(1 for st, _ in health if st == 200)
        h_lat = [d for _, d in health]
        check(health and h_ok == len(health), f"{h_ok}/{len(health)} /health probes answered 200 during the burst")
        bound_threads = CONFIG["threads"] + 64
        check(peaks["Threads"] < bound_threads, f"berthd peak threads {peaks['Threads']} < {bound_threads}")
        check(peaks["VmRSS"] < 1 << 20, f"berthd peak RSS {peaks['VmRSS'] // 1024} MiB < 1024 MiB")
        result.update({
            "ok": len(done), "statuses": {str(k): v for k, v in statuses.items()}, "wall_s": round(wall, 2),
            "exec_ms": {"p50": round(pct(lat, .5) * 1000), "p90": round(pct(lat, .9) * 1000),
                        "p99": round(pct(lat, .99) * 1000), "max": round(max(lat) * 1000) if lat else None,
                        "in_driver_p50": round(pct(inner, .5) * 1000), "in_driver_p99": round(pct(inner, .99) * 1000)},
            "health": {"n": len(health), "ok": h_ok, "p50_ms": round(pct(h_lat, .5) * 1000, 1),
                       "p90_ms": round(pct(h_lat, .9) * 1000, 1), "p99_ms": round(pct(h_lat, .99) * 1000, 1),
                       "max_ms": round(max(h_lat) * 1000, 1) if h_lat else None},
            "berthd_cpu_s": round(cpu, 1),
            "peak": {"threads": peaks["Threads"], "rss_mib": round(peaks["VmRSS"] / 1024, 1), "fds": peaks["fds"]},
        })
        # Measured, not asserted.
        print(f"capacity.{args.engine}: {len(done)}/{total} execs of `{COMMAND}` across {len(ids)} sandboxes, all "
              f"answered after {wall:.1f} s (exec p50 {result['exec_ms']['p50']} ms, p99 {result['exec_ms']['p99']} "
              f"ms; of which in the driver p50 {result['exec_ms']['in_driver_p50']} ms, p99 "
              f"{result['exec_ms']['in_driver_p99']} ms); /health during the burst: n={len(health)} p50 {result['health']['p50_ms']} ms p99 "
              f"{result['health']['p99_ms']} ms max {result['health']['max_ms']} ms; berthd CPU during the burst {cpu:.1f} s; "
              f"berthd idle: "
              f"{base['Threads']} threads, {base['VmRSS'] // 1024} MiB RSS, {base['fds']} fds; peak: "
              f"{peaks['Threads']} threads, {peaks['VmRSS'] // 1024} MiB RSS, {peaks['fds']} fds", flush=True)
    except Exception as e:  # noqa: BLE001  reported as a failure, cleanup still runs
        failures.append(f"{e.__class__.__name__}: {e}")
        print(f"FAIL {e.__class__.__name__}: {e}", flush=True)
    finally:
        if proc.poll() is None and created:
            with cf.ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda s: request(port, "DELETE", f"/v1/sandboxes/{s}"), created))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Whatever a failed delete left behind: this instance's containers and volumes only.
        flt = urllib.parse.quote(json.dumps({"label": [f"berth.instance={instance}"]}))
        st, left = engine(sock, "GET", f"/containers/json?all=true&filters={flt}")
        for c in (left or []) if st == 200 else []:
            engine(sock, "DELETE", f"/containers/{c['Id']}?force=true")
        st, vols = engine(sock, "GET", f"/volumes?filters={flt}")
        for v in ((vols or {}).get("Volumes") or []) if st == 200 else []:
            engine(sock, "DELETE", f"/volumes/{v['Name']}")
        if failures:
            print("berthd log tail:\n" + open(os.path.join(work, "berthd.log")).read()[-3000:])
        shutil.rmtree(work, ignore_errors=True)
    result["failures"] = failures
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
