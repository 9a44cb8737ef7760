"""Where a store is: SQLAlchemy URLs, SQLite files, and whether a place can be written."""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError


class StoreError(Exception):
    """A user-facing problem with the store; one line."""


def default_url(runs_dir: str | os.PathLike = "runs") -> str:
    return f"sqlite:///{Path(runs_dir).resolve() / 'autocompress.db'}"


def sqlite_file(url: str, allow_memory: bool = False) -> Path | None:
    """The database file of a SQLite URL (None for other databases, and for an in-memory SQLite
    database where ``allow_memory``; otherwise that is refused: trial workers cannot share it)."""
    try:
        u = make_url(url)
    except ArgumentError:
        raise StoreError(f"--storage {url!r} is not a database URL: give e.g. sqlite:///runs/autocompress.db "
                         "or postgresql://user@host/db") from None
    if not u.drivername.startswith("sqlite"):
        return None
    if not u.database or u.database == ":memory:":
        if allow_memory:
            return None
        raise StoreError(f"--storage {url!r} is an in-memory database, which trial workers cannot share: "
                         "give a file, e.g. sqlite:///runs/autocompress.db")
    return Path(u.database)


def absolute_url(url: str) -> str:
    """The same URL with a relative SQLite path resolved against the current working directory, and
    ``postgresql://`` given the driver that is installed (psycopg 3; SQLAlchemy's default is psycopg2)."""
    file = sqlite_file(url, allow_memory=True)
    u = make_url(url)
    if file is None:
        if u.drivername == "postgresql" and importlib.util.find_spec("psycopg2") is None:
            return u.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return url
    if file.is_absolute():
        return url
    return u.set(database=str(file.expanduser().resolve())).render_as_string(hide_password=False)


def writable_folder(path: Path) -> str | None:
    """Why files cannot be created in ``path`` (which may not exist yet), or None if they can. Nothing is
    left behind: the probe is a temporary file in the nearest folder that exists."""
    p = Path(path)
    while not p.exists():
        if p.parent == p:
            return "no part of it exists"
        p = p.parent
    if not p.is_dir():
        return f"{p} is a file, not a folder"
    try:
        tempfile.TemporaryFile(dir=p).close()
    except OSError as e:
        return f"{p} is not writable ({e.strerror or e})"
    return None


def check_url(url: str, *, parent_may_be_created: bool = False) -> None:
    """Check, without writing anything, that a store at ``url`` can be opened and written: for SQLite,
    that the file is writable or can be created in an existing folder; for a server, that it answers."""
    file = sqlite_file(url)
    if file is not None:
        if file.exists():
            if not file.is_file():
                raise StoreError(f"--storage {url}: {file} is not a file")
            if not os.access(file, os.R_OK | os.W_OK):
                raise StoreError(f"--storage {url}: {file} is not writable; choose another --storage")
            return
        if not parent_may_be_created and not file.parent.is_dir():
            raise StoreError(f"--storage {url}: the folder {file.parent} does not exist; create it first "
                             "or choose another --storage")
        why = writable_folder(file.parent)
        if why:
            raise StoreError(f"--storage {url}: cannot create the database there: {why}")
        return
    try:
        engine = create_engine(url, pool_pre_ping=True)
        with engine.connect():
            pass
        engine.dispose()
    except ImportError as e:
        raise StoreError(f"--storage {url}: its database driver is not installed ({e}); "
                         "for PostgreSQL: pip install 'psycopg[binary]'") from None
    except (ArgumentError, SQLAlchemyError) as e:
        first = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StoreError(f"--storage {url}: cannot connect ({first}); check the URL and that the server runs") from None
