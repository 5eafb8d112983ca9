"""The summary of a run of ``send`` or ``demo``: the pipeline's stream statistics.

``Report`` is ``avaproto.engine.statistics.StreamStatistics``, the one record both roles
keep; this module keeps the name the command line and its users know.
"""

from __future__ import annotations

from .engine.statistics import StreamStatistics, kind_of, percentile

Report = StreamStatistics

__all__ = ["Report", "kind_of", "percentile"]
