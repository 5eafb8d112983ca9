"""The layers of avaproto, checked rather than described (the README's layout).

From the wire up: the generated messages, the wire-level modules, the protocol core,
the media plane, the engine, the transports, the surfaces. A module imports only from
its own layer or those below it, lazily or not, and the lower layers stay free of the
libraries that belong above them: the protocol core (and everything below it) of
anyio, numpy and grpclib; the engine of grpclib and HTTP/2. Run by ``make lint``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "avaproto"

#: Layer of each module or package, from the wire up; the first matching prefix counts.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("generated", ("avaproto._generated",)),
    ("wire", ("avaproto.errors", "avaproto.status", "avaproto.messages", "avaproto.codec")),
    ("protocol", ("avaproto.protocol",)),
    ("media", ("avaproto.media",)),
    ("engine", ("avaproto.engine",)),
    ("transport", ("avaproto.transport",)),
    (
        "surfaces",
        (
            "avaproto.client", "avaproto.server", "avaproto.send", "avaproto.demo",
            "avaproto.report", "avaproto.cli", "avaproto.diagram", "avaproto.extensions",
            "avaproto.sources", "avaproto.bench", "avaproto.codegen", "avaproto.__main__",
            "avaproto.allocator",
            "avaproto",
        ),
    ),
]  # fmt: skip
RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}

#: Third-party libraries a layer (and every layer below it) must not import.
FORBIDDEN: dict[str, frozenset[str]] = {
    "protocol": frozenset({"anyio", "numpy", "grpclib", "h2", "hpack", "hyperframe", "grpc"}),
    "engine": frozenset({"grpclib", "h2", "hpack", "hyperframe", "grpc"}),
}


def layer_of(module: str) -> str:
    for name, prefixes in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return name
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(module: str, path: Path) -> set[str]:
    """Every module ``module`` imports, at any depth of its code (lazy imports too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


MODULES = modules()


def internal(target: str) -> str | None:
    """The avaproto module ``target`` names (a name imported from a module: that module)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_reaches_up(module: str) -> None:
    own = layer_of(module)
    upward = []
    for target in sorted(imports(module, MODULES[module])):
        if not target.startswith("avaproto"):
            continue
        found = internal(target)
        if found is not None and RANK[layer_of(found)] > RANK[own]:
            upward.append(f"{found} ({layer_of(found)})")
    assert not upward, f"{module} ({own}) imports from above: {', '.join(upward)}"


#: Generated code is left out: the compiler adds the service stubs' grpclib imports.
HAND_WRITTEN = sorted(m for m in MODULES if layer_of(m) != "generated")


@pytest.mark.parametrize("module", HAND_WRITTEN)
def test_lower_layers_stay_free_of_the_libraries_above_them(module: str) -> None:
    rank = RANK[layer_of(module)]
    banned = set().union(*(libs for layer, libs in FORBIDDEN.items() if rank <= RANK[layer]))
    used = {t.split(".")[0] for t in imports(module, MODULES[module])} & banned
    assert not used, f"{module} imports {sorted(used)}"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: a protocol module importing the engine is caught."""
    path = tmp_path / "x.py"
    path.write_text("from ..engine.serve import serve_stream\nimport anyio\n")
    found = {internal(t) for t in imports("avaproto.protocol.x", path)} - {None}
    assert found == {"avaproto.engine.serve"}
    assert RANK[layer_of("avaproto.engine.serve")] > RANK["protocol"]
