"""The training loop around the steps: which optimizers stepped between ``backward()`` calls, and the iterations that makes."""

from __future__ import annotations

import dataclasses
import functools
import threading
import warnings
import weakref
from typing import Any, Callable, Iterable, Sequence

from vizgrad.errors import RecordingWarning

__all__ = ["Iteration", "TrainingLoop", "group_iterations", "encode_marks", "decode_marks"]


@dataclasses.dataclass(frozen=True)
class Iteration:
    """One update of the model: the ``backward()`` steps whose gradients one round of ``optimizer.step()`` applied.

    Attributes:
        index: 0-based position among the run's iterations.
        steps: Indices of its steps, in order.
        losses: Loss name (``None`` for a root without a variable name) ->
            the sum of that name's step losses in the iteration: with
            gradient accumulation, the loss the script averages
            (``loss / accum`` summed over the micro-steps). ``None`` where a
            step of that name had no scalar loss.
    """

    index: int
    steps: tuple[int, ...]
    losses: dict[str | None, float | None]

    @property
    def loss(self) -> float | None:
        """The iteration's loss when it has one loss name (the usual case), else ``None``."""
        return next(iter(self.losses.values())) if len(self.losses) == 1 else None


def group_iterations(stepped: Sequence[Sequence[int]], pending: Sequence[int] = ()) -> list[int]:
    """The iteration of each step, from the optimizers (by ordinal) that stepped before it since the previous step.

    Steps between two optimizer steps form a phase, closed by the optimizers
    that step after it. Consecutive phases closed by different optimizers
    are one iteration (a GAN: D's phase, then G's); a phase closed by an
    optimizer that already stepped in the current iteration starts the next
    one (gradient accumulation: every ``accum`` steps; L-BFGS: each
    ``step(closure)`` with its closure calls). The last phase, which no
    optimizer closed yet (``pending`` lists any that stepped since), joins
    the current iteration unless that one already holds every optimizer
    seen. With no optimizer at all, every step is its own iteration.

    >>> group_iterations([(), (), (0,), (), (0,), ()])   # accumulation of 2
    [0, 0, 1, 1, 2, 2]
    >>> group_iterations([(), (), (0,), (1,), (), (0,)])  # D, D, G per iteration
    [0, 0, 0, 1, 1, 1]
    """
    count = len(stepped)
    if not any(stepped) and not pending:
        return list(range(count))
    starts = [at for at in range(count) if at == 0 or stepped[at]]  # first step of each phase
    closers = [tuple(stepped[start]) for start in starts[1:]] + [tuple(pending)]
    every = {ordinal for marks in stepped for ordinal in marks} | set(pending)
    result = [0] * count
    iteration, seen = 0, set()
    for phase, start in enumerate(starts):
        end = starts[phase + 1] if phase + 1 < len(starts) else count
        closing = set(closers[phase])
        if seen and (closing & seen or (not closing and seen >= every)):
            iteration, seen = iteration + 1, set()
        seen |= closing
        result[start:end] = [iteration] * (end - start)
    return result


