"""avaproto: the gRPC extension protocol of video analytics pipelines, in Python."""

from __future__ import annotations

__version__ = "0.1.0"
