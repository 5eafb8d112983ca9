"""Checking a party's ``MediaStreamDescriptor`` (DESC, MEDIA and SHM rules).

Strict where the protocol says *must*, tolerant where it is silent and real peers
differ: an extension that answers without ``extension_identifier`` (as published
sample extensions do) or a pipeline that leaves ``stride_bytes`` at 0 is accepted,
because a reference that rejects the pipelines and extensions in the field would be
no reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import FrameError, RemoteProtocolError
from ..messages import GraphIdentifier, MediaStreamDescriptor
from ..status import Status
from .roles import Role
from .video_format import DEFAULT_LIMITS, FrameLimits, VideoFormat


@dataclass(frozen=True, slots=True)
class SharedMemoryProperties:
    """The segment a party's content references point into (SHM-1, SHM-2, SHM-3)."""

    handle_name: str
    length_bytes: int


@dataclass(frozen=True, slots=True)
class StreamDescriptor:
    """A checked descriptor: what one party will send for the rest of the stream."""

    role: Role
    graph_identifier: GraphIdentifier | None
    extension_identifier: str | None
    extension_configuration: str
    timescale: int
    #: None: the party's samples carry inferences only, no media (DESC-7).
    video_format: VideoFormat | None
    #: None: content is embedded in the messages.
    shared_memory: SharedMemoryProperties | None

    @property
    def carries_media(self) -> bool:
        return self.video_format is not None


#: The longest file name Linux allows (NAME_MAX), in bytes.
MAX_HANDLE_BYTES = 255


def check_handle_name(name: str) -> None:
    """SHM-3: a plain file name in the shared-memory directory, nothing that could leave
    it, and nothing that could not be a file's name or be printed as one."""
    if (
        not name
        or len(name) > MAX_HANDLE_BYTES  # before anything else reads all of it
        or len(name.encode("utf-8", "surrogatepass")) > MAX_HANDLE_BYTES
        or "/" in name
        or not name.isprintable()
        or name in (".", "..")
    ):
        shown = repr(name[:64]) + (f"… ({len(name)} characters)" if len(name) > 64 else "")
        raise RemoteProtocolError(
            "SHM-3",
            Status.INVALID_ARGUMENT,
            f"shared-memory handle_name {shown} is not a plain file name (it must be "
            f"non-empty, at most {MAX_HANDLE_BYTES} bytes, without '/' or unprintable "
            "characters, and not '.' or '..')",
        )


#: Where a handle name given as a path may point: the directory the text names.
_SHM_PREFIX = "/dev/shm/"


def check_descriptor(
    message: MediaStreamDescriptor,
    sender: Role,
    limits: FrameLimits = DEFAULT_LIMITS,
    tolerate: Callable[[str, str], None] | None = None,
) -> StreamDescriptor:
    """Check the descriptor ``sender`` sent; raise ``RemoteProtocolError`` naming the rule.

    ``tolerate(rule, detail)``, given for a peer's descriptor, is told of each departure
    from a rule that real peers make and that leaves the meaning unambiguous (the rule's
    field note in spec/ says which); without it they are refused as well.
    """
    graph = message.graph_identifier
    extension_id = message.extension_identifier
    if sender is Role.PIPELINE and extension_id is not None:
        raise RemoteProtocolError(
            "DESC-3",
            Status.INVALID_ARGUMENT,
            "the pipeline's descriptor carries extension_identifier; it identifies itself "
            "with graph_identifier",
        )
    if sender is Role.EXTENSION and graph is not None:
        if tolerate is None:
            raise RemoteProtocolError(
                "DESC-4",
                Status.INVALID_ARGUMENT,
                "the extension's descriptor carries graph_identifier; it identifies itself "
                "with extension_identifier",
            )
        tolerate("DESC-4", "the extension's descriptor carries graph_identifier; ignored")
        graph = None

    media = message.media_descriptor
    video_format: VideoFormat | None = None
    if media is not None and media.video_frame_sample_format is not None:
        try:
            video_format = VideoFormat.from_message(media.video_frame_sample_format, limits)
        except FrameError as error:
            raise RemoteProtocolError(error.rule, error.status, error.detail) from None

    shared_memory: SharedMemoryProperties | None = None
    properties = message.shared_memory_buffer_transfer_properties
    if properties is not None:
        if not properties.handle_name or properties.length_bytes == 0:
            raise RemoteProtocolError(
                "SHM-2",
                Status.INVALID_ARGUMENT,
                "shared_memory_buffer_transfer_properties need a handle_name and a "
                f"length_bytes above 0, got {properties.handle_name!r} and "
                f"{properties.length_bytes}",
            )
        name = properties.handle_name
        if tolerate is not None and name.startswith("/"):
            # shm_open(3) names a segment "/name"; some senders give the whole path.
            plain = name[len(_SHM_PREFIX) :] if name.startswith(_SHM_PREFIX) else name[1:]
            try:
                check_handle_name(plain)
            except RemoteProtocolError:
                check_handle_name(name)  # refused, quoting what the peer sent
                raise
            tolerate(
                "SHM-3",
                f"shared-memory handle_name {name!r} is a path; read as the file {plain!r} "
                "of the shared-memory directory",
            )
            name = plain
        check_handle_name(name)
        shared_memory = SharedMemoryProperties(name, properties.length_bytes)

    return StreamDescriptor(
        role=sender,
        graph_identifier=graph,
        extension_identifier=extension_id,
        extension_configuration=message.extension_configuration,
        timescale=media.timescale if media is not None else 0,
        video_format=video_format,
        shared_memory=shared_memory,
    )
