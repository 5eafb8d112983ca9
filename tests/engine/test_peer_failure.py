"""An extension that fails mid-stream, seen from the pipeline (PIPE-6).

The pipeline is the real engine over the in-memory transport; the extension is played
here, message by message, so that its failure arrives the way it does over HTTP/2
under load: its last answers, its status and the end of the stream in one read, while
the pipeline is still sending. The pipeline's next send then fails with the
extension's status while those answers wait to be read. Every answer must still reach
the results, in order, and the stream must end with the extension's status: a send
that met the ended stream once failed the session first (LIFE-3), so that the answers
behind it were refused and the run reported "sending message N was interrupted".
"""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pytest

from avaproto.engine.drive import PipelineStream
from avaproto.engine.outcome import protocol_errors
from avaproto.engine.stream import PEER_FAILURE_GRACE
from avaproto.errors import ProtocolError, RemoteProtocolError, StreamFailed
from avaproto.messages import (
    ContentReference,
    MediaDescriptor,
    MediaSample,
    MediaStreamDescriptor,
    MediaStreamMessage,
    SharedMemoryBufferTransferProperties,
)
from avaproto.status import Status
from avaproto.transport.memory import MemoryChannel, channel_pair
from tests.builders import FRAME_BYTES, extension_descriptor, pipeline_descriptor, video_format

pytestmark = pytest.mark.anyio
TIMEOUT = 20
WINDOW = 8


#: An extension that announces shared memory of its own, so that an answer may refer to
#: it and then needs the pipeline's acknowledgement.
WITH_MEMORY = MediaStreamDescriptor(
    extension_identifier="with-memory",
    media_descriptor=MediaDescriptor(timescale=90000, video_frame_sample_format=video_format()),
    shared_memory_buffer_transfer_properties=SharedMemoryBufferTransferProperties(
        handle_name="extension-owned", length_bytes=FRAME_BYTES
    ),
)


async def failing_extension(
    channel: MemoryChannel, reads: int, answers: int, *, referring: bool = False
) -> None:
    """Answer the descriptor, read ``reads`` samples answering none, then answer the
    first ``answers`` of them and end the stream with INTERNAL, all at once. With
    ``referring`` the last answer refers to the extension's own memory, which the
    pipeline acknowledges: a send inside its reading that meets the ended stream."""
    await channel.receive()
    await channel.send(
        MediaStreamMessage(
            sequence_number=1,
            ack_sequence_number=1,
            media_stream_descriptor=WITH_MEMORY if referring else extension_descriptor(),
        )
    )
    samples = [await channel.receive() for _ in range(reads)]
    last = []
    for number, sample in enumerate(samples[:answers], start=2):
        assert sample is not None and sample.media_sample is not None
        answer = MediaSample(timestamp=sample.media_sample.timestamp)
        if referring and number == 1 + answers:
            answer.content_reference = ContentReference(address_offset=0, length_bytes=FRAME_BYTES)
        last.append(
            MediaStreamMessage(
                sequence_number=number,
                ack_sequence_number=sample.sequence_number,
                media_sample=answer,
            )
        )
    await channel.abort(Status.INTERNAL, "the model crashed", last=last)


async def run(
    reads: int, answers: int, reader_work: int, *, referring: bool = False, frames: int = 30
) -> tuple[list[int], BaseException, float]:
    """Send ``frames`` frames while reading results, as ``avaproto send`` does; before
    keeping each result the reader does ``reader_work`` checkpoints (writing it
    somewhere, say). Returns the acknowledged sample numbers kept, the error the stream
    ended with and the seconds it took."""
    pipeline_end, extension_end = channel_pair(capacity=2 * WINDOW)
    read: list[int] = []
    began = time.monotonic()
    try:
        with anyio.fail_after(TIMEOUT), protocol_errors():
            async with anyio.create_task_group() as outer:
                outer.start_soon(
                    lambda: failing_extension(extension_end, reads, answers, referring=referring)
                )
                async with PipelineStream.open(
                    pipeline_end, pipeline_descriptor(), window=WINDOW
                ) as (stream, results):

                    async def feed() -> None:
                        for t in range(frames):
                            await stream.send(bytes(FRAME_BYTES), timestamp=t)
                        if frames < 30:
                            await anyio.sleep_forever()  # more to come: the input goes on
                        await stream.end()

                    with protocol_errors():
                        async with anyio.create_task_group() as tasks:
                            tasks.start_soon(feed)
                            async for result in results:
                                for _ in range(reader_work):
                                    await anyio.lowlevel.checkpoint()
                                assert result.acknowledged is not None
                                read.append(result.acknowledged)
    except (StreamFailed, AssertionError, TimeoutError) as error:
        return read, error, time.monotonic() - began
    raise AssertionError("the stream did not fail")


