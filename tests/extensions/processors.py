"""A processor function loaded by name in the tests, as ``module:attribute``."""

from __future__ import annotations

from avaproto.engine.frame import Frame
from avaproto.messages import Inference


def count_pixels(frame: Frame) -> list[Inference]:
    return [Inference(subtype=str(len(frame.data or b"")))]
