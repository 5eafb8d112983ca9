"""Spec section 9, Using gRPC over TLS: the contexts each side builds, tried in real TLS
handshakes on loopback ports (bare, and through the extension's gRPC server) with
certificates made for the test (trustme, and cryptography for the shapes trustme does
not make: a Common Name without subjectAltName)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import inspect
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import grpclib.client
import grpclib.const
import pytest
import trustme
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSAttribute, TLSStream
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from avaproto.client import connect
from avaproto.errors import StreamFailed
from avaproto.messages import METHOD_PATH, MediaStreamMessage
from avaproto.server import running
from avaproto.status import Status
from avaproto.transport.grpc_server import ExtensionServer, ServerConfig
from avaproto.transport.tls import (
    HTTP2_PREFACE,
    CertificateNameMismatch,
    CertificateNames,
    TLSFileError,
    check_certificate_name,
    client_context,
    explain_connection_failure,
    server_context,
)

pytestmark = pytest.mark.anyio
TIMEOUT = 10


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # grpclib runs on asyncio


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def files(tmp_path: Path, ca: trustme.CA) -> dict[str, Path]:
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("pipeline.test")
    other_ca = trustme.CA()
    paths = {
        "ca": tmp_path / "ca.pem",
        "other_ca": tmp_path / "other-ca.pem",
        "cert": tmp_path / "server.pem",
        "key": tmp_path / "server.key",
        "client_cert": tmp_path / "client.pem",
        "client_key": tmp_path / "client.key",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    other_ca.cert_pem.write_to_path(str(paths["other_ca"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    for blob in server.cert_chain_pems:
        blob.write_to_path(str(paths["cert"]), append=True)
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    for blob in client.cert_chain_pems:
        blob.write_to_path(str(paths["client_cert"]), append=True)
    return paths


@pytest.fixture
def issue(tmp_path: Path, ca: trustme.CA) -> Any:
    """``issue(cn, sans)``: a key and certificate signed by ``ca``, in one PEM file.

    ``sans`` None makes a certificate without a subjectAltName extension, the shape the
    protocol text describes (the Common Name is the endpoint's address).
    """
    ca_key: Any = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    count = 0

    def make(common_name: str | None, sans: Sequence[str] | None = None) -> Path:
        nonlocal count
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if sans is not None:
            names: list[x509.GeneralName] = []
            for name in sans:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    names.append(x509.DNSName(name))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        count += 1
        path = tmp_path / f"issued-{count}.pem"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            + cert.public_bytes(serialization.Encoding.PEM)
        )
        return path

    return make


async def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, hostname: str
) -> tuple[str | None, BaseException | None, BaseException | None]:
    """Connect, say hello both ways; return (client's ALPN, server's error, client's error)."""
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    alpn: str | None = None
    with anyio.fail_after(TIMEOUT):
        listener = (
            await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        ).listeners[0]
        port = listener.extra(SocketAttribute.local_port)

        async def serve() -> None:
            nonlocal server_error
            async with listener:
                raw = await listener.accept()
                try:
                    stream = await TLSStream.wrap(raw, server_side=True, ssl_context=server)
                    async with stream:
                        await stream.send(await stream.receive())
                except (ssl.SSLError, OSError, anyio.BrokenResourceError, anyio.EndOfStream) as e:
                    server_error = e
                    await raw.aclose()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(serve)
            try:
                stream = await anyio.connect_tcp(
                    "127.0.0.1", port, ssl_context=client, tls_hostname=hostname
                )
                async with stream:
                    alpn = stream.extra(TLSAttribute.alpn_protocol)
                    await stream.send(b"hello")
                    assert await stream.receive() == b"hello"
            except (ssl.SSLError, OSError, anyio.BrokenResourceError, anyio.EndOfStream) as e:
                client_error = e
    return alpn, server_error, client_error


@asynccontextmanager
async def extension(tls: ssl.SSLContext | None) -> AsyncIterator[ExtensionServer]:
    """avaproto's gRPC server on a free loopback port."""
    with anyio.fail_after(TIMEOUT):
        async with running(lambda frame: [], ServerConfig(port=0, ssl=tls), grace=1) as server:
            yield server


async def stream_over(host: str, port: int, tls: ssl.SSLContext) -> str:
    """Open a stream through ``avaproto.connect``; the extension's identifier."""
    with anyio.fail_after(TIMEOUT):
        async with connect(f"{host}:{port}", tls=tls) as pipe:
            return pipe.extension.extension_identifier


async def grpc_failure(port: int, tls: ssl.SSLContext | None) -> BaseException:
    """What grpclib raises for a call whose connection fails (as the pipeline calls)."""
    channel = grpclib.client.Channel("127.0.0.1", port, ssl=tls)
    try:
        with anyio.fail_after(TIMEOUT):
            async with channel.request(
                METHOD_PATH,
                grpclib.const.Cardinality.STREAM_STREAM,
                MediaStreamMessage,
                MediaStreamMessage,
            ) as call:
                await call.send_request()
                await call.send_message(MediaStreamMessage(sequence_number=1))
                await call.recv_message()
    except Exception as error:
        return error
    finally:
        channel.close()
    raise AssertionError("the call succeeded")


class ServerLog(logging.Handler):
    """The extension's log lines, awaited as they come (they are logged on the loop)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._arrived = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._arrived.set()

    def about(self, peer: str) -> list[logging.LogRecord]:
        return [r for r in self.records if f"{peer} " in r.getMessage()]

    async def wait_for(self, peer: str) -> logging.LogRecord:
        """The first line about ``peer`` ("127.0.0.1:PORT")."""
        with anyio.fail_after(TIMEOUT):
            while not self.about(peer):
                self._arrived = anyio.Event()
                await self._arrived.wait()
        return self.about(peer)[0]


@pytest.fixture
def server_log() -> Iterator[ServerLog]:
    handler = ServerLog()
    logger = logging.getLogger("avaproto.server")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# --- TLS-1 ---------------------------------------------------------------------------


@pytest.mark.rule("TLS-1")
async def test_handshake_negotiates_http2(files: dict[str, Path]) -> None:
    alpn, server_error, client_error = await handshake(
        server_context(files["cert"], files["key"]), client_context(ca=files["ca"]), "localhost"
    )
    assert (server_error, client_error) == (None, None)
    assert alpn == "h2"


# --- TLS-2: the chain and the name ---------------------------------------------------


@pytest.mark.rule("TLS-2")
async def test_common_name_of_an_ip_address_without_alt_names_is_accepted(
    files: dict[str, Path], issue: Any
) -> None:
    cert = issue("127.0.0.1")  # the protocol text's certificate; OpenSSL refuses it
    async with extension(server_context(cert, cert)) as server:
        assert await stream_over("127.0.0.1", server.port, client_context(ca=files["ca"])) == (
            "avaproto"
        )


@pytest.mark.rule("TLS-2")
async def test_common_name_of_a_host_without_alt_names_is_accepted(
    files: dict[str, Path], issue: Any
) -> None:
    cert = issue("LocalHost")  # host names compare case-insensitively
    async with extension(server_context(cert, cert)) as server:
        assert await stream_over("localhost", server.port, client_context(ca=files["ca"])) == (
            "avaproto"
        )


@pytest.mark.rule("TLS-2")
@pytest.mark.parametrize(
    ("common_name", "host"),
    [("extension.example", "localhost"), ("127.0.0.2", "127.0.0.1"), ("localhost", "127.0.0.1")],
)
async def test_common_name_must_be_exactly_the_host(
    files: dict[str, Path], issue: Any, common_name: str, host: str
) -> None:
    cert = issue(common_name)
    async with extension(server_context(cert, cert)) as server:
        with pytest.raises(StreamFailed) as caught:
            await stream_over(host, server.port, client_context(ca=files["ca"]))
    assert "[TLS-2]" in caught.value.detail
    assert f"Common Name {common_name!r}" in caught.value.detail
    assert repr(host) in caught.value.detail


@pytest.mark.rule("TLS-2")
async def test_alt_names_take_precedence_over_the_common_name(
    files: dict[str, Path], issue: Any
) -> None:
    cert = issue("127.0.0.1", ["extension.example", "10.0.0.5"])
    async with extension(server_context(cert, cert)) as server:
        with pytest.raises(StreamFailed) as caught:
            await stream_over("127.0.0.1", server.port, client_context(ca=files["ca"]))
    detail = caught.value.detail
    assert "[TLS-2]" in detail
    assert "DNS:extension.example, IP:10.0.0.5" in detail
    assert "'127.0.0.1', the host dialled" in detail
    assert "subjectAltName takes precedence" in detail


@pytest.mark.rule("TLS-2")
async def test_alt_name_of_the_address_is_accepted(files: dict[str, Path], issue: Any) -> None:
    cert = issue("extension.example", ["extension.example", "127.0.0.1"])
    async with extension(server_context(cert, cert)) as server:
        assert await stream_over("127.0.0.1", server.port, client_context(ca=files["ca"]))


@pytest.mark.rule("TLS-2")
@pytest.mark.parametrize(
    ("hostname", "accepted"),
    [
        ("node.example.test", True),
        ("NODE.Example.Test", True),
        ("example.test", False),  # the wildcard stands for one label, not none
        ("a.node.example.test", False),  # nor for two
        ("node.other.test", False),
    ],
)
async def test_wildcard_alt_name_in_a_handshake(
    files: dict[str, Path], issue: Any, hostname: str, accepted: bool
) -> None:
    cert = issue("example.test", ["*.example.test"])
    _, _, client_error = await handshake(
        server_context(cert, cert), client_context(ca=files["ca"]), hostname
    )
    if accepted:
        assert client_error is None
    else:
        assert isinstance(client_error, CertificateNameMismatch)
        assert "DNS:*.example.test" in str(client_error)


@pytest.mark.rule("TLS-2")
@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.example.com.", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", ".example.com", False),
        ("*.com", "example.com", False),  # a wildcard needs two labels after it
        ("a*.example.com", "ab.example.com", False),  # only as the whole label
        ("*a.example.com", "ba.example.com", False),
        ("a.*.example.com", "a.b.example.com", False),  # only left-most
        ("*.example.com", "127.0.0.1", False),  # never an address
        ("127.0.0.1", "127.0.0.1", False),  # a DNS entry is not an address
        ("Example.COM", "example.com", True),
    ],
)
def test_dns_alt_name_matching(pattern: str, host: str, matches: bool) -> None:
    names = CertificateNames.of({"subjectAltName": (("DNS", pattern),)})
    assert names.matches(host) is matches


@pytest.mark.rule("TLS-2")
@pytest.mark.parametrize(
    ("address", "host", "matches"),
    [
        ("0:0:0:0:0:0:0:1", "::1", True),  # addresses compare as addresses, not text
        ("::1", "0::1", True),
        ("fe80::1", "fe80::1%eth0", True),
        ("10.0.0.5", "10.0.0.50", False),
        ("10.0.0.5", "localhost", False),
    ],
)
def test_ip_alt_name_matching(address: str, host: str, matches: bool) -> None:
    names = CertificateNames.of({"subjectAltName": (("IP Address", address),)})
    assert names.matches(host) is matches


@pytest.mark.rule("TLS-2")
async def test_certificate_of_an_unknown_authority_is_refused(files: dict[str, Path]) -> None:
    _, _, client_error = await handshake(
        server_context(files["cert"], files["key"]),
        client_context(ca=files["other_ca"]),
        "localhost",
    )
    assert isinstance(client_error, ssl.SSLCertVerificationError)
    assert not isinstance(client_error, CertificateNameMismatch)


@pytest.mark.rule("TLS-2")
async def test_unknown_authority_is_refused_even_when_the_name_matches(
    files: dict[str, Path], issue: Any
) -> None:
    cert = issue("127.0.0.1")  # signed by the module's CA, which the client does not trust
    async with extension(server_context(cert, cert)) as server:
        with pytest.raises(StreamFailed) as caught:
            await stream_over("127.0.0.1", server.port, client_context())
    assert "certificate verify failed" in caught.value.detail


@pytest.mark.rule("TLS-2")
async def test_no_data_reaches_a_server_of_another_name(files: dict[str, Path], issue: Any) -> None:
    """The name check fails the connection before the application sees it."""
    cert = issue("extension.example")
    received: list[bytes] = []
    connected: list[bool] = []

    class Sink(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            connected.append(True)

        def data_received(self, data: bytes) -> None:
            received.append(data)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", 0, ssl=server_context(cert, cert))
    port = server.sockets[0].getsockname()[1]
    try:
        with anyio.fail_after(TIMEOUT), pytest.raises(CertificateNameMismatch):
            await asyncio.open_connection("127.0.0.1", port, ssl=client_context(ca=files["ca"]))
    finally:
        server.close()
        await server.wait_closed()
    assert (connected, received) == ([], [])


@pytest.mark.rule("TLS-2")
def test_the_first_write_completes_the_checked_handshake(
    files: dict[str, Path], issue: Any
) -> None:
    """OpenSSL would complete a handshake inside the first write, unchecked."""
    cert = issue("extension.example")
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_context(cert, cert).wrap_bio(server_in, server_out, server_side=True)
    client = client_context(ca=files["ca"]).wrap_bio(
        client_in, client_out, server_hostname="localhost"
    )

    def step(call: Any) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):
            call()
        server_in.write(client_out.read())
        client_in.write(server_out.read())

    with pytest.raises(CertificateNameMismatch):
        for _ in range(4):
            step(lambda: client.write(b"frame"))
            step(server.do_handshake)
    step(server.do_handshake)
    with pytest.raises(ssl.SSLWantReadError):  # the server has no byte of application data
        server.read()


@pytest.mark.rule("TLS-2")
async def test_blocking_sockets_are_checked_too(files: dict[str, Path], issue: Any) -> None:
    cert = issue("extension.example")
    context = client_context(ca=files["ca"])

    def dial(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            context.wrap_socket(raw, server_hostname="127.0.0.1")

    async with extension(server_context(cert, cert)) as server:
        with pytest.raises(
            CertificateNameMismatch, match=re.escape("'127.0.0.1', the host dialled")
        ):
            await anyio.to_thread.run_sync(dial, server.port)


@pytest.mark.rule("TLS-2")
def test_client_verification_cannot_be_switched_off(files: dict[str, Path]) -> None:
    context = client_context(ca=files["ca"])
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert set(inspect.signature(client_context).parameters) == {"ca", "certificate", "key"}
    # The name check is avaproto's (OpenSSL's ignores an address's Common Name).
    assert context.check_hostname is False
    assert issubclass(context.sslobject_class, ssl.SSLObject)
    assert context.sslobject_class is not ssl.SSLObject
    assert context.sslsocket_class is not ssl.SSLSocket


@pytest.mark.rule("TLS-2")
def test_a_host_name_is_required() -> None:
    names = {"subject": ((("commonName", "localhost"),),)}
    with pytest.raises(CertificateNameMismatch, match="no host name"):
        check_certificate_name(names, None)


# --- TLS-3: mutual TLS ---------------------------------------------------------------


@pytest.mark.rule("TLS-3")
async def test_mutual_tls_requires_a_client_certificate(files: dict[str, Path]) -> None:
    server = server_context(files["cert"], files["key"], client_ca=files["ca"])
    _, server_error, client_error = await handshake(
        server, client_context(ca=files["ca"]), "localhost"
    )
    assert server_error is not None or client_error is not None
    _, server_error, client_error = await handshake(
        server,
        client_context(ca=files["ca"], certificate=files["client_cert"], key=files["client_key"]),
        "localhost",
    )
    assert (server_error, client_error) == (None, None)


@pytest.mark.rule("TLS-3", "TLS-4")
async def test_missing_client_certificate_is_logged_and_told(
    files: dict[str, Path], server_log: ServerLog
) -> None:
    tls = server_context(files["cert"], files["key"], client_ca=files["ca"])
    async with extension(tls) as server:
        with anyio.fail_after(TIMEOUT):
            raw = await anyio.connect_tcp("127.0.0.1", server.port)
            peer = f"127.0.0.1:{raw.extra(SocketAttribute.local_port)}"
            stream = await TLSStream.wrap(
                raw, ssl_context=client_context(ca=files["ca"]), hostname="localhost"
            )
            # TLS 1.3: the client's side of the handshake is done; the refusal follows.
            with pytest.raises(ssl.SSLError) as caught:
                await stream.receive()
            await raw.aclose()
            line = await server_log.wait_for(peer)
    assert caught.value.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert "--tls-cert" in (explain_connection_failure(caught.value, tls=True) or "")
    assert line.levelno == logging.WARNING
    assert line.getMessage() == (
        f"TLS handshake with {peer} failed: the client presented no certificate, and this "
        "extension requires one (mutual TLS, TLS-3)"
    )


# --- TLS-4: diagnostics --------------------------------------------------------------


@pytest.mark.rule("TLS-4")
async def test_plaintext_client_is_logged_once_with_a_hint(
    files: dict[str, Path], server_log: ServerLog
) -> None:
    async with extension(server_context(files["cert"], files["key"])) as server:
        with anyio.fail_after(TIMEOUT):
            async with await anyio.connect_tcp("127.0.0.1", server.port) as plain:
                peer = f"127.0.0.1:{plain.extra(SocketAttribute.local_port)}"
                await plain.send(HTTP2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await plain.receive()
            line = await server_log.wait_for(peer)
    assert line.levelno == logging.WARNING
    assert line.getMessage().startswith(f"TLS handshake with {peer} failed: ")
    assert line.getMessage().endswith("the client speaks plaintext; it needs TLS")
    assert len(server_log.about(peer)) == 1  # the server has closed: no more will come


@pytest.mark.rule("TLS-4")
async def test_client_that_refuses_the_certificate_is_logged(
    files: dict[str, Path], server_log: ServerLog
) -> None:
    async with extension(server_context(files["cert"], files["key"])) as server:
        with anyio.fail_after(TIMEOUT):
            raw = await anyio.connect_tcp("127.0.0.1", server.port)
            peer = f"127.0.0.1:{raw.extra(SocketAttribute.local_port)}"
            with pytest.raises(ssl.SSLCertVerificationError):
                await TLSStream.wrap(
                    raw, ssl_context=client_context(ca=files["other_ca"]), hostname="localhost"
                )
            await raw.aclose()
            line = await server_log.wait_for(peer)
    assert line.levelno == logging.WARNING
    assert line.getMessage().startswith(f"TLS handshake with {peer} failed: ")
    assert "does not trust this certificate" in line.getMessage()
    assert len(server_log.about(peer)) == 1


@pytest.mark.rule("TLS-4")
async def test_a_port_probe_is_not_a_failed_handshake(
    files: dict[str, Path], server_log: ServerLog
) -> None:
    async with extension(server_context(files["cert"], files["key"])) as server:
        with anyio.fail_after(TIMEOUT):
            probe = await anyio.connect_tcp("127.0.0.1", server.port)
            peer = f"127.0.0.1:{probe.extra(SocketAttribute.local_port)}"
            await probe.aclose()
            line = await server_log.wait_for(peer)
    assert line.levelno == logging.DEBUG
    assert "closed the connection before a TLS handshake" in line.getMessage()
    assert len(server_log.about(peer)) == 1


@pytest.mark.rule("TLS-4")
async def test_plaintext_pipeline_against_tls_is_told_to_use_tls(files: dict[str, Path]) -> None:
    async with extension(server_context(files["cert"], files["key"])) as server:
        error = await grpc_failure(server.port, None)
    assert explain_connection_failure(error, tls=False) == (
        "the server may require TLS: use --tls (or --tls-ca FILE); or it refuses "
        "connections past a limit of its own (its log says which)"
    )


@pytest.mark.rule("TLS-4")
async def test_tls_pipeline_against_plaintext_is_told_to_drop_tls(files: dict[str, Path]) -> None:
    async with extension(None) as server:
        error = await grpc_failure(server.port, client_context(ca=files["ca"]))
    assert isinstance(error, ssl.SSLError)
    assert explain_connection_failure(error, tls=True) == (
        "the server does not seem to speak TLS; drop --tls"
    )


@pytest.mark.rule("TLS-4")
async def test_unknown_authority_is_explained(files: dict[str, Path]) -> None:
    async with extension(server_context(files["cert"], files["key"])) as server:
        error = await grpc_failure(server.port, client_context(ca=files["other_ca"]))
    hint = explain_connection_failure(error, tls=True) or ""
    assert "not signed by an authority this client trusts" in hint
    assert "--tls-ca FILE" in hint


@pytest.mark.rule("TLS-4")
async def test_name_mismatch_is_explained_with_the_names(
    files: dict[str, Path], issue: Any
) -> None:
    cert = issue("extension.example", ["extension.example", "10.0.0.5"])
    async with extension(server_context(cert, cert)) as server:
        error = await grpc_failure(server.port, client_context(ca=files["ca"]))
    assert isinstance(error, CertificateNameMismatch)
    assert "DNS:extension.example, IP:10.0.0.5" in str(error)
    assert "'127.0.0.1'" in (explain_connection_failure(error, tls=True) or "")


@pytest.mark.rule("TLS-4")
def test_missing_tls_files_are_named(files: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "absent.pem"
    with pytest.raises(TLSFileError, match=re.escape(f"certificate file {missing}: no such file")):
        server_context(missing, files["key"])
    with pytest.raises(TLSFileError, match=re.escape(f"key file {missing}: no such file")):
        server_context(files["cert"], missing)
    with pytest.raises(TLSFileError, match=re.escape(f"client CA file {missing}")):
        server_context(files["cert"], files["key"], client_ca=missing)
    with pytest.raises(TLSFileError, match=re.escape(f"CA file {missing}")):
        client_context(ca=missing)
    with pytest.raises(
        TLSFileError, match=re.escape(f"certificate file {tmp_path}: not a regular file")
    ):
        client_context(certificate=tmp_path, key=files["client_key"])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TLSFileError, match=re.escape(f"TLS CA file {garbage}: no PEM certificate")):
        client_context(ca=garbage)
    with pytest.raises(TLSFileError, match="the key must be the certificate's"):
        server_context(files["cert"], files["client_key"])
    assert isinstance(TLSFileError("x"), OSError)


@pytest.mark.rule("TLS-4")
@pytest.mark.parametrize("server_tls", [True, False], ids=["plaintext-to-tls", "tls-to-plaintext"])
async def test_connect_reports_a_tls_mismatch_with_its_hint(
    files: dict[str, Path], server_tls: bool
) -> None:
    tls = server_context(files["cert"], files["key"]) if server_tls else None
    async with extension(tls) as server:
        with pytest.raises(StreamFailed) as caught:
            await stream_over(
                "127.0.0.1", server.port, None if server_tls else client_context(ca=files["ca"])
            )
    assert caught.value.status is Status.UNAVAILABLE
    expected = "use --tls" if server_tls else "drop --tls"
    assert expected in str(caught.value)
