"""Why a pretrained frame encoder can lose to scratch at few labels: the time stride and the learning rate.

On the spoken-word task (benchmarks/speech_words.py), a tiny frame encoder (the demo's: 96 dims, 4 layers, 128x2
frames, half of the tokens masked) is pretrained briefly on the unlabelled pool, then it and a scratch encoder of the
same shape are fine-tuned with the few-label recipe (configs/finetune/custom_template.yaml, as
benchmarks/label_efficiency.py applies it) on k clips per class, crossing:

- the fine-tuning time stride: 1 (the paper's frame fine-tuning; the 64 pretraining positions are interpolated to
  127) or 2 (the pretraining stride: positions and kernel used as pretrained);
- the peak learning rate: 1e-4, 2.5e-4, 5e-4 (the template's).

Rows are appended to benchmarks/results/pretrained_recipe.json as they come (an interrupted run resumes).

    python benchmarks/pretrained_recipe.py --work runs/recipe                 # the grid: 36 fine-tunings
    python benchmarks/pretrained_recipe.py --work runs/recipe --probe         # the frozen encoders
    python benchmarks/pretrained_recipe.py --work runs/recipe --report
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_efficiency import CANDIDATES, ROOT, _config, corpus_for, labelled, run_finetune  # noqa: E402

FRAME = ["model.fshape=128", "model.tshape=2", "model.fstride=128"]
KEY = ("init", "tstride", "lr", "per_class", "seed")


def pretrain(work: Path, corpus, steps: int) -> tuple[Path, float]:
    """The pretrained frame encoder (made once per step count) and the seconds its pretraining took."""
    from ssast.train.engine import train

    run = work / f"pretrain-frame-{steps}"
    stamp = run / "seconds.txt"
    if not (run / "final").is_dir() or not stamp.exists():
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.time()
        train(_config("pretrain", ["model.fshape=128", "model.tshape=2", f"data.train=[{corpus.pool}]",
                                   f"train.steps={steps}", f"train.run_dir={run}", "train.progress=none",
                                   "train.probe_every=0", "train.image_every=0"]))
        stamp.write_text(f"{time.time() - t0:.1f}")
    return run / "final", float(stamp.read_text())


def finetune(work: Path, corpus, start: str, init: str, k: int, tstride: int, lr: float, seed: int) -> dict:
    recipe = [o for o in CANDIDATES["template"]() if not o.startswith("optim.lr=")]
    got = run_finetune(work / f"ft-{init}-ts{tstride}-lr{lr:g}-k{k}-s{seed}",
                       FRAME + [f"model.tstride={tstride}", f"optim.lr={lr}"] + recipe + labelled(corpus, k)
                       + [f"model.init={start}", f"train.seed={seed}"])
    return {"task": "speech", "init": init, "tstride": tstride, "lr": lr, "per_class": k, "seed": seed, **got}


def probe(work: Path, corpus, start: str, init: str, k: int, tstride: int) -> dict:
    """The frozen encoder's linear probe (best layer) on the same clips: is the pretrained encoder better than a
    random one (``start`` "scratch", train.seed 0) before any fine-tuning?"""
    from ssast.evaluate.probe import probe_checkpoint

    cfg = _config("finetune", FRAME + [f"model.tstride={tstride}"] + labelled(corpus, k))
    got = probe_checkpoint(start, cfg, work / f"probe-{init}-ts{tstride}-k{k}")
    return {"task": "speech", "init": f"probe {init}", "tstride": tstride, "lr": 0.0, "per_class": k, "seed": 0,
            "accuracy": round(got["best"]["linear"], 4), "layer": got["best"]["layer"]}


def table(rows: list[dict]) -> str:
    """Mean (min-max) test accuracy over seeds per (clips per class, stride, lr), pretrained beside scratch."""
    lines = ["| clips/class | tstride | lr | scratch | pretrained | pretrained - scratch |", "|---|---|---|---|---|---|"]
    cells: dict[tuple, dict[str, list[float]]] = {}
    probes = [r for r in rows if r["init"].startswith("probe")]
    for r in rows:
        if r in probes:
            continue
        cells.setdefault((r["per_class"], r["tstride"], r["lr"]), {}).setdefault(r["init"], []).append(r["accuracy"])
    for (k, ts, lr), got in sorted(cells.items()):
        def fmt(v):
            return f"{100 * np.mean(v):.1f} ({100 * min(v):.0f}-{100 * max(v):.0f}, n={len(v)})" if v else ""
        s, p = got.get("scratch", []), got.get("pretrained", [])
        diff = f"{100 * (np.mean(p) - np.mean(s)):+.1f}" if s and p else ""
        lines.append(f"| {k} | {ts} | {lr:g} | {fmt(s)} | {fmt(p)} | {diff} |")
    for r in probes:  # the frozen encoders, no fine-tuning
        lines.append(f"| {r['per_class']} | {r['tstride']} | - | {r['init']} (layer {r['layer']}) | "
                     f"{100 * r['accuracy']:.1f} | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="runs/recipe", help="corpus and pretrained encoder (reused)")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "pretrained_recipe.json"))
    ap.add_argument("--pretrain-steps", type=int, default=1200)
    ap.add_argument("--per-class", nargs="+", type=int, default=[4])
    ap.add_argument("--tstrides", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 2.5e-4, 5e-4])
    ap.add_argument("--inits", nargs="+", default=["pretrained", "scratch"], choices=["pretrained", "scratch"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--probe", action="store_true", help="only the frozen pretrained and random encoders' probes")
    ap.add_argument("--report", action="store_true", help="only print the table")
    args = ap.parse_args()
    work, results = Path(args.work), Path(args.results)
    rows = load_rows(results)
    if not args.report:
        corpus = corpus_for(work, "speech")
        done = {tuple(r[k] for k in KEY) for r in rows}
        start, seconds = pretrain(work, corpus, args.pretrain_steps)
        print(json.dumps({"pretrain_steps": args.pretrain_steps, "pretrain_seconds": seconds}), flush=True)
        for k in args.per_class if args.probe else []:
            for tstride in args.tstrides:
                for init, ckpt in (("pretrained", str(start)), ("random", "scratch")):
                    row = probe(work, corpus, ckpt, init, k, tstride)
                    print(json.dumps(row), flush=True)
                    rows = append_row(results, row)
        for k in args.per_class if not args.probe else []:
            for seed in args.seeds:
                for tstride in args.tstrides:
                    for lr in args.lrs:
                        for init in args.inits:
                            if (init, tstride, lr, k, seed) in done:
                                continue
                            row = finetune(work, corpus, str(start) if init == "pretrained" else "scratch",
                                           init, k, tstride, lr, seed)
                            if init == "pretrained":
                                row.update(pretrain_steps=args.pretrain_steps, pretrain_seconds=seconds)
                            print(json.dumps(row), flush=True)
                            rows = append_row(results, row)
    print(table(rows))


def load_rows(results: Path) -> list[dict]:
    return json.loads(results.read_text()) if results.exists() else []


def append_row(results: Path, row: dict) -> list[dict]:
    from ssast.atomic import atomic_write_text

    results.parent.mkdir(parents=True, exist_ok=True)
    rows = [r for r in load_rows(results) if tuple(r[k] for k in KEY) != tuple(row[k] for k in KEY)] + [row]
    atomic_write_text(results, json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
