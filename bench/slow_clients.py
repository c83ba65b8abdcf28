#!/usr/bin/env python3
"""Fifty slow clients against one berthd (issue 8, finding 3): RSS, thread count and /health latency.

  bench/slow_clients.py BERTHD DRIVER_SO [--clients 50] [--threads 16] [--seconds 20] [--mode head|idle]

Starts BERTHD (fake driver or any other) on a free loopback port with `threads = N`, opens the clients (mode head:
each sends one byte of a request head per second and never finishes it; mode idle: connect and send nothing),
and after 5 s samples /proc/PID/status (VmRSS, Threads) and times 5 GET /health on fresh connections (30 s bound
each: "timeout" means unreachable). Prints one line of numbers per sample. Old berthd builds may refuse the newer
[server] keys; the script writes only listen/threads/store/driver.
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "Threads"):
                out[k] = v.strip()
    return out


def health(port, bound=30.0):
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=bound) as s:
            s.settimeout(bound)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = s.recv(64)
            if not data.startswith(b"HTTP/1.1 200"):
                return "error"
    except OSError:
        return "timeout"
    return f"{(time.monotonic() - t0) * 1000:.1f}ms"


def slow_client(port, stop, mode):
    head = b"POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return
    i = 0
    while not stop.is_set():
        if mode == "head":
            try:
                s.send(head[i % len(head):i % len(head) + 1])
            except OSError:
                break
            i += 1
        stop.wait(1.0)
    s.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("berthd")
    ap.add_argument("driver")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--mode", default="head", choices=["head", "idle"])
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="berth-slow-bench-")
    port = free_port()
    cfg = os.path.join(d, "berth.toml")
    with open(cfg, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\nthreads = {a.threads}\nwork_slots = 4\nwork_queue = 4\n'
                f'[store]\npath = "{d}/berth.db"\n[driver]\npath = "{a.driver}"\n'
                f'[profiles.default]\nimage = "berth/python:3.11"\n[log]\nfile = "{d}/berthd.log"\n')
    p = subprocess.Popen([a.berthd, "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if health(port, 1.0).endswith("ms"):
                break
            time.sleep(0.1)
        print(f"idle:     {status(p.pid)} health={health(port)}")
        stop = threading.Event()
        ts = [threading.Thread(target=slow_client, args=(port, stop, a.mode), daemon=True) for _ in range(a.clients)]
        for t in ts:
            t.start()
        time.sleep(5)
        end = time.monotonic() + a.seconds
        while time.monotonic() < end:
            lat = [health(port) for _ in range(5)]
            print(f"{a.clients} slow: {status(p.pid)} health={' '.join(lat)}", flush=True)
            time.sleep(2)
        stop.set()
    finally:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
