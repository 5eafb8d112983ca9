"""Spec section 7, Client authentication (the header check, sans I/O)."""

from __future__ import annotations

import base64
import logging

import pytest

from avaproto.errors import RemoteProtocolError
from avaproto.protocol.auth import AUTH_HEADER, Credentials, check_authentication, parse_header
from avaproto.status import Status

EXPECTED = Credentials("ava", "s3cr:et-ü")


def basic(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


def refused(values: list[str]) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as caught:
        check_authentication(values, EXPECTED)
    assert (caught.value.rule, caught.value.status) == ("AUTH-3", Status.UNAUTHENTICATED)
    return caught.value


class TestOptional:
    @pytest.mark.rule("AUTH-1")
    @pytest.mark.parametrize("values", [[], ["Basic garbage"], [basic("any:thing")]])
    def test_without_configured_credentials_everything_passes(self, values: list[str]) -> None:
        check_authentication(values, None)


class TestHeader:
    @pytest.mark.rule("AUTH-2")
    def test_header_is_basic_base64_of_username_colon_password(self) -> None:
        credentials = Credentials("username", "password")
        assert credentials.header_value() == "Basic dXNlcm5hbWU6cGFzc3dvcmQ="
        assert credentials.metadata() == ((AUTH_HEADER, "Basic dXNlcm5hbWU6cGFzc3dvcmQ="),)
        assert AUTH_HEADER == "x-ms-authentication"

    @pytest.mark.rule("AUTH-2")
    def test_header_round_trips_utf8_and_colons_in_the_password(self) -> None:
        assert parse_header(EXPECTED.header_value()) == EXPECTED
        assert parse_header("basic   " + basic("a:b:c")[6:]) == Credentials("a", "b:c")

    @pytest.mark.rule("AUTH-3")
    @pytest.mark.parametrize("password", ["p", "pa", "pas", "pass"])
    def test_base64_without_its_padding_is_read(self, password: str) -> None:
        """Every length of padding (none, one '=', two) left out decodes the same."""
        padded = Credentials("user", password).header_value()
        assert parse_header(padded.rstrip("=")) == Credentials("user", password)
        check_authentication([padded.rstrip("=")], Credentials("user", password))

    @pytest.mark.rule("AUTH-2")
    def test_username_with_a_colon_cannot_be_configured(self) -> None:
        with pytest.raises(ValueError, match="':'"):
            Credentials("a:b", "c")


class TestRefusals:
    @pytest.mark.rule("AUTH-3")
    def test_right_credentials_pass(self) -> None:
        check_authentication([EXPECTED.header_value()], EXPECTED)

    @pytest.mark.rule("AUTH-3")
    def test_missing_header(self) -> None:
        assert "missing" in str(refused([]))

    @pytest.mark.rule("AUTH-3")
    def test_repeated_header(self) -> None:
        assert "exactly one" in str(refused([EXPECTED.header_value()] * 2))

    @pytest.mark.rule("AUTH-3")
    @pytest.mark.parametrize(
        "value",
        [
            "Bearer abc",
            "Basic",
            "Basic !!!notbase64",
            "Basic " + base64.b64encode(b"\xff\xfe").decode(),
            basic("no-colon"),
            "",
        ],
    )
    def test_malformed_header(self, value: str) -> None:
        refused([value])

    @pytest.mark.rule("AUTH-3")
    @pytest.mark.parametrize("text", ["ava:wrong", "eva:s3cr:et-ü", "ava:s3cr:et-u", "ava:"])
    def test_wrong_credentials(self, text: str) -> None:
        assert "wrong username or password" in str(refused([basic(text)]))


class TestSecrecy:
    @pytest.mark.rule("AUTH-4")
    @pytest.mark.parametrize(
        "value",
        [basic("ava:hunter2-secret"), "Basic " + "aHVudGVyMi1zZWNyZXQ=", basic("hunter2-secret")],
    )
    def test_errors_never_show_the_credentials(
        self, value: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        error = refused([value])
        for shown in (str(error), repr(error), caplog.text):
            assert "hunter2" not in shown
            assert value.split()[-1] not in shown

    @pytest.mark.rule("AUTH-4")
    def test_repr_hides_the_password(self) -> None:
        assert "s3cr" not in repr(EXPECTED)
        assert "ava" in repr(EXPECTED)
