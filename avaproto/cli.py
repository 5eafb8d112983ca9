"""The ``avaproto`` command line: ``serve``, ``send``, ``demo`` and ``diagram``.

Every mistake a person can make gets one line on stderr and no traceback: exit status 2
for a usage error (a bad option, a missing file, an extension that does not load), 1
for a run that failed (connection refused, the stream ended with an error). Only a bug
in avaproto itself shows a traceback.

The options' defaults and choices are read from the configuration they fill
(``EngineConfig``, ``ServerConfig``, ``SendOptions``, the pixel-format table), so the
help never disagrees with what runs.

Logging: ``-v`` shows avaproto's progress, ``-vv`` its debug output, ``-vvv`` also the
libraries' (h2, hpack, grpclib, asyncio, transitions), which print every header they
see. Whatever the level, credentials never reach the log: the handler redacts the value
of authentication headers and any ``Basic <token>`` from every record.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import inspect
import json
import logging
import os
import re
import signal
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, TypeVar, get_args

from . import __version__

if TYPE_CHECKING:
    from .engine.drive import Result
    from .messages import Inference
    from .protocol.auth import Credentials
    from .protocol.video_format import VideoFormat
    from .sources import SourceFrame

Command = Callable[[argparse.Namespace], int]
_T = TypeVar("_T")
log = logging.getLogger("avaproto.cli")


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit status 2."""


# --- logging -------------------------------------------------------------------------

#: The loggers of the libraries under avaproto: quiet below -vvv, they print every header.
LIBRARIES = ("asyncio", "grpclib", "h2", "hpack", "transitions")
#: -v count from which the libraries' debug output is shown too.
LIBRARY_VERBOSITY = 3
REDACTED = "<redacted>"

# The value after an authentication header's name, however a library prints the pair:
# "x-ms-authentication: v", (b'x-ms-authentication', b'v'), b'authorization'=b'v'.
_SECRET_HEADER = re.compile(
    r"(?i)((?:x-ms-authentication|proxy-authorization|authorization)['\"]?\s*[,:=]\s*b?['\"]?)"
    r"([^'\"\r\n,)\]}]+)"
)
# A Basic token anywhere else (a header block printed whole, an exception's text).
_BASIC_TOKEN = re.compile(r"(?i)(?<![a-z])(basic)(?:\s|%20)+[A-Za-z0-9+/_.~-]{2,}=*")


def redact(text: str) -> str:
    """``text`` with every authentication header value and Basic token replaced."""
    text = _SECRET_HEADER.sub(rf"\g<1>{REDACTED}", text)
    return _BASIC_TOKEN.sub(rf"\g<1> {REDACTED}", text)


#: hpack's lines that quote a whole header block, as bytes (its ``log.debug`` formats).
_HEADER_BLOCKS = frozenset({"Encoded header block to %s", "Decoding %s"})


class RedactCredentials(logging.Filter):
    """Redacts credentials from every record a handler emits, its message and arguments.

    The message is formatted here (``msg % args``) and redacted as a whole, since a
    secret may be split between the two; the record then carries the result and no
    arguments.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("hpack") and record.msg in _HEADER_BLOCKS:
            # A header block as hpack encoded it: its bytes hold every header, the
            # credentials too, Huffman-coded where no pattern finds them.
            record.msg, record.args = record.msg % (REDACTED,), None
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let the handler report it as usual
            return True
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


class _RedactingFormatter(logging.Formatter):
    """Also redacts what the filter cannot see: exception text and stack traces."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(verbosity: int, *, narrate: bool = False) -> logging.Handler:
    """One stderr handler on the root logger, redacting credentials, at these levels.

    avaproto logs at WARNING, INFO with ``narrate`` (a server narrates its streams) or
    ``-v``, DEBUG with ``-vv``; the libraries stay at WARNING until ``-vvv``.
    """
    own = (
        logging.DEBUG
        if verbosity >= 2
        else logging.INFO
        if verbosity >= 1 or narrate
        else logging.WARNING
    )
    libraries = logging.DEBUG if verbosity >= LIBRARY_VERBOSITY else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactCredentials())
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "avaproto", False)]:
        root.removeHandler(old)
    handler.avaproto = True  # type: ignore[attr-defined]  # ours, replaced on a second call
    root.addHandler(handler)
    root.setLevel(libraries)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(libraries)
    logging.getLogger("avaproto").setLevel(own)
    return handler


# --- option values -------------------------------------------------------------------


def _default(cls: type[Any], name: str) -> Any:
    """The default of a dataclass field: the one source of every option's default."""
    for field in dataclasses.fields(cls):
        if field.name == name:
            if field.default is not dataclasses.MISSING:
                return field.default
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
    raise AttributeError(f"{cls.__name__} has no field {name!r} with a default")


def _parameter_default(function: Callable[..., Any], name: str) -> Any:
    return inspect.signature(function).parameters[name].default


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

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _not_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {port}")
    return port


def _timeout(text: str) -> float | None:
    """Seconds; ``0`` or ``none`` waits forever."""
    if text.strip().lower() in ("none", "off", "0", "0.0"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds (or 0/none to wait forever), got {text!r}"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive (or 0/none), got {text}")
    return value


#: Size units: SI with B (MB = 10^6), binary with iB or bare (M = MiB, as docker's --shm-size).
_BYTE_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
}  # fmt: skip


def byte_size(text: str) -> int:
    """``75MiB``, ``100M`` (MiB), ``64MB`` (10^6), ``4096``: a size in bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _BYTE_UNITS:
        raise argparse.ArgumentTypeError(
            f"expected a size like 75MiB, 100M or 8388608 (bytes), got {text!r}"
        )
    value = round(float(match.group(1)) * _BYTE_UNITS[unit])
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above zero, got {text!r}")
    return value


def _target(text: str) -> str:
    from .transport.grpc_client import parse_target

    try:
        parse_target(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _seconds(value: float | None) -> str:
    return "none (wait forever)" if value is None else f"{value:g} s"


# --- shared checks -------------------------------------------------------------------


def _credentials(args: argparse.Namespace) -> Credentials | None:
    from .protocol.auth import Credentials

    username = args.username or os.environ.get("AVAPROTO_USERNAME") or None
    password = args.password or os.environ.get("AVAPROTO_PASSWORD") or None
    if username is None and password is None:
        return None
    if username is None or password is None:
        raise UsageError("give both --username and --password (or AVAPROTO_USERNAME/_PASSWORD)")
    try:
        return Credentials(username, password)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _existing_files(**options: Path | None) -> None:
    """Refuse a missing file by its option's name, before any TLS library sees it."""
    for option, path in options.items():
        if path is not None and not path.is_file():
            flag = "--" + option.replace("_", "-")
            what = "is a directory" if path.is_dir() else "no such file"
            raise UsageError(f"{flag} {path}: {what}")


def _tls_files_error(error: OSError, **options: Path | None) -> UsageError:
    named = ", ".join(
        f"--{option.replace('_', '-')} {path}" for option, path in options.items() if path
    )
    reason = getattr(error, "reason", None) or error.strerror or str(error)
    return UsageError(f"cannot use the TLS files ({named}): {reason}")


def _client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    from .transport.tls import client_context

    if not (args.tls or args.tls_ca or args.tls_cert or args.tls_key):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("a client certificate needs both --tls-cert and --tls-key")
    files = {"tls_ca": args.tls_ca, "tls_cert": args.tls_cert, "tls_key": args.tls_key}
    _existing_files(**files)
    try:
        return client_context(ca=args.tls_ca, certificate=args.tls_cert, key=args.tls_key)
    except OSError as error:  # ssl.SSLError is one
        raise _tls_files_error(error, **files) from None


