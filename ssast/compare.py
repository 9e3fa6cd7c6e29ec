"""Side-by-side comparison of runs (e.g. patch vs frame, all-token vs visible-token): a table and a PNG of curves."""
from __future__ import annotations

import json
from pathlib import Path

import yaml


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of a run's TensorBoard log, read with tensorboard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = Path(run_dir) / "tb"
    if not tb.is_dir():
        return {}
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags().get("scalars", [])}


def summarize(run_dir: Path) -> dict:
    """One row: the run's setting, cost and final metrics."""
    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.json (is it a finished run directory?)")
    metrics = json.loads(metrics_file.read_text())
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    m = cfg.get("model", {})
    scalars = read_scalars(run_dir)
    row = {
        "run": run_dir.name,
        "task": metrics.get("task"),
        "tokens": f"{m.get('fshape')}x{m.get('tshape')}",
        "encoder": m.get("pretrain_encoder", "all") if metrics.get("task") == "pretrain" else "-",
        "params_M": round(metrics.get("params", 0) / 1e6, 2),
        "steps": metrics.get("steps"),
        "time_s": round(metrics.get("time_s", 0.0), 1),
    }
    if "train/accuracy" in scalars:
        row["masked_acc"] = round(scalars["train/accuracy"][-1][1], 4)
    for k, v in (metrics.get("final") or {}).items():
        if isinstance(v, (int, float)):
            row[k] = round(v, 4)
    return row


def format_table(rows: list[dict]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def compare_runs(run_dirs: list[str], out_dir: str) -> tuple[str, Path]:
    """Write compare.md (table) and curves.png (loss / masked accuracy / validation metric per run) into out_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [summarize(Path(r)) for r in run_dirs]
    table = format_table(rows)
    (out / "compare.md").write_text(table + "\n")
    panels = ["train/loss", "train/accuracy", "valid/accuracy", "valid/mAP"]
    series = {r: read_scalars(Path(r)) for r in run_dirs}
    panels = [p for p in panels if any(p in s for s in series.values())] or ["train/loss"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, tag in zip(axes[0], panels):
        for r, s in series.items():
            if tag in s:
                steps, values = zip(*s[tag])
                ax.plot(steps, values, label=Path(r).name)
        ax.set_title(tag)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    png = out / "curves.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return table, png
