#!/usr/bin/env python3
"""One berthd per node of the three-node MariaDB Galera cluster of scripts/galera, on one fresh database
(berth_galera_<scenario>_<pid>, created and dropped through node 1). Run through scripts/require-service galera.

  galera_cluster.py instances BERTHD DOCKER_DRIVER   the three berthd on the one Docker Engine (a shared engine is
      what makes "exactly one container" meaningful: the fake driver keeps its containers inside each process).
      A create with one `key` split across the three -> one sandbox; an Idempotency-Key replayed on the other two
      nodes -> the same sandbox; concurrent python/exec on one idle sandbox through all three -> every exec runs,
      exactly one session and one container.
  galera_cluster.py outage BERTHD FAKE   the fake driver (the point is the store: no engine in the way). Load on
      all three; node 3's mariadbd is killed (SIGKILL): the instances on nodes 1 and 2 serve again within a bounded
      settle and then answer every request; node 3's instance answers 503 store_unavailable with Retry-After, never
      hangs; node 3 restarts, rejoins by IST, and its instance serves again by itself. Afterwards the three nodes
      hold the same rows, none dangling.

Both print the number of conflicts the stores retried (`store.retry` lines in the berthd logs)."""
import concurrent.futures
import faulthandler
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

from berthtest import check, failures, free_port
from berthtest import request_full as request

MODE, BERTHD, DRIVER = sys.argv[1], sys.argv[2], sys.argv[3]
GALERA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "galera")
USER = os.environ.get("BERTH_TEST_GALERA_USER", "berth:berth")
PORTS = [int(p) for p in os.environ.get("BERTH_TEST_GALERA_PORTS", "3311,3312,3313").split(",")]
DOCKER_SOCKET = os.environ.get("DOCKER_SOCKET", "/var/run/docker.sock")
DB = f"berth_galera_{MODE}_{os.getpid()}"
NAMES = [f"berth-galera-{MODE}-{i + 1}" for i in range(len(PORTS))]
# Below the ctest TIMEOUT (420 s): past it the watchdog prints where every thread is and what the cluster and the
# three berthd logged, then fails the test, so that a hang on a CI machine is diagnosed from its output alone.
WATCHDOG_S = float(os.environ.get("BERTH_TEST_WATCHDOG", "330"))
T0 = time.monotonic()
WORKDIR = [None]
PROCS = []  # the berthd processes, for the watchdog to stop


def progress(what):
    """One flushed line with the seconds since the start: where the test was when it stopped is in its output."""
    print(f"[{time.monotonic() - T0:6.1f} s] {what}", flush=True)


def galera(*args, timeout=240):
    """scripts/galera with a bound; its output goes to ours (it says what it starts and waits for)."""
    progress("galera " + " ".join(args))
    subprocess.run([GALERA, *args], check=True, timeout=timeout)
    progress("galera " + " ".join(args) + ": done")


def diagnose(why):
    """What a hang or a failure needs: node states, the tail of each node's error log and of each berthd log."""
    print(f"---- diagnosis: {why} ----", flush=True)
    base = os.environ.get("BERTH_GALERA_DIR", "/var/lib/berth-galera")
    for node in range(1, len(PORTS) + 1):
        try:
            state = subprocess.run([GALERA, "sql", str(node), "SHOW GLOBAL STATUS WHERE Variable_name IN "
                                    "('wsrep_local_state_comment','wsrep_cluster_size','wsrep_cluster_status')"],
                                   capture_output=True, text=True, timeout=10).stdout.replace("\n", "; ")
        except subprocess.TimeoutExpired:
            state = "(no answer in 10 s)"
        print(f"node {node}: {state}", flush=True)
        path = os.path.join(base, f"node{node}", "error.log")
        if os.path.exists(path):
            print(f"---- node {node} error.log (tail) ----\n" + open(path, errors="replace").read()[-2500:], flush=True)
    for name in NAMES:
        path = os.path.join(WORKDIR[0] or "/nonexistent", f"{name}.log")
        if os.path.exists(path):
            print(f"---- {name} log (tail) ----\n" + open(path, errors="replace").read()[-3000:], flush=True)


