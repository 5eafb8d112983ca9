"""What a processor receives: one sample, its bytes in place, decoded on demand.

A ``Frame`` never copies pixels by itself. ``data`` is a view of the received message
(embedded content) or of the sample's shared-memory lease, made on first use: with
shared memory that is when the bytes are read out of the sender's segment (or sliced
from its mapping), so a processor that never touches ``data`` costs no copy, and a
segment the sender shrank ends the stream from there (SHM-15). ``image`` and ``rgb()``
decode lazily through the media plane, as views wherever the pixel format allows. The
views are valid until the processor returns: the engine releases the lease right after
the sample's acknowledgement is sent, so a processor that needs the pixels later must
copy them (``frame.rgb().copy()``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..messages import Inference
from ..protocol.descriptor import StreamDescriptor
from ..protocol.video_format import VideoFormat
from .leases import Lease

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from ..media.frames import Image


@dataclass(frozen=True, eq=False, init=False)
class Frame:
    """One received sample, as a processor sees it.

    ``data`` is given as the bytes (a memoryview), as the lease they are read from on
    first use, or None.
    """

    sequence_number: int
    #: Presentation time in ticks of ``descriptor.timescale``.
    timestamp: int
    #: The checked format of ``data`` (None: the stream carries inferences only).
    format: VideoFormat | None
    #: The sender's descriptor: graph identity, configuration, transfer mode.
    descriptor: StreamDescriptor
    #: Inferences that came with the sample (from an upstream node).
    inferences: list[Inference]
    _content: memoryview | Lease | None = field(repr=False)

    def __init__(
        self,
        sequence_number: int,
        timestamp: int,
        data: memoryview | Lease | None,
        format: VideoFormat | None,
        descriptor: StreamDescriptor,
        inferences: list[Inference] | None = None,
    ) -> None:
        set_ = object.__setattr__  # frozen: set once, here
        set_(self, "sequence_number", sequence_number)
        set_(self, "timestamp", timestamp)
        set_(self, "_content", data)
        set_(self, "format", format)
        set_(self, "descriptor", descriptor)
        set_(self, "inferences", [] if inferences is None else inferences)

    @property
    def has_data(self) -> bool:
        """Whether the sample carries content, known without reading it (``data`` reads
        a shared-memory frame on first use: a large one is better read in a thread)."""
        return self._content is not None

    @property
    def data(self) -> memoryview | None:
        """The sample's bytes, read-only (None: the sample carries inferences only).

        With shared memory the first use reads them and may raise ``ProtocolError``
        (SHM-15), which ends the stream. After the sample's lease has ended the view is
        released: any use raises ``ValueError``, as a view taken earlier does.
        """
        content = self._content
        if content is None or isinstance(content, memoryview):
            return content
        view: memoryview | None = self.__dict__.get("_view")
        if view is None:
            view = _released_view() if content.released else content.view
            object.__setattr__(self, "_view", view)
        return view

    @property
    def configuration(self) -> str:
        """The pipeline's extension_configuration, as sent (CFG-2)."""
        return self.descriptor.extension_configuration

    @property
    def seconds(self) -> float | None:
        """The timestamp in seconds, when the descriptor gives a timescale."""
        timescale = self.descriptor.timescale
        return self.timestamp / timescale if timescale else None

    @property
    def image(self) -> Image:
        """The pixels in their native layout: an array (packed formats) or YUV planes.

        Encoded samples (JPG, PNG, BMP) are decoded to RGB through Pillow, once.
        """
        # Kept in the frame's own dict: functools.cached_property takes one lock for
        # every instance (up to Python 3.12), and a slow image of one stream held up
        # the frames of every other.
        image: Image | None = self.__dict__.get("_image")
        if image is not None:
            return image
        from ..media import frames, images

        data, fmt = self._media()
        encoding = fmt.encoding
        image = frames.decode(data, fmt) if fmt.is_raw else images.decode_image(data, encoding)
        object.__setattr__(self, "_image", image)
        return image

    def rgb(self) -> npt.NDArray[np.uint8]:
        """The frame as height x width x 3 RGB, a view of the sample when the format allows."""
        from ..media import frames

        _, fmt = self._media()
        image = self.image
        if not fmt.is_raw:
            assert not isinstance(image, frames.YuvPlanes)  # decoded images are RGB
            return image  # type: ignore[return-value]  # RGB uint8, from decode_image
        return frames.to_rgb(image, fmt)

    def _let_go(self) -> None:
        """Forget what was made from the sample's bytes (its view, its image), before
        its lease ends: the thread that ran a plain ``def`` processor holds the frame
        until it takes its next job, and the cached image would hold the bytes with it
        (SHM-12 would then blame the extension, which kept nothing)."""
        self.__dict__.pop("_image", None)
        self.__dict__.pop("_view", None)

    def _media(self) -> tuple[memoryview, VideoFormat]:
        content = self._content
        if content is not None and not isinstance(content, memoryview) and content.released:
            raise ValueError(
                f"sample {self.sequence_number}'s frame was let go when its processing "
                "ended (SHM-7: its shared memory may hold another frame by now); copy what "
                "must outlive process(), e.g. frame.rgb().copy()"
            )
        data = self.data
        if data is None or self.format is None:
            raise ValueError(f"sample {self.sequence_number} carries no media content")
        return data, self.format


def _released_view() -> memoryview:
    """A view already released: what ``data`` is once a lease ended unread."""
    view = memoryview(b"")
    view.release()
    return view
