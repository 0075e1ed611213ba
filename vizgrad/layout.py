"""Layouts: a topology laid out by Graphviz once, cut into an SVG template that each step's paint fills in."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import html
import math
import re
import xml.etree.ElementTree as ET
from typing import Any

from vizgrad.colors import text_color_for
from vizgrad.dot import (PAINTED_EDGE_KINDS, PAINTED_NODE_KINDS, STRIP_MARK, STRIP_WIDTH, graph_dot, tooltip,
                         value_line_count)
from vizgrad.errors import LayoutError, UsageError
from vizgrad.graph import Graph, Node
from vizgrad.view import BOX_KINDS, bar_buckets, plan_of

__all__ = ["FONT_FAMILY", "FLAGS", "FRAME_CSS", "Layout", "LayoutCache", "compact_geometry", "render_frame"]

FONT_FAMILY = "DejaVu Sans Mono, Menlo, Consolas, 'Liberation Mono', 'Courier New', monospace"
"""Fonts of frame text. Graphviz lays labels out as ``Courier`` (0.6 em per
character, which both the system ``dot`` and the WebAssembly build measure
alike, unlike names it has no metrics for) and the SVG then asks for these
monospace fonts, all within 1 % of Courier's advance."""

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
    ".vg-strip{fill:#ffffff;stroke:#8c959f;stroke-width:0.6}"
)
"""CSS that makes flagged nodes and edges unmistakable (red dashed outline for NaN/Inf, grey dashed for zero)."""


