#!/usr/bin/env python3
"""MariaDB killed and restarted under load: berthd answers 503 store_unavailable (with Retry-After) while the
database is gone, never hangs, and serves again by itself once it is back; nothing is half-written afterwards.
Starts its OWN mariadbd (--no-defaults, a temporary datadir, a free port on 127.0.0.1) so that the shared server is
never disturbed. Usage: mariadb_restart.py BERTHD FAKE (through scripts/require-service mariadb)."""
import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from berthtest import check, failures, free_port
from berthtest import request_full as request

BERTHD, FAKE = sys.argv[1], sys.argv[2]


class MariaDB:
    """A private mariadbd on 127.0.0.1:port with its own datadir (root without password, TCP only)."""

    def __init__(self, workdir):
        self.datadir = os.path.join(workdir, "data")
        self.port = free_port()
        self.log = os.path.join(workdir, "mariadbd.log")
        self.proc = None
        shutil.chown(workdir, "mysql")  # mkdtemp made it 0700 root: mariadbd runs as mysql
        done = subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", "--user=mysql",
                               "--auth-root-authentication-method=normal", "--skip-test-db"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError("mariadb-install-db failed: " + done.stdout[-1500:] + done.stderr[-1500:])

    def start(self):
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}", "--bind-address=127.0.0.1",
             f"--socket={self.datadir}/mysqld.sock", "--user=mysql", "--skip-name-resolve", "--innodb-buffer-pool-size=32M",
             f"--pid-file={self.datadir}/mysqld.pid", f"--log-error={self.log}"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if subprocess.run(["mysqladmin", "--no-defaults", "-h127.0.0.1", f"-P{self.port}", "-uroot", "ping"],
                              capture_output=True).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("private mariadbd did not come up: " + open(self.log).read()[-2000:])

    def sql(self, statement):
        return subprocess.run(["mysql", "--no-defaults", "-h127.0.0.1", f"-P{self.port}", "-uroot", "-N", "-B", "-e",
                               statement], check=True, capture_output=True, text=True).stdout

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def main():
    workdir = tempfile.mkdtemp(prefix="berth-mdb-")
    db = MariaDB(workdir)
    berthd = None
    try:
        db.start()
        db.sql("CREATE DATABASE berth CHARACTER SET utf8mb4")
        port = free_port()
        config = os.path.join(workdir, "berth.toml")
        with open(config, "w") as f:
            f.write(f"""[server]
listen = "127.0.0.1:{port}"
threads = 32
[store]
kind = "mysql"
url = "mysql://root@127.0.0.1:{db.port}/berth"
pool_size = 4
connect_timeout = "2s"
statement_timeout = "5s"
[driver]
path = "{FAKE}"
instance_id = "berth-restart"
[cleanup]
enabled = false
[limits]
create_rate_per_minute = 0
max_sandboxes_per_owner = 0
""")
        log = open(os.path.join(workdir, "berthd.log"), "w")
        berthd = subprocess.Popen([BERTHD, "--config", config], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if request(port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)

        # Load: 4 workers create a sandbox and read it back, over and over, and record every answer.
        stop = threading.Event()
        answers = []  # (phase, status, code, retry_after, seconds)
        phase = ["before"]
        lock = threading.Lock()

        def worker():
            while not stop.is_set():
                t0 = time.monotonic()
                started_in = phase[0]
                status, body, retry_after = request(port, "POST", "/v1/sandboxes", {"labels": {"load": "1"}})
                code = body["error"]["code"] if body and "error" in body else None
                if status == 201:
                    status, body, retry_after = request(port, "GET", f"/v1/sandboxes/{body['id']}")
                    code = body["error"]["code"] if body and "error" in body else None
                with lock:
                    # A request that straddles a phase change (sent before the kill, answered after it) belongs to
                    # neither phase: only one sent and answered within a phase is judged by that phase's rule.
                    ended_in = phase[0]
                    answers.append((started_in if started_in == ended_in else "between", status, code, retry_after,
                                    time.monotonic() - t0))
                time.sleep(0.02)

        pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
        for _ in range(4):
            pool.submit(worker)
        time.sleep(2)
        phase[0] = "down"
        db.kill()
        time.sleep(4)
        phase[0] = "restarting"
        down_at = time.monotonic()
        db.start()
        phase[0] = "back"
        back_at = time.monotonic()
        # Recovery by itself: within 60 s (expected: the next call per pooled connection), a create succeeds again.
        recovered = None
        while time.monotonic() - back_at < 60:
            with lock:
                ok_after = [a for a in answers if a[0] == "back" and a[1] in (200, 201)]
            if ok_after:
                recovered = time.monotonic() - back_at
                break
            time.sleep(0.1)
        time.sleep(1)
        stop.set()
        pool.shutdown(wait=True)

        before_ok = [a for a in answers if a[0] == "before" and a[1] in (200, 201)]
        down = [a for a in answers if a[0] == "down"]
        check(len(before_ok) > 0, f"served before the outage ({len(before_ok)} ok)")
        check(len(down) > 0 and all(a[1] == 503 and a[2] == "store_unavailable" and a[3] for a in down),
              f"during the outage: 503 store_unavailable with Retry-After ({sorted({(a[1], a[2]) for a in down})})")
        check(all(a[4] < 60 for a in answers), f"no request hung (slowest {max(a[4] for a in answers):.1f} s)")
        check(recovered is not None, f"serves again without a restart of berthd (first success {recovered} s after "
                                     f"the database was back)")
        check(not any(a[1] >= 500 and a[1] != 503 for a in answers),
              f"no 5xx other than 503 ({sorted({a[1] for a in answers})})")
        # Nothing half-written: every sandbox has its workspace, and every create that answered 201 is readable.
        dangling = db.sql("SELECT COUNT(*) FROM berth.sandboxes x LEFT JOIN berth.workspaces w ON w.id = x.workspace_id"
                          " WHERE w.id IS NULL").strip()
        check(dangling == "0", f"no sandbox without its workspace ({dangling})")
        print(f"answers: {len(answers)}; during the outage: {len(down)}; recovery after restart: {recovered} s "
              f"(mariadbd took {back_at - down_at:.1f} s to start again)")
    finally:
        if berthd:
            berthd.terminate()
            try:
                berthd.wait(timeout=60)
            except subprocess.TimeoutExpired:
                berthd.kill()
        if db.proc and db.proc.poll() is None:
            db.kill()
        if failures:
            print("---- berthd log (tail) ----\n" + open(os.path.join(workdir, "berthd.log")).read()[-3000:])
        shutil.rmtree(workdir, ignore_errors=True)
    if failures:
        sys.exit(1)
    print("MariaDB restart under load: ok")


main()
