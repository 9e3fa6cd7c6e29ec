"""Typed run configuration: dataclasses, YAML loading, dotted command-line overrides and validation.

A YAML file only states what differs from the defaults below. Unknown keys, wrong types and impossible
combinations raise :class:`ConfigError`, whose message names the key and where its value came from: the file, or the
command-line override. One module on purpose (about 500 lines): a key's type, default and checks are read and changed
together.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import yaml


class ConfigError(ValueError):
    """A user error in a configuration: the message names the key and, when known, the file.

    ``keys`` are the dotted keys whose values caused it, so :func:`load_config` can say where they were set.
    """

    def __init__(self, message: str, keys: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.keys = tuple(keys)


# Sizes of the released models (DeiT layout): dim, depth, heads.
MODEL_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}

# Per-dataset fbank statistics (mean, std) used by the authors.
DATASET_STATS = {
    "audioset": (-4.2677393, 4.5689974),
    "esc50": (-6.6268077, 5.358466),
    "speechcommands": (-6.845978, 5.5654526),
}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored inside every checkpoint."""

    size: Literal["tiny", "small", "base", "custom"] = "base"
    dim: Optional[int] = None  # set for size=custom; otherwise derived from size
    depth: Optional[int] = None
    heads: Optional[int] = None
    mlp_ratio: float = 4.0
    fshape: int = 16
    tshape: int = 16
    fstride: Optional[int] = None  # None: equal to the patch shape (no overlap)
    tstride: Optional[int] = None
    input_fdim: int = 128
    input_tdim: int = 1024
    num_prefix: int = 2  # prefix (cls/dist) tokens: 1 or 2
    # LayerNorm eps of the encoder (blocks and final norm): DeiT's 1e-6, as the authors; a model imported from
    # transformers keeps its layer_norm_eps (1e-12 in the published ASTs), so it computes what transformers computes
    norm_eps: float = 1e-6
    drop_path: float = 0.0
    grad_checkpointing: bool = False
    # pretraining: masking and objectives
    mask_patch: float = 400  # a count (>= 1) or a fraction of the tokens (< 1)
    # auto: cluster for patches, random for frames; inverse_block: EAT's squares (spans for frames) kept visible
    mask_mode: Literal["auto", "cluster", "random", "inverse_block"] = "auto"
    cluster_sizes: list[int] = field(default_factory=lambda: [3, 4, 5])  # masked squares' sides (cluster)
    block_sizes: list[int] = field(default_factory=lambda: [5])  # visible squares' sides / spans (inverse_block)
    # K: each clip is decoded, featurised and augmented once and masked K times independently; the objectives
    # (and the encoder, as one batch) see K x data.batch_size masked copies per step
    masks_per_clip: int = 1
    # cluster masks: "ours" (centred squares, clipped at the border) or "authors" (their sampler and its quirks:
    # anchored squares that wrap across rows, token 0 never masked, the trim keeps the lowest indices); README
    mask_sampler: Literal["ours", "authors"] = "ours"
    nce_weight: float = 1.0
    mse_weight: float = 10.0
    nce_axis: Literal["authors", "paper"] = "authors"
    two_pass: bool = False  # the authors' behaviour: one encoder pass and one mask per objective
    pretrain_encoder: Literal["all", "visible"] = "all"
    decoder_depth: int = 2  # visible-token path only
    decoder_dim: Optional[int] = None  # None: the encoder's width
    decoder_heads: Optional[int] = None
    # fine-tuning
    pooling: Literal["mean", "cls"] = "mean"
    # SUPERB's featurizer (the authors' VoxCeleb1 / IEMOCAP / KS1 runs): the tokens the pooling sees are a weighted sum
    # of every block's output (before the final norm), with learnable weights that start equal and are
    # softmax-normalised; off: the final, normalised block output (the SSAST fine-tuning recipes)
    layer_weights: bool = False
    # 0: head LayerNorm + Linear(D, classes); k > 0: SUPERB's utterance-level head, Linear(D, k) then Linear(k, classes)
    # with no norm or activation between (s3prl's projector + mean pooling + linear; linear maps commute with the mean)
    projector_dim: int = 0
    num_classes: int = 0  # 0: taken from the label list at fine-tuning
    init: str = ""  # "", "scratch", a checkpoint path, "imagenet:FILE" or "imagenet:timm" (see README)

    def __post_init__(self) -> None:
        # Resolved once, at construction (from YAML, a checkpoint or code): a named size fills dim/depth/heads, and an
        # unset stride equals the patch shape (no overlap), so no user of a ModelConfig has to fill them in again.
        if self.size in MODEL_SIZES:
            d, l, h = MODEL_SIZES[self.size]
            self.dim, self.depth, self.heads = self.dim or d, self.depth or l, self.heads or h
        self.fstride = self.fshape if self.fstride is None else self.fstride  # 0 stays 0: validate() refuses it
        self.tstride = self.tshape if self.tstride is None else self.tstride

    @property
    def is_frame(self) -> bool:
        return self.fshape == self.input_fdim and self.fshape != self.tshape


