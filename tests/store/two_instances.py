#!/usr/bin/env python3
"""Two berthd processes (fake driver each) on one fresh MariaDB database: the key, Idempotency-Key and session
compare-and-swap constraints hold across processes, and a sandbox created on one is visible, usable and deletable
on the other. Run through scripts/require-service mariadb (tests/CMakeLists.txt). Usage: two_instances.py BERTHD FAKE
[DOCKER]: with the docker driver given, the exec scenario runs once more with both instances on the real Docker
Engine (one engine shared by both, as in production): exactly one session and one container.

The database (berth_2i_<pid>) is created over the local `mysql` client (root over the unix socket, or
$BERTH_TEST_MYSQL_ARGS) and dropped at the end; both berthd connect as $BERTH_TEST_MYSQL_URL's user (default root
over localhost's socket)."""
import concurrent.futures
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

from berthtest import check, failures, free_port, request
from berthtest import mysql as sql

BERTHD, FAKE = sys.argv[1], sys.argv[2]
DOCKER = sys.argv[3] if len(sys.argv) > 3 else None
DOCKER_SOCKET = os.environ.get("DOCKER_SOCKET", "/var/run/docker.sock")
DB = f"berth_2i_{os.getpid()}"
BASE_URL = os.environ.get("BERTH_TEST_MYSQL_URL", "mysql://root@localhost/mysql").rsplit("/", 1)[0]


def docker_containers(label):
    """Ids of the containers (running or not) carrying `label` ("key=value"), from the Engine API."""
    conn = http.client.HTTPConnection("docker", timeout=60)
    conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.sock.connect(DOCKER_SOCKET)
    filters = json.dumps({"label": [label]})
    conn.request("GET", "/v1.41/containers/json?all=true&filters=" + urllib.parse.quote(filters))
    return [c["Id"] for c in json.loads(conn.getresponse().read())]


def docker_remove(container):
    conn = http.client.HTTPConnection("docker", timeout=60)
    conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.sock.connect(DOCKER_SOCKET)
    conn.request("DELETE", f"/v1.41/containers/{container}?force=true&v=true")
    conn.getresponse().read()


def start_berthd(workdir, name, driver=None):
    port = free_port()
    config = os.path.join(workdir, f"{name}.toml")
    driver_toml = f'path = "{FAKE}"\ninstance_id = "{name}"\n'
    if driver:
        driver_toml = (f'path = "{driver}"\ninstance_id = "{name}"\n[driver.settings]\nsocket = "{DOCKER_SOCKET}"\n'
                       '[profiles.default]\nimage = "berth/python:3.11"\nmemory = "256MiB"\npids = 128\ncpus = 1.0\n')
    with open(config, "w") as f:
        f.write(f"""[server]
listen = "127.0.0.1:{port}"
threads = 256
[store]
kind = "mysql"
url = "{BASE_URL}/{DB}"
pool_size = 8
[cleanup]
enabled = false
[driver]
{driver_toml}""")
    log = open(os.path.join(workdir, f"{name}.log"), "w")
    proc = subprocess.Popen([BERTHD, "--config", config], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if request(port, "GET", "/health")[0] == 200:
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"berthd {name} did not come up; log: {open(log.name).read()[-2000:]}")


def docker_exec_scenario(workdir, pool):
    """Both instances on one Docker Engine: 100 concurrent execs on one idle sandbox, alternating between them."""
    procs = []
    try:
        a, port_a = start_berthd(workdir, "berth-2i-docker-a", DOCKER)
        procs.append(a)
        b, port_b = start_berthd(workdir, "berth-2i-docker-b", DOCKER)
        procs.append(b)
        ports = [port_a, port_b]
        s, sb = request(port_a, "POST", "/v1/sandboxes", {})
        sid = sb["id"]
        execs = list(pool.map(lambda i: request(ports[i % 2], "POST", f"/v1/sandboxes/{sid}/python/exec",
                                                 {"code": "print(6*7)"}), range(100)))
        ok = [body for st, body in execs if st == 200 and body.get("output", "").strip() == "42"]
        codes = sorted({st for st, _ in execs})
        sessions = sql(f"SELECT COUNT(*) FROM {DB}.sessions WHERE sandbox_id = '{sid}'").strip()
        containers = docker_containers(f"berth.sandbox={sid}")
        refused = sorted({(st, ((body or {}).get("error") or {}).get("code", ""),
                           ((body or {}).get("error") or {}).get("message", "")[:120])
                          for st, body in execs if st != 200})
        check(len(ok) == 100,
              f"docker: 100 execs across both instances all ran ({len(ok)} printed 42; {codes}; refused: {refused})")
        check(sessions == "1", f"docker: exactly one session for the sandbox ({sessions})")
        check(len(containers) == 1, f"docker: exactly one container for the sandbox ({len(containers)})")
        deleted = request(port_b, "DELETE", f"/v1/sandboxes/{sid}")
        check(deleted[0] in (200, 204), f"docker: created on A, deleted on B ({deleted[0]})")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        for name in ("berth-2i-docker-a", "berth-2i-docker-b"):
            for container in docker_containers(f"berth.instance={name}"):
                docker_remove(container)


