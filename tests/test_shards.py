"""WebDataset shards: prepare (parallel, resumable, atomic); ShardDataset (rank/worker splits, resample, bad input)."""
from __future__ import annotations

import io
import itertools
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds

from ssast.audio.io import AudioError, load_audio
from ssast.config import AudioConfig
from ssast.data import shard_writer
from ssast.data.manifest import DataError, read_label_csv
from ssast.data.shard_writer import prepare_shards
from ssast.data.shards import ShardDataset, ShardError, read_index

MIDS = ["/m/dog", "/m/cat", "/m/car"]
N_CLIPS = 10
EVAL_AUDIO = AudioConfig(target_length=200)  # 32240 samples: longer than every test clip, so nothing is cropped


def _write_corpus(root: Path, n: int = N_CLIPS) -> tuple[Path, Path, list[dict]]:
    """n clips of 0.3-1.5 s, alternately 16 kHz mono and 44.1 kHz stereo, with a DC offset; JSON list + label CSV."""
    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True)
    entries = []
    for i in range(n):
        sr, stereo = (16000, False) if i % 2 == 0 else (44100, True)
        t = np.arange(int((0.3 + 1.2 * i / (n - 1)) * sr)) / sr
        x = 0.3 * np.sin(2 * np.pi * (220 + 40 * i) * t) + 0.05 * rng.standard_normal(t.size) + 0.1
        data = np.stack([x, 0.5 * x], axis=1) if stereo else x
        sf.write(root / "audio" / f"clip.{i}.wav", data.astype(np.float32), sr, subtype="FLOAT")  # dot in stem
        labels = [MIDS[i % 3]] + ([MIDS[(i + 1) % 3]] if i % 4 == 0 else [])
        entries.append({"wav": f"audio/clip.{i}.wav", "labels": ",".join(labels)})
    (root / "train.json").write_text(json.dumps({"data": entries}))
    rows = "".join(f'{i},{m},"{m[3:]}"\n' for i, m in enumerate(MIDS))
    (root / "labels.csv").write_text("index,mid,display_name\n" + rows)
    return root / "train.json", root / "labels.csv", entries


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus packed once with shard_size 3 and 2 spawned workers: 4 shards (3, 3, 3, 1 clips)."""
    root = tmp_path_factory.mktemp("corpus")
    json_path, csv_path, entries = _write_corpus(root)
    out = root / "shards3"
    index = prepare_shards(str(json_path), str(out), shard_size=3, workers=2, label_csv=str(csv_path), progress=False)
    return {"root": root, "json": json_path, "csv": csv_path, "entries": entries, "out": out, "index": index}


def _ident(x):
    return x


def _keys_over_ranks(url, world_size: int, num_workers: int, train: bool = False, epoch: int = 0) -> list[str]:
    """Keys yielded by all simulated ranks, each through a DataLoader with num_workers workers."""
    keys = []
    for rank in range(world_size):
        ds = ShardDataset(url, labels=None, audio=EVAL_AUDIO, train=train, seed=3, rank=rank,
                          world_size=world_size, shuffle_buffer=4)
        ds.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers, collate_fn=_ident)
        keys += [item["key"] for item in loader]
    return keys


def _quantised(x: np.ndarray) -> np.ndarray:
    """What the shard holds: 16-bit PCM (x * 32768 rounded), decoded and DC-removed again by the reader."""
    q = np.clip(np.round(x.astype(np.float64) * 32768), -32768, 32767) / 32768
    return (q - q.mean()).astype(np.float32)


def test_roundtrip_audio_labels_and_index(corpus):
    labels = read_label_csv(corpus["csv"])
    ds = ShardDataset(str(corpus["out"]), labels=labels, audio=EVAL_AUDIO, train=False)
    assert ds.num_clips == N_CLIPS
    items = {it["key"]: it for it in ds}
    assert len(items) == N_CLIPS
    hist, total = Counter(), 0.0
    for key, item in items.items():
        assert "." not in key and "/" not in key
        i = int(key.split("-")[0])
        entry = corpus["entries"][i]
        original = load_audio(corpus["root"] / entry["wav"])
        assert item["wave"].dtype == np.float32 and item["wave"].shape == original.shape
        assert np.abs(item["wave"] - _quantised(original)).max() < 1e-6  # FLAC is lossless on the 16-bit samples
        assert np.abs(item["wave"] - original).max() < 1e-4
        mids = entry["labels"].split(",")
        np.testing.assert_array_equal(item["labels"], labels.encode(mids))
        hist.update(mids)
        total += original.shape[0] / 16000
    index = read_index(str(corpus["out"]))
    assert index == corpus["index"]
    assert index["shards"] == [f"shard-00000{i}.tar" for i in range(4)]
    assert index["counts"] == [3, 3, 3, 1] and index["num_clips"] == N_CLIPS
    assert index["label_histogram"] == dict(hist)
    assert index["total_seconds"] == pytest.approx(total, abs=1e-9)
    assert index["skipped"] == {} and index["sample_rate"] == 16000
    # members: KEY.flac (16-bit, 16 kHz, mono) + KEY.json with labels, source and duration
    with tarfile.open(corpus["out"] / "shard-000001.tar") as tar:
        names = tar.getnames()
        assert names == sorted(names) and len(names) == 6
        flac = tar.extractfile(names[0]).read()
        meta = json.loads(tar.extractfile(names[1]).read())
    assert names[0].endswith(".flac") and names[1] == names[0][:-5] + ".json"
    info = sf.info(io.BytesIO(flac))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1)
    i = int(names[0].split("-")[0])
    assert i == 3 and meta["labels"] == corpus["entries"][3]["labels"].split(",")
    assert meta["source"] == os.path.abspath(corpus["root"] / "audio" / "clip.3.wav")
    assert meta["duration"] == pytest.approx(info.frames / 16000)
    side = json.loads((corpus["out"] / "shard-000001.json").read_text())
    assert side["count"] == 3 and side["tar_bytes"] == os.path.getsize(corpus["out"] / "shard-000001.tar")


def test_brace_pattern_and_tar_list(corpus):
    pattern = str(corpus["out"] / "shard-{000000..000003}.tar")
    ds = ShardDataset(pattern, labels=None, audio=EVAL_AUDIO, train=False)
    assert len(ds.urls) == 4 and ds.num_clips == N_CLIPS  # count from the sidecars
    items = list(ds)
    assert len(items) == N_CLIPS and all(it["labels"] is None for it in items)
    two = ShardDataset([str(corpus["out"] / "shard-000003.tar")], labels=None, audio=EVAL_AUDIO, train=False)
    assert [it["key"] for it in two] == ["000000009-clip_9"]
    with pytest.raises(DataError, match=r"1 of 1 shard files not found.*shard-000009\.tar"):
        ShardDataset([str(corpus["out"] / "shard-000009.tar")], labels=None, audio=EVAL_AUDIO, train=False)
    with pytest.raises(DataError, match="no index.json"):
        ShardDataset(str(corpus["root"] / "audio"), labels=None, audio=EVAL_AUDIO, train=False)


def test_two_ranks_two_workers_cover_every_clip_once(corpus):
    all_keys = sorted(it["key"] for it in ShardDataset(str(corpus["out"]), labels=None, audio=EVAL_AUDIO, train=False))
    # 4 shards = 2 ranks x 2 workers: split by shard
    keys = _keys_over_ranks(str(corpus["out"]), world_size=2, num_workers=2)
    assert sorted(keys) == all_keys
    # training order: still a partition, and the shard order / buffer changes with the epoch
    epoch0 = _keys_over_ranks(str(corpus["out"]), world_size=2, num_workers=2, train=True, epoch=0)
    epoch1 = _keys_over_ranks(str(corpus["out"]), world_size=2, num_workers=2, train=True, epoch=1)
    assert sorted(epoch0) == sorted(epoch1) == all_keys and epoch0 != epoch1
    assert epoch0 == _keys_over_ranks(str(corpus["out"]), world_size=2, num_workers=2, train=True, epoch=0)
    # the shard order itself is reshuffled per epoch in training, fixed in evaluation
    ds = ShardDataset(str(corpus["out"]), labels=None, audio=EVAL_AUDIO, train=True, seed=3)
    orders = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        orders.add(tuple(ds.plan()[0]))
    assert len(orders) > 1 and all(sorted(o) == sorted(ds.urls) for o in orders)
    assert ShardDataset(str(corpus["out"]), labels=None, audio=EVAL_AUDIO, train=False).plan()[0] == ds.urls


@pytest.mark.parametrize("shard_size,expected_modulus", [(5, 2), (10, 4)])
def test_clip_level_split_when_few_shards(corpus, tmp_path, shard_size, expected_modulus):
    out = tmp_path / f"s{shard_size}"
    prepare_shards(str(corpus["json"]), str(out), shard_size=shard_size, workers=1, progress=False)
    ds = ShardDataset(str(out), labels=None, audio=EVAL_AUDIO, train=False, rank=1, world_size=2)
    assert ds.plan(worker=1, num_workers=2)[1] == expected_modulus  # 2 shards: split per worker; 1: per rank+worker
    keys = _keys_over_ranks(str(out), world_size=2, num_workers=2)
    assert len(keys) == N_CLIPS and len(set(keys)) == N_CLIPS


def test_resample_is_endless(corpus):
    ds = ShardDataset(str(corpus["out"]), labels=read_label_csv(corpus["csv"]), audio=AudioConfig(target_length=20),
                      train=True, resample=True, shuffle_buffer=8, seed=1)
    items = list(itertools.islice(iter(ds), 3 * N_CLIPS + 5))
    assert len(items) == 3 * N_CLIPS + 5
    assert all(it["wave"].shape == ((20 - 1) * 160 + 400,) for it in items)  # cropped to target_length frames
    counts = Counter(it["key"] for it in items)
    assert len(counts) <= N_CLIPS and max(counts.values()) >= 2


def test_interrupted_prepare_resumes_without_rewriting(tmp_path, monkeypatch):
    json_path, _, _ = _write_corpus(tmp_path)
    out = tmp_path / "shards"
    real, calls = shard_writer._encode_flac, []

    def crash_in_second_shard(wave):
        calls.append(1)
        if len(calls) == 5:  # second clip of shard 1
            raise RuntimeError("simulated crash")
        return real(wave)

    monkeypatch.setattr(shard_writer, "_encode_flac", crash_in_second_shard)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_shards(str(json_path), str(out), shard_size=3, workers=1, progress=False)
    monkeypatch.undo()
    names = sorted(os.listdir(out))
    assert names == ["shard-000000.json", "shard-000000.tar"]  # no half shard under any name, no index
    # a hard kill leaves a temporary file, or a renamed tar whose sidecar was never written
    (out / "shard-000001.tar.tmp").write_bytes(b"half a shard")
    (out / "shard-000002.tar").write_bytes(b"\0" * 1024)
    done = {n: os.stat(out / n).st_mtime_ns for n in names}
    index = prepare_shards(str(json_path), str(out), shard_size=3, workers=1, progress=False)
    assert {n: os.stat(out / n).st_mtime_ns for n in names} == done  # finished shard kept as is
    assert index["counts"] == [3, 3, 3, 1]
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    keys = [it["key"] for it in ShardDataset(str(out / "shard-000002.tar"), labels=None, audio=EVAL_AUDIO, train=False)]
    assert keys == ["000000006-clip_6", "000000007-clip_7", "000000008-clip_8"]
    # a changed source never keeps stale shards: the fingerprint in the sidecar no longer matches
    doc = json.loads(json_path.read_text())
    doc["data"] = doc["data"][1:]
    json_path.write_text(json.dumps(doc))
    index = prepare_shards(str(json_path), str(out), shard_size=3, workers=1, progress=False)
    assert index["num_clips"] == N_CLIPS - 1
    assert os.stat(out / "shard-000000.tar").st_mtime_ns != done["shard-000000.tar"]
    first = next(iter(ShardDataset(str(out), labels=None, audio=EVAL_AUDIO, train=False)))
    assert first["key"] == "000000000-clip_1"


def _good_member(corpus) -> tuple[bytes, bytes]:
    with tarfile.open(corpus["out"] / "shard-000000.tar") as tar:
        names = tar.getnames()
        return tar.extractfile(names[0]).read(), tar.extractfile(names[1]).read()


def test_corrupt_members_named_and_strict(corpus, tmp_path):
    flac, meta = _good_member(corpus)
    bad = tmp_path / "bad.tar"
    with open(bad, "wb") as f, wds.TarWriter(f, encoder=False) as w:
        w.write({"__key__": "k1", "flac": flac, "json": meta})
        w.write({"__key__": "k2", "flac": os.urandom(2000), "json": meta})
        w.write({"__key__": "k3", "flac": flac, "json": b"{not json"})
    labels = read_label_csv(corpus["csv"])
    items = list(ShardDataset([str(bad)], labels=labels, audio=EVAL_AUDIO, train=False))
    assert [it.get("bad", False) for it in items] == [False, True, True]
    assert items[0]["key"] == "k1" and items[0]["labels"].sum() >= 1
    assert items[1]["key"] == "bad.tar:k2" and items[2]["key"] == "bad.tar:k3"
    reason = items[1]["reason"]
    assert reason.startswith("corrupt") and str(bad) in reason and "k2.flac" in reason
    assert str(bad) in items[2]["reason"] and "k3.json" in items[2]["reason"] and "not valid JSON" in items[2]["reason"]
    with pytest.raises(AudioError, match=r"bad\.tar:k2\.flac"):
        list(ShardDataset([str(bad)], labels=labels, audio=EVAL_AUDIO, train=False, strict=True))
    only_json = tmp_path / "json.tar"
    with open(only_json, "wb") as f, wds.TarWriter(f, encoder=False) as w:
        w.write({"__key__": "k3", "flac": flac, "json": b"{not json"})
    with pytest.raises(ShardError, match=r"json\.tar: member k3\.json"):
        list(ShardDataset(str(only_json), labels=None, audio=EVAL_AUDIO, train=False, strict=True))
    # a label the CSV does not know is a configuration error, never a skipped clip
    with open(tmp_path / "lab.tar", "wb") as f, wds.TarWriter(f, encoder=False) as w:
        w.write({"__key__": "k4", "flac": flac, "json": json.dumps({"labels": ["/m/unknown"]}).encode()})
    with pytest.raises(DataError, match=r"lab\.tar: member k4\.json.*/m/unknown"):
        list(ShardDataset(str(tmp_path / "lab.tar"), labels=labels, audio=EVAL_AUDIO, train=False))


def test_truncated_shard(corpus, tmp_path):
    data = (corpus["out"] / "shard-000000.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) * 3 // 4])  # inside the last members
    items = list(ShardDataset(str(cut), labels=None, audio=EVAL_AUDIO, train=False))
    assert not items[0].get("bad") and items[-1]["bad"]
    assert str(cut) in items[-1]["reason"] and "truncated or corrupt" in items[-1]["reason"]
    with pytest.raises(ShardError, match=r"cut\.tar: tar archive is truncated"):
        list(ShardDataset(str(cut), labels=None, audio=EVAL_AUDIO, train=False, strict=True))


def test_folder_source_unlabeled_with_bad_clip(tmp_path):
    folder = tmp_path / "unlabeled"
    (folder / "sub").mkdir(parents=True)
    t = np.arange(8000) / 16000
    for name in ("a.wav", "sub/b.flac", "sub/c.wav"):
        sf.write(folder / name, (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000)
    (folder / "broken.wav").write_bytes(os.urandom(500))
    index = prepare_shards(str(folder), str(tmp_path / "out"), shard_size=2, workers=1, progress=False)
    assert index["num_clips"] == 3 and index["skipped"] == {"corrupt": 1} and index["label_histogram"] == {}
    assert "broken.wav" in index["skipped_examples"][0]
    items = list(ShardDataset(str(tmp_path / "out"), labels=None, audio=EVAL_AUDIO, train=False))
    assert len(items) == 3 and all(it["labels"] is None and it["wave"].shape == (8000,) for it in items)
    with pytest.raises(AudioError, match="broken.wav"):
        # 2 shards, 2 spawned workers: the error crosses the process boundary with its message
        prepare_shards(str(folder), str(tmp_path / "strict"), shard_size=2, workers=2, strict=True, progress=False)
    left = os.listdir(tmp_path / "strict")  # shard 1 may have finished in the other worker: then with its sidecar
    assert not [n for n in left if n.endswith(".tmp")] and "shard-000000.tar" not in left and "index.json" not in left
    assert all(n[:-4] + ".json" in left for n in left if n.endswith(".tar"))


def test_label_not_in_csv_is_reported(corpus, tmp_path):
    csv = tmp_path / "two.csv"
    csv.write_text("index,mid,display_name\n0,/m/dog,dog\n1,/m/cat,cat\n")
    with pytest.raises(DataError, match=r"train\.json, entry 2: label '/m/car'"):
        prepare_shards(str(corpus["json"]), str(tmp_path / "o"), label_csv=str(csv), workers=1, progress=False)


def test_max_seconds_keeps_the_start(corpus, tmp_path):
    index = prepare_shards(str(corpus["json"]), str(tmp_path / "o"), shard_size=10, workers=1, max_seconds=0.4,
                           progress=False)
    lengths = [min(load_audio(corpus["root"] / e["wav"]).shape[0], 6400) for e in corpus["entries"]]
    assert index["total_seconds"] == pytest.approx(sum(lengths) / 16000)
    items = list(ShardDataset(str(tmp_path / "o"), labels=None, audio=EVAL_AUDIO, train=False))
    assert sorted(it["wave"].shape[0] for it in items) == sorted(lengths)


def test_prepare_in_process_leaves_torch_threads_alone(tmp_path):
    """workers=1 writes shards in the calling process; it must not leave that process on one thread."""
    import torch

    from conftest import write_corpus

    lst = write_corpus(tmp_path / "c", n=2, seconds=0.3).json_list
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        prepare_shards(str(lst), str(tmp_path / "s"), shard_size=2, workers=1, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_class_balanced_shard_stream(tmp_path):
    """Balanced sampling by weighting: a rare class is drawn as often as a common one, and an epoch keeps its size."""
    (tmp_path / "a").mkdir()
    entries = []
    for i in range(10):
        t = np.arange(3200) / 16000
        sf.write(tmp_path / "a" / f"c{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), 16000)
        entries.append({"wav": f"a/c{i}.wav", "labels": "/m/cat" if i == 0 else "/m/dog"})
    (tmp_path / "l.json").write_text(json.dumps({"data": entries}))
    (tmp_path / "l.csv").write_text("index,mid,display_name\n0,/m/dog,dog\n1,/m/cat,cat\n")
    labels = read_label_csv(tmp_path / "l.csv")
    prepare_shards(str(tmp_path / "l.json"), str(tmp_path / "s"), shard_size=4, workers=1, progress=False)
    ds = ShardDataset(str(tmp_path / "s"), labels=labels, audio=EVAL_AUDIO, train=True, shuffle_buffer=0,
                      balanced=True)
    cats, total, epochs = 0, 0, 60
    for e in range(epochs):
        ds.set_epoch(e)
        items = list(ds)
        total += len(items)
        cats += sum(int(it["labels"][1]) for it in items)
    assert abs(cats / total - 0.5) < 0.08  # 1 cat clip in 10, drawn half of the time
    assert abs(total / epochs - 10) < 1.0
    plain = ShardDataset(str(tmp_path / "s"), labels=labels, audio=EVAL_AUDIO, train=True, shuffle_buffer=0)
    assert sum(int(it["labels"][1]) for it in plain) == 1
