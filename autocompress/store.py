"""The store: runs, trials, metrics, latencies and artifacts in SQL (SQLAlchemy).

The only module that speaks SQL. SQLite by default; any SQLAlchemy URL (PostgreSQL when several
machines share a search). Optuna's RDBStorage may keep its study in the same database: our tables are
prefixed ``ac_`` so they never meet Optuna's.
"""
from __future__ import annotations

import collections
import datetime as dt
import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (JSON, Float, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine, event,
                        inspect, select)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload


class StoreError(Exception):
    """A user-facing problem with the store; one line."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class RunRow(Base):
    __tablename__ = "ac_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(20), default="running")  # running | done | failed | interrupted
    created: Mapped[dt.datetime] = mapped_column(default=_now)
    finished: Mapped[dt.datetime | None]
    task: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(Text)
    device: Mapped[str] = mapped_column(String(100))          # the target profile
    budget_ms: Mapped[float | None] = mapped_column(Float)
    space: Mapped[str] = mapped_column(Text)                   # the search space's YAML text
    settings: Mapped[dict] = mapped_column(JSON, default=dict)
    run_dir: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    heartbeat: Mapped[dt.datetime | None]                     # last sign of life of the run's search process
    trials: Mapped[list["TrialRow"]] = relationship(back_populates="run", cascade="all, delete-orphan")


class TrialRow(Base):
    __tablename__ = "ac_trials"
    __table_args__ = (UniqueConstraint("run_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("ac_runs.id"))
    number: Mapped[int] = mapped_column(Integer)               # 0 = the teacher baseline
    role: Mapped[str] = mapped_column(String(20))               # teacher | candidate
    recipe: Mapped[str] = mapped_column(Text)                   # Recipe JSON
    recipe_hash: Mapped[str] = mapped_column(String(32))
    # running | done | failed | duplicate | over_budget | interrupted | stopped (at the time limit)
    status: Mapped[str] = mapped_column(String(20), default="running")
    error: Mapped[str | None] = mapped_column(Text)
    started: Mapped[dt.datetime] = mapped_column(default=_now)
    finished: Mapped[dt.datetime | None]
    seconds: Mapped[float | None] = mapped_column(Float)
    size_mb: Mapped[float | None] = mapped_column(Float)
    size_zip_mb: Mapped[float | None] = mapped_column(Float)   # the final ONNX file zipped (deflate)
    n_params: Mapped[int | None] = mapped_column(Integer)
    params: Mapped[dict] = mapped_column(JSON, default=dict)    # the searcher's raw suggestions
    node: Mapped[str | None] = mapped_column(String(200))       # where it ran: host/Ray node
    recovery_seconds: Mapped[float | None] = mapped_column(Float)   # time the recovery (training) steps took
    reused_from: Mapped[str | None] = mapped_column(String(200))    # RUN/TRIAL whose trained model it reused
    run: Mapped[RunRow] = relationship(back_populates="trials")
    metrics: Mapped[list["MetricRow"]] = relationship(cascade="all, delete-orphan")
    latencies: Mapped[list["LatencyRow"]] = relationship(cascade="all, delete-orphan")
    artifacts: Mapped[list["ArtifactRow"]] = relationship(cascade="all, delete-orphan")


class MetricRow(Base):
    __tablename__ = "ac_metrics"
    __table_args__ = (UniqueConstraint("trial_id", "split", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("ac_trials.id"))
    split: Mapped[str] = mapped_column(String(20))              # val (carved from train) | dev (GLUE dev)
    name: Mapped[str] = mapped_column(String(50))               # accuracy | f1 | matthews | main
    value: Mapped[float] = mapped_column(Float)
    n_examples: Mapped[int] = mapped_column(Integer)


class LatencyRow(Base):
    __tablename__ = "ac_latencies"
    __table_args__ = (UniqueConstraint("trial_id", "profile"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("ac_trials.id"))
    profile: Mapped[str] = mapped_column(String(100))
    median_ms: Mapped[float] = mapped_column(Float)
    spread_ms: Mapped[float] = mapped_column(Float)
    p10_ms: Mapped[float] = mapped_column(Float)
    p90_ms: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    how: Mapped[str] = mapped_column(String(20))                # measured | predicted
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class ArtifactRow(Base):
    __tablename__ = "ac_artifacts"
    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("ac_trials.id"))
    kind: Mapped[str] = mapped_column(String(30))               # onnx | onnx_fp32 | checkpoint
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(Integer)


# ------------------------------------------------------------------ plain records handed to the rest
@dataclass
class TrialRecord:
    number: int
    role: str
    recipe: str
    recipe_hash: str
    status: str
    error: str | None
    seconds: float | None
    size_mb: float | None
    n_params: int | None
    params: dict
    node: str | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)   # split -> {name: value, "n": n}
    latencies: dict[str, dict[str, Any]] = field(default_factory=dict)  # profile -> latency dict
    artifacts: dict[str, str] = field(default_factory=dict)            # kind -> path
    size_zip_mb: float | None = None                                    # the final ONNX file zipped (deflate)
    recovery_seconds: float | None = None                               # time its recovery training took
    reused_from: str | None = None      # "RUN/TRIAL" whose trained model (same structure + recovery) it reused

    def accuracy(self, split: str) -> float | None:
        return self.metrics.get(split, {}).get("main")


@dataclass
class RunRecord:
    name: str
    status: str
    created: dt.datetime
    finished: dt.datetime | None
    task: str
    model: str
    device: str
    budget_ms: float | None
    space: str
    settings: dict
    run_dir: str
    error: str | None
    heartbeat: dt.datetime | None = None


@dataclass
class ArtifactRecord:
    kind: str
    path: str
    sha256: str | None        # of the file when the trial recorded it (None for folders)
    size_bytes: int | None


def _run_record(r: RunRow) -> RunRecord:
    return RunRecord(r.name, r.status, r.created, r.finished, r.task, r.model, r.device, r.budget_ms,
                     r.space, dict(r.settings or {}), r.run_dir, r.error, r.heartbeat)


def _trial_record(t: TrialRow) -> TrialRecord:
    rec = TrialRecord(t.number, t.role, t.recipe, t.recipe_hash, t.status, t.error, t.seconds, t.size_mb,
                      t.n_params, dict(t.params or {}), t.node, size_zip_mb=t.size_zip_mb,
                      recovery_seconds=t.recovery_seconds, reused_from=t.reused_from)
    for m in t.metrics:
        rec.metrics.setdefault(m.split, {"n": m.n_examples})[m.name] = m.value
    for lat in t.latencies:
        rec.latencies[lat.profile] = {"profile": lat.profile, "median_ms": lat.median_ms, "spread_ms": lat.spread_ms,
                                      "p10_ms": lat.p10_ms, "p90_ms": lat.p90_ms, "n": lat.n, "how": lat.how,
                                      "detail": dict(lat.detail or {})}
    for a in t.artifacts:
        rec.artifacts[a.kind] = a.path
    return rec


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


def failure_summary(trials: list[TrialRecord]) -> tuple[str, int] | None:
    """The most common first line among failed trials' errors, and how many trials share it."""
    reasons = collections.Counter(first_line(t.error) for t in trials if t.status == "failed")
    return reasons.most_common(1)[0] if reasons else None


