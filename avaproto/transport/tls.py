"""TLS contexts for both ends of a stream (TLS rules).

The protocol's pipeline could not skip certificate checks (its ``IgnoreHostname`` and
``IgnoreSignature`` options are "not supported by gRPC"), so neither can avaproto's
client: it always verifies the chain and that the certificate names the host it
dialled, exactly. There is deliberately no option to turn that off; to test against a
private CA, pass the CA.
"""

from __future__ import annotations

import ssl
from os import PathLike

StrPath = str | PathLike[str]

#: gRPC runs over HTTP/2, negotiated with ALPN.
ALPN = ["h2"]


def server_context(
    certificate: StrPath, key: StrPath, *, client_ca: StrPath | None = None
) -> ssl.SSLContext:
    """The extension's context: its certificate chain and key; mutual TLS with ``client_ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(ALPN)
    return context


def client_context(
    *,
    ca: StrPath | None = None,
    certificate: StrPath | None = None,
    key: StrPath | None = None,
) -> ssl.SSLContext:
    """The pipeline's context: verifies the chain (system roots, or ``ca``) and the hostname.

    ``certificate`` and ``key`` present a client certificate for mutual TLS.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certificate is not None:
        context.load_cert_chain(certificate, key)
    context.set_alpn_protocols(ALPN)
    # Already the defaults of create_default_context; stated so that no change slips by.
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context
