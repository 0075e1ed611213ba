"""The HTML report: one self-contained file that plays a run step by step.

Each distinct graph topology is laid out by Graphviz once and embedded once;
every step adds only its paint (colours, widths, number labels, flags) and
the gradient statistics of its nodes, as compact JSON that the page's script
applies to the graph. The file makes no network request: scripts, styles and
charts are all inline.
"""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import math
import xml.etree.ElementTree as ElementTree
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import jinja2
import numpy as np
from markupsafe import Markup

from vizgrad import frames, gradtable
from vizgrad.colors import FLAG_COLORS, MEASURES, VIRIDIS, ColorScale
from vizgrad.paint import INK
from vizgrad.rows import SegmentRows, gather_rows
from vizgrad.errors import LayoutError, OutputError, UsageError
from vizgrad.gcpause import paused_gc
from vizgrad.graph import format_shape, short_op
from vizgrad.health import flow_panel
from vizgrad.layout import compact_geometry
from vizgrad.panels import round_sig, round_sig_all
from vizgrad.view import MAX_STATES, ViewOptions, explore, plan_of, view_of

__all__ = ["Report", "FLAGS", "embed_json", "sanitize_svg"]

#: Flags a painted node or edge can carry; the page adds class ``vg-flag-<flag>``.
FLAGS = frames.FLAGS

#: Significant digits of statistics and losses in the report.
DIGITS = 4

#: Characters of page data past which the report sends it gzip+base64 (inflated by the page; several times smaller).
PACK_DATA_ABOVE = 32 * 1024

#: Characters of page data past which the report sends the parts the first view does not draw apart (see
#: :func:`_lazy_parts`), for the page to inflate when it first shows them.
SPLIT_DATA_ABOVE = 1 << 20

#: Parameter charts the page draws before "show all" (the others' series are inflated on that click).
PARAMS_SHOWN = 8

#: Height of the report's frame when shown inline in Jupyter.
NOTEBOOK_HEIGHT_PX = 780

_SVG_NS = "http://www.w3.org/2000/svg"
_XLINK_NS = "http://www.w3.org/1999/xlink"
ElementTree.register_namespace("", _SVG_NS)
ElementTree.register_namespace("xlink", _XLINK_NS)

# Elements that could run code or load something if a layout ever contained them.
_UNSAFE_TAGS = {"script", "foreignObject", "iframe", "object", "embed", "image", "use", "style"}


def embed_json(data: Any) -> Markup:
    """JSON text safe inside ``<script type="application/json">``.

    ``<``, ``>`` and ``&`` become ``\\u003c``-style escapes, so no string in
    the data can close the script element or start a comment; ``JSON.parse``
    reads them back unchanged. Non-finite floats are refused (JSON has none).

    >>> str(embed_json({"name": "</script><b>"}))
    '{"name":"\\\\u003c/script\\\\u003e\\\\u003cb\\\\u003e"}'
    """
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return Markup(text)


def sanitize_svg(svg: str) -> str:
    """An SVG layout reduced to what the report needs, safe to inline in HTML.

    Drops the XML prolog, comments, the graph's own ``<title>``, embedded
    ``<style>`` (the page styles every layout once) and anything that could
    run code or fetch a resource (scripts, ``foreignObject``, ``on*``
    attributes, links). Text is re-escaped on output.

    Raises:
        LayoutError: The layout is not well-formed SVG.
    """
    try:
        root = ElementTree.fromstring(svg.encode("utf-8") if isinstance(svg, str) else svg)
    except ElementTree.ParseError as error:
        raise LayoutError(f"a graph layout is not well-formed SVG ({error}); this is a bug in vizgrad") from error
    for parent in list(root.iter()):
        is_graph_group = "graph" in parent.get("class", "").split()
        for child in list(parent):
            local = _local(child.tag)
            if local in _UNSAFE_TAGS or (local == "title" and (parent is root or is_graph_group)):
                parent.remove(child)
            elif local == "a":  # keep what a link wraps, drop the link
                index = list(parent).index(child)
                parent.remove(child)
                for offset, grandchild in enumerate(list(child)):
                    parent.insert(index + offset, grandchild)
        for name in list(parent.attrib):
            local = _local(name).lower()
            if local.startswith("on") or local == "href" or (local == "style" and "url(" in parent.attrib[name]):
                del parent.attrib[name]
        compact_geometry(parent)
    return ElementTree.tostring(root, encoding="unicode")


