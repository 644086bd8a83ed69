"""A counting, fault-injecting HTTP proxy for tests, in front of the moto S3 server.

Stdlib only. Every request is read in full, classified, counted, then either
forwarded to the upstream server or answered with an injected fault:

- ``slowdown``: 503 with an S3 ``SlowDown`` XML error (throttling)
- ``internal``: 500 with an S3 ``InternalError`` XML error
- ``reset``: the connection is reset (RST) without any response; the request
  never reaches the server
- ``delay``: nothing is sent for ``delay`` seconds (set it longer than the
  client's read timeout), then the connection is closed; the request never
  reaches the server, so a late duplicate cannot land after the client's retry
- ``reset_after``: the request IS forwarded and applied, then the connection
  is reset instead of answering (the "did my write happen?" case). Not in the
  default mix; ask for it explicitly.
- ``not_implemented``: 501 with an S3 ``NotImplemented`` XML error (a server
  lacking a feature, e.g. conditional writes). Permanent: not in ALL_FAULT_KINDS.
- ``access_denied``: 403 ``AccessDenied`` (e.g. an object encrypted with a KMS
  key the credentials may not use, or a bucket policy). Permanent.
- ``invalid_object_state``: 403 ``InvalidObjectState`` (an archived object).
  Permanent.
  A HEAD answered with an error carries no body, as on S3: only its status.

``strip_headers`` (lower-case names, e.g. ``{"if-match", "if-none-match"}``)
are dropped from forwarded requests: a server that ignores them, such as one
without conditional writes. ``strip_ops`` limits that to some operation shapes
(e.g. ``{"DELETE"}``: a server honouring conditional writes but not conditional
deletes). Headers are signed: only the plain moto server, which checks no
signatures, accepts such requests.

``complete_if_match`` (on by default) fills a gap of moto 5.2: it honours
If-None-Match on CompleteMultipartUpload but ignores If-Match there, which AWS
honours. For a complete carrying If-Match the proxy first HEADs the object
upstream and answers 412 PreconditionFailed itself when the object is absent or
its ETag differs; otherwise the request is forwarded as usual. The HEAD and the
complete are two steps, unlike on S3: enough for tests that do not race a
complete against another writer of the same key. Not applied when
``strip_headers`` drops if-match for completes (a server ignoring it).

``date_offset`` (seconds) shifts the ``Date`` header of every forwarded
response: the server's clock seen as that far off from ours. ``send_date =
False`` drops the header instead: a server that sends none.

Faults are drawn from a seeded RNG so a run is reproducible for a given order
of requests. Use it as a context manager or call start()/stop().

    with S3Proxy("http://127.0.0.1:5000") as proxy:
        proxy.set_faults(0.3, seed=1)
        ... point the client at proxy.endpoint ...
        proxy.op_counts["LIST_DELIM"]
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

FAULT_KINDS = ("slowdown", "internal", "reset", "delay")
#: Every fault a retry can get past.
ALL_FAULT_KINDS = (*FAULT_KINDS, "reset_after")
#: Permanent error answers: kind -> (HTTP status, S3 error code, message).
_ERROR_KINDS = {
    "not_implemented": (501, "NotImplemented", "A header you provided is not implemented."),
    "access_denied": (403, "AccessDenied", "Access Denied"),
    "invalid_object_state": (
        403, "InvalidObjectState", "The operation is not valid for the object's storage class"
    ),
}
_KNOWN_KINDS = (*ALL_FAULT_KINDS, *_ERROR_KINDS)
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
}
_ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>{message}</Message>"
    "<RequestId>s3proxy</RequestId></Error>"
)


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it."""

    method: str
    op: str
    path: str
    query: str
    fault: str | None
    #: The access key id the request was signed with (from its Authorization header).
    access_key: str | None = None


