"""Diagnostics: where a NaN/Inf starts, vanishing, exploding and dead layers, GradScaler skips, wrong hand-written gradients.

Two halves. While recording, a step notes what only the live step can tell
(:attr:`Step.checks`): the non-finite origins in the order the engine ran the
nodes, the first module whose output was non-finite (``record(activations=True)``),
the parameters' zero counts, a GradScaler skip, hand-written gradients compared
with autograd's. :func:`findings` then reads those notes and the steps' summary
rows into plain :class:`Finding` records, for ``run.findings()``, ``vizgrad info``,
the report and the Jupyter view alike.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, Mapping, Sequence

import numpy as np

from vizgrad.errors import UsageError
from vizgrad.graph import Graph, short_op

__all__ = ["KINDS", "Finding", "Thresholds", "findings", "nonfinite_origins", "engine_order", "compare_manual",
           "site_text", "zeros_due", "has_nonfinite_gradient", "params_nonfinite", "rank_findings"]

#: The kinds of finding, in the order a report lists them (the most urgent first).
KINDS = ("nonfinite", "rank_nonfinite", "rank_divergence", "manual_mismatch", "exploding", "vanishing", "dead",
         "amp_skipped")


@dataclasses.dataclass(frozen=True)
class Finding:
    """One diagnosis of a run: plain data (JSON-able through :meth:`to_dict`).

    Attributes:
        kind: One of :data:`KINDS`.
        step: The first step where it happens.
        node: The node (id in that step's graph) it points at, or ``None``.
        module: The module path of that node or layer, or ``None``.
        message: One or two sentences for a person.
        count: How many steps show it (the first included).
        op: The node's op (``SqrtBackward0``), or ``None``.
        where: ``file:line`` of the module's call in the user's code, or ``None``.
        detail: Numbers behind the message (ratios, thresholds, the later steps).
    """

    kind: str
    step: int
    node: str | None
    module: str | None
    message: str
    count: int = 1
    op: str | None = None
    where: str | None = None
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        return {field.name: (dict(getattr(self, field.name)) if field.name == "detail" else getattr(self, field.name))
                for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        """Inverse of :meth:`to_dict`."""
        return cls(**{field.name: data[field.name] for field in dataclasses.fields(cls) if field.name in data})

    def __str__(self) -> str:
        where = f" ({self.where})" if self.where else ""
        repeat = f", {self.count} steps" if self.count > 1 else ""
        return f"[{self.kind}] step {self.step}{repeat}: {self.message}{where}"


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """When a layer's gradients count as vanishing, exploding or dead (``run.findings(**thresholds)``).

    Attributes:
        vanishing: A layer whose gradient RMS is below this fraction of the loss
            end's (the layer nearest the loss) vanishes.
        exploding: A layer whose gradient RMS is above this multiple of the loss end's explodes.
        jump: A step whose total parameter gradient norm is more than this multiple
            of the running median of the steps before it explodes.
        window: How many earlier steps the running median spans.
        warmup: Steps needed before jumps are judged.
        dead: A parameter whose gradient is exactly zero on at least this share of
            its elements (dead ReLU units zero whole weight rows) is dead on that step.
        persist: The share of steps a layer must vanish, explode or be dead on
            (at least ``min_steps`` of them) to be a finding.
        min_steps: See ``persist``.
        rtol: A hand-written gradient whose relative error to autograd's is above this mismatches.
        diverge: In a merged distributed run, a rank whose local gradient norm is more than this
            multiple of the other ranks' median (or, with three ranks or more, less than its inverse) diverges.
    """

    vanishing: float = 1e-3
    exploding: float = 1e3
    jump: float = 10.0
    window: int = 20
    warmup: int = 3
    dead: float = 0.5
    persist: float = 0.5
    min_steps: int = 3
    rtol: float = 1e-4
    diverge: float = 10.0

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> Thresholds:
        """Thresholds from keyword options; a one-line :class:`UsageError` for an unknown or bad one."""
        names = {field.name: field for field in dataclasses.fields(cls)}
        for name, value in options.items():
            if name not in names:
                raise UsageError(f"unknown threshold {name!r}; choose from {', '.join(names)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise UsageError(f"threshold {name}={value!r} must be a number > 0")
        return cls(**options)


#: Parameters' zero counts are taken on every one of a run's first steps, then on every few: a dead layer
#: stays dead for many steps, and counting is a pass over every ``.grad``.
ZEROS_FIRST, ZEROS_EVERY = 16, 16


def zeros_due(index: int) -> bool:
    """Whether step ``index`` counts its parameters' zero gradients (see :data:`ZEROS_EVERY`)."""
    return index < ZEROS_FIRST or index % ZEROS_EVERY == 0


# -- non-finite origins ---------------------------------------------------------------------------------------
def _bad_rows(table: Any) -> np.ndarray:
    """Per row of the table, whether the tensor held a NaN or an Inf."""
    rows = table.rows
    return (rows[:, 4] + rows[:, 5]) > 0 if len(rows) else np.zeros(0, dtype=bool)


def has_nonfinite_gradient(table: Any) -> bool:
    """Whether any node or edge gradient of the step holds a NaN or an Inf."""
    if table.all_finite():  # most steps: told without computing the rows a training step leaves for later
        return False
    bad = _bad_rows(table)
    if not bad.any():
        return False
    mask = table.index.is_gradient_row
    return bool(bad[:len(mask)][mask[:len(bad)]].any()) if len(mask) else False


def nonfinite_origins(graph: Graph, table: Any) -> list[dict[str, Any]]:
    """The nodes where a step's gradients turn non-finite, in graph order.

    A node is an origin when what it received was finite and what it passed
    on is not (``op``); when what it received is non-finite though every
    gradient sent to it was finite (``sum``: the gradients of its uses
    overflowed when added; ``hook``: a hook on it changed the gradient); or,
    for a root, when the gradient ``backward()`` started from is (``seed``).
    """
    bad = _bad_rows(table)
    index = table.index

    def state(key: tuple) -> bool | None:
        row = index.get(key)
        return None if row is None or row >= len(bad) else bool(bad[row])

    feeding: dict[str, list[tuple]] = {}
    for edge in graph.edges:
        if edge.kind == "grad":
            feeding.setdefault(edge.dst, []).append(("edge", edge.src, edge.slot))
    origins = []
    for node in graph.nodes:
        if node.kind not in ("op", "custom", "leaf", "root"):
            continue
        received = [state(("node", node.id, k)) for k in range(max(node.outputs, 1))]
        passed = [state(("edge", node.id, slot)) for slot in range(node.inputs)]
        if node.kind == "root":
            if any(received):
                origins.append({"node": node.id, "why": "seed"})
            continue
        sent = [state(key) for key in feeding.get(node.id, ())]
        if any(received) and sent and not any(sent):
            origins.append({"node": node.id, "why": "sum" if len(sent) > 1 else "hook"})
        elif not any(received) and any(passed):
            origins.append({"node": node.id, "why": "op"})
    return origins


def engine_order(origins: list[dict[str, Any]], graph: Graph, ran: Mapping[str, int]) -> list[dict[str, Any]]:
    """``origins`` in the order the engine ran them: ``ran`` maps the nodes that were hooked to their turn.

    A node without a hook ran after its uses (the nodes that feed it) and
    before its inputs: it is placed just after the latest of its uses.
    """
    uses: dict[str, list[str]] = {}
    for edge in graph.edges:
        if edge.kind == "grad":
            uses.setdefault(edge.dst, []).append(edge.src)
    position = graph.position

    def turn(origin: dict[str, Any]) -> tuple[float, int]:
        node = origin["node"]
        if node in ran:
            return float(ran[node]), position[node]
        before = [ran[use] for use in uses.get(node, ()) if use in ran]
        return (max(before) + 0.5 if before else -1.0), position[node]

    ordered = sorted(origins, key=turn)
    for origin in ordered:
        origin["turn"] = turn(origin)[0]
    return ordered


# -- hand-written gradients -------------------------------------------------------------------------------------
def compare_manual(manual: Any, autograd: Any) -> dict[str, Any]:
    """How a hand-written gradient compares with autograd's (float64 numpy arrays of the same size).

    ``ratio`` is the scale that best maps autograd's onto the hand-written one
    (least squares), ``residual`` what is left after that scale (relative), so a
    hand-written gradient off by a constant factor has a tiny residual.
    """
    m = np.asarray(manual, dtype=np.float64).reshape(-1)
    a = np.asarray(autograd, dtype=np.float64).reshape(-1)
    a_norm, m_norm = float(np.linalg.norm(a)), float(np.linalg.norm(m))
    if m.size != a.size:
        return {"manual": m_norm, "autograd": a_norm, "error": math.inf, "ratio": None, "residual": None,
                "shape": [int(m.size), int(a.size)]}
    scale = max(a_norm, m_norm)
    error = float(np.linalg.norm(m - a)) / scale if scale > 0 else 0.0
    ratio = residual = None
    if a_norm > 0 and math.isfinite(a_norm) and math.isfinite(m_norm):
        ratio = float(np.dot(m, a) / (a_norm * a_norm))
        residual = float(np.linalg.norm(m - ratio * a)) / m_norm if m_norm > 0 else 0.0
    return {"manual": m_norm, "autograd": a_norm, "error": error, "ratio": ratio, "residual": residual}


def _factor(ratio: float) -> str:
    if ratio == 0:
        return "it is zero"
    if ratio < 0:
        return "the sign is flipped?" if abs(abs(ratio) - 1) < 1e-3 else f"the sign is flipped and off by {abs(ratio):.4g}x?"
    return f"a factor {1 / ratio:.4g} missing?" if ratio < 1 else f"a factor {ratio:.4g} too many?"


# -- the call sites of modules -------------------------------------------------------------------------------
def site_text(graph: Graph, module: str | None) -> str | None:
    """``file:line`` where the user's code called ``module`` (or its nearest module with one), or ``None``."""
    sites = graph.call_sites
    while module is not None:
        if module in sites:
            return sites[module]
        if not module:
            return None
        module = module.rpartition(".")[0]  # "h.3" -> "h" -> "" (the top-level module of record(model))
    return None


# -- from a run to findings -----------------------------------------------------------------------------------
class _Collector:
    """Findings keyed by what they are about, each with its first step and how many steps repeat it."""

    def __init__(self) -> None:
        self.found: dict[tuple, dict[str, Any]] = {}

    def add(self, key: tuple, step: int, **fields: Any) -> None:
        entry = self.found.get(key)
        if entry is None:
            self.found[key] = {"step": step, "count": 1, "last": step, **fields}
        elif step != entry["last"]:
            entry["count"] += 1
            entry["last"] = step


def _node_facts(graph: Graph, node_id: str | None) -> tuple[str | None, str | None, str | None]:
    """The op (without its C++ namespace), module and call site of a node."""
    if node_id is None or node_id not in graph.by_id:
        return None, None, None
    node = graph.node(node_id)
    return short_op(node.op), node.module, site_text(graph, node.module)


def _label(graph: Graph, layer: str | None) -> str:
    """A module as a person reads it: ``fc1 (Linear)``, the class alone for the top-level module's ``""``."""
    if layer is None:
        return "code outside any module"
    kind = next((info.type for info in graph.modules if info.path == layer), None)
    if kind is None:
        return layer
    return kind if layer == "" else f"{layer} ({kind})"


_WHY = {"op": "its input gradients were finite and its output ones are not",
        "sum": "the gradients of its uses were finite, their sum is not (an overflow)",
        "hook": "what was sent to it was finite; a hook on it made it non-finite",
        "seed": "the gradient backward() started from is non-finite"}


def _nonfinite(steps: Sequence[Any], collector: _Collector) -> None:
    """The first origin of each step with a non-finite gradient; steps after parameters went bad repeat it."""
    latest: tuple | None = None
    for step in steps:
        checks = step.checks or {}
        forward = checks.get("forward")
        graph = step.graph
        origins = checks.get("origins")
        if origins is None and forward is None:  # not noted while recording (an older file): read the rows
            origins = nonfinite_origins(graph, step.table) if has_nonfinite_gradient(step.table) else None
        if forward is None and not origins:
            continue
        if latest is not None and params_nonfinite(step):
            _repeat(collector.found[latest], step.index)  # an earlier step left NaN in the parameters
            continue
        loss_bad = step.loss is not None and not math.isfinite(step.loss)
        if forward is not None and loss_bad:
            op, _, where = _node_facts(graph, forward.get("node"))
            module = forward["module"]
            key = ("nonfinite", "forward", module, op)
            collector.add(key, step.index, node=forward.get("node"), module=module, op=op,
                          where=site_text(graph, module) or where,
                          message=f"the forward pass: {_label(graph, module)} is the first module "
                                  f"whose output is non-finite; the loss is {step.loss}.{_bad_params_note(step)}")
            latest = key
            continue
        if not origins:
            continue
        first = origins[0]
        op, module, where = _node_facts(graph, first["node"])
        key = ("nonfinite", "backward", module, op, first["node"], graph.structural_hash)
        hint = (" The loss itself is non-finite: record(activations=True) finds the module that first made it."
                if loss_bad and forward is None else "")
        collector.add(key, step.index, node=first["node"], module=module, op=op, where=where,
                      message=f"{op}{' in ' + _label(graph, module) if module is not None else ''} made the first "
                              "non-finite gradient of the "
                              f"backward pass: {_WHY[first['why']]}.{hint}{_bad_params_note(step)}",
                      others=len(origins) - 1)
        latest = key


def _repeat(entry: dict[str, Any], step: int) -> None:
    """Counts ``step`` as a repeat of ``entry``: its parameters are non-finite since an earlier step."""
    entry["count"] += step != entry["last"]
    entry["last"] = step
    entry.setdefault("params_from", step)


def nonfinite_params(step: Any) -> list[str]:
    """The parameters whose value held a NaN or an Inf when the step's ``backward()`` ran."""
    table = step.table
    bad = _bad_rows(table)
    return [key[1] for key, row in table.index.items() if key[0] == "param" and row < len(bad) and bad[row]]


def params_nonfinite(step: Any) -> bool:
    """Whether a parameter's value was non-finite when the step's ``backward()`` ran."""
    return bool(nonfinite_params(step))


def _bad_params_note(step: Any) -> str:
    """For a first non-finite step: which parameters were non-finite before it ran (set by an update or by hand)."""
    names = nonfinite_params(step)
    if not names:
        return ""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f" {shown} {'was' if len(names) == 1 else 'were'} already non-finite when this step ran."


def _owner_layers(steps: Sequence[Any]) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """Each named parameter's layer (its module, else itself), the layers in forward order, and a node per layer."""
    from vizgrad.health import layers_of

    layer_of: dict[str, str] = {}
    node_of: dict[str, str] = {}
    for graph in {id(step.graph): step.graph for step in steps}.values():
        leaves: dict[str, Any] = {}  # name -> its leaf node, the one nearest the inputs
        for node in reversed(graph.nodes):
            if node.kind == "leaf" and node.name is not None:
                leaves.setdefault(node.name, node)
        for name in layers_of(graph, by="param").names:  # the parameters in their modules' forward order
            node = leaves[name]
            layer = node.module if node.module is not None else name
            layer_of.setdefault(name, layer)
            node_of.setdefault(layer, node.id)
    layers = list(dict.fromkeys(layer_of.values()))
    return layer_of, layers, node_of


def _layer_rms(steps: Sequence[Any]) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, str], dict[str, str]]:
    """Per step and layer: gradient RMS, and per step the total parameter gradient norm."""
    from vizgrad.health import grad_flow

    flow = grad_flow(steps, by="param", kind="param_grad")
    layer_of, layers, node_of = _owner_layers(steps)
    column = {name: at for at, name in enumerate(flow.names)}
    squares = np.zeros((len(flow.steps), len(layers)))
    numel = np.zeros((len(flow.steps), len(layers)))
    present = np.zeros((len(flow.steps), len(layers)), dtype=bool)
    at = {layer: k for k, layer in enumerate(layers)}
    for name in layer_of:
        if name not in column:
            continue
        k = at[layer_of[name]]
        j = column[name]
        has = flow.present[:, j]
        squares[:, k] += np.where(has, flow.norm[:, j], 0.0) ** 2
        numel[:, k] += np.where(has, flow.numel[:, j], 0.0)
        present[:, k] |= has
    with np.errstate(invalid="ignore", divide="ignore"):
        rms = np.where(present & (numel > 0), np.sqrt(squares) / np.sqrt(numel), np.nan)
        total = np.where(present.any(axis=1), np.sqrt(squares.sum(axis=1)), np.nan)
    return layers, rms, total, node_of, layer_of


