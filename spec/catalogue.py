"""The catalogue of the protocol's rules and the tests that check them.

Rules live in ``spec/rules/NN-section.toml``, one file per section of the protocol
text, in the order of that text. Tests name the rules they check with
``@pytest.mark.rule("SEQ-1", ...)`` on a test function or class, or with a module-level
``pytestmark``. This module reads both (the tests by parsing them, so the mapping does
not depend on which tests a run selects), renders ``spec/README.md`` and the state
diagram page, and lists what is wrong: a rule without a test, a test naming an unknown
rule, a rule the code raises that no test marked with it names (so none of them checks
that the error is that rule's), a stale page.

Run ``python -m spec.catalogue render`` (``make spec``) to regenerate the pages, and
``python -m spec.catalogue check`` to list problems.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

SPEC = Path(__file__).resolve().parent
ROOT = SPEC.parent
RULES = SPEC / "rules"
TESTS = ROOT / "tests"
PACKAGE = ROOT / "avaproto"
PAGE = SPEC / "README.md"
DIAGRAM_PAGE = SPEC / "state-machine.md"

LEVELS = ("MUST", "SHOULD", "MAY")
REQUIRED_KEYS = frozenset({"id", "level", "source", "says", "rule"})
OPTIONAL_KEYS = frozenset({"field"})
RULE_ID = re.compile(r"^[A-Z]+-[0-9]+$")


@dataclass(frozen=True)
class Rule:
    id: str
    level: str
    source: str
    says: str
    rule: str
    section: str
    #: What real peers send where the text is silent, and what avaproto does about it.
    field: str = ""


@dataclass(frozen=True)
class Section:
    number: int
    title: str
    source: str
    rules: tuple[Rule, ...]


def load_sections(rules_dir: Path = RULES) -> list[Section]:
    """Read every section file; raise ValueError on a malformed or duplicate rule."""
    sections: list[Section] = []
    seen: set[str] = set()
    for path in sorted(rules_dir.glob("*.toml")):
        number = int(path.name.split("-", 1)[0])
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        title = data["section"]
        rules = []
        for entry in data.get("rules", []):
            missing = REQUIRED_KEYS - entry.keys()
            if missing:
                raise ValueError(f"{path.name}: rule {entry.get('id')!r} lacks {sorted(missing)}")
            unknown = entry.keys() - REQUIRED_KEYS - OPTIONAL_KEYS
            if unknown:
                raise ValueError(
                    f"{path.name}: rule {entry.get('id')!r} has unknown {sorted(unknown)}"
                )
            rule_id = entry["id"]
            if not RULE_ID.match(rule_id):
                raise ValueError(f"{path.name}: malformed rule id {rule_id!r}")
            if rule_id in seen:
                raise ValueError(f"{path.name}: duplicate rule id {rule_id}")
            if entry["level"] not in LEVELS:
                raise ValueError(f"{path.name}: {rule_id} has level {entry['level']!r}")
            seen.add(rule_id)
            rules.append(
                Rule(
                    id=rule_id,
                    level=entry["level"],
                    source=entry["source"],
                    says=" ".join(entry["says"].split()),
                    rule=" ".join(entry["rule"].split()),
                    section=title,
                    field=" ".join(entry.get("field", "").split()),
                )
            )
        sections.append(Section(number, title, data.get("source", ""), tuple(rules)))
    return sections


def all_rules(rules_dir: Path = RULES) -> dict[str, Rule]:
    return {r.id: r for s in load_sections(rules_dir) for r in s.rules}


# --- tests -------------------------------------------------------------------------


def _rule_ids(node: ast.expr) -> Iterator[str]:
    """The ids in ``pytest.mark.rule("A-1", ...)`` (or a list of marks), if that is what node is."""
    if isinstance(node, ast.List | ast.Tuple):
        for element in node.elts:
            yield from _rule_ids(element)
        return
    if not isinstance(node, ast.Call):
        return
    func = node.func
    if not (isinstance(func, ast.Attribute) and func.attr == "rule"):
        return
    if ast.unparse(func.value) not in ("pytest.mark", "mark"):
        return
    for arg in node.args:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            yield arg.value
        else:
            raise ValueError(f"rule ids must be string literals, got {ast.unparse(arg)}")


def _tests_in(
    body: Iterable[ast.stmt], prefix: str, inherited: tuple[str, ...]
) -> Iterator[tuple[str, tuple[str, ...]]]:
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            ids = tuple(i for d in node.decorator_list for i in _rule_ids(d))
            yield f"{prefix}{node.name}", inherited + ids
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            ids = tuple(i for d in node.decorator_list for i in _rule_ids(d))
            yield from _tests_in(node.body, f"{prefix}{node.name}::", inherited + ids)


def scan_tests(tests_dir: Path = TESTS) -> dict[str, tuple[str, ...]]:
    """Map every test (as a pytest node id without parameters) to the rule ids it names."""
    found: dict[str, tuple[str, ...]] = {}
    for path in sorted(tests_dir.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        module_ids: tuple[str, ...] = ()
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
            ):
                module_ids = tuple(_rule_ids(node.value))
        relative = path.relative_to(tests_dir.parent).as_posix()
        for name, ids in _tests_in(tree.body, f"{relative}::", module_ids):
            found[name] = ids
    return found


def _without_rule_marks(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """The test's decorators (but its rule marks) and body, as text."""
    kept = [d for d in node.decorator_list if not list(_rule_ids(d))]
    return "\n".join([*(ast.unparse(d) for d in kept), *(ast.unparse(n) for n in node.body)])


