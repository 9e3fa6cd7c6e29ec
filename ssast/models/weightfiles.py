"""Reading weight files others wrote (the authors' releases, DeiT state dicts) safely, with one-line errors.

:class:`CheckpointError` is the error of every checkpoint and weights file. It lives here, below our format
(``checkpoint.py``) and the converters (``authors.py``, ``factory.py``), so that none imports another to raise it.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit: the message names the file and what is wrong."""


def _load_failure(e: Exception) -> str:
    """The one useful line of a torch.load error (its text runs over several lines of general advice)."""
    text = str(e)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it holds Python objects ({found.group(1)}), not only tensors"
    if "WeightsUnpickler error:" in text:  # e.g. "Unsupported operand 31": not a pickle of tensors at all
        text = text.split("WeightsUnpickler error:", 1)[1]
        return next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__).split(". ")[0]
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def load_torch_file(path: str | Path, expected: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file it cannot read is one CheckpointError line that
    names the file and says what was ``expected`` there."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # noise before the real error
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights-only errors all mean the same thing to the user
        raise CheckpointError(
            f"{path}: cannot be read as PyTorch weights ({_load_failure(e)}); expected {expected}"
        ) from None
