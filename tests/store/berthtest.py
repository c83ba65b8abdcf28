"""Helpers shared by the store's multi-process tests (two_instances.py, instance_failover.py, mariadb_restart.py,
galera_cluster.py): checks that are counted instead of raised, a free loopback port, one request to a berthd, and
one statement through the mysql client. Python 3 standard library only."""
import http.client
import json
import os
import socket
import subprocess

failures = []  # what check() saw fail; a script exits non-zero when it is not empty
MYSQL = ["mysql", *os.environ.get("BERTH_TEST_MYSQL_ARGS", "").split()]


def check(ok, what):
    """Prints ok/FAIL and the claim; a failed claim is recorded in `failures`, and the script goes on."""
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request_full(port, method, path, body=None, headers=None, timeout=120):
    """(status, parsed JSON or None, Retry-After or None) of one request to berthd on 127.0.0.1:port."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = dict(headers or {})
    if body is not None:
        h["Content-Type"] = "application/json"
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    try:
        parsed = json.loads(data) if data else None
    except ValueError:
        parsed = None
    return r.status, parsed, r.getheader("Retry-After")


def request(port, method, path, body=None, headers=None, timeout=120):
    """(status, parsed JSON or None) of one request to berthd on 127.0.0.1:port."""
    return request_full(port, method, path, body, headers, timeout)[:2]


def mysql(statement):
    """Runs one statement with the mysql client (BERTH_TEST_MYSQL_ARGS); its tab-separated output without header."""
    return subprocess.run(MYSQL + ["-N", "-B", "-e", statement], check=True, capture_output=True, text=True).stdout
