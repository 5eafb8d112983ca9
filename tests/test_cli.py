"""The command line, run as a person runs it: real processes on loopback.

Extensions of the tests' own are written to a temporary directory and served from it
as a person would serve theirs: ``avaproto serve --extension module:function`` run in
that directory.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
import trustme

from avaproto.cli import RedactCredentials, build_parser, byte_size, main, redact
from avaproto.media.shared_memory import remove_stale_segments
from avaproto.scheduling import DEFAULT_SLICE, current_slice
from avaproto.sources.synthetic import synthetic_frames
from avaproto.sources.video import encode_test_clip

TIMEOUT = 120
AVAPROTO = [sys.executable, "-m", "avaproto"]
#: The installed script: unlike ``python -m``, it does not put the working directory on
#: the module path by itself.
SCRIPT = str(Path(sys.executable).with_name("avaproto"))
#: Source code of the extensions the tests serve, by module name.
EXTENSIONS = {
    # Fails on the eleventh frame (sequence number 12): ten frames are answered first.
    "failing": (
        "def process(frame):\n"
        "    if frame.sequence_number >= 12:\n"
        "        raise RuntimeError('the model crashed')\n"
    ),
    # Never answers: a run against it lasts until it is stopped.
    "slow": ("import anyio\n\nasync def process(frame):\n    await anyio.sleep(3600)\n"),
    # A YOLO-like detector, and one inference the JSON form cannot hold (no box).
    "detector": (
        "from avaproto.media import inferences\n"
        "from avaproto.messages import Entity, Inference, InferenceType, Tag\n\n"
        "def process(frame):\n"
        "    box = inferences.rectangle(0.1, 0.2, 0.3, 0.4)\n"
        "    odd = Inference(type=InferenceType.ENTITY, entity=Entity(tag=Tag(value='car')))\n"
        "    return [inferences.entity('person', 0.9, box), odd]\n"
    ),
    "broken": "raise RuntimeError('no model file at /models/yolo.onnx')\n",
    # A plain def stuck in a call that never returns: no thread can be cancelled.
    "stuck": "import threading\n\ndef process(frame):\n    threading.Event().wait()\n",
}


def run(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    command: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(command or AVAPROTO), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )


def stopped_by(process: subprocess.Popen[str], signum: signal.Signals) -> tuple[str, str]:
    """Send ``signum`` and read what the command wrote until it exited; killed if it
    does not exit in time (the test then fails on its status)."""
    process.send_signal(signum)
    try:
        return process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)


def started(*args: str) -> subprocess.Popen[str]:
    """An avaproto command running in the background, its stderr kept, its stdout not."""
    return subprocess.Popen(
        [*AVAPROTO, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


class Server:
    """An ``avaproto serve`` process; its log is read as it comes, never left to block."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self._reader = threading.Thread(target=self._read)
        self._reader.start()
        self.target = re.search(r"on (\S+:\d+)", self.wait_for("serving ")).group(1)  # type: ignore[union-attr]

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> str:
        """The first log line containing ``text``, once it has been logged."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self.lines if text in line), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                assert not self._ended and left > 0, f"no {text!r} in: {self.lines}"
                self._changed.wait(left)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=TIMEOUT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._reader.join(TIMEOUT)


@contextmanager
def serving(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[Server]:
    """``avaproto serve`` on a free port until the block ends; then SIGTERM, exit 0."""
    process = subprocess.Popen(
        [*AVAPROTO, "serve", "--port", "0", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    try:
        server = Server(process)
    except BaseException:
        process.kill()
        process.wait(TIMEOUT)
        raise
    try:
        yield server
    finally:
        assert server.stop() == 0, server.lines


@pytest.fixture
def extensions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the tests' extension modules, as an author's project would."""
    directory = tmp_path_factory.mktemp("project")
    for name, source in EXTENSIONS.items():
        (directory / f"{name}.py").write_text(source)
    return directory


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real video: 12 frames at 10 frames per second (1.1 s from first to last)."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    return encode_test_clip(path, (f.rgb for f in synthetic_frames(64, 48, count=12)), 10.0)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# --- sending and answering -------------------------------------------------------------


@pytest.mark.rule("ACK-1", "SRV-8")
@pytest.mark.parametrize("transfer", ["embedded", "shm"])
def test_send_writes_one_json_line_per_acknowledged_frame(tmp_path: Path, transfer: str) -> None:
    output = tmp_path / "results.jsonl"
    with serving("--extension", "motion") as server:
        done = run(
            "send", server.target, "--source", "synthetic", "--frames", "40", "--size", "160x96",
            "--transfer", transfer, "--output", str(output),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["sequenceNumber"] for line in lines] == list(range(2, 42))
    assert all(isinstance(line["timestamp"], int) for line in lines)
    moving = [line for line in lines if "inferences" in line]
    assert moving, "the synthetic source moves: some frames must report motion"
    for line in moving:
        for inference in line["inferences"]:
            assert inference["type"] == "motion"
            assert set(inference["motion"]["box"]) <= {"l", "t", "w", "h"}
    assert "40 sent, 40 answered" in done.stdout
    assert re.search(r"latency: p50 [\d.]+ ms, p99 [\d.]+ ms", done.stdout)
    assert "inferences:" in done.stdout and "motion" in done.stdout
    assert not list(tmp_path.glob(".results.jsonl.*")), "no temporary file is left behind"


@pytest.mark.rule("SRV-8")
def test_a_processor_stuck_in_a_call_does_not_keep_the_server(extensions: Path) -> None:
    """Python waits for every worker thread before it exits: a processor stuck in a
    call kept the server, silent, long after its grace."""
    with serving("--extension", "stuck:process", "--grace", "0.5", cwd=extensions) as server:
        sent = run("send", server.target, "--frames", "1", "--size", "8x8", "--ack-timeout", "1")
        assert "[PIPE-4]" in sent.stderr, sent.stderr
    line = server.wait_for("still run in worker threads after the drain")
    assert "1 call(s) of the extension" in line