_SVG_NS = "http://www.w3.org/2000/svg"
_XLINK_NS = "http://www.w3.org/1999/xlink"
ET.register_namespace("", _SVG_NS)
ET.register_namespace("xlink", _XLINK_NS)
_SLOT_OPEN, _SLOT_CLOSE = "\ue000", "\ue001"  # private-use characters: never in Graphviz output
_SLOT_PATTERN = re.compile(f"{_SLOT_OPEN}(\\d+){_SLOT_CLOSE}")
_NODE_ID = re.compile(r"^node-(.+?)(?:-use\d+)?$")
_EDGE_ID = re.compile(r"^edge-(.+)-(\d+)-([a-z]+)$")
_CLUSTER_ID = re.compile(r"^module-(\d+)$")
_SHAPE_TAGS = {f"{{{_SVG_NS}}}{tag}" for tag in ("polygon", "ellipse", "path")}
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_NUMBER = re.compile(r"-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_PATH_TOKEN = re.compile(r"[A-Za-z]|" + _NUMBER.pattern)  # a path command or a number
_TRANSFORM = re.compile(r"(scale|translate)\(\s*([^)]*)\)")
_XML_SPACE = "{http://www.w3.org/XML/1998/namespace}space"


@dataclasses.dataclass
class _NodeSlots:
    flag: list[int] = dataclasses.field(default_factory=list)
    fill: list[int] = dataclasses.field(default_factory=list)
    text: list[int] = dataclasses.field(default_factory=list)
    lines: list[list[int]] = dataclasses.field(default_factory=list)  # per copy, one slot per line
    bars: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)  # a fold's bars: y, height, fill
    strip: tuple[float, float] = (0.0, 0.0)  # the bottom and height of a fold's strip, in points


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
        boxes: Where each node, edge and module ``<g>`` is drawn, in document
            order (what ``querySelectorAll("g.vg-node, g.vg-edge, g.vg-cluster")``
            finds): four
            numbers per group, left, top, right and bottom in points of the
            ``viewBox``. The page draws only the groups on screen from them,
            without measuring the SVG.
    """

    key: str
    svg: str
    width: float
    height: float
    dot: str = dataclasses.field(default="", repr=False)
    boxes: tuple[int, ...] = dataclasses.field(default=(), repr=False)
    _template: _Template | None = dataclasses.field(default=None, repr=False, compare=False)


def _slot(values: list[str], default: str) -> str:
    values.append(default)
    return f"{_SLOT_OPEN}{len(values) - 1}{_SLOT_CLOSE}"


def _slot_attribute(element: ET.Element, name: str, default: str, values: list[str], into: list[int]) -> None:
    """Turns attribute ``name`` into a slot defaulting to its value (else ``default``), noted in ``into``."""
    element.set(name, _slot(values, element.get(name, default)))
    into.append(len(values) - 1)


def _prepare(raw_svg: bytes, graph: Graph, key: str, dot: str) -> Layout:
    """Post-process Graphviz SVG once into a :class:`Layout` with a precompiled template."""
    # The slot marks must be ours alone: a name from user code holding them becomes U+FFFD.
    for mark in (_SLOT_OPEN, _SLOT_CLOSE):
        raw_svg = raw_svg.replace(mark.encode("utf-8"), "\ufffd".encode("utf-8"))
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
    to_view_box = _view_box_transform(root)
    boxes: list[int] = []
    by_id = graph.by_id
    view = plan_of(graph)
    defaults: list[str] = []
    nodes: dict[str, _NodeSlots] = {}
    edges: dict[str, _EdgeSlots] = {}
    for group in root.iter(f"{{{_SVG_NS}}}g"):
        classes = group.get("class", "").split()
        element_id = group.get("id", "")
        if "cluster" in classes:
            match = _CLUSTER_ID.match(element_id)
            if match is not None and view is not None and int(match.group(1)) < len(view.clusters):
                module, label, _ = view.clusters[int(match.group(1))]
                boxes.extend(_extent(group, to_view_box))
                group.set("class", "cluster vg-cluster")
                group.set("data-module", module)
                for child in group:
                    if child.tag == f"{{{_SVG_NS}}}title":  # Graphviz's is the cluster's DOT name
                        child.text = f"{label} (click to close)"
        elif "node" in classes:
            match = _NODE_ID.match(element_id)
            node = by_id.get(match.group(1)) if match else None
            if node is None:
                continue
            boxes.extend(_extent(group, to_view_box))
            box = view.boxes.get(node.id) if view is not None else None
            _prepare_node(group, node, classes, defaults, nodes.setdefault(node.id, _NodeSlots()),
                          box.count if box is not None and box.kind == "fold" else 0)
        elif "edge" in classes:
            match = _EDGE_ID.match(element_id)
            if match is None:
                continue
            src, slot, kind = match.groups()
            boxes.extend(_extent(group, to_view_box))
            _prepare_edge(group, f"{src}:{slot}", kind, defaults,
                          edges.setdefault(f"{src}:{slot}", _EdgeSlots()) if kind in PAINTED_EDGE_KINDS else None)
    text = ET.tostring(root, encoding="unicode")
    pieces = _SLOT_PATTERN.split(text)
    chunks = pieces[0::2]
    order = [int(i) for i in pieces[1::2]]
    template = _Template(chunks, order, defaults, nodes, edges)
    return Layout(key=key, svg=template.fill(defaults), width=width, height=height, dot=dot, boxes=tuple(boxes),
                  _template=template)


def _view_box_transform(root: ET.Element) -> tuple[float, float, float, float]:
    """Scale and offset (sx, sy, tx, ty) that take Graphviz's graph coordinates into its ``viewBox``."""
    scale, offset = [1.0, 1.0], [0.0, 0.0]
    graph = next((g for g in root.iter(f"{{{_SVG_NS}}}g") if "graph" in g.get("class", "").split()), None)
    for name, arguments in _TRANSFORM.findall(graph.get("transform", "") if graph is not None else ""):
        values = [float(v) for v in _NUMBER.findall(arguments)] or [0.0]
        if name == "scale":
            scale = [values[0], values[1] if len(values) > 1 else values[0]]
        else:
            offset = [values[0], values[1] if len(values) > 1 else 0.0]
    # Graphviz writes "scale(..) rotate(0) translate(..)": a point is translated first, then scaled.
    return scale[0], scale[1], offset[0] * scale[0], offset[1] * scale[1]


