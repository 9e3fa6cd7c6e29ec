"""benchmarks/gpu_check.sh on a machine without a GPU: its arguments, its refusal, and the JSON it assembles."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402


def sh(*args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable, **env})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_gpu_check_refuses_without_a_gpu_in_one_line(tmp_path):
    out = tmp_path / "r.json"
    p = sh("--out", str(out))
    assert p.returncode == 3
    assert p.stdout == "" and p.stderr.count("\n") == 1 and "no CUDA GPU" in p.stderr
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--budget", "ten"], "--budget must be a whole number"),
    (["--budget", "30"], "at least 60"),
    (["--out"], "--out needs a file name"),
    (["--out", "/no/such/folder/r.json"], "does not exist"),
    (["--fast"], "unknown argument '--fast'"),
])
def test_gpu_check_bad_arguments_end_in_one_line(args, message):
    p = sh(*args)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and message in p.stderr, p.stderr


def test_gpu_check_help_and_a_missing_python():
    assert sh("--help").stdout.startswith("usage: gpu_check.sh")
    p = sh(PYTHON="/no/such/python")
    assert p.returncode == 2 and "PYTHON=/no/such/python: not found" in p.stderr


def test_gpu_check_finds_the_tests_that_need_cuda():
    ids = gpu_check.cuda_test_ids()
    for known in ("tests/test_fbank.py::test_cuda_matches_torchaudio", "tests/test_augment.py::test_augmentations_run_on_cuda",
                  "tests/test_hear.py::test_runs_on_the_models_device"):
        assert known in ids
    assert "tests/test_user_errors.py::test_cuda_device_without_a_gpu" not in ids  # skips WITH a GPU


def _canned(parts: Path) -> None:
    """The parts a run on a 1-GPU machine leaves: every check ok, DDP skipped, one compiled row that failed."""
    parts.mkdir()
    (parts / "device.json").write_text(json.dumps({"status": "ok", "count": 1, "gpus": [{"name": "H200"}]}))
    (parts / "cuda_tests.json").write_text(json.dumps({"status": "ok", "passed": 3, "failed": 0, "skipped": 0}))
    (parts / "fbank.json").write_text(json.dumps({"status": "ok", "max_abs_diff_gpu_cpu": 2e-4}))
    (parts / "bf16_step.json").write_text(json.dumps({"status": "ok", "losses": [5.1, 5.0]}))
    (parts / "ddp_step.json").write_text(json.dumps({"status": "skipped", "reason": "1 GPU: DDP needs 2"}))
    row = {"name": "pretrain-onepass", "tokens": "patch", "precision": "bf16", "compile": False, "batch": 24,
           "tdim": 1024, "size": "base", "clips_per_s": 300.0, "median_ms": 80.0, "peak_mb": 20000.0, "gflops": 1.0,
           "peak_gflops": 2.0, "fraction_of_peak": 0.5, "error": None, "threads": None}
    (parts / "rows-results.json").write_text(json.dumps([row, {**row, "name": "inference"}]))
    (parts / "rows_compiled-results.json").write_text(json.dumps([{**row, "compile": True, "error": "timeout"}]))
    (parts / "rows_k-results.json").write_text(json.dumps([{**row, "name": "pretrain-visible", "batch": 8,
                                                            "masks_per_clip": k, "masked_copies_per_s": 40.0 * k}
                                                           for k in (1, 8)]))


def test_gpu_check_assembles_one_json_with_every_section(tmp_path):
    parts = tmp_path / "parts"
    _canned(parts)
    py = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py")]
    for name in ("rows", "rows_k", "rows_compiled"):
        r = subprocess.run([*py, "rows", str(parts / f"{name}-results.json"), str(parts / f"{name}.json")],
                           capture_output=True, text=True, timeout=60, env=dict(os.environ, GPU_CHECK_SECONDS="42"))
        assert r.returncode == 0, r.stderr
    out = tmp_path / "gpu_check.json"
    p = subprocess.run([*py, "assemble", str(parts), str(out)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, GPU_CHECK_META='{"seconds": 400, "budget_s": 480}'))
    doc = json.loads(out.read_text())
    assert p.returncode == 1 and "failed: rows_compiled" in p.stdout  # one failed row fails its section and the run
    assert gpu_check.validate(doc) == []
    assert doc["ok"] is False and doc["failed"] == ["rows_compiled"] and doc["seconds"] == 400
    assert set(gpu_check.SECTIONS) <= doc.keys() and doc["ddp_step"]["status"] == "skipped"
    rows = doc["rows"]
    assert rows["status"] == "ok" and rows["seconds"] == 42 and [r["name"] for r in rows["records"]] == \
        ["pretrain-onepass", "inference"]
    assert rows["records"][0]["fraction_of_peak"] == 0.5 and "threads" not in rows["records"][0]
    assert doc["rows_compiled"]["failed_rows"] == ["pretrain-onepass"]
    assert [(r["masks_per_clip"], r["masked_copies_per_s"]) for r in doc["rows_k"]["records"]] == [(1, 40.0), (8, 320.0)]


FAKE_PYTHON = """#!/usr/bin/env bash
# A machine that says it has CUDA: each check writes an ok part, run.py logs its arguments and writes one row per K
case "$1" in
  -c) exit 0 ;;
  */gpu_check.py) case "$2" in rows|assemble) exec "$REAL_PYTHON" "$@" ;; *) echo '{"status": "ok"}' > "$3" ;; esac ;;
  */run.py) shift; echo "$*" >> "$RUN_LOG"
    exec "$REAL_PYTHON" -c 'import json, sys; a = sys.argv[1:]; json.dump([{"name": "pretrain-visible", \
"clips_per_s": 1.0, "peak_mb": 1.0, "fraction_of_peak": 0.1, "batch": 8, "masks_per_clip": 1}], \
open(a[a.index("--out") + 1], "w"))' "$@" ;;
esac
"""


def test_gpu_check_runs_every_section_and_the_k_rows_override_the_batch(tmp_path):
    """The whole script, with a stand-in interpreter: every section is run, and the options a row set adds after the
    defaults (batch 8, K = 1 and 8) are the ones run.py's own parser keeps."""
    fake, log, out = tmp_path / "python", tmp_path / "run.log", tmp_path / "gpu.json"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    p = sh("--out", str(out), PYTHON=str(fake), REAL_PYTHON=sys.executable, RUN_LOG=str(log))
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert doc["ok"] is True and set(gpu_check.SECTIONS) <= doc.keys()
    from speed.plan import build_parser

    runs = [build_parser().parse_args(line.split()) for line in log.read_text().splitlines()]
    assert [(a.rows, a.batch, a.masks_per_clip, a.compile, a.precision) for a in runs] == [
        (["pretrain-onepass", "pretrain-visible", "finetune-step", "inference"], 24, [1], False, ["bf16"]),
        (["pretrain-visible"], 8, [1, 8], False, ["bf16"]),
        (["pretrain-onepass", "pretrain-visible"], 24, [1], True, ["bf16"])]


