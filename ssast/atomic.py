"""Crash-safe writing: write a temporary sibling, fsync, rename over the target, fsync the folder.

A reader (or a resumed run) then sees either the old complete file or folder or the new complete one, never half of
one: :func:`atomic_write` for files, :func:`atomic_write_dir` for folders (checkpoints).
:func:`check_output` says before any work starts when an output path cannot be written at all.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, IO

from ssast.config import ConfigError


def fsync_path(path: str | Path) -> None:
    """Flush a file or folder to disk (a folder: so the renames inside it survive a crash); no-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_parents(path: Path) -> list[Path]:
    """Create the missing folders above ``path``; returns them, deepest first, for :func:`_remove_empty`."""
    made = []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        made.append(parent)
        parent = parent.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    return made


def _remove_empty(folders: list[Path]) -> None:
    """Remove folders a failed write created, if it left them empty: a failed command leaves no trace."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            return


def atomic_write(path: str | Path, write: Callable[[IO], None], binary: bool = True) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then fsync and rename it to ``path`` (creating
    its folder; a failure removes the temporary file and any folder it made)."""
    path = Path(path)
    made = _make_parents(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except BaseException:
        _remove_empty(made)
        raise
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: give the permissions a plain open() would
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        _remove_empty(made)
        raise
    fsync_path(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_write_dir(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Fill a sibling ``<name>.tmp-*`` folder with ``write(folder)``, fsync it, then swap it in as ``target``.

    A crash at any point leaves either the old or the new complete folder at ``target``. The swap is one rename
    (Linux ``renameat2(RENAME_EXCHANGE)`` when ``target`` exists); where the exchange is not available the old folder
    is first renamed aside to ``<name>.old-*``, which :func:`aside_copies` finds if the crash fell between the two
    renames. A failing ``write`` leaves nothing behind. Returns ``target``."""
    target = Path(target)
    made = _make_parents(target)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: give the permissions a plain mkdir() would
        write(tmp)
        for f in (*tmp.iterdir(), tmp):
            fsync_path(f)
        _swap_in(tmp, target)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)
        raise
    return target


def aside_copies(target: str | Path) -> list[Path]:
    """Old copies of folder ``target`` that an interrupted :func:`atomic_write_dir` left renamed aside, oldest first."""
    p = Path(target)
    if not p.parent.is_dir():
        return []
    return sorted(p.parent.glob(f"{p.name}.old-*"), key=lambda q: q.stat().st_mtime)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(tmp: Path, target: Path) -> None:
    """Make folder ``tmp`` the folder at ``target``, replacing any old one so a crash leaves old or new intact."""
    parent = target.parent
    if not target.exists():
        os.replace(tmp, target)
    elif _exchange(tmp, target):
        shutil.rmtree(tmp)  # tmp now holds the old folder
    else:
        aside = Path(tempfile.mkdtemp(prefix=f"{target.name}.old-", dir=parent))
        os.rmdir(aside)
        os.replace(target, aside)
        os.replace(tmp, target)
        fsync_path(parent)
        shutil.rmtree(aside)
    fsync_path(parent)
    # Old copies left aside by an earlier interrupted write are superseded now.
    for stale in parent.glob(f"{target.name}.old-*"):
        shutil.rmtree(stale, ignore_errors=True)


def check_output(path: str | Path, *, folder: bool, what: str) -> Path:
    """Raise ConfigError (naming ``what`` and the path) unless ``path`` can be created or written as a folder or a
    file. Creates nothing, so commands call it before their work and a mistyped output loses no results."""
    p = Path(path)
    kind = "folder" if folder else "file"
    if os.path.exists(p):  # os.path: False (not an exception) where a parent is unreadable
        if folder != p.is_dir():
            found = "a folder" if p.is_dir() else "a file"
            raise ConfigError(f"{what} {p}: is {found}, but a {kind} is written there; choose another path")
        if not os.access(p, os.W_OK | (os.X_OK if folder else 0)):
            raise ConfigError(f"{what} {p}: not writable (permissions or a read-only disk); choose another path")
        return p
    parent = p.absolute().parent
    while not os.path.exists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{what} {p}: cannot be created, {parent} is a file and not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{what} {p}: cannot be created, {parent} is not writable (permissions or a read-only disk); "
            "choose another path"
        )
    return p


def source_id(path: str | Path) -> str:
    """A short, stable name of where an output came from (its source's resolved path, hashed: no path is stored),
    so that rerunning a command may replace its own earlier output and nothing else."""
    import hashlib

    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]


def replaceable(out: str | Path, *, holds: Callable[[Path], bool], same: Callable[[Path], bool], kind: str,
                overwrite: bool = False) -> Path:
    """``out`` as a target to write ``kind`` to: new, an empty folder, an earlier ``kind`` made from the same source
    (``same``), or, with ``overwrite``, any earlier ``kind``. Anything else is refused before any work starts, so a
    mistyped path never replaces unrelated files."""
    p = Path(out)
    if not (p.exists() or p.is_symlink()) or (p.is_dir() and not p.is_symlink() and not any(p.iterdir())):
        return p
    if not holds(p):
        raise ConfigError(f"{p}: exists and is not {kind}, so it is not replaced; choose a new output path")
    if not (overwrite or same(p)):
        raise ConfigError(f"{p}: holds {kind} made from another source; not replaced: choose a new output path, "
                          f"or pass --overwrite to replace it")
    return p


# errno -> what the user reads: the ways writing an output fails that the user can fix
WRITE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted", errno.ENOTDIR: "a part of the path is a file, not a folder",
                errno.EISDIR: "is a folder, not a file", errno.EFBIG: "file too large"}


def disk_full(e: BaseException) -> bool:
    """ENOSPC from the OS, or safetensors' / torch's wrapping of it in their own error text."""
    return getattr(e, "errno", None) == errno.ENOSPC or any(
        t in str(e) for t in ("No space left", "StorageFull", "code: 28"))


def write_failure(e: BaseException) -> str | None:
    """One line for a failed write the user can fix (a full or read-only disk, a path through a file); None for
    any other error. Outputs are written atomically, so the line can say that nothing half-written was left."""
    no = getattr(e, "errno", None)
    why = WRITE_ERRNOS.get(no) or ("no space left on the device" if disk_full(e) else None)
    if why is None:
        return None
    where = getattr(e, "filename", None)
    return f"{where + ': ' if where else ''}{why}; no output was left half-written: free space or choose another place"


def atomic_savefig(fig, path: str | Path, **options) -> None:
    """``fig.savefig`` to ``path`` atomically (the format from the suffix): a full disk leaves no broken image."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, **options))