def main():
    workdir = tempfile.mkdtemp(prefix="berth-2i-")
    sql(f"DROP DATABASE IF EXISTS {DB}")
    sql(f"CREATE DATABASE {DB} CHARACTER SET utf8mb4")
    procs = []
    try:
        a, port_a = start_berthd(workdir, "berth-a")
        procs.append(a)
        b, port_b = start_berthd(workdir, "berth-b")
        procs.append(b)
        ports = [port_a, port_b]
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=50)

        # 50 concurrent creates with one key, alternating between the instances: one sandbox.
        results = list(pool.map(lambda i: request(ports[i % 2], "POST", "/v1/sandboxes", {"key": "shared-key"}),
                                range(50)))
        statuses = sorted({s for s, _ in results})
        ids = {body["id"] for s, body in results if s in (200, 201)}
        check(statuses == [200, 201] and len(ids) == 1, f"50 creates with one key: one sandbox (statuses {statuses}, "
                                                         f"ids {len(ids)})")
        live = sql(f"SELECT COUNT(*) FROM {DB}.sandboxes WHERE `key` = 'shared-key' AND deleted_at IS NULL").strip()
        check(live == "1", f"one live row for the key in the database ({live})")

        # An Idempotency-Key replayed on the other instance: the same sandbox.
        s1, first = request(port_a, "POST", "/v1/sandboxes", {}, {"Idempotency-Key": "idem-2i"})
        s2, replay = request(port_b, "POST", "/v1/sandboxes", {}, {"Idempotency-Key": "idem-2i"})
        check(s1 == 201 and s2 == 201 and first["id"] == replay["id"],
              f"Idempotency-Key replayed on the other instance: same sandbox ({s1} {s2})")

        # One idle sandbox, 100 concurrent python/exec split across both instances: the session compare-and-swap
        # admits one start at a time across the processes. Each fake driver keeps its containers in its own
        # process, so an instance cannot exec in the other's session and replaces it: with the fake this checks
        # only that sessions are never started side by side (one current session; every replaced one is settled).
        # "Exactly one session" across instances needs a shared engine (the same scenario on docker).
        s, sb = request(port_a, "POST", "/v1/sandboxes", {})
        sid = sb["id"]
        execs = list(pool.map(lambda i: request(ports[i % 2], "POST", f"/v1/sandboxes/{sid}/python/exec",
                                                 {"code": "print(6*7)"}), range(100)))
        codes = sorted({st for st, _ in execs})
        check(all(st in (200, 404, 409, 503) for st, _ in execs), f"100 execs across both: no 500 ({codes})")
        active = sql(f"SELECT COUNT(*) FROM {DB}.sessions WHERE sandbox_id = '{sid}' AND state IN ('starting', 'ready')"
                     f" AND id <> (SELECT current_session_id FROM {DB}.sandboxes WHERE id = '{sid}')").strip()
        check(active == "0", f"no session besides the current one is starting or ready ({active})")

        # Created on one, visible and deletable on the other.
        s, sb = request(port_a, "POST", "/v1/sandboxes", {"labels": {"from": "a"}})
        sid = sb["id"]
        got = request(port_b, "GET", f"/v1/sandboxes/{sid}")
        check(got[0] == 200 and got[1]["labels"] == {"from": "a"}, f"created on A, read on B ({got[0]})")
        deleted = request(port_b, "DELETE", f"/v1/sandboxes/{sid}")
        check(deleted[0] in (200, 204), f"created on A, deleted on B ({deleted[0]})")
        after = request(port_a, "GET", f"/v1/sandboxes/{sid}")
        check(after[0] == 404, f"deleted on B, gone on A ({after[0]})")

        if DOCKER:
            docker_exec_scenario(workdir, pool)

        # Nothing half-written: every session and sandbox points at an existing row.
        dangling = sql(f"SELECT (SELECT COUNT(*) FROM {DB}.sessions s LEFT JOIN {DB}.sandboxes x ON x.id = s.sandbox_id"
                       f" WHERE x.id IS NULL) + (SELECT COUNT(*) FROM {DB}.sandboxes x LEFT JOIN {DB}.workspaces w"
                       f" ON w.id = x.workspace_id WHERE w.id IS NULL)").strip()
        check(dangling == "0", f"no dangling rows ({dangling})")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        if failures:
            for name in ("berth-a", "berth-b"):
                path = os.path.join(workdir, f"{name}.log")
                if os.path.exists(path):
                    print(f"---- {name} log (tail) ----\n" + open(path).read()[-3000:])
        sql(f"DROP DATABASE IF EXISTS {DB}")
        shutil.rmtree(workdir, ignore_errors=True)
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("two instances on one MariaDB: ok")


main()
