"""Label efficiency: test accuracy against labelled clips per class, from scratch and from pretrained encoders.

On the synthetic tasks of :mod:`ssast.demo.synthetic` and the spoken words of ``speech_words.py`` (real synthesizer
voices, held-out test speakers; each task with its own unlabeled pool), tiny patch, frame and visible-token encoders
are pretrained with ``configs/demo/pretrain.yaml`` (noise off: ``STUDY_BASE``) and fine-tuned on the first k clips per
class with a fine-tuning recipe: by default the few-label recipe of ``configs/finetune/custom_template.yaml`` (its
loss, augmentation, optimiser, schedule and length keys; the model stays the demo's tiny one), or one of the candidate
recipes it was chosen from (``--recipe``). Every result is appended to a JSON file as soon as it exists,
so an interrupted study resumes where it stopped.

    python benchmarks/label_efficiency.py --work runs/label_eff                       # the table of the README
    python benchmarks/label_efficiency.py --work runs/label_eff --recipe paper_keyword --per-class 6
    python benchmarks/label_efficiency.py --work runs/label_eff --report               # table + PNG only
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ssast.demo.run import PRETRAIN_SHAPES, finetune_shape  # noqa: E402
from ssast.evaluate.label_efficiency import efficiency_table, plot_efficiency, summarize  # noqa: E402
from ssast.demo.synthetic import TASKS as SYNTHETIC, make_corpus  # noqa: E402
from speech_words import KEYWORDS, make_speech_corpus  # noqa: E402  (benchmarks/, beside this file)

# the synthetic tasks and the spoken words of real synthesizer voices (benchmarks/speech_words.py): task -> classes
TASKS = {**{t: len(spec.classes) for t, spec in SYNTHETIC.items()}, "speech": len(KEYWORDS)}

TEMPLATE = ROOT / "configs" / "finetune" / "custom_template.yaml"
PAPER_KEYWORD = ROOT / "configs" / "finetune" / "speechcommands_frame.yaml"
RECIPE_SECTIONS = {"augment": None, "optim": None, "train": ("loss", "epochs", "min_steps"), "data": ("batch_size",)}
PRETRAINED = {"patch": PRETRAIN_SHAPES["patch"], "frame": PRETRAIN_SHAPES["frame"],
              "visible": PRETRAIN_SHAPES["patch-visible"]}  # encoder name -> the demo's pretraining overrides
FINETUNE_SHAPE = {"scratch": finetune_shape("patch"), "patch": finetune_shape("patch"),
                  "visible": finetune_shape("patch-visible"), "frame": finetune_shape("frame")}
SCALE_TO_DEMO = 128 / 512  # the template's SpecAugment widths are for 512 frames; the demo's clips have 128


def recipe_from_yaml(path: Path, scale_masks: float = 1.0) -> list[str]:
    """The recipe keys of a fine-tuning config as overrides (model, audio and data lists are left out)."""
    doc = yaml.safe_load(path.read_text())
    out = []
    for section, keys in RECIPE_SECTIONS.items():
        for key, value in (doc.get(section) or {}).items():
            if keys is not None and key not in keys:
                continue
            if key in ("freqm", "timem"):
                value = int(round(value * (scale_masks if key == "timem" else 1.0)))
            out.append(f"{section}.{key}={json.dumps(value) if isinstance(value, list) else value}")
    return out


# The candidates the few-label recipe was chosen from (README: "Few labels"); "template" is whatever ships.
CANDIDATES = {
    # the paper's Speech Commands recipe as it is (BCE, mixup 0.6, noise, batch 128, 30 epochs)
    "paper_keyword": lambda: recipe_from_yaml(PAPER_KEYWORD, 128 / 128),
    # the custom template before the few-label recipe (CE, noise, lr 1e-4 with a per-epoch step decay, 30 epochs)
    "old_template": lambda: ["augment.freqm=24", "augment.timem=24", "augment.noise=true", "data.batch_size=24",
                             "optim.lr=1e-4", "optim.warmup_steps=100", "optim.schedule=step", "optim.step_start=5",
                             "optim.step_every=1", "optim.step_factor=0.85", "train.epochs=30"],
    # few-label candidates: CE, no mixup or noise, light SpecAugment, cosine, a minimum number of steps
    "few_llrd": lambda: ["augment.freqm=12", "augment.timem=12", "augment.noise=false", "augment.mixup=0",
                         "data.batch_size=12", "optim.optimizer=adamw", "optim.weight_decay=0.05", "optim.lr=5e-4",
                         "optim.warmup_steps=40", "optim.schedule=cosine", "optim.layer_decay=0.75",
                         "optim.head_lr_mult=10", "train.epochs=30", "train.min_steps=400"],
    "few_flat": lambda: ["augment.freqm=12", "augment.timem=12", "augment.noise=false", "augment.mixup=0",
                         "data.batch_size=12", "optim.optimizer=adamw", "optim.weight_decay=0.05", "optim.lr=5e-4",
                         "optim.warmup_steps=40", "optim.schedule=cosine", "train.epochs=30", "train.min_steps=400"],
    "few_flat_long": lambda: CANDIDATES["few_flat"]()[:-1] + ["train.min_steps=800"],
    "few_flat_lr1e3": lambda: [o.replace("optim.lr=5e-4", "optim.lr=1e-3") for o in CANDIDATES["few_flat"]()],
    "few_llrd_short": lambda: ["augment.freqm=12", "augment.timem=12", "augment.noise=false", "augment.mixup=0",
                               "data.batch_size=12", "optim.optimizer=adamw", "optim.weight_decay=0.05",
                               "optim.lr=5e-4", "optim.warmup_steps=15", "optim.schedule=cosine",
                               "optim.layer_decay=0.75", "optim.head_lr_mult=10", "train.epochs=30",
                               "train.min_steps=150"],
    "template": lambda: recipe_from_yaml(TEMPLATE, SCALE_TO_DEMO),
}


# Every study here was measured with the demo's pretraining config before it turned on noise and time shift
# (2026-12-07): they keep it off, so that their results files stay what they reproduce
STUDY_BASE = {"pretrain": ["augment.noise=false"]}


def _config(name: str, overrides: list[str]):
    from ssast.demo.run import _config as demo_config

    return demo_config(name, STUDY_BASE.get(name, []) + overrides)


def corpus_for(work: Path, task: str):
    if task == "speech":  # 36 labelled clips per class, 20 test clips per class of held-out speakers, pool 3,600
        return make_speech_corpus(work / "data" / task, train_per_class=36)
    # task seeds differ so that no two tasks share random draws; 36 labelled clips per class, 20 test clips per class
    seed = sorted(SYNTHETIC).index(task) + 11
    return make_corpus(work / "data" / task, pool=720, train_per_class=36, test_per_class=20, seed=seed, task=task)


def pretrain(work: Path, task: str, encoder: str, corpus) -> Path:
    from ssast.train.engine import train

    run = work / task / f"pretrain-{encoder}"
    if not (run / "final").is_dir():
        shutil.rmtree(run, ignore_errors=True)
        train(_config("pretrain", PRETRAINED[encoder] + [f"data.train=[{corpus.pool}]", f"train.run_dir={run}",
                                                         "train.progress=none"]))
    return run / "final"


def labelled(corpus, k: int) -> list[str]:
    """The overrides of a fine-tuning on the first k clips per class of ``corpus``, scored on its test split."""
    return [f"data.label_csv={corpus.labels}", f"data.train=[{corpus.train_subset(k)}]", f"data.test=[{corpus.test}]"]


def run_finetune(run: Path, overrides: list[str]) -> dict:
    """Fine-tune with the demo's finetune config and ``overrides`` in ``run``; keep only the numbers."""
    from ssast.train.engine import train

    shutil.rmtree(run, ignore_errors=True)
    cfg = _config("finetune", overrides + [f"train.run_dir={run}", "train.progress=none", "train.keep_last=1"])
    t0 = time.time()
    res = train(cfg)
    shutil.rmtree(run, ignore_errors=True)
    return {"accuracy": round(res["final"]["accuracy"], 4), "steps": res["steps"], "seconds": round(time.time() - t0, 1)}


