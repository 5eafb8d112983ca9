"""``avaproto check``: the conformance report of real extensions, as an integrator runs it.

The targets are real servers on loopback: avaproto's own (null and motion; with
credentials; over TLS with certificates made here), the bench's grpcio baseline written
as the published samples are (a process of its own, started as the benchmark starts
it), and two small extensions of the test's own that deviate on purpose: one numbers
its answers 0, as a widely used extension server does; one never answers. Each outcome
of the report (PASS, FAIL, WARN, SKIP) is asserted where a broken classification would
change it.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import socket
import struct
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import grpclib.const
import grpclib.exceptions
import grpclib.server
import h2.config
import h2.connection
import h2.events
import pytest
import trustme
from anyio.from_thread import start_blocking_portal
from grpclib.const import Status as GrpcStatus
from grpclib.exceptions import GRPCError

from avaproto.check import CheckOptions
from avaproto.check import report as check_report
from avaproto.check import rules as check_rules
from avaproto.check.probes import Context, Probe, health, probes, video_format
from avaproto.check.report import Outcome
from avaproto.check.run import CheckAborted, run_check, run_probe
from avaproto.check.wire import Target
from avaproto.cli import main
from avaproto.codec import encode_framed
from avaproto.engine.extension import ExtensionRefused
from avaproto.engine.frame import Frame
from avaproto.errors import ProtocolError
from avaproto.extensions import load_extension
from avaproto.media.images import decode_image
from avaproto.messages import (
    METHOD_PATH,
    Encoding,
    Entity,
    Inference,
    InferenceType,
    MediaDescriptor,
    MediaGraphExtensionBase,
    MediaSample,
    MediaStreamDescriptor,
    MediaStreamMessage,
    PixelFormat,
    Rectangle,
    Tag,
)
from avaproto.protocol.auth import Credentials
from avaproto.protocol.descriptor import StreamDescriptor
from avaproto.protocol.events import DescriptorReceived, SampleReceived
from avaproto.protocol.roles import Role
from avaproto.protocol.session import Session
from avaproto.server import running
from avaproto.transport._grpclib_private import http2_stream, listener
from avaproto.transport.grpc_server import ServerConfig
from avaproto.transport.tls import server_context
from bench.processes import Server
from spec.catalogue import load_sections
from tests.transport.test_field_peers import DrainsOnArrival, HoldsLatestAnswer, RawCodec
from tests.transport.test_goaway import _listening
from tests.transport.test_hostile_extensions import speaking

USER, PASSWORD = "pipeline", "s3cret"


# --- targets -------------------------------------------------------------------------------


@contextmanager
def avaproto_server(extension: Any = "null", **config: Any) -> Iterator[str]:
    """avaproto's server, on an event loop of its own thread, for a built-in's name or a
    processor; yields its target."""
    factory = load_extension(extension) if isinstance(extension, str) else extension
    served = running(factory, ServerConfig(port=0, **config))
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(served) as server:
        yield f"127.0.0.1:{server.port}"


@contextmanager
def peer(service: MediaGraphExtensionBase) -> Iterator[str]:
    """A third-party extension: the generated base class served by plain grpclib."""
    with start_blocking_portal() as portal:
        server = portal.call(grpclib.server.Server, [service])  # made in the loop's thread
        portal.call(server.start, "127.0.0.1", 0)
        try:
            listening = listener(server)
            assert listening is not None
            yield f"127.0.0.1:{listening.sockets[0].getsockname()[1]}"
        finally:
            portal.call(server.close)
            portal.call(server.wait_closed)


class UnnumberedAnswers(MediaGraphExtensionBase):
    """Built on avaproto's session, strict on requests, but numbers every answer 0.

    What a widely used extension server does (SEQ-4's field note): its answers need no
    acknowledgement, so a pipeline accepts them, with a warning.
    """

    async def process_media_stream(
        self, messages: AsyncIterator[MediaStreamMessage]
    ) -> AsyncIterator[MediaStreamMessage]:
        session = Session(Role.EXTENSION)
        try:
            async for message in messages:
                for event in session.receive(message):
                    if isinstance(event, DescriptorReceived):
                        yield session.send_descriptor(
                            MediaStreamDescriptor(
                                extension_identifier="unnumbered",
                                media_descriptor=MediaDescriptor(timescale=90000),
                            )
                        )
                    elif isinstance(event, SampleReceived) and event.requires_ack:
                        answer = session.send_sample(
                            MediaSample(timestamp=event.timestamp), ack=event.sequence_number
                        )
                        answer.sequence_number = 0
                        yield answer
            session.receive_end()
        except ProtocolError as error:
            raise GRPCError(GrpcStatus(int(error.status)), str(error)) from None


class NeverAnswers(MediaGraphExtensionBase):
    """Reads everything and answers nothing; ends its stream when the pipeline ends its."""

    async def process_media_stream(
        self, messages: AsyncIterator[MediaStreamMessage]
    ) -> AsyncIterator[MediaStreamMessage]:
        async for _ in messages:
            pass
        return
        yield  # an async generator that yields nothing


class AnswersOnAndOn(MediaGraphExtensionBase):
    """Answers the descriptor, then sends 1100 inferences of its own (as good as
    without end for a probe that reads 1000), and acknowledges nothing."""

    async def process_media_stream(
        self, messages: AsyncIterator[MediaStreamMessage]
    ) -> AsyncIterator[MediaStreamMessage]:
        first = await anext(aiter(messages))
        yield answer_to(first, 1)
        own = MediaSample(inferences=[Inference(type=InferenceType.TEXT)])
        for number in range(2, 1102):
            yield MediaStreamMessage(sequence_number=number, media_sample=own)
        async for _ in messages:
            pass


class FailsAnEmptyStream(MediaGraphExtensionBase):
    """Takes its first message as published grpcio extensions do, with
    ``next(request_iterator)``: a stream without one ends with the handler's error."""

    async def process_media_stream(
        self, messages: AsyncIterator[MediaStreamMessage]
    ) -> AsyncIterator[MediaStreamMessage]:
        first = await anext(aiter(messages))  # raises on a stream with no message
        yield MediaStreamMessage(
            sequence_number=1,
            ack_sequence_number=first.sequence_number,
            media_stream_descriptor=MediaStreamDescriptor(
                media_descriptor=MediaDescriptor(timescale=90000)
            ),
        )


class CrashesWithoutDescriptor(MediaGraphExtensionBase):
    """A handler that crashes when the first message is no descriptor, and serves a
    stream that opens with one: grpclib ends the call UNKNOWN, which is no refusal of
    what it was sent."""

    async def process_media_stream(
        self, messages: AsyncIterator[MediaStreamMessage]
    ) -> AsyncIterator[MediaStreamMessage]:
        number = 0
        async for message in messages:
            if not number:
                descriptor = message.media_stream_descriptor
                assert descriptor is not None, (
                    "'NoneType' object has no attribute 'media_descriptor'"
                )
            number += 1
            yield answer_to(message, number)


def answer_to(message: MediaStreamMessage, number: int) -> MediaStreamMessage:
    """An extension's answer numbered ``number`` acknowledging ``message``: for a
    descriptor, a descriptor of its own, as the published samples send (a timescale)."""
    answer = MediaStreamMessage(sequence_number=number, ack_sequence_number=message.sequence_number)
    if message.media_stream_descriptor is not None:
        answer.media_stream_descriptor = MediaStreamDescriptor(
            media_descriptor=MediaDescriptor(timescale=90000)
        )
    return answer


class SlowLastAnswer:
    """An extension on a slow link: its fourth answer's bytes arrive in two DATA frames
    1.5 s apart, longer than the check waits for an answer before it ends its direction
    (a fake of the link; the server is plain grpclib)."""

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            METHOD_PATH: grpclib.const.Handler(
                self.handle,
                grpclib.const.Cardinality.STREAM_STREAM,
                MediaStreamMessage,
                MediaStreamMessage,
            )
        }

    async def handle(self, stream: Any) -> None:
        await stream.send_initial_metadata()
        raw = http2_stream(stream)
        number = samples = 0
        async for message in stream:
            number += 1
            answer = answer_to(message, number)
            if message.media_stream_descriptor is None:
                samples += 1
            framed = bytes(encode_framed(answer))
            if samples == 4:
                await raw.send_data(framed[:5])
                await anyio.sleep(1.5)  # the link, not a synchronisation
                framed = framed[5:]
            await raw.send_data(framed)
        await stream.send_trailing_metadata()