def _local(tag: Any) -> str:
    """An element or attribute name without its XML namespace."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _number(value: Any, digits: int = DIGITS) -> float | int | str | None:
    """A float rounded for display; NaN and infinities as the strings the page shows."""
    if value is None:
        return None
    value = float(value)
    if value - value != 0.0:  # NaN or an infinity
        return "NaN" if value != value else "Inf" if value > 0 else "-Inf"
    rounded = round_sig(value, digits)
    return int(rounded) if rounded.is_integer() and abs(rounded) < 1e15 else rounded  # "1" is shorter than "1.0"


class Report:
    """A self-contained HTML player over the steps of a run.

    Args:
        run: The recorded :class:`~vizgrad.Run`.
        every: Keep every ``every``-th step (for long runs).
        steps: The steps to keep: ``None`` for all, ``"A:B"`` or a ``slice``.
        engine: Graphviz engine for the layouts: ``None``/``"auto"``, ``"dot"``
            or ``"wasm"``.
        title: Heading of the page (default: the run's ``meta["title"]`` or
            "vizgrad report").
        view: What the graph view draws (modules collapsed, repeats folded; see
            :class:`vizgrad.view.ViewOptions`); by default the most detailed
            view within 150 drawn items.
        views: How many views (expanded, collapsed or unfolded by a click)
            the report prepares, nearest to the first one first (see
            :func:`vizgrad.view.explore`); each costs a layout per graph shape.
        scale: What the colours of nodes, edges and the gradient-flow panel
            show: ``"rms"`` (norm / sqrt(elements), the default, so that a
            big matrix does not look exploding nor a scalar vanishing) or
            ``"norm"``. The legend says which.

    Raises:
        UsageError: The run has no steps, or ``every``/``steps`` select none.

    The HTML is built on first use and cached; Jupyter shows the report in an
    isolated ``<iframe>``.
    """

    def __init__(self, run: Any, *, every: int = 1, steps: str | slice | None = None, engine: str | None = None,
                 title: str | None = None, view: ViewOptions | None = None, views: int = MAX_STATES,
                 scale: str = "rms") -> None:
        if scale not in MEASURES:
            raise UsageError(f"scale must be one of {', '.join(map(repr, MEASURES))}, got {scale!r}")
        if len(run.steps) == 0:
            raise UsageError("the run has no steps to report; call backward() inside vizgrad.record()")
        self.run = run
        self.every = every
        self.steps = steps
        self.engine = engine
        self.title = title or str(run.meta.get("title") or "vizgrad report")
        self.view = view or ViewOptions()
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise UsageError(f"views must be a whole number >= 1, got {views!r}")
        self.views = views
        self.scale = scale
        self.progress: Callable[[int], Any] | None = None  # told of each view drawn (a progress bar's update)
        self._explored: tuple[Any, list[Any], list[Any]] | None = None
        self.selected: list[int] = frames.select_steps(len(run.steps), every=every, steps=steps)

    def __repr__(self) -> str:
        return f"<vizgrad.Report title={self.title!r} steps={len(self.selected)}>"

    # -- output ----------------------------------------------------------------------------------
    def html(self) -> str:
        """The whole report as one HTML document."""
        return self._html

    def save(self, path: str | Path) -> Path:
        """Writes the report to ``path`` (UTF-8) and returns it; a failed write leaves ``path`` as it was.

        Raises:
            OutputError: The file cannot be written (missing folder, no permission...).
        """
        from vizgrad.export import replace_file

        target = Path(path)
        data = self._html.encode("utf-8")  # before any file is opened: a text that cannot be encoded writes nothing
        try:
            replace_file(target, data)
        except OSError as error:
            raise OutputError(f"cannot write the report to {str(target)!r}: {error.strerror or error}") from error
        return target

    def _repr_html_(self) -> str:
        return self._iframe()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/html": self._iframe()}

    def _iframe(self) -> str:
        # srcdoc gives the report its own document: its ids, styles and scripts
        # cannot clash with the notebook's or another report's. The sandbox keeps
        # scripts but denies the notebook's origin.
        template = _environment().from_string(
            '<iframe srcdoc="{{ page }}" sandbox="allow-scripts" title="{{ title }}" '
            'style="width:100%;height:{{ height }}px;border:1px solid #d0d7de;border-radius:6px"></iframe>')
        return template.render(page=self._html, title=self.title, height=NOTEBOOK_HEIGHT_PX)

    # -- building ------------------------------------------------------------------------------
    @cached_property
    def _html(self) -> str:
        with paused_gc():  # tens of thousands of small lists: no GC pass over the run meanwhile
            payload, layouts = self._payload()
        template = _environment().get_template("report.html.j2")
        # The first view's layouts are inline, the other views' compressed and inflated in the page when a
        # click first shows them (SVG shrinks about tenfold); a big report compresses its data and every layout.
        # A big report's data comes in parts: what the first view and step need is parsed at load, other views'
        # columns and the parameters past the first charts when the page first shows them.
        eager, later = _lazy_parts(payload)
        data = embed_json(eager)
        parts = [(name, embed_json(part)) for name, part in later]
        size = len(data) + sum(len(text) for _, text in parts)
        if size <= SPLIT_DATA_ABOVE:  # a small report in one piece: parsed in a moment, and compressed better
            data, parts = embed_json(payload), []
        packed = _packed(str(data)) if size > PACK_DATA_ABOVE else None
        first = {segment["layout"] for segment in payload["segments"]} if packed is None else set()
        plain = [(k, Markup(svg)) for k, svg in enumerate(layouts) if k in first]
        packed_layouts = [(k, _packed(svg)) for k, svg in enumerate(layouts) if k not in first]
        return template.render(
            title=self.title,
            data_json=None if packed else data,
            data_packed=packed,
            packed_parts=[(name, _packed(str(text))) for name, text in parts],
            layouts=plain,
            packed_layouts=packed_layouts,
            script=_inline_asset("report.js", "script"),
            style=_inline_asset("report.css", "style"),
            frame_style=Markup(frames.FRAME_CSS),
            summary=payload["summary"],
            legend=_legend(),
            colorbar_title=payload["colorbar"]["label"],
            loop=payload["loop"] is not None,
        )

    def _payload(self) -> tuple[dict[str, Any], list[str]]:
        """The page's data (JSON-able) and the sanitized SVG of each distinct layout."""
        steps = [self.run[i] for i in self.selected]
        # Summaries the recorder left to compute: all steps in one vectorised pass.
        gradtable.resolve(step.table for step in steps)
        cache = frames.LayoutCache(self.engine)
        scale = frames.run_scale(self.run, self.scale)  # the whole run's, as frame exports use: the same fills
        page = _FrameData()
        groups = frames.segments(steps)
        main, states, transitions = self._states(groups)
        per_view: list[list[dict[str, Any]]] = [[] for _ in states]
        for group in groups:  # a segment's rows are held while its views are painted, then let go
            rows = SegmentRows(group)
            for state, segments in zip(states, per_view):
                page.segments = segments
                drawn = view_of(group[0].graph, state.options(group[0].graph, self.view))
                page.add_segment(group, drawn, cache.get(drawn), scale, rows)
                if self.progress is not None:
                    self.progress(1)
        calls = self._calls(steps, page, cache, scale)
        ranks = self._ranks(page, cache, scale, states[0])
        views = []
        for state, moves, segments in zip(states, transitions, per_view):
            plan = plan_of(view_of(main, state.options(main, self.view)))
            views.append({"expand": list(state.expand), "collapse": list(state.collapse), "unfold": list(state.unfold),
                          "next": moves, "visible": plan.visible if plan is not None else len(main.nodes),
                          "open": [key for key, _, _ in plan.clusters] if plan is not None else [],
                          "segments": segments})
        default = views[0].pop("segments")
        shown_layouts = {segment["layout"] for segment in default}
        flow = flow_panel(steps)
        if flow is not None:
            # Low to high as the graph's scale runs (reversed viridis: pale yellow to dark purple).
            flow["colors"] = {"ramp": list(reversed(VIRIDIS)), **{flag: FLAG_COLORS[flag] for flag in ("nan", "zero")}}
            flow["measure"] = self.scale

        payload_params = self._params(steps)
        loop = self._loop(steps)
        payload = {
            "title": self.title,
            "flags": list(FLAGS),
            "palette": list(frames.PALETTE),
            "ink": list(INK),
            "colorbar": frames.colorbar(scale),
            "index": [step.index for step in steps],
            "loss": _losses(steps),
            "loop": loop,
            "clips": self._clips(steps),
            "findings": [_finding_entry(finding) for finding in self.run.findings()],
            "manual": self._manual(steps),
            "calls": calls,
            "ranks": ranks,
            "layouts": page.layouts,
            "columns": page.columns,
            "segments": default,
            "views": views,
            "params": payload_params,
            "params_shown": PARAMS_SHOWN,
            "flow": flow,
            "panels": [panel.spec(self.run, self.selected) for panel in self.run.panels],
            "summary": {
                "steps": len(self.run.steps),
                "shown": len(steps),
                "nodes": max(len(step.graph.nodes) for step in steps),
                "drawn": max(len(page.layouts[k]["nodes"]) for k in shown_layouts),
                "layouts": len(shown_layouts),
                "params": len(payload_params),
                "engine": _engine_name(self.engine),
                "ranks": None if ranks is None else f"{len(ranks['present'])} of {ranks['world_size']} ranks"
                + (f" (missing: {', '.join(map(str, ranks['missing']))})" if ranks["missing"] else ""),
            },
        }
        return payload, page.svgs

    def _states(self, groups: Sequence[Sequence[Any]]) -> tuple[Any, list[Any], list[Any]]:
        """The views a click can lead to, explored on the graph most steps have (each is drawn for every graph)."""
        main = max(groups, key=len)[0].graph
        if self._explored is None or self._explored[0] is not main:
            self._explored = (main, *explore(main, self.view, self.views))
        return self._explored

    def layouts_to_draw(self) -> int:
        """How many (view, graph shape) pairs building the report lays out and paints: what ``progress`` counts."""
        groups = frames.segments([self.run[i] for i in self.selected])
        return len(self._states(groups)[1]) * len(groups)

    def _loop(self, steps: Sequence[Any]) -> dict[str, Any] | None:
        """The training loop of the shown steps: each frame's iteration and one loss curve per loss name.

        An iteration's loss of a name is the sum of that name's step losses
        over the whole iteration (with gradient accumulation, the loss the
        script averages), drawn at the last shown step of the iteration.
        ``None`` when every iteration is one step of one loss name: the step
        curve says it all.
        """
        iterations = self.run.iterations()
        names = {name for iteration in iterations for name in iteration.losses}
        if len(names) < 2 and all(len(iteration.steps) == 1 for iteration in iterations):
            return None
        frame_of = {step.index: frame for frame, step in enumerate(steps)}
        of_frame = [0] * len(steps)
        curves: dict[str | None, dict[str, list[Any]]] = {}
        for iteration in iterations:
            frames_in = [frame_of[index] for index in iteration.steps if index in frame_of]
            for frame in frames_in:
                of_frame[frame] = iteration.index
            if not frames_in:
                continue
            for name, loss in iteration.losses.items():
                curve = curves.setdefault(name, {"at": [], "values": []})
                curve["at"].append(frames_in[-1])
                curve["values"].append(None if loss is None else _number(loss, 6))
        optimizers = list(getattr(self.run.loop, "optimizers", []))
        return {"iteration": of_frame, "count": len(iterations), "optimizers": optimizers,
                "losses": [{"name": name, **curve} for name, curve in curves.items()]}

    def _params(self, steps: Sequence[Any]) -> list[dict[str, Any]]:
        """Trajectory of every parameter over the shown steps: its value when scalar, else its norm.

        The rule of :meth:`Run.param_series`, read from the shown steps' rows at once.
        """
        names: dict[str, None] = {}
        for step in steps:
            names.update(dict.fromkeys(step.params))
        rows, present = gather_rows(steps, [("param", name) for name in names])
        grad_rows, grad_present = gather_rows(steps, [("param_grad", name) for name in names])
        last_of = self._iteration_ends(steps)
        out = []
        for k, name in enumerate(names):
            found = present[:, k]
            scalar = bool(found.any() and rows[np.argmax(found), k, 6] == 1)
            series = np.where(rows[:, k, 6] == 1, rows[:, k, 1], rows[:, k, 0])
            values = round_sig_all(series, 6, found)
            grads = round_sig_all(grad_rows[:, k, 0], 4, grad_present[:, k])
            entry: dict[str, Any] = {"name": name, "scalar": scalar, "values": values, "grads": grads}
            rates = self.run.loop.learning_rates(name)
            if any(rate is not None for rate in rates) and last_of:
                # |lr * grad| / |param| with the .grad and value the optimizer saw (its iteration's last step,
                # after any clipping).
                at, ratios = [], []
                for iteration, frame in last_of.items():
                    rate = rates[iteration] if iteration < len(rates) else None
                    norm, grad = rows[frame, k, 0], grad_rows[frame, k, 0]
                    clip = steps[frame].clip
                    if clip and name in clip.get("after", {}):  # the optimizer got the clipped gradient
                        grad = clip["after"][name]
                    if rate is None or not (found[frame] and grad_present[frame, k]) or not norm > 0:
                        continue
                    at.append(frame)
                    ratios.append(round_sig(abs(rate) * grad / norm, 4))
                entry["update"] = {"at": at, "values": ratios}
            clipped = [(frame, step.clip["after"][name]) for frame, step in enumerate(steps)
                       if step.clip and name in step.clip.get("after", {})]
            if clipped:
                entry["clipped"] = {"at": [frame for frame, _ in clipped],
                                    "values": [round_sig(norm, 4) for _, norm in clipped]}
            out.append(entry)
        return out

    def _calls(self, steps: Sequence[Any], page: _FrameData, cache: Any, scale: ColorScale) -> dict[str, Any] | None:
        """The ``torch.autograd.grad`` calls of the shown steps, each a frame of its own graph (default view).

        ``of`` lists, for every shown step, the numbers of its calls; their
        frames are ``segments`` (one call each, laid out and painted as steps are).
        """
        of: list[list[int]] = []
        segments: list[dict[str, Any]] = []
        names: list[str | None] = []
        shown = page.segments
        page.segments = segments
        try:
            for step in steps:
                numbers = []
                for call in step.grad_calls:
                    drawn = view_of(call.graph, self.view)
                    page.add_segment([call], drawn, cache.get(drawn), scale)
                    numbers.append(len(names))
                    names.append(call.graph.loss_name)
                of.append(numbers)
        finally:
            page.segments = shown
        return {"of": of, "segments": segments, "names": names} if names else None

    def _ranks(self, page: _FrameData, cache: Any, scale: ColorScale, first_view: Any) -> dict[str, Any] | None:
        """For a merged distributed run: each rank's own steps painted in the first view, for the rank picker.

        Frames line up with the shown steps; a rank that stopped early has
        fewer. The merged frames (the page's own) are the reference rank's
        gradients with the parameters as the whole job has them.
        """
        from vizgrad.merge import RankedRun

        run = self.run
        if not isinstance(run, RankedRun):
            return None
        segments: dict[str, list[dict[str, Any]]] = {}
        losses: dict[str, list[Any]] = {}
        kept = page.segments
        for rank, rank_run in run.ranks.items():
            rank_steps = [rank_run.steps[i] for i in self.selected if i < len(rank_run.steps)]
            page.segments = segments[str(rank)] = []
            for group in frames.segments(rank_steps):
                drawn = view_of(group[0].graph, first_view.options(group[0].graph, self.view))
                page.add_segment(group, drawn, cache.get(drawn), scale, SegmentRows(group))
            losses[str(rank)] = _losses(rank_steps) + [None] * (len(self.selected) - len(rank_steps))
        page.segments = kept
        return {"present": list(run.ranks), "world_size": run.world_size, "missing": run.missing, "loss": losses,
                "partial": run.partial, "reference": min(run.ranks), "segments": segments,
                "hosts": {str(rank): r.meta.get("distributed", {}).get("host") for rank, r in run.ranks.items()}}

    @staticmethod
    def _manual(steps: Sequence[Any]) -> dict[str, Any] | None:
        """Hand-written gradients against autograd's (``run.expect_grad``): each one's norms and ratio per frame."""
        names: dict[str, None] = {}
        for step in steps:
            names.update(dict.fromkeys(((step.checks or {}).get("manual") or {})))
        if not names:
            return None
        series: dict[str, dict[str, list[Any]]] = {name: {"manual": [], "autograd": [], "ratio": []} for name in names}
        for step in steps:
            checked = (step.checks or {}).get("manual") or {}
            for name, out in series.items():
                result = checked.get(name)
                for field in ("manual", "autograd", "ratio"):
                    value = None if result is None else result.get(field)
                    out[field].append(None if value is None else _number(value, 6))
        return {"names": list(names), "series": series}

    @staticmethod
    def _clips(steps: Sequence[Any]) -> dict[str, Any] | None:
        """The shown steps followed by a gradient clip: frame, function, limit, total norm before and after."""
        rows = [(frame, step.clip) for frame, step in enumerate(steps) if step.clip]
        if not rows:
            return None
        return {"at": [frame for frame, _ in rows], "function": [clip.get("function") for _, clip in rows],
                "limit": [clip.get("limit") for _, clip in rows],
                "before": [round_sig(clip.get("total_before", math.nan), 4) for _, clip in rows],
                "after": [round_sig(clip.get("total_after", math.nan), 4) for _, clip in rows]}

    def _iteration_ends(self, steps: Sequence[Any]) -> dict[int, int]:
        """Iteration -> the frame of its last shown step, for the iterations an optimizer closed."""
        stepped = any(self.run.loop.stepped) or bool(self.run.loop.pending)
        if not stepped:
            return {}
        grouped = self.run.loop.iterations()
        ends: dict[int, int] = {}
        for frame, step in enumerate(steps):
            if step.index < len(grouped):
                ends[grouped[step.index]] = frame
        return ends


