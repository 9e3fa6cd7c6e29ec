"""The printed table and the ratios between rows of one run."""
from __future__ import annotations


from speed.common import PRETRAIN_ROWS, PUBLISHED_H100


def add_ratios(records: list[dict]) -> None:
    """Fill ratio_to_authors (pretraining rows vs (a) of the same tokens in this run), ratio_to_torch (ONNX Runtime
    vs the torch fp32 inference row of this run), ratio_to_fbank_onnx (the waveform-in export vs the fbank-in one)
    and ratio_to_published."""
    authors = {r["tokens"]: r["clips_per_s"] for r in records if r["name"] == "pretrain-authors" and r["clips_per_s"]}
    torch_fp32 = next((r["clips_per_s"] for r in records
                       if r["name"] == "inference" and r.get("precision") == "fp32" and r.get("clips_per_s")), None)
    fbank_onnx = next((r["clips_per_s"] for r in records if r["name"] == "inference-onnx" and r.get("clips_per_s")),
                      None)
    for r in records:
        if not r.get("clips_per_s"):
            continue
        if r["name"] in PRETRAIN_ROWS and r["tokens"] in authors:
            r["ratio_to_authors"] = r["clips_per_s"] / authors[r["tokens"]]
        if r["name"] == "inference-onnx" and torch_fp32:
            r["ratio_to_torch"] = r["clips_per_s"] / torch_fp32
        if r["name"] == "inference-onnx-waveform" and fbank_onnx:
            r["ratio_to_fbank_onnx"] = r["clips_per_s"] / fbank_onnx
        # The H100 figures only compare at their own settings: Base, batch 24, 1024 frames, on a GPU.
        key = ("pretrain" if r["name"] in PRETRAIN_ROWS else r["name"], r["tokens"])
        if (r["device"] == "cuda" and key in PUBLISHED_H100 and r.get("size") == "base" and r["batch"] == 24
                and r["tdim"] == 1024 and r.get("dim") == 768 and r.get("depth") == 12):
            r["ratio_to_published"] = r["clips_per_s"] / PUBLISHED_H100[key]


def _fmt(v, digits: int = 1) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(records: list[dict]) -> str:
    """The records as a markdown table (one line per row, failures with their error)."""
    head = ["row", "tokens", "size", "batch", "tdim", "precision", "compile", "clips/s", "median ms", "min ms",
            "peak MB", "GFLOP/clip", "GFLOP/s", "of matmul peak", "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        name = r["name"] + (f" {r['label']}" if r.get("label") else "") + (
            f" K={r['masks_per_clip']}" if r.get("masks_per_clip", 1) > 1 else "") + (
            " + grad checkpointing" if r.get("grad_checkpointing") else "")
        size, tdim = (r["size"], str(r["tdim"])) if r["name"] != "fbank" else ("-", "10 s")  # fbank: model-free
        if r.get("error"):
            cells = [name, _fmt(r.get("tokens")), size, str(r["batch"]), tdim, r["precision"],
                     "yes" if r["compile"] else "no", "failed: " + r["error"][:120], "", "", "", "", "", "", ""]
        else:
            ratio = "-"
            if r.get("ratio_to_bare") is not None:
                ratio = f"{r['ratio_to_bare']:.2f} of bare ({r['bare_clips_per_s']:.1f}/s)"
            elif r.get("ratio_to_authors") is not None:
                ratio = f"{r['ratio_to_authors']:.2f}x (a)"
            elif r.get("ratio_to_torch") is not None:
                ratio = f"{r['ratio_to_torch']:.2f}x torch fp32"
            elif r.get("ratio_to_fbank_onnx") is not None:
                ratio = f"{r['ratio_to_fbank_onnx']:.2f}x the fbank-in export"
            if r.get("decoder_share") is not None:
                dec = (f"decoder {100 * r['decoder_share']:.0f}% of the time, "
                       f"{100 * r['decoder_flops_per_clip'] / r['flops_per_clip']:.0f}% of the FLOPs")
                ratio = dec if ratio == "-" else f"{ratio}; {dec}"
            if r.get("ratio_to_published") is not None:
                ratio += f"; {r['ratio_to_published']:.1f}x authors' H100"
            cells = [name, _fmt(r.get("tokens")), size, str(r["batch"]), tdim, r["precision"],
                     "yes" if r["compile"] else "no", _fmt(r["clips_per_s"], 2), _fmt(r["median_ms"]),
                     _fmt(r["min_ms"]), _fmt(r["peak_mb"], 0),
                     _fmt(r["flops_per_clip"] / 1e9 if r.get("flops_per_clip") else None, 1), _fmt(r.get("gflops"), 0),
                     f"{100 * r['fraction_of_peak']:.0f}%" if r.get("fraction_of_peak") else "-", ratio]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