class UnclippedBoxes(MediaGraphExtensionBase):
    """Answers every sample with a person at the image's left edge, its box unclipped
    (l below 0), as YOLO extensions that compute a centre minus half the width do."""

    async def process_media_stream(
        self, messages: AsyncIterator[MediaStreamMessage]
    ) -> AsyncIterator[MediaStreamMessage]:
        number = 0
        async for message in messages:
            number += 1
            answer = answer_to(message, number)
            if message.media_stream_descriptor is None:
                box = Rectangle(l=-0.01, t=0.1, w=0.3, h=0.4)
                person = Entity(tag=Tag(value="person", confidence=0.9), box=box)
                found = Inference(type=InferenceType.ENTITY, entity=person)
                answer.media_sample = MediaSample(inferences=[found])
            yield answer


class TakesOnlyJpg:
    """An extension that decodes JPG and fails on anything else, as the published YOLO
    extensions do."""

    async def open(self, descriptor: StreamDescriptor) -> None:
        self.encoding = descriptor.video_format.encoding if descriptor.video_format else None

    async def process(self, frame: Frame) -> list[Inference]:
        if frame.data is not None:
            if self.encoding is not Encoding.JPG:
                raise ValueError("cannot decode the received bytes")
            decode_image(frame.data, Encoding.JPG)  # a JPEG of the size, or it raises
        return []

    async def close(self) -> None: ...


def check(capsys: pytest.CaptureFixture[str], target: str, *options: str) -> tuple[int, str, str]:
    """Run ``avaproto check``: its exit status, stdout and stderr."""
    capsys.readouterr()
    status = main(["check", target, *options])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def lines_by_rule(text: str) -> dict[str, tuple[str, str]]:
    """``{rule: (outcome, detail)}`` from the report's lines."""
    found = {}
    for line in text.splitlines()[:-1]:
        rule, _level, rest = line.split(maxsplit=2)
        outcome, _, detail = rest.partition(" ")
        found[rule] = (outcome, detail[1:-1])
    return found


def outcomes(report: dict[str, Any]) -> dict[str, str]:
    return {entry["rule"]: entry["outcome"] for entry in report["rules"]}


# --- avaproto's own server: everything probed passes -------------------------------------------


