#!/usr/bin/env python3
"""Exec round trip through berth-agent versus a raw Engine API exec, on one container, interleaved, in one run.

  bench/agent_transport.py [--build build] [--engine docker|podman] [--runs 200] [--image berth/python:3.11]

Starts one container of the image (network none, the agent bind-mounted read-only as the entrypoint, a per-session
temp dir bind-mounted at /run/berth for its socket, stdin kept open for the attach transport) and measures, round
robin, `runs` times each, the exec of `/bin/echo hi` as uid 1000 until its exit status is known:
  agent/unix    START..EXIT over the bind-mounted unix socket (one long-lived connection)
  agent/attach  START..EXIT over the engine's attach stream of the container (the agent's --stdio; one long-lived
                hijacked connection, stdout demultiplexed from the engine's 8-byte stream headers)
  engine/exec   POST /containers/{id}/exec + POST /exec/{id}/start + GET /exec/{id}/json
Prints a markdown table (p50/p90/p99 in milliseconds). The agent protocol client here is written from
docs/agent-protocol.md alone (a second implementation besides plugins/common). Only the Python 3 standard library.
"""
import argparse
import os
import shutil
import socket
import struct
import sys
import tempfile
import time

import benchlib  # bench/benchlib.py: shared Engine API and berthd request helpers

SOCKETS = {"docker": "/var/run/docker.sock", "podman": "/run/podman/podman.sock"}


