#!/usr/bin/env python
"""AudioSet as distributed: a folder of downloaded segment audio + the official segment CSVs -> SSAST JSON lists.

Reads ``balanced_train_segments.csv``, ``unbalanced_train_segments.csv`` and ``eval_segments.csv`` (3 comment lines,
then ``YTID, start_seconds, end_seconds, "mid1,mid2"``) and ``class_labels_indices.csv``; finds each segment's audio
under ``--root`` (any depth) by the names the common download tools use: ``{YTID}.wav``, ``Y{YTID}.wav``,
``{YTID}_{start}.wav`` with the start in seconds (``30``, ``30.000``) or milliseconds (``30000``), optionally followed
by ``_{end}``; any of wav/flac/ogg/mp3. Writes ``{out}/{split}.json``, a copy of the label CSV, and ``missing.txt``
(segments listed but not on disk). ``--shards DIR`` also packs balanced + unbalanced train into WebDataset shards for
pretraining (via ``ssast.data.shard_writer.prepare_shards``). Re-running changes nothing that is already up to date.

    python pretrain/prepare_audioset.py --root /data/audioset/audio --csv-dir /data/audioset/meta \
        --out data/audioset --shards data/shards/audioset
"""
from __future__ import annotations

import argparse
import csv
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    import ssast  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssast.data.lists import (
    examples,
    pack_shards,
    iter_audio_files,
    probe_audio,
    run_prepare,
    summarize,
    write_json_list,
    write_lines,
)
from ssast.data.manifest import Clip, DataError, read_label_csv

SPLITS = {
    "balanced_train": "balanced_train_segments.csv",
    "unbalanced_train": "unbalanced_train_segments.csv",
    "eval": "eval_segments.csv",
}
LABEL_CSV = "class_labels_indices.csv"
TRAIN_ALL = "train_all.json"  # balanced + unbalanced: the pretraining set (AudioSet-2M), written with --shards
_YTID = r"[A-Za-z0-9_-]{11}"
_REST = re.compile(r"^(?:_(?P<start>\d+(?:\.\d+)?)(?:_\d+(?:\.\d+)?)?)?$")


@dataclass
class Segment:
    """One row of a segment CSV."""

    ytid: str
    start: float
    end: float
    labels: list[str]
    where: str  # "file, line N" for messages


def read_segments(path: Path) -> list[Segment]:
    """Rows of an official segment CSV; comment lines start with '#', the label field is quoted after ', '."""
    if not path.is_file():
        raise DataError(f"segment list not found: {path}; give --csv-dir the folder holding {path.name}")
    segments = []
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f, skipinitialspace=True), start=1):
            if not row or row[0].startswith("#"):
                continue
            where = f"{path}, line {lineno}"
            if len(row) < 4:
                raise DataError(f"{where}: expected YTID, start_seconds, end_seconds, \"labels\"; got {row!r}")
            try:
                start, end = float(row[1]), float(row[2])
            except ValueError:
                raise DataError(f"{where}: start/end {row[1]!r}, {row[2]!r} are not numbers") from None
            labels = [m.strip() for m in ",".join(row[3:]).split(",") if m.strip()]
            segments.append(Segment(row[0].strip(), start, end, labels, where))
    return segments


def parse_audio_name(stem: str) -> list[tuple[str, str | None]]:
    """Possible (YTID, start text) readings of a file name stem; YTIDs are 11 characters and may contain '_' and '-'."""
    readings = []
    for offset in (0, 1):  # 1: the "Y" prefix some tools add
        if offset and not stem.startswith("Y"):
            continue
        ytid = stem[offset : offset + 11]
        if not re.fullmatch(_YTID, ytid):
            continue
        m = _REST.match(stem[offset + 11 :])
        if m:
            readings.append((ytid, m.group("start")))
    return readings


def index_audio(root: Path, progress: bool) -> dict[str, list[tuple[str | None, str]]]:
    """YTID -> [(start text or None, path)] for every audio file under ``root``."""
    index: dict[str, list[tuple[str | None, str]]] = {}
    n = 0
    for path in iter_audio_files(root):
        for ytid, start in parse_audio_name(path.stem):
            index.setdefault(ytid, []).append((start, str(path)))
        n += 1
        if progress and n % 50000 == 0:
            print(f"indexing audio: {n} files", file=sys.stderr)
    return index


def _start_matches(text: str, start: float) -> bool:
    """A file's start (seconds, or integer milliseconds) equals the segment's start."""
    if abs(float(text) - start) < 1e-3:
        return True
    return "." not in text and int(text) == round(start * 1000)


def find_audio(seg: Segment, index: dict[str, list[tuple[str | None, str]]]) -> str | None:
    """The file of a segment: one named with its start, else one named by the YTID alone."""
    candidates = index.get(seg.ytid, [])
    for start, path in candidates:
        if start is not None and _start_matches(start, seg.start):
            return path
    for start, path in candidates:
        if start is None:
            return path
    return None


