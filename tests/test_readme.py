"""Every code block of the README runs as written.

Python blocks run as scripts in a fresh interpreter. A block that serves an extension
(``avaproto.serve(..., port=5001, ready=...)``) is run with one substitution, its
``port=5001`` made ``port=0`` so that the test never depends on a free fixed port; it
must print ``serving on port N``, answer frames sent to it by ``avaproto send``, and stop
cleanly on SIGTERM. Shell blocks: every ``avaproto`` command line is parsed by the real
parser, and those that only print (``diagram``, ``--help``) are run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from avaproto.cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"
TIMEOUT = 120
PORT = "port=5001"


def blocks(language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def command_lines() -> list[list[str]]:
    """Each ``avaproto ...`` command of the shell blocks, as argv after the program name."""
    commands = []
    for block in blocks("sh"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if "|" in words:
                words = words[: words.index("|")]
            while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
                words = words[1:]  # VAR=value before the command
            if words and words[0] == "avaproto":
                commands.append(words[1:])
    return commands


def serving_blocks() -> list[str]:
    return [block for block in blocks("python") if "avaproto.serve(" in block]


def test_the_readme_has_the_blocks_this_file_runs() -> None:
    assert len(serving_blocks()) >= 2
    assert any("inferences.entity(" in block for block in serving_blocks())
    assert len(blocks("python")) > len(serving_blocks())
    assert len(command_lines()) >= 10
    for block in serving_blocks():
        assert block.count(PORT) == 1, "the one substitution this test makes"


@pytest.mark.parametrize("argv", command_lines(), ids=shlex.join)
def test_every_command_line_parses(argv: list[str]) -> None:
    if "--help" in argv:
        return  # run below: argparse exits after printing
    args = build_parser().parse_args(argv)
    assert callable(args.run)


@pytest.mark.parametrize(
    "argv",
    [argv for argv in command_lines() if argv[0] == "diagram" or "--help" in argv],
    ids=shlex.join,
)
def test_the_commands_that_only_print_run(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "avaproto", *argv],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_the_protocol_core_example_runs() -> None:
    [block] = [b for b in blocks("python") if "Session(" in b]
    done = subprocess.run(
        [sys.executable, "-c", block], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("SEQ-3 INVALID_ARGUMENT [SEQ-3]")


def send_three_frames(target: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "avaproto", "send", target,
         "--frames", "3", "--size", "64x48", "--output", "-"],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def start(command: list[str], cwd: Path, *, stdout: bool) -> tuple[subprocess.Popen[str], str]:
    """Start a server; return it and its target, from "serving on port N" or the log."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if stdout else subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(README.parent)},
    )
    stream = process.stdout if stdout else process.stderr
    assert stream is not None
    line = stream.readline()  # blocks until the server is ready (or has died)
    match = re.search(r"port (\d+)" if stdout else r"on (\S+):(\d+)", line)
    if match is None:
        process.kill()
        process.wait(TIMEOUT)
        pytest.fail(f"the server did not start: {line!r}")
    return process, f"127.0.0.1:{match.group(match.lastindex or 1)}"


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)


@pytest.mark.parametrize(
    "block", serving_blocks(), ids=lambda b: "entity" if "entity(" in b else "motion"
)
def test_every_serving_example_serves(tmp_path: Path, block: str) -> None:
    kind = "entity" if "inferences.entity(" in block else "motion"
    script = tmp_path / "detector.py"
    script.write_text(block.replace(PORT, "port=0"), encoding="utf-8")
    process, target = start([sys.executable, str(script)], tmp_path, stdout=True)
    try:
        lines = send_three_frames(target)
    finally:
        assert stop(process) == 0
    assert [line["sequenceNumber"] for line in lines] == [2, 3, 4]
    for line in lines:
        [inference] = line["inferences"]
        assert inference["type"] == kind

    if '__name__ == "__main__"' in block:  # "Saved as detector.py ... --extension detector:detect"
        process, target = start(
            [sys.executable, "-m", "avaproto", "serve", "--port", "0",
             "--extension", "detector:detect"],
            tmp_path, stdout=False,
        )  # fmt: skip
        try:
            lines = send_three_frames(target)
        finally:
            assert stop(process) == 0
        assert all(line["inferences"][0]["type"] == kind for line in lines)


def test_the_client_example_drives_a_server(tmp_path: Path) -> None:
    """The README's pipeline, against avaproto's null extension on a port of its own."""
    [block] = [b for b in blocks("python") if "avaproto.connect(" in b]
    process, target = start(
        [sys.executable, "-m", "avaproto", "serve", "--port", "0", "--extension", "null"],
        tmp_path,
        stdout=False,
    )
    try:
        script = tmp_path / "pipeline.py"
        script.write_text(block.replace("localhost:5001", target), encoding="utf-8")
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT
        )
    finally:
        assert stop(process) == 0
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{number} []" for number in range(2, 32)]
