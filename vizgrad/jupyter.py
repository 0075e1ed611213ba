"""A live view for notebooks: one output that shows the latest step while the model trains.

>>> # in a notebook cell
>>> # view = LiveView()
>>> # with vizgrad.record(on_step=[view.update]) as run:
>>> #     ...train...
>>> # or, the same in one line: with vizgrad.jupyter.live() as run: ...

The graph is laid out once per topology; each update only restyles it, and
updates are throttled (by default at most two a second) so drawing never slows
training down. The last step always shows: a step skipped by the throttle is
drawn once the interval has passed, unless a newer one came first.
"""

from __future__ import annotations

import contextlib
import html
import math
import threading
import time
import warnings
from typing import Any, Iterator

from vizgrad import frames
from vizgrad.view import view_of
from vizgrad.colors import ColorScale, norm_range, scale_between
from vizgrad.errors import MissingDependencyError, RecordingWarning, UsageError
from vizgrad.findings import findings as findings_of
from vizgrad.findings import params_nonfinite
from vizgrad.health import grad_flow, readable_rows
from vizgrad.recorder import record
from vizgrad.run import Run, Step

__all__ = ["LiveView", "live"]

#: Most loss values the sparkline draws (older ones are thinned out).
_SPARK_POINTS = 240
#: Recent steps the gradient-flow strip keeps, and the most columns it draws of them.
_FLOW_STEPS, _FLOW_COLUMNS = 240, 60
#: Colour levels of the strip (cells of one level are one SVG path).
_FLOW_LEVELS = 24


def _display_module() -> Any:
    try:
        from IPython import display
    except ImportError as error:
        raise MissingDependencyError(
            "the live view needs IPython (it runs in Jupyter); run 'pip install ipython'") from error
    return display


