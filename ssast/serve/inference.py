"""Using trained models on audio files: loading a checkpoint for inference, top-k prediction and embeddings
(whole clips or long recordings in windows)."""
from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path
from functools import partial
from typing import TYPE_CHECKING, Iterator, NamedTuple

import numpy as np
import torch

from ssast.config import PRECISIONS, AudioConfig, AugmentConfig, ConfigError

if TYPE_CHECKING:  # the models are imported only by the commands that use them
    from ssast.audio.windows import AudioWindow, Windowing
    from ssast.models.checkpoint import CheckpointMeta


def audio_config_of(meta: CheckpointMeta) -> AudioConfig:
    """The feature settings a checkpoint was trained with (the defaults where it has none), cropping at the start."""
    return replace(meta.audio or AudioConfig(), crop="start")


def load_for_inference(path: str, device: torch.device, need_head: bool):
    """A classifier from our checkpoint (or, for embeddings, the encoder of a pretraining checkpoint), in eval mode."""
    from ssast.models.checkpoint import read_checkpoint_meta
    from ssast.models.factory import build_classifier, load_pretrained

    meta = read_checkpoint_meta(path)
    if meta.kind == "classifier":
        model, meta = load_pretrained(path)
    elif need_head:
        raise ConfigError(f"{path} is a pretraining checkpoint: fine-tune it first (ssast finetune) to predict labels")
    else:
        # the classifier path without a head: the encoder is loaded strictly, the decoder and heads are dropped
        model, _ = build_classifier(replace(meta.model, init=""), 1, path)
    return model.to(device).eval(), meta


AGGREGATES = ("mean", "max")


class WindowOutput(NamedTuple):
    """What the model gave for one window of one file: its file's index, its place in seconds, the output row."""

    file: int
    start: float
    end: float
    row: torch.Tensor


def windowed_outputs(model_fn, files: list[str], audio: AudioConfig, windowing: Windowing, device: torch.device,
                     batch_size: int, autocast=contextlib.nullcontext) -> Iterator[WindowOutput]:
    """``model_fn``'s output (on the CPU, float32) for every window of every file, in order; the model runs under
    ``autocast()``, the features outside it (as in training).

    Windows of all files share batches of ``batch_size``; a file is decoded as a stream, so memory holds one batch of
    windows, never a whole long recording. Bad files raise AudioError.
    """
    from ssast.audio.features import FeatureExtractor
    from ssast.audio.windows import iter_windows
    from ssast.data.dataset import collate

    features = FeatureExtractor(audio, AugmentConfig()).to(device)

    def run(pending: list[tuple[int, AudioWindow]]):
        batch = collate([{"wave": w.wave, "labels": None, "key": str(i)} for i, w in pending], audio.sample_rate)
        with torch.no_grad():
            feats = features(batch["wave"].to(device), batch["num_frames"].to(device), train=False)
            with autocast():
                out = model_fn(feats).float().cpu()
        for (i, w), row in zip(pending, out):
            yield WindowOutput(i, w.start, w.end, row)

    pending: list[tuple[int, AudioWindow]] = []
    for i, f in enumerate(files):
        for w in iter_windows(f, audio, windowing):
            pending.append((i, w))
            if len(pending) == batch_size:
                yield from run(pending)
                pending = []
    if pending:
        yield from run(pending)


def per_file(files: list[str], outputs: Iterator[WindowOutput]) -> Iterator[tuple[str, list[WindowOutput]]]:
    """Group ``windowed_outputs`` by file: (file, its windows' outputs) for each file in turn."""
    for i, group in itertools.groupby(outputs, key=lambda out: out.file):
        yield files[i], list(group)


def _top(probs: torch.Tensor, names: list[str], k: int) -> list[dict]:
    scores, idx = probs.topk(min(k, probs.shape[-1]))
    return [{"label": names[j], "score": float(s)} for s, j in zip(scores.tolist(), idx.tolist())]


def inference_autocast(precision: str, device: torch.device, dim: int):
    """The autocast of inference at ``precision`` (auto, fp32, bf16: the training rule, see resolve_precision)."""
    from ssast.train.runtime import Runtime, resolve_precision

    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: give one of {', '.join(PRECISIONS)}")
    dtype, note = resolve_precision(precision, device, dim)
    if note:
        print(note.replace("train.precision", "--precision"), file=sys.stderr)
    return Runtime(device, dtype).autocast


