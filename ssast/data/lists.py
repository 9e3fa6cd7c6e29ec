"""Writers for data preparation: SSAST JSON lists and label CSVs (atomic, idempotent), audio header probes and
summaries.

The recipes in ``pretrain/`` and ``finetune/`` turn each publisher's folder layout into our data sources with these
pieces; the readers are in :mod:`ssast.data.manifest`, the shard writer in :mod:`ssast.data.shard_writer`. Writing
the same content twice leaves the file untouched, so a re-run of a prepare script changes nothing (not even
modification times).
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

from ssast.atomic import atomic_write_text
from ssast.audio.io import AudioError, audio_info
from ssast.data.manifest import Clip, DataError
from ssast.data.progress import parallel_map
from ssast.environment import EnvironmentMismatch

T = TypeVar("T")
_EXAMPLES = 5  # problems listed by name in a report; the rest are counted


def _write_if_changed(path: Path, text: str) -> bool:
    """Atomically write ``text`` unless the file already holds exactly it; True when the file was (re)written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
    return True


def list_path(audio: str | Path, list_dir: str | Path) -> str:
    """How a list in ``list_dir`` names ``audio``: relative (POSIX) when inside that folder, so the folder can move
    as a whole; absolute otherwise (publisher folders stay where they are)."""
    a = Path(os.path.abspath(audio))
    d = Path(os.path.abspath(list_dir))
    try:
        return a.relative_to(d).as_posix()
    except ValueError:
        return a.as_posix()


def write_json_list(path: str | Path, clips: Iterable[Clip]) -> int:
    """Write clips as a SSAST JSON list ``{"data": [{"wav", "labels"}]}`` (labels joined by ","); returns the count.

    Paths inside the list's folder are written relative to it, others absolute (see :func:`list_path`). One entry
    per line keeps large lists diffable; the file is only rewritten when its content changes.
    """
    path = Path(path)
    rows = []
    for c in clips:
        for mid in c.labels:
            if "," in mid:
                raise DataError(f"{path}: label {mid!r} of {c.path} contains a comma; the SSAST format joins labels with ','")
        entry = {"wav": list_path(c.path, path.parent), "labels": ",".join(c.labels)}
        rows.append(json.dumps(entry, ensure_ascii=False))
    text = '{"data": [\n' + ",\n".join(rows) + "\n]}\n" if rows else '{"data": []}\n'
    _write_if_changed(path, text)
    return len(rows)


def write_label_csv(path: str | Path, ids: Sequence[str], names: Sequence[str] | None = None) -> int:
    """Write ``index,mid,display_name`` (AudioSet's class_labels_indices.csv layout); returns the class count."""
    names = list(ids) if names is None else list(names)
    if len(names) != len(ids):
        raise ValueError(f"{len(ids)} label ids but {len(names)} names")
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise DataError(f"{path}: label id {dup!r} appears twice")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "mid", "display_name"])
    for i, (mid, name) in enumerate(zip(ids, names)):
        w.writerow([i, mid, name])
    _write_if_changed(Path(path), buf.getvalue())
    return len(ids)


def write_splits(out: str | Path, splits: Mapping[str, Sequence[Clip]], label_ids: Sequence[str],
                 label_names: Sequence[str] | None, probe: "ProbeResult") -> dict[str, float]:
    """Write ``labels.csv`` and one ``{split}.json`` per split under ``out``; returns seconds of audio per split."""
    out = Path(out)
    write_label_csv(out / "labels.csv", label_ids, label_names)
    for name, clips in splits.items():
        write_json_list(out / f"{name}.json", clips)
    return {name: probe.seconds(c.path for c in clips) for name, clips in splits.items()}


def pack_shards(list_file: str | Path, shard_dir: str | Path, *, shard_size: int, workers: int,
                max_seconds: float | None = None, label_csv: str | None = None, progress: bool = True) -> dict:
    """Pack a written list into WebDataset shards (``ssast prepare``) and print what was written."""
    from ssast.data.shard_writer import prepare_shards

    idx = prepare_shards(str(list_file), str(shard_dir), shard_size=shard_size, workers=workers,
                         max_seconds=max_seconds, label_csv=label_csv, progress=progress)
    print(f"shards: {len(idx['shards'])} in {shard_dir}, {idx['num_clips']} clips, "
          f"{format_hours(idx['total_seconds'])}"
          + (f", skipped {sum(idx['skipped'].values())} bad clips" if idx["skipped"] else ""))
    return idx


def write_lines(path: str | Path, lines: Iterable[str]) -> None:
    """A plain text report (e.g. missing.txt), one item per line, written only when it changes."""
    text = "".join(f"{ln}\n" for ln in lines)
    _write_if_changed(Path(path), text)


# ---------------------------------------------------------------------------------------------------------------
# audio header checks


