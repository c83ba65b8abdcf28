#!/usr/bin/env python3
"""A real Prometheus scrapes a real berthd (fake driver) on loopback; values queried back must match berthd's own.

  prometheus_scrape.py --mode open|bearer BERTHD FAKE_DRIVER

open:   berthd's /metrics is open; Prometheus scrapes it every second.
bearer: [metrics] bearer_token is set; job "berth" scrapes with `authorization: {credentials_file: ...}`, job
        "berth-no-token" scrapes the same target without: Prometheus must report it down (berthd answers 401).
Steps: start berthd and Prometheus (--storage.tsdb.path in a temp dir), wait for both to answer, drive requests,
wait until berthd has logged every one (it counts a request just before its access line), wait for a scrape that
started after that, then query Prometheus's HTTP API once and compare with berthd's own /metrics.
Exit 0 on success, 1 with a reason otherwise. Only the Python 3 standard library is used; PROMETHEUS names the binary.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

DEADLINE_S = 60  # generous bound for things expected within a few seconds (scrape interval is 1 s)
TOKEN = "scrape-token-5f0c1d2e3a4b"


def fail(why):
    print("prometheus_scrape: FAIL: " + why, file=sys.stderr)
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url, method="GET", body=None, headers=None):
    """(status, headers, body text); HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=body.encode() if body is not None else None, method=method,
                                 headers=headers or {})
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def wait_for(what, check):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ValueError):
            pass
        time.sleep(0.1)
    fail(f"{what} did not happen within {DEADLINE_S} s")


def sample(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line[len(series) + 1:])
    return None


