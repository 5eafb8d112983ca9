"""Benchmarks, run by ``make bench`` (``python -m avaproto.bench``).

Every figure is printed beside a baseline measured in the same run on the same
machine, so results read as ratios that survive a change of machine; absolute times
are shown too, but only the ratios are meant to be compared across runs.
"""
