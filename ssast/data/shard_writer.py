"""Shard writing for ``ssast prepare`` and the recipes: decode a JSON list or a folder, re-encode as FLAC, pack tars.

:func:`prepare_shards` writes the layout of :mod:`ssast.data.shard_format` in parallel (a spawn process pool); the
reader is :mod:`ssast.data.shards`, the JSON list and label writers are in :mod:`ssast.data.lists`.

Writing is crash-safe: a shard is written as ``shard-XXXXXX.tar.tmp`` and fsynced, its sidecar is written
(atomically), and only then does the tar get its final name, so a tar never exists without its sidecar. A shard counts
as done only when both files exist and the sidecar matches the clips it should hold and the tar's size, so an
interrupted run can simply be re-run: finished shards are kept, the rest are (re)written.
"""
from __future__ import annotations

import ctypes
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import webdataset as wds

from ssast.atomic import atomic_write_text, fsync_path
from ssast.audio.io import AudioError, load_audio, require_complete
from ssast.data.progress import Progress
from ssast.data.manifest import Clip, DataError, list_audio_folder, read_json_list, read_label_csv
from ssast.data.shard_format import INDEX_FORMAT, INDEX_NAME, INDEX_VERSION, SAMPLE_RATE, shard_name, sidecar_path

_MAX_EXAMPLES = 5


