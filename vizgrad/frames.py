"""Frames: lay each graph topology out once with Graphviz, then restyle that layout with every step's gradients."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import html
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Sequence

import graphviz
import numpy as np

from vizgrad.colors import FLAG_COLORS, VIRIDIS, ColorScale, colorbar, scale_for, text_color_for
from vizgrad.errors import LayoutError, UsageError
from vizgrad.graph import Graph, Node, format_shape, short_op

if TYPE_CHECKING:  # pragma: no cover
    from vizgrad.run import Run, Step

__all__ = [
    "FONT_FAMILY",
    "LINE_WIDTH",
    "FLAGS",
    "FRAME_CSS",
    "KIND_STYLES",
    "graph_dot",
    "value_line_count",
    "Layout",
    "LayoutCache",
    "ColorScale",
    "scale_for",
    "colorbar",
    "text_color_for",
    "paint",
    "render_frame",
    "select_steps",
    "FrameRenderer",
]

FONT_FAMILY = "DejaVu Sans Mono, Menlo, Consolas, 'Liberation Mono', 'Courier New', monospace"
"""Fonts of frame text. Graphviz lays labels out as ``Courier`` (0.6 em per
character, which both the system ``dot`` and the WebAssembly build measure
alike, unlike names it has no metrics for) and the SVG then asks for these
monospace fonts, all within 1 % of Courier's advance."""

LINE_WIDTH = 16
"""Characters in every value line of a label: a 5-character prefix and an 11-character number."""

FLAGS = ("", "nan", "inf", "zero", "none")
"""Per-step flags: a plain gradient, NaN, Inf, an exact zero, no gradient at all."""

FRAME_CSS = (
    ".vg-node.vg-flag-nan .vg-shape,.vg-node.vg-flag-inf .vg-shape"
    "{stroke:#b00000;stroke-width:4px;stroke-dasharray:6 3}"
    ".vg-node.vg-flag-zero .vg-shape{stroke:#7f7f7f;stroke-width:2px;stroke-dasharray:4 3}"
    ".vg-node.vg-flag-none .vg-shape{stroke-dasharray:1 3}"
    ".vg-edge.vg-flag-nan .vg-path,.vg-edge.vg-flag-inf .vg-path{stroke-dasharray:6 3}"
    ".vg-edge.vg-flag-zero .vg-path{stroke-dasharray:4 3}"
    ".vg-edge.vg-flag-none .vg-path{stroke-dasharray:1 3}"
)
"""CSS that makes flagged nodes and edges unmistakable (red dashed outline for NaN/Inf, grey dashed for zero)."""

#: Graphviz style of each node kind: the outline (and a tint used when no step
#: data is painted) tells kinds apart, because per step the fill shows the gradient.
KIND_STYLES: dict[str, dict[str, str]] = {
    "op": {"shape": "box", "style": "rounded,filled", "color": "#5f5f5f", "fillcolor": "#eeeeee"},
    "custom": {"shape": "box", "style": "filled,diagonals", "color": "#6a3d9a", "fillcolor": "#e5dcf0",
               "penwidth": "2"},
    "leaf": {"shape": "box", "style": "filled", "color": "#1f5fa8", "fillcolor": "#cfe2f7", "penwidth": "2.5"},
    "root": {"shape": "box", "style": "rounded,filled", "color": "#2e7d32", "fillcolor": "#c8e6c9",
             "penwidth": "3"},
    "saved": {"shape": "box", "style": "filled", "color": "#e6750a", "fillcolor": "#ffe0b2"},
    "base": {"shape": "box", "style": "filled", "color": "#808000", "fillcolor": "#eeeec0"},
}

_EDGE_STYLES: dict[str, dict[str, str]] = {
    "grad": {},
    "root": {},
    "saved": {"style": "dashed", "color": "#e6750a", "arrowhead": "none", "dir": "forward"},
    "view": {"style": "dashed", "color": "#808000", "dir": "forward"},
}
_PAINTED_EDGE_KINDS = ("grad", "root")
_PAINTED_NODE_KINDS = ("op", "custom", "leaf", "root")
_NUMBER_WIDTH = 11
_PREFIX_WIDTH = LINE_WIDTH - _NUMBER_WIDTH
_NO_GRAD_EDGE = ("#c8c8c8", 1.0)
_FLAG_EDGE_WIDTH = 4.0
_ZERO_EDGE_COLOR = "#9a9a9a"

# Sizes at which the graph attributes change (node counts, after copying shared leaves).
_MEDIUM_GRAPH = 60
_BIG_GRAPH = 250
_HUGE_GRAPH = 1000
_SPLIT_SHARED_ABOVE = 100  # nodes; smaller graphs keep one node per shared leaf


# -- DOT ---------------------------------------------------------------------------------------------
def value_line_count(node: Node) -> int:
    """How many per-step value lines the label of ``node`` carries (0 for saved tensors and bases)."""
    return {"op": 1, "custom": 1, "leaf": 2, "root": 1}.get(node.kind, 0)


def _placeholder(prefix: str) -> str:
    return prefix.ljust(LINE_WIDTH)


def _placeholders(node: Node) -> list[str]:
    if node.kind == "leaf":
        return [_placeholder("val"), _placeholder("grad")]
    if node.kind == "root":
        return [_placeholder("loss")]
    return [_placeholder("grad")] * value_line_count(node)


def _shape_text(shape: tuple[int, ...] | None, dtype: str | None = None) -> str | None:
    text = format_shape(shape)
    if text is None:
        return None
    if dtype and dtype != "float32":
        text += f" {dtype}"
    return text