def _server_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    from .transport.tls import server_context

    if not (args.tls_cert or args.tls_key):
        if args.tls_client_ca:
            raise UsageError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (args.tls_cert and args.tls_key):
        raise UsageError("give both --tls-cert and --tls-key")
    files = {
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
    }
    _existing_files(**files)
    try:
        return server_context(args.tls_cert, args.tls_key, client_ca=args.tls_client_ca)
    except OSError as error:
        raise _tls_files_error(error, **files) from None


def _verbosity_option(parser: argparse.ArgumentParser, dest: str) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        dest=dest,
        action="count",
        default=0,
        help="more log output: -v avaproto's progress, -vv its debug output, -vvv also the "
        "libraries' (h2, hpack, grpclib, asyncio, transitions); credentials are always "
        "redacted (default: warnings only; serve: one line per stream)",
    )


def _credential_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("authentication (x-ms-authentication, HTTP Basic)")
    group.add_argument(
        "--username", help="or the environment variable AVAPROTO_USERNAME (default: none)"
    )
    group.add_argument(
        "--password",
        help="or AVAPROTO_PASSWORD, which keeps it out of the process list (default: none)",
    )


# --- diagram -------------------------------------------------------------------------


def _diagram(args: argparse.Namespace) -> int:
    from .diagram import dot, mermaid

    sys.stdout.write(mermaid() if args.format == "mermaid" else dot())
    return 0


def _add_diagram(commands: Any) -> None:
    parser = commands.add_parser(
        "diagram",
        help="print the session state machine",
        description=(
            "Print the session lifecycle state machine, drawn from the same transitions "
            "table the sessions run. Mermaid renders on GitHub; dot is for Graphviz."
        ),
    )
    parser.add_argument(
        "--format",
        choices=["mermaid", "dot"],
        default="mermaid",
        help="diagram language (default: %(default)s)",
    )
    _verbosity_option(parser, "sub_verbose")
    parser.set_defaults(run=_diagram, parser=parser)


# --- serve ---------------------------------------------------------------------------


def _limit_option(
    group: Any, flag: str, kind: Callable[[str], Any], metavar: str, text: str
) -> None:
    """A flag for the ``ConnectionLimits`` field it names, with that field's default."""
    from .transport.limits import ConnectionLimits

    default = _default(ConnectionLimits, flag[2:].replace("-", "_"))
    shown = "%(default)s"
    if kind is byte_size:
        shown = f"{default >> 20} MiB" if default >= 1 << 20 else f"{default >> 10} KiB"
    group.add_argument(
        flag, type=kind, default=default, metavar=metavar, help=f"{text} (default: {shown})"
    )


def _server_config(args: argparse.Namespace) -> Any:
    from .engine.config import EngineConfig
    from .transport.grpc_server import ServerConfig
    from .transport.limits import ConnectionLimits

    return ServerConfig(
        host=args.host,
        port=args.port,
        engine=EngineConfig(
            extension_identifier=args.identifier or args.extension,
            max_in_flight=args.max_in_flight,
            close_timeout=args.close_timeout,
            ordered=not args.completion_order,
            frame_timeout=args.frame_timeout,
            shm_directory=args.shm_directory,
            shm_access=args.shm_access,
            max_mapped_bytes=args.max_mapped_bytes,
        ),
        credentials=_credentials(args),
        ssl=_server_tls(args),
        max_message_bytes=args.max_message_bytes,
        max_descriptor_bytes=args.max_descriptor_bytes,
        max_streams=args.max_streams,
        max_streams_per_connection=args.max_streams_per_connection,
        max_health_watches=args.max_health_watches,
        # Each limit's flag is its field's name (see the serve parser's limit()).
        limits=ConnectionLimits(
            **{f.name: getattr(args, f.name) for f in dataclasses.fields(ConnectionLimits)}
        ),
        loop_lag_warning=args.loop_lag_warning,
    )


def _serve(args: argparse.Namespace) -> int:
    import anyio

    from .extensions import ExtensionLoadError, load_extension
    from .media.images import limit_decoded_bytes
    from .server import serve

    config = _server_config(args)
    try:
        factory = load_extension(args.extension)
    except ExtensionLoadError as error:
        raise UsageError(f"--extension {args.extension}: {error}") from None
    limit_decoded_bytes(args.max_decoded_bytes)
    if args.slice_us:
        from .scheduling import request_slice

        request_slice(args.slice_us / 1e6)  # this thread runs the event loop
    # The server logs "serving ... on HOST:PORT" once it listens (port 0: the one chosen).
    try:
        anyio.run(lambda: serve(factory, host=args.host, port=args.port, config=config,
                                grace=args.grace))  # fmt: skip
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise  # one line too: main says it
        raise OSError(
            error.errno,
            f"port {args.port} on {args.host} is in use (--port 0 picks a free one)",
        ) from None
    _leave_stuck_calls()
    return 0


def _leave_stuck_calls() -> None:
    """Exit now if a plain ``def`` of the extension still runs in a worker thread.

    The drain gave up on it (a thread cannot be cancelled), but Python waits for every
    such thread before it exits: a processor stuck in a call kept the server for as
    long as it liked after its grace, silent, and a Ctrl-C then printed a traceback.
    """
    import threading

    workers = [t for t in threading.enumerate() if t.name == "AnyIO worker thread"]
    for worker in workers:
        worker.join(0.5)  # an idle one ends as the event loop does
    stuck = sum(worker.is_alive() for worker in workers)
    if stuck:
        log.warning(
            "%d call(s) of the extension still run in worker threads after the drain: "
            "exiting without them",
            stuck,
        )
        logging.shutdown()  # flushed: nothing else runs after os._exit
        sys.stdout.flush()
        os._exit(0)


def _slice_us(text: str) -> int:
    from .scheduling import LONGEST_SLICE, SHORTEST_SLICE

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of microseconds: {text!r}") from None
    low, high = round(SHORTEST_SLICE * 1e6), round(LONGEST_SLICE * 1e6)
    if value and not low <= value <= high:
        raise argparse.ArgumentTypeError(
            f"{value}: Linux accepts {low} to {high} µs (0 keeps the kernel's slice)"
        )
    return value


