"""The extension server and the pipeline client over real HTTP/2 on a loopback port."""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import grpclib.client
import grpclib.const
import grpclib.exceptions
import pytest
import trustme

from avaproto.client import Pipeline, connect
from avaproto.engine.config import EngineConfig
from avaproto.engine.drive import Result
from avaproto.engine.extension import ExtensionRefused
from avaproto.engine.frame import Frame
from avaproto.errors import ProtocolError, StreamFailed
from avaproto.messages import METHOD_PATH, Encoding, Inference, MediaStreamMessage, PixelFormat
from avaproto.protocol.auth import Credentials
from avaproto.protocol.descriptor import StreamDescriptor
from avaproto.protocol.video_format import VideoFormat
from avaproto.server import running
from avaproto.status import Status
from avaproto.transport.grpc_server import ExtensionServer, ServerConfig
from avaproto.transport.tls import client_context, server_context
from tests.builders import pipeline_descriptor

pytestmark = pytest.mark.anyio
TIMEOUT = 30
RGB24 = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 32, 24)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib runs on asyncio


def tagged(frame: Frame) -> list[Inference]:
    size = len(frame.data or b"")
    return [Inference(subtype=f"{frame.sequence_number}:{frame.timestamp}:{size}")]


@asynccontextmanager
async def server(target: Any = tagged, **config: Any) -> AsyncIterator[ExtensionServer]:
    with anyio.fail_after(TIMEOUT):
        async with running(target, ServerConfig(port=0, **config), grace=2) as started:
            yield started


@asynccontextmanager
async def grpclib_call(port: int) -> AsyncIterator[tuple[grpclib.client.Channel, Any]]:
    """A call of grpclib's own client, as a pipeline of another stack makes it."""
    channel = grpclib.client.Channel("127.0.0.1", port)
    async with channel.request(
        METHOD_PATH,
        grpclib.const.Cardinality.STREAM_STREAM,
        MediaStreamMessage,
        MediaStreamMessage,
    ) as stream:
        yield channel, stream


async def exchange(pipeline: Pipeline, frames: list[bytes | None]) -> list[Result]:
    async def feed() -> None:
        for t, frame in enumerate(frames):
            await pipeline.send(frame, timestamp=t * 3000)
        await pipeline.end()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(feed)
        return [result async for result in pipeline.results()]


@pytest.mark.rule("ACK-1", "EMB-1", "CONN-1", "CONN-2", "CONN-3")
@pytest.mark.parametrize(
    "fmt",
    [
        RGB24,
        VideoFormat.checked(Encoding.RAW, PixelFormat.BGRA, 17, 9, 80),
        VideoFormat.checked(Encoding.RAW, PixelFormat.YUV420P, 33, 17),
        VideoFormat.checked(Encoding.RAW, PixelFormat.RGB565LE, 8, 8),
        VideoFormat.checked(Encoding.JPG),
    ],
    ids=str,
)
async def test_frames_are_answered_end_to_end(fmt: VideoFormat) -> None:
    size = fmt.frame_bytes if fmt.is_raw else 1000
    async with server() as extension, connect(f"127.0.0.1:{extension.port}", format=fmt) as pipe:
        assert pipe.extension.extension_identifier == "avaproto"
        results = await exchange(pipe, [bytes([t]) * size for t in range(12)])
    assert [r.acknowledged for r in results] == list(range(2, 14))
    assert [r.inferences[0].subtype for r in results] == [
        f"{n}:{t * 3000}:{size}" for t, n in enumerate(range(2, 14))
    ]
    assert all(r.latency is not None and r.latency >= 0 for r in results)


