"""What a run records beside its row in the store (the run row's JSON ``settings``), with a version: enough
to resume it, to ship its models and to say how it was made. ``report`` and ``ship`` read it; ``session``
writes it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

if TYPE_CHECKING:
    from ..hardware import HardwareProfile


class SessionError(Exception):
    """A run cannot be started or resumed as asked; one line (the CLI exits 2)."""


@dataclass(frozen=True)
class RunSettings:
    """What a run records beside its row (the run row's JSON ``settings`` column): enough to resume it,
    to ship its models and to say how it was made. ``to_dict`` writes ``version``; ``from_dict`` reads
    every version written so far (version 1, before the key existed, had the same keys). Fields a store
    made by an older autocompress lacks come back as their defaults (None, empty)."""

    VERSION: ClassVar[int] = 2

    trials: int | None = None
    space: str = ""                       # the space's name (its text is the run row's ``space``)
    val_size: int | None = None           # rows of the validation split carved from train
    seed: int = 0
    teacher: str = ""                     # the teacher's folder, as trial workers read it
    data: str | None = None               # where the task's rows came from (TaskData.source)
    data_path: str | None = None          # the splits as carved, saved in the run folder
    num_layers: int | None = None         # the base model's layer count
    profiles: tuple[dict, ...] = ()       # every hardware profile, as HardwareProfile.to_dict
    attempt: int = 0                      # 0: the first start; k: the k-th resume
    labels: tuple[str, ...] = ()
    metric: str | None = None
    pair: bool | None = None              # takes text pairs
    command: str | None = None            # the command line that started the run
    cwd: str | None = None                # and the folder it was started in
    baseline: dict | None = None          # the trivial answer's val score (teacher.trivial_baseline)
    resolution: float | None = None       # how far apart two val scores must be to differ at 95% (evaluate.resolution)
    carve: str | None = None              # how val was carved from train (tasks.split.carve), in words
    tolerance: float | None = None        # the pick: the fastest within this of the most accurate (None: the default)
    sampler: str = "tpe"                  # the search strategy (samplers.py)
    task_lengths: dict | None = None      # the val inputs' token-length mix (lengths.LengthMix.to_dict), every run

    @property
    def floor(self) -> float | None:
        """The trivial baseline's val score: no front member at or below it."""
        return (self.baseline or {}).get("main")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["profiles"] = [dict(p) for p in self.profiles]
        d["labels"] = list(self.labels)
        return {**d, "version": self.VERSION}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RunSettings:
        d = dict(d or {})
        version = d.pop("version", 1)
        if not isinstance(version, int) or version < 1:
            raise SessionError(f"the run's settings have no readable version ({version!r})")
        if version > cls.VERSION:
            raise SessionError(f"the run's settings are version {version}, newer than this autocompress reads "
                               f"({cls.VERSION}): upgrade autocompress")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}     # versions 1 and 2 share their keys
        if values.get("profiles") is not None:
            values["profiles"] = tuple(dict(p) for p in values["profiles"])
        if values.get("labels") is not None:
            values["labels"] = tuple(values["labels"])
        return cls(**{k: v for k, v in values.items() if v is not None})     # a stored null: the default

    def hardware_profiles(self) -> tuple[HardwareProfile, ...]:
        from ..hardware import HardwareProfile

        return tuple(HardwareProfile.from_dict(p) for p in self.profiles)

    def task_info(self, task: str) -> tuple[tuple[str, ...], str, bool]:
        """(label names, metric, takes text pairs) of the run's task ``task``: as recorded, or GLUE's own
        for runs made before runs recorded them."""
        from ..tasks import stored_task

        return stored_task(task, labels=self.labels, metric=self.metric, pair=self.pair)