def predict_files(ckpt: str, files: list[str], top_k: int = 5, device: str = "cpu", batch_size: int = 8,
                  window: float | None = None, hop: float | None = None, aggregate: str = "mean",
                  precision: str = "auto") -> list[dict]:
    """Top-k labels with scores per file (softmax for single-label models, sigmoid for multi-label).

    A file longer than ``window`` seconds (default: the model's length) is cut into windows every ``hop`` seconds
    (default: half the window); its ``top`` is the mean (or max, ``aggregate``) of the windows' probabilities, and
    ``windows`` lists every window's start, end (seconds) and top-k. A shorter file is one window, scored as a clip.
    ``precision`` is the training rule's (auto: bf16 on GPUs and on CPUs with native bf16 for models >= 256 wide).
    """
    from ssast.audio.windows import resolve_windowing

    if aggregate not in AGGREGATES:
        raise ConfigError(f"--aggregate {aggregate!r}: give one of {', '.join(AGGREGATES)}")
    dev = torch.device(device)
    model, meta = load_for_inference(ckpt, dev, need_head=True)
    autocast = inference_autocast(precision, dev, model.cfg.dim)
    audio = audio_config_of(meta)
    windowing = resolve_windowing(audio, window, hop)
    names = meta.labels or [str(i) for i in range(meta.num_classes)]
    score = torch.sigmoid if meta.multilabel else (lambda x: torch.softmax(x, -1))
    results = []
    for f, rows in per_file(files, windowed_outputs(model, files, audio, windowing, dev, batch_size, autocast)):
        probs = score(torch.stack([w.row for w in rows]))
        clip = probs.mean(0) if aggregate == "mean" else probs.amax(0)
        windows = [{"start": w.start, "end": w.end, "top": _top(p, names, top_k)} for w, p in zip(rows, probs)]
        results.append({"file": f, "top": _top(clip, names, top_k), "windows": windows})
    return results


TIMELINE_FORMATS = (".csv", ".json")


def check_timeline_path(path: str | Path) -> Path:
    """The timeline file's path, checked before any work: a .csv or .json file that can be written."""
    from ssast.atomic import check_output

    p = Path(path)
    if p.suffix.lower() not in TIMELINE_FORMATS:
        raise ConfigError(f"--timeline {p}: name a .csv or .json file (the suffix picks the format)")
    return check_output(p, folder=False, what="--timeline")


def write_timeline(results: list[dict], path: str | Path) -> Path:
    """Every window of every file as a .csv (file, start, end, label_1, score_1, ...) or .json list, atomically."""
    from ssast.atomic import atomic_write_text

    p = check_timeline_path(path)
    rows = [{"file": r["file"], **w} for r in results for w in r["windows"]]
    if p.suffix.lower() == ".json":
        atomic_write_text(p, json.dumps(rows, indent=2) + "\n")
        return p
    k = max((len(row["top"]) for row in rows), default=0)
    head = ["file", "start", "end"] + [f"{col}_{i}" for i in range(1, k + 1) for col in ("label", "score")]
    text = io.StringIO()
    out = csv.writer(text, lineterminator="\n")
    out.writerow(head)
    for row in rows:
        tops = [v for t in row["top"] for v in (t["label"], f"{t['score']:.6f}")]
        out.writerow([row["file"], f"{row['start']:.3f}", f"{row['end']:.3f}", *tops])
    atomic_write_text(p, text.getvalue())
    return p


def _embedding(model, x: torch.Tensor, tokens: bool) -> torch.Tensor:
    """The pooled clip embedding (B, D), or the patch tokens' outputs (B, N, D)."""
    out = model.forward_features(x)
    return model.patch_tokens(out) if tokens else model.forward_head(out, pre_logits=True)


def embed_files(ckpt: str, files: list[str], out_dir: str, tokens: bool = False, device: str = "cpu",
                batch_size: int = 8, window: float | None = None, hop: float | None = None,
                timestamps: bool = False, precision: str = "auto") -> list[Path]:
    """Clip embeddings (pooled, (D,)) or token embeddings ((N, D)) per file, saved as .npy under out_dir.

    A file longer than ``window`` seconds is cut into windows as in :func:`predict_files`; its .npy holds the mean of
    its windows' embeddings. With ``timestamps`` every window is kept instead: one .npz per file with ``embeddings``
    (W, D) or (W, N, D) and the windows' ``starts`` and ``ends`` in seconds.
    """
    from ssast.audio.windows import resolve_windowing

    dev = torch.device(device)
    model, meta = load_for_inference(ckpt, dev, need_head=False)
    autocast = inference_autocast(precision, dev, model.cfg.dim)
    audio = audio_config_of(meta)
    windowing = resolve_windowing(audio, window, hop)
    from ssast.atomic import atomic_write

    out = Path(out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    outputs = windowed_outputs(partial(_embedding, model, tokens=tokens), files, audio, windowing, dev, batch_size,
                               autocast)
    try:
        for i, (f, rows) in enumerate(per_file(files, outputs)):
            emb = torch.stack([w.row for w in rows]).numpy()
            stem = f"{i:05d}_{Path(f).stem}"  # the index keeps files of the same name apart
            if timestamps:
                p = out / f"{stem}.npz"
                atomic_write(p, lambda fh: np.savez(fh, embeddings=emb, starts=np.array([w.start for w in rows]),
                                                    ends=np.array([w.end for w in rows])))
            else:
                p = out / f"{stem}.npy"
                atomic_write(p, lambda fh: np.save(fh, emb.mean(0)))
            written.append(p)
    except BaseException:
        if created and not any(out.iterdir()):  # a folder this call made and filled with nothing: not left behind
            out.rmdir()
        raise
    return written
