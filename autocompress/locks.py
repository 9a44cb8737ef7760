"""File locks that keep work on one machine from getting in each other's way (flock: released by the
kernel when a process dies, so a crash never leaves a lock behind).

- ``measuring()`` / ``training()``: a writer-preferring readers-writer lock. Trials hold it shared
  while they train or evaluate; a latency measurement holds it alone, and once it waits, no new
  trainer may start until it has measured (plain flock would let a stream of trainers starve it).
- ``search_slot()``: one search at a time per machine; a second one waits its turn.
- ``store_lock(db)``: one search at a time per SQLite store; a second one is refused.
"""
from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def _lock_dir() -> Path:
    base = os.environ.get("AUTOCOMPRESS_LOCK_FILE")
    return Path(base).parent if base else Path(tempfile.gettempdir())


def machine_lock_file() -> Path:
    return Path(os.environ.get("AUTOCOMPRESS_LOCK_FILE") or Path(tempfile.gettempdir()) / "autocompress-machine.lock")


@contextmanager
def _flock(path: Path, mode: int) -> Iterator[int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _turnstile() -> Path:
    main = machine_lock_file()
    return main.with_name(main.name + ".turnstile")


@contextmanager
def measuring() -> Iterator[None]:
    """Hold the machine alone (for timing): waits for every trainer; new trainers wait behind it."""
    with _flock(_turnstile(), fcntl.LOCK_EX), _flock(machine_lock_file(), fcntl.LOCK_EX):
        yield


@contextmanager
def training() -> Iterator[None]:
    """Hold the machine for work that may run side by side (training, evaluation), never beside a
    measurement."""
    with _flock(_turnstile(), fcntl.LOCK_EX):    # passes at once unless a measurement waits
        pass
    with _flock(machine_lock_file(), fcntl.LOCK_SH):
        yield


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 200).decode(errors="replace").strip() or "another process"


def _write_holder(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text.encode())


@contextmanager
def search_slot(who: str, wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """One search (or teacher fine-tune) at a time on this machine: a second waits its turn instead of
    fighting the first for the cores. ``wait(holder)`` is called once if it has to wait."""
    path = _lock_dir() / "autocompress-search.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if wait:
                wait(_holder(fd))
            fcntl.flock(fd, fcntl.LOCK_EX)
        _write_holder(fd, who)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class StoreBusy(Exception):
    """Another search holds this SQLite store."""


@contextmanager
def store_lock(db: Path, who: str) -> Iterator[None]:
    """One search at a time per SQLite file (SQLite serialises writers; two searches writing trials and
    Optuna's study into one file at once would wait on each other and fail): a second is refused."""
    path = db.with_name(db.name + ".search-lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise StoreBusy(_holder(fd)) from None
            raise
        _write_holder(fd, who)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the lock beside ``path`` (``path`` with the suffix ``.lock``) alone: one process at a time
    builds or reads what ``path`` caches (a predictor's calibration, the host reference)."""
    path = Path(path)
    with _flock(path.with_suffix(".lock"), fcntl.LOCK_EX):
        yield
