"""The catalogue itself: every rule has a test, every id a test or the code names exists,
and the rendered pages are current."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from avaproto.diagram import mermaid
from spec import catalogue

ROOT = Path(__file__).resolve().parents[2]
CITED = re.compile(r"\b([A-Z]+-[0-9]+)\b")


def test_catalogue_is_well_formed() -> None:
    sections = catalogue.load_sections()
    assert [s.number for s in sections] == sorted({s.number for s in sections})
    rules = catalogue.all_rules()
    assert len(rules) >= 40
    assert {r.level for r in rules.values()} <= set(catalogue.LEVELS)
    for rule in rules.values():
        assert rule.says and rule.rule and rule.source, rule.id


def test_every_rule_has_a_test_and_every_test_names_known_rules() -> None:
    assert catalogue.problems() == []


def test_problems_are_found(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "01-x.toml").write_text(
        'section = "X"\n[[rules]]\nid = "X-1"\nlevel = "MUST"\nsource = "s"\nsays = "s"\n'
        'rule = "r"\n[[rules]]\nid = "X-2"\nlevel = "MAY"\nsource = "s"\nsays = "s"\nrule = "r"\n'
    )
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_x.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.rule('X-1')\ndef test_a():\n    assert True\n\n"
        "@pytest.mark.rule('Y-9')\nclass TestB:\n    def test_b(self):\n        assert True\n"
    )
    package = tmp_path / "package"
    package.mkdir()
    (package / "code.py").write_text("def f():\n    raise ValueError('X-1', 'refused')\n")
    assert catalogue.problems(rules, tests, package) == [
        "rule X-2 has no test",
        "tests/test_x.py::TestB::test_b names unknown rule Y-9",
        "rule X-1 is raised by the code, but no test marked with it names it "
        "(assert the error's rule)",
    ]
    (tests / "test_x.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.rule('X-1', 'X-2')\ndef test_a():\n    assert error().rule == 'X-1'\n"
    )
    assert catalogue.problems(rules, tests, package) == []


def test_malformed_catalogue_is_refused(tmp_path: Path) -> None:
    (tmp_path / "01-x.toml").write_text(
        'section = "X"\n[[rules]]\nid = "X-1"\nlevel = "SHALL"\nsource = "s"\nsays = "s"\n'
        'rule = "r"\n'
    )
    with pytest.raises(ValueError, match="level 'SHALL'"):
        catalogue.load_sections(tmp_path)


def test_every_rule_id_the_code_cites_exists() -> None:
    rules = catalogue.all_rules()
    cited = {
        (path.relative_to(ROOT).as_posix(), rule_id)
        for path in (ROOT / "avaproto").rglob("*.py")
        if "_generated" not in path.parts
        for rule_id in CITED.findall(path.read_text(encoding="utf-8"))
        if rule_id.split("-")[0] in {r.split("-")[0] for r in rules}
    }
    assert cited, "the code cites no rules at all"
    assert sorted(c for c in cited if c[1] not in rules) == []


def test_rules_page_is_current() -> None:
    assert (ROOT / "spec" / "README.md").read_text(encoding="utf-8") == catalogue.render_page(), (
        "spec/README.md is stale: run `make spec`"
    )


def test_state_diagram_page_is_current() -> None:
    page = (ROOT / "spec" / "state-machine.md").read_text(encoding="utf-8")
    assert page == catalogue.render_diagram_page(), (
        "spec/state-machine.md is stale: run `make spec`"
    )
    assert mermaid() in page


@pytest.mark.parametrize(("fmt", "start"), [("mermaid", "stateDiagram-v2"), ("dot", "digraph")])
def test_cli_prints_the_diagram(fmt: str, start: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "avaproto", "diagram", "--format", fmt],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.startswith(start)
    for state in ("awaiting_descriptor", "negotiated", "streaming", "closing", "closed"):
        assert state in done.stdout
