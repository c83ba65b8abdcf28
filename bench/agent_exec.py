#!/usr/bin/env python3
"""Exec through berthd on the berth-agent path (issue 9, item 2) vs a raw Engine API exec on the same container, in
one run and interleaved: warm `shell/exec` (`echo hi`) and `python/exec` (`print(1)`), then cold create -> first
python exec. Results: docs/BENCHMARKS.md, "Exec through berthd and berth-agent".
usage: bench/agent_exec.py BERTHD DRIVER_SO ENGINE_SOCKET WORKDIR [RUNS] [COLD_RUNS]"""
import json, os, statistics, subprocess, sys, time

import benchlib  # bench/benchlib.py: shared Engine API and berthd request helpers

berthd, driver, engine_sock, work = sys.argv[1:5]
runs = int(sys.argv[5]) if len(sys.argv) > 5 else 200
cold_runs = int(sys.argv[6]) if len(sys.argv) > 6 else 10
os.makedirs(work, exist_ok=True)
port = 19000 + (os.getpid() % 1000)
key = "alice-key-0123456789abcdef"
open(f"{work}/berth.toml", "w").write(f"""[server]
listen = "127.0.0.1:{port}"
[store]
path = "{work}/berth.db"
[log]
level = "warn"
[driver]
path = "{driver}"
[driver.settings]
socket = "{engine_sock}"
[profiles.default]
image = "berth/python:3.11"
memory = "256MiB"
[auth.keys]
"{key}" = "alice"
""")
log = open(f"{work}/berthd.log", "wb")
proc = subprocess.Popen([berthd, "--config", f"{work}/berth.toml"], stdout=log, stderr=log)


def req(method, path, body=None):
    status, data = benchlib.berthd_request(port, method, path, body, key)
    return status, (json.loads(data) if data else None)


for _ in range(200):
    try:
        if benchlib.berthd_request(port, "GET", "/health")[0] == 200:
            break
    except OSError:
        time.sleep(0.05)


def berth_exec(sid, python, code):
    t0 = time.perf_counter()
    status, body = req("POST", f"/v1/sandboxes/{sid}/{'python' if python else 'shell'}/exec",
                       {"code" if python else "command": code, "timeout": 60})
    ms = (time.perf_counter() - t0) * 1000
    want = "1\n" if python else "hi\n"
    if status != 200 or body.get("output") != want:
        raise RuntimeError(f"exec failed: {status} {body}")
    # execution_time_ms: the driver's exec as the core timed it (whole ms), the rest of `ms` is berthd around it.
    inner[python].append(body.get("execution_time_ms", 0))
    return ms


inner = {False: [], True: []}


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
    return ms


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


results = {k: [] for k in ("berth shell/exec echo hi", "berth python/exec print(1)", "engine exec sh -c 'echo hi'",
                           "engine exec python3 -c 'print(1)'", "berth cold create -> first python exec")}
try:
    status, sb = req("POST", "/v1/sandboxes", {})
    sid = sb["id"]
    berth_exec(sid, False, "echo hi")  # starts the session
    containers = benchlib.engine_call(engine_sock, "GET", "/containers/json?filters=" +
                                      json.dumps({"label": [f"berth.sandbox={sid}"]}).replace(" ", ""))
    container = containers[0]["Id"]
    for _ in range(5):  # warm-up
        berth_exec(sid, True, "print(1)")
        engine_exec(container, ["/bin/sh", "-c", "echo hi"])
    for _ in range(runs):
        results["berth shell/exec echo hi"].append(berth_exec(sid, False, "echo hi"))
        results["engine exec sh -c 'echo hi'"].append(engine_exec(container, ["/bin/sh", "-c", "echo hi"]))
        results["berth python/exec print(1)"].append(berth_exec(sid, True, "print(1)"))
        results["engine exec python3 -c 'print(1)'"].append(engine_exec(container, ["python3", "-c", "print(1)"]))
    req("DELETE", f"/v1/sandboxes/{sid}")
    for _ in range(cold_runs):
        t0 = time.perf_counter()
        status, sb = req("POST", "/v1/sandboxes", {})
        berth_exec(sb["id"], True, "print(1)")
        results["berth cold create -> first python exec"].append((time.perf_counter() - t0) * 1000)
        req("DELETE", f"/v1/sandboxes/{sb['id']}")
finally:
    proc.terminate()
    proc.wait()

print(f"berth exec through berth-agent, {runs} warm runs interleaved, {cold_runs} cold, driver {os.path.basename(driver)}, "
      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.2f}")
print("| measurement | n | p50 ms | p90 ms | p99 ms |")
print("|---|---|---|---|---|")
for name, values in results.items():
    if values:
        print(f"| {name} | {len(values)} | {statistics.median(values):.1f} | {pct(values, 90):.1f} | {pct(values, 99):.1f} |")
for python, values in inner.items():
    if values:
        print(f"| of which the driver's exec ({'python' if python else 'shell'}, execution_time_ms) | {len(values)} | "
              f"{statistics.median(values):.1f} | {pct(values, 90):.1f} | {pct(values, 99):.1f} |")
