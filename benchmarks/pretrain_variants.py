"""Pretraining variants side by side: one encoder pass or the authors' two (``model.two_pass``), and our cluster
sampler or the authors' (``model.mask_sampler``), on the synthetic tasks of :mod:`ssast.demo.synthetic`.

Each variant pretrains the demo's tiny encoder (``configs/demo/pretrain.yaml``, shortened to ``--steps``) and is then
scored three ways: the masked-patch accuracy on the held-out test clips (fixed masks, seed 1234, the variant's own
sampler), the frozen linear probe (best layer) and a few-label fine-tune (``--per-class`` clips per class, the
few-label template recipe shortened to ``--ft-steps``). "Equal time" gives the two-pass variant the steps one pass
makes in the same time: the per-step time ratio of the two paths is measured first, side by side in one process
(alternating steps on the same batch), because the machine is shared and wall-clock between runs is noisy. Rows are
appended to the JSON as they come, so an interrupted study resumes.

    OMP_NUM_THREADS=1 python benchmarks/pretrain_variants.py --work runs/variants
    python benchmarks/pretrain_variants.py --report
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.label_efficiency import CANDIDATES, FINETUNE_SHAPE, PRETRAINED, _config, corpus_for  # noqa: E402
from ssast.atomic import atomic_write_text  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "pretrain_variants.json"
# variant -> (encoders it applies to, overrides); "two-pass-time" gets its steps from the measured time ratio
VARIANTS = {
    "one-pass": (("patch", "frame"), []),
    "two-pass": (("patch", "frame"), ["model.two_pass=true"]),
    "two-pass-time": (("patch", "frame"), ["model.two_pass=true"]),
    "authors-sampler": (("patch",), ["model.mask_sampler=authors"]),
}


def step_time_ratio(encoder: str, reps: int = 30) -> float:
    """Seconds per training step of two passes over one pass, alternating the two on the same batch."""
    import torch

    from ssast.models.pretrain import build_pretrain_model

    times = {}
    models = {}
    for two in (False, True):
        cfg = _config("pretrain", PRETRAINED[encoder] + [f"model.two_pass={str(two).lower()}"])
        torch.manual_seed(0)
        models[two] = build_pretrain_model(cfg.model)
        times[two] = []
    x = torch.randn(cfg.data.batch_size, cfg.audio.target_length, cfg.model.input_fdim)
    opt = {two: torch.optim.Adam(m.parameters(), 1e-4) for two, m in models.items()}
    for i in range(reps + 3):
        for two in (False, True) if i % 2 == 0 else (True, False):
            t0 = time.perf_counter()
            out = models[two](x)
            opt[two].zero_grad()
            out.loss.backward()
            opt[two].step()
            if i >= 3:  # the first steps warm up the allocator
                times[two].append(time.perf_counter() - t0)
    return float(np.median(times[True]) / np.median(times[False]))


def run_variant(work: Path, task: str, corpus, encoder: str, variant: str, seed: int, steps: int, per_class: int,
                ft_steps: int) -> dict:
    from ssast.evaluate.probe import probe_checkpoint
    from ssast.train.engine import train

    run = work / task / f"{variant}-{encoder}-s{seed}"
    shutil.rmtree(run, ignore_errors=True)
    extra = VARIANTS[variant][1]
    pre = _config("pretrain", PRETRAINED[encoder] + extra + [
        f"data.train=[{corpus.pool}]", f"data.test=[{corpus.test}]", f"train.steps={steps}", f"train.seed={seed}",
        f"train.run_dir={run / 'pretrain'}", "train.progress=none", "train.image_every=0", f"train.ckpt_every={steps}", "train.keep_last=1",
        f"optim.warmup_steps={max(1, steps // 30)}"])
    t0 = time.time()
    res = train(pre)
    pretrain_s = time.time() - t0
    ckpt = str(run / "pretrain" / "final")
    probe_cfg = _config("finetune", FINETUNE_SHAPE[encoder] + [
        f"data.label_csv={corpus.labels}", f"data.train=[{corpus.train_subset(per_class)}]",
        f"data.test=[{corpus.test}]"])
    probe = probe_checkpoint(ckpt, probe_cfg, run / "probe")
    recipe = [o for o in CANDIDATES["template"]() if not o.startswith("train.min_steps")]
    ft = _config("finetune", FINETUNE_SHAPE[encoder] + recipe + [
        f"data.label_csv={corpus.labels}", f"data.train=[{corpus.train_subset(per_class)}]",
        f"data.test=[{corpus.test}]", f"model.init={ckpt}", f"train.seed={seed}", f"train.run_dir={run / 'ft'}",
        "train.progress=none", "train.keep_last=1", f"train.min_steps={ft_steps}", "train.epochs=1"])
    fres = train(ft)
    shutil.rmtree(run, ignore_errors=True)  # only the numbers are kept
    return {"task": task, "encoder": encoder, "variant": variant, "seed": seed, "steps": steps,
            "masked_acc": round(res["final"]["accuracy"], 4), "probe": round(probe["best"]["linear"], 4),
            "probe_layer": probe["best"]["layer"], "finetune": round(fres["final"]["accuracy"], 4),
            "finetune_steps": fres["steps"], "per_class": per_class, "pretrain_s": round(pretrain_s, 1)}


def load(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.exists() else []


def append(path: Path, row: dict) -> list[dict]:
    """The rows with ``row`` added, the file replaced whole (one study writes it at a time)."""
    rows = load(path) + [row]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(rows, indent=1))
    return rows


def table(rows: list[dict]) -> str:
    """Mean ± std over seeds per (encoder, variant), averaged over tasks seed by seed (in %)."""
    lines = ["| encoder | variant | pretrain steps | masked acc | probe | fine-tune | seeds x tasks |",
             "|---|---|---|---|---|---|---|"]
    runs = [r for r in rows if "variant" in r]
    for enc in ("patch", "frame"):
        for variant in VARIANTS:
            got = [r for r in runs if r["encoder"] == enc and r["variant"] == variant]
            if not got:
                continue
            cells = []
            for key in ("masked_acc", "probe", "finetune"):
                by_seed = [np.mean([r[key] for r in got if r["seed"] == s]) for s in sorted({r["seed"] for r in got})]
                cells.append(f"{100 * np.mean(by_seed):.1f} ± {100 * np.std(by_seed):.1f}")
            steps = sorted({r["steps"] for r in got})
            lines.append(f"| {enc} | {variant} | {'/'.join(map(str, steps))} | " + " | ".join(cells)
                         + f" | {len({r['seed'] for r in got})} x {len({r['task'] for r in got})} |")
    return "\n".join(lines)


def paired(rows: list[dict], variant: str, base: str = "one-pass") -> str:
    """``variant`` minus ``base`` per (task, seed), mean ± standard error over the pairs, in points: a difference
    is resolved when it exceeds twice its standard error."""
    lines = [f"| encoder | {variant} - {base} | masked acc | probe | fine-tune | pairs |", "|---|---|---|---|---|---|"]
    runs = {(r["task"], r["encoder"], r["variant"], r["seed"]): r for r in rows if "variant" in r}
    for enc in ("patch", "frame"):
        keys = [(t, s) for (t, e, v, s) in runs if e == enc and v == variant and (t, e, base, s) in runs]
        if not keys:
            continue
        cells = []
        for key in ("masked_acc", "probe", "finetune"):
            d = np.array([runs[(t, enc, variant, s)][key] - runs[(t, enc, base, s)][key] for t, s in keys]) * 100
            se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            cells.append(f"{d.mean():+.1f} ± {se:.1f}" + (" *" if abs(d.mean()) > 2 * se else ""))
        lines.append(f"| {enc} | | " + " | ".join(cells) + f" | {len(keys)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="runs/variants")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--tasks", nargs="+", default=["events", "keywords", "instruments"])
    ap.add_argument("--encoders", nargs="+", default=["patch", "frame"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300, help="pretraining steps (one pass; the equal-step variants)")
    ap.add_argument("--per-class", type=int, default=6)
    ap.add_argument("--ft-steps", type=int, default=120)
    ap.add_argument("--report", action="store_true")
    args = ap.parse_args()
    results, work = Path(args.results), Path(args.work)
    if not args.report:
        rows = load(results)
        ratios = {r["encoder"]: r["ratio"] for r in rows if "ratio" in r}
        for enc in args.encoders:
            if enc not in ratios and "two-pass-time" in args.variants:
                ratios[enc] = step_time_ratio(enc)
                rows = append(results, {"encoder": enc, "ratio": round(ratios[enc], 3), "what": "two-pass/one-pass "
                                        "seconds per step, median of 30 alternating steps, one process"})
                print(f"{enc}: two-pass step takes {ratios[enc]:.2f}x one pass", flush=True)
        done = {(r["task"], r["encoder"], r["variant"], r["seed"]) for r in rows if "variant" in r}
        for seed in args.seeds:  # seeds outermost: a study cut short still has whole seeds of every variant
            for task in args.tasks:
                corpus = corpus_for(work, task)
                for enc in args.encoders:
                    for variant in args.variants:
                        if enc not in VARIANTS[variant][0] or (task, enc, variant, seed) in done:
                            continue
                        steps = round(args.steps / ratios[enc]) if variant == "two-pass-time" else args.steps
                        row = run_variant(work, task, corpus, enc, variant, seed, steps, args.per_class,
                                          args.ft_steps)
                        append(results, row)
                        print(json.dumps(row), flush=True)
    rows = load(results)
    print(table(rows))
    for variant in ("two-pass", "two-pass-time", "authors-sampler"):
        print(paired(rows, variant))


if __name__ == "__main__":
    main()