class _FrameData:
    """The per-step part of the page data, in columns: one segment per run of steps sharing a graph, per view.

    A segment is ``{"layout", "count", "nodes", "edges"}``: per painted node of
    the layout, the positions in ``columns`` of its columns from
    :func:`frames.paint_segment` (``fill`` indexes :data:`frames.PALETTE`,
    ``flag`` :data:`FLAGS`, ``lines`` one column per value line, ``stats``
    the inspector's numbers, ``bars`` a fold's strip), ``None`` for a node
    this graph lacks; likewise per painted edge (``color``, ``width``,
    ``flag``). Every distinct column is sent once: ops along a chain pass on
    the same gradient, and the views of a report draw mostly the same nodes.
    The page rebuilds each step's record from them.
    """

    def __init__(self) -> None:
        self.layouts: list[dict[str, Any]] = []
        self.svgs: list[str] = []
        self.segments: list[dict[str, Any]] = []
        self.columns: list[Any] = []
        self._column_at: dict[Any, int] = {}
        self._column_of_object: dict[int, tuple[Any, int]] = {}  # the painter shares columns: each keyed once
        self._layout_index: dict[str, int] = {}
        self._orders: list[tuple[list[str], list[str]]] = []

    def _layout(self, graph: Any, layout: Any, node_ids: list[str], edge_keys: list[str]) -> int:
        index = self._layout_index.get(layout.key)
        if index is None:
            index = self._layout_index[layout.key] = len(self.layouts)
            # One layout is one DOT source, so every step drawn with it paints the same keys.
            self._orders.append((node_ids, edge_keys))
            self.layouts.append({
                "key": layout.key,
                "w": round(layout.width, 2),
                "h": round(layout.height, 2),
                "nodes": [[n.id, short_op(n.op), n.kind, n.name, format_shape(n.shape),
                           n.module] for n in graph.nodes],
                "painted": node_ids,
                "edges": edge_keys,
                "boxes": layout.boxes,
            })
            self.svgs.append(sanitize_svg(layout.svg))
        return index

    def _column(self, column: Any) -> int:
        """The position of ``column`` in ``columns``, adding it when no equal column is there."""
        known = self._column_of_object.get(id(column))
        if known is not None:
            return known[1]
        key = _frozen(column)
        at = self._column_at.get(key)
        if at is None:
            at = self._column_at[key] = len(self.columns)
            self.columns.append(column)
        self._column_of_object[id(column)] = (column, at)  # kept, so its id stays its own
        return at

    def _refer(self, entry: dict[str, Any] | None) -> dict[str, Any] | None:
        if entry is None:
            return None
        return {field: [self._column(line) for line in value] if field == "lines" else self._column(value)
                for field, value in entry.items()}

    def add_segment(self, steps: Sequence[Any], drawn: Any, layout: Any, scale: ColorScale,
                    rows: SegmentRows | None = None) -> None:
        """Appends consecutive steps that share one graph, painted on ``drawn`` (the graph or a view of it)."""
        painted = frames.paint_segment(steps, scale, graph=drawn, rows=rows)
        index = self._layout(drawn, layout, list(painted["nodes"]), list(painted["edges"]))
        node_ids, edge_keys = self._orders[index]
        self.segments.append({
            "layout": index,
            "count": len(steps),
            "nodes": [self._refer(painted["nodes"].get(node_id)) for node_id in node_ids],
            "edges": [self._refer(painted["edges"].get(edge_key)) for edge_key in edge_keys],
        })