def member_key(index: int, path: str) -> str:
    """Tar-safe unique key: the clip's position in the source plus its sanitised stem (no dots, no slashes)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem).strip("_")[:64]
    return f"{index:09d}-{stem}" if stem else f"{index:09d}"


def _atomic_write_json(path: str, obj: Any) -> None:
    """Readers never see a half-written index or sidecar."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def _encode_flac(wave: np.ndarray) -> bytes:
    """16-bit FLAC bytes of a float wave, quantised here (x * 32768) so that decoding gives exactly int16 / 32768."""
    pcm = np.clip(np.round(wave.astype(np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _fingerprint(clips: list[tuple[str, list[str], str]], max_seconds: float | None) -> str:
    """Hash of what a shard should contain, so a resumed run never keeps a shard made from other inputs."""
    blob = json.dumps({"clips": clips, "max_seconds": max_seconds, "sr": SAMPLE_RATE}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()


def _shard_done(tar_path: str, fingerprint: str) -> dict | None:
    """The sidecar of a complete shard matching ``fingerprint``, else None (missing, stale or half-written)."""
    side = sidecar_path(tar_path)
    if not (os.path.isfile(tar_path) and os.path.isfile(side)):
        return None
    try:
        with open(side) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if meta.get("fingerprint") != fingerprint or meta.get("tar_bytes") != os.path.getsize(tar_path):
        return None
    return meta


def _write_members(writer: wds.TarWriter, task: dict, max_samples: int | None, stats: dict) -> None:
    """Decode each clip of a shard task and add KEY.flac + KEY.json; bad clips are counted (or raise when strict)."""
    for path, labels, key in task["clips"]:
        try:
            wave = load_audio(path, sample_rate=SAMPLE_RATE, max_samples=max_samples, crop="start")
            if task["strict"]:  # as training's strict mode: a WAV cut short is refused, not packed half
                require_complete(path, path)
        except AudioError as e:
            if task["strict"]:
                raise
            stats["skipped"][e.kind] += 1
            if len(stats["skipped_examples"]) < _MAX_EXAMPLES:
                stats["skipped_examples"].append(str(e))
            continue
        duration = wave.shape[0] / SAMPLE_RATE
        meta = {"labels": labels, "source": path, "duration": duration}
        writer.write({"__key__": key, "flac": _encode_flac(wave), "json": json.dumps(meta).encode()})
        stats["count"] += 1
        stats["duration"] += duration
        stats["labels"].update(labels)


def _write_shard(task: dict) -> dict:
    """Decode, re-encode and write one shard (a pool task: module-level and picklable, so spawn works)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one process per core already; resampling must not oversubscribe
    try:
        return _write_shard_body(task)
    finally:
        torch.set_num_threads(threads)  # with workers=1 this runs in the caller's process: leave it as it was


def _write_shard_body(task: dict) -> dict:
    tar_path = os.path.join(task["out_dir"], shard_name(task["shard"]))
    tmp = tar_path + ".tmp"
    max_samples = None if task["max_seconds"] is None else int(task["max_seconds"] * SAMPLE_RATE)
    stats = {"count": 0, "duration": 0.0, "labels": Counter(), "skipped": Counter(), "skipped_examples": []}
    try:
        with open(tmp, "wb") as f:
            writer = wds.TarWriter(f, encoder=False, mtime=0.0)  # fixed mtime: same input, same bytes
            try:
                _write_members(writer, task, max_samples, stats)
            finally:
                writer.close()  # closes the tar stream only; the file stays open for fsync
            f.flush()
            os.fsync(f.fileno())
        meta = {
            "format": "ssast-shard",
            "shard": shard_name(task["shard"]),
            "count": stats["count"],
            "duration": stats["duration"],
            "labels": dict(sorted(stats["labels"].items())),
            "skipped": dict(sorted(stats["skipped"].items())),
            "skipped_examples": stats["skipped_examples"],
            "fingerprint": task["fingerprint"],
            "tar_bytes": os.path.getsize(tmp),
        }
        # The sidecar first, the tar's final name last: a kill in between leaves a sidecar without its tar (redone
        # on the next run, never read), never a tar without its sidecar. A stale tar from an earlier run goes first,
        # so the new sidecar can never describe it.
        if os.path.exists(tar_path):
            os.remove(tar_path)
        _atomic_write_json(sidecar_path(tar_path), meta)
        os.replace(tmp, tar_path)
        fsync_path(task["out_dir"])
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return meta


def _claim(out_dir: str, source: str, overwrite: bool) -> None:
    """Refuse to write into shards packed from another source (rerunning the same source resumes); with
    ``overwrite``, remove them (shard files and index only) so the two sources never mix."""
    index = os.path.join(out_dir, INDEX_NAME)
    try:
        with open(index) as f:
            old = json.load(f).get("source")
    except (OSError, ValueError, AttributeError):
        return  # no index: a new folder, or an interrupted run whose shards are checked by fingerprint
    if old == os.path.abspath(source):
        return
    if not overwrite:
        raise DataError(f"{out_dir}: holds shards packed from {old}, not {source}; not replaced: choose another "
                        f"output folder, or pass --overwrite to replace them")
    for name in os.listdir(out_dir):
        if re.fullmatch(r"shard-\d{6}\.(tar|json)", name) or name == INDEX_NAME:
            os.remove(os.path.join(out_dir, name))


def _remove_tmp_files(out_dir: str) -> None:
    """Delete temporary shard/sidecar files; they are never a finished shard."""
    for name in os.listdir(out_dir):
        if name.lstrip(".").startswith("shard-") and name.endswith(".tmp"):  # ".shard-*.tmp": ssast.atomic's
            os.remove(os.path.join(out_dir, name))


def _read_source(source: str, label_csv: str | None) -> list[Clip]:
    """Clips of a JSON list or a folder, with labels checked against the CSV when one is given."""
    labels = read_label_csv(label_csv) if label_csv else None
    if os.path.isdir(source):
        clips = list_audio_folder(source)  # unlabeled: nothing to check against the CSV
    elif os.path.isfile(source):
        clips = read_json_list(source, labels)  # DataError names the entry whose label is not in the CSV
    else:
        raise DataError(f"{source}: no such JSON list or folder; give a SSAST JSON list or a folder of audio")
    if not clips:
        raise DataError(f"{source}: no clips found; check the list or the folder's contents")
    return clips


def _die_with_parent(parent: int) -> None:
    """Pool-worker start-up: end this worker when the preparing process dies (even by SIGKILL), so a killed
    `prepare` leaves no orphans writing shards. Linux's parent-death signal, else a watcher thread."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL) != 0:  # 1 = PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl failed")
    except (OSError, AttributeError):
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def prepare_shards(
    source: str,
    out_dir: str,
    *,
    shard_size: int = 1000,
    workers: int = 2,
    label_csv: str | None = None,
    max_seconds: float | None = None,
    strict: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Pack a JSON list or a folder of audio into FLAC tar shards in parallel; resumable; returns the written index.

    Shard i holds source clips [i * shard_size, (i + 1) * shard_size) minus bad clips, which are skipped and counted
    by kind (or raise :class:`AudioError` with ``strict``). ``max_seconds`` keeps only the start of longer clips.
    ``workers`` <= 1 runs in this process; otherwise a spawn-context process pool writes shards concurrently.
    A folder of shards packed from another source is refused, unless ``overwrite`` (its shards are removed first).
    """
    if shard_size < 1:
        raise DataError(f"shard_size must be >= 1, got {shard_size}")
    clips = _read_source(source, label_csv)
    _claim(out_dir, source, overwrite)
    os.makedirs(out_dir, exist_ok=True)
    _remove_tmp_files(out_dir)  # leftovers of an interrupted run
    num_shards = math.ceil(len(clips) / shard_size)
    metas: dict[int, dict] = {}
    todo = []
    for s in range(num_shards):
        part = [
            (os.path.abspath(c.path), list(c.labels), member_key(i, c.path))
            for i, c in enumerate(clips[s * shard_size : (s + 1) * shard_size], start=s * shard_size)
        ]
        fp = _fingerprint(part, max_seconds)
        meta = _shard_done(os.path.join(out_dir, shard_name(s)), fp)
        if meta is not None:
            metas[s] = meta  # resume: finished in an earlier run
        else:
            todo.append(
                {"out_dir": out_dir, "shard": s, "clips": part, "fingerprint": fp,
                 "max_seconds": max_seconds, "strict": strict}
            )
    bar = Progress("prepare", num_shards, progress, done=len(metas), unit="shards")
    try:
        if workers <= 1 or len(todo) <= 1:
            for task in todo:
                metas[task["shard"]] = _write_shard(task)
                bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")  # safe with torch threads and on every platform
            try:
                with ctx.Pool(min(workers, len(todo)), initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
                    for meta in pool.imap_unordered(_write_shard, todo):
                        metas[int(meta["shard"][6:12])] = meta
                        bar.update()
            except BaseException:
                _remove_tmp_files(out_dir)  # the pool is terminated: workers killed mid-shard leave .tmp files
                raise
    finally:
        bar.close()
    ordered = [metas[s] for s in range(num_shards)]
    hist: Counter = Counter()
    skipped: Counter = Counter()
    for m in ordered:
        hist.update(m["labels"])
        skipped.update(m["skipped"])
    index = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "shards": [m["shard"] for m in ordered],
        "counts": [m["count"] for m in ordered],
        "durations": [m["duration"] for m in ordered],
        "num_clips": sum(m["count"] for m in ordered),
        "total_seconds": sum(m["duration"] for m in ordered),
        "label_histogram": dict(sorted(hist.items())),
        "skipped": dict(sorted(skipped.items())),
        "skipped_examples": [e for m in ordered for e in m["skipped_examples"]][:_MAX_EXAMPLES],
        "sample_rate": SAMPLE_RATE,
        "shard_size": shard_size,
        "max_seconds": max_seconds,
        "label_csv": os.path.abspath(label_csv) if label_csv else None,
        "source": os.path.abspath(source),
    }
    _atomic_write_json(os.path.join(out_dir, INDEX_NAME), index)
    return index
