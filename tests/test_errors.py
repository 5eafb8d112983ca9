"""What an error's message may carry: one line, of bounded length, whatever it quotes."""

from __future__ import annotations

from avaproto.errors import MAX_MESSAGE, RemoteProtocolError, StreamFailed, bounded
from avaproto.status import Status


def test_a_message_is_kept_as_written_when_printable() -> None:
    text = "sample 12 was not acknowledged within 4 s; naïve ünïcode is fine"
    assert bounded(text) is text


def test_control_characters_are_escaped_as_a_repr_writes_them() -> None:
    assert bounded("a\nb\rc\x00d\x1be\x7f") == "a\\nb\\rc\\x00d\\x1be\\x7f"
    # C1 controls (NEL, an 8-bit terminal escape) and Unicode's line separator too.
    assert bounded("a\x85b\x9b31m\u2028c") == "a\\x85b\\x9b31m\\u2028c"


def test_a_long_message_is_cut_and_says_how_much_more_there_was() -> None:
    cut = bounded("y" * 1_000_000)
    assert len(cut) <= MAX_MESSAGE
    assert cut.endswith(f"… ({1_000_000 - (MAX_MESSAGE - 32)} characters more)")


def test_both_kinds_of_failure_carry_bounded_messages() -> None:
    quoted = "peer said:\n" + "z" * 10_000
    refused = RemoteProtocolError("SHM-5", Status.FAILED_PRECONDITION, quoted)
    failed = StreamFailed(Status.INTERNAL, quoted)
    for error in (refused, failed):
        assert "\n" not in str(error) and len(error.detail) <= MAX_MESSAGE
