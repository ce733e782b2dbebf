"""DeviceTransport against raw asyncio servers on loopback, so each test shapes the wire exactly:
what a firmware reply looks like, and the ways a device on a bad network gets it wrong."""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import socket
import struct
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest

from station.devices.transport import DeviceTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

FIRMWARE_BODY = b'{"status":"collection_started","session_id":1011,"device_code":"2025001"}'
FIRMWARE_REPLY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(FIRMWARE_BODY), FIRMWARE_BODY)
)
START_FORM = {"session_id": "1011", "device_code": "2025001"}


@dataclass
class Received:
    """A request as the device read it off the wire."""

    head: bytes
    body: bytes


@dataclass
class Device:
    host: str
    port: int
    received: list[Received] = field(default_factory=list)

    def url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"


StartDevice = Callable[..., Awaitable[Device]]


async def read_request(reader: asyncio.StreamReader) -> Received:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return Received(head=head, body=await reader.readexactly(length))


def replying(*pieces: bytes, pause: float = 0.0) -> Handler:
    """Reads the request, sends the pieces (pausing between them), then hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)

    return handle


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the request, never answers; done when the client gives up and hangs up."""
    await reader.read()


async def stalled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads nothing at all, so the client's writes back up; ends when the test does."""
    await asyncio.Event().wait()


async def resetting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Hangs up with a TCP reset instead of an orderly close."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.fixture
async def start_device() -> AsyncIterator[StartDevice]:
    """A device on a free loopback port; its handler runs once the request has been read."""
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[None]] = set()

    async def start(
        handler: Handler, host: str = "127.0.0.1", *, read_first: bool = True
    ) -> Device:
        device = Device(host=host, port=0)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            handlers.add(asyncio.current_task())  # type: ignore[arg-type]
            try:
                if read_first:
                    device.received.append(await read_request(reader))
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # the client hung up first, as some tests make it do
            finally:
                writer.close()

        server = await asyncio.start_server(handle, host, 0)
        servers.append(server)
        device.port = server.sockets[0].getsockname()[1]
        return device

    yield start

    for task in handlers:
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """Configured as DeviceClient configures its client."""
    client = httpx.AsyncClient(
        transport=DeviceTransport(),
        timeout=httpx.Timeout(1.0),
        headers={"Connection": "close"},
        trust_env=False,
    )
    yield client
    await client.aclose()


# --- replies as devices send them -------------------------------------------------------------