class Engine:
    def __init__(self, sock):
        self.sock = sock

    def call(self, method, path, body=None, raw=False):
        return benchlib.engine_call(self.sock, method, path, body, raw)

    def exec_echo(self, cid):
        ex = self.call("POST", f"/containers/{cid}/exec",
                       {"AttachStdout": True, "AttachStderr": True, "Cmd": ["/bin/echo", "hi"], "User": "1000:1000"})
        out = self.call("POST", f"/exec/{ex['Id']}/start", {"Detach": False, "Tty": False}, raw=True)
        code = self.call("GET", f"/exec/{ex['Id']}/json")["ExitCode"]
        return out, code

    def attach(self, cid):
        """A hijacked attach stream (stdin in, stdout out): returns the raw socket positioned after the headers."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.sock)
        s.sendall((f"POST /v1.41/containers/{cid}/attach?stream=1&stdin=1&stdout=1&stderr=0 HTTP/1.1\r\n"
                   "Host: localhost\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1)
            if not chunk:
                raise RuntimeError("attach: connection closed during the response headers")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status and b" 200 " not in status:
            raise RuntimeError(f"attach: {status!r}")
        return s


def u32(v):
    return struct.pack(">I", v)


def bstr(b):
    return u32(len(b)) + b


def frame(t, ch, payload=b""):
    return struct.pack(">IHHI", len(payload), t, 0, ch) + payload


class AgentConn:
    """The protocol over a byte stream. `demux` strips the engine's 8-byte stream headers (attach without a TTY)."""

    def __init__(self, sock, demux=False):
        self.sock, self.demux = sock, demux
        self.raw = b""   # bytes from the socket (still multiplexed when demux)
        self.buf = b""   # agent protocol bytes
        self.channel = 0
        self.sock.sendall(frame(0x01, 0, struct.pack(">HH", 1, 1) + bstr(b"bench")))
        t, _, _ = self.read_frame()
        if t != 0x02:
            raise RuntimeError(f"HELLO answered with type {t:#x}")

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("agent connection closed")
        if not self.demux:
            self.buf += data
            return
        self.raw += data
        while len(self.raw) >= 8:
            n = struct.unpack(">I", self.raw[4:8])[0]
            if len(self.raw) < 8 + n:
                break
            if self.raw[0] == 1:
                self.buf += self.raw[8:8 + n]
            self.raw = self.raw[8 + n:]

    def read_frame(self):
        while len(self.buf) < 12:
            self.fill()
        n, t, _, ch = struct.unpack(">IHHI", self.buf[:12])
        while len(self.buf) < 12 + n:
            self.fill()
        payload = self.buf[12:12 + n]
        self.buf = self.buf[12 + n:]
        return t, ch, payload

    def exec_echo(self):
        self.channel += 1
        start = (u32(2) + bstr(b"/bin/echo") + bstr(b"hi") + u32(1) + bstr(b"PATH=/usr/bin:/bin") + bstr(b"") +
                 struct.pack(">IIIHHIQ", 1000, 1000, 0, 24, 80, 0, 0))
        self.sock.sendall(frame(0x10, self.channel, start))
        out = b""
        while True:
            t, ch, payload = self.read_frame()
            if ch != self.channel:
                continue
            if t == 0x16:
                out += payload[1:]
            elif t == 0x05:
                raise RuntimeError(f"agent error: {payload!r}")
            elif t == 0x17:
                signaled, code = struct.unpack(">Bi", payload[:5])
                return out, (128 + code if signaled else code)


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--engine", default="docker", choices=sorted(SOCKETS))
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--image", default="berth/python:3.11")
    args = ap.parse_args()
    agent_bin = os.path.abspath(os.path.join(args.build, "bin", "berth-agent"))
    engine = Engine(SOCKETS[args.engine])
    session = tempfile.mkdtemp(prefix="berth-agent-bench-")
    cid = None
    try:
        cid = engine.call("POST", "/containers/create", {
            "Image": args.image, "User": "0:0", "Entrypoint": ["/berth/agent"],
            "Cmd": ["--listen", "unix:/run/berth/agent.sock", "--stdio", "--root", "/tmp"],
            "OpenStdin": True, "StdinOnce": False, "AttachStdin": True, "AttachStdout": True,
            "NetworkDisabled": True,
            "HostConfig": {"NetworkMode": "none",
                           # Berth's session limits; Podman's default nofile is above what its runtime may set here
                           "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 1024},
                                       {"Name": "nproc", "Soft": 1024, "Hard": 1024}],
                           "Binds": [f"{agent_bin}:/berth/agent:ro", f"{session}:/run/berth"]},
        })["Id"]
        engine.call("POST", f"/containers/{cid}/start")
        attach_sock = engine.attach(cid)  # after start: Podman refuses to attach to a created container
        deadline = time.monotonic() + 60
        sock_path = os.path.join(session, "agent.sock")
        while not os.path.exists(sock_path):
            if time.monotonic() > deadline:
                raise RuntimeError("the agent's socket did not appear within 60 s")
            time.sleep(0.01)
        us = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        us.connect(sock_path)
        unix_conn = AgentConn(us)
        attach_conn = AgentConn(attach_sock, demux=True)
        subjects = {
            "agent/unix": unix_conn.exec_echo,
            "agent/attach": attach_conn.exec_echo,
            "engine/exec": lambda: engine.exec_echo(cid),
        }
        for fn in subjects.values():  # warm up once each
            out, code = fn()
            if code != 0 or not out.endswith(b"hi\n"):
                raise RuntimeError(f"warm-up exec returned {code} {out!r}")
        times = {k: [] for k in subjects}
        for _ in range(args.runs):
            for name, fn in subjects.items():
                t0 = time.perf_counter()
                out, code = fn()
                times[name].append((time.perf_counter() - t0) * 1000)
                if code != 0 or not out.endswith(b"hi\n"):
                    raise RuntimeError(f"{name}: exit {code} {out!r}")
        print(f"engine {args.engine}, image {args.image}, {args.runs} runs each, interleaved; `/bin/echo hi` as uid 1000\n")
        print("| transport | p50 ms | p90 ms | p99 ms |")
        print("|---|---:|---:|---:|")
        for name, v in times.items():
            print(f"| {name} | {pct(v, 50):.2f} | {pct(v, 90):.2f} | {pct(v, 99):.2f} |")
        return 0
    finally:
        if cid:
            try:
                engine.call("DELETE", f"/containers/{cid}?force=1")
            except Exception as e:  # noqa: BLE001 - cleanup is best effort and reported
                print(f"cleanup: {e}", file=sys.stderr)
        shutil.rmtree(session, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