class TestAuthentication:
    CREDENTIALS = Credentials("pipeline", "s3cret")

    @pytest.mark.rule("AUTH-2", "AUTH-3")
    async def test_right_credentials(self) -> None:
        async with (
            server(credentials=self.CREDENTIALS) as extension,
            connect(
                f"127.0.0.1:{extension.port}", format=RGB24, credentials=self.CREDENTIALS
            ) as pipe,
        ):
            assert len(await exchange(pipe, [bytes(RGB24.frame_bytes)])) == 1

    @pytest.mark.rule("AUTH-3", "AUTH-4")
    @pytest.mark.parametrize(
        ("credentials", "says"),
        [
            (None, "missing x-ms-authentication"),
            (Credentials("pipeline", "wrong"), "wrong username or password"),
            (Credentials("intruder", "s3cret"), "wrong username or password"),
        ],
    )
    async def test_refused_before_any_message_is_read(
        self, credentials: Credentials | None, says: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="avaproto")
        opened: list[object] = []

        class Recording:
            def __init__(self) -> None:
                opened.append(self)

            async def open(self, descriptor: StreamDescriptor) -> None: ...
            async def process(self, frame: Frame) -> None: ...
            async def close(self) -> None: ...

        async with server(Recording, credentials=self.CREDENTIALS) as extension:
            with pytest.raises(StreamFailed) as caught:
                async with connect(
                    f"127.0.0.1:{extension.port}", format=RGB24, credentials=credentials
                ):
                    pass
        assert caught.value.status is Status.UNAUTHENTICATED
        assert says in caught.value.detail and "[AUTH-3]" in caught.value.detail
        assert "s3cret" not in caught.value.detail
        assert opened == []
        [line] = [r.getMessage() for r in caplog.records if "[AUTH-3]" in r.getMessage()]
        assert line.startswith("stream of 127.0.0.1:") and says in line

    @pytest.mark.rule("AUTH-3")
    def test_the_refusal_of_another_scheme_survives_the_logs_redaction(self) -> None:
        from avaproto.cli import redact
        from avaproto.protocol.auth import check_authentication

        with pytest.raises(ProtocolError) as caught:
            check_authentication(["Bearer abc"], self.CREDENTIALS)
        assert "must be 'Basic ' and the base64 of username:password" in str(caught.value)
        assert redact(str(caught.value)) == str(caught.value)

    @pytest.mark.rule("AUTH-3")
    async def test_malformed_header(self) -> None:
        async with server(credentials=self.CREDENTIALS) as extension:
            status, detail = await raw_call(
                extension.port, [], metadata=[("x-ms-authentication", "Basic %%%")]
            )
        assert status is grpclib.const.Status.UNAUTHENTICATED
        assert "base64" in (detail or "")

    @pytest.mark.rule("AUTH-1")
    async def test_without_configured_credentials_any_header_is_accepted(self) -> None:
        async with (
            server() as extension,
            connect(
                f"127.0.0.1:{extension.port}",
                format=RGB24,
                credentials=Credentials("anyone", "anything"),
            ) as pipe,
        ):
            assert len(await exchange(pipe, [bytes(RGB24.frame_bytes)])) == 1


class TestTLS:
    @pytest.fixture
    def tls(self, tmp_path: Path) -> dict[str, Any]:
        ca = trustme.CA()
        cert = ca.issue_cert("localhost")
        cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        return {
            "server": server_context(tmp_path / "server.pem", tmp_path / "server.pem"),
            "client": client_context(ca=tmp_path / "ca.pem"),
        }

    @pytest.mark.rule("TLS-1")
    async def test_stream_over_tls(self, tls: dict[str, Any]) -> None:
        async with (
            server(ssl=tls["server"]) as extension,
            connect(f"localhost:{extension.port}", format=RGB24, tls=tls["client"]) as pipe,
        ):
            assert len(await exchange(pipe, [bytes(RGB24.frame_bytes)] * 3)) == 3

    @pytest.mark.rule("TLS-2")
    async def test_certificate_must_name_the_dialled_host(self, tls: dict[str, Any]) -> None:
        async with server(ssl=tls["server"]) as extension:
            with pytest.raises(StreamFailed) as caught:
                # The certificate names "localhost", not the address dialled.
                async with connect(f"127.0.0.1:{extension.port}", format=RGB24, tls=tls["client"]):
                    pass
        assert caught.value.status is Status.UNAVAILABLE
        assert "certificate" in caught.value.detail.lower()


