#!/usr/bin/env python3
"""Exec through berthd on the berth-agent path (issue 9, item 2) vs a raw Engine API exec on the same container, in
one run and interleaved: warm `shell/exec` (`echo hi`) and `python/exec` (`print(1)`), then cold create -> first
python exec. TRANSPORTS (comma-separated, default "socket") starts one berthd per agent transport of the driver
("socket": the unix socket in a bind-mounted host directory; "exec": every connection an Engine exec of the agent)
and interleaves them too. Each berthd exec is timed twice per round: on one keep-alive HTTP connection (what an SDK
or any pooled client does) and on a new connection per request (what `curl` or the CLI does). One more row per
round, after the same pause as the berthd rows: the in-sandbox floor, a python3 helper inside the first sandbox
timing its own spawn of `sh -c 'echo hi'` (benchlib.SpawnFloor): what that command costs there with no Berth code.
Results: docs/BENCHMARKS.md, "Exec through berthd and berth-agent".
usage: bench/agent_exec.py BERTHD DRIVER_SO ENGINE_SOCKET WORKDIR [RUNS] [COLD_RUNS] [TRANSPORTS]"""
import http.client, json, os, statistics, subprocess, sys, time

import benchlib  # bench/benchlib.py: shared Engine API and berthd request helpers