def texts_of_tests(tests_dir: Path = TESTS) -> dict[str, str]:
    """Each test's own text, rule marks left out: what it checks, and with what values."""
    texts: dict[str, str] = {}

    def walk(body: Iterable[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
                "test"
            ):
                texts[f"{prefix}{node.name}"] = _without_rule_marks(node)
            elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                walk(node.body, f"{prefix}{node.name}::")

    for path in sorted(tests_dir.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        walk(tree.body, f"{path.relative_to(tests_dir.parent).as_posix()}::")
    return texts


def raised_rules(package_dir: Path = PACKAGE) -> set[str]:
    """Rule ids the code passes to a call (``ProtocolError("SHM-4", ...)``, ``rule="SRV-5"``).

    The conformance kit's table (``avaproto/check``) names every rule as data, and the
    generated code none; both are left out.
    """
    found: set[str] = set()
    for path in package_dir.rglob("*.py"):
        if {"_generated", "check"} & set(path.relative_to(package_dir).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Call):
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    if (
                        isinstance(arg, ast.Constant)
                        and isinstance(arg.value, str)
                        and RULE_ID.match(arg.value)
                    ):
                        found.add(arg.value)
    return found


def traces(tests: dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """Invert ``scan_tests``: each rule id to the tests that name it."""
    by_rule: dict[str, list[str]] = defaultdict(list)
    for test, ids in tests.items():
        for rule_id in dict.fromkeys(ids):
            by_rule[rule_id].append(test)
    return by_rule


def problems(
    rules_dir: Path = RULES, tests_dir: Path = TESTS, package_dir: Path = PACKAGE
) -> list[str]:
    """Everything that breaks traceability, as sentences; empty when all is well."""
    rules = all_rules(rules_dir)
    by_rule = traces(scan_tests(tests_dir))
    found = [f"rule {r} has no test" for r in rules if r not in by_rule]
    found += [
        f"{test} names unknown rule {rule_id}"
        for rule_id, tests in sorted(by_rule.items())
        if rule_id not in rules
        for test in tests
    ]
    texts = texts_of_tests(tests_dir)
    found += [
        f"rule {rule_id} is raised by the code, but no test marked with it names it "
        "(assert the error's rule)"
        for rule_id in sorted(raised_rules(package_dir) & rules.keys())
        if by_rule.get(rule_id)
        and not any(rule_id in texts.get(test, "") for test in by_rule[rule_id])
    ]
    return found


# --- pages -------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_page(rules_dir: Path = RULES, tests_dir: Path = TESTS) -> str:
    sections = load_sections(rules_dir)
    by_rule = traces(scan_tests(tests_dir))
    count = sum(len(s.rules) for s in sections)
    levels = {level: sum(r.level == level for s in sections for r in s.rules) for level in LEVELS}
    lines = [
        "# The rules of the gRPC extension protocol",
        "",
        "<!-- Generated by `make spec` from spec/rules/*.toml and the tests; do not edit. -->",
        "",
        "Each rule comes from a normative statement of the protocol text (*seed*: the",
        "protocol's documentation) or of the wire contract (*contract*: the comments of its",
        "`.proto` files); *avaproto* marks rules this implementation adds where the sources",
        "are silent. The level is the source's own word. Errors name these ids, and every",
        "rule is checked by the tests listed beside it.",
        "",
        f"{count} rules: " + ", ".join(f"{n} {level}" for level, n in levels.items() if n) + ".",
        "The session state machine is drawn in [state-machine.md](state-machine.md).",
        "",
    ]
    for section in sections:
        lines.append(f"- [{section.number}. {section.title}](#{_anchor(section)})")
    lines.append("- [Field tolerances](#field-tolerances)")
    for section in sections:
        lines += ["", f"## {section.number}. {section.title}", ""]
        if section.source:
            lines += [f"Source: {section.source}", ""]
        lines += ["| id | level | rule | source says | tests |", "| --- | --- | --- | --- | --- |"]
        for rule in section.rules:
            tests = "<br>".join(f"`{t}`" for t in by_rule.get(rule.id, [])) or "**none**"
            field = f"<br>**In the field:** {_cell(rule.field)}" if rule.field else ""
            lines.append(
                f"| {rule.id} | {rule.level} | {_cell(rule.rule)}{field} | "
                f"{_cell(rule.source)}: “{_cell(rule.says)}” | {tests} |"
            )
    noted = [rule for section in sections for rule in section.rules if rule.field]
    lines += [
        "",
        "## Field tolerances",
        "",
        "What real pipelines and extensions send where the text is silent, and what avaproto",
        "does about it. A deviation marked *warned* is accepted with one warning per stream",
        "naming the rule and the peer, and counted in the stream's closing summary.",
        "",
        "| rule | in the field |",
        "| --- | --- |",
        *(f"| {rule.id} | {_cell(rule.field)} |" for rule in noted),
    ]
    return "\n".join(lines) + "\n"


def _anchor(section: Section) -> str:
    text = f"{section.number}. {section.title}".lower()
    return re.sub(r"[^a-z0-9 -]", "", text).replace(" ", "-")


def render_diagram_page() -> str:
    from avaproto.diagram import mermaid

    return (
        "# The session state machine\n\n"
        "<!-- Generated by `make spec` from avaproto/protocol/lifecycle.py; do not edit. -->\n\n"
        "Both parties run this machine; `avaproto diagram --format mermaid|dot` prints it.\n"
        "Each arrow is a row of the table in `avaproto/protocol/lifecycle.py`, labelled with\n"
        "its trigger and, in brackets, the guards that must hold.\n\n"
        f"```mermaid\n{mermaid()}```\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spec.catalogue")
    parser.add_argument("command", choices=["render", "check"])
    args = parser.parse_args(argv)
    if args.command == "render":
        PAGE.write_text(render_page(), encoding="utf-8")
        DIAGRAM_PAGE.write_text(render_diagram_page(), encoding="utf-8")
        print(f"wrote {PAGE.relative_to(ROOT)} and {DIAGRAM_PAGE.relative_to(ROOT)}")
    found = problems()
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found and args.command == "check" else 0


if __name__ == "__main__":
    sys.exit(main())
