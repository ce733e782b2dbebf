"""The HTTP transport under DeviceClient: one short HTTP/1.1 exchange per command on asyncio's own
sockets, framed and parsed by h11.

httpx's default transport (httpcore on anyio) spends most of a command's CPU on connection-pool
bookkeeping, per-connect task groups and stream wrappers, all there for keep-alive and many
protocols. A device command needs none of it: it opens a fresh connection, sends one small
request, reads one small reply and hangs up. When a start goes to two hundred devices at once,
that bookkeeping is what the last device waits for.

Failures are raised as the httpx exceptions httpcore would raise, so DeviceClient's mapping and
retries read the same either way.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import h11
import httpx

MAX_BODY = 1024 * 1024  # bytes of a reply kept; whatever answers at a stale address may be huge
_RECV_SIZE = 64 * 1024

# What a timer running out means, by the step the exchange was at.
_CONNECT, _WRITE, _READ = 0, 1, 2
_TIMEOUTS: dict[int, tuple[type[httpx.TimeoutException], str]] = {
    _CONNECT: (httpx.ConnectTimeout, "timed out connecting"),
    _WRITE: (httpx.WriteTimeout, "timed out sending the request"),
    _READ: (httpx.ReadTimeout, "timed out waiting for the reply"),
}


class DeviceTransport(httpx.AsyncBaseTransport):
    """Plain-http requests, each on its own connection that is closed once the reply is read.

    The reply body is read whole (up to max_body bytes, the rest is dropped) before the response
    is handed back, so nothing stays open after handle_async_request returns. Honours the
    connect, write and read timeouts httpx passes in the request's extensions; there is no pool,
    so the pool timeout never applies. Hosts are expected to be IP literals, as DeviceAddress
    holds them; a name would be looked up for IPv4 only.
    """

    def __init__(self, *, max_body: int = MAX_BODY) -> None:
        if max_body <= 0:
            raise ValueError("max_body must be positive")
        self._max_body = max_body

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"devices are spoken to over plain http, not {url.scheme!r}", request=request
            )
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        loop = asyncio.get_running_loop()

        # Framed before connecting, so the request leaves as soon as the connection stands.
        h11_conn = h11.Connection(h11.CLIENT)
        wire = _frame(h11_conn, request, await request.aread())

        host = url.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        step = _CONNECT
        sock: socket.socket | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout_at(_when(loop, timeouts.get("connect"))) as timer:
                try:
                    sock = socket.socket(family, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    await loop.sock_connect(sock, (host, url.port or 80))
                except TimeoutError as exc:  # the kernel gave up before our timer did
                    raise httpx.ConnectTimeout(str(exc), request=request) from exc
                except OSError as exc:
                    raise httpx.ConnectError(str(exc), request=request) from exc

                step = _WRITE
                timer.reschedule(_when(loop, timeouts.get("write")))
                try:
                    await loop.sock_sendall(sock, wire)
                except OSError as exc:
                    raise httpx.WriteError(str(exc), request=request) from exc

                # Only now wrapped in a stream: doing it first would cost every command in a
                # fan-out a turn of the loop before its request could leave.
                step = _READ
                timer.reschedule(_when(loop, timeouts.get("read")))
                reader, writer = await asyncio.open_connection(sock=sock)
                return await self._read_reply(request, h11_conn, reader, timer, timeouts)
        except TimeoutError as exc:
            kind, message = _TIMEOUTS[step]
            raise kind(message, request=request) from exc
        finally:
            if writer is not None:
                writer.close()
            elif sock is not None:
                sock.close()

    async def _read_reply(
        self,
        request: httpx.Request,
        h11_conn: h11.Connection,
        reader: asyncio.StreamReader,
        timer: asyncio.Timeout,
        timeouts: dict[str, float | None],
    ) -> httpx.Response:
        loop = asyncio.get_running_loop()
        read_timeout = timeouts.get("read")
        head: h11.Response | None = None
        body = bytearray()
        while True:
            try:
                event = h11_conn.next_event()
            except h11.RemoteProtocolError as exc:
                message = str(exc) if head else "the device closed the connection without a reply"
                raise httpx.RemoteProtocolError(message, request=request) from exc

            if event is h11.NEED_DATA:
                timer.reschedule(_when(loop, read_timeout))
                try:
                    data = await reader.read(_RECV_SIZE)
                except OSError as exc:
                    raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
                h11_conn.receive_data(data)  # b"" tells h11 the device hung up
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) >= self._max_body:
                    del body[self._max_body :]
                    break
            elif isinstance(event, h11.EndOfMessage):
                break
            # InformationalResponse (1xx) is skipped: the final reply follows it.

        assert head is not None  # h11 yields Data and EndOfMessage only after a Response
        return httpx.Response(
            head.status_code,
            headers=head.headers.raw_items(),
            stream=httpx.ByteStream(bytes(body)),
            extensions={
                "http_version": b"HTTP/" + head.http_version,
                "reason_phrase": head.reason,
            },
        )


def _frame(h11_conn: h11.Connection, request: httpx.Request, content: bytes) -> bytes:
    """The request as it goes on the wire: head and body in one piece, so in one segment."""
    try:
        parts = [
            h11_conn.send(
                h11.Request(
                    method=request.method,
                    target=request.url.raw_path,
                    headers=request.headers.raw,
                )
            ),
            h11_conn.send(h11.Data(data=content)) if content else None,
            h11_conn.send(h11.EndOfMessage()),
        ]
    except h11.LocalProtocolError as exc:
        raise httpx.LocalProtocolError(str(exc), request=request) from exc
    return b"".join(part for part in parts if part)


def _when(loop: asyncio.AbstractEventLoop, seconds: Any) -> float | None:
    """The loop time a step must finish by; None waits for ever."""
    return None if seconds is None else loop.time() + seconds