def _lazy_parts(payload: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """The page data to parse at load, and the named parts the page inflates when it first needs them.

    The first view's inspector numbers go in ``stats`` (the page inflates
    them right after the first step is painted: half the data of a graph
    drawn whole); columns only other views draw in one part per view
    (``view<k>``, the columns no earlier part holds; a view lists every part
    it needs in ``packs``); parameters past the first :data:`PARAMS_SHOWN`
    in ``params``. A 10,000-step report draws about a tenth of its columns
    in its first view. ``payload`` is left as it is.
    """
    columns = payload["columns"]
    eager = _referenced(payload["segments"], stats=False)
    if payload["calls"] is not None:
        eager |= _referenced(payload["calls"]["segments"])
    if payload["ranks"] is not None:
        for segments in payload["ranks"]["segments"].values():
            eager |= _referenced(segments)
    owner: dict[int, str] = {}
    later: list[tuple[str, dict[str, Any]]] = []

    def add_part(name: str, fresh: list[int]) -> None:
        later.append((name, {"at": fresh, "columns": [columns[k] for k in fresh]}))
        owner.update(dict.fromkeys(fresh, name))

    inspected = sorted(_referenced(payload["segments"]) - eager)
    if inspected:
        add_part("stats", inspected)
    views = [payload["views"][0]]
    for number, view in enumerate(payload["views"][1:], 1):
        needed = _referenced(view["segments"]) - eager
        fresh = sorted(k for k in needed if k not in owner)
        if fresh:
            add_part(f"view{number}", fresh)
        order = [name for name, _ in later]
        views.append({**view, "packs": sorted({owner[k] for k in needed}, key=order.index)})
    params = payload["params"]
    if len(params) > PARAMS_SHOWN:
        later.append(("params", {"params": params[PARAMS_SHOWN:]}))
    eager_payload = {**payload, "views": views, "params": params[:PARAMS_SHOWN],
                     "params_later": max(0, len(params) - PARAMS_SHOWN), "stats_later": bool(inspected),
                     "columns": [None if k in owner else column for k, column in enumerate(columns)]}
    return eager_payload, later


def _referenced(segments: Sequence[dict[str, Any]], stats: bool = True) -> set[int]:
    """The columns the painted nodes and edges of ``segments`` refer to (``stats=False``: but the inspector's)."""
    out: set[int] = set()
    for segment in segments:
        for entry in itertools.chain(segment["nodes"], segment["edges"]):
            if entry is not None:
                for field, value in entry.items():
                    if isinstance(value, list):
                        out.update(value)
                    elif stats or field != "stats":
                        out.add(value)
    return out


def _losses(steps: Sequence[Any]) -> list[Any]:
    """Each step's loss as the page shows it (6 digits; ``None`` where the roots were not scalars)."""
    return [None if step.loss is None else _number(step.loss, 6) for step in steps]


def _finding_entry(finding: Any) -> dict[str, Any]:
    """What the page shows of a finding (and where clicking it leads)."""
    return {"kind": finding.kind, "step": finding.step, "count": finding.count, "node": finding.node,
            "module": finding.module, "op": finding.op, "where": finding.where, "message": finding.message}


def _packed(text: str) -> str:
    """``text`` gzipped (with no timestamp: the same report is the same file) and base64-encoded."""
    return base64.b64encode(gzip.compress(text.encode("utf-8"), mtime=0)).decode("ascii")


def _frozen(value: Any) -> Any:
    """A painted column as a hashable key (lists of numbers or strings, dicts of them, lists of those)."""
    if isinstance(value, dict):
        return ("dict", tuple((name, _frozen(item)) for name, item in value.items()))
    if isinstance(value, list):
        return tuple(_frozen(item) for item in value) if value and isinstance(value[0], (list, dict)) else \
            ("list", tuple(value))
    return value


def _legend() -> list[dict[str, Any]]:
    """Legend entries drawn with the frames' own outline styles and flag colours."""
    entries = []
    kinds = [("op", "op"), ("leaf", "parameter"), ("root", "root (loss)"), ("saved", "saved tensor"),
             ("custom", "custom Function")]
    for kind, label in kinds:
        style = frames.KIND_STYLES.get(kind, {})
        entries.append({"label": label, "fill": "#ffffff", "stroke": style.get("color", "#5f5f5f"),
                        "width": float(style.get("penwidth", 1.2)), "dash": "",
                        "rounded": "rounded" in style.get("style", "")})
    flags = [("nan", "NaN", "#b00000", 2.5, "4 2"), ("inf", "Inf", "#b00000", 2.5, "4 2"),
             ("zero", "zero", "#7f7f7f", 1.5, "3 2"), ("none", "no gradient", "#5f5f5f", 1.2, "1 2")]
    for flag, label, stroke, width, dash in flags:
        entries.append({"label": label, "fill": FLAG_COLORS[flag], "stroke": stroke, "width": width, "dash": dash,
                        "rounded": True})
    return entries


def _engine_name(engine: str | None) -> str:
    from vizgrad import engine as layout_engine

    try:
        return layout_engine.resolve_engine(engine)
    except UsageError:
        return str(engine)


_ENVIRONMENT: jinja2.Environment | None = None


def _environment() -> jinja2.Environment:
    """The jinja environment of the report template (HTML autoescaping on)."""
    global _ENVIRONMENT
    if _ENVIRONMENT is None:
        _ENVIRONMENT = jinja2.Environment(
            loader=jinja2.PackageLoader("vizgrad", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
    return _ENVIRONMENT


def _inline_asset(name: str, element: str) -> Markup:
    """A script or stylesheet from ``vizgrad/templates`` to inline inside ``<element>``.

    Read as plain text (not as a template) so braces in the code mean nothing
    to jinja; it must not contain the element's closing tag.
    """
    text = resources.files("vizgrad").joinpath("templates", name).read_text(encoding="utf-8")
    if f"</{element}" in text.lower():
        raise RuntimeError(f"templates/{name} contains '</{element}' and cannot be inlined")
    return Markup(text)
