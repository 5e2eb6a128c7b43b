"""httpc.py — the soak's HTTP/1.1 client on raw sockets (stdlib only).

Raw sockets rather than http.client because the soak needs what http.client hides: binding the
client socket to a chosen 127.0.0.N before connect (so load comes from many addresses), closing
or resetting a socket at a chosen point of a response (client cancels), sending a request one
byte at a time (trickling clients), and telling "the server closed without answering" apart
from "the server answered an error".
"""

import json
import socket
import struct

HOST = "127.0.0.1"


class Closed(Exception):
    """The server closed the connection before a complete response."""


class ProtocolError(Exception):
    """The server sent something that is not valid HTTP/1.1 or SSE."""


def request_bytes(method, path, body=None, ctype="application/json", keepalive=True, extra=()):
    """One request's bytes. `extra` are raw header lines; a body gets a Content-Length."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "User-Agent: kvcast-soak"]
    if body is not None:
        if ctype:
            lines.append(f"Content-Type: {ctype}")
        lines.append(f"Content-Length: {len(body)}")
    if not keepalive:
        lines.append("Connection: close")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


class Conn:
    """One client connection with a receive buffer."""

    def __init__(self, port, src=None, timeout=60.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if src:
                self.sock.bind((src, 0))
            self.sock.settimeout(timeout)
            self.sock.connect((HOST, port))
        except BaseException:
            self.sock.close()
            raise
        self.buf = bytearray()
        self.uses = 0  # completed request/response exchanges (keep-alive reuse)
        self.reusable = True

    def settimeout(self, t):
        self.sock.settimeout(t)

    def send(self, data):
        self.sock.sendall(data)

    def close(self, reset=False):
        """reset=True sends a TCP RST (SO_LINGER 0) instead of a FIN."""
        if self.sock is None:
            return
        try:
            if reset:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass
        self.sock = None

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise Closed("the server closed the connection")
        self.buf += d

    def readline(self, limit=1 << 20):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return line
            if len(self.buf) > limit:
                raise ProtocolError("line longer than %d bytes" % limit)
            self._fill()

    def readn(self, n):
        while len(self.buf) < n:
            self._fill()
        d = bytes(self.buf[:n])
        del self.buf[:n]
        return d

    def read_head(self):
        """(status, headers with lower-case names) of the final response: interim 1xx
        responses (the server's "100 Continue" to a half-closed client) are skipped."""
        while True:
            status, headers = self._read_one_head()
            if not 100 <= status < 200:
                return status, headers

    def _read_one_head(self):
        line = self.readline()
        parts = line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ProtocolError("bad status line %r" % line[:80])
        try:
            status = int(parts[1])
        except ValueError:
            raise ProtocolError("bad status line %r" % line[:80]) from None
        headers = {}
        while True:
            h = self.readline()
            if h in (b"\r\n", b"\n"):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if parts[0] == "HTTP/1.0" or headers.get("connection", "").lower() == "close":
            self.reusable = False
        return status, headers

    def body_pieces(self, headers):
        """Yields the body in pieces as they arrive (chunked, Content-Length or until close)."""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = self.readline()
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise ProtocolError("bad chunk size %r" % size_line[:40]) from None
                if size == 0:
                    while self.readline() not in (b"\r\n", b"\n"):
                        pass
                    return
                data = self.readn(size)
                if self.readn(2) != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                yield data
        elif "content-length" in headers:
            n = int(headers["content-length"])
            if n > 0:
                yield self.readn(n)
        else:
            self.reusable = False
            if self.buf:
                yield bytes(self.buf)
                self.buf.clear()
            while True:
                d = self.sock.recv(65536)
                if not d:
                    return
                yield d

    def read_body(self, headers):
        return b"".join(self.body_pieces(headers))


def sse_events(pieces):
    """Yields the data field of each SSE event (str); comments (': ping') are skipped."""
    pending = b""
    for piece in pieces:
        pending += piece
        while True:
            i = pending.find(b"\n\n")
            if i < 0:
                break
            block, pending = pending[:i], pending[i + 2 :]
            data = []
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    data.append(line[5:].lstrip(b" ").decode("utf-8"))
                elif line.startswith(b":") or not line:
                    continue
                else:
                    raise ProtocolError("unexpected SSE line %r" % line[:60])
            if data:
                yield "\n".join(data)
    if pending.strip():
        raise ProtocolError("stream ended inside an event: %r" % pending[:60])


def simple(port, method, path, body=None, timeout=10.0, src=None):
    """One request on a fresh connection: (status, body bytes). Raises on network errors."""
    c = Conn(port, src=src, timeout=timeout)
    try:
        c.send(request_bytes(method, path, body, keepalive=False))
        status, headers = c.read_head()
        return status, c.read_body(headers)
    finally:
        c.close()


def get_json(port, path, body=None, timeout=10.0):
    status, data = simple(port, "POST" if body is not None else "GET", path,
                          None if body is None else json.dumps(body).encode(), timeout)
    if status != 200:
        raise ProtocolError("%s answered %d: %r" % (path, status, data[:200]))
    return json.loads(data)
