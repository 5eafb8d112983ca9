"""HTTP/2 tuning for frame-sized messages (spec: serving)."""

from __future__ import annotations

import grpclib.client
import hyperframe.frame
import pytest

from avaproto.transport import _grpclib_private as http2
from avaproto.transport._grpclib_private import _raw_data_repr, quiet_frame_repr
from avaproto.transport.http2 import MAX_FRAME_SIZE
from tests.transport.test_grpc import RGB24, exchange, server

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.rule("SRV-11")
@pytest.mark.parametrize("size", [0, 1, 9, 10, 11, 100, 1 << 20])
@pytest.mark.parametrize("padding", [None, 0, 3, 40])
def test_frame_repr_text_is_the_librarys(size: int, padding: int | None) -> None:
    """The replacements give the text of hyperframe's own functions, kept at import."""
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert _raw_data_repr(data) == http2.LIBRARY_RAW_DATA_REPR(data)
    flags = ["PADDED"] if padding is not None else []
    frame = hyperframe.frame.DataFrame(1, data, flags=flags)
    if padding is not None:
        frame.pad_length = padding
    # The library's own text, from its own code, with its own hexlifying helper.
    original = hyperframe.frame._raw_data_repr
    hyperframe.frame._raw_data_repr = http2.LIBRARY_RAW_DATA_REPR
    try:
        expected = http2.LIBRARY_DATA_BODY_REPR(frame)
    finally:
        hyperframe.frame._raw_data_repr = original
    quiet_frame_repr()
    assert type(frame)._body_repr is not http2.LIBRARY_DATA_BODY_REPR
    assert frame._body_repr() == expected
    assert expected in repr(frame)


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
