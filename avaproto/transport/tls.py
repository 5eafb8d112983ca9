"""TLS for both ends of a stream (TLS rules): contexts, the name check, diagnostics.

The protocol's pipeline could not skip certificate checks (its ``IgnoreHostname`` and
``IgnoreSignature`` options are "not supported by gRPC"), so neither can avaproto's
client: it always verifies the chain and that the certificate names the host it
dialled, exactly. There is deliberately no option to turn that off; to test against a
private CA, pass the CA.

The name check is avaproto's own, not OpenSSL's (TLS-2). The protocol asks for a
certificate whose Common Name is exactly the address or host name of the endpoint, and
extensions are deployed with such certificates: ``CN=10.0.0.5`` and no subjectAltName.
OpenSSL, through Python's ``check_hostname``, never compares an IP address with the
Common Name, so it refuses them. The client's context therefore leaves
``check_hostname`` off and checks names itself, right after the handshake and before a
byte of application data moves (``_NameCheckingObject``, ``_NameCheckingSocket``):
subjectAltName DNS and IP entries when there are any (RFC 6125), else the Common Name,
exactly.

A TLS failure is also explained rather than reported raw: the extension logs each
failed handshake with the peer's address and a reason (``DiagnosedServerTLS``; asyncio
reports them only in debug mode), and ``explain_connection_failure`` turns what the
pipeline sees into the likely fix (plaintext against TLS, the other way round, an
unknown authority, a name the certificate does not give).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import ssl
from asyncio import sslproto
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any

from grpclib.exceptions import StreamTerminatedError

from ..errors import AvaprotoError
from .addresses import UNKNOWN, peer_address

StrPath = str | PathLike[str]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

log = logging.getLogger("avaproto.server")

#: gRPC runs over HTTP/2, negotiated with ALPN.
ALPN = ["h2"]

#: What every HTTP/2 client sends first on a plaintext connection (RFC 9113, 3.4).
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# OpenSSL's codes for a name mismatch, which ``SSLCertVerificationError`` carries.
_X509_V_ERR_HOSTNAME_MISMATCH = 62
_X509_V_ERR_IP_ADDRESS_MISMATCH = 64


# --- files ---------------------------------------------------------------------------


class TLSFileError(AvaprotoError, OSError):
    """A certificate, key or CA file that cannot be read or loaded; the message names it."""


def readable_file(path: StrPath, what: str) -> str:
    """``path`` as a string if it is a readable regular file, else ``TLSFileError``.

    ``ssl`` reports a missing file as a bare "[Errno 2] No such file or directory", and
    one that is not PEM as "[SSL] PEM lib": neither says which file, which matters
    with three of them on a command line.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise TLSFileError(f"{what} file {name}: no such file")
    if not os.path.isfile(name):
        raise TLSFileError(f"{what} file {name}: not a regular file")
    if not os.access(name, os.R_OK):
        raise TLSFileError(f"{what} file {name}: not readable (permission denied)")
    return name


def _load_chain(context: ssl.SSLContext, certificate: StrPath, key: StrPath | None) -> None:
    cert_file = readable_file(certificate, "TLS certificate")
    key_file = readable_file(key, "TLS key") if key is not None else None
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as error:
        pair = f"{cert_file} and key {key_file}" if key_file else cert_file
        raise TLSFileError(
            f"cannot load the TLS certificate {pair} ({error.reason or error}): both must "
            "be PEM, and the key must be the certificate's"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: StrPath, what: str) -> None:
    ca_file = readable_file(ca, what)
    try:
        context.load_verify_locations(ca_file)
    except ssl.SSLError as error:
        raise TLSFileError(
            f"{what} file {ca_file}: no PEM certificate in it ({error.reason or error})"
        ) from None


# --- contexts ------------------------------------------------------------------------


def server_context(
    certificate: StrPath, key: StrPath, *, client_ca: StrPath | None = None
) -> ssl.SSLContext:
    """The extension's context: its certificate chain and key; mutual TLS with ``client_ca``.

    Raises ``TLSFileError`` naming the file that is missing, unreadable or not PEM.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, certificate, key)
    if client_ca is not None:
        _load_ca(context, client_ca, "TLS client CA")
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(ALPN)
    return context


def client_context(
    *,
    ca: StrPath | None = None,
    certificate: StrPath | None = None,
    key: StrPath | None = None,
) -> ssl.SSLContext:
    """The pipeline's context: verifies the chain (system roots, or ``ca``) and the name.

    ``certificate`` and ``key`` present a client certificate for mutual TLS. Raises
    ``TLSFileError`` naming the file that is missing, unreadable or not PEM.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca is not None:
        _load_ca(context, ca, "TLS CA")
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certificate is not None:
        _load_chain(context, certificate, key)
    context.set_alpn_protocols(ALPN)
    context.verify_mode = ssl.CERT_REQUIRED
    # OpenSSL's name check ignores the Common Name of IP addresses; ours replaces it
    # (TLS-2) and runs in every handshake the context makes, for sockets and for the
    # memory BIOs asyncio and anyio use.
    context.check_hostname = False
    context.sslobject_class = _NameCheckingObject
    context.sslsocket_class = _NameCheckingSocket
    return context


