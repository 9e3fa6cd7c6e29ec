"""Where and how a run executes: device, precision (bf16 autocast), torchrun/DDP process group, seeding."""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ssast.config import ConfigError


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the kernel after every step.

    By default glibc serves tensors above 128 KiB with fresh mmap pages and unmaps them on free, so every training
    step page-faults its weight casts and gradients in again: measured on this project's CI CPU, a Base bf16
    pretraining step spent ~20% of its time there (1413 -> 1150 ms; benchmarks/README.md). Linux/glibc only;
    a no-op elsewhere or with SSAST_NO_ALLOC_TUNING=1 in the environment. Returns whether it applied.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("SSAST_NO_ALLOC_TUNING"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    ok = libc.mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's maximum: tensors up to 32 MiB come from the heap
    ok &= libc.mallopt(m_trim_threshold, 2**31 - 1)  # never give the heap's top back
    ok &= libc.mallopt(m_top_pad, 64 * 2**20)
    return bool(ok)


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    note: str = ""  # a message for the log (e.g. why bf16 was not used)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        """bf16 autocast on CPU or GPU; master weights and optimiser state stay fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @property
    def precision(self) -> str:
        return "bf16" if self.dtype is torch.bfloat16 else "fp32"


# On CPU, bf16 autocast pays off only once the matrices are large enough to hide the casts: measured on this
# project's CI CPU (benchmarks/README.md), a 96-wide demo model steps 1.6x slower in bf16, Small and Base ~2x faster.
CPU_BF16_MIN_DIM = 256


def resolve_precision(precision: str, device: torch.device, dim: int = 768) -> tuple[torch.dtype | None, str]:
    """Map the config's precision to an autocast dtype.

    auto: bf16 on GPUs that support it; on CPUs with native bf16 (AVX512-BF16/AMX) for models at least
    CPU_BF16_MIN_DIM wide; fp32 otherwise.
    """
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        ok = cpu_supports_bf16()
    else:
        ok = False
    if precision == "fp32":
        return None, ""
    if precision == "auto" and device.type == "cpu" and dim < CPU_BF16_MIN_DIM:
        return None, ""
    if ok:
        return torch.bfloat16, ""
    if precision == "bf16":
        return None, f"train.precision=bf16: this {device.type.upper()} has no native bf16 support; running in fp32"
    return None, ""


def init_process_group(backend: str, rank: int, world_size: int) -> None:
    """torchrun's process group, kept apart from those of earlier attempts after an elastic restart.

    The elastic agent lends its workers its own store, which outlives a restart: the restarted workers could read the
    addresses the killed ones published there and fail to connect (seen with gloo and torch 2.11: "connectFullMesh
    failed ... Connection refused" to the dead rank's port). Their keys go under the restart count instead."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend=backend)
        return
    from datetime import timedelta

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
                          timeout=timedelta(minutes=30))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f"ssast/attempt-{attempt}", store), rank=rank,
                            world_size=world_size)


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """The device ``train.device`` names, checked against what this machine has (ConfigError otherwise); changes
    nothing, so --dry-run refuses what the run would."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"train.device={device}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device={device}: no CUDA device is visible on this machine; use train.device=cpu or auto"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device={device}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); use one of them or train.device=auto"
            )
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def setup_runtime(device: str = "auto", precision: str = "auto", dim: int = 768) -> Runtime:
    """Initialise torchrun's process group if present and pick the device and precision."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if dev.type == "cpu":
        tune_cpu_allocator()
    if world_size > 1 and not dist.is_initialized():
        init_process_group("nccl" if dev.type == "cuda" else "gloo", rank, world_size)
    dtype, note = resolve_precision(precision, dev, dim)
    return Runtime(dev, dtype, rank, world_size, local_rank, note)


def rss_peak_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is in KiB on Linux, bytes on macOS)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA max allocated on a GPU, peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return rss_peak_mb()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG the training step may touch, for exact resume."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_to_main(rt: Runtime, obj) -> list | None:
    """``obj`` of every rank, in rank order, on rank 0 (None elsewhere); every rank must call it. One process: [obj]."""
    if not rt.distributed:
        return [obj]
    out = [None] * rt.world_size if rt.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def leave_distributed(completed: bool) -> None:
    """Tear torchrun's process group down before the interpreter exits. Left to the exit-time destructors, its
    background threads can abort a rank (SIGABRT, "terminate called without an active exception") while a peer is
    still at work, and torchrun then fails the whole run. After a completed command every rank first waits for the
    others, so that none leaves while rank 0 still writes; after a failure nobody waits."""
    if dist.is_available() and dist.is_initialized():
        if completed:
            dist.barrier()
        dist.destroy_process_group()
