#!/usr/bin/env python3
"""bench/shell_exec_paths.py: where a warm shell/exec's milliseconds go (issue 9), all interleaved in one run.

  bench/shell_exec_paths.py [--build build] [--engine docker|podman] [--runs 100]

One berthd on the engine (socket transport), one ready sandbox. Per round, timed whole from the client:
  spawn floor     os.posix_spawn('/bin/echo hi') + waitpid on the host: this machine's cost of one process start
  agent echo      START /bin/echo hi -> EXIT straight on the session's agent socket (no berthd): the agent's share
  agent sh        the same with /bin/sh -c 'echo hi' /bin/sh (what berthd sends for a short command)
  agent no spare  the same on a second container of the image whose agent runs with --no-spare (every START forks
                  its shim on its own path: the agent before its spare shim), started by this script
  (each agent row waits 3 ms after EXIT, about what berthd's own turn around costs, so that the agent's spare is
  forked between requests as it is behind berthd)
  shell           POST shell/exec {"command": "echo hi"} through berthd
  shell argv      POST shell/exec with "echo hi" and a comment up to 16,318 bytes: still the argv path
  shell stdin     the same padded past 16 KiB (core::kShellArgvMax): sh -c 'eval "$(/bin/cat)"', the path every
                  command took before (one more process start)
  cell            POST python/exec {"code": "1"} in the default context (no process start: berthd + agent floor)
Then a second phase, alone: `shell/exec echo hi` through berthd back to back, --loop-gap-ms (default 2) between the
answer and the next request, the way one client runs commands in a loop. (On this VM a vCPU that idles longer
wakes slower: the same loop with 30 ms gaps measured ~1 ms more.)
Then a third phase, --idle-gaps (default 3,20,50 ms): per gap, rounds of three calls, each after that much idle time:
  in-sandbox floor  a python3 helper inside the session's container (`<engine> exec -i`, started once) spawns
                    /bin/sh -c 'echo hi' with its stdout on a pipe and waits for it, timing itself: what any process
                    in the sandbox pays for that command, with no Berth code involved
  agent sh          as above, straight on the agent socket
  berthd shell      POST shell/exec echo hi
On this VM a process start after idle time costs more (a vCPU that idled wakes slower, caches are cold), and the
table shows how much of a warm shell/exec is that floor and how much is Berth at each gap.
Prints n, p50, p90 in ms. Needs root (the agent socket directory is 0700 root). Python standard library only.
"""
import argparse
import glob
import importlib.util
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
import benchlib  # noqa: E402  bench/benchlib.py

runall = benchlib.load_run_all()
_spec = importlib.util.spec_from_file_location("agent_transport", os.path.join(os.path.dirname(__file__),
                                                                               "agent_transport.py"))
at = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(at)  # its AgentConn: the protocol client written from docs/agent-protocol.md


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--engine", default="docker", choices=["docker", "podman"])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--loop-gap-ms", type=float, default=2.0)
    ap.add_argument("--idle-gaps", default="3,20,50", help="comma-separated ms; empty: no idle-gap phase")
    args = ap.parse_args()
    b = runall.Berthd(args.build, args.engine, "berth/python:3.11", "[cleanup]\nenabled = false\n",
                      driver_settings='agent_transport = "socket"\nagent_run_dir = "/run/berth/bench-agent"')
    b.start()
    try:
        sb = b.create()
        conn = runall.Conn(b.port)
        conn.request("POST", f"/v1/sandboxes/{sb}/shell/exec", {"command": "true"})
        st, view = conn.request("GET", f"/v1/sandboxes/{sb}")
        sock = f"/run/berth/bench-agent/berth-{view['session_id']}/agent.sock"  # <agent_run_dir>/<container name>
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        a = at.AgentConn(s)
        # The baseline agent: the same binary with --no-spare as the main process of a second container of the image.
        cold_dir = tempfile.mkdtemp(prefix="berth-bench-nospare-")
        os.chmod(cold_dir, 0o700)
        agent_bin = os.path.abspath(os.path.join(args.build, "bin", "berth-agent"))
        cold = subprocess.run([args.engine, "run", "-d", "--rm", "--user", "0", "--network", "none",
                               # (podman's default rlimits cannot be set in this VM: ENGINE-NOTES.md)
                               "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                               "-v", f"{agent_bin}:/berth-agent:ro", "-v", f"{cold_dir}:/run/a",
                               "berth/python:3.11", "/berth-agent", "--no-spare", "--listen", "unix:/run/a/agent.sock",
                               "--root", "/tmp"], capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(3000):
            if os.path.exists(f"{cold_dir}/agent.sock"):
                break
            time.sleep(0.01)
        cs = socket.socket(socket.AF_UNIX)
        cs.connect(f"{cold_dir}/agent.sock")
        cold_agent = at.AgentConn(cs)

        def agent(argv, a=a):
            a.channel += 1
            start = (at.u32(len(argv)) + b"".join(at.bstr(x) for x in argv) + at.u32(1) +
                     at.bstr(b"PATH=/usr/bin:/bin") + at.bstr(b"") + struct.pack(">IIIHHIQ", 1000, 1000, 0, 24, 80, 0, 0))
            a.sock.sendall(at.frame(0x10, a.channel, start) + at.frame(0x12, a.channel))  # START, then stdin EOF
            while True:
                t, ch, p = a.read_frame()
                if t == 0x05:
                    raise RuntimeError(f"agent error {p!r}")
                if ch == a.channel and t == 0x17:
                    return

        def agent_paced(argv, a=a):
            def call():  # returns its own time in ms: the pause after it is not timed
                t0 = time.perf_counter()
                agent(argv, a)
                took = (time.perf_counter() - t0) * 1000
                time.sleep(0.003)  # about berthd's turn around between two requests
                return took
            return call

        def spawn():
            with open(os.devnull, "wb") as null:
                pid = os.posix_spawn("/bin/echo", ["/bin/echo", "hi"], {}, file_actions=[
                    (os.POSIX_SPAWN_DUP2, null.fileno(), 1)])
                os.waitpid(pid, 0)

        def shell(command):
            def call():
                st, r = conn.request("POST", f"/v1/sandboxes/{sb}/shell/exec", {"command": command})
                if st != 200 or r.get("output") != "hi\n":
                    raise RuntimeError(f"shell/exec: {st} {r}")
            return call

        def cell():
            st, r = conn.request("POST", f"/v1/sandboxes/{sb}/python/exec", {"code": "1"})
            if st != 200 or r.get("data", {}).get("text") != "1":
                raise RuntimeError(f"cell: {st} {r}")

        calls = {
            "spawn floor (host posix_spawn + wait)": spawn,
            "agent: /bin/echo hi, START -> EXIT": agent_paced([b"/bin/echo", b"hi"]),
            "agent: /bin/sh -c 'echo hi'": agent_paced([b"/bin/sh", b"-c", b"echo hi", b"/bin/sh"]),
            "agent --no-spare: /bin/sh -c 'echo hi'": agent_paced([b"/bin/sh", b"-c", b"echo hi", b"/bin/sh"],
                                                                  cold_agent),
            "berthd shell/exec echo hi": shell("echo hi"),
            "berthd shell/exec, 16,318-byte command (argv)": shell("echo hi\n#" + "x" * (16318 - 9)),
            "berthd shell/exec, 16,400-byte command (stdin)": shell("echo hi\n#" + "x" * (16400 - 9)),
            "berthd python/exec cell `1`": cell,
        }
        res = {k: [] for k in calls}
        for i in range(args.runs + 3):
            for k, fn in calls.items():
                t0 = time.perf_counter()
                took = fn()
                if i >= 3:
                    res[k].append(took if took is not None else (time.perf_counter() - t0) * 1000)
        print(f"shell exec paths, {args.engine}, {args.runs} rounds interleaved, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.2f}")
        print("| call | n | p50 ms | p90 ms |\n|---|---|---|---|")
        loop = []
        for i in range(args.runs + 3):
            t0 = time.perf_counter()
            calls["berthd shell/exec echo hi"]()
            if i >= 3:
                loop.append((time.perf_counter() - t0) * 1000)
            time.sleep(args.loop_gap_ms / 1000)
        res[f"berthd shell/exec echo hi, alone in a loop, {args.loop_gap_ms:g} ms gaps"] = loop
        for k, v in res.items():
            v.sort()
            print(f"| {k} | {len(v)} | {v[len(v) // 2]:.2f} | {v[int(len(v) * 0.9)]:.2f} |")
        gaps = [float(g) for g in args.idle_gaps.split(",") if g.strip()]
        if gaps:
            idle_gap_phase(args, gaps, view["session_id"], lambda: agent([b"/bin/sh", b"-c", b"echo hi", b"/bin/sh"]),
                           calls["berthd shell/exec echo hi"])
    finally:
        if "cold" in locals():
            subprocess.run([args.engine, "rm", "-f", cold], capture_output=True)
        b.cleanup()
        b.stop()


def idle_gap_phase(args, gaps, session_id, agent_sh, berthd_shell):
    """Per idle gap: the in-sandbox floor, the agent and berthd, interleaved, each after `gap` ms of idle time."""
    helper = benchlib.SpawnFloor(args.engine, f"berth-{session_id}")
    floor = helper.call

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000

    try:
        print(f"\nidle gaps, {args.engine}, {args.runs} rounds per gap, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.2f}")
        print("| idle before each call | in-sandbox floor p50 / p90 | agent sh p50 / p90 | berthd shell/exec p50 / p90 "
              "| berthd - floor (p50) |\n|---|---|---|---|---|")
        for gap in gaps:
            rows = {"floor": [], "agent": [], "berthd": []}
            for i in range(args.runs + 3):
                for k, fn in (("floor", floor), ("agent", lambda: timed(agent_sh)), ("berthd", lambda: timed(berthd_shell))):
                    time.sleep(gap / 1000)
                    ms = fn()
                    if i >= 3:
                        rows[k].append(ms)
            for v in rows.values():
                v.sort()
            p = {k: (v[len(v) // 2], v[int(len(v) * 0.9)]) for k, v in rows.items()}
            print(f"| {gap:g} ms | {p['floor'][0]:.2f} / {p['floor'][1]:.2f} | {p['agent'][0]:.2f} / {p['agent'][1]:.2f} "
                  f"| {p['berthd'][0]:.2f} / {p['berthd'][1]:.2f} | {p['berthd'][0] - p['floor'][0]:.2f} |")
    finally:
        helper.close()


if __name__ == "__main__":
    main()
