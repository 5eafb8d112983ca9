"""The benchmarks keep working: ``avaproto bench``'s driver and the side-by-side harness.

The driver runs against a real server on a loopback port; the harness runs once, tiny,
with every server and client in a process of its own, as it does for real.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from avaproto.bench.drive import drive_target, format_drive_report, synthetic_payload
from avaproto.engine.frame import Frame
from avaproto.errors import StreamFailed
from avaproto.media import inferences
from avaproto.media.images import decode_image, synthetic_image
from avaproto.messages import Encoding, Inference
from avaproto.server import running
from avaproto.transport.grpc_server import ServerConfig

TIMEOUT = 30


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib runs on asyncio


class Recorder:
    """An extension that keeps what it was sent: each stream, each frame's first bytes."""

    def __init__(self) -> None:
        self.streams = 0
        self.frames = 0
        self.first: bytes | None = None
        #: Every distinct frame seen.
        self.contents: set[bytes] = set()

    def factory(self) -> Any:
        recorder = self

        class Recording:
            async def open(self, descriptor: object) -> None:
                recorder.streams += 1

            async def process(self, frame: Frame) -> list[Inference]:
                recorder.frames += 1
                if frame.data is not None:
                    recorder.contents.add(bytes(frame.data))
                    if recorder.first is None:
                        recorder.first = bytes(frame.data)
                return [inferences.motion(inferences.rectangle(0.1, 0.1, 0.2, 0.2))]

            async def close(self) -> None:
                return None

        return Recording()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("transfer", "rewrite", "written"),
    [
        ("embedded", False, None),
        ("shm", False, "(each slot written once)"),
        ("shm", True, "(every frame written)"),
    ],
)
async def test_drive_target_reports_fps_and_latency(
    transfer: Any, rewrite: bool, written: str | None
) -> None:
    recorder = Recorder()
    async with running(recorder.factory, ServerConfig(port=0)) as server:
        with anyio.fail_after(TIMEOUT):
            report = await drive_target(
                f"127.0.0.1:{server.port}",
                transfer=transfer,
                size=(32, 24),
                frames=20,
                window=4,
                rewrite_frames=rewrite,
            )
    assert report["answered"] == report["frames"] == recorder.frames == 20
    assert report["inferences"] == 20
    assert report["fps"] > 0 and report["seconds"] > 0
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert "latencies_ms" not in report
    # The payload every client of the harness sends, byte for byte.
    assert recorder.first == synthetic_payload(32 * 24 * 3)
    # Every frame, whether its slot was written for it or held it already.
    assert recorder.contents == {synthetic_payload(32 * 24 * 3)}
    text = format_drive_report(report)
    assert f"{transfer} transfer" in text and "20 of 20 answered" in text and "p99" in text
    assert report["rewrite_frames"] == (rewrite if transfer == "shm" else None)
    if written:
        assert written in text


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ["JPG", "PNG", "BMP"])
async def test_drive_target_sends_an_encoded_test_image_for_an_extension_that_takes_only_those(
    encoding: str,
) -> None:
    """Most published extensions decode JPG, PNG or BMP and refuse RAW frames."""
    recorder = Recorder()
    async with running(recorder.factory, ServerConfig(port=0)) as server:
        with anyio.fail_after(TIMEOUT):
            report = await drive_target(
                f"127.0.0.1:{server.port}", size=(32, 24), frames=5, pixel_format=encoding
            )
    assert report["answered"] == 5 and report["format"] == f"{encoding} 32x24"
    assert recorder.contents == {synthetic_image(32, 24, Encoding[encoding])}
    assert decode_image(recorder.first or b"", Encoding[encoding]).shape == (24, 32, 3)
    assert report["frame_bytes"] == len(recorder.first or b"")


