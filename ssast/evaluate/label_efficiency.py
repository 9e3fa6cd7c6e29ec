"""Label-efficiency results: test accuracy against labelled clips per class, by task and encoder initialisation.

A result row is a dict with ``task``, ``init`` (scratch, patch, frame, visible), ``per_class``, ``seed`` and
``accuracy``; the demo and ``benchmarks/label_efficiency.py`` both report through these functions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

INITS = ("scratch", "patch", "frame", "visible")  # fine-tuned from these; "probe X": X's frozen-encoder probe
PROBES = tuple(f"probe {i}" for i in INITS[1:])


def summarize(rows: list[dict]) -> dict[tuple, tuple[float, float, int]]:
    """(task, init, per_class) -> (mean, std, number of seeds) of the test accuracy."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["init"], r["per_class"]), []).append(r["accuracy"])
    return {key: (float(np.mean(v)), float(np.std(v)), len(v)) for key, v in groups.items()}


def _tasks(stats: dict) -> list[str]:
    return list(dict.fromkeys(t for t, _, _ in stats))


def efficiency_table(rows: list[dict], chance: dict[str, float], seeds: int = 3) -> str:
    """Markdown: one line per (task, clips per class), one column per initialisation, mean ± std in %."""
    stats = summarize(rows)
    inits = [i for i in INITS + PROBES if any(key[1] == i for key in stats)]
    lines = ["| task (chance) | clips per class | " + " | ".join(inits) + " |", "|---|---|" + "---|" * len(inits)]
    for t in _tasks(stats):
        for k in sorted({k for tt, _, k in stats if tt == t}):
            cells = []
            for i in inits:
                m = stats.get((t, i, k))
                cells.append("" if m is None else f"{100 * m[0]:.1f}" + (f" ± {100 * m[1]:.1f}" if m[2] > 1 else "")
                             + ("" if m[2] == seeds or i in PROBES else f" (n={m[2]})"))
            lines.append(f"| {t} ({100 * chance[t]:.0f}%) | {k} | " + " | ".join(cells) + " |")
    if any(i in PROBES for i in inits):
        lines.append("")
        lines.append("probe X: the frozen encoder X's linear probe (best layer), deterministic, so one run")
    return "\n".join(lines)


def plot_efficiency(rows: list[dict], chance: dict[str, float], png: Path) -> Path:
    """Accuracy (%) against clips per class (log axis), one panel per task, one line per initialisation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = summarize(rows)
    tasks = _tasks(stats)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        for init in INITS:
            pts = sorted((k, m, s) for (tt, i, k), (m, s, _) in stats.items() if tt == t and i == init)
            if pts:
                k, m, s = map(np.array, zip(*pts))
                ax.errorbar(k, 100 * m, yerr=100 * s, marker="o", capsize=3, label=init)
        ax.axhline(100 * chance[t], color="gray", ls=":", lw=1, label="chance")
        ax.set_xscale("log")
        ax.set_xticks(sorted({k for tt, _, k in stats if tt == t}))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("labelled clips per class")
        ax.set_title(t)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    from ssast.atomic import atomic_savefig

    atomic_savefig(fig, png, dpi=110)
    plt.close(fig)
    return png
