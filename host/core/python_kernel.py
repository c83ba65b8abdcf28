# berth python kernel, protocol 1: the long-lived interpreter behind a Python context (docs/python-contexts.md).
#
# berthd starts it in the sandbox's session through the interactive-process API as `python3 -u -c <bootstrap>`, sends
# "<length>\n" and this file on stdin (the bootstrap compiles it as "<berth-kernel>"), then speaks frames with it over
# the process's stdin and stdout. A frame is one ASCII header line, `<type> <length>\n`,
# then exactly <length> payload bytes. berthd -> kernel: `exec` (a JSON object: code, optional event, cell: a number the result echoes).
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
import types

PROTOCOL = 1

_proto_in = os.fdopen(os.dup(0), "rb", buffering=0)  # dup'ed fds are not inherited by subprocesses
_proto_fd = os.dup(1)
_send_lock = threading.Lock()
KERNEL_PID = os.getpid()
MAX_TEXT = 1 << 20  # bytes of one rich text (repr, html, markdown) kept in a result
MAX_IMAGES = 16 << 20  # bytes of base64 images kept in one result
MAX_DISPLAY = 100  # display() values kept per cell
MAX_RESULT = 16 << 20  # bytes of a handler's JSON result


def send(kind, payload):
    """One frame, whole: os.write may write part of it (a signal interrupting a full pipe), so it loops."""
    data = memoryview(b"%s %d\n" % (kind.encode(), len(payload)) + payload)
    with _send_lock:
        while data:
            try:
                n = os.write(_proto_fd, data)
            except InterruptedError:
                continue
            data = data[n:]


def safe_str(value):
    try:
        return str(value)
    except BaseException:  # a __str__ that raises (or is interrupted) must not end the kernel
        return "<str() of %s failed>" % type(value).__name__


def safe_repr(value):
    try:
        return repr(value)
    except BaseException as e:
        return "<repr() of %s failed: %s>" % (type(value).__name__, type(e).__name__)


def capped(text):
    """`text` cut to MAX_TEXT bytes of UTF-8 (with a note), so one value cannot make a frame berthd refuses."""
    if len(text) * 4 <= MAX_TEXT:
        return text
    raw = text.encode("utf-8", "replace")
    if len(raw) <= MAX_TEXT:
        return text
    return raw[:MAX_TEXT].decode("utf-8", "ignore") + "\n[berth: cut to %d bytes of %d]" % (MAX_TEXT, len(raw))


