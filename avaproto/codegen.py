"""Regenerate the message classes in ``avaproto/_generated`` from ``protos/``.

A development tool (``make protos``), never imported at run time. The output is
committed so that ``import avaproto`` needs neither protoc nor the compiler; a test
regenerates into a temporary directory and compares, so the committed code can
never drift from ``protos/`` unnoticed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUTPUT = Path(__file__).resolve().parent / "_generated"

#: grpclib stubs for both roles: the extension (server) and the pipeline (client).
PLUGIN_OPTIONS = "client_generation=async,server_generation=async"


def generate(output: Path, protos: Path = PROTOS) -> None:
    """Compile every ``.proto`` below ``protos`` into the package directory ``output``.

    That is the extension's contract at the top (its files import each other by bare
    name) and the standard health service under ``grpc/health/v1/`` (its path is its
    package, as health clients expect). One protoc run compiles them all, so they share
    one message pool. The output directory is replaced as a whole, so that a message or
    file removed from ``protos/`` disappears from the generated code too.
    """
    sources = sorted(p.relative_to(protos).as_posix() for p in protos.rglob("*.proto"))
    if not sources:
        raise SystemExit(f"no .proto files in {protos}")
    # protoc finds its plugin, protoc-gen-python_betterproto2, on PATH: the one
    # installed beside this interpreter.
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={protos}",
            f"--python_betterproto2_out={scratch}",
            f"--python_betterproto2_opt={PLUGIN_OPTIONS}",
            *sources,
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"protoc failed ({done.returncode}):\n{done.stderr}")
        if output.exists():
            shutil.rmtree(output)
        shutil.copytree(scratch, output)
    # The scratch directory is private (0700) and copytree copies its mode: the package
    # would be unreadable to every other user (a container's unprivileged one, say).
    umask = os.umask(0)
    os.umask(umask)
    output.chmod(0o777 & ~umask)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m avaproto.codegen", description=__doc__)
    parser.add_argument(
        "--output", type=Path, default=OUTPUT, help="package directory to (re)create"
    )
    args = parser.parse_args(argv)
    generate(args.output)
    print(f"generated {args.output}")


if __name__ == "__main__":
    main()