def _add_serve(commands: Any) -> None:
    from .engine.config import EngineConfig
    from .extensions import BUILTINS
    from .media.images import DEFAULT_MAX_DECODED_BYTES
    from .scheduling import DEFAULT_SLICE
    from .server import serve
    from .transport.grpc_server import ServerConfig

    parser = commands.add_parser(
        "serve",
        help="serve an extension",
        description=(
            "Serve an extension over gRPC until SIGTERM or Ctrl-C, then drain: running "
            "streams get --grace seconds to finish (a second Ctrl-C ends them at once). "
            "Logs one line as each stream opens and closes."
        ),
    )
    parser.add_argument(
        "--host",
        default=_default(ServerConfig, "host"),
        help="address to listen on; 0.0.0.0 for all (default: %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=_default(ServerConfig, "port"),
        help="port to listen on; 0 picks a free one, logged (default: %(default)s)",
    )
    parser.add_argument(
        "--extension",
        default="motion",
        metavar="NAME|MODULE:ATTRIBUTE",
        help=f"a built-in ({', '.join(BUILTINS)}: motion detects motion, null acknowledges "
        "without inference) or module:attribute naming a processor function, an extension "
        "class or a factory; the module is looked up in the current directory first "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--identifier",
        help="extension_identifier to answer with (default: the --extension value)",
    )
    parser.add_argument(
        "--max-in-flight",
        type=_positive(int),
        default=_default(EngineConfig, "max_in_flight"),
        metavar="N",
        help="frames processed at once per stream (default: %(default)s)",
    )
    parser.add_argument(
        "--completion-order",
        action="store_true",
        help="answer frames as they finish instead of in request order (default: off)",
    )
    parser.add_argument(
        "--frame-timeout",
        type=_timeout,
        default=_default(EngineConfig, "frame_timeout"),
        metavar="SECONDS",
        help="end a stream with DEADLINE_EXCEEDED when a frame takes longer; 0 or none: "
        "no limit (default: %(default)s, no limit)",
    )
    parser.add_argument(
        "--close-timeout",
        type=_timeout,
        default=_default(EngineConfig, "close_timeout"),
        metavar="SECONDS",
        help="time the extension's close() may take once its stream is over; past it the "
        "stream ends without it, logged, so that a close that never returns cannot hold "
        "the server's drain; 0 or none: no limit (default: %(default)s)",
    )
    parser.add_argument(
        "--shm-directory",
        default=_default(EngineConfig, "shm_directory"),
        metavar="DIR",
        help="where the pipeline's shared-memory handles are opened (default: %(default)s)",
    )
    parser.add_argument(
        "--shm-access",
        choices=("read", "map"),
        default=_default(EngineConfig, "shm_access"),
        help="how a pipeline's segment is reached: read copies each frame out with checked "
        "reads, so a pipeline that shrinks its segment ends only its own stream; map maps it "
        "without a copy, for pipelines trusted not to shrink it (a shrink can then kill the "
        "server with SIGBUS) (default: %(default)s)",
    )
    for flag, owner, what in (
        (
            "--max-mapped-bytes",
            EngineConfig,
            "with --shm-access map, the address space all mapped segments may take "
            "together; a stream whose segment would pass it is refused with RESOURCE_EXHAUSTED",
        ),
        (
            "--max-message-bytes",
            ServerConfig,
            "largest message accepted, in bytes or like 64MiB, and the largest encoded "
            "(JPG, PNG, BMP) sample a shared-memory reference may name",
        ),
        (
            "--max-descriptor-bytes",
            ServerConfig,
            "largest descriptor (a stream's first message, its extension_configuration "
            "included) accepted: a stream keeps it while it lasts",
        ),
    ):
        default = _default(owner, flag.removeprefix("--").replace("-", "_"))
        unit = "GiB" if default >= 1 << 30 else "MiB"
        shown = default >> (30 if unit == "GiB" else 20)
        parser.add_argument(
            flag,
            type=byte_size,
            default=default,
            metavar="SIZE",
            help=f"{what} (default: {shown} {unit})",
        )
    for flag, what in (
        ("--max-streams", "streams served at once"),
        ("--max-health-watches", "health Watch calls open at once (balancers keep one each)"),
    ):
        parser.add_argument(
            flag,
            type=_positive(int),
            default=_default(ServerConfig, flag[2:].replace("-", "_")),
            metavar="N",
            help=f"{what}; one more is refused (default: %(default)s)",
        )
    parser.add_argument(
        "--max-streams-per-connection",
        type=_positive(int),
        default=None,
        metavar="N",
        help="streams one connection may have served at once, so that no one peer takes "
        "every slot; one more is refused (default: half of --max-streams)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=_parameter_default(serve, "grace"),
        metavar="SECONDS",
        help="time running streams get to finish on shutdown; every connection is told "
        "GOAWAY at once, and a stream still open after it ends UNAVAILABLE "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--slice-us",
        type=_slice_us,
        default=round(DEFAULT_SLICE * 1e6),
        metavar="MICROSECONDS",
        help="the scheduling slice the event loop's thread asks Linux (6.12 or later) for: "
        "shorter than the kernel's, so that a request from a process on the same core runs "
        "the server at once instead of after that process's slice, for lower latency at low "
        "frame rates; it does not change the server's share of the CPU; 0 keeps the "
        "kernel's (default: %(default)s)",
    )
    limits = parser.add_argument_group(
        "limits on what one peer may hold",
        "Each one that trips logs a WARNING naming the peer. Timeouts: 0 or none for no limit.",
    )

    limit = partial(_limit_option, limits)

    limit(
        "--max-connections",
        _positive(int),
        "N",
        "connections open at once; one more is closed as it is accepted",
    )
    limit(
        "--handshake-timeout",
        _timeout,
        "SECONDS",
        "from accepting a connection to its HTTP/2 preface, TLS handshake included",
    )
    limit(
        "--idle-timeout",
        _timeout,
        "SECONDS",
        "a connection without a stream is closed (GOAWAY NO_ERROR) after this",
    )
    limit(
        "--keepalive-time",
        _timeout,
        "SECONDS",
        "a connection with a stream open that sends nothing for this long is sent a PING",
    )
    limit(
        "--keepalive-timeout",
        _timeout,
        "SECONDS",
        "and is closed if nothing comes back within this: its pipeline is gone, and its "
        "streams give back their slots and shared memory",
    )
    limit(
        "--max-header-list-bytes",
        byte_size,
        "SIZE",
        "largest header list of a request, decoded (SETTINGS_MAX_HEADER_LIST_SIZE): "
        "past it the request alone is refused; a header block past 4 times it, counted "
        "as it arrives, ends its connection",
    )
    limit("--header-timeout", _timeout, "SECONDS", "time a header block may stay unfinished")
    limit(
        "--premature-reset-streams",
        _positive(int),
        "N",
        "streams a connection opens before it is closed if more than half were reset "
        "before any answer (rapid reset)",
    )
    limit(
        "--max-empty-frames",
        _not_negative,
        "N",
        "consecutive frames without payload and without END_STREAM",
    )
    limit(
        "--frames-per-message",
        _not_negative,
        "N",
        "DATA frames a message may take beyond two per 16 KiB of its length (two at least)",
    )
    limit(
        "--max-frames-without-data",
        _positive(int),
        "N",
        "frames carrying no message (PING, PRIORITY, SETTINGS entries, WINDOW_UPDATE, "
        "RST_STREAM, unknown types) a connection may send beyond what it earns back: one "
        "per KiB of DATA either way, four per DATA frame received and per message sent, "
        "ten per HEADERS, ten a second",
    )
    limit(
        "--max-control-frames",
        _positive(int),
        "N",
        "acknowledgements (PING, SETTINGS) queued for a peer that reads none",
    )
    limit(
        "--max-unread-bytes", byte_size, "SIZE", "bytes queued for a peer that does not read them"
    )
    limit(
        "--descriptor-timeout",
        _timeout,
        "SECONDS",
        "a stream that sends no descriptor in this time ends with DEADLINE_EXCEEDED",
    )
    limit(
        "--send-timeout",
        _timeout,
        "SECONDS",
        "a stream whose answer does not go out whole in this time, its pipeline's "
        "flow-control window shut (reading none of the answers) or opened a byte at a "
        "time, ends with DEADLINE_EXCEEDED",
    )
    limit(
        "--message-timeout",
        _timeout,
        "SECONDS",
        "a message that does not arrive whole this long after its length prefix ends its "
        "stream with DEADLINE_EXCEEDED",
    )
    limit(
        "--max-incomplete-bytes-per-connection",
        byte_size,
        "SIZE",
        "bytes of messages announced but not yet received, across one connection's streams",
    )
    limit("--max-incomplete-bytes", byte_size, "SIZE", "the same, across the server")
    limit(
        "--max-frame-memory",
        byte_size,
        "SIZE",
        "bytes of frames held from their arrival until processed (embedded messages, "
        "and shared-memory samples by their length), across the server; past it a "
        "stream's next frame waits for others to be processed",
    )
    limit(
        "--max-frame-memory-per-connection",
        byte_size,
        "SIZE",
        "the same, across one connection's streams; a larger frame is refused",
    )
    limit(
        "--frame-memory-timeout",
        _timeout,
        "SECONDS",
        "a frame that waits this long for frame memory ends its stream with RESOURCE_EXHAUSTED",
    )
    limit(
        "--max-read-buffers-bytes",
        byte_size,
        "SIZE",
        "buffers sized from frame and message headers for bytes still arriving (read into "
        "without a copy), across the server; past it, bytes are buffered as they arrive",
    )
    limits.add_argument(
        "--max-decoded-bytes",
        type=byte_size,
        default=DEFAULT_MAX_DECODED_BYTES,
        metavar="SIZE",
        help="bytes the JPG, PNG and BMP samples an extension decodes (frame.rgb(), "
        "frame.image) take while decoding and while their arrays live, across the "
        "server (a small file can announce a huge image); an image that does not fit "
        f"ends its stream with RESOURCE_EXHAUSTED (default: {DEFAULT_MAX_DECODED_BYTES >> 20} MiB)",
    )
    parser.add_argument(
        "--loop-lag-warning",
        type=_timeout,
        default=_default(ServerConfig, "loop_lag_warning"),
        metavar="SECONDS",
        help="log when the event loop is blocked longer than this, naming the extension "
        "(an async process that blocks); 0 or none: no watch (default: %(default)s)",
    )
    tls = parser.add_argument_group("TLS")
    tls.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="certificate chain, PEM (default: no TLS)"
    )
    tls.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="its private key, PEM (default: none)"
    )
    tls.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="FILE",
        help="require client certificates signed by this CA: mutual TLS (default: none)",
    )
    _credential_options(parser)
    _verbosity_option(parser, "sub_verbose")
    parser.set_defaults(run=_serve, parser=parser)


