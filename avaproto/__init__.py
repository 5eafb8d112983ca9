"""avaproto: the gRPC extension protocol of video analytics pipelines, in Python.

The names below are the public API; they are imported on first use, so that
``import avaproto`` (and the command line) stays quick when only a part is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .client import Pipeline, connect
    from .engine.extension import Extension, ExtensionBase, ExtensionRefused
    from .engine.frame import Frame
    from .errors import AvaprotoError, ProtocolError, StreamFailed
    from .protocol.video_format import VideoFormat
    from .server import running, serve

#: Public name -> the module that defines it.
_EXPORTS = {
    "Pipeline": "client",
    "connect": "client",
    "Extension": "engine.extension",
    "ExtensionBase": "engine.extension",
    "ExtensionRefused": "engine.extension",
    "Frame": "engine.frame",
    "AvaprotoError": "errors",
    "ProtocolError": "errors",
    "StreamFailed": "errors",
    "VideoFormat": "protocol.video_format",
    "running": "server",
    "serve": "server",
}

__all__ = [
    "AvaprotoError",
    "Extension",
    "ExtensionBase",
    "ExtensionRefused",
    "Frame",
    "Pipeline",
    "ProtocolError",
    "StreamFailed",
    "VideoFormat",
    "__version__",
    "connect",
    "running",
    "serve",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'avaproto' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
