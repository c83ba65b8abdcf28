# berth python kernel, protocol 1: the long-lived interpreter behind a Python context (docs/python-contexts.md).
#
# berthd starts it in the sandbox's session through the interactive-process API as `python3 -u -c <bootstrap>`, sends
# "<length>\n" and this file on stdin (the bootstrap compiles it as "<berth-kernel>"), then speaks frames with it over
# the process's stdin and stdout. A frame is one ASCII header line, `<type> <length>\n`,
# then exactly <length> payload bytes. berthd -> kernel: `exec` (a JSON object: code, optional event, optional cwd).
# kernel -> berthd: `ready` once (JSON: protocol, python, pid), then per cell any number of `stdout`/`stderr` (raw
# bytes the cell wrote, in order per stream) and one `result` (JSON, below). Nothing else ever reaches fd 1: the
# cell's fd 1 and fd 2 are pipes the kernel reads (subprocesses' output included), and its fd 0 is /dev/null.
#
# The code runs with the standard library only; it must run on any CPython >= 3.8 found as python3 in the image.
import ast
import base64
import builtins
import io
import json
import linecache
import os
import signal
import sys
import threading
import traceback

PROTOCOL = 1

_proto_in = os.fdopen(os.dup(0), "rb", buffering=0)  # dup'ed fds are not inherited by subprocesses
_proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
_send_lock = threading.Lock()


def send(kind, payload):
    with _send_lock:
        _proto_out.write(b"%s %d\n" % (kind.encode(), len(payload)) + payload)


def read_exact(n):
    parts = []
    while n > 0:
        b = _proto_in.read(n)
        if not b:
            raise EOFError
        parts.append(b)
        n -= len(b)
    return b"".join(parts)


def read_frame():
    header = b""
    while not header.endswith(b"\n"):
        c = _proto_in.read(1)
        if not c:
            raise EOFError
        header += c
        if len(header) > 64:
            raise ValueError("frame header too long")
    kind, length = header.decode().split()
    return kind, read_exact(int(length))


class Pump(threading.Thread):
    """Copies one of the cell's output pipes into frames; a sync marker tells it that a cell's output ends here."""

    def __init__(self, fd, kind):
        super().__init__(daemon=True)
        self.fd, self.kind = fd, kind
        self.cond = threading.Condition()
        self.marker = None  # bytes being waited for
        self.seen = False

    def expect(self, marker):
        with self.cond:
            self.marker, self.seen = marker, False

    def wait_seen(self, timeout):
        with self.cond:
            return self.cond.wait_for(lambda: self.seen, timeout)

    def run(self):
        held = b""  # a tail that may be the start of the marker
        while True:
            try:
                data = os.read(self.fd, 65536)
            except InterruptedError:
                continue
            if not data:
                return
            buf = held + data
            held = b""
            with self.cond:
                marker = self.marker
            if marker:
                i = buf.find(marker)
                if i >= 0:
                    if i:
                        send(self.kind, buf[:i])
                    buf = buf[i + len(marker):]
                    with self.cond:
                        self.marker, self.seen = None, True
                        self.cond.notify_all()
                else:
                    for k in range(min(len(marker) - 1, len(buf)), 0, -1):
                        if marker.startswith(buf[-k:]):
                            held, buf = buf[-k:], buf[:-k]
                            break
            if buf:
                send(self.kind, buf)


def redirect_output():
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    pumps = []
    for fd, kind in ((1, "stdout"), (2, "stderr")):
        r, w = os.pipe()
        os.dup2(w, fd)
        os.close(w)
        p = Pump(r, kind)
        p.start()
        pumps.append(p)
    sys.stdin = io.open(0, "r", closefd=False)
    sys.stdout = io.open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = io.open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.__stdout__, sys.__stderr__, sys.__stdin__ = sys.stdout, sys.stderr, sys.stdin
    return pumps


def sync(pumps):
    """Returns once every byte the cell wrote to fd 1 and fd 2 before now went out as a frame."""
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:
            pass
    marker = b"\0berth-sync-" + os.urandom(8).hex().encode() + b"\0"
    for fd, p in ((1, pumps[0]), (2, pumps[1])):
        p.expect(marker)
        try:
            os.write(fd, marker)
        except OSError:
            continue
        p.wait_seen(5)  # a cell that pointed fd 1 elsewhere must not stop the kernel


def between_cells(signo, frame):
    """SIGINT between cells: nothing to interrupt (a late timeout's signal must not kill the kernel)."""


