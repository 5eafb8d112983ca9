"""Transports: binding the engine to HTTP/2 (grpclib) and to in-memory streams."""
