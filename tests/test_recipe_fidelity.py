"""The recipes in configs/ against the authors' scripts, as tabled in authors_recipes.yaml.

Each tabled key of each recipe must equal the authors' value, or the `ours` value its entry gives with a reason.
Every configs/ file needs a table entry, and every key a recipe file sets must be tabled (or be bookkeeping such as
paths), so a new or changed value cannot slip in unexamined.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ssast.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
TABLE = yaml.safe_load((REPO / "authors_recipes.yaml").read_text())
RECIPES = TABLE["recipes"]
WITH_SCRIPT = sorted(name for name, r in RECIPES.items() if r.get("script"))
SOURCE = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+) (?P<path>\S+?):(?P<line>\d+)\b")


def tabled(name: str) -> dict[str, dict]:
    """The recipe's entries: its set of common values, overridden by its own."""
    recipe = RECIPES[name]
    common = TABLE["common"][recipe["common"]] if recipe.get("common") else {}
    return {**common, **(recipe.get("values") or {})}


def expected(entry: dict):
    return entry["ours"] if "ours" in entry else entry["authors"]


def lookup(obj, key: str):
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def same(actual, want) -> bool:
    if isinstance(want, bool) or isinstance(actual, bool):
        return actual is want
    if isinstance(want, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(actual, want, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(want, list) and isinstance(actual, list):
        return len(want) == len(actual) and all(same(a, w) for a, w in zip(actual, want))
    return actual == want


def set_keys(data: dict, prefix: str = "") -> list[str]:
    """Dotted keys a YAML file sets (sections are walked, values such as lists are leaves)."""
    keys = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        keys += set_keys(v, key + ".") if isinstance(v, dict) else [key]
    return keys


def config_keys(obj=None, prefix: str = "") -> set[str]:
    """Every dotted key of the run configuration."""
    obj = Config() if obj is None else obj
    keys = set()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        keys |= config_keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else {f"{prefix}{f.name}"}
    return keys


@pytest.mark.parametrize("name", WITH_SCRIPT)
def test_recipe_values_match_the_authors_or_say_why(name):
    recipe = RECIPES[name]
    cfg = load_config(REPO / name, task=recipe["task"])
    wrong = []
    for key, entry in sorted(tabled(name).items()):
        actual, want = lookup(cfg, key), expected(entry)
        if not same(actual, want):
            what = "our tabled departure" if "ours" in entry else "the authors' value"
            wrong.append(f"{key} = {actual!r}, but {what} is {want!r} ({entry['source']})")
    if wrong:
        pytest.fail(f"{name} differs from authors_recipes.yaml:\n  " + "\n  ".join(wrong), pytrace=False)


def test_every_config_file_has_a_table_entry():
    files = {str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")}
    assert files == set(RECIPES), (
        f"configs without a table entry: {sorted(files - set(RECIPES))}; "
        f"entries without a file: {sorted(set(RECIPES) - files)}"
    )
    for name, recipe in RECIPES.items():
        assert recipe["task"] == (yaml.safe_load((REPO / name).read_text()).get("task") or "pretrain"), name
        if not recipe.get("script"):
            assert recipe.get("note") and not recipe.get("values"), f"{name}: no authors' script: say why in `note`"


@pytest.mark.parametrize("name", WITH_SCRIPT)
def test_every_value_a_recipe_sets_is_tabled(name):
    given = set_keys(yaml.safe_load((REPO / name).read_text()))
    untabled = sorted(set(given) - set(tabled(name)) - set(TABLE["bookkeeping"]) - {"task"})
    if untabled:
        pytest.fail(f"{name} sets {untabled}, which authors_recipes.yaml does not table", pytrace=False)


def test_table_entries_are_well_formed():
    known = config_keys()
    assert set(TABLE["bookkeeping"]) <= known
    groups = [(f"common.{n}", c) for n, c in TABLE["common"].items()]
    groups += [(n, r.get("values") or {}) for n, r in RECIPES.items()]
    for where, entries in groups:
        for key, entry in entries.items():
            assert key in known, f"{where}: {key} is not a config key"
            assert "authors" in entry, f"{where}: {key} has no authors' value"
            m = SOURCE.match(entry.get("source") or "")
            assert m and m["repo"] in TABLE["authors"], f"{where}: {key}: source must be 'OWNER/REPO PATH:LINE ...'"
            if "ours" in entry:
                assert entry.get("reason"), f"{where}: {key} departs from the authors without a reason"
                assert not same(entry["ours"], entry["authors"]), f"{where}: {key}: `ours` equals the authors' value"
            else:
                assert "reason" not in entry, f"{where}: {key} has a reason but no `ours` value"
    for name, recipe in RECIPES.items():
        assert recipe.get("common") in (None, *TABLE["common"]), f"{name}: unknown common set {recipe.get('common')}"


# (run script, the lists its dry run needs, the AST recipe an imagenet: init must switch to, its warm-up in steps)
IMAGENET_STARTS = [
    ("finetune/esc50/run.sh", ["fold1_train.json", "labels.csv"], "configs/finetune/esc50_ast_imagenet.yaml", 0),
    ("finetune/speechcommands/run.sh", ["train.json"], "configs/finetune/speechcommands_ast_imagenet.yaml", 0),
    ("finetune/audioset20k/run.sh", ["balanced_train.json"], "configs/finetune/audioset20k_ast_imagenet.yaml", 1000),
]


@pytest.mark.parametrize("script, lists, recipe, warmup", IMAGENET_STARTS)
def test_an_imagenet_start_runs_asts_own_recipe(tmp_path, script, lists, recipe, warmup):
    """AST's run_esc.sh / run_sc.sh (warmup=False, lines 39 and 63) / egs/audioset/run.sh (warmup=True, line 62), not
    SSAST's recipe, for a DeiT start; an SSAST start keeps SSAST's."""
    for name in lists:
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name).write_text("{}")
    weights = tmp_path / "deit.pth"
    weights.write_bytes(b"x")
    env = dict(os.environ, DRY_RUN="1", DATA=str(tmp_path / "data"), RUNS=str(tmp_path / "runs"), FOLDS="1",
               PYTHON=sys.executable)
    env.pop("AUDIOSET_ROOT", None), env.pop("ESC50_ROOT", None), env.pop("SC_ROOT", None)

    def command(init: str) -> str:
        proc = subprocess.run(["bash", str(REPO / script), init, "patch"], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()[0]

    assert str(REPO / recipe) in command(f"imagenet:{weights}")
    assert str(REPO / recipe) not in command("scratch")
    assert RECIPES[recipe]["script"].startswith("YuanGongND/ast ")  # tabled against AST's own script
    assert load_config(REPO / recipe, task="finetune").optim.warmup_steps == warmup