def test_gpu_check_a_missing_or_broken_part_is_a_failed_section(tmp_path):
    parts = tmp_path / "parts"
    _canned(parts)
    (parts / "fbank.json").unlink()  # a check killed before it wrote anything
    (parts / "bf16_step.json").write_text("{not json")
    doc = gpu_check.assemble(parts)
    assert doc["fbank"]["status"] == "failed" and "no result" in doc["fbank"]["reason"]
    assert doc["bf16_step"]["status"] == "failed"
    assert {"fbank", "bf16_step"} <= set(doc["failed"]) and gpu_check.validate(doc) == []
    broken = {**doc, "rows": {"status": "ok", "records": [{"name": "inference"}]}}
    assert any("no clips_per_s" in p for p in gpu_check.validate(broken))


def test_gpu_check_junit_counts():
    xml = ('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1"></testsuite></testsuites>')
    assert gpu_check.junit_counts(xml) == {"passed": 1, "failed": 1, "skipped": 1}


def test_gpu_check_fbank_and_bf16_checks_run_their_code_on_a_cpu():
    """The GPU checks' own code, pointed at the CPU with small sizes (a GPU run differs only in the device)."""
    fb = gpu_check.check_fbank(device="cpu", clips=2)
    assert fb["status"] == "ok" and fb["shape"] == [2, 998, 128] and fb["max_abs_diff_gpu_cpu"] == 0.0
    assert fb["max_abs_diff_gpu_torchaudio"] <= gpu_check.FBANK_TOLERANCE and set(fb["clips_per_s"]) == {"cpu", "gpu"}
    step = gpu_check.check_bf16_step(steps=2, device="cpu", size="tiny", batch=2, tdim=64)
    assert step["status"] == "ok" and len(step["losses"]) == 2 and step["size"] == "tiny"
