"""The frozen-encoder probe: it tells a trained encoder from a random one, its classifiers are right on embeddings
whose answer is known, a second probe reads the cache, probing while pretraining leaves the run's weights exactly as
they are without it, `ssast compare` shows probe results, and its settings fail in one clear line."""
from __future__ import annotations

import json
import random
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import soundfile as sf
import torch

from ssast.cli import main
from ssast.config import ConfigError, load_config
from ssast.models.checkpoint import load_state
from ssast.evaluate.probe import Embeddings, TrainingProbe, evaluate_embeddings, format_probe_table
from ssast.evaluate.probe_classifiers import held_out_part, knn_scores
from ssast.train.engine import train
from ssast.train.runtime import rng_state, setup_runtime

SR = 16000
BANDS = {"low": (250, 400), "mid": (1000, 1600), "high": (3500, 5000)}
TINY = ["model.size=custom", "model.dim=32", "model.depth=2", "model.heads=2", "audio.target_length=64",
        "data.num_workers=0", "data.batch_size=8", "train.progress=none", "train.precision=fp32",
        "optim.warmup_steps=2", "train.log_every=5"]
# A fine-tuned tiny encoder against a random one (same architecture and seed), probed on 90 test clips of three tone
# bands. Measured on 2026-12-01 (2-core Xeon), seeds 0, 1, 2: best-layer linear 0.856, 0.867, 0.844 against 0.767,
# 0.722, 0.711 (gaps 0.089 to 0.144); last-layer k-NN 0.822, 0.800, 0.844 against 0.744, 0.722, 0.644 (gaps 0.078 to
# 0.200). Chance is 1/3; the random encoder is far above it (its mean-pooled random features still carry the band).
MIN_GAIN = 0.04


def write_bands(root: Path, split: str, per_class: int, seed: int) -> Path:
    """Short tones in one of three frequency bands, at a random time and level over faint noise; a labelled list."""
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    t = np.arange(int(0.64 * SR)) / SR
    data = []
    for i in range(per_class * len(BANDS)):
        band = list(BANDS)[i % len(BANDS)]
        f, dur = rng.uniform(*BANDS[band]), rng.uniform(0.2, 0.5)
        start = rng.uniform(0, 0.64 - dur)
        x = np.sin(2 * np.pi * f * t) * ((t >= start) & (t < start + dur)) * rng.uniform(0.2, 0.8)
        x += rng.standard_normal(len(t)) * 0.01
        sf.write(root / "audio" / f"{split}{i:03d}.wav", x.astype(np.float32), SR)
        data.append({"wav": f"audio/{split}{i:03d}.wav", "labels": band})
    (root / f"{split}.json").write_text(json.dumps({"data": data}))
    return root / f"{split}.json"


@pytest.fixture(scope="module")
def bands(tmp_path_factory):
    root = tmp_path_factory.mktemp("bands")
    train_list, test_list = write_bands(root, "train", 10, 1), write_bands(root, "test", 30, 2)
    csv = root / "labels.csv"
    csv.write_text("index,mid,display_name\n" + "".join(f"{i},{b},{b}\n" for i, b in enumerate(BANDS)))
    data = [f"data.train=[{train_list}]", f"data.test=[{test_list}]", f"data.label_csv={csv}"]
    return root, data


@pytest.fixture(scope="module")
def finetuned(bands):
    root, data = bands
    train(load_config(None, ["task=finetune", *TINY, *data, "optim.lr=1e-3", "train.epochs=10", "model.init=scratch",
                             f"train.run_dir={root / 'ft'}"]))
    return root / "ft" / "final"


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_trained_encoder_beats_random_and_second_probe_reads_the_cache(bands, finetuned, tmp_path, capsys,
                                                                         monkeypatch):
    root, data = bands
    cache = tmp_path / "cache"
    results = {}
    for name, ckpt in (("trained", finetuned), ("random", "scratch")):
        code, out, err = run_cli(capsys, "probe", ckpt, *TINY, *data, "--out", tmp_path / name,
                                 "--cache", cache)
        assert code == 0, err
        assert "| 2 (final norm) |" in out and "weighted sum of all layers" in out and "train miss" in out, out
        assert (tmp_path / name / "probe.png").stat().st_size > 1000
        results[name] = json.loads((tmp_path / name / "probe.json").read_text())
    trained, rand = results["trained"], results["random"]
    assert [r["layer"] for r in trained["layers"]] == [0, 1, 2] and trained["num_clips"] == {"train": 30, "test": 90}
    assert "held out" in trained["selection"]  # no validation list: part of train chose the regularisation
    assert trained["best"]["linear"] > rand["best"]["linear"] + MIN_GAIN, (trained["best"], rand["best"])
    assert trained["last"]["knn"] > rand["last"]["knn"] + MIN_GAIN, (trained["last"], rand["last"])

    # the same checkpoint again: both splits come from the cache, no clip is embedded, the numbers are the same
    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded although the cache holds these embeddings")

    monkeypatch.setattr("ssast.evaluate.probe.embed_loader", no_embedding)
    code, out, err = run_cli(capsys, "probe", finetuned, *TINY, *data, "--out", tmp_path / "again",
                             "--cache", cache)
    assert code == 0, err
    assert "train hit, test hit" in out, out
    again = json.loads((tmp_path / "again" / "probe.json").read_text())
    assert again["layers"] == trained["layers"] and again["weighted"] == trained["weighted"]
    # other weights (a random encoder of another seed) are not served from the cache
    with pytest.raises(AssertionError, match="embedded although"):
        main(["probe", "scratch", *TINY, *data, "train.seed=5", "--out", str(tmp_path / "seed5"), "--cache", str(cache)])


