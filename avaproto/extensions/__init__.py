"""The built-in extensions, and how ``--extension NAME`` finds any extension.

``load_extension`` accepts a built-in's name (``motion``, ``null``) or
``module:attribute`` naming a processor function, an extension class or a factory
in an importable module, so an author serves their own code with the same command.
Like uvicorn and gunicorn, it looks in the current directory first: ``myext:detect``
finds ``./myext.py`` without any ``PYTHONPATH``.

Whatever goes wrong while loading (no such module, an error inside the module, no such
attribute, something that cannot be served) raises ``ExtensionLoadError`` with one line
that says which of these it was.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from ..engine.extension import Processing
from ..server import as_factory
from .motion import MotionExtension
from .null import NullExtension

#: Name -> extension class, for ``avaproto serve --extension NAME``.
BUILTINS: dict[str, Callable[[], Processing]] = {
    "motion": MotionExtension,
    "null": NullExtension,
}


class ExtensionLoadError(ValueError):
    """``--extension`` names nothing that can be served; the message says why."""


class ExtensionImportError(ExtensionLoadError, ImportError):
    """The module is missing, or its own code failed while it was imported."""


class ExtensionAttributeError(ExtensionLoadError, AttributeError):
    """The module has no such attribute."""


class ExtensionTypeError(ExtensionLoadError, TypeError):
    """The attribute is neither a processor, an extension class nor a factory."""


def _current_directory_first() -> None:
    """Put the working directory at the front of ``sys.path``, once.

    ``python -m`` already does; the installed ``avaproto`` script starts with its own
    directory there instead.
    """
    cwd = os.getcwd()
    if not sys.path or os.path.abspath(sys.path[0] or os.curdir) != cwd:
        sys.path.insert(0, cwd)


def _import(module_name: str) -> object:
    _current_directory_first()
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name or module_name.startswith(f"{error.name}."):
            raise ExtensionImportError(
                f"no module named {error.name!r} in {os.getcwd()} or on the Python path"
            ) from None
        raise ExtensionImportError(
            f"importing {module_name} failed: it needs the module {error.name!r}, "
            "which is not installed"
        ) from None
    except Exception as error:  # the module's own code failed (a SyntaxError names the line)
        raise ExtensionImportError(
            f"importing {module_name} failed: {type(error).__name__}: {error}"
        ) from None


def load_extension(spec: str) -> Callable[[], Processing]:
    """A per-stream extension factory for a built-in name or ``module:attribute``."""
    if spec in BUILTINS:
        return BUILTINS[spec]
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        hint = ""
        if not colon and "." in spec.removesuffix(".py"):  # detector.detect
            module, _, name = spec.rpartition(".")
            hint = f" ({module}:{name}, a colon before the function or class)"
        elif spec.endswith(".py") or not colon:  # detector.py, detector
            hint = f" ({spec.removesuffix('.py')}:NAME, the module's function or class)"
        raise ExtensionLoadError(
            f"unknown extension {spec!r}: expected one of {', '.join(BUILTINS)} or "
            f"module:attribute{hint}"
        )
    if module_name.endswith(".py"):  # detector.py:detect: the file, not the module
        raise ExtensionLoadError(
            f"{spec!r} names a file: the module is {module_name.removesuffix('.py')!r} "
            f"({module_name.removesuffix('.py')}:{attribute})"
        )
    target = _import(module_name)
    where = module_name
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ExtensionAttributeError(f"{where} has no attribute {part!r}") from None
        where = f"{where}.{part}"
    try:
        return as_factory(target)  # type: ignore[arg-type]
    except TypeError as error:
        raise ExtensionTypeError(f"{where}: {error}") from None


__all__ = [
    "BUILTINS",
    "ExtensionAttributeError",
    "ExtensionImportError",
    "ExtensionLoadError",
    "ExtensionTypeError",
    "MotionExtension",
    "NullExtension",
    "load_extension",
]
