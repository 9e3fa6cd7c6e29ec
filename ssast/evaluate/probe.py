"""Frozen-encoder evaluation: is the encoder becoming useful? Linear probe and k-NN on every layer, and a layer mix.

The encoder is frozen (eval mode, no gradient, no augmentation, no mixup). Each clip is embedded once per layer by
mean-pooling the patch (or frame) tokens, prefix tokens left out, as fine-tuning pools them:

- layer 0: the blocks' input (patch projection + positional embedding), what the transformer starts from;
- layer i (1..L): the output of block i; the last one after the encoder's final LayerNorm, i.e. exactly the tokens
  that fine-tuning's mean pooling reads.

On these embeddings :mod:`ssast.evaluate.probe_classifiers` fits the linear probe and the k-NN per layer and the learned
weighted sum of all layers (SUPERB style), with their hyper-parameters chosen on a validation split (or, without one,
on a fixed part of the training list held out by a hash of the clip keys), and scores them on the test split (or on
validation when there is no test split, the selection then using the held-out part of train).

``ssast probe CKPT -c CONFIG`` (:func:`probe_checkpoint`) caches the embeddings on disk, keyed by a hash of the
encoder's weights and architecture, of the data lists (and the size and time of every clip) and labels, and of the
audio settings and precision: a second probe of the same checkpoint on the same data computes no embedding.
:class:`TrainingProbe` is the same probe on the current encoder while pretraining (``train.probe_every``), without the
disk cache and without touching any global random state.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from ssast.config import AudioConfig, AugmentConfig, Config, ConfigError

CACHE_VERSION = 1  # bump when what an embedding is changes, so older cache entries are not reused


@dataclass
class Embeddings:
    """One split: per-clip, per-layer mean-pooled embeddings (N, L + 1, D), multi-hot targets (N, C), clip keys."""

    emb: np.ndarray
    labels: np.ndarray
    keys: list[str]
    skipped: str = ""  # the loader's summary when clips could not be used (they are left out)

    def __len__(self) -> int:
        return len(self.keys)


# ---------------------------------------------------------------------------------------------------------------
# Embeddings


@torch.no_grad()
def layer_embeddings(encoder, feats: Tensor) -> Tensor:
    """(B, T, F) features -> (B, L + 1, D) float32: the mean patch-token output of the blocks' input and of every
    block, the last one after the final norm (see the module docstring)."""
    grid = encoder.grid_for(feats)
    hidden = [encoder.add_positions(encoder.patch_embed(feats), grid)]
    out = encoder.run_blocks(hidden[0], hidden)  # appends every block's output to `hidden`
    hidden[-1] = out
    p = encoder.num_prefix
    return torch.stack([h[:, p:].float().mean(1) for h in hidden], 1)


def embed_loader(encoder, loader, feature_fn: Callable[[dict], Tensor], autocast) -> Embeddings:
    """Embed every clip of ``loader`` with the frozen encoder (eval mode during the pass, its mode restored after)."""
    was_training = encoder.training
    encoder.eval()
    embs, labels, keys = [], [], []
    try:
        loader.set_epoch(0)
        for batch in loader:
            feats = feature_fn(batch)  # outside autocast, as in training
            with autocast():
                embs.append(layer_embeddings(encoder, feats).cpu().numpy())
            labels.append(batch["labels"].numpy())
            keys += list(batch["keys"])
    finally:
        encoder.train(was_training)
    if not keys:
        raise ConfigError(f"{loader.name}: no usable clip to probe with ({loader.skip_summary()})")
    skipped = f"{loader.name}: {loader.skip_summary()}" if sum(loader.skipped.values()) else ""
    return Embeddings(np.concatenate(embs), np.concatenate(labels), keys, skipped)


# ---------------------------------------------------------------------------------------------------------------
# Scoring the embeddings


def evaluate_embeddings(train: Embeddings, valid: Optional[Embeddings], test: Embeddings, multilabel: bool,
                        device: torch.device | str = "cpu") -> dict:
    """The probe's numbers: per layer linear and k-NN, the layer mix, the best layer; see probe_classifiers."""
    from ssast.evaluate.probe_classifiers import Split, held_out_part, probe_layers, probe_metric

    def split(e: Embeddings) -> Split:
        return Split(torch.from_numpy(e.emb).float().to(device), torch.from_numpy(e.labels).float().to(device))

    full = split(train)
    if valid is None:
        fit_idx, sel_idx = held_out_part(train.keys, train.labels, multilabel)
        if not len(sel_idx):
            raise ConfigError(f"the probe's training list has {len(train)} usable clips, too few to hold out a part "
                              "for choosing the regularisation; give a longer list or a validation list")
        fit, select = full.take(fit_idx), full.take(sel_idx)
        selection = f"{len(sel_idx)} of the {len(train)} training clips held out (fixed hash of the clip keys)"
    else:
        fit, select, selection = full, split(valid), f"the validation split ({len(valid)} clips)"
    result = probe_layers(fit, select, full, split(test), multilabel)
    linear = [row["linear"] for row in result["layers"]]
    best = int(np.argmax(linear))
    return {
        "metric": probe_metric(multilabel),
        "selection": selection,
        "num_clips": {"train": len(train), "test": len(test), **({"valid": len(valid)} if valid else {})},
        "last": {"layer": len(linear) - 1, "linear": linear[-1], "knn": result["layers"][-1]["knn"]},
        "best": {"layer": best, "linear": linear[best]},
        **result,
    }


