"""A recorded run: its steps, each with a graph, the loss and every node's and edge's gradient."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Iterator, Mapping, MutableSequence, Sequence

import torch

from vizgrad.graph import Graph
from vizgrad.stats import Batch, Summary, row_summary

if TYPE_CHECKING:  # pragma: no cover
    from vizgrad.tracing import LiveMap

__all__ = ["Step", "Run", "ValueKey", "SummaryMap", "ValueMap"]

#: Keys of kept values and summaries: ``("node", node_id, output)`` for the
#: gradient flowing into a node's output, ``("edge", src_id, slot)`` for the
#: gradient ``src`` passes along ``slot``, ``("param", name)`` and
#: ``("param_grad", name)`` for parameter values and their ``.grad``.
ValueKey = tuple


class SummaryMap(Mapping[tuple, Summary]):
    """Read-only ``ValueKey -> Summary`` view over a step's summary rows (objects made on access).

    ``rows`` is the ``(n, 7)`` array, or the :class:`~vizgrad.stats.Batch`
    that computes it on first access.
    """

    __slots__ = ("_index", "_source", "_cache", "_table")

    def __init__(self, index: Mapping[tuple, int], rows: Any) -> None:
        self._index = index
        self._source = rows
        self._cache: dict[tuple, tuple[float, ...] | None] = {}  # rows, upgraded to Summary when asked
        self._table: list[list[float]] | None = None

    @property
    def index(self) -> Mapping[tuple, int]:
        """``ValueKey`` -> row number in :attr:`rows`."""
        return self._index

    @property
    def batch(self) -> Batch | None:
        """The batch that computes the rows on first access, or ``None`` once they are plain rows."""
        return self._source if isinstance(self._source, Batch) else None

    @property
    def rows(self) -> Any:
        """The ``(n, 7)`` float64 rows ``norm, mean, min, max, nan, inf, numel``."""
        source = self._source
        return source.rows if isinstance(source, Batch) else source

    def __getitem__(self, key: tuple) -> Summary:
        if key[0] == "value":
            raise KeyError(key)
        row = self.row(key)
        if row is None:
            raise KeyError(key)
        return row if type(row) is Summary else self._summary(key, row)

    def _summary(self, key: tuple, row: tuple[float, ...]) -> Summary:
        summary = self._cache[key] = row_summary(row)  # a Summary is a row tuple too
        return summary

    def row(self, key: tuple) -> tuple[float, ...] | None:
        """The summary under ``key`` as a plain tuple (``Summary`` field order), or ``None``; cached."""
        cache = self._cache
        if key in cache:
            return cache[key]
        at = self._index.get(key)
        if at is None or key[0] == "value":
            row = None
        else:
            table = self._table
            if table is None:  # one conversion of the whole array beats one per row
                table = self._table = self.rows.tolist()
            row = tuple(table[at])
        cache[key] = row
        return row

    def get(self, key: tuple, default: Any = None) -> Any:
        """The summary under ``key``, or ``default`` (faster than the generic ``Mapping.get``)."""
        if key in self._index and key[0] != "value":
            return self[key]
        return default

    def __iter__(self) -> Iterator[tuple]:
        return (key for key in self._index if key[0] != "value")

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        return key in self._index and key[0] != "value"  # type: ignore[index]


class ValueMap(Mapping[tuple, torch.Tensor]):
    """Read-only ``ValueKey -> tensor`` view over the values a step kept (views made on access)."""

    __slots__ = ("_index", "_batch")

    def __init__(self, index: Mapping[tuple, int], batch: Batch) -> None:
        self._index = index
        self._batch = batch

    @property
    def index(self) -> Mapping[tuple, int]:
        """``ValueKey`` -> position in :attr:`batch`."""
        return self._index

    @property
    def batch(self) -> Batch:
        """The :class:`~vizgrad.stats.Batch` holding the kept values."""
        return self._batch

    def __getitem__(self, key: tuple) -> torch.Tensor:
        value = self._batch.value(self._index[key]) if key[0] != "value" else None
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[tuple]:
        kept = self._batch.kept
        return (key for key, at in self._index.items() if key[0] != "value" and kept[at] is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        at = self._index.get(key)  # type: ignore[call-overload]
        return at is not None and key[0] != "value" and self._batch.kept[at] is not None  # type: ignore[index]


@dataclasses.dataclass(eq=False)
class Step:
    """One ``backward()``: the graph, the loss and the gradients it produced.

    Attributes:
        index: 0-based position in the run.
        loss: The root's value when the roots are scalars (their sum for
            several), else ``None``.
        graph: The autograd graph this ``backward()`` ran through.
        summaries: ``ValueKey`` -> :class:`Summary` for every gradient captured.
        values: ``ValueKey`` -> full value (CPU tensor) for the small ones.
        data: JSON-able values the user logged for this step (``run.log``).
    """

    index: int
    loss: float | None
    graph: Graph
    summaries: Mapping[ValueKey, Summary]
    values: Mapping[ValueKey, torch.Tensor]
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    _live: LiveMap | None = dataclasses.field(default=None, repr=False)

    # -- gradients by node ------------------------------------------------------------
    def grad(self, node_id: str, output: int = 0) -> torch.Tensor | None:
        """The gradient that flowed into output ``output`` of node ``node_id``, if it was kept."""
        self.graph.node(node_id)  # KeyError for unknown ids
        return self.values.get(("node", node_id, output))

    def stats(self, node_id: str, output: int = 0) -> dict[str, float | int] | None:
        """Summary dict (``norm, mean, min, max, nan, inf, numel``) of that gradient, or ``None`` when none flowed."""
        self.graph.node(node_id)
        summary = self.summaries.get(("node", node_id, output))
        return None if summary is None else summary.as_dict()

    def edge_grad(self, src: str, slot: int) -> torch.Tensor | None:
        """The gradient ``src`` passed along its input ``slot`` (``grad_inputs[slot]``), if kept."""
        return self.values.get(("edge", src, slot))

    def edge_stats(self, src: str, slot: int) -> dict[str, float | int] | None:
        """Summary dict of :meth:`edge_grad`, or ``None`` when no gradient went that way."""
        summary = self.summaries.get(("edge", src, slot))
        return None if summary is None else summary.as_dict()

    # -- gradients by live tensor ---------------------------------------------------------
    def grad_of(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """Gradient of the loss with respect to ``tensor`` in this step, while the tensor lives.

        For a leaf it is the gradient this ``backward()`` delivered (not the
        accumulated ``.grad``); for an intermediate, the sum of every gradient
        that reached it. ``None`` when it was too large to keep (see ``keep``).
        """
        if self._live is None:
            raise LookupError("this step's live tensors are gone (old or loaded step); use step.grad(node_id)")
        fn, output = self._live.gradient_edge(tensor)
        entry = self._live.by_fn.get(id(fn))
        if entry is None or entry[0] is not fn:
            raise LookupError("this tensor is not part of this step's graph")
        return self.values.get(("node", entry[1], output))

    # -- parameters -------------------------------------------------------------------------
    @property
    def params(self) -> list[str]:
        """Names of the parameters recorded in this step."""
        return [key[1] for key in self.summaries if key[0] == "param"]

    def param(self, name: str) -> torch.Tensor | None:
        """Value of parameter ``name`` when this step's ``backward()`` ran, if kept."""
        return self.values.get(("param", name))

    def param_grad(self, name: str) -> torch.Tensor | None:
        """The parameter's ``.grad`` right after this step's ``backward()``, if kept."""
        return self.values.get(("param_grad", name))

    def param_stats(self, name: str) -> dict[str, float | int] | None:
        """Summary of the parameter's value."""
        summary = self.summaries.get(("param", name))
        return None if summary is None else summary.as_dict()

    def release(self) -> None:
        """Drops references to live autograd objects (done for old steps automatically)."""
        self._live = None


