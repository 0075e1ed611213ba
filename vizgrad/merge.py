"""The run files of a distributed job's ranks, merged: ``vizgrad.load_ranks(paths)``.

Each rank recorded its own gradients (node and edge gradients are its local
ones, before any all-reduce) into its own file. A merged run shows the
reference rank's steps (the lowest rank present) with, per step, every rank's
step beside it, the spread of each node's gradient norm across ranks, and
parameter gradients as the whole job has them: a replicated parameter's
``.grad`` (DDP: the all-reduced one, the same on every rank) and a sharded
one's combined from its shards' sums of squares (FSDP2), never gathered.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence as SequenceABC
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from vizgrad.errors import UsageError
from vizgrad.gradtable import COLUMNS, GradTable
from vizgrad.run import Run, Step

__all__ = ["load_ranks", "RankedRun", "RankedStep", "combine_rows"]


def combine_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    """The summary row of a tensor whose parts (shards) have the summary ``rows``: norms add up in squares."""
    parts = np.asarray(rows, dtype=np.float64).reshape(-1, len(COLUMNS))
    numel = parts[:, 6]
    held = parts[numel > 0]
    out = np.zeros(len(COLUMNS))
    out[0] = math.sqrt(float(np.sum(parts[:, 0] ** 2)))
    out[4], out[5], out[6] = parts[:, 4].sum(), parts[:, 5].sum(), numel.sum()
    if len(held):
        out[1] = float(np.sum(held[:, 1] * held[:, 6]) / held[:, 6].sum())
        out[7] = float(np.sum(held[:, 7] * held[:, 6]) / held[:, 6].sum())
        with np.errstate(invalid="ignore"):
            out[2], out[3] = np.nanmin(held[:, 2]), np.nanmax(held[:, 3])
    else:
        out[1:4] = out[7] = math.nan
    return out


class RankedStep(Step):
    """One step of a merged run: the reference rank's graph and gradients, parameters as the whole job has them.

    Attributes:
        rank_steps: Rank -> that rank's step (ranks that recorded this step).
    """

    def __init__(self, index: int, reference: Step, rank_steps: dict[int, Step], sharded: frozenset[str],
                 loop: Any = None) -> None:
        losses = [step.loss for step in rank_steps.values() if step.loss is not None]
        # The job's loss: the mean of the ranks' (DDP averages gradients, so the global batch's loss is the mean).
        loss = sum(losses) / len(losses) if losses and len(losses) == len(rank_steps) else reference.loss
        super().__init__(index, loss, reference.graph, data=dict(reference.data), loop=loop,
                         stepped=reference.stepped)
        self.rank_steps = rank_steps
        self.reference = reference
        self._sharded = sharded
        self.clip = reference.clip
        self.checks = reference.checks

    @property
    def table(self) -> GradTable:
        """The reference rank's table, with each sharded parameter's value and ``.grad`` rows combined over ranks."""
        if self._table is None:
            self._table = self._merged_table()
        return self._table

    def _merged_table(self) -> GradTable:
        base = self.reference.table
        if not self._sharded:  # DDP: every parameter's .grad is already the job's (all-reduced)
            return base
        rows = base.rows.copy()
        index = base.index
        for name in self._sharded:
            for kind in ("param", "param_grad"):
                key = (kind, name)
                at = index.get(key)
                parts = [step.table.row(key) for step in self.rank_steps.values()]
                if at is None or any(part is None for part in parts):
                    continue
                rows[at] = combine_rows(parts)
        return GradTable(index, rows, base.buffers, base.kept)

    @property
    def grad_calls(self) -> tuple[Step, ...]:  # type: ignore[override]
        """The reference rank's ``torch.autograd.grad`` calls before this step."""
        return self.reference.grad_calls

    @grad_calls.setter
    def grad_calls(self, calls: tuple[Step, ...]) -> None:
        pass  # the reference rank's, read through

    def param_stats(self, name: str) -> dict[str, float | int] | None:
        """The parameter's gradient as the whole job has it: ``norm`` is its global norm.

        DDP: the all-reduced ``.grad`` (every rank's is the same); FSDP2: the
        shards' summaries combined (norms add up in squares), equal to the full
        gradient's. (On a merged step this describes the gradient, which is
        what differs across ranks; :meth:`param_value_stats` has the value.)
        """
        return self.param_grad_stats(name)

    def param_value_stats(self, name: str) -> dict[str, float | int] | None:
        """Summary of the parameter's value, a sharded one's combined over its shards."""
        return Step.param_stats(self, name)

    def rank_norms(self, node_id: str, output: int = 0) -> dict[int, float | None]:
        """Each rank's norm of the gradient into output ``output`` of ``node_id`` (``None`` where none flowed)."""
        out: dict[int, float | None] = {}
        for rank, step in self.rank_steps.items():
            same_graph = step.graph.structural_hash == self.graph.structural_hash
            summary = step.table.summary(("node", node_id, output)) if same_graph else None
            out[rank] = None if summary is None else summary.norm
        return out

    def spread(self, node_id: str, output: int = 0) -> dict[str, Any] | None:
        """``min``, ``median`` and ``max`` of the node's gradient norm across ranks, and each rank's; ``None`` for none."""
        norms = self.rank_norms(node_id, output)
        known = [value for value in norms.values() if value is not None and math.isfinite(value)]
        if not known:
            return None
        return {"min": min(known), "median": statistics.median(known), "max": max(known), "ranks": norms}