@pytest.mark.rule("CFG-1", "CFG-2")
async def test_configuration_reaches_the_extension() -> None:
    seen: list[str] = []

    class Configured:
        async def open(self, descriptor: StreamDescriptor) -> None:
            seen.append(descriptor.extension_configuration)

        async def process(self, frame: Frame) -> None:
            seen.append(frame.configuration)

        async def close(self) -> None: ...

    configuration = '{"model": "yolov3", "classes": ["person", "car"], "ü": 1}'
    async with (
        server(Configured) as extension,
        connect(f"127.0.0.1:{extension.port}", format=RGB24, configuration=configuration) as pipe,
    ):
        await exchange(pipe, [bytes(RGB24.frame_bytes)])
    assert seen == [configuration, configuration]


@pytest.mark.rule("CFG-3")
async def test_extension_refusing_the_configuration() -> None:
    class Picky:
        async def open(self, descriptor: StreamDescriptor) -> None:
            raise ExtensionRefused("threshold must be a number from 0 to 1, got 'high'")

        async def process(self, frame: Frame) -> None: ...
        async def close(self) -> None: ...

    async with server(Picky) as extension:
        with pytest.raises(StreamFailed) as caught:
            async with connect(f"127.0.0.1:{extension.port}", format=RGB24):
                pass
    assert caught.value.status is Status.INVALID_ARGUMENT
    assert "threshold" in caught.value.detail


@pytest.mark.rule("LIFE-2", "ACK-1")
async def test_half_close_with_frames_in_flight_answers_them_all() -> None:
    gate = anyio.Event()

    async def held(frame: Frame) -> list[Inference]:
        await gate.wait()
        return tagged(frame)

    async with (
        server(held, engine=EngineConfig(max_in_flight=8)) as extension,
        connect(f"127.0.0.1:{extension.port}", format=RGB24, window=8) as pipe,
    ):
        for t in range(8):
            await pipe.send(bytes(RGB24.frame_bytes), timestamp=t)
        await pipe.end()
        gate.set()
        results = [r async for r in pipe.results()]
    assert [r.acknowledged for r in results] == list(range(2, 10))


@pytest.mark.rule("SRV-3", "SRV-6")
async def test_failing_processor_ends_only_its_own_stream() -> None:
    def picky(frame: Frame) -> list[Inference]:
        if frame.configuration == "fail" and frame.sequence_number == 3:
            raise RuntimeError("boom")
        return tagged(frame)

    async with server(picky) as extension:
        target = f"127.0.0.1:{extension.port}"
        async with connect(target, format=RGB24, configuration="ok") as healthy:
            await healthy.send(bytes(RGB24.frame_bytes), timestamp=0)
            with pytest.raises(StreamFailed) as caught:
                async with connect(target, format=RGB24, configuration="fail") as failing:
                    await exchange(failing, [bytes(RGB24.frame_bytes)] * 3)
            rest = await exchange(healthy, [bytes(RGB24.frame_bytes)] * 3)
    assert caught.value.status is Status.INTERNAL
    assert "sample 3" in caught.value.detail and "RuntimeError: boom" in caught.value.detail
    assert [r.acknowledged for r in rest] == [2, 3, 4, 5]