# --- send: the output file -----------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class ResultsFile:
    """``--output``: one JSON line per acknowledged frame, never a half-written file.

    Lines go to a temporary file beside the target, renamed over it when the run
    succeeds. When the run fails, what was acknowledged is kept: as the target if it
    did not exist, else beside it as ``TARGET.partial``, the target left as it was.
    ``-`` writes to stdout instead, line by line.
    """

    def __init__(self, target: str) -> None:
        self.count = 0
        self.reader_gone = False  # the reader of stdout went away (a broken pipe)
        self._stdout = target == "-"
        self.shown = target  # the path as the user wrote it, for messages
        self.target = Path(target)
        self.temporary: Path | None = None
        if self._stdout:
            self._file: IO[str] = sys.stdout
            return
        if self.target.is_dir():
            raise UsageError(f"--output {target}: is a directory")
        self.target = Path(os.path.realpath(self.target))  # a symlink's file, not the link
        try:
            fd, name = tempfile.mkstemp(
                dir=self.target.parent, prefix=f".{self.target.name}.", suffix=".tmp"
            )
        except OSError as error:
            raise UsageError(f"--output {target}: {error.strerror}") from None
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would have made it
        self.temporary = Path(name)
        self._file = os.fdopen(fd, "w", encoding="utf-8")

    def write(self, line: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(line, separators=(",", ":")) + "\n")
            if self._stdout:
                self._file.flush()
        except BrokenPipeError:
            # What the run's end says, whatever the cancellation it causes ends with
            # (a sample's send cut short, LIFE-3).
            self.reader_gone = True
            raise
        self.count += 1

    def commit(self) -> None:
        """The run succeeded: the results become the target."""
        if self.temporary is None:
            return
        self._file.close()
        os.replace(self.temporary, self.target)

    def keep_partial(self) -> str:
        """The run failed: keep what was acknowledged; say where, for the error line."""
        if self.temporary is None:
            return f"{self.count} results were written to stdout"
        self._file.close()
        existed = self.target.exists()
        if self.count == 0:
            self.temporary.unlink()
            return f"no result was received; {self.shown} " + (
                "is unchanged" if existed else "was not written"
            )
        # Results, not acknowledgements: an extension's answer may carry inferences and
        # acknowledge nothing, and each is written as it came.
        if not existed:
            os.replace(self.temporary, self.target)
            return f"the {self.count} results received are in {self.target}"
        partial = self.target.with_name(self.target.name + ".partial")
        os.replace(self.temporary, partial)
        return f"the {self.count} results received are in {partial} ({self.target} is unchanged)"

    def discard(self) -> None:
        """Nothing was run (a usage error after opening): leave no temporary file."""
        if self.temporary is not None:
            self._file.close()
            self.temporary.unlink(missing_ok=True)


class _Omissions:
    """What ``--output`` changed or dropped: counted, the first kept, for one warning.

    A count rather than a list: an extension that sends one odd inference per frame
    for a day must not grow the pipeline's memory with a message per frame.
    """

    def __init__(self, what: str, by_rule: dict[str, str] | None = None) -> None:
        self.what = what
        self.count = 0
        self.first = ""
        # What each rule's mend did, said only for the rules a reason named.
        self._by_rule = by_rule or {}
        self._rules: set[str] = set()

    def add(self, reason: str) -> None:
        if not self.count:
            self.first = reason
        self.count += 1
        self._rules.update(rule for rule in self._by_rule if f"[{rule}]" in reason)

    def __str__(self) -> str:
        how = ", ".join(
            f"{text} ({rule})" for rule, text in self._by_rule.items() if rule in self._rules
        )
        what = self.what.format(count=self.count) + (f": {how}" if how else "")
        return f"{what}; the first: {self.first}"


def _mend(
    inferences: list[Inference],
    frame: str,
    mended: _Omissions,
    invalid: _Omissions | None = None,
) -> list[Inference]:
    """``inferences`` with what has one reading mended (``validate_or_mend``): a box
    reaching outside the image cut to it (INF-4), a confidence below 0 read as none
    (INF-3).

    As sent, such an inference has no schema-valid JSON form (a value is outside
    [0, 1]); mended, it keeps what the detector found, where leaving it out would lose
    the detection. What nothing mends is noted in ``invalid``, if given.
    """
    from .errors import InferenceError
    from .media.inferences import validate_or_mend

    kept = list(inferences)
    for index, inference in enumerate(inferences):
        try:
            kept[index], detail = validate_or_mend(inference, f"inferences[{index}]")
        except InferenceError as error:
            if invalid is not None:
                invalid.add(f"{frame}: {error}")
            continue  # to_json_lenient leaves it out and says why
        if detail:
            mended.add(f"{frame}: {detail}")
    return kept


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
            self.stream.flush()


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
        raise UsageError(f"{args.encoding} {args.format} {size[0]}x{size[1]}: {error}") from None


def _check_frame_fits(args: argparse.Namespace, fmt: VideoFormat) -> None:
    from .protocol.pixel_formats import PIXEL_LAYOUTS

    if args.transfer != "shm" or not fmt.is_raw:
        return
    frame = PIXEL_LAYOUTS[fmt.pixel_format].frame_bytes(fmt.width, fmt.height, fmt.stride_bytes)
    if frame > args.shm_size:
        raise UsageError(
            f"--shm-size {args.shm_size} bytes cannot hold one {fmt} frame ({frame} bytes)"
        )


def _first_frame(args: argparse.Namespace) -> tuple[SourceFrame, Iterator[SourceFrame]]:
    """The source's first frame (its size sets the format) and the rest."""
    from .sources import SourceError, open_source

    try:
        frames = iter(open_source(args.source, size=args.size, frames=args.frames, rate=args.rate))
        first = next(frames, None)
    except (SourceError, FileNotFoundError, ImportError) as error:
        raise UsageError(f"--source {args.source}: {error}") from None
    if first is None:
        raise UsageError(f"--source {args.source} has no frames")
    return first, frames


