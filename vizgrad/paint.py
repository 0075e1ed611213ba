"""The painter: one step's or many steps' gradients turned into fills, value lines, edge colours, widths and flags.

Every output paints through :func:`paint_segment`, a node at a time across
consecutive steps that share a graph (numpy for colours, widths and flags):
the report takes its columns, frames (SVG, GIF, MP4, the live view) take one
step of them. Painting one step is painting a segment of one step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from vizgrad.colors import FLAG_COLORS, VIRIDIS, ColorScale, text_color_for
from vizgrad.dot import LINE_WIDTH, PAINTED_EDGE_KINDS, PAINTED_NODE_KINDS
from vizgrad.gradtable import WIDTH
from vizgrad.layout import FLAGS
from vizgrad.rows import SegmentRows, gather_rows, view_rows
from vizgrad.view import BOX_KINDS, ViewPlan, bar_buckets, plan_of

if TYPE_CHECKING:  # pragma: no cover
    from vizgrad.graph import Graph
    from vizgrad.run import Step

__all__ = ["PALETTE", "INK", "FLAGS", "paint_segment", "paint", "step_of", "gather_rows"]

_NUMBER_WIDTH = 11
_PREFIX_WIDTH = LINE_WIDTH - _NUMBER_WIDTH
_FLAG_EDGE_WIDTH = 4.0

#: Every colour a paint uses, by index: viridis (as :meth:`ColorScale.color_indices` counts), then flag and edge greys.
PALETTE: tuple[str, ...] = (*VIRIDIS, FLAG_COLORS["nan"], FLAG_COLORS["inf"], FLAG_COLORS["zero"],
                            FLAG_COLORS["none"], "#c8c8c8", "#9a9a9a")
#: Black or white text for each colour of :data:`PALETTE`.
INK: tuple[str, ...] = tuple(text_color_for(colour) for colour in PALETTE)
_FLAG_COLOR_INDEX = {flag: len(VIRIDIS) + k for k, flag in enumerate(("nan", "inf", "zero", "none"))}
_NO_GRAD_INDEX = len(VIRIDIS) + 4  # an edge no gradient went along
_ZERO_EDGE_INDEX = len(VIRIDIS) + 5  # an edge of an exact zero (or a norm the scale cannot place)
_FLAG_CODE = {flag: code for code, flag in enumerate(FLAGS)}
_FLAG_FILL = np.array([0] + [_FLAG_COLOR_INDEX[flag] for flag in FLAGS[1:]])  # flag code -> fill index


# -- text of value lines -----------------------------------------------------------------------------------------
def _number(value: float | None, signed: bool = True) -> str:
    """``value`` in exactly :data:`_NUMBER_WIDTH` characters (``+1.2345e-03``, ``nan``, ``-inf``, ``-``)."""
    if value is None:
        text = "-"
    elif math.isnan(value):
        text = "nan"
    elif math.isinf(value):
        text = "+inf" if value > 0 else "-inf"
    else:
        text = f"{value:+.4e}" if signed else f"{value:.4e}"
        if len(text) > _NUMBER_WIDTH:  # three-digit exponents
            text = f"{value:+.3e}" if signed else f"{value:.3e}"
    return text.rjust(_NUMBER_WIDTH)[:_NUMBER_WIDTH]


def _line(prefix: str, number: str) -> str:
    return prefix.ljust(_PREFIX_WIDTH)[:_PREFIX_WIDTH] + number


def _param_line(row: Sequence[float] | None) -> tuple[str, str]:
    """The value line of a parameter (from its value's summary row) and a flag for a NaN/Inf value."""
    if row is None:
        return _line("val", _number(None)), ""
    norm, mean, _lo, _hi, nan, inf, numel, _abs = row
    flag = "nan" if nan else "inf" if inf else ""
    if numel == 1:  # the mean of one real element is that element, exactly
        return _line("val", _number(mean)), flag
    return _line("|v|", _number(norm, signed=False)), flag


# -- what a graph paints -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _PaintPlan:
    """What the painter reads for one graph, worked out once: painted nodes and edges with their keys."""

    nodes: tuple[tuple[str, str, tuple[tuple, ...], tuple | None], ...]  # id, kind, output keys, param key
    edges: tuple[tuple[str, tuple], ...]  # "src:slot", edge key
    single_root: bool
    view: ViewPlan | None = None  # a view's boxes and bundles read rows of the graph it was made from

    @classmethod
    def of(cls, graph: Graph) -> _PaintPlan:
        """The plan of ``graph``, made once and kept with the graph (so it goes with it).

        A box of a view has the keys ``("box", id, "in" | "out" | "max")`` and
        ``("bar", id, k)``; an edge drawing several edges ``("bundle", "src:slot")``.
        """
        plan = graph.__dict__.get("_paint_plan")
        if plan is None:
            view = plan_of(graph)
            nodes = tuple((node.id, node.kind, _output_keys(node, view),
                           ("param", node.name) if node.kind == "leaf" and node.name is not None else None)
                          for node in graph.nodes if node.kind in PAINTED_NODE_KINDS)
            edges = tuple((f"{edge.src}:{edge.slot}", _edge_key(edge, view))
                          for edge in graph.edges if edge.kind in PAINTED_EDGE_KINDS)
            plan = cls(nodes, edges, len(graph.roots) == 1, view)
            object.__setattr__(graph, "_paint_plan", plan)
        return plan


def _output_keys(node: Any, view: ViewPlan | None) -> tuple[tuple, ...]:
    if node.kind not in BOX_KINDS:
        return tuple(("node", node.id, k) for k in range(max(node.outputs, 1)))
    box = view.boxes[node.id]
    bars = tuple(("bar", node.id, k) for k in range(len(bar_buckets(box.count)))) if box.kind == "fold" else ()
    return (("box", node.id, "in"), ("box", node.id, "out"), ("box", node.id, "max")) + bars


def _edge_key(edge: Any, view: ViewPlan | None) -> tuple:
    key = f"{edge.src}:{edge.slot}"
    if view is None:
        return ("edge", edge.src, edge.slot)
    members = view.bundles[key]
    original = view.source.edges[members[0]]
    if len(members) == 1 and (original.src, original.slot) == (edge.src, edge.slot):
        return ("edge", edge.src, edge.slot)
    return ("bundle", key)


# -- the painter -------------------------------------------------------------------------------------------------
def paint_segment(steps: Sequence[Step], scale: ColorScale, *, inspector: bool = True,
                  graph: Graph | None = None, rows: SegmentRows | None = None) -> dict[str, Any]:
    """The paint of consecutive steps sharing one graph, as columns over the steps.

    Computed a node at a time across all steps, so thousands of steps cost
    per node, not per node and step. Colours are indices into
    :data:`PALETTE`, flags into :data:`FLAGS`.

    Args:
        steps: Steps of one graph.
        scale: The run's colour scale (see :func:`vizgrad.colors.scale_for`).
        inspector: Also give each node its ``stats`` columns (the report's inspector).
        graph: What to paint: the steps' graph (the default) or a view of it
            (:func:`vizgrad.view.view_of`), whose boxes get ``lines`` in / out /
            max, ``stats`` ``in``, ``out``, ``inside`` and, for a fold,
            ``bars``: per bar, ``color`` and ``height`` (hundredths of the strip).
        rows: The steps' rows gathered once, to share between the views of one
            segment (:class:`vizgrad.rows.SegmentRows`); made here when needed.

    Returns:
        ``{"nodes": {node_id: {"fill", "flag", "lines", "stats"}}, "edges":
        {"src:slot": {"color", "width", "flag"}}}``: each leaf value a list
        with one entry per step; ``lines`` a list of columns (one per value
        line); ``stats`` the gradient summary of output 0 for the inspector:
        ``norm, mean, min, max`` rounded to 4 digits (``None`` where no
        gradient flowed, ``"NaN"``/``"Inf"``/``"-Inf"`` where not finite),
        ``one`` (a one-element finite gradient: show its value) and, only when
        some step has them, ``nan`` and ``inf`` counts.
    """
    plan = _PaintPlan.of(graph if graph is not None else steps[0].graph)
    # The views of a segment share most of what they draw: what one painted, the next takes as it is.
    known = rows.painted if rows is not None else {}
    node_names = [_content(plan.view, node_id, kind, inspector) for node_id, kind, _, _ in plan.nodes]
    edge_names = [key if key[0] == "edge" else ("bundle", plan.view.bundles[key[1]]) for _, key in plan.edges]
    todo_nodes = [k for k, name in enumerate(node_names) if name not in known]
    todo_edges = [k for k, name in enumerate(edge_names) if name not in known]
    keys: dict[tuple, int] = {}
    output_slots = [[keys.setdefault(k, len(keys)) for k in plan.nodes[at][2]] for at in todo_nodes]
    param_slots = [keys.setdefault(plan.nodes[at][3], len(keys)) if plan.nodes[at][3] else -1 for at in todo_nodes]
    edge_slots = [keys.setdefault(plan.edges[at][1], len(keys)) for at in todo_edges]
    if not keys:
        data, present = np.zeros((len(steps), 0, WIDTH)), np.zeros((len(steps), 0), dtype=bool)
    elif plan.view is None:
        data, present = gather_rows(steps, list(keys))
    else:
        data, present = view_rows(rows if rows is not None else SegmentRows(steps), plan.view, list(keys))
    losses = [step.loss for step in steps]
    nodes: dict[str, dict[str, Any]] = {}
    stats_by_content: dict[bytes, dict[str, Any]] = {}
    grads_by_content: dict[bytes, list[str]] = {}
    for at, slots, param_slot in zip(todo_nodes, output_slots, param_slots):
        node_id, kind, _, _ = plan.nodes[at]
        if kind in BOX_KINDS:
            nodes[node_id] = known[node_names[at]] = _box_paint(data, present, slots, scale, inspector)
            continue
        norm, nan, inf, numel, mean, has_scalar, found = _merged_columns(data, present, slots)
        flags = _flag_codes(norm, nan, inf, numel, found)
        grads_key = norm.tobytes() + mean.tobytes() + has_scalar.tobytes() + found.tobytes()
        grads = grads_by_content.get(grads_key)
        if grads is None:
            grads = grads_by_content[grads_key] = _grad_column(norm, mean, has_scalar, found)
        if kind == "leaf":
            values = _param_lines(data, present, param_slot)
            value_flags = np.array([_FLAG_CODE[flag] for _, flag in values])
            flags = np.where((value_flags > 0) & np.isin(flags, (0, 3, 4)), value_flags, flags)
            lines = [[line for line, _ in values], grads]
        elif kind == "root" and plan.single_root:
            lines = [[grads[s] if loss is None else _line("loss", _number(loss)) for s, loss in enumerate(losses)]]
            for s, loss in enumerate(losses):
                if loss is not None and not math.isfinite(loss):
                    flags[s] = 1 if math.isnan(loss) else 2
        else:
            lines = [grads]
        fill = _fills(flags, norm, scale, numel)
        nodes[node_id] = known[node_names[at]] = {"fill": fill.tolist(), "flag": flags.tolist(), "lines": lines}
        if inspector:
            # The inspector shows output 0; ops along a chain share that gradient, so equal columns are made once.
            first_rows, first_found = data[:, slots[0]], present[:, slots[0]]
            # A parameter's also carry its mean |g|, the number its row of the gradient-flow panel shows.
            stats_key = first_rows.tobytes() + first_found.tobytes() + (b"leaf" if kind == "leaf" else b"")
            if stats_key not in stats_by_content:
                stats_by_content[stats_key] = _stats_columns(first_rows, first_found, magnitude=kind == "leaf")
            nodes[node_id]["stats"] = stats_by_content[stats_key]
    edges: dict[str, dict[str, Any]] = {}
    for at, slot in zip(todo_edges, edge_slots):
        edge_key = plan.edges[at][0]
        row, found = data[:, slot], present[:, slot]
        norm = row[:, 0]
        flags = _flag_codes(norm, row[:, 4], row[:, 5], row[:, 6], found)
        color = _palette_index(scale.color_indices(norm, row[:, 6]), _ZERO_EDGE_INDEX)
        width = scale.widths(norm, row[:, 6])
        color = np.select([flags == 4, (flags == 1) | (flags == 2), flags == 3],
                          [_NO_GRAD_INDEX, np.where(flags == 1, _FLAG_COLOR_INDEX["nan"], _FLAG_COLOR_INDEX["inf"]),
                           _ZERO_EDGE_INDEX], color)
        width = np.select([flags == 4, (flags == 1) | (flags == 2), flags == 3], [1.0, _FLAG_EDGE_WIDTH, 1.0], width)
        edges[edge_key] = known[edge_names[at]] = {"color": color.tolist(), "width": width.tolist(),
                                                   "flag": flags.tolist()}
    # In the plan's order; entries are copied, as a caller may change them (the report replaces equal columns).
    if rows is None:
        return {"nodes": nodes, "edges": edges}
    return {"nodes": {node_id: dict(known[name]) for (node_id, _, _, _), name in zip(plan.nodes, node_names)},
            "edges": {edge_key: dict(known[name]) for (edge_key, _), name in zip(plan.edges, edge_names)}}


def _content(view: ViewPlan | None, node_id: str, kind: str, inspector: bool) -> tuple:
    """What a drawn node's paint depends on: the node, or the box (a box is its members, whatever the view)."""
    if kind in BOX_KINDS:
        return ("box", view.boxes[node_id].key, inspector)
    return ("node", node_id, inspector)


def step_of(segment: dict[str, Any], k: int) -> dict[str, Any]:
    """Step ``k`` of a :func:`paint_segment` result, in the form :func:`vizgrad.layout.render_frame` takes.

    ``{"n": {node_id: [fill, lines, flag, text_color]}, "e": {"<src>:<slot>":
    [color, width_px, flag]}}``: colours as ``#rrggbb``, ``lines`` the node's
    value lines of :data:`~vizgrad.dot.LINE_WIDTH` characters, ``flag`` one of
    :data:`FLAGS`, ``text_color`` black or white for contrast with the fill.
    """
    nodes = {node_id: [PALETTE[column["fill"][k]], [line[k] for line in column["lines"]], FLAGS[column["flag"][k]],
                       INK[column["fill"][k]]]
             for node_id, column in segment["nodes"].items()}
    for node_id, column in segment["nodes"].items():
        if "bars" in column:  # a fold's strip: each bar's colour and height (hundredths of the strip)
            nodes[node_id].append([(PALETTE[bar["color"][k]], bar["height"][k]) for bar in column["bars"]])
    edges = {key: [PALETTE[column["color"][k]], column["width"][k], FLAGS[column["flag"][k]]]
             for key, column in segment["edges"].items()}
    return {"n": nodes, "e": edges}


def paint(step: Step, scale: ColorScale, graph: Graph | None = None) -> dict[str, Any]:
    """The paint of one step (a segment of one step) on its graph or a view of it, in :func:`step_of`'s form.

    Saved-tensor and base nodes and their edges carry no gradient and are left out.
    """
    return step_of(paint_segment([step], scale, inspector=False, graph=graph), 0)


# -- boxes of views ----------------------------------------------------------------------------------------------
_BAR_FULL = 100  # a bar's height is given in hundredths of the strip


def _box_paint(data: np.ndarray, present: np.ndarray, slots: list[int], scale: ColorScale,
               inspector: bool) -> dict[str, Any]:
    """A collapsed module's or fold's paint: coloured by the gradient coming in, lines in / out / max, a fold's bars."""
    come_in, go_out, inside = (data[:, slot] for slot in slots[:3])
    found = present[:, slots[0]]
    norm = come_in[:, 0]
    flags = _flag_codes(norm, inside[:, 4], inside[:, 5], come_in[:, 6], found)
    fill = _fills(flags, norm, scale, come_in[:, 6])
    lines = [_norm_lines(prefix, rows[:, 0], present[:, slot])
             for prefix, rows, slot in (("in", come_in, slots[0]), ("out", go_out, slots[1]), ("max", inside, slots[2]))]
    out: dict[str, Any] = {"fill": fill.tolist(), "flag": flags.tolist(), "lines": lines}
    if len(slots) > 3:
        out["bars"] = [_bar_column(data[:, slot], present[:, slot], scale) for slot in slots[3:]]
    if inspector:  # the inspector's numbers of a box: what comes in, what goes out, the largest inside
        out["stats"] = {"in": _stat_column(come_in[:, 0], found),
                        "out": _stat_column(go_out[:, 0], present[:, slots[1]]),
                        "inside": _stat_column(inside[:, 0], present[:, slots[2]])}
        if len(slots) > 3:  # a fold: the norm of each bar (the largest ``in`` of the instances it covers)
            out["stats"]["bars"] = [_stat_column(data[:, slot, 0], present[:, slot]) for slot in slots[3:]]
    return out


def _norm_lines(prefix: str, norms: np.ndarray, found: np.ndarray) -> list[str]:
    return [_line(prefix, _number(n if f else None, signed=False)) for n, f in zip(norms.tolist(), found.tolist())]


def _bar_column(rows: np.ndarray, found: np.ndarray, scale: ColorScale) -> dict[str, list[int]]:
    """One bar of a fold's strip at every step: its colour (a :data:`PALETTE` index) and height (0-100)."""
    norm = rows[:, 0]
    flags = _flag_codes(norm, rows[:, 4], rows[:, 5], rows[:, 6], found)
    t = scale.positions(scale.measured(norm, rows[:, 6]))
    height = np.where(np.isnan(t), 0, np.rint(_BAR_FULL * (0.12 + 0.88 * np.nan_to_num(t)))).astype(np.int64)
    height = np.where((flags == 1) | (flags == 2), _BAR_FULL, height)
    color = _fills(flags, norm, scale, rows[:, 6])
    return {"color": color.tolist(), "height": height.tolist()}


# -- columns -------------------------------------------------------------------------------------------------------
def _merged_columns(data: np.ndarray, present: np.ndarray, slots: list[int]) -> tuple[np.ndarray, ...]:
    """A node's gradient over its output slots for every step.

    Returns ``norm, nan, inf, numel, mean, has_scalar, found``: ``mean`` is
    the node's value where ``has_scalar`` (one output present, one element).
    """
    mask = present[:, slots]
    rows = data[:, slots]
    found_count = mask.sum(axis=1)
    first = rows[np.arange(len(rows)), mask.argmax(axis=1)]  # the one present row, where there is one
    merged = np.where(mask[..., None], rows, 0.0)
    one = found_count == 1
    norm = np.where(one, first[:, 0], np.sqrt((merged[..., 0] ** 2).sum(axis=1)))
    norm = np.where(found_count == 0, np.nan, norm)
    nan = np.where(one, first[:, 4], merged[..., 4].sum(axis=1))
    inf = np.where(one, first[:, 5], merged[..., 5].sum(axis=1))
    numel = np.where(one, first[:, 6], merged[..., 6].sum(axis=1))
    return norm, nan, inf, numel, first[:, 1], one & (first[:, 6] == 1), found_count > 0


def _flag_codes(norm: np.ndarray, nan: np.ndarray, inf: np.ndarray, numel: np.ndarray,
                found: np.ndarray) -> np.ndarray:
    """The flag of every step, as indices into :data:`FLAGS`: none, NaN, Inf, an exact zero, or plain."""
    with np.errstate(invalid="ignore"):
        return np.select([~found, (nan > 0) | np.isnan(norm), (inf > 0) | np.isinf(norm), (numel > 0) & (norm == 0.0)],
                         [_FLAG_CODE["none"], _FLAG_CODE["nan"], _FLAG_CODE["inf"], _FLAG_CODE["zero"]],
                         _FLAG_CODE[""])


def _grad_column(norm: np.ndarray, mean: np.ndarray, has_scalar: np.ndarray, found: np.ndarray) -> list[str]:
    """The gradient line of every step: the value of a scalar gradient, else ``|g|`` and its norm."""
    missing = _line("grad", _number(None))
    return [missing if not f else _line("grad", _number(m)) if h else _line("|g|", _number(n, signed=False))
            for n, m, h, f in zip(norm.tolist(), mean.tolist(), has_scalar.tolist(), found.tolist())]


def _param_lines(data: np.ndarray, present: np.ndarray, slot: int) -> list[tuple[str, str]]:
    """:func:`_param_line` of one parameter for every step: ``(line, flag)`` pairs."""
    if slot < 0:
        return [_param_line(None)] * len(data)
    rows, found = data[:, slot].tolist(), present[:, slot].tolist()
    return [_param_line(row if is_found else None) for row, is_found in zip(rows, found)]


def _palette_index(viridis: np.ndarray, none: int) -> np.ndarray:
    """:data:`PALETTE` indices of :meth:`ColorScale.color_indices`: the same, ``none`` where there is no colour."""
    return np.where(viridis < 0, none, viridis)


def _fills(flags: np.ndarray, norm: np.ndarray, scale: ColorScale, numel: np.ndarray) -> np.ndarray:
    """The fill of every step: a flag's colour where there is one, else the norm's (or RMS's) place on the scale."""
    return np.where(flags > 0, _FLAG_FILL[flags], _color_indices(norm, numel, scale))


def _color_indices(norm: np.ndarray, numel: np.ndarray, scale: ColorScale) -> np.ndarray:
    """Palette index of every norm's colour, the zero grey where it has no position."""
    return _palette_index(scale.color_indices(norm, numel), _FLAG_COLOR_INDEX["zero"])


def _stats_columns(rows: np.ndarray, found: np.ndarray, magnitude: bool = False) -> dict[str, Any]:
    """The inspector's columns for one node: rounded ``norm, mean, min, max``, ``one``, ``nan``/``inf`` and, with
    ``magnitude``, ``abs`` (mean |g|) where some step measured it on more than one element."""
    columns: dict[str, Any] = {name: _stat_column(rows[:, k], found)
                               for k, name in enumerate(("norm", "mean", "min", "max"))}
    nan, inf = rows[:, 4], rows[:, 5]
    one = found & (rows[:, 6] == 1) & (nan == 0) & (inf == 0)
    columns["one"] = one.astype(np.int8).tolist()
    measured = found & ~np.isnan(rows[:, 7])  # none in a run file before schema 5
    if magnitude and (measured & ~one).any():
        columns["abs"] = _stat_column(rows[:, 7], measured)
    if np.any(np.nan_to_num(nan) > 0) or np.any(np.nan_to_num(inf) > 0):
        columns["nan"] = np.nan_to_num(nan).astype(np.int64).tolist()
        columns["inf"] = np.nan_to_num(inf).astype(np.int64).tolist()
    return columns


def _stat_column(values: np.ndarray, found: np.ndarray) -> list[float | str | None]:
    """Statistics for the page: 4 significant digits; ``NaN``/``Inf`` as strings; ``None`` when absent."""
    out: list[float | str | None] = [float(f"{v:.4g}") for v in values.tolist()]
    for i in np.flatnonzero(~found | ~np.isfinite(values)).tolist():  # rare: fix up one by one
        value = values[i]
        out[i] = None if not found[i] else "NaN" if value != value else "Inf" if value > 0 else "-Inf"
    return out
