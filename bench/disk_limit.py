#!/usr/bin/env python3
"""Disk limits (issue 8, finding 5): what one disk measurement costs (driver session_stats with the ABI 1.2 disk
fields, from berthd's `disk.measured` debug events) and how fast an overrun is caught: after a 40 MiB write into a
20 MiB limit (background check after the exec), and for a writer that keeps writing inside one long exec (caught by
the cleanup pass, `[cleanup] interval` = INTERVAL seconds). Results: docs/BENCHMARKS.md, "Disk limits".
usage: bench/disk_limit.py BERTHD DRIVER_SO WORKDIR [INTERVAL]"""
import json, os, re, statistics, subprocess, sys, threading, time

import benchlib  # bench/benchlib.py: shared Engine API and berthd request helpers

berthd, driver, work = sys.argv[1:4]
interval = int(sys.argv[4]) if len(sys.argv) > 4 else 10
os.makedirs(work, exist_ok=True)
port = 19000 + (os.getpid() % 1000)
key, admin = "alice-key-0123456789abcdef", "admin-key-0123456789abcdef"
open(f"{work}/berth.toml", "w").write(f"""[server]
listen = "127.0.0.1:{port}"
[store]
path = "{work}/berth.db"
[log]
level = "debug"
[cleanup]
interval = "{interval}s"
[driver]
path = "{driver}"
[driver.settings]
[profiles.default]
image = "berth/python:3.11"
memory = "256MiB"
disk_limit_mb = 20
[auth.keys]
"{key}" = "alice"
[auth.admin_keys]
"{admin}" = "ops"
""")
logpath = f"{work}/berthd.log"
log = open(logpath, "wb")
proc = subprocess.Popen([berthd, "--config", f"{work}/berth.toml"], stdout=log, stderr=log)


def req(method, path, body=None, k=key, timeout=600):
    return benchlib.berthd_request(port, method, path, body, k, timeout)


def sh(sid, command, timeout=120):
    return req("POST", f"/v1/sandboxes/{sid}/shell/exec", {"command": command, "timeout": timeout})


def disk(sid):
    return json.loads(req("GET", f"/v1/sandboxes/{sid}")[1])


def measured_ms(since):
    """elapsed_ms of the disk.measured events logged after byte offset `since`."""
    text = open(logpath, errors="replace").read()[since:]
    return [int(m) for m in re.findall(r'disk\.measured.*?elapsed_ms[=":]+"?(\d+)', text)]


for _ in range(100):
    try:
        if req("GET", "/health")[0] == 200: break
    except Exception: time.sleep(0.2)

try:
    sid = json.loads(req("POST", "/v1/sandboxes", {})[1])["id"]
    assert sh(sid, "echo up")[0] == 200
    for label, setup in [("small workspace", "true"),
                         ("2,000 files + 10 MiB", "mkdir -p many && for i in $(seq 1 2000); do echo x > many/f$i; done; "
                                                  "head -c 10485760 /dev/zero > ten.bin")]:
        assert sh(sid, setup)[0] == 200
        time.sleep(1)
        since = os.path.getsize(logpath)
        for _ in range(10):
            assert req("POST", "/v1/admin/gc/run", k=admin)[0] == 200
        ms = measured_ms(since)
        print(f"stats call ({label}): n={len(ms)} median={statistics.median(ms)} ms max={max(ms)} ms")
    sh(sid, "rm -rf many ten.bin")
    assert req("POST", "/v1/admin/gc/run", k=admin)[0] == 200

    # An overrun inside one exec: caught by the background check that follows the exec.
    t0 = time.time()
    s, b = sh(sid, "head -c 41943040 /dev/zero > big.bin; echo rc=$?")
    t_exec = time.time()
    assert s == 200, b
    caught = None
    while time.time() - t_exec < 120:
        d = disk(sid)
        if d.get("disk") and d["disk"]["exceeded"] and d["session_id"] is None:
            caught = time.time()
            break
        time.sleep(0.05)
    print(f"40 MiB write: exec took {t_exec - t0:.2f} s; stopped {caught - t_exec:.2f} s after the exec returned"
          if caught else "40 MiB write: not caught within 120 s")
    assert req("DELETE", f"/v1/sandboxes/{sid}/filesystem/files?path=big.bin")[0] == 200

    # A writer that keeps going inside one exec: only the cleanup pass sees it while it runs.
    writer = ("python3 -c \"import time\nf=open('stream.bin','wb')\nt=time.time()\n"
              "while time.time()-t<100:\n  f.write(b'0'*262144); f.flush(); time.sleep(0.05)\n\"; echo rc=$?")
    t0 = time.time()
    s, b = sh(sid, writer, timeout=150)
    elapsed = time.time() - t0
    d = disk(sid)["disk"]
    print(f"streaming writer (~5 MiB/s, interval {interval} s): exec ended after {elapsed:.1f} s "
          f"(status {s}, {json.loads(b).get('exit_code') if s == 200 else b[:80]}); "
          f"workspace at the stop {d['workspace_bytes'] / 1048576:.1f} MiB, exceeded={d['exceeded']}")
    req("DELETE", f"/v1/sandboxes/{sid}")
finally:
    proc.terminate()
    proc.wait()
