"""``avaproto.connect``: drive an extension the way a video pipeline does.

    async with avaproto.connect("localhost:5001", format=fmt, transfer="shm") as pipeline:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(feed, pipeline)          # await pipeline.send(frame, timestamp=t)
            async for result in pipeline.results():   # one per acknowledged sample
                print(result.acknowledged, result.inferences)

Frames go out as numpy arrays (RGB, converted to the stream's format) or as bytes
already in that format; with ``transfer="shm"`` they travel through a shared-memory
segment (75 MiB by default, as the protocol's own example) whose slots are freed only
by the extension's acknowledgements.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Literal

from .engine.drive import ANSWERS_PER_SAMPLE, PipelineStream, Results
from .engine.statistics import StreamStatistics
from .media.shared_memory import SentLease
from .messages import (
    GraphIdentifier,
    Inference,
    MediaDescriptor,
    MediaStreamDescriptor,
    SharedMemoryBufferTransferProperties,
)
from .protocol.auth import Credentials
from .protocol.descriptor import StreamDescriptor
from .protocol.video_format import VideoFormat
from .transport.grpc_client import DEFAULT_MAX_ANSWER_BYTES, open_channel
from .transport.limits import ConnectionLimits

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from .media.shared_memory import WriteMode

Transfer = Literal["embedded", "shm"]
#: The protocol's own example segment size (SharedMemorySizeMiB 75).
DEFAULT_SHM_BYTES = 75 * 1024 * 1024
#: Seconds to establish a connection (TCP, TLS and the HTTP/2 preface).
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds the extension has to answer the pipeline's descriptor.
DEFAULT_DESCRIPTOR_TIMEOUT = 10.0
#: Seconds a sample may stay unacknowledged before the run ends (DEADLINE_EXCEEDED).
DEFAULT_ACK_TIMEOUT = 30.0


class Pipeline:
    """The pipeline's end of one stream; get one from ``connect``."""

    def __init__(self, stream: PipelineStream, results: Results) -> None:
        self.stream = stream
        self._results = results

    @property
    def extension(self) -> StreamDescriptor:
        """The extension's answer descriptor (its identifier, what it sends back)."""
        return self.stream.extension

    @property
    def format(self) -> VideoFormat | None:
        return self.stream.format

    async def send(
        self,
        frame: npt.NDArray[np.uint8] | bytes | bytearray | memoryview | SentLease | None,
        *,
        timestamp: int,
        inferences: Sequence[Inference] = (),
    ) -> int:
        """Send one frame; returns its sequence number. Waits while the window is full.

        ``frame`` is an RGB array (height x width x 3, converted to the stream's format),
        bytes already in the stream's format, a slot from ``allocate`` holding them, or
        None for a sample of inferences only.
        """
        content = frame if isinstance(frame, SentLease) else encode_frame(frame, self.format)
        return await self.stream.send(content, timestamp=timestamp, inferences=inferences)

    async def allocate(self, length: int | None = None) -> SentLease:
        """A slot of the shared-memory segment for one frame, to fill and pass to ``send``.

        ``length`` defaults to a frame of the stream's format. Waits while
        acknowledgements have yet to free one. A producer that writes the frame into the
        slot itself (``slot.write``), or knows the slot holds the frame already (slots
        of one length come back at the same offsets), spares ``send``'s copy. A slot
        passed to ``send`` is the stream's; one never sent can be given back with
        ``slot.cancel()``. Only with ``transfer="shm"``.
        """
        if length is None:
            if self.format is None or not self.format.is_raw:
                raise ValueError("give the length: only a RAW format says how long its frames are")
            length = self.format.frame_bytes
        return await self.stream.allocate(length)

    async def end(self) -> None:
        """No more frames; the remaining answers still arrive on ``results``."""
        await self.stream.end()

    def results(self) -> Results:
        """The extension's answers as they arrive; ends when the extension ends the stream.

        Read them while sending: the window's slots come back as answers are read.
        """
        return self._results


def encode_frame(
    frame: npt.NDArray[np.uint8] | bytes | bytearray | memoryview | None,
    fmt: VideoFormat | None,
) -> bytes | bytearray | memoryview | None:
    """Bytes in ``fmt`` for a frame given as an RGB array; bytes-like input passes through."""
    if frame is None or isinstance(frame, bytes | bytearray | memoryview):
        return frame
    if fmt is None:
        raise ValueError("this stream carries inferences only: send frame=None")
    if fmt.is_raw:
        from .media.frames import encode

        return encode(frame, fmt)
    from .media.images import encode_image

    return encode_image(frame, fmt.encoding)