#: The signals that stop a command that sends: a terminal's Ctrl-C, a closed terminal,
#: and what ``timeout``, a container runtime or systemd send.
_STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Stopped(Exception):
    """A signal of ``_STOPS`` stopped the command, which cleaned up as on any exit."""

    def __init__(self, number: int) -> None:
        super().__init__(signal.Signals(number).name)
        self.number = number


async def _until_stopped(
    work: Callable[[], Awaitable[_T]],
) -> tuple[list[_T], Exception | None, int | None]:
    """Run ``work`` until it returns or fails, or until a signal of ``_STOPS`` cancels
    it: cancelled, it removes its shared-memory segments, which the signal's default
    action would leave behind. Returns its result (in a list: none if it did not
    return), its error and the signal, each if there was one.

    A signal that follows the first (GNU ``timeout`` signals the command, then its
    process group; an impatient Ctrl-C) is taken and ignored, here and after
    (``_ignore_stops``): the run is stopping already, and what it cleans up and writes
    on its way out must not be cut. Off the main thread no signal can be received:
    ``work`` just runs.
    """
    import anyio
    from anyio.abc import TaskStatus

    done: list[_T] = []
    failure: Exception | None = None
    received: int | None = None
    if threading.current_thread() is not threading.main_thread():
        try:
            done.append(await work())
        except Exception as error:
            failure = error
        return done, failure, received
    working = anyio.CancelScope()
    async with anyio.create_task_group() as tasks:

        async def watch(*, task_status: TaskStatus[None]) -> None:
            nonlocal received
            try:
                with anyio.open_signal_receiver(*_STOPS) as signals:
                    task_status.started()
                    async for number in signals:
                        if received is None:
                            received = number
                            working.cancel()
            finally:
                if received is not None:  # leaving the receiver put the defaults back
                    _ignore_stops()

        async def body() -> None:
            nonlocal failure
            try:
                with working:
                    done.append(await work())
            except Exception as error:  # given back as it is, not in a group
                failure = error
            finally:
                tasks.cancel_scope.cancel()  # the watch too

        await tasks.start(watch)
        tasks.start_soon(body)
    if received is not None and failure is not None:
        log.debug("the run failed as it stopped", exc_info=failure)
    return done, failure, received


def _ignore_stops() -> None:
    """From here on a stopping signal changes nothing: the run is stopping already."""
    for number in _STOPS:
        signal.signal(number, signal.SIG_IGN)


def _run_until_stopped(
    work: Callable[[], Awaitable[_T]],
) -> tuple[list[_T], Exception | None, int | None]:
    """``_until_stopped`` on an event loop of its own."""
    import anyio

    done, failure, received = anyio.run(_until_stopped, work)
    if received is not None:
        _ignore_stops()  # asyncio's runner put back its own SIGINT handler as it ended
    return done, failure, received


def _run_stoppable(work: Callable[[], Awaitable[_T]]) -> _T:
    """``work``'s result, on an event loop of its own; its error is raised as it is,
    and a stopping signal as ``_Stopped``."""
    done, failure, received = _run_until_stopped(work)
    if received is not None:
        raise _Stopped(received)
    if failure is not None:
        raise failure
    return done[0]


def _send(args: argparse.Namespace) -> int:

    from .errors import AvaprotoError
    from .media.images import load_pillow
    from .media.inference_json import to_json_lenient
    from .media.shared_memory import remove_stale_segments
    from .report import Report
    from .send import SendOptions, send_frames
    from .sources import SourceError, frame_count
    from .transport.limits import ConnectionLimits

    credentials = _credentials(args)
    tls = _client_tls(args)
    if args.size is not None:
        _check_frame_fits(args, _video_format(args, args.size))
    if args.encoding != "RAW" and args.format != "RGB24":  # RGB24: the default
        raise UsageError(
            f"--format {args.format} is a pixel format of RAW frames; --encoding "
            f"{args.encoding} samples carry their own"
        )
    if args.encoding != "RAW":
        try:
            load_pillow()
        except ImportError as error:
            raise UsageError(f"--encoding {args.encoding}: {error}") from None
    if args.transfer == "shm" and not os.path.isdir(args.shm_directory):
        raise UsageError(f"--shm-directory {args.shm_directory}: not a directory")
    remove_stale_segments(args.shm_directory)
    first, rest = _first_frame(args)
    height, width = first.rgb.shape[:2]
    fmt = _video_format(args, (width, height))
    _check_frame_fits(args, fmt)
    options = SendOptions(
        target=args.target,
        format=fmt,
        transfer=args.transfer,
        window=args.window,
        rate=args.rate if args.pace else None,
        pace=args.pace,
        configuration=args.config or "",
        credentials=credentials,
        tls=tls,
        shm_bytes=args.shm_size,
        shm_directory=args.shm_directory,
        shm_write=args.shm_write,
        shm_mode=args.shm_mode,
        connect_timeout=args.connect_timeout,
        descriptor_timeout=args.descriptor_timeout,
        ack_timeout=args.ack_timeout,
        limits=ConnectionLimits(
            frames_per_message=args.frames_per_message,
            max_control_frames=args.max_control_frames,
        ),
        max_answers_per_sample=args.max_answers_per_frame,
    )
    total = frame_count(args.source, frames=args.frames)
    log.info(
        "sending %s (%s frames) to %s as %s, %s transfer",
        args.source,
        total if total is not None else "unknown number of",
        args.target,
        fmt,
        args.transfer,
    )
    output = ResultsFile(args.output) if args.output else None
    summary = sys.stderr if args.output == "-" else sys.stdout
    progress = _Progress(sys.stderr, total)
    # What --output could not write as given, or (without it) what the answers held
    # that the inference rules refuse: a count and the first, for one warning each.
    if output is not None:
        left_out = _Omissions(
            "--output left out {count} inference(s) that have no schema-valid JSON form"
        )
        mended = _Omissions(
            "--output mended {count} inference(s) as the detector meant them",
            {
                "INF-4": "a box reaching outside the image cut to it",
                "INF-3": "a confidence below 0 read as none",
            },
        )
    else:
        left_out = _Omissions("the extension sent {count} invalid inference(s)")
        mended = _Omissions(
            "the extension sent {count} inference(s) that --output would mend as the detector "
            "meant them",
            {"INF-4": "a box reaching outside the image", "INF-3": "a confidence below 0"},
        )

    def on_result(result: Result) -> None:
        progress.step()
        number = result.acknowledged
        frame = f"sample {number}" if number is not None else "an answer acknowledging none"
        if output is None:
            if result.inferences:
                _mend(result.inferences, frame, mended, left_out)
        else:
            body, omitted = to_json_lenient(result.inferences)
            if omitted:  # what has one reading is mended and written (INF-3, INF-4)
                body, omitted = to_json_lenient(_mend(result.inferences, frame, mended))
            # The frame's own timestamp: many extensions leave the answer's at 0.
            stamp = result.sample_timestamp
            line = {
                "sequenceNumber": number,
                "timestamp": result.timestamp if stamp is None else stamp,
            }
            output.write({**line, **body})
            for reason in omitted:
                left_out.add(f"{frame}: {reason}")

    def chained() -> Iterator[SourceFrame]:
        yield first
        yield from rest

    report = Report()
    started = time.monotonic()
    try:
        _, failure, received = _run_until_stopped(
            lambda: send_frames(chained(), options, on_result=on_result, report=report)
        )
    except BaseException:
        if output is not None:
            output.keep_partial()
        raise
    finally:
        progress.close()
    if report.ended is None:  # the run never started sending
        report.started, report.ended = started, time.monotonic()

    if report.sent or received is not None:  # nothing to sum up when nothing was sent
        print(f"{fmt}, {args.transfer} transfer, to {args.target}", file=summary)
        for text in report.lines():
            print(text, file=summary)
    for omissions in (mended, left_out):
        if omissions.count:
            print(f"avaproto send: warning: {omissions}", file=sys.stderr)
    from .engine.outcome import the_error

    cause = None if failure is None else the_error(failure, (Exception,))
    if output is not None and output.reader_gone and cause is not None:
        cause = BrokenPipeError()
    if cause is None and received is None:
        if output is not None:
            output.commit()
        return 0 if report.answered == report.sent else 1
    where = f"; {output.keep_partial()}" if output is not None else ""
    if received is not None:
        name = signal.Signals(received).name
        print(f"avaproto send: stopped by {name}{where}", file=sys.stderr)
        return 128 + received
    assert cause is not None
    if not isinstance(cause, AvaprotoError | OSError | SourceError):
        raise cause
    if isinstance(cause, BrokenPipeError):  # --output - | head: the reader is done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to it
        cause = OSError("the output's reader went away (a broken pipe)")
    print(f"avaproto send: {cause}{where}", file=sys.stderr)
    said = str(cause)
    if args.transfer == "shm" and "permission denied" in said.lower() and _names_a_segment(said):
        print(f"avaproto send: hint: {_SEGMENT_DENIED.format(mode=args.shm_mode)}", file=sys.stderr)
    return 1


