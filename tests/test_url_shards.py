"""Shards read from URLs (http://, pipe:, file:) against a loopback HTTP server that can drop connections mid-shard."""
from __future__ import annotations

import collections
import functools
import http.server
import json
import shutil
import socket
import threading
from pathlib import Path

import pytest
import torch

from ssast.config import AudioConfig, load_config
from ssast.data.loader import build_loader
from ssast.data.remote import read_url, sidecar_url
from ssast.data.shard_writer import prepare_shards
from ssast.data.shards import ShardDataset
from tests.test_shards import _write_corpus

AUDIO = AudioConfig(target_length=200)
PATTERN = "shard-{000000..000003}.tar"  # 10 clips in shards of 3, 3, 3, 1


class ShardServer(http.server.ThreadingHTTPServer):
    """Serves a folder on 127.0.0.1; ``drops[name] = n`` cuts the next n responses of that file in the middle."""

    daemon_threads = True

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.drops: dict[str, int] = {}
        self.requests: collections.Counter[str] = collections.Counter()
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        name = self.path.lstrip("/")
        self.server.requests[name] += 1
        path = self.server.folder / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.server.drops.get(name, 0) > 0:
            self.server.drops[name] -= 1
            self.wfile.write(data[: len(data) // 2])  # half a shard, then the connection is gone
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("urlcorpus")
    json_path, csv_path, _ = _write_corpus(root)
    out = root / "shards"
    prepare_shards(str(json_path), str(out), shard_size=3, workers=1, label_csv=str(csv_path), progress=False)
    return {"dir": out, "csv": csv_path}


@pytest.fixture
def server(shards):
    srv = ShardServer(shards["dir"])
    thread = threading.Thread(target=functools.partial(srv.serve_forever, poll_interval=0.05), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


def keys_of(url, *, rank=0, world_size=1, num_workers=0, **kw) -> list[str]:
    ds = ShardDataset(url, labels=None, audio=AUDIO, train=False, rank=rank, world_size=world_size, retry_wait=0.01,
                      **kw)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers, collate_fn=lambda x: x,
                                         timeout=60 if num_workers else 0)
    return [item["key"] for item in loader]


def test_url_shards_http_split_over_ranks_and_workers_reads_every_clip_once(shards, server):
    local = keys_of(str(shards["dir"]))
    url = f"{server.url}/{PATTERN}"
    ds = ShardDataset(url, labels=None, audio=AUDIO, train=False)
    assert ds.num_clips == 10  # the sidecars, read over HTTP
    got = [k for rank in (0, 1) for k in keys_of(url, rank=rank, world_size=2, num_workers=2)]
    assert sorted(got) == sorted(local) and len(local) == 10


def test_url_shards_index_pipe_and_file_forms(shards, server):
    local = sorted(keys_of(str(shards["dir"])))
    index = ShardDataset(f"{server.url}/index.json", labels=None, audio=AUDIO, train=False)
    assert index.urls[0] == f"{server.url}/shard-000000.tar" and index.num_clips == 10
    assert sorted(keys_of(f"{server.url}/index.json")) == local
    piped = f"pipe:cat {shards['dir']}/{PATTERN}"
    assert ShardDataset(piped, labels=None, audio=AUDIO, train=False).num_clips == 10  # sidecars via `cat`
    assert sorted(keys_of(piped)) == local
    assert sorted(keys_of(f"file:{shards['dir']}")) == local
    assert json.loads(read_url(sidecar_url(f"pipe:cat {shards['dir']}/shard-000003.tar")))["count"] == 1


def test_url_shards_a_dropped_connection_is_retried_without_duplicates(shards, server, capsys):
    server.drops["shard-000001.tar"] = 2
    keys = keys_of(f"{server.url}/{PATTERN}")
    assert sorted(keys) == sorted(keys_of(str(shards["dir"]))) and len(set(keys)) == 10
    assert server.requests["shard-000001.tar"] == 3
    assert "warning" not in capsys.readouterr().err


def test_url_shards_a_shard_that_keeps_dropping_is_given_up_with_one_warning(shards, server, capsys):
    server.drops["shard-000001.tar"] = 100
    url = f"{server.url}/{PATTERN}"
    ds = ShardDataset(url, labels=None, audio=AUDIO, train=False, retries=2, retry_wait=0.01)
    items = list(ds)
    assert server.requests["shard-000001.tar"] == 3  # bounded: the first try and two retries
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{server.url}/shard-000001.tar" in err[0] and "clips lost" in err[0], err
    good = [i["key"] for i in items if not i.get("bad")]
    lost = [i for i in items if i.get("bad")]
    assert len(good) == len(set(good))  # no clip twice
    assert len(good) + len(lost) == 10 and 1 <= len(lost) <= 3
    assert f"{len(lost)} clips lost" in err[0]
    assert all(i["reason"].startswith("lost: ") for i in lost)


def _config(tmp_path: Path, sources: list[str], csv: Path, *extra):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(json.dumps({"data": {"train": sources}}))  # JSON is YAML: braces stay inside strings
    return load_config(str(cfg_file), ["task=finetune", f"data.label_csv={csv}", "data.num_workers=0",
                                       "data.batch_size=2", "audio.target_length=64", "data.shuffle_buffer=4", *extra])


def test_url_shards_loader_reports_lost_clips_and_resumes_exactly(shards, server, tmp_path, monkeypatch):
    monkeypatch.setattr("ssast.data.remote.RETRY_WAIT_S", 0.01)
    monkeypatch.setattr("ssast.data.shards.RETRY_WAIT_S", 0.01)
    cfg = _config(tmp_path, [f"{server.url}/{PATTERN}"], shards["csv"])
    loader = build_loader(cfg, "train")
    loader.set_epoch(1)
    batches = [b["keys"] for b in loader]
    loader.set_epoch(1, start_batch=2)
    assert [b["keys"] for b in loader] == batches[2:]  # a resume mid-epoch continues exactly

    server.drops["shard-000002.tar"] = 100
    loader = build_loader(cfg, "train")
    loader.set_epoch(1)
    keys = [k for b in loader for k in b["keys"]]
    assert len(keys) == len(set(keys))
    assert loader.skipped["lost"] == 10 - len(keys) >= 1
    assert "lost" in loader.skip_summary()


def test_url_shards_clip_count_from_the_config(shards, tmp_path):
    bare = tmp_path / "bare"  # shards without index or sidecars, as an object store may hold them
    bare.mkdir()
    for tar in shards["dir"].glob("*.tar"):
        shutil.copy(tar, bare / tar.name)
    source = f"pipe:cat {bare}/{PATTERN}"
    assert ShardDataset(source, labels=None, audio=AUDIO, train=False).num_clips is None
    loader = build_loader(_config(tmp_path, [source], shards["csv"], "data.train_clips=10"), "train")
    assert loader.estimated_batches() == 5
