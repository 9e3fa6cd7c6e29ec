#!/usr/bin/env python
"""ESC-50 as distributed (``ESC-50-master/audio/*.wav`` + ``meta/esc50.csv``) -> five-fold SSAST lists at 16 kHz.

Writes ``{out}/fold{k}_train.json`` (the other four folds) and ``{out}/fold{k}_eval.json`` (fold k) for every fold,
``{out}/labels.csv`` (index = the CSV's target, mid and name = its category), and by default converts the 44.1 kHz
clips once to 16 kHz mono 16-bit wavs in ``{out}/audio_16k/`` (50 epochs x 5 folds would otherwise resample every clip
250 times). Existing conversions are kept, so a re-run only converts what is missing. ``--no-resample`` lists the
original files instead (the loader then resamples on the fly).

    python finetune/esc50/prepare.py --root /data/ESC-50-master --out data/esc50
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from pathlib import Path

try:
    import ssast  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import soundfile as sf

from ssast.data.lists import (
    examples,
    probe_audio,
    run_prepare,
    summarize,
    write_json_list,
    write_label_csv,
)
from ssast.data.manifest import Clip, DataError
from ssast.data.progress import parallel_map

SAMPLE_RATE = 16000
PUBLISHED_RATE = 44100
COLUMNS = ("filename", "fold", "target", "category")
_NAME = re.compile(r"^(\d+)-([A-Za-z0-9]+)-([A-Za-z])-(\d+)\.wav$")


def read_meta(path: Path) -> list[dict]:
    """Rows of meta/esc50.csv, checked: the columns exist, fold/target are integers that agree with the file name."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: column {missing[0]!r} missing; expected the header "
                            f"filename,fold,target,category,esc10,src_file,take")
        rows = []
        for lineno, row in enumerate(reader, start=2):
            where = f"{path}, line {lineno}"
            try:
                fold, target = int(row["fold"]), int(row["target"])
            except (TypeError, ValueError):
                raise DataError(f"{where}: fold {row['fold']!r} and target {row['target']!r} must be integers") from None
            m = _NAME.match(row["filename"] or "")
            if not m:
                raise DataError(f"{where}: file name {row['filename']!r} is not {{fold}}-{{clip}}-{{take}}-{{target}}.wav")
            if int(m.group(1)) != fold or int(m.group(4)) != target:
                raise DataError(f"{where}: {row['filename']} disagrees with fold {fold} / target {target}")
            rows.append({"filename": row["filename"], "fold": fold, "target": target,
                         "category": row["category"].strip(), "where": where})
    if not rows:
        raise DataError(f"{path}: no clips listed")
    return rows


def class_table(rows: list[dict], path: Path) -> list[str]:
    """Categories in target order; every target 0..K-1 must name exactly one category."""
    by_target: dict[int, str] = {}
    for r in rows:
        known = by_target.setdefault(r["target"], r["category"])
        if known != r["category"]:
            raise DataError(f"{r['where']}: target {r['target']} is {r['category']!r} here but {known!r} earlier")
    targets = sorted(by_target)
    if targets != list(range(len(targets))):
        gaps = sorted(set(range(targets[-1] + 1)) - set(targets))
        raise DataError(f"{path}: targets must be 0..{targets[-1]} without gaps; no clip has target {gaps[0]}")
    names = [by_target[t] for t in targets]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: two targets share a category name; labels.csv needs unique names")
    return names


