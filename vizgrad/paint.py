"""The painter: one step's or many steps' gradients turned into fills, value lines, edge colours, widths and flags.

Every output paints through :func:`paint_segment`, a node at a time across
consecutive steps that share a graph (numpy for colours, widths and flags):
the report takes its columns, frames (SVG, GIF, MP4, the live view) take one
step of them. Painting one step is painting a segment of one step.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from vizgrad.colors import FLAG_COLORS, VIRIDIS, ColorScale, text_color_for
from vizgrad.dot import LINE_WIDTH, PAINTED_EDGE_KINDS, PAINTED_NODE_KINDS
from vizgrad.layout import FLAGS
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
                  graph: Graph | None = None) -> dict[str, Any]:
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
    keys: dict[tuple, int] = {}
    output_slots = [[keys.setdefault(k, len(keys)) for k in output_keys] for _, _, output_keys, _ in plan.nodes]
    param_slots = [keys.setdefault(p, len(keys)) if p else -1 for _, _, _, p in plan.nodes]
    edge_slots = [keys.setdefault(k, len(keys)) for _, k in plan.edges]
    data, present = gather_rows(steps, list(keys)) if plan.view is None else _view_rows(steps, plan.view, list(keys))
    losses = [step.loss for step in steps]
    nodes: dict[str, dict[str, Any]] = {}
    stats_by_content: dict[bytes, dict[str, Any]] = {}
    grads_by_content: dict[bytes, list[str]] = {}
    for (node_id, kind, _keys, _param), slots, param_slot in zip(plan.nodes, output_slots, param_slots):
        if kind in BOX_KINDS:
            nodes[node_id] = _box_paint(data, present, slots, scale, inspector)
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
    fill = np.where(flags > 0, _FLAG_FILL[flags], _color_indices(norm, scale))
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
    t = scale.positions(norm)
    height = np.where(np.isnan(t), 0, np.rint(_BAR_FULL * (0.12 + 0.88 * np.nan_to_num(t)))).astype(np.int64)
    height = np.where((flags == 1) | (flags == 2), _BAR_FULL, height)
    color = np.where(flags > 0, _FLAG_FILL[flags], _color_indices(norm, scale))
    return {"color": color.tolist(), "height": height.tolist()}


_VIEW_STEP_CHUNK = 32  # steps whose member rows are held at once (a 32k-node graph's rows are ~4 MB a step)


def _view_rows(steps: Sequence[Step], view: ViewPlan, keys: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`gather_rows` for a view's keys: its nodes' and edges' own rows, its boxes' and bundles' made of them.

    A box's ``in`` is the gradient of the tensors made inside it and used
    outside (the root of their squared norms summed: distinct tensors); its
    ``out`` what it passes to the tensors it takes in: a tensor's whole
    gradient when only the box uses it, else the gradients along the box's
    edges to it; ``max`` the largest norm of any node inside. A fold's bar is
    the largest ``in`` of the instances it covers (an instance's ``in``
    counts the tensors the next instance takes). A bundle of edges is the
    root of its edges' squared norms summed. NaN and Inf counts are summed.
    """
    groups, plain = _view_groups(view, keys)
    data = np.full((len(steps), len(keys), 7), np.nan)
    present = np.zeros((len(steps), len(keys)), dtype=bool)
    if plain:
        data[:, plain], present[:, plain] = gather_rows(steps, [keys[k] for k in plain])
    if not groups:
        return data, present
    members: dict[tuple, int] = {}
    columns = []
    for k, how, member_keys, labels in groups:
        columns.append((k, how, np.array([members.setdefault(m, len(members)) for m in member_keys], dtype=np.int64),
                        labels))
    member_list = list(members)
    for start in range(0, len(steps), _VIEW_STEP_CHUNK):
        chunk = steps[start:start + _VIEW_STEP_CHUNK]
        rows, found = gather_rows(chunk, member_list)
        at = slice(start, start + len(chunk))
        for k, how, picked, labels in columns:
            if how == "max":
                data[at, k], present[at, k] = _largest(rows[:, picked], found[:, picked])
            elif how == "bar":
                data[at, k], present[at, k] = _largest_instance(rows[:, picked], found[:, picked], labels)
            else:
                data[at, k], present[at, k] = _combined(rows[:, picked], found[:, picked])
    return data, present