@pytest.mark.anyio
async def test_drive_target_runs_streams_at_once_and_paces_them() -> None:
    recorder = Recorder()
    async with running(recorder.factory, ServerConfig(port=0)) as server:
        with anyio.fail_after(TIMEOUT):
            report = await drive_target(
                f"127.0.0.1:{server.port}",
                transfer="shm",
                size=(16, 16),
                frames=6,
                rate=100.0,
                streams=3,
                keep_latencies=True,
            )
    assert recorder.streams == 3 and recorder.frames == 18
    assert report["answered"] == 18 and len(report["latencies_ms"]) == 18
    assert report["seconds"] >= 5 / 100  # 6 frames a stream, 10 ms apart
    assert "3 streams" in format_drive_report(report)
    assert "paced at 100 fps" in format_drive_report(report)


@pytest.mark.anyio
async def test_drive_target_refuses_an_empty_load() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        await drive_target("127.0.0.1:1", frames=0)


@pytest.mark.anyio
async def test_drive_target_raises_a_failed_stream_as_itself() -> None:
    with socket.socket() as bound:  # bound, not listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        with anyio.fail_after(TIMEOUT), pytest.raises(StreamFailed, match="cannot reach"):
            await drive_target(f"127.0.0.1:{port}", size=(8, 8), frames=2, streams=2)


def test_copies_counts_whole_frames_and_what_socket_reads_keep() -> None:
    from bench.copies import LARGE_BLOCK, count_allocations

    frame = 0x80000
    trace = [
        "= Start",
        "@ /lib/python:[0x1] + 0x10 0x40000",  # a socket read: 256 KiB ...
        "@ /lib/python:[0x1] < 0x10",
        "@ /lib/python:[0x1] > 0x10 0x64",  # ... shrunk to the 100 bytes that arrived
        "@ /lib/python:[0x1] + 0x20 0x80000",  # a whole frame
        "@ /lib/python:[0x1] - 0x20",
        "@ /lib/python:[0x1] + 0x30 0x10000",  # a buffer grown past a frame's size
        "@ /lib/python:[0x1] < 0x30",
        "@ /lib/python:[0x1] > 0x40 0x90000",
        "@ /lib/python:[0x1] + 0x50 0x100",  # small: not counted
        "= End",
    ]
    counted = count_allocations(trace, frame)
    assert counted.frame_sized == 2
    assert counted.large_bytes == 100 + 0x80000 + 0x90000
    assert LARGE_BLOCK > 0x100


def test_line_attribution_charges_a_large_block_to_the_line_that_made_it() -> None:
    from bench.copies import LARGE_BLOCK, LineAttribution

    def copy_twice(data: bytes) -> int:
        copied = bytes(bytearray(data))  # two frame-sized blocks, one of them transient
        return len(copied)

    data = bytes(4 * LARGE_BLOCK)
    attribution = LineAttribution()
    attribution.start()
    try:
        copy_twice(data)
    finally:
        lines = attribution.stop()
    [line] = [line for line in lines if line["function"] == "copy_twice"]
    assert line["bytes"] >= 2 * len(data) and line["blocks"] == 1
    assert all(line["bytes"] >= LARGE_BLOCK for line in lines)