def watchdog():
    faulthandler.dump_traceback(all_threads=True)
    diagnose(f"still running after {WATCHDOG_S:.0f} s")
    for p in PROCS:
        p.kill()
    try:  # never leave the shared cluster short of a node (start starts only the nodes that do not answer)
        subprocess.run([GALERA, "start"], timeout=60)
    except subprocess.TimeoutExpired:
        print("galera start: no answer in 60 s", flush=True)
    sys.stdout.flush()
    os._exit(1)


def sql(node, statement):
    """One statement as root over node `node`'s socket (1-based); its tab-separated output. The read waits for
    every write the cluster has committed (wsrep_sync_wait), so nodes are compared, not their replication lag."""
    return subprocess.run([GALERA, "sql", str(node), "SET SESSION wsrep_sync_wait = 1; " + statement], check=True,
                          capture_output=True, text=True, timeout=120).stdout


def docker(method, path):
    conn = http.client.HTTPConnection("docker", timeout=60)
    conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.sock.connect(DOCKER_SOCKET)
    conn.request(method, "/v1.41" + path)
    data = conn.getresponse().read()
    return json.loads(data) if data else None


def docker_containers(label):
    filters = urllib.parse.quote(json.dumps({"label": [label]}))
    return [c["Id"] for c in docker("GET", f"/containers/json?all=true&filters={filters}")]


def start_berthd(workdir, index):
    """berthd number `index` on node index+1: (process, port)."""
    name = NAMES[index]
    port = free_port()
    driver = f'path = "{DRIVER}"\ninstance_id = "{name}"\n'
    if MODE == "instances":
        driver += (f'[driver.settings]\nsocket = "{DOCKER_SOCKET}"\n'
                   '[profiles.default]\nimage = "berth/python:3.11"\nmemory = "256MiB"\npids = 128\ncpus = 1.0\n')
    config = os.path.join(workdir, f"{name}.toml")
    with open(config, "w") as f:
        f.write(f"""[server]
listen = "127.0.0.1:{port}"
threads = 32
[store]
kind = "mysql"
url = "mysql://{USER}@127.0.0.1:{PORTS[index]}/{DB}"
pool_size = 8
connect_timeout = "2s"
statement_timeout = "10s"
[cleanup]
enabled = false
[limits]
create_rate_per_minute = 0
max_sandboxes_per_owner = 0
[driver]
{driver}""")
    log = open(os.path.join(workdir, f"{name}.log"), "w")
    proc = subprocess.Popen([BERTHD, "--config", config], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if request(port, "GET", "/health", timeout=10)[0] == 200:
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"berthd {name} did not come up; log: {open(log.name).read()[-2000:]}")


def retried_conflicts(workdir):
    """(total, {op: count}) of the `store.retry` lines in the three berthd logs."""
    ops = {}
    for name in NAMES:
        path = os.path.join(workdir, f"{name}.log")
        if os.path.exists(path):
            for line in open(path, errors="replace"):
                if " store.retry " in line:
                    op = line.split(" op=", 1)[1].split(" ", 1)[0]
                    ops[op] = ops.get(op, 0) + 1
    return sum(ops.values()), ops


def unavailable_lines(workdir, names):
    """The log lines of `names` that explain a 503 (what the store reported), for a failure's diagnosis."""
    out = []
    for name in names:
        path = os.path.join(workdir, f"{name}.log")
        out += [f"{name}: {line.rstrip()}" for line in open(path, errors="replace")
                if "store_unavailable" in line or "unavailable" in line.lower() and "store" in line]
    return out