def convert(job: tuple[str, str]) -> str:
    """Write ``src`` as 16 kHz mono 16-bit wav at ``dst`` unless a complete one is there; returns what happened."""
    src, dst = job
    if os.path.isfile(dst):
        try:
            info = sf.info(dst)
            if info.samplerate == SAMPLE_RATE and info.channels == 1 and info.frames > 0:
                return "kept"
        except (RuntimeError, sf.LibsndfileError):
            pass  # a broken earlier output: convert again
    try:
        data, sr = sf.read(src, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as e:
        return f"error: {src}: cannot decode ({e})"
    x = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != SAMPLE_RATE:
        from ssast.audio.io import resample

        x = resample(np.ascontiguousarray(x), sr, SAMPLE_RATE)
    tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.tmp")
    sf.write(tmp, np.clip(x, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, dst)  # a crash never leaves a truncated file under the final name
    return "converted"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="the ESC-50-master folder (holding audio/ and meta/esc50.csv)")
    p.add_argument("--out", default="data/esc50", help="output folder (default: %(default)s)")
    p.add_argument("--no-resample", action="store_true", help="list the original 44.1 kHz files (no 16 kHz copies)")
    p.add_argument("--workers", type=int, default=4, help="threads for header checks and conversion")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root, out = Path(args.root), Path(args.out)
    meta = root / "meta" / "esc50.csv"
    if not meta.is_file():
        raise DataError(f"{meta}: not found; give --root the ESC-50-master folder (with audio/ and meta/esc50.csv)")
    rows = read_meta(meta)
    names = class_table(rows, meta)
    srcs = [str(root / "audio" / r["filename"]) for r in rows]
    absent = [s for s in srcs if not os.path.isfile(s)]
    if len(absent) == len(srcs):
        raise DataError(f"{root / 'audio'}: none of the {len(srcs)} clips of {meta} is there")
    listed = {r["filename"] for r in rows}
    extra = sorted(p.name for p in (root / "audio").glob("*.wav") if p.name not in listed)
    probe = probe_audio([s for s in srcs if os.path.isfile(s)], workers=args.workers, progress=not args.quiet)
    usable = [(r, s) for r, s in zip(rows, srcs) if s in probe.info]

    if args.no_resample:
        path_of = {s: s for _, s in usable}
        outcome: list[str] = []
    else:
        audio_dir = out / "audio_16k"
        audio_dir.mkdir(parents=True, exist_ok=True)
        jobs = [(s, str(audio_dir / r["filename"])) for r, s in usable]
        outcome = parallel_map(convert, jobs, workers=args.workers, desc="converting to 16 kHz",
                               progress=not args.quiet)
        failed = {job[0]: o for job, o in zip(jobs, outcome) if o.startswith("error")}
        path_of = {src: dst for src, dst in jobs if src not in failed}
        usable = [(r, s) for r, s in usable if s in path_of]

    clips = [(r["fold"], Clip(path_of[s], [r["category"]], r["filename"])) for r, s in usable]
    folds = sorted({r["fold"] for r in rows})
    write_label_csv(out / "labels.csv", names, names)
    splits = {}
    for k in folds:
        train = [c for f, c in clips if f != k]
        held = [c for f, c in clips if f == k]
        write_json_list(out / f"fold{k}_train.json", train)
        write_json_list(out / f"fold{k}_eval.json", held)
        splits[f"fold {k}"] = held
    seconds = {name: probe.seconds(os.path.join(root, "audio", c.key) for c in held) for name, held in splits.items()}
    print(f"ESC-50 lists in {out}: {len(clips)} clips, {len(names)} classes ({out / 'labels.csv'}), "
          f"folds {', '.join(map(str, folds))}; fold{{k}}_eval.json = fold k, fold{{k}}_train.json = the others")
    print(summarize(splits, seconds))
    if not args.no_resample:
        errors = [o for o in outcome if o.startswith("error")]
        text = (f"16 kHz copies in {out / 'audio_16k'}: {outcome.count('converted')} converted, "
                f"{outcome.count('kept')} already there")
        print(text + (f", {len(errors)} failed: " + examples(errors, 3) if errors else ""))
    if absent:
        print(f"listed in {meta.name} but missing on disk: {len(absent)}, e.g. " + examples(absent))
    if extra:
        print(f"in audio/ but not in {meta.name} (ignored): {len(extra)}, e.g. " + examples(extra))
    for line in probe.report(expected_rate=PUBLISHED_RATE, expected_channels=1):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(run_prepare(main, "esc50/prepare"))