def _persistent(flags: np.ndarray, known: np.ndarray, thresholds: Thresholds) -> bool:
    count, judged = int(flags.sum()), int(known.sum())
    return count >= thresholds.min_steps and judged > 0 and count >= thresholds.persist * judged


def _layer_findings(steps: Sequence[Any], collector: _Collector, thresholds: Thresholds) -> None:
    """Vanishing and exploding layers (relative to the loss end), jumps of the total norm, dead layers."""
    if not steps:
        return
    layers, rms, total, node_of, layer_of = _layer_rms(steps)
    indices = [step.index for step in steps]
    graph_of: dict[str, Any] = {}  # a graph holding each layer's node, for its facts
    for graph in {id(step.graph): step.graph for step in steps}.values():
        for layer in layers:
            if layer not in graph_of and node_of.get(layer) in graph.by_id:
                graph_of[layer] = graph
    if len(layers) >= 2:
        end = rms[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = rms[:, :-1] / end[:, None]
        known = np.isfinite(ratio) & (end[:, None] > 0)
        for kind, flags, limit in (("vanishing", known & (ratio < thresholds.vanishing), thresholds.vanishing),
                                   ("exploding", known & (ratio > thresholds.exploding), thresholds.exploding)):
            affected = [k for k in range(len(layers) - 1) if _persistent(flags[:, k], known[:, k], thresholds)]
            if not affected:
                continue
            # The layer nearest the loss where it starts: the others, further from the loss, follow from it.
            k = max(affected)
            first = int(np.argmax(flags[:, k]))
            worst = float(np.nanmin(ratio[:, affected]) if kind == "vanishing" else np.nanmax(ratio[:, affected]))
            layer = layers[k]
            others = len(affected) - 1
            below = "below" if kind == "vanishing" else "above"
            rest = f" (and {others} more layer{'s' if others > 1 else ''} further from the loss)" if others else ""
            graph = graph_of.get(layer) or steps[0].graph
            node = node_of.get(layer)
            op, module, where = _node_facts(graph, node)
            collector.found[(kind, "layer", layer)] = {
                "step": indices[first], "count": int(flags[:, k].sum()), "last": indices[first], "node": node,
                "module": module, "op": op, "where": where,
                "message": f"{_label(graph, layer)}: gradient RMS {below} {limit:g}x the loss end's "
                           f"({_label(graph, layers[-1])}){rest}, "
                           f"on {int(flags[:, k].sum())} of {int(known[:, k].sum())} steps; "
                           f"the {'smallest' if kind == 'vanishing' else 'largest'} ratio is {worst:.3g}",
                "layers": [layers[j] for j in affected], "ratio": worst, "threshold": limit}
    _jumps(steps, indices, total, collector, thresholds)
    _dead(steps, collector, thresholds, graph_of, node_of, layer_of)


def _jumps(steps: Sequence[Any], indices: list[int], total: np.ndarray, collector: _Collector,
           thresholds: Thresholds) -> None:
    """Steps whose total gradient norm jumps more than ``jump`` times the running median of the steps before."""
    window, history = thresholds.window, []
    for at, value in enumerate(total.tolist()):
        if math.isfinite(value) and len(history) >= thresholds.warmup:
            median = float(np.median(history[-window:]))
            if median > 0 and value > thresholds.jump * median:
                key = ("exploding", "jump")
                known = collector.found.get(key)
                if known is None:
                    collector.found[key] = {
                        "step": indices[at], "count": 1, "last": indices[at], "node": None, "module": None,
                        "op": None, "where": None, "ratio": value / median, "threshold": thresholds.jump,
                        "message": f"the total gradient norm jumped to {value:.4g}, {value / median:.3g}x the median "
                                   f"{median:.4g} of the {min(len(history), window)} steps before"}
                else:
                    known["count"] += 1
                    known["last"] = indices[at]
        if math.isfinite(value):
            history.append(value)


#: Modules whose gradients are mostly exact zeros by design (the rows of tokens a batch does not use).
_SPARSE_BY_DESIGN = ("Embedding", "EmbeddingBag")


def _dead(steps: Sequence[Any], collector: _Collector, thresholds: Thresholds, graph_of: Mapping[str, Any],
          node_of: Mapping[str, str], layer_of: Mapping[str, str]) -> None:
    """Layers whose parameter gradients are exactly zero on most elements, on most steps (dead ReLU units)."""
    zero: dict[str, list[int]] = {}
    judged: dict[str, int] = {}
    fraction: dict[str, float] = {}
    if not any((step.checks or {}).get("zeros") for step in steps):  # none counted (or none zero): nothing dead
        return
    for step in steps:
        if not zeros_due(step.index):
            continue
        zeros = (step.checks or {}).get("zeros") or {}
        sums: dict[str, list[float]] = {}
        table = step.table
        for name in table.index.params:
            numel = table.numel(("param_grad", name)) if table.has(("param_grad", name)) else 0
            if numel <= 0:
                continue
            count = zeros.get(name, 0)
            layer = layer_of.get(name, name)
            entry = sums.setdefault(layer, [0.0, 0.0])
            entry[0] += count
            entry[1] += numel
        for layer, (count, numel) in sums.items():
            judged[layer] = judged.get(layer, 0) + 1
            share = count / numel
            if share >= thresholds.dead:
                zero.setdefault(layer, []).append(step.index)
                fraction[layer] = max(fraction.get(layer, 0.0), share)
    for layer, dead_steps in zero.items():
        if len(dead_steps) < thresholds.min_steps or len(dead_steps) < thresholds.persist * judged[layer]:
            continue
        graph = graph_of.get(layer) or steps[0].graph
        if any(info.path == layer and info.type in _SPARSE_BY_DESIGN for info in graph.modules):
            continue  # a batch uses few of an embedding's rows: the others get exact zeros, alive or not
        node = node_of.get(layer)
        op, module, where = _node_facts(graph, node)
        collector.found[("dead", layer)] = {
            "step": dead_steps[0], "count": len(dead_steps), "last": dead_steps[-1], "node": node,
            "module": module if module is not None else None, "op": op, "where": where, "fraction": fraction[layer],
            "message": f"{_label(graph, layer)}: gradient exactly zero on {fraction[layer]:.0%} of its elements at worst, "
                       f"{thresholds.dead:.0%} or more on {len(dead_steps)} of {judged[layer]} steps "
                       "(dead units: a ReLU that never fires zeroes the weights feeding it)"}


def _amp(steps: Sequence[Any], collector: _Collector) -> None:
    for step in steps:
        amp = (step.checks or {}).get("amp")
        if amp and amp.get("skipped"):
            scale = amp.get("scale")
            collector.add(("amp_skipped",), step.index, node=None, module=None, op=None, where=None,
                          message="GradScaler found Inf/NaN in the scaled gradients and skipped optimizer.step()"
                                  + (f" (loss scale {scale:g})" if scale is not None else ""))


def _manual(steps: Sequence[Any], collector: _Collector, thresholds: Thresholds) -> None:
    compared: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for step in steps:
        for name, result in ((step.checks or {}).get("manual") or {}).items():
            compared.setdefault(name, []).append((step.index, result))
    for name, results in compared.items():
        wrong = [(index, result) for index, result in results if not result["error"] <= thresholds.rtol]
        if not wrong:
            continue
        ratios = [result.get("ratio") for _, result in wrong]
        constant = all(ratio is not None and result.get("residual") is not None and result["residual"] <= thresholds.rtol
                       for ratio, (_, result) in zip(ratios, wrong)) \
            and max(ratios) - min(ratios) <= thresholds.rtol * max(abs(r) for r in ratios)  # type: ignore[type-var]
        every = "every step" if len(wrong) == len(results) else f"{len(wrong)} of {len(results)} steps"
        first_step, first = wrong[0]
        if constant:
            ratio = ratios[0]
            message = f"{name} is {ratio:.4g}x autograd's on {every}: {_factor(ratio)}"  # type: ignore[arg-type]
        elif first.get("shape"):
            message = f"{name} has {first['shape'][0]} elements where autograd's gradient has {first['shape'][1]}"
        else:
            worst = max(result["error"] for _, result in wrong)
            message = f"{name} differs from autograd's on {every}: relative error up to {worst:.3g}"
        graph = steps[0].graph
        node = next((n.id for n in graph.nodes if n.kind == "leaf" and n.name == name), None)
        op, module, where = _node_facts(graph, node)
        collector.found[("manual_mismatch", name)] = {
            "step": first_step, "count": len(wrong), "last": wrong[-1][0], "node": node, "module": module,
            "op": op, "where": where, "message": message, "param": name,
            "ratio": ratios[0] if constant else None, "error": max(result["error"] for _, result in wrong)}


def findings(steps: Sequence[Any], thresholds: Thresholds | None = None) -> list[Finding]:
    """Every finding of ``steps`` (see :meth:`vizgrad.run.Run.findings`), the most urgent kinds first."""
    thresholds = thresholds or Thresholds()
    steps = list(steps)
    collector = _Collector()
    _nonfinite(steps, collector)
    _manual(steps, collector, thresholds)
    _layer_findings(steps, collector, thresholds)
    _amp(steps, collector)
    out = _collected(collector)
    rank = {kind: at for at, kind in enumerate(KINDS)}
    out.sort(key=lambda finding: (rank.get(finding.kind, len(rank)), finding.step))
    return out


def _collected(collector: _Collector) -> list[Finding]:
    """The collector's entries as findings: the fields a Finding has, the rest as its detail."""
    out = []
    for key, entry in collector.found.items():
        entry = dict(entry)
        fields = {name: entry.pop(name) for name in ("step", "count", "node", "module", "op", "where", "message")}
        entry.pop("last", None)
        if key[0] == "nonfinite" and entry.get("params_from") is not None:
            fields["message"] += (" Later steps repeat it: the parameters are non-finite from step "
                                  f"{entry['params_from']} on.")
        out.append(Finding(key[0], detail=entry, **fields))
    return out


# -- ranks of a distributed job ------------------------------------------------------------------------------
def _local_total(step: Any) -> float:
    """The norm of all the gradients a rank's ``backward()`` delivered to its leaves (before any all-reduce)."""
    keys = [("node", node.id, 0) for node in step.graph.nodes if node.kind == "leaf"]
    at = step.table.index.locate(keys)
    rows = step.table.rows
    at = at[(at >= 0) & (at < len(rows))]
    return math.sqrt(float(np.sum(rows[at, 0] ** 2))) if len(at) else math.nan


def rank_findings(run: Any, thresholds: Thresholds) -> list[Finding]:
    """Ranks of a merged run whose gradients go non-finite alone, or whose local gradient norm diverges."""
    collector = _Collector()
    for merged in run.steps:
        alone: list[int] = []
        totals: dict[int, float] = {}
        for rank, step in merged.rank_steps.items():
            if has_nonfinite_gradient(step.table):
                alone.append(rank)
            else:
                totals[rank] = _local_total(step)
        if alone and totals:  # some ranks' gradients are finite: the others went non-finite alone
            for rank in alone:
                collector.add(("rank_nonfinite", rank), merged.index, node=None, module=None, op=None, where=None,
                              rank=rank, message=f"rank {rank}'s gradients are non-finite where the other ranks' are "
                                                 "finite (its data or its device)")
        finite = {rank: total for rank, total in totals.items() if math.isfinite(total) and total > 0}
        if len(finite) >= 2:
            for rank, total in finite.items():
                # Against the others' median: with two ranks neither is the norm, so only the larger is named.
                median = statistics.median(value for other, value in finite.items() if other != rank)
                ratio = total / median
                if ratio > thresholds.diverge or (len(finite) > 2 and ratio < 1 / thresholds.diverge):
                    collector.add(("rank_divergence", rank), merged.index, node=None, module=None, op=None,
                                  where=None, rank=rank, ratio=ratio,
                                  message=f"rank {rank}'s local gradient norm is {ratio:.3g}x the other ranks' "
                                          f"median ({total:.4g} against {median:.4g}) before the all-reduce")
    return _collected(collector)