def _label_lines(node: Node) -> list[str]:
    """The fixed text of a node's label (title, name, shape), before the value lines."""
    lines: list[str] = []
    if node.kind in ("op", "custom"):
        lines.append(short_op(node.op))
        if node.name:
            lines.append(node.name)
        shape = _shape_text(node.shape)
    elif node.kind == "leaf":
        lines.append(node.name or "leaf")
        shape = _shape_text(node.shape, node.dtype)
    elif node.kind == "root":
        lines.append(node.name or "root")
        shape = _shape_text(node.shape, node.dtype)
    elif node.kind == "saved":
        named = node.name and not node.name.startswith("saved")
        lines.append(f"saved {node.name}" if named else node.name or "saved")
        shape = _shape_text(node.shape, node.dtype)
    else:
        lines.append(f"base {node.name}" if node.name else "base")
        shape = _shape_text(node.shape, node.dtype)
    if shape is not None:
        lines.append(shape)
    return lines


def _tooltip(node: Node) -> str:
    parts = [short_op(node.op) if node.kind in ("op", "custom", "leaf") else node.kind]
    if node.name:
        parts.append(node.name)
    if node.module:
        parts.append(f"in {node.module}")
    return " · ".join(parts)


def _graph_attributes(nodes: int) -> dict[str, str]:
    """Graphviz settings by size: roomy for small graphs, cheap crossing minimisation for big ones."""
    attributes = {"rankdir": "TB", "nodesep": "0.25", "ranksep": "0.35", "bgcolor": "white", "pad": "0.1"}
    if nodes > _MEDIUM_GRAPH:
        attributes.update(nodesep="0.18", ranksep="0.3")
    if nodes > _BIG_GRAPH:
        # The defaults spend minutes on crossing minimisation and network simplex
        # for unrolled recurrent graphs; these keep layouts at seconds.
        attributes.update(newrank="true", remincross="false", mclimit="0.3", nslimit="2", nslimit1="2",
                          searchsize="20")
    if nodes > _HUGE_GRAPH:
        # A lower mclimit saves little time here but drifts the layout far wider.
        attributes.update(nslimit="1", nslimit1="1", searchsize="10")
    return attributes


def _uses(graph: Graph) -> dict[str, list[int]]:
    """For each node, the indices into ``graph.edges`` of the grad edges that feed it."""
    uses: dict[str, list[int]] = collections.defaultdict(list)
    for index, edge in enumerate(graph.edges):
        if edge.kind in ("grad", "root"):
            uses[edge.dst].append(index)
    return uses


def graph_dot(graph: Graph, *, values: bool = True, split_shared: bool | None = None,
              name: str = "vizgrad") -> str:
    """DOT source of a graph's skeleton: the nodes and edges every frame of it shares.

    The layout reads like torchviz: inputs and parameters at the top, each op
    below its inputs, the loss at the bottom. Arrowheads point the way the
    gradient flows (from an op back into its inputs), so every grad edge is
    drawn ``Edge.dst -> Edge.src`` with ``dir=back``. Node kinds differ by
    outline and shape (see :data:`KIND_STYLES`); labels show the op or name and
    the shape, then ``values`` placeholder lines of :data:`LINE_WIDTH`
    characters that frames fill with numbers of the same width, so one layout
    stays valid for every step.

    Each node gets the Graphviz ``id`` ``node-<node id>`` and each edge
    ``edge-<src>-<slot>-<kind>``, which :class:`LayoutCache` turns into hooks
    for restyling.

    Args:
        graph: The graph.
        values: Add the value placeholder lines (needed for frames; without
            them the labels are shorter).
        split_shared: Draw a leaf that several ops use once per use, next to
            each use (copies share the node's data). Long edges from shared
            parameters are what makes big graphs slow to lay out. ``None``:
            only for graphs of more than 100 nodes.
        name: The DOT graph name.

    Returns:
        The DOT text, built (and quoted) by ``graphviz.Digraph``.
    """
    uses = _uses(graph)
    if split_shared is None:
        split_shared = len(graph.nodes) > _SPLIT_SHARED_ABOVE
    copied = {node.id for node in graph.nodes
              if split_shared and node.kind == "leaf" and len(uses.get(node.id, ())) > 1}
    # Which DOT node stands for each (node, edge) use: copies are numbered per use.
    dot_name_of_use: dict[int, str] = {}
    for node_id in copied:
        for k, edge_index in enumerate(uses[node_id], start=1):
            dot_name_of_use[edge_index] = f"{node_id}-use{k}"
    node_count = len(graph.nodes) + sum(len(uses[n]) - 1 for n in copied)

    dot = graphviz.Digraph(name=name, strict=False)
    dot.attr("graph", **_graph_attributes(node_count))
    dot.attr("node", fontname="Courier", fontsize="10", margin="0.1,0.04", height="0.3", penwidth="1.2")
    dot.attr("edge", color="#6b6b6b", arrowsize="0.7", dir="back")
    for node in graph.nodes:
        lines = [graphviz.escape(line) for line in _label_lines(node)]
        if values:
            lines += _placeholders(node)
        label = graphviz.nohtml("\\n".join(lines))
        style = dict(KIND_STYLES.get(node.kind, KIND_STYLES["op"]))
        if node.id in copied:
            for k in range(1, len(uses[node.id]) + 1):
                dot.node(f"{node.id}-use{k}", label=label, id=f"node-{node.id}-use{k}", **{"class": f"vg-{node.kind}"},
                         **style)
        else:
            dot.node(node.id, label=label, id=f"node-{node.id}", **{"class": f"vg-{node.kind}"}, **style)
    for index, edge in enumerate(graph.edges):
        attributes = {"id": f"edge-{edge.src}-{edge.slot}-{edge.kind}", **_EDGE_STYLES.get(edge.kind, {})}
        if edge.kind in ("grad", "root"):
            # Forward direction for the layout: the input above its consumer.
            dot.edge(dot_name_of_use.get(index, edge.dst), edge.src, **attributes)
        else:
            dot.edge(edge.src, edge.dst, **attributes)
    return dot.source