def test_the_harness_measures_every_server_with_every_client(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.__main__ import main

    before = set(os.listdir("/dev/shm"))
    output = tmp_path / "bench.json"
    # 12 frames: more than the window's 9 slots, so slots are taken again.
    arguments = ["--cells", "shm-416", "--rounds", "1", "--warmup", "0", "--frames", "12"]
    assert main([*arguments, "--quiet", "--json", str(output)]) == 0
    table = capsys.readouterr().out
    assert "Machine:" in table and "Command: `python -m bench --cells shm-416" in table
    for server in ("grpcio-sync", "grpcio-aio", "avaproto"):
        for client in ("grpcio", "avaproto"):
            assert f"| shm-416 | {server} | {client} |" in table
    results = json.loads(output.read_text())
    [cell] = results["cells"]
    assert len(cell["rows"]) == 6 and not any(row["errors"] for row in cell["rows"])
    assert all(run["answered"] == 12 for run in cell["runs"])
    assert "each slot written once, then holding the frame" in table
    for row in cell["rows"]:
        assert row["fps"]["median"] > 0
        assert row["server_cpu_us"]["median"] > 0 and row["client_cpu_us"]["median"] > 0
        assert math.isclose(row["ratio"].get(row["server"], 1.0), 1.0)
    # Both clients' segments are gone, and their processes (named in them) too.
    left = [
        name
        for name in set(os.listdir("/dev/shm")) - before
        if name.startswith(("bench-grpcio-", "avaproto-")) and not _alive(name.split("-")[-2])
    ]
    assert left == []


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("name", ["touch", "sleepy"])
def test_the_bench_extensions_load_by_module_and_attribute(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    from avaproto.engine.extension import FunctionExtension
    from avaproto.extensions import load_extension
    from bench import extensions

    monkeypatch.chdir(Path(extensions.__file__).parents[1])  # where the harness runs it
    factory = load_extension(f"bench.extensions:{name}")
    assert isinstance(factory(), FunctionExtension)


def test_the_bench_extensions_touch_a_frame_as_the_baselines_do() -> None:
    from avaproto.protocol.descriptor import StreamDescriptor
    from avaproto.protocol.roles import Role
    from avaproto.protocol.video_format import VideoFormat
    from bench.extensions import touched

    fmt: VideoFormat | None = None
    described = StreamDescriptor(Role.PIPELINE, None, None, "", 90000, fmt, None)
    assert touched(Frame(2, 0, memoryview(bytes([7, 0, 0, 5])), fmt, described)) == 12
    assert touched(Frame(3, 0, None, fmt, described)) == 0


def test_a_stopped_harness_stops_every_process_it_started() -> None:
    """SIGTERM (what ``timeout`` sends) unwinds the run as Ctrl-C does: the servers and
    the clients are stopped, not left running without a parent."""
    root = Path(__file__).resolve().parents[1]
    arguments = ["--cells", "shm-416", "--rounds", "100", "--warmup", "0", "--frames", "200"]
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", *arguments],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    children: list[str] = []
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 60
        for line in process.stderr:  # a round done: every server and client is running
            if "round 1/" in line or time.monotonic() > deadline:
                break
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        assert len(children) >= 5, children  # three servers, two clients
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
        left = [pid for pid in children if _alive(pid)]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in children:  # whatever the outcome, nothing of the test's outlives it
            if _alive(pid):
                os.kill(int(pid), signal.SIGKILL)
    assert process.returncode == 128 + signal.SIGTERM
    assert "python -m bench: stopped by SIGTERM" in errors
    assert left == []


def test_the_grpcio_clients_ring_writes_a_slot_once_unless_told_to_again() -> None:
    from bench.grpcio_client import Ring

    ring = Ring(100, window=2)
    try:
        start = ring.write(1, b"a" * 100, again=False)
        assert start == ring.slot_bytes and ring.view[start] == ord("a")
        ring.view[start] = ord("b")  # as if someone else had written there
        ring.write(1, b"a" * 100, again=False)
        assert ring.view[start] == ord("b")  # the slot was written once already
        ring.write(1, b"a" * 100, again=True)
        assert ring.view[start] == ord("a")
    finally:
        ring.close()
    assert not os.path.exists(ring.path)


@pytest.mark.rule("CONN-19")
def test_a_grpcio_client_streaming_small_messages_is_no_flood() -> None:
    """grpc-core's client answers each read with a PING of its bandwidth estimate and
    returns credit in WINDOW_UPDATEs: over a long run of shared-memory references (a
    few dozen bytes each) those outnumbered what one frame received earned back, and
    the benchmark's grpcio client was told GOAWAY [CONN-19] after a few thousand."""
    import asyncio

    from bench.grpcio_client import drive
    from tests.test_cli import serving

    with serving("--extension", "null") as server:
        result = asyncio.run(
            asyncio.wait_for(
                drive(server.target, transfer="shm", width=32, height=24, frames=8000, window=8),
                TIMEOUT * 4,
            )
        )
    assert result["answered"] == 8000
