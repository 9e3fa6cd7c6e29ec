"""`ssast demo`: the whole pipeline on synthetic audio that it makes itself (no download).

It writes a small corpus of sound events of six classes (an unlabeled pool for pretraining, a small labelled
train/test split), pretrains tiny patch and frame models with the all-token (SSAST) path and a patch model with the
visible-token (MAE-AST style) path (probing the frozen encoder on the labelled part every 500 steps), fine-tunes each and
a from-scratch baseline on the labelled part, probes every final encoder and a random one, and prints one comparison
table. Everything is driven through the same configs and engine that real runs use.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ssast.atomic import atomic_write_text
from ssast.demo.synthetic import make_corpus

DEMO_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "demo"
# The demo's encoders (also the label-efficiency study's): pretraining overrides by name
PRETRAIN_SHAPES = {
    "patch": ["model.fshape=16", "model.tshape=16"],
    "frame": ["model.fshape=128", "model.tshape=2"],
    "patch-visible": ["model.fshape=16", "model.tshape=16", "model.pretrain_encoder=visible"],
}


def finetune_shape(name: str) -> list[str]:
    """The fine-tuning overrides of encoder ``name`` (or of scratch with "patch"): its patch shape, frames one apart."""
    shape = PRETRAIN_SHAPES[name][:2]
    return shape + (["model.tstride=1", "model.fstride=128"] if name == "frame" else [])


def _config(name: str, overrides: list[str]):
    from ssast.config import load_config

    path = DEMO_CONFIGS / f"{name}.yaml"
    if not path.is_file():  # installed without the repository's configs folder: the same settings as overrides
        raise FileNotFoundError(f"demo config {path} not found (run the demo from a checkout of the repository)")
    return load_config(path, overrides)


def run_demo(out: str | Path = "demo_runs", quick: bool = False) -> list[dict]:
    """Make the corpus, pretrain patch/frame/visible models, fine-tune them and a scratch baseline; print a table.

    The demo's run folders are its own: a rerun replaces them (``overwrite``), so it always starts afresh."""
    from ssast.evaluate.compare import format_table, plot_probe_comparison, read_scalars
    from ssast.evaluate.label_efficiency import efficiency_table, plot_efficiency
    from ssast.evaluate.probe import TrainingProbe
    from ssast.train.engine import train

    out = Path(out)
    corpus = make_corpus(out / "data", pool=120 if quick else 720, train_per_class=max(CURVE))
    labelled = corpus.train_subset(LABELLED)  # the table's fine-tuning and probes: LABELLED clips per class
    # --quick shortens the runs (smoke tests); otherwise the lengths in configs/demo/*.yaml apply
    pre_len = ["train.steps=30"] if quick else []
    ft_len = ["train.epochs=2", "train.min_steps=0"] if quick else []
    data = [f"data.label_csv={corpus.labels}"]
    # the frozen-encoder probe: fitted on the labelled training clips, scored on the test clips
    probe = data + [f"data.probe_train=[{labelled}]", f"data.probe_test=[{corpus.test}]",
                    f"train.probe_every={0 if quick else PROBE_EVERY}"]

    def finetune(run: str, shape: list[str], init: str, train_list: Path) -> float:
        cfg = _config("finetune", shape + data + [
            f"data.train=[{train_list}]", f"data.test=[{corpus.test}]", f"model.init={init}", *ft_len,
            f"train.run_dir={out / run}"])
        return round(train(cfg, overwrite=True)["final"]["accuracy"], 4)

    rows, probes = [], Probes(out)
    started = time.time()
    for name, shape in PRETRAIN_SHAPES.items():
        cfg = _config("pretrain", shape + probe + [f"data.train=[{corpus.pool}]", *pre_len,
                                                   f"train.run_dir={out / ('pretrain-' + name)}"])
        t0 = time.time()
        result = train(cfg, probe=TrainingProbe, overwrite=True)
        probes.while_pretraining += sum(h["seconds"] for h in result["history"] if h["split"] == "probe")
        rows.append({"model": name, "pretrain_s": round(time.time() - t0, 1),
                     "masked_acc": _last(out / f"pretrain-{name}", "train/accuracy"),
                     **probes.run(name, str(out / f"pretrain-{name}" / "final"), cfg, out / f"pretrain-{name}")})
    for row, name in zip(rows, PRETRAIN_SHAPES):
        init = str(out / f"pretrain-{name}" / "final")
        row["downstream_acc"] = finetune(f"finetune-{name}", finetune_shape(name), init, labelled)
    scratch_acc = finetune("finetune-scratch", finetune_shape("patch"), "scratch", labelled)
    # the scratch row's probe: a randomly initialised encoder of the demo's patch model (train.seed 0)
    random_encoder = _config("pretrain", PRETRAIN_SHAPES["patch"] + probe + [f"data.train=[{corpus.pool}]"])
    rows.append({"model": "scratch (patch)", "pretrain_s": 0.0, "masked_acc": "-",
                 **probes.run("scratch (patch)", "scratch", random_encoder, out / "scratch"),
                 "downstream_acc": scratch_acc})
    # label efficiency: the patch encoder against scratch at CURVE clips per class (LABELLED is the table's runs)
    curve = [{"task": "events", "init": "patch", "per_class": LABELLED, "seed": 0, "accuracy": rows[0]["downstream_acc"]},
             {"task": "events", "init": "scratch", "per_class": LABELLED, "seed": 0, "accuracy": scratch_acc}]
    for k in (k for k in CURVE if k != LABELLED):
        for init, start in (("scratch", "scratch"), ("patch", str(out / "pretrain-patch" / "final"))):
            acc = finetune(f"curve-{init}-{k}", finetune_shape("patch"), start, corpus.train_subset(k))
            curve.append({"task": "events", "init": init, "per_class": k, "seed": 0, "accuracy": acc})
    curve.sort(key=lambda r: r["per_class"])
    table = format_table(rows)
    chance = {"events": 1 / corpus.classes}
    curve_table = efficiency_table(curve, chance, seeds=1)
    plot_efficiency(curve, chance, out / "label_efficiency.png")
    scalars = {name: read_scalars(out / f"pretrain-{name}") for name in PRETRAIN_SHAPES}
    plot_probe_comparison(probes.results, out / "probe.png",
                          steps={n: s["probe/linear_acc"] for n, s in scalars.items() if "probe/linear_acc" in s})
    atomic_write_text(out / "demo_results.md",
                      table + "\n\nLabel efficiency (test accuracy, %):\n\n" + curve_table + "\n")
    atomic_write_text(out / "demo_results.json", json.dumps({"models": rows, "label_efficiency": curve}, indent=2))
    print("\nssast demo: pretrained on an unlabeled pool, fine-tuned on "
          f"{len(json.loads(labelled.read_text())['data'])} labelled clips, tested on "
          f"{len(json.loads(corpus.test.read_text())['data'])}\n")
    print(table)
    print(f"\nlabel efficiency: test accuracy (%) against labelled clips per class, patch encoder vs scratch "
          f"({out / 'label_efficiency.png'})\n")
    print(curve_table)
    print(f"\nprobe_last / probe_best: {PROBE_NOTE}; plots: {out / 'probe.png'}")
    print(f"total {time.time() - started:.0f} s, of which probing {probes.while_pretraining:.0f} s while pretraining "
          f"and {probes.final:.0f} s after; TensorBoard: tensorboard --logdir {out}; the probe against the step: "
          f"ssast compare {out}/pretrain-*")
    return rows


