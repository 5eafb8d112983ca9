"""One run of the benchmark: every cell through every server by every client, in rounds.

Fairness, as built in here:

* every server and every client is a process of its own, so no two of them share an
  interpreter (a GIL, a heap, an event loop); a client worker runs one load at a time;
* all servers are up during the whole run and driven one after another, round by
  round, in an order rotated each round (and the clients' order reversed every other
  round), so that drift on the machine (another process, thermal state, the page
  cache) spreads over all of them instead of hitting one;
* the first ``warmup`` rounds (shorter) are run and discarded: imports, first
  connections, the allocator's first growth;
* both clients send the same payload bytes with the same window (or pacing), open one
  connection per stream, and time from the first sample after the descriptors'
  exchange to the last acknowledgement;
* each figure is the median over the rounds, shown with its minimum and maximum; a
  ratio to a baseline is the median of the rounds' ratios, each taken between runs
  made back to back, so that a slow spell of the machine cancels out;
* besides frames per second, the CPU time each process spent per frame (all its
  threads: grpcio's core threads count as much as the event loop), which another
  process's load on the machine disturbs much less than it disturbs the wall clock.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from avaproto.report import percentile

from . import copies
from .cells import BASELINES, CELLS, CLIENTS, SERVERS, SPECIAL, Cell
from .processes import BenchError, Server, TracedServer, Worker, vm_status
from .worker import finite

#: The RSS measurement: 416x416 frames through shared memory, by the grpcio client.
RSS_CELL = Cell("rss", "avaproto server RSS", "shm", 416, 416, 20_000)
#: Frames sent before the first RSS reading, so that it sees a server that has served.
RSS_WARMUP = 500
#: The copies measurement: each mode and size, each cell's frames traced.
COPIES_CELLS = (
    Cell("copies-embedded-416", "", "embedded", 416, 416, 50),
    Cell("copies-shm-416", "", "shm", 416, 416, 50),
    Cell("copies-embedded-1080", "", "embedded", 1920, 1080, 20),
    Cell("copies-shm-1080", "", "shm", 1920, 1080, 20),
)


@dataclass
class Options:
    cells: Sequence[str] = (*CELLS, *SPECIAL)
    rounds: int = 5
    warmup: int = 1
    #: Frames per stream per run, for every cell (None: each cell's own).
    frames: int | None = None
    servers: Sequence[str] = SERVERS
    clients: Sequence[str] = CLIENTS
    rss_frames: int = RSS_CELL.frames
    #: Shared memory: write every sample's frame into its slot (else each slot once).
    rewrite_frames: bool = False
    progress: Callable[[str], None] = field(default=lambda text: None)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("avaproto", "grpcio", "protobuf", "grpclib", "h2", "anyio"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    try:
        from google.protobuf.internal import api_implementation  # type: ignore[import-untyped]

        versions["protobuf"] += f" ({api_implementation.Type()})"
    except ImportError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "system": f"{platform.system()} {platform.release()}",
        "versions": versions,
    }


def _timeout(cell: Cell, frames: int) -> float:
    """Seconds a run may take before it counts as hung: generous, never hit when healthy."""
    return 60.0 + frames * cell.streams * (cell.delay + (1 / cell.rate if cell.rate else 0.02))


class _Bench:
    def __init__(self, options: Options, stack: ExitStack, logs: Path) -> None:
        self.options = options
        self.stack = stack
        self.logs = logs
        self.workers: dict[str, Worker] = {}

    def start_workers(self) -> None:
        for kind in self.options.clients:
            self.workers[kind] = self._worker(kind)
        for worker in self.workers.values():
            worker.wait_ready()

    def _worker(self, kind: str) -> Worker:
        worker = Worker.start(kind, self.logs)
        self.stack.callback(worker.stop)
        return worker

    def start_servers(self, delay: float, stack: ExitStack) -> dict[str, Server]:
        servers = {}
        for name in self.options.servers:
            servers[name] = Server.start(name, self.logs, delay=delay)
            stack.callback(servers[name].stop)
        for server in servers.values():
            server.wait_ready()
        return servers

    def drive(
        self,
        client: str,
        load: dict[str, object],
        timeout: float,
        server: Server | TracedServer | None = None,
    ) -> dict[str, Any]:
        """One run; a hung or dead worker is replaced and the run reported as failed.

        The result gains the CPU time the client's and the server's processes (every
        thread) spent per answered frame during the run, in microseconds.
        """
        worker = self.workers[client]
        if load["transfer"] == "shm":
            load = {**load, "rewrite_frames": self.options.rewrite_frames}
        server_before = server.cpu() if server is not None else math.nan
        client_before = worker.cpu()
        try:
            result = worker.run(load, timeout)
        except BenchError as error:
            worker.stop(grace=1)
            self.workers[client] = self._worker(client)
            self.workers[client].wait_ready()
            return {"error": str(error)}
        client_spent = worker.cpu() - client_before
        server_spent = server.cpu() - server_before if server is not None else math.nan
        answered = result.get("answered") or 0
        result["client_cpu_us"] = client_spent / answered * 1e6 if answered else None
        result["server_cpu_us"] = server_spent / answered * 1e6 if answered else None
        return result

    def run_cell(self, cell: Cell, servers: dict[str, Server]) -> dict[str, Any]:
        options = self.options
        frames = options.frames or cell.frames
        warm_frames = max(5, frames // 4)
        names = list(servers)
        runs: list[dict[str, Any]] = []
        latencies: dict[tuple[str, str], list[float]] = {}
        for number in range(options.warmup + options.rounds):
            warm = number < options.warmup
            shift = number % len(names)
            order = names[shift:] + names[:shift]
            clients = list(options.clients)
            if number % 2:
                clients.reverse()
            for name in order:
                for client in clients:
                    count = warm_frames if warm else frames
                    result = self.drive(
                        client,
                        cell.load(servers[name].target, count),
                        _timeout(cell, count),
                        servers[name],
                    )
                    kept = result.pop("latencies_ms", None) or []
                    if not warm and "error" not in result:
                        latencies.setdefault((name, client), []).extend(kept)
                    runs.append(
                        {
                            "round": number - options.warmup + 1,
                            "warmup": warm,
                            "server": name,
                            "client": client,
                            "fps": result.get("fps"),
                            "seconds": result.get("seconds"),
                            "answered": result.get("answered"),
                            "latency_ms": result.get("latency_ms"),
                            "server_cpu_us": finite(result.get("server_cpu_us")),
                            "client_cpu_us": finite(result.get("client_cpu_us")),
                            "error": result.get("error"),
                        }
                    )
            label = "warm-up" if warm else f"round {number - options.warmup + 1}/{options.rounds}"
            options.progress(
                f"{cell.name} {label}: " + _round_text(runs[-len(names) * len(clients) :])
            )
        return {
            "name": cell.name,
            "title": cell.title,
            "transfer": cell.transfer,
            "width": cell.width,
            "height": cell.height,
            "frames": frames,
            "window": cell.window,
            "rate": cell.rate,
            "delay": cell.delay,
            "streams": cell.streams,
            "latency": cell.latency,
            "runs": runs,
            "rows": _rows(runs, latencies, names, list(options.clients), paced=bool(cell.rate)),
        }

    def measure_rss(self) -> dict[str, Any]:
        """avaproto's server, fresh, before and after ``rss_frames`` frames."""
        client = "grpcio" if "grpcio" in self.workers else next(iter(self.workers))
        server = Server.start("avaproto", self.logs)
        self.stack.callback(server.stop)
        server.wait_ready()
        cell = RSS_CELL
        warm = self.drive(client, cell.load(server.target, RSS_WARMUP), _timeout(cell, RSS_WARMUP))
        before = vm_status(server.pid)
        frames = self.options.rss_frames
        result = self.drive(
            client, cell.load(server.target, frames), _timeout(cell, frames), server
        )
        after = vm_status(server.pid)
        server.stop()
        return {
            "client": client,
            "transfer": cell.transfer,
            "width": cell.width,
            "height": cell.height,
            "warmup_frames": RSS_WARMUP,
            "frames": frames,
            "fps": result.get("fps"),
            "server_cpu_us": result.get("server_cpu_us"),
            "error": result.get("error") or warm.get("error"),
            "rss_before": before["VmRSS"],
            "rss_after": after["VmRSS"],
            "peak": after["VmHWM"],
        }

    def measure_copies(self) -> dict[str, Any]:
        """avaproto's server traced: large allocations per sample, and the lines that make them;
        and the lines of avaproto's client that allocate when it sends the same frames."""
        unavailable = copies.tracing_available()
        client = "grpcio" if "grpcio" in self.workers else next(iter(self.workers))
        server = TracedServer.start(self.logs, None if unavailable else copies.DEBUG_LIBRARY)
        self.stack.callback(server.stop)
        server.wait_ready()
        rows = []
        for cell in COPIES_CELLS:
            frames = cell.frames
            frame_bytes = cell.width * cell.height * 3
            timeout = _timeout(cell, frames) * 10  # line tracing is slow
            self.drive(client, cell.load(server.target, 5), timeout)
            row: dict[str, Any] = {
                "transfer": cell.transfer,
                "width": cell.width,
                "height": cell.height,
                "frames": frames,
                "frame_bytes": frame_bytes,
                "unavailable": unavailable,
            }
            if unavailable is None:
                server.command(f"mtrace {cell.name}.trace")
                result = self.drive(client, cell.load(server.target, frames), timeout)
                server.command("stop")
                with (self.logs / f"{cell.name}.trace").open() as trace:
                    counted = copies.count_allocations(trace, frame_bytes)
                row["error"] = result.get("error")
                row["frame_sized_per_sample"] = counted.frame_sized / frames
                row["large_bytes_per_frame"] = counted.large_bytes / frames / frame_bytes
            server.command(f"where {cell.name}.json")
            result = self.drive(client, cell.load(server.target, frames), timeout)
            server.command("stop")
            row["error"] = row.get("error") or result.get("error")
            lines = json.loads((self.logs / f"{cell.name}.json").read_text())
            row["where"] = _per_sample(lines, frames, frame_bytes)
            if "avaproto" in self.workers:  # avaproto's client, sending the same frames
                load = {**cell.load(server.target, frames), "where": True}
                result = self.drive("avaproto", load, timeout)
                row["error"] = row["error"] or result.get("error")
                row["client_where"] = _per_sample(result.get("where") or [], frames, frame_bytes)
            rows.append(row)
            where = sum(line["frames_per_sample"] for line in row["where"])
            self.options.progress(
                f"copies {cell.transfer} {cell.size}: "
                + (
                    f"{row['frame_sized_per_sample']:.2f} frame-sized allocations, "
                    f"{row['large_bytes_per_frame']:.2f} frames in large blocks per sample; "
                    if unavailable is None
                    else ""
                )
                + f"{where:.2f} frames charged to lines"
            )
        server.stop()
        return {"client": client, "unavailable": unavailable, "rows": rows}


