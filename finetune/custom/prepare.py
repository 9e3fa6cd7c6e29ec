#!/usr/bin/env python
"""Your own labelled audio -> SSAST lists: class folders (``ROOT/{class}/*.wav``) or a CSV ``path,label[,split]``.

Writes ``{out}/{train,valid,test}.json`` and ``{out}/labels.csv`` (classes sorted by name). Without a split column,
clips are split at random per class with ``--seed`` (``--valid-fraction``, ``--test-fraction``), so every class is
in every split when it has enough clips. CSV paths may be relative to the CSV's folder; a header line is optional.
Re-running with the same input and seed writes the same lists.

    python finetune/custom/prepare.py --root /data/my_sounds --out data/custom
    python finetune/custom/prepare.py --csv /data/my_sounds/labels.csv --out data/custom
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

try:
    import ssast  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ssast.data.lists import (
    examples,
    iter_audio_files,
    probe_audio,
    run_prepare,
    stratified_split,
    summarize,
    write_splits,
)
from ssast.data.manifest import Clip, DataError

SPLITS = ("train", "valid", "test")


def from_folders(root: Path) -> list[tuple[str, str, str | None]]:
    """(path, label, split=None) for every audio file in a class folder directly below ``root``."""
    items = []
    for cls in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        items += [(str(f), cls.name, None) for f in iter_audio_files(cls)]
    if not items:
        raise DataError(f"{root}: no audio in class folders ({root}/CLASS/*.wav); or give --csv")
    return items


def from_csv(path: Path) -> list[tuple[str, str, str | None]]:
    """(path, label, split or None) rows of a ``path,label[,split]`` CSV, paths resolved against its folder."""
    if not path.is_file():
        raise DataError(f"--csv {path}: not found")
    items = []
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            row = [c.strip() for c in row]
            if not row or not any(row):
                continue
            if lineno == 1 and row[0].lower() in ("path", "file", "filename", "wav"):
                continue  # header
            where = f"{path}, line {lineno}"
            if len(row) not in (2, 3) or not row[0] or not row[1]:
                raise DataError(f"{where}: expected path,label or path,label,split; got {row!r}")
            if "," in row[1]:
                raise DataError(f"{where}: label {row[1]!r} contains a comma; use one label per clip")
            split = row[2] if len(row) == 3 and row[2] else None
            if split is not None and split not in SPLITS:
                raise DataError(f"{where}: split {split!r} must be one of {', '.join(SPLITS)}")
            p = Path(row[0])
            items.append((str(p if p.is_absolute() else path.parent / p), row[1], split))
    if not items:
        raise DataError(f"{path}: no rows path,label[,split]")
    return items


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", help="folder with one subfolder of audio per class")
    src.add_argument("--csv", help="CSV with path,label[,split] rows")
    p.add_argument("--out", default="data/custom", help="output folder (default: %(default)s)")
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="seed of the random split")
    p.add_argument("--workers", type=int, default=8, help="threads for header checks")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.root is not None and not Path(args.root).is_dir():
        raise DataError(f"--root {args.root}: no such folder")
    items = from_folders(Path(args.root)) if args.root else from_csv(Path(args.csv))
    probe = probe_audio([p for p, _, _ in items], workers=args.workers, progress=not args.quiet)
    missing = [p for p, _, _ in items if p not in probe.info]
    items = [it for it in items if it[0] in probe.info]
    if not items:
        raise DataError(f"none of the listed files can be read, e.g. {missing[0]}")
    given = [it for it in items if it[2] is not None]
    if given and len(given) != len(items):
        raise DataError(f"{args.csv}: give a split for every row or for none ({len(items) - len(given)} rows lack one)")
    if given:
        parts = {s: [it for it in items if it[2] == s] for s in SPLITS}
    else:
        parts = stratified_split(items, lambda it: it[1], {"valid": args.valid_fraction, "test": args.test_fraction},
                                 seed=args.seed)
        parts = {s: sorted(parts[s]) for s in SPLITS}  # input order, not draw order: stable, readable lists
    classes = sorted({lab for _, lab, _ in items})
    out = Path(args.out)
    splits = {s: [Clip(p, [lab], p) for p, lab, _ in parts[s]] for s in SPLITS}
    seconds = write_splits(out, splits, classes, classes, probe)
    print(f"lists in {out}: {len(classes)} classes ({out / 'labels.csv'})"
          + ("" if given else f"; random split per class, seed {args.seed}"))
    print(summarize(splits, seconds))
    if missing:
        print(f"{len(missing)} files missing or unreadable, left out: " + examples(missing))
    empty = [s for s in ("valid", "test") if not splits[s]]
    if empty:
        print(f"note: {' and '.join(empty)} empty; remove them from the config's data section or add clips")
    for line in probe.report():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(run_prepare(main, "custom/prepare"))
