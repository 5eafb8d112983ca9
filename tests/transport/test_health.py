"""The standard gRPC health service, as load balancers and orchestrators ask it.

A real server on a loopback port and a real grpclib client using the stub compiled from
``protos/grpc/health/v1/health.proto``. Drains are observed while they are really in
progress: a stream stays open on a processor that waits for an event the test controls.
The official protobuf runtime, compiled from the same file at test time, checks that the
bytes are the standard's.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import grpclib.client
import grpclib.const
import pytest
from grpclib.exceptions import GRPCError, StreamTerminatedError

from avaproto._generated.grpc.health.v1 import HealthCheckRequest, HealthCheckResponse, HealthStub
from avaproto.client import Pipeline, connect
from avaproto.codegen import PROTOS
from avaproto.engine.extension import FunctionExtension, Processor
from avaproto.engine.frame import Frame
from avaproto.messages import Encoding, Inference, PixelFormat
from avaproto.protocol.video_format import VideoFormat
from avaproto.transport.grpc_server import ExtensionServer, ServerConfig, start_server
from avaproto.transport.health import EXTENSION_SERVICE, ServingStatus
from avaproto.transport.limits import ConnectionLimits
from tests.transport.test_hostile_http2 import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.rule("SRV-9")]
TIMEOUT = 30
GRACE = 30  # longer than any test: a drain here ends because its stream ends
RGB24 = VideoFormat.checked(Encoding.RAW, PixelFormat.RGB24, 32, 24)
HEALTH_PROTO = "grpc/health/v1/health.proto"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib runs on asyncio


def answer(frame: Frame) -> list[Inference]:
    return [Inference(subtype=str(frame.sequence_number))]


@asynccontextmanager
async def extension(processor: Processor = answer, **config: Any) -> AsyncIterator[ExtensionServer]:
    server = await start_server(
        lambda: FunctionExtension(processor), ServerConfig(port=0, **config)
    )
    try:
        yield server
    finally:
        with anyio.CancelScope(shield=True):
            if server.service.draining:
                await server.close()
            else:
                await server.drain(GRACE)


@asynccontextmanager
async def health(server: ExtensionServer) -> AsyncIterator[HealthStub]:
    channel = grpclib.client.Channel("127.0.0.1", server.port)
    try:
        yield HealthStub(channel)
    finally:
        channel.close()


@asynccontextmanager
async def watching(server: ExtensionServer, service: str) -> AsyncIterator[Any]:
    """A ``Watch`` call, cancelled on leaving the block (or by ``aclose``) if still open."""
    async with (
        health(server) as stub,
        aclosing(stub.watch(HealthCheckRequest(service=service))) as watch,
    ):
        yield watch


class Held:
    """A processor that holds its frame until released, so a stream stays open at will."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, frame: Frame) -> list[Inference]:
        self.entered.set()
        await self.release.wait()
        return answer(frame)


async def open_stream(pipe: Pipeline, held: Held) -> None:
    """Send one frame and return once the extension is processing it."""
    await pipe.send(bytes(RGB24.frame_bytes), timestamp=0)
    await held.entered.wait()


async def finish_stream(pipe: Pipeline, held: Held) -> None:
    held.release.set()
    await pipe.end()
    assert [r.acknowledged async for r in pipe.results()] == [2]


