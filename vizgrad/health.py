"""Gradient health per layer over time: each module's (or parameter's) gradient norm, RMS and largest |grad| per step."""

from __future__ import annotations

import base64
import dataclasses
import math
from typing import Any, Iterable, Sequence

import numpy as np

from vizgrad.errors import UsageError
from vizgrad.gradtable import WIDTH
from vizgrad.graph import Graph

__all__ = ["BY", "KINDS", "MEASURES", "Flow", "Layers", "layers_of", "grad_flow", "grad_norms"]

BY = ("module", "param")
#: ``param_grad``: the parameters' ``.grad`` right after ``backward()``; ``output``: the gradient flowing
#: into a module's outputs (for a parameter: the gradient this ``backward()`` delivered to it).
KINDS = ("param_grad", "output")
#: ``norm``: the L2 norm of all the layer's gradients; ``rms``: norm / sqrt(elements), which keeps tensor
#: size from looking like health; ``mean``: the mean of |grad| over the layer's elements (``plot_grad_flow``'s
#: "average gradient"; NaN in run files before schema 5); ``max``: the largest |grad| element.
MEASURES = ("norm", "rms", "mean", "max")


@dataclasses.dataclass(frozen=True)
class Layers:
    """The rows of one graph: each a name and the value keys whose gradients it sums."""

    names: tuple[str, ...]
    keys: tuple[tuple[tuple[Any, ...], ...], ...]


def _check(by: str, kind: str, depth: int | None) -> None:
    if by not in BY:
        raise UsageError(f"by must be one of {', '.join(map(repr, BY))}, got {by!r}")
    if kind not in KINDS:
        raise UsageError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
        raise UsageError(f"depth must be a whole number >= 0 or None, got {depth!r}")


def _check_measure(name: str) -> None:
    if name not in MEASURES:
        raise UsageError(f"measure must be one of {', '.join(map(repr, MEASURES))}, got {name!r}")


def layers_of(graph: Graph, by: str = "module", kind: str = "param_grad", depth: int | None = None) -> Layers:
    """What each row of ``graph`` sums, in forward order (see :func:`grad_norms`); cached on the graph."""
    _check(by, kind, depth)
    cache = graph.__dict__.setdefault("_vizgrad_layers", {})
    found = cache.get((by, kind, depth))
    if found is None:
        found = cache[(by, kind, depth)] = _param_layers(graph, kind) if by == "param" else \
            _module_layers(graph, kind, depth)
    return found


def _param_layers(graph: Graph, kind: str) -> Layers:
    """One row per named leaf: by their modules' forward order, else nearest the inputs first (the traversal
    starts at the loss, so reversed)."""
    rank = {info.path: at for at, info in enumerate(graph.modules)}
    leaves = [node for node in reversed(graph.nodes) if node.kind == "leaf" and node.name is not None]
    leaves.sort(key=lambda node: rank.get(node.module, len(rank)))  # type: ignore[arg-type]
    names = tuple(dict.fromkeys(node.name for node in leaves))  # type: ignore[misc]
    if kind == "param_grad":
        return Layers(names, tuple((("param_grad", name),) for name in names))
    by_name: dict[str, list[tuple[Any, ...]]] = {}
    for node in leaves:
        by_name.setdefault(node.name, []).append(("node", node.id, 0))  # type: ignore[arg-type]
    return Layers(names, tuple(tuple(by_name[name]) for name in names))


def _rows_at(graph: Graph, depth: int | None) -> tuple[list[str], dict[str, int]]:
    """The module rows at ``depth`` (every module for ``None``) in forward order, and each module's tree depth.

    At a depth, the rows are what a view drawn at that depth shows as boxes:
    the modules that deep, and shallower ones without modules inside.
    """
    infos = {info.path: info for info in graph.modules}
    level: dict[str, int] = {}

    def depth_of(path: str) -> int:
        if path not in level:
            parent = infos[path].parent
            level[path] = 0 if parent is None or parent not in infos else depth_of(parent) + 1
        return level[path]

    for path in infos:
        depth_of(path)
    if depth is None:
        return list(infos), level
    parents = {info.parent for info in graph.modules}
    return [path for path in infos if level[path] == depth or (level[path] < depth and path not in parents)], level


