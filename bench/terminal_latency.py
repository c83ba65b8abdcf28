#!/usr/bin/python3
"""bench/terminal_latency.py: keystroke-to-echo latency of a terminal through berthd's WebSocket, next to two
baselines measured in the same run.

  bench/terminal_latency.py [--build build] [--engine docker|podman] [--keys 300] [--image IMAGE]

Each path runs bash on a pseudo-terminal; one keystroke is sent, and the time until the terminal's echo of it
arrives is one sample. Keys alternate between "x" and DEL (bash erases the x again), so the line never grows; a sample ends when the
key's own echo has arrived (the x, or the backspace that erases it), not at the first byte.
Interleaved by rounds (one key on each path per round, ten warm-up rounds not counted):
  berthd    GET /v1/sandboxes/{id}/terminal: a WebSocket (python3-websocket, a real client) -> berthd -> the driver
            -> the in-sandbox agent -> the PTY
  engine    the engine's own interactive exec (POST /exec/{id}/start with Tty, the hijacked connection `docker exec
            -it` uses) of bash in a plain container of the same image
  host      bash on a PTY of the host (pty.fork): the floor, no engine, agent or network in between
Also prints the time from the WebSocket handshake to the shell's first prompt on a running session. Needs the
engine, the sandbox image and Debian's python3-websocket (scripts/install-deps --with-engines).
"""
import argparse
import json
import os
import pty
import select
import socket
import sys
import time

import websocket  # python3-websocket (websocket-client)

sys.dont_write_bytecode = True
import benchlib  # noqa: E402  (after dont_write_bytecode) bench/benchlib.py

runall = benchlib.load_run_all()

SOCKETS = {"docker": "/var/run/docker.sock", "podman": "/run/podman/podman.sock"}
KEYS = (b"x", b"\x7f")
ECHO = {b"x": b"x", b"\x7f": b"\x08"}  # what the terminal shows for each key: the x, then a backspace erasing it


class BerthdTerminal:
    def __init__(self, port, sandbox):
        t0 = time.perf_counter()
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}/v1/sandboxes/{sandbox}/terminal", timeout=60)
        seen = b""
        while b"$ " not in seen:  # bash's prompt ends in "$ "
            op, data = self.ws.recv_data()
            if op == websocket.ABNF.OPCODE_BINARY:
                seen += data
        self.first_prompt = time.perf_counter() - t0

    def key(self, k):
        t0 = time.perf_counter()
        self.ws.send_binary(k)
        seen = b""
        while ECHO[k] not in seen:
            op, data = self.ws.recv_data()
            if op == websocket.ABNF.OPCODE_BINARY:
                seen += data
        return time.perf_counter() - t0

    def close(self):
        self.ws.close()


class EngineTerminal:
    """bash through the engine's hijacked interactive exec (Tty: the stream is the terminal's raw bytes)."""

    def __init__(self, sock, cid):
        ex = runall.eng(sock, "POST", f"/containers/{cid}/exec",
                        {"AttachStdin": True, "AttachStdout": True, "AttachStderr": True, "Tty": True,
                         "Cmd": ["/bin/bash"], "User": "1000:1000", "Env": ["TERM=xterm-256color"]})
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(sock)
        body = json.dumps({"Detach": False, "Tty": True}).encode()
        self.s.sendall(f"POST /exec/{ex['Id']}/start HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
                       f"Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.s.recv(4096)
        if b" 101 " not in head.split(b"\r\n")[0] and b" 200 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"engine exec start: {head[:200]!r}")
        seen = head.split(b"\r\n\r\n", 1)[1]
        while b"$ " not in seen:
            seen += self.s.recv(4096)

    def key(self, k):
        t0 = time.perf_counter()
        self.s.sendall(k)
        seen = b""
        while ECHO[k] not in seen:
            data = self.s.recv(4096)
            if not data:
                raise RuntimeError("engine exec ended")
            seen += data
        return time.perf_counter() - t0

    def close(self):
        self.s.sendall(b"exit\r")
        self.s.close()


class HostTerminal:
    def __init__(self):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execvpe("bash", ["bash", "--norc", "--noprofile"], {"PS1": "$ ", "TERM": "xterm-256color",
                                                                      "PATH": "/usr/bin:/bin"})
        seen = b""
        while b"$ " not in seen:
            seen += os.read(self.fd, 4096)

    def key(self, k):
        t0 = time.perf_counter()
        os.write(self.fd, k)
        seen = b""
        while ECHO[k] not in seen:
            select.select([self.fd], [], [], 10)
            seen += os.read(self.fd, 4096)
        return time.perf_counter() - t0

    def close(self):
        os.write(self.fd, b"exit\r")
        os.waitpid(self.pid, 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--engine", default="docker", choices=sorted(SOCKETS))
    ap.add_argument("--image", default="berth/python:3.11")
    ap.add_argument("--keys", type=int, default=300)
    args = ap.parse_args()
    sock = SOCKETS[args.engine]
    b = runall.Berthd(args.build, args.engine, args.image, "[cleanup]\nenabled = false\n")
    b.start()
    cid = None
    res = {"berthd": [], "engine": [], "host": []}
    prompts = []
    terminals = []
    try:
        sb = b.create()
        st, r, _ = runall.call(b.port, "POST", f"/v1/sandboxes/{sb}/start")
        if st != 200:
            raise RuntimeError(f"start: {st} {r}")
        for _ in range(5):  # handshake to first prompt, session already running
            t = BerthdTerminal(b.port, sb)
            prompts.append(t.first_prompt)
            t.close()
        cid = runall.engine_create_start(sock, args.image)
        terminals = [("berthd", BerthdTerminal(b.port, sb)), ("engine", EngineTerminal(sock, cid)),
                     ("host", HostTerminal())]
        for i in range(args.keys + 10):
            for key, term in terminals:
                dt = term.key(KEYS[i % 2])
                if i >= 10:
                    res[key].append(dt)
    finally:
        for _, term in terminals:
            try:
                term.close()
            except OSError:
                pass
        if cid:
            runall.engine_remove(sock, cid)
        b.cleanup()
    print(f"{args.engine}: {'what':52} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    labels = {"berthd": "keystroke -> echo through berthd's terminal WebSocket",
              "engine": "keystroke -> echo through the engine's exec -it stream",
              "host": "keystroke -> echo on a host PTY (floor)"}
    for key in ("berthd", "engine", "host"):
        s = res[key]
        print(f"{args.engine}: {labels[key]:52} {len(s):5} {1e3 * runall.pct(s, .5):8.2f} {1e3 * runall.pct(s, .9):8.2f} "
              f"{1e3 * runall.pct(s, .99):8.2f}")
    print(f"{args.engine}: {'handshake -> first prompt (running session)':52} {len(prompts):5} "
          f"{1e3 * runall.pct(prompts, .5):8.2f} {1e3 * runall.pct(prompts, .9):8.2f} {1e3 * runall.pct(prompts, .99):8.2f}")


if __name__ == "__main__":
    main()