# --- Check ---------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", EXTENSION_SERVICE], ids=["overall", "extension"])
async def test_check_answers_serving(service: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with extension() as server, health(server) as stub:
            reply = await stub.check(HealthCheckRequest(service=service))
    assert reply.status is ServingStatus.SERVING


def test_the_extension_service_is_named_as_on_the_wire() -> None:
    assert EXTENSION_SERVICE == (
        "microsoft.azure.media.live_video_analytics.extensibility.grpc.v1.MediaGraphExtension"
    )


@pytest.mark.parametrize("service", ["MediaGraphExtension", "grpc.health.v1.Health", "x"])
async def test_check_of_an_unknown_service_is_not_found(service: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with extension() as server, health(server) as stub:
            with pytest.raises(GRPCError) as caught:
                await stub.check(HealthCheckRequest(service=service))
    assert caught.value.status is grpclib.const.Status.NOT_FOUND
    assert repr(service) in (caught.value.message or "")


@pytest.mark.parametrize("service", ["", EXTENSION_SERVICE], ids=["overall", "extension"])
async def test_check_answers_not_serving_while_a_drain_waits(service: str) -> None:
    held = Held()
    with anyio.fail_after(TIMEOUT):
        async with extension(held) as server, health(server) as stub:
            # The probe's connection is open before the drain closes the listener.
            before = await stub.check(HealthCheckRequest(service=service))
            target = f"127.0.0.1:{server.port}"
            async with connect(target, format=RGB24) as pipe, anyio.create_task_group() as tg:
                await open_stream(pipe, held)
                tg.start_soon(server.drain, GRACE)
                await anyio.wait_all_tasks_blocked()
                assert server.service.draining and server.service.active == 1
                # Told GOAWAY, a client opens no new stream on the probe's connection,
                # and the listener is closed: a probe now fails, or hears NOT_SERVING.
                try:
                    during = (await stub.check(HealthCheckRequest(service=service))).status
                except (ConnectionRefusedError, StreamTerminatedError):
                    during = None
                await finish_stream(pipe, held)
    assert before.status is ServingStatus.SERVING
    assert during is not ServingStatus.SERVING


async def test_without_health_the_service_is_not_offered() -> None:
    with anyio.fail_after(TIMEOUT):
        async with extension(health=False) as server, health(server) as stub:
            # grpclib refuses an unknown method with UNIMPLEMENTED, in trailers its
            # own client reads as UNKNOWN: either way the probe fails.
            with pytest.raises(GRPCError):
                await stub.check(HealthCheckRequest())
            assert server.health is None


@pytest.mark.rule("CONN-1")
@pytest.mark.parametrize("health_on", [True, False], ids=["with health", "without"])
@pytest.mark.parametrize(
    "path",
    [
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",  # grpcurl's first
        "/microsoft.azure.media.live_video_analytics.extensibility.grpc.v1."
        "MediaGraphExtension/ProcessMediaStreams",
    ],
    ids=["reflection", "a misspelt method"],
)
async def test_a_method_not_served_is_refused_naming_what_is(path: str, health_on: bool) -> None:
    """grpclib alone says "Method not found", naming neither."""
    import grpc

    with anyio.fail_after(TIMEOUT):
        async with (
            extension(health=health_on) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            call = channel.unary_unary(path, request_serializer=bytes)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(HealthCheckRequest())
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    details = refused.value.details() or ""
    assert details.startswith(f"[CONN-1] no method '{path}' here: this server serves /micro")
    assert ("/grpc.health.v1.Health/Check" in details) is health_on


# --- Watch ---------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", EXTENSION_SERVICE], ids=["overall", "extension"])
async def test_watch_sends_serving_then_not_serving_when_a_drain_starts(service: str) -> None:
    """grpcio's client, as balancers' health checking runs on grpc-core: its Watch goes
    on past the drain's GOAWAY (NO_ERROR), and hears NOT_SERVING."""
    import grpc

    held = Held()
    with anyio.fail_after(TIMEOUT):
        async with (
            extension(held) as server,
            grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            watch = channel.unary_stream(
                "/grpc.health.v1.Health/Watch",
                request_serializer=bytes,
                response_deserializer=HealthCheckResponse.parse,
            )(HealthCheckRequest(service=service))
            first = await watch.read()
            target = f"127.0.0.1:{server.port}"
            async with connect(target, format=RGB24) as pipe, anyio.create_task_group() as tg:
                await open_stream(pipe, held)
                tg.start_soon(server.drain, GRACE)
                second = await watch.read()
                still_open = server.service.active
                watch.cancel()
                await finish_stream(pipe, held)
    assert first.status is ServingStatus.SERVING
    assert second.status is ServingStatus.NOT_SERVING
    assert still_open == 1  # the change came while the drain was waiting for the stream


async def test_watch_of_an_unknown_service_answers_service_unknown() -> None:
    with anyio.fail_after(TIMEOUT):
        async with extension() as server, watching(server, "x") as watch:
            first = await anext(watch)
    assert first.status is ServingStatus.SERVICE_UNKNOWN


@pytest.mark.rule("SRV-9")
async def test_watches_past_the_limit_are_refused_and_their_slots_come_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Watch stays open outside --max-streams: without a bound of its own, a peer
    opened thousands (about 16 KB each) without credentials."""
    caplog.set_level(logging.WARNING, logger="avaproto")
    with anyio.fail_after(TIMEOUT):
        async with extension(max_health_watches=2) as server:
            async with watching(server, "") as one, watching(server, "") as two:
                assert (await anext(one)).status is ServingStatus.SERVING
                assert (await anext(two)).status is ServingStatus.SERVING
                async with watching(server, "") as three:
                    with pytest.raises(GRPCError) as refused:
                        await anext(three)
            assert refused.value.status is grpclib.const.Status.RESOURCE_EXHAUSTED
            assert refused.value.message == (
                "[SRV-9] 2 health watches already open; the limit is 2 (--max-health-watches)"
            )
            health_service = server.health
            assert health_service is not None
            await eventually(lambda: health_service.watching == 0)  # the calls' ends came
            async with watching(server, "") as again:  # the slots came back
                assert (await anext(again)).status is ServingStatus.SERVING
    [line] = [r.getMessage() for r in caplog.records if "[SRV-9]" in r.getMessage()]
    assert line.startswith("refused a health watch of 127.0.0.1:")


@pytest.mark.rule("SRV-9")
async def test_one_connection_holds_at_most_ten_watches() -> None:
    """So that no one peer takes every watch the server allows."""
    with anyio.fail_after(TIMEOUT):
        async with extension() as server, health(server) as stub, AsyncExitStack() as held:
            for _ in range(10):
                watch = await held.enter_async_context(
                    aclosing(stub.watch(HealthCheckRequest(service="")))
                )
                assert (await anext(watch)).status is ServingStatus.SERVING
            eleventh = await held.enter_async_context(
                aclosing(stub.watch(HealthCheckRequest(service="")))
            )
            with pytest.raises(GRPCError) as refused:
                await anext(eleventh)
            assert refused.value.status is grpclib.const.Status.RESOURCE_EXHAUSTED
            assert refused.value.message == (
                "[SRV-9] 10 health watches already open on this connection, the most one "
                "connection may hold"
            )
            async with watching(server, "") as elsewhere:  # another connection
                assert (await anext(elsewhere)).status is ServingStatus.SERVING


@asynccontextmanager
async def check_without_request(server: ExtensionServer) -> AsyncIterator[Any]:
    """A ``Check`` call that opens its stream and sends no request."""
    channel = grpclib.client.Channel("127.0.0.1", server.port)
    try:
        async with channel.request(
            "/grpc.health.v1.Health/Check",
            grpclib.const.Cardinality.UNARY_UNARY,
            HealthCheckRequest,
            HealthCheckResponse,
        ) as call:
            await call.send_request()
            try:
                yield call
            finally:
                with contextlib.suppress(Exception):  # ended by the server already
                    await call.cancel()
    finally:
        channel.close()


@pytest.mark.rule("SRV-9")
async def test_a_call_that_sends_no_request_ends_at_the_request_deadline() -> None:
    """300 connections of 100 checks that sent no request held 500 MB, for as long as
    their connections lasted."""
    with anyio.fail_after(TIMEOUT):
        async with extension(limits=ConnectionLimits(descriptor_timeout=0.3)) as server:
            with pytest.raises(GRPCError) as ended:
                async with check_without_request(server) as call:
                    # The status, then RST_STREAM NO_ERROR: the call had not sent its end.
                    with contextlib.suppress(StreamTerminatedError):
                        await call.recv_initial_metadata()
    assert ended.value.status is grpclib.const.Status.DEADLINE_EXCEEDED
    assert ended.value.message == (
        "[SRV-9] no health request within 0.3 s of the call's start (--descriptor-timeout)"
    )


@pytest.mark.rule("SRV-9")
async def test_checks_awaiting_their_request_are_bounded_apart_from_watches() -> None:
    """A peer's idle checks are refused past the bound, and watches filling theirs never
    refuse a balancer's check."""
    with anyio.fail_after(TIMEOUT):
        async with extension(max_health_watches=1) as server:
            async with check_without_request(server):
                with pytest.raises(GRPCError) as refused:
                    async with check_without_request(server) as second:
                        with contextlib.suppress(StreamTerminatedError):  # then its status
                            await second.recv_initial_metadata()
                assert refused.value.status is grpclib.const.Status.RESOURCE_EXHAUSTED
                assert refused.value.message == (
                    "[SRV-9] 1 health checks already awaiting their request; the limit is 1 "
                    "(--max-health-watches)"
                )
                async with watching(server, "") as watch:  # watches are counted apart
                    assert (await anext(watch)).status is ServingStatus.SERVING
            async with watching(server, "") as watch, health(server) as stub:
                assert (await anext(watch)).status is ServingStatus.SERVING
                answer = await stub.check(HealthCheckRequest(service=""))  # the watch is full
    assert answer.status is ServingStatus.SERVING


# --- the standard's bytes and the core install ---------------------------------------


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``health.proto`` compiled by protoc and loaded by the official runtime.

    Loaded into a pool of its own: the process-wide pool may already hold the same
    names from another copy of the standard file.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool
    from grpc_tools import protoc

    output = tmp_path_factory.mktemp("official") / "health.pb"
    include = importlib.resources.files("grpc_tools") / "_proto"
    status = protoc.main(
        ["protoc", f"-I{PROTOS}", f"-I{include}", f"--descriptor_set_out={output}", HEALTH_PROTO]
    )
    assert status == 0, f"protoc failed on {HEALTH_PROTO}"
    files = descriptor_pb2.FileDescriptorSet.FromString(output.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


def official_class(pool: Any, name: str) -> Any:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.health.v1.{name}"))


def test_health_proto_is_the_standard_one(official: Any) -> None:
    """Same package, service, methods, messages, fields and enum as the standard file."""
    from google.protobuf import descriptor_pb2
    from grpclib.health.v1 import health_pb2

    def shape(file: Any) -> tuple[str, list[Any], list[Any]]:
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        for message in proto.message_type:
            for field in message.field:
                field.ClearField("json_name")  # derived from the name; older protocs omit it
        return proto.package, list(proto.message_type), list(proto.service)

    ours = official.FindFileByName(HEALTH_PROTO)
    assert shape(ours) == shape(health_pb2.DESCRIPTOR)


@pytest.mark.parametrize("status", list(ServingStatus), ids=lambda s: s.name)
def test_responses_are_the_same_bytes_both_ways(official: Any, status: ServingStatus) -> None:
    theirs = official_class(official, "HealthCheckResponse")(status=int(status))
    ours = HealthCheckResponse(status=status)
    assert bytes(ours) == theirs.SerializeToString()
    assert HealthCheckResponse.parse(theirs.SerializeToString()).status is status
    assert type(theirs).FromString(bytes(ours)).status == int(status)


@pytest.mark.parametrize("service", ["", EXTENSION_SERVICE, "é"])
def test_requests_are_the_same_bytes_both_ways(official: Any, service: str) -> None:
    theirs = official_class(official, "HealthCheckRequest")(service=service)
    ours = HealthCheckRequest(service=service)
    assert bytes(ours) == theirs.SerializeToString()
    assert HealthCheckRequest.parse(theirs.SerializeToString()).service == service
    assert type(theirs).FromString(bytes(ours)).service == service


@pytest.mark.parametrize("module", ["avaproto.transport.health", "avaproto.transport.grpc_server"])
def test_health_needs_no_protobuf_runtime(module: str) -> None:
    code = f"import {module}, sys; assert 'google.protobuf' not in sys.modules"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
