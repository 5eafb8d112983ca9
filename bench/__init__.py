"""The side-by-side transport benchmark: avaproto's server and client against grpcio's.

``python -m bench`` starts three servers, each in a process of its own, and drives every
one of them with the same two clients, each in a process of its own too, alternating
servers round by round so that drift on the machine hits all of them alike:

* ``grpcio-sync``: grpcio's synchronous server (a pool of 3 threads), written as the
  published sample extensions are: one frame at a time per stream.
* ``grpcio-aio``: grpcio's asyncio server, the strongest Python peer, one frame at a time.
* ``avaproto``: ``avaproto serve --extension bench.extensions:touch --shm-access map`` (or
  ``bench.extensions:sleepy``).

The clients are a grpcio client with the official protobuf runtime (C code) and
avaproto's own (``avaproto.bench.drive``). Both keep the same window of unacknowledged
samples and send the same payload bytes, embedded or through shared memory.

This directory is the benchmark only: it may import avaproto, grpcio and protobuf;
nothing in ``avaproto/`` imports it.
"""
