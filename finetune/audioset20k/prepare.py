#!/usr/bin/env python
"""AudioSet-20K lists: the balanced train and eval splits of pretrain/prepare_audioset.py (same options).

Writes ``{out}/balanced_train.json``, ``{out}/eval.json``, ``{out}/class_labels_indices.csv`` and ``missing.txt``;
``--splits`` is fixed to ``balanced_train,eval``. See ``pretrain/prepare_audioset.py --help`` for the options.

    python finetune/audioset20k/prepare.py --root /data/audioset/audio --csv-dir /data/audioset/meta --out data/audioset
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "pretrain"))  # the AudioSet reader lives with the pretraining recipes
try:
    import ssast  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

import prepare_audioset  # noqa: E402

SPLITS_20K = "balanced_train,eval"


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
    return prepare_audioset.main(argv + ["--splits", SPLITS_20K])


if __name__ == "__main__":
    sys.exit(prepare_audioset.run_prepare(main, "audioset20k/prepare"))
