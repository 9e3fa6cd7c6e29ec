"""ClipDataset, collate, ResumableSampler, class balance, source mixing, bad-clip skipping and build_loader."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import make_wav, synth, write_corpus
from ssast.audio.fbank import max_samples
from ssast.audio.io import AudioError, load_audio
from ssast.config import AudioConfig, Config
from ssast.data import (
    ClipDataset,
    DataError,
    ResumableSampler,
    WeightedInterleave,
    build_loader,
    class_balanced_weights,
    collate,
    compute_dataset_stats,
    read_json_list,
    read_label_csv,
    source_kind,
)

TARGET = 50  # frames: 8240 samples per crop, small enough for fast tests


def make_cfg(train=(), valid=(), label_csv="", **data) -> Config:
    cfg = Config()
    cfg.audio.target_length = TARGET
    cfg.model.input_tdim = TARGET
    cfg.data.train = [str(s) for s in train]
    cfg.data.valid = [str(s) for s in valid]
    cfg.data.label_csv = str(label_csv)
    cfg.data.num_workers = 0
    cfg.data.batch_size = 4
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def write_list(path, wavs, labels=None):
    entries = [{"wav": str(w)} | ({"labels": ",".join(labels[i])} if labels else {}) for i, w in enumerate(wavs)]
    path.write_text(json.dumps({"data": entries}))
    return path


# ---- collate


def test_collate_pads_counts_frames_and_drops_bad():
    items = [
        {"wave": np.ones(400, np.float32), "labels": np.array([1, 0], np.float32), "key": "a"},
        {"bad": True, "key": "b", "reason": "corrupt: b: cannot decode"},
        {"wave": np.full(1000, 2, np.float32), "labels": np.array([0, 1], np.float32), "key": "c"},
    ]
    b = collate(items)
    assert b["wave"].shape == (2, 1000) and b["wave"].dtype == torch.float32
    assert torch.all(b["wave"][0, :400] == 1) and torch.all(b["wave"][0, 400:] == 0)
    assert b["num_frames"].tolist() == [1, 1 + (1000 - 400) // 160] and b["num_frames"].dtype == torch.long
    assert b["labels"].tolist() == [[1, 0], [0, 1]]
    assert b["keys"] == ["a", "c"] and b["skipped"] == [("b", "corrupt: b: cannot decode")]
    # an unlabeled item makes the batch unlabeled; an all-bad batch is empty
    items[0]["labels"] = None
    assert collate(items)["labels"] is None
    empty = collate([items[1]])
    assert empty["wave"].shape[0] == 0 and empty["num_frames"].numel() == 0 and len(empty["skipped"]) == 1


# ---- ClipDataset


def test_dataset_items_are_a_function_of_seed_epoch_index(tmp_path):
    wavs = [tmp_path / f"{i}.wav" for i in range(3)]
    for i, w in enumerate(wavs):
        make_wav(w, 1.5, kind="speechlike", seed=i)
    clips = read_json_list(write_list(tmp_path / "l.json", wavs))
    audio = AudioConfig(target_length=TARGET, crop="random")
    a = ClipDataset(clips, labels=None, audio=audio, train=True, seed=5)
    b = ClipDataset(clips, labels=None, audio=audio, train=True, seed=5)
    assert len(a[1]["wave"]) == max_samples(TARGET) == 8240
    np.testing.assert_array_equal(a[1]["wave"], b[1]["wave"])
    a.set_epoch(1)
    assert not np.array_equal(a[1]["wave"], b[1]["wave"])  # a new epoch draws a new crop
    b.set_epoch(1)
    np.testing.assert_array_equal(a[1]["wave"], b[1]["wave"])
    assert a[1]["labels"] is None and a[1]["key"] == str(wavs[1])
    # evaluation always crops at the start
    ev = ClipDataset(clips, labels=None, audio=audio, train=False)
    np.testing.assert_array_equal(ev[0]["wave"], load_audio(wavs[0], max_samples=8240, crop="start"))


def test_dataset_mixup_mixes_waves_and_labels(tiny_corpus):
    labels = read_label_csv(tiny_corpus.label_csv)
    clips = read_json_list(tiny_corpus.json_list, labels)
    audio = AudioConfig(target_length=TARGET)
    mixed = ClipDataset(clips, labels=labels, audio=audio, train=True, mixup_prob=1.0, mixup_alpha=10.0)
    plain = ClipDataset(clips, labels=labels, audio=audio, train=True)
    n_mixed = 0
    for i in range(len(clips)):
        m, p = mixed[i], plain[i]
        y = m["labels"]
        assert y.min() >= 0 and y.max() <= 1
        if not np.array_equal(y, p["labels"]):
            n_mixed += 1
            assert 0 < y[y > 0].min() < 1  # a soft label from lambda
        assert abs(float(m["wave"].mean())) < 1e-5
        np.testing.assert_array_equal(m["wave"], mixed[i]["wave"])  # deterministic
    assert n_mixed >= 3
    assert not ClipDataset(clips, labels=labels, audio=audio, train=False, mixup_prob=1.0).mixup_prob


# ---- ResumableSampler and class balance


def test_sampler_ranks_eval_cover_once_and_train_disjoint():
    n = 7
    ev = [ResumableSampler(n, shuffle=False, rank=r, world_size=2) for r in range(2)]
    got = [list(s) for s in ev]
    assert sorted(got[0] + got[1]) == list(range(n)) and len(got[0]) == 4 and len(got[1]) == 3
    tr = [ResumableSampler(8, shuffle=True, seed=1, rank=r, world_size=2) for r in range(2)]
    a, b = list(tr[0]), list(tr[1])
    assert not set(a) & set(b) and sorted(a + b) == list(range(8))
    assert a != sorted(a) or b != sorted(b)  # shuffled
    pad = [ResumableSampler(7, shuffle=True, seed=1, rank=r, world_size=2) for r in range(2)]
    a, b = list(pad[0]), list(pad[1])
    assert len(a) == len(b) == 4 and set(a) | set(b) == set(range(7))


def test_sampler_epochs_and_resume_skip():
    s = ResumableSampler(20, shuffle=True, seed=3, rank=1, world_size=2)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(3)
    assert list(s) != full
    s.set_epoch(2, start_batch=2, batch_size=3)
    assert list(s) == full[6:] and len(s) == len(full) - 6
    s.set_epoch(2, start_batch=100, batch_size=3)
    assert list(s) == [] and len(s) == 0


def test_class_balanced_weights_favour_rare_classes():
    y = np.zeros((10, 3), np.float32)
    y[:8, 0] = 1  # common class
    y[8:, 1] = 1  # rare class
    y[9, 2] = 1  # rarest, on the same clip
    w = class_balanced_weights(y)
    assert w[8] > 3 * w[0]
    assert w[9] > w[8]
    np.testing.assert_allclose(w[0], 1000 / (8 + 0.01))  # the authors' scale
    s = ResumableSampler(10, weights=w, num_samples=5000, seed=0)
    counts = Counter(s)
    rare = (counts[8] + counts[9]) / 5000
    assert rare > 0.6  # uniform sampling would give 0.2; class balance gives about 2/3


def test_weighted_sampler_deterministic_per_epoch():
    w = np.arange(1, 11, dtype=float)
    a, b = ResumableSampler(10, weights=w), ResumableSampler(10, weights=w)
    a.set_epoch(4), b.set_epoch(4)
    assert list(a) == list(b)
    b.set_epoch(5)
    assert list(a) != list(b)
    with pytest.raises(ValueError):
        ResumableSampler(3, weights=[0, 0, 0])


# ---- mixing sources


def test_map_sources_mixed_by_weight(tmp_path):
    a = write_corpus(tmp_path / "a", n=3, seconds=0.1)
    b = write_corpus(tmp_path / "b", n=9, seconds=0.1)
    cfg = make_cfg(train=[a.json_list, b.json_list], train_weights=[3.0, 1.0])
    loader = build_loader(cfg, "train")
    assert len(loader.sampler.indices()) == 12  # an epoch draws as many clips as there are
    from_a = 0
    for epoch in range(200):
        loader.set_epoch(epoch)
        from_a += sum(i < 3 for i in loader.sampler.indices())
    assert abs(from_a / 2400 - 0.75) < 0.03  # unweighted concatenation would give 0.25


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, name, n):
        self.name, self.n = name, n

    def __iter__(self):
        return iter({"key": f"{self.name}{i}"} for i in range(self.n))


def test_interleave_respects_weights_and_finite_covers_all():
    mix = WeightedInterleave([_Stream("a", 5), _Stream("b", 7)], [0.8, 0.2], seed=0, rank=0, endless=True)
    keys = [it["key"] for _, it in zip(range(4000), mix)]
    frac_a = sum(k.startswith("a") for k in keys) / len(keys)
    assert abs(frac_a - 0.8) < 0.03
    finite = WeightedInterleave([_Stream("a", 5), _Stream("b", 7)], [0.8, 0.2], seed=0, rank=0, endless=False)
    got = [it["key"] for it in finite]
    assert sorted(got) == sorted([f"a{i}" for i in range(5)] + [f"b{i}" for i in range(7)])
    assert got == [it["key"] for it in finite]  # reproducible


# ---- bad input through the loader


def _bad_corpus(tmp_path):
    """A list with 3 good clips and one clip of every bad kind; returns (json path, {file: kind})."""
    d = tmp_path / "bad"
    d.mkdir()
    good = [d / f"good{i}.wav" for i in range(3)]
    for i, p in enumerate(good):
        make_wav(p, 0.3, seed=i)
    kinds = {}
    p = d / "gone.wav"
    make_wav(p, 0.3)
    kinds[p] = "missing"  # deleted after the loader is built
    p = d / "corrupt.wav"
    p.write_bytes(np.random.default_rng(1).bytes(3000))
    kinds[p] = "corrupt"
    p = d / "empty.wav"
    p.write_bytes(b"")
    kinds[p] = "empty"
    p = d / "zerolen.wav"
    sf.write(p, np.zeros(0, np.float32), 16000)
    kinds[p] = "empty"
    p = d / "silent.wav"
    sf.write(p, np.zeros(8000, np.float32), 16000)
    kinds[p] = "silent"
    p = d / "nan.wav"
    x = synth(0.3)
    x[7] = np.nan
    sf.write(p, x, 16000, subtype="FLOAT")
    kinds[p] = "nonfinite"
    p = d / "short.wav"
    sf.write(p, synth(0.01), 16000)
    kinds[p] = "too_short"
    wavs = good + list(kinds)
    return write_list(d / "list.json", wavs), kinds


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_clips_skipped_and_counted(tmp_path, workers):
    path, kinds = _bad_corpus(tmp_path)
    cfg = make_cfg(valid=[path], num_workers=workers)
    loader = build_loader(cfg, "valid")
    (tmp_path / "bad" / "gone.wav").unlink()
    loader.set_epoch(0)
    batches = list(loader)
    keys = [k for b in batches for k in b["keys"]]
    assert sorted(keys) == sorted(str(tmp_path / "bad" / f"good{i}.wav") for i in range(3))
    assert all(b["wave"].shape[0] > 0 for b in batches)  # all-bad batches are not yielded
    expected = Counter(kinds.values())
    assert loader.skipped == expected
    summary = loader.skip_summary()
    assert summary.startswith("skipped 7 of 10 clips: 2 empty")
    for kind in ("1 missing", "1 corrupt", "1 silent", "1 nonfinite", "1 too_short"):
        assert kind in summary
    assert "; first: " in summary and "empty.wav (empty: the file is 0 bytes" in summary
    assert loader.position == 3  # batches drawn, empty ones included


@pytest.mark.parametrize("workers", [0, 2])
def test_strict_mode_raises_naming_the_file(tmp_path, workers):
    d = tmp_path / "s"
    make_wav(d / "ok.wav", 0.3)
    sf.write(d / "zeros.wav", np.zeros(8000, np.float32), 16000)
    cfg = make_cfg(valid=[write_list(d / "l.json", [d / "ok.wav", d / "zeros.wav"])], num_workers=workers, strict=True)
    loader = build_loader(cfg, "valid")
    with pytest.raises(AudioError) as info:
        list(loader)
    msg = str(info.value)
    assert "zeros.wav" in msg and msg.startswith("silent: ") and "\n" not in msg and info.value.kind == "silent"


def test_missing_files_reported_before_training(tiny_corpus, capsys):
    for p in tiny_corpus.wavs[:2]:
        p.unlink()
    cfg = make_cfg(train=[tiny_corpus.json_list])
    with pytest.raises(DataError, match=r"train\.json: 2 of 6 files are missing") as info:
        build_loader(cfg, "train")
    assert str(tiny_corpus.wavs[0]) in str(info.value)
    cfg.data.allow_missing = True  # proposed config field, read with getattr
    loader = build_loader(cfg, "train")
    assert len(loader.datasets[0]) == 4
    assert capsys.readouterr().err.startswith("warning: ")  # a plain line: no Python source (issue 25)


# ---- build_loader


def test_loader_labels_len_and_exact_resume(tiny_corpus):
    cfg = make_cfg(train=[tiny_corpus.json_list], label_csv=tiny_corpus.label_csv, batch_size=2)
    cfg.audio.crop = "random"
    loader = build_loader(cfg, "train")
    assert len(loader) == 3 and len(loader.labels) == 3
    loader.set_epoch(1)
    full = list(loader)
    assert full[0]["labels"].shape == (2, 3) and full[0]["wave"].shape[0] == 2
    loader.set_epoch(1, start_batch=1)
    tail = list(loader)
    assert len(tail) == 2
    for x, y in zip(full[1:], tail):
        assert x["keys"] == y["keys"]
        assert torch.equal(x["wave"], y["wave"]) and torch.equal(x["labels"], y["labels"])


def test_two_workers_give_the_same_batches(tmp_path):
    wavs = [tmp_path / f"{i}.wav" for i in range(6)]
    for i, w in enumerate(wavs):
        make_wav(w, 1.0, kind="noise", seed=i)
    lst = write_list(tmp_path / "l.json", wavs)
    runs = []
    for workers in (0, 2):
        cfg = make_cfg(train=[lst], num_workers=workers, batch_size=2)
        cfg.audio.crop = "random"
        cfg.augment.mixup, cfg.augment.mixup_partner = 0.5, "dataset"
        loader = build_loader(cfg, "train")
        loader.set_epoch(2)
        runs.append(list(loader))
    assert len(runs[0]) == len(runs[1]) == 3
    for a, b in zip(*runs):
        assert a["keys"] == b["keys"] and torch.equal(a["wave"], b["wave"])


def test_two_ranks_cover_every_clip_once(tiny_corpus):
    keys = []
    for rank in range(2):
        cfg = make_cfg(valid=[tiny_corpus.json_list], batch_size=2)
        loader = build_loader(cfg, "valid", rank=rank, world_size=2)
        loader.set_epoch(0)
        keys += [k for b in loader for k in b["keys"]]
    assert sorted(keys) == sorted(f"audio/clip{i:02d}.wav" for i in range(6))


def test_folder_source_is_unlabeled(tmp_path):
    for i in range(3):
        make_wav(tmp_path / "f" / "sub" / f"{i}.flac", 0.2, seed=i)
    cfg = make_cfg(train=[tmp_path / "f"], label_csv="")
    loader = build_loader(cfg, "train")
    batch = next(iter(loader))
    assert batch["labels"] is None and loader.labels is None and batch["wave"].shape[0] == 3
    cfg.data.balanced_sampling = True
    with pytest.raises(DataError, match="balanced_sampling"):
        build_loader(cfg, "train")


def test_source_kinds_and_config_errors(tmp_path, tiny_corpus):
    assert source_kind(str(tiny_corpus.json_list)) == "list"
    assert source_kind(str(tiny_corpus.root / "audio")) == "folder"
    (tmp_path / "sh").mkdir()
    (tmp_path / "sh" / "index.json").write_text("{}")
    assert source_kind(str(tmp_path / "sh")) == "shards"
    assert source_kind("data/shard-{000000..000003}.tar") == "shards"
    with pytest.raises(DataError, match="not found"):
        source_kind(str(tmp_path / "nope"))
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DataError, match="expected a .json"):
        source_kind(str(tmp_path / "x.txt"))
    with pytest.raises(DataError, match="data.test is empty"):
        build_loader(make_cfg(), "test")


def test_dataset_stats_match_torchaudio(tiny_corpus):
    pytest.importorskip("ssast.audio.stats")
    import torchaudio

    cfg = make_cfg(train=[tiny_corpus.json_list])
    cfg.augment.mixup, cfg.augment.mixup_partner = 1.0, "dataset"  # must be ignored
    mean, std = compute_dataset_stats(cfg, "train")
    feats = []
    for p in tiny_corpus.wavs:
        w = torch.from_numpy(load_audio(p, max_samples=max_samples(TARGET)))[None]
        feats.append(torchaudio.compliance.kaldi.fbank(
            w, htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
            num_mel_bins=128, dither=0.0, frame_shift=10))
    ref = torch.cat(feats).double()
    assert abs(mean - ref.mean().item()) < 1e-3 and abs(std - ref.std().item()) < 1e-3


# ---- shards as a source (ShardDataset)


def test_shards_and_list_mixed_for_pretraining(tmp_path):
    shards = pytest.importorskip("ssast.data.shard_writer")
    a = write_corpus(tmp_path / "a", n=4, seconds=0.2)
    b = write_corpus(tmp_path / "b", n=4, seconds=0.2)
    out = tmp_path / "shards"
    shards.prepare_shards(str(b.json_list), str(out), shard_size=2, workers=1, progress=False)
    # evaluation over the shard directory reads every clip once
    cfg = make_cfg(valid=[out], batch_size=3)
    loader = build_loader(cfg, "valid")
    assert loader.num_batches is None
    with pytest.raises(TypeError):
        len(loader)
    loader.set_epoch(0)
    assert sum(len(bt["keys"]) for bt in loader) == 4
    # a finite stream resumes by dropping the batches already consumed
    loader.set_epoch(0, start_batch=1)
    assert sum(len(bt["keys"]) for bt in loader) == 1 and loader.position == 2
    # pretraining mixes the list and the shards by weight in an endless stream
    cfg = make_cfg(train=[a.json_list, out], train_weights=[1.0, 3.0], batch_size=8)
    cfg.task = "pretrain"
    loader = build_loader(cfg, "train")
    loader.set_epoch(0)
    keys = []
    for _, batch in zip(range(25), loader):
        keys += batch["keys"]
    from_list = sum(k.startswith("audio/") for k in keys) / len(keys)
    assert len(keys) == 200 and abs(from_list - 0.25) < 0.1


def test_num_workers_sized_from_the_machine(monkeypatch):
    from ssast.data.loader import resolve_num_workers

    assert resolve_num_workers(3) == 3 and resolve_num_workers(0) == 0
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)), raising=False)
    assert resolve_num_workers(-1) == 8 and resolve_num_workers(-1, world_size=4) == 3
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0}, raising=False)
    assert resolve_num_workers(-1) == 0


def test_sources_mix_in_proportion_to_their_size_by_default():
    """Without data.train_weights, streams mix like a concatenation: by clip count (unknown counts get the mean)."""
    from types import SimpleNamespace

    from ssast.data.loader import _stream_sizes

    assert _stream_sizes([SimpleNamespace(num_clips=1950), SimpleNamespace(num_clips=281)]) == [1950.0, 281.0]
    assert _stream_sizes([SimpleNamespace(num_clips=100), SimpleNamespace(num_clips=None)]) == [100.0, 100.0]
