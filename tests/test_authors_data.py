"""The authors' data behaviour over several training lists (issue 27): class-balanced weights counted over the union of
the lists (ast egs/audioset/gen_weight_file.py:40-56), mixup partners drawn over the union (ast src/dataloader.py:163)
and cut or padded to the first clip's length (ssast src/dataloader.py:108-116)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import make_wav
from ssast.config import Config
from test_dataset_loader import make_cfg
from ssast.data import build_loader
from ssast.data.shards import balance_over

MIDS = ["/m/aaa", "/m/bbb", "/m/ccc"]
# a small list balanced over the classes (the 22k "balanced" AudioSet list) and a big skewed one (the unbalanced 2M)
SMALL = ["/m/aaa", "/m/aaa", "/m/bbb", "/m/bbb", "/m/ccc", "/m/ccc"]
BIG = ["/m/aaa"] * 24 + ["/m/bbb"] * 5 + ["/m/ccc"]


def _lists(tmp_path, seconds=(0.1, 0.1)):
    csv = tmp_path / "labels.csv"
    csv.write_text("index,mid,display_name\n" + "".join(f"{i},{m},c{i}\n" for i, m in enumerate(MIDS)))
    paths = []
    for name, labels, sec in (("small", SMALL, seconds[0]), ("big", BIG, seconds[1])):
        entries = []
        for i, mid in enumerate(labels):
            wav = tmp_path / name / f"{i:02d}.wav"
            make_wav(wav, sec, freq=200.0 + 50 * i)
            entries.append({"wav": str(wav), "labels": mid})
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"data": entries}))
        paths.append(path)
    return csv, paths


def _cfg(csv, paths, **data) -> Config:
    cfg = make_cfg(train=paths, label_csv=csv, **data)
    cfg.task = "finetune"
    return cfg


def _authors_share_of_small() -> float:
    """The small list's share of draws under the authors' formula: one weight file over the concatenated list."""
    union = SMALL + BIG
    count = {m: union.count(m) for m in MIDS}
    weight = [1000.0 / (count[m] + 0.01) for m in union]
    return sum(weight[: len(SMALL)]) / sum(weight)


def test_balanced_weights_are_counted_over_the_union_of_the_lists(tmp_path):
    csv, paths = _lists(tmp_path)
    loader = build_loader(_cfg(csv, paths, balanced_sampling=True), "train")
    w = loader.sampler.weights.numpy()
    expected = _authors_share_of_small()  # 0.343; per-list counts would give 0.5
    assert abs(expected - 0.5) > 0.1
    # exact: the sampler's weights are the authors' weights (their scale 1000 included)
    union = SMALL + BIG
    np.testing.assert_allclose(w, [1000.0 / (union.count(m) + 0.01) for m in union])
    assert w[: len(SMALL)].sum() / w.sum() == pytest.approx(expected, rel=1e-12)
    # empirical: 300 epochs of 36 draws with replacement, fixed seed. The share's standard error is
    # sqrt(p (1 - p) / 10800) = 0.0046; 0.02 is over four of them, and 0.157 from the per-list share of 0.5
    draws = small = 0
    for epoch in range(300):
        loader.set_epoch(epoch)
        idx = np.asarray(loader.sampler.indices())
        draws, small = draws + len(idx), small + int((idx < len(SMALL)).sum())
    assert draws == 300 * len(SMALL + BIG)
    assert abs(small / draws - expected) < 0.02


def test_train_weights_still_set_each_lists_share_with_union_balance_inside(tmp_path):
    csv, paths = _lists(tmp_path)
    w = build_loader(_cfg(csv, paths, balanced_sampling=True, train_weights=[1.0, 3.0]), "train").sampler.weights
    w = w.numpy()
    assert w[: len(SMALL)].sum() / w.sum() == pytest.approx(0.25)
    # within a list the clips keep the union's class weights: the big list's lone /m/ccc clip vs an /m/aaa clip
    big = w[len(SMALL):]
    assert big[-1] / big[0] == pytest.approx((26 + 0.01) / (3 + 0.01))


def test_shard_sets_balance_over_the_union():
    sets = [SimpleNamespace(label_hist={m: SMALL.count(m) for m in MIDS}, hist_clips=len(SMALL)),
            SimpleNamespace(label_hist={m: BIG.count(m) for m in MIDS}, hist_clips=len(BIG))]
    balance_over(sets)
    share = sets[0].expected_draws / (sets[0].expected_draws + sets[1].expected_draws)
    assert share == pytest.approx(_authors_share_of_small(), rel=1e-9)
    assert sets[0].expected_draws + sets[1].expected_draws == pytest.approx(len(SMALL + BIG))


def _mixup_cfg(csv, paths):
    cfg = _cfg(csv, paths)
    cfg.augment.mixup = 1.0
    cfg.augment.mixup_partner = "dataset"
    cfg.augment.mixup_domain = "wave"
    return cfg


def test_mixup_partner_is_drawn_over_the_union_of_the_lists(tmp_path):
    csv, paths = _lists(tmp_path)
    dataset = build_loader(_mixup_cfg(csv, paths), "train").loader.dataset
    small_ds, big_ds = dataset.datasets
    served = []  # which list each partner was read from
    load = big_ds._load
    big_ds._load = lambda index, rng: served.append(index) or load(index, rng)
    draws = 0
    for epoch in range(60):
        small_ds.set_epoch(epoch)
        big_ds.set_epoch(epoch)
        for i in range(len(SMALL)):
            before = len(served)
            y = small_ds[i]["labels"]
            draws += 1
            if len(served) > before:  # the item really mixes that partner: its labels carry the partner's class
                assert y[MIDS.index(BIG[served[-1]])] > 0
    # uniform over the union: 30 of 36 clips are in the big list (a draw within the small list would give 0);
    # 360 draws: standard error 0.02, tolerance three of them
    assert abs(len(served) / draws - 30 / 36) < 0.06


@pytest.mark.parametrize("first, partner", [(0.2, 0.4), (0.4, 0.2)])
def test_mixup_partner_is_cut_or_padded_to_the_first_clip(tmp_path, first, partner):
    csv, paths = _lists(tmp_path, seconds=(first, partner))
    small = build_loader(_mixup_cfg(csv, paths), "train").loader.dataset.datasets[0]
    small.share_partners([small.partners[1]])  # partners from the other list only: every partner has the other length
    for i in range(len(SMALL)):
        item = small[i]
        assert len(item["wave"]) == round(first * 16000)  # the first clip's length, whichever is longer
        assert abs(float(item["wave"].mean())) < 1e-5
