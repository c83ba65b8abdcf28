#!/usr/bin/env python3
"""Create / get / exec throughput of berthd on the fake driver, once on SQLite and once on MariaDB, from one script
(issue 11). Each backend gets a fresh database (a temp file; a database berth_bench_<pid> on the local server,
created and dropped with the `mysql` client as root over the unix socket). Clients keep one connection each.
With --galera, two more columns: one berthd on node 1 of scripts/galera's three-node cluster, and three berthd
(one per node) with the clients spread over them round-robin (each instance execs in a sandbox it created: the
fake driver keeps its sessions inside its own process).

    bench/store_throughput.py --build build [--clients 8] [--seconds 5] [--mysql-url mysql://root@localhost]
                              [--galera]
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


def rate(ports, clients, seconds, op):
    """Requests/s of `op(client, instance)` run by `clients` threads for `seconds`, client i on instance i % len(ports);
    every answer must be 2xx."""
    deadline = time.monotonic() + seconds

    def loop(i):
        c = Client(ports[i % len(ports)])
        n = 0
        while time.monotonic() < deadline:
            status = op(c, i % len(ports))
            if status >= 300:
                raise RuntimeError(f"status {status}")
            n += 1
        return n

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(loop, range(clients)))
    return total / (time.monotonic() - t0)


def measure(build, store_tomls, clients, seconds):
    """Rates of one berthd per entry of `store_tomls` (the clients spread over them)."""
    started = []
    try:
        for store_toml in store_tomls:
            work = tempfile.mkdtemp(prefix="berth-bench-")
            started.append((work, None, None))
            proc, port = start_berthd(build, store_toml.replace("@WORK@", work), work)
            started[-1] = (work, proc, port)
        ports = [port for _, _, port in started]
        ready = []
        for port in ports:
            c = Client(port)
            _, sb = c.call("POST", "/v1/sandboxes", {})
            ready.append(sb["id"])
            c.call("POST", f"/v1/sandboxes/{sb['id']}/python/exec", {"code": "print(1)"})  # starts the session
        return {
            "create": rate(ports, clients, seconds, lambda cl, i: cl.call("POST", "/v1/sandboxes", {})[0]),
            "get": rate(ports, clients, seconds, lambda cl, i: cl.call("GET", f"/v1/sandboxes/{ready[i]}")[0]),
            "exec": rate(ports, clients, seconds,
                         lambda cl, i: cl.call("POST", f"/v1/sandboxes/{ready[i]}/python/exec",
                                               {"code": "print(6*7)"})[0]),
        }
    finally:
        for work, proc, _ in started:
            if proc:
                proc.terminate()
                proc.wait(timeout=60)
            shutil.rmtree(work, ignore_errors=True)


def galera_sql(statement):
    galera = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "galera")
    subprocess.run([galera, "sql", "1", statement], check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--mysql-url", default="mysql://root@localhost")
    ap.add_argument("--galera", action="store_true", help="also on scripts/galera's cluster (started beforehand)")
    ap.add_argument("--galera-url", default="mysql://berth:berth@127.0.0.1:{port}")
    args = ap.parse_args()
    db = f"berth_bench_{os.getpid()}"
    results = {"SQLite": measure(args.build, ['[store]\npath = "@WORK@/berth.db"'], args.clients, args.seconds)}
    subprocess.run(["mysql", "-e", f"CREATE DATABASE {db} CHARACTER SET utf8mb4"], check=True)
    try:
        results["MariaDB"] = measure(args.build, [f'[store]\nkind = "mysql"\nurl = "{args.mysql_url}/{db}"'],
                                     args.clients, args.seconds)
    finally:
        subprocess.run(["mysql", "-e", f"DROP DATABASE IF EXISTS {db}"], check=True)
    if args.galera:
        galera_sql(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
        try:
            url = args.galera_url
            node = '[store]\nkind = "mysql"\nurl = "{url}/{db}"'
            results["Galera, 1 node"] = measure(args.build, [node.format(url=url.format(port=3311), db=db)],
                                                args.clients, args.seconds)
            results["Galera, 3 nodes"] = measure(args.build, [node.format(url=url.format(port=p), db=db)
                                                              for p in (3311, 3312, 3313)], args.clients, args.seconds)
        finally:
            galera_sql(f"DROP DATABASE IF EXISTS {db}")
    load = os.getloadavg()[0]
    print(f"berthd store throughput, fake driver, {args.clients} clients, {args.seconds:g} s per row, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {load:.2f}\n")
    columns = list(results)
    print("| operation | " + " | ".join(f"{c} req/s" for c in columns) + " |\n|---|" + "---|" * len(columns))
    for op in ("create", "get", "exec"):
        print(f"| {op} | " + " | ".join(f"{results[c][op]:.0f}" for c in columns) + " |")


main()
