"""X-ARES (``pip install xares``, the audio-encoder benchmark of the ICME 2025 challenge) for any ssast checkpoint.

X-ARES builds the encoder from a Python path with no arguments (``python -m xares.run ssast/evaluate/xares.py
tasks/esc50_task.py``: the path becomes the module ``ssast.evaluate.xares``, whose one name ending in ``Encoder`` is
the class), so the checkpoint folder comes from the environment variable ``SSAST_XARES_CHECKPOINT``. No other name in
this module may end in "Encoder": X-ARES refuses a module with two.

:class:`SsastXaresEncoder` has X-ARES's interface (``sampling_rate``, ``output_dim``, ``hop_size_in_ms``, and
``forward(audio, attention_mask=None)`` -> (batch, frames, output_dim)). Its frame embeddings are the HEAR timestamp
embeddings of :mod:`ssast.evaluate.hear`: the token outputs of one time column averaged over frequency, every
``hop_size_in_ms`` (40 ms for time stride 16, 50 ms for stride 10, the frame stride for frame models). Audio longer than
the model's window (its ``audio.target_length`` frames, the window ``ssast embed`` uses) goes through consecutive
windows whose columns are stitched, a window at a time in batches, so 10 minutes of audio needs the memory of its fbank
and one batch of windows.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor, nn

from ssast.evaluate.hear import Layers, load_model
from ssast.models.weightfiles import CheckpointError

CHECKPOINT_ENV = "SSAST_XARES_CHECKPOINT"


class SsastXaresEncoder(nn.Module):
    """An ssast checkpoint (pretraining or fine-tuned) as an X-ARES audio encoder; see the module docstring."""

    def __init__(self, checkpoint: Optional[str] = None, *, layers: Layers = None, batch_size: int = 16) -> None:
        super().__init__()
        path = checkpoint or os.environ.get(CHECKPOINT_ENV, "")
        if not path:
            raise CheckpointError(f"ssast X-ARES encoder: set {CHECKPOINT_ENV} to an ssast checkpoint folder "
                                  f"(X-ARES builds the encoder without arguments)")
        self.hear = load_model(path, layers=layers, batch_size=batch_size)
        self.sampling_rate = self.hear.sample_rate
        self.output_dim = self.hear.timestamp_embedding_size
        self.hop_size_in_ms = self.hear.hop_ms

    def forward(self, audio: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """(batch, samples) waveforms at ``sampling_rate`` -> (batch, frames, output_dim) float32.

        ``attention_mask`` (batch, samples), nonzero on real samples: each clip is embedded from its own samples only
        (padding changes neither its DC offset nor its frames), and the frames past its end are 0. A clip shorter
        than one 25 ms fbank frame is zero-padded to one.
        """
        if audio.dim() == 1:
            audio = audio[None]
        if attention_mask is None:
            return self.hear.timestamp_embeddings(audio)[0]
        lengths = attention_mask.ne(0).sum(dim=1).clamp(min=self.hear.min_samples).tolist()
        frames = self.hear.timestamps_ms(audio.shape[1]).shape[0]
        out = audio.new_zeros(audio.shape[0], frames, self.output_dim, dtype=torch.float32)
        for n in sorted(set(lengths)):  # clips of one length share a pass
            rows = [i for i, m in enumerate(lengths) if m == n]
            clip = audio[rows, :n]
            if clip.shape[1] < n:  # a clip shorter than one fbank frame, padded up to it
                clip = nn.functional.pad(clip, (0, n - clip.shape[1]))
            emb = self.hear.timestamp_embeddings(clip)[0]
            out[rows, : emb.shape[1]] = emb
        return out
