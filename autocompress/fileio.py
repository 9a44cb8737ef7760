"""Files written whole or not at all, and their sha256: the one home of atomic writes and hashing."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def copy_hashed(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Copy ``src`` to ``dst``; returns the sha256 of the bytes copied (read once)."""
    h = hashlib.sha256()
    with open(src, "rb") as f, open(dst, "wb") as g:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            g.write(chunk)
    return h.hexdigest()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically: a reader sees the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)      # as a plain open() would make it (mkstemp's is private)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()      # read once, at import (setting it is process-wide)


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(data, indent=indent, default=str))


@contextmanager
def folder(final: str | os.PathLike, *, replace: bool = False, keep_existing: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary place beside ``final`` and move it there when the block ends without
    an error (a failure, or Ctrl-C, removes it: nothing half-written is ever at ``final``).
    ``replace``: an existing ``final`` is replaced; ``keep_existing``: if ``final`` appeared meanwhile
    (another process finished first), it is kept and this one dropped; otherwise ``final`` must be absent
    or an empty folder."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}-tmp-"))
    os.chmod(tmp, 0o777 & ~_UMASK)            # as a plain mkdir would make it (mkdtemp's is private)
    try:
        yield tmp
        if final.exists() and replace:
            shutil.rmtree(final)
        elif final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        try:
            tmp.rename(final)
        except OSError:
            if not (keep_existing and final.exists()):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