@pytest.mark.rule("SRV-8")
def test_a_second_signal_ends_the_drain_at_once(extensions: Path) -> None:
    """The first Ctrl-C drains for --grace; a second one ended nothing before."""
    with serving("--extension", "slow:process", "--grace", "3600", cwd=extensions) as server:
        sender = started("send", server.target, "--frames", "1", "--size", "8x8")
        try:
            server.wait_for("stream opened")
            server.process.send_signal(signal.SIGINT)
            server.wait_for("SIGINT: draining for up to 3600.0 s")
            server.process.send_signal(signal.SIGINT)
            assert server.process.wait(timeout=TIMEOUT) == 0
        finally:
            _, stderr = sender.communicate(timeout=TIMEOUT)
    assert "SIGINT again: ending the stream still open now" in "\n".join(server.lines)
    assert "[SRV-8] the server stopped at once, asked twice" in stderr, stderr


def test_a_command_stopped_by_ctrl_c_says_so(extensions: Path) -> None:
    """bench and demo ended with status 130 and nothing on the terminal."""
    with serving("--extension", "slow:process", "--grace", "0", cwd=extensions) as server:
        bench = started("bench", server.target, "--frames", "10", "--size", "8x8")
        server.wait_for("stream opened")
        bench.send_signal(signal.SIGINT)
        _, stderr = bench.communicate(timeout=TIMEOUT)
    assert bench.returncode == 130
    assert one_line(stderr) == "avaproto bench: stopped by SIGINT"


