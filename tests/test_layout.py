"""The architecture as the code's own imports draw it: what stands at the top of ``ssast/``, which layer may import
which, and no import circle between modules (lazy imports inside functions count too)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ssast"
# the top level: entry points and shared basics; everything else lives in a layer package
TOP_MODULES = {"__init__", "__main__", "cli", "config", "environment", "atomic", "hear"}
# what each layer may import (besides itself); `hear` is the HEAR tools' name for ssast.evaluate.hear
BASICS = {"config", "environment", "atomic", "__init__"}
ALLOWED = {
    "config": {"models"},  # config's pretraining check asks the model code for grid and mask sizes (lazy)
    "environment": set(),
    "atomic": {"config"},
    "audio": BASICS,
    "data": BASICS | {"audio"},
    "models": BASICS | {"audio"},
    "train": BASICS | {"audio", "data", "models"},
    "serve": BASICS | {"audio", "data", "models", "train"},
    "evaluate": BASICS | {"audio", "data", "models", "train", "serve"},
    "demo": BASICS | {"audio", "data", "models", "train", "serve", "evaluate"},
    "hear": {"evaluate"},
    "cli": BASICS | {"audio", "data", "models", "train", "serve", "evaluate", "demo"},
    "__main__": {"cli"},
    "__init__": set(),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The ssast modules ``name`` imports anywhere in its file (each ``from a.b import c`` counts as a.b.c when that
    is a module, else a.b)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t.startswith("ssast") and t != name:
                found.add(t)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def test_top_level_holds_only_entry_points_and_basics():
    loose = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in TOP_MODULES)
    assert not loose, f"modules standing loose in ssast/: {loose}"
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert packages == ["audio", "data", "demo", "evaluate", "models", "serve", "train"]


def test_imports_run_one_way(graph):
    wrong = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                   if _layer(t) != _layer(m) and _layer(t) not in ALLOWED[_layer(m)])
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_training_reaches_no_measuring_or_serving_code(graph):
    up = sorted(f"{m} -> {t}" for m, targets in graph.items() if _layer(m) == "train"
                for t in targets if _layer(t) in ("evaluate", "serve", "demo", "cli"))
    assert not up, up


def test_no_import_circle(graph):
    """Depth-first search for a back edge over the module graph (package __init__ re-exports included)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if t.startswith(m + "."):  # a package importing its own submodules is not a circle
                continue
            if state.get(t) == 1 and not m.startswith(t + "."):
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            circle = visit(m)
            assert circle is None, "import circle: " + " -> ".join(circle)


def test_hear_tools_find_the_api_under_its_old_name():
    import ssast.evaluate.hear
    import ssast.hear

    for name in ("load_model", "get_scene_embeddings", "get_timestamp_embeddings", "HearModel"):
        assert getattr(ssast.hear, name) is getattr(ssast.evaluate.hear, name)