async def test_firmware_reply_with_content_length_is_read(
    http: httpx.AsyncClient, start_device: StartDevice
) -> None:
    device = await start_device(replying(FIRMWARE_REPLY))

    response = await http.post(device.url("/start_collection"), data=START_FORM)

    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"
    assert response.reason_phrase == "OK"
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "status": "collection_started",
        "session_id": 1011,
        "device_code": "2025001",
    }
    [received] = device.received
    assert received.head.startswith(b"POST /start_collection HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{device.port}\r\n".encode() in received.head
    assert b"\r\nConnection: close\r\n" in received.head
    assert b"\r\nContent-Type: application/x-www-form-urlencoded\r\n" in received.head
    assert received.body == b"session_id=1011&device_code=2025001"


async def test_get_sends_path_and_query_without_a_body(
    http: httpx.AsyncClient, start_device: StartDevice
) -> None:
    device = await start_device(replying(FIRMWARE_REPLY))

    response = await http.get(device.url("/status?verbose=1"))

    assert response.status_code == 200
    [received] = device.received
    assert received.head.startswith(b"GET /status?verbose=1 HTTP/1.1\r\n")
    assert received.body == b""


async def test_reply_without_length_ends_when_the_device_hangs_up(
    http: httpx.AsyncClient, start_device: StartDevice
) -> None:
    device = await start_device(
        replying(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n", FIRMWARE_BODY)
    )

    response = await http.post(device.url("/start_collection"), data=START_FORM)

    assert response.status_code == 200
    assert response.content == FIRMWARE_BODY


async def test_chunked_reply_arriving_in_pieces_is_reassembled(
    http: httpx.AsyncClient, start_device: StartDevice
) -> None:
    device = await start_device(
        replying(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n",
            b"Transfer-Encoding: chunked\r\n\r\n",
            b"a\r\n" + FIRMWARE_BODY[:10] + b"\r\n",
            b"%x\r\n%s\r\n" % (len(FIRMWARE_BODY) - 10, FIRMWARE_BODY[10:]),
            b"0\r\n\r\n",
            pause=0.01,
        )
    )

    response = await http.post(device.url("/start_collection"), data=START_FORM)

    assert response.status_code == 200
    assert response.content == FIRMWARE_BODY
    assert response.headers["transfer-encoding"] == "chunked"


async def test_informational_reply_is_skipped_for_the_final_one(
    http: httpx.AsyncClient, start_device: StartDevice
) -> None:
    device = await start_device(replying(b"HTTP/1.1 100 Continue\r\n\r\n", FIRMWARE_REPLY))

    response = await http.post(device.url("/start_collection"), data=START_FORM)

    assert response.status_code == 200
    assert response.content == FIRMWARE_BODY


async def test_rejection_passes_status_and_text_through(
    http: httpx.AsyncClient, start_device: StartDevice
) -> None:
    device = await start_device(
        replying(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 18\r\n"
            b"Connection: close\r\n\r\nMissing parameters"
        )
    )

    response = await http.post(device.url("/start_collection"), data={"session_id": "1"})

    assert response.status_code == 400
    assert response.headers["content-type"] == "text/plain"
    assert response.text == "Missing parameters"


async def test_huge_reply_is_cut_at_the_body_limit(start_device: StartDevice) -> None:
    body = b"x" * 300_000
    device = await start_device(
        replying(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    )

    async with httpx.AsyncClient(transport=DeviceTransport(max_body=100_000)) as client:
        response = await client.get(device.url("/status"))

    assert response.status_code == 200
    assert response.content == body[:100_000]


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="no IPv6 loopback here")
async def test_device_on_ipv6_loopback_is_reached(
    http: httpx.AsyncClient, start_device: StartDevice
) -> None:
    device = await start_device(replying(FIRMWARE_REPLY), host="::1")

    response = await http.post(device.url("/start_collection"), data=START_FORM)

    assert response.status_code == 200
    [received] = device.received
    assert f"\r\nHost: [::1]:{device.port}\r\n".encode() in received.head


async def test_https_is_not_spoken(http: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.UnsupportedProtocol):
        await http.get("https://127.0.0.1:9/status")


# --- bad networks -----------------------------------------------------------------------------


async def test_refused_connection_raises_connect_error_with_the_socket_error(
    http: httpx.AsyncClient, closed_port: int
) -> None:
    with pytest.raises(httpx.ConnectError) as caught:
        await http.get(f"http://127.0.0.1:{closed_port}/status")

    cause = caught.value.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED


async def test_device_whose_backlog_is_full_raises_connect_timeout() -> None:
    # A listener that never accepts, with its queue already full, drops further handshakes.
    with socket.socket() as listener, socket.socket() as queued:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        queued.connect(listener.getsockname())
        port = listener.getsockname()[1]

        timeout = httpx.Timeout(5.0, connect=0.2)
        async with httpx.AsyncClient(transport=DeviceTransport(), timeout=timeout) as client:
            started = time.monotonic()
            with pytest.raises(httpx.ConnectTimeout):
                await client.get(f"http://127.0.0.1:{port}/status")

    assert 0.15 < time.monotonic() - started < 2.0


async def test_silent_device_raises_read_timeout(start_device: StartDevice) -> None:
    device = await start_device(silent)

    timeout = httpx.Timeout(5.0, read=0.2)
    async with httpx.AsyncClient(transport=DeviceTransport(), timeout=timeout) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await client.post(device.url("/start_collection"), data=START_FORM)

    assert 0.15 < time.monotonic() - started < 2.0
    assert len(device.received) == 1


async def test_read_timeout_applies_to_each_read_not_the_whole_reply(
    start_device: StartDevice,
) -> None:
    device = await start_device(
        replying(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n", b"a", b"b", b"c", b"d", pause=0.1)
    )

    timeout = httpx.Timeout(5.0, read=0.3)
    async with httpx.AsyncClient(transport=DeviceTransport(), timeout=timeout) as client:
        response = await client.get(device.url("/status"))

    assert response.content == b"abcd"


async def test_device_not_taking_the_request_raises_write_timeout(
    start_device: StartDevice,
) -> None:
    device = await start_device(stalled, read_first=False)
    # More than loopback socket buffers hold; the device reads none of it.
    huge = b"x" * (64 * 1024 * 1024)

    timeout = httpx.Timeout(5.0, write=0.2)
    async with httpx.AsyncClient(transport=DeviceTransport(), timeout=timeout) as client:
        with pytest.raises(httpx.WriteTimeout):
            await client.post(device.url("/start_collection"), content=huge)


async def test_device_hanging_up_before_replying_raises_remote_protocol_error(
    http: httpx.AsyncClient, start_device: StartDevice
) -> None:
    device = await start_device(replying())

    with pytest.raises(httpx.RemoteProtocolError, match="without a reply"):
        await http.post(device.url("/start_collection"), data=START_FORM)


async def test_device_hanging_up_mid_reply_raises_remote_protocol_error(
    http: httpx.AsyncClient, start_device: StartDevice
) -> None:
    device = await start_device(
        replying(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", FIRMWARE_BODY[:10])
    )

    with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
        await http.post(device.url("/start_collection"), data=START_FORM)


async def test_reply_that_is_not_http_raises_remote_protocol_error(
    http: httpx.AsyncClient, start_device: StartDevice
) -> None:
    device = await start_device(replying(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"))

    with pytest.raises(httpx.RemoteProtocolError):
        await http.get(device.url("/status"))


async def test_connection_reset_while_waiting_raises_read_error(
    http: httpx.AsyncClient, start_device: StartDevice
) -> None:
    device = await start_device(resetting)

    with pytest.raises(httpx.ReadError):
        await http.get(device.url("/status"))


# --- resources --------------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
async def test_no_socket_outlives_a_request_whatever_its_fate(
    start_device: StartDevice, closed_port: int
) -> None:
    fine = await start_device(replying(FIRMWARE_REPLY))
    hangs_up = await start_device(replying(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nab"))
    quiet = await start_device(silent)
    resets = await start_device(resetting)
    urls = [
        fine.url("/status"),
        hangs_up.url("/status"),
        quiet.url("/status"),
        resets.url("/status"),
        f"http://127.0.0.1:{closed_port}/status",
    ]
    timeout = httpx.Timeout(0.2)
    before = _open_fds()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with httpx.AsyncClient(transport=DeviceTransport(), timeout=timeout) as client:
            for _ in range(3):
                outcomes = await asyncio.gather(
                    *(client.get(url) for url in urls), return_exceptions=True
                )
                assert [type(outcome) for outcome in outcomes] == [
                    httpx.Response,
                    httpx.RemoteProtocolError,
                    httpx.ReadTimeout,
                    httpx.ReadError,
                    httpx.ConnectError,
                ]
        await asyncio.sleep(0.1)  # both ends finish closing on the next turns of the loop
        gc.collect()

    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert _open_fds() == before


async def test_cancelled_request_hangs_up_on_the_device(start_device: StartDevice) -> None:
    asked = asyncio.Event()
    hung_up = asyncio.Event()

    async def waiting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.set()
        await reader.read()
        hung_up.set()

    device = await start_device(waiting)

    async with httpx.AsyncClient(transport=DeviceTransport(), timeout=5.0) as client:
        request = asyncio.create_task(client.get(device.url("/status")))
        await asked.wait()
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request

    await asyncio.wait_for(hung_up.wait(), timeout=1.0)