def test_linear_and_knn_on_embeddings_whose_answer_is_known():
    rng = np.random.default_rng(0)

    def make(n_per_class: int, classes: int = 3) -> Embeddings:
        y = np.repeat(np.arange(classes), n_per_class)
        centres = np.eye(classes, 8) * 6.0
        separable = centres[y] + rng.normal(0, 0.5, (len(y), 8))  # layer 1: clusters far apart
        noise = rng.normal(0, 1.0, (len(y), 8))  # layer 0: nothing about the class
        emb = np.stack([noise, separable], 1).astype(np.float32)
        return Embeddings(emb, np.eye(classes, dtype=np.float32)[y], [f"clip{i}" for i in range(len(y))])

    result = evaluate_embeddings(make(10), None, make(20), multilabel=False)
    noise, separable = result["layers"]
    assert separable["linear"] == 1.0 and separable["knn"] == 1.0, separable
    assert noise["linear"] < 0.6 and noise["knn"] < 0.6, noise  # chance is 1/3
    assert result["best"]["layer"] == 1 and result["weighted"]["linear"] == 1.0
    assert result["weighted"]["layer_weights"][1] > 0.5, result["weighted"]  # the mix leans on the useful layer
    assert "1 (final norm)" in format_probe_table(result)

    multi = make(10)
    multi.labels[:, 2] = multi.labels[:, 0]  # multi-label: class 2 is on wherever class 0 is
    test = make(20)
    test.labels[:, 2] = test.labels[:, 0]
    ml = evaluate_embeddings(multi, None, test, multilabel=True)
    assert ml["metric"] == "mAP" and ml["layers"][1]["linear"] > 0.99 and ml["layers"][1]["knn"] > 0.99, ml["layers"]
    assert ml["layers"][0]["linear"] < 0.8, ml["layers"]  # chance mAP is about 0.4 (the positive rate)

    # k-NN by hand: the nearest reference (cosine) decides with k=1; with k=3 the two same-class neighbours outvote
    ref = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    ref_y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[0.1, 1.0], [0.6, 0.5]])
    assert knn_scores(ref, ref_y, query, 1).argmax(1).tolist() == [1, 0]
    assert knn_scores(ref, ref_y, query, 3).argmax(1).tolist() == [1, 0]


def test_held_out_part_is_per_class_and_does_not_depend_on_the_order():
    keys = [f"c{i}" for i in range(30)]
    labels = np.eye(3, dtype=np.float32)[np.arange(30) % 3]
    fit, held = held_out_part(keys, labels, multilabel=False)
    assert len(held) == 6 and sorted(labels[held].argmax(1).tolist()) == [0, 0, 1, 1, 2, 2]
    order = np.random.default_rng(1).permutation(30)
    fit2, held2 = held_out_part([keys[i] for i in order], labels[order], multilabel=False)
    assert sorted(keys[order[i]] for i in held2) == sorted(keys[i] for i in held)


@pytest.fixture(scope="module")
def pretraining(bands, tmp_path_factory):
    """Two tiny pretraining runs, the same but for probing every 3 steps (and the probe's lists and label CSV, which
    the plain run does not have); the probing run's probe draws from every global RNG (python, numpy, torch) to show
    that those draws cannot reach the training."""
    root, data = bands
    out = tmp_path_factory.mktemp("pre")
    lists = [d.replace("data.train", "data.probe_train").replace("data.test", "data.probe_test") for d in data]
    common = ["task=pretrain", *TINY, "model.mask_patch=0.5", "train.steps=6", "train.image_every=0",
              f"data.train=[{root / 'train.json'}]"]
    plain = train(load_config(None, [*common, f"train.run_dir={out / 'plain'}"]))
    mp = pytest.MonkeyPatch()
    import ssast.evaluate.probe

    real = ssast.evaluate.probe.evaluate_embeddings

    def drawing(*args, **kwargs):
        random.random(), np.random.rand(), torch.rand(3)
        return real(*args, **kwargs)

    mp.setattr(ssast.evaluate.probe, "evaluate_embeddings", drawing)
    try:
        probed = train(load_config(None, [*common, *lists, "train.probe_every=3", f"train.run_dir={out / 'probed'}"]),
                       probe=TrainingProbe)
    finally:
        mp.undo()
    return out, plain, probed