# -- layouts -----------------------------------------------------------------------------------------
_SVG_NS = "http://www.w3.org/2000/svg"
_XLINK_NS = "http://www.w3.org/1999/xlink"
ET.register_namespace("", _SVG_NS)
ET.register_namespace("xlink", _XLINK_NS)
_SLOT_OPEN, _SLOT_CLOSE = "\ue000", "\ue001"  # private-use characters: never in Graphviz output
_SLOT_PATTERN = re.compile(f"{_SLOT_OPEN}(\\d+){_SLOT_CLOSE}")
_NODE_ID = re.compile(r"^node-(.+?)(?:-use\d+)?$")
_EDGE_ID = re.compile(r"^edge-(.+)-(\d+)-([a-z]+)$")
_SHAPE_TAGS = {f"{{{_SVG_NS}}}{tag}" for tag in ("polygon", "ellipse", "path")}
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_XML_SPACE = "{http://www.w3.org/XML/1998/namespace}space"


@dataclasses.dataclass
class _NodeSlots:
    flag: list[int] = dataclasses.field(default_factory=list)
    fill: list[int] = dataclasses.field(default_factory=list)
    text: list[int] = dataclasses.field(default_factory=list)
    lines: list[list[int]] = dataclasses.field(default_factory=list)  # per copy, one slot per line


@dataclasses.dataclass
class _EdgeSlots:
    flag: list[int] = dataclasses.field(default_factory=list)
    color: list[int] = dataclasses.field(default_factory=list)
    width: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Template:
    """A layout SVG cut into literal chunks around the values a frame changes."""

    chunks: list[str]
    order: list[int]  # the slot written between chunk i and chunk i + 1
    defaults: list[str]
    nodes: dict[str, _NodeSlots]
    edges: dict[str, _EdgeSlots]

    def fill(self, values: list[str]) -> str:
        parts = [self.chunks[0]]
        for slot, chunk in zip(self.order, self.chunks[1:]):
            parts.append(values[slot])
            parts.append(chunk)
        return "".join(parts)


@dataclasses.dataclass(frozen=True)
class Layout:
    """One topology laid out by Graphviz, prepared for restyling per step.

    ``svg`` is the Graphviz SVG without XML prolog, doctype or fixed size (its
    ``viewBox`` is kept, so it scales when inlined in HTML), where

    * each node ``<g>`` has ``class="node vg-node vg-<kind>"``,
      ``id="node-<id>"`` (copies of a shared leaf: ``node-<id>-use<k>``) and
      ``data-node="<id>"`` (shared by copies: select with
      ``[data-node="..."]``); its first shape element has class ``vg-shape``
      and takes the step's ``fill``; its value ``<text>`` elements have class
      ``vg-val`` and ``data-line="<k>"``;
    * each edge ``<g>`` has ``class="edge vg-edge vg-e-<kind>"`` and
      ``data-edge="<src>:<slot>"``; its ``<path>`` (class ``vg-path``) takes
      ``stroke`` and ``stroke-width``, its arrowhead (class ``vg-head``) takes
      ``fill`` and ``stroke``;
    * the flag of a step is a class on the ``<g>``: ``vg-flag-nan``,
      ``vg-flag-inf``, ``vg-flag-zero`` or ``vg-flag-none`` (see
      :data:`FRAME_CSS`, also embedded as a ``<style>``).

    Attributes:
        key: Hash of the DOT source this layout came from.
        svg: The prepared SVG.
        width: Width in points (SVG user units), from the ``viewBox``.
        height: Height in points.
        dot: The DOT source.
    """

    key: str
    svg: str
    width: float
    height: float
    dot: str = dataclasses.field(default="", repr=False)
    _template: _Template | None = dataclasses.field(default=None, repr=False, compare=False)



def _slot(values: list[str], default: str) -> str:
    values.append(default)
    return f"{_SLOT_OPEN}{len(values) - 1}{_SLOT_CLOSE}"


def _prepare(raw_svg: bytes, graph: Graph, key: str, dot: str) -> Layout:
    """Post-process Graphviz SVG once into a :class:`Layout` with a precompiled template."""
    try:
        root = ET.fromstring(raw_svg)
    except ET.ParseError as error:
        raise LayoutError(f"Graphviz returned SVG that cannot be parsed: {error}") from error
    try:
        _, _, width, height = (float(v) for v in root.get("viewBox", "").split())
    except ValueError:
        raise LayoutError("Graphviz returned SVG without a viewBox") from None
    for attribute in ("width", "height"):
        root.attrib.pop(attribute, None)
    root.set("class", "vizgrad-frame")
    root.set("font-family", FONT_FAMILY)  # once here, inherited by every label (Graphviz says Courier)
    style = ET.Element(f"{{{_SVG_NS}}}style")
    style.text = FRAME_CSS
    root.insert(0, style)

    for text in root.iter(f"{{{_SVG_NS}}}text"):
        text.attrib.pop("font-family", None)
        # Runs of spaces are already non-breaking spaces, and frames write those too.
        text.attrib.pop(_XML_SPACE, None)
    by_id = graph.by_id
    defaults: list[str] = []
    nodes: dict[str, _NodeSlots] = {}
    edges: dict[str, _EdgeSlots] = {}
    for group in root.iter(f"{{{_SVG_NS}}}g"):
        classes = group.get("class", "").split()
        element_id = group.get("id", "")
        if "node" in classes:
            match = _NODE_ID.match(element_id)
            node = by_id.get(match.group(1)) if match else None
            if node is None:
                continue
            _prepare_node(group, node, classes, defaults, nodes.setdefault(node.id, _NodeSlots()))
        elif "edge" in classes:
            match = _EDGE_ID.match(element_id)
            if match is None:
                continue
            src, slot, kind = match.groups()
            _prepare_edge(group, f"{src}:{slot}", kind, defaults,
                          edges.setdefault(f"{src}:{slot}", _EdgeSlots()) if kind in _PAINTED_EDGE_KINDS else None)
    text = ET.tostring(root, encoding="unicode")
    pieces = _SLOT_PATTERN.split(text)
    chunks = pieces[0::2]
    order = [int(i) for i in pieces[1::2]]
    template = _Template(chunks, order, defaults, nodes, edges)
    return Layout(key=key, svg=template.fill(defaults), width=width, height=height, dot=dot, _template=template)