def _module_layers(graph: Graph, kind: str, depth: int | None) -> Layers:
    rows, level = _rows_at(graph, depth)
    infos = {info.path: info for info in graph.modules}
    ancestors: dict[str | None, tuple[str, ...]] = {None: ()}

    def lineage(path: str | None) -> tuple[str, ...]:
        if path not in ancestors:
            parent = infos[path].parent if path in infos else None  # type: ignore[index]
            ancestors[path] = (path,) + lineage(parent if parent in infos else None)  # type: ignore[operator]
        return ancestors[path]

    wanted = set(rows)
    if kind == "param_grad":
        keys: dict[str, list[tuple[Any, ...]]] = {row: [] for row in rows}
        loose: dict[str, tuple[Any, ...]] = {}  # parameters of an open module with modules inside
        for node in reversed(graph.nodes):
            if node.kind != "leaf" or node.name is None or node.module is None:
                continue
            key = ("param_grad", node.name)
            # Every module holds its submodules' parameters; at a depth, rows do not nest.
            owners = [path for path in lineage(node.module) if path in wanted]
            for owner in owners if depth is None else owners[:1]:
                if key not in keys[owner]:
                    keys[owner].append(key)
            if not owners and depth is not None and level.get(node.module, 0) < depth:
                loose.setdefault(node.name, key)
        names = [row for row in rows if keys[row]]
        layers = [(row, tuple(keys[row])) for row in names] + [(name, (key,)) for name, key in loose.items()]
        return Layers(tuple(name for name, _ in layers), tuple(k for _, k in layers))
    return _output_layers(graph, rows)


def _output_layers(graph: Graph, rows: Sequence[str]) -> Layers:
    """Per module: the gradients flowing into the outputs of its calls (tensors a node outside the call uses)."""
    from vizgrad.view import module_scopes

    scopes = module_scopes(graph)
    nodes, position = graph.nodes, graph.position
    into: dict[int, list[Any]] = {}
    for edge in graph.edges:
        if edge.kind in ("grad", "root"):
            into.setdefault(position[edge.dst], []).append((position[edge.src], edge.output))
    instances: dict[str, list[Any]] = {}
    for scope in scopes.by_id.values():
        if not scope.synthetic:
            instances.setdefault(scope.path, []).append(scope)
    names, keys = [], []
    for row in rows:
        found: dict[tuple[Any, ...], None] = {}
        for scope in instances.get(row, ()):
            members = set(_subtree_nodes(scope))
            for at in members:
                if nodes[at].kind in ("op", "custom"):
                    for src, output in into.get(at, ()):
                        if src not in members:
                            found.setdefault(("node", nodes[at].id, output), None)
        if found:
            names.append(row)
            keys.append(tuple(found))
    return Layers(tuple(names), tuple(keys))


def _subtree_nodes(scope: Any) -> list[int]:
    out, stack = [], [scope]
    while stack:
        current = stack.pop()
        out.extend(current.nodes)
        stack.extend(current.children)
    return out


@dataclasses.dataclass
class Flow:
    """Per layer and step: ``norm``, ``rms``, ``mean`` and ``max`` (|grad|) arrays of shape ``(steps, layers)``,
    NaN where none.

    Attributes:
        names: The layers (module paths or parameter names), in forward order.
        steps: The step indices of the rows.
        norm, rms, mean, max: The measures (see :data:`MEASURES`).
    """

    names: list[str]
    steps: list[int]
    norm: np.ndarray
    rms: np.ndarray
    mean: np.ndarray
    max: np.ndarray
    numel: np.ndarray  # elements summed per layer and step (0 where none)
    present: np.ndarray  # whether any gradient of the layer was recorded on the step (NaN values may be real)

    def measure(self, name: str) -> np.ndarray:
        """The array of one of :data:`MEASURES`."""
        _check_measure(name)
        return getattr(self, name)