def check_json(value, depth=0):
    """Raises TypeError for what berthd's JSON parser cannot take: nesting over 64, integers outside 64 bits."""
    if depth > 64:
        raise TypeError("nested more than 64 levels deep")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 63):
            raise TypeError("integer %d does not fit in 64 bits" % value)
    elif isinstance(value, dict):
        for v in value.values():
            check_json(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            check_json(v, depth + 1)


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
        p = Pump(r, kind)
        p.fd_out, p.saved = fd, w  # w stays open (not inherited): the cell's fd is put back from it when changed
        p.start()
        pumps.append(p)
    sys.stdin = io.open(0, "r", closefd=False)
    sys.stdout = io.open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = io.open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.__stdout__, sys.__stderr__, sys.__stdin__ = sys.stdout, sys.stderr, sys.stdin
    STREAMS[:] = [sys.stdout, sys.stderr]
    return pumps


STREAMS = []  # the kernel's sys.stdout and sys.stderr on the pipes


def restore_output(pumps):
    """Puts the pipes back on fd 1 and fd 2 (and sys.stdout/stderr on them) if a cell redirected or closed them."""
    for p in pumps:
        try:
            same = os.path.sameopenfile(p.fd_out, p.saved)
        except OSError:
            same = False
        if not same:
            os.dup2(p.saved, p.fd_out)
    if getattr(sys.stdout, "fileno", None) is None or sys.stdout is not STREAMS[0]:
        sys.stdout = STREAMS[0]
    if getattr(sys.stderr, "fileno", None) is None or sys.stderr is not STREAMS[1]:
        sys.stderr = STREAMS[1]


def sync(pumps):
    """Returns once every byte the cell wrote to fd 1 and fd 2 before now went out as a frame."""
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except BaseException:
            pass
    marker = b"\0berth-sync-" + os.urandom(8).hex().encode() + b"\0"
    for p in pumps:
        p.expect(marker)
        try:
            # Into our pipe, whatever the cell did with fd 1/2 (a marker must never land in a file of the cell's).
            os.write(p.saved, marker)
        except OSError:
            continue
        p.wait_seen(5)


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
                if isinstance(r, (bytes, bytearray)) and len(r) <= MAX_IMAGES // 2:
                    out[key] = base64.b64encode(bytes(r)).decode()
            elif isinstance(r, str):
                out[key] = capped(r)
    return out


def figures():
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return []
    images = []
    try:
        total = 0
        for num in plt.get_fignums():
            buf = io.BytesIO()
            plt.figure(num).savefig(buf, format="png", bbox_inches="tight")
            encoded = base64.b64encode(buf.getvalue()).decode()
            total += len(encoded)
            if total > MAX_IMAGES:
                print("berth: figures beyond %d bytes were not returned" % MAX_IMAGES, file=sys.stderr)
                break
            images.append({"format": "png", "data": encoded})
        plt.close("all")
    except Exception as e:  # a broken figure must not lose the cell's result
        print("berth: a figure could not be rendered: %r" % (e,), file=sys.stderr)
    return images


class Kernel:
    def __init__(self):
        self.count = 0
        # The cells' namespace is a real __main__ module: pickle, multiprocessing and typing find what cells define.
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = main
        self.ns = main.__dict__
        self.displayed = []
        builtins.display = self.display

    def display(self, *values):
        """IPython-style display(): each value's text, and its HTML/PNG where it has them, in the cell's result."""
        for v in values:
            if len(self.displayed) >= MAX_DISPLAY:
                return
            item = {"text": capped(safe_repr(v))}
            item.update(rich_outputs(v))
            self.displayed.append(item)

    def error_of(self, e, tb):
        # Drop the kernel's own frames: the traceback starts at the cell.
        while tb is not None and tb.tb_frame.f_code.co_filename == KERNEL_FILE:
            tb = tb.tb_next
        try:
            text = "".join(traceback.format_exception(type(e), e, tb))
        except BaseException:
            text = "%s: %s\n" % (type(e).__name__, safe_str(e))
        return {"ename": type(e).__name__, "evalue": capped(safe_str(e)), "traceback": capped(text)}

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
        restore_output(pumps)
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
                    data["text"] = capped(safe_repr(value))
                    data.update(rich_outputs(value))
            if "event" in request:
                handler = self.ns.get("handler")
                if not callable(handler):
                    raise NameError("an event was given but the code defines no handler(event) function")
                value = handler(request["event"])
                try:
                    text = json.dumps(value, allow_nan=False)
                    if len(text) > MAX_RESULT:
                        raise TypeError("it is %d bytes of JSON, more than %d" % (len(text), MAX_RESULT))
                    value = json.loads(text)
                    check_json(value)
                    result["result"] = value
                except (TypeError, ValueError, RecursionError) as e:
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
                error = {"ename": "SystemExit", "evalue": safe_str(e.code), "traceback": ""}
        except BaseException as e:
            error = self.error_of(e, e.__traceback__)
        finally:
            signal.signal(signal.SIGINT, between_cells)
        if os.getpid() != KERNEL_PID:
            os._exit(exit_code if error is not None else 0)  # a fork of the cell that came back here: never a 2nd kernel
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
        try:
            result["cwd"] = os.getcwd()
        except OSError:  # the cell removed its working directory
            result["cwd"] = None
        return result


KERNEL_FILE = "<berth-kernel>"  # the bootstrap compiles this file under this name: its frames carry it


def main():
    signal.signal(signal.SIGINT, between_cells)
    pumps = redirect_output()
    kernel = Kernel()
    sys.argv = [""]
    sys.path.insert(0, "")  # cells import from their working directory (the bootstrap kept it out of the kernel's)
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
        try:
            result = kernel.run(request, pumps)
        except BaseException as e:  # the kernel's own failure (an interrupt between its steps, a broken stream)
            result = {"execution_count": kernel.count, "success": False, "exit_code": 1,
                      "error": {"ename": type(e).__name__, "evalue": safe_str(e),
                                "traceback": "berth kernel: %s: %s\n" % (type(e).__name__, safe_str(e))}}
        if "cell" in request:
            result["cell"] = request["cell"]
        send("result", json.dumps(result, ensure_ascii=False, default=safe_repr).encode("utf-8", "replace"))


main()
