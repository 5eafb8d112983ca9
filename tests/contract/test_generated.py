"""The committed message classes are the ones ``protos/`` compiles to.

``avaproto/_generated`` is committed so that importing avaproto needs no compiler; the
price is that an edit to ``protos/`` without ``make protos`` would leave the classes
describing an older contract. Regenerating here and comparing byte for byte catches
that, including a file that should have appeared or disappeared. That covers both
packages: the extension's contract and the standard health service.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from avaproto import codegen
from avaproto.messages import METHOD_PATH, PACKAGE

#: The health service's methods as every health client calls them, written out.
HEALTH_PATHS = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")


def tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` by relative path; byte-code caches are not output."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    output = tmp_path_factory.mktemp("generated") / "_generated"
    codegen.generate(output)
    return tree(output)


def test_generated_code_is_readable_by_every_user(tmp_path: Path) -> None:
    """As any package installed: not private like the scratch directory protoc wrote to."""
    output = tmp_path / "_generated"
    previous = os.umask(0o022)
    try:
        codegen.generate(output)
    finally:
        os.umask(previous)
    for path in [output, *output.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o444 == 0o444, f"{path} is {oct(mode)}"
        if path.is_dir():
            assert mode & 0o111 == 0o111, f"{path} is {oct(mode)}"


class TestGeneratedCode:
    @pytest.mark.rule("CONN-4")
    def test_committed_code_matches_protos(self, regenerated: dict[str, bytes]) -> None:
        committed = tree(codegen.OUTPUT)
        differing = sorted(
            name
            for name in regenerated.keys() | committed.keys()
            if regenerated.get(name) != committed.get(name)
        )
        assert differing == [], (
            f"avaproto/_generated differs from what protos/ compiles to in {differing}: "
            "run make protos"
        )

    @pytest.mark.rule("CONN-2")
    def test_generated_code_carries_the_contract_names(self, regenerated: dict[str, bytes]) -> None:
        package_dir = PACKAGE.replace(".", "/")
        source = regenerated[f"{package_dir}/__init__.py"].decode()
        assert source.count(f'"{METHOD_PATH}"') == 2  # the client stub and the server base
        assert "class MediaGraphExtensionStub(" in source
        assert "class MediaGraphExtensionBase(" in source

    @pytest.mark.rule("SRV-9")
    def test_generated_code_holds_the_standard_health_service(
        self, regenerated: dict[str, bytes]
    ) -> None:
        source = regenerated["grpc/health/v1/__init__.py"].decode()
        assert "# sources: grpc/health/v1/health.proto" in source
        for path in HEALTH_PATHS:
            assert source.count(f'"{path}"') == 2  # the client stub and the server base
        assert "class HealthStub(" in source
        assert "class HealthBase(" in source
        # Registered under the standard package, beside the extension's messages.
        assert 'register_message("grpc.health.v1", "HealthCheckResponse"' in source
