"""The two parties of a stream, and the only ways in which the protocol tells them apart.

Everything else (the lifecycle, sequence numbers, acknowledgements) is the same for
both, so the session code never branches on "am I the server": it asks the role for
these few facts instead.
"""

from __future__ import annotations

from enum import Enum


class Role(Enum):
    #: The video pipeline: the gRPC client, which opens the stream and sends frames.
    PIPELINE = "pipeline"
    #: The AI extension: the gRPC server, which answers with inferences.
    EXTENSION = "extension"

    @property
    def peer(self) -> Role:
        return Role.EXTENSION if self is Role.PIPELINE else Role.PIPELINE

    @property
    def speaks_first(self) -> bool:
        """The pipeline's descriptor opens the stream; the extension's answers it (DESC-5)."""
        return self is Role.PIPELINE

    @property
    def sends_requests(self) -> bool:
        """Whether every sample this role sends is a request the peer must acknowledge (ACK-1).

        The pipeline's samples are requests; the extension's are answers, which need an
        acknowledgement only when they refer to shared memory (ACK-5).
        """
        return self is Role.PIPELINE

    @property
    def identifier_field(self) -> str:
        """The ``stream_identifier`` branch this role's descriptor carries (DESC-3, DESC-4)."""
        return "graph_identifier" if self is Role.PIPELINE else "extension_identifier"
