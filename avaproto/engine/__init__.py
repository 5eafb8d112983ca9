"""The engine: one stream's pipeline on anyio, for either role (no HTTP/2 here)."""
