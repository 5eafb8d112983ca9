"""Every rule of spec/, as ``avaproto check`` sees it: probed from outside, or out of reach.

spec/ is not part of the installed package, so the check carries what it needs of the
catalogue: each rule's id and level, in the catalogue's order, and for the rules a probe
cannot reach, why. The tests compare this table with spec/rules/ and fail when a rule is
added, removed or changes level there without being placed here.

A rule is out of reach when nothing an extension sends, or how it answers what a
pipeline sends, could show whether it is kept: a rule of the pipeline's side, one about
what happens inside the extension, one of avaproto's library rather than of the wire.
The report counts them and lists them with ``--json``; it never pretends they passed.
"""

from __future__ import annotations

from dataclasses import dataclass

_PIPELINE = "a rule of the pipeline's side, which avaproto's own client keeps"
_INSIDE = "happens inside the extension: nothing on the wire shows it"
_LIBRARY = "a rule of avaproto's library (builders, the JSON form), not of the wire"
_PIXELS = "how the extension reads pixels, inside it: nothing on the wire shows it"
_ENCODING = "the protobuf encoding itself: any stream that works already agrees on it"
_PERMISSION = "a permission (MAY): no behaviour of the extension can break it"
_CONFIGURED = "depends on how the extension was configured, which a probe cannot know"
_CLIENTS = (
    "how other gRPC clients and proxies speak HTTP/2: the check speaks as avaproto's "
    "client does (tests/transport/test_hostile_http2.py speaks as they do)"
)
_ATTACK = (
    "a defence against a hostile peer: the check probes conformance and attacks nothing "
    "(tests/transport/test_hostile_http2.py attacks avaproto's own server)"
)


@dataclass(frozen=True)
class RuleEntry:
    id: str
    level: str
    #: None: probed; otherwise why no probe from outside can check it.
    out_of_reach: str | None = None


def _rule(rule_id: str, level: str, out_of_reach: str | None = None) -> RuleEntry:
    return RuleEntry(rule_id, level, out_of_reach)


