"""Shards, sidecars and indexes read from URLs as the webdataset ecosystem names them.

``https://host/shard-000001.tar`` and ``http://`` (read with urllib, so a dropped connection is an error here rather
than a silently short stream), ``pipe:COMMAND`` (the command's standard output, e.g. ``pipe:aws s3 cp
s3://bucket/shard-000001.tar -`` or ``pipe:gcloud storage cat gs://bucket/shard-000001.tar``; webdataset's ``gopen``,
which fails when the command exits non-zero) and ``file:PATH`` (a local path). A file beside a shard (its sidecar,
the index) is named by replacing the shard's file name inside the URL, so it is read through the same scheme.

A shard whose stream breaks is opened again, up to ``retries`` times with a doubling wait, and the clips already
given are skipped, so no clip comes twice; after the last try one warning line names the URL and the clips lost,
and the lost clips come out as skipped items (reason ``lost``) that the loader counts with the other skips.
"""
from __future__ import annotations

import re
import sys
import time
import urllib.error
import urllib.request
from typing import Iterator

HTTP = ("http://", "https://")
URL_PREFIXES = HTTP + ("pipe:", "file:")
RETRIES = 3  # opens after the first that a broken shard gets
RETRY_WAIT_S = 1.0  # before the first retry; doubles each time
TIMEOUT_S = 60.0  # an HTTP connection silent this long counts as broken


def is_url(source: str) -> bool:
    """True for the URL forms read here (http(s), pipe:, file:); plain paths are not URLs."""
    return str(source).startswith(URL_PREFIXES)


def local_path(source: str) -> str:
    """``file:PATH`` as a plain path; anything else unchanged."""
    return source[len("file:"):] if source.startswith("file:") else source


class _WholeResponse:
    """An HTTP response that raises when the connection ends before Content-Length bytes came: http.client returns
    a short read then, and a tar cut between two members would end as a shorter, valid-looking archive."""

    def __init__(self, response) -> None:
        self.response = response
        length = response.headers.get("Content-Length")
        self.expected = int(length) if length and length.isdigit() else None
        self.got = 0

    def read(self, size: int = -1) -> bytes:
        data = self.response.read(size)
        self.got += len(data)
        if not data and size != 0 and self.expected is not None and self.got < self.expected:
            raise ConnectionError(f"the connection closed after {self.got} of {self.expected} bytes")
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.response.close()


def open_url(url: str, timeout: float = TIMEOUT_S):
    """A binary stream of ``url`` (a context manager); errors while reading it raise."""
    if url.startswith(HTTP):
        return _WholeResponse(urllib.request.urlopen(url, timeout=timeout))
    from webdataset.gopen import gopen  # lazy: the loader asks is_url() of every source, shards or not

    return gopen(local_path(url) if url.startswith("file:") else url, "rb")


def read_url(url: str, retries: int = RETRIES, wait: float = RETRY_WAIT_S) -> bytes:
    """The whole content of a small file (index, sidecar) at ``url``, with the same retries as shards."""
    for attempt in range(retries + 1):
        try:
            with open_url(url) as f:
                return f.read()
        except urllib.error.HTTPError as e:
            if e.code < 500 or attempt == retries:  # a missing file stays missing
                raise OSError(f"{url}: HTTP {e.code} {e.reason}") from None
        except Exception as e:  # noqa: BLE001 - a broken connection or a command that failed
            if attempt == retries:
                raise OSError(f"{url}: {type(e).__name__}: {e}") from None
        time.sleep(wait * 2 ** attempt)
    raise AssertionError("unreachable")


def beside(url: str, name: str) -> str:
    """The URL of file ``name`` in the shard's folder: its file name replaced (in a pipe: command, the last one)."""
    match = list(re.finditer(r"[^/\s:]+\.tar\b", url)) or list(re.finditer(r"[^/\s:]+\.json\b", url))
    if not match:
        raise ValueError(f"{url}: no shard file name (NAME.tar) to put {name} beside")
    m = match[-1]
    return url[: m.start()] + name + url[m.end():]


def sidecar_url(url: str) -> str:
    """The sidecar (``shard-000012.json``) of a shard URL, read through the same scheme."""
    m = list(re.finditer(r"([^/\s:]+)\.tar\b", url))
    if not m:
        raise ValueError(f"{url}: no shard file name (NAME.tar)")
    return beside(url, m[-1].group(1) + ".json")


def stream_samples(url: str, count: int | None, retries: int = RETRIES, wait: float = RETRY_WAIT_S,
                   stream=None) -> Iterator[dict]:
    """Grouped tar members of the shard at ``url`` (see the module's docstring for breaks and retries).

    ``count``: the shard's clips (from its sidecar or the index), to know how many a break lost; None if unknown."""
    from webdataset import tariterators

    given = 0
    error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(wait * 2 ** (attempt - 1))
        seen = 0
        try:
            with open_url(url) as f:
                for sample in tariterators.group_by_keys(tariterators.tar_file_expander([{"url": url, "stream": f}])):
                    seen += 1
                    if seen > given:  # the clips of an earlier try were given already
                        given += 1
                        yield sample
            return
        except Exception as e:  # noqa: BLE001 - whatever broke the stream (socket, HTTP, tar, command) is retried
            error = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    lost = None if count is None else max(count - given, 0)
    told = f"{lost} clips lost" if lost is not None else "the rest of the shard lost (its clip count is unknown)"
    print(f"ssast: warning: {url}: read failed {retries + 1} times ({error}); {told} after {given} read",
          file=stream or sys.stderr, flush=True)
    reason = f"lost: {url}: the stream broke {retries + 1} times ({error})"
    for i in range(lost if lost is not None else 1):
        yield {"__key__": f"lost-{given + i}", "__error__": reason}