def grad_flow(steps: Iterable[Any], by: str = "module", kind: str = "param_grad", depth: int | None = None) -> Flow:
    """Every layer's gradient measures over ``steps``; one pass over the steps' summary rows."""
    _check(by, kind, depth)
    names: dict[str, int] = {}
    plans: dict[tuple[int, int], tuple[Any, Any, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    per_step: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    indices: list[int] = []
    for step in steps:
        indices.append(step.index)
        graph, table = step.graph, step.table
        layers = layers_of(graph, by, kind, depth)
        plan_key = (id(layers), id(table.index))
        known = plans.get(plan_key)
        # The objects are kept beside their plan: an id is only theirs while they live.
        plan = known[2] if known is not None and known[0] is layers and known[1] is table.index else None
        if plan is None:  # the rows each layer sums, made once per graph and key index
            columns = np.array([names.setdefault(name, len(names)) for name in layers.names], dtype=np.int64)
            rows, owners = [], []
            for layer, layer_keys in enumerate(layers.keys):
                for key in layer_keys:
                    row = table.index.get(key)
                    if row is not None:
                        rows.append(row)
                        owners.append(layer)
            plan = (columns, np.array(rows, dtype=np.int64), np.array(owners, dtype=np.int64))
            plans[plan_key] = (layers, table.index, plan)
            if len(plans) > 256:
                plans.pop(next(iter(plans)))
        columns, rows, owners = plan
        summary = table.rows[rows] if len(rows) else np.zeros((0, WIDTH))
        count = len(columns)
        squares = np.bincount(owners, weights=summary[:, 0] ** 2, minlength=count)
        numel = np.bincount(owners, weights=summary[:, 6], minlength=count)
        magnitude = np.bincount(owners, weights=summary[:, 7] * summary[:, 6], minlength=count)  # sum of |g|
        largest = np.full(count, -np.inf)
        np.maximum.at(largest, owners, np.maximum(np.abs(summary[:, 2]), np.abs(summary[:, 3])))
        present = np.bincount(owners, minlength=count) > 0
        norm = np.where(present, np.sqrt(squares), np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            rms = np.where(present & (numel > 0), norm / np.sqrt(numel), np.nan)
            mean = np.where(present & (numel > 0), magnitude / numel, np.nan)
        per_step.append((columns, norm, rms, mean, np.where(present, largest, np.nan), numel, present))
    shape = (len(per_step), len(names))
    out = [np.full(shape, np.nan) for _ in range(4)] + [np.zeros(shape), np.zeros(shape, dtype=bool)]
    for row, (columns, *measures) in enumerate(per_step):
        for array, values in zip(out, measures):
            array[row, columns] = values
    return Flow(list(names), indices, *out)


def grad_norms(run: Any, by: str = "module", kind: str = "param_grad", depth: int | None = None,
               measure: str = "norm") -> tuple[list[str], np.ndarray]:
    """``(names, array steps x names)`` of each layer's gradient norm per step (see :meth:`Run.grad_norms`)."""
    _check_measure(measure)  # before the pass over the steps
    flow = grad_flow(run.steps, by, kind, depth)
    return flow.names, flow.measure(measure)


def log_range(values: np.ndarray) -> tuple[float, float] | None:
    """The smallest and largest finite positive value of ``values``, for a log colour scale; ``None`` if none."""
    finite = values[np.isfinite(values) & (values > 0)]
    if not finite.size:
        return None
    return float(finite.min()), float(finite.max())


# -- the report's gradient-flow panel ------------------------------------------------------------------------
#: Codes of the page's uint16 columns: no gradient, an exact zero, NaN or Inf; the rest a log scale.
CODE_NONE, CODE_ZERO, CODE_BAD = 0, 1, 65535
#: Rows the panel shows first at most, so each row is tall enough for its name; unless that makes fewer
#: than FEWEST_ROWS, when it shows the most detailed depth within MOST_ROWS.
READABLE_ROWS, FEWEST_ROWS, MOST_ROWS = 40, 8, 200
_CODE_SPAN = CODE_BAD - 2


def log_codes(values: np.ndarray, present: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``values`` as uint16 codes on the log10 scale from ``lo`` to ``hi`` (see :data:`CODE_NONE`)."""
    codes = np.full(values.shape, CODE_NONE, dtype="<u2")
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(values)
    positive = present & np.isfinite(logs)
    span = hi - lo if hi > lo else 1.0
    codes[positive] = 2 + np.round(np.clip((logs[positive] - lo) / span, 0, 1) * (_CODE_SPAN - 1)).astype("<u2")
    codes[present & (values == 0)] = CODE_ZERO
    codes[present & ~np.isfinite(values)] = CODE_BAD
    return codes


def flow_panel(steps: Sequence[Any], max_rows: int = 256) -> dict[str, Any] | None:
    """The data of the report's gradient-flow panel over ``steps``; ``None`` when no parameter got a gradient.

    Rows are the finest layers (modules without modules inside, and the
    parameters an open module owns itself; parameters when there are no
    modules). Each coarser depth is given as a grouping of them, which the
    page sums (norms add in squares), so one copy of the numbers serves
    every depth; the entry ``depth`` says which grouping the panel shows
    first (see :func:`_first_grouping`).
    """
    graphs: dict[int, Graph] = {}
    for step in steps:
        graphs.setdefault(id(step.graph), step.graph)
    deepest = max((_deepest(graph) for graph in graphs.values()), default=-1)
    by = "module" if deepest >= 0 else "param"
    finest = deepest if by == "module" else None
    flow = grad_flow(steps, by, "param_grad", finest)
    if not flow.names or len(flow.names) > max_rows * 4:
        return None
    main = max(graphs.values(), key=lambda graph: sum(step.graph is graph for step in steps))
    depths = []
    if by == "module":
        finest_layers = layers_of(main, "module", "param_grad", finest)
        key_row = {layer_keys[0]: flow.names.index(name) for name, layer_keys in
                   zip(finest_layers.names, finest_layers.keys) if name in flow.names and layer_keys}
        for level in range(deepest + 1):
            coarse = layers_of(main, "module", "param_grad", level)
            group = list(range(len(flow.names)))  # rows of other graph shapes stay rows of their own
            for number, layer_keys in enumerate(coarse.keys):
                for key in layer_keys:
                    row = key_row.get(key)
                    if row is not None:
                        group[row] = -1 - number
            names = list(coarse.names)
            for row, value in enumerate(group):  # a row no coarse layer took keeps its name
                if value >= 0:
                    group[row] = len(names)
                    names.append(flow.names[row])
                else:
                    group[row] = -1 - value
            if len(names) <= max_rows:
                depths.append({"depth": level, "names": names, "group": group})
    params = {node.name for graph in graphs.values() for node in graph.nodes if node.kind == "leaf"}
    both = np.concatenate([flow.norm.ravel(), flow.mean.ravel(), flow.max.ravel()])
    found = log_range(both)
    lo, hi = (math.log10(found[0]), math.log10(found[1])) if found else (0.0, 0.0)
    numel = flow.numel.max(axis=0) if len(flow.steps) else np.zeros(len(flow.names))  # 0: never a gradient
    shown = _first_grouping([len(grouping["names"]) for grouping in depths])
    unmeasured = bool((flow.present & np.isnan(flow.mean) & ~np.isnan(flow.norm)).any())  # NaN, yet a finite norm
    return {
        "by": by, "kind": "param_grad", "names": flow.names,
        "params": [name in params and by == "module" or by == "param" for name in flow.names],
        "numel": [int(n) for n in numel],
        "depths": depths, "depth": shown,
        "lo": lo, "hi": hi, "steps": len(flow.steps),
        "norm": base64.b64encode(log_codes(flow.norm, flow.present, lo, hi).tobytes()).decode("ascii"),
        "max": base64.b64encode(log_codes(flow.max, flow.present, lo, hi).tobytes()).decode("ascii"),
        # Mean |grad|, unless some step lacks it (read from a run file before schema 5): the page then shows RMS.
        "mean": None if unmeasured else base64.b64encode(log_codes(flow.mean, flow.present, lo, hi).tobytes()
                                                         ).decode("ascii"),
    }


def _first_grouping(rows: Sequence[int]) -> int:
    """Which depth (of those with ``rows`` rows, coarsest first) to show first.

    The most detailed one whose rows can carry their names (at most
    :data:`READABLE_ROWS`: a GPT's blocks, each a row), unless that leaves
    fewer than :data:`FEWEST_ROWS` (two stages of fifty blocks): then the most
    detailed one within :data:`MOST_ROWS`.
    """
    if not rows:
        return 0
    readable = [at for at, count in enumerate(rows) if count <= READABLE_ROWS]
    if readable and rows[readable[-1]] >= FEWEST_ROWS:
        return readable[-1]
    fitting = [at for at, count in enumerate(rows) if count <= MOST_ROWS]
    return fitting[-1] if fitting else 0


def readable_rows(steps: Sequence[Any]) -> tuple[str, int | None]:
    """``(by, depth)`` of the layers of ``steps`` the gradient-flow panel and ``vizgrad info`` show first."""
    graphs = {id(step.graph): step.graph for step in steps}.values()
    deepest = max((_deepest(graph) for graph in graphs), default=-1)
    if deepest < 0:
        return "param", None
    main = max(graphs, key=len)
    counts = [len(layers_of(main, "module", "param_grad", depth).names) for depth in range(deepest + 1)]
    return "module", _first_grouping(counts)


def _deepest(graph: Graph) -> int:
    """The tree depth of the deepest module of ``graph`` (top-level modules are 0); -1 without modules."""
    if not graph.modules:
        return -1
    return max(_rows_at(graph, None)[1].values())
