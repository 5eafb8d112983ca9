"""The ``avaproto`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from . import __version__

Command = Callable[[argparse.Namespace], int]


def _diagram(args: argparse.Namespace) -> int:
    from .diagram import dot, mermaid

    sys.stdout.write(mermaid() if args.format == "mermaid" else dot())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avaproto",
        description=(
            "The gRPC extension protocol of video analytics pipelines "
            "(MediaGraphExtension/ProcessMediaStream): serve an AI extension, or drive "
            "one as the pipeline would."
        ),
    )
    parser.add_argument("--version", action="version", version=f"avaproto {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    diagram = commands.add_parser(
        "diagram",
        help="print the session state machine",
        description=(
            "Print the session lifecycle state machine, drawn from the same transitions "
            "table the sessions run. Mermaid renders on GitHub; dot is for Graphviz."
        ),
    )
    diagram.add_argument(
        "--format", choices=["mermaid", "dot"], default="mermaid", help="(default: mermaid)"
    )
    diagram.set_defaults(run=_diagram)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run: Command = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
