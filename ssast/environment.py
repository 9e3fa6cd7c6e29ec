"""The tested torch / torchaudio / torchvision set, and one-line errors when the installed set cannot load.

torchaudio and torchvision ship compiled libraries that load only with the torch release they were built for, and
their releases no longer follow torch's: a mismatched pair fails at import with an ``OSError`` or ``RuntimeError``
deep inside the package. The library imports them through :func:`require`, which turns such a failure into
:class:`EnvironmentMismatch`: one line naming the installed versions and the ``pip install`` that fixes them.
"""
from __future__ import annotations

import importlib
import re
from importlib import metadata
from pathlib import Path
from types import ModuleType

# The packages whose compiled parts must match torch's; their exact pins live in pyproject.toml alone.
COMPILED_STACK = ("torch", "torchaudio", "torchvision")
_PIN = re.compile(r'^\s*"?(torch|torchaudio|torchvision)\s*==\s*([0-9][0-9A-Za-z.+]*)"?')


class EnvironmentMismatch(RuntimeError):
    """torch, torchaudio or torchvision is installed in a set that cannot load together; the message says the fix."""


def pinned_versions() -> dict[str, str]:
    """The exact versions ssast is tested with: from the installed package's metadata, else from pyproject.toml."""
    lines: list[str] = []
    try:
        lines = metadata.requires("ssast") or []
    except metadata.PackageNotFoundError:  # run from a checkout without installing
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        if pyproject.is_file():
            lines = pyproject.read_text().splitlines()
    pins = {}
    for line in lines:
        m = _PIN.match(line)
        if m:
            pins[m.group(1)] = m.group(2)
    return pins


def installed_versions() -> dict[str, str | None]:
    """The installed version of each package of the compiled stack (None when it is not installed)."""
    found: dict[str, str | None] = {}
    for name in COMPILED_STACK:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def fix_command() -> str:
    """The pip command that installs the tested set."""
    pins = pinned_versions()
    return "pip install " + " ".join(f"'{n}=={pins[n]}'" for n in COMPILED_STACK if n in pins)


def mismatch_message(module: str, error: BaseException) -> str:
    """One line: which package failed to load with which torch, the first line of why, and the fix."""
    have = installed_versions()
    why = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if len(why) > 160:
        why = why[:157] + "..."
    return (f"{module} {have.get(module) or '(not installed)'} cannot be loaded with torch {have.get('torch')} "
            f"({type(error).__name__}: {why}); install the tested set: {fix_command()}")


def require(module: str) -> ModuleType:
    """Import ``module`` (e.g. ``torchaudio.functional``); a failed load of a compiled library becomes one line."""
    try:
        return importlib.import_module(module)
    except (OSError, ImportError, RuntimeError) as e:
        raise EnvironmentMismatch(mismatch_message(module.split(".")[0], e)) from None