#: The catalogue, in its order (spec/README.md).
CATALOGUE: tuple[RuleEntry, ...] = (
    _rule("CONN-1", "MUST"),
    _rule("CONN-2", "MUST"),
    _rule("CONN-3", "MUST"),
    _rule("CONN-4", "MUST", _ENCODING),
    _rule("CONN-5", "MAY", _ENCODING),
    _rule("CONN-6", "MUST", _ATTACK),
    _rule("CONN-7", "MUST", _ATTACK),
    _rule("CONN-8", "MUST", _ATTACK),
    _rule("CONN-9", "MUST", _ATTACK),
    _rule("CONN-10", "MUST", _ATTACK),
    _rule("CONN-11", "MUST", _ATTACK),
    _rule("CONN-12", "MUST", _ATTACK),
    _rule("CONN-13", "SHOULD", _CONFIGURED + " (an idle timeout of minutes)"),
    _rule("CONN-14", "MUST", _ATTACK),
    _rule("CONN-15", "MUST", _ATTACK),
    _rule("CONN-16", "SHOULD", _CONFIGURED + " (a keepalive of a minute)"),
    _rule("CONN-17", "MUST", _ATTACK),
    _rule("CONN-18", "MUST", _ATTACK),
    _rule("CONN-19", "MUST", _ATTACK),
    _rule("CONN-20", "MUST", _CLIENTS),
    _rule("CONN-21", "SHOULD", _CLIENTS),
    _rule("DESC-1", "MUST"),
    _rule("DESC-2", "MUST"),
    _rule("DESC-3", "SHOULD"),
    _rule("DESC-4", "SHOULD"),
    _rule("DESC-5", "MUST"),
    _rule(
        "DESC-6",
        "MUST",
        "an extension answers a descriptor at once, so no sample can reach it between the "
        "two; a sample sent first is DESC-1",
    ),
    _rule("DESC-7", "MUST"),
    _rule("DESC-8", "MAY", "timestamps are passed on, not interpreted: " + _INSIDE),
    _rule("SEQ-1", "SHOULD"),
    _rule("SEQ-2", "MUST"),
    _rule("SEQ-3", "MUST"),
    _rule("SEQ-4", "MUST"),
    _rule("SEQ-5", "MAY"),
    _rule("SEQ-6", "MUST"),
    _rule("ACK-1", "MUST"),
    _rule("ACK-2", "MAY", "what 0 means; an answer that acknowledges nothing shows under ACK-1"),
    _rule("ACK-3", "MUST"),
    _rule("ACK-4", "MUST"),
    _rule("ACK-5", "MUST"),
    _rule("ACK-6", "MAY", _PERMISSION),
    _rule("ACK-7", "MAY"),
    _rule("ACK-8", "MAY", _PERMISSION),
    _rule("EMB-1", "MAY", _PERMISSION),
    _rule("EMB-2", "MUST", "about the sender of frames, the pipeline: " + _PIPELINE),
    _rule("EMB-3", "MAY"),
    _rule("SHM-1", "MUST"),
    _rule("SHM-2", "MUST"),
    _rule("SHM-3", "MUST"),
    _rule("SHM-4", "MUST"),
    _rule("SHM-5", "MUST"),
    _rule("SHM-6", "MUST"),
    _rule("SHM-7", "MUST", _INSIDE),
    _rule("SHM-8", "MUST", "about the sender's slots: " + _PIPELINE),
    _rule("SHM-9", "SHOULD", _PIPELINE),
    _rule("SHM-10", "MAY", _PERMISSION),
    _rule("SHM-11", "SHOULD", _PIPELINE),
    _rule("SHM-12", "SHOULD", _INSIDE),
    _rule("SHM-13", "MAY", _PIPELINE),
    _rule("SHM-14", "MAY"),
    _rule(
        "SHM-15",
        "MUST",
        "probing it shrinks a segment under the extension, which kills one that maps it "
        "(SIGBUS): no probe does that to a target",
    ),
    _rule("SHM-16", "MUST", _ATTACK),
    _rule("SHM-17", "MUST", _CONFIGURED),
    _rule("AUTH-1", "MAY"),
    _rule("AUTH-2", "MUST"),
    _rule("AUTH-3", "MUST"),
    _rule("AUTH-4", "MUST"),
    _rule("CFG-1", "MAY"),
    _rule("CFG-2", "MUST", _INSIDE),
    _rule("CFG-3", "SHOULD", _CONFIGURED + " (which configurations it takes)"),
    _rule("TLS-1", "MAY"),
    _rule("TLS-2", "MUST", _PIPELINE),
    _rule("TLS-3", "MAY", _PERMISSION),
    _rule("TLS-4", "SHOULD", "what each end logs and says, not what crosses the wire"),
    _rule("MEDIA-1", "MUST"),
    _rule("MEDIA-2", "MUST"),
    _rule("MEDIA-3", "MUST"),
    _rule("MEDIA-4", "MUST"),
    _rule("MEDIA-5", "SHOULD"),
    _rule("MEDIA-6", "MUST"),
    _rule("MEDIA-7", "SHOULD", _PIXELS),
    _rule("MEDIA-8", "MUST", _PIXELS),
    _rule("MEDIA-9", "MUST", _PIXELS),
    _rule("MEDIA-10", "SHOULD", _PIXELS),
    _rule("MEDIA-11", "SHOULD", _PIXELS),
    _rule("MEDIA-12", "MUST", _PIXELS),
    _rule("INF-1", "MUST"),
    _rule("INF-2", "MAY", _PERMISSION),
    _rule("INF-3", "MUST"),
    _rule("INF-4", "MUST"),
    _rule("INF-5", "SHOULD", _INSIDE),
    _rule("INF-6", "MAY", _PERMISSION),
    _rule("INF-7", "MUST", _LIBRARY),
    _rule("JSON-1", "MUST", _LIBRARY),
    _rule("JSON-2", "MUST", _LIBRARY),
    _rule("JSON-3", "MUST", _LIBRARY),
    _rule("JSON-4", "MUST", _LIBRARY),
    _rule("JSON-5", "MUST", _LIBRARY),
    _rule("JSON-6", "MUST", _LIBRARY),
    _rule("JSON-7", "MUST", _LIBRARY),
    _rule("JSON-8", "MUST", _LIBRARY),
    _rule("JSON-9", "MUST", _LIBRARY),
    _rule("JSON-10", "MUST", _LIBRARY),
    _rule("LIFE-1", "MUST", "HTTP/2 itself stops a party from sending after its end"),
    _rule("LIFE-2", "MUST"),
    _rule(
        "LIFE-3",
        "MUST",
        "after a violation the stream has ended: what the extension would do with more "
        "happens inside it",
    ),
    _rule("LIFE-4", "MUST"),
    _rule("SRV-1", "MAY", _PERMISSION),
    _rule("SRV-2", "SHOULD"),
    _rule("SRV-3", "MUST", "needs a processor that fails: " + _INSIDE),
    _rule("SRV-4", "MAY", _CONFIGURED + " (a frame timeout)"),
    _rule("SRV-5", "MUST"),
    _rule("SRV-6", "MUST"),
    _rule("SRV-7", "MUST", _INSIDE),
    _rule("SRV-8", "SHOULD", "needs a signal sent to the extension's process"),
    _rule("SRV-9", "MAY"),
    _rule("WIRE-1", "MUST"),
    _rule("WIRE-2", "MUST"),
    _rule(
        "WIRE-3", "SHOULD", "reading compression is a reader's part; the check sends uncompressed"
    ),
    _rule("SRV-10", "MAY", _PERMISSION),
    _rule("SRV-11", "SHOULD", "an HTTP/2 setting, below the gRPC calls a probe makes"),
    _rule("SRV-12", "MUST", _CONFIGURED + " (a descriptor deadline, 10 s by default)"),
    _rule("SRV-13", "MUST", _ATTACK),
    _rule("SRV-14", "SHOULD", _INSIDE),
    _rule("SRV-15", "MUST", "a deadline is the pipeline's to set; a probe's calls set none"),
    _rule("SRV-16", "MUST", _INSIDE),
    _rule("SRV-17", "MUST", _CONFIGURED + " (a send deadline, 60 s by default)"),
    _rule("SRV-18", "MUST", _ATTACK),
    _rule("SRV-19", "MUST", _ATTACK),
    _rule("SRV-20", "MUST", _ATTACK),
    _rule("PIPE-1", "SHOULD", _PIPELINE),
    _rule("PIPE-2", "MUST", _PIPELINE),
    _rule("PIPE-3", "SHOULD", _PIPELINE),
    _rule("PIPE-4", "SHOULD", _PIPELINE),
    _rule("PIPE-5", "MUST", _PIPELINE),
    _rule("PIPE-6", "MUST", _PIPELINE),
    _rule("PIPE-7", "MUST", _PIPELINE),
    _rule("PIPE-8", "MUST", _PIPELINE),
    _rule("PIPE-9", "MUST", _PIPELINE),
    _rule("PIPE-10", "MUST", _PIPELINE),
)

