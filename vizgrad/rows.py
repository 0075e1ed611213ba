"""Summary rows of steps by key: a graph's own nodes and edges, and a view's boxes and bundles made of them.

A row is ``norm, mean, min, max, nan, inf, numel, abs`` (see
:mod:`vizgrad.gradtable`). A view (:mod:`vizgrad.view`) draws boxes and
bundled edges the table has no row for; their rows are made here from the
rows of the nodes and edges they stand for, for every step at once. The
rows of a segment's steps are gathered once (:class:`SegmentRows`) and
shared by every view a report prepares.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from vizgrad.dot import PAINTED_EDGE_KINDS, PAINTED_NODE_KINDS
from vizgrad.gradtable import WIDTH
from vizgrad.view import ViewPlan, bar_buckets

if TYPE_CHECKING:  # pragma: no cover
    from vizgrad.graph import Graph
    from vizgrad.run import Step

__all__ = ["gather_rows", "SegmentRows", "view_rows"]

#: Rows (steps times keys) a :class:`SegmentRows` holds at once; past this it gathers what each view asks for.
_HELD_ROWS = 1 << 20


def gather_rows(steps: Sequence[Step], keys: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, keys, 8)`` summary rows (NaN where missing) and the ``(steps, keys)`` mask of present ones.

    Steps are grouped by their key index (a loop's steps share one): each
    group looks its keys up once and takes its rows in one gather.
    """
    data = np.full((len(steps), len(keys), WIDTH), np.nan)
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


@dataclasses.dataclass
class _SourceIndex:
    """The keys of a graph's painted nodes and edges as arrays, made once per graph.

    ``keys`` holds every node output (``("node", id, k)``), then every painted
    edge (``("edge", src, slot)``); the arrays give, per painted edge, the
    positions of its ends, its own key and the key of the tensor it feeds.
    """

    keys: list[tuple]
    node_of_key: np.ndarray  # node position of each node-output key
    edge_src: np.ndarray
    edge_dst: np.ndarray
    edge_key: np.ndarray  # index into ``keys``
    edge_tensor: np.ndarray  # index into ``keys`` of the node output it lands on (-1: none)
    users: np.ndarray  # per key: how many edges feed it (node outputs only)
    edge_at: dict[tuple[str, int], int]  # (src, slot) -> edge number
    at: dict[tuple, int]  # key -> index

    @classmethod
    def of(cls, graph: Graph) -> _SourceIndex:
        found = graph.__dict__.get("_source_index")
        if found is not None:
            return found
        position = graph.position
        keys: list[tuple] = []
        node_of_key: list[int] = []
        first: dict[str, int] = {}
        for at, node in enumerate(graph.nodes):
            if node.kind in PAINTED_NODE_KINDS:
                first[node.id] = len(keys)
                for k in range(max(node.outputs, 1)):
                    keys.append(("node", node.id, k))
                    node_of_key.append(at)
        src, dst, own, tensor, edge_at = [], [], [], [], {}
        for edge in graph.edges:
            if edge.kind not in PAINTED_EDGE_KINDS:
                continue
            edge_at[(edge.src, edge.slot)] = len(src)
            src.append(position[edge.src])
            dst.append(position[edge.dst])
            start = first.get(edge.dst)
            outputs = max(graph.nodes[position[edge.dst]].outputs, 1)
            tensor.append(start + edge.output if start is not None and edge.output < outputs else -1)
            own.append(len(keys))
            keys.append(("edge", edge.src, edge.slot))
        tensor_array = np.array(tensor, dtype=np.int64)
        users = np.bincount(tensor_array[tensor_array >= 0], minlength=len(keys))
        index = cls(keys, np.array(node_of_key, dtype=np.int64), np.array(src, dtype=np.int64),
                    np.array(dst, dtype=np.int64), np.array(own, dtype=np.int64), tensor_array, users, edge_at,
                    {key: k for k, key in enumerate(keys)})
        object.__setattr__(graph, "_source_index", index)
        return index