def test_output_to_a_reader_that_goes_away_ends_in_one_line() -> None:
    """``send --output - | head -1``: the pipe breaks under the next result."""
    with serving("--extension", "motion") as server:
        sender = subprocess.Popen(
            [*AVAPROTO, "send", server.target, "--frames", "300", "--output", "-"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert sender.stdout is not None
        assert sender.stdout.readline().startswith('{"sequenceNumber":')
        sender.stdout.close()  # as head does once it has its line
        _, stderr = sender.communicate(timeout=TIMEOUT)
    assert sender.returncode == 1
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert "avaproto send: the output's reader went away (a broken pipe)" in stderr


@pytest.mark.rule("AUTH-3")
def test_send_with_wrong_password_fails_with_one_clear_line() -> None:
    with serving(
        "--extension", "null", env={"AVAPROTO_USERNAME": "u", "AVAPROTO_PASSWORD": "p"}
    ) as server:
        done = run("send", server.target, "--frames", "3", "--username", "u", "--password", "nope")
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "UNAUTHENTICATED" in line and "[AUTH-3]" in line
    assert "nope" not in done.stderr


def test_null_extension_answers_without_inferences(tmp_path: Path) -> None:
    output = tmp_path / "null.jsonl"
    with serving("--extension", "null") as server:
        done = run(
            "send", server.target, "--frames", "10", "--size", "64x48", "--output", str(output)
        )
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in output.read_text().splitlines()] == [
        {"sequenceNumber": n, "timestamp": t * 3000} for t, n in enumerate(range(2, 12))
    ]


@pytest.mark.rule("SRV-8")
def test_serve_logs_each_stream_and_drains_on_sigterm() -> None:
    with serving("--extension", "null") as server:
        done = run(
            "send", server.target, "--frames", "5", "--size", "32x32", "--transfer", "shm",
            "--shm-write", "map",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        closed = server.wait_for("stream closed")
    opened = [line for line in server.lines if "stream opened" in line]
    assert len(opened) == 1 and "RAW RGB24 32x32" in opened[0] and "shared memory" in opened[0]
    assert "5 frames" in closed and closed.endswith("OK")
    assert any("SIGTERM: draining" in line for line in server.lines)


@pytest.mark.rule("SRV-16", "SRV-6")
def test_pipelines_cancelling_while_answered_leave_nothing_above_info() -> None:
    """grpcio pipelines cancel their calls at random moments while frames flow (a
    deactivated pipeline, a client's own deadline): each stream ends CANCELLED, and the
    log says so at INFO, without the traceback grpclib logs when an answer meets the
    reset stream (nine cancels in ten did, before)."""
    import asyncio
    import random

    import grpc

    from bench.official import descriptor_message, official_messages

    pb = official_messages()
    width, height, rounds = 64, 48, 30
    samples = []
    for number in range(2, 200):
        sample = pb.MediaStreamMessage(sequence_number=number)
        sample.media_sample.content_bytes.bytes = bytes(width * height * 3)
        samples.append(sample)
    method = (
        "/microsoft.azure.media.live_video_analytics.extensibility.grpc.v1."
        "MediaGraphExtension/ProcessMediaStream"
    )
    chance = random.Random(7)

    async def cancel_at_random(target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            call_of = channel.stream_stream(
                method,
                request_serializer=pb.MediaStreamMessage.SerializeToString,
                response_deserializer=pb.MediaStreamMessage.FromString,
            )
            for _ in range(rounds):
                call = call_of(iter([descriptor_message(pb, width, height), *samples]))
                answers = 0
                async for _answer in call:
                    answers += 1
                    if answers == 3:
                        await asyncio.sleep(chance.uniform(0, 0.005))
                        call.cancel()
                        break

    with serving("--extension", "motion") as server:
        asyncio.run(asyncio.wait_for(cancel_at_random(server.target), TIMEOUT))
    closings = [line for line in server.lines if "stream closed" in line]  # all, once drained
    assert len(closings) == rounds
    assert all(line.endswith(("CANCELLED: cancelled", "OK")) for line in closings), closings
    above_info = [line for line in server.lines if " INFO " not in line]
    assert not above_info, above_info


def test_sigterm_the_moment_serve_is_ready_drains_it() -> None:
    """A supervisor may stop the server as soon as it logs that it listens."""
    with serving("--extension", "null") as server:
        pass  # stop() sends SIGTERM at once and asserts exit status 0
    assert any("SIGTERM: draining" in line for line in server.lines), server.lines


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_serve_runs_its_event_loop_in_a_short_scheduling_slice() -> None:
    """The event loop is the process's main thread: its slice is what --slice-us asked."""
    with serving("--extension", "null") as server:
        asked = current_slice(server.process.pid)
    if asked is None:
        pytest.skip("this kernel reports no slice for a normal thread (Linux 6.12 and later)")
    assert asked == pytest.approx(DEFAULT_SLICE)
    with serving("--extension", "null", "--slice-us", "0") as server:
        kept = current_slice(server.process.pid)
    assert kept is not None and kept > DEFAULT_SLICE  # the kernel's own


def test_demo_prints_motion_and_a_summary() -> None:
    done = run("demo", "--frames", "60")
    assert done.returncode == 0, done.stderr
    assert "motion extension serving on 127.0.0.1:" in done.stdout
    assert re.search(r"sample \d+ at +[\d.]+ s: motion l=", done.stdout)
    assert "60 sent, 60 answered" in done.stdout


@pytest.mark.parametrize("pixel_format", ["YUV420P", "RGB24", "RGB565LE"])
def test_the_smallest_frame_is_sent(pixel_format: str) -> None:
    with serving("--extension", "motion") as server:
        done = run(
            "send", server.target, "--size", "1x1", "--format", pixel_format, "--frames", "3"
        )
    assert done.returncode == 0, done.stderr
    assert "3 sent, 3 answered" in done.stdout


def test_entity_inferences_without_a_json_form_are_left_out_with_one_warning(
    tmp_path: Path, extensions: Path
) -> None:
    output = tmp_path / "entities.jsonl"
    with serving("--extension", "detector:process", cwd=extensions) as server:
        done = run(
            "send", server.target, "--frames", "4", "--size", "32x32", "--output", str(output)
        )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(lines) == 4
    for line in lines:
        [person] = line["inferences"]
        assert person["entity"]["tag"] == {"value": "person", "confidence": 0.9}
    warning = one_line(done.stderr)
    assert "left out 4 inference(s)" in warning and "sample 2" in warning and "JSON-6" in warning
    assert "8 entity" in done.stdout  # the summary counts what the extension sent


@pytest.mark.rule("INF-4", "INF-3")
def test_output_mends_what_has_one_reading_instead_of_leaving_it_out() -> None:
    """What ``send --output`` does with each answer's inferences before writing them.

    avaproto's own server mends these before they are sent, so an extension that sends
    one is a third party's; this calls the step ``send`` runs on each answer.
    """
    from avaproto.cli import _mend, _Omissions
    from avaproto.media import inferences as inf
    from avaproto.media.inference_json import to_json_lenient
    from avaproto.messages import Entity, Inference, InferenceType, Rectangle, Tag

    past_left = Inference(
        type=InferenceType.ENTITY,
        entity=Entity(tag=Tag(value="car", confidence=0.5), box=Rectangle(-0.125, 0, 0.5, 1)),
    )
    tracked = Inference(  # DeepStream's tracker gives -0.1: no confidence
        type=InferenceType.ENTITY,
        entity=Entity(tag=Tag(value="bus", confidence=-0.1), box=Rectangle(0, 0, 0.5, 0.5)),
    )
    inside = inf.entity("person", 0.5, inf.rectangle(0.25, 0.25, 0.5, 0.5))
    mended = _Omissions("mended {count} inference(s)")
    given = [inside, past_left, tracked]
    kept = _mend(given, "frame 7", mended)
    assert kept[0] is inside and given[1] is past_left  # the received list is not changed
    body, omitted = to_json_lenient(kept)
    assert omitted == []
    assert body["inferences"][1]["entity"]["box"] == {"l": 0.0, "t": 0.0, "w": 0.375, "h": 1.0}
    assert body["inferences"][2]["entity"]["tag"]["value"] == "bus"
    assert body["inferences"][2]["entity"]["tag"].get("confidence", 0.0) == 0.0
    _mend([past_left], "frame 8", mended)
    assert mended.count == 3
    assert str(mended).startswith(
        "mended 3 inference(s); the first: frame 7: [INF-4] inferences[1].entity.box"
    )
    # The warning says what was done, not every mend there is.
    boxes = _Omissions("mended {count}", {"INF-4": "a box cut", "INF-3": "a confidence unset"})
    _mend([past_left], "frame 9", boxes)
    assert str(boxes).startswith("mended 1: a box cut (INF-4); the first: frame 9")
    _mend([tracked], "frame 10", boxes)
    assert str(boxes).startswith("mended 2: a box cut (INF-4), a confidence unset (INF-3);")
    # Without --output, send still counts them, and what nothing mends, for its warning.
    invalid = _Omissions("the extension sent {count} invalid inference(s)")
    unknowable = Inference(
        type=InferenceType.ENTITY,
        entity=Entity(tag=Tag(value="bus", confidence=math.nan), box=Rectangle(0, 0, 0.5, 0.5)),
    )
    _mend([unknowable, tracked], "sample 9", mended, invalid)
    assert (mended.count, invalid.count) == (4, 1)
    first = "the extension sent 1 invalid inference(s); the first: sample 9:"
    assert str(invalid).startswith(first)


# --- --output: never a half-written or erased file ---------------------------------------


def test_output_replaces_the_target_when_the_run_succeeds(tmp_path: Path) -> None:
    output = tmp_path / "keep.jsonl"
    output.write_text("an earlier run\n")
    with serving("--extension", "null") as server:
        done = run("send", server.target, "--frames", "3", "--size", "8x8", "--output", str(output))
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["sequenceNumber"] for line in output.read_text().splitlines()] == [
        2,
        3,
        4,
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.jsonl"]


def test_a_failed_run_keeps_an_existing_output_and_writes_the_rest_beside_it(
    tmp_path: Path, extensions: Path
) -> None:
    output = tmp_path / "keep.jsonl"
    output.write_text("an earlier run\n")
    with serving("--extension", "failing:process", "--max-in-flight", "1", cwd=extensions) as srv:
        done = run("send", srv.target, "--frames", "30", "--size", "8x8", "--output", str(output))
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "INTERNAL" in line and "the model crashed" in line
    assert f"the 10 results received are in {output}.partial ({output} is unchanged)" in line
    assert output.read_text() == "an earlier run\n"
    partial = Path(f"{output}.partial").read_text().splitlines()
    assert [json.loads(text)["sequenceNumber"] for text in partial] == list(range(2, 12))
    assert "10 answered" in done.stdout  # the summary of what was done, too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.jsonl", "keep.jsonl.partial"]


def test_a_failed_run_without_an_earlier_output_keeps_what_was_acknowledged(
    tmp_path: Path, extensions: Path
) -> None:
    output = tmp_path / "new.jsonl"
    with serving("--extension", "failing:process", "--max-in-flight", "1", cwd=extensions) as srv:
        done = run("send", srv.target, "--frames", "30", "--size", "8x8", "--output", str(output))
    assert done.returncode == 1
    assert f"the 10 results received are in {output}" in one_line(done.stderr)
    lines = output.read_text().splitlines()
    assert [json.loads(text)["sequenceNumber"] for text in lines] == list(range(2, 12))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.jsonl"]


def test_a_run_that_never_connects_leaves_no_file(tmp_path: Path) -> None:
    import socket

    output = tmp_path / "never.jsonl"
    with socket.socket() as bound:  # bound, not listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        done = run("send", f"127.0.0.1:{port}", "--frames", "2", "--output", str(output))
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "UNAVAILABLE" in line and f"{output} was not written" in line
    assert list(tmp_path.iterdir()) == []


def test_output_dash_writes_json_lines_to_stdout_and_the_summary_to_stderr() -> None:
    with serving("--extension", "null") as server:
        done = run("send", server.target, "--frames", "3", "--size", "8x8", "--output", "-")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["sequenceNumber"] for line in lines] == [2, 3, 4]
    assert "3 sent, 3 answered" in done.stderr


# --- usage errors: one line, exit status 2 -----------------------------------------------


def usage_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("not a video")
    not_an_image = tmp_path / "photo.png"
    not_an_image.write_text("not an image")
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    missing = str(tmp_path / "missing.pem")
    target = "127.0.0.1:1"
    return [
        (["send", "127.0.0.1"], "is not host:port"),
        (["send", "127.0.0.1:70000"], "port 70000 of target '127.0.0.1:70000' is out of range"),
        (["serve", "--port", "70000"], "a port is 0 to 65535"),
        (["serve", "--slice-us", "50"], "50: Linux accepts 100 to 100000 µs"),
        (["serve", "--slice-us", "soon"], "not a whole number of microseconds: 'soon'"),
        (["send", target, "--source", str(not_a_video)], "not a video file FFmpeg can read"),
        (["send", target, "--source", str(not_an_image)], "not an image file"),
        (["send", target, "--source", str(tmp_path / "none.mp4")], "no such source file"),
        (["send", target, "--size", "big"], "expected WIDTHxHEIGHT"),
        (["send", target, "--size", "20000x20000"], "[MEDIA-3]"),
        (["send", target, "--format", "RGB24", "--stride", "3", "--size", "8x8"], "[MEDIA-4]"),
        (["send", target, "--transfer", "shm", "--shm-size", "1k", "--size", "64x64"],
         "--shm-size 1024 bytes cannot hold one RAW RGB24 64x64 frame"),
        (["send", target, "--shm-size", "lots"], "expected a size like 75MiB"),
        (["send", target, "--ack-timeout", "soon"], "expected seconds"),
        (["send", target, "--tls-ca", missing], f"--tls-ca {missing}: no such file"),
        (["send", target, "--tls-ca", str(not_pem)], f"--tls-ca {not_pem}"),
        (["send", target, "--tls-cert", missing], "needs both --tls-cert and --tls-key"),
        (["serve", "--tls-cert", missing, "--tls-key", missing],
         f"--tls-cert {missing}: no such file"),
        (["serve", "--tls-client-ca", missing], "--tls-client-ca needs --tls-cert"),
        (["serve", "--extension", "no.such.module:thing"],
         "--extension no.such.module:thing: no module named 'no'"),
        (["serve", "--extension", "nothing"], "unknown extension 'nothing'"),
        (["serve", "--extension", "detector.detect"], "(detector:detect, a colon before"),
        (["serve", "--extension", "detector.py"], "(detector:NAME, the module's function"),
        (["serve", "--extension", "detector.py:detect"],
         "names a file: the module is 'detector' (detector:detect)"),
        (["send", target, "--username", "u"], "give both --username and --password"),
        (["demo", "--source", str(tmp_path / "none.mp4")], "no such file"),
        (["send", target, "--output", str(tmp_path / "no" / "dir.jsonl")],
         "No such file or directory"),
    ]  # fmt: skip


def test_usage_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    for args, expected in usage_cases(tmp_path):
        done = run(*args, env={"AVAPROTO_USERNAME": "", "AVAPROTO_PASSWORD": ""})
        assert done.returncode == 2, (args, done.stderr)
        line = one_line(done.stderr)
        assert line.startswith(f"avaproto {args[0]}: error: "), line
        assert expected in line, (args, line)


@pytest.mark.parametrize(
    ("blocked", "args", "extra"),
    [
        ("av", ["--source", "clip.mp4"], "avaproto[video]"),
        ("PIL", ["--source", "still.png"], "avaproto[image]"),
        ("PIL", ["--encoding", "JPG"], "avaproto[image]"),
    ],
)
def test_a_missing_extra_is_named(
    tmp_path: Path, blocked: str, args: list[str], extra: str
) -> None:
    """The decoder is made unimportable the way an absent one is: ImportError on import."""
    shadow = tmp_path / "shadow" / blocked
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(f'raise ImportError("No module named {blocked!r}")\n')
    for name in ("clip.mp4", "still.png"):
        (tmp_path / name).write_bytes(b"unread: the decoder is missing")
    done = run(
        "send", "127.0.0.1:1", *args, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "shadow")}
    )
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert f"pip install '{extra}'" in line


