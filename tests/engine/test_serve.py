"""The extension's engine over the in-memory transport, on asyncio and on trio.

The pipeline's side here is the project's own ``PipelineStream``; both ends run the
real protocol core, so every message is checked on both sides.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import pytest

from avaproto.engine import drive
from avaproto.engine.config import EngineConfig
from avaproto.engine.drive import PipelineStream, Result
from avaproto.engine.extension import ExtensionRefused, FunctionExtension
from avaproto.engine.frame import Frame
from avaproto.engine.outcome import protocol_errors
from avaproto.engine.serve import StreamSummary, serve_stream
from avaproto.errors import InferenceError, ProtocolError, StreamFailed
from avaproto.media import inferences
from avaproto.messages import (
    Entity,
    Inference,
    InferenceType,
    MediaSample,
    MediaStreamMessage,
    Rectangle,
    Tag,
)
from avaproto.protocol.descriptor import StreamDescriptor
from avaproto.status import Status
from avaproto.transport.memory import channel_pair, serve
from tests.builders import FRAME_BYTES, pipeline_descriptor

pytestmark = pytest.mark.anyio
TIMEOUT = 20


def tagged(frame: Frame) -> list[Inference]:
    """One inference naming the frame, so answers can be matched to requests."""
    return [Inference(subtype=f"seq-{frame.sequence_number}-ts-{frame.timestamp}")]


@asynccontextmanager
async def served(
    extension: object,
    config: EngineConfig | None = None,
    *,
    window: int = 8,
    descriptor: object = None,
) -> AsyncIterator[tuple[PipelineStream, anyio.abc.ObjectReceiveStream[Result], list[object]]]:
    """An extension engine and a pipeline stream joined in memory."""
    pipeline_end, extension_end = channel_pair()
    outcome: list[object] = []

    async def run() -> None:
        try:
            outcome.append(await serve(extension_end, extension, config or EngineConfig()))  # type: ignore[arg-type]
        except ProtocolError as error:
            outcome.append(error)

    with anyio.fail_after(TIMEOUT):
        with protocol_errors():
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(run)
                async with PipelineStream.open(
                    pipeline_end, descriptor or pipeline_descriptor(), window=window
                ) as (stream, results):
                    yield stream, results, outcome


class Feed:
    """The pipeline's side: ``count`` frames, then the end of its input; ``sent`` counts
    the frames that went out (the window holds the rest back)."""

    def __init__(self, stream: PipelineStream, count: int) -> None:
        self.stream, self.count, self.sent = stream, count, 0

    async def __call__(self) -> None:
        for t in range(self.count):
            await self.stream.send(bytes(FRAME_BYTES), timestamp=t)
            self.sent += 1
        await self.stream.end()


async def collect(results: anyio.abc.ObjectReceiveStream[Result]) -> list[Result]:
    return [result async for result in results]


async def one_frame(extension: object) -> list[Result]:
    """The answers of ``extension`` to a stream of one frame."""
    async with served(extension) as (stream, results, _):
        await stream.send(bytes(FRAME_BYTES), timestamp=0)
        await stream.end()
        return await collect(results)


@pytest.mark.rule("ACK-1", "ACK-6", "SRV-2")
async def test_every_sample_is_answered_in_order_with_its_ack() -> None:
    async with served(FunctionExtension(tagged)) as (stream, results, outcome):
        numbers: list[int] = []

        async def feed() -> None:
            for t in range(20):
                numbers.append(await stream.send(bytes(FRAME_BYTES), timestamp=t * 3000))
            await stream.end()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(feed)
            answers = await collect(results)
    assert [a.acknowledged for a in answers] == numbers
    assert [a.inferences[0].subtype for a in answers] == [
        f"seq-{n}-ts-{t * 3000}" for t, n in enumerate(numbers)
    ]
    assert [a.timestamp for a in answers] == [t * 3000 for t in range(20)]
    [summary] = outcome
    assert isinstance(summary, StreamSummary)
    assert (summary.frames, summary.inferences, summary.status) == (20, 20, Status.OK)


@pytest.mark.rule("SRV-2", "ACK-8")
@pytest.mark.parametrize("ordered", [True, False])
async def test_random_latency_keeps_order_unless_asked_not_to(ordered: bool) -> None:
    delays = random.Random(7)

    async def slow(frame: Frame) -> list[Inference]:
        await anyio.sleep(delays.random() / 200)
        return tagged(frame)

    config = EngineConfig(max_in_flight=6, ordered=ordered)
    async with served(FunctionExtension(slow), config) as (stream, results, _):

        async def feed() -> None:
            for t in range(40):
                await stream.send(bytes(FRAME_BYTES), timestamp=t)
            await stream.end()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(feed)
            answers = await collect(results)
    acknowledged = [a.acknowledged for a in answers]
    assert sorted(acknowledged) == list(range(2, 42))  # type: ignore[type-var]
    if ordered:
        assert acknowledged == list(range(2, 42))


@pytest.mark.rule("SRV-1")
async def test_no_more_than_max_in_flight_at_once() -> None:
    running = 0
    peak = 0
    release = anyio.Event()

    async def gated(frame: Frame) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    config = EngineConfig(max_in_flight=3)
    async with served(FunctionExtension(gated), config, window=10) as (stream, results, _):

        async def feed() -> None:
            for t in range(10):
                await stream.send(bytes(FRAME_BYTES), timestamp=t)
            await stream.end()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(feed)
            await anyio.wait_all_tasks_blocked()
            # Everything is blocked: the engine holds three frames and reads no more.
            assert (running, peak) == (3, 3)
            assert stream.in_flight > 3  # the pipeline has sent more than that
            release.set()
            answers = await collect(results)
    assert peak == 3
    assert len(answers) == 10


@pytest.mark.rule("LIFE-2", "ACK-1")
async def test_end_of_input_with_frames_in_flight_answers_them_all() -> None:
    gate = anyio.Event()

    async def held(frame: Frame) -> list[Inference]:
        await gate.wait()
        return tagged(frame)

    async with served(FunctionExtension(held), EngineConfig(max_in_flight=8)) as (
        stream,
        results,
        outcome,
    ):
        for t in range(8):
            await stream.send(bytes(FRAME_BYTES), timestamp=t)
        await stream.end()  # half-close while all eight are being processed
        gate.set()
        answers = await collect(results)
    assert len(answers) == 8
    assert stream.session.ledger.settled
    assert isinstance(outcome[0], StreamSummary)


@pytest.mark.rule("SRV-3", "LIFE-3")
async def test_processor_that_raises_ends_the_stream_with_internal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="avaproto")

    def broken(frame: Frame) -> None:
        if frame.sequence_number == 4:
            raise ValueError("model exploded")

    with pytest.raises(StreamFailed) as failed:
        async with served(FunctionExtension(broken)) as (stream, results, outcome):
            for t in range(5):
                await stream.send(bytes(FRAME_BYTES), timestamp=t)
            await stream.end()
            await collect(results)
    [error] = outcome
    assert isinstance(error, ProtocolError)
    assert (error.rule, error.status) == ("SRV-3", Status.INTERNAL)
    assert failed.value.status is Status.INTERNAL
    assert "[SRV-3]" in failed.value.detail
    assert "sample 4" in failed.value.detail and "model exploded" in failed.value.detail
    # Its author is told where: the traceback, once, in the server's log.
    [logged] = [r for r in caplog.records if r.exc_info]
    assert "the extension failed on sample 4" in logged.getMessage()
    assert logged.exc_info is not None
    assert "in broken" in "".join(traceback.format_exception(*logged.exc_info))


@pytest.mark.rule("EMB-1")
async def test_an_embedded_frame_is_read_only_as_a_shared_memory_one_is() -> None:
    """Code that drew on ``frame.rgb()`` worked with embedded frames (send's default)
    and failed with shared memory: both are read-only."""
    seen: list[tuple[bool, bool]] = []

    def look(frame: Frame) -> None:
        assert frame.data is not None
        seen.append((frame.data.readonly, frame.rgb().flags.writeable))

    await one_frame(FunctionExtension(look))
    assert seen == [(True, False)]


@pytest.mark.rule("SRV-3")
async def test_an_inference_the_builders_refuse_is_the_extensions_failure() -> None:
    """A detector's box past the image's edge, given to ``inferences.rectangle``: the
    stream ends INTERNAL, the extension's failure, not INVALID_ARGUMENT, which tells
    the pipeline it sent something wrong."""

    def unclipped(frame: Frame) -> list[Inference]:
        return [inferences.entity("person", 0.5, inferences.rectangle(-0.1, 0.1, 0.2, 0.2))]

    with pytest.raises(StreamFailed) as failed:
        await one_frame(FunctionExtension(unclipped))
    assert failed.value.status is Status.INTERNAL
    assert "[SRV-3] the extension failed on sample 2: [INF-4] box.l = -0.1" in failed.value.detail
    assert "inferences.rectangle(..., clip=True) cuts a detector's box" in failed.value.detail


def test_a_box_cut_to_the_image_keeps_what_lies_inside() -> None:
    """A detector's box starting left of and above the image, and one past its right
    and bottom edges: cut on every side, as the server cuts one it is given."""
    box = inferences.rectangle(-0.1, -0.2, 0.3, 0.4, clip=True)
    assert (box.l, box.t) == (0.0, 0.0)
    assert box.w == pytest.approx(0.2) and box.h == pytest.approx(0.2)
    past = inferences.rectangle(0.9, 0.7, 0.3, 0.5, clip=True)
    assert past.w == pytest.approx(0.1) and past.h == pytest.approx(0.3)
    outside = inferences.rectangle(1.5, 0.2, 0.1, 0.1, clip=True)
    assert (outside.l, outside.w) == (1.0, 0.0)
    with pytest.raises(InferenceError, match=r"box.l = -0.1 is outside"):
        inferences.rectangle(-0.1, 0.1, 0.2, 0.2)


@pytest.mark.rule("SRV-3")
async def test_processor_returning_garbage_ends_the_stream_with_internal() -> None:
    with pytest.raises(StreamFailed):
        async with served(FunctionExtension(lambda frame: ["not an inference"])) as (
            stream,
            results,
            outcome,
        ):
            await stream.send(bytes(FRAME_BYTES), timestamp=0)
            await stream.end()
            await collect(results)
    assert isinstance(outcome[0], ProtocolError)
    assert "returned a value of type builtins.str among the inferences of sample 2" in str(
        outcome[0]
    )
    assert "expected avaproto.messages.Inference" in str(outcome[0])


@pytest.mark.rule("SRV-3", "WIRE-2")
@pytest.mark.parametrize(("count", "fits"), [(900, True), (12_000, False)])
async def test_an_answer_larger_than_a_pipeline_takes_is_the_extensions_failure(
    count: int, fits: bool
) -> None:
    """12,000 entities went out, and the pipeline refused them (WIRE-2), the server
    logging only that the stream was cancelled."""
    many = inferences.entity("person", 0.5, inferences.rectangle(0.1, 0.1, 0.2, 0.2))

    def crowd(frame: Frame) -> list[Inference]:
        return [many] * count

    if fits:
        [answer] = await one_frame(FunctionExtension(crowd))
        assert len(answer.inferences) == count
        return
    with pytest.raises(StreamFailed) as failed:
        await one_frame(FunctionExtension(crowd))
    assert failed.value.status is Status.INTERNAL
    assert "[SRV-3] the extension's answer to sample 2 (12000 inferences) is larger" in (
        failed.value.detail
    )
    assert "100000 fields" in failed.value.detail


@pytest.mark.rule("SRV-3")
async def test_protocs_inferences_are_read_as_avaprotos_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The published extensions build their answers with protoc's classes
    (``inferencing_pb2``, here compiled from protos/ by the official runtime): an
    extension ported from one returns those, and their bytes say the same."""
    from bench.official import official_messages

    official_messages()
    import inferencing_pb2  # made importable by official_messages

    def published(frame: Frame) -> list[object]:
        made = inferencing_pb2.Inference(type=inferencing_pb2.Inference.ENTITY)
        made.entity.tag.value = "car"
        made.entity.box.l, made.entity.box.t, made.entity.box.w, made.entity.box.h = (
            0.25, 0.25, 0.5, 0.5
        )  # fmt: skip
        return [made]

    caplog.set_level(logging.WARNING, logger="avaproto")
    async with served(FunctionExtension(published)) as (stream, results, _):
        for t in range(3):
            await stream.send(bytes(FRAME_BYTES), timestamp=t)
        await stream.end()
        answers = await collect(results)
    assert [a.inferences for a in answers] == [entity_at(0.25)] * 3
    [warned] = [r.getMessage() for r in caplog.records if "inferencing_pb2" in r.getMessage()]
    assert "inferences[0] was protoc's inferencing_pb2.Inference, read as avaproto's" in warned


@pytest.mark.rule("SRV-3")
async def test_another_message_of_protocs_is_refused_by_its_name() -> None:
    from bench.official import official_messages

    official_messages()
    import inferencing_pb2

    with pytest.raises(StreamFailed) as failed:
        async with served(FunctionExtension(lambda frame: [inferencing_pb2.Tag(value="car")])) as (
            stream,
            results,
            _,
        ):
            await stream.send(bytes(FRAME_BYTES), timestamp=0)
            await stream.end()
            await collect(results)
    assert (
        "returned a value of type inferencing_pb2.Tag among the inferences" in failed.value.detail
    )


def entity_at(l: float) -> list[Inference]:  # noqa: E741
    box = Rectangle(l=l, t=0.25, w=0.5, h=0.5)
    return [Inference(type=InferenceType.ENTITY, entity=Entity(tag=Tag(value="car"), box=box))]


@pytest.mark.rule("INF-4")
async def test_a_box_past_the_left_edge_is_cut_to_the_image_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A detector that does not clip gives l < 0 for an object at the image's edge."""
    caplog.set_level(logging.WARNING, logger="avaproto")
    async with served(FunctionExtension(lambda frame: entity_at(-0.25))) as (stream, results, _):
        for t in range(3):
            await stream.send(bytes(FRAME_BYTES), timestamp=t)
        await stream.end()
        answers = await collect(results)
    boxes = [(b.l, b.t, b.w, b.h) for a in answers for b in [a.inferences[0].entity.box]]
    assert boxes == [(0.0, 0.25, 0.25, 0.5)] * 3
    warnings = [r.getMessage() for r in caplog.records if "INF-4" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per stream
    assert re.search(r"sample [234]: \[INF-4\] inferences\[0\]", warnings[0])
    assert "l=-0.25" in warnings[0]


@pytest.mark.rule("INF-3")
async def test_a_confidence_below_zero_goes_out_as_none_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A tracker's object (DeepStream gives it -0.1) passed on as the model gave it."""
    caplog.set_level(logging.WARNING, logger="avaproto")

    def tracked(frame: Frame) -> list[Inference]:
        tag = Tag(value="car", confidence=-0.1)
        box = Rectangle(l=0.25, t=0.25, w=0.5, h=0.5)
        return [Inference(type=InferenceType.ENTITY, entity=Entity(tag=tag, box=box))]

    async with served(FunctionExtension(tracked)) as (stream, results, _):
        for t in range(3):
            await stream.send(bytes(FRAME_BYTES), timestamp=t)
        await stream.end()
        answers = await collect(results)
    tags = [
        (a.inferences[0].entity.tag.value, a.inferences[0].entity.tag.confidence) for a in answers
    ]
    assert tags == [("car", 0.0)] * 3
    warnings = [r.getMessage() for r in caplog.records if "INF-3" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per stream
    assert "entity.tag.confidence = -0.1 below 0" in warnings[0]


@pytest.mark.rule("INF-4", "SRV-3")
async def test_a_box_outside_the_image_still_ends_the_stream() -> None:
    with pytest.raises(StreamFailed) as failed:
        async with served(FunctionExtension(lambda frame: entity_at(-0.75))) as (
            stream,
            results,
            _,
        ):
            await stream.send(bytes(FRAME_BYTES), timestamp=0)
            await stream.end()
            await collect(results)
    assert failed.value.status is Status.INTERNAL
    assert "[INF-4]" in failed.value.detail and "box.l = -0.75" in failed.value.detail


@pytest.mark.rule("SRV-4")
async def test_frame_timeout_ends_the_stream_with_deadline_exceeded() -> None:
    async def stuck(frame: Frame) -> None:
        await anyio.sleep_forever()

    with pytest.raises(StreamFailed) as failed:
        async with served(FunctionExtension(stuck), EngineConfig(frame_timeout=0.05)) as (
            stream,
            results,
            outcome,
        ):
            await stream.send(bytes(FRAME_BYTES), timestamp=0)
            await collect(results)
    assert isinstance(outcome[0], ProtocolError)
    assert outcome[0].status is Status.DEADLINE_EXCEEDED
    assert failed.value.status is Status.DEADLINE_EXCEEDED
    assert "0.05 s" in failed.value.detail


@pytest.mark.rule("SRV-4")
@pytest.mark.parametrize("kind", ["function", "class"])
async def test_frame_timeout_ends_the_stream_for_blocking_sync_processors(kind: str) -> None:
    unblock = threading.Event()

    def stuck(frame: Frame) -> None:
        unblock.wait(TIMEOUT)  # blocks its worker thread, as a model call would

    class Stuck:
        def process(self, frame: Frame) -> None:
            stuck(frame)

    extension = FunctionExtension(stuck) if kind == "function" else Stuck()
    try:
        with pytest.raises(StreamFailed) as failed:
            async with served(extension, EngineConfig(frame_timeout=0.05)) as (
                stream,
                results,
                outcome,
            ):
                await stream.send(bytes(FRAME_BYTES), timestamp=0)
                await collect(results)
    finally:
        unblock.set()  # let the abandoned worker thread finish
    assert isinstance(outcome[0], ProtocolError)
    assert (outcome[0].rule, outcome[0].status) == ("SRV-4", Status.DEADLINE_EXCEEDED)
    assert failed.value.status is Status.DEADLINE_EXCEEDED


class SyncTagger:
    """An extension class written with plain ``def`` methods."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.threads: set[int] = set()

    def open(self, descriptor: StreamDescriptor) -> None:
        self.events.append(f"open {descriptor.extension_configuration}")

    def process(self, frame: Frame) -> list[Inference]:
        self.threads.add(threading.get_ident())
        return tagged(frame)

    def close(self) -> None:
        self.events.append("close")


@pytest.mark.rule("SRV-3")
async def test_extension_classes_with_sync_methods_run_in_worker_threads() -> None:
    extension = SyncTagger()
    async with served(extension, descriptor=pipeline_descriptor(configuration="cfg")) as (
        stream,
        results,
        outcome,
    ):
        for t in range(5):
            await stream.send(bytes(FRAME_BYTES), timestamp=t)
        await stream.end()
        answers = await collect(results)
    assert [a.inferences[0].subtype for a in answers] == [
        f"seq-{n}-ts-{n - 2}" for n in range(2, 7)
    ]
    assert extension.events == ["open cfg", "close"]
    assert threading.get_ident() not in extension.threads
    assert isinstance(outcome[0], StreamSummary)


@pytest.mark.rule("SRV-3")
async def test_a_class_without_open_and_close_is_served() -> None:
    class OnlyProcess:
        async def process(self, frame: Frame) -> list[Inference]:
            return tagged(frame)

    [answer] = await one_frame(OnlyProcess())
    assert answer.acknowledged == 2


@pytest.mark.rule("SRV-3")
def test_a_class_without_process_is_refused_when_loaded() -> None:
    from avaproto.server import as_factory

    class NoProcess:
        def open(self, descriptor: StreamDescriptor) -> None: ...

    with pytest.raises(TypeError, match=r"NoProcess has no process\(frame\) method"):
        as_factory(NoProcess)


class Refusing:
    async def open(self, descriptor: StreamDescriptor) -> None:
        raise ExtensionRefused(f"no model named {descriptor.extension_configuration!r}")

    async def process(self, frame: Frame) -> None:
        raise AssertionError("never called")

    async def close(self) -> None:
        self.closed = True


@pytest.mark.rule("CFG-2", "CFG-3")
async def test_open_may_refuse_the_configuration() -> None:
    extension = Refusing()
    with pytest.raises(StreamFailed) as failed:
        async with served(extension, descriptor=pipeline_descriptor(configuration="yolo9")):
            pass
    assert extension.closed
    assert failed.value.status is Status.INVALID_ARGUMENT
    assert "no model named 'yolo9'" in failed.value.detail


@pytest.mark.rule("SRV-3")
async def test_an_open_that_fails_ends_the_stream_with_internal_naming_the_rule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As a processor that raises does: INTERNAL and one line, not grpclib's UNKNOWN
    'Internal Server Error' with a traceback."""

    class Failing(Refusing):
        async def open(self, descriptor: StreamDescriptor) -> None:
            raise RuntimeError("the model file is missing")

    extension = Failing()
    with pytest.raises(StreamFailed) as failed:
        async with served(extension):
            pass
    assert extension.closed
    assert failed.value.status is Status.INTERNAL
    assert failed.value.detail == (
        "[SRV-3] the extension failed to open the stream: RuntimeError: the model file is missing"
    )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.rule("EMB-3")
async def test_samples_without_content_reach_the_processor() -> None:
    seen: list[tuple[object, list[Inference]]] = []

    def record(frame: Frame) -> None:
        seen.append((frame.data, frame.inferences))

    async with served(FunctionExtension(record)) as (stream, results, _):
        await stream.send(None, timestamp=5, inferences=[Inference(subtype="upstream")])
        await stream.end()
        [answer] = await collect(results)
    assert seen == [(None, [Inference(subtype="upstream")])]
    assert answer.acknowledged == 2


@pytest.mark.rule("LIFE-4")
async def test_pipeline_that_sends_nothing_closes_cleanly() -> None:
    pipeline_end, extension_end = channel_pair()
    with anyio.fail_after(TIMEOUT):
        await pipeline_end.send_end()
        summary = await serve_stream(extension_end, FunctionExtension(tagged))
    assert (summary.frames, summary.status) == (0, Status.OK)


@pytest.mark.rule("DESC-1", "LIFE-3")
async def test_violation_ends_the_stream_with_its_status() -> None:
    pipeline_end, extension_end = channel_pair()
    with anyio.fail_after(TIMEOUT):
        await pipeline_end.send(MediaStreamMessage(sequence_number=1, media_sample=MediaSample()))
        with pytest.raises(ProtocolError) as caught:
            await serve_stream(extension_end, FunctionExtension(tagged))
    assert (caught.value.rule, caught.value.status) == ("DESC-1", Status.FAILED_PRECONDITION)


SyncOrAsync = Callable[[Frame], list[Inference] | Awaitable[list[Inference]]]


@pytest.mark.rule("SRV-1")
async def test_sync_and_async_processors_both_work() -> None:
    async def async_tagged(frame: Frame) -> list[Inference]:
        return tagged(frame)

    for processor in (tagged, async_tagged):
        async with served(FunctionExtension(processor)) as (stream, results, _):
            await stream.send(bytes(FRAME_BYTES), timestamp=1)
            await stream.end()
            [answer] = await collect(results)
        assert answer.inferences == tagged_frame(2, 1)


@pytest.mark.rule("PIPE-2")
async def test_a_window_slot_comes_back_only_when_its_answer_is_read() -> None:
    """Results are bounded by the window: a pipeline that reads none stops sending."""

    async def answer(frame: Frame) -> list[Inference]:  # async: no worker thread to wait on
        return tagged(frame)

    async with served(FunctionExtension(answer), window=3) as (stream, results, _):
        feed = Feed(stream, 5)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(feed)
            await anyio.wait_all_tasks_blocked()
            # Three answered, none read: the window is still full.
            assert (feed.sent, stream.in_flight) == (3, 0)
            assert (await results.receive()).acknowledged == 2
            await anyio.wait_all_tasks_blocked()
            assert feed.sent == 4
            answers = await collect(results)
    assert [a.acknowledged for a in answers] == [3, 4, 5, 6]


async def test_a_sender_that_reads_no_results_is_told_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first script that only sends waited for ever after ``window`` frames, and
    nothing said why: every slot held by an answer nobody had read."""

    async def answer(frame: Frame) -> list[Inference]:
        return tagged(frame)

    monkeypatch.setattr(drive, "UNREAD_WARNING", 0.05)
    caplog.set_level(logging.WARNING)
    async with served(FunctionExtension(answer), window=2) as (stream, results, _):
        feed = Feed(stream, 4)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(feed)
            told = "which 2 answers nobody has read fill: read results() while sending"
            with anyio.fail_after(TIMEOUT):
                while told not in caplog.text:
                    await anyio.sleep(0.01)  # the warning is past a deadline: waited for
            answers = await collect(results)
    assert [a.acknowledged for a in answers] == [2, 3, 4, 5]
    assert caplog.text.count(told) == 1


async def test_a_slow_reader_is_not_told_it_reads_nothing(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer slower per answer than the warning's delay still reads: the warning
    is for a sender whose answers were never read."""

    async def answer(frame: Frame) -> list[Inference]:
        return tagged(frame)

    monkeypatch.setattr(drive, "UNREAD_WARNING", 0.05)
    caplog.set_level(logging.WARNING)
    taken = []
    async with (
        served(FunctionExtension(answer), window=2) as (stream, results, _),
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(Feed(stream, 5))
        async for result in results:
            taken.append(result.acknowledged)
            await anyio.sleep(0.15)  # the consumer's own slow work, not a wait for us
    assert taken == [2, 3, 4, 5, 6]
    assert "nobody has read" not in caplog.text


async def test_answers_left_unread_are_dropped_when_the_block_is_left() -> None:
    async with served(FunctionExtension(tagged), window=4) as (stream, _results, outcome):
        for t in range(4):
            await stream.send(bytes(FRAME_BYTES), timestamp=t)
    [summary] = outcome
    assert isinstance(summary, StreamSummary)
    assert (summary.frames, summary.status) == (4, Status.OK)
    assert stream.statistics.answered == 4


def tagged_frame(number: int, timestamp: int) -> list[Inference]:
    return [Inference(subtype=f"seq-{number}-ts-{timestamp}")]


@pytest.mark.rule("PIPE-2")
async def test_pipeline_keeps_at_most_window_samples_unacknowledged() -> None:
    running = 0
    release = anyio.Event()

    async def gated(frame: Frame) -> None:
        nonlocal running
        running += 1
        await release.wait()

    config = EngineConfig(max_in_flight=10)
    async with served(FunctionExtension(gated), config, window=3) as (stream, results, _):
        feed = Feed(stream, 8)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(feed)
            await anyio.wait_all_tasks_blocked()
            # The extension would take ten; the pipeline holds itself to its window.
            assert (feed.sent, stream.in_flight, running) == (3, 3, 3)
            release.set()
            answers = await collect(results)
    assert [a.acknowledged for a in answers] == list(range(2, 10))


@pytest.mark.rule("SRV-10")
async def test_a_sequential_extension_sees_its_frames_one_at_a_time_in_order() -> None:
    seen: list[int] = []
    running = 0
    generator = random.Random(3)

    class Tracker:
        sequential = True

        async def open(self, descriptor: StreamDescriptor) -> None: ...

        async def process(self, frame: Frame) -> None:
            nonlocal running
            running += 1
            assert running == 1, "two frames of a sequential extension at once"
            for _ in range(generator.randrange(4)):
                await anyio.lowlevel.checkpoint()
            seen.append(frame.sequence_number)
            running -= 1

        async def close(self) -> None: ...

    async with served(Tracker(), EngineConfig(max_in_flight=6)) as (stream, results, _):

        async def feed() -> None:
            for t in range(30):
                await stream.send(bytes(FRAME_BYTES), timestamp=t)
            await stream.end()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(feed)
            answers = await collect(results)
    assert seen == list(range(2, 32))
    assert len(answers) == 30


@pytest.mark.rule("SRV-10")
async def test_a_sequential_extension_still_reads_ahead_while_a_frame_is_processed() -> None:
    release = anyio.Event()
    seen: list[int] = []

    class Tracker:
        sequential = True

        async def open(self, descriptor: StreamDescriptor) -> None: ...

        async def process(self, frame: Frame) -> None:
            seen.append(frame.sequence_number)
            await release.wait()

        async def close(self) -> None: ...

    config = EngineConfig(max_in_flight=6)
    async with served(Tracker(), config, window=10) as (stream, results, _):
        feed = Feed(stream, 10)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(feed)
            await anyio.wait_all_tasks_blocked()
            # One frame in process, five more read ahead (six slots), four in the
            # channel's buffer: the pipeline got all ten out.
            assert (seen, feed.sent) == ([2], 10)
            release.set()
            answers = await collect(results)
    assert seen == list(range(2, 12))
    assert [a.acknowledged for a in answers] == list(range(2, 12))


@pytest.mark.rule("SRV-3", "INF-4")
async def test_processor_returning_an_invalid_inference_ends_the_stream_with_internal() -> None:
    from avaproto.messages import Motion, Rectangle

    def sloppy(frame: Frame) -> list[Inference]:
        return [Inference(motion=Motion(box=Rectangle(l=0.5, t=0.1, w=-0.25, h=0.5)))]

    with pytest.raises(StreamFailed) as caught:
        await one_frame(FunctionExtension(sloppy))
    assert caught.value.status is Status.INTERNAL
    assert "INF-4" in caught.value.detail and "sample 2" in caught.value.detail


@pytest.mark.rule("INF-4")
async def test_processor_returning_a_box_past_the_image_edge_is_answered() -> None:
    from avaproto.messages import Motion, Rectangle

    def unclipped(frame: Frame) -> list[Inference]:
        return [Inference(motion=Motion(box=Rectangle(l=0.5, t=0.5, w=0.9, h=0.75)))]

    [answer] = await one_frame(FunctionExtension(unclipped))
    [inference] = answer.inferences
    assert inference.motion is not None and inference.motion.box is not None
    assert inference.motion.box.w == pytest.approx(0.9)


def test_protocol_errors_surfaces_the_cause_of_a_failed_task_group() -> None:
    cause = ProtocolError("SEQ-3", Status.INVALID_ARGUMENT, "numbers")
    group = BaseExceptionGroup("tasks", [KeyboardInterrupt(), cause])
    with pytest.raises(ProtocolError) as caught, protocol_errors():
        raise group
    assert caught.value is cause
    with pytest.raises(BaseExceptionGroup), protocol_errors():
        raise BaseExceptionGroup("tasks", [ValueError("not a protocol error")])


def test_the_error_asked_for_is_found_in_nested_groups_not_the_group() -> None:
    """An ExceptionGroup is an Exception: asked for the first Exception of a task group
    nested in another (send's, in the engine's), the search gave the inner group, and
    ``send --output - | head`` printed its traceback."""
    broken = BrokenPipeError(32, "Broken pipe")
    nested = BaseExceptionGroup("engine", [ExceptionGroup("send", [broken])])
    with pytest.raises(BrokenPipeError) as caught, protocol_errors((Exception,)):
        raise nested
    assert caught.value is broken


def test_every_extension_is_made_the_whole_protocol() -> None:
    from avaproto.engine.extension import ExtensionBase, as_async_extension

    class Plain:
        async def process(self, frame: Frame) -> None: ...

    class Ordered(ExtensionBase):
        sequential = True

        async def process(self, frame: Frame) -> None: ...

    plain = as_async_extension(Plain())
    assert plain.sequential is False and plain is not None
    ordered = Ordered()
    assert as_async_extension(ordered) is ordered  # already the protocol: used as it is
    assert as_async_extension(ordered).sequential is True
    assert as_async_extension(SyncTagger()).sequential is False


def test_both_roles_keep_one_kind_of_statistics() -> None:
    from avaproto.engine.statistics import StreamStatistics
    from avaproto.messages import Motion
    from avaproto.report import Report

    assert StreamSummary is StreamStatistics and Report is StreamStatistics
    stats = StreamStatistics("peer")
    stats.count_answer([Inference(motion=Motion()), Inference(subtype="x")])
    stats.count_answer([])
    assert (stats.frames, stats.answered, stats.inferences) == (2, 2, 2)
    assert stats.by_type == {"motion": 1, "auto": 1}
    # Types the contract does not name share one entry, however many numbers a peer uses.
    stats.count_answer([Inference.parse(bytes([0x08, 0xE8, number])) for number in (7, 8)])
    assert stats.by_type == {"motion": 1, "auto": 1, "unknown": 2}
    stats.seconds = 3.0
    assert stats.fps == 1.0


@pytest.mark.rule("SRV-2")
async def test_completion_order_answers_a_later_frame_first() -> None:
    """Frame 2 finishes only once frame 3 was answered: possible only in completion order."""
    third_answered = anyio.Event()

    async def held(frame: Frame) -> list[Inference]:
        if frame.sequence_number == 2:
            await third_answered.wait()
        return tagged(frame)

    async with served(FunctionExtension(held), EngineConfig(ordered=False)) as (
        stream,
        results,
        _,
    ):
        await stream.send(bytes(FRAME_BYTES), timestamp=0)
        await stream.send(bytes(FRAME_BYTES), timestamp=1)
        with anyio.fail_after(5):
            first = await results.receive()
        assert first.acknowledged == 3
        third_answered.set()
        second = await results.receive()
        assert second.acknowledged == 2
        await stream.end()
        assert await collect(results) == []


def test_latencies_are_a_bounded_uniform_sample() -> None:
    """A stream that runs for days keeps at most MAX_LATENCIES figures, spread evenly."""
    from avaproto.engine import statistics

    stats = statistics.StreamStatistics("peer")
    total = statistics.MAX_LATENCIES * 3
    for number in range(total):
        stats.add_latency(float(number))
    assert stats.latency_count == total
    assert len(stats.latencies) == statistics.MAX_LATENCIES
    # Each third of the stream holds about a third of the sample (not only the first).
    thirds = [
        sum(1 for v in stats.latencies if v // statistics.MAX_LATENCIES == k) for k in (0, 1, 2)
    ]
    assert all(
        abs(share - statistics.MAX_LATENCIES / 3) < statistics.MAX_LATENCIES / 30
        for share in thirds
    ), thirds


def test_a_summary_without_an_acknowledged_frame_says_so_instead_of_nan() -> None:
    from avaproto.engine.statistics import StreamStatistics

    lines = StreamStatistics().lines()
    assert "latency: none measured (no frame was acknowledged)" in lines
    assert not any("nan" in line for line in lines)
