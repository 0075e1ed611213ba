"""The graph model: frozen dataclasses for autograd nodes, edges and graphs, with no torch object inside."""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["NODE_KINDS", "EDGE_KINDS", "Node", "Edge", "ModuleInfo", "Graph", "format_shape", "short_op"]

#: ``op``: a backward function (``grad_fn``); ``custom``: the backward of a user
#: ``torch.autograd.Function``; ``leaf``: an ``AccumulateGrad`` (a parameter or
#: leaf tensor); ``root``: a tensor ``backward()`` started from; ``saved``: a
#: tensor an op saved for backward; ``base``: the base of a root that is a view.
#: Views (:mod:`vizgrad.view`) add ``module`` (a collapsed module) and ``fold``
#: (repeated instances drawn as one box).
NODE_KINDS = ("op", "custom", "leaf", "root", "saved", "base")

#: ``grad``: ``grad_inputs[slot]`` of ``src`` flows into output ``output`` of
#: ``dst`` (``dst`` is ``src.next_functions[slot]``); ``root``: a root tensor
#: feeds its ``grad_fn``; ``saved``: a saved tensor belongs to an op;
#: ``view``: a view root's base.
EDGE_KINDS = ("grad", "root", "saved", "view")


def format_shape(shape: Iterable[int] | None) -> str | None:
    """A shape as Python writes a tuple: ``(8, 1)``, ``(3,)``, ``()``; ``None`` when unknown.

    >>> format_shape((8, 1)), format_shape([3]), format_shape(())
    ('(8, 1)', '(3,)', '()')
    """
    return None if shape is None else str(tuple(shape))


def short_op(op: str) -> str:
    """An op name without the C++ namespace: ``AccumulateGrad`` for ``torch::autograd::AccumulateGrad``."""
    return op.removeprefix("torch::autograd::")