def _per_sample(lines: list[dict[str, Any]], frames: int, frame_bytes: int) -> list[dict[str, Any]]:
    """``LineAttribution`` rows as frames' worth of bytes per sample, by line."""
    return [
        {
            "line": f"{copies.shorten(line['file'])}:{line['line']} {line['function']}",
            "frames_per_sample": line["bytes"] / frames / frame_bytes,
            "blocks_per_sample": line["blocks"] / frames,
        }
        for line in lines
    ]


def _round_text(runs: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{run['server']}/{run['client']} " + ("error" if run["error"] else f"{run['fps']:.0f} fps")
        for run in runs
    )


def _spread(values: list[float | None]) -> dict[str, Any]:
    """Median, min and max of the values that exist."""
    present = [value for value in values if value is not None and math.isfinite(value)]
    return {
        "median": statistics.median(present) if present else None,
        "min": min(present, default=None),
        "max": max(present, default=None),
    }


def _rows(
    runs: list[dict[str, Any]],
    latencies: dict[tuple[str, str], list[float]],
    servers: list[str],
    clients: list[str],
    *,
    paced: bool,
) -> list[dict[str, Any]]:
    """One row per server and client; its ratio to each baseline with the same client.

    The ratio compares frames per second (this row's / the baseline's), or for a paced
    cell, where every server keeps up, the p50 latency (the baseline's / this row's);
    the CPU ratio the server's CPU time per frame (the baseline's / this row's): above
    1 is better for all. Each is the median of the rounds' ratios: within a round the
    servers run back to back, so a slow spell of the machine hits both sides of it.
    """
    rows = []
    for server in servers:
        for client in clients:
            mine = [r for r in runs if r["server"] == server and r["client"] == client]
            measured = [r for r in mine if not r["warmup"]]
            fps = [r["fps"] for r in measured if not r["error"] and r["fps"] is not None]
            cpu = {
                side: _spread([r[f"{side}_cpu_us"] for r in measured if not r["error"]])
                for side in ("server", "client")
            }
            pooled = latencies.get((server, client), [])
            rows.append(
                {
                    "server": server,
                    "client": client,
                    "fps": {
                        "median": statistics.median(fps) if fps else None,
                        "min": min(fps, default=None),
                        "max": max(fps, default=None),
                        "rounds": fps,
                    },
                    "server_cpu_us": cpu["server"],
                    "client_cpu_us": cpu["client"],
                    "latency_ms": {
                        "p50": percentile(pooled, 0.5) if pooled else None,
                        "p99": percentile(pooled, 0.99) if pooled else None,
                        "samples": len(pooled),
                    },
                    "errors": sorted({r["error"] for r in mine if r["error"]}),
                }
            )

    def goodness(run: dict[str, Any]) -> float | None:
        """The run's figure, higher is better: fps, or 1 / p50 latency when paced."""
        if run["error"]:
            return None
        if paced:
            p50 = (run["latency_ms"] or {}).get("p50")
            return 1 / p50 if p50 else None
        fps: float | None = run["fps"]
        return fps

    def cheapness(run: dict[str, Any]) -> float | None:
        cost: float | None = run["server_cpu_us"]
        return 1 / cost if cost and not run["error"] else None

    measured = [run for run in runs if not run["warmup"]]
    for name, measure in (("ratio", goodness), ("cpu_ratio", cheapness)):
        by_round = {(r["round"], r["server"], r["client"]): measure(r) for r in measured}
        for row in rows:
            ratios: dict[str, float | None] = {}
            for baseline in (s for s in servers if s in BASELINES):
                paired = []
                for number, server, client in by_round:
                    if (server, client) != (row["server"], row["client"]):
                        continue
                    own = by_round[(number, server, client)]
                    base = by_round.get((number, baseline, client))
                    if own and base:
                        paired.append(own / base)
                ratios[baseline] = statistics.median(paired) if paired else None
            row[name] = ratios
    return rows


