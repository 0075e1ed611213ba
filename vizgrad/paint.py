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
from vizgrad.layout import FLAGS

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
    norm, mean, _lo, _hi, nan, inf, numel = row
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

    @classmethod
    def of(cls, graph: Graph) -> _PaintPlan:
        """The plan of ``graph``, made once and kept with the graph (so it goes with it)."""
        plan = graph.__dict__.get("_paint_plan")
        if plan is None:
            nodes = tuple((node.id, node.kind, tuple(("node", node.id, k) for k in range(max(node.outputs, 1))),
                           ("param", node.name) if node.kind == "leaf" and node.name is not None else None)
                          for node in graph.nodes if node.kind in PAINTED_NODE_KINDS)
            edges = tuple((f"{edge.src}:{edge.slot}", ("edge", edge.src, edge.slot))
                          for edge in graph.edges if edge.kind in PAINTED_EDGE_KINDS)
            plan = cls(nodes, edges, len(graph.roots) == 1)
            object.__setattr__(graph, "_paint_plan", plan)
        return plan


# -- the painter -------------------------------------------------------------------------------------------------
def paint_segment(steps: Sequence[Step], scale: ColorScale, *, inspector: bool = True) -> dict[str, Any]:
    """The paint of consecutive steps sharing one graph, as columns over the steps.

    Computed a node at a time across all steps, so thousands of steps cost
    per node, not per node and step. Colours are indices into
    :data:`PALETTE`, flags into :data:`FLAGS`.

    Args:
        steps: Steps of one graph.
        scale: The run's colour scale (see :func:`vizgrad.colors.scale_for`).
        inspector: Also give each node its ``stats`` columns (the report's inspector).

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
    plan = _PaintPlan.of(steps[0].graph)
    keys: dict[tuple, int] = {}
    output_slots = [[keys.setdefault(k, len(keys)) for k in output_keys] for _, _, output_keys, _ in plan.nodes]
    param_slots = [keys.setdefault(p, len(keys)) if p else -1 for _, _, _, p in plan.nodes]
    edge_slots = [keys.setdefault(k, len(keys)) for _, k in plan.edges]
    data, present = gather_rows(steps, list(keys))
    losses = [step.loss for step in steps]
    nodes: dict[str, dict[str, Any]] = {}
    stats_by_content: dict[bytes, dict[str, Any]] = {}
    grads_by_content: dict[bytes, list[str]] = {}
    for (node_id, kind, _keys, _param), slots, param_slot in zip(plan.nodes, output_slots, param_slots):
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
        fill = np.where(flags > 0, _FLAG_FILL[flags], _color_indices(norm, scale))
        nodes[node_id] = {"fill": fill.tolist(), "flag": flags.tolist(), "lines": lines}
        if inspector:
            # The inspector shows output 0; ops along a chain share that gradient, so equal columns are made once.
            rows, rows_found = data[:, slots[0]], present[:, slots[0]]
            stats_key = rows.tobytes() + rows_found.tobytes()
            if stats_key not in stats_by_content:
                stats_by_content[stats_key] = _stats_columns(rows, rows_found)
            nodes[node_id]["stats"] = stats_by_content[stats_key]
    edges: dict[str, dict[str, Any]] = {}
    for (edge_key, _key), slot in zip(plan.edges, edge_slots):
        row, found = data[:, slot], present[:, slot]
        norm = row[:, 0]
        flags = _flag_codes(norm, row[:, 4], row[:, 5], row[:, 6], found)
        color = _palette_index(scale.color_indices(norm), _ZERO_EDGE_INDEX)
        width = scale.widths(norm)
        color = np.select([flags == 4, (flags == 1) | (flags == 2), flags == 3],
                          [_NO_GRAD_INDEX, np.where(flags == 1, _FLAG_COLOR_INDEX["nan"], _FLAG_COLOR_INDEX["inf"]),
                           _ZERO_EDGE_INDEX], color)
        width = np.select([flags == 4, (flags == 1) | (flags == 2), flags == 3], [1.0, _FLAG_EDGE_WIDTH, 1.0], width)
        edges[edge_key] = {"color": color.tolist(), "width": width.tolist(), "flag": flags.tolist()}
    return {"nodes": nodes, "edges": edges}


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
    edges = {key: [PALETTE[column["color"][k]], column["width"][k], FLAGS[column["flag"][k]]]
             for key, column in segment["edges"].items()}
    return {"n": nodes, "e": edges}


def paint(step: Step, scale: ColorScale) -> dict[str, Any]:
    """The paint of one step (a segment of one step), in :func:`step_of`'s form.

    Saved-tensor and base nodes and their edges carry no gradient and are left out.
    """
    return step_of(paint_segment([step], scale, inspector=False), 0)


# -- columns -------------------------------------------------------------------------------------------------------
def gather_rows(steps: Sequence[Step], keys: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, keys, 7)`` summary rows (NaN where missing) and the ``(steps, keys)`` mask of present ones.

    Steps are grouped by their key index (a loop's steps share one): each
    group looks its keys up once and takes its rows in one gather.
    """
    data = np.full((len(steps), len(keys), 7), np.nan)
    present = np.zeros((len(steps), len(keys)), dtype=bool)
    groups: dict[Any, list[int]] = {}
    for s, step in enumerate(steps):
        groups.setdefault(step.table.index, []).append(s)
    for index, members in groups.items():
        at = index.locate(keys)
        found = at >= 0
        if not found.any():
            continue
        picked = at[found]
        stacked = np.stack([steps[s].table.rows[picked] for s in members])
        rows = data[members]
        rows[:, found] = stacked
        data[members] = rows
        present[np.ix_(members, np.flatnonzero(found))] = True
    return data, present


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


def _color_indices(norm: np.ndarray, scale: ColorScale) -> np.ndarray:
    """Palette index of every norm's colour, the zero grey where it has no position."""
    return _palette_index(scale.color_indices(norm), _FLAG_COLOR_INDEX["zero"])


def _stats_columns(rows: np.ndarray, found: np.ndarray) -> dict[str, Any]:
    """The inspector's columns for one node: rounded ``norm, mean, min, max``, ``one``, ``nan``/``inf``."""
    columns: dict[str, Any] = {name: _stat_column(rows[:, k], found)
                               for k, name in enumerate(("norm", "mean", "min", "max"))}
    nan, inf = rows[:, 4], rows[:, 5]
    columns["one"] = (found & (rows[:, 6] == 1) & (nan == 0) & (inf == 0)).astype(np.int8).tolist()
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