def probe_scalars(result: dict) -> dict[str, float]:
    """The numbers logged while pretraining: last layer's linear and k-NN, the best layer and its score, the mix."""
    m = "mAP" if result["metric"] == "mAP" else "acc"
    return {f"linear_{m}": result["last"]["linear"], f"knn_{m}": result["last"]["knn"],
            f"best_layer_{m}": result["best"]["linear"], "best_layer": float(result["best"]["layer"]),
            f"weighted_{m}": result["weighted"]["linear"]}


# ---------------------------------------------------------------------------------------------------------------
# Data: which lists, their loaders, their fingerprints


def probe_sources(cfg: Config) -> dict[str, tuple[str, list[str]]]:
    """The labelled lists to probe with, as {split: (config key, sources)}: ``data.probe_train/probe_test`` when the
    config names them (a pretraining config that probes), else ``data.train/valid/test`` as in fine-tuning. Without a
    test list the probe is scored on valid (and its regularisation chosen on a held-out part of train)."""
    d = cfg.data
    if d.probe_train:
        splits = {"train": ("data.probe_train", d.probe_train), "test": ("data.probe_test", d.probe_test)}
    else:
        splits = {"train": ("data.train", d.train), "valid": ("data.valid", d.valid), "test": ("data.test", d.test)}
    if not splits["train"][1]:
        raise ConfigError("data.train: give the labelled list the probe is fitted on (or data.probe_train)",
                          ["data.train"])
    if not splits["test"][1]:
        if not splits.get("valid", ("", []))[1]:
            key = splits["test"][0]
            raise ConfigError(f"{key}: give a labelled list to score the probe on (or data.valid)", [key])
        splits["test"] = splits.pop("valid")
    return {split: (key, list(sources)) for split, (key, sources) in splits.items() if sources}


def probe_labels(cfg: Config):
    """The label set of the probe's lists (data.label_csv)."""
    from ssast.data.manifest import read_label_csv

    if not cfg.data.label_csv:
        raise ConfigError("data.label_csv: the probe needs the label CSV (index,mid,display_name) of its lists",
                          ["data.label_csv"])
    return read_label_csv(cfg.data.label_csv)


def probe_loader(cfg: Config, sources: list[str], name: str, labels):
    """An evaluation loader (no shuffling, crops at the start, no augmentation) over ``sources``."""
    from ssast.data.loader import build_loader

    data = dataclasses.replace(cfg.data, test=list(sources), balanced_sampling=False)
    pcfg = dataclasses.replace(cfg, task="finetune", data=data, augment=AugmentConfig())
    loader = build_loader(pcfg, "test", labels=labels)
    loader.name = name
    loader.preflight()  # an empty or unreadable probe list stops before any embedding
    return loader


def _stat(path: Path) -> str:
    try:
        st = path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return "missing"


def source_fingerprint(source: str) -> str:
    """What a data source's clips are: a list's absolute path and text plus the size and time of every clip file it
    names; a folder's (or shard folder's) files with their sizes and times; else the path's own size and time."""
    from ssast.data.manifest import read_json_list

    p = Path(source).absolute()
    h = hashlib.sha256(str(p).encode())
    if p.is_file() and p.suffix.lower() in (".json", ".jsonl"):
        h.update(p.read_bytes())
        for clip in read_json_list(p):
            h.update(f"{clip.path}={_stat(Path(clip.path))}\n".encode())
    elif p.is_dir():
        for root, dirs, files in sorted(os.walk(p, followlinks=True)):
            dirs.sort()
            for f in sorted(files):
                h.update(f"{Path(root, f).relative_to(p)}={_stat(Path(root, f))}\n".encode())
    else:
        h.update(_stat(p).encode())
    return h.hexdigest()


