"""User panels: small charts drawn beside the graph in the report that move with the steps.

A panel turns data the program logged into a JSON spec; the report's script
draws every panel of a kind the same way, so a new use needs no new code in
the report. Two kinds exist:

* :class:`ScatterLine`: points (fixed, or logged per step) and a line per step,
  e.g. the data of a regression and the model's current fit;
* :class:`Series`: logged scalars over the steps (accuracy, learning rate...),
  with the current step marked.

Values come from ``run.log(key, value)``, which attaches a JSON-able value to
the step just recorded. Add a panel with ``run.add_panel(panel)`` before or
after recording.

Example: the data and the fitted line of a linear regression.

>>> import torch, vizgrad
>>> from vizgrad.panels import ScatterLine
>>> x = torch.linspace(-1, 1, 8).reshape(8, 1); y = 2 * x + 3
>>> w = torch.zeros(1, 1, requires_grad=True); b = torch.zeros(1, 1, requires_grad=True)
>>> with vizgrad.record() as run:
...     run.add_panel(ScatterLine("Fit", x=x.flatten().tolist(), y=y.flatten().tolist(),
...                               line_key="fit"))
...     for _ in range(3):
...         loss = ((x.mm(w) + b - y) ** 2).mean()
...         loss.backward()
...         run.log("fit", {"slope": w.item(), "intercept": b.item()})
...         with torch.no_grad():
...             w -= 0.1 * w.grad; b -= 0.1 * b.grad
...         w.grad = None; b.grad = None
>>> spec = run.panels[0].spec(run, [0, 1, 2])
>>> spec["kind"], len(spec["lines"]), spec["lines"][0]
('scatter_line', 3, [[-1.0, 1.0], [0.0, 0.0]])
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from vizgrad.errors import UsageError

__all__ = ["Panel", "ScatterLine", "Series", "panel_from_dict", "round_sig", "round_sig_all"]

#: Significant digits kept for numbers drawn in panels (the report is a picture, not a data file).
DIGITS = 5


def round_sig_all(values: Any, digits: int = DIGITS, found: Any = None) -> list[float | None]:
    """:func:`round_sig` of every value of an array at once (``None`` where missing, not finite or not ``found``).

    >>> round_sig_all([3.14159265, float("nan"), 0.0, -123456.0], 3)
    [3.14, None, 0.0, -123000.0]
    """
    array = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(array) if found is None else np.isfinite(array) & np.asarray(found, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        decimals = np.where(finite & (array != 0), digits - 1 - np.floor(np.log10(np.abs(array))), 0).astype(np.int64)
    out: list[float | None] = [None] * len(array)
    for decimal in np.unique(decimals[finite]):  # np.round is exact decimal rounding per number of decimals
        at = np.flatnonzero(finite & (decimals == decimal))
        for k, value in zip(at.tolist(), np.round(array[at], int(decimal)).tolist()):
            out[k] = value
    return out


def round_sig(value: Any, digits: int = DIGITS) -> float | None:
    """``value`` as a float rounded to ``digits`` significant digits; ``None`` if missing or not finite.

    >>> round_sig(3.14159265), round_sig(float("nan")), round_sig(None)
    (3.1416, None, None)
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    if number == 0.0:
        return 0.0
    # round() to a number of decimals is exact decimal rounding, like f"{number:.{digits}g}", and faster.
    return round(number, digits - 1 - math.floor(math.log10(abs(number))))


