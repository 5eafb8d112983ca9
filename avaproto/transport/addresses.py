"""A peer's address as every log line and error message of the transports writes it.

One spelling everywhere, so that the lines about one peer (its connection's limits,
its TLS handshake, its streams) can be found together: ``host:port``, an IPv6 host in
brackets (``[::1]:50051``), as URLs write it and as grpc-core's logs do.
"""

from __future__ import annotations

UNKNOWN = "unknown peer"


def peer_address(peername: object) -> str:
    """``peername`` as asyncio's ``get_extra_info("peername")`` gives it."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        host = str(peername[0])
        return f"[{host}]:{peername[1]}" if ":" in host else f"{host}:{peername[1]}"
    return str(peername) if peername else UNKNOWN