def _names_a_segment(text: str) -> bool:
    """Whether ``text`` names one of send's segments (``avaproto-PID-...``), not, say,
    the extension's own model file."""
    return re.search(r"(?<![\w.-])avaproto-\d+-[0-9a-f]+", text) is not None


#: Said when an extension fails on a shared-memory stream with "Permission denied".
_SEGMENT_DENIED = (
    "an extension of another user cannot open the segment (mode {mode:#o}): run both "
    "as one user, or give the segment to a group both are in, --shm-mode 640 for an "
    "extension that opens it read-only, 660 for one that opens it read-write as the "
    "published extensions do (SHM-9)"
)


#: The pipeline's deadlines: option, and what each bounds.
_DEADLINES = {
    "connect_timeout": ("--connect-timeout", "to connect: TCP, TLS and HTTP/2"),
    "descriptor_timeout": ("--descriptor-timeout", "for the extension's descriptor"),
    "ack_timeout": ("--ack-timeout", "for each frame's acknowledgement"),
}


def _client_options(
    parser: argparse.ArgumentParser, deadlines: dict[str, Any], tls_help: str
) -> None:
    """The deadlines (with their defaults) and the TLS options of a command that dials."""
    group = parser.add_argument_group("deadlines (SECONDS; 0 or 'none' waits forever)")
    for name, default in deadlines.items():
        option, what = _DEADLINES[name]
        group.add_argument(
            option,
            type=_timeout,
            default=default,
            metavar="SECONDS",
            help=f"time to wait {what} (default: {_seconds(default)})",
        )
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls", action="store_true", help=tls_help)
    tls.add_argument(
        "--tls-ca", type=Path, metavar="FILE", help="trust this CA, PEM (default: the system's)"
    )
    tls.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="present this client certificate chain, PEM: mutual TLS (default: none)",
    )
    tls.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="its private key, PEM (default: none)"
    )


def _add_send(commands: Any) -> None:
    from .client import Transfer
    from .messages import Encoding
    from .protocol.pixel_formats import PIXEL_LAYOUTS
    from .send import SendOptions
    from .sources import DEFAULT_RATE, SYNTHETIC_FRAMES, SYNTHETIC_SIZE

    parser = commands.add_parser(
        "send",
        help="send frames to an extension, as a pipeline would",
        description=(
            "Send every frame of a source to the extension at TARGET (host:port), print "
            "a summary, and optionally write one JSON line per acknowledged frame. "
            "SIGTERM, Ctrl-C or a closed terminal (SIGHUP) stops the run, removes its "
            "shared memory and prints the summary so far (exit status 143, 130 or 129)."
        ),
    )
    parser.add_argument("target", type=_target, metavar="TARGET", help="host:port of the extension")
    parser.add_argument(
        "--source",
        default="synthetic",
        help="a video file, an image file, or 'synthetic': moving shapes (default: %(default)s)",
    )
    parser.add_argument(
        "--frames",
        type=_positive(int),
        metavar="N",
        help=f"send at most N frames (default: all; synthetic: {SYNTHETIC_FRAMES}; an image: 1)",
    )
    parser.add_argument(
        "--size",
        type=_size,
        metavar="WxH",
        help="resize frames (default: the source's size; synthetic: "
        f"{SYNTHETIC_SIZE[0]}x{SYNTHETIC_SIZE[1]})",
    )
    parser.add_argument(
        "--rate",
        type=_positive(float),
        metavar="FPS",
        help="frame rate of image and synthetic sources, and with --pace the rate to send "
        f"any source at (default: {DEFAULT_RATE:g}; a video: its own timing)",
    )
    parser.add_argument(
        "--pace",
        action="store_true",
        help="send in real time: at --rate, or at the source's own timestamps "
        "(default: off, as fast as the window allows)",
    )
    parser.add_argument(
        "--window",
        type=_positive(int),
        default=_default(SendOptions, "window"),
        metavar="N",
        help="frames awaiting acknowledgement at once (default: %(default)s)",
    )
    parser.add_argument(
        "--config",
        metavar="TEXT",
        help="extension_configuration to send, often JSON (default: none)",
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="write one JSON object per acknowledged frame (JSON lines), or '-' for stdout "
        "(the summary then goes to stderr); a failed run keeps the existing file and writes "
        "what was acknowledged to FILE.partial (default: none)",
    )
    media = parser.add_argument_group("media format")
    media.add_argument(
        "--encoding",
        type=str.upper,  # rgb24 as check --formats takes it
        choices=[encoding.name for encoding in Encoding],
        default="RAW",
        help="how frames are encoded; JPG, PNG and BMP need avaproto[image] (default: %(default)s)",
    )
    media.add_argument(
        "--format",
        type=str.upper,  # rgb24 as check --formats takes it
        choices=[pixel_format.name for pixel_format in PIXEL_LAYOUTS],
        default="RGB24",
        help="pixel format of RAW frames (default: %(default)s)",
    )
    media.add_argument(
        "--stride",
        type=_not_negative,
        default=0,
        metavar="BYTES",
        help="row pitch of RAW frames, for padded rows (default: 0, packed rows)",
    )
    shm = parser.add_argument_group("transfer")
    shm.add_argument(
        "--transfer",
        choices=get_args(Transfer),
        default=_default(SendOptions, "transfer"),
        help="frames inside the messages, or through a shared-memory segment "
        "(default: %(default)s)",
    )
    default_shm = _default(SendOptions, "shm_bytes")
    shm.add_argument(
        "--shm-size",
        type=byte_size,
        default=default_shm,
        metavar="SIZE",
        help="size of the shared-memory segment, in bytes or with a unit: 75MiB, 100M (MiB), "
        f"64MB (10^6) (default: {default_shm // (1 << 20)} MiB, the protocol's)",
    )
    shm.add_argument(
        "--shm-directory",
        default=_default(SendOptions, "shm_directory"),
        metavar="DIR",
        help="where the segment is made; stale segments of senders that died are removed "
        "from it at start (default: %(default)s)",
    )
    _shm_write_option(shm, _default(SendOptions, "shm_write"))
    limits = parser.add_argument_group(
        "limits on what the extension may make the pipeline hold",
        "Past one the connection ends and the run with a status naming it (PIPE-8, PIPE-10).",
    )
    limits.add_argument(
        "--max-answers-per-frame",
        type=_positive(int),
        default=_default(SendOptions, "max_answers_per_sample"),
        metavar="N",
        help="answers that acknowledge no frame (the extension's own inferences, written "
        "to --output too) taken per frame sent (default: %(default)s)",
    )
    _limit_option(
        limits,
        "--frames-per-message",
        _not_negative,
        "N",
        "DATA frames an answer may take beyond two per 16 KiB of its length (two at least)",
    )
    _limit_option(
        limits,
        "--max-control-frames",
        _positive(int),
        "N",
        "acknowledgements (PING, SETTINGS) queued for an extension that reads none",
    )
    _client_options(
        parser,
        {name: _default(SendOptions, name) for name in _DEADLINES},
        "connect over TLS, trusting the system's CAs; the certificate must name TARGET's "
        "host (default: off; implied by the options below)",
    )
    _credential_options(parser)
    _verbosity_option(parser, "sub_verbose")
    parser.set_defaults(run=_send, parser=parser)


