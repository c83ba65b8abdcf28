#!/usr/bin/env python3
"""openapi_conformance.py BERTHD FAKE_DRIVER SOURCE_DIR [--suite API_TESTS]: berthd's wire answers agree with its own /openapi.json.

Starts the real berthd (fake driver, tenant and admin keys, small limits so that 413 and 429 are reachable) on a
loopback port, fetches GET /openapi.json and drives every route with good and bad inputs. Every answer to a request
whose method and path name a documented operation must have a status that operation documents, the documented
media type, every header the response marks required, and a JSON body that validates against the documented schema
(python3-jsonschema, JSON Schema 2020-12: OpenAPI 3.1's dialect). Every good request body must validate against the
documented request schema. Every operation must have been seen answering at least one 2xx and one error.
With --suite, the whole API suite (the api_tests binary) runs too, recording every answer it receives
(BERTH_RECORD_RESPONSES, tests/api/berthd_process.cpp), and each recorded answer is checked the same way: fault
injection, capacity, shutdown and restarts reach statuses (500, 503 + Retry-After) that the drive above cannot.

It also checks that the document, host/core/errors.hpp and docs/api.md agree: the same error codes in all three, and
one docs/api.md heading per operation. Exit 0 = all agree; 1 = the failures are listed on stderr.
"""
import base64
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)
import jsonschema  # noqa: E402  (python3-jsonschema)

ALICE = "tenant-key-alice"
BOB = "tenant-key-bob00"
ADMIN = "admin-key-0123456789"
MAX_BODY = 2048
MAX_FILE = 8192
QUOTA = 8

failures = []
seen = {}  # (method, template) -> set of statuses


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg, file=sys.stderr)


