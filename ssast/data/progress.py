"""The one progress line every data preparation step prints (lists, header probes, shard writing), and the threaded
map that drives most of them. Shared by :mod:`ssast.data.lists` and :mod:`ssast.data.shard_writer`, so neither
imports the other for it."""
from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Progress:
    """Progress on stderr: a rewritten line on a terminal, otherwise a line every 10% (logs stay short).

    ``done`` starts the count where earlier work left off (a resumed ``prepare`` keeps its finished shards); ``unit``
    names what is counted in the line ("prepare: 3/10 shards").
    """

    def __init__(self, desc: str, total: int, enabled: bool = True, stream=None, *, done: int = 0,
                 unit: str = "") -> None:
        self.desc, self.total, self.done = desc, max(total, 0), done
        self.unit = f" {unit}" if unit else ""
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_time = 0.0
        self._last_decile = -1
        if done:
            self.update(0)  # show where a resumed run starts

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.tty:
            now = time.monotonic()
            if now - self._last_time >= 0.2 or self.done >= self.total:
                self._last_time = now
                self.stream.write(f"\r{self.desc}: {self.done}/{self.total}{self.unit}")
                self.stream.flush()
        else:
            decile = self.done * 10 // self.total
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(f"{self.desc}: {self.done}/{self.total}{self.unit}\n")
                self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def parallel_map(
    fn: Callable[[T], R], items: Sequence[T], *, workers: int = 8, desc: str = "", progress: bool = True
) -> list[R]:
    """``[fn(x) for x in items]`` in threads (file headers and resampling wait on I/O or release the GIL),
    in order, with progress."""
    bar = Progress(desc or "working", len(items), progress)
    out: list[R] = []
    try:
        if workers <= 1 or len(items) < 2:
            for x in items:
                out.append(fn(x))
                bar.update()
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for r in pool.map(fn, items, chunksize=64 if len(items) > 5000 else 1):
                    out.append(r)
                    bar.update()
    finally:
        bar.close()
    return out
