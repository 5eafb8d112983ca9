"""The built-in extensions, and how ``--extension NAME`` finds any extension.

``load_extension`` accepts a built-in's name (``motion``, ``null``) or
``module:attribute`` naming a processor function, an extension class or a factory
in an importable module, so an author serves their own code with the same command.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..engine.extension import Extension
from ..server import as_factory
from .motion import MotionExtension
from .null import NullExtension

#: Name -> extension class, for ``avaproto serve --extension NAME``.
BUILTINS: dict[str, Callable[[], Extension]] = {
    "motion": MotionExtension,
    "null": NullExtension,
}


def load_extension(spec: str) -> Callable[[], Extension]:
    """A per-stream extension factory for a built-in name or ``module:attribute``."""
    if spec in BUILTINS:
        return BUILTINS[spec]
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(
            f"unknown extension {spec!r}: expected one of {', '.join(BUILTINS)} or module:attribute"
        )
    target: object = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return as_factory(target)  # type: ignore[arg-type]


__all__ = ["BUILTINS", "MotionExtension", "NullExtension", "load_extension"]
