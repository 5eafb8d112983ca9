"""How one stream is served: an explicit configuration value, like grpclib's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import anyio

from ..media.shared_memory import DEFAULT_MAX_MAPPED_BYTES
from ..protocol.video_format import DEFAULT_LIMITS, FrameLimits


@dataclass(frozen=True)
class EngineConfig:
    """Settings of the extension's side of every stream."""

    #: Sent as ``extension_identifier`` in the answer descriptor (DESC-4).
    extension_identifier: str = "avaproto"
    #: Samples processed at once; reading stops while this many are unanswered (SRV-1).
    max_in_flight: int = 8
    #: Answer in request order (True) or as processing completes (SRV-2).
    ordered: bool = True
    #: Seconds one frame may take before the stream ends with DEADLINE_EXCEEDED (SRV-4).
    frame_timeout: float | None = None
    #: Seconds the extension's ``close()`` may take once its stream is over (SRV-8):
    #: past it the stream ends without waiting (a plain ``def`` left running in its
    #: thread), so that a close that never returns cannot hold a drain for ever.
    close_timeout: float | None = 10.0
    #: Where shared-memory handles are looked up (SHM-3).
    shm_directory: str = "/dev/shm"
    #: How a pipeline's segment is reached (SHM-15): "read" copies each frame out with
    #: checked reads when the processor uses it, so a pipeline that shrinks its segment
    #: ends only its own stream; "map" maps it (no copy) for a trusted pipeline: a shrink
    #: between a sample's size check and the processor's read kills the whole process
    #: with SIGBUS.
    shm_access: Literal["read", "map"] = "read"
    #: With ``shm_access="map"``, the address space every mapped segment of the process
    #: may take together (SHM-17).
    max_mapped_bytes: int = DEFAULT_MAX_MAPPED_BYTES
    #: The largest frame accepted (MEDIA-3).
    limits: FrameLimits = DEFAULT_LIMITS
    #: Worker threads shared by synchronous processors (None: anyio's default limiter).
    thread_limiter: anyio.CapacityLimiter | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {self.max_in_flight}")
        if self.shm_access not in ("read", "map"):
            raise ValueError(f"shm_access must be 'read' or 'map', got {self.shm_access!r}")
        if self.max_mapped_bytes < 1:
            raise ValueError(f"max_mapped_bytes must be positive, got {self.max_mapped_bytes}")
        if self.frame_timeout is not None and self.frame_timeout <= 0:
            raise ValueError(f"frame_timeout must be positive, got {self.frame_timeout}")
