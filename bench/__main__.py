"""``python -m bench``: avaproto's server and client against grpcio's, side by side.

Run from the repository's root. Prints a markdown table (and ``--json FILE`` writes
every run), progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
from collections.abc import Callable

from .cells import CELLS, CLIENTS, SERVERS, SPECIAL
from .harness import RSS_CELL, Options, run
from .report import markdown
from .worker import finite


def _names(choices: tuple[str, ...], what: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(unknown) or text!r}; choose from {', '.join(choices)}"
            )
        return names

    return parse


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    cells = (*CELLS, *SPECIAL)
    legend = "\n".join(
        f"  {cell.name:<14} {cell.title} ({cell.frames} frames)" for cell in CELLS.values()
    )
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Frames per second, CPU time per frame and latency through avaproto's server\n"
            "against grpcio's synchronous and asyncio servers, each driven by a grpcio\n"
            "client and by avaproto's client, every server and client in a process of its\n"
            "own. Run from the repository's root."
        ),
        epilog=f"cells:\n{legend}\n  {'rss':<14} avaproto server's RSS before/after "
        f"{RSS_CELL.frames:,} frames\n  {'copies':<14} frame copies per sample in avaproto's "
        "server (glibc mtrace)\n\nexample: python -m bench --cells shm-416 --rounds 3",
    )
    parser.add_argument(
        "--cells",
        type=_names(cells, "cell"),
        default=list(cells),
        metavar="NAME[,NAME...]",
        help="cells to run (default: all)",
    )
    parser.add_argument(
        "--rounds",
        type=_positive,
        default=5,
        metavar="N",
        help="measured rounds (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        metavar="N",
        help="shorter rounds run first and discarded (default: %(default)s)",
    )
    parser.add_argument(
        "--frames",
        type=_positive,
        metavar="N",
        help="frames per stream per run in every cell (default: each cell's own)",
    )
    parser.add_argument(
        "--servers",
        type=_names(SERVERS, "server"),
        default=list(SERVERS),
        metavar="NAME[,NAME...]",
        help=f"servers to measure (default: {','.join(SERVERS)})",
    )
    parser.add_argument(
        "--clients",
        type=_names(CLIENTS, "client"),
        default=list(CLIENTS),
        metavar="NAME[,NAME...]",
        help=f"clients to drive them with (default: {','.join(CLIENTS)})",
    )
    parser.add_argument(
        "--rss-frames",
        type=_positive,
        default=RSS_CELL.frames,
        metavar="N",
        help="frames between the two RSS readings (default: %(default)s)",
    )
    parser.add_argument(
        "--rewrite-frames",
        action="store_true",
        help="shared-memory cells: both clients write every sample's frame into its slot "
        "(default: each slot once, so the cell measures the messages, not the clients' "
        "copying of 6 MB per 1080p frame)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every run as JSON to FILE")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


class _Stopped(Exception):
    """SIGTERM or SIGHUP (``timeout``, a closed terminal): the run unwinds as on Ctrl-C,
    so every server and client process it started is stopped and its segment removed."""

    def __init__(self, number: int) -> None:
        super().__init__(signal.Signals(number).name)
        self.number = number


def _stop(number: int, frame: object) -> None:
    for stop in _STOPS:  # the way out is not cut short by a second signal
        signal.signal(stop, signal.SIG_IGN)
    raise _Stopped(number)


_STOPS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(arguments)
    if threading.current_thread() is not threading.main_thread():
        return _main(args, arguments)
    previous = {number: signal.signal(number, _stop) for number in _STOPS}
    try:
        return _main(args, arguments)
    except _Stopped as stopped:
        print(f"python -m bench: stopped by {stopped}", file=sys.stderr)
        return 128 + stopped.number
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _main(args: argparse.Namespace, arguments: list[str]) -> int:

    def progress(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    options = Options(
        cells=args.cells,
        rounds=args.rounds,
        warmup=max(0, args.warmup),
        frames=args.frames,
        servers=args.servers,
        clients=args.clients,
        rss_frames=args.rss_frames,
        rewrite_frames=args.rewrite_frames,
        progress=progress,
    )
    results = run(options)
    results["command"] = shlex.join(["python", "-m", "bench", *arguments])
    print(markdown(results), end="")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(finite(results), file, indent=1)
            file.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
