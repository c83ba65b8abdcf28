#!/usr/bin/env python3
"""A 100,000-entry directory (issue 8, finding 4): berthd RSS (VmRSS/VmHWM), threads and /health latency while
one and then three listings run. MODE old lists in one request (berthd builds before paging); new lists page by page.
Results: docs/BENCHMARKS.md, "Memory and slow clients".
usage: bench/big_directory.py BERTHD DRIVER_SO MODE(old|new) WORKDIR"""
import json, os, subprocess, sys, threading, time, urllib.parse, re, statistics

import benchlib  # bench/benchlib.py: shared Engine API and berthd request helpers

berthd, driver, mode, work = sys.argv[1:5]
os.makedirs(work, exist_ok=True)
port = 18000 + (os.getpid() % 1000)
key = "alice-key-0123456789abcdef"
open(f"{work}/berth.toml", "w").write(f"""[server]
listen = "127.0.0.1:{port}"
threads = 64
work_slots = 16
work_queue = 32
[store]
path = "{work}/berth.db"
[driver]
path = "{driver}"
[driver.settings]
[profiles.default]
image = "berth/python:3.11"
memory = "256MiB"
pids = 128
[auth.keys]
"{key}" = "alice"
""")
log = open(f"{work}/berthd.log", "ab")
proc = subprocess.Popen([berthd, "--config", f"{work}/berth.toml"], stdout=log, stderr=log)

def req(method, path, body=None, timeout=600):
    return benchlib.berthd_request(port, method, path, body, key, timeout)

for _ in range(100):
    try:
        if req("GET", "/health")[0] == 200: break
    except Exception: time.sleep(0.2)

def status():
    d = {}
    for line in open(f"/proc/{proc.pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "Threads"): d[k] = int(v.split()[0])
    return d

s, b = req("POST", "/v1/sandboxes", {})
sid = json.loads(b)["id"]
t0 = time.time()
s, b = req("POST", f"/v1/sandboxes/{sid}/shell/exec", {"command": "python3 -c \"import os; os.makedirs('big'); [open('big/%d' % i, 'w').close() for i in range(100000)]\"", "timeout": 300})
assert s == 200, b
print(f"created 100000 entries in {time.time()-t0:.1f}s")

samples = {"rss": [], "threads": [], "health_ms": []}
stop = threading.Event()
def sampler():
    while not stop.is_set():
        st = status(); samples["rss"].append(st["VmRSS"]); samples["threads"].append(st["Threads"])
        t = time.time()
        try:
            req("GET", "/health", timeout=120)
            samples["health_ms"].append((time.time() - t) * 1000)
        except Exception:
            samples["health_ms"].append(float("inf"))
        time.sleep(0.1)

def list_all():
    names, pages, nbytes = 0, 0, 0
    cursor = None
    while True:
        q = f"/v1/sandboxes/{sid}/filesystem/directories?path=big"
        if cursor: q += "&cursor=" + urllib.parse.quote(cursor, safe="")
        s, b = req("GET", q)
        assert s == 200, b[:300]
        j = json.loads(b); pages += 1; nbytes += len(b); names += len(j["entries"])
        cursor = j.get("next_cursor") if mode == "new" else None
        if not cursor: return names, pages, nbytes

def run(n):
    samples["rss"].clear(); samples["threads"].clear(); samples["health_ms"].clear()
    base = status()
    stop.clear(); th = threading.Thread(target=sampler); th.start()
    t = time.time(); results = [None] * n
    ws = [threading.Thread(target=lambda i=i: results.__setitem__(i, list_all())) for i in range(n)]
    [w.start() for w in ws]; [w.join() for w in ws]
    el = time.time() - t
    time.sleep(1.0); stop.set(); th.join()
    after = status()
    h = sorted(samples["health_ms"])
    print(f"{mode} x{n}: {el:.1f}s, results (names,pages,bytes)={results[0]}, VmRSS before {base['VmRSS']/1024:.1f} MiB, "
          f"peak sampled {max(samples['rss'])/1024:.1f} MiB, VmHWM {after['VmHWM']/1024:.1f} MiB, after {after['VmRSS']/1024:.1f} MiB, "
          f"threads max {max(samples['threads'])} (before {base['Threads']}), /health p50 {h[len(h)//2]:.1f} ms max {h[-1]:.1f} ms (n={len(h)})")

run(1)
run(3)
req("DELETE", f"/v1/sandboxes/{sid}")
proc.terminate(); proc.wait(30)
