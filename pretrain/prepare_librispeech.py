#!/usr/bin/env python
"""LibriSpeech as distributed -> an unlabeled SSAST JSON list (and optionally WebDataset shards) for pretraining.

Layout read: ``LibriSpeech/{subset}/{speaker}/{chapter}/{speaker}-{chapter}-{utt}.flac`` with one
``{speaker}-{chapter}.trans.txt`` per chapter. The paper's 960 h are the three training subsets (the default).
Checks: every transcript line has its audio, every file name matches its folders, 16 kHz mono. Writes
``{out}/train.json`` (utterances, no labels; one clip each, as the paper concatenates them with AudioSet) and, with
``--shards DIR``, shards for ``data.train`` (e.g. data/shards/librispeech). Re-running changes nothing up to date.

    python pretrain/prepare_librispeech.py --root /data/LibriSpeech --out data/librispeech \
        --shards data/shards/librispeech
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import ssast  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssast.data.lists import (
    examples,
    format_hours,
    pack_shards,
    probe_audio,
    run_prepare,
    write_json_list,
    write_lines,
)
from ssast.data.manifest import Clip, DataError

TRAIN_960H = ("train-clean-100", "train-clean-360", "train-other-500")
_UTT = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def find_root(root: Path) -> Path:
    """The folder holding the subsets: ``root`` itself or its ``LibriSpeech/`` child (how the tarballs unpack)."""
    if (root / "LibriSpeech").is_dir() and not any((root / s).is_dir() for s in TRAIN_960H):
        return root / "LibriSpeech"
    return root


def scan_subset(sub: Path) -> tuple[list[str], list[str], list[str]]:
    """(audio paths, transcript lines without audio, problems) of one subset, in sorted speaker/chapter order."""
    paths, missing, problems = [], [], []
    for spk in sorted(p for p in sub.iterdir() if p.is_dir()):
        for chap in sorted(p for p in spk.iterdir() if p.is_dir()):
            audio = {}
            for f in chap.iterdir():
                if f.suffix.lower() in (".flac", ".wav"):
                    m = _UTT.match(f.stem)
                    if not m or m.group(1) != spk.name or m.group(2) != chap.name:
                        problems.append(f"{f}: name does not match {{speaker}}-{{chapter}}-{{utt}} of its folders")
                        continue
                    audio[f.stem] = f
            trans = chap / f"{spk.name}-{chap.name}.trans.txt"
            if not trans.is_file():
                problems.append(f"{trans}: transcript missing (the chapter's audio is still used)")
            else:
                for line in trans.read_text(encoding="utf-8").splitlines():
                    utt = line.split(" ", 1)[0].strip()
                    if utt and utt not in audio:
                        missing.append(f"{sub.name}/{spk.name}/{chap.name}/{utt}")
            paths.extend(str(audio[k]) for k in sorted(audio))
    return paths, missing, problems


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="the LibriSpeech folder (or the folder it was unpacked in)")
    p.add_argument("--subsets", default=",".join(TRAIN_960H), help="comma-separated subsets (default: the 960 h)")
    p.add_argument("--out", default="data/librispeech", help="output folder for train.json (default: %(default)s)")
    p.add_argument("--shards", metavar="DIR", help="also pack shards here (e.g. data/shards/librispeech)")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--max-seconds", type=float, help="keep only the start of longer utterances in the shards")
    p.add_argument("--workers", type=int, default=8, help="threads for header checks, processes for shards")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not Path(args.root).is_dir():
        raise DataError(f"--root {args.root}: no such folder; give the unpacked LibriSpeech folder")
    root = find_root(Path(args.root))
    subsets = [s.strip() for s in args.subsets.split(",") if s.strip()]
    absent = [s for s in subsets if not (root / s).is_dir()]
    if absent:
        raise DataError(f"{root / absent[0]}: subset not found; unpack it there, or pass --subsets with only the "
                        f"subsets you have (e.g. --subsets train-clean-100)")
    per_subset: dict[str, list[str]] = {}
    missing, problems = [], []
    for s in subsets:
        paths, miss, probs = scan_subset(root / s)
        if not paths:
            raise DataError(f"{root / s}: no .flac files under {{speaker}}/{{chapter}}/; is this a LibriSpeech subset?")
        per_subset[s] = paths
        missing += miss
        problems += probs
    every = [p for s in subsets for p in per_subset[s]]
    probe = probe_audio(every, workers=args.workers, progress=not args.quiet)
    bad = {p for p, _ in probe.bad}
    clips = [Clip(p, [], Path(p).stem) for p in every if p not in bad]
    out = Path(args.out)
    write_json_list(out / "train.json", clips)
    write_lines(out / "missing.txt", missing)

    print(f"LibriSpeech list {out / 'train.json'}: {len(clips)} utterances, {format_hours(probe.seconds())}")
    for s in subsets:
        kept = [p for p in per_subset[s] if p not in bad]
        print(f"  {s}: {len(kept)} utterances, {format_hours(probe.seconds(kept))}")
    if missing:
        print(f"in transcripts but missing on disk: {len(missing)} (listed in {out / 'missing.txt'}), e.g. "
              + examples(missing))
    if problems:
        print(f"{len(problems)} problems: " + examples(problems, 3))
    for line in probe.report(expected_rate=16000, expected_channels=1):
        print(line)
    if args.shards:
        pack_shards(out / "train.json", args.shards, shard_size=args.shard_size, workers=args.workers,
                    max_seconds=args.max_seconds, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(run_prepare(main, "prepare_librispeech"))
