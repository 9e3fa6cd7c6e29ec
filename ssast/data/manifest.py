"""Clip lists: the SSAST JSON format (and JSON Lines), folders of audio, and the AudioSet-style label CSV.

The readers take users' existing files as they are: ``{"data": [{"wav": path, "labels": "mid1,mid2"}, ...]}`` with
paths relative to the JSON file allowed, and ``index,mid,display_name`` label files with a header line.
Every problem raises :class:`DataError` naming the file, and the line or entry.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


class DataError(ValueError):
    """A problem in a clip list, folder or label file; the message names the file and the entry."""


@dataclass
class Clip:
    """One audio clip of a data source: where it is, its label ids (mids), and a unique key for messages."""

    path: str
    labels: list[str] = field(default_factory=list)
    key: str = ""


class LabelSet:
    """The classes of a task in index order: label ids (AudioSet mids, or names) and display names."""

    def __init__(self, ids: Sequence[str], names: Sequence[str] | None = None, source: str = "") -> None:
        self.ids = [str(i) for i in ids]
        self.names = [str(n) for n in names] if names is not None else list(self.ids)
        self.source = source or "<label list>"
        if len(self.names) != len(self.ids):
            raise DataError(f"{self.source}: {len(self.ids)} label ids but {len(self.names)} names")
        self._index: dict[str, int] = {}
        for i, mid in enumerate(self.ids):
            if mid in self._index:
                raise DataError(f"{self.source}: label {mid!r} appears twice (indices {self._index[mid]} and {i})")
            self._index[mid] = i

    @classmethod
    def from_names(cls, names: Iterable[str]) -> "LabelSet":
        """Classes named by themselves (e.g. folder names), sorted for a stable index order."""
        names = sorted(set(names))
        return cls(names, names, source="<class names>")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, mid: str) -> bool:
        return mid in self._index

    def __repr__(self) -> str:
        return f"LabelSet({len(self)} classes from {self.source})"

    def index_of(self, mid: str) -> int:
        """Column of a label id; DataError when it is not one of the classes."""
        try:
            return self._index[mid]
        except KeyError:
            raise DataError(f"label {mid!r} is not in {self.source}; add it there or fix the clip list") from None

    def encode(self, mids: Iterable[str]) -> np.ndarray:
        """Multi-hot float32 vector of length len(self) for a clip's label ids."""
        y = np.zeros(len(self), dtype=np.float32)
        for mid in mids:
            y[self.index_of(mid)] = 1.0
        return y


def read_label_csv(path: str | Path) -> LabelSet:
    """Read ``index,mid,display_name`` (header line optional, names may be quoted); rows are ordered by index."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    rows: list[tuple[int, str, str]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save the label CSV as UTF-8") from None
    with io.StringIO(text, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if lineno == 1 and not row[0].strip().lstrip("-").isdigit():
                continue  # header line
            if len(row) < 3:
                raise DataError(
                    f"{path}, line {lineno}: expected 3 columns index,mid,display_name, got {len(row)}: {row!r}"
                )
            try:
                idx = int(row[0])
            except ValueError:
                raise DataError(f"{path}, line {lineno}: index {row[0]!r} is not an integer") from None
            rows.append((idx, row[1].strip(), ",".join(row[2:]).strip()))
    if not rows:
        raise DataError(f"{path}: no labels found (expected lines index,mid,display_name)")
    rows.sort(key=lambda r: r[0])
    indices = [r[0] for r in rows]
    if indices != list(range(len(rows))):
        raise DataError(f"{path}: indices must be 0..{len(rows) - 1} without gaps or repeats")
    return LabelSet([r[1] for r in rows], [r[2] for r in rows], source=str(path))


def _parse_labels(value: object, where: str) -> list[str]:
    """Labels of one entry: a comma-separated string (the SSAST format) or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [m.strip() for m in value.split(",") if m.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(m, str) for m in value):
        return [m.strip() for m in value if m.strip()]
    raise DataError(f"{where}: 'labels' must be a string like \"mid1,mid2\" or a list of strings, got {value!r}")


