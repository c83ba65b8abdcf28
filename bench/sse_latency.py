#!/usr/bin/env python3
"""bench/sse_latency.py: issue 10's streaming latency, from a `print(..., flush=True)` inside the sandbox to its
Server-Sent Event at the client, with the floor measured in the same run.

  bench/sse_latency.py [--build build] [--engine docker|podman] [--lines 200] [--interval 0.05] [--image IMAGE]

The sandbox's program prints `time.time()` every --interval seconds (flushed), and the client stamps each `stdout`
event when its blank line arrives: latency = arrival - printed time (the container shares the host's clock). First
and last event (warm-up, end) are dropped. Baseline in the same run, interleaved by rounds: the same program as a
plain python3 subprocess on the host, its stdout a pipe read line by line (the floor of print -> reader with no
engine, agent or HTTP in between). Also prints the first-byte time: from sending the request to the first event.
Uses bench/run-all's Berthd; needs the engine and the sandbox image. Python standard library only.
"""
import argparse
import http.client
import json
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True
import benchlib  # noqa: E402  (after dont_write_bytecode) bench/benchlib.py

runall = benchlib.load_run_all()

PROGRAM = "import time\nfor i in range({lines}):\n    print(repr(time.time()), flush=True)\n    time.sleep({interval})\n"


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))] * 1000.0


def through_berthd(port, sandbox, code):
    """(latencies in s, first-event s) of one streamed python/exec."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = json.dumps({"code": code, "timeout": 300})
    t0 = time.time()
    conn.request("POST", f"/v1/sandboxes/{sandbox}/python/exec", body=body,
                 headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
    r = conn.getresponse()
    if r.status != 200 or not r.getheader("Content-Type", "").startswith("text/event-stream"):
        raise RuntimeError(f"python/exec: {r.status} {r.read()[:300]}")
    latencies, first, event, data, pending = [], None, None, "", ""
    while True:
        line = r.fp.readline()
        if not line:
            break
        line = line.decode().rstrip("\r\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif line == "":
            now = time.time()
            if event == "stdout":
                if first is None:
                    first = now - t0
                pending += json.loads(data)["data"]
                while "\n" in pending:  # a chunk may hold several lines, or part of one
                    stamp, pending = pending.split("\n", 1)
                    latencies.append(now - float(stamp))
            event, data = None, ""
    conn.close()
    return latencies[1:-1], first


def on_host(code):
    """Latencies of the same program as a host subprocess read through a pipe (the floor)."""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    latencies = []
    for line in p.stdout:
        latencies.append(time.time() - float(line))
    p.wait()
    return latencies[1:-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--engine", default="docker", choices=["docker", "podman"])
    ap.add_argument("--image", default="berth/python:3.11")
    ap.add_argument("--lines", type=int, default=200)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    code = PROGRAM.format(lines=args.lines, interval=args.interval)
    b = runall.Berthd(args.build, args.engine, args.image, "[cleanup]\nenabled = false\n")
    b.start()
    berth, host, firsts = [], [], []
    try:
        sandbox = b.create()
        runall.call(b.port, "POST", f"/v1/sandboxes/{sandbox}/python/exec", {"code": "print(1)"})  # warm
        for _ in range(args.rounds):
            lat, first = through_berthd(b.port, sandbox, code)
            berth += lat
            firsts.append(first)
            host += on_host(code)
    finally:
        b.cleanup()
    rows = [("print -> SSE event through berthd (" + args.engine + ")", berth),
            ("baseline: print -> pipe reader on the host", host)]
    print(f"{'path':55} {'n':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for name, s in rows:
        print(f"{name:55} {len(s):6d} {pct(s, 50):8.2f} {pct(s, 90):8.2f} {pct(s, 99):8.2f}")
    print(f"request sent -> first event (a cell in the sandbox's warm default context): median "
          f"{statistics.median(firsts) * 1000:.1f} ms over {len(firsts)} calls")


if __name__ == "__main__":
    main()
