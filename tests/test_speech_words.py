"""The spoken-word task of benchmarks/speech_words.py: real synthesizer voices, test speakers never heard in training,
a pool of other words, written as our lists. Needs espeak-ng and flite (.ci/run installs them)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ssast.data.manifest import read_json_list, read_label_csv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import speech_words as sw  # noqa: E402

pytestmark = pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("flite")),
                                reason="needs espeak-ng and flite (apt-get install -y espeak-ng flite)")


def speaker_of(entry) -> str:
    return Path(entry["wav"]).stem.split("_", 3)[3]


def word_of(entry) -> str:
    return Path(entry["wav"]).stem.split("_")[2]


def test_speakers_words_and_sizes(tmp_path):
    corpus = sw.make_speech_corpus(tmp_path, train_per_class=1, test_per_class=1, seed=3)
    lists = {s: json.loads(getattr(corpus, s).read_text())["data"] for s in ("pool", "train", "test")}
    assert [len(lists[s]) for s in ("pool", "train", "test")] == [100, 10, 10]  # pool 10x the labelled clips
    train_names = {s.name for s in sw.TRAIN_SPEAKERS}
    test_names = {s.name for s in sw.TEST_SPEAKERS}
    assert not train_names & test_names
    assert {speaker_of(e) for e in lists["test"]} <= test_names
    assert {speaker_of(e) for e in lists["train"] + lists["pool"]} <= train_names  # pretraining never hears them
    assert not {word_of(e) for e in lists["pool"]} & set(sw.KEYWORDS) and all("labels" not in e for e in lists["pool"])
    # class-interleaved: the first 10 train clips hold every keyword once (train_subset's contract)
    assert [e["labels"] for e in lists["train"]] == sw.KEYWORDS
    assert [e["labels"] for e in lists["test"]] == sw.KEYWORDS
    assert {e["labels"] for e in lists["train"]} == {word_of(e) for e in lists["train"]} == set(sw.KEYWORDS)
    labels = read_label_csv(corpus.labels)  # the lists load as the trainer loads them
    assert len(labels) == corpus.classes == 10 and len(read_json_list(corpus.train, labels)) == 10
    for entry in lists["train"][:3] + lists["test"][:3] + lists["pool"][:3]:
        wave, sr = sf.read(corpus.root / entry["wav"])
        assert sr == 16000 and len(wave) == int(1.28 * 16000)
        assert np.abs(wave).max() > 0.2  # a word, not silence or faint noise


def test_voices_differ_and_a_second_call_keeps_the_clips(tmp_path):
    voices = sw.TRAIN_SPEAKERS[:4] + sw.TEST_SPEAKERS[:2]
    waves = [sw.say(s, "left", np.random.default_rng(0), tmp_path) for s in voices]
    assert all(len(w) > 1600 for w in waves)  # over 0.1 s of speech from every voice
    for a in range(len(waves)):  # six voices, six different utterances
        for b in range(a + 1, len(waves)):
            assert len(waves[a]) != len(waves[b]) or not np.allclose(waves[a], waves[b]), (voices[a], voices[b])
    first = sw.make_speech_corpus(tmp_path / "c", pool=12, train_per_class=1, test_per_class=1, seed=5)
    stamps = {p.name: p.stat().st_mtime_ns for p in (first.root / "audio").iterdir()}
    again = sw.make_speech_corpus(tmp_path / "c", pool=12, train_per_class=1, test_per_class=1, seed=5)
    assert {p.name: p.stat().st_mtime_ns for p in (again.root / "audio").iterdir()} == stamps
    assert not list((again.root / "audio").glob(".*.tmp"))  # whole clips only
