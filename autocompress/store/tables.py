"""The store's SQL tables (SQLAlchemy models; our tables are prefixed ``ac_`` so they never meet Optuna's)
and the plain records handed to the rest of autocompress."""
from __future__ import annotations

import collections
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


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
    stage: Mapped[str | None] = mapped_column(String(120))          # what a running trial is doing (its last word)
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
    stage: str | None = None            # what it was doing last (a running trial: what it is doing)

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
                      recovery_seconds=t.recovery_seconds, reused_from=t.reused_from, stage=t.stage)
    for m in t.metrics:
        rec.metrics.setdefault(m.split, {"n": m.n_examples})[m.name] = m.value
    for lat in t.latencies:
        rec.latencies[lat.profile] = {"profile": lat.profile, "median_ms": lat.median_ms, "spread_ms": lat.spread_ms,
                                      "p10_ms": lat.p10_ms, "p90_ms": lat.p90_ms, "n": lat.n, "how": lat.how,
                                      "detail": dict(lat.detail or {})}
    for a in t.artifacts:
        rec.artifacts[a.kind] = a.path
    return rec


INTERRUPTED = "the search was interrupted while this trial ran"     # the reason an interrupted trial records


@dataclass
class TrialResult:
    """What a trial came to, recorded in one call (``Store.record_trial``): its status and why, its
    scores per split ({split: (metrics, n)}), its latency on every profile (``Latency.to_dict()``), its
    artifacts (kind -> path: onnx, onnx_fp32, checkpoint, recovered), sizes and times."""

    status: str                       # done | failed | duplicate | over_budget | interrupted | stopped
    error: str | None = None
    seconds: float | None = None
    metrics: dict[str, tuple[dict[str, float], int]] = field(default_factory=dict)
    latencies: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    size_mb: float | None = None
    size_zip_mb: float | None = None
    n_params: int | None = None
    recovery_seconds: float | None = None
    reused_from: str | None = None

    def score(self, split: str) -> float | None:
        return self.metrics[split][0]["main"] if split in self.metrics else None

    def latency(self, profile: str) -> dict[str, Any] | None:
        return next((lat for lat in self.latencies if lat["profile"] == profile), None)


def failure_summary(trials: list[TrialRecord]) -> tuple[str, int] | None:
    """The most common first line among failed trials' errors, and how many trials share it."""
    reasons = collections.Counter(first_line(t.error) for t in trials if t.status == "failed")
    return reasons.most_common(1)[0] if reasons else None


def first_line(error: str | None) -> str:
    return (error or "unknown error").strip().splitlines()[0] if (error or "").strip() else "unknown error"