def test_probing_leaves_pretraining_exactly_as_it_is_and_is_logged(pretraining):
    out, plain, probed = pretraining
    a, b = load_state(out / "plain" / "final"), load_state(out / "probed" / "final")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    probes = [h for h in probed["history"] if h["split"] == "probe"]
    assert [h["step"] for h in probes] == [3, 6] and not any(h["split"] == "probe" for h in plain["history"])
    assert all(0.0 <= h["linear_acc"] <= 1.0 and len(h["linear_by_layer"]) == 3 for h in probes), probes
    saved = json.loads((out / "probed" / "metrics.json").read_text())
    assert [h["step"] for h in saved["history"] if h["split"] == "probe"] == [3, 6]
    from ssast.evaluate.compare import read_scalars

    s = read_scalars(out / "probed")
    for tag in ("probe/linear_acc", "probe/knn_acc", "probe/best_layer_acc", "probe/weighted_acc", "probe/seconds"):
        assert [step for step, _ in s[tag]] == [3, 6], tag
    assert "train/accuracy" in s  # next to the masked accuracy


def test_training_probe_restores_random_state_and_train_mode(bands, monkeypatch):
    root, data = bands
    cfg = load_config(None, ["task=pretrain", *TINY, "model.mask_patch=0.5", f"data.train=[{root / 'train.json'}]",
                             f"data.probe_train=[{root / 'train.json'}]", f"data.probe_test=[{root / 'test.json'}]",
                             f"data.label_csv={root / 'labels.csv'}", "train.probe_every=1", "train.steps=1"])
    from ssast.audio.features import FeatureExtractor
    from ssast.models.pretrain import build_pretrain_model
    import ssast.evaluate.probe

    real = ssast.evaluate.probe.evaluate_embeddings
    monkeypatch.setattr(ssast.evaluate.probe, "evaluate_embeddings",
                        lambda *a, **k: (random.random(), np.random.rand(), torch.rand(3), real(*a, **k))[-1])
    model = build_pretrain_model(cfg.model).train()
    features = FeatureExtractor(cfg.audio, cfg.augment)
    before = rng_state()
    result = TrainingProbe(cfg).run(model.encoder, lambda b, train: features(b["wave"], b["num_frames"], train=train),
                                    setup_runtime("cpu", "fp32"))
    after = rng_state()
    assert model.training and model.encoder.training and all(m.training for m in model.encoder.modules())
    assert torch.equal(before["torch"], after["torch"]) and before["python"] == after["python"]
    assert all(np.array_equal(x, y) for x, y in zip(before["numpy"], after["numpy"]))
    assert result["num_clips"] == {"train": 30, "test": 90} and result["seconds"] > 0


def test_compare_shows_probe_columns_and_curves(pretraining, finetuned, bands, tmp_path):
    from ssast.evaluate.compare import compare_runs
    from ssast.evaluate.probe import probe_checkpoint

    out, _, _ = pretraining
    root, data = bands
    probe_dir = tmp_path / "ft-probe"
    probe_checkpoint(str(finetuned), load_config(None, ["task=finetune", *TINY, *data]), probe_dir)
    table, png = compare_runs([str(out / "probed"), str(out / "plain"), str(probe_dir / "probe.json")],
                              str(tmp_path / "cmp"))
    header, _, probed_row, plain_row, probe_row = table.splitlines()
    cols = [c.strip() for c in header.strip("|").split("|")]
    for c in ("masked_acc", "probe_last", "probe_knn", "probe_best", "probe_wsum", "probe_step"):
        assert c in cols, cols
    cells = dict(zip(cols, (c.strip() for c in probed_row.strip("|").split("|"))))
    assert cells["probe_step"] == "6" and 0 <= float(cells["probe_last"]) <= 1
    assert dict(zip(cols, (c.strip() for c in plain_row.strip("|").split("|"))))["probe_last"] == ""
    probe_cells = dict(zip(cols, (c.strip() for c in probe_row.strip("|").split("|"))))
    assert probe_cells["task"] == "probe" and "(layer" in probe_cells["probe_best"]
    # panels: loss, masked accuracy, the probe against the step, the probe per layer (4.5 inches at 90 dpi each)
    assert matplotlib.image.imread(png).shape[1] == 4 * 405