def test_avaprotos_null_extension_passes_every_rule_probed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with avaproto_server("null") as target:
        status, out, _ = check(capsys, target, "--json")
    assert status == 0
    report = json.loads(out)
    results = outcomes(report)
    skipped = {rule for rule, outcome in results.items() if outcome == "SKIP"}
    # Nothing to check without credentials, TLS or inferences; everything else passes.
    assert skipped == {"AUTH-2", "AUTH-3", "AUTH-4", "TLS-1", "INF-1", "INF-3", "INF-4"}
    assert {results[rule] for rule in results.keys() - skipped} == {"PASS"}
    assert set(results) == set(check_rules.PROBED)
    for entry in report["rules"]:
        assert set(entry) >= {"rule", "level", "outcome", "detail"}
        assert entry["level"] == check_rules.BY_ID[entry["rule"]].level
    summary = report["summary"]
    assert summary == {
        "PASS": len(results) - len(skipped),
        "FAIL": 0,
        "WARN": 0,
        "SKIP": len(skipped),
        "out_of_reach": len(check_rules.CATALOGUE) - len(check_rules.PROBED),
    }
    assert {entry["rule"] for entry in report["out_of_reach"]} == {
        entry.id for entry in check_rules.CATALOGUE if entry.out_of_reach
    }
    assert all(entry["why"] for entry in report["out_of_reach"])


def test_the_motion_extension_passes_with_its_inferences_checked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with avaproto_server("motion") as target:
        status, out, _ = check(capsys, target, "--formats", "rgb24,bgr24", "-v")
    assert status == 0
    found = lines_by_rule(out)
    assert {outcome for outcome, _ in found.values()} == {"PASS", "SKIP"}
    for rule in ("INF-1", "INF-3", "INF-4", "EMB-3", "SHM-4", "DESC-1", "SEQ-6"):
        assert found[rule][0] == "PASS", (rule, found[rule])
    assert "inferences well formed" in found["INF-1"][1]  # -v shows what each PASS saw
    assert out.splitlines()[-1].startswith(f"{len(found)} rules checked: ")


def test_with_credentials_authentication_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with avaproto_server(credentials=Credentials(USER, PASSWORD)) as target:
        status, out, _ = check(
            capsys, target, "--username", USER, "--password", PASSWORD, "--rules", "AUTH-*,LIFE-4"
        )
    assert status == 0, out
    found = lines_by_rule(out)
    assert found["AUTH-1"][0] == "SKIP"  # about an extension without credentials
    assert [found[rule][0] for rule in ("AUTH-2", "AUTH-3", "AUTH-4", "LIFE-4")] == ["PASS"] * 4
    assert set(found) == {"AUTH-1", "AUTH-2", "AUTH-3", "AUTH-4", "LIFE-4"}


def test_a_target_asking_for_credentials_not_given_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with avaproto_server(credentials=Credentials(USER, PASSWORD)) as target:
        status, out, error = check(capsys, target)
        assert status == 1 and out == ""
        [line] = [line for line in error.splitlines() if line.startswith("avaproto check:")]
        assert "requires credentials" in line  # (the rest is the server's log, in-process)
        status, _, error = check(capsys, target, "--username", USER, "--password", "not-the-s3cret")
    assert status == 1 and "refused the credentials given" in error
    assert "not-the-s3cret" not in error


def test_over_tls(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    files = {name: tmp_path / name for name in ("ca.pem", "server.pem", "server.key")}
    ca.cert_pem.write_to_path(str(files["ca.pem"]))
    issued.private_key_pem.write_to_path(str(files["server.key"]))
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(files["server.pem"]), append=True)
    tls = server_context(files["server.pem"], files["server.key"])
    with avaproto_server(ssl=tls) as target:
        status, out, _ = check(capsys, target, "--tls-ca", str(files["ca.pem"]), "--no-shm")
    assert status == 0, out
    found = lines_by_rule(out)
    assert found["TLS-1"][0] == "PASS"
    assert found["SRV-6"][0] == found["WIRE-2"][0] == "PASS"


# --- the grpcio baseline: its real gaps ------------------------------------------------------


@pytest.fixture(scope="module")
def baseline() -> Iterator[str]:
    """grpcio's synchronous server, as the published samples write it and the bench runs it."""
    with tempfile.TemporaryDirectory(prefix="check-baseline-") as logs:
        server = Server.start("grpcio-sync", Path(logs))
        try:
            server.wait_ready(timeout=60)
            yield server.target
        finally:
            server.stop()


