#!/usr/bin/env python
"""What a fine-tuning recipe reports, read from its runs' ``metrics.json``, as the authors report it and beside that
the final model. Called by ``finetune/esc50/run.sh`` and ``finetune/speechcommands/run.sh`` once training is done.

ESC-50 (five-fold cross-validation). The authors' number (``get_esc_result.py`` in their SSAST and AST repositories)
takes each epoch's validation accuracy (the model after that epoch on the held-out fold), averages it over the folds,
picks the epoch with the highest average (the first one on a tie, as ``np.argmax`` does) and reports that average:
one epoch for all folds, not the best epoch of each fold. Beside it: the final models' accuracy, mean +- population
std over the folds.

Speech Commands. The authors score the model that was best on the validation list on the test list; beside it, the
final model on the test list (``metrics.json`` "final").

    python finetune/summary.py esc50 runs/esc50 patch 1 2 3 4 5 --out runs/esc50/patch-summary.json
    python finetune/summary.py speechcommands runs/speechcommands/frame runs/speechcommands/frame/best_test.json \
        --out runs/speechcommands/frame-summary.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

METRIC = "accuracy"  # both recipes select and report accuracy


class SummaryError(ValueError):
    """Runs that cannot be summarised (missing, unfinished or inconsistent); the message names the file."""


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise SummaryError(f"{path}: not found ({what})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SummaryError(f"{path}: not valid JSON ({e}); run the recipe again to rewrite it") from None


def valid_curve(metrics: dict, source: Path) -> dict[int, float]:
    """Epoch -> validation accuracy of the model after that epoch, from ``history`` (a later entry of the same
    epoch, e.g. after a resume, replaces an earlier one)."""
    curve = {int(h["epoch"]): float(h[METRIC]) for h in metrics.get("history", [])
             if h.get("split") == "valid" and METRIC in h}
    if not curve:
        raise SummaryError(f"{source}: no validation {METRIC} in its history (was the run given a validation list?)")
    return curve


def final_accuracy(metrics: dict, source: Path) -> float:
    try:
        return float(metrics["final"][METRIC])
    except (KeyError, TypeError):
        raise SummaryError(f"{source}: no final {METRIC} (an unfinished run, or one without an evaluation list)") \
            from None


def esc50_summary(runs: Path, name: str, folds: list[str]) -> dict:
    """The authors' best fold-averaged epoch and the final models' mean +- std, from ``runs/{name}-fold{k}``."""
    if not folds:
        raise SummaryError("name at least one fold")
    paths = {k: runs / f"{name}-fold{k}" / "metrics.json" for k in folds}
    metrics = {k: read_json(p, "a finished fold writes it") for k, p in paths.items()}
    curves = {k: valid_curve(m, paths[k]) for k, m in metrics.items()}
    first = folds[0]
    epochs = sorted(curves[first])
    for k in folds[1:]:
        if sorted(curves[k]) != epochs:
            raise SummaryError(
                f"{paths[k]}: validated after epochs {span(curves[k])}, but fold {first} after {span(curves[first])}; "
                f"the authors' rule averages each epoch over the folds, so every fold needs the same epochs "
                f"(train them again with the same train.epochs: RERUN=1)")
    per_epoch = [statistics.fmean(curves[k][e] for k in folds) for e in epochs]
    best = max(range(len(epochs)), key=lambda i: (per_epoch[i], -i))  # the first epoch with the highest mean
    at_best = {k: curves[k][epochs[best]] for k in folds}
    final = {k: final_accuracy(m, paths[k]) for k, m in metrics.items()}
    return {
        "recipe": "esc50",
        "name": name,
        "metric": METRIC,
        "folds": folds,
        "authors": {
            "rule": "get_esc_result.py: each epoch's validation accuracy averaged over the folds; the epoch with "
                    "the highest average (one epoch for all folds)",
            "epoch": epochs[best],
            "epochs": epochs[-1],
            "mean": per_epoch[best],
            "std": statistics.pstdev(at_best.values()),
            "per_fold": at_best,
            "per_epoch_mean": dict(zip(epochs, per_epoch)),
        },
        "final": {
            "epochs": {k: int(m.get("epochs", epochs[-1])) for k, m in metrics.items()},
            "split": {k: m.get("final_split", "valid") for k, m in metrics.items()},
            "mean": statistics.fmean(final.values()),
            "std": statistics.pstdev(final.values()),  # population std: the folds are a fixed set, not a sample
            "per_fold": final,
        },
    }


def span(curve: dict[int, float]) -> str:
    e = sorted(curve)
    return f"{e[0]}-{e[-1]}" if e == list(range(e[0], e[-1] + 1)) else ", ".join(map(str, e))


def esc50_table(s: dict) -> str:
    a, f = s["authors"], s["final"]
    last = max(f["epochs"].values())
    head_a, head_f = f"epoch {a['epoch']} (best mean)", f"final (epoch {last})"
    rows = [f"ESC-50 {s['name']}: {METRIC} (%) on each held-out fold",
            f"{'fold':<6}{head_a:<22}{head_f}"]
    rows += [f"{k:<6}{100 * a['per_fold'][k]:<22.2f}{100 * f['per_fold'][k]:.2f}" for k in s["folds"]]
    mean_a = f"{100 * a['mean']:.2f} +- {100 * a['std']:.2f}"
    rows.append(f"{'mean':<6}{mean_a:<22}{100 * f['mean']:.2f} +- {100 * f['std']:.2f}")
    n = len(s["folds"])
    rows.append(f"authors' number (get_esc_result.py: the epoch with the best {METRIC} averaged over the folds): "
                f"{100 * a['mean']:.2f}% at epoch {a['epoch']} of {a['epochs']}, over {n} folds")
    rows.append(f"final models: {100 * f['mean']:.2f} +- {100 * f['std']:.2f}% "
                f"(mean +- population std over {n} folds)")
    return "\n".join(rows)


def speechcommands_summary(run: Path, best_test: Path) -> dict:
    """The best-on-validation model on the test list (``best_test``, written by ``ssast evaluate RUN/best``) beside
    the final model on the test list (``RUN/metrics.json`` "final")."""
    path = run / "metrics.json"
    metrics = read_json(path, "a finished run writes it")
    if metrics.get("final_split") != "test":
        raise SummaryError(f"{path}: its final metrics are on the {metrics.get('final_split')} list, not the test "
                           f"list; give the run data.test")
    curve = valid_curve(metrics, path)
    best_epoch = max(curve, key=lambda e: (curve[e], -e))  # best/ is saved on a strict improvement: the first max
    best = read_json(best_test, f"the {run / 'best'} model on the test list, from ssast evaluate")
    try:
        best_acc = float(best[METRIC])
    except (KeyError, TypeError):
        raise SummaryError(f"{best_test}: no {METRIC}") from None
    return {
        "recipe": "speechcommands",
        "run": str(run),
        "metric": METRIC,
        "best": {"rule": "the model with the best validation accuracy (best/), scored on the test list, as the "
                         "authors report it",
                 "epoch": best_epoch, "valid": curve[best_epoch], "test": best_acc,
                 "num_clips": best.get("num_clips")},
        "final": {"epoch": int(metrics.get("epochs", max(curve))), "valid": curve.get(max(curve)),
                  "test": final_accuracy(metrics, path)},
    }


def speechcommands_table(s: dict) -> str:
    b, f = s["best"], s["final"]
    clips = f" ({b['num_clips']} clips)" if b.get("num_clips") else ""
    return "\n".join([
        f"Speech Commands {Path(s['run']).name}: {METRIC} (%){clips}",
        f"{'model':<40}{'valid':<10}test",
        f"{'best on validation (epoch %d), authors' % b['epoch']:<40}{100 * b['valid']:<10.2f}{100 * b['test']:.2f}",
        f"{'final (epoch %d)' % f['epoch']:<40}{100 * f['valid']:<10.2f}{100 * f['test']:.2f}",
    ])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="recipe", required=True)
    e = sub.add_parser("esc50", help="five folds: the authors' best fold-averaged epoch and the final mean +- std")
    e.add_argument("runs", help="the folder holding NAME-fold{k}/ (RUNS of run.sh)")
    e.add_argument("name", help="the runs' name: NAME-fold{k}")
    e.add_argument("folds", nargs="+", help="fold numbers")
    s = sub.add_parser("speechcommands", help="best-on-validation and final model on the test list")
    s.add_argument("run", help="the run directory (with metrics.json)")
    s.add_argument("best_test", help="ssast evaluate's metrics of RUN/best on the test list (JSON)")
    for q in (e, s):
        q.add_argument("--out", help="write the summary JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.recipe == "esc50":
        summary = esc50_summary(Path(args.runs), args.name, list(args.folds))
        table = esc50_table(summary)
    else:
        summary = speechcommands_summary(Path(args.run), Path(args.best_test))
        table = speechcommands_table(summary)
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SummaryError as e:
        print(f"finetune/summary: error: {e}", file=sys.stderr)
        sys.exit(2)
