"""Suite-wide checks: every ``rule`` marker names a rule of spec/."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from avaproto.cli import LIBRARIES
from spec.catalogue import all_rules

KNOWN_RULES = frozenset(all_rules())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unknown = sorted(
        {
            f"{item.nodeid} names unknown rule {rule_id}"
            for item in items
            for mark in item.iter_markers("rule")
            for rule_id in mark.args
            if rule_id not in KNOWN_RULES
        }
    )
    if unknown:
        raise pytest.UsageError("\n".join(unknown))


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A test that runs the CLI in-process (``main([...])``) configures logging as the
    command does: a handler on the root logger writing to the ``sys.stderr`` of that
    moment, which is this test's captured stream. Left in place, it outlives the
    capture and every later test's log records go to a closed stream. Each test gets
    the logging it started with back."""
    root = logging.getLogger()
    names = ("", "avaproto", *LIBRARIES)
    handlers = list(root.handlers)
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        if getattr(handler, "avaproto", False):  # the CLI's (pytest's own come and go)
            root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
