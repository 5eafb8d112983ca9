"""HTTP/2 tuning for frame-sized messages (spec: serving)."""

from __future__ import annotations

import binascii

import grpclib.client
import hyperframe.frame
import pytest

from avaproto.transport.http2 import MAX_FRAME_SIZE, _raw_data_repr, quiet_frame_repr
from tests.transport.test_grpc import RGB24, exchange, server

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def hyperframes_own_repr(data: bytes | None) -> str:
    """hyperframe 6's ``_raw_data_repr``, restated: the output to keep."""
    if not data:
        return "None"
    shown = binascii.hexlify(data).decode("ascii")
    if len(shown) > 20:
        shown = shown[:20] + "..."
    return "<hex:" + shown + ">"


@pytest.mark.rule("SRV-11")
@pytest.mark.parametrize("size", [0, 1, 9, 10, 11, 100, 1 << 20])
def test_frame_repr_text_is_unchanged(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert _raw_data_repr(data) == hyperframes_own_repr(data)
    quiet_frame_repr()
    frame = hyperframe.frame.DataFrame(1, data)
    assert hyperframes_own_repr(data) in repr(frame)


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
