"""What one peer may make the extension's server hold, in one frozen dataclass.

A pipeline is trusted with the frames it sends, not with the server: anyone who can
reach the port can open connections, streams and header blocks without credentials
(authentication is checked on a complete request, after all of that). Every resource a
peer can make the server hold (connections, file descriptors, memory, streams, time,
event-loop time) therefore has a bound here, with a default that no honest pipeline
reaches and that matches what Envoy, nginx and grpc-core use where they have one. Each
is a flag of ``avaproto serve``; a limit that trips logs one WARNING line naming the
peer and the limit, and ends the connection or the stream with a precise outcome (a
GOAWAY and its error code, or a gRPC status naming the rule).
"""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1 << 10
MiB = 1 << 20


@dataclass(frozen=True)
class ConnectionLimits:
    """The bounds on one peer's connections and streams (the rules named in each field)."""

    #: Connections open at once (CONN-14); one more is closed as it is accepted. Below
    #: the usual open-file limit of 1024, with room for the server's other descriptors.
    max_connections: int = 1000
    #: Seconds from accepting a connection to its HTTP/2 preface and first frame, TLS
    #: handshake included (CONN-12; nginx's client_header_timeout is 60 s).
    handshake_timeout: float | None = 10.0
    #: Seconds a connection may stay open without a stream (CONN-13; nginx's
    #: keepalive_timeout is 75 s, grpc-core's max_connection_idle infinite).
    idle_timeout: float | None = 300.0
    #: Largest header list of a request, decoded, advertised as
    #: SETTINGS_MAX_HEADER_LIST_SIZE: past it the request alone is refused; a block past
    #: four times it, counted as its frames arrive or decoded, ends the connection (CONN-7;
    #: grpc-core: 8 KiB soft, 16 KiB hard).
    max_header_list_bytes: int = 16 * KiB
    #: Seconds a header block may stay unfinished (CONN-7).
    header_timeout: float | None = 10.0
    #: Streams a connection opens before its premature resets are judged (CONN-6;
    #: Envoy's premature_reset_total_stream_count): past it, more than half of them
    #: reset before the server answered closes the connection.
    premature_reset_streams: int = 500
    #: Consecutive DATA, HEADERS or CONTINUATION frames with no payload and no
    #: END_STREAM (CONN-8; Envoy's max_consecutive_inbound_frames_with_empty_payload).
    max_empty_frames: int = 1
    #: DATA frames a message may take beyond two per 16 KiB of its length, two at least (CONN-9).
    frames_per_message: int = 64
    #: Frames that carry no message (every frame but DATA, HEADERS and CONTINUATION; a
    #: SETTINGS frame counts once per entry) a connection may send beyond what it earns
    #: back: one per KiB of DATA either way, four per DATA frame received and per message
    #: sent, ten per HEADERS, ten a second (CONN-19).
    #: Each costs the server as much as a message's frame; a flood slowed every stream.
    max_frames_without_data: int = 1000
    #: Acknowledgements (of PING and SETTINGS) queued while the peer reads nothing
    #: (CONN-10; Envoy's max_outbound_control_frames).
    max_control_frames: int = 1000
    #: Bytes queued for a peer that does not read them (CONN-10).
    max_unread_bytes: int = 16 * MiB
    #: Seconds a connection with a stream open may send nothing before the server sends
    #: it a PING (CONN-16): a pipeline whose host vanished (power lost, cable pulled)
    #: sends no FIN, and its idle stream would hold a slot, its shared memory and its
    #: descriptors for ever. grpc-core's servers wait 2 hours, tuned for phones on
    #: metered links; a pipeline's connection to its extension is a LAN's or a host's.
    keepalive_time: float | None = 60.0
    #: Seconds that PING may go without a byte back before the connection is closed
    #: (CONN-16; grpc-core's keepalive_timeout).
    keepalive_timeout: float | None = 20.0
    #: Seconds a stream may take to send its descriptor (SRV-12).
    descriptor_timeout: float | None = 10.0
    #: Seconds an answer may take to go out whole, waiting for the peer to open its
    #: flow-control window (SRV-17): a pipeline that reads none of its answers, or opens
    #: its window a byte at a time, holds its stream's slot and answers meanwhile
    #: (nginx's send_timeout is 60 s).
    send_timeout: float | None = 60.0
    #: Seconds a message may take to arrive whole once its length prefix came (SRV-20):
    #: a pipeline that announces large messages and sends their bytes a few at a time
    #: holds the budget of incomplete messages (SRV-13) while it trickles, whatever
    #: the bound on its size (nginx's client_body_timeout is 60 s between reads).
    message_timeout: float | None = 60.0
    #: Bytes of messages announced but not yet complete, across all streams of one
    #: connection (SRV-13).
    max_incomplete_bytes_per_connection: int = 256 * MiB
    #: The same, across the whole server (SRV-13).
    max_incomplete_bytes: int = 512 * MiB
    #: Bytes of frames held from their arrival until processed (an embedded frame
    #: once read, a shared-memory sample's ``length_bytes`` from its reference), across
    #: the whole server (SRV-18): past it, a stream's frame waits for others to be
    #: processed.
    max_frame_memory: int = 1024 * MiB
    #: The same, across all streams of one connection (SRV-18).
    max_frame_memory_per_connection: int = 512 * MiB
    #: Seconds a stream's next frame may wait for frame memory before its stream ends
    #: with RESOURCE_EXHAUSTED (SRV-18).
    frame_memory_timeout: float | None = 60.0
    #: Bytes of buffers sized from headers for bytes still arriving, across the server:
    #: a large DATA frame, or a message arriving in several, is read straight into a
    #: buffer of its size (its one copy), which its header alone asks for. Past this,
    #: such bytes are buffered as they arrive instead (and copied once more).
    max_read_buffers_bytes: int = 64 * MiB
