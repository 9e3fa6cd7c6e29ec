"""The parts of benchmarks/gpu_check.sh that run Python: each check writes one JSON part; ``assemble`` joins them.

    python benchmarks/gpu_check.py device|fbank|bf16-step|cuda-tests|ddp-step PART.json
    python benchmarks/gpu_check.py assemble PARTS_DIR OUT.json

A part is ``{"status": "ok" | "failed" | "skipped", ...}``; the shell script writes a failed part itself when a check
times out or crashes before writing one, so the final file always has every section (see SECTIONS).
"""
from __future__ import annotations

import ast
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

FORMAT = "ssast-gpu-check"
VERSION = 1
# every section of the final file, in the order the script runs them
SECTIONS = ("device", "cuda_tests", "fbank", "bf16_step", "rows", "rows_k", "rows_compiled", "ddp_step")
STATUSES = ("ok", "failed", "skipped")
FBANK_TOLERANCE = 1e-3  # the same bound as tests/test_fbank.py's GPU test (TF32 and reduction order)


def write_part(path: str, part: dict) -> None:
    from ssast.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(part, indent=2))


def check_device() -> dict:
    """The GPUs, the driver, and the versions the numbers were measured with."""
    import torch

    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=60)
    gpus = [dict(zip(("name", "driver", "memory"), (c.strip() for c in line.split(","))))
            for line in smi.stdout.splitlines() if line.strip()]
    return {"status": "ok", "count": torch.cuda.device_count(), "gpus": gpus,
            "torch_names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "capability": list(torch.cuda.get_device_capability(0)), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "bf16": torch.cuda.is_bf16_supported()}


def cuda_test_ids(tests_dir: Path = ROOT / "tests") -> list[str]:
    """The tests that run only where CUDA is (a skipif on ``not torch.cuda.is_available()``), as pytest node ids."""
    ids = []
    for path in sorted(tests_dir.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and any(
                    "skipif" in ast.unparse(d) and "not torch.cuda.is_available()" in ast.unparse(d)
                    for d in node.decorator_list):
                ids.append(f"tests/{path.name}::{node.name}")
    return ids


def check_cuda_tests() -> dict:
    import tempfile

    ids = cuda_test_ids()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # nothing written into the checkout
        report = Path(tmp) / "junit.xml"
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                            f"--basetemp={tmp}/pytest", *ids], cwd=ROOT, capture_output=True, text=True)
        counts = junit_counts(report.read_text()) if report.is_file() else {}
    ok = p.returncode == 0 and counts.get("skipped", 0) == 0
    return {"status": "ok" if ok else "failed", "tests": ids, **counts, "seconds": time.perf_counter() - start,
            "tail": "" if ok else p.stdout[-3000:]}