def _prepare_node(group: ET.Element, node: Node, classes: list[str], defaults: list[str], slots: _NodeSlots) -> None:
    painted = node.kind in _PAINTED_NODE_KINDS
    extra = [c for c in classes if c not in ("node", "vg-node")]
    base_class = " ".join(["node", "vg-node", *extra])
    if painted:
        group.set("class", base_class + _slot(defaults, ""))
        slots.flag.append(len(defaults) - 1)
    else:
        group.set("class", base_class)
    group.set("data-node", node.id)
    texts: list[ET.Element] = []
    shape_done = False
    for child in group:
        if child.tag == f"{{{_SVG_NS}}}title":
            child.text = _tooltip(node)
        elif child.tag in _SHAPE_TAGS and not shape_done:
            shape_done = True
            child.set("class", "vg-shape")
            if painted:
                child.set("fill", _slot(defaults, child.get("fill", "#ffffff")))
                slots.fill.append(len(defaults) - 1)
        elif child.tag == f"{{{_SVG_NS}}}text":
            texts.append(child)
    if not painted:
        return
    for text in texts:
        text.set("fill", _slot(defaults, text.get("fill", "#000000")))
        slots.text.append(len(defaults) - 1)
    count = value_line_count(node)
    line_slots: list[int] = []
    for k, text in enumerate(texts[len(texts) - count:] if count else []):
        text.set("class", "vg-val")
        text.set("data-line", str(k))
        text.text = _slot(defaults, html.escape(text.text or "", quote=False))
        line_slots.append(len(defaults) - 1)
    slots.lines.append(line_slots)


def _prepare_edge(group: ET.Element, key: str, kind: str, defaults: list[str], slots: _EdgeSlots | None) -> None:
    group.set("data-edge", key)
    base_class = f"edge vg-edge vg-e-{kind}"
    for child in group:
        if child.tag == f"{{{_SVG_NS}}}title":
            child.text = f"{kind} edge {key}"
    if slots is None:
        group.set("class", base_class)
        return
    group.set("class", base_class + _slot(defaults, ""))
    slots.flag.append(len(defaults) - 1)
    for child in group:
        if child.tag == f"{{{_SVG_NS}}}path":
            child.set("class", "vg-path")
            child.set("stroke", _slot(defaults, child.get("stroke", "#6b6b6b")))
            slots.color.append(len(defaults) - 1)
            child.set("stroke-width", _slot(defaults, child.get("stroke-width", "1")))
            slots.width.append(len(defaults) - 1)
        elif child.tag == f"{{{_SVG_NS}}}polygon":
            child.set("class", "vg-head")
            child.set("fill", _slot(defaults, child.get("fill", "#6b6b6b")))
            slots.color.append(len(defaults) - 1)
            child.set("stroke", _slot(defaults, child.get("stroke", "#6b6b6b")))
            slots.color.append(len(defaults) - 1)


class LayoutCache:
    """Lays out each distinct graph skeleton once; every later request is a dictionary lookup.

    Args:
        engine: Graphviz engine for :func:`vizgrad.engine.render_dot`
            (``None``/``"auto"``, ``"dot"`` or ``"wasm"``).

    Attributes:
        calls: How many times this cache asked Graphviz for a layout.
    """

    def __init__(self, engine: str | None = None) -> None:
        self.engine = engine
        self.calls = 0
        self._by_key: dict[str, Layout] = {}
        self._by_graph: dict[int, tuple[Graph, Layout]] = {}  # by id: hashing a big graph per step is slow

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, graph: Graph) -> Layout:
        """The layout of ``graph``, computing it on the first request for its DOT source.

        Raises:
            LayoutError: Graphviz failed.
        """
        known = self._by_graph.get(id(graph))
        if known is not None and known[0] is graph:
            return known[1]
        dot = graph_dot(graph)
        key = hashlib.sha1(dot.encode("utf-8")).hexdigest()[:16]
        layout = self._by_key.get(key)
        if layout is None:
            from vizgrad import engine as layout_engine

            self.calls += 1
            raw = layout_engine.render_dot(dot, fmt="svg", engine=self.engine)
            layout = _prepare(raw, graph, key, dot)
            self._by_key[key] = layout
        self._by_graph[id(graph)] = (graph, layout)
        return layout


# -- painting ----------------------------------------------------------------------------------------
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


def _merged(rows: list[Sequence[float]]) -> tuple[float, int, int, int, float | None]:
    """(norm, nan, inf, numel, scalar value) over the summary rows of a node's outputs."""
    if len(rows) == 1:
        norm, mean, _lo, _hi, nan, inf, numel = rows[0]
        return norm, nan, inf, numel, mean if numel == 1 else None
    norm = math.sqrt(sum(r[0] * r[0] for r in rows)) if rows else math.nan
    return norm, sum(r[4] for r in rows), sum(r[5] for r in rows), sum(r[6] for r in rows), None


