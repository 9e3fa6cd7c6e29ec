"""Long recordings: windows cut from a stream, each scored exactly as the excerpt would be on its own, a timeline and
clip-level aggregation in `ssast predict`, per-window embeddings in `ssast embed --timestamps`, one-line errors for bad
--window/--hop, and memory that does not grow with the length of the file."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ssast.audio.fbank import max_samples
from ssast.audio.features import FeatureExtractor
from ssast.audio.io import load_audio
from ssast.cli import main
from ssast.config import AudioConfig, AugmentConfig, ModelConfig
from ssast.serve.inference import embed_files, predict_files
from ssast.models.checkpoint import CheckpointMeta, save_checkpoint
from ssast.models.classifier import SSASTClassifier
from ssast.models.factory import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 64  # the tiny model's input: 63 * 160 + 400 = 10480 samples = 0.655 s
WINDOW_S = max_samples(FRAMES) / 16000
LABELS = ["tone", "noise", "buzz", "hum", "rest"]


def write_checkpoint(path: Path, frames: int, depth: int = 2) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(size="custom", dim=64, depth=depth, heads=2, input_tdim=frames)
    model = SSASTClassifier(cfg, len(LABELS))
    meta = CheckpointMeta(kind="classifier", model=cfg, labels=LABELS, audio=AudioConfig(target_length=frames))
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", FRAMES)


def recording(seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    """A tone, then noise, then a buzz (harmonics) and a stretch of digital silence: (samples, channels) float32."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    rng = np.random.default_rng(0)
    cols = []
    for c in range(channels):
        x = 0.4 * np.sin(2 * np.pi * 440 * (1 + 0.5 * c) * t)
        x = np.where(t < seconds / 3, x, 0.3 * rng.uniform(-1, 1, n))
        buzz = sum(np.sin(2 * np.pi * 110 * k * t) / k for k in range(1, 8)) * 0.2
        x = np.where(t < 2 * seconds / 3, x, buzz)
        x[int(0.85 * n) : int(0.95 * n)] = 0.0  # silence inside a recording is not an error
        cols.append(x)
    return np.stack(cols, axis=1).astype(np.float32)


def write(path: Path, data: np.ndarray, sr: int) -> Path:
    sf.write(str(path), data, sr, subtype="FLOAT")  # float samples: an excerpt holds exactly the same values
    return path


def scores(top: list[dict]) -> dict[str, float]:
    return {t["label"]: t["score"] for t in top}


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_window_count_times_and_aggregation(ckpt, tmp_path):
    sr = 16000
    data = recording(3.3, sr)
    wav = write(tmp_path / "long.wav", data, sr)
    (r,) = predict_files(str(ckpt), [str(wav)], top_k=len(LABELS))
    win, hop = max_samples(FRAMES), round(max_samples(FRAMES) / 2)  # defaults: the model's length, half of it
    total = data.shape[0]
    count = 1 + math.ceil((total - win) / hop)
    assert len(r["windows"]) == count == 10
    for k, w in enumerate(r["windows"]):
        assert w["start"] == pytest.approx(k * hop / sr)
        assert w["end"] == pytest.approx(min(k * hop + win, total) / sr)
    assert r["windows"][-1]["end"] == pytest.approx(3.3)
    per_window = np.array([[scores(w["top"])[lab] for lab in LABELS] for w in r["windows"]])
    assert np.allclose(per_window.sum(1), 1, atol=1e-5)  # softmax: single-label model
    clip = scores(r["top"])
    assert [clip[lab] for lab in LABELS] == pytest.approx(per_window.mean(0), abs=1e-6)
    (rmax,) = predict_files(str(ckpt), [str(wav)], top_k=len(LABELS), aggregate="max")
    assert [scores(rmax["top"])[lab] for lab in LABELS] == pytest.approx(per_window.max(0), abs=1e-6)
    # the windows disagree (tone, noise, buzz): an aggregate that ignored all but one window would fail above
    assert np.ptp(per_window, axis=0).max() > 1e-3


def test_tail_shorter_than_a_frame_is_dropped(ckpt, tmp_path):
    sr, win = 16000, 8000  # --window 0.5 --hop 0.5: back-to-back windows
    for extra, count in ((200, 3), (600, 4)):  # 200 samples give no 25 ms frame; 600 do
        wav = write(tmp_path / f"tail{extra}.wav", recording((3 * win + extra) / sr, sr), sr)
        (r,) = predict_files(str(ckpt), [str(wav)], window=0.5, hop=0.5)
        assert len(r["windows"]) == count
        assert r["windows"][-1]["end"] == pytest.approx(min(count * win, 3 * win + extra) / sr)