# --- demo ----------------------------------------------------------------------------

DEMO_FRAMES = 90
DEMO_TRANSFER = "shm"


def _demo(args: argparse.Namespace) -> int:

    from .demo import run_demo
    from .media.shared_memory import DEFAULT_DIRECTORY, remove_stale_segments
    from .sources import SourceError

    if args.source is not None and args.source != "synthetic" and not Path(args.source).is_file():
        raise UsageError(f"--source {args.source}: no such file")
    remove_stale_segments(DEFAULT_DIRECTORY)
    try:
        status: int = _run_stoppable(
            lambda: run_demo(args.source, frames=args.frames, transfer=args.transfer)
        )
    except (SourceError, ImportError) as error:
        raise UsageError(f"--source {args.source}: {error}") from None
    return status


def _add_demo(commands: Any) -> None:
    from .client import Transfer

    parser = commands.add_parser(
        "demo",
        help="serve the motion extension and send it a clip",
        description=(
            "Start the motion extension on a free local port, send it a short clip "
            "(encoded on the fly, or --source FILE), print the motion it reports and a "
            "summary."
        ),
    )
    parser.add_argument(
        "--source", help="a video or image file (default: a generated clip of moving shapes)"
    )
    parser.add_argument(
        "--frames",
        type=_positive(int),
        default=DEMO_FRAMES,
        metavar="N",
        help="frames to send (default: %(default)s)",
    )
    parser.add_argument(
        "--transfer",
        choices=get_args(Transfer),
        default=DEMO_TRANSFER,
        help="frames inside the messages or through shared memory (default: %(default)s)",
    )
    _verbosity_option(parser, "sub_verbose")
    parser.set_defaults(run=_demo, parser=parser)


# --- bench ---------------------------------------------------------------------------


def _segment_mode(text: str) -> int:
    from .media.shared_memory import check_segment_mode

    try:
        mode = int(text.removeprefix("0o"), 8)
        check_segment_mode(mode)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: 600 (the owner only), 640 (and its group, read-only), 644 (and "
            "anyone, read-only) or 660 (and its group, read-write)"
        ) from None
    return mode


def _shm_mode_option(parser: Any) -> None:
    from .media.shared_memory import SEGMENT_MODE

    parser.add_argument(
        "--shm-mode",
        type=_segment_mode,
        default=SEGMENT_MODE,
        metavar="MODE",
        help="the segment's permissions, in octal: 600, only this user can open it; 640 "
        "or 644 let an extension running as another user of this user's group, or any "
        "user, read it; 660 lets one of the group open it read-write, as the published "
        "extensions do (open 'r+b'), warned of: the group may then change frames; no "
        "mode lets anyone else write it (default: 600)",
    )


def _shm_write_option(parser: Any, default: str) -> None:
    from .media.shared_memory import WRITE_MODES

    _shm_mode_option(parser)

    parser.add_argument(
        "--shm-write",
        choices=WRITE_MODES,
        default=default,
        help="how frames go into the shared-memory segment: pwrite, which an extension "
        "that shrinks the segment cannot turn into a crash, or map, through a mapping as "
        "most pipelines write (a third of the copy's cost), for an extension you trust "
        "not to (default: %(default)s)",
    )


