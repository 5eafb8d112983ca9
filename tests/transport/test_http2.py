"""HTTP/2 tuning for frame-sized messages (spec: serving)."""

from __future__ import annotations

import grpclib.client
import h2.config
import h2.connection
import hpack
import hyperframe.frame
import pytest

from avaproto.transport._grpclib_private import quiet_frame_repr
from avaproto.transport.http2 import MAX_FRAME_SIZE
from tests.transport.test_grpc import RGB24, exchange, server

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recording:
    """An h2 logger that formats what it is given, as a real one would."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def debug(self, message: str, *args: object) -> None:
        pass

    def trace(self, message: str, *args: object) -> None:
        self.lines.append(message % args)


@pytest.mark.parametrize("size", [0, 11, 16_000])
def test_a_logger_that_logs_frames_gets_the_librarys_text(size: int) -> None:
    """Deferred, the frame's repr is the library's own, made by the logger that logs."""
    quiet_frame_repr()
    logger = Recording()
    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, logger=logger)
    )
    connection.initiate_connection()
    headers = hyperframe.frame.HeadersFrame(1, flags=["END_HEADERS"])
    headers.data = hpack.Encoder().encode(
        [(":method", "POST"), (":scheme", "http"), (":path", "/"), (":authority", "x")]
    )
    data = hyperframe.frame.DataFrame(1, bytes(range(256)) * (size // 256) + bytes(size % 256))
    frames = [hyperframe.frame.SettingsFrame(0), headers, data]
    connection.receive_data(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"".join(f.serialize() for f in frames)
    )
    received = [line for line in logger.lines if line.startswith("Received frame: ")]
    assert received == [f"Received frame: {frame!r}" for frame in frames]


def test_no_repr_is_made_when_nothing_logs() -> None:
    quiet_frame_repr()
    frame = hyperframe.frame.DataFrame(1, b"x" * 1000)
    assert h2.connection.repr(frame) is frame  # type: ignore[attr-defined]


@pytest.mark.rule("SRV-11")
async def test_the_server_advertises_a_large_frame_size() -> None:
    from grpclib.health.v1.health_grpc import HealthStub
    from grpclib.health.v1.health_pb2 import HealthCheckRequest

    from avaproto.client import connect

    async with server() as extension:
        channel = grpclib.client.Channel("127.0.0.1", extension.port)
        try:
            # The server's SETTINGS precede its first answer on the connection.
            await HealthStub(channel).Check(HealthCheckRequest(), timeout=10)
            assert channel._protocol is not None
            h2 = channel._protocol.connection._connection
            assert h2.max_outbound_frame_size == MAX_FRAME_SIZE
        finally:
            channel.close()
        async with connect(f"127.0.0.1:{extension.port}", format=RGB24) as pipe:
            answers = await exchange(pipe, [bytes(RGB24.frame_bytes)] * 3)
        assert len(answers) == 3