def first_line(error: str | None) -> str:
    return (error or "unknown error").strip().splitlines()[0] if (error or "").strip() else "unknown error"


def _sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Store:
    def __init__(self, url: str, create: bool = True):
        url = absolute_url(url)
        self.url = url
        try:
            if url.startswith("sqlite:///"):
                file = Path(url[len("sqlite:///"):])
                if not create and not file.exists():
                    raise StoreError(f"no store at {file}: run `autocompress search` first, or give --storage/--runs-dir")
                file.parent.mkdir(parents=True, exist_ok=True)
                self.engine = create_engine(url, connect_args={"timeout": 60})
                event.listen(self.engine, "connect", lambda c, _: c.execute("PRAGMA journal_mode=WAL"))
            else:
                self.engine = create_engine(url, pool_pre_ping=True)
            if create:
                Base.metadata.create_all(self.engine)
            elif not inspect(self.engine).has_table(RunRow.__tablename__):
                raise StoreError(f"the store {url} holds no autocompress runs")
            self._add_new_columns()
        except (ArgumentError, OperationalError, ImportError) as e:
            raise StoreError(f"cannot open store {url!r}: {str(e).splitlines()[0]}") from None

    def _add_new_columns(self) -> None:
        """A store made by an earlier version lacks columns added since: add them (all are nullable)."""
        from sqlalchemy import text

        insp = inspect(self.engine)
        with self.engine.begin() as conn:
            for table in Base.metadata.sorted_tables:
                have = {c["name"] for c in insp.get_columns(table.name)}
                for col in table.columns:
                    if col.name not in have:
                        ddl = col.type.compile(dialect=self.engine.dialect)
                        conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {ddl}'))

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # ---- runs
    def create_run(self, name: str, **fields) -> None:
        with self._session() as s, s.begin():
            if s.scalar(select(RunRow.id).where(RunRow.name == name)) is not None:
                raise StoreError(f"a run named {name!r} exists already: choose another --name")
            s.add(RunRow(name=name, **fields))

    def _run(self, s: Session, name: str) -> RunRow:
        row = s.scalar(select(RunRow).where(RunRow.name == name))
        if row is None:
            known = s.scalars(select(RunRow.name).order_by(RunRow.created.desc()).limit(5)).all()
            hint = f"; recent runs: {', '.join(known)}" if known else "; the store has no runs yet"
            raise StoreError(f"no run named {name!r} in {self.url}{hint}")
        return row

    def get_run(self, name: str) -> RunRecord:
        with self._session() as s:
            return _run_record(self._run(s, name))

    def runs(self) -> list[RunRecord]:
        """Every run in the store, oldest first."""
        with self._session() as s:
            return [_run_record(r) for r in s.scalars(select(RunRow).order_by(RunRow.created)).all()]

    def run_names(self) -> list[str]:
        with self._session() as s:
            return list(s.scalars(select(RunRow.name).order_by(RunRow.created)).all())

    def finish_run(self, name: str, status: str, error: str | None = None) -> None:
        with self._session() as s, s.begin():
            r = self._run(s, name)
            r.status, r.error, r.finished = status, error, _now()

    def restart_run(self, name: str, settings: dict) -> None:
        """A resumed run is running again (its settings record the attempt)."""
        with self._session() as s, s.begin():
            r = self._run(s, name)
            r.status, r.error, r.finished, r.heartbeat, r.settings = "running", None, None, _now(), settings

    def touch_run(self, name: str) -> None:
        with self._session() as s, s.begin():
            self._run(s, name).heartbeat = _now()

    def seconds_since_heartbeat(self, name: str) -> float | None:
        r = self.get_run(name)
        return None if r.heartbeat is None else (_now() - r.heartbeat).total_seconds()

    # ---- trials
    def start_trial(self, run: str, number: int, role: str, recipe_json: str, recipe_hash: str,
                    params: dict | None = None, node: str | None = None) -> int:
        with self._session() as s, s.begin():
            r = self._run(s, run)
            old = s.scalar(select(TrialRow).where(TrialRow.run_id == r.id, TrialRow.number == number))
            if old is not None:          # a retried trial starts over
                s.delete(old)
                s.flush()
            t = TrialRow(run_id=r.id, number=number, role=role, recipe=recipe_json, recipe_hash=recipe_hash,
                         params=params or {}, node=node)
            s.add(t)
            s.flush()
            return t.id

    def finish_trial(self, trial_id: int, status: str, *, error: str | None = None, seconds: float | None = None,
                     size_mb: float | None = None, size_zip_mb: float | None = None,
                     n_params: int | None = None, recovery_seconds: float | None = None,
                     reused_from: str | None = None) -> None:
        with self._session() as s, s.begin():
            t = s.get(TrialRow, trial_id)
            t.reused_from = reused_from if reused_from is not None else t.reused_from
            t.status, t.error, t.finished = status, error, _now()
            t.recovery_seconds = recovery_seconds if recovery_seconds is not None else t.recovery_seconds
            t.seconds = seconds if seconds is not None else t.seconds
            t.size_mb = size_mb if size_mb is not None else t.size_mb
            t.size_zip_mb = size_zip_mb if size_zip_mb is not None else t.size_zip_mb
            t.n_params = n_params if n_params is not None else t.n_params

    def record_failed(self, run: str, number: int, params: dict, error: str) -> None:
        """A failed trial that never got as far as building its recipe."""
        self.finish_trial(self.start_trial(run, number, "candidate", "{}", "", params), "failed", error=error)

    def mark_trials(self, run: str, statuses: tuple[str, ...], status: str, error: str) -> list[int]:
        """Give every trial of ``run`` in one of ``statuses`` the new status and reason; returns their numbers."""
        with self._session() as s, s.begin():
            r = self._run(s, run)
            rows = s.scalars(select(TrialRow).where(TrialRow.run_id == r.id, TrialRow.status.in_(statuses))).all()
            for t in rows:
                t.status, t.error, t.finished = status, error, _now()
            return [t.number for t in rows]

    def add_metrics(self, trial_id: int, split: str, metrics: dict[str, float], n_examples: int) -> None:
        with self._session() as s, s.begin():
            for name, value in metrics.items():
                old = s.scalar(select(MetricRow).where(MetricRow.trial_id == trial_id, MetricRow.split == split,
                                                       MetricRow.name == name))
                if old is not None:
                    s.delete(old)
                    s.flush()
                s.add(MetricRow(trial_id=trial_id, split=split, name=name, value=float(value), n_examples=n_examples))

    def add_latency(self, trial_id: int, latency: dict[str, Any]) -> None:
        """Record (or replace) the trial's latency on one profile."""
        keys = ("profile", "median_ms", "spread_ms", "p10_ms", "p90_ms", "n", "how", "detail")
        with self._session() as s, s.begin():
            old = s.scalar(select(LatencyRow).where(LatencyRow.trial_id == trial_id,
                                                    LatencyRow.profile == latency["profile"]))
            if old is not None:
                s.delete(old)
                s.flush()
            s.add(LatencyRow(trial_id=trial_id, **{k: latency[k] for k in keys}))

    def add_artifact(self, trial_id: int, kind: str, path: str | os.PathLike) -> None:
        p = Path(path)
        with self._session() as s, s.begin():
            s.add(ArtifactRow(trial_id=trial_id, kind=kind, path=str(p.resolve()),
                              sha256=_sha256(p) if p.is_file() else None,
                              size_bytes=p.stat().st_size if p.is_file() else None))

    def verify_artifact(self, trial_id: int, kind: str) -> tuple[str, bool]:
        """(path, whether the file's sha256 is the one recorded) of a trial's artifact."""
        with self._session() as s:
            a = s.scalar(select(ArtifactRow).where(ArtifactRow.trial_id == trial_id, ArtifactRow.kind == kind))
        if a is None:
            raise StoreError(f"trial has no {kind} artifact")
        p = Path(a.path)
        return a.path, p.is_file() and a.sha256 is not None and _sha256(p) == a.sha256

    def trials(self, run: str, status: str | None = "done") -> list[TrialRecord]:
        with self._session() as s:
            r = self._run(s, run)
            q = (select(TrialRow).where(TrialRow.run_id == r.id).order_by(TrialRow.number)
                 .options(selectinload(TrialRow.metrics), selectinload(TrialRow.latencies),
                          selectinload(TrialRow.artifacts)))
            if status:
                q = q.where(TrialRow.status == status)
            return [_trial_record(t) for t in s.scalars(q).all()]

    def trial(self, run: str, number: int) -> TrialRecord | None:
        return next((t for t in self.trials(run, status=None) if t.number == number), None)

    def find_done(self, run: str, recipe_hash: str) -> TrialRecord | None:
        """The first finished trial of ``run`` with this recipe, trained or found over budget, if any
        (duplicates reuse its figures)."""
        return next((t for t in self.trials(run, status=None)
                     if t.recipe_hash == recipe_hash and t.status in ("done", "over_budget")), None)

    def artifact(self, run: str, number: int, kind: str) -> ArtifactRecord | None:
        """A trial's artifact of this kind (path, and its sha256 and size as recorded), or None."""
        with self._session() as s:
            r = self._run(s, run)
            row = s.scalar(select(ArtifactRow).join(TrialRow).where(TrialRow.run_id == r.id, TrialRow.number == number,
                                                                   ArtifactRow.kind == kind).order_by(ArtifactRow.id.desc()))
            return ArtifactRecord(row.kind, row.path, row.sha256, row.size_bytes) if row is not None else None

    def trial_id(self, run: str, number: int) -> int:
        with self._session() as s:
            r = self._run(s, run)
            return s.scalar(select(TrialRow.id).where(TrialRow.run_id == r.id, TrialRow.number == number))