def test_a_refused_connection_is_a_failed_run() -> None:
    import socket

    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        done = run("send", f"127.0.0.1:{bound.getsockname()[1]}", "--frames", "1")
    assert done.returncode == 1
    assert "UNAVAILABLE" in one_line(done.stderr)
    assert done.stdout == ""  # nothing was sent: no summary of nothing


# --- extensions from the current directory ------------------------------------------------


def test_an_extension_is_found_in_the_current_directory(extensions: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = subprocess.Popen(
        [SCRIPT, "serve", "--port", "0", "--extension", "detector:process"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=extensions,
        env=env,
    )
    server = Server(process)
    try:
        done = run("send", server.target, "--frames", "2", "--size", "16x16")
    finally:
        assert server.stop() == 0, server.lines
    assert done.returncode == 0, done.stderr
    assert "4 entity" in done.stdout


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("broken:process", "importing broken failed: RuntimeError: no model file"),
        ("detector:detect", "detector has no attribute 'detect'"),
        ("missing:process", "no module named 'missing'"),
    ],
)
def test_an_extension_that_does_not_load_is_one_line(
    extensions: Path, spec: str, expected: str
) -> None:
    done = run("serve", "--port", "0", "--extension", spec, cwd=extensions, command=[SCRIPT])
    assert done.returncode == 2
    assert expected in one_line(done.stderr)


# --- logging ----------------------------------------------------------------------------


