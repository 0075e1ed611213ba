"""DOT sources of graph skeletons: the nodes, labels and edges every frame of a topology shares."""

from __future__ import annotations

import collections

import graphviz

from vizgrad.graph import Graph, Node, format_shape, short_op
from vizgrad.view import BOX_KINDS, plan_of, short_name

__all__ = ["LINE_WIDTH", "STRIP_WIDTH", "STRIP_MARK", "KIND_STYLES", "PAINTED_NODE_KINDS", "PAINTED_EDGE_KINDS",
           "graph_dot", "value_line_count", "tooltip"]

LINE_WIDTH = 16
"""Characters in every value line of a label: a 5-character prefix and an 11-character number."""

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
    "module": {"shape": "box", "style": "rounded,filled,bold", "color": "#24292f", "fillcolor": "#f6f8fa",
               "penwidth": "2", "margin": "0.14,0.06"},
    "fold": {"shape": "box3d", "style": "filled,bold", "color": "#24292f", "fillcolor": "#f6f8fa", "penwidth": "2",
             "margin": "0.14,0.06"},
}

STRIP_WIDTH = 24
"""Characters of width a fold's strip of bars takes (two label lines of :data:`STRIP_MARK`)."""
STRIP_MARK = "=" * STRIP_WIDTH
"""The text of the two label lines a fold's strip is drawn over (removed from the SVG by the layout)."""
_CLUSTER_STYLE = {"style": "rounded,dashed", "color": "#8c959f", "fontname": "Courier", "fontsize": "9",
                  "fontcolor": "#57606a", "labeljust": "l", "margin": "10"}

_EDGE_STYLES: dict[str, dict[str, str]] = {
    "grad": {},
    "root": {},
    "saved": {"style": "dashed", "color": "#e6750a", "arrowhead": "none", "dir": "forward"},
    "view": {"style": "dashed", "color": "#808000", "dir": "forward"},
}
#: Node and edge kinds that carry a gradient, painted per step (saved tensors and view bases do not).
PAINTED_NODE_KINDS = ("op", "custom", "leaf", "root", *BOX_KINDS)
PAINTED_EDGE_KINDS = ("grad", "root")

# Sizes at which the graph attributes change (node counts, after copying shared leaves).
_MEDIUM_GRAPH = 60
_BIG_GRAPH = 250
_HUGE_GRAPH = 1000
_SPLIT_SHARED_ABOVE = 100  # nodes; smaller graphs keep one node per shared leaf


def value_line_count(node: Node) -> int:
    """How many per-step value lines the label of ``node`` carries (0 for saved tensors and bases)."""
    return {"op": 1, "custom": 1, "leaf": 2, "root": 1, "module": 3, "fold": 3}.get(node.kind, 0)


def _placeholder(prefix: str) -> str:
    return prefix.ljust(LINE_WIDTH)


def _placeholders(node: Node) -> list[str]:
    if node.kind == "leaf":
        return [_placeholder("val"), _placeholder("grad")]
    if node.kind == "root":
        return [_placeholder("loss")]
    if node.kind in BOX_KINDS:
        return [_placeholder("in"), _placeholder("out"), _placeholder("max")]
    return [_placeholder("grad")] * value_line_count(node)


def _shape_text(shape: tuple[int, ...] | None, dtype: str | None = None) -> str | None:
    text = format_shape(shape)
    if text is None:
        return None
    if dtype and dtype != "float32":
        text += f" {dtype}"
    return text


def _label_lines(node: Node, graph: Graph | None = None) -> list[str]:
    """The fixed text of a node's label (title, name, shape), before the value lines."""
    lines: list[str] = []
    if node.kind in BOX_KINDS:
        return _box_lines(node, graph)
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


def _box_lines(node: Node, graph: Graph | None) -> list[str]:
    """A box's title (its short name), its class (times its instances), and a fold's strip lines."""
    plan = plan_of(graph) if graph is not None else None
    box = plan.boxes.get(node.id) if plan is not None else None
    title = short_name(node.name or "") or node.op
    if box is None or box.kind == "module":
        return [title, node.op] if title != node.op else [title]
    kind = f"{node.op} x{box.count}" + (" (chain)" if box.chain else " (recurrent)" if box.recurrent else "")
    return [title, kind, STRIP_MARK, STRIP_MARK]


def tooltip(node: Node) -> str:
    """The hover text of a node: its op or kind, its name and its module."""
    if node.kind in BOX_KINDS:
        return f"{node.op} · {node.name}" + (" (folded: click to unfold)" if node.kind == "fold" else "")
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
    plan = plan_of(graph)
    inside: dict[str | None, list[Node]] = collections.defaultdict(list)  # cluster key -> its nodes
    for node in graph.nodes:
        inside[plan.cluster_of.get(node.id) if plan is not None else None].append(node)

    def add_nodes(container: graphviz.Digraph, cluster: str | None) -> None:
        for node in inside.get(cluster, ()):
            lines = [graphviz.escape(line) for line in _label_lines(node, graph)]
            if values:
                lines += _placeholders(node)
            label = graphviz.nohtml("\\n".join(lines))
            style = dict(KIND_STYLES.get(node.kind, KIND_STYLES["op"]))
            if node.id in copied:
                for k in range(1, len(uses[node.id]) + 1):
                    container.node(f"{node.id}-use{k}", label=label, id=f"node-{node.id}-use{k}",
                                   **{"class": f"vg-{node.kind}"}, **style)
            else:
                container.node(node.id, label=label, id=f"node-{node.id}", **{"class": f"vg-{node.kind}"}, **style)

    add_nodes(dot, None)
    if plan is not None and plan.clusters:
        children: dict[str | None, list[tuple[int, str, str]]] = collections.defaultdict(list)
        for index, (key, label, parent) in enumerate(plan.clusters):
            children[parent].append((index, key, label))

        def add_cluster(container: graphviz.Digraph, index: int, key: str, label: str) -> None:
            # Clusters are named by position: a module path may hold any character.
            with container.subgraph(name=f"cluster_{index}") as sub:
                sub.attr(label=graphviz.escape(label), id=f"module-{index}", **_CLUSTER_STYLE)
                add_nodes(sub, key)
                for child in children.get(key, ()):
                    add_cluster(sub, *child)

        for child in children.get(None, ()):
            add_cluster(dot, *child)
    for index, edge in enumerate(graph.edges):
        attributes = {"id": f"edge-{edge.src}-{edge.slot}-{edge.kind}", **_EDGE_STYLES.get(edge.kind, {})}
        if edge.kind in ("grad", "root"):
            # Forward direction for the layout: the input above its consumer.
            dot.edge(dot_name_of_use.get(index, edge.dst), edge.src, **attributes)
        else:
            dot.edge(edge.src, edge.dst, **attributes)
    return dot.source
