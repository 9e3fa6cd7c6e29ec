#!/usr/bin/env python
"""Your own folder of audio (any depth; wav/flac/ogg/mp3) -> an unlabeled SSAST JSON list, and optionally shards.

Writes ``{out}/train.json`` and, with ``--valid-fraction``, a held-out ``{out}/valid.json`` (pretraining reports the
masked-patch accuracy on it). Clips shorter than one 25 ms window or unreadable are left out and reported. With
``--shards DIR`` the training list is also packed into WebDataset shards. Re-running changes nothing up to date.

    python pretrain/prepare_folder.py --root /data/my_audio --out data/my_audio --shards data/shards/my_audio
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

try:
    import ssast  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssast.data.lists import (
    examples,
    format_hours,
    iter_audio_files,
    pack_shards,
    probe_audio,
    run_prepare,
    write_json_list,
)
from ssast.data.manifest import Clip, DataError

MIN_SECONDS = 0.025  # one analysis window: shorter clips give no fbank frame


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="folder of audio files (searched recursively)")
    p.add_argument("--out", default="data/folder", help="output folder for the lists (default: %(default)s)")
    p.add_argument("--valid-fraction", type=float, default=0.0, help="share of clips held out in valid.json")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out draw")
    p.add_argument("--shards", metavar="DIR", help="also pack train.json into shards here")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--max-seconds", type=float, help="keep only the start of longer clips in the shards")
    p.add_argument("--workers", type=int, default=8, help="threads for header checks, processes for shards")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        raise DataError(f"--root {root}: no such folder")
    if not 0 <= args.valid_fraction < 1:
        raise DataError(f"--valid-fraction {args.valid_fraction}: must be in [0, 1)")
    paths = [str(p) for p in iter_audio_files(root)]
    if not paths:
        raise DataError(f"{root}: no audio files (.wav, .flac, .ogg, .mp3) found in this folder or below")
    probe = probe_audio(paths, workers=args.workers, progress=not args.quiet)
    short = [p for p, (n, sr, _) in probe.info.items() if n / sr < MIN_SECONDS]
    short_set = set(short)
    usable = [p for p in paths if p in probe.info and p not in short_set]
    if not usable:
        raise DataError(f"{root}: none of the {len(paths)} audio files is readable and long enough")
    held = set()
    if args.valid_fraction > 0:
        order = list(usable)
        random.Random(args.seed).shuffle(order)
        held = set(order[: max(1, round(len(order) * args.valid_fraction))])
    out = Path(args.out)
    train = [Clip(p, []) for p in usable if p not in held]
    valid = [Clip(p, []) for p in usable if p in held]
    write_json_list(out / "train.json", train)
    if valid:
        write_json_list(out / "valid.json", valid)
    print(f"lists in {out}: train {len(train)} clips, {format_hours(probe.seconds(c.path for c in train))}"
          + (f"; valid {len(valid)} clips, {format_hours(probe.seconds(c.path for c in valid))}" if valid else ""))
    if short:
        print(f"{len(short)} clips shorter than {MIN_SECONDS * 1000:.0f} ms left out: " + examples(short))
    for line in probe.report():
        print(line)
    if args.shards:
        pack_shards(out / "train.json", args.shards, shard_size=args.shard_size, workers=args.workers,
                    max_seconds=args.max_seconds, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(run_prepare(main, "prepare_folder"))