def _bench(args: argparse.Namespace) -> int:

    from .bench.drive import drive_target, format_drive_report

    _needs_pillow(args, [args.format])

    credentials = _credentials(args)
    tls = _client_tls(args)
    report = _run_stoppable(
        lambda: drive_target(
            args.target,
            transfer=args.transfer,
            size=args.size,
            frames=args.frames,
            window=args.window,
            rate=args.rate,
            streams=args.streams,
            pixel_format=args.format,
            configuration=args.config or "",
            credentials=credentials,
            tls=tls,
            connect_timeout=args.connect_timeout,
            descriptor_timeout=args.descriptor_timeout,
            ack_timeout=args.ack_timeout,
            shm_write=args.shm_write,
            shm_mode=args.shm_mode,
            rewrite_frames=args.rewrite_frames,
        )
    )
    print(format_drive_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if report["answered"] == report["frames"] else 1


def _add_bench(commands: Any) -> None:
    from .bench.drive import drive_target
    from .client import Transfer
    from .media.images import ENCODED
    from .protocol.pixel_formats import PIXEL_LAYOUTS

    parser = commands.add_parser(
        "bench",
        help="measure what an extension sustains",
        description=(
            "Drive the extension at TARGET as a pipeline would, with the same synthetic "
            "RAW frame over and over, and print the frames per second it answered and "
            "the latency of each frame (p50, p90, p99, max), from sending it to its "
            "acknowledgement. Connecting and the descriptors' exchange are not timed."
        ),
    )
    parser.add_argument("target", type=_target, metavar="TARGET", help="host:port of the extension")
    parser.add_argument(
        "--transfer",
        choices=get_args(Transfer),
        default=_parameter_default(drive_target, "transfer"),
        help="frames inside the messages or through shared memory (default: %(default)s)",
    )
    _shm_write_option(parser, _parameter_default(drive_target, "shm_write"))
    parser.add_argument(
        "--rewrite-frames",
        action="store_true",
        help="with shared memory, write every sample's frame into its slot (as "
        "--shm-write says), as a pipeline copying each decoded frame in does (default: "
        "each slot is written once and holds the frame, so the messages, not the "
        "copying, are measured)",
    )
    width, height = _parameter_default(drive_target, "size")
    parser.add_argument(
        "--size",
        type=_size,
        default=(width, height),
        metavar="WxH",
        help=f"frame size (default: {width}x{height})",
    )
    parser.add_argument(
        "--format",
        type=str.upper,  # rgb24 as check --formats takes it
        choices=[pixel_format.name for pixel_format in PIXEL_LAYOUTS] + list(ENCODED),
        default=_parameter_default(drive_target, "pixel_format"),
        help="pixel format of the RAW frames, or JPG, PNG or BMP for a test image so "
        "encoded, for an extension that takes only those, as most published ones "
        "(needs Pillow: pip install 'avaproto[image]') (default: %(default)s)",
    )
    parser.add_argument(
        "--frames",
        type=_positive(int),
        default=_parameter_default(drive_target, "frames"),
        metavar="N",
        help="frames per stream (default: %(default)s)",
    )
    parser.add_argument(
        "--window",
        type=_positive(int),
        default=_parameter_default(drive_target, "window"),
        metavar="N",
        help="frames awaiting acknowledgement at once, per stream (default: %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=_positive(float),
        metavar="FPS",
        help="send each stream at FPS (default: as fast as the window allows)",
    )
    parser.add_argument(
        "--streams",
        type=_positive(int),
        default=_parameter_default(drive_target, "streams"),
        metavar="N",
        help="streams at once, each on a connection of its own (default: %(default)s)",
    )
    parser.add_argument(
        "--config", metavar="TEXT", help="extension_configuration to send (default: none)"
    )
    parser.add_argument(
        "--json", metavar="FILE", help="also write the figures as JSON to FILE (default: none)"
    )
    _client_options(
        parser,
        {
            name: _parameter_default(drive_target, name)
            for name in ("connect_timeout", "descriptor_timeout", "ack_timeout")
        },
        "connect over TLS, trusting the system's CAs (default: off; implied below)",
    )
    _credential_options(parser)
    _verbosity_option(parser, "sub_verbose")
    parser.set_defaults(run=_bench, parser=parser)


# --- check ---------------------------------------------------------------------------


def _pixel_formats(text: str) -> tuple[str, ...]:
    from .media.images import ENCODED
    from .protocol.pixel_formats import PIXEL_LAYOUTS

    known = [str(pixel_format.name) for pixel_format in PIXEL_LAYOUTS] + list(ENCODED)
    chosen = tuple(dict.fromkeys(p.strip().upper() for p in text.split(",") if p.strip()))
    unknown = [name for name in chosen if name not in known]
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(
            f"expected pixel formats or encodings among {', '.join(known)} (comma-separated), "
            f"got {text!r}"
        )
    return chosen


def _rule_patterns(text: str) -> tuple[str, ...]:
    from .check import select

    patterns = tuple(p.strip() for p in text.split(",") if p.strip())
    try:
        select(patterns or (text,))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return patterns


def _needs_pillow(args: argparse.Namespace, formats: Sequence[str]) -> None:
    """An encoded format asked for without Pillow: a usage error now, not a failure of
    every stream later."""
    from .media.images import ENCODED, load_pillow

    if any(name in ENCODED for name in formats):
        try:
            load_pillow()
        except ImportError as error:
            args.parser.error(str(error))


def _check(args: argparse.Namespace) -> int:

    from .check import CheckAborted, CheckOptions, run_check
    from .media.shared_memory import remove_stale_segments

    _needs_pillow(args, args.formats)

    options = CheckOptions(
        formats=args.formats,
        size=args.size,
        shm=not args.no_shm,
        shm_directory=args.shm_directory,
        shm_mode=args.shm_mode,
        timeout=args.timeout,
        credentials=_credentials(args),
        tls=_client_tls(args),
        configuration=args.config or "",
    )
    if options.shm:
        if not Path(args.shm_directory).is_dir():
            raise UsageError(
                f"--shm-directory {args.shm_directory}: no such directory (--no-shm leaves "
                "shared memory out)"
            )
        remove_stale_segments(args.shm_directory)
    try:
        report = _run_stoppable(lambda: run_check(args.target, options, rules=args.rules))
    except CheckAborted as error:
        print(f"avaproto check: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print("\n".join(report.lines(verbose=args.verbose + args.sub_verbose > 0)))
    return 1 if report.failed else 0


def _add_check(commands: Any) -> None:
    from .check import DEFAULT_FORMATS, DEFAULT_TIMEOUT, CheckOptions

    parser = commands.add_parser(
        "check",
        help="check an extension against the protocol's rules",
        description=(
            "Drive the extension at TARGET (host:port) through the rules of spec/: "
            "healthy streams in both transfer modes and several pixel formats, then "
            "violations it must refuse with the status each rule names. Prints one line "
            "per rule (PASS, FAIL, WARN: a deviation the spec tolerates, SKIP: not "
            "probed in this run) and a summary. Exit status 1 if any rule FAILs."
        ),
    )
    parser.add_argument("target", type=_target, metavar="TARGET", help="host:port of the extension")
    parser.add_argument(
        "--formats",
        type=_pixel_formats,
        default=DEFAULT_FORMATS,
        metavar="LIST",
        help="pixel formats of the healthy streams' RAW frames, or JPG, PNG, BMP for test "
        "images so encoded (an extension that takes only those, as most published ones; "
        "needs Pillow), comma-separated; the first is used by the other probes (default: "
        f"{','.join(DEFAULT_FORMATS).lower()})",
    )
    width, height = _default(CheckOptions, "size")
    parser.add_argument(
        "--size",
        type=_size,
        default=(width, height),
        metavar="WxH",
        help="the frames' size, for an extension that takes one size only (default: "
        f"{width}x{height})",
    )
    parser.add_argument(
        "--rules",
        type=_rule_patterns,
        default=(),
        metavar="GLOBS",
        help="check only these rules, comma-separated ids or globs like SHM-*,DESC-1 "
        "(default: all)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="time each probe may take, connecting included; past it the probe FAILs "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--config",
        metavar="TEXT",
        help="extension_configuration every probe sends, for an extension that needs one "
        '(CFG-1\'s probe sends "{}") (default: none)',
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the report as JSON: each rule's level, outcome and detail, a summary, "
        "and the rules out of reach with why (default: one line per rule)",
    )
    shm = parser.add_argument_group("shared memory")
    shm.add_argument(
        "--no-shm",
        action="store_true",
        help="leave shared memory out, for a target on another host (default: probe it)",
    )
    shm.add_argument(
        "--shm-directory",
        default=_default(CheckOptions, "shm_directory"),
        metavar="DIR",
        help="where the probes' segments are made (default: %(default)s)",
    )
    _shm_mode_option(shm)
    _client_options(
        parser,
        {},
        "connect over TLS, trusting the system's CAs; the certificate must name TARGET's "
        "host (default: off; implied by the options below)",
    )
    _credential_options(parser)
    _verbosity_option(parser, "sub_verbose")
    parser.set_defaults(run=_check, parser=parser)


# --- the parser ----------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, naming the command and where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="avaproto",
        description=(
            "The gRPC extension protocol of video analytics pipelines "
            "(MediaGraphExtension/ProcessMediaStream): serve an AI extension, or drive "
            "one as the pipeline would."
        ),
    )
    parser.add_argument("--version", action="version", version=f"avaproto {__version__}")
    _verbosity_option(parser, "verbose")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve(commands)
    _add_send(commands)
    _add_demo(commands)
    _add_bench(commands)
    _add_check(commands)
    _add_diagram(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command they were given to, whose --help lists its own
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    configure_logging(args.verbose + args.sub_verbose, narrate=args.command == "serve")
    from .allocator import keep_large_buffers

    keep_large_buffers()  # frame-sized buffers from the heap, not fresh pages each
    run: Command = args.run
    # A stopped run ignores the stopping signals until it is out (``_ignore_stops``):
    # a program that called main gets its own handlers back.
    handlers = (
        {number: signal.getsignal(number) for number in _STOPS}
        if threading.current_thread() is threading.main_thread()
        else {}
    )
    try:
        return run(args)
    except UsageError as error:
        print(f"{args.parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{args.parser.prog}: stopped by SIGINT", file=sys.stderr)  # as send says it
        return 130
    except _Stopped as stopped:
        print(f"{args.parser.prog}: stopped by {stopped}", file=sys.stderr)
        return 128 + stopped.number
    except Exception as error:  # one line for the errors a person can act on
        from .errors import AvaprotoError

        if isinstance(error, AvaprotoError | OSError):
            print(f"avaproto {args.command}: {error}", file=sys.stderr)
            return 1
        raise
    finally:
        for number, handler in handlers.items():
            if handler is not None and signal.getsignal(number) is not handler:
                signal.signal(number, handler)


if __name__ == "__main__":
    sys.exit(main())