@dataclass
class AudioConfig:
    """Features: Kaldi fbank, length and normalisation."""

    sample_rate: int = 16000
    num_mel_bins: int = 128
    target_length: int = 1024
    crop: Literal["start", "random", "center"] = "start"  # where a longer training clip is cut; start as the authors'
    norm_mean: float = DATASET_STATS["audioset"][0]
    norm_std: float = DATASET_STATS["audioset"][1]


@dataclass
class AugmentConfig:
    """Training-time augmentation; every one off by default."""

    mixup: float = 0.0  # probability that a clip is mixed
    mixup_alpha: float = 10.0  # lambda ~ Beta(alpha, alpha)
    mixup_domain: Literal["wave", "fbank"] = "wave"
    mixup_partner: Literal["batch", "dataset"] = "batch"
    freqm: int = 0  # SpecAugment maximum frequency mask width (bins)
    timem: int = 0  # SpecAugment maximum time mask width (frames)
    # raw: mask the fbank before normalising (the authors' order: masked cells end at -mean/(2 std));
    # normalized: after normalising (masked cells 0), a departure kept as an option
    specaug_domain: Literal["raw", "normalized"] = "raw"
    noise: bool = False  # uniform noise + circular time shift (ESC-50 / Speech Commands recipes)
    time_shift: int = 10  # maximum circular shift in frames when noise is on


@dataclass
class DataConfig:
    """Where clips come from. A source is a SSAST JSON list, a folder of audio, or WebDataset shards."""

    train: list[str] = field(default_factory=list)
    train_weights: list[float] = field(default_factory=list)  # one per train source; empty: equal
    valid: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    label_csv: str = ""  # index,mid,display_name
    multilabel: bool = False  # BCE + mAP instead of CE + accuracy
    batch_size: int = 24
    eval_batch_size: int = 0  # 0: same as batch_size
    num_workers: int = -1  # -1: sized from the machine
    balanced_sampling: bool = False
    shuffle_buffer: int = 2000
    # clips in data.train's shards when neither their index.json nor their sidecars can be read (shards at URLs
    # without them); 0: from the index or sidecars. Fine-tuning needs the count for its schedule
    train_clips: int = 0
    strict: bool = False  # bad audio is an error instead of a counted skip
    allow_missing: bool = False  # files listed but missing on disk: warn and drop them instead of stopping
    # pretraining without data.valid that needs validation (plateau schedule, eval_every): this share of the training
    # clips of each source (at least one; by a fixed hash of their path; whole shards for shard sources) is held out
    holdout: float = 0.01
    # frozen-encoder probing while pretraining (train.probe_every) and `ssast probe` on a pretraining config: small
    # labelled lists (labels from data.label_csv) the probe is fitted on and scored on
    probe_train: list[str] = field(default_factory=list)
    probe_test: list[str] = field(default_factory=list)


@dataclass
class OptimConfig:
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])
    weight_decay: float = 5e-7
    warmup_steps: int = 1000
    schedule: Literal["constant", "cosine", "step", "plateau"] = "constant"
    # step schedule (in epochs when fine-tuning, in steps when pretraining): start, every, factor
    step_start: int = 0
    step_every: int = 1
    step_factor: float = 0.5
    # plateau schedule (the authors' ReduceLROnPlateau(mode=max)): every plateau_every steps the validation masked
    # accuracy is checked; after more than plateau_patience checks in a row without an improvement (relative
    # threshold plateau_threshold) the lr is multiplied by plateau_factor
    plateau_every: int = 4000
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    plateau_threshold: float = 1e-4
    min_lr: float = 0.0
    head_lr_mult: float = 1.0
    layer_decay: float = 1.0  # 1.0: off
    # fine-tuning, probe then fine-tune (LP-FT, Kumar et al. 2022): for the first N optimiser steps only the head
    # learns (the encoder's lr is 0), then the encoder's lr warms up again over optim.warmup_steps. 0: off
    head_only_steps: int = 0
    grad_clip: float = 0.0  # 0: off
    accum_steps: int = 1