def test_the_grpcio_baseline_shows_its_gaps(
    capsys: pytest.CaptureFixture[str], baseline: str
) -> None:
    status, out, _ = check(capsys, baseline, "--username", USER, "--password", PASSWORD, "--json")
    assert status == 1
    report = json.loads(out)
    details = {entry["rule"]: entry["detail"] for entry in report["rules"]}
    results = outcomes(report)
    # It answers a sample sent first with a descriptor and never checks numbering: the
    # text sets those rules for the pipeline, so it is lenient there, not broken.
    for rule in ("DESC-1", "SEQ-3", "SEQ-4", "ACK-3"):
        assert results[rule] == "WARN", (rule, details[rule])
    # A handle that leaves /dev/shm and a frame of another size guard the extension
    # itself: serving them is a failure.
    for rule in ("SHM-3", "MEDIA-6"):
        assert results[rule] == "FAIL", (rule, details[rule])
        assert "expected" in details[rule]
    assert "a sample as the first message: accepted" in details["DESC-1"]
    assert (
        "avaproto refuses it with FAILED_PRECONDITION, but the text sets this rule for the pipeline"
        in details["DESC-1"]
    )
    assert "a repeated sequence number: accepted" in details["SEQ-3"]
    # It has no authentication at all, though it was said to have credentials: that
    # one is owed to its operator.
    assert results["AUTH-3"] == "FAIL", details["AUTH-3"]
    assert "a stream with no x-ms-authentication header: accepted" in details["AUTH-3"]
    assert "expected UNAUTHENTICATED" in details["AUTH-3"]
    # What it does keep is not held against it.
    for rule in ("DESC-5", "ACK-1", "LIFE-4", "SRV-6", "SEQ-6", "AUTH-2"):
        assert results[rule] == "PASS", (rule, details[rule])
    assert results["SRV-9"] == "SKIP"  # no health service: optional
    # grpcio refuses bytes it cannot parse itself, with its own status: refused, so no
    # failure, but not the status avaproto gives.
    assert results["WIRE-1"] == "WARN", details["WIRE-1"]
    assert "refused, with INTERNAL" in details["WIRE-1"]
    assert "avaproto's status for it is INVALID_ARGUMENT" in details["WIRE-1"]
    assert report["summary"]["FAIL"] == sum(outcome == "FAIL" for outcome in results.values())


def model_not_loaded(frame: Frame) -> list[Inference]:
    raise RuntimeError("model not loaded")


@pytest.mark.parametrize("options", [[], ["--no-shm"]], ids=["shm", "no-shm"])
def test_an_extension_failing_every_stream_is_named_first_not_blamed_on_each_rule(
    capsys: pytest.CaptureFixture[str], options: list[str]
) -> None:
    """Its own failure ends every stream that reaches a sample: the probes of the rules
    broken before any sample still judge it; the others saw only that failure, and
    say so, instead of failing rules it may well keep. (With --no-shm the healthy
    streams skipped were counted as failures that never came.)"""
    with avaproto_server(model_not_loaded) as target:
        status, out, _ = check(capsys, target, "--json", *options)
    assert status == 1
    report = json.loads(out)
    results = outcomes(report)
    details = {entry["rule"]: entry["detail"] for entry in report["rules"]}
    failure = (
        r"INTERNAL: \[SRV-3\] the extension failed on sample \d+: RuntimeError: model not loaded"
    )
    assert re.match(f"every stream as a pipeline sends it failed: {failure}", report["notice"])
    assert results["LIFE-4"] == "FAIL" and re.search(failure, details["LIFE-4"])
    for rule in ("SEQ-6", "EMB-3", "CFG-1", "AUTH-1", "SRV-6"):  # valid samples only
        assert results[rule] == "SKIP", (rule, details[rule])
        assert details[rule] == "not judged: its probe met the failure every stream met"
    not_judged = sum(detail.startswith("not judged") for detail in details.values())
    assert f"the {not_judged} rules whose probes met the same failure" in report["notice"]
    for rule in ("DESC-1", "SEQ-4", "MEDIA-6"):  # refused before any sample
        assert results[rule] == "PASS", (rule, details[rule])
    assert report["summary"]["FAIL"] == 1


class NeedsAZone:
    """Refuses a stream whose configuration names no zone, as a configured model does."""

    async def open(self, descriptor: Any) -> None:
        if "zone" not in descriptor.extension_configuration:
            raise ExtensionRefused('the configuration names no zone: {"zone": "..."}')

    async def process(self, frame: Frame) -> list[Inference]:
        return []

    async def close(self) -> None:
        return None


def test_an_extension_that_needs_a_configuration_is_checked_with_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """check had no --config: every stream of such an extension was refused, and the
    report said to fix that first."""
    with avaproto_server(NeedsAZone) as target:
        without, out, _ = check(capsys, target, "--json", "--rules", "LIFE-4,CFG-1,DESC-1")
        refused = json.loads(out)
        given, out, _ = check(
            capsys, target, "--json", "--rules", "LIFE-4,DESC-1", "--config", '{"zone": "door"}'
        )
        served = json.loads(out)
    assert without == 1 and "[CFG-3] the configuration names no zone" in refused["notice"]
    assert "needs a configuration: give it with --config" in refused["rules"][-1]["detail"]
    assert given == 0 and "notice" not in served
    assert set(outcomes(served).values()) == {"PASS"}
    assert outcomes(refused)["CFG-1"] == "SKIP"  # its "{}" met the same refusal