class Run:
    """The steps of one recording, in order, plus the user's logged data and panels.

    ``steps`` is a sequence; a run recorded with ``save=`` keeps only recent
    steps in memory and reads older ones back from the run file.
    """

    def __init__(self, steps: MutableSequence[Step] | None = None, meta: Mapping[str, Any] | None = None,
                 panels: Sequence[Any] = ()) -> None:
        self.steps: MutableSequence[Step] = steps if steps is not None else []
        self.meta: dict[str, Any] = dict(meta or {})
        self.panels: list[Any] = list(panels)
        self._pending_data: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __getitem__(self, index: int) -> Step:
        return self.steps[index]

    def __repr__(self) -> str:
        return f"<vizgrad.Run steps={len(self.steps)} params={self.param_names()!r}>"

    # -- user data --------------------------------------------------------------------------
    def log(self, key: str, value: Any) -> None:
        """Attaches a JSON-able value to the latest step (or the first, if none yet), e.g. for a panel."""
        if self.steps:
            self.steps[-1].data[key] = value
            self._on_step_data(self.steps[-1])
        else:
            self._pending_data[key] = value

    def _on_step_data(self, step: Step) -> None:
        """Hook for stores that persist logged data; in memory there is nothing to do."""

    def add_panel(self, panel: Any) -> None:
        """Adds a user panel to the report (see :mod:`vizgrad.panels`)."""
        self.panels.append(panel)

    # -- series -------------------------------------------------------------------------------
    def losses(self) -> list[float | None]:
        """The loss of every step (``None`` where the roots were not scalars)."""
        return [step.loss for step in self.steps]

    def param_names(self) -> list[str]:
        """Names of every parameter seen, in first-seen order."""
        names: dict[str, None] = {}
        for step in self.steps:
            for name in step.params:
                names.setdefault(name, None)
        return list(names)

    def param_series(self, name: str) -> list[float | None]:
        """A scalar parameter's value over the steps (exactly: the mean of one element); a tensor's norm."""
        series: list[float | None] = []
        for step in self.steps:
            summary = step.summaries.get(("param", name))
            if summary is None:
                series.append(None)
            else:
                series.append(summary.mean if summary.numel == 1 else summary.norm)
        return series

    def graphs(self) -> dict[str, Graph]:
        """Distinct graphs of the run, keyed by structural hash, in first-seen order."""
        found: dict[str, Graph] = {}
        for step in self.steps:
            found.setdefault(step.graph.structural_hash, step.graph)
        return found

    # -- outputs --------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Writes the run to a SQLite run file that :func:`vizgrad.load` reads back."""
        from vizgrad import store

        store.save(self, path)

    def report(self, **options: Any) -> Any:
        """A self-contained HTML report (a player over the steps); see :class:`vizgrad.report.Report`."""
        from vizgrad.report import Report

        return Report(self, **options)