def finetune(work: Path, task: str, corpus, k: int, init: str, seed: int, recipe: str) -> dict:
    start = "scratch" if init == "scratch" else pretrain(work, task, init, corpus)
    got = run_finetune(work / task / f"ft-{recipe}-{init}-k{k}-s{seed}", FINETUNE_SHAPE[init] + CANDIDATES[recipe]()
                       + labelled(corpus, k) + [f"model.init={start}", f"train.seed={seed}"])
    return {"task": task, "recipe": recipe, "init": init, "per_class": k, "seed": seed, **got}


def probe(work: Path, task: str, corpus, k: int, encoder: str) -> dict:
    """The frozen-encoder probe (linear, best layer) of a pretrained encoder on the first k clips per class: the
    baseline a fine-tuning must beat. Deterministic, so one "seed"."""
    from ssast.evaluate.probe import probe_checkpoint

    cfg = _config("finetune", FINETUNE_SHAPE[encoder] + labelled(corpus, k))
    out = work / task / f"probe-{encoder}-k{k}"
    result = probe_checkpoint(str(pretrain(work, task, encoder, corpus)), cfg, out, cache_dir=work / "probe_cache")
    return {"task": task, "recipe": "probe", "init": f"probe {encoder}", "per_class": k, "seed": 0,
            "accuracy": round(result["best"]["linear"], 4), "layer": result["best"]["layer"]}