def classify(method: str, path: str, query: str) -> str:
    """The S3 operation shape of a path-style request, e.g. 'LIST_DELIM', 'GET', 'PUT'."""
    q = parse_qs(query, keep_blank_values=True)
    bucket_level = len([p for p in path.split("/") if p]) <= 1
    if method == "GET" and bucket_level:
        if "uploads" in q:
            return "LIST_UPLOADS"
        if "location" in q or "versioning" in q or "acl" in q:
            return "GET_BUCKET_CONFIG"
        return "LIST_DELIM" if "delimiter" in q else "LIST"
    if method == "HEAD":
        return "HEAD_BUCKET" if bucket_level else "HEAD"
    if method == "PUT":
        if bucket_level:
            return "CREATE_BUCKET"
        return "UPLOAD_PART" if "partNumber" in q else "PUT"
    if method == "POST":
        if "uploads" in q:
            return "CREATE_MULTIPART"
        if "uploadId" in q:
            return "COMPLETE_MULTIPART"
        return "DELETE_OBJECTS" if "delete" in q else "POST"
    if method == "DELETE":
        if bucket_level:
            return "DELETE_BUCKET"
        return "ABORT_MULTIPART" if "uploadId" in q else "DELETE"
    return method  # GET of an object, or anything unusual


class S3Proxy:
    """Threaded proxy on 127.0.0.1; see the module docstring."""

    def __init__(self, upstream: str, *, timeout: float = 30.0) -> None:
        parts = urlsplit(upstream)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port
        self.timeout = timeout
        self._lock = threading.Lock()
        self.method_counts: Counter[str] = Counter()
        self.op_counts: Counter[str] = Counter()
        self.fault_counts: Counter[str] = Counter()
        self.requests: list[Seen] = []
        self._rate = 0.0
        self._kinds: tuple[str, ...] = FAULT_KINDS
        self._ops: frozenset[str] | None = None
        self._rng = random.Random(0)
        self._forced: list[tuple[str, frozenset[str] | None, str | None]] = []
        self.delay = 2.0
        #: Seconds added to the Date header of forwarded responses (clock-skew tests).
        self.date_offset = 0.0
        #: False: forwarded responses lose their Date header.
        self.send_date = True
        #: Request headers (lower-case names) not forwarded: a server ignoring them.
        self.strip_headers: frozenset[str] = frozenset()
        #: Operation shapes (see classify()) strip_headers applies to; None: every one.
        self.strip_ops: frozenset[str] | None = None
        #: Check If-Match on CompleteMultipartUpload, which moto ignores (module docstring).
        self.complete_if_match = True
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- lifecycle

    def start(self) -> S3Proxy:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="s3proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> S3Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "proxy not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # ----------------------------------------------------------- test control

    def set_faults(
        self,
        rate: float,
        kinds: Iterable[str] = FAULT_KINDS,
        *,
        seed: int = 0,
        delay: float | None = None,
        ops: Iterable[str] | None = None,
    ) -> None:
        """Fail `rate` (0..1) of requests, each with a kind drawn from `kinds`.

        `ops` limits faults to those operation shapes (see classify()).
        `delay` is the stall of the 'delay' kind, in seconds.
        """
        kinds = tuple(kinds)
        unknown = set(kinds) - set(_KNOWN_KINDS)
        if unknown or not kinds or not 0.0 <= rate <= 1.0:
            raise ValueError(f"bad fault setting: rate={rate}, kinds={kinds}")
        with self._lock:
            self._rate = rate
            self._kinds = kinds
            self._rng = random.Random(seed)
            self._ops = frozenset(ops) if ops is not None else None
            if delay is not None:
                self.delay = delay

    def fail_next(
        self,
        kind: str,
        count: int = 1,
        *,
        ops: Iterable[str] | None = None,
        path_contains: str | None = None,
    ) -> None:
        """Force `kind` on the next `count` requests (of shapes `ops`, whose path contains
        `path_contains`), before any random fault."""
        if kind not in _KNOWN_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        shapes = frozenset(ops) if ops is not None else None
        with self._lock:
            self._forced.extend([(kind, shapes, path_contains)] * count)

    def clear_faults(self) -> None:
        self.set_faults(0.0)
        with self._lock:
            self._forced.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.method_counts.clear()
            self.op_counts.clear()
            self.fault_counts.clear()
            self.requests.clear()

    def counts(self) -> dict[str, int]:
        """A snapshot of the per-operation counts."""
        with self._lock:
            return dict(self.op_counts)

    # -------------------------------------------------------------- internals

    def _record(self, method: str, path: str, query: str, access_key: str | None = None) -> Seen:
        op = classify(method, path, query)
        with self._lock:
            fault = self._take_forced(op, path)
            if fault is None and self._rate > 0 and (self._ops is None or op in self._ops):
                if self._rng.random() < self._rate:
                    fault = self._rng.choice(self._kinds)
            seen = Seen(method, op, path, query, fault, access_key)
            self.method_counts[method] += 1
            self.op_counts[op] += 1
            if fault:
                self.fault_counts[fault] += 1
            self.requests.append(seen)
        return seen

    def _take_forced(self, op: str, path: str) -> str | None:
        for i, (kind, ops, part) in enumerate(self._forced):
            if (ops is None or op in ops) and (part is None or part in unquote(path)):
                del self._forced[i]
                return kind
        return None