def _flag(summary_norm: float, nan: int, inf: int, numel: int, present: bool) -> str:
    if not present:
        return "none"
    if nan or summary_norm != summary_norm:  # NaN
        return "nan"
    if inf or math.isinf(summary_norm):
        return "inf"
    if numel > 0 and summary_norm == 0.0:
        return "zero"
    return ""


def _grad_line(norm: float, scalar: float | None, present: bool) -> str:
    if not present:
        return _line("grad", _number(None))
    if scalar is not None:
        return _line("grad", _number(scalar))
    return _line("|g|", _number(norm, signed=False))


def _fill(flag: str, norm: float, scale: ColorScale) -> str:
    if flag:
        return FLAG_COLORS[flag]
    return scale.color(norm) or FLAG_COLORS["zero"]


@dataclasses.dataclass(frozen=True)
class _PaintPlan:
    """What :func:`paint` reads for one graph, worked out once: painted nodes and edges with their keys."""

    nodes: tuple[tuple[str, str, tuple[tuple, ...], tuple | None], ...]  # id, kind, output keys, param key
    edges: tuple[tuple[str, tuple], ...]  # "src:slot", edge key
    single_root: bool


_plans: dict[int, tuple[Graph, _PaintPlan]] = {}


def _plan_for(graph: Graph) -> _PaintPlan:
    entry = _plans.get(id(graph))
    if entry is None or entry[0] is not graph:
        nodes = tuple((node.id, node.kind, tuple(("node", node.id, k) for k in range(max(node.outputs, 1))),
                       ("param", node.name) if node.kind == "leaf" and node.name is not None else None)
                      for node in graph.nodes if node.kind in _PAINTED_NODE_KINDS)
        edges = tuple((f"{edge.src}:{edge.slot}", ("edge", edge.src, edge.slot))
                      for edge in graph.edges if edge.kind in _PAINTED_EDGE_KINDS)
        if len(_plans) > 64:  # graphs of old runs: let them go
            _plans.clear()
        entry = _plans[id(graph)] = (graph, _PaintPlan(nodes, edges, len(graph.roots) == 1))
    return entry[1]


def row_lookup(summaries: Any) -> Any:
    """A ``key -> row or None`` function over a step's summaries.

    A row is a tuple ``norm, mean, min, max, nan, inf, numel`` (a
    :class:`~vizgrad.stats.Summary` is one); read straight from the summary
    table when the step has one, without making a ``Summary`` per key.
    """
    row = getattr(summaries, "row", None)
    return row if row is not None else summaries.get  # a Summary is a tuple in row order


def paint(step: Step, scale: ColorScale) -> dict[str, Any]:
    """The styling of one step: fills, value lines, edge colours and widths, flags.

    Args:
        step: A recorded step.
        scale: The colour scale of the run (see :func:`scale_for`).

    Returns:
        A JSON-able dict ``{"n": {node_id: [fill, lines, flag, text_color]},
        "e": {"<src>:<slot>": [color, width_px, flag]}}``. ``fill`` and
        ``color`` are ``#rrggbb``; ``lines`` are the node's value lines, each
        :data:`LINE_WIDTH` characters (as many as :func:`value_line_count`);
        ``flag`` is one of :data:`FLAGS`; ``text_color`` is black or white for
        contrast with ``fill``. Saved-tensor and base nodes and their edges
        carry no gradient and are left out.
    """
    plan = _plan_for(step.graph)
    lookup = row_lookup(step.summaries)
    nodes: dict[str, list[Any]] = {}
    for node_id, kind, output_keys, param_key in plan.nodes:
        found = [row for row in map(lookup, output_keys) if row is not None]
        present = bool(found)
        norm, nan, inf, numel, scalar = _merged(found) if present else (math.nan, 0, 0, 0, None)
        flag = _flag(norm, nan, inf, numel, present)
        grad = _grad_line(norm, scalar, present)
        if kind == "leaf":
            value_line, value_flag = _param_line(lookup(param_key) if param_key else None)
            if flag in ("", "zero", "none") and value_flag:
                flag = value_flag
            lines = [value_line, grad]
        elif kind == "root" and plan.single_root and step.loss is not None:
            loss = step.loss
            lines = [_line("loss", _number(loss))]
            if not math.isfinite(loss):
                flag = "nan" if math.isnan(loss) else "inf"
        else:
            lines = [grad]
        fill = _fill(flag, norm, scale)
        nodes[node_id] = [fill, lines, flag, text_color_for(fill)]
    edges: dict[str, list[Any]] = {}
    for edge_key, value_key in plan.edges:
        row = lookup(value_key)
        if row is None:
            edges[edge_key] = [_NO_GRAD_EDGE[0], _NO_GRAD_EDGE[1], "none"]
            continue
        norm = row[0]
        flag = _flag(norm, row[4], row[5], row[6], True)
        if flag in ("nan", "inf"):
            edges[edge_key] = [FLAG_COLORS[flag], _FLAG_EDGE_WIDTH, flag]
        elif flag == "zero":
            edges[edge_key] = [_ZERO_EDGE_COLOR, 1.0, flag]
        else:
            edges[edge_key] = [*scale.color_and_width(norm), flag]
    return {"n": nodes, "e": edges}