def load(results: Path) -> list[dict]:
    """The rows so far, one per (task, recipe, init, clips per class, seed): studies sharing a file may repeat one."""
    rows = json.loads(results.read_text()) if results.exists() else []
    return list({(r["task"], r["recipe"], r["init"], r["per_class"], r["seed"]): r for r in reversed(rows)}.values())[::-1]


def append(results: Path, row: dict) -> list[dict]:
    """Add ``row`` to the results file (locked, re-read and replaced atomically: several studies may share it)."""
    import fcntl

    from ssast.atomic import atomic_write_text

    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = load(results) + [row]
        atomic_write_text(results, json.dumps(rows, indent=1))
    return rows


def selection_table(rows: list[dict], k: int) -> str:
    """Recipes side by side at k clips per class: mean over seeds per (task, init), and the mean of those cells."""
    cells = sorted({(r["task"], r["init"]) for r in rows if r["per_class"] == k})
    lines = ["| recipe | " + " | ".join(f"{t} {i}" for t, i in cells) + " | mean |", "|---|" + "---|" * (len(cells) + 1)]
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        stats = summarize([r for r in rows if r["per_class"] == k and r["recipe"] == recipe])
        got = [stats.get((t, i, k)) for t, i in cells]
        shown = [f"{100 * m[0]:.1f} (n={m[2]})" if m else "" for m in got]
        mean = f"{100 * np.mean([m[0] for m in got]):.1f}" if all(got) else ""
        lines.append(f"| {recipe} | " + " | ".join(shown) + f" | {mean} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="runs/label_eff", help="corpora and pretrained encoders (reused)")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "label_efficiency.json"))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--per-class", nargs="+", type=int, default=[2, 6, 12, 36])
    ap.add_argument("--inits", nargs="+", default=["scratch", "patch", "frame", "visible"],
                    choices=["scratch", "patch", "frame", "visible"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--recipe", default="template", choices=list(CANDIDATES))
    ap.add_argument("--report", action="store_true", help="only print the table and draw the PNG")
    ap.add_argument("--probe", action="store_true",
                    help="also the frozen-encoder probe of each pretrained encoder at every k (the baseline)")
    ap.add_argument("--selection", type=int, metavar="K", help="only print the recipes side by side at K per class")
    args = ap.parse_args()
    work, results = Path(args.work), Path(args.results)
    rows = load(results)
    if args.selection:
        print(selection_table(rows, args.selection))
        return
    if not args.report:
        done = {(r["task"], r["recipe"], r["init"], r["per_class"], r["seed"]) for r in rows}
        for task in args.tasks:
            corpus = corpus_for(work, task)
            for k in args.per_class:
                for init in args.inits:
                    for seed in args.seeds:
                        if (task, args.recipe, init, k, seed) in done:
                            continue
                        row = finetune(work, task, corpus, k, init, seed, args.recipe)
                        print(json.dumps(row), flush=True)
                        rows = append(results, row)
                    if args.probe and init != "scratch" and (task, "probe", f"probe {init}", k, 0) not in done:
                        row = probe(work, task, corpus, k, init)
                        print(json.dumps(row), flush=True)
                        rows = append(results, row)
    mine = sorted((r for r in rows if r["recipe"] in (args.recipe, "probe")), key=lambda r: list(TASKS).index(r["task"]))
    chance = {t: 1 / classes for t, classes in TASKS.items()}
    print(efficiency_table(mine, chance))
    name = results.stem if args.recipe == "template" else f"{results.stem}_{args.recipe}"
    png = plot_efficiency(mine, chance, results.with_name(name + ".png"))
    print(f"plot: {png}")


if __name__ == "__main__":
    main()