def _view_groups(view: ViewPlan, keys: list[tuple]) -> tuple[list[tuple[int, str, list[tuple], Any]], list[int]]:
    """For each synthetic key of a view, how to make its row: ``(position, "sum" | "max" | "bar", member keys,
    instance labels)``; and the positions of the keys the table has as they are."""
    source = view.source
    position = {node.id: at for at, node in enumerate(source.nodes)}
    item_of, instance_of = view.item_of, view.instance_of
    view_ids = {node_id: k for k, node_id in enumerate(view.item_ids)}
    # Per drawn item: the tensors (node, output) it makes that are used outside, and per input
    # tensor the edges it takes it along.
    outputs: dict[int, dict[tuple, int]] = {}  # item -> output tensor key -> instance
    inputs: dict[int, dict[tuple, list[tuple]]] = {}  # item -> input tensor key -> its edges from the item
    instance_outputs: dict[int, dict[tuple, int]] = {}  # fold -> tensors used outside their instance
    users: Counter[tuple] = Counter()  # tensor -> edges into it
    for edge in source.edges:
        if edge.kind not in PAINTED_EDGE_KINDS:
            continue
        a, b = position[edge.src], position[edge.dst]
        tensor = ("node", edge.dst, edge.output)
        users[tensor] += 1
        src_item, dst_item = int(item_of[a]), int(item_of[b])
        if src_item != dst_item:
            outputs.setdefault(dst_item, {})[tensor] = int(instance_of[b])
            inputs.setdefault(src_item, {}).setdefault(tensor, []).append(("edge", edge.src, edge.slot))
        if src_item != dst_item or instance_of[a] != instance_of[b]:
            instance_outputs.setdefault(dst_item, {})[tensor] = int(instance_of[b])
    node_keys: dict[int, list[tuple]] = {}
    for at, node in enumerate(source.nodes):
        if node.kind in PAINTED_NODE_KINDS and item_of[at] >= 0:
            node_keys.setdefault(int(item_of[at]), []).extend(("node", node.id, k) for k in range(max(node.outputs, 1)))
    groups: list[tuple[int, str, list[tuple], Any]] = []
    plain: list[int] = []
    for k, key in enumerate(keys):
        if key[0] == "box":
            item = view_ids[key[1]]
            if key[2] == "in":
                groups.append((k, "sum", list(outputs.get(item, {})), None))
            elif key[2] == "out":
                members: list[tuple] = []
                for tensor, edges in inputs.get(item, {}).items():
                    members.extend([tensor] if users[tensor] == len(edges) else edges)
                groups.append((k, "sum", members, None))
            else:
                groups.append((k, "max", node_keys.get(item, []), None))
        elif key[0] == "bar":
            item = view_ids[key[1]]
            first, stop = bar_buckets(view.boxes[key[1]].count)[key[2]]
            picked = [(tensor, inst) for tensor, inst in instance_outputs.get(item, {}).items() if first <= inst < stop]
            groups.append((k, "bar", [t for t, _ in picked], np.array([i for _, i in picked], dtype=np.int64)))
        elif key[0] == "bundle":
            groups.append((k, "sum", [("edge", source.edges[e].src, source.edges[e].slot)
                                      for e in view.bundles[key[1]]], None))
        else:
            plain.append(k)
    return groups, plain


def _combined(rows: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``(steps, members, 7)`` as one per step: root of summed squared norms, counts summed."""
    out = np.full((len(rows), 7), np.nan)
    merged = np.where(found[..., None], rows, 0.0)
    out[:, 0] = np.sqrt((merged[..., 0] ** 2).sum(axis=1))
    out[:, 4:7] = merged[..., 4:7].sum(axis=1)
    return out, found.any(axis=1)


def _largest(rows: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest norm of the members (NaN wins, as a flag must), counts summed."""
    out = np.full((len(rows), 7), np.nan)
    merged = np.where(found[..., None], rows, 0.0)
    norms = np.where(found, rows[..., 0], -np.inf)
    with np.errstate(invalid="ignore"):
        out[:, 0] = norms.max(axis=1, initial=-np.inf)
    out[:, 0] = np.where(np.isnan(norms).any(axis=1), np.nan, out[:, 0])
    out[:, 4:7] = merged[..., 4:7].sum(axis=1)
    return out, found.any(axis=1)


def _largest_instance(rows: np.ndarray, found: np.ndarray, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest per-instance combined norm among the instances the edges go into."""
    out = np.full((len(rows), 7), np.nan)
    present = np.zeros(len(rows), dtype=bool)
    if rows.shape[1] == 0:
        return out, present
    labels, inverse = np.unique(instances, return_inverse=True)
    merged = np.where(found[..., None], rows, 0.0)
    for s in range(len(rows)):
        squares = np.bincount(inverse, weights=merged[s, :, 0] ** 2, minlength=len(labels))
        has = np.bincount(inverse, weights=found[s].astype(np.float64), minlength=len(labels)) > 0
        if has.any():
            with np.errstate(invalid="ignore"):
                out[s, 0] = np.sqrt(squares[has]).max()
            present[s] = True
        out[s, 4:7] = merged[s, :, 4:7].sum(axis=0)
    return out, present


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