@pytest.mark.parametrize("sr,channels", [(16000, 1), (22050, 2)])
def test_each_window_scores_as_its_excerpt(ckpt, tmp_path, sr, channels):
    """Window k's scores equal `predict` on the same samples cut out as a file (resampled and mixed to mono alike)."""
    wav = write(tmp_path / "long.wav", recording(3.3, sr, channels), sr)
    data, _ = sf.read(str(wav), dtype="float32", always_2d=True)
    (r,) = predict_files(str(ckpt), [str(wav)], top_k=len(LABELS), window=0.5, hop=0.3)
    windows = r["windows"]
    assert len(windows) == 11 == 1 + math.ceil((data.shape[0] - math.ceil(0.5 * sr)) / round(0.3 * sr))
    for k, w in enumerate(windows):
        a, b = round(w["start"] * sr), round(w["end"] * sr)
        assert a == k * round(0.3 * sr) and b - a == min(math.ceil(0.5 * sr), data.shape[0] - a)
    # the first, one across the tone/noise change, one ending in the silence, the shorter last one
    for k in (0, 3, 8, 10):
        a, b = round(windows[k]["start"] * sr), round(windows[k]["end"] * sr)
        excerpt = write(tmp_path / f"w{k}.wav", data[a:b], sr)
        (e,) = predict_files(str(ckpt), [str(excerpt)], top_k=len(LABELS))
        assert [t["label"] for t in e["top"]] == [t["label"] for t in windows[k]["top"]]
        expected = [t["score"] for t in windows[k]["top"]]
        assert [t["score"] for t in e["top"]] == pytest.approx(expected, abs=1e-5, rel=1e-5)


