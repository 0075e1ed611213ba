"""A recorded run: its steps, each with a graph, the loss and every node's and edge's gradient."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Mapping, MutableSequence, Sequence

from vizgrad.errors import UsageError
from vizgrad.gradtable import GradTable, NotKeptError, Summary, SummaryMap, ValueKey, ValueMap
from vizgrad.graph import Graph
from vizgrad.loop import Iteration, TrainingLoop, build_iterations

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from vizgrad.tracing import LiveMap

__all__ = ["Step", "Run", "Iteration", "ValueKey", "SummaryMap", "ValueMap", "NotKeptError"]


class Step:
    """One ``backward()``: the graph, the loss and the gradients it produced.

    Args:
        index: 0-based position in the run.
        loss: The root's value when the roots are scalars (their sum for
            several), else ``None``.
        graph: The autograd graph this ``backward()`` ran through (shared by
            the steps of one topology; it holds no live tensor).
        summaries: For a step built by hand: ``ValueKey`` -> :class:`Summary`.
        values: For a step built by hand: ``ValueKey`` -> tensor to keep.
        data: JSON-able values the user logged for this step (``run.log``).
        table: The step's :class:`~vizgrad.gradtable.GradTable` (instead of
            ``summaries`` and ``values``).
        live: The live autograd objects of the step (the recorder's), for
            :meth:`grad_of` and ``graph.node_of`` while the step is recent.
        limits: ``(keep, hold)`` the step was recorded with, for messages.
        loop: The run's :class:`~vizgrad.loop.TrainingLoop`, which knows the
            step's iteration (without one, each step is its own).
        stepped: Ordinals of the optimizers that stepped between the previous
            ``backward()`` and this one (what the loop groups by).

    ``summaries`` and ``values`` read the table: every gradient's summary, and
    the full values kept (a copy on each access, so changing one leaves the
    record as it was).
    """

    def __init__(self, index: int, loss: float | None, graph: Graph,
                 summaries: Mapping[ValueKey, Summary] | None = None,
                 values: Mapping[ValueKey, torch.Tensor] | None = None, data: dict[str, Any] | None = None, *,
                 table: GradTable | None = None, live: LiveMap | None = None,
                 limits: tuple[int | None, int | None] | None = None, loop: TrainingLoop | None = None,
                 stepped: Sequence[int] = ()) -> None:
        self.index = index
        self.loss = loss
        self.graph = graph
        self.data: dict[str, Any] = data if data is not None else {}
        if table is None and isinstance(summaries, SummaryMap) and isinstance(values, ValueMap) \
                and summaries.table is values.table:  # another step's views: its table, shared
            table = summaries.table
        elif table is None and (summaries is not None or values is not None):
            table = GradTable.from_mappings(summaries or {}, values or {})
        self._table = table
        self._live = live
        self._limits = limits
        self._loop = loop
        self.stepped = tuple(stepped)
        #: A gradient clip after this step's backward(): ``function``, ``limit``, ``total_before``,
        #: ``total_after`` and per parameter name ``before`` / ``after`` norms; ``None`` without one.
        self.clip: dict[str, Any] | None = None
        #: The ``torch.autograd.grad`` calls made before this ``backward()`` (``record(grad_calls=True)``),
        #: each a step of its own graph: the outputs it differentiated are its roots.
        self.grad_calls: tuple[Step, ...] = ()
        #: What the live step told of its health, for :meth:`Run.findings`: ``origins`` (where gradients
        #: turned non-finite, in engine order), ``forward`` (the first module whose output was non-finite),
        #: ``zeros`` (exact zeros per parameter ``.grad``), ``amp`` (a GradScaler's step) and ``manual``
        #: (hand-written gradients against autograd's); ``None`` when there is nothing to tell.
        self.checks: dict[str, Any] | None = None
        if live is not None:
            live.attach(graph)

    def __repr__(self) -> str:
        return f"<vizgrad.Step {self.index} loss={self.loss!r} nodes={len(self.graph.nodes)}>"

    @property
    def iteration(self) -> int:
        """Which iteration (round of ``optimizer.step()``) the step belongs to; see :meth:`Run.iterations`."""
        return self.index if self._loop is None else self._loop.iteration(self.index)

    @property
    def loss_name(self) -> str | None:
        """The variable name of the step's root in the user's code on this step (``errD_fake``), or ``None``."""
        return self.graph.loss_name

    @property
    def table(self) -> GradTable:
        """The step's gradients: index, summary rows and kept values."""
        if self._table is None:
            self._table = GradTable.from_mappings({}, {})
        return self._table

    @property
    def summaries(self) -> SummaryMap:
        """``ValueKey`` -> :class:`Summary` for every gradient captured."""
        return self.table.summaries

    @property
    def values(self) -> ValueMap:
        """``ValueKey`` -> full value (a copy): kept ones on the CPU, ones the newest step holds on their device."""
        return self.table.values

    # -- gradients by node ------------------------------------------------------------
    def grad(self, node_id: str, output: int = 0) -> torch.Tensor | None:
        """The gradient that flowed into output ``output`` of node ``node_id``, if its value was kept (a copy)."""
        self.graph.node(node_id)  # KeyError for unknown ids
        return self.table.value(("node", node_id, output))

    def stats(self, node_id: str, output: int = 0) -> dict[str, float | int] | None:
        """Summary dict of that gradient (``norm, mean, min, max, nan, inf, numel, abs``: ``abs`` the mean of
        ``|g|``), or ``None`` when none flowed."""
        self.graph.node(node_id)
        summary = self.table.summary(("node", node_id, output))
        return None if summary is None else summary.as_dict()

    def edge_grad(self, src: str, slot: int) -> torch.Tensor | None:
        """The gradient ``src`` passed along its input ``slot`` (``grad_inputs[slot]``), if kept (a copy)."""
        return self.table.value(("edge", src, slot))

    def edge_stats(self, src: str, slot: int) -> dict[str, float | int] | None:
        """Summary dict of :meth:`edge_grad`, or ``None`` when no gradient went that way."""
        summary = self.table.summary(("edge", src, slot))
        return None if summary is None else summary.as_dict()

    # -- gradients by live tensor ---------------------------------------------------------
    def grad_of(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """Gradient of the loss with respect to ``tensor`` in this step, while the tensor lives (a copy).

        For a leaf it is the gradient this ``backward()`` delivered (not the
        accumulated ``.grad``); for an intermediate, the sum of every gradient
        that reached it. ``None`` means no gradient flowed into it.

        Raises:
            LookupError: The step's live tensors are gone (an old or loaded
                step), or ``tensor`` is not part of its graph.
            NotKeptError: A gradient flowed but its full value was not kept
                (a :class:`LookupError` whose message says how to keep it).
        """
        if self._live is None:
            raise LookupError(f"step {self.index}'s live tensors are gone (an old or loaded step); "
                              "use step.grad(node_id), or record(live_steps=N) to keep more steps live")
        node_id, output = self._live.locate(tensor)
        key = ("node", node_id, output)
        table = self.table
        if not table.has(key):
            return None
        value = table.value(key)
        if value is None:
            raise NotKeptError(self._not_kept(key))
        return value

    def _not_kept(self, key: ValueKey) -> str:
        """Why the full value under ``key`` is not there, and how to keep such values."""
        keep, hold = self._limits if self._limits is not None else (None, None)
        numel = self.table.numel(key)
        kept = "no full values" if keep == 0 else f"full values up to keep={keep} elements"
        if self.table.holding:
            why = f"the newest step holds gradients up to hold={hold} elements"
        else:
            why = "it is no longer the newest step, which holds bigger ones"
        return (f"step {self.index} kept only a summary of this gradient ({numel:,} elements): it keeps {kept} "
                f"and {why}; record(keep=None) keeps every gradient in full (at their memory cost), "
                f"or read step.stats({key[1]!r})")

    # -- parameters -------------------------------------------------------------------------
    @property
    def params(self) -> list[str]:
        """Names of the parameters recorded in this step."""
        return list(self.table.index.params)

    def param(self, name: str) -> torch.Tensor | None:
        """Value of parameter ``name`` when this step's ``backward()`` ran, if kept (a copy)."""
        return self.table.value(("param", name))

    def param_grad(self, name: str) -> torch.Tensor | None:
        """The parameter's ``.grad`` right after this step's ``backward()``, if kept (a copy)."""
        return self.table.value(("param_grad", name))

    def param_stats(self, name: str) -> dict[str, float | int] | None:
        """Summary of the parameter's value."""
        summary = self.table.summary(("param", name))
        return None if summary is None else summary.as_dict()

    def param_grad_stats(self, name: str) -> dict[str, float | int] | None:
        """Summary of the parameter's ``.grad`` right after this step's ``backward()``."""
        summary = self.table.summary(("param_grad", name))
        return None if summary is None else summary.as_dict()

    @property
    def live(self) -> bool:
        """Whether this step still answers :meth:`grad_of` (it holds its live autograd objects)."""
        return self._live is not None

    def release_values(self) -> None:
        """Drops the full gradients a newest step holds (done when a newer step is recorded)."""
        if self._table is not None:
            self._table.release()

    def release(self) -> None:
        """Drops references to live autograd objects and held gradients (done for old steps automatically)."""
        self._live = None
        self.release_values()


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
        self.loop = TrainingLoop()
        self._pending_data: dict[str, Any] = {}
        self._recording = 0  # record() blocks filling this run now
        self._expected: list[Any] = []  # hand-written gradients for the next step (expect_grad)
        self._findings: tuple[Any, list[Any]] | None = None  # (what they were computed from, the findings)

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

    def _on_step_clip(self, step: Step) -> None:
        """Hook for stores that persist a step's clipping record (it comes after the step is written)."""

    def _on_step_checks(self, step: Step) -> None:
        """Hook for stores that persist a step's checks changed after it was written (a GradScaler's verdict)."""

    # -- diagnostics --------------------------------------------------------------------------
    def expect_grad(self, tensor_or_name: Any, manual: Any) -> None:
        """Registers a hand-written gradient for the next ``backward()``, to be checked against autograd's.

        Args:
            tensor_or_name: The tensor (a leaf or an intermediate of the next
                step's graph) or the parameter name (``"w"``) the gradient is of.
            manual: The hand-computed gradient of the loss with respect to it
                (a tensor or numbers with as many elements).

        The step compares the two (``step.checks["manual"]``); where they differ,
        :meth:`findings` has a ``manual_mismatch`` that gives the ratio when it is
        constant ("dw is 0.5x autograd's on every step: a factor 2 missing?").

        Raises:
            UsageError: Called outside a ``record()`` block of this run.
        """
        if not self._recording:
            raise UsageError("run.expect_grad works inside the run's record() block, before the backward() it checks")
        from vizgrad.checking import Expectation

        self._expected.append(Expectation(tensor_or_name, manual))

    def _take_expected(self) -> list[Any]:
        taken, self._expected = self._expected, []
        return taken

    def findings(self, **thresholds: float) -> list[Any]:
        """What is wrong with the run's gradients: a list of :class:`~vizgrad.findings.Finding`, most urgent first.

        Kinds: ``nonfinite`` (where a NaN/Inf first appears, in the order the
        engine ran the nodes; a non-finite loss is traced into the forward pass
        with ``record(activations=True)``), ``manual_mismatch`` (see
        :meth:`expect_grad`), ``exploding`` and ``vanishing`` (a layer's gradient
        RMS far above or below the loss end's; a total norm that jumps past its
        running median), ``dead`` (gradients exactly zero on most elements) and
        ``amp_skipped`` (steps a GradScaler skipped).

        Args:
            thresholds: Overrides of :class:`~vizgrad.findings.Thresholds`
                (``vanishing=1e-4``, ``jump=20``, ...).
        """
        from vizgrad.findings import Thresholds, findings

        limits = Thresholds.of(thresholds)
        basis = (len(self.steps), limits)
        if self._findings is None or self._findings[0] != basis or self._recording:
            self._findings = (basis, findings(self.steps, limits))
        return list(self._findings[1])

    def add_panel(self, panel: Any) -> None:
        """Adds a user panel to the report (see :mod:`vizgrad.panels`)."""
        self.panels.append(panel)

    # -- series -------------------------------------------------------------------------------
    def losses(self) -> list[float | None]:
        """The loss of every step (``None`` where the roots were not scalars)."""
        return [step.loss for step in self.steps]

    def loss_names(self) -> list[str | None]:
        """The loss name of every step (see :attr:`Step.loss_name`)."""
        return [step.loss_name for step in self.steps]

    def iterations(self) -> list[Iteration]:
        """The steps grouped by ``optimizer.step()``, each iteration with its loss per loss name.

        Every ``backward()`` is a step; the steps whose gradients one round of
        optimizer steps applied are one iteration (gradient accumulation,
        L-BFGS's closure calls, a GAN's D and G steps). A run without an
        optimizer has one iteration per step.
        """
        grouped = self.loop.iterations()[:len(self.steps)]
        after = grouped[-1] + 1 if grouped else 0  # steps the loop never saw (added by hand): one iteration each
        grouped = grouped + list(range(after, after + len(self.steps) - len(grouped)))
        return build_iterations(grouped, self.losses(), self.loss_names())

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
            summary = step.table.summary(("param", name))
            if summary is None:
                series.append(None)
            else:
                series.append(summary.mean if summary.numel == 1 else summary.norm)
        return series

    def grad_norms(self, by: str = "module", kind: str = "param_grad", depth: int | None = None,
                   measure: str = "norm") -> tuple[list[str], Any]:
        """Each layer's gradient norm on every step: ``(names, numpy array steps x names)``, NaN where none flowed.

        Args:
            by: ``"module"``: one column per module (modules hold their
                submodules' parameters, as ``module.parameters()`` does);
                ``"param"``: one per named parameter.
            kind: ``"param_grad"``: the norm of the parameters' ``.grad``
                right after each ``backward()``; ``"output"``: of the gradient
                flowing into the module's outputs (the tensors its calls hand
                to code outside them; for a parameter, what the step delivered).
            depth: ``None``: every module; a number: the modules a view drawn
                at that depth shows as boxes (that deep, or shallower without
                modules inside), plus, for ``param_grad``, each parameter an
                open module owns itself, so every parameter counts once.
            measure: ``"norm"`` (L2), ``"rms"`` (norm / sqrt(elements)),
                ``"mean"`` (mean |grad| over the elements; NaN for steps read
                from run files before schema 5) or ``"max"`` (largest |grad|).

        Columns are in forward order; the report's gradient-flow panel and
        ``vizgrad info`` read the same numbers.
        """
        from vizgrad.health import grad_norms

        return grad_norms(self, by, kind, depth, measure)

    def norm_range(self, measure: str = "norm") -> tuple[float, float] | None:
        """The smallest and largest finite, non-zero node and edge gradient norm (or ``"rms"``) of every step."""
        from vizgrad.colors import norm_range

        return norm_range((step.table for step in self.steps), measure)

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