def rich_outputs(value):
    out = {}
    for method, key in (("_repr_html_", "html"), ("_repr_png_", "png"), ("_repr_markdown_", "markdown")):
        fn = getattr(value, method, None)
        if callable(fn) and not isinstance(value, type):
            try:
                r = fn()
            except Exception:
                continue
            if r is None:
                continue
            if isinstance(r, tuple):
                r = r[0]
            if key == "png":
                if isinstance(r, (bytes, bytearray)):
                    out[key] = base64.b64encode(bytes(r)).decode()
            elif isinstance(r, str):
                out[key] = r
    return out


def figures():
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return []
    images = []
    try:
        for num in plt.get_fignums():
            buf = io.BytesIO()
            plt.figure(num).savefig(buf, format="png", bbox_inches="tight")
            images.append({"format": "png", "data": base64.b64encode(buf.getvalue()).decode()})
        plt.close("all")
    except Exception as e:  # a broken figure must not lose the cell's result
        print("berth: a figure could not be rendered: %r" % (e,), file=sys.stderr)
    return images


class Kernel:
    def __init__(self):
        self.count = 0
        self.ns = {"__name__": "__main__", "__builtins__": builtins}
        self.displayed = []
        builtins.display = self.display

    def display(self, *values):
        """IPython-style display(): each value's text, and its HTML/PNG where it has them, in the cell's result."""
        for v in values:
            item = {"text": repr(v)}
            item.update(rich_outputs(v))
            self.displayed.append(item)

    def error_of(self, e, tb):
        # Drop the kernel's own frames: the traceback starts at the cell.
        while tb is not None and tb.tb_frame.f_code.co_filename == KERNEL_FILE:
            tb = tb.tb_next
        lines = traceback.format_exception(type(e), e, tb)
        return {"ename": type(e).__name__, "evalue": str(e), "traceback": "".join(lines)}

    def run(self, request, pumps):
        self.count += 1
        self.displayed = []
        result = {"execution_count": self.count, "success": True, "exit_code": 0}
        exit_code = 1
        data = {}
        name = "<cell %d>" % self.count
        code = request.get("code", "")
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)  # tracebacks show the cell's lines
        error = None
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # KeyboardInterrupt in the cell's frame
            tree = ast.parse(code, name, "exec")
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            exec(compile(tree, name, "exec"), self.ns)
            if last is not None:
                value = eval(compile(last, name, "eval"), self.ns)
                if value is not None:
                    self.ns["_"] = value
                    data["text"] = repr(value)
                    data.update(rich_outputs(value))
            if "event" in request:
                handler = self.ns.get("handler")
                if not callable(handler):
                    raise NameError("an event was given but the code defines no handler(event) function")
                value = handler(request["event"])
                try:
                    result["result"] = json.loads(json.dumps(value, allow_nan=False))
                except (TypeError, ValueError) as e:
                    raise TypeError("handler(event) returned a value that is not JSON-serialisable: %s" % e) from None
        except KeyboardInterrupt as e:
            result["interrupted"] = True
            error = self.error_of(e, e.__traceback__)
        except SystemExit as e:  # sys.exit() ends the cell, not the context; its code is the cell's exit code
            if e.code is None or isinstance(e.code, int):
                exit_code = (e.code or 0) & 255
            else:
                exit_code = 1
                try:
                    sys.stderr.write("%s\n" % (e.code,))
                except Exception:
                    pass
            if exit_code != 0:
                error = {"ename": "SystemExit", "evalue": str(e.code), "traceback": ""}
        except BaseException as e:
            error = self.error_of(e, e.__traceback__)
        finally:
            signal.signal(signal.SIGINT, between_cells)
        images = figures()
        if images:
            data["images"] = images
        if self.displayed:
            data["display"] = self.displayed
        if error is not None:
            result["success"] = False
            result["exit_code"] = exit_code
            result["error"] = error
            try:
                sys.stderr.write(error["traceback"])
            except Exception:
                pass
        sync(pumps)
        if data:
            result["data"] = data
        result["cwd"] = os.getcwd()
        return result


KERNEL_FILE = "<berth-kernel>"  # the bootstrap compiles this file under this name: its frames carry it


def main():
    signal.signal(signal.SIGINT, between_cells)
    pumps = redirect_output()
    kernel = Kernel()
    sys.argv = [""]
    send("ready", json.dumps({"protocol": PROTOCOL, "python": sys.version.split()[0], "pid": os.getpid()}).encode())
    while True:
        try:
            kind, payload = read_frame()
        except EOFError:
            return
        if kind != "exec":
            continue
        try:
            request = json.loads(payload)
        except ValueError as e:
            request = {"code": "raise ValueError(%r)" % ("berth: malformed exec frame: %s" % e)}
        result = kernel.run(request, pumps)
        send("result", json.dumps(result, ensure_ascii=False, default=repr).encode("utf-8", "replace"))


main()
