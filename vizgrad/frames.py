"""Frames: each graph topology laid out once, then painted with every selected step's gradients.

The pieces live in modules of their own: :mod:`vizgrad.dot` (DOT skeletons),
:mod:`vizgrad.layout` (layouts and their SVG templates), :mod:`vizgrad.paint`
(the painter) and :mod:`vizgrad.selection` (which steps to draw); this module
puts them together for a run and re-exports what callers use.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Sequence

from vizgrad.colors import FLAG_COLORS, ColorScale, colorbar, scale_between, scale_for, text_color_for
from vizgrad.dot import KIND_STYLES, LINE_WIDTH, graph_dot, value_line_count
from vizgrad.layout import FLAGS, FONT_FAMILY, FRAME_CSS, Layout, LayoutCache, render_frame
from vizgrad.paint import PALETTE, paint, paint_segment, step_of
from vizgrad.selection import select_steps
from vizgrad.view import ViewOptions, view_of

if TYPE_CHECKING:  # pragma: no cover
    from vizgrad.run import Run, Step

__all__ = [
    "FONT_FAMILY", "LINE_WIDTH", "FLAGS", "FRAME_CSS", "KIND_STYLES", "PALETTE", "graph_dot", "value_line_count",
    "Layout", "LayoutCache", "ColorScale", "scale_for", "run_scale", "colorbar", "text_color_for", "paint",
    "paint_segment", "render_frame", "select_steps", "segments", "FrameRenderer", "annotate",
    "annotated_width",
]

#: Steps painted together when frames are drawn one by one (bounds the columns held at once).
_PAINT_CHUNK = 256


def run_scale(run: Run, measure: str = "rms") -> ColorScale:
    """The colour scale spanning every gradient of the whole run: the same fills whatever steps are drawn.

    ``measure``: ``rms`` (norm / sqrt(elements), the default: tensor size does not look like health) or ``norm``.
    """
    return scale_between(run.norm_range(measure), measure)


def segments(steps: Sequence[Step]) -> list[list[Step]]:
    """``steps`` cut into runs of consecutive steps that share one graph (equal graphs count as one), in order."""
    runs: list[list[Step]] = []
    for step in steps:
        if runs and (runs[-1][0].graph is step.graph or runs[-1][0].graph == step.graph):
            runs[-1].append(step)
        else:
            runs.append([step])
    return runs


class FrameRenderer:
    """The frames of a run: one Graphviz layout per topology, one painted SVG per selected step.

    Args:
        run: The recorded run.
        engine: Graphviz engine (see :func:`vizgrad.engine.render_dot`).
        every: Draw every ``every``-th step (see :func:`select_steps`).
        steps: A step range (see :func:`select_steps`).
        scale: The colour scale; by default one spanning the whole run.
        cache: A :class:`LayoutCache` to share; by default a new one.
        view: What each frame draws of a graph (modules collapsed, repeats
            folded; see :class:`vizgrad.view.ViewOptions`); by default the
            most detailed view within 150 drawn items.

    Iterating yields ``(step_index, svg)`` for each selected step.
    """

    def __init__(self, run: Run, engine: str | None = None, *, every: int = 1,
                 steps: str | slice | int | None = None, scale: ColorScale | None = None,
                 cache: LayoutCache | None = None, view: ViewOptions | None = None) -> None:
        self.run = run
        self.indices = select_steps(len(run.steps), every, steps)
        self.cache = cache if cache is not None else LayoutCache(engine)
        self.view = view or ViewOptions()
        self._scale = scale

    @property
    def scale(self) -> ColorScale:
        """The colour scale (spanning all of the run's steps, computed on first use)."""
        if self._scale is None:
            self._scale = run_scale(self.run)
        return self._scale

    def __len__(self) -> int:
        return len(self.indices)

    def frame(self, index: int, *, scalable: bool = False) -> str:
        """The SVG of step ``index``."""
        step = self.run.steps[index]
        drawn = view_of(step.graph, self.view)
        return render_frame(self.cache.get(drawn), paint(step, self.scale, drawn), scalable=scalable)

    def __iter__(self) -> Iterator[tuple[int, str]]:
        scale = self.scale
        for start in range(0, len(self.indices), _PAINT_CHUNK):
            chunk = [self.run.steps[i] for i in self.indices[start:start + _PAINT_CHUNK]]
            for group in segments(chunk):
                drawn = view_of(group[0].graph, self.view)
                layout = self.cache.get(drawn)
                painted = paint_segment(group, scale, inspector=False, graph=drawn)
                for k, step in enumerate(group):
                    yield step.index, render_frame(layout, step_of(painted, k))

    def svgs(self) -> Iterator[str]:
        """Only the SVG documents, in order (what :mod:`vizgrad.raster` writers take)."""
        for _, svg in self:
            yield svg

    def annotated_svgs(self) -> Iterator[str]:
        """The frames with a heading (step and loss) and the colour legend: what GIF and MP4 frames show."""
        for index, svg in self:
            yield annotate(svg, self.layout_of(index), step=index, loss=self.run.steps[index].loss, scale=self.scale)

    def layout_of(self, index: int) -> Layout:
        """The layout step ``index`` is drawn with (of the view this renderer draws)."""
        return self.cache.get(view_of(self.run.steps[index].graph, self.view))

    def layouts(self) -> list[Layout]:
        """The distinct layouts the selected steps use, in first-use order."""
        found: dict[str, Layout] = {}
        for index in self.indices:
            layout = self.layout_of(index)
            found.setdefault(layout.key, layout)
        return list(found.values())


_HEADING = 26.0  # points above the graph for the step and loss
_LEGEND = 46.0  # points below it for the colour bar and the flags
_MIN_WIDTH = 380.0  # points: room for the legend under a narrow graph


def annotated_width(layout: Layout) -> float:
    """The width in points of :func:`annotate`'s frames of ``layout``."""
    return max(layout.width, _MIN_WIDTH)


def annotate(svg: str, layout: Layout, *, step: int, loss: float | None, scale: ColorScale) -> str:
    """A frame with its step number and loss above the graph and the colour legend below it.

    Args:
        svg: The frame, from :func:`render_frame` (natural size).
        layout: Its layout (for the size).
        step: The step number shown.
        loss: The step's loss (``None``: not a scalar).
        scale: The colour scale the frame was painted with.

    Returns:
        An SVG document (sizes in points) that holds the frame as a nested ``<svg>``.
    """
    import html

    width = annotated_width(layout)
    height = layout.height + _HEADING + _LEGEND
    loss_text = "–" if loss is None else f"{loss:.6g}"
    # The frame's own size is in pt; inside, the outer viewBox counts points as user units.
    inner = re.sub(r'^<svg width="[^"]*" height="[^"]*" ', "<svg ", svg, count=1)
    inner = inner.replace("<svg ", f'<svg x="{(width - layout.width) / 2:.2f}" y="{_HEADING:.2f}" '
                                   f'width="{layout.width:.2f}" height="{layout.height:.2f}" ', 1)
    bar = colorbar(scale)
    stops = "".join(f'<stop offset="{offset}" stop-color="{color}"/>' for offset, color in bar["stops"])
    top = layout.height + _HEADING + 8
    ticks = "".join(
        f'<text x="{10 + 180 * offset:.1f}" y="{top + 24:.1f}" text-anchor="middle">{html.escape(label)}</text>'
        for offset, label in bar["ticks"])
    flags = []
    x = 220.0
    for flag, label in (("nan", "NaN"), ("inf", "Inf"), ("zero", "zero"), ("none", "no gradient")):
        dash = "1 2" if flag == "none" else "4 2"
        flags.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="14" height="10" fill="{FLAG_COLORS[flag]}" '
                     f'stroke="#57606a" stroke-dasharray="{dash}"/>'
                     f'<text x="{x + 18:.1f}" y="{top + 9:.1f}">{label}</text>')
        x += 24 + 6.5 * len(label)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.2f}pt" height="{height:.2f}pt" '
        f'viewBox="0 0 {width:.2f} {height:.2f}" font-family="{html.escape(FONT_FAMILY, quote=True)}" font-size="11">'
        f'<rect width="100%" height="100%" fill="#ffffff"/>'
        f'<text x="10" y="18" font-size="13" font-weight="bold">step {step}</text>'
        f'<text x="{width - 10:.2f}" y="18" font-size="13" text-anchor="end">loss {html.escape(loss_text)}</text>'
        f'{inner}'
        f'<defs><linearGradient id="vg-legend">{stops}</linearGradient></defs>'
        f'<g font-size="9" fill="#24292f">'
        f'<rect x="10" y="{top:.1f}" width="180" height="10" fill="url(#vg-legend)" stroke="#8c959f" stroke-width="0.5"/>'
        f'{ticks}<text x="10" y="{top - 2:.1f}">{html.escape(bar["label"])}</text>{"".join(flags)}</g></svg>'
    )
