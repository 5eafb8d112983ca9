"""The benchmarks keep working: each runs once, tiny, and reports both sides."""

from __future__ import annotations

from avaproto.bench import transport


def test_transport_benchmark_measures_both_servers() -> None:
    results = transport.measure(frames=20, size=32, repeat=1)
    assert set(results) == {"grpcio", "avaproto"}
    assert all(len(runs) == 1 and runs[0] > 0 for runs in results.values())
    table = transport.report(results, 20, 32)
    assert "ratio" in table and "avaproto" in table