# --- the name check (TLS-2) ----------------------------------------------------------


@dataclass(frozen=True)
class CertificateNames:
    """The names a certificate gives: subjectAltName DNS and IP entries, Common Names."""

    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    common_names: tuple[str, ...] = ()

    @classmethod
    def of(cls, certificate: Mapping[str, Any]) -> CertificateNames:
        """From ``getpeercert()``'s dictionary."""
        dns: list[str] = []
        ips: list[str] = []
        for kind, value in certificate.get("subjectAltName", ()):
            if kind == "DNS":
                dns.append(str(value))
            elif kind == "IP Address":
                ips.append(str(value).strip())
        common_names = [
            str(value)
            for rdn in certificate.get("subject", ())
            for key, value in rdn
            if key == "commonName"
        ]
        return cls(tuple(dns), tuple(ips), tuple(common_names))

    @property
    def has_alt_names(self) -> bool:
        return bool(self.dns or self.ips)

    def matches(self, host: str) -> bool:
        """Whether ``host`` (as dialled) is a name of the certificate.

        subjectAltName entries when there are any, else exactly the Common Name.
        """
        address = _as_address(host)
        if self.has_alt_names:
            if address is not None:
                return any(_as_address(ip) == address for ip in self.ips)
            return any(_dns_matches(pattern, host) for pattern in self.dns)
        if address is not None:
            return any(_as_address(cn) == address for cn in self.common_names)
        return any(_normalised(cn) == _normalised(host) for cn in self.common_names)

    def describe(self) -> str:
        """The names, as a person compares them with the host they dialled."""
        if self.has_alt_names:
            listed = [f"DNS:{name}" for name in self.dns] + [f"IP:{ip}" for ip in self.ips]
            return "subjectAltName " + ", ".join(listed)
        if self.common_names:
            return "Common Name " + ", ".join(repr(cn) for cn in self.common_names)
        return "no name at all (no subjectAltName, no Common Name)"


def _normalised(name: str) -> str:
    return name.lower().removesuffix(".")


def _as_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone does not count
    except ValueError:
        return None


def _dns_matches(pattern: str, host: str) -> bool:
    """RFC 6125, 6.4: case-insensitive; ``*`` only as the whole left-most label.

    A wildcard stands for exactly one non-empty label and needs two labels after it
    (``*.example.com``, never ``*.com``); partial wildcards (``f*.example.com``) match
    nothing, as in OpenSSL with Python's flags.
    """
    pattern_labels = _normalised(pattern).split(".")
    host_labels = _normalised(host).split(".")
    if pattern_labels[0] != "*":
        return "*" not in pattern and pattern_labels == host_labels
    rest = pattern_labels[1:]
    if len(rest) < 2 or "*" in ".".join(rest) or len(host_labels) != len(pattern_labels):
        return False
    return host_labels[0] != "" and host_labels[1:] == rest


class CertificateNameMismatch(ssl.SSLCertVerificationError):
    """The extension's certificate does not name the host dialled (TLS-2)."""

    def __init__(self, host: str | None, names: CertificateNames) -> None:
        self.host = host
        self.names = names
        if host is None:
            message = (
                "[TLS-2] no host name to check the extension's certificate against: "
                "connect with the host name or address of the endpoint"
            )
        elif names.has_alt_names:
            message = (
                f"[TLS-2] the extension's certificate gives {names.describe()}, "
                f"not {host!r}, the host dialled"
            )
            if CertificateNames(common_names=names.common_names).matches(host):
                message += " (its Common Name does not count: subjectAltName takes precedence)"
        else:
            message = (
                f"[TLS-2] the extension's certificate has no subjectAltName and its "
                f"{names.describe()} is not exactly {host!r}, the host dialled"
            )
        super().__init__(1, message)
        self.library = "SSL"
        self.reason = "CERTIFICATE_VERIFY_FAILED"
        if host is not None and _as_address(host) is not None:
            self.verify_code = _X509_V_ERR_IP_ADDRESS_MISMATCH
            self.verify_message = "IP address mismatch"
        else:
            self.verify_code = _X509_V_ERR_HOSTNAME_MISMATCH
            self.verify_message = "Hostname mismatch"

    def __reduce__(
        self,
    ) -> tuple[type[CertificateNameMismatch], tuple[str | None, CertificateNames]]:
        return (type(self), (self.host, self.names))

    def hint(self) -> str:
        if self.host is None:
            return "give the host name or address the certificate names"
        return (
            f"dial the extension by a name its certificate gives, or give the extension a "
            f"certificate for {self.host!r} (the protocol requires an exact match)"
        )


