#!/usr/bin/env python3
"""Create / get / exec throughput of berthd on the fake driver, once on SQLite and once on MariaDB, from one script
(issue 11). Each backend gets a fresh database (a temp file; a database berth_bench_<pid> on the local server,
created and dropped with the `mysql` client as root over the unix socket). Clients keep one connection each.

    bench/store_throughput.py --build build [--clients 8] [--seconds 5] [--mysql-url mysql://root@localhost]
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """One kept-alive connection to berthd."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(self, method, path, body=None):
        h = {"Content-Type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
        r = self.conn.getresponse()
        data = r.read()
        return r.status, json.loads(data) if data else None


def start_berthd(build, store_toml, work):
    port = free_port()
    config = os.path.join(work, "berth.toml")
    with open(config, "w") as f:
        f.write(f"""[server]
listen = "127.0.0.1:{port}"
threads = 64
{store_toml}
[driver]
path = "{os.path.realpath(os.path.join(build, 'lib/berth/berth_driver_fake.so'))}"
[log]
level = "warn"
[cleanup]
enabled = false
[limits]
create_rate_per_minute = 0
max_sandboxes_per_owner = 0
""")
    proc = subprocess.Popen([os.path.join(build, "bin/berthd"), "--config", config],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "log"), "w"))
    for _ in range(600):
        try:
            if Client(port).call("GET", "/health")[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("berthd did not start: " + open(os.path.join(work, "log")).read()[-2000:])


def rate(port, clients, seconds, op):
    """Requests/s of `op(client)` run by `clients` threads for `seconds`; every answer must be 2xx."""
    deadline = time.monotonic() + seconds

    def loop(_):
        c = Client(port)
        n = 0
        while time.monotonic() < deadline:
            status = op(c)
            if status >= 300:
                raise RuntimeError(f"status {status}")
            n += 1
        return n

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(loop, range(clients)))
    return total / (time.monotonic() - t0)


def measure(build, store_toml, clients, seconds):
    work = tempfile.mkdtemp(prefix="berth-bench-")
    proc, port = start_berthd(build, store_toml.replace("@WORK@", work), work)
    try:
        c = Client(port)
        _, sb = c.call("POST", "/v1/sandboxes", {})
        ready = sb["id"]
        c.call("POST", f"/v1/sandboxes/{ready}/python/exec", {"code": "print(1)"})  # starts the session
        return {
            "create": rate(port, clients, seconds, lambda cl: cl.call("POST", "/v1/sandboxes", {})[0]),
            "get": rate(port, clients, seconds, lambda cl: cl.call("GET", f"/v1/sandboxes/{ready}")[0]),
            "exec": rate(port, clients, seconds,
                         lambda cl: cl.call("POST", f"/v1/sandboxes/{ready}/python/exec", {"code": "print(6*7)"})[0]),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--mysql-url", default="mysql://root@localhost")
    args = ap.parse_args()
    db = f"berth_bench_{os.getpid()}"
    results = {"SQLite": measure(args.build, '[store]\npath = "@WORK@/berth.db"', args.clients, args.seconds)}
    subprocess.run(["mysql", "-e", f"CREATE DATABASE {db} CHARACTER SET utf8mb4"], check=True)
    try:
        results["MariaDB"] = measure(args.build, f'[store]\nkind = "mysql"\nurl = "{args.mysql_url}/{db}"',
                                     args.clients, args.seconds)
    finally:
        subprocess.run(["mysql", "-e", f"DROP DATABASE IF EXISTS {db}"], check=True)
    load = os.getloadavg()[0]
    print(f"berthd store throughput, fake driver, {args.clients} clients, {args.seconds:g} s per row, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {load:.2f}\n")
    print("| operation | SQLite req/s | MariaDB req/s |\n|---|---|---|")
    for op in ("create", "get", "exec"):
        print(f"| {op} | {results['SQLite'][op]:.0f} | {results['MariaDB'][op]:.0f} |")


main()
