"""The ``avaproto`` command line: ``serve``, ``send``, ``demo`` and ``diagram``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    from .engine.drive import Result
    from .protocol.auth import Credentials
    from .protocol.video_format import VideoFormat

Command = Callable[[argparse.Namespace], int]
log = logging.getLogger("avaproto")

ENCODINGS = ("RAW", "JPG", "PNG", "BMP")
PIXEL_FORMATS = (
    "RGB24", "BGR24", "RGBA", "BGRA", "ARGB", "ABGR",
    "RGB565BE", "RGB565LE", "RGB555BE", "RGB555LE", "YUV420P",
)  # fmt: skip


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit status 2."""


# --- shared options ------------------------------------------------------------------


def _credentials(args: argparse.Namespace) -> Credentials | None:
    from .protocol.auth import Credentials

    username = args.username or os.environ.get("AVAPROTO_USERNAME")
    password = args.password or os.environ.get("AVAPROTO_PASSWORD")
    if username is None and password is None:
        return None
    if username is None or password is None:
        raise UsageError("give both --username and --password (or AVAPROTO_USERNAME/_PASSWORD)")
    try:
        return Credentials(username, password)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _add_credentials(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("authentication (x-ms-authentication, HTTP Basic)")
    group.add_argument("--username", help="or the environment variable AVAPROTO_USERNAME")
    group.add_argument(
        "--password",
        help="or AVAPROTO_PASSWORD, which keeps it out of the process list",
    )


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WIDTHxHEIGHT, like 416x416, got {text!r}"
        ) from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"width and height must be positive, got {text!r}")
    return width, height


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


# --- diagram -------------------------------------------------------------------------


def _diagram(args: argparse.Namespace) -> int:
    from .diagram import dot, mermaid

    sys.stdout.write(mermaid() if args.format == "mermaid" else dot())
    return 0


# --- serve ---------------------------------------------------------------------------


def _server_config(args: argparse.Namespace) -> Any:
    from .engine.config import EngineConfig
    from .transport.grpc_server import ServerConfig
    from .transport.tls import server_context

    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise UsageError("give both --tls-cert and --tls-key")
        tls = server_context(args.tls_cert, args.tls_key, client_ca=args.tls_client_ca)
    elif args.tls_client_ca:
        raise UsageError("--tls-client-ca needs --tls-cert and --tls-key")
    return ServerConfig(
        host=args.host,
        port=args.port,
        engine=EngineConfig(
            extension_identifier=args.identifier or args.extension,
            max_in_flight=args.max_in_flight,
            ordered=not args.completion_order,
            frame_timeout=args.frame_timeout,
        ),
        credentials=_credentials(args),
        ssl=tls,
        max_message_bytes=args.max_message_bytes,
        max_streams=args.max_streams,
    )


def _serve(args: argparse.Namespace) -> int:
    import anyio

    from .extensions import load_extension
    from .server import serve

    try:
        factory = load_extension(args.extension)
    except (ImportError, AttributeError, ValueError, TypeError) as error:
        raise UsageError(f"--extension {args.extension}: {error}") from None
    config = _server_config(args)

    # The server logs "serving ... on HOST:PORT" once it listens (port 0: the one chosen).
    anyio.run(lambda: serve(factory, host=args.host, port=args.port, config=config,
                            grace=args.grace))  # fmt: skip
    return 0


# --- send ----------------------------------------------------------------------------


def _video_format(args: argparse.Namespace, size: tuple[int, int]) -> VideoFormat:
    from .errors import FrameError
    from .messages import Encoding, PixelFormat
    from .protocol.video_format import VideoFormat

    encoding = Encoding[args.encoding]
    try:
        if encoding is Encoding.RAW:
            return VideoFormat.checked(
                encoding, PixelFormat[args.format], size[0], size[1], args.stride
            )
        return VideoFormat.checked(encoding, PixelFormat.NONE, size[0], size[1])
    except FrameError as error:
        raise UsageError(str(error)) from None


def _result_json(result: Result) -> dict[str, Any]:
    from .media.inference_json import to_json_dict

    line: dict[str, Any] = {"sequenceNumber": result.acknowledged, "timestamp": result.timestamp}
    line.update(to_json_dict(result.inferences))
    return line


