"""The HEAR API (hear-eval-kit's common API) for any ssast checkpoint: ``load_model``, ``get_scene_embeddings``,
``get_timestamp_embeddings``.

The specification is https://hearbenchmark.com/hear-api.html; its checks are hear-validator's. ``load_model`` takes one
of our checkpoint folders, pretraining or fine-tuned, and returns a :class:`HearModel` (a ``torch.nn.Module`` with
``sample_rate``, ``scene_embedding_size`` and ``timestamp_embedding_size``). Features are the checkpoint's own (Kaldi
fbank, its normalisation, its input length ``audio.target_length`` as the model's window).

Design choices:

- **Scene embedding**: the clip embedding ``ssast embed`` gives (the model's pooling: the mean of the patch/frame token
  outputs, or of the prefix tokens for ``cls`` models). A clip shorter than the window is zero-padded in the fbank
  domain, as in training and inference, so for such a clip the two agree. A longer clip is cut into consecutive,
  non-overlapping windows (the last one padded) and their embeddings are averaged, weighted by the real frames each
  holds, so a tail window of mostly padding counts for little.
- **Timestamp embeddings**: one per time position of the model's tokens, the mean of the token outputs over the
  frequency rows of a time column (a frame model has one row). Each timestamp is the centre of the frames its token
  covers. A token column advances by the model's time stride, which is 100-160 ms for patch models (stride 10 or 16
  frames); HEAR suggests a hop of at most 50 ms. Rather than repeat or interpolate coarse tokens, the window is run
  again at sub-stride offsets (``phases``: the audio shifted by ``hop`` frames each time) and the columns interleaved,
  so every embedding is a real token output centred on its own timestamp: hop = the largest divisor of the time stride
  that is at most 50 ms (patch stride 16: 40 ms, 4 passes; stride 10: 50 ms, 2 passes; frame models: their stride,
  10 or 20 ms, 1 pass). ``max_hop_ms`` trades this resolution for speed. Longer clips slide the window by its token
  span and stitch. The fbank is padded by a few frames before the clip (the same zero padding) so the first token is
  centred within one frame of 0 ms, and the last timestamp is the last token centre not beyond the clip's end.
- **Layers**: by default the model's own token outputs (the final normalised block output, or the learned weighted sum
  of blocks of a ``model.layer_weights`` checkpoint). ``layers=[i, j, ...]`` (block numbers from 1, before the final
  norm) or ``"all"`` concatenates those blocks' outputs instead, so the embeddings are ``len(layers) * dim`` wide;
  HEAR puts no limit on the size.

Embeddings are computed in eval mode without gradients, in float32, windows sent through the encoder ``batch_size`` at
a time; inputs are used on the model's device and the outputs returned on the input's device.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ssast.audio.fbank import kaldi_fbank, window_hop
from ssast.audio.features import normalize
from ssast.audio.io import AudioError
from ssast.config import AudioConfig, ConfigError
from ssast.models.weightfiles import CheckpointError

# HEAR API, Model.sample_rate: "HEAR benchmark datasets are available at the following sample rates".
HEAR_SAMPLE_RATES = (16000, 22050, 32000, 44100, 48000)
# HEAR API, get_timestamp_embeddings: "You are free to select the time interval between adjacent embeddings
# (hop-size). We suggest that it is <= 50ms".
MAX_HOP_MS = 50.0

Layers = Union[None, str, Sequence[int]]

__all__ = ["HearModel", "load_model", "get_scene_embeddings", "get_timestamp_embeddings", "MAX_HOP_MS"]


def _block_indices(layers: Layers, depth: int) -> Optional[list[int]]:
    """0-based block indices from the ``layers`` option (block numbers from 1, "all"), or None for the final output."""
    if layers is None or layers == "final":
        return None
    if layers == "all":
        return list(range(depth))
    if isinstance(layers, str) or not layers or not all(
        isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= depth for i in layers
    ):
        raise ConfigError(
            f"ssast.hear layers={layers!r}: give \"final\", \"all\" or a list of block numbers from 1 to {depth}"
        )
    return [i - 1 for i in layers]


def hop_frames_for(tstride: int, frame_ms: float, max_hop_ms: float) -> int:
    """The timestamp hop in frames: the largest divisor of the token time stride that is at most ``max_hop_ms``
    (1 frame when even that is longer), so phases of ``hop`` frames tile the stride exactly."""
    fits = [d for d in range(1, tstride + 1) if tstride % d == 0 and d * frame_ms <= max_hop_ms]
    return max(fits, default=1)


class HearModel(nn.Module):
    """A checkpoint's encoder with its feature settings and the HEAR attributes; see the module docstring."""

    def __init__(
        self,
        classifier: nn.Module,
        audio: AudioConfig,
        *,
        layers: Layers = None,
        max_hop_ms: float = MAX_HOP_MS,
        batch_size: int = 16,
    ) -> None:
        super().__init__()
        if audio.sample_rate not in HEAR_SAMPLE_RATES:
            raise CheckpointError(
                f"the checkpoint's audio.sample_rate {audio.sample_rate} is not one HEAR provides {HEAR_SAMPLE_RATES}"
            )
        if not max_hop_ms > 0:
            raise ConfigError(f"ssast.hear max_hop_ms={max_hop_ms!r}: must be a positive number of milliseconds")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"ssast.hear batch_size={batch_size!r}: must be a positive number of windows")
        self.classifier = classifier.eval()
        self.audio = audio
        encoder = classifier.encoder
        self.blocks = _block_indices(layers, encoder.depth)
        self.batch_size = batch_size
        self.window = audio.target_length  # frames per encoder pass, as the model was trained
        # HEAR API, Model: "sample_rate", "scene_embedding_size: int", "timestamp_embedding_size: int".
        self.sample_rate = int(audio.sample_rate)
        width = encoder.dim * (len(self.blocks) if self.blocks else 1)
        self.scene_embedding_size = int(width)
        self.timestamp_embedding_size = int(width)

        win, hop = window_hop(audio.sample_rate)
        self.min_samples = win  # one 25 ms analysis window gives the first frame
        self.frame_ms = 1000.0 * hop / audio.sample_rate
        tshape, self.tstride = encoder.patch_embed.tshape, encoder.patch_embed.tstride
        self.hop_frames = hop_frames_for(self.tstride, self.frame_ms, max_hop_ms)
        self.phases = self.tstride // self.hop_frames
        self.hop_ms = self.hop_frames * self.frame_ms
        # A token's centre, in ms from the start of its first frame: the mean of its frames' centres.
        token_centre = (tshape - 1) * self.frame_ms / 2 + 500.0 * win / audio.sample_rate
        # Padding frames before the clip that bring the first token's centre into [0, one frame).
        self.lead = int(token_centre // self.frame_ms)
        self.first_ms = token_centre - self.lead * self.frame_ms
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.classifier.encoder.pos_embed.device

    # ----------------------------------------------------------------------------------------------------------
    # Features and encoder passes

    def _waves(self, audio: Tensor) -> Tensor:
        """The (n_sounds, n_samples) input, checked, as float32 on the model's device with each clip's DC removed."""
        if not isinstance(audio, Tensor) or audio.dim() != 2 or not audio.is_floating_point():
            got = tuple(audio.shape) if isinstance(audio, Tensor) else type(audio).__name__
            raise AudioError(f"ssast.hear: audio must be a float tensor of shape (n_sounds, n_samples), got {got}")
        if audio.shape[1] < self.min_samples:
            raise AudioError(
                f"ssast.hear: {audio.shape[1]} samples is shorter than one 25 ms analysis window "
                f"({self.min_samples} at {self.sample_rate} Hz)", kind="too_short"
            )
        bad = (~torch.isfinite(audio).all(dim=1)).nonzero().flatten().tolist()
        if bad:  # NaN in gives NaN out for the whole clip: say which, as load_audio does for files
            raise AudioError(f"ssast.hear: sound(s) {bad[:5]}{' ...' if len(bad) > 5 else ''} of {audio.shape[0]} "
                             f"hold NaN or infinite samples; clean or drop them", kind="nonfinite")
        wave = audio.to(self.device, torch.float32)
        # as load_audio does for files (the fbank removes each frame's DC too, so this changes only rounding)
        return wave - wave.double().mean(dim=1, keepdim=True).float()

    def _fbank(self, audio: Tensor) -> Tensor:
        """Raw (n_sounds, frames, mel) log-mel filter bank of the whole clips."""
        a = self.audio
        return kaldi_fbank(self._waves(audio), num_mel_bins=a.num_mel_bins, sample_rate=a.sample_rate)

    def _placed(self, fbank: Tensor, lead: int, length: int) -> Tensor:
        """The normalised fbank of ``length`` frames with the clip starting at frame ``lead``, zero-padded (in the raw
        fbank domain, as the feature extractor pads short clips) before and after it."""
        out = fbank.new_zeros(fbank.shape[0], length, fbank.shape[2])
        frames = min(fbank.shape[1], length - lead)
        out[:, lead : lead + frames] = fbank[:, :frames]
        return normalize(out, self.audio.norm_mean, self.audio.norm_std)

    def _tokens(self, x: Tensor) -> Tensor:
        """(n, W, F) -> (n, P + N, width) token outputs: the model's features, or the chosen blocks concatenated."""
        if self.blocks is None:
            return self.classifier.forward_features(x)
        _, hidden = self.classifier.encoder.forward_intermediates(x)
        return torch.cat([hidden[i] for i in self.blocks], dim=-1)

    def _time_columns(self, x: Tensor) -> Tensor:
        """(n, W, F) -> (n, t_cols, width): the token outputs averaged over the frequency rows of each time column."""
        f_rows, t_cols = self.classifier.encoder.grid_for(x)
        tokens = self.classifier.patch_tokens(self._tokens(x))  # frequency-major: index = row * t_cols + col
        return tokens.unflatten(1, (f_rows, t_cols)).mean(dim=1)

    def _scene(self, x: Tensor) -> Tensor:
        """(n, W, F) -> (n, width): the model's pooled clip embedding of each window."""
        return self.classifier.pool(self._tokens(x))

    def _windows(self, feats: Tensor, starts: Tensor, fn: Callable[[Tensor], Tensor]) -> Iterator[tuple]:
        """``fn`` over every (clip, window start) pair, ``batch_size`` windows at a time: yields (clip index,
        window index, fn output) per chunk, so memory stays bounded for any number and length of clips."""
        n_clips, n_win = feats.shape[0], starts.shape[0]
        clip = torch.arange(n_clips, device=feats.device).repeat_interleave(n_win)
        win = torch.arange(n_win, device=feats.device).repeat(n_clips)
        offsets = torch.arange(self.window, device=feats.device)
        for i in range(0, clip.shape[0], self.batch_size):
            c, w = clip[i : i + self.batch_size], win[i : i + self.batch_size]
            x = feats[c[:, None], starts[w][:, None] + offsets]  # (n, W, F)
            yield c, w, fn(x).float()

    # ----------------------------------------------------------------------------------------------------------
    # The two embeddings

    @torch.no_grad()
    def scene_embeddings(self, audio: Tensor) -> Tensor:
        """(n_sounds, n_samples) -> (n_sounds, scene_embedding_size) float32 on the input's device."""
        self.eval()
        fbank = self._fbank(audio)
        frames, W = fbank.shape[1], self.window
        n_win = math.ceil(frames / W)
        feats = self._placed(fbank, 0, n_win * W)
        starts = torch.arange(n_win, device=feats.device) * W
        weights = (frames - starts).clamp(max=W).float()  # real frames in each window
        out = torch.zeros(fbank.shape[0], self.scene_embedding_size, device=feats.device)
        for c, w, pooled in self._windows(feats, starts, self._scene):
            out.index_add_(0, c, pooled * weights[w, None])
        return (out / frames).to(audio.device)

    def timestamps_ms(self, num_samples: int) -> Tensor:
        """(n_timestamps,) float64 token centres in ms: evenly spaced by ``hop_ms`` from ``first_ms`` up to the
        clip's end."""
        # HEAR API: "embeddings at regular intervals centered at timestamps ... in milliseconds"; hear-validator
        # rejects a last timestamp beyond the audio or more than two hops before its end.
        duration_ms = 1000.0 * num_samples / self.sample_rate
        count = int((duration_ms - self.first_ms) // self.hop_ms) + 1
        return self.first_ms + self.hop_ms * torch.arange(count, dtype=torch.float64)

    @torch.no_grad()
    def timestamp_embeddings(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """(n_sounds, n_samples) -> ((n_sounds, n_timestamps, timestamp_embedding_size), (n_sounds, n_timestamps) ms),
        both float32 on the input's device."""
        self.eval()
        fbank = self._fbank(audio)
        n_clips, F = fbank.shape[0], fbank.shape[2]
        times = self.timestamps_ms(audio.shape[1])
        count = times.shape[0]
        # Timestamp k is the output of the token starting at frame k * hop (counted from the lead padding): phase
        # k % phases, token column k // phases of that phase's stitched windows. A window covers `cols` columns, so
        # consecutive windows of one phase start `cols * tstride` frames apart.
        m, h, T = self.phases, self.hop_frames, self.tstride
        cols = self.classifier.encoder.patch_embed.grid_for(F, self.window)[1]
        starts, keys = [], []
        for p in range(min(m, count)):
            per_phase = math.ceil((count - p) / m)
            for j in range(math.ceil(per_phase / cols)):
                starts.append(p * h + j * cols * T)
                keys.append(p + m * (j * cols + torch.arange(cols)))
        device = fbank.device
        start_t = torch.tensor(starts, device=device)
        key_t = torch.stack(keys).to(device)  # (windows, cols): the timestamp index of every column
        length = max(max(starts) + self.window, self.lead + fbank.shape[1])
        feats = self._placed(fbank, self.lead, length)
        out = torch.zeros(n_clips, count, self.timestamp_embedding_size, device=device)
        for c, w, columns in self._windows(feats, start_t, self._time_columns):
            k = key_t[w]
            keep = k < count  # the last window of a phase runs past the clip's end
            out[c[:, None].expand_as(k)[keep], k[keep]] = columns[keep]
        stamps = times.to(torch.float32).to(audio.device).expand(n_clips, count)
        return out.to(audio.device), stamps


# ---------------------------------------------------------------------------------------------------------------
# The HEAR functions


def load_model(
    model_file_path: str = "",
    *,
    layers: Layers = None,
    max_hop_ms: float = MAX_HOP_MS,
    batch_size: int = 16,
) -> HearModel:
    """HEAR ``load_model``: an ssast checkpoint folder (pretraining or fine-tuned; or its model.json) as a HearModel
    on the CPU, in eval mode. The options are hear-eval-kit's ``--model-options``; see the module docstring."""
    from ssast.serve.inference import audio_config_of, load_for_inference

    if not model_file_path:
        raise CheckpointError(
            "ssast.hear.load_model: give an ssast checkpoint folder (ssast ships no default weights), "
            "e.g. --model runs/pt/last"
        )
    p = Path(model_file_path)
    if p.is_file() and p.suffix in (".pth", ".pt"):
        raise CheckpointError(f"{p}: a PyTorch file, not an ssast checkpoint; convert it with "
                              f"`ssast import-checkpoint {p} DIR` and pass DIR")
    model, meta = load_for_inference(str(p), torch.device("cpu"), need_head=False)
    return HearModel(model, audio_config_of(meta), layers=layers, max_hop_ms=max_hop_ms, batch_size=batch_size)


def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """HEAR ``get_scene_embeddings``: (n_sounds, n_samples) in [-1, 1] -> (n_sounds, model.scene_embedding_size)."""
    return model.scene_embeddings(audio)


def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> tuple[Tensor, Tensor]:
    """HEAR ``get_timestamp_embeddings``: (n_sounds, n_samples) in [-1, 1] -> (embeddings (n_sounds, n_timestamps,
    model.timestamp_embedding_size), timestamps (n_sounds, n_timestamps), centres in ms)."""
    return model.timestamp_embeddings(audio)