BY_ID: dict[str, RuleEntry] = {entry.id: entry for entry in CATALOGUE}
#: Position of each rule in the catalogue: the report's order.
ORDER: dict[str, int] = {entry.id: index for index, entry in enumerate(CATALOGUE)}
PROBED: tuple[str, ...] = tuple(e.id for e in CATALOGUE if e.out_of_reach is None)

#: The first sentence of the spec's ``field`` note of each rule a WARN can cite: what
#: real peers do, which the report quotes beside a tolerated deviation.
FIELD_NOTES: dict[str, str] = {
    "DESC-4": "The published sample extensions answer with a media descriptor (the "
    "timescale) and no extension_identifier.",
    "ACK-1": "A widely used extension server (Intel DL Streamer's, with its default input "
    "queue of 1) answers a sample only when the next request arrives, or once the "
    "pipeline's requests end, so its answer to the latest sample waits for the pipeline.",
    "SEQ-3": "A widely used extension server numbers every answer 0, or repeats a number.",
    "SEQ-4": "A widely used extension server never sets sequence_number on its answers "
    "(each is numbered 0) while acknowledging correctly.",
    "SHM-14": "A widely used pipeline client computes its slots as closed intervals: every "
    "slot after the first is (previous end, previous end + size), so length_bytes is one "
    "byte more than the frame, and its own extension server reads the first frame's worth "
    "of bytes.",
    "CFG-1": 'Real pipelines send "{}" when no configuration is set.',
    "LIFE-4": "Published grpcio extensions (Intel DL Streamer's server, the factory-ai-vision "
    "inference module) begin with `next(request_iterator)`, so a stream that ends before any "
    "message ends with UNKNOWN (a StopIteration) instead of OK.",
    "INF-3": "Below 0 stands for no confidence in real detectors: NVIDIA's DeepStream gives "
    "-0.1 to objects its tracker found (NvDsObjectMeta), and Azure's published DeepStream "
    "extension passes that on as the tag's confidence; model-server adaptors give -1 to an "
    "attribute that is a measure (an age).",
    "INF-4": "Detectors that do not clip their boxes (common in YOLO extensions) send boxes "
    "with l + w or t + h above 1, each edge still in [0, 1]; the published JSON schema "
    "allows them too, as it bounds each edge only.",
}
