"""``python -m avaproto.bench``: run the benchmarks and print their tables."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from . import motion, pixels, shm

BENCHMARKS: dict[str, Callable[..., str]] = {
    "pixels": pixels.run,
    "motion": motion.run,
    "shm": shm.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avaproto.bench",
        description="Benchmarks, each against a baseline measured in the same run.",
    )
    parser.add_argument(
        "--repeat", type=int, help="timed runs per figure (default: each benchmark's own)"
    )
    parser.add_argument("--only", choices=sorted(BENCHMARKS), help="run one benchmark")
    args = parser.parse_args(argv)
    for name, bench in BENCHMARKS.items():
        if args.only and name != args.only:
            continue
        print(f"== {name}")
        print(bench() if args.repeat is None else bench(repeat=args.repeat), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
