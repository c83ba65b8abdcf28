"""Helpers the bench/ scripts share (Python standard library only): an Engine API call over a unix socket and one
request to berthd over loopback. Each script imports it from its own folder (`import benchlib`)."""
import http.client
import json
import socket


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (the Docker and Podman engine sockets)."""

    def __init__(self, path, timeout=300):
        super().__init__("engine", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def engine_call(sock, method, path, body=None, raw=False, timeout=300):
    """One Engine API request (API version 1.41) on the unix socket `sock`: the parsed JSON answer (raw bytes with
    raw=True, None for an empty body). Raises RuntimeError for a status of 300 or more."""
    conn = UnixHTTPConnection(sock, timeout)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, "/v1.41" + path, body=json.dumps(body) if body is not None else None, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.status >= 300:
        raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")
    return data if raw else (json.loads(data) if data else None)


def berthd_request(port, method, path, body=None, key=None, timeout=600):
    """One request to berthd on 127.0.0.1:`port` (a JSON body, a Bearer key if given): (status, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Authorization": "Bearer " + key} if key else {}
    if body is not None:
        h["Content-Type"] = "application/json"
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def load_run_all():
    """bench/run-all as a module (it has no .py name): its Berthd, call, pct and engine helpers for single benches."""
    import importlib.machinery
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run-all")
    loader = importlib.machinery.SourceFileLoader("runall", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("runall", loader))
    loader.exec_module(module)
    return module


# Runs inside a sandbox: one line in, one /bin/sh -c 'echo hi' spawned (stdout on a pipe) and waited for, its own
# time in ms out. What any process in the sandbox pays for that command, with no Berth code involved.
FLOOR_HELPER = r"""
import os, sys, time
for _ in sys.stdin:
    r, w = os.pipe()
    t0 = time.perf_counter()
    pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", "echo hi"], {"PATH": "/usr/bin:/bin"},
                         file_actions=[(os.POSIX_SPAWN_DUP2, w, 1)])
    os.close(w)
    while os.read(r, 100):
        pass
    os.waitpid(pid, 0)
    ms = (time.perf_counter() - t0) * 1000
    os.close(r)
    sys.stdout.write("%.4f\n" % ms)
    sys.stdout.flush()
"""


class SpawnFloor:
    """The in-sandbox spawn floor: FLOOR_HELPER in `container` (`<engine> exec -i`, started once, as uid 1000).
    call() returns the helper's own time of one spawn in ms; close() ends it."""

    def __init__(self, engine, container):
        import subprocess
        self.proc = subprocess.Popen([engine, "exec", "-i", "--user", "1000:1000", container, "python3", "-u", "-c",
                                      FLOOR_HELPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.call()  # the helper is up

    def call(self):
        self.proc.stdin.write("x\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
