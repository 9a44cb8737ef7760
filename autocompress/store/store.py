"""The store: runs, trials, metrics, latencies and artifacts in SQL (SQLAlchemy).

The only package that speaks SQL. SQLite by default; any SQLAlchemy URL (PostgreSQL when several
machines share a search). Optuna's RDBStorage may keep its study in the same database.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect, select
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, selectinload

from ..fileio import sha256_file
from .tables import (ArtifactRecord, ArtifactRow, Base, LatencyRow, MetricRow, RunRecord, RunRow, TrialRecord, TrialResult,
                     TrialRow, _now, _run_record, _trial_record)
from .urls import StoreError, absolute_url


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

    def record_trial(self, trial_id: int, result: TrialResult) -> None:
        """Everything a trial came to, in one transaction: its scores, latencies, artifacts (with their
        sha256, hashed before the transaction) and its final status."""
        hashed = {kind: (str(Path(path).resolve()), sha256_file(path) if Path(path).is_file() else None,
                         Path(path).stat().st_size if Path(path).is_file() else None)
                  for kind, path in result.artifacts.items()}
        keys = ("profile", "median_ms", "spread_ms", "p10_ms", "p90_ms", "n", "how", "detail")
        with self._session() as s, s.begin():
            t = s.get(TrialRow, trial_id)
            for old in [m for m in t.metrics if m.split in result.metrics]:
                s.delete(old)
            s.flush()
            for split, (metrics, n) in result.metrics.items():
                for name, value in metrics.items():
                    s.add(MetricRow(trial_id=trial_id, split=split, name=name, value=float(value), n_examples=n))
            for lat in result.latencies:
                for old in [row for row in t.latencies if row.profile == lat["profile"]]:
                    s.delete(old)
                s.flush()
                s.add(LatencyRow(trial_id=trial_id, **{k: lat[k] for k in keys}))
            for kind, (path, sha, size) in hashed.items():
                s.add(ArtifactRow(trial_id=trial_id, kind=kind, path=path, sha256=sha, size_bytes=size))
            t.status, t.error, t.finished = result.status, result.error, _now()
            for attr in ("seconds", "size_mb", "size_zip_mb", "n_params", "recovery_seconds", "reused_from"):
                if getattr(result, attr) is not None:
                    setattr(t, attr, getattr(result, attr))

    def set_stage(self, trial_id: int, stage: str) -> None:
        """What a running trial is doing now (structure, timing, recovery 200/600, export, scoring)."""
        with self._session() as s, s.begin():
            s.get(TrialRow, trial_id).stage = stage[:120]

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
                              sha256=sha256_file(p) if p.is_file() else None,
                              size_bytes=p.stat().st_size if p.is_file() else None))

    def verify_artifact(self, trial_id: int, kind: str) -> tuple[str, bool]:
        """(path, whether the file's sha256 is the one recorded) of a trial's artifact."""
        with self._session() as s:
            a = s.scalar(select(ArtifactRow).where(ArtifactRow.trial_id == trial_id, ArtifactRow.kind == kind))
        if a is None:
            raise StoreError(f"trial has no {kind} artifact")
        p = Path(a.path)
        return a.path, p.is_file() and a.sha256 is not None and sha256_file(p) == a.sha256

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
