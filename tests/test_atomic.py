"""Atomic writes leave files and folders with the permissions a plain write would (not mkstemp's private 0600)."""
from __future__ import annotations

import os
import stat

from ssast.atomic import atomic_write_dir, atomic_write_text


def test_atomic_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_dir(tmp_path / "d", lambda d: (d / "f").write_text("y"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert (tmp_path / "a.txt").read_text() == "x" and (tmp_path / "d" / "f").read_text() == "y"
