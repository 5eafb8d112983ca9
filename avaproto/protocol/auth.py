"""Client authentication: the ``x-ms-authentication`` header (AUTH rules).

The pipeline sends ``x-ms-authentication: Basic base64(username:password)``, mimicking
HTTP Basic authentication; validating it is the extension's job. The check is sans-IO
(header values in, an error or nothing out) so that every transport applies it the same
way, before reading a single message of the stream.

Credentials never appear in an error message or a log line: errors say *what* was
wrong with the header (missing, malformed, not matching), never what it contained.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import RemoteProtocolError
from ..status import Status

#: The request metadata key of the protocol (gRPC metadata keys are lower case).
AUTH_HEADER = "x-ms-authentication"
_SCHEME = "basic"


@dataclass(frozen=True)
class Credentials:
    """A username and password, as configured on the pipeline's extension node."""

    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        # HTTP Basic joins them with the first ':'; a ':' in the username cannot round-trip.
        if ":" in self.username:
            raise ValueError("a username for Basic authentication cannot contain ':'")

    def header_value(self) -> str:
        """The header value the pipeline sends (AUTH-2)."""
        token = f"{self.username}:{self.password}".encode()
        return f"Basic {base64.b64encode(token).decode('ascii')}"

    def metadata(self) -> tuple[tuple[str, str]]:
        """Request metadata carrying these credentials."""
        return ((AUTH_HEADER, self.header_value()),)


def _refuse(reason: str) -> RemoteProtocolError:
    return RemoteProtocolError("AUTH-3", Status.UNAUTHENTICATED, reason)


def parse_header(value: str) -> Credentials:
    """Read ``Basic base64(username:password)``; raise AUTH-3 when it is not that shape."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != _SCHEME or not token:
        raise _refuse(f"{AUTH_HEADER} must be 'Basic ' and the base64 of username:password")
    token = token.strip()
    # Encoders that leave out the padding are common (JSON-5 reads such base64 too);
    # the text without it is unambiguous, so it is put back before decoding.
    token += "=" * (-len(token) % 4) if len(token) % 4 != 1 else ""
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _refuse(f"{AUTH_HEADER} does not hold base64 of UTF-8 text") from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise _refuse(f"{AUTH_HEADER} does not hold 'username:password'")
    return Credentials(username, password)


def check_authentication(values: Sequence[str], expected: Credentials | None) -> None:
    """Accept the request's ``x-ms-authentication`` values, or raise AUTH-3 (UNAUTHENTICATED).

    With ``expected`` None, authentication is off and any header is ignored. Otherwise
    exactly one header must be present and match; the comparison takes the same time
    however much of it matches, so timing reveals nothing of the password.
    """
    if expected is None:
        return
    if not values:
        raise _refuse(f"missing {AUTH_HEADER} header; this extension requires credentials")
    if len(values) > 1:
        raise _refuse(f"{len(values)} {AUTH_HEADER} headers; expected exactly one")
    presented = parse_header(values[0])
    same_user = hmac.compare_digest(presented.username.encode(), expected.username.encode())
    same_password = hmac.compare_digest(presented.password.encode(), expected.password.encode())
    if not (same_user and same_password):
        raise _refuse("wrong username or password")