def instances(ports, pool):
    """Keys, Idempotency-Key and session CAS across the three nodes, on one Docker Engine."""
    n = len(ports)
    created = []
    # 30 concurrent creates with one key, spread over the instances: one sandbox.
    results = list(pool.map(lambda i: request(ports[i % n], "POST", "/v1/sandboxes", {"key": "galera-key"}),
                            range(30)))
    statuses = sorted({r[0] for r in results})
    ids = {r[1]["id"] for r in results if r[0] in (200, 201)}
    created += ids
    check(statuses == [200, 201] and len(ids) == 1,
          f"30 creates with one key over 3 nodes: one sandbox (statuses {statuses}, ids {len(ids)})")
    for node in range(1, n + 1):
        live = sql(node, f"SELECT COUNT(*) FROM {DB}.sandboxes WHERE `key` = 'galera-key' AND deleted_at IS NULL")
        check(live.strip() == "1", f"node {node}: one live row for the key ({live.strip()})")

    # An Idempotency-Key replayed on the two other nodes: the same sandbox.
    answers = [request(p, "POST", "/v1/sandboxes", {}, {"Idempotency-Key": "idem-galera"}) for p in ports]
    ids = {a[1]["id"] for a in answers if a[0] == 201}
    created += ids
    check(all(a[0] == 201 for a in answers) and len(ids) == 1,
          f"Idempotency-Key replayed on the other nodes: same sandbox ({[a[0] for a in answers]}, ids {len(ids)})")

    # 60 concurrent python/exec on one idle sandbox through all three: one session, one container.
    _, sb, _ = request(ports[0], "POST", "/v1/sandboxes", {})
    sid = sb["id"]
    created.append(sid)
    execs = list(pool.map(lambda i: request(ports[i % n], "POST", f"/v1/sandboxes/{sid}/python/exec",
                                             {"code": "print(6*7)"}), range(60)))
    ok = [b for st, b, _ in execs if st == 200 and b.get("output", "").strip() == "42"]
    codes = sorted({st for st, _, _ in execs})
    check(len(ok) == 60, f"60 execs through 3 nodes all ran ({len(ok)} printed 42; {codes})")
    sessions = sql(1, f"SELECT COUNT(*) FROM {DB}.sessions WHERE sandbox_id = '{sid}'").strip()
    check(sessions == "1", f"exactly one session for the sandbox ({sessions})")
    if sessions != "1":
        print(sql(1, f"SELECT id, state, handle, LEFT(error, 300), created_at FROM {DB}.sessions"
                     f" WHERE sandbox_id = '{sid}'"))
    containers = docker_containers(f"berth.sandbox={sid}")
    check(len(containers) == 1, f"exactly one container for the sandbox ({len(containers)})")

    # Created on node 1, deleted through node 3, gone on node 2.
    deleted = [request(ports[-1], "DELETE", f"/v1/sandboxes/{s}")[0] for s in sorted(set(created))]
    check(all(st in (200, 204) for st in deleted), f"deleted through node 3 ({deleted})")
    gone = [request(ports[1], "GET", f"/v1/sandboxes/{s}")[0] for s in sorted(set(created))]
    check(all(st == 404 for st in gone), f"gone on node 2 ({gone})")


