"""The command line, run as a person runs it: real processes on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

TIMEOUT = 120
AVAPROTO = [sys.executable, "-m", "avaproto"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AVAPROTO, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, **(env or {})},
        check=False,
    )


@contextmanager
def serving(
    *args: str, env: dict[str, str] | None = None, logs: list[str] | None = None
) -> Iterator[str]:
    """``avaproto serve`` on a free port; yields host:port; stops it with SIGTERM.

    ``logs`` receives the server's log lines once it has stopped.
    """
    process = subprocess.Popen(
        [*AVAPROTO, "serve", "--port", "0", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()  # "serving NAME on HOST:PORT"; blocks until ready
        match = re.search(r"on (\S+:\d+)", line)
        assert match, f"unexpected first line from serve: {line!r}"
        yield match.group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=TIMEOUT) == 0
            if logs is not None:
                logs.extend(process.stderr.read().splitlines())
        finally:
            if process.poll() is None:
                process.kill()


@pytest.mark.rule("ACK-1", "SRV-8")
@pytest.mark.parametrize("transfer", ["embedded", "shm"])
def test_send_writes_one_json_line_per_acknowledged_frame(tmp_path: Path, transfer: str) -> None:
    output = tmp_path / "results.jsonl"
    with serving("--extension", "motion") as target:
        done = run(
            "send", target, "--source", "synthetic", "--frames", "40", "--size", "160x96",
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


@pytest.mark.rule("AUTH-3")
def test_send_with_wrong_password_fails_with_one_clear_line() -> None:
    with serving(
        "--extension", "null", env={"AVAPROTO_USERNAME": "u", "AVAPROTO_PASSWORD": "p"}
    ) as target:
        done = run("send", target, "--frames", "3", "--username", "u", "--password", "nope")
    assert done.returncode == 1
    assert "UNAUTHENTICATED" in done.stderr and "[AUTH-3]" in done.stderr
    assert "nope" not in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.rule("SRV-1")
def test_null_extension_answers_without_inferences(tmp_path: Path) -> None:
    output = tmp_path / "null.jsonl"
    with serving("--extension", "null") as target:
        done = run("send", target, "--frames", "10", "--size", "64x48", "--output", str(output))
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in output.read_text().splitlines()] == [
        {"sequenceNumber": n, "timestamp": t * 3000} for t, n in enumerate(range(2, 12))
    ]


@pytest.mark.rule("SRV-8")
def test_serve_logs_each_stream_and_drains_on_sigterm() -> None:
    logs: list[str] = []
    with serving("--extension", "null", logs=logs) as target:
        done = run("send", target, "--frames", "5", "--size", "32x32", "--transfer", "shm")
    assert done.returncode == 0, done.stderr
    opened = [line for line in logs if "stream opened" in line]
    closed = [line for line in logs if "stream closed" in line]
    assert len(opened) == 1 and "RAW RGB24 32x32" in opened[0] and "shared memory" in opened[0]
    assert len(closed) == 1 and "5 frames" in closed[0] and closed[0].endswith("OK")
    assert any("SIGTERM: draining" in line for line in logs)


def test_demo_prints_motion_and_a_summary() -> None:
    done = run("demo", "--frames", "60")
    assert done.returncode == 0, done.stderr
    assert "motion extension serving on 127.0.0.1:" in done.stdout
    assert re.search(r"frame \d+ at +[\d.]+ s: motion l=", done.stdout)
    assert "60 sent, 60 answered" in done.stdout


def test_usage_errors_are_one_line() -> None:
    done = run("send", "localhost:1", "--size", "big")
    assert done.returncode == 2
    assert "expected WIDTHxHEIGHT" in done.stderr
    unknown = run("serve", "--extension", "no.such.module:thing", "--port", "0")
    assert unknown.returncode == 2
    assert "--extension no.such.module:thing" in unknown.stderr


def test_help_explains_every_command() -> None:
    for command in ("serve", "send", "demo", "diagram"):
        done = run(command, "--help")
        assert done.returncode == 0
        assert "usage: avaproto " + command in done.stdout
