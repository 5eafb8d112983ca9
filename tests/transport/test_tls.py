"""Spec section 9, Using gRPC over TLS: the contexts each side builds, tried in a real
TLS handshake on a loopback port with certificates made for the test (trustme)."""

from __future__ import annotations

import inspect
import ssl
from pathlib import Path

import anyio
import pytest
import trustme
from anyio.streams.tls import TLSStream

from avaproto.transport.tls import client_context, server_context

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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


async def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, hostname: str
) -> tuple[str | None, BaseException | None, BaseException | None]:
    """Connect, say hello both ways; return (client's ALPN, server's error, client's error)."""
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    alpn: str | None = None
    with anyio.fail_after(10):
        listener = (
            await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        ).listeners[0]
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

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
                    alpn = stream.extra(anyio.streams.tls.TLSAttribute.alpn_protocol)
                    await stream.send(b"hello")
                    assert await stream.receive() == b"hello"
            except (ssl.SSLError, OSError, anyio.BrokenResourceError, anyio.EndOfStream) as e:
                client_error = e
    return alpn, server_error, client_error


@pytest.mark.rule("TLS-1")
async def test_handshake_negotiates_http2(files: dict[str, Path]) -> None:
    alpn, server_error, client_error = await handshake(
        server_context(files["cert"], files["key"]), client_context(ca=files["ca"]), "localhost"
    )
    assert (server_error, client_error) == (None, None)
    assert alpn == "h2"


@pytest.mark.rule("TLS-2")
async def test_certificate_for_another_host_is_refused(
    files: dict[str, Path], ca: trustme.CA, tmp_path: Path
) -> None:
    other = ca.issue_cert("extension.example")
    other.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "other.pem"))
    _, _, client_error = await handshake(
        server_context(tmp_path / "other.pem", tmp_path / "other.pem"),
        client_context(ca=files["ca"]),
        "localhost",
    )
    assert isinstance(client_error, ssl.SSLCertVerificationError)
    assert "localhost" in str(client_error)


@pytest.mark.rule("TLS-2")
async def test_certificate_of_an_unknown_authority_is_refused(files: dict[str, Path]) -> None:
    _, _, client_error = await handshake(
        server_context(files["cert"], files["key"]),
        client_context(ca=files["other_ca"]),
        "localhost",
    )
    assert isinstance(client_error, ssl.SSLCertVerificationError)


@pytest.mark.rule("TLS-2")
def test_client_verification_cannot_be_switched_off(files: dict[str, Path]) -> None:
    context = client_context(ca=files["ca"])
    assert context.check_hostname is True
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert set(inspect.signature(client_context).parameters) == {"ca", "certificate", "key"}


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