def _param_lines(data: np.ndarray, present: np.ndarray, slot: int) -> list[tuple[str, str]]:
    """:func:`_param_line` of one parameter for every step: ``(line, flag)`` pairs."""
    if slot < 0:
        return [_param_line(None)] * len(data)
    rows, found = data[:, slot].tolist(), present[:, slot].tolist()
    return [_param_line(row if is_found else None) for row, is_found in zip(rows, found)]


def _param_line(row: Sequence[float] | None) -> tuple[str, str]:
    """The value line of a parameter (from its value's summary row) and a flag for a NaN/Inf value."""
    if row is None:
        return _line("val", _number(None)), ""
    norm, mean, _lo, _hi, nan, inf, numel = row
    flag = "nan" if nan else "inf" if inf else ""
    if numel == 1:  # the mean of one real element is that element, exactly
        return _line("val", _number(mean)), flag
    return _line("|v|", _number(norm, signed=False)), flag


# -- frames ------------------------------------------------------------------------------------------
def _attribute(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _color(value: Any, fallback: str) -> str:
    return value if isinstance(value, str) and _COLOR.match(value) else fallback


def render_frame(layout: Layout, painted: dict[str, Any], *, scalable: bool = False) -> str:
    """The SVG of one step: ``layout`` with ``painted`` (from :func:`paint`) written in.

    Costs string joins over a template compiled once per layout; nodes and
    edges missing from ``painted`` keep the layout's look. Every value is
    escaped, and colours that are not ``#rrggbb`` are ignored.

    Args:
        layout: From :meth:`LayoutCache.get`.
        painted: From :func:`paint` (the same topology).
        scalable: Leave out ``width``/``height`` (keep only the ``viewBox``),
            for inlining in HTML; by default the SVG has its natural size in pt.

    Returns:
        A complete SVG document (no XML prolog), with :data:`FRAME_CSS` inside.
    """
    template = layout._template
    if template is None:
        raise UsageError("this Layout has no frame template; get layouts from LayoutCache.get()")
    values = list(template.defaults)
    for node_id, entry in painted.get("n", {}).items():
        slots = template.nodes.get(node_id)
        if slots is None or not slots.fill:
            continue
        fill = _color(entry[0], values[slots.fill[0]])
        lines = entry[1]
        flag = entry[2] if entry[2] in FLAGS else ""
        ink = _color(entry[3], text_color_for(fill)) if len(entry) > 3 else text_color_for(fill)
        for i in slots.flag:
            values[i] = f" vg-flag-{flag}" if flag else ""
        for i in slots.fill:
            values[i] = fill
        for i in slots.text:
            values[i] = ink
        for copy in slots.lines:
            for i, line in zip(copy, lines):
                values[i] = html.escape(str(line), quote=False).replace(" ", "\u00a0")
    for key, entry in painted.get("e", {}).items():
        slots = template.edges.get(key)
        if slots is None:
            continue
        color = _color(entry[0], values[slots.color[0]] if slots.color else "#6b6b6b")
        try:
            width = f"{float(entry[1]):g}"
        except (TypeError, ValueError):
            width = "1"
        flag = entry[2] if len(entry) > 2 and entry[2] in FLAGS else ""
        for i in slots.flag:
            values[i] = f" vg-flag-{flag}" if flag else ""
        for i in slots.color:
            values[i] = color
        for i in slots.width:
            values[i] = _attribute(width)
    svg = template.fill(values)
    if not scalable:
        svg = svg.replace("<svg ", f'<svg width="{layout.width:g}pt" height="{layout.height:g}pt" ', 1)
    return svg


# -- steps -------------------------------------------------------------------------------------------
def select_steps(n_steps: int, every: int = 1, steps: str | slice | int | None = None) -> list[int]:
    """Indices of the steps to draw: a range like a Python slice, then every ``every``-th of it.

    Args:
        n_steps: How many steps the run has.
        every: Keep one step in ``every`` (1: all).
        steps: ``"A:B"`` (either end optional, negative counts from the end,
            ``"A:B:C"`` also allowed), a single index ``"A"``, an ``int`` or a
            ``slice``; ``None`` for all steps.

    Returns:
        The selected 0-based step indices, in order.

    Raises:
        UsageError: ``every`` is not a positive integer, ``steps`` cannot be
            parsed or is out of range, or nothing is selected.

    >>> select_steps(10, every=3)
    [0, 3, 6, 9]
    >>> select_steps(10, steps="-3:")
    [7, 8, 9]
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise UsageError(f"every must be a positive whole number of steps, got {every!r}")
    if n_steps <= 0:
        raise UsageError("the run has no steps to draw")
    selection = _as_slice(steps, n_steps)
    indices = list(range(n_steps))[selection][::every]
    if not indices:
        raise UsageError(f"steps={_shown(steps)} selects none of the run's {n_steps} steps (0..{n_steps - 1})")
    return indices


def _shown(steps: Any) -> str:
    return repr(steps if not isinstance(steps, slice) else f"{steps.start}:{steps.stop}")


def _as_slice(steps: str | slice | int | None, n_steps: int) -> slice:
    if steps is None:
        return slice(None)
    if isinstance(steps, slice):
        bad = [v for v in (steps.start, steps.stop, steps.step) if v is not None and not isinstance(v, int)]
        if bad or steps.step == 0:
            raise UsageError(f"steps slice must hold whole numbers and a non-zero step, got {steps!r}")
        return steps
    if isinstance(steps, int) and not isinstance(steps, bool):
        return _single(steps, n_steps, steps)
    if not isinstance(steps, str):
        raise UsageError(f"steps must be a range like '10:50', got {steps!r}")
    text = steps.strip()
    parts = text.split(":")
    if len(parts) > 3:
        raise UsageError(f"steps={steps!r} is not a range; write A:B (e.g. '10:50', ':100', '-20:')")
    try:
        numbers = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise UsageError(f"steps={steps!r} is not a range; write A:B with whole numbers (e.g. '10:50', ':100', '-20:')") from None
    if len(numbers) == 1:
        if numbers[0] is None:
            raise UsageError("steps is empty; write A:B (e.g. '10:50') or leave it out for all steps")
        return _single(numbers[0], n_steps, steps)
    if len(numbers) == 3 and numbers[2] == 0:
        raise UsageError(f"steps={steps!r} has a step of 0")
    return slice(*numbers)


def _single(index: int, n_steps: int, shown: Any) -> slice:
    if not -n_steps <= index < n_steps:
        raise UsageError(f"steps={shown!r} is out of range for a run of {n_steps} steps (0..{n_steps - 1})")
    index %= n_steps
    return slice(index, index + 1)


class FrameRenderer:
    """The frames of a run: one Graphviz layout per topology, one restyled SVG per selected step.

    Args:
        run: The recorded run.
        engine: Graphviz engine (see :func:`vizgrad.engine.render_dot`).
        every: Draw every ``every``-th step (see :func:`select_steps`).
        steps: A step range (see :func:`select_steps`).
        scale: The colour scale; by default one spanning the whole run.
        cache: A :class:`LayoutCache` to share; by default a new one.

    Iterating yields ``(step_index, svg)`` for each selected step.
    """

    def __init__(self, run: Run, engine: str | None = None, *, every: int = 1,
                 steps: str | slice | int | None = None, scale: ColorScale | None = None,
                 cache: LayoutCache | None = None) -> None:
        self.run = run
        self.indices = select_steps(len(run.steps), every, steps)
        self.cache = cache if cache is not None else LayoutCache(engine)
        self._scale = scale

    @property
    def scale(self) -> ColorScale:
        """The colour scale (computed over all of the run's steps on first use)."""
        if self._scale is None:
            self._scale = scale_for(self.run.steps)
        return self._scale

    def __len__(self) -> int:
        return len(self.indices)

    def frame(self, index: int, *, scalable: bool = False) -> str:
        """The SVG of step ``index``."""
        step = self.run.steps[index]
        return render_frame(self.cache.get(step.graph), paint(step, self.scale), scalable=scalable)

    def __iter__(self) -> Iterator[tuple[int, str]]:
        for index in self.indices:
            yield index, self.frame(index)

    def svgs(self) -> Iterator[str]:
        """Only the SVG documents, in order (what :mod:`vizgrad.raster` writers take)."""
        for _, svg in self:
            yield svg

    def layouts(self) -> list[Layout]:
        """The distinct layouts the selected steps use, in first-use order."""
        found: dict[str, Layout] = {}
        for index in self.indices:
            layout = self.cache.get(self.run.steps[index].graph)
            found.setdefault(layout.key, layout)
        return list(found.values())



# -- painting many steps at once (the report) ---------------------------------------------------------
#: Every colour a columnar paint uses, by index: reversed viridis, then flag and edge greys.
PALETTE: tuple[str, ...] = (*reversed(VIRIDIS), FLAG_COLORS["nan"], FLAG_COLORS["inf"], FLAG_COLORS["zero"],
                            FLAG_COLORS["none"], _NO_GRAD_EDGE[0], _ZERO_EDGE_COLOR)
_FLAG_COLOR_INDEX = {flag: len(VIRIDIS) + k for k, flag in enumerate(("nan", "inf", "zero", "none"))}
_NO_GRAD_INDEX = len(VIRIDIS) + 4
_ZERO_EDGE_INDEX = len(VIRIDIS) + 5
_FLAG_CODE = {flag: code for code, flag in enumerate(FLAGS)}
_FLAG_FILL = np.array([0] + [_FLAG_COLOR_INDEX[flag] for flag in FLAGS[1:]])  # flag code -> fill index


def paint_segment(steps: Sequence[Step], scale: ColorScale) -> dict[str, Any]:
    """The paint of consecutive steps sharing one graph, as columns over the steps.

    What :func:`paint` gives step by step, computed a node at a time across
    all steps (numpy for colours, widths and flags), so a report of thousands
    of steps pays per node, not per node and step. Colours are indices into
    :data:`PALETTE`, flags into :data:`FLAGS`.

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
    plan = _plan_for(steps[0].graph)
    keys: dict[tuple, int] = {}
    output_slots = [[keys.setdefault(k, len(keys)) for k in output_keys] for _, _, output_keys, _ in plan.nodes]
    param_slots = [keys.setdefault(p, len(keys)) if p else -1 for _, _, _, p in plan.nodes]
    edge_slots = [keys.setdefault(k, len(keys)) for _, k in plan.edges]
    data, present = _gather_rows(steps, list(keys))
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
            loss_lines = [grads[s] if loss is None else _line("loss", _number(loss)) for s, loss in enumerate(losses)]
            for s, loss in enumerate(losses):
                if loss is not None and not math.isfinite(loss):
                    flags[s] = 1 if math.isnan(loss) else 2
            lines = [loss_lines]
        else:
            lines = [grads]
        fill = np.where(flags > 0, _FLAG_FILL[flags], _color_indices(norm, scale))
        # The inspector shows output 0; ops along a chain share that gradient, so equal columns are made once.
        rows, rows_found = data[:, slots[0]], present[:, slots[0]]
        stats_key = rows.tobytes() + rows_found.tobytes()
        if stats_key not in stats_by_content:
            stats_by_content[stats_key] = _stats_columns(rows, rows_found)
        nodes[node_id] = {"fill": fill.tolist(), "flag": flags.tolist(), "lines": lines,
                          "stats": stats_by_content[stats_key]}
    edges: dict[str, dict[str, Any]] = {}
    for (edge_key, _key), slot in zip(plan.edges, edge_slots):
        row, found = data[:, slot], present[:, slot]
        norm = row[:, 0]
        flags = _flag_codes(norm, row[:, 4], row[:, 5], row[:, 6], found)
        t = _positions(norm, scale)
        color = np.where(np.isnan(t), _ZERO_EDGE_INDEX, _viridis_index(t))
        width = np.where(np.isnan(t), 1.0, np.round(1.0 + 5.0 * np.nan_to_num(t), 1))
        color = np.select([flags == 4, (flags == 1) | (flags == 2), flags == 3],
                          [_NO_GRAD_INDEX, np.where(flags == 1, _FLAG_COLOR_INDEX["nan"], _FLAG_COLOR_INDEX["inf"]),
                           _ZERO_EDGE_INDEX], color)
        width = np.select([flags == 4, (flags == 1) | (flags == 2), flags == 3],
                          [_NO_GRAD_EDGE[1], _FLAG_EDGE_WIDTH, 1.0], width)
        edges[edge_key] = {"color": color.tolist(), "width": width.tolist(), "flag": flags.tolist()}
    return {"nodes": nodes, "edges": edges}


def _flag_codes(norm: np.ndarray, nan: np.ndarray, inf: np.ndarray, numel: np.ndarray,
                found: np.ndarray) -> np.ndarray:
    """:func:`_flag` for every step, as indices into :data:`FLAGS`."""
    with np.errstate(invalid="ignore"):
        return np.select([~found, (nan > 0) | np.isnan(norm), (inf > 0) | np.isinf(norm), (numel > 0) & (norm == 0.0)],
                         [_FLAG_CODE["none"], _FLAG_CODE["nan"], _FLAG_CODE["inf"], _FLAG_CODE["zero"]],
                         _FLAG_CODE[""])


def _grad_column(norm: np.ndarray, mean: np.ndarray, has_scalar: np.ndarray, found: np.ndarray) -> list[str]:
    """:func:`_grad_line` for every step."""
    missing = _line("grad", _number(None))
    return [missing if not f else _line("grad", _number(m)) if h else _line("|g|", _number(n, signed=False))
            for n, m, h, f in zip(norm.tolist(), mean.tolist(), has_scalar.tolist(), found.tolist())]


def _positions(norm: np.ndarray, scale: ColorScale) -> np.ndarray:
    """:meth:`ColorScale.position` of every norm; NaN where it has none (zero, negative, NaN, Inf)."""
    span = scale.hi - scale.lo
    with np.errstate(invalid="ignore", divide="ignore"):
        valid = (norm > 0) & (norm < np.inf)
        t = (np.log10(np.where(valid, norm, 1.0)) - scale.lo) / span if span > 0 else np.full(norm.shape, 0.5)
    return np.where(valid, np.clip(t, 0.0, 1.0), np.nan)


def _viridis_index(t: np.ndarray) -> np.ndarray:
    """Palette index of positions in ``[0, 1]`` (``round`` like :meth:`ColorScale.color`: half to even)."""
    return np.rint(np.nan_to_num(t) * (len(VIRIDIS) - 1)).astype(np.int64)


def _color_indices(norm: np.ndarray, scale: ColorScale) -> np.ndarray:
    """Palette index of every norm's colour, the zero grey where it has no position."""
    t = _positions(norm, scale)
    return np.where(np.isnan(t), _FLAG_COLOR_INDEX["zero"], _viridis_index(t))


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


def _gather_rows(steps: Sequence[Step], keys: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, keys, 7)`` summary rows (NaN where missing) and the ``(steps, keys)`` mask of present ones."""
    stacked = _stacked_rows(steps, keys)
    if stacked is not None:
        return stacked
    data = np.full((len(steps), len(keys), 7), np.nan)
    present = np.zeros((len(steps), len(keys)), dtype=bool)
    for s, step in enumerate(steps):
        summaries = step.summaries
        index = getattr(summaries, "index", None)
        if index is not None:
            at = np.array([index.get(k, -1) if k[0] != "value" else -1 for k in keys], dtype=np.int64)
            found = at >= 0
            data[s, found] = summaries.rows[at[found]]
            present[s] = found
        else:
            for j, key in enumerate(keys):
                summary = summaries.get(key)
                if summary is not None:
                    data[s, j] = summary
                    present[s, j] = True
    return data, present


def _stacked_rows(steps: Sequence[Step], keys: list[tuple]) -> tuple[np.ndarray, np.ndarray] | None:
    """The fast path of :func:`_gather_rows`: a loop's steps lay their summary rows out the same way.

    When every step's key -> row index equals the first one's, all rows stack
    into one array and each key is one column of it. ``None`` otherwise.
    """
    first = getattr(steps[0].summaries, "index", None)
    if first is None:
        return None
    tables = []
    for step in steps:
        summaries = step.summaries
        index = getattr(summaries, "index", None)
        if index is not first and index != first:
            return None
        tables.append(summaries.rows)
    if len({table.shape for table in tables}) != 1:
        return None
    at = np.array([first.get(k, -1) if k[0] != "value" else -1 for k in keys], dtype=np.int64)
    found = at >= 0
    data = np.full((len(steps), len(keys), 7), np.nan)
    data[:, found] = np.stack(tables)[:, at[found]]
    return data, np.broadcast_to(found, (len(steps), len(keys))).copy()


def _merged_columns(data: np.ndarray, present: np.ndarray, slots: list[int]) -> tuple[np.ndarray, ...]:
    """:func:`_merged` over a node's output slots for every step.

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