def junit_counts(xml: str) -> dict:
    """passed / failed / skipped of a pytest junit report."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    suites = [root] if root.tag == "testsuite" else list(root)
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check_fbank(device: str = "cuda", clips: int = 32) -> dict:
    """Our batched fbank on the GPU against the same on the CPU and against torchaudio, and its speed on each.
    (``device`` and ``clips`` let the tests run the same code on a CPU.)"""
    import torch
    import torchaudio.compliance.kaldi as K

    from ssast.audio.fbank import kaldi_fbank

    g = torch.Generator().manual_seed(0)
    wave = 0.1 * torch.randn(clips, 160000, generator=g)  # clips of 10 s
    cpu = kaldi_fbank(wave)
    gpu = kaldi_fbank(wave.to(device))
    ref = K.fbank(wave[:1], htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
                  num_mel_bins=128, dither=0.0, frame_shift=10)
    speed = {}
    for name, w in (("cpu", wave), ("gpu", wave.to(device))):
        kaldi_fbank(w)
        _sync(device)
        start = time.perf_counter()
        for _ in range(3):
            kaldi_fbank(w)
        _sync(device)
        speed[name] = 3 * w.shape[0] / (time.perf_counter() - start)
    diff = (gpu.cpu() - cpu).abs().max().item()
    diff_ref = (gpu[0].cpu() - ref).abs().max().item()
    ok = diff <= FBANK_TOLERANCE and diff_ref <= FBANK_TOLERANCE
    return {"status": "ok" if ok else "failed", "max_abs_diff_gpu_cpu": diff, "max_abs_diff_gpu_torchaudio": diff_ref,
            "tolerance": FBANK_TOLERANCE, "clips_per_s": speed, "shape": list(gpu.shape)}


def check_bf16_step(steps: int = 5, device: str = "cuda", size: str = "base", batch: int = 8, tdim: int = 1024) -> dict:
    """A Base pretraining model, bf16 autocast, a few Adam steps on random 10 s fbanks: the loss must stay finite."""
    import torch

    from ssast.config import ModelConfig
    from ssast.models.pretrain import build_pretrain_model

    torch.manual_seed(0)
    # 400 of 512 tokens at 1024 frames, as the released "-400" models; the same share at other lengths
    model = build_pretrain_model(ModelConfig(size=size, mask_patch=400 / 512, input_tdim=tdim)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(batch, tdim, 128, device=device)
    losses = []
    for _ in range(steps):
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            out = model(x)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    finite = all(v == v and abs(v) != float("inf") for v in losses)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {"status": "ok" if finite else "failed", "losses": losses, "batch": batch, "size": size, "peak_mb": peak}


def check_ddp_step(timeout: float = 150) -> dict:
    """Two processes (NCCL), a few steps of a tiny pretraining run on synthetic audio: DDP works on these GPUs."""
    import tempfile

    import torch

    if torch.cuda.device_count() < 2:
        return {"status": "skipped", "reason": f"{torch.cuda.device_count()} GPU: DDP needs 2"}
    from ssast.demo.run import make_corpus

    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_corpus(Path(tmp) / "corpus", pool=16, train_per_class=2, test_per_class=1, seconds=1.3)
        args = ["pretrain", "model.size=tiny", "model.input_tdim=128", "audio.target_length=128", "model.mask_patch=0.5",
                f"data.train=[{corpus.pool}]", "data.batch_size=4", "data.num_workers=0", "train.steps=5",
                "train.device=cuda", "train.image_every=0", "train.log_every=1", "train.progress=lines",
                f"train.run_dir={tmp}/run"]
        start = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "-m", "ssast", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
        ok = p.returncode == 0 and (Path(tmp) / "run" / "final" / "model.safetensors").is_file()
        return {"status": "ok" if ok else "failed", "world_size": 2, "steps": 5,
                "seconds": time.perf_counter() - start, "tail": "" if ok else (p.stdout + p.stderr)[-3000:]}


def assemble(parts_dir: Path, meta: dict | None = None) -> dict:
    """The final document: every section (a missing part is a failed one), and ok only when none failed."""
    doc = {"format": FORMAT, "version": VERSION,
           "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), **(meta or {})}
    for name in SECTIONS:
        path = parts_dir / f"{name}.json"
        try:
            part = json.loads(path.read_text())
            if not isinstance(part, dict) or part.get("status") not in STATUSES:
                raise ValueError(f"no status in {path.name}")
        except (OSError, ValueError) as e:
            part = {"status": "failed", "reason": f"no result ({type(e).__name__}: {e})"}
        doc[name] = part
    doc["failed"] = [n for n in SECTIONS if doc[n]["status"] == "failed"]
    doc["ok"] = not doc["failed"]
    return doc


def validate(doc: dict) -> list[str]:
    """What is wrong with a final document (empty when it has the schema gpu_check.sh promises)."""
    problems = []
    for key, kind in (("format", str), ("version", int), ("date", str), ("ok", bool), ("failed", list)):
        if not isinstance(doc.get(key), kind):
            problems.append(f"{key}: expected {kind.__name__}")
    if doc.get("format") != FORMAT:
        problems.append(f"format: expected {FORMAT!r}")
    for name in SECTIONS:
        part = doc.get(name)
        if not isinstance(part, dict) or part.get("status") not in STATUSES:
            problems.append(f"{name}: expected a section with a status in {STATUSES}")
    rows = [doc.get(n, {}) for n in ("rows", "rows_k", "rows_compiled")]
    for part in rows:
        if part.get("status") == "ok":
            for r in part.get("records", []):
                for key in ("name", "clips_per_s", "peak_mb", "fraction_of_peak", "batch"):
                    if key not in r:
                        problems.append(f"row {r.get('name')}: no {key}")
    return problems


def rows_part(results: Path, seconds: float) -> dict:
    """A section of benchmark rows from benchmarks/run.py's output file."""
    doc = json.loads(results.read_text())
    records = doc.get("rows", doc) if isinstance(doc, dict) else doc
    failed = [r.get("name") for r in records if r.get("error")]
    keep = ("name", "tokens", "precision", "compile", "batch", "tdim", "size", "masks_per_clip", "clips_per_s",
            "masked_copies_per_s", "median_ms", "peak_mb", "gflops", "peak_gflops", "fraction_of_peak",
            "ratio_to_published", "error")
    return {"status": "failed" if failed or not records else "ok", "failed_rows": failed, "seconds": seconds,
            "records": [{k: r.get(k) for k in keep} for r in records]}


CHECKS = {"device": check_device, "fbank": check_fbank, "bf16-step": check_bf16_step,
          "cuda-tests": check_cuda_tests, "ddp-step": check_ddp_step}


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] in CHECKS:
        try:
            part = CHECKS[argv[0]]()
        except Exception as e:  # noqa: BLE001 - a check that crashes is a failed section, not a lost file
            part = {"status": "failed", "reason": f"{type(e).__name__}: {str(e)[:2000]}"}
        write_part(argv[1], part)
        return 0
    if len(argv) == 3 and argv[0] == "rows":  # rows RESULTS.json PART.json (seconds from the environment)
        try:
            part = rows_part(Path(argv[1]), float(os.environ.get("GPU_CHECK_SECONDS", "0")))
        except (OSError, ValueError) as e:
            part = {"status": "failed", "reason": f"no benchmark results ({type(e).__name__}: {e})"}
        write_part(argv[2], part)
        return 0
    if len(argv) == 3 and argv[0] == "assemble":
        doc = assemble(Path(argv[1]), json.loads(os.environ.get("GPU_CHECK_META", "{}")))
        problems = validate(doc)
        if problems:
            print(f"gpu_check: the result does not follow its schema: {'; '.join(problems)}", file=sys.stderr)
            return 1
        write_part(argv[2], doc)
        print(f"gpu_check: {argv[2]}: " + ("every check passed" if doc["ok"] else f"failed: {', '.join(doc['failed'])}"))
        return 0 if doc["ok"] else 1
    print("usage: gpu_check.py device|fbank|bf16-step|cuda-tests|ddp-step PART.json | rows RESULTS.json PART.json | "
          "assemble PARTS_DIR OUT.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