def check_certificate_name(certificate: Mapping[str, Any] | None, host: str | None) -> None:
    """Raise ``CertificateNameMismatch`` unless ``certificate`` names ``host`` (TLS-2)."""
    names = CertificateNames.of(certificate or {})
    if host is None or not names.matches(host):
        raise CertificateNameMismatch(host, names)


class _NameCheckingObject(ssl.SSLObject):
    """An ``SSLObject`` (asyncio, anyio) that checks the peer's names after its handshake.

    Raising ``SSLCertVerificationError`` from ``do_handshake`` is what OpenSSL's own
    check does: asyncio fails the connection before its protocol sees the transport.
    Reads and writes finish the handshake, and so the check, first: OpenSSL would
    otherwise complete a handshake inside them, unchecked.
    """

    _names_checked = False

    def do_handshake(self) -> None:
        super().do_handshake()
        check_certificate_name(self.getpeercert(), self.server_hostname)
        self._names_checked = True

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        if not self._names_checked:
            self.do_handshake()
        return super().read(len, buffer)

    def write(self, data: Any) -> int:
        if not self._names_checked:
            self.do_handshake()
        return super().write(data)


class _NameCheckingSocket(ssl.SSLSocket):
    """The same check for ``SSLSocket`` (``context.wrap_socket``); ``recv`` and
    ``sendall`` go through ``read`` and ``send``."""

    _names_checked = False

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        check_certificate_name(self.getpeercert(), self.server_hostname)
        self._names_checked = True

    def _check_first(self) -> None:
        if not self._names_checked and getattr(self, "_sslobj", None) is not None:
            self.do_handshake()

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        self._check_first()
        return super().read(len, buffer)

    def write(self, data: Any) -> int:
        self._check_first()
        return super().write(data)

    def send(self, data: Any, flags: int = 0) -> int:
        self._check_first()
        return super().send(data, flags)


# --- the extension's side: failed handshakes, logged ---------------------------------


def describe_handshake_failure(error: BaseException | None, first_bytes: bytes) -> str:
    """Why a client's handshake failed, from the error and the first bytes it sent."""
    if first_bytes and first_bytes[0] != 0x16:  # not a TLS handshake record
        if HTTP2_PREFACE.startswith(first_bytes[:24]):
            return (
                "it sent the HTTP/2 preface unencrypted: the client speaks plaintext; it needs TLS"
            )
        if first_bytes.split(b" ", 1)[0] in (b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS"):
            return "it sent a plaintext HTTP/1 request: the client needs TLS"
        return f"it does not speak TLS (its first bytes: {first_bytes[:8].hex(' ')})"
    if isinstance(error, ssl.SSLError):
        reason = (error.reason or "").upper()
        text = (error.reason or str(error)).lower().replace("_", " ")
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return (
                "the client presented no certificate, and this extension requires one "
                "(mutual TLS, TLS-3)"
            )
        if reason == "CERTIFICATE_VERIFY_FAILED":
            why = getattr(error, "verify_message", "") or text
            return f"the client's certificate failed verification ({why}) (mutual TLS, TLS-3)"
        if reason in (
            "TLSV1_ALERT_UNKNOWN_CA",
            "SSLV3_ALERT_BAD_CERTIFICATE",
            "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        ):
            return (
                f"the client refused this extension's certificate ({text}): give it the CA "
                "that signed it, and dial a name the certificate gives"
            )
        return text
    if error is None or isinstance(error, ConnectionResetError | BrokenPipeError):
        return (
            "the client closed the connection during the handshake (as a client does that "
            "does not trust this certificate, or does not find the host it dialled in it)"
        )
    return str(error) or type(error).__name__


class DiagnosedServerTLS(sslproto.SSLProtocol):
    """asyncio's server-side TLS for one connection, logging the handshake if it fails.

    asyncio drops a failed server handshake silently (it reports it only in debug
    mode), so a pipeline speaking plaintext, or refusing the certificate, leaves no
    trace at the extension. This logs one WARNING per failed handshake, naming the
    peer and the reason; a connection closed before sending a byte (a port probe) is
    logged at DEBUG. The alert OpenSSL writes for a failed handshake is also sent
    before the connection closes, where asyncio would drop it: a client then learns
    why (``certificate required``) instead of seeing a reset.

    The app protocol is grpclib's, wrapped as ``loop.create_server(ssl=...)`` would
    wrap it (see ``avaproto.transport.http2.tune_server``).
    """

    _FIRST_BYTES = len(HTTP2_PREFACE)

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        app_protocol: asyncio.BaseProtocol,
        context: ssl.SSLContext,
    ) -> None:
        # No waiter: nobody awaits this handshake (asyncio checks for None).
        super().__init__(loop, app_protocol, context, None, server_side=True)  # type: ignore[arg-type]
        self._peer = UNKNOWN
        self._first = b""
        self._receiving: Any = None
        self._handshake_done = False
        self._handshake_error: BaseException | None = None
        self._reported = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._peer = peer_address(transport.get_extra_info("peername"))
        super().connection_made(transport)

    def get_buffer(self, n: int) -> Any:
        buffer = super().get_buffer(n)
        self._receiving = buffer if len(self._first) < self._FIRST_BYTES else None
        return buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self._receiving is not None:
            wanted = self._FIRST_BYTES - len(self._first)
            self._first += bytes(self._receiving[: min(nbytes, wanted)])
            self._receiving = None
        super().buffer_updated(nbytes)

    def _on_handshake_complete(self, handshake_exc: Any) -> None:
        if handshake_exc is None:
            self._handshake_done = True
        else:
            self._handshake_error = (
                handshake_exc() if isinstance(handshake_exc, type) else handshake_exc
            )
            with contextlib.suppress(Exception):  # the connection is failing anyway
                self._process_outgoing()  # type: ignore[attr-defined]  # the alert, if any
        super()._on_handshake_complete(handshake_exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._handshake_done and not self._reported:
            self._reported = True
            error = self._handshake_error or exc
            if not self._first and not isinstance(error, ssl.SSLError):
                log.debug("%s closed the connection before a TLS handshake", self._peer)
            else:
                log.warning(
                    "TLS handshake with %s failed: %s",
                    self._peer,
                    describe_handshake_failure(error, self._first),
                )
        super().connection_lost(exc)


# --- the pipeline's side: what a failed connection means -----------------------------

_NOT_TLS_REASONS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "RECORD_LAYER_FAILURE",
        "PACKET_LENGTH_TOO_LONG",
        "UNKNOWN_PROTOCOL",
        "RECORD_LENGTH_MISMATCH",
        "HTTP_REQUEST",
    }
)
_UNKNOWN_AUTHORITY = frozenset({18, 19, 20, 21})  # self-signed, unknown issuer, unverifiable