def encoder_fingerprint(encoder) -> str:
    """A hash of the encoder's architecture and weights (names, dtypes, shapes and bytes of every tensor)."""
    h = hashlib.sha256()
    arch = {k: getattr(encoder, k) for k in ("dim", "depth", "heads", "num_prefix", "input_fdim", "input_tdim")}
    pe = encoder.patch_embed
    arch["patch"] = [getattr(pe, k, None) for k in ("fshape", "tshape", "fstride", "tstride")]
    h.update(json.dumps(arch, sort_keys=True, default=str).encode())
    for name, t in sorted(encoder.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# The disk cache


def default_cache_dir() -> Path:
    """$SSAST_CACHE_DIR, else $XDG_CACHE_HOME/ssast/probe, else ~/.cache/ssast/probe."""
    if os.environ.get("SSAST_CACHE_DIR"):
        return Path(os.environ["SSAST_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ssast" / "probe"


def cache_key(encoder_hash: str, sources: list[str], label_csv: str, audio: AudioConfig, precision: str) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{encoder_hash}|{precision}|".encode())
    h.update(json.dumps(dataclasses.asdict(audio), sort_keys=True).encode())
    h.update(Path(label_csv).read_bytes() if label_csv else b"")
    for s in sources:
        h.update(source_fingerprint(s).encode())
    return h.hexdigest()[:40]


def read_cached(path: Path) -> Optional[Embeddings]:
    """The cached embeddings at ``path``; None when absent or unreadable (then they are computed again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return Embeddings(z["emb"], z["labels"], [str(k) for k in z["keys"]], str(z["skipped"]))
    except (OSError, ValueError, KeyError):
        return None


def write_cached(path: Path, e: Embeddings) -> None:
    from ssast.atomic import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, emb=e.emb.astype(np.float32), labels=e.labels.astype(np.float32), keys=np.array(e.keys, dtype=str),
             skipped=np.array(e.skipped))
    atomic_write(path, lambda f: f.write(buf.getvalue()))


# ---------------------------------------------------------------------------------------------------------------
# `ssast probe`


def load_probe_encoder(ckpt: str, cfg: Config, device: torch.device):
    """(frozen encoder, its audio settings, a description): the encoder of a pretraining or fine-tuned checkpoint
    with the features it was trained on, or for ``scratch`` a random encoder of ``cfg.model`` seeded by train.seed."""
    if ckpt == "scratch":
        from ssast.models.encoder import build_encoder

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            encoder = build_encoder(cfg.model)
        return encoder.to(device).eval(), dataclasses.replace(cfg.audio, crop="start"), \
            f"random initialisation (train.seed={cfg.train.seed})"
    from ssast.serve.inference import audio_config_of, load_for_inference

    model, meta = load_for_inference(ckpt, device, need_head=False)
    return model.encoder, audio_config_of(meta), f"{meta.kind} checkpoint {ckpt}"


def probe_checkpoint(ckpt: str, cfg: Config, out_dir: str | Path, cache_dir: str | Path | None = None) -> dict:
    """Probe one checkpoint (or ``scratch``) on the config's labelled lists; writes probe.json and probe.png into
    ``out_dir`` and returns the result. ``cache_dir`` None: no disk cache."""
    from ssast.audio.features import FeatureExtractor
    from ssast.train.runtime import setup_runtime

    t0 = time.time()
    splits = probe_sources(cfg)
    labels = probe_labels(cfg)
    rt = setup_runtime(cfg.train.device, cfg.train.precision)
    encoder, audio, what = load_probe_encoder(ckpt, cfg, rt.device)
    rt = setup_runtime(cfg.train.device, cfg.train.precision, encoder.dim)  # bf16 on a CPU only for wide models
    run_cfg = dataclasses.replace(cfg, audio=audio)
    features = FeatureExtractor(audio, AugmentConfig()).to(rt.device)

    def feature_fn(batch: dict) -> Tensor:
        return features(batch["wave"].to(rt.device), batch["num_frames"].to(rt.device), train=False)

    enc_hash = encoder_fingerprint(encoder) if cache_dir is not None else ""
    embedded, cache = {}, {}
    # every list is checked (probe_loader's preflight) before the first clip is embedded
    loaders = {split: probe_loader(run_cfg, sources, name, labels) for split, (name, sources) in splits.items()}
    for split, (name, sources) in splits.items():
        path = None
        if cache_dir is not None:
            key = cache_key(enc_hash, sources, cfg.data.label_csv, audio, rt.precision)
            path = Path(cache_dir) / f"{key}.npz"
        found = read_cached(path) if path is not None else None
        cache[split] = "hit" if found is not None else ("miss" if path is not None else "off")
        if found is None:
            found = embed_loader(encoder, loaders[split], feature_fn, rt.autocast)
            if path is not None:
                try:
                    write_cached(path, found)
                except OSError as e:  # a cache that cannot be written costs speed next time, never this result
                    print(f"probe: embedding cache {path.parent} not written ({e.strerror}); the probe goes on",
                          file=sys.stderr)
        embedded[split] = found
    t_embed = time.time() - t0
    result = evaluate_embeddings(embedded["train"], embedded.get("valid"), embedded["test"], cfg.data.multilabel)
    skipped = [e.skipped for e in embedded.values() if e.skipped]
    if skipped:
        result["skipped_clips"] = skipped
    result.update(checkpoint=str(ckpt), encoder=what, score_split=splits["test"][0], cache=cache,
                  seconds={"embed": round(t_embed, 2), "fit": round(time.time() - t0 - t_embed, 2)})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from ssast.atomic import atomic_write_text

    atomic_write_text(out / "probe.json", json.dumps(result, indent=2) + "\n")
    plot_probe(result, out / "probe.png")
    return result


# ---------------------------------------------------------------------------------------------------------------
# While pretraining


class TrainingProbe:
    """The probe on the current encoder of a pretraining run (``train.probe_every``): the loaders of
    ``data.probe_train/probe_test`` are built once; each run embeds both lists and fits the classifiers."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        labels = probe_labels(cfg)
        self.loaders = {split: probe_loader(cfg, getattr(cfg.data, f"probe_{split}"), f"data.probe_{split}", labels)
                        for split in ("train", "test")}

    def run(self, encoder, feature_fn: Callable[[dict, bool], Tensor], rt) -> dict:
        """Probe ``encoder`` now; no global random state (python, numpy, torch, CUDA) is changed, and the encoder's
        train/eval mode is restored."""
        from ssast.train.runtime import rng_state, set_rng_state

        t0 = time.time()
        state = rng_state()
        try:
            embedded = {split: embed_loader(encoder, loader, lambda b: feature_fn(b, False), rt.autocast)
                        for split, loader in self.loaders.items()}
            result = evaluate_embeddings(embedded["train"], None, embedded["test"], self.cfg.data.multilabel,
                                         rt.device)
        finally:
            set_rng_state(state)
        result["seconds"] = time.time() - t0
        return result

    def record(self, encoder, feature_fn: Callable[[dict, bool], Tensor], rt) -> tuple[dict[str, float], dict]:
        """What a pretraining run logs of one probe: (scalars for TensorBoard and the history, per-layer scores)."""
        result = self.run(encoder, feature_fn, rt)
        return ({**probe_scalars(result), "seconds": result["seconds"]},
                {"linear_by_layer": [r["linear"] for r in result["layers"]],
                 "knn_by_layer": [r["knn"] for r in result["layers"]]})


# ---------------------------------------------------------------------------------------------------------------
# Report


def layer_name(layer: int, last: int) -> str:
    if layer == 0:
        return "0 (patch embedding)"
    return f"{layer} (final norm)" if layer == last else str(layer)


def format_probe_table(result: dict) -> str:
    """Markdown table: one row per layer (linear probe and k-NN with their chosen settings) and the layer mix."""
    m = result["metric"]
    rows = [f"| layer | linear {m} | weight decay | k-NN {m} | k |", "|---|---|---|---|---|"]
    last = len(result["layers"]) - 1
    for r in result["layers"]:
        rows.append(f"| {layer_name(r['layer'], last)} | {r['linear']:.4f} | {r['weight_decay']:g} | {r['knn']:.4f} "
                    f"| {r['k']} |")
    w = result["weighted"]
    rows.append(f"| weighted sum of all layers | {w['linear']:.4f} | {w['weight_decay']:g} | - | - |")
    return "\n".join(rows)


def plot_probe(result: dict, png: Path) -> None:
    """Metric against layer (linear and k-NN), the layer mix as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [r["layer"] for r in result["layers"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(layers, [r["linear"] for r in result["layers"]], "o-", label="linear")
    ax.plot(layers, [r["knn"] for r in result["layers"]], "s--", label="k-NN")
    ax.axhline(result["weighted"]["linear"], color="gray", linestyle=":", label="weighted sum, linear")
    ax.set_xticks(layers)
    ax.set_xlabel("layer (0 = patch embedding)")
    ax.set_ylabel(f"{result['metric']} on {result.get('score_split', 'test')}")
    ax.set_title(Path(str(result.get("checkpoint", ""))).name or "probe", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from ssast.atomic import atomic_savefig

    atomic_savefig(fig, png, dpi=90)
    plt.close(fig)