Precision = Literal["auto", "fp32", "bf16"]  # training and inference alike (see ssast.train.runtime.resolve_precision)
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)


@dataclass
class TrainConfig:
    steps: int = 0  # pretraining length (steps)
    epochs: int = 0  # fine-tuning length (epochs)
    # fine-tuning: raise the epochs so that the run takes at least this many optimiser steps (0: off). A few labelled
    # clips give a few steps per epoch; the few-label recipe needs a minimum number of updates whatever the set size
    min_steps: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    precision: Precision = "auto"
    compile: bool = False
    # recompute each encoder block's activations in the backward pass instead of keeping them: less memory, more time
    # (same gradients); a memory setting, not part of the model, so a resume may change it
    grad_checkpointing: bool = False
    seed: int = 0
    run_dir: str = "runs/run"
    log_every: int = 20
    ckpt_every: int = 1000  # steps; fine-tuning also saves every epoch
    keep_last: int = 3
    eval_every: int = 0  # steps; 0: every epoch when fine-tuning, never when pretraining
    image_every: int = 500  # steps between reconstruction images (pretraining)
    probe_every: int = 0  # steps between frozen-encoder probes on data.probe_train/probe_test (pretraining); 0: off
    ema: float = 0.0  # 0: off; else the EMA decay
    wa_start: int = 0  # weight averaging over epochs [wa_start, wa_end]; 0: off
    wa_end: int = 0
    # fine-tuning: also score the running mean of every epoch's predictions (the authors' cum_mAP / cum_acc), logged
    # as valid/ensemble_* and kept as ensemble/ predictions that `ssast evaluate --ensemble RUN` re-scores
    epoch_ensemble: bool = False
    loss: Literal["auto", "ce", "bce"] = "auto"  # fine-tuning loss; auto: bce when data.multilabel else ce
    max_bad_steps: int = 20  # stop after this many non-finite losses in a row
    progress: Literal["auto", "bar", "lines", "none"] = "auto"


