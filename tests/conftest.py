"""Suite-wide checks: every ``rule`` marker names a rule of spec/."""

from __future__ import annotations

import pytest

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