def test_a_failure_of_one_format_only_judges_every_rule(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Served in one format and failing in another: the extension works, and the
    probes' findings stand as they are."""

    def rgb_only(frame: Frame) -> list[Inference]:
        if frame.format is not None and frame.format.pixel_format is not PixelFormat.RGB24:
            raise RuntimeError("model not loaded")
        return []

    with avaproto_server(rgb_only) as target:
        status, out, _ = check(capsys, target, "--json", "--formats", "rgb24,bgr24")
    report = json.loads(out)
    assert status == 1 and "notice" not in report
    assert not any(entry["detail"].startswith("not judged") for entry in report["rules"])


# --- each outcome, where a broken classification would show ----------------------------------


@pytest.mark.rule("SEQ-4")
def test_answers_numbered_zero_are_a_warning_with_the_field_note(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with peer(UnnumberedAnswers()) as target:
        status, out, _ = check(capsys, target, "--rules", "SEQ-*", "--formats", "rgb24")
    assert status == 0, out  # a warning is no failure
    found = lines_by_rule(out)
    outcome, detail = found["SEQ-4"]
    assert outcome == "WARN"
    assert "answers numbered 0, accepted as they need no acknowledgement" in detail
    assert f"in the field: {check_rules.FIELD_NOTES['SEQ-4']}" in detail
    assert found["SEQ-1"][0] == "WARN"  # a SHOULD not followed
    assert found["SEQ-3"][0] == found["SEQ-6"][0] == "PASS"  # requests still checked


@pytest.mark.rule("ACK-1")
def test_an_answer_held_until_the_next_request_is_a_warning_not_a_failure_of_every_rule(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with peer(HoldsLatestAnswer()) as target:
        status, out, _ = check(
            capsys, target, "--rules", "ACK-1,CONN-1,CONN-3,LIFE-2,ACK-5", "--formats", "rgb24",
        )  # fmt: skip
    assert status == 0, out  # a warning is no failure
    found = lines_by_rule(out)
    outcome, detail = found["ACK-1"]
    assert outcome == "WARN"
    shm = "RAW RGB24 64x48 shared memory: 4 samples, each acknowledged, but 5 only after our "
    assert shm in detail
    assert "with no answer for 1 s before" in detail
    assert f"in the field: {check_rules.FIELD_NOTES['ACK-1']}" in detail
    for rule in ("CONN-1", "CONN-3", "LIFE-2", "ACK-5"):
        assert found[rule][0] == "PASS", (rule, found[rule])


@pytest.mark.rule("ACK-1")
def test_answers_handed_out_only_as_requests_arrive_are_a_warning_not_a_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No answer at all while our direction is open: it waited for the probe's
    deadline, and every rule the healthy stream shows failed."""
    with peer(DrainsOnArrival()) as target:
        status, out, _ = check(
            capsys, target, "--rules", "ACK-1,CONN-1,LIFE-2", "--formats", "rgb24",
            "--no-shm", "--timeout", "2",
        )  # fmt: skip
    assert status == 0, out
    found = lines_by_rule(out)
    outcome, detail = found["ACK-1"]
    assert outcome == "WARN"
    assert "4 samples, each acknowledged, but 2, 3, 4, 5 only after our direction" in detail
    assert "with no answer for 1 s before" in detail
    assert found["CONN-1"][0] == found["LIFE-2"][0] == "PASS"


@pytest.mark.rule("INF-4")
def test_a_box_reaching_past_the_left_edge_is_a_warning_with_the_field_note(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """avaproto's pipeline and server cut such a box to the image (INF-4's field note);
    the check failed it."""
    with peer(UnclippedBoxes()) as target:
        status, out, _ = check(capsys, target, "--rules", "INF-*", "--formats", "rgb24")
    assert status == 0, out
    outcome, detail = lines_by_rule(out)["INF-4"]
    assert outcome == "WARN"
    assert (
        "RAW RGB24 64x48 embedded: answer inference 0.entity.box (l=-0.01, t=0.1, w=0.3, "
        "h=0.4) reaches outside the image; cut to it" in detail
    )
    assert f"in the field: {check_rules.FIELD_NOTES['INF-4']}" in detail


@pytest.mark.rule("LIFE-4", "MEDIA-6")
def test_an_extension_that_takes_only_jpg_is_checked_with_jpg_images(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every healthy stream sent RAW frames: each failed against such an extension."""
    served = running(TakesOnlyJpg, ServerConfig(port=0))
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(served) as server:
        target = f"127.0.0.1:{server.port}"
        rules = ("--rules", "LIFE-4,CONN-1,ACK-1,MEDIA-6,EMB-3", "--size", "96x64")
        _, raw, _ = check(capsys, target, *rules, "--formats", "rgb24")
        status, jpg, _ = check(capsys, target, *rules, "--formats", "jpg")
    assert lines_by_rule(raw)["LIFE-4"][0] == "FAIL"
    assert status == 0, jpg
    found = lines_by_rule(jpg)
    assert found["LIFE-4"] == ("PASS", "")
    assert found["CONN-1"][0] == found["ACK-1"][0] == found["EMB-3"][0] == "PASS"
    assert found["MEDIA-6"] == (
        "SKIP",
        "the first of --formats is JPG: the sizes of RAW frames are probed with RAW frames "
        "(put a pixel format first)",
    )


@pytest.mark.rule("LIFE-4")
def test_an_empty_stream_the_extension_fails_is_a_warning_with_the_field_note(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with peer(FailsAnEmptyStream()) as target:
        status, out, _ = check(capsys, target, "--rules", "LIFE-4", "--formats", "rgb24")
    assert status == 0, out
    outcome, detail = lines_by_rule(out)["LIFE-4"]
    assert outcome == "WARN"
    assert detail.startswith("a stream ended before any message: UNKNOWN")
    assert f"in the field: {check_rules.FIELD_NOTES['LIFE-4']}" in detail


@pytest.mark.rule("DESC-1")
def test_a_handler_that_crashes_on_a_violation_fails_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with peer(CrashesWithoutDescriptor()) as target:
        status, out, _ = check(capsys, target, "--rules", "DESC-1", "--formats", "rgb24")
    assert status == 1
    outcome, detail = lines_by_rule(out)["DESC-1"]
    assert outcome == "FAIL"
    assert "a sample as the first message: ended it with UNKNOWN" in detail


@pytest.mark.rule("ACK-1")
def test_an_answer_arriving_slowly_is_read_whole_when_the_wait_for_it_ends(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with peer(SlowLastAnswer()) as target:  # type: ignore[arg-type]
        _, out, _ = check(
            capsys, target, "--rules", "ACK-1,WIRE-1,LIFE-2", "--formats", "rgb24", "--no-shm"
        )
    found = lines_by_rule(out)
    # Its answer was not cut where the wait for it ended: no stray prefix was read.
    assert "compressed flag" not in out and "inside a message prefix" not in out, out
    assert found["LIFE-2"][0] == "PASS", found["LIFE-2"]
    assert found["ACK-1"][0] == "WARN", found["ACK-1"]  # its answer came after our end


@pytest.mark.rule("PIPE-10")
def test_a_probe_keeps_no_more_than_a_thousand_answers(capsys: pytest.CaptureFixture[str]) -> None:
    """Every answer of a probe's stream was kept until the probe's deadline: an
    extension answering without end grew the check by 40 MB a second."""
    with peer(AnswersOnAndOn()) as target:
        status, out, _ = check(
            capsys, target, "--rules", "LIFE-4", "--formats", "rgb24", "--no-shm", "--json"
        )
    assert status == 1
    [entry] = json.loads(out)["rules"]
    assert entry["outcome"] == "FAIL"
    assert "[PIPE-10] the extension sent more than 1000 answers" in entry["detail"]


def test_a_target_that_never_answers_fails_at_the_deadline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with peer(NeverAnswers()) as target:
        status, out, _ = check(
            capsys, target, "--rules", "DESC-5", "--formats", "rgb24", "--no-shm",
            "--timeout", "0.5",
        )  # fmt: skip
    assert status == 1
    assert lines_by_rule(out)["DESC-5"] == (
        "FAIL",
        "RAW RGB24 64x48 embedded: no answer within 0.5 s (--timeout: an extension slower "
        "than that needs more)",
    )


class AnswersOnlyTheDescriptor(MediaGraphExtensionBase):
    """Answers the descriptor, then nothing, and keeps its stream open: an extension
    that drops the frames it fails on."""

    async def process_media_stream(
        self, messages: AsyncIterator[MediaStreamMessage]
    ) -> AsyncIterator[MediaStreamMessage]:
        described = False
        async for message in messages:
            if message.media_stream_descriptor is not None:
                described = True
                yield answer_to(message, 1)
        if described:  # an empty stream (the check's first) ends cleanly
            await anyio.sleep_forever()  # until the probe goes
            yield MediaStreamMessage()  # never reached: an async generator


@pytest.mark.rule("ACK-1")
def test_samples_never_acknowledged_fail_that_rule_not_every_rule_the_stream_shows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with peer(AnswersOnlyTheDescriptor()) as target:
        status, out, _ = check(
            capsys, target, "--rules", "ACK-1,CONN-1,DESC-5", "--formats", "rgb24", "--no-shm",
            "--timeout", "1",
        )  # fmt: skip
    assert status == 1
    found = lines_by_rule(out)
    assert found["ACK-1"] == (
        "FAIL",
        "RAW RGB24 64x48 embedded: 4 samples, 2, 3, 4, 5 never acknowledged (waited 0.9 s, "
        "our direction ended)",
    )
    assert found["CONN-1"][0] == "PASS"
    assert found["DESC-5"][0] == "SKIP"  # not reached: its answers were not all in


def test_probes_left_out_are_skipped_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with avaproto_server("null") as target:
        status, out, _ = check(capsys, target, "--no-shm", "--rules", "SHM-*,AUTH-3")
    assert status == 0
    found = lines_by_rule(out)
    for rule in ("SHM-2", "SHM-4", "SHM-5", "SHM-6", "SHM-14"):
        assert found[rule] == ("SKIP", "--no-shm: shared memory is not probed (for a target on "
                               "another host)"), rule  # fmt: skip
    assert found["SHM-3"][0] == "PASS"  # bad names are refused whatever the host
    assert found["AUTH-3"][0] == "SKIP" and "no credentials given" in found["AUTH-3"][1]
    assert "SHM-7" not in found  # out of reach: counted, not listed
    assert out.splitlines()[-1].endswith(
        "cannot be checked from outside an extension (--json lists them and why)"
    )


def test_the_most_severe_finding_decides_and_levels_soften_deviations() -> None:
    Outcome, Finding = check_report.Outcome, check_report.Finding
    report = check_report.combine(
        "t",
        [
            Finding("ACK-1", Outcome.PASS, "fine"),
            check_report.deviation("ACK-1", "sample 3 acknowledged twice"),
            check_report.deviation("SRV-2", "out of order"),  # SHOULD
            Finding("SEQ-4", Outcome.WARN, "numbered 0", field=True),
            Finding("SEQ-4", Outcome.PASS, "numbered"),
        ],
        ["ACK-1", "SRV-2", "SEQ-4", "ACK-5", "SHM-7"],
    )
    results = {result.rule: result for result in report.results}
    assert results["ACK-1"].outcome is Outcome.FAIL
    assert results["ACK-1"].detail == "sample 3 acknowledged twice"
    assert results["SRV-2"].outcome is Outcome.WARN
    assert results["SEQ-4"].field == check_rules.FIELD_NOTES["SEQ-4"]
    assert results["ACK-5"].outcome is Outcome.SKIP  # probed, but no probe got that far
    assert "SHM-7" not in results and [r for r, _, _ in report.out_of_reach] == ["SHM-7"]
    assert report.failed


# --- the command line ------------------------------------------------------------------------


def test_an_unreachable_target_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status, out, error = check(capsys, f"127.0.0.1:{port}", "--timeout", "2")
    assert status == 1 and out == ""
    assert error.startswith(f"avaproto check: cannot reach 127.0.0.1:{port}")
    assert len(error.splitlines()) == 1


@pytest.mark.anyio
@pytest.mark.rule("PIPE-9")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # grpclib's transport
async def test_a_target_that_answers_in_http1_is_named_as_such(anyio_backend: str) -> None:
    """It read "did not answer an empty stream within 2 s", after the 2 s: the probes'
    connections are bounded and read as the pipeline's are."""
    async with speaking(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n") as port:
        with anyio.fail_after(30), pytest.raises(CheckAborted) as aborted:
            await run_check(f"127.0.0.1:{port}", CheckOptions(timeout=20))
    assert f"[PIPE-9] the extension at 127.0.0.1:{port} answered in HTTP/1" in str(aborted.value)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # grpclib's transport
async def test_a_target_that_closes_as_it_opens_is_one_line(anyio_backend: str) -> None:
    """It sends its SETTINGS and closes: the call meets a lost connection, or grpclib
    fails it with an AttributeError (a connection closed as it opened: that ended the
    check with a traceback), as the two race; either way, one line."""

    async def closes(client: anyio.abc.SocketStream) -> None:
        raw = client.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        async with client:  # closed with a reset, as a process that exits does
            await client.send(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # SETTINGS

    async with _listening(closes) as port:
        for _ in range(3):  # its bytes and its end race the call: each way is one line
            with anyio.fail_after(30), pytest.raises(CheckAborted) as aborted:
                await run_check(f"127.0.0.1:{port}", CheckOptions(timeout=10))
            assert f"127.0.0.1:{port}" in str(aborted.value)


class RawHealth:
    """An extension that ends every stream at once, and whose health service answers
    ``answer``'s bytes, whatever they are."""

    def __init__(self, answer: bytes | Exception) -> None:
        self.answer = answer

    async def _stream(self, stream: Any) -> None:
        async for _ in stream:
            pass

    async def _check(self, stream: Any) -> None:
        await stream.recv_message()
        if isinstance(self.answer, Exception):
            raise self.answer
        await stream.send_message(self.answer)

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        bytes_in_out = (bytes, bytes)
        return {
            METHOD_PATH: grpclib.const.Handler(
                self._stream, grpclib.const.Cardinality.STREAM_STREAM, *bytes_in_out
            ),
            "/grpc.health.v1.Health/Check": grpclib.const.Handler(
                self._check, grpclib.const.Cardinality.UNARY_UNARY, *bytes_in_out
            ),
        }


@pytest.mark.rule("SRV-9")
@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (b"\x08\x63", "status 99, which grpc.health.v1 does not define"),
        (b"\x0a\x01\x01", "a message whose status field is malformed"),  # a length, not a number
        # 16 MB of status fields: read whole, then decoded for 25 s on the event loop,
        # past the probe's deadline and deaf to Ctrl-C.
        (
            b"\x08\x01" * 8_000_000,
            "message of 16000000 bytes exceeds the limit of 1024 bytes",
        ),
    ],
    ids=["unknown-status", "wrong-wire-type", "16-MB"],
)
def test_a_health_answer_the_service_does_not_define_is_named(
    capsys: pytest.CaptureFixture[str], answer: bytes, said: str
) -> None:
    """It ended the whole check with a traceback (ValueError), the report lost."""
    status, out = check_health(capsys, answer)
    assert status == 0  # SRV-9 is a MAY: a deviation is a warning
    assert lines_by_rule(out)["SRV-9"] == ("WARN", f"grpc.health.v1.Health answers {said}")


@pytest.mark.rule("SRV-9")
def test_a_health_refusal_is_quoted_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    """Its status message went to the terminal as it came: lines forged, screen cleared."""
    refusal = grpclib.exceptions.GRPCError(
        grpclib.const.Status.UNAVAILABLE, "down\nFAKE LOG LINE\x1b[2J"
    )
    status, out = check_health(capsys, refusal)
    assert status == 0
    assert lines_by_rule(out)["SRV-9"] == (
        "WARN",
        "Check answered UNAVAILABLE: down\\nFAKE LOG LINE\\x1b[2J",
    )


class RawH2Health(asyncio.Protocol):
    """grpc.health.v1.Health/Check in raw HTTP/2, answered as ``mode`` says: "cut" or
    "reset" (2 bytes of a 10-byte message, then the connection aborted or the stream
    reset), or "gzip" (SERVING, compressed)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.machine = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.machine.initiate_connection()
        transport.write(self.machine.data_to_send())

    def data_received(self, data: bytes) -> None:
        machine, loop = self.machine, asyncio.get_running_loop()
        for event in machine.receive_data(data):
            if not isinstance(event, h2.events.RequestReceived):
                continue
            sid = event.stream_id
            headers = [(":status", "200"), ("content-type", "application/grpc")]
            if self.mode == "gzip":
                body = gzip.compress(b"\x08\x01")
                machine.send_headers(sid, [*headers, ("grpc-encoding", "gzip")])
                machine.send_data(sid, b"\x01" + len(body).to_bytes(4, "big") + body)
                machine.send_headers(sid, [("grpc-status", "0")], end_stream=True)
            else:
                machine.send_headers(sid, headers)
                machine.send_data(sid, b"\x00\x00\x00\x00\x0a\x08\x01")
                if self.mode == "cut":
                    loop.call_later(0.1, self.transport.abort)
                else:
                    loop.call_later(0.1, self.reset, sid)
        self.transport.write(machine.data_to_send())

    def reset(self, sid: int) -> None:
        self.machine.reset_stream(sid)
        self.transport.write(self.machine.data_to_send())


@pytest.mark.rule("SRV-9")
@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize(
    ("mode", "outcome", "said"),
    [
        ("cut", Outcome.WARN, "Check ended before its answer"),
        ("reset", Outcome.WARN, "Check ended before its answer"),
        ("gzip", Outcome.PASS, "grpc.health.v1.Health answers SERVING"),
    ],
)
async def test_a_health_answer_cut_short_or_compressed_is_judged_at_once(
    anyio_backend: str, mode: str, outcome: Outcome, said: str
) -> None:
    """Read off grpclib's reader, the answer waited on after a lost connection or a
    reset, until the probe's deadline; a compressed one was taken for a malformed one."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RawH2Health(mode), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        ctx = Context(Target(f"127.0.0.1:{port}"), CheckOptions(), [video_format("rgb24")])
        with anyio.fail_after(5):
            [found] = await health(ctx)
    finally:
        server.close()
    assert found.outcome is outcome
    assert found.detail.startswith(said), found.detail


def check_health(capsys: pytest.CaptureFixture[str], answer: bytes | Exception) -> tuple[int, str]:
    """``avaproto check --rules SRV-9`` against a ``RawHealth`` answering ``answer``."""
    with start_blocking_portal() as portal:
        server = portal.call(lambda: grpclib.server.Server([RawHealth(answer)], codec=RawCodec()))
        portal.call(server.start, "127.0.0.1", 0)
        try:
            listening = listener(server)
            assert listening is not None
            port = listening.sockets[0].getsockname()[1]
            status, out, _ = check(capsys, f"127.0.0.1:{port}", "--rules", "SRV-9")
        finally:
            portal.call(server.close)
            portal.call(server.wait_closed)
    return status, out


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_probe_that_fails_unforeseen_fails_its_rules_and_the_check_goes_on(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A probe is code of avaproto's meeting an extension it does not trust: what it
    did not foresee fails that probe's rules, naming the error, not the whole report.
    (The failing probe is the test's own: no extension provokes one on purpose.)"""

    async def fails(ctx: Context) -> list[Any]:
        raise KeyError("what no probe foresaw")

    ctx = Context(Target("127.0.0.1:1"), CheckOptions(), [video_format("rgb24")])
    caplog.set_level(logging.DEBUG, logger="avaproto")
    found = await run_probe(ctx, Probe("a probe", ("ACK-1", "SEQ-3"), fails))
    assert [(f.rule, f.outcome) for f in found] == [
        ("ACK-1", Outcome.FAIL),
        ("SEQ-3", Outcome.FAIL),
    ]
    assert found[0].detail == (
        "a probe: the probe could not judge what the extension did, and failed with "
        "KeyError: 'what no probe foresaw' (-v shows where; please report it)"
    )
    assert any(record.exc_info for record in caplog.records)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--rules", "NOPE-*", "matches no rule id"),
        ("--formats", "rgb24,XYZ", "expected pixel formats or encodings among"),
        ("--timeout", "0", "must be positive"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["check", "127.0.0.1:5001", option, value])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", [["check", "--formats", "jpg"], ["bench", "--format", "JPG"]])
def test_an_encoded_format_without_pillow_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """Pillow is an extra: without it, each stream failed on its first frame."""

    def missing() -> None:
        raise ImportError("encoding JPG, PNG and BMP needs Pillow: pip install 'avaproto[image]'")

    monkeypatch.setattr("avaproto.media.images.load_pillow", missing)
    with pytest.raises(SystemExit) as exited:
        main([command[0], "127.0.0.1:5001", *command[1:]])
    assert exited.value.code == 2
    assert "needs Pillow: pip install 'avaproto[image]'" in capsys.readouterr().err


# --- the rules' table against spec/ -----------------------------------------------------------


def test_the_table_is_the_catalogue() -> None:
    spec = [rule for section in load_sections() for rule in section.rules]
    assert [(r.id, r.level) for r in spec] == [
        (entry.id, entry.level) for entry in check_rules.CATALOGUE
    ]
    by_id = {rule.id: rule for rule in spec}
    for rule, note in check_rules.FIELD_NOTES.items():
        assert by_id[rule].field.startswith(note), rule


def test_every_probed_rule_has_a_probe_and_every_probe_a_probed_rule() -> None:
    ctx = Context(Target("127.0.0.1:1"), CheckOptions(), [video_format("RGB24")])
    covered = {rule for probe in probes(ctx) for rule in probe.rules}
    assert covered == set(check_rules.PROBED)
