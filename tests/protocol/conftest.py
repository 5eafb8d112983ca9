"""Fixtures of the protocol-core tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.builders import Pair, negotiate


@pytest.fixture
def pair() -> Pair:
    return negotiate()


@pytest.fixture
def make_pair() -> Callable[..., Pair]:
    return negotiate