@pytest.mark.rule("AUTH-4")
def test_library_debug_logs_never_show_credentials() -> None:
    """-vvv shows every header h2 and hpack see; the authentication header is redacted."""
    password = "Tr0ub4dor-and-3"
    token = base64.b64encode(f"pipeline:{password}".encode()).decode()
    secrets = {"AVAPROTO_USERNAME": "pipeline", "AVAPROTO_PASSWORD": password}
    with serving("-vvv", "--extension", "null", env=secrets) as server:
        done = run("-vvv", "send", server.target, "--frames", "2", "--size", "8x8", env=secrets)
        server.wait_for("stream closed")
    assert done.returncode == 0, done.stderr
    logs = "\n".join([*server.lines, done.stderr])
    assert "hpack" in logs and "x-ms-authentication" in logs  # the headers were logged
    assert token not in logs and password not in logs
    assert "<redacted>" in logs


def _has_ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_an_ipv6_address_is_logged_as_send_takes_it() -> None:
    """ "serving null on ::1:5111" could not be pasted back: send wants [::1]:5111."""
    with serving("--extension", "null", "--host", "::1") as server:
        assert server.target.startswith("[::1]:"), server.lines
        done = run("send", server.target, "--frames", "1", "--size", "8x8")
    assert done.returncode == 0, done.stderr


def test_a_missing_shm_directory_is_a_usage_error(tmp_path: Path) -> None:
    done = run("send", "127.0.0.1:1", "--transfer", "shm", "--shm-directory", str(tmp_path / "no"))
    assert done.returncode == 2
    assert one_line(done.stderr).endswith(f"--shm-directory {tmp_path / 'no'}: not a directory")


def test_a_pixel_format_with_an_encoding_is_a_usage_error() -> None:
    """--encoding JPG --format BGR24 dropped --format without a word."""
    done = run("send", "127.0.0.1:1", "--encoding", "JPG", "--format", "BGR24")
    assert done.returncode == 2
    assert one_line(done.stderr).endswith(
        "--format BGR24 is a pixel format of RAW frames; --encoding JPG samples carry their own"
    )


def test_no_frame_timeout_is_said_as_every_other_timeout() -> None:
    parser = build_parser()
    for none in ("0", "none"):
        assert parser.parse_args(["serve", "--frame-timeout", none]).frame_timeout is None
    assert parser.parse_args(["serve", "--frame-timeout", "2.5"]).frame_timeout == 2.5


def test_verbosity_levels_and_their_place(tmp_path: Path) -> None:
    with serving("--extension", "null") as server:
        quiet = run("send", server.target, "--frames", "1", "--size", "8x8")
        info = run("send", server.target, "--frames", "1", "--size", "8x8", "-v")
        debug = run("send", "-vv", server.target, "--frames", "1", "--size", "8x8")
        libraries = run("-v", "send", "-vv", server.target, "--frames", "1", "--size", "8x8")
    assert quiet.stderr == ""
    assert " INFO avaproto" in info.stderr and " DEBUG " not in info.stderr
    assert " DEBUG avaproto" in debug.stderr
    for done in (info, debug):
        assert not re.search(r" (DEBUG|INFO) (h2|hpack|grpclib|asyncio|transitions)", done.stderr)
    assert re.search(r" DEBUG (h2|hpack)", libraries.stderr)  # -v and -vv add up to -vvv


def test_redaction_covers_every_form_a_header_is_printed_in() -> None:
    token = base64.b64encode(b"u:secret").decode()
    for text in (
        f"x-ms-authentication: Basic {token}",
        f"Decoded (b'x-ms-authentication', b'Basic {token}'), total 34",
        f"Adding b'x-ms-authentication'=b'Basic {token}' to the header table",
        f"[('authorization', 'Basic {token}')]",
        f"header block b'\\x00Basic {token}'",
    ):
        assert token not in redact(text) and "<redacted>" in redact(text)
    record = logging.LogRecord(
        "hpack", logging.DEBUG, __file__, 1, "Decoded %s", ((b"x-ms-authentication", token),), None
    )
    assert RedactCredentials().filter(record)
    assert token not in record.getMessage() and "x-ms-authentication" in record.getMessage()


def test_a_header_block_hpack_logs_is_redacted_whole() -> None:
    """hpack logs every header block as bytes, Huffman-coded: no pattern finds the
    credentials in them, and the bytes decode back to them."""
    import hpack

    token = base64.b64encode(b"alice:S3cretPassw0rd").decode()
    caught: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.addFilter(RedactCredentials())
    handler.emit = caught.append  # type: ignore[method-assign]
    logger = logging.getLogger("hpack")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        block = hpack.Encoder().encode([("x-ms-authentication", f"Basic {token}")])
        hpack.Decoder().decode(block)
    finally:
        logger.setLevel(level)
        logger.removeHandler(handler)
    said = [record.getMessage() for record in caught]
    assert "Encoded header block to <redacted>" in said and "Decoding <redacted>" in said
    assert not [line for line in said if token in line or repr(block)[2:-1] in line]


