"""The label-efficiency study measures the recipe that ships, and reports what it measured."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from ssast.config import load_config
from ssast.evaluate.label_efficiency import efficiency_table, summarize

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import label_efficiency as study  # noqa: E402


def test_the_study_fine_tunes_with_the_templates_recipe():
    overrides = study.CANDIDATES["template"]()
    cfg = load_config(study.ROOT / "configs" / "demo" / "finetune.yaml", overrides)
    template = yaml.safe_load(study.TEMPLATE.read_text())
    for key, value in template["optim"].items():
        assert getattr(cfg.optim, key) == value, key
    assert (cfg.train.epochs, cfg.train.min_steps) == (template["train"]["epochs"], template["train"]["min_steps"])
    assert cfg.data.batch_size == template["data"]["batch_size"]
    assert (cfg.augment.mixup, cfg.augment.noise, cfg.augment.freqm) == (0.0, False, template["augment"]["freqm"])
    # time masks scale with the clip: the template's 512 frames against the demo's 128
    assert cfg.augment.timem == round(template["augment"]["timem"] * 128 / 512)
    # and the demo's own fine-tuning config is that recipe too
    demo = load_config(study.ROOT / "configs" / "demo" / "finetune.yaml", [])
    assert (demo.optim, demo.train.min_steps, demo.augment) == (cfg.optim, cfg.train.min_steps, cfg.augment)


def test_results_keep_one_row_per_run(tmp_path):
    row = {"task": "events", "recipe": "template", "init": "patch", "per_class": 2, "seed": 0, "accuracy": 0.5}
    path = tmp_path / "r.json"
    path.write_text(json.dumps([row, {**row, "accuracy": 0.6}, {**row, "seed": 1, "accuracy": 0.7}]))
    assert [r["accuracy"] for r in study.load(path)] == [0.5, 0.7]  # a repeated run: the first result counts


def test_table_reports_mean_and_spread_over_seeds():
    rows = [{"task": "events", "init": i, "per_class": 6, "seed": s, "accuracy": a}
            for i, accs in (("scratch", (0.4, 0.5, 0.6)), ("patch", (0.7, 0.7))) for s, a in enumerate(accs)]
    mean, std, n = summarize(rows)[("events", "scratch", 6)]
    assert (round(mean, 6), round(std, 4), n) == (0.5, 0.0816, 3)
    table = efficiency_table(rows, {"events": 1 / 6})
    assert "| events (17%) | 6 | 50.0 ± 8.2 | 70.0 ± 0.0 (n=2) |" in table