def explain_connection_failure(error: BaseException, *, tls: bool) -> str | None:
    """A hint for a connection that failed before the extension answered, or None.

    ``error`` is what grpclib raised: an ``ssl.SSLError`` from the handshake, an
    ``OSError`` or ``StreamTerminatedError`` ("Connection lost") when the extension
    closed the connection. ``tls`` says whether the pipeline used TLS. A closed
    connection is only a hint of a TLS mismatch when nothing had been answered on it.
    """
    if isinstance(error, CertificateNameMismatch):
        return error.hint()
    if isinstance(error, ssl.SSLCertVerificationError):
        code = getattr(error, "verify_code", None)
        why = getattr(error, "verify_message", None) or str(error)
        if code in _UNKNOWN_AUTHORITY:
            return (
                f"the extension's certificate is not signed by an authority this client "
                f"trusts ({why}): pass the CA that signed it with --tls-ca FILE"
            )
        return f"the extension's certificate failed verification ({why}) (TLS-2)"
    if isinstance(error, ssl.SSLError):
        reason = (error.reason or "").upper()
        if reason in _NOT_TLS_REASONS:
            return "the server does not seem to speak TLS; drop --tls"
        if reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED":
            return (
                "the extension requires a client certificate (mutual TLS): give one with "
                "--tls-cert FILE --tls-key FILE"
            )
        if reason in ("TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE"):
            return "the extension does not trust this client's certificate (mutual TLS)"
        if isinstance(error, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
            return _CLOSED_DURING_TLS
        return None
    if _closed_connection(error):
        return closed_at_once(tls=tls)
    return None


def closed_at_once(*, tls: bool) -> str:
    """The hint for a connection the extension closed before it answered anything."""
    return (
        _CLOSED_DURING_TLS
        if tls
        else "the server may require TLS: use --tls (or --tls-ca FILE); or it refuses "
        "connections past a limit of its own (its log says which)"
    )


_CLOSED_DURING_TLS = (
    "the extension closed the connection during or right after the TLS handshake: it may "
    "not speak TLS (then drop --tls), or require a client certificate (--tls-cert FILE "
    "--tls-key FILE), or not trust the one given, or refuse connections past a limit of "
    "its own (its log says which)"
)


def _closed_connection(error: BaseException) -> bool:
    if isinstance(error, ConnectionResetError | BrokenPipeError | asyncio.IncompleteReadError):
        return True
    return isinstance(error, StreamTerminatedError) and "connection lost" in str(error).lower()
