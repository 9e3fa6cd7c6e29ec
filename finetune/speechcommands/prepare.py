#!/usr/bin/env python
"""Speech Commands V2 as distributed -> SSAST lists with the publisher's validation and testing split.

Layout read: ``speech_commands_v0.02/{word}/{speaker}_nohash_{n}.wav`` (16 kHz, 1 s), ``validation_list.txt`` and
``testing_list.txt`` (paths relative to the root); ``_background_noise_/`` is not a word and is left out. Train is
every other clip. Writes ``{out}/{train,valid,test}.json`` and ``{out}/labels.csv`` (the words in sorted order; a
word is its own label id). Re-running changes nothing up to date.

    python finetune/speechcommands/prepare.py --root /data/speech_commands_v0.02 --out data/speechcommands
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

NUM_WORDS_V2 = 35


def read_split_list(path: Path, words: set[str]) -> list[str]:
    """Relative paths of a split file; each must name a word folder (DataError names the line otherwise)."""
    if not path.is_file():
        raise DataError(f"{path}: not found; give --root the speech_commands_v0.02 folder (it holds {path.name})")
    rels = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        rel = line.strip().replace("\\", "/")
        if not rel:
            continue
        word = rel.split("/", 1)[0]
        if "/" not in rel or word not in words:
            raise DataError(f"{path}, line {lineno}: {rel!r} is not {{word}}/{{file}}.wav of a word folder")
        rels.append(rel)
    return rels


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="the speech_commands_v0.02 folder")
    p.add_argument("--out", default="data/speechcommands", help="output folder (default: %(default)s)")
    p.add_argument("--workers", type=int, default=8, help="threads for header checks")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root, out = Path(args.root), Path(args.out)
    if not root.is_dir():
        raise DataError(f"--root {root}: no such folder; give the unpacked speech_commands_v0.02 folder")
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if not words:
        raise DataError(f"{root}: no word folders found; give --root the speech_commands_v0.02 folder")
    valid_rel = read_split_list(root / "validation_list.txt", set(words))
    test_rel = read_split_list(root / "testing_list.txt", set(words))
    every = sorted(f"{w}/{p.name}" for w in words for p in (root / w).glob("*.wav"))
    on_disk = set(every)
    missing = [r for r in valid_rel + test_rel if r not in on_disk]
    both = sorted(set(valid_rel) & set(test_rel))
    if both:
        raise DataError(f"{root}: {len(both)} clips are in both validation_list.txt and testing_list.txt, "
                        f"e.g. {both[0]}")
    held = set(valid_rel) | set(test_rel)
    probe = probe_audio([str(root / r) for r in every], workers=args.workers, progress=not args.quiet)

    def clips_of(rels: list[str]) -> list[Clip]:
        return [Clip(str(root / r), [r.split("/", 1)[0]], r) for r in rels if str(root / r) in probe.info]

    splits = {
        "train": clips_of([r for r in every if r not in held]),
        "valid": clips_of([r for r in valid_rel if r in on_disk]),
        "test": clips_of([r for r in test_rel if r in on_disk]),
    }
    seconds = write_splits(out, splits, words, words, probe)
    print(f"Speech Commands lists in {out}: {len(words)} words ({out / 'labels.csv'})")
    if len(words) != NUM_WORDS_V2:
        print(f"note: found {len(words)} word folders; the V2 release has {NUM_WORDS_V2}")
    print(summarize(splits, seconds))
    if missing:
        print(f"in the split lists but missing on disk: {len(missing)}, e.g. " + examples(missing))
    for line in probe.report(expected_rate=16000, expected_channels=1):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(run_prepare(main, "speechcommands/prepare"))
