#!/usr/bin/env python
"""VoxCeleb1 speaker identification as distributed -> SSAST lists with the publisher's identification split.

Layout read: ``wav/{speaker}/{youtube_id}/{n}.wav`` (16 kHz) and ``iden_split.txt`` with lines
``1 id10001/1zcIwhmdeo4/00001.wav`` (1 = train, 2 = dev, 3 = test). Writes ``{out}/{train,valid,test}.json`` and
``{out}/labels.csv`` (one class per speaker, 1251 in the full release, sorted by id). Re-running changes nothing.

    python finetune/voxceleb1/prepare.py --root /data/voxceleb1 --out data/voxceleb1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import ssast  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ssast.data.lists import examples, probe_audio, run_prepare, summarize, write_splits
from ssast.data.manifest import Clip, DataError

SPLIT_IDS = {"1": "train", "2": "valid", "3": "test"}
NUM_SPEAKERS = 1251


def read_iden_split(path: Path) -> dict[str, list[str]]:
    """Relative paths per split from iden_split.txt; a malformed line raises DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: not found; pass --split-file or put iden_split.txt in --root")
    out: dict[str, list[str]] = {name: [] for name in SPLIT_IDS.values()}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in SPLIT_IDS or parts[1].count("/") != 2:
            raise DataError(f"{path}, line {lineno}: expected '1|2|3 id10001/VIDEO/00001.wav', got {line.strip()!r}")
        out[SPLIT_IDS[parts[0]]].append(parts[1])
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="the VoxCeleb1 folder holding wav/ (and iden_split.txt)")
    p.add_argument("--split-file", help="the identification split (default: ROOT/iden_split.txt)")
    p.add_argument("--out", default="data/voxceleb1", help="output folder (default: %(default)s)")
    p.add_argument("--workers", type=int, default=8, help="threads for header checks")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root, out = Path(args.root), Path(args.out)
    wav = root / "wav"
    if not wav.is_dir():
        raise DataError(f"{wav}: not found; give --root the VoxCeleb1 folder that holds wav/{{speaker}}/...")
    split_rel = read_iden_split(Path(args.split_file) if args.split_file else root / "iden_split.txt")
    every = [r for rels in split_rel.values() for r in rels]
    exists = {r: (wav / r).is_file() for r in every}
    missing = [r for r in every if not exists[r]]
    if len(missing) == len(every):
        raise DataError(f"{wav}: none of the files of the split list is there (e.g. {wav / every[0]})")
    probe = probe_audio([str(wav / r) for r in every if exists[r]], workers=args.workers, progress=not args.quiet)
    speakers = sorted({r.split("/", 1)[0] for r in every})
    splits = {
        name: [Clip(str(wav / r), [r.split("/", 1)[0]], r) for r in rels if str(wav / r) in probe.info]
        for name, rels in split_rel.items()
    }
    train_spk = {c.labels[0] for c in splits["train"]}
    unseen = sorted({c.labels[0] for name in ("valid", "test") for c in splits[name]} - train_spk)
    seconds = write_splits(out, splits, speakers, speakers, probe)
    print(f"VoxCeleb1 identification lists in {out}: {len(speakers)} speakers ({out / 'labels.csv'})")
    if len(speakers) != NUM_SPEAKERS:
        print(f"note: {len(speakers)} speakers in the split file; the full release has {NUM_SPEAKERS}")
    print(summarize(splits, seconds))
    if unseen:
        print(f"warning: {len(unseen)} speakers of valid/test have no training clip: " + examples(unseen))
    if missing:
        print(f"in the split file but missing on disk: {len(missing)}, e.g. " + examples(missing))
    for line in probe.report(expected_rate=16000, expected_channels=1):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(run_prepare(main, "voxceleb1/prepare"))