def _entry_to_clip(entry: object, base: Path, where: str) -> Clip:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object like {{\"wav\": path, \"labels\": \"mid1,mid2\"}}, got {entry!r}")
    wav = entry.get("wav")
    if not isinstance(wav, str) or not wav:
        raise DataError(f"{where}: missing the 'wav' path (keys present: {', '.join(map(str, entry)) or 'none'})")
    path = wav if os.path.isabs(wav) else str(base / wav)
    return Clip(path=path, labels=_parse_labels(entry.get("labels"), where), key=wav)


def read_json_list(path: str | Path, labels: LabelSet | None = None) -> list[Clip]:
    """Read a SSAST JSON list or a JSON Lines file into clips; relative paths resolve against the file's folder.

    When ``labels`` is given, every label must be one of its classes (DataError names the file, entry and label).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"clip list not found: {path}")
    base = path.parent
    text = path.read_text(encoding="utf-8")
    entries: list[tuple[str, object]] = []
    as_lines = path.suffix.lower() == ".jsonl"
    if not as_lines:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            first = next((ln for ln in text.splitlines() if ln.strip()), "")
            try:
                one_line_object = isinstance(json.loads(first), dict)
            except json.JSONDecodeError:
                one_line_object = False
            if not one_line_object:
                raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
            as_lines = True  # JSON Lines under a .json name
        else:
            if isinstance(doc, dict) and isinstance(doc.get("data"), list):
                items = doc["data"]
            elif isinstance(doc, list):
                items = doc
            else:
                raise DataError(f"{path}: expected {{\"data\": [{{\"wav\": ..., \"labels\": ...}}, ...]}}")
            entries = [(f"{path}, entry {i}", item) for i, item in enumerate(items)]
    if as_lines:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append((f"{path}, line {lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {lineno}: malformed JSON ({e.msg}, column {e.colno})") from None
    clips = [_entry_to_clip(item, base, where) for where, item in entries]
    if labels is not None:
        for (where, _), clip in zip(entries, clips):
            for mid in clip.labels:
                if mid not in labels:
                    raise DataError(
                        f"{where}: label {mid!r} is not in {labels.source}; add it there or fix the entry"
                    )
    return clips


def list_audio_folder(root: str | Path) -> list[Clip]:
    """Every wav/flac/ogg/mp3 under ``root`` (recursively), sorted by relative path; unlabeled."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"audio folder not found: {root}")
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for fn in filenames:
            if fn.lower().endswith(AUDIO_EXTENSIONS) and not fn.startswith("."):
                found.append(os.path.relpath(os.path.join(dirpath, fn), root))
    found.sort(key=lambda p: Path(p).as_posix())
    if not found:
        raise DataError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found in this folder or below")
    return [Clip(path=str(root / rel), labels=[], key=Path(rel).as_posix()) for rel in found]


def check_files(clips: Sequence[Clip], source_name: str = "") -> list[str]:
    """Paths of the clips whose file does not exist (checked in parallel threads: network disks are slow)."""
    paths = [c.path for c in clips]
    if len(paths) > 2000:
        with ThreadPoolExecutor(max_workers=16) as pool:
            exists = list(pool.map(os.path.isfile, paths, chunksize=256))
    else:
        exists = [os.path.isfile(p) for p in paths]
    return [p for p, ok in zip(paths, exists) if not ok]


def report_missing(
    missing: Sequence[str], source_name: str, total: int, *, allow_missing: bool = False
) -> str | None:
    """Raise DataError listing the count and first 5 missing files, or warn and return the text when allowed."""
    if not missing:
        return None
    # a folder where a clip should be is not "missing": say what is there
    shown = "\n  ".join(p + (" (a folder, not an audio file)" if os.path.isdir(p) else "") for p in missing[:5])
    more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
    text = f"{source_name}: {len(missing)} of {total} files are missing, e.g.:\n  {shown}{more}"
    if not allow_missing:
        raise DataError(text + "\nFix the paths, or set data.allow_missing=true to skip these clips.")
    # a plain line on stderr: warnings.warn would add this module's file, line and source text
    print(f"warning: {text}\n(skipping them: data.allow_missing=true)", file=sys.stderr)
    return text
