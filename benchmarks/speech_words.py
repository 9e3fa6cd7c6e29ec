"""A spoken-word task from real synthesizer voices: keywords, held-out test speakers, an unlabelled pool.

The synthetic tasks of :mod:`ssast.demo.synthetic` are made in numpy; this one asks two speech synthesizers
(``espeak-ng`` with its voice variants, ``flite`` with its voices) to say ten keywords, as a user's keyword-spotting
set would be, so that a pretrained encoder is judged on speech that it was not designed around:

- the labelled train split and the unlabelled pool are spoken by the TRAIN_SPEAKERS, the test split only by the
  TEST_SPEAKERS (never heard in pretraining or fine-tuning);
- the pool holds other words (POOL_WORDS, never a keyword), 10x the labelled train split by default;
- every utterance gets its own rate and pitch, a random level and place in the 1.28 s clip and faint noise.

Written like the synthetic corpora (16 kHz wav files, SSAST JSON lists, a label CSV), so that
``benchmarks/label_efficiency.py --tasks speech`` and ``ssast probe`` use it as they use the others. It needs
``apt-get install espeak-ng flite``; nothing is shipped, everything is made here.

    python benchmarks/speech_words.py runs/speech          # make (or complete) the corpus under runs/speech
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ssast.atomic import atomic_write  # noqa: E402
from ssast.audio.io import resample  # noqa: E402
from ssast.demo.synthetic import SR, Corpus, _finish, write_lists  # noqa: E402

KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]  # Speech Commands' ten
POOL_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "bed", "bird", "cat",
    "dog", "happy", "house", "marvin", "sheila", "tree", "wow", "learn", "follow", "forward", "backward", "visual",
    "water", "paper", "window", "garden", "yellow", "purple", "orange", "table", "music", "river", "morning",
    "evening", "pencil", "basket", "silver", "market", "little", "rabbit", "candle", "button", "kitchen", "letter",
    "summer", "winter", "hello", "thanks", "maybe", "never", "open", "close", "light", "sound", "quick", "slow",
]


@dataclass(frozen=True)
class Speaker:
    engine: str  # "flite" or "espeak-ng"
    voice: str   # flite -voice NAME, espeak-ng -v NAME

    @property
    def name(self) -> str:
        return f"{self.engine.split('-')[0]}-{self.voice.replace('+', '_')}"


# kal and kal16 are one speaker at two rates: both on the train side, so no test speaker is heard in training
TRAIN_SPEAKERS = [Speaker("flite", v) for v in ("kal", "kal16", "awb")] + [
    Speaker("espeak-ng", v) for v in ("en+m1", "en+m2", "en+m3", "en+f1", "en+f2", "en-us+m7", "en+klatt",
                                      "en+croak", "en-gb-scotland+m4", "en+Andy")]
TEST_SPEAKERS = [Speaker("flite", v) for v in ("slt", "rms")] + [
    Speaker("espeak-ng", v) for v in ("en+f4", "en+m5", "en-us+f5", "en+klatt3", "en+edward")]


def say(speaker: Speaker, word: str, rng: np.random.Generator, workdir: Path) -> np.ndarray:
    """``word`` by ``speaker`` at a random rate and pitch, 16 kHz float, leading/trailing silence trimmed."""
    out = workdir / "say.wav"
    if speaker.engine == "flite":
        cmd = ["flite", "-voice", speaker.voice, "-t", word, "-o", str(out),
               "--setf", f"duration_stretch={rng.uniform(0.85, 1.2):.3f}",
               "--setf", f"int_f0_target_mean={rng.uniform(90, 190):.1f}"]
    else:
        cmd = ["espeak-ng", "-v", speaker.voice, "-s", str(int(rng.integers(130, 200))),
               "-p", str(int(rng.integers(25, 75))), "-w", str(out), word]
    try:
        subprocess.run(cmd, check=True, capture_output=True)
    except FileNotFoundError:
        raise SystemExit(f"{speaker.engine} not found: apt-get install -y espeak-ng flite") from None
    wave, sr = sf.read(out, dtype="float32")
    if sr != SR:
        wave = resample(wave, sr, SR)
    loud = np.flatnonzero(np.abs(wave) > 0.02 * np.abs(wave).max())
    return wave[loud[0]: loud[-1] + 1] if len(loud) else wave


def clip(speaker: Speaker, word: str, seconds: float, rng: np.random.Generator, workdir: Path) -> np.ndarray:
    """One clip: the word at a random place (cropped if longer than the clip), a random level, faint noise."""
    n = int(seconds * SR)
    speech = say(speaker, word, rng, workdir)[:n]
    x = np.zeros(n)
    start = rng.integers(0, n - len(speech) + 1)
    x[start: start + len(speech)] = speech
    return _finish(x, np.ones(n), rng)


def make_speech_corpus(root: str | Path, *, pool: int | None = None, train_per_class: int = 24,
                       test_per_class: int = 20, seconds: float = 1.28, seed: int = 0) -> Corpus:
    """Write the speech corpus under ``root`` (idempotent: clips already there are kept) and return it.

    The train and test lists are class-interleaved (the first ``k * 10`` train entries hold ``k`` clips per class);
    speakers rotate through their side's list. ``pool`` defaults to 10x the labelled train split.
    """
    root = Path(root)
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    pool = 10 * train_per_class * len(KEYWORDS) if pool is None else pool
    plan = {  # split -> (count, words to draw from, speakers)
        "pool": (pool, POOL_WORDS, TRAIN_SPEAKERS),
        "train": (train_per_class * len(KEYWORDS), KEYWORDS, TRAIN_SPEAKERS),
        "test": (test_per_class * len(KEYWORDS), KEYWORDS, TEST_SPEAKERS),
    }
    lists: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for part, (split, (count, words, speakers)) in enumerate(plan.items()):
            lists[split] = []
            for i in range(count):
                rng = np.random.default_rng([seed, part, i])  # one stream per clip: a kept clip needs no redraw
                # labelled splits cycle the words (interleaved classes), the pool draws them at random
                word = words[i % len(words)] if split != "pool" else words[rng.integers(len(words))]
                speaker = speakers[i % len(speakers)]  # 13 and 7 speakers: coprime with 10 words, all pairs
                path = audio / f"{split}_{i:04d}_{word}_{speaker.name}.wav"
                if not path.exists():  # whole or absent: an interrupted run leaves no half clip to keep
                    wave = clip(speaker, word, seconds, rng, Path(tmp))
                    atomic_write(path, lambda f: sf.write(f, wave, SR, format="WAV", subtype="PCM_16"))
                entry = {"wav": f"audio/{path.name}"}
                if split != "pool":
                    entry["labels"] = word
                lists[split].append(entry)
    return write_lists(root, lists, [(w, f"word '{w}'") for w in KEYWORDS])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", help="folder to write the corpus into")
    ap.add_argument("--pool", type=int, help="unlabelled clips (default 10x the labelled train split)")
    ap.add_argument("--train-per-class", type=int, default=24)
    ap.add_argument("--test-per-class", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    corpus = make_speech_corpus(args.root, pool=args.pool, train_per_class=args.train_per_class,
                                test_per_class=args.test_per_class, seed=args.seed)
    sizes = {s: len(json.loads(p.read_text())["data"]) for s, p in
             (("pool", corpus.pool), ("train", corpus.train), ("test", corpus.test))}
    print(f"{corpus.root}: {sizes} clips; {len(TRAIN_SPEAKERS)} train speakers, {len(TEST_SPEAKERS)} test speakers")


if __name__ == "__main__":
    main()
