"""A fault-injecting HTTP proxy on loopback, for tests of the S3 download against SeaweedFS.

``FaultProxy(upstream_port)`` listens on 127.0.0.1 (a port the OS picks) and forwards each
HTTP/1.1 request to ``127.0.0.1:upstream_port`` on a fresh connection, one request per client
connection (it answers ``Connection: close``).  Requests are counted per method, and faults are
scripted per method, consumed one per request, in order::

    with FaultProxy(server.port, stall_s=3) as proxy:
        proxy.script("GET", [Cut(0.5), None])       # first GET cut mid-body, then pass through
        proxy.script("HEAD", [Status(503)] * 2)     # two 503s, then pass through
        proxy.always("GET", Flip())                 # every later GET: one byte flipped
        ...
        proxy.count("GET")

Faults: :class:`Cut` (send part of the body, then close), :class:`Stall` (send part of the body,
then go silent for ``stall_s`` seconds, then close), :class:`Status` (answer an S3-style error
without asking the upstream) and :class:`Flip` (invert one byte of the body).

Everything is bounded: the accept loop polls a stop event every 0.2 s and serves at most
``max_connections``; each connection serves one request; every socket has a timeout and every
read loop a deadline; a stall waits on the stop event for at most ``stall_s``.  Only 127.0.0.1
is used.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Cut:
    """Send the response head and ``fraction`` of the body, then close the connection."""

    fraction: float = 0.5


@dataclass(frozen=True)
class Stall:
    """Send the head and ``fraction`` of the body, then nothing for the proxy's ``stall_s``."""

    fraction: float = 0.5


@dataclass(frozen=True)
class Status:
    """Answer ``status`` with an S3 error body, without contacting the upstream."""

    status: int = 503
    code: str = "SlowDown"
    message: str = "Please reduce your request rate."


@dataclass(frozen=True)
class Flip:
    """Relay the whole response with the body byte at ``fraction`` of its length inverted."""

    fraction: float = 0.5


_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}


def _read_head(sock: socket.socket, limit: int = 65536,
               deadline: float = 30.0) -> tuple[bytes, bytes]:
    """Bytes up to and including the blank line ending an HTTP head, and what followed."""
    buf = b""
    end = time.monotonic() + deadline
    while b"\r\n\r\n" not in buf:
        if len(buf) > limit or time.monotonic() > end:
            raise ValueError("HTTP head too long or too slow")
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before a complete HTTP head")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        if ":" in line:
            k, _, v = line.partition(":")
            fields[k.strip().lower()] = v.strip()
    return lines[0], fields


def _with_connection_close(head: bytes) -> bytes:
    lines = head.decode("latin-1").split("\r\n")
    kept = [ln for ln in lines if ln and not ln.lower().startswith(("connection:", "keep-alive:"))]
    return ("\r\n".join(kept + ["Connection: close"]) + "\r\n\r\n").encode("latin-1")


class FaultProxy:
    """See the module docstring."""

    def __init__(self, upstream_port: int, *, stall_s: float = 3.0, timeout: float = 10.0,
                 max_connections: int = 500) -> None:
        self.upstream = (HOST, int(upstream_port))
        self.stall_s = float(stall_s)
        self.timeout = float(timeout)
        self.max_connections = int(max_connections)
        self.requests: list[dict] = []
        self._scripts: dict[str, list] = {}
        self._always: dict[str, object] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sock: socket.socket | None = None
        self.port = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # -- script -----------------------------------------------------------------------------
    def script(self, method: str, faults: list) -> None:
        """Faults for the next requests of ``method`` (None = pass through), in order."""
        with self._lock:
            self._scripts[method.upper()] = list(faults)

    def always(self, method: str, fault: object | None) -> None:
        """The fault for every ``method`` request once its script is used up."""
        with self._lock:
            self._always[method.upper()] = fault

    def reset(self) -> None:
        """Forget scripts, defaults and counted requests."""
        with self._lock:
            self._scripts.clear()
            self._always.clear()
            self.requests.clear()

    def count(self, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if method is None or r["method"] == method.upper())

    def _next_fault(self, method: str):
        with self._lock:
            queue = self._scripts.get(method)
            if queue:
                return queue.pop(0)
            return self._always.get(method)

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> "FaultProxy":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, 0))
        sock.listen(64)
        sock.settimeout(0.2)
        self._sock = sock
        self.port = sock.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in list(self._threads):
            t.join(timeout=self.stall_s + self.timeout + 1)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        served = 0
        while not self._stop.is_set() and served < self.max_connections:
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            served += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                 name=f"faultproxy-{served}")
            t.start()
            with self._lock:
                self._threads.append(t)

    # -- one request --------------------------------------------------------------------------
    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(self.timeout)
        try:
            head, rest = _read_head(conn)
            first, fields = _headers(head)
            method, target = first.split(" ")[:2]
            length = int(fields.get("content-length", "0") or 0)
            body = rest
            while len(body) < length:
                data = conn.recv(min(65536, length - len(body)))
                if not data:
                    return
                body += data
            fault = self._next_fault(method)
            with self._lock:
                self.requests.append({"method": method, "target": target,
                                      "range": fields.get("range"),
                                      "fault": type(fault).__name__ if fault else None})
            if isinstance(fault, Status):
                self._answer_status(conn, method, fault)
                return
            self._relay(conn, method, _with_connection_close(head) + body, fault)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def _answer_status(self, conn: socket.socket, method: str, fault: Status) -> None:
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{fault.code}</Code>'
               f"<Message>{fault.message}</Message></Error>").encode()
        payload = b"" if method == "HEAD" else xml
        head = (f"HTTP/1.1 {fault.status} {_REASONS.get(fault.status, 'Error')}\r\n"
                f"Content-Type: application/xml\r\nContent-Length: {len(payload)}\r\n"
                f"Connection: close\r\n\r\n").encode()
        conn.sendall(head + payload)

    def _relay(self, conn: socket.socket, method: str, request: bytes, fault) -> None:
        with socket.create_connection(self.upstream, timeout=self.timeout) as up:
            up.sendall(request)
            head, body = _read_head(up)
            status_line, fields = _headers(head)
            status = int(status_line.split(" ")[1])
            has_body = method != "HEAD" and status not in (204, 304) and status >= 200
            length = int(fields["content-length"]) if "content-length" in fields else None
            if has_body:
                end = time.monotonic() + 3 * self.timeout
                while (length is None or len(body) < length) and time.monotonic() < end:
                    data = up.recv(65536)
                    if not data:
                        break
                    body += data
            else:
                body = b""
        head = _with_connection_close(head)
        if isinstance(fault, (Cut, Stall)) and body:
            part = body[: int(len(body) * fault.fraction)]
            conn.sendall(head + part)
            if isinstance(fault, Stall):
                self._stop.wait(self.stall_s)
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if isinstance(fault, Flip) and body:
            i = min(len(body) - 1, int(len(body) * fault.fraction))
            body = body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1:]
        conn.sendall(head + body)