def test_short_clip_is_scored_as_before(ckpt, tmp_path):
    """A clip shorter than the window: one window, the clip's own features, as predict has always done."""
    sr = 16000
    wav = write(tmp_path / "short.wav", recording(0.4, sr), sr)
    (r,) = predict_files(str(ckpt), [str(wav)], top_k=len(LABELS))
    assert [(w["start"], w["end"]) for w in r["windows"]] == [(0.0, pytest.approx(0.4))]
    audio = AudioConfig(target_length=FRAMES)
    wave = torch.from_numpy(load_audio(wav, max_samples=max_samples(FRAMES)))[None]
    feats = FeatureExtractor(audio, AugmentConfig())(wave, torch.tensor([(wave.shape[1] - 400) // 160 + 1]), train=False)
    model, _ = load_pretrained(ckpt)
    with torch.no_grad():
        probs = torch.softmax(model(feats), -1)[0]
    assert [scores(r["top"])[lab] for lab in LABELS] == pytest.approx(probs.tolist(), abs=1e-6)


def test_cli_timeline_csv_and_json(ckpt, tmp_path, capsys):
    sr = 16000
    long_wav = write(tmp_path / "long.wav", recording(3.3, sr), sr)
    short_wav = write(tmp_path / "short.wav", recording(0.4, sr), sr)
    code, out, err = run(capsys, "predict", ckpt, long_wav, short_wav, "--top-k", "2",
                         "--timeline", tmp_path / "t.csv")
    assert code == 0, err
    assert f"{long_wav}  (10 windows, mean over windows)" in out.splitlines()
    assert str(short_wav) in out.splitlines()  # a short clip's line is as before
    with open(tmp_path / "t.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 11 and list(rows[0]) == ["file", "start", "end", "label_1", "score_1", "label_2", "score_2"]
    assert [r["file"] for r in rows] == [str(long_wav)] * 10 + [str(short_wav)]
    assert float(rows[1]["start"]) == pytest.approx(0.3275, abs=1e-3) and rows[1]["label_1"] in LABELS
    assert float(rows[-1]["end"]) == pytest.approx(0.4, abs=1e-3)

    code, out, err = run(capsys, "predict", ckpt, long_wav, "--window", "0.5", "--hop", "0.25", "--aggregate", "max",
                         "--timeline", tmp_path / "t.json", "--json")
    assert code == 0, err
    timeline = json.loads((tmp_path / "t.json").read_text())
    (result,) = json.loads(out)
    assert len(timeline) == len(result["windows"]) == 1 + math.ceil((3.3 - 0.5) / 0.25)
    assert timeline[3]["start"] == pytest.approx(0.75) and timeline[3]["end"] == pytest.approx(1.25)
    assert timeline[3]["top"] == result["windows"][3]["top"]


def test_embed_timestamps(ckpt, tmp_path, capsys):
    sr = 16000
    data = recording(2.0, sr)
    wav = write(tmp_path / "long.take1.wav", data, sr)
    code, _, err = run(capsys, "embed", ckpt, wav, "--out", tmp_path / "ts", "--timestamps", "--hop", "0.4")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "ts").iterdir()] == ["00000_long.take1.npz"]
    z = np.load(tmp_path / "ts" / "00000_long.take1.npz")
    win, hop = max_samples(FRAMES), round(0.4 * sr)
    count = 1 + math.ceil((data.shape[0] - win) / hop)
    assert z["embeddings"].shape == (count, 64) and z["starts"].shape == z["ends"].shape == (count,)
    assert z["starts"] == pytest.approx(np.arange(count) * 0.4)
    assert z["ends"] == pytest.approx(np.minimum(z["starts"] + win / sr, 2.0))
    # window 2 is the embedding of its excerpt as a file; without --timestamps a long file gets the windows' mean
    a, b = round(z["starts"][2] * sr), round(z["ends"][2] * sr)
    (one,) = embed_files(str(ckpt), [str(write(tmp_path / "w2.wav", data[a:b], sr))], str(tmp_path / "one"))
    assert np.load(one) == pytest.approx(z["embeddings"][2], abs=1e-5)
    (mean,) = embed_files(str(ckpt), [str(wav)], str(tmp_path / "mean"), hop=0.4)
    assert np.load(mean) == pytest.approx(z["embeddings"].mean(0), abs=1e-6)
    (tok,) = embed_files(str(ckpt), [str(wav)], str(tmp_path / "tok"), tokens=True, timestamps=True)
    assert np.load(tok)["embeddings"].shape[1:] == (8 * 4, 64)  # 128x64 input, 16x16 patches


@pytest.mark.parametrize("args,message", [
    (["--window", "0"], "--window 0.0: shorter than one 25 ms fbank frame"),
    (["--window", "0.7"], f"--window 0.7: longer than the model's input ({FRAMES} frames = {WINDOW_S:g} s"),
    (["--hop", "0"], "--hop 0.0: must be above 0 and at most the window"),
    (["--window", "0.5", "--hop", "0.6"], "--hop 0.6: must be above 0 and at most the window (0.5 s)"),
    (["--hop", "nan"], "--hop nan: must be above 0"),
    (["--timeline", "t.txt"], "--timeline t.txt: name a .csv or .json file"),
])
def test_bad_window_options_are_one_line(ckpt, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    wav = write(tmp_path / "a.wav", recording(1.0, 16000), 16000)
    code, out, err = run(capsys, "predict", ckpt, wav, *args)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and out == ""
    assert not (tmp_path / "t.txt").exists()
    if "--timeline" not in args:
        code, _, err = run(capsys, "embed", ckpt, wav, "--out", tmp_path / "e", *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_nan_inside_a_recording_names_the_window(ckpt, tmp_path, capsys):
    data = recording(2.0, 16000)
    data[20000] = np.nan
    wav = write(tmp_path / "nan.wav", data, 16000)
    code, _, err = run(capsys, "predict", ckpt, wav, "--window", "0.5", "--hop", "0.5")
    assert code == 2 and f"nonfinite: {wav} (window 1.00-1.50 s): contains NaN" in err


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from ssast.serve.inference import predict_files
    peaks = []
    for f in sys.argv[2:]:
        (r,) = predict_files(sys.argv[1], [f], hop=float(WINDOW))
        peaks.append((len(r["windows"]), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    print(json.dumps(peaks))
""")


def write_in_blocks(path: Path, minutes: int, sr: int) -> None:
    """A long recording written 10 s at a time (never held in memory whole): a tone in noise, over and over."""
    t = np.arange(10 * sr) / sr
    block = (0.3 * np.sin(2 * np.pi * 300 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size))
    with sf.SoundFile(str(path), "w", sr, 1, "PCM_16") as f:
        for _ in range(minutes * 6):
            f.write(block.astype(np.float32))


def test_memory_does_not_grow_with_length(tmp_path):
    """Peak RSS after a 2-minute file and then a 20-minute one (32 kHz, resampled per window), in one process.

    Reading the 20-minute file whole would add its 38M float32 samples (about 150 MB, plus the resampled copy); the
    stream holds one window. Measured here: +7 MB; with the file read whole on purpose, +137 MB; tolerance 48 MB.
    """
    ckpt = write_checkpoint(tmp_path / "ck", 1024, depth=1)  # 10.255 s windows: few windows for 20 minutes
    sr = 32000
    files = [tmp_path / "two.wav", tmp_path / "twenty.wav"]
    write_in_blocks(files[0], 2, sr)
    write_in_blocks(files[1], 20, sr)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    script = MEMORY_SCRIPT.replace("WINDOW", repr(max_samples(1024) / 16000))
    proc = subprocess.run([sys.executable, "-c", script, str(ckpt), *map(str, files)], capture_output=True,
                          text=True, env=env, cwd=str(ROOT), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (n_short, peak_short), (n_long, peak_long) = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (n_short, n_long) == (12, 118)  # back-to-back 10.255 s windows
    assert peak_long - peak_short < 48, f"peak RSS grew from {peak_short:.0f} to {peak_long:.0f} MB"


def test_silent_windows_inside_a_recording_are_scored(ckpt, tmp_path):
    data = recording(2.0, 16000)
    data[8000:24000] = 0.0  # 0.5 s to 1.5 s: two whole windows of digital silence
    wav = write(tmp_path / "gap.wav", data, 16000)
    (r,) = predict_files(str(ckpt), [str(wav)], top_k=len(LABELS), window=0.5, hop=0.5)
    assert len(r["windows"]) == 4
    silent = [scores(r["windows"][k]["top"]) for k in (1, 2)]
    assert silent[0] == pytest.approx(silent[1], abs=1e-6)  # the same (all-zero) features
    assert scores(r["windows"][0]["top"]) != pytest.approx(silent[0], abs=1e-4)