@pytest.mark.rule("PIPE-6")
@pytest.mark.parametrize(("reads", "answers"), [(3, 2), (5, 4), (8, 1), (8, 7), (8, 8)])
@pytest.mark.parametrize("reader_work", [0, 1, 3])
async def test_every_answer_before_the_extension_failed_is_read_then_its_status(
    reads: int, answers: int, reader_work: int
) -> None:
    read, error, seconds = await run(reads, answers, reader_work)
    assert isinstance(error, StreamFailed), repr(error)
    assert (error.status, error.detail) == (Status.INTERNAL, "the model crashed")
    assert read == list(range(2, 2 + answers))
    assert seconds < PEER_FAILURE_GRACE / 2  # nothing waited for a reader that reads


@pytest.mark.rule("PIPE-6")
async def test_an_acknowledgement_that_meets_the_failure_loses_no_answer() -> None:
    # Only the acknowledgement is sent once the extension ended the stream.
    read, error, seconds = await run(reads=6, answers=5, reader_work=0, referring=True, frames=6)
    assert isinstance(error, StreamFailed), repr(error)
    assert error.status is Status.INTERNAL
    assert read == [2, 3, 4, 5, 6]
    assert seconds < PEER_FAILURE_GRACE / 2


@pytest.mark.rule("PIPE-6")
async def test_a_failure_with_no_answer_before_it_ends_the_stream_with_its_status() -> None:
    read, error, _ = await run(reads=4, answers=0, reader_work=0)
    assert isinstance(error, StreamFailed), repr(error)
    assert error.status is Status.INTERNAL
    assert read == []


class RefusedOnSecondSample(MemoryChannel):
    """The pipeline's end of the in-memory transport, refusing its second sample as the
    HTTP/2 transport does when it ends the connection for what the extension did (a
    fake of that refusal: the in-memory transport has no connection to end)."""

    async def send(self, message: MediaStreamMessage) -> None:
        if message.sequence_number == 3:
            raise RemoteProtocolError(
                "PIPE-9", Status.INTERNAL, "the extension broke HTTP/2: window below 0"
            )
        await super().send(message)


@pytest.mark.rule("PIPE-9")
async def test_a_send_refused_for_the_extensions_fault_fails_the_stream_with_it() -> None:
    """The stream fails for the extension's fault, named as such, not for the send it
    interrupted (LIFE-3, "sending message 3 was interrupted"): what the stream says
    when asked anything more (a late answer) names the fault."""
    pipeline_end, extension_end = channel_pair(capacity=2 * WINDOW)
    pipeline_end.__class__ = RefusedOnSecondSample
    opened: list[PipelineStream] = []
    with anyio.fail_after(TIMEOUT), pytest.raises(ProtocolError) as failed, protocol_errors():
        async with anyio.create_task_group() as outer:
            outer.start_soon(failing_extension, extension_end, 2, 0)
            async with PipelineStream.open(pipeline_end, pipeline_descriptor(), window=WINDOW) as (
                stream,
                _,
            ):
                opened.append(stream)
                for t in range(2):
                    await stream.send(bytes(FRAME_BYTES), timestamp=t)
    assert (failed.value.rule, failed.value.status) == ("PIPE-9", Status.INTERNAL)
    error = opened[0].session.error
    assert error is not None and error.rule == "PIPE-9"
