"""Side-by-side comparison of runs (e.g. patch vs frame, all-token vs visible-token): a table and a PNG of curves.

Probe results are compared too: a run's ``probe.json`` (written by ``ssast probe --out RUN/probe``, or given directly
as a probe.json file or its folder) and the ``probe/*`` scalars that probing while pretraining logs. They add the
probe columns to the table, and to the PNG the per-layer probe curves of every run side by side and the probe score
against the pretraining step.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from ssast.atomic import atomic_savefig, atomic_write_text
from ssast.config import ConfigError


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series of a run's TensorBoard log, read with tensorboard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = Path(run_dir) / "tb"
    if not tb.is_dir():
        return {}
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags().get("scalars", [])}


def find_probe(path: Path) -> Path | None:
    """The probe.json of a run (RUN/probe/probe.json or RUN/probe.json), of a probe output folder, or the file itself."""
    path = Path(path)
    if path.is_file():
        return path if path.suffix == ".json" and path.name != "metrics.json" else None
    for candidate in (path / "probe.json", path / "probe" / "probe.json"):
        if candidate.is_file():
            return candidate
    return None


def probe_tag(scalars: dict, kind: str = "linear") -> str | None:
    """The TensorBoard tag of a probe score logged while pretraining (probe/linear_acc or probe/linear_mAP)."""
    return next((t for t in (f"probe/{kind}_acc", f"probe/{kind}_mAP") if t in scalars), None)


def probe_columns(probe: dict | None, scalars: dict) -> dict:
    """The table's probe columns: last layer (linear, k-NN), best layer and the weighted sum of layers, from a
    probe.json when there is one, else from the last probe logged while pretraining."""
    if probe is not None:
        best = probe["best"]
        return {"probe_last": round(probe["last"]["linear"], 4), "probe_knn": round(probe["last"]["knn"], 4),
                "probe_best": f"{best['linear']:.4f} (layer {best['layer']})",
                "probe_wsum": round(probe["weighted"]["linear"], 4)}
    tag = probe_tag(scalars)
    if tag is None:
        return {}
    m = tag.rsplit("_", 1)[1]
    last = {k: scalars[f"probe/{k}_{m}"][-1][1] for k in ("linear", "knn", "best_layer", "weighted")
            if f"probe/{k}_{m}" in scalars}
    cols = {"probe_last": round(last["linear"], 4)}
    if "knn" in last:
        cols["probe_knn"] = round(last["knn"], 4)
    if "best_layer" in last and "probe/best_layer" in scalars:
        cols["probe_best"] = f"{last['best_layer']:.4f} (layer {int(scalars['probe/best_layer'][-1][1])})"
    if "weighted" in last:
        cols["probe_wsum"] = round(last["weighted"], 4)
    return {**cols, "probe_step": scalars[tag][-1][0]}


def _read(path: Path, parse):
    """A run's JSON or YAML file, parsed; a damaged one is one line naming it."""
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: damaged, cannot be read ({str(e).splitlines()[0]}); "
                          f"leave this run out of the comparison") from None


def summarize(run_dir: Path) -> dict:
    """One row: the run's setting, cost, final metrics and probe scores (a bare probe result gives a probe row)."""
    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.json"
    probe_file = find_probe(run_dir)
    probe = _read(probe_file, json.loads) if probe_file else None
    if not metrics_file.is_file() and probe is not None:
        return {"run": run_name(run_dir), "task": "probe", **probe_columns(probe, {})}
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.json nor probe.json (is it a finished run directory?)")
    metrics = _read(metrics_file, json.loads)
    cfg = _read(run_dir / "config.yaml", yaml.safe_load) if (run_dir / "config.yaml").is_file() else {}
    if not isinstance(metrics, dict) or not isinstance(cfg, dict):
        raise ConfigError(f"{run_dir}: metrics.json or config.yaml is not a mapping; the run's files are damaged")
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
    row.update(probe_columns(probe, scalars))
    return row


