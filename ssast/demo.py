"""`ssast demo`: the whole pipeline on synthetic audio that it makes itself (no download).

It writes a small corpus of sound events of six classes (an unlabeled pool for pretraining, a small labelled
train/test split), pretrains tiny patch and frame models with the all-token (SSAST) path and a patch model with the
visible-token (MAE-AST style) path, fine-tunes each and a from-scratch baseline on the labelled part, and prints one
comparison table. Everything is driven through the same configs and engine that real runs use.
"""
from __future__ import annotations

import json
import time
from pathlib import Path


from ssast.synthetic import Corpus as DemoCorpus  # noqa: F401  (re-exported: tests and scripts import them here)
from ssast.synthetic import make_corpus

DEMO_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "demo"


def _config(name: str, overrides: list[str]):
    from ssast.config import load_config

    path = DEMO_CONFIGS / f"{name}.yaml"
    if not path.is_file():  # installed without the repository's configs folder: the same settings as overrides
        raise FileNotFoundError(f"demo config {path} not found (run the demo from a checkout of the repository)")
    return load_config(path, overrides)


def run_demo(out: str | Path = "demo_runs", quick: bool = False) -> list[dict]:
    """Make the corpus, pretrain patch/frame/visible models, fine-tune them and a scratch baseline; print a table."""
    from ssast.compare import format_table
    from ssast.train.engine import train

    out = Path(out)
    corpus = make_corpus(out / "data", pool=120 if quick else 720)
    # --quick shortens the runs (smoke tests); otherwise the lengths in configs/demo/*.yaml apply
    pre_len = ["train.steps=30"] if quick else []
    ft_len = ["train.epochs=2"] if quick else []
    data = [f"data.label_csv={corpus.labels}"]
    pre_runs = {
        "patch": ["model.fshape=16", "model.tshape=16"],
        "frame": ["model.fshape=128", "model.tshape=2"],
        "patch-visible": ["model.fshape=16", "model.tshape=16", "model.pretrain_encoder=visible"],
    }
    rows = []
    started = time.time()
    for name, shape in pre_runs.items():
        cfg = _config("pretrain", shape + [f"data.train=[{corpus.pool}]", *pre_len,
                                           f"train.run_dir={out / ('pretrain-' + name)}"])
        t0 = time.time()
        train(cfg)
        rows.append({"model": name, "pretrain_s": round(time.time() - t0, 1),
                     "masked_acc": _last(out / f"pretrain-{name}", "train/accuracy")})
    for row, (name, shape) in zip(rows, pre_runs.items()):
        init = out / f"pretrain-{name}" / "final"
        ft_shape = shape[:2] + (["model.tstride=1", "model.fstride=128"] if name == "frame" else [])
        cfg = _config("finetune", ft_shape + data + [
            f"data.train=[{corpus.train}]", f"data.test=[{corpus.test}]", f"model.init={init}",
            *ft_len, f"train.run_dir={out / ('finetune-' + name)}"])
        res = train(cfg)
        row["downstream_acc"] = round(res["final"]["accuracy"], 4)
    cfg = _config("finetune", ["model.fshape=16", "model.tshape=16"] + data + [
        f"data.train=[{corpus.train}]", f"data.test=[{corpus.test}]", "model.init=scratch",
        *ft_len, f"train.run_dir={out / 'finetune-scratch'}"])
    res = train(cfg)
    rows.append({"model": "scratch (patch)", "pretrain_s": 0.0, "masked_acc": "-",
                 "downstream_acc": round(res["final"]["accuracy"], 4)})
    table = format_table(rows)
    (out / "demo_results.md").write_text(table + "\n")
    (out / "demo_results.json").write_text(json.dumps(rows, indent=2))
    print("\nssast demo: pretrained on an unlabeled pool, fine-tuned on "
          f"{len(json.loads(corpus.train.read_text())['data'])} labelled clips, tested on "
          f"{len(json.loads(corpus.test.read_text())['data'])}\n")
    print(table)
    print(f"\ntotal {time.time() - started:.0f} s; TensorBoard: tensorboard --logdir {out}")
    return rows


def _last(run_dir: Path, tag: str):
    from ssast.compare import read_scalars

    s = read_scalars(run_dir).get(tag)
    return round(s[-1][1], 4) if s else "-"