def _copy_if_changed(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_file() and dst.read_bytes() == src.read_bytes():
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="folder of downloaded segment audio (searched recursively)")
    p.add_argument("--csv-dir", help="folder with the segment CSVs and class_labels_indices.csv (default: --root)")
    p.add_argument("--label-csv", help=f"the label CSV (default: CSV_DIR/{LABEL_CSV})")
    p.add_argument("--out", default="data/audioset", help="output folder for the lists (default: %(default)s)")
    p.add_argument("--splits", help=f"comma-separated subset of {','.join(SPLITS)} (default: those whose CSV exists)")
    p.add_argument("--shards", metavar="DIR", help="also pack balanced + unbalanced train into shards here "
                                                   "(e.g. data/shards/audioset) for pretraining")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--workers", type=int, default=8, help="threads for header checks, processes for shards")
    p.add_argument("--no-check-audio", action="store_true", help="skip reading every file's header "
                                                                 "(no sample-rate check; hours from the CSVs)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.root)
    csv_dir = Path(args.csv_dir) if args.csv_dir else root
    out = Path(args.out)
    progress = not args.quiet
    if not root.is_dir():
        raise DataError(f"--root {root}: no such folder; give the folder of downloaded AudioSet audio")
    label_csv = Path(args.label_csv) if args.label_csv else csv_dir / LABEL_CSV
    if not label_csv.is_file():
        raise DataError(f"{label_csv}: not found; pass --label-csv or put {LABEL_CSV} in --csv-dir")
    labels = read_label_csv(label_csv)
    if args.splits:
        splits = [s.strip() for s in args.splits.split(",") if s.strip()]
        unknown = [s for s in splits if s not in SPLITS]
        if unknown:
            raise DataError(f"--splits: unknown split {unknown[0]!r}; choose from {', '.join(SPLITS)}")
    else:
        splits = [s for s, name in SPLITS.items() if (csv_dir / name).is_file()]
        if not splits:
            raise DataError(f"{csv_dir}: none of {', '.join(SPLITS.values())} found; give --csv-dir the folder "
                            f"holding AudioSet's segment CSVs")
    segments = {s: read_segments(csv_dir / SPLITS[s]) for s in splits}
    for s, segs in segments.items():
        for seg in segs:
            for mid in seg.labels:
                if mid not in labels:
                    raise DataError(f"{seg.where}: label {mid!r} is not in {label_csv}; use the label CSV that "
                                    f"belongs to this AudioSet release")

    index = index_audio(root, progress)
    found: dict[str, list[tuple[Segment, str]]] = {}
    missing_lines: list[str] = []
    for s, segs in segments.items():
        found[s] = []
        for seg in segs:
            path = find_audio(seg, index)
            if path is None:
                missing_lines.append(f"{s} {seg.ytid} {seg.start:.3f}")
            else:
                found[s].append((seg, path))

    probe = None
    if not args.no_check_audio:
        paths = sorted({p for pairs in found.values() for _, p in pairs})
        probe = probe_audio(paths, workers=args.workers, progress=progress)
        bad = {p for p, _ in probe.bad}
        found = {s: [(seg, p) for seg, p in pairs if p not in bad] for s, pairs in found.items()}

    out.mkdir(parents=True, exist_ok=True)
    clips = {s: [Clip(p, seg.labels, seg.ytid) for seg, p in pairs] for s, pairs in found.items()}
    for s in splits:
        write_json_list(out / f"{s}.json", clips[s])
    _copy_if_changed(label_csv, out / LABEL_CSV)
    write_lines(out / "missing.txt", missing_lines)

    if probe is not None:
        seconds = {s: probe.seconds(c.path for c in clips[s]) for s in splits}
    else:
        seconds = {s: sum(seg.end - seg.start for seg, _ in found[s]) for s in splits}
    print(f"AudioSet lists in {out} ({len(labels)} classes in {out / LABEL_CSV}):")
    print(summarize(clips, seconds))
    for s in splits:
        print(f"  {s}: {len(found[s])} of {len(segments[s])} listed segments available")
    if missing_lines:
        print(f"missing on disk: {len(missing_lines)} segments (listed in {out / 'missing.txt'}), e.g. "
              + examples(missing_lines))
    if probe is not None:
        for line in probe.report():
            print(line)

    if args.shards:
        train_splits = [s for s in ("balanced_train", "unbalanced_train") if s in clips]
        if not train_splits:
            raise DataError("--shards packs the training splits, but neither balanced_train nor unbalanced_train "
                            "was prepared; drop --splits or include them")
        seen: set[str] = set()
        train_all = []
        for s in train_splits:
            for c in clips[s]:
                if c.path not in seen:  # a segment listed in both CSVs is packed once
                    seen.add(c.path)
                    train_all.append(c)
        write_json_list(out / TRAIN_ALL, train_all)
        pack_shards(out / TRAIN_ALL, args.shards, shard_size=args.shard_size, workers=args.workers,
                    label_csv=str(out / LABEL_CSV), progress=progress)
    return 0


if __name__ == "__main__":
    sys.exit(run_prepare(main, "prepare_audioset"))