@dataclasses.dataclass(frozen=True)
class Node:
    """One node of the autograd graph.

    Attributes:
        id: Deterministic id (``n0``, ``n1``, ...) from the canonical traversal.
        op: ``grad_fn.name()`` for backward functions (e.g. ``MmBackward0``);
            ``root``, ``saved`` or ``base`` for tensor nodes.
        kind: One of :data:`NODE_KINDS`.
        name: A user-facing name: the parameter or variable name, the saved
            attribute, or ``None``.
        shape: Tensor shape for tensor-like nodes and for an op's first output.
        dtype: Tensor dtype as a string (``float32``), when known.
        inputs: ``len(next_functions)``: how many gradients the node passes on.
        outputs: How many outputs (incoming gradient slots) the node has.
        module: Path of the innermost ``nn.Module`` whose forward made the node
            (``model.h.3.attn``); for a leaf, of the module owning the
            parameter; ``None`` outside any module or when unknown. A root
            module given to ``record(model)`` has the path ``""``.
        call: Which call of that module made the node (0, 1, ... in forward
            order within the graph): an RNN cell called per time step.
        attrs: Non-tensor saved attributes, as ``(name, repr)`` pairs.
    """

    id: str
    op: str
    kind: str
    name: str | None = None
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    inputs: int = 0
    outputs: int = 1
    module: str | None = None
    call: int = 0
    attrs: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-able dict; defaults are left out to keep files small."""
        out: dict[str, Any] = {"id": self.id, "op": self.op, "kind": self.kind}
        for field in dataclasses.fields(self)[3:]:
            value = getattr(self, field.name)
            if value != field.default:
                out[field.name] = [list(pair) for pair in value] if field.name == "attrs" else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Node:
        """Inverse of :meth:`to_dict`."""
        kwargs = dict(data)
        if kwargs.get("shape") is not None:
            kwargs["shape"] = tuple(kwargs["shape"])
        if "attrs" in kwargs:
            kwargs["attrs"] = tuple((str(k), str(v)) for k, v in kwargs["attrs"])
        return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class Edge:
    """One edge, oriented the way the gradient flows (from consumer to input).

    Attributes:
        src: The node that passes the gradient on (the consumer in the forward pass).
        dst: The node that receives it (``src.next_functions[slot]``).
        slot: Index into ``src``'s ``next_functions`` / ``grad_inputs``.
        output: Which output of ``dst`` the gradient lands on (``input_nr``).
        kind: One of :data:`EDGE_KINDS`.
    """

    src: str
    dst: str
    slot: int = 0
    output: int = 0
    kind: str = "grad"

    def to_list(self) -> list[Any]:
        """Compact JSON form ``[src, dst, slot, output, kind]``."""
        return [self.src, self.dst, self.slot, self.output, self.kind]

    @classmethod
    def from_list(cls, data: Iterable[Any]) -> Edge:
        """Inverse of :meth:`to_list`."""
        src, dst, slot, output, kind = data
        return cls(str(src), str(dst), int(slot), int(output), str(kind))


@dataclasses.dataclass(frozen=True)
class ModuleInfo:
    """One ``nn.Module`` of a graph's module tree.

    Attributes:
        path: Its path (``model.h.3.attn``), as in :attr:`Node.module`.
        type: Its class name (``CausalSelfAttention``).
        calls: How many of its calls made nodes of the graph (or hold modules that did).
        parent: Path of the module it is registered in (``model.h`` for
            ``model.h.3``), else of the module it was called from; ``None``
            for a top-level module.
        within: For each of its calls, which call of its nearest ancestor
            that has calls encloses it (``-1``: none does); empty when that
            is call 0 for every call (or there is no such ancestor). It tells
            the instances of ``model.h.3`` apart when ``model`` runs twice
            in one graph.
    """

    path: str
    type: str
    calls: int = 1
    parent: str | None = None
    within: tuple[int, ...] = ()

    def to_list(self) -> list[Any]:
        """Compact JSON form ``[path, type, calls, parent]``, then ``within`` when it is not empty."""
        out: list[Any] = [self.path, self.type, self.calls, self.parent]
        if self.within:
            out.append(list(self.within))
        return out

    def instance_of(self, call: int) -> int:
        """The call of the nearest ancestor with calls that encloses call ``call`` (see ``within``)."""
        return self.within[call] if call < len(self.within) else 0

    @classmethod
    def from_list(cls, data: Iterable[Any]) -> ModuleInfo:
        """Inverse of :meth:`to_list`."""
        path, kind, calls, parent, *rest = data
        within = tuple(int(k) for k in rest[0]) if rest else ()
        return cls(str(path), str(kind), int(calls), None if parent is None else str(parent), within)


@dataclasses.dataclass(frozen=True)
class Graph:
    """An autograd graph as plain data: nodes, edges and root ids.

    Graphs compare equal by content and serialise to JSON without loss. While
    the tensors of the traced program are alive, :meth:`node_of` maps one of
    them to its node. ``modules`` is the tree of ``nn.Module``\\ s whose calls
    made its nodes, parents before children (empty when no module was seen).
    ``call_sites`` maps a module path to ``file:line`` where the user's code
    called it (its first call in the graph); it is not part of equality.
    """

    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    roots: tuple[str, ...]
    modules: tuple[ModuleInfo, ...] = ()
    call_sites: Mapping[str, str] = dataclasses.field(default_factory=dict, compare=False)

    # -- lookup -----------------------------------------------------------------
    @functools.cached_property
    def by_id(self) -> dict[str, Node]:
        """Nodes keyed by id."""
        return {node.id: node for node in self.nodes}

    @functools.cached_property
    def position(self) -> dict[str, int]:
        """Each node's position in ``nodes``, keyed by id."""
        return {node.id: at for at, node in enumerate(self.nodes)}

    def node(self, node_id: str) -> Node:
        """The node with this id; ``KeyError`` names the valid range when missing."""
        try:
            return self.by_id[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id!r} in this graph of {len(self.nodes)} nodes") from None

    def __len__(self) -> int:
        return len(self.nodes)

    def ops(self) -> collections.Counter[str]:
        """Multiset of backward-function names (``grad_fn.name()``) in the graph."""
        return collections.Counter(n.op for n in self.nodes if n.kind in ("op", "custom", "leaf"))

    def grad_edges(self) -> tuple[Edge, ...]:
        """Edges along which gradients flow (kind ``grad``)."""
        return tuple(e for e in self.edges if e.kind == "grad")

    def find(self, name: str) -> Node:
        """The first node whose ``name`` is ``name`` (parameters, roots, named variables)."""
        for node in self.nodes:
            if node.name == name:
                return node
        known = sorted({n.name for n in self.nodes if n.name})
        raise KeyError(f"no node named {name!r}; named nodes: {', '.join(known) or 'none'}")

    def node_of(self, tensor: torch.Tensor) -> Node:
        """The node of a live tensor: a non-leaf's ``grad_fn`` node, a leaf's accumulator.

        It searches the live steps of this graph, newest first (a step owns
        its live tensors; the graph only refers to them).

        Raises:
            LookupError: The tensor is not part of this graph, or the graph's
                tensors are gone (its steps are old, or it was loaded).
        """
        maps = [live for live in map(lambda ref: ref(), self.__dict__.get("_live_refs", ())) if live is not None]
        if not maps:
            raise LookupError("this graph holds no live tensors (it was loaded, or its steps are old); "
                              "look nodes up by id")
        for live in maps:
            try:
                return self.node(live.node_id_of(tensor))
            except LookupError:
                continue
        raise LookupError("this tensor is not part of the graph's live steps (or it does not require grad)")

    @functools.cached_property
    def variable_names(self) -> dict[str, str]:
        """Node id -> name of the ops and roots named after variables of the user's code (leaves excluded)."""
        return {n.id: n.name for n in self.nodes if n.name is not None and n.kind in ("op", "custom", "root")}

    @property
    def loss_name(self) -> str | None:
        """The roots' variable names (``errD_fake``; several joined by ``+``), ``None`` where one has none."""
        names = [self.by_id[root].name for root in self.roots]
        return None if None in names else "+".join(names)  # type: ignore[arg-type]

    # -- identity ----------------------------------------------------------------
    @functools.cached_property
    def structural_hash(self) -> str:
        """Hash of the topology: node ops and kinds, edges, roots and module calls (not names or shapes)."""
        payload = {
            "n": [[n.id, n.op, n.kind, n.inputs, n.outputs] for n in self.nodes],
            "e": [e.to_list() for e in self.edges],
            "r": list(self.roots),
        }
        if self.modules:  # folding and collapsing follow the modules: part of the topology
            payload["m"] = [[n.module, n.call] for n in self.nodes]
            payload["t"] = [m.to_list() for m in self.modules]
        return hashlib.sha1(json.dumps(payload, separators=(",", ":")).encode()).hexdigest()[:16]

    # -- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_dict` restores an equal graph."""
        out: dict[str, Any] = {
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": [e.to_list() for e in self.edges],
            "roots": list(self.roots),
        }
        if self.modules:
            out["modules"] = [m.to_list() for m in self.modules]
        if self.call_sites:
            out["sites"] = dict(self.call_sites)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Graph:
        """Inverse of :meth:`to_dict`."""
        return cls(
            nodes=tuple(Node.from_dict(n) for n in data["nodes"]),
            edges=tuple(Edge.from_list(e) for e in data["edges"]),
            roots=tuple(data["roots"]),
            modules=tuple(ModuleInfo.from_list(m) for m in data.get("modules", ())),
            call_sites={str(k): str(v) for k, v in data.get("sites", {}).items()},
        )

    def to_json(self, **kwargs: Any) -> str:
        """JSON text of :meth:`to_dict` (keyword arguments go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Graph:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def __getstate__(self) -> dict[str, Any]:
        # Pickle only the data: live tensors and cached views are rebuilt on demand.
        return {"nodes": self.nodes, "edges": self.edges, "roots": self.roots, "modules": self.modules,
                "call_sites": self.call_sites}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)

    # -- drawing -------------------------------------------------------------------
    def to_dot(self, *, view: Any = None, depth: int | None = None, max_nodes: int | None = None,
               expand: Iterable[str] = (), collapse: Iterable[str] = (), unfold: Iterable[str] = (),
               fold: bool = True, **options: Any) -> str:
        """DOT source of this graph's view (no gradient values; see ``Run.report`` for those).

        Args:
            view: A :class:`vizgrad.view.ViewOptions`; else one is made of
                ``depth``, ``max_nodes``, ``expand``, ``collapse``, ``unfold``
                and ``fold`` (see there). By default, as every output: the
                most detailed view within 150 drawn items.
            options: For :func:`vizgrad.dot.graph_dot` (``values``, ``split_shared``, ``name``).
        """
        from vizgrad import frames
        from vizgrad.view import DEFAULT_MAX_NODES, ViewOptions, view_of

        if view is None:
            view = ViewOptions(depth=depth, max_nodes=DEFAULT_MAX_NODES if max_nodes is None else max_nodes,
                               expand=tuple(expand), collapse=tuple(collapse), unfold=tuple(unfold), fold=fold)
        options.setdefault("values", False)  # a bare graph has no step data to show
        return frames.graph_dot(view_of(self, view), **options)

    def render(self, fmt: str = "svg", engine: str | None = None, **view: Any) -> bytes:
        """Lays the graph's view out with Graphviz (system ``dot`` or the embedded one) and returns the bytes.

        Keyword arguments choose the view, as for :meth:`to_dot`.
        """
        from vizgrad import engine as layout_engine

        return layout_engine.render_dot(self.to_dot(**view), fmt=fmt, engine=engine)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"image/svg+xml": self.render("svg").decode("utf-8")}