# --- TLS from the command line -------------------------------------------------------------


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("pipeline.test")
    paths = {name: str(tmp_path / f"{name}.pem") for name in ("ca", "cert", "key", "ccert", "ckey")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.private_key_pem.write_to_path(paths["key"])
    server.cert_chain_pems[0].write_to_path(paths["cert"])
    client.private_key_pem.write_to_path(paths["ckey"])
    client.cert_chain_pems[0].write_to_path(paths["ccert"])
    return paths


@pytest.mark.rule("TLS-1")
def test_tls_ca_alone_implies_tls(certificates: dict[str, str]) -> None:
    files = certificates
    with serving(
        "--extension", "null", "--tls-cert", files["cert"], "--tls-key", files["key"]
    ) as s:
        done = run("send", s.target, "--frames", "2", "--size", "8x8", "--tls-ca", files["ca"])
    assert done.returncode == 0, done.stderr
    assert "2 sent, 2 answered" in done.stdout


@pytest.mark.rule("TLS-3")
def test_mutual_tls_from_the_command_line(certificates: dict[str, str]) -> None:
    files = certificates
    with serving(
        "--extension", "null", "--tls-cert", files["cert"], "--tls-key", files["key"],
        "--tls-client-ca", files["ca"],
    ) as server:  # fmt: skip
        send = ["send", server.target, "--frames", "2", "--size", "8x8", "--tls-ca", files["ca"]]
        with_certificate = run(*send, "--tls-cert", files["ccert"], "--tls-key", files["ckey"])
        without = run(*send)
    assert with_certificate.returncode == 0, with_certificate.stderr
    assert "2 sent, 2 answered" in with_certificate.stdout
    assert without.returncode == 1
    assert "Traceback" not in one_line(without.stderr)


# --- shared memory, signals and deadlines ----------------------------------------------------


@pytest.mark.rule("SHM-9")
@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)]
)
def test_a_stopped_sender_removes_its_segment_and_sums_up(
    tmp_path: Path, extensions: Path, signum: signal.Signals, status: int
) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    with serving(
        "--extension", "slow:process", "--shm-directory", str(shm), "--grace", "0", cwd=extensions
    ) as server:
        sender = subprocess.Popen(
            [*AVAPROTO, "send", server.target, "--frames", "20", "--size", "16x16",
             "--transfer", "shm", "--shm-directory", str(shm), "--shm-size", "1MiB"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            server.wait_for("stream opened")  # the descriptor named the segment: it exists
            [segment] = shm.iterdir()
            assert segment.stat().st_size == 1 << 20
        finally:
            stdout, stderr = stopped_by(sender, signum)
    assert sender.returncode == status, stderr
    assert list(shm.iterdir()) == []
    assert f"stopped by {signum.name}" in one_line(stderr)
    assert re.search(r"frames: \d+ sent, 0 answered", stdout)


#: A command stopped by a signal, signalled again while it cleans up and after its loop
#: ended, as GNU timeout (the command, then its group) or an impatient Ctrl-C does.
_SIGNALLED_AGAIN = """
import os, signal, sys, time, anyio
from avaproto.cli import _Stopped, _run_stoppable
number = getattr(signal, sys.argv[1])

async def work():
    os.kill(os.getpid(), number)
    try:
        await anyio.sleep(30)
    finally:
        with anyio.CancelScope(shield=True):
            os.kill(os.getpid(), number)
            await anyio.sleep(0.2)

try:
    _run_stoppable(work)
except _Stopped as stopped:
    os.kill(os.getpid(), number)
    time.sleep(0.2)
    print("cleaned up after", stopped)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_second_signal_does_not_cut_a_commands_way_out(signum: signal.Signals) -> None:
    """The second signal met the default handler while the first one's cleanup ran:
    send lost its summary and its output (SIGTERM) or printed a traceback (SIGINT)."""
    done = subprocess.run(
        [sys.executable, "-c", _SIGNALLED_AGAIN, signum.name],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"cleaned up after {signum.name}"


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["bench", "127.0.0.1:9", "--shm-size", "1M"],
         "avaproto bench: error: unrecognized arguments: --shm-size 1M "
         "(see 'avaproto bench --help')"),
        (["check", "127.0.0.1:9", "--nope"],
         "avaproto check: error: unrecognized arguments: --nope (see 'avaproto check --help')"),
    ],
)  # fmt: skip
def test_an_option_a_command_does_not_take_is_named_with_the_command(
    capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    """It was blamed on the top-level command, whose --help does not list the options."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert one_line(capsys.readouterr().err) == said


def test_pixel_formats_and_encodings_are_taken_in_any_case() -> None:
    """check --formats took rgb24; send --format and bench --format refused it."""
    parser = build_parser()
    sent = parser.parse_args(["send", "127.0.0.1:9", "--format", "bgr24", "--encoding", "raw"])
    assert (sent.format, sent.encoding) == ("BGR24", "RAW")
    assert parser.parse_args(["bench", "127.0.0.1:9", "--format", "jpg"]).format == "JPG"


def test_the_library_serves_off_the_main_thread() -> None:
    """No signal can be received there: serve failed with RuntimeError (set_wakeup_fd)."""
    import avaproto

    ports: list[int] = []

    def nothing(frame: object) -> None:
        return None

    async def briefly() -> None:
        with anyio.move_on_after(TIMEOUT):
            await avaproto.serve(nothing, port=0, ready=lambda server: ports.append(server.port))

    def run_it() -> None:
        async def until_ready() -> None:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(briefly)
                while not ports:
                    await anyio.sleep(0.01)  # serve's ready callback is what is awaited
                tasks.cancel_scope.cancel()

        anyio.run(until_ready)

    worker = threading.Thread(target=run_it)
    worker.start()
    worker.join(TIMEOUT)
    assert not worker.is_alive() and len(ports) == 1


def test_a_port_in_use_is_one_line() -> None:
    """It was 51 lines of an exception group's traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run("serve", "--port", str(port), "--extension", "null")
    assert done.returncode == 1
    assert one_line(done.stderr) == (
        f"avaproto serve: [Errno 98] port {port} on 127.0.0.1 is in use (--port 0 picks a free one)"
    )


def test_a_command_run_off_the_main_thread_runs_without_signals() -> None:
    """A program that calls avaproto.cli.main from a thread: no signal can be received
    there, and check failed with RuntimeError (set_wakeup_fd) instead of running."""
    found: list[int] = []
    worker = threading.Thread(target=lambda: found.append(main(["check", "127.0.0.1:9"])))
    worker.start()
    worker.join(TIMEOUT)
    assert found == [1]


@pytest.mark.rule("SHM-9")
@pytest.mark.parametrize("command", ["bench", "check"])
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_stopped_bench_or_check_removes_its_segments_and_says_so(
    tmp_path: Path, extensions: Path, command: str, signum: signal.Signals, status: int
) -> None:
    """Only send caught these signals: bench and check died of them (what ``timeout``
    sends), silent, their segments left under /dev/shm."""
    shm = tmp_path / "shm"
    shm.mkdir()
    if command == "bench":  # its segments are under /dev/shm, named for its process
        directory = "/dev/shm"
        options = ["--frames", "20", "--size", "16x16", "--transfer", "shm", "--streams", "2"]
    else:  # its first probe is a stream through shared memory
        directory = str(shm)
        options = ["--rules", "SHM-1", "--formats", "rgb24", "--shm-directory", directory]
    with serving(
        "--extension", "slow:process", "--shm-directory", directory, "--grace", "0", cwd=extensions
    ) as server:
        stopped = started(command, server.target, *options)
        try:
            server.wait_for("stream opened")  # the descriptor named the segment: it exists
            ours = f"avaproto-{stopped.pid}-"
            places = [*shm.iterdir(), *Path("/dev/shm").iterdir()]
            segments = [place for place in places if place.name.startswith(ours)]
            assert segments
        finally:
            _, stderr = stopped_by(stopped, signum)
    assert stopped.returncode == status, stderr
    assert one_line(stderr) == f"avaproto {command}: stopped by {signum.name}"
    assert not any(segment.exists() for segment in segments)


@pytest.mark.rule("PIPE-4")
def test_ack_timeout_ends_a_run_the_extension_never_answers(extensions: Path) -> None:
    with serving("--extension", "slow:process", "--grace", "0", cwd=extensions) as server:
        done = run("send", server.target, "--frames", "3", "--size", "8x8", "--ack-timeout", "0.5")
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "[PIPE-4]" in line and "not acknowledged within 0.5 s" in line


def test_stale_segments_are_removed_and_nothing_else(tmp_path: Path) -> None:
    """Only avaproto's names, only regular files, only of processes that are gone."""
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process has this pid
    stale = f"avaproto-{gone}-0123456789abcdef"
    kept = [
        f"avaproto-{os.getpid()}-0123456789abcdef",  # a live process
        f"avaproto-{gone}-0123456789ABCDEF",  # not how avaproto names them
        f"avaproto-{gone}-0123456789abcdef0",
        f"avaproto-{gone}",
        f"inference_client_share_memory_{gone}",
        "avaproto-1-0123456789abcdef",  # pid 1 exists (and is not ours to signal)
    ]
    for name in [stale, *kept]:
        (tmp_path / name).write_bytes(b"\0" * 64)
    link = f"avaproto-{gone}-fedcba9876543210"
    (tmp_path / link).symlink_to(tmp_path / kept[0])
    directory = f"avaproto-{gone}-00000000000000aa"
    (tmp_path / directory).mkdir()

    assert remove_stale_segments(str(tmp_path)) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, link, directory])
    assert remove_stale_segments(str(tmp_path / "nowhere")) == []