@dataclass
class ProbeResult:
    """Headers of a set of audio files: (frames, sample rate, channels) per readable file, and the unreadable ones."""

    info: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def seconds(self, paths: Iterable[str] | None = None) -> float:
        """Total duration of ``paths`` (default: every readable file)."""
        keys = self.info.keys() if paths is None else paths
        total = 0.0
        for p in keys:
            if p in self.info:
                frames, sr, _ = self.info[p]
                total += frames / sr
        return total

    def rates(self) -> Counter:
        return Counter(sr for _, sr, _ in self.info.values())

    def report(self, expected_rate: int | None = None, expected_channels: int | None = None) -> list[str]:
        """Lines describing sample rates, channel counts and unreadable files that differ from what is expected."""
        lines = []
        rates = self.rates()
        if expected_rate is not None:
            odd = {r: n for r, n in rates.items() if r != expected_rate}
            if odd:
                desc = ", ".join(f"{n} at {r} Hz" for r, n in sorted(odd.items()))
                first = next(p for p, (_, sr, _) in self.info.items() if sr != expected_rate)
                lines.append(f"unexpected sample rates (expected {expected_rate} Hz): {desc}, e.g. {first}; "
                             f"they are resampled to 16 kHz when loaded")
        elif len(rates) > 0:
            lines.append("sample rates: " + ", ".join(f"{n} at {r} Hz" for r, n in sorted(rates.items()))
                         + ("" if set(rates) == {16000} else "; other rates are resampled to 16 kHz when loaded"))
        if expected_channels is not None:
            odd_ch = [p for p, (_, _, ch) in self.info.items() if ch != expected_channels]
            if odd_ch:
                lines.append(f"{len(odd_ch)} files with other than {expected_channels} channel(s), e.g. {odd_ch[0]}; "
                             f"channels are averaged when loaded")
        if self.bad:
            shown = "; ".join(r for _, r in self.bad[:_EXAMPLES])
            lines.append(f"{len(self.bad)} unreadable files left out of the lists: {shown}")
        return lines


def _probe_one(path: str) -> tuple[str, tuple[int, int, int] | None, str]:
    try:
        info = audio_info(path)
    except AudioError as e:
        return path, None, str(e)
    if info[0] <= 0:
        return path, None, f"empty: {path}: the file contains no samples"
    return path, info, ""


def probe_audio(paths: Sequence[str], *, workers: int = 8, progress: bool = True) -> ProbeResult:
    """Read the header of every file (in threads: network disks are slow) to get durations and sample rates."""
    result = ProbeResult()
    for path, info, reason in parallel_map(_probe_one, list(paths), workers=workers, desc="reading headers",
                                           progress=progress):
        if info is None:
            result.bad.append((path, reason))
        else:
            result.info[path] = info
    return result


# ---------------------------------------------------------------------------------------------------------------
# splits and summaries


def stratified_split(
    items: Sequence[T], label_of: Callable[[T], str], fractions: Mapping[str, float], seed: int = 0,
    rest: str = "train",
) -> dict[str, list[T]]:
    """Split items at random per class: each named split gets ``round(n * fraction)`` of every class, ``rest`` the
    remainder (at least one per class). Deterministic for a seed and the same input order."""
    if sum(fractions.values()) >= 1 or any(f < 0 for f in fractions.values()):
        raise DataError(f"split fractions {dict(fractions)} must be non-negative and sum to less than 1")
    by_class: dict[str, list[T]] = {}
    for x in items:
        by_class.setdefault(label_of(x), []).append(x)
    out: dict[str, list[T]] = {rest: [], **{k: [] for k in fractions}}
    for cls, members in sorted(by_class.items()):
        members = list(members)
        random.Random(f"{seed}/{cls}").shuffle(members)  # per-class seed: adding a class leaves the others alone
        start = 0
        for name, frac in fractions.items():
            n = min(round(len(members) * frac), max(len(members) - start - 1, 0))
            out[name].extend(members[start : start + n])
            start += n
        out[rest].extend(members[start:])
    return out


def format_hours(seconds: float) -> str:
    """Durations as hours with enough digits for tiny test corpora too."""
    h = seconds / 3600
    return f"{h:.1f} h" if h >= 10 else f"{h:.3f} h"


def summarize(splits: Mapping[str, Sequence[Clip]], seconds: Mapping[str, float] | None = None,
              max_classes: int = 6) -> str:
    """Compact text: clips (and hours) per split and the class counts (smallest and largest when there are many)."""
    lines = []
    for name, clips in splits.items():
        counts = Counter(m for c in clips for m in c.labels)
        head = f"  {name}: {len(clips)} clips"
        if seconds is not None and name in seconds:
            head += f", {format_hours(seconds[name])}"
        if counts:
            head += f", {len(counts)} classes"
            ordered = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))
            if len(ordered) <= max_classes:
                head += " (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")"
            else:
                lo, hi = ordered[: max_classes // 2], ordered[-(max_classes // 2):]
                head += (" (fewest: " + ", ".join(f"{k} {v}" for k, v in lo)
                         + "; most: " + ", ".join(f"{k} {v}" for k, v in hi) + ")")
        lines.append(head)
    return "\n".join(lines)


def examples(items: Sequence[str], limit: int = _EXAMPLES) -> str:
    """The first few items and a count of the rest, for one-line reports."""
    shown = ", ".join(items[:limit])
    return shown + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


def iter_audio_files(root: str | Path, exts: Sequence[str] = (".wav", ".flac", ".ogg", ".mp3")) -> Iterator[Path]:
    """Audio files under ``root`` (recursively, sorted walk, hidden files skipped)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for fn in sorted(filenames):
            if fn.lower().endswith(tuple(exts)) and not fn.startswith("."):
                yield Path(dirpath) / fn


def run_prepare(main: Callable[[list[str] | None], int], prog: str, argv: list[str] | None = None) -> int:
    """Run a prepare script's ``main``; user errors (bad root, bad file) end in one line naming the file, exit 2."""
    try:
        return main(argv)
    except (DataError, AudioError, EnvironmentMismatch, FileNotFoundError, NotADirectoryError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
