#!/usr/bin/env python
"""AudioSet-20K lists: the balanced train and eval splits of pretrain/prepare_audioset.py (same options).

Writes ``{out}/balanced_train.json``, ``{out}/eval.json``, ``{out}/class_labels_indices.csv`` and ``missing.txt``;
``--splits`` is fixed to ``balanced_train,eval``. See ``pretrain/prepare_audioset.py --help`` for the options.

``--enhanced-list FILE`` also writes ``{out}/balanced_train_enhanced.json``: our balanced-train clips with the labels
of a PSLA label-enhanced list (the authors fine-tune on ``balanced_train_data_type1_2_mean.json``, ssast
src/finetune/audioset/run_as.sh:48; AST's README says the official labels give a slightly worse result). Its clips are
matched to ours by YouTube ID (the file names of both lists); ours that it lacks are left out, as the authors train on
its clips only. finetune/audioset20k/run.sh trains on it when it exists.

    python finetune/audioset20k/prepare.py --root /data/audioset/audio --csv-dir /data/audioset/meta --out data/audioset
    python finetune/audioset20k/prepare.py ... --enhanced-list balanced_train_data_type1_2_mean.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "pretrain"))  # the AudioSet reader lives with the pretraining recipes
try:
    import ssast  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

import prepare_audioset  # noqa: E402
from ssast.data.lists import write_json_list  # noqa: E402
from ssast.data.manifest import Clip, DataError, read_json_list, read_label_csv  # noqa: E402

SPLITS_20K = "balanced_train,eval"
ENHANCED = "balanced_train_enhanced.json"


def _ytids(path: str) -> list[str]:
    """The YouTube IDs a clip's file name may hold (the readings of prepare_audioset.parse_audio_name)."""
    return [ytid for ytid, _ in prepare_audioset.parse_audio_name(Path(path).stem)]


def write_enhanced(out: Path, enhanced_list: Path) -> str:
    """``out/balanced_train_enhanced.json``: the clips of ``out/balanced_train.json`` found in ``enhanced_list``, with
    its labels; returns the line that says how many."""
    labels = read_label_csv(out / prepare_audioset.LABEL_CSV)
    theirs: dict[str, list[str]] = {}
    for clip in read_json_list(enhanced_list, labels):  # a label outside the CSV is named with its entry
        for ytid in _ytids(clip.path):
            theirs.setdefault(ytid, clip.labels)
    if not theirs:
        raise DataError(f"--enhanced-list {enhanced_list}: no entry names a YouTube ID (wav file names such as "
                        "Y--PJHxphWEs.wav or --PJHxphWEs_30000.wav are expected)")
    ours = read_json_list(out / "balanced_train.json", labels)
    kept, relabelled = [], 0
    for clip in ours:
        ytid = next((y for y in _ytids(clip.path) if y in theirs), None)
        if ytid is not None:
            kept.append(Clip(clip.path, theirs[ytid], ytid))
            relabelled += sorted(theirs[ytid]) != sorted(clip.labels)
    if not kept:
        raise DataError(f"--enhanced-list {enhanced_list}: none of its {len(theirs)} clips is in "
                        f"{out / 'balanced_train.json'} (matched by YouTube ID)")
    write_json_list(out / ENHANCED, kept)
    return (f"{out / ENHANCED}: {len(kept)} of {len(ours)} balanced-train clips with the labels of {enhanced_list} "
            f"({relabelled} relabelled; {len(ours) - len(kept)} not in it, left out)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--splits" or a.startswith("--splits=") for a in argv):
        print("audioset20k/prepare: --splits is fixed to balanced_train,eval here; use "
              "pretrain/prepare_audioset.py for other splits", file=sys.stderr)
        return 2
    if any(a == "--shards" or a.startswith("--shards=") for a in argv):
        print("audioset20k/prepare: --shards packs the pretraining set; use pretrain/prepare_audioset.py",
              file=sys.stderr)
        return 2
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--enhanced-list", type=Path)
    known, rest = extra.parse_known_args(argv)
    if known.enhanced_list is not None and not known.enhanced_list.is_file():  # before the long scan of the audio
        raise DataError(f"--enhanced-list {known.enhanced_list}: no such file")
    code = prepare_audioset.main(rest + ["--splits", SPLITS_20K])
    if code == 0 and known.enhanced_list is not None:
        out = Path(prepare_audioset.build_parser().parse_known_args(rest)[0].out)
        print(write_enhanced(out, known.enhanced_list), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(prepare_audioset.run_prepare(main, "audioset20k/prepare"))