@asynccontextmanager
async def connect(
    target: str,
    *,
    format: VideoFormat | None = None,
    transfer: Transfer = "embedded",
    shm_bytes: int = DEFAULT_SHM_BYTES,
    shm_directory: str = "/dev/shm",
    shm_write: WriteMode = "pwrite",
    shm_mode: int = 0o600,
    graph: GraphIdentifier | None = None,
    configuration: str = "",
    credentials: Credentials | None = None,
    tls: ssl.SSLContext | None = None,
    window: int = 8,
    timescale: int = 90000,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    descriptor_timeout: float | None = DEFAULT_DESCRIPTOR_TIMEOUT,
    ack_timeout: float | None = DEFAULT_ACK_TIMEOUT,
    max_message_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    statistics: StreamStatistics | None = None,
    limits: ConnectionLimits | None = None,
    max_answers_per_sample: int = ANSWERS_PER_SAMPLE,
) -> AsyncIterator[Pipeline]:
    """Open a stream to the extension at ``target`` (``host:port``) and negotiate it.

    ``format`` None opens a stream of inferences only. ``tls`` is a client context from
    ``avaproto.transport.tls.client_context``: the name in the extension's certificate
    is always verified (TLS-2). On leaving the block the input ends, every answer is
    awaited and the extension's side of the protocol is checked to the end.

    Every wait has a deadline in seconds (None: wait forever): ``connect_timeout`` for
    the connection, ``descriptor_timeout`` for the extension's answer descriptor
    (PIPE-3), ``ack_timeout`` for each sample's acknowledgement (PIPE-4). Past one, the
    block raises a ``ProtocolError`` or ``StreamFailed`` with DEADLINE_EXCEEDED; the
    answers already received stay delivered, and the shared-memory segment is
    unlinked. An extension that ends the stream with a failure status raises it as
    ``StreamFailed`` from ``results`` once every answer it sent before was read (PIPE-6;
    a ``send`` that meets the ended stream returns without sending). An answer larger than
    ``max_message_bytes`` ends the stream with RESOURCE_EXHAUSTED before it is buffered.
    The stream's figures (frames, latencies, tolerated deviations, status) are kept in
    ``statistics`` if given. ``limits`` bounds what the extension can make the pipeline
    hold (PIPE-8: its DATA frames per answer, the acknowledgements it leaves unread),
    with the server's figures by default. Answers that acknowledge none of our samples
    (inferences of the extension's own) are results too, up to
    ``max_answers_per_sample`` per sample sent (PIPE-10): past that the stream ends with
    RESOURCE_EXHAUSTED, the results before kept.

    With ``transfer="shm"``, ``shm_write`` says how frames go into the segment:
    ``"pwrite"``, which an extension that shrinks the segment cannot turn into a crash
    of this process, or ``"map"``, through a mapping as most pipelines write, a third of
    the cost, for an extension trusted not to (``avaproto.media.shared_memory``).
    ``shm_mode`` 0o640 or 0o644 lets an extension running as another user read the
    segment, 0o660 one of the owner's group open it read-write as the published
    extensions do (SHM-9: 0o600, its owner only, by default).
    """
    if format is not None and not isinstance(format, VideoFormat):
        raise TypeError(
            f"format is a VideoFormat (avaproto.VideoFormat.raw(416, 416), say), not "
            f"{type(format).__name__} {format!r}"
        )
    descriptor = MediaStreamDescriptor(
        graph_identifier=graph
        or GraphIdentifier(graph_instance_name="avaproto", graph_node_name="grpcExtension"),
        extension_configuration=configuration,
        media_descriptor=MediaDescriptor(
            timescale=timescale,
            video_frame_sample_format=format.to_message() if format else None,
        ),
    )
    arena = None
    if transfer == "shm":
        from .media.shared_memory import SharedMemoryArena

        arena = SharedMemoryArena.create(
            shm_bytes, directory=shm_directory, write=shm_write, mode=shm_mode
        )
        descriptor.shared_memory_buffer_transfer_properties = SharedMemoryBufferTransferProperties(
            handle_name=arena.handle_name, length_bytes=arena.length_bytes
        )
    elif transfer != "embedded":
        raise ValueError(f"transfer must be 'embedded' or 'shm', got {transfer!r}")
    try:
        metadata = credentials.metadata() if credentials else ()
        async with (
            open_channel(
                target,
                ssl_context=tls,
                metadata=metadata,
                connect_timeout=connect_timeout,
                max_message_bytes=max_message_bytes,
                limits=limits,
            ) as channel,
            PipelineStream.open(
                channel,
                descriptor,
                window=window,
                arena=arena,
                descriptor_timeout=descriptor_timeout,
                ack_timeout=ack_timeout,
                statistics=statistics,
                max_answers_per_sample=max_answers_per_sample,
            ) as (stream, results),
        ):
            yield Pipeline(stream, results)
    finally:
        if arena is not None:
            arena.close()