def format_table(rows: list[dict]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def _probe_results(paths: list[str]) -> dict[str, dict]:
    """{run name: its probe.json} of the runs that have one."""
    found = {}
    for r in paths:
        f = find_probe(Path(r))
        if f is not None:
            found[run_name(r)] = json.loads(f.read_text())
    return found


def run_name(path: str | Path) -> str:
    """How a run is named in the table and legends: its folder (for RUN/probe/probe.json or RUN/probe: RUN)."""
    p = Path(path).absolute()
    p = p.parent if p.is_file() else p
    return p.parent.name if p.name == "probe" else p.name


def compare_runs(run_dirs: list[str], out_dir: str) -> tuple[str, Path]:
    """Write compare.md (table) and curves.png into out_dir: loss / masked accuracy / validation metric per run, and,
    where runs have probe results, the probe score per layer and against the pretraining step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [summarize(Path(r)) for r in run_dirs]
    table = format_table(rows)
    atomic_write_text(out / "compare.md", table + "\n")
    series = {r: (read_scalars(Path(r)) if Path(r).is_dir() else {}) for r in run_dirs}
    probes = _probe_results(run_dirs)
    panels = [p for p in ("train/loss", "train/accuracy", "valid/accuracy", "valid/mAP")
              if any(p in s for s in series.values())]
    steps_tag = next((t for t in (probe_tag(s) for s in series.values()) if t), None)
    panels += [steps_tag] if steps_tag else []
    panels += ["probe per layer"] if probes else []
    panels = panels or ["train/loss"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, tag in zip(axes[0], panels):
        if tag == "probe per layer":
            _plot_probe_layers(ax, probes)
            continue
        probing = tag.startswith("probe/")
        _plot_series(ax, {run_name(r): s[tag] for r, s in series.items() if tag in s},
                     f"{tag} (last layer, while pretraining)" if probing else tag, "o-" if probing else "-")
    fig.tight_layout()
    png = out / "curves.png"
    atomic_savefig(fig, png, dpi=90)
    plt.close(fig)
    return table, png


def _plot_series(ax, series: dict[str, list[tuple[int, float]]], title: str, style: str = "-") -> None:
    """One line per run of (step, value) points."""
    for name, points in series.items():
        steps, values = zip(*points)
        ax.plot(steps, values, style, label=name)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)


def _plot_probe_layers(ax, probes: dict[str, dict]) -> None:
    """Every run's probe score against layer: linear solid, k-NN dashed, in the run's colour."""
    metric, ticks = "score", []
    for name, p in probes.items():
        layers = [row["layer"] for row in p["layers"]]
        ticks = max(ticks, layers, key=len)
        line, = ax.plot(layers, [row["linear"] for row in p["layers"]], "o-", label=f"{name} linear")
        ax.plot(layers, [row["knn"] for row in p["layers"]], "s--", color=line.get_color(), alpha=0.6,
                label=f"{name} k-NN")
        metric = p["metric"]
    ax.set_title(f"probe {metric} per layer (0 = patch embedding)", fontsize=9)
    ax.set_xticks(ticks)
    ax.set_xlabel("layer")
    ax.legend(fontsize=7)


def plot_probe_comparison(probes: dict[str, dict], png: Path,
                          steps: dict[str, list[tuple[int, float]]] | None = None) -> Path:
    """A PNG of the per-layer probe curves of several encoders ({name: probe.json contents}) and, given ``steps``
    ({name: [(step, score)]}, the probes while pretraining), a second panel of the probe against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if steps else 1, figsize=(11 if steps else 6, 4), squeeze=False)
    _plot_probe_layers(axes[0][0], probes)
    if steps:
        metric = next(iter(probes.values()))["metric"] if probes else "score"
        _plot_series(axes[0][1], steps, f"probe {metric} of the last layer while pretraining", "o-")
    fig.tight_layout()
    atomic_savefig(fig, png, dpi=90)
    plt.close(fig)
    return Path(png)