class _RankedSteps(SequenceABC):
    """The merged steps, made when read (each rank's run reads its steps from its file)."""

    def __init__(self, run: RankedRun) -> None:
        self._run = run
        self._count = max((len(rank.steps) for rank in run.ranks.values()), default=0)
        self._recent: dict[int, RankedStep] = {}

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"step {index} is out of range: the merged run has {len(self)} steps")
        step = self._recent.get(index)
        if step is None:
            present = {rank: run.steps[index] for rank, run in self._run.ranks.items() if index < len(run.steps)}
            reference = present[min(present)]
            step = RankedStep(index, reference, present, self._run.sharded, loop=self._run.loop)
            if len(self._recent) > 16:
                self._recent.pop(next(iter(self._recent)))
            self._recent[index] = step
        return step

    def __iter__(self) -> Iterator[RankedStep]:
        return (self[i] for i in range(len(self)))


class RankedRun(Run):
    """The runs of a distributed job's ranks as one: see :func:`load_ranks`.

    Attributes:
        ranks: Rank -> its run (as recorded in its file).
        world_size: How many ranks the job had.
        missing: Ranks with no file among those given.
        partial: Ranks whose recording stopped before it ended (killed, or still going).
        sharded: Parameters sharded across ranks (FSDP2), whose norms combine the shards.
    """

    def __init__(self, ranks: dict[int, Run], world_size: int, paths: dict[int, str]) -> None:
        reference = ranks[min(ranks)]
        meta = dict(reference.meta)
        super().__init__(meta=meta, panels=reference.panels)
        self.ranks = dict(sorted(ranks.items()))
        self.paths = paths
        self.world_size = world_size
        self.missing = [rank for rank in range(world_size) if rank not in ranks]
        self.partial = [rank for rank, run in self.ranks.items() if not getattr(run, "complete", True)]
        self.sharded = frozenset(name for run in ranks.values() for name in run.meta.get("sharded", ()))
        self.loop = reference.loop
        self.steps = _RankedSteps(self)  # type: ignore[assignment]
        self.meta["ranks"] = {"world_size": world_size, "present": list(self.ranks), "missing": self.missing,
                              "partial": self.partial}

    def __repr__(self) -> str:
        return f"<vizgrad.RankedRun ranks={list(self.ranks)} of {self.world_size} steps={len(self.steps)}>"

    def close(self) -> None:
        """Closes every rank's run file."""
        for run in self.ranks.values():
            closer = getattr(run, "close", None)
            if closer is not None:
                closer()

    def findings(self, **thresholds: float) -> list[Any]:
        """The reference rank's findings, and the ranks whose gradients go non-finite alone or diverge."""
        from vizgrad.findings import Thresholds, rank_findings

        return super().findings(**thresholds) + rank_findings(self, Thresholds.of(thresholds))


def _place(run: Run, path: str) -> dict[str, Any]:
    place = run.meta.get("distributed")
    if not isinstance(place, dict) or "rank" not in place or "world_size" not in place:
        raise UsageError(f"{path} was not recorded in a distributed job (it has no rank); "
                         "load it with vizgrad.load, or merge the run.rankN.vizgrad files of one job")
    return place


def load_ranks(paths: Iterable[str | os.PathLike[str]]) -> RankedRun:
    """Reads the run files of a distributed job's ranks (``run.rank0.vizgrad``, ...) as one merged run.

    Raises:
        UsageError: No files, a file not recorded in a distributed job, two
            files of one rank, or files of different jobs or world sizes.
        RunFileError: A file is missing or damaged.
    """
    from vizgrad import store

    paths = [os.fspath(path) for path in paths]
    if not paths:
        raise UsageError("load_ranks needs the run files of a job's ranks, e.g. run.rank0.vizgrad run.rank1.vizgrad")
    runs: dict[int, Run] = {}
    where: dict[int, str] = {}
    first: tuple[str, dict[str, Any]] | None = None
    for path in paths:
        run = store.load(path)
        try:
            place = _place(run, path)
            if first is None:
                first = (path, place)
            elif place.get("job") != first[1].get("job") or place["world_size"] != first[1]["world_size"]:
                raise UsageError(f"{path} and {first[0]} are of different runs (job {place.get('job')} of "
                                 f"{place['world_size']} ranks, job {first[1].get('job')} of "
                                 f"{first[1]['world_size']}); merge the files of one run")
            rank = int(place["rank"])
            if rank in runs:
                raise UsageError(f"{path} and {where[rank]} are both rank {rank}; give each rank's file once")
        except BaseException:
            for opened in [*runs.values(), run]:
                opened.store.disconnect()  # type: ignore[attr-defined]
            raise
        runs[rank], where[rank] = run, path
    assert first is not None
    return RankedRun(runs, int(first[1]["world_size"]), where)