def outage(ports, workdir):
    """Node 3 killed under load on all three instances, then restarted."""
    stop = threading.Event()
    lock = threading.Lock()
    phase = ["before"]
    answers = []  # (instance index, phase, status, error code, retry_after, seconds)

    def cycle(i, port):
        """Create, exec, read, delete; stops at the first non-2xx answer. Records every answer."""
        steps = [("POST", "/v1/sandboxes", {"labels": {"load": "1"}})]
        sid = None
        for step in range(4):
            t0 = time.monotonic()
            started_in = phase[0]
            if step == 0:
                method, path, body = steps[0]
            elif step == 1:
                method, path, body = "POST", f"/v1/sandboxes/{sid}/python/exec", {"code": "print(1)"}
            elif step == 2:
                method, path, body = "GET", f"/v1/sandboxes/{sid}", None
            else:
                method, path, body = "DELETE", f"/v1/sandboxes/{sid}", None
            try:
                status, parsed, retry_after = request(port, method, path, body, timeout=60)
            except OSError:  # a timeout: a hang
                status, parsed, retry_after = 0, None, None
            error = parsed.get("error") if isinstance(parsed, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            with lock:
                # Judged by a phase only if sent and answered within it (as in mariadb_restart.py).
                ended_in = phase[0]
                answers.append((i, started_in if started_in == ended_in else "between", status, code, retry_after,
                                time.monotonic() - t0, method + " " + path.split("/")[-1]))
            if status not in (200, 201, 204):
                return
            if step == 0:
                sid = parsed["id"]

    def worker(i, port):
        while not stop.is_set():
            cycle(i, port)
            time.sleep(0.01)

    def first_success(instances_, in_phase, bound):
        """Seconds until every one of `instances_` answered a 2xx in `in_phase`, or None after `bound` s."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < bound:
            with lock:
                done = {a[0] for a in answers if a[1] == in_phase and a[2] in (200, 201, 204)}
            if set(instances_) <= done:
                return time.monotonic() - t0
            time.sleep(0.05)
        return None

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2 * len(ports))
    workers = [pool.submit(worker, i, port) for i, port in enumerate(ports) for _ in range(2)]
    survivors = list(range(len(ports) - 1))
    down_node = len(ports)
    log = os.path.join(os.environ.get("BERTH_GALERA_DIR", "/var/lib/berth-galera"), f"node{down_node}", "error.log")
    try:
        time.sleep(3)
        phase[0] = "killing"
        galera("kill-node", str(down_node))
        killed_at = time.monotonic()
        phase[0] = "down"
        # The survivors serve again once the cluster has evicted the node (expected: a few seconds).
        settle = first_success(survivors, "down", 60)
        progress(f"nodes 1-2 settled: {settle}")
        phase[0] = "settled"
        time.sleep(4)
        phase[0] = "restarting"
        log_offset = os.path.getsize(log)
        down_for = time.monotonic() - killed_at
        galera("start-node", str(down_node))
        phase[0] = "back"
        recovered = first_success([down_node - 1], "back", 60)
        progress(f"node 3's instance recovered: {recovered}")
        phase[0] = "recovered"
        time.sleep(3)
    finally:
        stop.set()
        progress("stopping the load")
        pool.shutdown(wait=True)
        progress(f"load stopped: {len(answers)} answers")
        if phase[0] in ("killing", "down", "settled", "restarting"):
            galera("start-node", str(down_node))  # never leave the shared cluster short of a node
    for w in workers:
        w.result()  # a worker that crashed is a bug of this test: raise it

    def judged(pred):
        return [a for a in answers if pred(a)]

    before = judged(lambda a: a[1] == "before")
    check(before and all(a[2] in (200, 201, 204) for a in before),
          f"before the kill: every request served ({len(before)}; {sorted({a[2] for a in before})})")
    check(settle is not None, f"nodes 1 and 2: serving again {settle and round(settle, 1)} s after the kill "
                              f"(bound 60 s)")
    unsettled = judged(lambda a: a[0] in survivors and a[1] == "down")
    check(all(a[2] in (200, 201, 204) or (a[2] == 503 and a[3] == "store_unavailable") for a in unsettled),
          f"nodes 1 and 2 while the cluster settles: 2xx or 503 store_unavailable "
          f"({sorted({(a[2], a[3]) for a in unsettled}, key=str)})")
    settled = judged(lambda a: a[0] in survivors and a[1] in ("settled", "restarting"))
    if any(a[2] not in (200, 201, 204) for a in settled):
        print("  not served:", [a for a in settled if a[2] not in (200, 201, 204)][:10])
        print("\n".join(unavailable_lines(workdir, NAMES[:-1])[-20:]))
    check(settled and all(a[2] in (200, 201, 204) for a in settled),
          f"nodes 1 and 2 after the settle, node 3 down: 100 % served ({len(settled)} requests; "
          f"{sorted({a[2] for a in settled})})")
    dead = judged(lambda a: a[0] == down_node - 1 and a[1] in ("down", "settled"))
    check(dead and all(a[2] == 503 and a[3] == "store_unavailable" and a[4] for a in dead),
          f"node 3's instance while its node is down: 503 store_unavailable with Retry-After ({len(dead)} requests; "
          f"{sorted({(a[2], a[3]) for a in dead}, key=str)})")
    check(all(a[2] != 0 for a in answers), f"no request hung (slowest {max(a[5] for a in answers):.1f} s)")
    check(recovered is not None, f"node 3's instance serves again by itself, {recovered and round(recovered, 1)} s "
                                 f"after its node rejoined (bound 60 s)")
    after = judged(lambda a: a[1] == "recovered")
    check(after and all(a[2] in (200, 201, 204) for a in after),
          f"after the rejoin: all three serve every request ({len(after)}; {sorted({a[2] for a in after})})")
    with open(log, errors="replace") as f:
        f.seek(log_offset)
        rejoin = f.read()
    check("IST received" in rejoin and "rsync IST completed on joiner" in rejoin,
          "node 3 rejoined by IST (incremental), not a full SST")
    check(not any(a[2] >= 500 and a[2] != 503 for a in answers), f"no 5xx other than 503 "
                                                                  f"({sorted({a[2] for a in answers})})")

    # Nothing half-written, and the three nodes agree.
    counts = []
    for node in range(1, len(ports) + 1):
        counts.append(sql(node, f"SELECT (SELECT COUNT(*) FROM {DB}.sandboxes), (SELECT COUNT(*) FROM {DB}.sessions),"
                                f" (SELECT COUNT(*) FROM {DB}.workspaces)").strip())
    check(len(set(counts)) == 1, f"the three nodes hold the same rows ({counts})")
    dangling = sql(1, f"SELECT (SELECT COUNT(*) FROM {DB}.sessions s LEFT JOIN {DB}.sandboxes x ON x.id = s.sandbox_id"
                      f" WHERE x.id IS NULL) + (SELECT COUNT(*) FROM {DB}.sandboxes x LEFT JOIN {DB}.workspaces w"
                      f" ON w.id = x.workspace_id WHERE w.id IS NULL)").strip()
    check(dangling == "0", f"no dangling rows ({dangling})")
    print(f"outage: {len(answers)} answers; nodes 1-2 settled {settle and round(settle, 1)} s after the kill; node 3 "
          f"down {down_for:.1f} s; its instance recovered {recovered and round(recovered, 1)} s after the rejoin")


def main():
    timer = threading.Timer(WATCHDOG_S, watchdog)
    timer.daemon = True
    timer.start()
    workdir = tempfile.mkdtemp(prefix="berth-galera-")
    WORKDIR[0] = workdir
    progress(f"logs in {workdir}")
    sql(1, f"DROP DATABASE IF EXISTS {DB}")
    sql(1, f"CREATE DATABASE {DB} CHARACTER SET utf8mb4")
    procs = PROCS
    try:
        ports = []
        for i in range(len(PORTS)):
            proc, port = start_berthd(workdir, i)
            progress(f"berthd {NAMES[i]} serves on {port}")
            procs.append(proc)
            ports.append(port)
        if MODE == "instances":
            with concurrent.futures.ThreadPoolExecutor(max_workers=60) as pool:
                instances(ports, pool)
        else:
            outage(ports, workdir)
        total, ops = retried_conflicts(workdir)
        print(f"galera {MODE}: {total} conflicts retried (store.retry lines in the berthd logs; by op: {ops})")
    finally:
        progress("stopping the three berthd")
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        if MODE == "instances":
            for name in NAMES:
                for container in docker_containers(f"berth.instance={name}"):
                    docker("DELETE", f"/containers/{container}?force=true&v=true")
        if failures:
            diagnose(f"{len(failures)} check(s) failed")
        sql(1, f"DROP DATABASE IF EXISTS {DB}")
        if not os.environ.get("BERTH_TEST_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print(f"galera {MODE}: ok")


main()