class TrainingLoop:
    """Notes, per recorded step, the optimizers that stepped since the previous step (torch's global step hook).

    Optimizers are numbered in the order they first step. The marks are what
    run files keep; :meth:`iterations` groups the steps with
    :func:`group_iterations`.
    """

    def __init__(self, stepped: Iterable[Sequence[int]] = (), optimizers: Sequence[str] = (),
                 rates: Iterable[Sequence[tuple[float | None, ...]]] | None = None) -> None:
        self.stepped: list[tuple[int, ...]] = [tuple(marks) for marks in stepped]
        # Per step, beside each mark: the learning rate of each of that optimizer's parameter groups then.
        self.rates: list[tuple[tuple[float | None, ...], ...]] = [tuple(map(tuple, r)) for r in rates] \
            if rates is not None else [((),) * len(marks) for marks in self.stepped]
        self.optimizers: list[str] = list(optimizers)  # class names, by ordinal
        self.groups: dict[int, list[list[str]]] = {}  # ordinal -> the parameter names of each of its groups
        self.name_of: Callable[[Any], str | None] = lambda tensor: None  # a parameter's name (the recorder's)
        self.pending: list[int] = []
        self.pending_rates: list[tuple[float | None, ...]] = []
        self.described = True  # False once an optimizer or its groups are new: the run's meta is to update
        self._ordinals: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._grouped: list[int] | None = None
        self._handle: Any = None

    # -- watching ---------------------------------------------------------------------------------------------
    def watch(self) -> None:
        """Starts counting ``optimizer.step()`` calls (of every optimizer of the process)."""
        if self._handle is None:
            from torch.optim import optimizer as torch_optimizer  # here: reading a run file needs no torch

            self._handle = torch_optimizer.register_optimizer_step_post_hook(self._stepped)

    def unwatch(self) -> None:
        """Stops counting."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _stepped(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        try:
            self._note_step(optimizer)
        except Exception as error:  # inside the user's optimizer.step(): never raise there
            warnings.warn(f"vizgrad could not note an optimizer step ({error}); iterations may group wrongly",
                          RecordingWarning, stacklevel=2)

    def _note_step(self, optimizer: Any) -> None:
        with self._lock:
            ordinal = self._ordinals.get(optimizer)
            if ordinal is None:
                ordinal = self._ordinals[optimizer] = len(self.optimizers)
                self.optimizers.append(type(optimizer).__name__)
                self.described = False
            groups = getattr(optimizer, "param_groups", [])
            if ordinal not in self.groups or len(self.groups[ordinal]) != len(groups):
                self.groups[ordinal] = [[name for name in map(self.name_of, group.get("params", ())) if name]
                                        for group in groups]
                self.described = False
            self.pending.append(ordinal)
            self.pending_rates.append(tuple(_rate(group.get("lr")) for group in groups))
            self._grouped = None

    def description(self) -> dict[str, Any]:
        """What a run's meta keeps of the optimizers: their class names and each one's groups of parameter names."""
        with self._lock:
            self.described = True
            return {"optimizers": list(self.optimizers),
                    "optimizer_groups": {str(ordinal): names for ordinal, names in self.groups.items()}}

    def ordinal_of(self, optimizer: Any) -> int | None:
        """The number given to ``optimizer``, once it stepped."""
        return self._ordinals.get(optimizer)

    # -- steps ------------------------------------------------------------------------------------------------
    def take_step(self) -> tuple[int, ...]:
        """Marks a new step: returns (and clears) the optimizers that stepped since the previous one."""
        with self._lock:
            marks, self.pending = tuple(self.pending), []
            rates, self.pending_rates = tuple(self.pending_rates), []
            self.stepped.append(marks)
            self.rates.append(rates)
            self._grouped = None
            return marks

    def untake_step(self, marks: Sequence[int]) -> None:
        """Undoes the last :meth:`take_step` (its step could not be kept): its marks count for the next step."""
        with self._lock:
            self.stepped.pop()
            self.pending[:0] = marks
            self.pending_rates[:0] = self.rates.pop()
            self._grouped = None

    def add_step(self, marks: Sequence[int], rates: Sequence[tuple[float | None, ...]] = ()) -> None:
        """Appends a step read back from a file (or saved from another run)."""
        self.stepped.append(tuple(marks))
        self.rates.append(tuple(rates) if rates else ((),) * len(marks))
        self._grouped = None

    def rates_of(self, index: int) -> tuple[tuple[float | None, ...], ...]:
        """Beside each mark of step ``index``: the learning rates of that optimizer's groups."""
        return self.rates[index] if index < len(self.rates) else ()

    def learning_rates(self, name: str) -> list[float | None]:
        """The learning rate ``name``'s optimizer applied at the end of each iteration; ``None`` where unknown.

        The rate of an iteration is that of the step of the parameter's
        optimizer that closed it (the first one after its last step).
        """
        where = next(((ordinal, group) for ordinal, groups in self.groups.items()
                      for group, names in enumerate(groups) if name in names), None)
        grouped = self.iterations()
        count = grouped[-1] + 1 if grouped else 0
        if where is None:
            return [None] * count
        return list(self._rates_by_iteration(len(self.stepped), len(self.pending)).get(where, [None] * count))

    @functools.lru_cache(maxsize=4)  # noqa: B019 - one loop per run; keyed by how many steps it has seen
    def _rates_by_iteration(self, _steps: int, _pending: int) -> dict[tuple[int, int], tuple[float | None, ...]]:
        """(optimizer, group) -> its learning rate at the end of each iteration, in one pass over the marks."""
        grouped = self.iterations()
        count = grouped[-1] + 1 if grouped else 0
        out: dict[tuple[int, int], list[float | None]] = {}
        events = [(at, marks, self.rates_of(at)) for at, marks in enumerate(self.stepped) if marks]
        events.append((len(self.stepped), tuple(self.pending), tuple(self.pending_rates)))
        for at, marks, rates in events:
            if at == 0:
                continue
            iteration = grouped[at - 1]  # the optimizer steps before step ``at`` close what came before it
            for mark, rate in zip(marks, rates):
                for group, value in enumerate(rate):
                    out.setdefault((mark, group), [None] * count)[iteration] = value
        return {key: tuple(values) for key, values in out.items()}

    def iterations(self) -> list[int]:
        """The iteration of every step so far (recomputed when a step or an optimizer step came since)."""
        with self._lock:
            if self._grouped is None or len(self._grouped) != len(self.stepped):
                self._grouped = group_iterations(self.stepped, self.pending)
            return self._grouped

    def iteration(self, index: int) -> int:
        """The iteration of step ``index``."""
        grouped = self.iterations()
        return grouped[index] if 0 <= index < len(grouped) else index