class _Progress:
    """One self-rewriting line on a terminal; silent otherwise."""

    def __init__(self, stream: IO[str], total: int | None) -> None:
        self.stream = stream
        self.total = total
        self.enabled = stream.isatty()
        self.count = 0

    def step(self) -> None:
        self.count += 1
        if self.enabled and (self.count % 5 == 0 or self.count == self.total):
            of = f"/{self.total}" if self.total else ""
            self.stream.write(f"\ranswered {self.count}{of}")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.count:
            self.stream.write("\n")


def _send(args: argparse.Namespace) -> int:
    import anyio

    from .send import SendOptions, send_frames
    from .sources import open_source
    from .transport.tls import client_context

    frames = iter(open_source(args.source, size=args.size, frames=args.frames, rate=args.rate))
    first = next(frames, None)
    if first is None:
        raise UsageError(f"--source {args.source} has no frames")
    height, width = first.rgb.shape[:2]
    fmt = _video_format(args, (width, height))
    options = SendOptions(
        target=args.target,
        format=fmt,
        transfer=args.transfer,
        window=args.window,
        rate=args.rate if args.pace else None,
        configuration=args.config or "",
        credentials=_credentials(args),
        tls=client_context(ca=args.tls_ca) if args.tls else None,
    )
    output = open(args.output, "w", encoding="utf-8") if args.output else None  # noqa: SIM115
    progress = _Progress(sys.stderr, args.frames)

    def on_result(result: Result) -> None:
        progress.step()
        if output is not None:
            output.write(json.dumps(_result_json(result), separators=(",", ":")) + "\n")

    def chained() -> Any:
        yield first
        yield from frames

    try:
        report = anyio.run(lambda: send_frames(chained(), options, on_result=on_result))
    finally:
        progress.close()
        if output is not None:
            output.close()
    print(f"{fmt}, {args.transfer} transfer, to {args.target}")
    for line in report.lines():
        print(line)
    return 0 if report.answered == report.sent else 1


# --- demo ----------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    import anyio

    from .demo import run_demo

    status: int = anyio.run(
        lambda: run_demo(args.source, frames=args.frames, transfer=args.transfer)
    )
    return status


