"""The benchmark suite runs end to end at CI size and writes its JSON; figures are checked for sense, never for speed."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"


def _load_run():
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


bench = _load_run()
from speed import plan, profiling, rows  # noqa: E402  (the suite's modules, on the path run.py sets)

QUICK_ROWS = ["pretrain-authors", "pretrain-onepass", "pretrain-visible", "finetune-step", "inference", "inference-onnx",
              "inference-onnx-waveform", "fbank", "loop"]


@pytest.fixture(scope="module")
def quick_records(tmp_path_factory) -> list[dict]:
    """One --quick run of every row (patch tokens, fp32) in a subprocess, as a user would start it."""
    out = tmp_path_factory.mktemp("bench") / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(RUN), *QUICK_ROWS, "--quick", "--device", "cpu", "--tokens", "patch",
         "--precision", "fp32", "--loop-steps", "24", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "| row |" in proc.stdout  # the markdown table is printed
    return json.loads(out.read_text())


def test_quick_run_writes_every_row(quick_records):
    by_name = {r["name"]: r for r in quick_records}
    assert set(by_name) == set(QUICK_ROWS)
    assert len(quick_records) == len(QUICK_ROWS)  # one tokenization, one precision: one record per row
    for r in quick_records:
        assert "error" not in r, r
        assert r["clips_per_s"] > 0 and r["median_ms"] > 0 and 0 < r["min_ms"] <= r["median_ms"]
        assert r["peak_mb"] > 0
        for key in ("device_name", "torch", "date", "size", "batch", "tdim", "precision", "compile", "tokens"):
            assert key in r
        assert r["size"] == "tiny" and r["tdim"] == 128 and r["device"] == "cpu"
        assert r["torch"] and r["device_name"]
        for key in ("ratio_to_authors", "ratio_to_bare", "ratio_to_published"):
            assert key in r
        assert r["ratio_to_published"] is None  # only for Base, batch 24 on a GPU
    assert by_name["pretrain-onepass"]["batch"] == 2
    assert by_name["fbank"]["batch"] == 2 and by_name["fbank"]["frames"] == 998  # 10 s clips


def test_quick_run_ratios_and_shapes(quick_records):
    by_name = {r["name"]: r for r in quick_records}
    authors = by_name["pretrain-authors"]
    assert authors["ratio_to_authors"] == pytest.approx(1.0)
    assert authors["label"] == "(a)" and authors["precision"] == "fp32"
    for name in ("pretrain-onepass", "pretrain-visible"):
        r = by_name[name]
        assert r["ratio_to_authors"] == pytest.approx(r["clips_per_s"] / authors["clips_per_s"])
    assert by_name["pretrain-onepass"]["label"] == "(b)"
    assert by_name["finetune-step"]["ratio_to_authors"] is None
    # 128 frames: 8 x 8 patches, 400/512 of them masked; the visible encoder sees only the rest
    assert authors["num_tokens"] == 64 and authors["num_masked"] == 50
    assert by_name["pretrain-visible"]["encoder_tokens"] == 14
    assert by_name["finetune-step"]["num_tokens"] == 12 * 12  # 16x16 stride 10 over 128 x 128
    loop = by_name["loop"]
    assert loop["bare_clips_per_s"] > 0
    assert loop["ratio_to_bare"] == pytest.approx(loop["clips_per_s"] / loop["bare_clips_per_s"])
    assert loop["loop_steps_timed"] == 24 - 3
    onnx = by_name["inference-onnx"]  # the inference row's model in ONNX Runtime, beside torch fp32
    assert onnx["runtime"].startswith("onnxruntime ") and onnx["precision"] == "fp32" and onnx["batch"] == 2
    assert onnx["num_tokens"] == by_name["inference"]["num_tokens"] and onnx["onnx_mb"] > 0
    assert onnx["ratio_to_torch"] == pytest.approx(onnx["clips_per_s"] / by_name["inference"]["clips_per_s"])
    wave = by_name["inference-onnx-waveform"]  # the same model with the fbank in the graph, beside the fbank-in one
    assert wave["runtime"].startswith("onnxruntime ") and wave["precision"] == "fp32" and wave["batch"] == 2
    assert wave["ratio_to_fbank_onnx"] == pytest.approx(wave["clips_per_s"] / onnx["clips_per_s"])
    assert wave["ratio_to_torch"] is None and onnx["ratio_to_fbank_onnx"] is None


def test_quick_run_counts_flops_and_the_fraction_of_the_measured_peak(quick_records):
    by_name = {r["name"]: r for r in quick_records}
    for r in quick_records:
        peak = r["matmul_peak"]
        assert peak["dtype"] == "float32" and peak["peak_gflops"] == max(peak["gflops_by_size"].values()) > 0
        assert r["peak_gflops"] == peak["peak_gflops"]
        assert r["flops_per_clip"] > 0
        assert r["gflops"] == pytest.approx(r["flops_per_clip"] * r["clips_per_s"] / 1e9)
        assert r["fraction_of_peak"] == pytest.approx(r["gflops"] / r["peak_gflops"])
    flops = {name: r["flops_per_clip"] for name, r in by_name.items()}
    assert flops["pretrain-authors"] == pytest.approx(2 * flops["pretrain-onepass"], rel=0.03)  # two encoder passes
    assert flops["pretrain-visible"] < 0.6 * flops["pretrain-onepass"]  # 14 of 64 tokens through the encoder
    assert flops["loop"] == flops["pretrain-onepass"]
    assert flops["inference-onnx"] == flops["inference"]  # the same model
    # plus the front end's DFT and mel products: 2 x 2 x 400 x 257 + 2 x 257 x 128 per frame, 128 frames
    front = 128 * (2 * 400 * 514 + 2 * 257 * 128)
    assert flops["inference-onnx-waveform"] == pytest.approx(flops["inference"] + front, rel=1e-3)
    # a training step: the forward's products once more for input gradients and once for weight gradients
    assert 2.9 * flops["inference"] < flops["finetune-step"] < 3.3 * flops["inference"]
    assert all(r["first_call_s"] > 0 for r in quick_records if r["name"] not in ("loop",))
    visible = by_name["pretrain-visible"]  # the decoder's share of the visible-token step is stated
    assert 0 < visible["decoder_flops_per_clip"] < visible["flops_per_clip"]
    assert visible["decoder_share"] == pytest.approx(visible["decoder_ms"] / visible["median_ms"])
    assert by_name["pretrain-onepass"]["decoder_share"] is None


def test_plan_defaults_and_quick():
    args = bench.build_parser().parse_args(["--quick", "--device", "cpu", "--precision", "fp32", "bf16"])
    specs = bench.plan(args)
    keys = [(s.row, s.tokens, s.precision) for s in specs]
    # the authors' row is fp32 only, for both tokenizations; the fbank row runs once
    assert [k for k in keys if k[0] == "pretrain-authors"] == [
        ("pretrain-authors", "patch", "fp32"), ("pretrain-authors", "frame", "fp32")]
    assert [k for k in keys if k[0] == "fbank"] == [("fbank", "patch", "fp32")]
    assert ("pretrain-onepass", "frame", "bf16") in keys and ("pretrain-visible", "patch", "bf16") in keys
    assert {k[1] for k in keys if k[0] in ("finetune-step", "inference")} == {"patch"}
    if plan.onnx_row_available(bench.torch.device("cpu")):  # ONNX Runtime runs fp32 only
        assert [k for k in keys if k[0].startswith("inference-onnx")] == [
            ("inference-onnx", "patch", "fp32"), ("inference-onnx-waveform", "patch", "fp32")]
    named = bench.plan(bench.build_parser().parse_args(["inference-onnx", "inference", "--device", "cpu",
                                                         "--precision", "fp32", "bf16"]))
    assert [(s.row, s.precision) for s in named] == [("inference", "fp32"), ("inference", "bf16"),
                                                     ("inference-onnx", "fp32")]
    gpu = bench.plan(bench.build_parser().parse_args(["--quick", "--device", "cuda"]))
    assert not {"inference-onnx", "inference-onnx-waveform"} & {s.row for s in gpu}  # left out of a GPU run unless named
    assert [s.row for s in specs] == sorted((s.row for s in specs), key=bench.ROWS.index)  # table order
    s = specs[0]
    assert (s.size, s.tdim, s.batch, s.repeats, s.warmup) == ("tiny", 128, 2, 2, 1)
    full = bench.plan(bench.build_parser().parse_args(["pretrain-onepass", "--device", "cpu", "--batch", "3"]))
    assert (full[0].size, full[0].tdim, full[0].batch, full[0].repeats, full[0].warmup) == ("base", 1024, 3, 5, 2)


def test_model_config_scales_the_mask_and_picks_the_path():
    spec = bench.Spec(row="pretrain-visible", tokens="frame", size="tiny", tdim=1024)
    cfg = rows.model_config(spec)
    assert (cfg.fshape, cfg.tshape) == (128, 2) and cfg.mask_patch == 400 and cfg.pretrain_encoder == "visible"
    authors = rows.model_config(bench.Spec(row="pretrain-authors", size="tiny", tdim=512))
    assert authors.two_pass and authors.mask_patch == 200 and authors.pretrain_encoder == "all"
    ft = rows.model_config(bench.Spec(row="finetune-step", size="tiny", tdim=1024), finetune=True)
    assert (ft.fstride, ft.tstride) == (10, 10)


@pytest.mark.parametrize("argv, message", [
    (["no-such-row", "--device", "cpu"], "unknown row"),
    (["--size", "custom", "--dim", "64", "--device", "cpu"], "--size custom needs"),
    (["--dim", "100", "--heads", "3", "--device", "cpu"], "not divisible"),
    (["pretrain-visible", "--masks-per-clip", "0", "--device", "cpu"], "K must be at least 1"),
])
def test_bad_requests_name_the_problem(argv, message, capsys):
    assert bench.main(argv) == 2
    assert message in capsys.readouterr().err


def test_ratios_and_table_from_records():
    common = dict(size="base", dim=768, depth=12, batch=24, tdim=1024, device="cuda", compile=False,
                  median_ms=1.0, min_ms=1.0, peak_mb=1.0, precision="bf16")
    records = [
        {"name": "pretrain-authors", "tokens": "patch", "clips_per_s": 50.0, **common, "precision": "fp32"},
        {"name": "pretrain-onepass", "tokens": "patch", "clips_per_s": 500.0, **common},
        {"name": "pretrain-onepass", "tokens": "frame", "clips_per_s": 580.0, **common},
        {"name": "inference", "tokens": "patch", "clips_per_s": 1410.0, **common},
        {"name": "finetune-step", "tokens": "patch", "clips_per_s": None, **common, "error": "boom"},
        {"name": "inference", "tokens": "patch", "clips_per_s": 2.0, **common, "precision": "fp32"},
        {"name": "inference-onnx", "tokens": "patch", "clips_per_s": 3.0, **common, "precision": "fp32"},
    ]
    bench.add_ratios(records)
    assert records[1]["ratio_to_authors"] == pytest.approx(10.0)
    assert records[2].get("ratio_to_authors") is None  # no frame (a) row in this run
    assert records[2]["ratio_to_published"] == pytest.approx(10.0)  # 58 clips/s on the authors' H100
    assert records[3]["ratio_to_published"] == pytest.approx(10.0)  # 141 clips/s
    table = bench.markdown_table(records)
    assert table.count("\n") == len(records) + 1
    assert "10.00x (a)" in table and "failed: boom" in table
    assert records[6]["ratio_to_torch"] == pytest.approx(1.5) and "1.50x torch fp32" in table


def test_utilization_columns_from_records():
    peaks = bench.combine_peaks({"bf16": {"peak_gflops": 900.0, "gflops_by_size": {"1024": 900.0}}},
                                {"bf16": {"peak_gflops": 1000.0, "gflops_by_size": {"1024": 1000.0}}})
    bf16 = peaks["bf16"]
    assert bf16["peak_gflops"] == 1000.0 and (bf16["before"], bf16["after"]) == (900.0, 1000.0)
    common = dict(tokens="patch", size="base", batch=2, tdim=1024, device="cpu", compile=False, median_ms=1.0,
                  min_ms=1.0, peak_mb=1.0)
    records = [{"name": "inference", "precision": "bf16", "clips_per_s": 2.0, "flops_per_clip": 250e9, **common},
               {"name": "inference", "precision": "fp32", "clips_per_s": 2.0, "flops_per_clip": 250e9, **common}]
    bench.add_utilization(records, peaks)
    assert records[0]["gflops"] == pytest.approx(500.0) and records[0]["fraction_of_peak"] == pytest.approx(0.5)
    assert records[1]["fraction_of_peak"] is None  # no fp32 peak measured: no fraction rather than a wrong one
    table = bench.markdown_table(records)
    assert "| 250.0 | 500 | 50% |" in table
    assert "matmul peak bf16: 1000 GFLOP/s (before the rows 900, after 1000" in bench.peak_lines(peaks)[0]


def test_profile_prints_the_top_ops():
    spec = bench.Spec(row="inference", size="custom", dim=64, depth=2, heads=2, batch=1, tdim=64, repeats=1,
                      warmup=1, threads=1)
    table = bench.profile(spec, top=5)
    assert "Self CPU" in table and "aten::" in table
    categories = table.split("| where the time goes")[1]  # then self time by kind of op, shares adding up
    shares = [int(line.split("|")[3].strip().rstrip("%")) for line in categories.splitlines()[2:-1]]
    assert "linear layers" in categories and "| all |" in categories and 97 <= sum(shares) <= 103
    linear = next(line for line in categories.splitlines() if "linear layers" in line)
    assert float(linear.split("|")[4]) > 0  # the linear layers' GFLOP/s, from their counted FLOPs and self time
    assert profiling.op_category("aten::addmm").startswith("matrix")
    assert profiling.op_category("aten::_scaled_dot_product_flash_attention_for_cpu").startswith("attention")
    assert profiling.op_category("aten::copy_").startswith("dtype")


def test_grad_checkpointing_rows_are_planned_for_the_training_rows_only():
    args = bench.build_parser().parse_args(["pretrain-onepass", "finetune-step", "inference", "--device", "cpu",
                                            "--tokens", "patch", "--precision", "fp32", "--grad-checkpointing", "both"])
    keys = [(s.row, s.grad_checkpointing) for s in bench.plan(args)]
    assert keys == [("pretrain-onepass", False), ("pretrain-onepass", True), ("finetune-step", False),
                    ("finetune-step", True), ("inference", False)]
    spec = bench.Spec(row="finetune-step", size="tiny", grad_checkpointing=True)
    assert rows.model_config(spec, finetune=True).grad_checkpointing
    record = {"name": "finetune-step", "grad_checkpointing": True, "tokens": "patch", "size": "base", "batch": 8,
              "tdim": 1024, "precision": "fp32", "compile": False, "clips_per_s": 1.0, "median_ms": 1.0, "min_ms": 1.0,
              "peak_mb": 1.0, "flops_per_clip": None}
    assert "finetune-step + grad checkpointing" in bench.markdown_table([record])


def test_masks_per_clip_rows_count_loader_clips_and_k_times_the_work():
    """The visible row with K: a row per K (the authors' row keeps one mask per pass); clips/s counts the loader's
    clips, masked copies/s K times that, and a step's FLOPs per clip grow about K-fold (encoder, decoder, losses)."""
    from speed import record

    args = bench.build_parser().parse_args(["pretrain-authors", "pretrain-visible", "--device", "cpu", "--tokens",
                                            "patch", "--precision", "fp32", "--masks-per-clip", "1", "8"])
    assert [(s.row, s.masks_per_clip) for s in bench.plan(args)] == [
        ("pretrain-authors", 1), ("pretrain-visible", 1), ("pretrain-visible", 8)]
    assert rows.model_config(bench.Spec(row="pretrain-visible", masks_per_clip=8, size="tiny")).masks_per_clip == 8
    assert rows.model_config(bench.Spec(row="pretrain-authors", masks_per_clip=8, size="tiny")).masks_per_clip == 1
    got = {k: record.run_spec(bench.Spec(row="pretrain-visible", size="tiny", tdim=128, batch=2, repeats=1, warmup=0,
                                         masks_per_clip=k)) for k in (1, 2)}
    assert got[2]["masks_per_clip"] == 2 and got[1]["masks_per_clip"] == 1
    assert got[2]["masked_copies_per_s"] == pytest.approx(2 * got[2]["clips_per_s"])
    assert got[1]["batch"] == got[2]["batch"] == 2 and got[1]["encoder_tokens"] == got[2]["encoder_tokens"]
    assert 1.8 < got[2]["flops_per_clip"] / got[1]["flops_per_clip"] < 2.2
    assert 1.8 < got[2]["decoder_flops_per_clip"] / got[1]["decoder_flops_per_clip"] < 2.2
    assert "pretrain-visible K=2" in bench.markdown_table([got[2]]) and " K=" not in bench.markdown_table([got[1]])