@pytest.mark.parametrize("overrides, says", [
    (["train.probe_every=2"], "train.probe_every=2 needs data.probe_train"),
    (["train.probe_every=2", "data.probe_train=[a.json]"], "train.probe_every=2 needs data.probe_test"),
    (["train.probe_every=2", "data.probe_train=[a.json]", "data.probe_test=[b.json]"],
     "train.probe_every=2 needs data.label_csv"),
    (["train.probe_every=50", "data.probe_train=[a.json]", "data.probe_test=[b.json]", "data.label_csv=l.csv"],
     "train.probe_every=50 is more than train.steps=10"),
    (["train.probe_every=-1"], "train.probe_every must be at least 0"),
    (["task=finetune", "train.probe_every=2"], "probing while training is for pretraining"),
])
def test_probe_settings_fail_in_one_clear_line(overrides, says, capsys):
    with pytest.raises(ConfigError, match=says):
        load_config(None, ["task=pretrain", "train.steps=10", *overrides])
    command = "finetune" if "task=finetune" in overrides else "pretrain"
    code, _, err = run_cli(capsys, command, "--dry-run", "train.steps=10", *overrides)
    assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err


def test_probe_command_errors_are_one_line(bands, tmp_path, capsys):
    root, data = bands
    for args, says in ((("train.seed=1",), "name one checkpoint"),
                       (("scratch", *TINY, f"data.train=[{root / 'train.json'}]", f"data.test=[{root / 'test.json'}]"),
                        "data.label_csv: the probe needs the label CSV"),
                       (("scratch", *TINY, f"data.label_csv={root / 'labels.csv'}"), "data.train: give the labelled"),
                       ((tmp_path / "nothing", *TINY, *data), "checkpoint directory not found")):
        code, _, err = run_cli(capsys, "probe", *args, "--out", tmp_path / "out", "--no-cache")
        assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err


def test_resume_may_turn_probing_on():
    from ssast.train.checkpoints import resume_conflicts

    saved = load_config(None, ["task=pretrain", "train.steps=10"])
    given = load_config(None, ["task=pretrain", "train.steps=20", "train.probe_every=5", "data.probe_train=[a.json]",
                               "data.probe_test=[b.json]", "data.label_csv=l.csv"])
    assert resume_conflicts(saved, given) == []
    other = load_config(None, ["task=pretrain", "train.steps=10", "optim.lr=2e-4"])
    assert resume_conflicts(saved, other)


def test_unreadable_clips_are_left_out_and_reported(bands, tmp_path, capsys):
    root, data = bands
    entries = json.loads((root / "train.json").read_text())["data"]
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    listing = tmp_path / "train_with_bad.json"
    listing.write_text(json.dumps({"data": [{**e, "wav": str(root / e["wav"])} for e in entries]
                                   + [{"wav": str(tmp_path / "bad.wav"), "labels": "low"}]}))
    code, out, err = run_cli(capsys, "probe", "scratch", *TINY, f"data.train=[{listing}]", *data[1:],
                             "--out", tmp_path / "out", "--no-cache")
    assert code == 0, err
    assert "data.train: skipped 1 of 31 clips: 1 corrupt" in err and "probed on the rest" in err, err
    result = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert result["num_clips"]["train"] == 30 and len(result["skipped_clips"]) == 1


def test_probe_time_is_not_training_time(bands, tmp_path, monkeypatch):
    """The study of pretraining cost reads the probe's ``train_s``: the training seconds at that step. A clock that
    moves 1 s per reading and 1000 s inside each probe shows that probes never count (nor in time_s)."""
    import itertools
    import types

    import ssast.train.engine

    root, data = bands
    ticks = itertools.count()
    extra = [0.0]
    clock = types.SimpleNamespace(time=lambda: next(ticks) + extra[0])
    monkeypatch.setattr(ssast.train.engine, "time", clock)

    class SlowProbe(TrainingProbe):
        def record(self, *args):
            got = super().record(*args)
            extra[0] += 1000.0
            return got

    lists = [d.replace("data.train", "data.probe_train").replace("data.test", "data.probe_test") for d in data]
    res = train(load_config(None, ["task=pretrain", *TINY, "model.mask_patch=0.5", "train.steps=6",
                                   "train.image_every=0", "train.log_every=3", f"data.train=[{root / 'train.json'}]",
                                   *lists, "train.probe_every=2", f"train.run_dir={tmp_path / 'run'}"]),
                probe=SlowProbe)
    probes = [h for h in res["history"] if h["split"] == "probe"]
    assert [h["step"] for h in probes] == [2, 4, 6]
    seconds = [h["train_s"] for h in probes]
    # (the fake clock moves at every reading: the last probe reads it once after the last log)
    assert 0 < seconds[0] < seconds[1] < seconds[2] <= res["time_s"] + 1 < 1000, (seconds, res["time_s"])