@pytest.mark.rule("PIPE-6")
@pytest.mark.parametrize("reader_sleeps", [False, True])
async def test_every_answer_before_a_processor_failure_reaches_the_reader(
    reader_sleeps: bool,
) -> None:
    """The pipeline keeps sending while the extension fails on sample 40, so its send
    can meet the ended stream before the reader has the answers before it; a reader
    that awaits while handling each answer must still get all of them, then the
    status."""

    def crashes(frame: Frame) -> list[Inference]:
        if frame.sequence_number == 40:
            raise RuntimeError("the model crashed")
        return tagged(frame)

    read: list[int] = []
    async with server(crashes, engine=EngineConfig(max_in_flight=1)) as extension:
        with pytest.raises(StreamFailed) as caught:
            async with connect(f"127.0.0.1:{extension.port}", format=RGB24) as pipe:

                async def feed() -> None:
                    for t in range(200):
                        await pipe.send(bytes(RGB24.frame_bytes), timestamp=t)
                    await pipe.end()

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(feed)
                    async for result in pipe.results():
                        if reader_sleeps:
                            await anyio.sleep(0.001)  # an async write of the result
                        assert result.acknowledged is not None
                        read.append(result.acknowledged)
    assert caught.value.status is Status.INTERNAL
    assert "the model crashed" in caught.value.detail
    assert read == list(range(2, 40))


@pytest.mark.rule("SRV-5")
async def test_oversized_message_is_refused_before_buffering() -> None:
    big = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 256, 256)
    async with server(max_message_bytes=100_000) as extension:
        with pytest.raises(StreamFailed) as caught:
            async with connect(f"127.0.0.1:{extension.port}", format=big) as pipe:
                await exchange(pipe, [bytes(big.frame_bytes)])
    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    assert caught.value.detail.startswith("[SRV-5] ")
    assert "100000 bytes" in caught.value.detail


@pytest.mark.rule("SRV-19")
async def test_a_descriptor_past_its_limit_is_refused_before_buffering() -> None:
    async with server(max_descriptor_bytes=4096) as extension:
        target = f"127.0.0.1:{extension.port}"
        async with connect(target, format=RGB24, configuration="x" * 3000) as pipe:
            await exchange(pipe, [bytes(RGB24.frame_bytes)])  # under it: served
        with pytest.raises(StreamFailed) as caught:
            async with connect(target, format=RGB24, configuration="x" * 5000):
                pass
    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    assert caught.value.detail.startswith("[SRV-19] message of ")
    assert "exceeds the limit of 4096 bytes" in caught.value.detail


async def test_a_reset_stream_leaves_nothing_of_it_behind() -> None:
    """grpclib keeps the error a reset raised until it next collects its finished calls;
    the frames that error went through are cleared, so what they held goes at once."""
    import gc
    import weakref

    opened = anyio.Event()
    made: list[weakref.ref[Any]] = []

    class Extension:
        def __init__(self) -> None:
            made.append(weakref.ref(self))

        async def open(self, descriptor: StreamDescriptor) -> None:
            opened.set()

        async def process(self, frame: Frame) -> None: ...
        async def close(self) -> None: ...

    with anyio.fail_after(TIMEOUT):
        async with server(Extension) as extension:
            async with grpclib_call(extension.port) as (channel, stream):
                await stream.send_message(
                    MediaStreamMessage(
                        sequence_number=1,
                        media_stream_descriptor=pipeline_descriptor(configuration="x" * 1000),
                    )
                )
                await opened.wait()
                await stream.cancel()  # RST_STREAM CANCEL
            channel.close()
            await extension.service.wait_idle()
            gc.collect()
            [gone] = made
            assert gone() is None


