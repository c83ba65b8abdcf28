#!/usr/bin/env python3
"""Latency of Berth on the Docker driver versus the raw Docker Engine API, measured in one run.

  bench/docker_latency.py [--build build] [--runs 15] [--image berth/python:3.11]

Starts the built berthd (docker driver, SQLite in a temp dir) on a free loopback port and measures, N times each:
  berth  cold:  POST /v1/sandboxes  ->  first POST .../python/exec print(1+2)   (includes the container start)
  berth  warm:  POST .../python/exec print(1+2) on a ready sandbox
  engine cold:  POST /containers/create + start + exec create/start python3 -c print(1+2) + exec inspect
  engine warm:  exec create/start/inspect of python3 -c print(1+2) on a running container
The engine runs use the same image and the same hardening (caps dropped, no network, limits) as Berth's sessions.
Prints a markdown table of medians and p90s (milliseconds). Only the Python 3 standard library is used.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import benchlib  # bench/benchlib.py: shared Engine API and berthd request helpers

DOCKER_SOCK = "/var/run/docker.sock"


def engine(method, path, body=None, raw=False):
    return benchlib.engine_call(DOCKER_SOCK, method, path, body, raw)


def engine_exec(cid, argv):
    ex = engine("POST", f"/containers/{cid}/exec",
                {"AttachStdout": True, "AttachStderr": True, "Cmd": argv, "User": "1000:1000"})
    out = engine("POST", f"/exec/{ex['Id']}/start", {"Detach": False, "Tty": False}, raw=True)
    code = engine("GET", f"/exec/{ex['Id']}/json")["ExitCode"]
    return out, code


def engine_cold(image):
    t0 = time.perf_counter()
    c = engine("POST", "/containers/create", {
        "Image": image, "Cmd": ["sleep", "infinity"], "User": "1000:1000", "WorkingDir": "/tmp",
        "NetworkDisabled": True,
        "HostConfig": {"Init": True, "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges"], "NetworkMode": "none",
                       "Memory": 512 << 20, "MemorySwap": 512 << 20, "PidsLimit": 256, "NanoCpus": 10**9}})
    engine("POST", f"/containers/{c['Id']}/start")
    out, code = engine_exec(c["Id"], ["python3", "-c", "print(1+2)"])
    elapsed = (time.perf_counter() - t0) * 1000
    assert code == 0 and b"3" in out, (code, out)
    return c["Id"], elapsed


def berth(port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        data = resp.read()
        return json.loads(data) if data else None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def summarize(name, samples):
    samples = sorted(samples)
    p90 = samples[min(len(samples) - 1, int(round(0.9 * (len(samples) - 1))))]
    return f"| {name} | {len(samples)} | {statistics.median(samples):.0f} | {p90:.0f} |"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--image", default="berth/python:3.11")
    args = ap.parse_args()

    berthd = os.path.join(args.build, "bin", "berthd")
    driver = os.path.abspath(os.path.join(args.build, "lib", "berth", "berth_driver_docker.so"))
    work = tempfile.mkdtemp(prefix="berth-bench-")
    port = free_port()
    with open(os.path.join(work, "berth.toml"), "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\n[store]\npath = "{work}/berth.db"\n'
                f'[driver]\npath = "{driver}"\ninstance_id = "berth-bench"\n'
                f'[profiles.default]\nimage = "{args.image}"\n[log]\nlevel = "warn"\n')
    proc = subprocess.Popen([berthd, "--config", os.path.join(work, "berth.toml")],
                            stderr=open(os.path.join(work, "berthd.log"), "w"))
    try:
        for _ in range(100):
            try:
                berth(port, "GET", "/health")
                break
            except OSError:
                time.sleep(0.1)
        results = {"berth_cold": [], "berth_warm": [], "engine_cold": [], "engine_warm": []}
        for i in range(args.runs):
            # Interleave the two sides so that machine noise hits both alike.
            t0 = time.perf_counter()
            sb = berth(port, "POST", "/v1/sandboxes", {})
            r = berth(port, "POST", f"/v1/sandboxes/{sb['id']}/python/exec", {"code": "print(1+2)"})
            results["berth_cold"].append((time.perf_counter() - t0) * 1000)
            assert r["output"] == "3\n", r
            for _ in range(3):
                t0 = time.perf_counter()
                r = berth(port, "POST", f"/v1/sandboxes/{sb['id']}/python/exec", {"code": "print(1+2)"})
                results["berth_warm"].append((time.perf_counter() - t0) * 1000)
                assert r["output"] == "3\n", r
            berth(port, "DELETE", f"/v1/sandboxes/{sb['id']}")

            cid, ms = engine_cold(args.image)
            results["engine_cold"].append(ms)
            for _ in range(3):
                t0 = time.perf_counter()
                out, code = engine_exec(cid, ["python3", "-c", "print(1+2)"])
                results["engine_warm"].append((time.perf_counter() - t0) * 1000)
                assert code == 0
            engine("DELETE", f"/containers/{cid}?force=true")
        print(f"berth docker latency, {args.runs} runs, image {args.image}, "
              f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, load {os.getloadavg()[0]:.2f}")
        print("| measurement | n | median ms | p90 ms |")
        print("|---|---|---|---|")
        print(summarize("Berth: create -> first python exec (cold)", results["berth_cold"]))
        print(summarize("Engine API: create+start -> first python exec (cold)", results["engine_cold"]))
        print(summarize("Berth: python exec on a ready sandbox", results["berth_warm"]))
        print(summarize("Engine API: python exec on a running container", results["engine_warm"]))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
