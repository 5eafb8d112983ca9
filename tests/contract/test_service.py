"""The service and its one method, as existing pipelines and extensions call them.

A pipeline finds the extension's method by its path alone, so the path is checked
literally, in every place avaproto names it: ``avaproto.messages.METHOD_PATH``, the
generated client stub and server base, and the server's own routing. The calls then run
over grpclib's in-memory channel (a real HTTP/2 connection without a socket) to show
that a call is one bidirectional stream: replies flow while the caller's direction is
still open, and two calls on one connection never see each other's messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio
import grpclib.const
import pytest
from grpclib.testing import ChannelFor

from avaproto.messages import (
    METHOD_PATH,
    PACKAGE,
    MediaGraphExtensionBase,
    MediaGraphExtensionStub,
    MediaStreamMessage,
)
from avaproto.transport.grpc_server import ExtensionService, ServerConfig

pytestmark = pytest.mark.anyio
TIMEOUT = 10

#: The path every existing pipeline calls, written out rather than assembled.
WIRE_PATH = (
    "/microsoft.azure.media.live_video_analytics.extensibility.grpc.v1"
    ".MediaGraphExtension/ProcessMediaStream"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib runs on asyncio


class Echo(MediaGraphExtensionBase):
    """Acknowledges every message as it arrives, without waiting for the end of input."""

    async def process_media_stream(
        self, messages: AsyncIterator[MediaStreamMessage]
    ) -> AsyncIterator[MediaStreamMessage]:
        async for message in messages:
            yield MediaStreamMessage(
                sequence_number=message.sequence_number,
                ack_sequence_number=message.sequence_number,
            )


def handlers(service: Any) -> dict[str, grpclib.const.Handler]:
    return dict(service.__mapping__())


def extension_service() -> ExtensionService:
    def no_extension() -> Any:
        raise AssertionError("no stream is opened")

    return ExtensionService(no_extension, ServerConfig(port=0))


class TestTheMethodPath:
    @pytest.mark.rule("CONN-2")
    def test_names_are_the_contracts(self) -> None:
        assert PACKAGE == "microsoft.azure.media.live_video_analytics.extensibility.grpc.v1"
        assert METHOD_PATH == WIRE_PATH

    @pytest.mark.rule("CONN-2")
    @pytest.mark.parametrize(
        "service", [MediaGraphExtensionBase, extension_service], ids=["generated", "server"]
    )
    def test_the_extension_routes_exactly_that_path(self, service: Any) -> None:
        assert list(handlers(service())) == [WIRE_PATH]

    @pytest.mark.rule("CONN-2")
    async def test_the_generated_stub_calls_that_path(self) -> None:
        called: list[tuple[str, type, type]] = []

        class Recording(MediaGraphExtensionStub):
            async def _stream_stream(  # type: ignore[override]
                self, route: str, messages: Any, request: type, response: type, **_: Any
            ) -> AsyncIterator[MediaStreamMessage]:
                called.append((route, request, response))
                yield MediaStreamMessage(sequence_number=1)

        async with ChannelFor([Echo()]) as channel:
            replies = [r async for r in Recording(channel).process_media_stream([])]
        assert replies == [MediaStreamMessage(sequence_number=1)]
        assert called == [(WIRE_PATH, MediaStreamMessage, MediaStreamMessage)]


class TestTheMethod:
    @pytest.mark.rule("CONN-1")
    @pytest.mark.parametrize(
        "service", [MediaGraphExtensionBase, extension_service], ids=["generated", "server"]
    )
    def test_is_stream_stream_of_media_stream_messages(self, service: Any) -> None:
        [handler] = handlers(service()).values()
        assert handler.cardinality is grpclib.const.Cardinality.STREAM_STREAM
        assert handler.request_type is MediaStreamMessage
        assert handler.reply_type is MediaStreamMessage

    @pytest.mark.rule("CONN-1")
    async def test_unimplemented_until_an_extension_implements_it(self) -> None:
        async with ChannelFor([MediaGraphExtensionBase()]) as channel:
            replies = MediaGraphExtensionStub(channel).process_media_stream([MediaStreamMessage()])
            with anyio.fail_after(TIMEOUT), pytest.raises(grpclib.GRPCError) as caught:
                await anext(replies)
        assert caught.value.status is grpclib.const.Status.UNIMPLEMENTED


class TestOneCallIsOneBidirectionalStream:
    @pytest.mark.rule("CONN-3", "CONN-2")
    async def test_replies_flow_while_the_caller_is_still_sending(self) -> None:
        answered: asyncio.Queue[int] = asyncio.Queue()

        async def requests() -> AsyncIterator[MediaStreamMessage]:
            for number in (1, 2, 3):
                yield MediaStreamMessage(sequence_number=number)
                # Send the next only once this one is answered: the call would hang
                # (and time out) if replies waited for the end of the caller's direction.
                assert await answered.get() == number

        replies = []
        async with ChannelFor([Echo()]) as channel:
            with anyio.fail_after(TIMEOUT):
                async for reply in MediaGraphExtensionStub(channel).process_media_stream(
                    requests()
                ):
                    replies.append(reply.ack_sequence_number)
                    answered.put_nowait(reply.ack_sequence_number)
        assert replies == [1, 2, 3]

    @pytest.mark.rule("CONN-3")
    async def test_calls_on_one_connection_are_independent_streams(self) -> None:
        async with ChannelFor([Echo()]) as channel:

            def call() -> Any:
                return channel.request(
                    WIRE_PATH,
                    grpclib.const.Cardinality.STREAM_STREAM,
                    MediaStreamMessage,
                    MediaStreamMessage,
                )

            with anyio.fail_after(TIMEOUT):
                async with call() as first, call() as second:
                    await first.send_request()
                    await second.send_request()
                    seen: dict[str, list[int]] = {"first": [], "second": []}
                    for number in (1, 2):
                        await first.send_message(MediaStreamMessage(sequence_number=number))
                        await second.send_message(MediaStreamMessage(sequence_number=100 + number))
                        for name, stream in (("second", second), ("first", first)):
                            reply = await stream.recv_message()
                            seen[name].append(reply.ack_sequence_number)
                    await first.end()
                    assert await first.recv_message() is None
                    # The second stream is still open after the first has ended.
                    await second.send_message(MediaStreamMessage(sequence_number=103))
                    seen["second"].append((await second.recv_message()).ack_sequence_number)
                    await second.end()
                    assert await second.recv_message() is None
        assert seen == {"first": [1, 2], "second": [101, 102, 103]}