@pytest.mark.rule("SHM-9")
def test_a_locked_segment_is_in_use_whatever_its_pid(tmp_path: Path) -> None:
    """A sender in another pid namespace: its pid means nothing here, its lock does."""
    import fcntl

    from avaproto.media.shared_memory import SharedMemoryArena

    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    segment = tmp_path / f"avaproto-{gone}-0123456789abcdef"
    segment.write_bytes(b"\0" * 64)
    with open(segment, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_SH)  # what a live arena holds
        assert remove_stale_segments(str(tmp_path)) == []
    assert remove_stale_segments(str(tmp_path)) == [segment.name]
    arena = SharedMemoryArena.create(4096, directory=str(tmp_path))
    try:
        with open(arena.path, "rb") as probe, pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        arena.close()
    assert list(tmp_path.iterdir()) == []


def test_send_removes_stale_segments_at_start(tmp_path: Path) -> None:
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    stale = tmp_path / f"avaproto-{gone}-0123456789abcdef"
    stale.write_bytes(b"\0" * 64)
    with serving("--extension", "null", "--shm-directory", str(tmp_path)) as server:
        done = run(
            "send", server.target, "-v", "--frames", "2", "--size", "8x8", "--transfer", "shm",
            "--shm-directory", str(tmp_path), "--shm-size", "64KiB",
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not stale.exists()
    assert f"removed stale shared-memory segment {stale}" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_demo_removes_stale_segments_at_start() -> None:
    """The demo's segments live in /dev/shm: a planted stale one there goes at start."""
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    stale = Path("/dev/shm") / f"avaproto-{gone}-{os.urandom(8).hex()}"
    stale.write_bytes(b"\0" * 64)
    try:
        done = run("demo", "-v", "--frames", "3", "--transfer", "embedded")
        assert done.returncode == 0, done.stderr
        assert not stale.exists()
        assert f"removed stale shared-memory segment {stale}" in done.stderr
    finally:
        stale.unlink(missing_ok=True)


# --- pacing and progress ----------------------------------------------------------------------


@pytest.mark.rule("PIPE-1")
def test_pace_replays_a_video_at_its_own_timing(clip: Path) -> None:
    with serving("--extension", "null") as server:
        done = run("send", server.target, "--source", str(clip), "--pace", "--output", "-")
    assert done.returncode == 0, done.stderr
    seconds = float(re.search(r"answered in ([\d.]+) s", done.stderr).group(1))  # type: ignore[union-attr]
    assert "12 sent, 12 answered" in done.stderr
    assert seconds >= 1.05  # the last frame is shown 1.1 s after the first
    stamps = [json.loads(line)["timestamp"] for line in done.stdout.splitlines()]
    assert stamps == [n * 9000 for n in range(12)]  # 10 fps in 90 kHz ticks


def test_the_progress_line_knows_a_videos_length(clip: Path) -> None:
    import pty

    controller, terminal = pty.openpty()
    with serving("--extension", "null") as server:
        done = subprocess.run(
            [*AVAPROTO, "send", server.target, "--source", str(clip)],
            stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the terminal's other end is closed and all is read
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    assert done.returncode == 0, shown
    assert b"answered 12/12" in shown


# --- the parser --------------------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


def test_help_explains_every_option_with_its_default() -> None:
    for name, command in subcommands(build_parser()).items():
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and "default" in action.help, (name, action.option_strings)
        done = run(name, "--help")
        assert done.returncode == 0
        assert f"usage: avaproto {name}" in done.stdout


def test_defaults_come_from_the_configuration() -> None:
    from avaproto.client import DEFAULT_ACK_TIMEOUT, DEFAULT_SHM_BYTES
    from avaproto.engine.config import EngineConfig
    from avaproto.protocol.pixel_formats import PIXEL_LAYOUTS
    from avaproto.send import SendOptions

    parser = build_parser()
    send = parser.parse_args(["send", "localhost:5001"])
    assert send.shm_size == DEFAULT_SHM_BYTES == 75 * 1024 * 1024
    assert send.ack_timeout == DEFAULT_ACK_TIMEOUT
    assert send.window == SendOptions("x", None).window
    serve = parser.parse_args(["serve"])
    assert serve.max_in_flight == EngineConfig().max_in_flight
    [pixel_format] = [a for a in subcommands(parser)["send"]._actions if a.dest == "format"]
    assert list(pixel_format.choices or ()) == [f.name for f in PIXEL_LAYOUTS]


def test_deadline_and_size_values() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["send", "h:1", "--ack-timeout", "none", "--connect-timeout", "0", "--shm-size", "100M"]
    )
    assert args.ack_timeout is None and args.connect_timeout is None
    assert args.shm_size == 100 * 1024 * 1024
    assert (
        parser.parse_args(["send", "h:1", "--descriptor-timeout", "2.5"]).descriptor_timeout == 2.5
    )
    assert [byte_size(t) for t in ("4096", "75MiB", "64MB", "1.5k", "2G")] == [
        4096, 75 << 20, 64_000_000, 1536, 2 << 30,
    ]  # fmt: skip


@pytest.mark.rule("SHM-9")
def test_a_segment_mode_lets_others_read_at_most(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for command in ("send", "bench", "check"):
        assert parser.parse_args([command, "h:1"]).shm_mode == 0o600
        assert parser.parse_args([command, "h:1", "--shm-mode", "640"]).shm_mode == 0o640
        assert parser.parse_args([command, "h:1", "--shm-mode", "0o644"]).shm_mode == 0o644
        assert parser.parse_args([command, "h:1", "--shm-mode", "660"]).shm_mode == 0o660
    for refused in ("666", "664", "670", "400", "rw"):
        with pytest.raises(SystemExit):
            parser.parse_args(["send", "h:1", "--shm-mode", refused])
        assert "600 (the owner only), 640" in capsys.readouterr().err


def test_the_segment_hint_is_given_only_when_the_failure_names_a_segment() -> None:
    from avaproto.cli import _names_a_segment

    assert _names_a_segment("Permission denied: '/dev/shm/avaproto-3203-2674341d4dfede66'")
    assert _names_a_segment("[Errno 13] Permission denied: avaproto-12-ab")
    assert not _names_a_segment("PermissionError: [Errno 13] Permission denied: '/models/y.onnx'")
    assert not _names_a_segment("Permission denied: '/opt/my-avaproto-1-ab'")


#: Opens the pipeline's segment as the published extensions do (Azure's YOLOv3 and
#: DeepStream samples' ``SharedMemoryManager``): read-write, then mapped; as another user
#: (nobody), of the sender's group: the kernel checks the open against the effective uid,
#: which is nobody's only around it (the server itself must read root's Python).
READ_WRITE_EXTENSION = """\
import mmap, os

class ReadWrite:
    def open(self, descriptor):
        shm = descriptor.shared_memory
        os.seteuid(65534)
        try:
            self.file = open(os.path.join("/dev/shm", shm.handle_name), "r+b")
        finally:
            os.seteuid(0)
        self.mapping = mmap.mmap(self.file.fileno(), shm.length_bytes)

    def process(self, frame):
        return None

    def close(self):  # called however open ended
        if hasattr(self, "mapping"):
            self.mapping.close()
            self.file.close()
"""


@pytest.mark.rule("SHM-9")
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to open a segment as another user")
def test_a_segment_its_group_may_open_read_write(extensions: Path) -> None:
    """A real server whose extension opens the segment read-write as another user of
    this user's group: at 640 it fails, and send says which modes would do; at 660 it
    is served, and the sender warns that the group may change frames."""
    (extensions / "readwrite.py").write_text(READ_WRITE_EXTENSION)
    with serving("--extension", "readwrite:ReadWrite", cwd=extensions) as server:
        send = ("send", server.target, "--transfer", "shm", "--frames", "3")
        denied = run(*send, "--shm-mode", "640")
        assert denied.returncode == 1, denied.stderr
        assert "Permission denied" in denied.stderr, denied.stderr
        hint = "hint: an extension of another user cannot open the segment (mode 0o640)"
        assert hint in denied.stderr, denied.stderr
        assert "660 for one that opens it read-write" in denied.stderr
        opened = run(*send, "--shm-mode", "660")
        assert opened.returncode == 0, opened.stderr
        assert "[SHM-9] segment /dev/shm/avaproto-" in opened.stderr, opened.stderr
        group = f"is mode 0o660: any process of group {os.getgid()} may change"
        assert group in opened.stderr, opened.stderr
        assert "hint" not in opened.stderr


@pytest.mark.rule("PIPE-8")
def test_send_bounds_what_the_extension_may_make_it_hold() -> None:
    from avaproto.transport.limits import ConnectionLimits

    parser = build_parser()
    args = parser.parse_args(["send", "h:1"])
    defaults = ConnectionLimits()
    assert (args.frames_per_message, args.max_control_frames) == (
        defaults.frames_per_message,
        defaults.max_control_frames,
    )
    args = parser.parse_args(
        ["send", "h:1", "--frames-per-message", "8", "--max-control-frames", "9"]
    )
    assert (args.frames_per_message, args.max_control_frames) == (8, 9)


def test_verbosity_is_accepted_before_and_after_the_command() -> None:
    parser = build_parser()
    args = parser.parse_args(["-v", "serve", "-vv"])
    assert args.verbose + args.sub_verbose == 3


def test_bench_reports_what_an_extension_sustains(tmp_path: Path) -> None:
    figures = tmp_path / "bench.json"
    with serving("--extension", "null") as server:
        done = run(
            "bench", server.target, "--frames", "40", "--size", "32x24", "--transfer", "shm",
            "--shm-write", "map", "--json", str(figures),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(figures.read_text())
    assert report["answered"] == report["frames"] == 40
    assert report["shm_write"] == "map"
    assert "p99" in done.stdout


@pytest.mark.rule("SHM-16")
def test_the_largest_message_also_bounds_an_encoded_sample_in_shared_memory() -> None:
    from avaproto.cli import _server_config
    from avaproto.protocol.video_format import FrameLimits
    from avaproto.transport.grpc_server import ExtensionService

    args = build_parser().parse_args(["serve", "--max-message-bytes", "1048576"])
    service = ExtensionService(lambda: None, _server_config(args))  # type: ignore[arg-type,return-value]
    assert service._engine.limits.max_encoded_bytes == 1 << 20
    # A limit of the engine's own, set apart from the message size, is kept.
    config = _server_config(args)
    for bound in (5000, 64 << 20):  # 64 MiB: the default message limit, given on purpose
        own = replace(config.engine, limits=FrameLimits(max_encoded_bytes=bound))
        kept = ExtensionService(lambda: None, replace(config, engine=own))  # type: ignore[arg-type,return-value]
        assert kept._engine.limits.max_encoded_bytes == bound
