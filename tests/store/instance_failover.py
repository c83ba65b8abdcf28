#!/usr/bin/env python3
"""kill -9 one of two berthd mid-start (issue 11): two berthd (fake driver each) on one fresh MariaDB database with
[cluster] heartbeat_interval = 1 s and instance_timeout = 3 s. A's fake driver takes 30 s to create a container; an
exec on A starts a session and A is killed with SIGKILL while the session is `starting`. B must find A dead by its
heartbeat and reconcile the session at once (no container of A runs on B's engine, so it is cleared), well before A's
start deadline would have run out: the sandbox leaves `starting` within a generous 60 s (expected ~3-5 s), no session
in the database stays `starting`, and the next exec on B replaces the session. Prints the recovery time (kill ->
sandbox no longer starting, as seen over B's API). Usage: instance_failover.py BERTHD FAKE; run through
scripts/require-service mariadb (tests/CMakeLists.txt). The database (berth_fo_<pid>) is created and dropped over the
local `mysql` client (root over the unix socket, or $BERTH_TEST_MYSQL_ARGS); berthd connects as
$BERTH_TEST_MYSQL_URL's user (default root over localhost's socket)."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from berthtest import check, failures, free_port, request
from berthtest import mysql as sql

BERTHD, FAKE = sys.argv[1], sys.argv[2]
DB = f"berth_fo_{os.getpid()}"
BASE_URL = os.environ.get("BERTH_TEST_MYSQL_URL", "mysql://root@localhost/mysql").rsplit("/", 1)[0]
BOUND_S = 60  # "eventually" vs "never": A's own start would take 30 s, its start deadline 60 s


def start_berthd(workdir, name, driver_settings):
    port = free_port()
    config = os.path.join(workdir, f"{name}.toml")
    with open(config, "w") as f:
        f.write(f"""[server]
listen = "127.0.0.1:{port}"
[store]
kind = "mysql"
url = "{BASE_URL}/{DB}"
pool_size = 4
[cluster]
heartbeat_interval = "1s"
instance_timeout = "3s"
[cleanup]
enabled = false
[driver]
path = "{FAKE}"
instance_id = "{name}"
[driver.settings]
{driver_settings}
""")
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


def wait_for(what, predicate, bound=BOUND_S, step=0.05):
    """Polls predicate() until it returns a true value or `bound` seconds pass; returns its last value."""
    deadline = time.monotonic() + bound
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def main():
    workdir = tempfile.mkdtemp(prefix="berth-fo-")
    sql(f"DROP DATABASE IF EXISTS {DB}")
    sql(f"CREATE DATABASE {DB} CHARACTER SET utf8mb4")
    procs = []
    try:
        a, port_a = start_berthd(workdir, "berth-fo-a", 'latency_ms = { session_create = 30000 }')
        procs.append(a)
        b, port_b = start_berthd(workdir, "berth-fo-b", "")
        procs.append(b)
        status, sb = request(port_b, "POST", "/v1/sandboxes", {})
        check(status == 201, f"sandbox created on B ({status})")
        sid = sb["id"]

        # An exec on A starts the session; A's driver holds the container create for 30 s.
        threading.Thread(target=lambda: _quiet(lambda: request(port_a, "POST", f"/v1/sandboxes/{sid}/python/exec",
                                                               {"code": "print(1)"})), daemon=True).start()
        starting = wait_for("A starting", lambda: sql(
            f"SELECT COUNT(*) FROM {DB}.sessions WHERE sandbox_id = '{sid}' AND state = 'starting'"
            f" AND starter = 'berth-fo-a'").strip() == "1")
        check(starting, "A is starting the session")
        check(request(port_b, "GET", f"/v1/sandboxes/{sid}")[1]["status"] == "starting", "B sees it starting")

        os.kill(a.pid, signal.SIGKILL)
        a.wait()
        killed = time.monotonic()
        left = wait_for("not starting", lambda: request(port_b, "GET", f"/v1/sandboxes/{sid}")[1]["status"] != "starting")
        recovery = time.monotonic() - killed
        check(left, f"the sandbox left `starting` after A was killed (bound {BOUND_S} s)")
        print(f"recovery after kill -9: {recovery:.2f} s (heartbeat_interval 1 s, instance_timeout 3 s)", flush=True)
        stuck = sql(f"SELECT COUNT(*) FROM {DB}.sessions WHERE state = 'starting'").strip()
        check(stuck == "0", f"no session in the database stays starting ({stuck})")
        state = sql(f"SELECT state, starter FROM {DB}.sessions WHERE sandbox_id = '{sid}'").split()
        check(state == ["dead", "berth-fo-b"], f"A's session was taken over by B and cleared ({state})")

        status, out = request(port_b, "POST", f"/v1/sandboxes/{sid}/python/exec", {"code": "print(6*7)"})
        check(status == 200 and out.get("output", "").strip() == "42", f"the next exec on B replaces it ({status})")
        starter = sql(f"SELECT s.starter FROM {DB}.sessions s JOIN {DB}.sandboxes x ON x.current_session_id = s.id"
                      f" WHERE x.id = '{sid}'").strip()
        check(starter == "berth-fo-b", f"the new session is B's ({starter})")
        dead = sql(f"SELECT id FROM {DB}.instances WHERE heartbeat_at < "
                   f"(SELECT MAX(heartbeat_at) FROM {DB}.instances) - 3000").split()
        check(dead == ["berth-fo-a"], f"A is dead in the instances table, B alive ({dead})")
        log_b = open(os.path.join(workdir, "berth-fo-b.log")).read()
        check("instance.adopted" in log_b and "berth-fo-a" in log_b, "B logged instance.adopted for A")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        if failures:
            for name in ("berth-fo-a", "berth-fo-b"):
                path = os.path.join(workdir, f"{name}.log")
                if os.path.exists(path):
                    print(f"---- {name} log (tail) ----\n" + open(path).read()[-3000:])
        sql(f"DROP DATABASE IF EXISTS {DB}")
        shutil.rmtree(workdir, ignore_errors=True)
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("kill -9 one of two berthd mid-start: ok")


def _quiet(fn):
    try:
        fn()
    except OSError:
        pass  # A was killed under the request


main()