@pytest.mark.rule("SRV-16")
async def test_a_pipeline_gone_during_the_extensions_close_lets_it_finish(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """grpclib ends a call whose stream was reset, or whose connection closed, by
    cancelling its task natively: a close() under way (the pipeline has its status and
    closes its channel) was cut short, and the stream's closing line never logged."""
    from avaproto.transport.guard import ConnectionGuard

    caplog.set_level(logging.INFO, logger="avaproto")
    closing, reset, closed = anyio.Event(), anyio.Event(), anyio.Event()
    lost = ConnectionGuard.connection_lost

    def seen_lost(self: ConnectionGuard, error: BaseException | None) -> None:
        lost(self, error)  # grpclib ends the connection's calls in there
        reset.set()

    monkeypatch.setattr(ConnectionGuard, "connection_lost", seen_lost)

    class Extension:
        async def process(self, frame: Frame) -> None: ...

        async def close(self) -> None:
            closing.set()
            await reset.wait()
            closed.set()

    with anyio.fail_after(TIMEOUT):
        async with server(Extension) as extension:
            async with grpclib_call(extension.port) as (channel, stream):
                await stream.send_message(
                    MediaStreamMessage(
                        sequence_number=1, media_stream_descriptor=pipeline_descriptor()
                    ),
                    end=True,
                )
                await closing.wait()
                channel.close()  # the connection, as the pipeline goes
            await closed.wait()
            await extension.service.wait_idle()
    [line] = [r.getMessage() for r in caplog.records if "stream closed" in r.getMessage()]
    assert "0 frames" in line


@pytest.mark.rule("SRV-8")
async def test_a_close_that_never_returns_holds_its_stream_no_longer_than_the_close_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Shielded so that a reset cannot cut it short, a close() that never returned held
    the server's drain, and its process, for ever."""
    caplog.set_level(logging.WARNING, logger="avaproto")

    class Stuck:
        async def process(self, frame: Frame) -> None: ...

        async def close(self) -> None:
            await anyio.sleep_forever()

    with anyio.fail_after(TIMEOUT):
        async with server(Stuck, engine=EngineConfig(close_timeout=0.2)) as extension:
            async with connect(f"127.0.0.1:{extension.port}", format=RGB24):
                pass
            await extension.service.wait_idle()
    [line] = [r.getMessage() for r in caplog.records if "close()" in r.getMessage()]
    assert "the extension's close() did not return within 0.2 s" in line
    assert "(--close-timeout)" in line


def _slots_taken() -> Any:
    from avaproto.engine.extension import ExtensionRefused

    raise ExtensionRefused("all 4 model slots are taken", status=Status.UNAVAILABLE, rule="SRV-6")


@pytest.mark.rule("SRV-3")
async def test_a_factory_that_refuses_a_stream_ends_it_with_its_own_status() -> None:
    """A refusal is not a failure to make the extension: UNAVAILABLE is retried."""
    async with server(_slots_taken) as extension:
        with pytest.raises(StreamFailed) as caught:
            async with connect(f"127.0.0.1:{extension.port}", format=RGB24):
                pass
    assert caught.value.status is Status.UNAVAILABLE
    assert "[SRV-6] all 4 model slots are taken" in str(caught.value)


def _no_model() -> Any:
    raise MemoryError("CUDA out of memory")


@pytest.mark.rule("SRV-3")
@pytest.mark.parametrize(
    ("factory", "says"),
    [
        (_no_model, "MemoryError: CUDA out of memory"),
        (lambda: 42, "TypeError: the factory gave a builtins.int, which has no process(frame)"),
    ],
)
async def test_an_extension_that_cannot_be_made_ends_its_stream_internal(
    factory: Any, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Not UNKNOWN "Internal Server Error" and grpclib's traceback: the rule, what the
    factory raised, and the traceback in the server's log, once."""
    caplog.set_level(logging.WARNING)
    async with server(factory) as extension:
        with pytest.raises(StreamFailed) as caught:
            async with connect(f"127.0.0.1:{extension.port}", format=RGB24):
                pass
    assert caught.value.status is Status.INTERNAL
    assert "[SRV-3] the extension could not be made for this stream: " + says in str(caught.value)
    [logged] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert logged.name == "avaproto.server" and logged.exc_info is not None
    assert logged.getMessage().startswith("stream of 127.0.0.1:")


async def test_an_error_of_the_callers_own_comes_out_of_connect_as_raised() -> None:
    """Not an ExceptionGroup of one, which ``except KeyError`` does not catch."""
    async with server() as extension:
        with pytest.raises(KeyError, match="label"):
            async with connect(f"127.0.0.1:{extension.port}", format=RGB24) as pipe:
                await pipe.send(bytes(RGB24.frame_bytes), timestamp=0)
                raise KeyError("label")


async def test_serve_listens_where_its_config_says_unless_told_otherwise() -> None:
    """``serve(config=ServerConfig(port=0))`` was moved to serve's own default, 5001."""
    from avaproto.server import serve

    ports: list[int] = []
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:

            def ready(server: ExtensionServer) -> None:
                ports.append(server.port)
                tasks.cancel_scope.cancel()

            tasks.start_soon(partial(serve, tagged, config=ServerConfig(port=0), ready=ready))
    [port] = ports
    assert port not in (0, 5001)


def test_clearing_an_errors_frames_leaves_a_task_that_still_runs_running() -> None:
    """An error a stream ends with may be linked to one a task still running raised (a
    model's worker that passes its error on and goes on): only references are dropped."""
    from avaproto.transport.grpc_server import _drop_tracebacks

    def worker() -> Iterator[Any]:
        try:
            raise RuntimeError("the model failed")
        except RuntimeError as error:
            caught = error
        yield caught
        yield "still running"

    running_worker = worker()
    passed_on = next(running_worker)
    ended = ValueError("the stream was reset")
    ended.__context__ = passed_on
    _drop_tracebacks(ended)
    assert passed_on.__traceback__ is None
    assert next(running_worker) == "still running"


@pytest.mark.rule("SRV-6")
async def test_stream_limit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="avaproto")
    async with server(max_streams=1) as extension:
        target = f"127.0.0.1:{extension.port}"
        async with connect(target, format=RGB24) as first:
            for _ in range(3):
                with pytest.raises(StreamFailed) as caught:
                    async with connect(target, format=RGB24):
                        pass
            assert len(await exchange(first, [bytes(RGB24.frame_bytes)])) == 1
    assert caught.value.status is Status.RESOURCE_EXHAUSTED
    # The operator hears of it: one line for the three (at most one per 10 s).
    [line] = [r.getMessage() for r in caplog.records if "[SRV-6]" in r.getMessage()]
    assert line.startswith("refused a stream of 127.0.0.1:") and "(--max-streams)" in line


@pytest.mark.rule("SRV-9")
async def test_health_service_reports_serving() -> None:
    from grpclib.health.v1.health_grpc import HealthStub
    from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

    async with server() as extension:
        channel = grpclib.client.Channel("127.0.0.1", extension.port)
        try:
            reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=TIMEOUT)
        finally:
            channel.close()
    assert reply.status == HealthCheckResponse.SERVING


