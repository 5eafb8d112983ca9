"""What a processor receives: one sample, its bytes in place, decoded on demand.

A ``Frame`` never copies pixels by itself. ``data`` is a view of the received message
(embedded content) or of the sender's shared memory (a read-only lease); ``image`` and
``rgb()`` decode lazily through the media plane, as views wherever the pixel format
allows. The views are valid until the processor returns: the engine releases the
lease right after the sample's acknowledgement is sent, so a processor that needs the
pixels later must copy them (``frame.rgb().copy()``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from ..messages import Inference
from ..protocol.descriptor import StreamDescriptor
from ..protocol.video_format import VideoFormat

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from ..media.frames import Image


@dataclass(frozen=True, eq=False)
class Frame:
    """One received sample, as a processor sees it."""

    sequence_number: int
    #: Presentation time in ticks of ``descriptor.timescale``.
    timestamp: int
    #: The sample's bytes (None: the sample carries inferences only).
    data: memoryview | None
    #: The checked format of ``data`` (None: the stream carries inferences only).
    format: VideoFormat | None
    #: The sender's descriptor: graph identity, configuration, transfer mode.
    descriptor: StreamDescriptor
    #: Inferences that came with the sample (from an upstream node).
    inferences: list[Inference] = field(default_factory=list)

    @property
    def configuration(self) -> str:
        """The pipeline's extension_configuration, as sent (CFG-2)."""
        return self.descriptor.extension_configuration

    @property
    def seconds(self) -> float | None:
        """The timestamp in seconds, when the descriptor gives a timescale."""
        timescale = self.descriptor.timescale
        return self.timestamp / timescale if timescale else None

    @cached_property
    def image(self) -> Image:
        """The pixels in their native layout: an array (packed formats) or YUV planes.

        Encoded samples (JPG, PNG, BMP) are decoded to RGB through Pillow.
        """
        from ..media import frames, images

        data, fmt = self._content()
        if fmt.is_raw:
            return frames.decode(data, fmt)
        return images.decode_image(data, fmt.encoding)

    def rgb(self) -> npt.NDArray[np.uint8]:
        """The frame as height x width x 3 RGB, a view of the sample when the format allows."""
        from ..media import frames

        _, fmt = self._content()
        image = self.image
        if not fmt.is_raw:
            assert not isinstance(image, frames.YuvPlanes)  # decoded images are RGB
            return image  # type: ignore[return-value]  # RGB uint8, from decode_image
        return frames.to_rgb(image, fmt)

    def _content(self) -> tuple[memoryview, VideoFormat]:
        if self.data is None or self.format is None:
            raise ValueError(f"sample {self.sequence_number} carries no media content")
        return self.data, self.format