def run(options: Options) -> dict[str, Any]:
    """Measure everything ``options`` asks for; the results, ready for JSON."""
    unknown = [c for c in options.cells if c not in CELLS and c not in SPECIAL]
    if unknown:
        raise ValueError(f"unknown cells: {', '.join(unknown)}")
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine(),
        "rounds": options.rounds,
        "warmup": options.warmup,
        "rewrite_frames": options.rewrite_frames,
        "cells": [],
    }
    cells = [CELLS[name] for name in CELLS if name in options.cells]
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch, ExitStack() as stack:
        bench = _Bench(options, stack, Path(scratch))
        bench.start_workers()
        by_delay: dict[float, list[Cell]] = {}
        for cell in cells:
            by_delay.setdefault(cell.delay, []).append(cell)
        for delay, group in by_delay.items():
            with ExitStack() as servers_stack:
                servers = bench.start_servers(delay, servers_stack)
                for cell in group:
                    results["cells"].append(bench.run_cell(cell, servers))
        if "rss" in options.cells:
            results["rss"] = bench.measure_rss()
            options.progress(
                f"rss: {results['rss']['rss_before'] / 2**20:.1f} MiB before, "
                f"{results['rss']['rss_after'] / 2**20:.1f} MiB after"
            )
        if "copies" in options.cells:
            results["copies"] = bench.measure_copies()
    results["seconds"] = time.monotonic() - started
    return results


__all__ = ["Options", "machine", "run"]