def _extent(group: ET.Element, to_view_box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """The box around what ``group`` draws (shapes, paths and text), in whole points of the ``viewBox``."""
    xs: list[float] = []
    ys: list[float] = []
    for element in group.iter():
        tag = element.tag.rpartition("}")[2]
        if tag in ("polygon", "polyline", "path"):
            numbers = [float(v) for v in _NUMBER.findall(element.get("points") or element.get("d") or "")]
            xs.extend(numbers[0::2])
            ys.extend(numbers[1::2])
        elif tag == "ellipse":
            cx, cy = float(element.get("cx", 0)), float(element.get("cy", 0))
            rx, ry = float(element.get("rx", 0)), float(element.get("ry", 0))
            xs += [cx - rx, cx + rx]
            ys += [cy - ry, cy + ry]
        elif tag == "text":
            x, y, size = float(element.get("x", 0)), float(element.get("y", 0)), float(element.get("font-size", 14))
            width = 0.6 * size * len(element.text or "")
            anchor = element.get("text-anchor", "start")
            left = x - width / 2 if anchor == "middle" else x - width if anchor == "end" else x
            xs += [left, left + width]
            ys += [y - size, y + 0.3 * size]
    if not xs or not ys:
        return (0, 0, 0, 0)
    sx, sy, tx, ty = to_view_box
    x0, x1 = sorted((min(xs) * sx + tx, max(xs) * sx + tx))
    y0, y1 = sorted((min(ys) * sy + ty, max(ys) * sy + ty))
    return (math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))


@functools.lru_cache(maxsize=8192)  # relative steps repeat: most calls are a lookup
def _tenths(value: int) -> str:
    """A whole number of tenths written short: 15 -> "1.5", -3 -> "-.3", 20 -> "2"."""
    whole, tenth = divmod(abs(value), 10)
    text = (str(whole) if whole else "") + (f".{tenth}" if tenth else "") or "0"
    return "-" + text if value < 0 else text


def _relative_path(d: str) -> str | None:
    """Graphviz path data (absolute ``M``/``C``/``L``) in relative tenths of a point; ``None`` for other data.

    Each point is rounded to a tenth before it is differenced, so rounding
    does not add up along a path; the page draws at 4/3 px a point.
    """
    tokens = _PATH_TOKEN.findall(d)
    out: list[str] = []
    x = y = 0
    at = 0
    while at < len(tokens):
        command = tokens[at]
        at += 1
        if command in ("Z", "z"):
            out.append("z")
            continue
        if command not in ("M", "C", "L"):
            return None
        numbers: list[int] = []
        while at < len(tokens) and not tokens[at].isalpha():
            numbers.append(round(float(tokens[at]) * 10))
            at += 1
        if not numbers or len(numbers) % (6 if command == "C" else 2):
            return None
        pairs = []
        for k in range(0, len(numbers), 2):
            px, py = numbers[k], numbers[k + 1]
            pairs.append(f"{_tenths(px - x)},{_tenths(py - y)}")
            if command != "C" or k % 6 == 4:  # a cubic's control points are relative to its segment's start
                x, y = px, py
        out.append(command.lower() + " ".join(pairs))
    return "".join(out) or None


def compact_geometry(element: ET.Element) -> None:
    """Writes a path's or polygon's coordinates in tenths of a point, and drops Graphviz's element ids.

    For the report's copy of a layout (SVG frames keep Graphviz's). A big graph's page parses its layout once at load: relative tenths make
    the path data about 60% shorter than Graphviz's absolute hundredths.
    The page finds nodes by ``data-node``, never by ``id``.
    """
    local = element.tag.rpartition("}")[2]
    if local == "path" and "d" in element.attrib:
        short = _relative_path(element.attrib["d"])
        if short is not None:
            element.set("d", short)
    elif local in ("polygon", "polyline") and "points" in element.attrib:
        tokens = _PATH_TOKEN.findall(element.attrib["points"])
        if tokens and len(tokens) % 2 == 0 and not any(token.isalpha() for token in tokens):
            tenths = [_tenths(round(float(token) * 10)) for token in tokens]
            element.set("points", " ".join(f"{x},{y}" for x, y in zip(tenths[0::2], tenths[1::2])))
    if local in ("g", "path", "polygon", "ellipse", "text") and element.get("id", "").startswith(("node", "edge",
                                                                                                  "module", "clust",
                                                                                                  "a_")):
        del element.attrib["id"]