class LiveView:
    """One notebook output updated in place with the latest recorded step.

    Pass :meth:`update` to ``vizgrad.record(on_step=[...])`` and call
    :meth:`close` after training (or use :func:`live`, which does both). The
    view is shown when created (or at the first update when ``display=False``).

    Args:
        every: Draw only every ``every``-th step (and, at :meth:`close`, the latest).
        interval: Least seconds between two redraws.
        engine: Graphviz engine for the layout (``None``/``"auto"``, ``"dot"``, ``"wasm"``).
        height: Most pixels of height the graph may take.
        display: Show the (empty) output right away.
    """

    def __init__(self, *, every: int = 1, interval: float = 0.5, engine: str | None = None, height: int = 520,
                 display: bool = True) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise UsageError(f"every must be a positive whole number of steps, got {every!r}")
        if interval < 0:
            raise UsageError(f"interval must be zero or more seconds, got {interval!r}")
        self.every = every
        self.interval = float(interval)
        self.height = int(height)
        self.cache = frames.LayoutCache(engine)
        self.draws = 0
        self._handle: Any = None
        self._losses: list[float | None] = []
        self._flow: list[tuple[int, dict[str, float]]] = []  # recent steps: (index, layer -> gradient RMS)
        self._flow_rows: tuple[str, list[str]] = ("param", [])  # what the rows are, and their names
        self._found: dict[tuple[Any, ...], list[Any]] = {}  # step findings so far: key -> [finding, steps]
        self._norms: tuple[float, float] | None = None  # smallest and largest gradient norm so far
        self._pending: Step | None = None  # held back by the throttle
        self._latest: Step | None = None
        self._shown: Step | None = None
        self._last_draw = -math.inf
        self._timer: threading.Timer | None = None
        self._lock = threading.RLock()
        if display:
            self._show(self._placeholder())

    # -- the callback ------------------------------------------------------------------------
    def update(self, step: Step) -> None:
        """Takes a new step; redraws now if the last redraw is old enough, else soon."""
        self._losses.append(step.loss)
        self._widen_norms(step)
        self._note_flow(step)
        self._note_findings(step)
        self._latest = step
        if step.index % self.every:
            return
        with self._lock:
            wait = self._last_draw + self.interval - time.monotonic()
            if wait <= 0:
                self._cancel_timer()
                self._pending = None
                self._draw(step)
                return
            self._pending = step
            if self._timer is None:
                self._timer = threading.Timer(wait, self.flush)
                self._timer.daemon = True
                self._timer.start()

    __call__ = update

    def flush(self) -> None:
        """Draws the step the throttle held back, if any."""
        with self._lock:
            self._cancel_timer()
            step, self._pending = self._pending, None
            if step is not None:
                self._draw(step)

    def close(self) -> None:
        """Draws the latest step if it is not shown yet, and stops the timer.

        Call it when training ends (:func:`live` does): the latest step may
        have been skipped by ``every``.
        """
        with self._lock:
            self._cancel_timer()
            self._pending = None
            if self._latest is not None and self._latest is not self._shown:
                self._draw(self._latest)

    # -- drawing -------------------------------------------------------------------------------
    def html(self, step: Step) -> str:
        """The HTML the view shows for ``step``: a header, the painted graph and a loss sparkline."""
        drawn = view_of(step.graph)  # the default view, as every output draws it
        layout = self.cache.get(drawn)
        svg = frames.render_frame(layout, frames.paint(step, self._scale(), drawn), scalable=True)
        svg = svg.replace("<svg ", '<svg style="width:100%;height:100%" ', 1)
        loss = "–" if step.loss is None else f"{step.loss:.6g}"
        return (
            '<div class="vizgrad-live" style="font:13px system-ui,sans-serif;color:#1f2328">'
            '<div style="display:flex;gap:18px;align-items:center;margin-bottom:4px">'
            f'<b>vizgrad</b><span>step <b>{step.index}</b></span><span>loss <b>{html.escape(loss)}</b></span>'
            f'{self._sparkline()}</div>'
            f'{self._findings_list()}'
            f'{self._flow_strip()}'
            f'<div style="max-height:{self.height}px;overflow:auto;border:1px solid #d1d9e0;border-radius:6px">'
            f'<div style="height:{min(self.height - 10, layout.height * 4 / 3):.0f}px">'
            f'{svg}</div></div></div>'
        )

    def _draw(self, step: Step) -> None:
        self._show(self.html(step))
        self._shown = step
        self._last_draw = time.monotonic()
        self.draws += 1

    def _show(self, markup: str) -> None:
        display = _display_module()
        content = display.HTML(markup)
        if self._handle is None:
            self._handle = display.display(content, display_id=True)
        else:
            self._handle.update(content)

    @staticmethod
    def _placeholder() -> str:
        return ('<div class="vizgrad-live" style="font:13px system-ui,sans-serif;color:#59636e">'
                'vizgrad: waiting for the first backward()…</div>')

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _widen_norms(self, step: Step) -> None:
        """Grows the colour scale's range with this step's gradient norms (every step counts)."""
        found = norm_range([step.table], "rms")
        if found is not None and self._norms is not None:
            found = (min(found[0], self._norms[0]), max(found[1], self._norms[1]))
        self._norms = found or self._norms

    def _scale(self) -> ColorScale:
        return scale_between(self._norms, "rms")

    def _note_flow(self, step: Step) -> None:
        """Keeps this step's gradient RMS per layer (the rows the report's flow panel opens with)."""
        try:
            by, depth = readable_rows([step])
            flow = grad_flow([step], by, "param_grad", depth)
        except Exception as error:  # the view must never stop training: this step has no column
            warnings.warn(f"vizgrad's live view could not read step {step.index}'s gradient flow ({error})",
                          RecordingWarning, stacklevel=2)
            return
        self._flow.append((step.index, {name: float(flow.rms[0, k]) for k, name in enumerate(flow.names)}))
        del self._flow[:-_FLOW_STEPS]
        self._flow_rows = (by if by == "param" else f"module depth {depth}", flow.names)

    def _note_findings(self, step: Step) -> None:
        """Keeps what this step alone tells (a NaN/Inf origin, a mismatched hand-written gradient, a skipped step).

        Findings over many steps (vanishing, exploding, dead layers) need the
        whole run: ``run.findings()`` and the report have them.
        """
        checks = step.checks or {}
        if not (checks.get("origins") or checks.get("forward") or checks.get("manual") or checks.get("amp")):
            return
        try:
            found = findings_of([step])
        except Exception as error:  # the live view must never stop training
            warnings.warn(f"vizgrad's live view could not read step {step.index}'s findings ({error})",
                          RecordingWarning, stacklevel=2)
            return
        carried = any(key[0] == "nonfinite" for key in self._found) and params_nonfinite(step)
        for finding in found:
            key = (finding.kind, finding.module, finding.op, finding.detail.get("param"))
            if carried and finding.kind == "nonfinite":  # an earlier step left NaN in the parameters
                key = next(known for known in self._found if known[0] == "nonfinite")
            if key in self._found:
                self._found[key][1] += 1
            else:
                self._found[key] = [finding, 1]

    def _findings_list(self, limit: int = 6) -> str:
        """The findings so far, one line each, the first step first."""
        if not self._found:
            return ""
        lines = []
        for finding, count in list(self._found.values())[:limit]:
            repeat = f" ({count} steps)" if count > 1 else ""
            where = f" — {finding.where}" if finding.where else ""
            lines.append(f'<div class="vizgrad-finding" data-kind="{finding.kind}"><b>{finding.kind}</b> step '
                         f'{finding.step}{repeat}: {html.escape(finding.message)}{html.escape(where)}</div>')
        more = len(self._found) - limit
        if more > 0:
            lines.append(f"<div>… {more} more: run.findings()</div>")
        return ('<div style="margin:2px 0 6px;padding:4px 8px;background:#fff8f0;border:1px solid #ffd8a8;'
                f'border-radius:6px;font-size:12px">{"".join(lines)}</div>')

    def _flow_strip(self, width: int = 480, row: int = 9) -> str:
        """The gradient-flow strip: layers (rows) by recent steps (columns), coloured by RMS on a log scale."""
        kind, names = self._flow_rows
        if not names or not self._flow:
            return ""
        names = names[:40]
        columns = min(_FLOW_COLUMNS, len(self._flow))
        cells = []  # (column, row, log10 value) of the geometric mean of each bucket of steps
        for c in range(columns):
            bucket = self._flow[c * len(self._flow) // columns:(c + 1) * len(self._flow) // columns]
            for r, name in enumerate(names):
                logs = [math.log10(v) for _, values in bucket if (v := values.get(name, math.nan)) > 0
                        and math.isfinite(v)]
                if logs:
                    cells.append((c, r, sum(logs) / len(logs)))
        if not cells:
            return ""
        lo, hi = min(cell[2] for cell in cells), max(cell[2] for cell in cells)
        span = hi - lo or 1.0
        label = 110
        cell = (width - label) / columns
        paths: dict[int, list[str]] = {}
        for c, r, value in cells:
            level = round((value - lo) / span * (_FLOW_LEVELS - 1))
            paths.setdefault(level, []).append(f"M{label + c * cell:.1f} {r * row}h{cell:.2f}v{row}h{-cell:.2f}z")
        ramp = [ColorScale(0, 1).color(10 ** (k / (_FLOW_LEVELS - 1))) or "#cccccc" for k in range(_FLOW_LEVELS)]
        body = "".join(f'<path fill="{ramp[level]}" d="{"".join(d)}"/>' for level, d in sorted(paths.items()))
        texts = "".join(f'<text x="{label - 4}" y="{r * row + row - 1}" text-anchor="end">'
                        f'{html.escape(name or "(model)")}</text>' for r, name in enumerate(names))
        height = len(names) * row
        first, last = self._flow[0][0], self._flow[-1][0]
        return (f'<div style="margin:2px 0 6px;color:#59636e;font-size:11px">gradient flow: RMS of .grad per '
                f'{html.escape(kind)}, steps {first}–{last}, log colour {10 ** lo:.2g} … {10 ** hi:.2g}</div>'
                f'<svg class="vizgrad-flow" style="display:block;margin-bottom:6px" width="{width}" height="{height}" '
                f'viewBox="0 0 {width} {height}" '
                f'font-size="{row - 1}" font-family="system-ui,sans-serif" fill="#59636e" role="img" '
                f'aria-label="gradient RMS per layer and step">{texts}{body}</svg>')

    def _sparkline(self, width: int = 160, height: int = 28) -> str:
        """The loss so far as a small inline SVG line (log scale)."""
        values = [v for v in self._losses if v is not None and math.isfinite(v) and v > 0]
        if len(values) < 2:
            return ""
        stride = max(1, math.ceil(len(values) / _SPARK_POINTS))
        values = values[::stride] + ([values[-1]] if (len(values) - 1) % stride else [])
        logs = [math.log10(v) for v in values]
        lo, hi = min(logs), max(logs)
        span = hi - lo or 1.0
        step_x = (width - 4) / (len(logs) - 1)
        points = " ".join(f"{2 + i * step_x:.1f},{height - 2 - (v - lo) / span * (height - 4):.1f}"
                          for i, v in enumerate(logs))
        return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" aria-label="loss">'
                f'<polyline points="{points}" fill="none" stroke="#0969da" stroke-width="1.5"/></svg>')


@contextlib.contextmanager
def live(*, every: int = 1, interval: float = 0.5, engine: str | None = None, height: int = 520,
         **record_options: Any) -> Iterator[Run]:
    """Records like :func:`vizgrad.record` and shows the latest step live in the notebook.

    Args:
        every: Draw every ``every``-th step.
        interval: Least seconds between two redraws.
        engine: Graphviz engine of the layout.
        height: Most pixels of height the graph may take.
        **record_options: Passed to :func:`vizgrad.record` (``params``, ``keep`` ...).

    Yields:
        The :class:`~vizgrad.Run` being recorded.
    """
    view = LiveView(every=every, interval=interval, engine=engine, height=height)
    extra = record_options.pop("on_step", ())
    callbacks = [*([extra] if callable(extra) else extra), view.update]
    try:
        with record(on_step=callbacks, **record_options) as run:
            yield run
    finally:
        view.close()