def encode_marks(marks: Sequence[int], rates: Sequence[Sequence[float | None]]) -> str:
    """A step's optimizer marks as text: ``0@0.001;0.01,1@0.0002`` (ordinal, then its groups' learning rates)."""
    parts = []
    for at, mark in enumerate(marks):
        rate = rates[at] if at < len(rates) else ()
        parts.append(f"{mark}@" + ";".join("" if r is None else repr(float(r)) for r in rate) if rate else str(mark))
    return ",".join(parts)


def decode_marks(text: str | None) -> tuple[tuple[int, ...], tuple[tuple[float | None, ...], ...]]:
    """Inverse of :func:`encode_marks` (``ValueError`` for text that is not such marks)."""
    if not text:
        return (), ()
    marks, rates = [], []
    for part in text.split(","):
        mark, _, rate = part.partition("@")
        marks.append(int(mark))
        rates.append(tuple(float(r) if r else None for r in rate.split(";")) if rate else ())
    return tuple(marks), tuple(rates)


def _rate(value: Any) -> float | None:
    """A learning rate as a float (a tensor one too); ``None`` when there is none."""
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def summed(values: Iterable[float | None]) -> float | None:
    """The sum of ``values``, ``None`` when one is missing."""
    total = 0.0
    for value in values:
        if value is None:
            return None
        total += value
    return total


def build_iterations(grouped: Sequence[int], losses: Sequence[float | None],
                     names: Sequence[str | None], index_of: Callable[[int], int] = int) -> list[Iteration]:
    """:class:`Iteration` objects from each step's iteration, loss and loss name (steps in order)."""
    members: dict[int, list[int]] = {}
    for at, iteration in enumerate(grouped):
        members.setdefault(iteration, []).append(at)
    result = []
    for number, (iteration, ats) in enumerate(sorted(members.items())):
        by_name: dict[str | None, list[float | None]] = {}
        for at in ats:
            by_name.setdefault(names[at], []).append(losses[at])
        result.append(Iteration(number, tuple(index_of(at) for at in ats),
                                {name: summed(values) for name, values in by_name.items()}))
    return result
