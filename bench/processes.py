"""The benchmark's processes: servers started on port 0, client workers fed loads by pipe.

Every server and every client is a process of its own, started from the repository's
root (so ``--extension bench.extensions:sleepy`` and ``python -m bench.*`` find this
package), its stderr kept in a log file that an error quotes, and stopped at the end
(SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHM_DIRECTORY = "/dev/shm"
#: Seconds a process has to start listening, or to come up as a worker.
START_TIMEOUT = 60.0
#: ``avaproto serve`` logs this line (INFO, stderr) once it listens.
_SERVING = re.compile(r"serving \S+ on (?P<host>[^\s:]+|\[[^\]]+\]):(?P<port>\d+)")


class BenchError(RuntimeError):
    """A process of the benchmark failed; the message quotes its log."""


def _log_tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def avaproto_command() -> list[str]:
    """The ``avaproto`` command of this interpreter's environment."""
    script = Path(sys.executable).parent / "avaproto"
    return [str(script)] if script.exists() else [sys.executable, "-m", "avaproto"]


def vm_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid``, in bytes, from /proc/PID/status."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def cpu_seconds(pid: int) -> float:
    """CPU time of process ``pid`` so far, all its threads, user and system, in seconds.

    Read from the process's CPU-time clock (``clock_getcpuclockid``), precise to the
    nanosecond, unlike /proc's clock ticks; NaN where there is no such clock.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        clock = ctypes.c_int()
        if libc.clock_getcpuclockid(pid, ctypes.byref(clock)) != 0:
            return math.nan
        return time.clock_gettime(clock.value)
    except (AttributeError, OSError):
        return math.nan


class _Process:
    """A child process with its stderr in a log file."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        logs: Path,
        *,
        stdin: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            list(command),
            cwd=ROOT,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            env=env,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def failure(self, what: str) -> BenchError:
        tail = _log_tail(self.log)
        return BenchError(
            f"{self.name}: {what}" + (f"; its log ends with:\n{tail}" if tail else "")
        )

    def _read_line(self, timeout: float) -> str:
        stdout = self.process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], timeout)
        if not ready:
            raise self.failure(f"no answer within {timeout:g} s")
        line = stdout.readline()
        if not line:
            raise self.failure(f"exited with status {self.process.wait(10)}")
        return line

    def stop(self, grace: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self._log_file.close()


class Server(_Process):
    """One server under test, listening on 127.0.0.1 at a port it chose."""

    port: int = 0

    @classmethod
    def start(cls, name: str, logs: Path, *, delay: float = 0.0) -> Server:
        if name == "avaproto":
            extension = "bench.extensions:sleepy" if delay else "bench.extensions:touch"
            # The baselines map the segment; so does avaproto's server here (its
            # default, reading each frame out, costs one copy: ``python -m avaproto.bench``).
            command = [
                *avaproto_command(),
                "serve",
                "--port",
                "0",
                "--extension",
                extension,
                "--shm-access",
                "map",
            ]
        elif name in ("grpcio-sync", "grpcio-aio"):
            kind = name.removeprefix("grpcio-")
            command = [sys.executable, "-m", "bench.baselines", kind, "--delay", str(delay)]
        else:
            raise ValueError(f"unknown server {name!r}")
        return cls(f"{name}{'-delayed' if delay else ''}", command, logs)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until it listens: its port on stdout (baselines) or in its log (avaproto)."""
        if not self.name.startswith("avaproto"):
            self.port = int(self._read_line(timeout))
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _SERVING.search(self.log.read_text(errors="replace"))
            if match:
                self.port = int(match.group("port"))
                return
            if self.process.poll() is not None:
                raise self.failure(f"exited with status {self.process.returncode}")
            time.sleep(0.02)
        raise self.failure(f"did not log 'serving ... on HOST:PORT' within {timeout:g} s")


class Worker(_Process):
    """A client process (``bench.worker``): one load in, one result out."""

    @classmethod
    def start(cls, kind: str, logs: Path) -> Worker:
        return cls(f"client-{kind}", [sys.executable, "-m", "bench.worker", kind], logs, stdin=True)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        json.loads(self._read_line(timeout))

    def run(self, load: dict[str, Any], timeout: float) -> dict[str, Any]:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(load) + "\n")
            stdin.flush()
        except BrokenPipeError:
            raise self.failure("exited") from None
        result: dict[str, Any] = json.loads(self._read_line(timeout))
        return result

    def stop(self, grace: float = 10.0) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()  # end of loads: the worker exits
                self.process.wait(grace)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                pass
        super().stop(grace)
        # A worker stopped by a signal in the middle of a run leaves its segment behind:
        # the grpcio client's and avaproto's arenas both carry the creator's pid.
        for prefix in (f"bench-grpcio-{self.pid}-", f"avaproto-{self.pid}-"):
            for segment in Path(SHM_DIRECTORY).glob(f"{prefix}*"):
                segment.unlink(missing_ok=True)


class TracedServer(_Process):
    """avaproto's server under glibc's mtrace (``bench.copies``), tracing on command."""

    port: int = 0

    @classmethod
    def start(cls, logs: Path, preload: str | None) -> TracedServer:
        """``preload``: glibc's debug library, for mtrace (None: line attribution only)."""
        command = [sys.executable, "-m", "bench.copies", str(logs)]
        env = None
        if preload is not None:
            command.append("--mtrace")
            env = {**os.environ, "LD_PRELOAD": preload}
        return cls("avaproto-traced", command, logs, stdin=True, env=env)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        self.port = int(self._read_line(timeout))

    def command(self, text: str, timeout: float = START_TIMEOUT) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(text + "\n")
        stdin.flush()
        if self._read_line(timeout).strip() != text:
            raise self.failure(f"did not confirm {text!r}")