class Berthd:
    def __init__(self, berthd, fake):
        self.dir = tempfile.mkdtemp(prefix="berth-openapi-")
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        cfg = os.path.join(self.dir, "berth.toml")
        with open(cfg, "w") as f:
            f.write(f"""default_profile = "default"
[server]
listen = "127.0.0.1:{self.port}"
max_body = {MAX_BODY}
max_file_size = {MAX_FILE}
[store]
path = "{self.dir}/berth.db"
[driver]
path = "{fake}"
[auth.keys]
"{ALICE}" = "alice"
"{BOB}" = "bob"
[auth.admin_keys]
"{ADMIN}" = "ops"
[cleanup]
enabled = false
[limits]
max_sandboxes_per_owner = {QUOTA}
[profiles.default]
image = "berth/python:3.11"
capabilities = ["python", "shell", "filesystem"]
[profiles.shellonly]
image = "berth/python:3.11"
capabilities = ["shell"]
""")
        self.log = open(os.path.join(self.dir, "berthd.log"), "w")
        self.proc = subprocess.Popen([berthd, "--config", cfg], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60  # generous: it is up in well under a second
        while True:
            try:
                if self.request("GET", "/health", key=None, check=False)[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("berthd did not come up; log: " + open(self.log.name).read())
            time.sleep(0.1)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        subprocess.run(["rm", "-rf", self.dir])

    def request(self, method, target, body=None, key=ALICE, headers=None, content_type="application/json",
                check=True, expect=None):
        """Sends one request; returns (status, headers dict lower-cased, body bytes) after validating the answer."""
        h = dict(headers or {})
        if key:
            h["Authorization"] = "Bearer " + key
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else (json.dumps(body) if not isinstance(body, str) else body).encode()
            h["Content-Type"] = content_type
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        conn.request(method, target, body=data, headers=h)
        r = conn.getresponse()
        payload = r.read()
        got = {k.lower(): v for k, v in r.getheaders()}
        conn.close()
        if check:
            verify(method, target, r.status, got, payload)
            if expect is not None and r.status != expect:
                fail(f"{method} {target}: expected {expect}, got {r.status} {payload[:300]!r}")
        return r.status, got, payload


# ---- the document ---------------------------------------------------------------------------------------------------

DOC = None
RESOLVER = None
OPS = []  # (method, template, regex, operation)


def load(doc):
    global DOC, RESOLVER
    DOC = doc
    RESOLVER = jsonschema.RefResolver("", doc)
    for template, item in doc["paths"].items():
        rx = re.compile("^" + "/".join("[^/]+" if seg.startswith("{") else re.escape(seg)
                                       for seg in template.split("/")) + "$")
        for method, op in item.items():
            OPS.append((method.upper(), template, rx, op))


def deref(obj):
    while isinstance(obj, dict) and "$ref" in obj:
        target = DOC
        for part in obj["$ref"].lstrip("#/").split("/"):
            target = target[part]
        obj = target
    return obj


def schema_errors(schema, instance):
    v = jsonschema.Draft202012Validator(schema, resolver=RESOLVER)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(instance)]


def find_op(method, target):
    path = target.split("?", 1)[0]
    for m, template, rx, op in OPS:
        if m == method and rx.match(path):
            return template, op
    return None, None


def verify(method, target, status, headers, payload, tally=seen, origin=""):
    """Checks one answer against the document; payload None = a body too big to have been recorded."""
    template, op = find_op(method, target)
    if op is None:
        return
    tally.setdefault((method, template), set()).add(status)
    where = f"{origin}{method} {target} -> {status}"
    response = op["responses"].get(str(status))
    if response is None:
        fail(f"{where}: status not documented for {method} {template} (documented: {sorted(op['responses'])}); "
             f"body {payload[:300]!r}")
        return
    response = deref(response)
    for name, h in response.get("headers", {}).items():
        h = deref(h)
        value = headers.get(name.lower())
        if value is None:
            if h.get("required"):
                fail(f"{where}: required header {name} missing")
            continue
        for e in schema_errors(h["schema"], value):
            fail(f"{where}: header {name}: {value!r}: {e}")
    content = response.get("content")
    if payload is None:
        return
    if not content:
        if payload:
            fail(f"{where}: documented without a body, got {payload[:200]!r}")
        return
    media = headers.get("content-type", "").split(";")[0].strip()
    if media not in content:
        fail(f"{where}: Content-Type {media!r} not documented ({sorted(content)})")
        return
    if media != "application/json":
        return
    try:
        body = json.loads(payload)
    except ValueError as e:
        fail(f"{where}: body is not JSON ({e}): {payload[:200]!r}")
        return
    for e in schema_errors(content[media]["schema"], body):
        fail(f"{where}: body does not match the documented schema: {e}; body {payload[:300]!r}")


def good_body(method, template, body):
    """A request we expect to succeed: its body must validate against the documented requestBody schema."""
    op = next(op for m, t, _, op in OPS if m == method and t == template)
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    for e in schema_errors(schema, body):
        fail(f"{method} {template}: a good request body does not match the documented schema: {e}: {body}")
    return body


# ---- driving every route -----------------------------------------------------------------------------------------


def multipart(fields, file_bytes, filename="up.bin"):
    boundary = "berth" + uuid.uuid4().hex
    out = b""
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    out += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + file_bytes + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return "multipart/form-data; boundary=" + boundary, out


def drive(b):
    j = json.loads
    none = "sandbox-000000000000"
    SB = "/v1/sandboxes"

    # meta
    b.request("GET", "/health", key=None, expect=200)
    b.request("GET", "/meta", key=None, expect=200)
    b.request("GET", "/openapi.json", key=None, expect=200)
    b.request("GET", "/metrics", key=None, expect=200)
    for public in ("/health", "/meta", "/openapi.json", "/metrics"):  # a target that is not percent-decodable: 400 before routing
        b.request("GET", public + "?q=%zz", key=None, expect=400)
    b.request("GET", "/v1/profiles", key=None, expect=401)
    b.request("GET", "/v1/profiles", key="not-a-known-key", expect=401)
    b.request("GET", "/v1/profiles", expect=200)
    b.request("GET", "/v1/profiles", key=ADMIN, expect=200)  # admins also get each spec

    # profiles over the API (admin writes)
    P = "/v1/profiles"
    spec = good_body("POST", P, {"name": "small", "image": "berth/python:3.11", "cpus": 0.5, "memory": "64MiB",
                                 "env": {"MODE": "small"}, "ttl": "1h", "capabilities": ["shell"]})
    b.request("POST", P, spec, key=ADMIN, expect=201)
    b.request("POST", P, spec, key=ADMIN, expect=409)  # the name is taken
    b.request("POST", P, spec, key=ALICE, expect=404)  # tenants: the 404 of an unknown route
    b.request("POST", P, {"name": "bad", "cpus": 0}, key=ADMIN, expect=400)
    b.request("POST", P, {"name": "ghost", "image": "berth-conformance/absent:0"}, key=ADMIN, expect=400)
    b.request("POST", P, "[1]", key=ADMIN, expect=400)
    b.request("GET", P + "/small", expect=200)
    b.request("GET", P + "/small", key=ADMIN, expect=200)
    b.request("GET", P + "/nope", expect=404)
    b.request("PUT", P + "/small", good_body("PUT", P + "/{id}", {"image": "berth/python:3.11", "pids": 99}),
              key=ADMIN, expect=200)
    b.request("PUT", P + "/small", {"pids": 1}, key=ADMIN, expect=400)
    b.request("PUT", P + "/default", {"image": "berth/python:3.11"}, key=ADMIN, expect=409)
    b.request("PUT", P + "/nope", {"image": "berth/python:3.11"}, key=ADMIN, expect=404)
    used = j(b.request("POST", "/v1/sandboxes", {"profile": "small"}, expect=201)[2])["id"]
    b.request("DELETE", P + "/small", key=ADMIN, expect=409)  # in use
    b.request("DELETE", f"/v1/sandboxes/{used}", expect=204)
    b.request("DELETE", P + "/small", key=ALICE, expect=404)
    b.request("DELETE", P + "/small", key=ADMIN, expect=204)
    b.request("DELETE", P + "/small", key=ADMIN, expect=404)

    # sandboxes: create
    create = good_body("POST", SB, {"key": "chat-1", "labels": {"team": "a"}, "env": {"X": "1"}})
    s1 = j(b.request("POST", SB, create, expect=201)[2])["id"]
    b.request("POST", SB, create, expect=200)  # the same key: the live sandbox
    b.request("POST", SB, {"ttl": "soon"}, expect=400)
    b.request("POST", SB, "[1, 2]", expect=400)
    b.request("POST", SB, "{not json", expect=400)
    b.request("POST", SB, {"profile": "nope"}, expect=400)
    b.request("POST", SB, {"workspace_id": "ws-000000000000"}, expect=404)
    b.request("POST", SB, {"labels": {"x": "y" * (MAX_BODY + 10)}}, expect=413)
    b.request("POST", SB, {}, headers={"Idempotency-Key": "not a key!"}, expect=400)
    st, h, body = b.request("POST", SB, {}, headers={"Idempotency-Key": "idem-1"}, expect=201)
    if h.get("idempotent-replayed") != "false":
        fail(f"POST {SB} with a new Idempotency-Key: Idempotent-Replayed {h.get('idempotent-replayed')!r}")
    b.request("POST", SB, {}, headers={"Idempotency-Key": "idem-1"}, expect=201)  # replayed
    b.request("POST", SB, {"labels": {"other": "body"}}, headers={"Idempotency-Key": "idem-1"}, expect=422)
    b.request("DELETE", f"{SB}/{j(body)['id']}", expect=204)
    s2 = j(b.request("POST", SB, good_body("POST", SB, {"ttl": 2}), expect=201)[2])["id"]
    s3 = j(b.request("POST", SB, {"profile": "shellonly"}, expect=201)[2])["id"]

    # quota: bob fills his quota, the next create is 429 with Retry-After
    bobs = [j(b.request("POST", SB, {}, key=BOB, expect=201)[2])["id"] for _ in range(QUOTA)]
    b.request("POST", SB, {}, key=BOB, expect=429)
    for s in bobs:
        b.request("DELETE", f"{SB}/{s}", key=BOB, expect=204)

    # list and get
    b.request("GET", SB, expect=200)
    page = j(b.request("GET", SB + "?limit=1", expect=200)[2])
    if page["next_cursor"]:
        b.request("GET", SB + "?limit=1&cursor=" + page["next_cursor"], expect=200)
    b.request("GET", SB + "?status=idle&label=team%3Da", expect=200)
    b.request("GET", SB + "?status=bogus", expect=400)
    b.request("GET", SB + "?cursor=nope", expect=400)
    b.request("GET", SB + "?limit=0", expect=400)
    b.request("GET", SB, key=None, expect=401)
    b.request("GET", f"{SB}/{s1}", expect=200)
    b.request("GET", f"{SB}/{none}", expect=404)
    b.request("GET", f"{SB}/{s1}", key=BOB, expect=404)  # another owner's

    # lifecycle
    b.request("POST", f"{SB}/{s1}/start", expect=200)
    b.request("POST", f"{SB}/{none}/start", expect=404)
    b.request("POST", f"{SB}/{s1}/keepalive", expect=200)
    b.request("POST", f"{SB}/{none}/keepalive", expect=404)
    b.request("POST", f"{SB}/{s1}/extend_ttl", good_body("POST", f"{SB}/{{id}}/extend_ttl", {"extend_by": 5}),
              expect=409)  # no TTL: sandbox_ttl_infinite
    b.request("POST", f"{SB}/{s1}/extend_ttl", {}, expect=400)
    b.request("POST", f"{SB}/{none}/extend_ttl", {"extend_by": 5}, expect=404)
    st, _, body = b.request("POST", f"{SB}/{s2}/extend_ttl", {"extend_by": 1}, expect=200)

    # exec
    PY = f"{SB}/{{id}}/python/exec"
    SH = f"{SB}/{{id}}/shell/exec"
    b.request("POST", f"{SB}/{s1}/python/exec", good_body("POST", PY, {"code": "print(1 + 2)"}), expect=200)
    b.request("POST", f"{SB}/{s1}/python/exec", {"code": ""}, expect=400)
    b.request("POST", f"{SB}/{s1}/python/exec", {"code": "1", "bogus": 1}, expect=400)
    b.request("POST", f"{SB}/{s1}/python/exec", {"code": "1", "timeout": 301}, expect=400)
    b.request("POST", f"{SB}/{s3}/python/exec", {"code": "1"}, expect=400)  # capability_not_supported
    b.request("POST", f"{SB}/{none}/python/exec", {"code": "1"}, expect=404)
    b.request("POST", f"{SB}/{s1}/shell/exec", good_body("POST", SH, {"command": "echo hi; exit 3"}), expect=200)
    b.request("POST", f"{SB}/{s1}/shell/exec", {"command": "pwd", "cwd": "../up"}, expect=400)
    b.request("POST", f"{SB}/{s1}/shell/exec", {}, expect=400)
    b.request("POST", f"{SB}/{none}/shell/exec", {"command": "true"}, expect=404)
    b.request("POST", f"{SB}/{s1}/shell/exec", {"command": "x" * (MAX_BODY + 1)}, expect=413)

    # Python contexts (the fake driver's kernel)
    CX = f"{SB}/{{id}}/contexts"
    b.request("POST", f"{SB}/{s1}/python/exec", good_body("POST", PY, {"code": "x = 1", "context_id": "default"}),
              expect=200)
    b.request("POST", f"{SB}/{s1}/python/exec", good_body("POST", PY, {"event": {"a": 1}, "stateless": True}),
              expect=200)
    b.request("POST", f"{SB}/{s1}/python/exec", {"code": "1", "context_id": "ctx-none"}, expect=404)
    _, _, created = b.request("POST", f"{SB}/{s1}/contexts", good_body("POST", CX, {"cwd": "", "env": {"A": "b"}}),
                              expect=201)
    ctx = j(created)["id"]
    b.request("POST", f"{SB}/{s1}/contexts", {"cwd": "../up"}, expect=400)
    b.request("POST", f"{SB}/{none}/contexts", {}, expect=404)
    b.request("GET", f"{SB}/{s1}/contexts", expect=200)
    b.request("GET", f"{SB}/{none}/contexts", expect=404)
    b.request("GET", f"{SB}/{s1}/contexts/{ctx}", expect=200)
    b.request("GET", f"{SB}/{s1}/contexts/ctx-none", expect=404)
    b.request("DELETE", f"{SB}/{s1}/contexts/{ctx}", expect=204)
    b.request("DELETE", f"{SB}/{s1}/contexts/{ctx}", expect=404)

    # the terminal: a WebSocket handshake (http.client reads the 101's head, then closes: the shell ends with it)
    ws = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    b.request("GET", f"{SB}/{s1}/terminal?rows=30&cols=100", headers=ws, expect=101)
    b.request("GET", f"{SB}/{s1}/terminal", expect=400)
    b.request("GET", f"{SB}/{s1}/terminal?rows=0", headers=ws, expect=400)
    b.request("GET", f"{SB}/{none}/terminal", headers=ws, expect=404)

    # async executions
    _, _, started = b.request("POST", f"{SB}/{s1}/shell/exec",
                              good_body("POST", SH, {"command": "echo a; sleep 1", "async": True}), expect=202)
    eid = j(started)["id"]
    b.request("GET", f"{SB}/{s1}/executions/{eid}", expect=200)
    b.request("GET", f"{SB}/{s1}/executions/exec-000000000000", expect=404)
    b.request("GET", f"{SB}/{s1}/executions/{eid}/events?after=x", expect=400)
    b.request("GET", f"{SB}/{none}/executions/{eid}/events", expect=404)
    b.request("POST", f"{SB}/{s1}/executions/exec-000000000000/cancel", expect=404)
    b.request("POST", f"{SB}/{s1}/executions/{eid}/cancel", expect=200)
    b.request("POST", f"{SB}/{s1}/executions/{eid}/cancel", expect=409)
    b.request("POST", f"{SB}/{s1}/python/exec", good_body("POST", PY, {"code": "1", "async": True}), expect=202)
    _, _, done = b.request("POST", f"{SB}/{s1}/shell/exec", {"command": "echo b", "async": True}, expect=202)
    for _ in range(100):
        if j(b.request("GET", f"{SB}/{s1}/executions/{j(done)['id']}", expect=200)[2])["status"] != "running":
            break
        time.sleep(0.05)
    b.request("GET", f"{SB}/{s1}/executions/{j(done)['id']}/events", expect=200)

    # history
    b.request("GET", f"{SB}/{s1}/history", expect=200)
    b.request("GET", f"{SB}/{s1}/history?exec_type=shell&limit=1&offset=1", expect=200)
    b.request("GET", f"{SB}/{s1}/history?limit=0", expect=400)
    b.request("GET", f"{SB}/{none}/history", expect=404)

    # files
    F = f"{SB}/{s1}/filesystem"
    b.request("PUT", F + "/files", good_body("PUT", f"{SB}/{{id}}/filesystem/files",
                                             {"path": "d/a.txt", "content": "hello\n", "mode": 0o600}), expect=200)
    b.request("PUT", F + "/files", {"content": "no path"}, expect=400)
    b.request("PUT", F + "/files", {"path": "/abs", "content": ""}, expect=400)
    b.request("PUT", F + "/files", {"path": "big", "content": "x" * (MAX_BODY + 1)}, expect=413)
    b.request("PUT", f"{SB}/{none}/filesystem/files", {"path": "a", "content": ""}, expect=404)
    b.request("PUT", f"{SB}/{s3}/filesystem/files", {"path": "a", "content": ""}, expect=400)
    b.request("GET", F + "/files?path=d/a.txt", expect=200)
    b.request("GET", F + "/files?path_b64=ZC9hLnR4dA%3D%3D", expect=200)
    b.request("GET", F + "/files?path=missing", expect=404)
    b.request("GET", F + "/files?path=d", expect=400)
    b.request("GET", F + "/files", expect=400)
    b.request("GET", F + "/directories", expect=200)
    b.request("GET", F + "/directories?path=d&limit=1", expect=200)
    b.request("GET", F + "/directories?path=d/a.txt", expect=400)
    b.request("GET", F + "/directories?path=nowhere", expect=404)
    b.request("GET", F + "/directories?limit=0", expect=400)
    ctype, form = multipart({"path": "up.bin"}, bytes(range(256)))
    b.request("POST", F + "/upload", form, content_type=ctype, expect=200)
    b.request("POST", F + "/upload", form, content_type=ctype, headers={"Idempotency-Key": "up-1"}, expect=400)
    b.request("POST", F + "/upload", {"path": "x"}, expect=400)  # not multipart
    ctype, big = multipart({"path": "big.bin"}, b"\0" * (MAX_FILE + 1))
    b.request("POST", F + "/upload", big, content_type=ctype, expect=413)
    ctype, nofile = multipart({"path": "a"}, b"")
    b.request("POST", F + "/upload", nofile.replace(b'name="file"', b'name="other"'), content_type=ctype, expect=400)
    b.request("GET", F + "/download?path=up.bin", expect=200)
    b.request("GET", F + "/download?path=missing", expect=404)
    b.request("GET", F + "/download", expect=400)
    b.request("DELETE", F + "/files?path=d/a.txt", expect=200)
    b.request("DELETE", F + "/files?path=d/a.txt", expect=404)
    b.request("DELETE", F + "/files?path=.", expect=400)

    # workspaces
    W = "/v1/workspaces"
    ws = j(b.request("POST", W, good_body("POST", W, {}), expect=201)[2])["id"]
    b.request("POST", W, {"name": "x"}, expect=400)
    b.request("GET", f"{W}/{ws}", expect=200)
    b.request("GET", f"{W}/ws-000000000000", expect=404)
    s4 = j(b.request("POST", SB, {"workspace_id": ws}, expect=201)[2])["id"]
    b.request("DELETE", f"{W}/{ws}", expect=409)
    b.request("DELETE", f"{SB}/{s4}", expect=204)
    b.request("DELETE", f"{W}/{ws}", expect=204)
    b.request("DELETE", f"{W}/{ws}", expect=404)

    # an expired sandbox: wait (generously) until its expires_at has passed, then every use is 409 sandbox_expired
    expires = j(body)["expires_at"]
    deadline = time.monotonic() + 60
    while j(b.request("GET", f"{SB}/{s2}", expect=200)[2])["status"] != "expired":
        if time.monotonic() > deadline:
            fail(f"sandbox {s2} with expires_at {expires} not expired after 60 s")
            break
        time.sleep(0.5)
    b.request("POST", f"{SB}/{s2}/keepalive", expect=409)
    b.request("POST", f"{SB}/{s2}/start", expect=409)
    b.request("POST", f"{SB}/{s2}/extend_ttl", {"extend_by": 5}, expect=409)
    b.request("POST", f"{SB}/{s2}/python/exec", {"code": "1"}, expect=409)
    b.request("POST", f"{SB}/{s2}/shell/exec", {"command": "true"}, expect=409)
    b.request("GET", f"{SB}/{s2}/filesystem/files?path=a", expect=409)
    b.request("PUT", f"{SB}/{s2}/filesystem/files", {"path": "a", "content": ""}, expect=409)
    b.request("DELETE", f"{SB}/{s2}/filesystem/files?path=a", expect=409)
    b.request("GET", f"{SB}/{s2}/filesystem/directories", expect=409)
    b.request("GET", f"{SB}/{s2}/filesystem/download?path=a", expect=409)
    ctype, form = multipart({"path": "a"}, b"x")
    b.request("POST", f"{SB}/{s2}/filesystem/upload", form, content_type=ctype, expect=409)

    # admin
    b.request("POST", "/v1/admin/gc/run", key=ALICE, expect=404)
    b.request("POST", "/v1/admin/gc/run", key=None, expect=401)
    b.request("POST", "/v1/admin/gc/run", key=ADMIN, expect=200)

    # stop and delete
    b.request("POST", f"{SB}/{s1}/stop", expect=200)
    b.request("POST", f"{SB}/{s1}/stop", expect=200)  # idle: still 200
    b.request("POST", f"{SB}/{none}/stop", expect=404)
    for s in (s1, s3):
        b.request("DELETE", f"{SB}/{s}", expect=204)
    b.request("DELETE", f"{SB}/{s1}", expect=404)
    b.request("GET", f"{SB}/{s1}", expect=404)


# ---- the document, errors.hpp and docs/api.md agree -----------------------------------------------------------------


def check_sources(source_dir):
    errors_hpp = open(os.path.join(source_dir, "host/core/errors.hpp")).read()
    enum_body = re.search(r"enum class ErrorCode \{(.*?)\};", errors_hpp, re.S).group(1)
    enum = [m.group(1) for m in re.finditer(r"^\s*([a-z_]+),", enum_body, re.M)]
    listed = re.findall(r"ErrorCode::([a-z_]+)", errors_hpp.split("kAllErrorCodes", 1)[1].split("};", 1)[0])
    documented = deref(DOC["components"]["schemas"]["Error"])["properties"]["error"]["properties"]["code"]["enum"]
    api_md = open(os.path.join(source_dir, "docs/api.md")).read()
    table = re.findall(r"^\| `([a-z_]+)` \| \d{3}", api_md, re.M)
    if not enum:
        fail("errors.hpp: could not read enum class ErrorCode")
    for name, codes in (("kAllErrorCodes in errors.hpp", listed), ("/openapi.json Error.code enum", documented),
                        ("the error table of docs/api.md", table)):
        if sorted(codes) != sorted(enum):
            fail(f"{name} {sorted(codes)} differs from enum class ErrorCode {sorted(enum)}")

    headings = set()
    for m in re.finditer(r"^### `([A-Z]+) (/[^`?]*)", api_md, re.M):
        headings.add((m.group(1), m.group(2)))
    operations = {(m, t) for m, t, _, _ in OPS}
    for op in sorted(operations - headings):
        fail(f"docs/api.md has no heading for {op[0]} {op[1]} (### `{op[0]} {op[1]}`)")
    for h in sorted(headings - operations):
        fail(f"docs/api.md describes {h[0]} {h[1]}, which /openapi.json does not have")


def check_suite(api_tests):
    """Runs the whole API suite (tests/api, api_tests) recording every answer it receives, then checks each one."""
    record_dir = tempfile.mkdtemp(prefix="berth-suite-responses-")
    try:
        env = dict(os.environ, BERTH_RECORD_RESPONSES=record_dir)
        # The suite's own verdict is its CTest entries' business; here only its answers count.
        rc = subprocess.run([api_tests, "-w", "NoTests"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL).returncode
        tally = {}
        count = 0
        for name in sorted(os.listdir(record_dir)):
            for line in open(os.path.join(record_dir, name), encoding="utf-8"):
                r = json.loads(line)
                uri = base64.b64decode(r["uri_b64"]).decode("utf-8", "surrogateescape")
                body = None if r.get("body_truncated") else base64.b64decode(r["body_b64"])
                headers = {k.lower(): v for k, v in r["headers"].items()}
                verify(r["method"], uri, r["status"], headers, body, tally, origin="API suite: ")
                count += 1
    finally:
        subprocess.run(["rm", "-rf", record_dir])
    if count < 500:  # the suite sends about 900; fewer means the recording broke
        fail(f"the API suite (exit {rc}) recorded only {count} answers")
    pairs = sum(len(v) for v in tally.values())
    print(f"API suite (exit {rc}): {count} answers recorded, {pairs} (operation, status) pairs checked")
    for (m, template), statuses in sorted(tally.items()):
        print(f"  {m:6} {template}: {sorted(statuses)}")


def main():
    berthd, fake, source_dir = sys.argv[1:4]
    suite = sys.argv[sys.argv.index("--suite") + 1] if "--suite" in sys.argv else None
    b = Berthd(berthd, fake)
    try:
        status, _, payload = b.request("GET", "/openapi.json", key=None, check=False)
        if status != 200:
            raise SystemExit(f"GET /openapi.json: {status} {payload[:300]!r}")
        doc = json.loads(payload)
        load(doc)
        meta = jsonschema.Draft202012Validator(doc["components"]["schemas"]["OpenApiDocument"])
        for e in meta.iter_errors(doc):
            fail(f"/openapi.json: {e.message}")
        check_sources(source_dir)
        drive(b)
    finally:
        b.stop()
    if suite:
        check_suite(suite)
    for m, template, _, _ in OPS:
        statuses = seen.get((m, template), set())
        # A good answer is a 2xx, or the 101 of a WebSocket route (the terminal).
        if not any(200 <= s < 300 or s == 101 for s in statuses) or not any(s >= 400 for s in statuses):
            fail(f"{m} {template}: not driven with both a good and a bad request (statuses seen: {sorted(statuses)})")
    print(f"{len(OPS)} operations, {sum(len(s) for s in seen.values())} (operation, status) pairs seen, "
          f"{len(failures)} failures")
    for (m, template), statuses in sorted(seen.items()):
        print(f"  {m:6} {template}: {sorted(statuses)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
