"""The bounded HTTP client: one deadline a request, a capped answer, no redirects, no proxies.

Guarantee: a request finishes within its `timeout` (connecting, sending and
reading the whole answer) or raises httpx.HTTPError (DeadlineExceeded past
the deadline); at most ANSWER_CAP bytes of an answer are read (or the cap
the caller gives: GET /patterns lists every pattern), and a compressed
answer is decoded to at most that much.  A slow, dripping or huge
answer costs neither time nor memory beyond those bounds.  It knows nothing
of the procedural API (learn_api.py does).
"""

from __future__ import annotations

import json
import socket
import time
import zlib
from typing import Any, Dict, List, Mapping, NamedTuple, Optional

import httpx

USER_AGENT = "omnimemory-learner"
# The most of an answer that is read; the connection is dropped past it.  The
# API's answers are a few hundred bytes; 64 KiB keeps any error text in full.
ANSWER_CAP = 64 * 1024
# The most of an error kept in the outbox and the log.
ERROR_TEXT_CAP = 500


class Answer(NamedTuple):
    """An HTTP answer read within the bounds: at most ANSWER_CAP bytes of its body."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    truncated: bool  # the body was longer than the cap (and the connection was dropped)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def bounded_text(text: str, limit: int = ERROR_TEXT_CAP) -> str:
    """Untrusted text cut to `limit`, marked when cut, and storable.

    A lone surrogate (JSON can carry one: "\\ud800") cannot be stored as
    SQLite text; it becomes its escape, so recording the answer cannot fail.
    """
    text = text if len(text) <= limit else text[:limit] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# -- one bounded request ------------------------------------------------------------


class _DeadlineStream:
    """A connection whose every read and write waits no longer than the request's deadline.

    httpx has per-phase timeouts only: an answer dripped a byte at a time
    never trips a read timeout.  Clipping each socket operation to the time
    left makes the deadline hold for the status line, headers and body alike.
    """

    def __init__(self, inner: Any, clock: _Deadline):
        self._inner = inner
        self._clock = clock

    def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        return self._inner.read(max_bytes, self._clock.clip(timeout))

    def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        self._inner.write(buffer, self._clock.clip(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> _DeadlineStream:
        return _DeadlineStream(self._inner.start_tls(*args, **kwargs), self._clock)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend:
    """httpcore's network backend, making _DeadlineStreams with TCP_NODELAY set."""

    def __init__(self, inner: Any, clock: _Deadline):
        self._inner = inner
        self._clock = clock

    def connect_tcp(self, host: str, port: int, timeout: Optional[float] = None, *args: Any, **kwargs: Any) -> Any:
        stream = self._inner.connect_tcp(host, port, self._clock.clip(timeout), *args, **kwargs)
        sock = stream.get_extra_info("socket")
        if sock is not None:
            # For httpx < 0.24, which cannot be given socket options (see _transport).
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        return _DeadlineStream(stream, self._clock)

    def __getattr__(self, name: str) -> Any:  # connect_unix_socket, sleep: as they are
        return getattr(self._inner, name)


class _Deadline:
    def __init__(self) -> None:
        self.at = float("inf")  # time.monotonic() of the current request's deadline

    def left(self) -> float:
        return self.at - time.monotonic()

    def clip(self, timeout: Optional[float]) -> float:
        # At least a millisecond: a socket timeout of 0 would mean non-blocking.
        left = max(self.left(), 0.001)
        return left if timeout is None else min(timeout, left)


class DeadlineExceeded(httpx.TimeoutException):
    """The whole request took longer than its deadline."""


class BoundedClient:
    """HTTP requests with one deadline each and a capped answer; no redirects, no proxies.

    Works with httpx 0.23 (Debian bookworm) to 0.28: the deadline is applied
    through httpcore's network backend where the transport exposes it
    (`deadline_per_operation`); otherwise each phase's timeout is the time
    left and the answer's body is read against the deadline, which bounds
    everything but a status line and headers dripped a byte at a time.
    """

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._deadline = _Deadline()
        transport = _transport()
        self.deadline_per_operation = _install_deadline(transport, self._deadline)
        self._client = httpx.Client(
            timeout=timeout,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            transport=transport,
            follow_redirects=False,
            # No proxies from the environment: the API is local.
            trust_env=False,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> BoundedClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def request(
        self,
        method: str,
        url: str,
        content: Optional[bytes] = None,
        headers: Optional[Dict[str, str]] = None,
        cap: int = ANSWER_CAP,
        timeout: Optional[float] = None,
    ) -> Answer:
        """One request, finished within `timeout` (else the client's) seconds; raises httpx.HTTPError otherwise.

        At most `cap` bytes of the body are read (GET /patterns asks for more than POST /learn).
        """
        limit = self.timeout if timeout is None else timeout
        start = time.monotonic()
        self._deadline.at = start + limit
        try:
            with self._client.stream(
                method, url, content=content, headers=headers, timeout=httpx.Timeout(max(self._deadline.left(), 0.001))
            ) as response:
                chunks: List[bytes] = []
                size = 0
                truncated = False
                for chunk in response.iter_raw():
                    if self._deadline.left() <= 0:
                        raise DeadlineExceeded(f"no whole answer within {limit:g} s")
                    chunks.append(chunk[: cap - size])
                    size += len(chunks[-1])
                    if size >= cap:
                        # Leaving the block unread closes the connection.
                        truncated = True
                        break
                body = _decoded(b"".join(chunks), response.headers.get("content-encoding", ""), cap)
                return Answer(response.status_code, response.headers, body, truncated)
        except httpx.TimeoutException as error:
            if self._deadline.left() <= 0 and not isinstance(error, DeadlineExceeded):
                raise DeadlineExceeded(f"no whole answer within {limit:g} s") from error
            raise
        finally:
            self._deadline.at = float("inf")


def _install_deadline(transport: httpx.HTTPTransport, deadline: _Deadline) -> bool:
    """Put _DeadlineBackend under the transport's connection pool; False where it has none.

    httpx 0.23 to 0.28 keep an httpcore pool in `_pool`, and the pool its
    network backend in `_network_backend`, read whenever it connects.
    """
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is None or not hasattr(backend, "connect_tcp"):
        return False
    pool._network_backend = _DeadlineBackend(backend, deadline)  # type: ignore[union-attr]
    return True


def _transport() -> httpx.HTTPTransport:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    try:
        # Request headers and body are two writes: without TCP_NODELAY the
        # body can wait for the server's delayed ACK (40 ms a session).
        return httpx.HTTPTransport(limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    except TypeError:
        # httpx < 0.24 has no socket_options: _DeadlineBackend sets it instead.
        return httpx.HTTPTransport(limits=limits)


def _decoded(raw: bytes, encoding: str, cap: int = ANSWER_CAP) -> bytes:
    """The body without its Content-Encoding, never more than `cap` bytes.

    We ask for identity; a server that compresses anyway is decoded with a
    bounded output (a small gzip can unpack to gigabytes).
    """
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding in ("gzip", "x-gzip", "deflate"):
        try:
            # 32 + MAX_WBITS: a gzip or zlib header, found by itself.
            return zlib.decompressobj(32 + zlib.MAX_WBITS).decompress(raw, cap)
        except zlib.error:
            try:
                return zlib.decompressobj(-zlib.MAX_WBITS).decompress(raw, cap)
            except zlib.error:
                pass
    return f"(a body in Content-Encoding {bounded_text(encoding, 40)!r}, not decoded)".encode()