@dataclass
class Config:
    task: Literal["pretrain", "finetune"] = "pretrain"
    model: ModelConfig = field(default_factory=ModelConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ---------------------------------------------------------------------------------------------------------------
# Conversion between dicts and dataclasses, with type checks that name the key.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (converting int -> float and str numbers from the CLI)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}", [key])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}", [key])
        return value
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value] if not isinstance(value, str) or "," not in value else value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}", [key])
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}", [key])
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}", [key])
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}", [key])
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}", [key])
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")  # pragma: no cover - internal


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (partial) mapping; unknown keys and wrong types raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}", [prefix])
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key {where}{unknown[0]}; valid keys here: {', '.join(sorted(names))}", [f"{where}{unknown[0]}"]
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def _parse_scalar(text: str) -> Any:
    """A command-line value: YAML scalar syntax (numbers, true/false, null, [lists])."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` strings to a nested dict (validated later by from_dict)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.lr=2e-4")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = _parse_scalar(text)
    return data


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, task: str | None = None
) -> Config:
    """Load a YAML file (optional), apply dotted overrides, validate. Errors name the key and where it was set.

    ``task`` (the command being run) replaces the file's task, so the checks are those of the run that follows.
    """
    data: dict = {}
    overrides = list(overrides or [])
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
    merged = apply_overrides(data, overrides)  # its errors quote the override itself
    if task is not None:
        merged["task"] = task
    drop_legacy_keys(merged)
    try:
        cfg = from_dict(Config, merged)
        # The model's input size follows the features: set once, as audio.num_mel_bins / audio.target_length.
        given = merged.get("model") if isinstance(merged.get("model"), dict) else {}
        if "input_fdim" not in given:
            cfg.model.input_fdim = cfg.audio.num_mel_bins
        if "input_tdim" not in given:
            cfg.model.input_tdim = cfg.audio.target_length
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{e}{_origin(e.keys, data, path, overrides)}", e.keys) from None
    return cfg


def drop_legacy_keys(data: dict) -> dict:
    """Remove keys that older versions wrote into run configs and checkpoints and that never had an effect
    (``audio.fbank_on``), so those files still load; returns ``data``."""
    audio = data.get("audio")
    if isinstance(audio, dict):
        audio.pop("fbank_on", None)
    return data


def _origin(keys: Sequence[str], data: dict, path: str | Path | None, overrides: list[str]) -> str:
    """Where the values behind an error came from: " (in FILE)", " (from the command-line override K=V)" or both."""
    set_by: dict[str, str] = {}
    for item in overrides:
        set_by[item.split("=", 1)[0].strip()] = item  # a later override of the same key wins

    def override_of(key: str) -> str | None:
        hits = [item for k, item in set_by.items() if key == k or key.startswith(k + ".") or k.startswith(key + ".")]
        return hits[-1] if hits else None

    def in_file(key: str) -> bool:
        node: Any = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    items: list[str] = []
    from_file = False
    for key in (k.split("[", 1)[0] for k in keys):  # optim.betas[0] was set as optim.betas
        item = override_of(key)
        if item is not None:
            items += [item] if item not in items else []
        elif path is not None and in_file(key):
            from_file = True
    if not items and not from_file:  # no key named, or only defaults involved: every source may have contributed
        from_file = path is not None
        if overrides and from_file:
            return f" (in {path}, with command-line overrides)"
        return f" (in {path})" if from_file else ""
    said = f"the command-line override{'s' if len(items) > 1 else ''} {', '.join(items)}"
    if from_file:
        return f" (in {path}, with {said})" if items else f" (in {path})"
    return f" (from {said})"


def _check_mask_fits(m: ModelConfig) -> None:
    """model.mask_patch against the token grid: the model needs 1 <= masked < tokens (one token left to see)."""
    from ssast.models.masking import num_masked  # lazy: the model code is only needed to check pretraining
    from ssast.models.tokenizer import grid_shape

    keys = ["model.mask_patch", "model.input_fdim", "model.input_tdim", "model.fshape", "model.tshape"]
    f, t = grid_shape(m.input_fdim, m.input_tdim, m.fshape, m.tshape, m.fstride, m.tstride)
    try:
        count = num_masked(m.mask_patch, f * t)
    except ValueError as e:  # more tokens than the grid has, no token at all, or not a whole count
        raise ConfigError(str(e), keys) from None
    if count == f * t:
        raise ConfigError(
            f"model.mask_patch={m.mask_patch:g} masks all {f * t} tokens of the {f}x{t} grid, so the model sees "
            f"none of the input; leave at least one visible (at most {f * t - 1}, or a fraction below 1)", keys
        )


def _minimums(cfg: Config) -> list[tuple[str, float, float]]:
    """(key, value, smallest allowed value) of the settings that only make sense from some number up."""
    o, t = cfg.optim, cfg.train
    checks = [
        ("data.batch_size", cfg.data.batch_size, 1),
        ("optim.accum_steps", o.accum_steps, 1),
        ("optim.warmup_steps", o.warmup_steps, 0),
        ("optim.head_only_steps", o.head_only_steps, 0),
        ("optim.weight_decay", o.weight_decay, 0),
        ("optim.grad_clip", o.grad_clip, 0),
        ("train.log_every", t.log_every, 1),
        ("train.ckpt_every", t.ckpt_every, 1),
        ("train.keep_last", t.keep_last, 1),  # the newest checkpoint is always kept (resume needs it)
        ("train.max_bad_steps", t.max_bad_steps, 1),
        ("train.eval_every", t.eval_every, 0),
        ("train.image_every", t.image_every, 0),
        ("train.probe_every", t.probe_every, 0),
        ("data.holdout", cfg.data.holdout, 0),
        ("data.train_clips", cfg.data.train_clips, 0),
        ("model.projector_dim", cfg.model.projector_dim, 0),
        ("model.fstride", cfg.model.fstride, 1),
        ("model.tstride", cfg.model.tstride, 1),
        ("data.num_workers", cfg.data.num_workers, -1),  # -1: sized from the machine
    ]
    if o.schedule == "step":
        checks.append(("optim.step_every", o.step_every, 1))
    if o.schedule == "plateau":
        checks += [("optim.plateau_every", o.plateau_every, 1), ("optim.plateau_patience", o.plateau_patience, 0),
                   ("optim.plateau_threshold", o.plateau_threshold, 0)]
    return checks


def _check_probe(cfg: Config) -> None:
    """Probing while pretraining: needs its two labelled lists and their label CSV, and must run at least once."""
    every, d = cfg.train.probe_every, cfg.data
    if every <= 0:
        return
    if cfg.task != "pretrain":
        raise ConfigError("train.probe_every: probing while training is for pretraining; probe a fine-tuned "
                          "checkpoint with `ssast probe CKPT -c CONFIG`", ["train.probe_every"])
    for key, value in (("data.probe_train", d.probe_train), ("data.probe_test", d.probe_test),
                       ("data.label_csv", d.label_csv)):
        if not value:
            raise ConfigError(f"train.probe_every={every} needs {key}: give data.probe_train and data.probe_test "
                              f"(small labelled JSON lists) and data.label_csv (their labels)",
                              ["train.probe_every", key])
    if cfg.train.steps and every > cfg.train.steps:
        raise ConfigError(f"train.probe_every={every} is more than train.steps={cfg.train.steps}: the probe would "
                          f"never run; probe more often or set train.probe_every=0",
                          ["train.probe_every", "train.steps"])


def validate(cfg: Config) -> None:
    """Cross-field checks and impossible values: the message names the keys involved and the value given."""
    m = cfg.model
    if m.size == "custom" and not (m.dim and m.depth and m.heads):
        raise ConfigError("model.size=custom needs model.dim, model.depth and model.heads",
                          ["model.size", "model.dim", "model.depth", "model.heads"])
    r = m
    if r.dim % r.heads:
        raise ConfigError(f"model.dim={r.dim} is not divisible by model.heads={r.heads}",
                          ["model.size", "model.dim", "model.heads"])
    if m.num_prefix not in (1, 2):
        raise ConfigError(f"model.num_prefix must be 1 or 2, got {m.num_prefix}", ["model.num_prefix"])
    if not 0 < m.norm_eps < 1:
        raise ConfigError(f"model.norm_eps must be a small positive number (default 1e-6), got {m.norm_eps}",
                          ["model.norm_eps"])
    if m.fshape > m.input_fdim or m.tshape > m.input_tdim:
        raise ConfigError(
            f"model.fshape/tshape ({m.fshape}x{m.tshape}) larger than the input "
            f"({m.input_fdim}x{m.input_tdim})",
            ["model.fshape", "model.tshape", "model.input_fdim", "model.input_tdim"],
        )
    if m.input_fdim != cfg.audio.num_mel_bins:
        raise ConfigError(
            f"model.input_fdim={m.input_fdim} differs from audio.num_mel_bins={cfg.audio.num_mel_bins}; set "
            f"audio.num_mel_bins alone (the model's input height follows it)",
            ["model.input_fdim", "audio.num_mel_bins"],
        )
    if m.input_tdim != cfg.audio.target_length:
        raise ConfigError(
            f"model.input_tdim={m.input_tdim} differs from audio.target_length={cfg.audio.target_length}; set "
            f"audio.target_length alone (the model's input length follows it)",
            ["model.input_tdim", "audio.target_length"],
        )
    if cfg.task == "pretrain":
        if r.fstride != r.fshape or r.tstride != r.tshape:
            raise ConfigError(
                "model.fstride/tstride: pretraining needs non-overlapping patches (stride = patch shape)",
                ["model.fstride", "model.tstride", "model.fshape", "model.tshape"],
            )
        if m.is_frame and m.mask_mode == "cluster":
            raise ConfigError("model.mask_mode=cluster: frame models mask at random (clusters hurt them)",
                              ["model.mask_mode", "model.fshape", "model.tshape"])
        if m.mask_patch <= 0:
            raise ConfigError(f"model.mask_patch must be positive (a count, or a fraction below 1), got {m.mask_patch}",
                              ["model.mask_patch"])
        _check_mask_fits(r)
        if m.nce_weight <= 0 and m.mse_weight <= 0:
            raise ConfigError("model.nce_weight and model.mse_weight are both 0: nothing to train",
                              ["model.nce_weight", "model.mse_weight"])
        if m.two_pass and m.pretrain_encoder == "visible":
            raise ConfigError("model.two_pass applies to pretrain_encoder=all only",
                              ["model.two_pass", "model.pretrain_encoder"])
        for key in ("cluster_sizes", "block_sizes"):
            if not getattr(m, key) or any(c < 1 for c in getattr(m, key)):
                raise ConfigError(f"model.{key} must be a non-empty list of positive sizes", [f"model.{key}"])
        if m.masks_per_clip < 1:
            raise ConfigError(f"model.masks_per_clip must be at least 1, got {m.masks_per_clip}",
                              ["model.masks_per_clip"])
        if m.mask_sampler == "authors" and not m.is_frame and m.mask_mode in ("auto", "cluster"):  # where it samples
            from ssast.models.masking import num_masked
            from ssast.models.tokenizer import grid_shape

            f, t = grid_shape(r.input_fdim, r.input_tdim, r.fshape, r.tshape, r.fstride, r.tstride)
            if num_masked(r.mask_patch, f * t) > f * t - 2:
                raise ConfigError(f"model.mask_sampler=authors masks at most {f * t - 2} of {f * t} tokens (token 0 "
                                  "is never masked and their loop stops above the count)",
                                  ["model.mask_sampler", "model.mask_patch"])
    _check_probe(cfg)
    if cfg.data.train_weights and len(cfg.data.train_weights) != len(cfg.data.train):
        raise ConfigError(
            f"data.train_weights has {len(cfg.data.train_weights)} entries for {len(cfg.data.train)} sources",
            ["data.train_weights", "data.train"],
        )
    for key, value, low in _minimums(cfg):
        if not value >= low:  # also catches NaN
            raise ConfigError(f"{key} must be at least {low}, got {value}", [key])
    if not (math.isfinite(cfg.audio.norm_std) and cfg.audio.norm_std > 0):  # features are divided by it
        raise ConfigError(f"audio.norm_std must be a positive number (the fbank's standard deviation), got "
                          f"{cfg.audio.norm_std}", ["audio.norm_std"])
    if not (math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0):
        raise ConfigError(f"optim.lr must be a positive number, got {cfg.optim.lr}", ["optim.lr"])
    if len(cfg.optim.betas) != 2:
        raise ConfigError("optim.betas needs two values", ["optim.betas"])
    if cfg.task == "pretrain" and cfg.optim.head_only_steps:
        raise ConfigError("optim.head_only_steps freezes the encoder under a classification head: fine-tuning only",
                          ["optim.head_only_steps", "task"])
    if cfg.task == "finetune" and cfg.train.epoch_ensemble and not (cfg.data.valid or cfg.data.test):
        raise ConfigError("train.epoch_ensemble scores every epoch's predictions: give data.valid or data.test",
                          ["train.epoch_ensemble", "data.valid", "data.test"])
    if cfg.train.wa_start and cfg.train.wa_end < cfg.train.wa_start:
        raise ConfigError("train.wa_end must not be before train.wa_start", ["train.wa_start", "train.wa_end"])
    a = cfg.augment
    if cfg.data.holdout >= 0.5:
        raise ConfigError(f"data.holdout is the share of training clips held out for validation; {cfg.data.holdout} "
                          "leaves too little to train on (the default is 0.01)", ["data.holdout"])
    if not 0 <= a.mixup <= 1:
        raise ConfigError(f"augment.mixup is a probability in [0, 1], got {a.mixup}", ["augment.mixup"])
    if a.mixup > 0 and not (math.isfinite(a.mixup_alpha) and a.mixup_alpha > 0):
        raise ConfigError(
            f"augment.mixup_alpha must be positive when augment.mixup > 0 (lambda ~ Beta(alpha, alpha)), "
            f"got {a.mixup_alpha}", ["augment.mixup_alpha", "augment.mixup"]
        )
    if a.mixup > 0 and a.mixup_partner == "dataset" and a.mixup_domain == "fbank":
        # the dataset partner is mixed into the waveform by the loader; there is no fbank path for it
        raise ConfigError("augment.mixup_partner=dataset mixes waveforms: it needs augment.mixup_domain=wave "
                          "(or mixup_partner=batch for fbank mixing)",
                          ["augment.mixup_partner", "augment.mixup_domain"])


def check_length(cfg: Config) -> None:
    """A training run's length: pretraining counts steps, fine-tuning epochs (checked for runs, --dry-run too;
    evaluation and probing load the same config without a length)."""
    key = "train.steps" if cfg.task == "pretrain" else "train.epochs"
    if getattr(cfg.train, key.split(".")[1]) <= 0:
        raise ConfigError(f"{key}: {cfg.task} needs a positive number of {key.split('.')[1]}, got "
                          f"{getattr(cfg.train, key.split('.')[1])}", [key])


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
