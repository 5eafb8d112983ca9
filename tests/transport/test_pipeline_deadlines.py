"""The pipeline against an extension that takes nothing it sends (spec: PIPE-3, PIPE-4).

The extension is raw HTTP/2 (h2 on a loopback port of its own) that keeps its
flow-control window shut: every send of the pipeline would wait for ever. Each wait has
the deadline of what it waits for: the descriptor's, the descriptor timeout; a sample's,
the acknowledgement timeout, also when the extension acknowledged the sample before
taking it.
"""

from __future__ import annotations

import anyio
import anyio.abc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from avaproto.client import connect
from avaproto.codec import decode_message, encode_framed
from avaproto.errors import ProtocolError
from avaproto.messages import MediaStreamMessage
from avaproto.status import Status
from tests.transport.test_goaway import (
    _listening,
    extension_descriptor,
    extension_machine,
    serve_raw,
)
from tests.transport.test_grpc import RGB24

pytestmark = pytest.mark.anyio
TIMEOUT = 10
DEADLINE = 0.3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib runs on asyncio


def shut_window(window: int, early_ack: bool = False) -> object:
    """An extension whose streams may send ``window`` bytes and never more; it answers
    the descriptor, and with ``early_ack`` acknowledges the next sample as soon as its
    first bytes arrive."""

    async def extension(client: anyio.abc.SocketStream) -> None:
        machine = extension_machine(window)
        received, ack_early = b"", early_ack

        async def on_data(event: h2.events.DataReceived) -> bool:
            nonlocal received, ack_early
            before, received = received, received + event.data
            size = 5 + int.from_bytes(received[1:5], "big")
            if not before and len(received) >= size:  # the descriptor
                number = decode_message(received[5:size]).sequence_number
                answer = MediaStreamMessage(
                    sequence_number=1,
                    ack_sequence_number=number,
                    media_stream_descriptor=extension_descriptor(),
                )
                machine.send_data(event.stream_id, encode_framed(answer))
            elif ack_early and len(received) > size:  # a sample has begun
                ack_early = False
                answer = MediaStreamMessage(sequence_number=2, ack_sequence_number=2)
                machine.send_data(event.stream_id, encode_framed(answer))
            return False

        await serve_raw(client, machine, on_data)

    return extension


@pytest.mark.rule("PIPE-3")
async def test_a_descriptor_the_extension_never_takes_ends_at_the_descriptor_timeout() -> None:
    async with _listening(shut_window(0)) as port:  # type: ignore[arg-type]
        with anyio.fail_after(TIMEOUT), pytest.raises(ProtocolError) as failed:
            async with connect(f"127.0.0.1:{port}", format=RGB24, descriptor_timeout=DEADLINE):
                pass
    assert (failed.value.rule, failed.value.status) == ("PIPE-3", Status.DEADLINE_EXCEEDED)
    said = str(failed.value)
    assert said.startswith(f"[PIPE-3] the extension 127.0.0.1:{port} did not open its ")
    assert said.endswith("flow-control window for our descriptor within 0.3 s")


@pytest.mark.rule("PIPE-4")
@pytest.mark.parametrize(
    "early_ack", [False, True], ids=["never-acknowledged", "acknowledged-early"]
)
async def test_a_sample_the_extension_never_takes_ends_at_the_acknowledgement_timeout(
    early_ack: bool,
) -> None:
    """Room for the descriptor and a few bytes more: the sample waits for a window that
    never opens, even once the extension has acknowledged it, which leaves nothing
    outstanding for the acknowledgement deadline to see."""
    async with _listening(shut_window(400, early_ack)) as port:  # type: ignore[arg-type]
        with anyio.fail_after(TIMEOUT), pytest.raises(ProtocolError) as failed:
            async with connect(f"127.0.0.1:{port}", format=RGB24, ack_timeout=DEADLINE) as pipe:
                await pipe.send(bytes(RGB24.frame_bytes), timestamp=0)
    assert (failed.value.rule, failed.value.status) == ("PIPE-4", Status.DEADLINE_EXCEEDED)
    said = str(failed.value)
    assert said.startswith(f"[PIPE-4] the extension 127.0.0.1:{port} did not open its ")
    assert said.endswith("flow-control window for sample 2 within 0.3 s")