@pytest.mark.rule("SRV-8")
async def test_drain_lets_running_streams_finish_and_refuses_new_ones() -> None:
    gate = anyio.Event()
    answered: list[Result] = []

    async def held(frame: Frame) -> list[Inference]:
        await gate.wait()
        return tagged(frame)

    with anyio.fail_after(TIMEOUT):
        async with running(held, ServerConfig(port=0), grace=10) as extension:
            target = f"127.0.0.1:{extension.port}"
            # A connection made before the drain: a new stream on it reaches the server.
            early = grpclib.client.Channel("127.0.0.1", extension.port)
            try:
                async with (
                    connect(target, format=RGB24) as pipe,
                    anyio.create_task_group() as tasks,
                ):
                    await pipe.send(bytes(RGB24.frame_bytes), timestamp=0)
                    async with early.request(
                        METHOD_PATH,
                        grpclib.const.Cardinality.STREAM_STREAM,
                        MediaStreamMessage,
                        MediaStreamMessage,
                    ) as warm:
                        await warm.send_request()  # connected; no stream started yet
                        await warm.cancel()
                    tasks.start_soon(extension.drain, 10)
                    while not extension.service.draining:
                        await anyio.wait_all_tasks_blocked()
                    with pytest.raises(StreamFailed):  # the listener is closed
                        async with connect(target, format=RGB24):
                            pass
                    # Told GOAWAY, grpclib's client takes no new stream on the old
                    # connection, and the listener is closed to a new one.
                    with pytest.raises(
                        (ConnectionRefusedError, grpclib.exceptions.StreamTerminatedError)
                    ):
                        async with early.request(
                            METHOD_PATH,
                            grpclib.const.Cardinality.STREAM_STREAM,
                            MediaStreamMessage,
                            MediaStreamMessage,
                        ) as late:
                            await late.send_message(MediaStreamMessage(sequence_number=1))
                            await late.recv_message()
                    gate.set()
                    await pipe.end()
                    answered.extend([r async for r in pipe.results()])
            finally:
                early.close()
    assert [r.acknowledged for r in answered] == [2]  # the stream open went on