PROBE_EVERY = 500
LABELLED = 6  # labelled clips per class of the table's fine-tuning and probes
CURVE = (2, 6, 12)  # clips per class of the label-efficiency curve
PROBE_NOTE = ("test accuracy of a linear classifier on the frozen encoder's mean-pooled last layer / best layer "
              "(layer in brackets), fitted on the labelled training clips")


class Probes:
    """The demo's probes of final encoders (results by model name, probe.json under RUN/probe) and their cost."""

    def __init__(self, out: Path) -> None:
        self.cache = out / "probe_cache"
        self.results: dict[str, dict] = {}
        self.while_pretraining = 0.0  # seconds, summed from the runs' histories
        self.final = 0.0

    def run(self, name: str, ckpt: str, cfg, run_dir: Path) -> dict:
        """The table's probe columns of one encoder."""
        from ssast.evaluate.probe import probe_checkpoint

        t0 = time.time()
        result = self.results[name] = probe_checkpoint(ckpt, cfg, run_dir / "probe", cache_dir=self.cache)
        self.final += time.time() - t0
        best = result["best"]
        return {"probe_last": round(result["last"]["linear"], 4),
                "probe_best": f"{best['linear']:.4f} ({best['layer']})"}


def _last(run_dir: Path, tag: str):
    from ssast.evaluate.compare import read_scalars

    s = read_scalars(run_dir).get(tag)
    return round(s[-1][1], 4) if s else "-"
