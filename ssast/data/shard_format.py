"""The on-disk layout of a shard directory, in one place for the writer (:mod:`ssast.data.shard_writer`) and the
reader (:mod:`ssast.data.shards`)::

    shard-000000.tar   members KEY.flac (16 kHz mono, 16-bit FLAC) and KEY.json {"labels", "source", "duration"}
    shard-000000.json  sidecar: count, duration, label histogram, skipped clips, fingerprint, tar size
    ...
    index.json         {"format": "ssast-shards", "version": 1, "shards", "counts", "num_clips", ...}
"""
from __future__ import annotations

SAMPLE_RATE = 16000
INDEX_NAME = "index.json"
INDEX_FORMAT = "ssast-shards"
INDEX_VERSION = 1


def shard_name(i: int) -> str:
    """File name of shard ``i`` (``shard-000012.tar``)."""
    return f"shard-{i:06d}.tar"


def sidecar_path(tar_path: str) -> str:
    """The JSON sidecar beside a tar (``shard-000012.json``): its count, duration and label histogram."""
    return tar_path[: -len(".tar")] + ".json"
