#!/usr/bin/env python3
"""Draw pretrain/valid_masked_accuracy.png: a short tiny pretraining run under the authors' plateau rule.

The demo's tiny patch model on the demo's synthetic corpus, 1,500 steps, the validation masked accuracy checked every
50 steps on a held-out 5% of the clips, the learning rate halved after three checks in a row without a gain.
Usage: python pretrain/plot_validation_curve.py [RUN_FOLDER]  (about a minute on 2 CPU cores)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(root: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ssast.evaluate.compare import read_scalars
    from ssast.config import load_config
    from ssast.demo.run import DEMO_CONFIGS, make_corpus
    from ssast.train.engine import train

    corpus = make_corpus(root / "data", pool=720, train_per_class=1, test_per_class=1)
    cfg = load_config(DEMO_CONFIGS / "pretrain.yaml", [
        f"data.train=[{corpus.pool}]", "optim.schedule=plateau", "optim.plateau_every=50", "data.holdout=0.05",
        "train.steps=1500", "train.image_every=0", "train.progress=none", f"train.run_dir={root / 'run'}"])
    train(cfg, overwrite=True)  # its own folder: a rerun draws the curve afresh
    scalars = read_scalars(root / "run")
    valid, lr, batch = scalars["valid/accuracy"], scalars["train/lr"], scalars["train/accuracy"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(*zip(*batch), color="0.7", lw=1, label="train masked accuracy (batch)")
    ax.plot(*zip(*valid), "o-", ms=3, label="validation masked accuracy (held-out 5%, fixed masks)")
    ax.axhline(1 / 32, ls=":", color="k", lw=1, label="chance (1/32)")
    ax.set_xlabel("step")
    ax.set_ylabel("masked accuracy")
    ax.legend(loc="center right", fontsize=8)
    ax2 = ax.twinx()
    ax2.plot(*zip(*lr), color="tab:red", lw=1)
    ax2.set_ylabel("lr", color="tab:red")
    ax.set_title("tiny patch model (96 wide, 4 layers), demo corpus, plateau every 50 steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(HERE / "valid_masked_accuracy.png", dpi=110)
    return {"valid": [(s, round(v, 4)) for s, v in valid], "last_lr": lr[-1][1]}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/validation-curve"))))