berthd, driver, engine_sock, work = sys.argv[1:5]
runs = int(sys.argv[5]) if len(sys.argv) > 5 else 200
cold_runs = int(sys.argv[6]) if len(sys.argv) > 6 else 10
transports = (sys.argv[7] if len(sys.argv) > 7 else "socket").split(",")
key = "alice-key-0123456789abcdef"
ports, procs = {}, []
for i, transport in enumerate(transports):
    tw = os.path.join(work, transport)
    os.makedirs(tw, exist_ok=True)
    ports[transport] = port = 19000 + (os.getpid() % 1000) * 4 + i
    open(f"{tw}/berth.toml", "w").write(f"""[server]
listen = "127.0.0.1:{port}"
[store]
path = "{tw}/berth.db"
[log]
level = "warn"
[driver]
path = "{driver}"
instance_id = "berth-bench-{transport}"
[driver.settings]
socket = "{engine_sock}"
agent_transport = "{transport}"
[profiles.default]
image = "berth/python:3.11"
memory = "256MiB"
[auth.keys]
"{key}" = "alice"
""")
    log = open(f"{tw}/berthd.log", "wb")
    procs.append(subprocess.Popen([berthd, "--config", f"{tw}/berth.toml"], stdout=log, stderr=log))
    for _ in range(200):
        try:
            if benchlib.berthd_request(port, "GET", "/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.05)


def req(method, path, body=None, transport=transports[0]):
    status, data = benchlib.berthd_request(ports[transport], method, path, body, key)
    return status, (json.loads(data) if data else None)


# The engine finishes an exec after its API calls returned (the exec process's teardown in containerd and runc): on
# two cores that work lands on whatever runs next and added about 3 ms to the berthd call after each Engine exec.
# The pause after an Engine exec (not timed) keeps the rows from measuring each other. BERTH_BENCH_SETTLE_MS=0: none.
SETTLE = float(os.environ.get("BERTH_BENCH_SETTLE_MS", "50")) / 1000

keepalive = {}  # transport -> its one keep-alive connection


def req_keepalive(method, path, body, transport):
    c = keepalive.get(transport)
    if c is None:
        c = keepalive[transport] = http.client.HTTPConnection("127.0.0.1", ports[transport], timeout=600)
    c.request(method, path, body=json.dumps(body),
              headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    return r.status, (json.loads(data) if data else None)


def berth_exec(sid, python, code, transport=transports[0], reuse=False):
    t0 = time.perf_counter()
    status, body = (req_keepalive if reuse else req)("POST", f"/v1/sandboxes/{sid}/{'python' if python else 'shell'}/exec",
                                                     {"code" if python else "command": code, "timeout": 60}, transport)
    ms = (time.perf_counter() - t0) * 1000
    want = "1\n" if python else "hi\n"
    if status != 200 or body.get("output") != want:
        raise RuntimeError(f"exec failed: {status} {body}")
    # execution_time_ms: the driver's exec as the core timed it (whole ms), the rest of `ms` is berthd around it.
    inner[(transport, python)].append(body.get("execution_time_ms", 0))
    return ms


inner = {(t, p): [] for t in transports for p in (False, True)}


def engine_exec(container, argv):
    """create + start (attached, demultiplexed by the engine) + inspect: what the Engine exec path costs."""
    t0 = time.perf_counter()
    e = benchlib.engine_call(engine_sock, "POST", f"/containers/{container}/exec",
                             {"Cmd": argv, "AttachStdout": True, "AttachStderr": True})
    benchlib.engine_call(engine_sock, "POST", f"/exec/{e['Id']}/start", {"Detach": False, "Tty": False}, raw=True)
    info = benchlib.engine_call(engine_sock, "GET", f"/exec/{e['Id']}/json")
    ms = (time.perf_counter() - t0) * 1000
    if info.get("ExitCode") != 0:
        raise RuntimeError(f"engine exec failed: {info}")
    time.sleep(SETTLE)
    return ms


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def name(what, transport):
    return what if len(transports) == 1 else f"{what} [{transport}]"


results = {}
for t in transports:
    results[name("berth shell/exec echo hi, keep-alive", t)] = []
    results[name("berth shell/exec echo hi, new connection", t)] = []
    results[name("berth python/exec print(1), keep-alive", t)] = []
    results[name("berth python/exec print(1), new connection", t)] = []
FLOOR_ROW = "in-sandbox floor: a process in the sandbox spawns sh -c 'echo hi' (no Berth code)"
results[FLOOR_ROW] = []
results["engine exec sh -c 'echo hi'"] = []
results["engine exec python3 -c 'print(1)'"] = []
for t in transports:
    results[name("berth cold create -> first python exec", t)] = []
try:
    sids, container = {}, None
    for t in transports:
        status, sb = req("POST", "/v1/sandboxes", {}, t)
        sids[t] = sb["id"]
        berth_exec(sids[t], False, "echo hi", t)  # starts the session
    containers = benchlib.engine_call(engine_sock, "GET", "/containers/json?filters=" +
                                      json.dumps({"label": [f"berth.sandbox={sids[transports[0]]}"]}).replace(" ", ""))
    container = containers[0]["Id"]
    # After the same idle time as the berthd rows (the pause after an Engine exec), what the sandbox itself pays for
    # the shell command: the floor under `shell/exec echo hi` on this machine.
    engine_cli = "podman" if "podman" in engine_sock else "docker"
    floor = benchlib.SpawnFloor(engine_cli, container)
    for _ in range(5):  # warm-up
        for t in transports:
            berth_exec(sids[t], True, "print(1)", t)
        engine_exec(container, ["/bin/sh", "-c", "echo hi"])
    for _ in range(runs):
        for t in transports:
            results[name("berth shell/exec echo hi, keep-alive", t)].append(berth_exec(sids[t], False, "echo hi", t, True))
            results[name("berth shell/exec echo hi, new connection", t)].append(berth_exec(sids[t], False, "echo hi", t))
        results["engine exec sh -c 'echo hi'"].append(engine_exec(container, ["/bin/sh", "-c", "echo hi"]))
        for t in transports:
            results[name("berth python/exec print(1), keep-alive", t)].append(berth_exec(sids[t], True, "print(1)", t,
                                                                                         True))
            results[name("berth python/exec print(1), new connection", t)].append(berth_exec(sids[t], True, "print(1)",
                                                                                             t))
        results["engine exec python3 -c 'print(1)'"].append(engine_exec(container, ["python3", "-c", "print(1)"]))
        results[FLOOR_ROW].append(floor.call())
        time.sleep(SETTLE)
    floor.close()
    for t in transports:
        req("DELETE", f"/v1/sandboxes/{sids[t]}", None, t)
    for _ in range(cold_runs):
        for t in transports:
            t0 = time.perf_counter()
            status, sb = req("POST", "/v1/sandboxes", {}, t)
            berth_exec(sb["id"], True, "print(1)", t)
            results[name("berth cold create -> first python exec", t)].append((time.perf_counter() - t0) * 1000)
            req("DELETE", f"/v1/sandboxes/{sb['id']}", None, t)
finally:
    for proc in procs:
        proc.terminate()
        proc.wait()

print(f"berth exec through berth-agent, {runs} warm runs interleaved, {cold_runs} cold, driver {os.path.basename(driver)}, "
      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.2f}")
print("| measurement | n | p50 ms | p90 ms | p99 ms |")
print("|---|---|---|---|---|")
for name, values in results.items():
    if values:
        print(f"| {name} | {len(values)} | {statistics.median(values):.1f} | {pct(values, 90):.1f} | {pct(values, 99):.1f} |")
for (transport, python), values in inner.items():
    if values:
        print(f"| of which the driver's exec ({'python' if python else 'shell'}, execution_time_ms)"
              f"{'' if len(transports) == 1 else ' [' + transport + ']'} | {len(values)} | "
              f"{statistics.median(values):.1f} | {pct(values, 90):.1f} | {pct(values, 99):.1f} |")
