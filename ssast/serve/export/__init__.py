"""Taking a trained model elsewhere: Hugging Face transformers (export and import) and ONNX (export).

The optional packages are imported only here, on use: ``pip install -e ".[hf]"`` or ``".[onnx]"``.
"""
from __future__ import annotations

from pathlib import Path

from ssast.config import ConfigError
from ssast.serve.export.hf import export_hf, import_hf

FORMATS = ("hf", "onnx")

__all__ = ["FORMATS", "export_checkpoint", "export_hf", "import_hf", "require_extra"]


def require_extra(module: str, extra: str) -> None:
    """One line naming the extra to install when an optional package is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{module} is not installed: pip install -e \".[{extra}]\" (or pip install {module})")


def export_checkpoint(ckpt: str, out: str, fmt: str, **options) -> Path:
    """Write checkpoint folder ``ckpt`` to ``out`` in format ``fmt`` ("hf": a transformers folder; "onnx": a .onnx file).

    An existing ``out`` is replaced only when it is an earlier export of the same checkpoint, or with
    ``overwrite=True`` an export of another one; anything else is refused."""
    if fmt == "hf":
        return export_hf(ckpt, out, **options)
    if fmt == "onnx":
        for module in ("onnx", "onnxscript"):
            require_extra(module, "onnx")
        from ssast.serve.export.onnx import export_onnx

        return export_onnx(ckpt, out, **options)
    raise ConfigError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")

