"""Run logging: TensorBoard scalars/images/hparams, a progress bar on terminals, plain lines elsewhere, a log file."""
from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np


class Progress:
    """A one-line bar (terminal) or periodic plain lines (CI, files) with loss, throughput and ETA."""

    def __init__(self, total: int, mode: str = "auto", stream=None, log_file: Path | None = None):
        self.total = max(1, total)
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode = mode
        self.start = time.time()
        self.log_file = open(log_file, "a") if log_file else None

    def _eta(self, step: int) -> str:
        elapsed = time.time() - self.start
        left = elapsed / max(step, 1) * (self.total - step)
        return time.strftime("%H:%M:%S", time.gmtime(left))

    def update(self, step: int, values: dict[str, float]) -> None:
        text = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        line = f"step {step}/{self.total} {text} eta {self._eta(step)}"
        if self.log_file:
            self.log_file.write(line + "\n")
            self.log_file.flush()
        if self.mode == "bar":
            width = 24
            done = int(width * step / self.total)
            self.stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {line}\033[K")
            self.stream.flush()
        elif self.mode == "lines":
            print(line, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.log_file:
            self.log_file.write(text + "\n")
            self.log_file.flush()
        if self.mode == "none":
            return
        if self.mode == "bar":
            self.stream.write("\r\033[K")
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.mode == "bar":
            self.stream.write("\n")
        if self.log_file:
            self.log_file.close()


class Board:
    """TensorBoard writer (rank 0 only); a no-op object elsewhere."""

    def __init__(self, log_dir: Path | None):
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.writer:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def image(self, tag: str, rgb_hwc: np.ndarray, step: int) -> None:
        if self.writer:
            self.writer.add_image(tag, rgb_hwc, step, dataformats="HWC")

    def hparams(self, hparams: dict, metrics: dict) -> None:
        if self.writer:
            clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
            self.writer.add_hparams(clean, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")

    def close(self) -> None:
        if self.writer:
            self.writer.flush()
            self.writer.close()


def reconstruction_figure(fbank: np.ndarray, mask_map: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Three stacked panels (input, mask, generative reconstruction) of one clip as an RGB array for TensorBoard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 6), sharex=True)
    for ax, img, title in zip(axes, (fbank, mask_map, recon), ("input", "mask", "reconstruction (masked patches)")):
        ax.imshow(img.T, origin="lower", aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("mel bin")
    axes[-1].set_xlabel("frame")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    buf.seek(0)
    return plt.imread(buf)[..., :3]