def _make_handler(proxy: S3Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(_ProxyHandler):
        owner = proxy

    return Handler


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects
    owner: S3Proxy

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _handle(self) -> None:
        body = self._read_body()
        parts = urlsplit(self.path)
        seen = self.owner._record(self.command, parts.path, parts.query,
                                  _access_key(self.headers.get("Authorization", "")))
        if seen.fault == "slowdown":
            self._send_error(503, "SlowDown", "Please reduce your request rate.")
        elif seen.fault == "internal":
            self._send_error(500, "InternalError", "We encountered an internal error.")
        elif seen.fault in _ERROR_KINDS:
            self._send_error(*_ERROR_KINDS[seen.fault])
        elif seen.fault == "reset":
            self._reset()
        elif seen.fault == "delay":
            time.sleep(self.owner.delay)
            self._reset()
        elif self._complete_if_match_fails(seen):
            self._send_error(
                412,
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold",
            )
        else:
            status, reason, headers, payload = self._forward(body, seen.op)
            if seen.fault == "reset_after":
                self._reset()
            else:
                self._send(status, reason, headers, payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(out)
            out += self.rfile.read(size)
            self.rfile.readline()

    def _stripped(self, op: str) -> frozenset[str]:
        ops = self.owner.strip_ops
        return self.owner.strip_headers if ops is None or op in ops else frozenset()

    def _complete_if_match_fails(self, seen: Seen) -> bool:
        """For a CompleteMultipartUpload with If-Match: whether the upstream object is
        absent or has another ETag (the check moto leaves out; module docstring)."""
        expected = self.headers.get("If-Match")
        if (
            seen.op != "COMPLETE_MULTIPART"
            or expected is None
            or not self.owner.complete_if_match
            or "if-match" in self._stripped(seen.op)
        ):
            return False
        conn = http.client.HTTPConnection(
            self.owner.upstream_host, self.owner.upstream_port, timeout=self.owner.timeout
        )
        try:
            conn.request("HEAD", seen.path, headers={"Host": self.headers.get("Host", "")})
            resp = conn.getresponse()
            resp.read()
            etag = resp.getheader("ETag")
        finally:
            conn.close()
        if resp.status == 404:
            return True
        if resp.status != 200 or etag is None:
            return False  # not the proxy's to judge: let the server answer
        return etag.strip().strip('"') != expected.strip().strip('"')

    def _forward(self, body: bytes, op: str) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(
            self.owner.upstream_host, self.owner.upstream_port, timeout=self.owner.timeout
        )
        try:
            dropped = _HOP_BY_HOP | self._stripped(op)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, resp.reason, resp.getheaders(), payload
        finally:
            conn.close()

    def _send(
        self, status: int, reason: str, headers: list[tuple[str, str]], payload: bytes
    ) -> None:
        self.send_response_only(status, reason)
        for name, value in headers:
            low = name.lower()
            if low in _HOP_BY_HOP or (low == "content-length" and self.command != "HEAD"):
                continue
            if low == "date" and not self.owner.send_date:
                continue
            if low == "date" and self.owner.date_offset:
                value = _shift_date(value, self.owner.date_offset)
            self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send_error(self, status: int, code: str, message: str) -> None:
        payload = _ERROR_XML.format(code=code, message=message).encode()
        headers = [("Content-Type", "application/xml")]
        self._send(status, code, headers, payload if self.command != "HEAD" else b"")

    def _reset(self) -> None:
        """Drop the connection with a TCP RST and no response at all."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


def _shift_date(value: str, seconds: float) -> str:
    """An HTTP Date header moved by `seconds`."""
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return value
    return formatdate(when + seconds, usegmt=True)


def _access_key(authorization: str) -> str | None:
    """The access key id of a SigV4 `Authorization: AWS4-HMAC-SHA256 Credential=AKID/...`."""
    _, found, rest = authorization.partition("Credential=")
    return rest.split("/", 1)[0] or None if found else None
