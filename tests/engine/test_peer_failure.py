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

import anyio
import anyio.lowlevel
import pytest

from avaproto.engine.drive import PipelineStream
from avaproto.engine.outcome import protocol_errors
from avaproto.errors import StreamFailed
from avaproto.messages import MediaSample, MediaStreamMessage
from avaproto.status import Status
from avaproto.transport.memory import MemoryChannel, channel_pair
from tests.builders import FRAME_BYTES, extension_descriptor, pipeline_descriptor

pytestmark = pytest.mark.anyio
TIMEOUT = 20
WINDOW = 8


async def failing_extension(channel: MemoryChannel, reads: int, answers: int) -> None:
    """Answer the descriptor, read ``reads`` samples answering none, then answer the
    first ``answers`` of them and end the stream with INTERNAL, all at once."""
    await channel.receive()
    await channel.send(
        MediaStreamMessage(
            sequence_number=1, ack_sequence_number=1, media_stream_descriptor=extension_descriptor()
        )
    )
    samples = [await channel.receive() for _ in range(reads)]
    last = [
        MediaStreamMessage(
            sequence_number=number,
            ack_sequence_number=sample.sequence_number,
            media_sample=MediaSample(timestamp=sample.media_sample.timestamp),
        )
        for number, sample in enumerate(samples[:answers], start=2)
        if sample is not None and sample.media_sample is not None
    ]
    await channel.abort(Status.INTERNAL, "the model crashed", last=last)


async def run(reads: int, answers: int, reader_work: int) -> tuple[list[int], BaseException]:
    """Send frames while reading results, as ``avaproto send`` does; each result read
    is followed by ``reader_work`` checkpoints (a consumer that writes it somewhere).
    Returns the acknowledged sample numbers read and the error the stream ended with."""
    pipeline_end, extension_end = channel_pair(capacity=2 * WINDOW)
    read: list[int] = []
    try:
        with anyio.fail_after(TIMEOUT), protocol_errors():
            async with anyio.create_task_group() as outer:
                outer.start_soon(failing_extension, extension_end, reads, answers)
                async with PipelineStream.open(
                    pipeline_end, pipeline_descriptor(), window=WINDOW
                ) as (stream, results):

                    async def feed() -> None:
                        for t in range(30):
                            await stream.send(bytes(FRAME_BYTES), timestamp=t)
                        await stream.end()

                    with protocol_errors():
                        async with anyio.create_task_group() as tasks:
                            tasks.start_soon(feed)
                            async for result in results:
                                assert result.acknowledged is not None
                                read.append(result.acknowledged)
                                for _ in range(reader_work):
                                    await anyio.lowlevel.checkpoint()
    except (StreamFailed, AssertionError, TimeoutError) as error:
        return read, error
    raise AssertionError("the stream did not fail")


@pytest.mark.rule("PIPE-6")
@pytest.mark.parametrize(("reads", "answers"), [(3, 2), (5, 4), (8, 1), (8, 7), (8, 8)])
@pytest.mark.parametrize("reader_work", [0, 1, 3])
async def test_every_answer_before_the_extension_failed_is_read_then_its_status(
    reads: int, answers: int, reader_work: int
) -> None:
    read, error = await run(reads, answers, reader_work)
    assert isinstance(error, StreamFailed), repr(error)
    assert (error.status, error.detail) == (Status.INTERNAL, "the model crashed")
    assert read == list(range(2, 2 + answers))


@pytest.mark.rule("PIPE-6")
async def test_a_failure_with_no_answer_before_it_ends_the_stream_with_its_status() -> None:
    read, error = await run(reads=4, answers=0, reader_work=0)
    assert isinstance(error, StreamFailed), repr(error)
    assert error.status is Status.INTERNAL
    assert read == []