def _prepare_node(group: ET.Element, node: Node, classes: list[str], defaults: list[str], slots: _NodeSlots,
                  instances: int = 0) -> None:
    painted = node.kind in PAINTED_NODE_KINDS
    extra = [c for c in classes if c not in ("node", "vg-node")]
    base_class = " ".join(["node", "vg-node", *extra])
    if painted:
        group.set("class", base_class + _slot(defaults, ""))
        slots.flag.append(len(defaults) - 1)
    else:
        group.set("class", base_class)
    group.set("data-node", node.id)
    if node.kind in BOX_KINDS:
        group.set("data-module", node.name or "")
    texts: list[ET.Element] = []
    shape_done = False
    for child in group:
        if child.tag == f"{{{_SVG_NS}}}title":
            child.text = tooltip(node)
        elif child.tag in _SHAPE_TAGS and not shape_done:
            shape_done = True
            child.set("class", "vg-shape")
            if painted:
                _slot_attribute(child, "fill", "#ffffff", defaults, slots.fill)
        elif child.tag == f"{{{_SVG_NS}}}text":
            texts.append(child)
    if not painted:
        return
    strip = [text for text in texts if text.text == STRIP_MARK]
    if strip:
        texts = [text for text in texts if text.text != STRIP_MARK]
        _prepare_strip(group, strip, instances, defaults, slots)
    for text in texts:
        _slot_attribute(text, "fill", "#000000", defaults, slots.text)
    count = value_line_count(node)
    line_slots: list[int] = []
    for k, text in enumerate(texts[len(texts) - count:] if count else []):
        text.set("class", "vg-val")
        text.set("data-line", str(k))
        text.text = _slot(defaults, html.escape(text.text or "", quote=False))
        line_slots.append(len(defaults) - 1)
    slots.lines.append(line_slots)


_STRIP_ASCENT = 8.0  # points above a 10 pt label line's baseline that its letters reach


def _prepare_strip(group: ET.Element, marks: list[ET.Element], instances: int, defaults: list[str],
                   slots: _NodeSlots) -> None:
    """Replaces a fold's two strip lines by a frame and one bar per bucket of instances, filled in per step."""
    try:
        centre = float(marks[0].get("x", "0"))
        top = float(marks[0].get("y", "0")) - _STRIP_ASCENT
        bottom = float(marks[-1].get("y", "0")) + 2.0
    except ValueError:
        return
    for mark in marks:
        group.remove(mark)
    width = STRIP_WIDTH * 6.0  # Courier 10 pt: 6 pt a character
    left = centre - width / 2
    frame = ET.SubElement(group, f"{{{_SVG_NS}}}rect", {"class": "vg-strip", "x": f"{left:.2f}", "y": f"{top:.2f}",
                                                        "width": f"{width:.2f}", "height": f"{bottom - top:.2f}"})
    frame.tail = "\n"
    count = len(bar_buckets(instances)) if instances else 0
    step = width / max(count, 1)
    gap = step * 0.15 if step > 3 else 0.0
    slots.strip = (bottom, bottom - top)
    for k in range(count):
        bar = ET.SubElement(group, f"{{{_SVG_NS}}}rect", {"class": "vg-bar", "data-bar": str(k),
                                                          "x": f"{left + k * step + gap / 2:.2f}",
                                                          "width": f"{step - gap:.2f}"})
        bar.set("y", _slot(defaults, f"{bottom:.2f}"))
        bar.set("height", _slot(defaults, "0"))
        bar.set("fill", _slot(defaults, "#c8c8c8"))
        slots.bars.append((len(defaults) - 3, len(defaults) - 2, len(defaults) - 1))
        bar.tail = "\n"


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
            _slot_attribute(child, "stroke", "#6b6b6b", defaults, slots.color)
            _slot_attribute(child, "stroke-width", "1", defaults, slots.width)
        elif child.tag == f"{{{_SVG_NS}}}polygon":
            child.set("class", "vg-head")
            _slot_attribute(child, "fill", "#6b6b6b", defaults, slots.color)
            _slot_attribute(child, "stroke", "#6b6b6b", defaults, slots.color)


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
        bars = entry[4] if len(entry) > 4 else ()
        bottom, height = slots.strip
        for (y_slot, height_slot, fill_slot), (color, share) in zip(slots.bars, bars):
            try:
                size = height * min(max(float(share), 0.0), 100.0) / 100.0
            except (TypeError, ValueError):
                continue
            values[y_slot] = f"{bottom - size:.2f}"
            values[height_slot] = f"{size:.2f}"
            values[fill_slot] = _color(color, "#c8c8c8")
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
