"""How the transports write a peer's address in log lines and error messages."""

from __future__ import annotations

import pytest

from avaproto.transport.addresses import peer_address


@pytest.mark.parametrize(
    ("peername", "written"),
    [
        (("127.0.0.1", 50051), "127.0.0.1:50051"),
        (("::1", 50051, 0, 0), "[::1]:50051"),  # IPv6: the host in brackets, as URLs write it
        ("/run/extension.sock", "/run/extension.sock"),  # a Unix socket's path
        (None, "unknown peer"),
        ("", "unknown peer"),
    ],
)
def test_a_peer_is_written_host_colon_port(peername: object, written: str) -> None:
    assert peer_address(peername) == written