@pytest.mark.rule("SRV-8")
async def test_drain_says_goaway_at_once_and_ends_streams_past_the_grace_with_a_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As grpc-core's servers stop: GOAWAY NO_ERROR (no stream unserved) as the drain
    begins, so clients open no new stream here; a stream still open when the grace
    ends gets UNAVAILABLE naming why, not a connection closed under it."""
    from tests.transport.test_hostile_http2 import DESCRIPTOR, REQUEST, Attacker

    async def never(frame: Frame) -> list[Inference]:
        await anyio.sleep_forever()
        return []

    caplog.set_level(logging.INFO, logger="avaproto")
    cut: list[StreamFailed] = []
    with anyio.fail_after(TIMEOUT):
        async with (
            running(never, ServerConfig(port=0), grace=0.3) as extension,
            Attacker.connect(extension.port) as watcher,
        ):
            stream_id = watcher.h2.get_next_available_stream_id()
            watcher.h2.send_headers(stream_id, REQUEST)
            watcher.h2.send_data(stream_id, DESCRIPTOR)
            assert await watcher.flush()
            await watcher.until(lambda: watcher.answers(stream_id) == 1)
            try:
                async with connect(f"127.0.0.1:{extension.port}", format=RGB24) as pipe:
                    await pipe.send(bytes(RGB24.frame_bytes), timestamp=0)
                    async with anyio.create_task_group() as tasks:
                        tasks.start_soon(extension.drain, 0.3)
                        await watcher.until(lambda: watcher.goaway is not None)
                        await pipe.end()
                        _ = [r async for r in pipe.results()]
            except* StreamFailed as failed:
                cut.extend(e for e in failed.exceptions if isinstance(e, StreamFailed))
    goaway = watcher.goaway
    assert goaway is not None
    assert (goaway.error_code, goaway.last_stream_id) == (0, stream_id)  # the last it took
    assert goaway.additional_data.startswith(b"[SRV-8] the server is shutting down")
    [failure] = cut
    assert failure.status is Status.UNAVAILABLE
    assert "[SRV-8] the server stopped: its grace of 0.3 s" in failure.detail
    closings = [r.getMessage() for r in caplog.records if "stream closed" in r.getMessage()]
    assert len(closings) == 2  # the server's line says what the pipeline was told
    assert all("UNAVAILABLE: [SRV-8] the server stopped" in line for line in closings)


class _RawCodec:
    __content_subtype__ = "proto"

    def encode(self, message: bytes, message_type: Any) -> bytes:
        return message

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


async def raw_call(
    port: int, payloads: list[bytes], metadata: list[tuple[str, str]] | None = None
) -> tuple[grpclib.const.Status, str | None]:
    """Send raw bytes as messages; return the status the server ended with."""
    channel = grpclib.client.Channel("127.0.0.1", port, codec=_RawCodec())  # type: ignore[arg-type]
    try:
        async with channel.request(
            METHOD_PATH, grpclib.const.Cardinality.STREAM_STREAM, bytes, bytes, metadata=metadata
        ) as stream:
            await stream.send_request()
            for payload in payloads:
                await stream.send_message(payload)
            await stream.end()
            async for _ in stream:
                pass
    except grpclib.exceptions.GRPCError as error:
        return error.status, error.message
    finally:
        channel.close()
    return grpclib.const.Status.OK, None


@pytest.mark.rule("WIRE-1")
async def test_malformed_message_ends_the_stream_with_invalid_argument() -> None:
    async with server() as extension:
        status, detail = await raw_call(extension.port, [b"\x08\x01\x32\x09\x08"])
    assert status is grpclib.const.Status.INVALID_ARGUMENT
    assert "[WIRE-1]" in (detail or "") and "runs past the end" in (detail or "")


@pytest.mark.rule("DESC-1")
async def test_first_message_not_a_descriptor_over_the_network() -> None:
    async with server() as extension:
        sample_first = bytes(MediaStreamMessage(sequence_number=1, ack_sequence_number=0))
        status, detail = await raw_call(extension.port, [sample_first])
    assert status is grpclib.const.Status.FAILED_PRECONDITION
    assert "[DESC-1]" in (detail or "")


def _frames(data: bytes) -> tuple[list[tuple[int, int, int, bytes]], bytes]:
    """Whole HTTP/2 frames at the start of ``data`` (type, flags, stream, payload), and the rest."""
    frames = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        if len(data) < 9 + length:
            break
        kind, flags = data[3], data[4]
        stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        frames.append((kind, flags, stream_id, data[9 : 9 + length]))
        data = data[9 + length :]
    return frames, data


@pytest.mark.rule("SRV-8")
async def test_a_stream_opened_after_the_drains_goaway_is_refused_unprocessed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The GOAWAY names the last stream the server took; one the client opened before
    reading it gets REFUSED_STREAM (nothing of it processed: grpc-core retries it
    elsewhere), and the stream open before goes on."""
    from h2.errors import ErrorCodes as ErrorCode

    from tests.transport.test_hostile_http2 import DESCRIPTOR, REQUEST, Attacker

    goaway, rst, RST_STREAM, GOAWAY = None, None, 3, 7
    with anyio.fail_after(TIMEOUT):
        async with (
            running(lambda frame: [], ServerConfig(port=0), grace=TIMEOUT) as extension,
            Attacker.connect(extension.port, read=False) as client,  # it reads raw bytes
            anyio.create_task_group() as tasks,
        ):
            first = client.h2.get_next_available_stream_id()
            client.h2.send_headers(first, REQUEST)
            client.h2.send_data(first, DESCRIPTOR)
            assert await client.flush()
            received = b""
            while not any(k == 0 and s == first for k, _, s, _ in _frames(received)[0]):
                received += await client.stream.receive()  # until the descriptor's answer
            tasks.start_soon(extension.drain, TIMEOUT)
            while goaway is None:
                received += await client.stream.receive()
                frames, _ = _frames(received)
                goaway = next((p for k, _, _, p in frames if k == GOAWAY), None)
            crossed = client.h2.get_next_available_stream_id()  # and reset at once
            client.h2.send_headers(crossed, REQUEST)
            client.h2.reset_stream(crossed, ErrorCode.CANCEL)
            late = client.h2.get_next_available_stream_id()  # opened before it was read
            client.h2.send_headers(late, REQUEST)
            client.h2.send_data(late, DESCRIPTOR)
            assert await client.flush()
            while rst is None:
                received += await client.stream.receive()
                frames, _ = _frames(received)
                rst = next((p for k, _, s, p in frames if k == RST_STREAM and s == late), None)
            assert extension.service.active == 1  # the first stream goes on
            client.h2.end_stream(first)
            assert await client.flush()
    last, code = struct.unpack(">II", goaway[:8])
    assert (last, code) == (first, 0)
    assert int.from_bytes(rst, "big") == 7  # REFUSED_STREAM
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