# --- the parser ----------------------------------------------------------------------


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

    serve = commands.add_parser(
        "serve",
        help="serve an extension",
        description=(
            "Serve an extension over gRPC until SIGTERM or Ctrl-C, then drain: running "
            "streams get --grace seconds to finish."
        ),
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s; 0.0.0.0 for all)",
    )
    serve.add_argument(
        "--port", type=int, default=5001, help="(default: %(default)s; 0 picks a free one)"
    )
    serve.add_argument(
        "--extension",
        default="motion",
        help="a built-in (motion: a motion detector; null: acknowledges without inference) "
        "or module:attribute naming a processor function or an extension class "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--identifier", help="extension_identifier to answer with (default: the extension's name)"
    )
    serve.add_argument(
        "--max-in-flight",
        type=_positive(int),
        default=8,
        metavar="N",
        help="frames processed at once per stream (default: %(default)s)",
    )
    serve.add_argument(
        "--completion-order",
        action="store_true",
        help="answer frames as they finish instead of in request order",
    )
    serve.add_argument(
        "--frame-timeout",
        type=_positive(float),
        metavar="SECONDS",
        help="end a stream with DEADLINE_EXCEEDED when a frame takes longer",
    )
    serve.add_argument(
        "--max-message-bytes",
        type=_positive(int),
        default=64 * 1024 * 1024,
        metavar="N",
        help="largest message accepted (default: 64 MiB)",
    )
    serve.add_argument(
        "--max-streams",
        type=_positive(int),
        default=64,
        metavar="N",
        help="streams served at once (default: %(default)s)",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="drain time on shutdown (default: %(default)s)",
    )
    tls = serve.add_argument_group("TLS")
    tls.add_argument("--tls-cert", type=Path, metavar="FILE", help="certificate chain (PEM)")
    tls.add_argument("--tls-key", type=Path, metavar="FILE", help="private key (PEM)")
    tls.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="FILE",
        help="require client certificates signed by this CA (mutual TLS)",
    )
    _add_credentials(serve)
    serve.set_defaults(run=_serve)

    send = commands.add_parser(
        "send",
        help="send frames to an extension, as a pipeline would",
        description=(
            "Send every frame of a source to the extension at TARGET (host:port), print "
            "a summary, and optionally write one JSON line per acknowledged frame."
        ),
    )
    send.add_argument("target", metavar="TARGET", help="host:port of the extension")
    send.add_argument(
        "--source",
        default="synthetic",
        help="a video file, an image file, or 'synthetic' (default: %(default)s)",
    )
    send.add_argument(
        "--frames",
        type=_positive(int),
        metavar="N",
        help="send at most N frames (default: all; synthetic: 100)",
    )
    send.add_argument(
        "--transfer",
        choices=["embedded", "shm"],
        default="embedded",
        help="frames inside the messages or through shared memory (default: %(default)s)",
    )
    send.add_argument("--encoding", choices=ENCODINGS, default="RAW", help="(default: %(default)s)")
    send.add_argument(
        "--format",
        choices=PIXEL_FORMATS,
        default="RGB24",
        help="pixel format of RAW frames (default: %(default)s)",
    )
    send.add_argument(
        "--stride",
        type=int,
        default=0,
        metavar="BYTES",
        help="row pitch of RAW frames, padded (default: packed rows)",
    )
    send.add_argument(
        "--size", type=_size, metavar="WxH", help="resize frames (default: the source's size)"
    )
    send.add_argument(
        "--rate",
        type=_positive(float),
        metavar="FPS",
        help="frame rate of image and synthetic sources, and the pace with --pace",
    )
    send.add_argument(
        "--pace",
        action="store_true",
        help="send at --rate frames per second instead of as fast as possible",
    )
    send.add_argument(
        "--window",
        type=_positive(int),
        default=8,
        metavar="N",
        help="frames awaiting acknowledgement at once (default: %(default)s)",
    )
    send.add_argument(
        "--config", metavar="TEXT", help="extension_configuration to send (often JSON)"
    )
    send.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="write one JSON object per acknowledged frame (JSON lines)",
    )
    send.add_argument(
        "--tls",
        action="store_true",
        help="connect over TLS (the certificate must name TARGET's host)",
    )
    send.add_argument(
        "--tls-ca", type=Path, metavar="FILE", help="trust this CA instead of the system's"
    )
    _add_credentials(send)
    send.set_defaults(run=_send)

    demo = commands.add_parser(
        "demo",
        help="serve the motion extension and send it a clip",
        description=(
            "Start the motion extension on a free local port, send it a short clip "
            "(encoded on the fly, or --source FILE), print the motion it reports and a "
            "summary."
        ),
    )
    demo.add_argument("--source", help="a video or image file (default: a generated clip)")
    demo.add_argument(
        "--frames", type=_positive(int), default=90, metavar="N", help="(default: %(default)s)"
    )
    demo.add_argument(
        "--transfer", choices=["embedded", "shm"], default="shm", help="(default: %(default)s)"
    )
    demo.set_defaults(run=_demo)

    diagram = commands.add_parser(
        "diagram",
        help="print the session state machine",
        description=(
            "Print the session lifecycle state machine, drawn from the same transitions "
            "table the sessions run. Mermaid renders on GitHub; dot is for Graphviz."
        ),
    )
    diagram.add_argument(
        "--format", choices=["mermaid", "dot"], default="mermaid", help="(default: %(default)s)"
    )
    diagram.set_defaults(run=_diagram)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # A server narrates its streams (one line as each opens and closes) by default.
    verbosity = args.verbose + (1 if args.command == "serve" else 0)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbosity, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # transitions narrates every callback at INFO: keep it for -vv only.
    logging.getLogger("transitions").setLevel(
        logging.DEBUG if verbosity > 1 else logging.WARNING
    )
    run: Command = args.run
    try:
        return run(args)
    except UsageError as error:
        parser.error(str(error))
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # one line for the errors a person can act on
        from .errors import AvaprotoError

        if isinstance(error, AvaprotoError | OSError):
            print(f"avaproto {args.command}: {error}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
