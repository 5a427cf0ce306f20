"""A small HTTP/1.1 client for Tang, with the two timeouts clevis lacks: one to connect, and a deadline
for the whole exchange, so a server that accepts and never answers costs at most the deadline. Each
failure is named: refused, timed out, unknown key (404), bad reply, unreachable.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from unlocker.errors import InvalidInput

MAX_REPLY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Timeouts:
    connect: float = 3.0  # seconds, per server
    total: float = 10.0  # seconds, for one whole unlock (all servers are asked at once)


class ServerFailed(Exception):
    """One server did not give a usable answer. `reason` is one of REASONS."""

    REASONS = ("refused", "timed out", "unknown key", "bad reply", "unreachable")

    def __init__(self, url: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{url}: {reason}" + (f" ({detail})" if detail else ""))
        self.url, self.reason, self.detail = url, reason, detail


def split_url(url: str) -> tuple[str, int, str]:
    """(host, port, path prefix) of a Tang URL; `http://` may be left out, as clevis allows."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme != "http":
        raise InvalidInput(f"{url}: only http:// Tang URLs are supported (Tang's replies are not secret)")
    if not parts.hostname:
        raise InvalidInput(f"{url}: no host in the Tang URL")
    try:
        port = parts.port or 80
    except ValueError:
        raise InvalidInput(f"{url}: bad port") from None
    return parts.hostname, port, parts.path.rstrip("/")


def request(url: str, method: str, path: str, body: bytes | None, deadline: float,
            timeouts: Timeouts) -> bytes:
    """The body of a 200 reply to METHOD <url><path>. Raises ServerFailed."""
    host, port, prefix = split_url(url)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ServerFailed(url, "timed out")
    try:
        sock = socket.create_connection((host, port), timeout=min(timeouts.connect, remaining))
    except ConnectionRefusedError:
        raise ServerFailed(url, "refused") from None
    except TimeoutError:
        raise ServerFailed(url, "timed out", "while connecting") from None
    except OSError as e:
        raise ServerFailed(url, "unreachable", e.strerror or str(e)) from None
    with sock:
        head = (f"{method} {prefix}{path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
                "Accept: application/jose+json, application/jwk+json\r\n")
        if body is not None:
            head += f"Content-Type: application/jwk+json\r\nContent-Length: {len(body)}\r\n"
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(head.encode("ascii") + b"\r\n" + (body or b""))
            reply = _read_reply(sock, deadline)
        except TimeoutError:
            raise ServerFailed(url, "timed out", "no answer") from None
        except OSError as e:
            raise ServerFailed(url, "bad reply", e.strerror or str(e)) from None
    return _body(url, reply)


def _read_reply(sock: socket.socket, deadline: float) -> bytes:
    data = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(8192)
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > MAX_REPLY_BYTES:
            raise OSError(0, "reply too large")
        head, sep, rest = bytes(data).partition(b"\r\n\r\n")
        if sep:
            length = _content_length(head)
            if length is not None and len(rest) >= length:
                return bytes(data)


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value.strip())
    return None


def _body(url: str, reply: bytes) -> bytes:
    head, sep, rest = reply.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split(b" ")
    if not sep or len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
        raise ServerFailed(url, "bad reply", "not an HTTP reply")
    code = int(status[1])
    if code == 404:
        raise ServerFailed(url, "unknown key", "404: the server no longer has the key this JWE was made for")
    if code != 200:
        raise ServerFailed(url, "bad reply", f"HTTP {code}")
    length = _content_length(head)
    if length is not None:
        if len(rest) < length:
            raise ServerFailed(url, "bad reply", "truncated")
        rest = rest[:length]
    return rest