class SegmentRows:
    """The rows of a segment's steps for every node and edge key of their graph, gathered once.

    Every view of the segment reads its boxes' and bundles' members from it,
    gathered on the first request; past :data:`_HELD_ROWS` rows it keeps
    nothing and gathers each request. It also keeps what was painted, for
    the next view to take as it is.
    """

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)
        self._source: _SourceIndex | None = None
        self._held: tuple[np.ndarray, np.ndarray] | None = None
        self.painted: dict[tuple, dict[str, Any]] = {}  # paint of nodes, boxes and edges, for the next view

    @property
    def source(self) -> _SourceIndex:
        """The keys of the segment's graph (made on first use: a graph without views never needs them)."""
        if self._source is None:
            self._source = _SourceIndex.of(self.steps[0].graph)
        return self._source

    def take(self, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows and presence of the keys at ``members`` (indices into the graph's keys), every step."""
        keys = self.source.keys
        if self._held is None and len(self.steps) * len(keys) <= _HELD_ROWS:
            self._held = gather_rows(self.steps, keys)
        if self._held is not None:
            return self._held[0][:, members], self._held[1][:, members]
        return gather_rows(self.steps, [keys[m] for m in members.tolist()])


def view_rows(segment: SegmentRows, view: ViewPlan, keys: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
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
    steps = segment.steps
    data = np.full((len(steps), len(keys), WIDTH), np.nan)
    present = np.zeros((len(steps), len(keys)), dtype=bool)
    source = segment.source
    groups = _groups(source, view, keys)
    held = [(k, source.at[key]) for k, key in enumerate(keys) if key in source.at]
    if held:
        positions, members = (np.array(column, dtype=np.int64) for column in zip(*held))
        data[:, positions], present[:, positions] = segment.take(members)
    other = [k for k, key in enumerate(keys) if key not in source.at and key[0] not in ("box", "bar", "bundle")]
    if other:  # parameter values
        data[:, other], present[:, other] = gather_rows(steps, [keys[k] for k in other])
    for k, how, members, labels in groups:
        rows, found = segment.take(members)
        if how == "max":
            data[:, k], present[:, k] = _largest(rows, found)
        elif how == "bar":
            data[:, k], present[:, k] = _largest_instance(rows, found, labels)
        else:
            data[:, k], present[:, k] = _combined(rows, found)
    return data, present


def _groups(source: _SourceIndex, view: ViewPlan, keys: list[tuple]) -> list[tuple[int, str, np.ndarray, Any]]:
    """For each box, bar and bundle key of a view: ``(position, "sum" | "max" | "bar", member keys, instances)``.

    Member keys are indices into ``source.keys``; ``instances`` (bars only)
    says which instance each member tensor belongs to.
    """
    item_of, instance_of = view.item_of, view.instance_of
    src_item, dst_item = item_of[source.edge_src], item_of[source.edge_dst]
    src_inst, dst_inst = instance_of[source.edge_src], instance_of[source.edge_dst]
    crossing = (src_item != dst_item) & (source.edge_tensor >= 0)
    inner_crossing = crossing | ((src_inst != dst_inst) & (source.edge_tensor >= 0))
    key_item = item_of[source.node_of_key]
    view_ids = {node_id: k for k, node_id in enumerate(view.item_ids)}
    out: list[tuple[int, str, np.ndarray, Any]] = []
    for k, key in enumerate(keys):
        kind = key[0]
        if kind == "box":
            item = view_ids[key[1]]
            if key[2] == "in":
                out.append((k, "sum", np.unique(source.edge_tensor[crossing & (dst_item == item)]), None))
            elif key[2] == "out":
                out.append((k, "sum", _passed_on(source, crossing & (src_item == item)), None))
            else:
                out.append((k, "max", np.flatnonzero(key_item == item), None))
        elif kind == "bar":
            item = view_ids[key[1]]
            first, stop = bar_buckets(view.boxes[key[1]].count)[key[2]]
            into = inner_crossing & (dst_item == item) & (dst_inst >= first) & (dst_inst < stop)
            pairs = np.unique(np.stack([source.edge_tensor[into], dst_inst[into]]), axis=1)
            out.append((k, "bar", pairs[0], pairs[1]))
        elif kind == "bundle":
            members = [source.edge_at[(view.source.edges[e].src, view.source.edges[e].slot)]
                       for e in view.bundles[key[1]]]
            out.append((k, "sum", source.edge_key[np.array(members, dtype=np.int64)], None))
    return out


def _passed_on(source: _SourceIndex, leaving: np.ndarray) -> np.ndarray:
    """The keys of what edges leaving a box pass on: a tensor's whole gradient when the box is its only user."""
    tensors = source.edge_tensor[leaving]
    edges = source.edge_key[leaving]
    unique, counts = np.unique(tensors, return_counts=True)
    whole = unique[source.users[unique] == counts]
    return np.concatenate([whole, edges[~np.isin(tensors, whole)]])


def _combined(rows: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``(steps, members, 8)`` as one per step: root of summed squared norms, counts summed, mean |g| of all."""
    out = np.full((len(rows), WIDTH), np.nan)
    merged = np.where(found[..., None], rows, 0.0)
    out[:, 0] = np.sqrt((merged[..., 0] ** 2).sum(axis=1))
    out[:, 4:7] = merged[..., 4:7].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, 7] = (merged[..., 7] * merged[..., 6]).sum(axis=1) / out[:, 6]
    return out, found.any(axis=1)


def _largest(rows: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest norm of the members (NaN wins, as a flag must), counts summed."""
    out = np.full((len(rows), WIDTH), np.nan)
    merged = np.where(found[..., None], rows, 0.0)
    norms = np.where(found, rows[..., 0], -np.inf)
    out[:, 0] = norms.max(axis=1, initial=-np.inf)
    out[:, 0] = np.where(np.isnan(norms).any(axis=1), np.nan, out[:, 0])
    out[:, 4:7] = merged[..., 4:7].sum(axis=1)
    return out, found.any(axis=1)


def _largest_instance(rows: np.ndarray, found: np.ndarray, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest per-instance combined norm among the instances the member tensors belong to.

    Its element count is that instance's (so an RMS is of the instance shown);
    NaN and Inf counts are summed over every member. All steps at once: the
    members sorted by instance, each instance's squares summed by ``reduceat``.
    """
    out = np.full((len(rows), WIDTH), np.nan)
    present = np.zeros(len(rows), dtype=bool)
    if rows.shape[1] == 0 or len(rows) == 0:
        return out, present
    order = np.argsort(instances, kind="stable")
    labels = instances[order]
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    merged = np.where(found[..., None], rows, 0.0)[:, order]
    squares = np.add.reduceat(merged[..., 0] ** 2, starts, axis=1)
    numel = np.add.reduceat(merged[..., 6], starts, axis=1)
    has = np.add.reduceat(found[:, order].astype(np.int64), starts, axis=1) > 0
    largest = np.argmax(np.where(has, squares, -np.inf), axis=1)
    steps = np.arange(len(rows))
    present = has.any(axis=1)
    out[:, 0] = np.where(present, np.sqrt(squares[steps, largest]), np.nan)
    out[:, 6] = np.where(present, numel[steps, largest], 0.0)
    out[:, 4:6] = merged[..., 4:6].sum(axis=1)
    return out, present