def rfc3339(ts):
    """Prometheus's lastScrape (nanoseconds, 'Z' or an offset) as seconds since the epoch."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", ts)
    if not m:
        raise ValueError(ts)
    base = datetime.datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + (float("0." + m.group(2)) if m.group(2) else 0.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["open", "bearer"], required=True)
    ap.add_argument("berthd")
    ap.add_argument("driver")
    args = ap.parse_args()
    prometheus = os.environ.get("PROMETHEUS") or shutil.which("prometheus")
    if not prometheus:
        fail("no prometheus binary (Debian package 'prometheus'; scripts/install-deps --with-engines)")

    tmp = tempfile.mkdtemp(prefix="berth-prom-")
    procs = []
    try:
        berth_port, prom_port = free_port(), free_port()
        token_file = os.path.join(tmp, "token")
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        metrics_cfg = f'[metrics]\nbearer_token_file = "{token_file}"\n' if args.mode == "bearer" else ""
        with open(os.path.join(tmp, "berth.toml"), "w") as f:
            f.write(f'[server]\nlisten = "127.0.0.1:{berth_port}"\n[store]\npath = "{tmp}/berth.db"\n'
                    f'[driver]\npath = "{args.driver}"\n{metrics_cfg}')
        berth_log = os.path.join(tmp, "berthd.log")
        procs.append(subprocess.Popen([args.berthd, "--config", os.path.join(tmp, "berth.toml")],
                                      stdout=open(berth_log, "w"), stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{berth_port}"
        wait_for("berthd answering /health", lambda: http(base + "/health")[0] == 200)

        auth = f"    authorization:\n      type: Bearer\n      credentials_file: {token_file}\n"
        jobs = (f"  - job_name: berth\n    static_configs:\n      - targets: ['127.0.0.1:{berth_port}']\n"
                + (auth if args.mode == "bearer" else ""))
        if args.mode == "bearer":
            jobs += f"  - job_name: berth-no-token\n    static_configs:\n      - targets: ['127.0.0.1:{berth_port}']\n"
        with open(os.path.join(tmp, "prometheus.yml"), "w") as f:
            f.write(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}")
        prom_log = os.path.join(tmp, "prometheus.log")
        procs.append(subprocess.Popen([prometheus, "--config.file=" + os.path.join(tmp, "prometheus.yml"),
                                       "--storage.tsdb.path=" + os.path.join(tmp, "data"),
                                       f"--web.listen-address=127.0.0.1:{prom_port}"],
                                      stdout=open(prom_log, "w"), stderr=subprocess.STDOUT))
        prom = f"http://127.0.0.1:{prom_port}"
        wait_for("Prometheus ready", lambda: http(prom + "/-/ready")[0] == 200)

        def query(expr):
            status, _, body = http(prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
            if status != 200:
                fail(f"query {expr}: HTTP {status}: {body[:300]}")
            doc = json.loads(body)
            if doc.get("status") != "success":
                fail(f"query {expr}: {body[:300]}")
            return doc["data"]["result"]

        # Traffic: 7 profile listings, one sandbox, 2 python execs (one failing), and a miss.
        ids = []
        for _ in range(7):
            status, headers, _ = http(base + "/v1/profiles")
            if status != 200:
                fail(f"GET /v1/profiles: {status}")
            ids.append(headers["X-Request-Id"])
        status, headers, body = http(base + "/v1/sandboxes", "POST", "{}")
        if status != 201:
            fail(f"POST /v1/sandboxes: {status} {body}")
        ids.append(headers["X-Request-Id"])
        sandbox = json.loads(body)["id"]
        for code in ("print(1)", "raise SystemExit(2)"):
            status, headers, body = http(base + f"/v1/sandboxes/{sandbox}/python/exec", "POST",
                                         json.dumps({"code": code}))
            if status != 200:
                fail(f"exec: {status} {body}")
            ids.append(headers["X-Request-Id"])
        ids.append(http(base + "/no/such/route")[1]["X-Request-Id"])

        def all_logged():
            with open(berth_log) as f:
                text = f.read()
            return all(f"http.access request_id={i} method=" in text for i in ids)
        wait_for("berthd logging every request", all_logged)
        traffic_done = time.time()

        def scraped_after(job):
            status, _, body = http(prom + "/api/v1/targets")
            for t in json.loads(body)["data"]["activeTargets"]:
                if t["labels"].get("job") == job and t.get("lastScrape", "").startswith("2"):
                    if rfc3339(t["lastScrape"]) > traffic_done + 0.001:
                        return t
            return None
        wait_for("a scrape by job berth after the traffic", lambda: scraped_after("berth") is not None)
        target = scraped_after("berth")
        if target["health"] != "up":
            fail(f"target down: {target.get('lastError')}")

        headers = {"Authorization": "Bearer " + TOKEN} if args.mode == "bearer" else {}
        own = http(base + "/metrics", headers=headers)[2]
        checks = [
            ('berth_http_requests_total{method="GET",route="/v1/profiles",status="200"}', 7),
            ('berth_http_requests_total{method="POST",route="/v1/sandboxes",status="201"}', 1),
            ('berth_http_requests_total{method="GET",route="unmatched",status="404"}', 1),
            ('berth_exec_total{kind="python",outcome="success"}', 1),
            ('berth_exec_total{kind="python",outcome="nonzero_exit"}', 1),
        ]
        for series, expected in checks:
            mine = sample(own, series)
            if mine != expected:
                fail(f"berthd's own {series} is {mine}, expected {expected}")
            selector = series.replace("{", '{job="berth",', 1) if "{" in series else series + '{job="berth"}'
            result = query(selector)
            if len(result) != 1:
                fail(f"Prometheus returned {len(result)} series for {selector}: {result}")
            got = float(result[0]["value"][1])
            if got != expected:
                fail(f"Prometheus has {selector} = {got}, berthd says {expected}")
            print(f"ok: {selector} = {got:g} in Prometheus and in berthd")
        up = query('up{job="berth"}')
        if [float(r["value"][1]) for r in up] != [1.0]:
            fail(f'up{{job="berth"}} is {up}')

        if args.mode == "bearer":
            wait_for("a scrape by job berth-no-token", lambda: scraped_after("berth-no-token") is not None)
            t = scraped_after("berth-no-token")
            if t["health"] != "down" or "401" not in t.get("lastError", ""):
                fail(f"the scrape without the token was not refused with 401: {t}")
            down = query('up{job="berth-no-token"}')
            if [float(r["value"][1]) for r in down] != [0.0]:
                fail(f'up{{job="berth-no-token"}} is {down}')
            print(f"ok: without the token Prometheus reports the target down ({t['lastError']})")
            if http(base + "/metrics")[0] != 401:
                fail("berthd served /metrics without the token")
        print(f"prometheus_scrape: PASS ({args.mode})")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if os.environ.get("BERTH_TEST_KEEP_DIRS"):
            print("kept " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
