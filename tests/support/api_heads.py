"""Reads HTTP/1.1 request heads out of a client's byte stream to the Docker daemon, without touching it.

The recording proxy (tests/support/api_surface.py) forwards every byte as it comes; this reader only watches
them, so it must follow the framing exactly: keep-alive and pipelined requests, `Content-Length` and chunked
bodies. A stream it cannot follow (a garbled head, an upgraded connection whose bytes are no longer HTTP) is
given up on: the bytes still flow, the reader stops and says why once, so nothing is silently missed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum

MAX_HEAD = 64 * 1024  # docker-py's heads are < 2 KiB; X-Registry-Auth can add a few KiB
MAX_CHUNK_LINE = 1024
METHOD = re.compile(rb"^[A-Z]{3,10}$")

OnRequest = Callable[[str, str], None]  # (method, request target)
OnUnparsed = Callable[[str], None]  # why the rest of the connection is not read


class State(Enum):
    HEAD = "head"
    BODY = "body"
    CHUNK_SIZE = "chunk-size"
    CHUNK_DATA = "chunk-data"
    TRAILER = "trailer"
    RAW = "raw"  # upgraded or given up: bytes pass unread


class Unparsable(Exception):
    pass


class RequestReader:
    """Feed it the client->daemon bytes in order; it calls `on_request` once per request head and
    `on_unparsed` at most once. `feed` never raises (it runs on the proxy's forwarding thread)."""

    def __init__(self, on_request: OnRequest, on_unparsed: OnUnparsed) -> None:
        self._on_request, self._on_unparsed = on_request, on_unparsed
        self._buf = bytearray()
        self._state = State.HEAD
        self._remaining = 0

    @property
    def state(self) -> State:
        return self._state

    def feed(self, data: bytes) -> None:
        if self._state is State.RAW:
            return
        try:
            self._buf += data
            while self._buf and self._step():
                pass
        except Exception as exc:  # any surprise: forward raw, say so once
            self._give_up(f"{type(exc).__name__}: {exc}")

    def _give_up(self, reason: str) -> None:
        self._state, self._buf = State.RAW, bytearray()
        self._on_unparsed(reason)

    def _step(self) -> bool:
        """Consume what the current state can; False when more bytes are needed."""
        if self._state is State.HEAD:
            return self._head()
        if self._state in (State.BODY, State.CHUNK_DATA):
            taken = min(self._remaining, len(self._buf))
            del self._buf[:taken]
            self._remaining -= taken
            if self._remaining:
                return False
            self._state = State.HEAD if self._state is State.BODY else State.CHUNK_SIZE
            return True
        if self._state is State.CHUNK_SIZE:
            return self._chunk_size()
        if self._state is State.TRAILER:
            return self._trailer()
        return False

    def _line(self, limit: int) -> bytes | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > limit:
                raise Unparsable(f"no line end within {limit} bytes")
            return None
        line = bytes(self._buf[:end])
        del self._buf[:end + 2]
        return line

    def _head(self) -> bool:
        while self._buf[:2] == b"\r\n":  # stray CRLF between requests (RFC 9112 2.2)
            del self._buf[:2]
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                raise Unparsable(f"request head longer than {MAX_HEAD} bytes")
            return False
        head = bytes(self._buf[:end])
        del self._buf[:end + 4]
        method, target, headers = parse_head(head)
        self._on_request(method, target)
        self._frame(headers)
        return True

    def _frame(self, headers: dict[str, str]) -> None:
        """What follows the head: a body of known length, chunks, nothing, or (upgraded) raw bytes."""
        if "upgrade" in headers or "upgrade" in headers.get("connection", "").lower():
            self._state, self._buf = State.RAW, bytearray()  # hijacked (attach, exec): not HTTP any more
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = State.CHUNK_SIZE
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length < 0:
                raise Unparsable(f"negative Content-Length {length}")
            self._state, self._remaining = (State.BODY, length) if length else (State.HEAD, 0)
        else:
            self._state = State.HEAD

    def _chunk_size(self) -> bool:
        line = self._line(MAX_CHUNK_LINE)
        if line is None:
            return False
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size < 0:
            raise Unparsable(f"negative chunk size {size}")
        self._state, self._remaining = (State.TRAILER, 0) if size == 0 else (State.CHUNK_DATA, size + 2)
        return True

    def _trailer(self) -> bool:
        line = self._line(MAX_HEAD)
        if line is None:
            return False
        if not line:
            self._state = State.HEAD
        return True


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """(method, target, headers with lower-case names) of one request head, else `Unparsable`."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not METHOD.match(parts[0]) or not parts[2].startswith(b"HTTP/1."):
        raise Unparsable(f"not an HTTP/1.x request line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise Unparsable(f"bad header line: {line[:80]!r}")
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return parts[0].decode("ascii"), parts[1].decode("latin-1"), headers