def _numbers(values: Any, what: str) -> list[float | None]:
    """A flat list of rounded numbers from a sequence (or a tensor/array with ``tolist``)."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, (int, float)):
        values = [values]
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
        raise UsageError(f"{what} must be a sequence of numbers, got {type(values).__name__}")
    flat: list[Any] = []
    for item in values:  # a column vector (N, 1) logged with .tolist() is fine too
        flat.extend(item if isinstance(item, (list, tuple)) else [item])
    return [round_sig(v) for v in flat]


@dataclasses.dataclass
class Panel:
    """Base of every panel: a ``kind`` the report's script knows and a title.

    Subclasses implement :meth:`spec`; :meth:`to_dict` / :func:`panel_from_dict`
    let run files keep panels.
    """

    kind: ClassVar[str] = "panel"
    title: str

    def spec(self, run: Any, steps: Sequence[int]) -> dict[str, Any]:
        """The JSON-able description the report draws, for the selected step indices."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The panel's settings as a JSON-able dict (with its ``kind``)."""
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclasses.dataclass
class ScatterLine(Panel):
    """Points and a line per step, e.g. a regression's data and its current fit.

    Points are fixed (``x`` and ``y``) or logged per step (``x_key`` and
    ``y_key`` name ``run.log`` keys holding sequences). The line of a step is
    the value logged under ``line_key``: a list of ``[x, y]`` points, or
    ``{"slope": a, "intercept": c}`` for ``y = a*x + c`` drawn across the
    points' x range.

    Args:
        title: Heading of the panel.
        x: Fixed x coordinates of the points.
        y: Fixed y coordinates (same length as ``x``).
        x_key: ``run.log`` key of per-step x coordinates (instead of ``x``).
        y_key: ``run.log`` key of per-step y coordinates (instead of ``y``).
        line_key: ``run.log`` key of the per-step line (optional).
        x_label: Axis label.
        y_label: Axis label.
    """

    kind: ClassVar[str] = "scatter_line"
    x: Sequence[float] | None = None
    y: Sequence[float] | None = None
    x_key: str | None = None
    y_key: str | None = None
    line_key: str | None = None
    x_label: str = "x"
    y_label: str = "y"

    def __post_init__(self) -> None:
        if (self.x is None) != (self.y is None):
            raise UsageError("ScatterLine needs both x and y for fixed points, or neither")
        if (self.x_key is None) != (self.y_key is None):
            raise UsageError("ScatterLine needs both x_key and y_key for logged points, or neither")
        if self.x is not None and self.x_key is not None:
            raise UsageError("ScatterLine takes fixed points (x, y) or logged ones (x_key, y_key), not both")
        if self.x is not None:
            self.x = _numbers(self.x, "x")
            self.y = _numbers(self.y, "y")
            if len(self.x) != len(self.y):
                raise UsageError(f"x has {len(self.x)} values but y has {len(self.y)}; give one y per x")
        if self.x is None and self.x_key is None and self.line_key is None:
            raise UsageError("ScatterLine draws nothing: give points (x and y, or x_key and y_key) or a line_key")

    def spec(self, run: Any, steps: Sequence[int]) -> dict[str, Any]:
        """Fixed points once, and per selected step its logged points and line."""
        step_points: list[list[list[float | None]] | None] | None = None
        if self.x_key is not None:
            step_points = [self._logged_points(run[i].data) for i in steps]
        x_range = self._x_range(step_points)
        lines = None
        if self.line_key is not None:
            lines = [self._line(run[i].data.get(self.line_key), x_range) for i in steps]
        return {
            "kind": self.kind, "title": self.title, "xLabel": self.x_label, "yLabel": self.y_label,
            "points": None if self.x is None else [self.x, self.y],
            "stepPoints": step_points, "lines": lines,
        }

    def _logged_points(self, data: Mapping[str, Any]) -> list[list[float | None]] | None:
        if self.x_key not in data or self.y_key not in data:
            return None
        xs = _numbers(data[self.x_key], self.x_key or "x_key")
        ys = _numbers(data[self.y_key], self.y_key or "y_key")
        count = min(len(xs), len(ys))
        return [xs[:count], ys[:count]]

    def _x_range(self, step_points: Sequence[Any] | None) -> tuple[float, float] | None:
        xs = [v for v in (self.x or []) if v is not None]
        for points in step_points or ():
            if points is not None:
                xs.extend(v for v in points[0] if v is not None)
        return (min(xs), max(xs)) if xs else None

    @staticmethod
    def _line(value: Any, x_range: tuple[float, float] | None) -> list[list[float | None]] | None:
        """A line as ``[xs, ys]``, from a point list or a slope/intercept pair; ``None`` for anything else."""
        if value is None:
            return None
        if isinstance(value, Mapping):
            if x_range is None:
                return None
            try:
                slope, intercept = float(value.get("slope", 0.0)), float(value.get("intercept", 0.0))
            except (TypeError, ValueError):  # not numbers: draw no line rather than fail the report
                return None
            xs = list(x_range)
            return [[round_sig(x) for x in xs], [round_sig(slope * x + intercept) for x in xs]]
        if not isinstance(value, Sequence) or isinstance(value, str):  # not a line either
            return None
        points = [p for p in value if isinstance(p, Sequence) and len(p) == 2]
        return [[round_sig(p[0]) for p in points], [round_sig(p[1]) for p in points]]


@dataclasses.dataclass
class Series(Panel):
    """Scalars logged each step, one line per key, with the current step marked.

    Args:
        title: Heading of the panel.
        keys: ``run.log`` keys of the scalars to draw.
        log_scale: Draw the y axis on a log scale (positive values only).
    """

    kind: ClassVar[str] = "series"
    keys: Sequence[str] = ()
    log_scale: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.keys, str):
            self.keys = [self.keys]
        self.keys = list(self.keys)
        if not self.keys:
            raise UsageError("Series needs at least one run.log key to draw")

    def spec(self, run: Any, steps: Sequence[int]) -> dict[str, Any]:
        """One value per selected step and key (``None`` where nothing was logged)."""
        return {
            "kind": self.kind, "title": self.title, "log": bool(self.log_scale),
            "series": [{"name": key, "values": [round_sig(run[i].data.get(key)) for i in steps]}
                       for key in self.keys],
        }


_KINDS: dict[str, type[Panel]] = {cls.kind: cls for cls in (ScatterLine, Series)}


def panel_from_dict(data: Mapping[str, Any]) -> Panel:
    """Rebuilds a panel from :meth:`Panel.to_dict` (for run files).

    >>> panel_from_dict(Series("Accuracy", keys=["acc"]).to_dict())
    Series(title='Accuracy', keys=['acc'], log_scale=False)
    """
    fields = dict(data)
    kind = fields.pop("kind", None)
    cls = _KINDS.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise UsageError(f"unknown panel kind {kind!r}; known kinds: {', '.join(sorted(_KINDS))}")
    return cls(**fields)
