"""Walks ``grad_fn.next_functions`` iteratively into a :class:`~vizgrad.graph.Graph` with deterministic ids."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import torch

from vizgrad.errors import UsageError
from vizgrad.graph import Edge, Graph, Node

__all__ = ["trace", "Tracer", "LiveMap", "as_roots"]

_ACCUMULATE = "torch::autograd::AccumulateGrad"
_SAVED_PREFIX = "_saved_"
# dir() on a backward node is slow; its saved attributes depend only on its class.
_saved_names_by_type: dict[type, tuple[str, ...]] = {}


def _saved_names(fn: Any) -> tuple[str, ...]:
    cls = type(fn)
    names = _saved_names_by_type.get(cls)
    if names is None:
        names = tuple(a for a in dir(fn) if a.startswith(_SAVED_PREFIX) and not a.endswith("_raw"))
        _saved_names_by_type[cls] = names
    return names


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


@dataclasses.dataclass
class LiveMap:
    """Maps live autograd objects of one traced graph to node ids.

    It holds strong references to the backward nodes (they cannot be weakly
    referenced); after ``backward()`` those no longer hold saved tensors, so the
    cost is small, and the recorder keeps only the latest few.
    """

    by_fn: dict[int, tuple[Any, str]]
    root_ids: dict[int, str]

    def node_id_of(self, tensor: torch.Tensor) -> str:
        """Node id of a tensor: its ``grad_fn`` node, or its accumulator when it is a leaf."""
        fn, _ = self.gradient_edge(tensor)
        entry = self.by_fn.get(id(fn))
        if entry is None or entry[0] is not fn:
            raise LookupError("this tensor is not part of the traced graph (or it does not require grad)")
        return entry[1]

    def gradient_edge(self, tensor: torch.Tensor) -> tuple[Any, int]:
        """``(node, output_nr)`` through which gradient reaches ``tensor``."""
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.requires_grad:
            raise LookupError("this tensor does not require grad, so no gradient flows into it")
        edge = torch.autograd.graph.get_gradient_edge(tensor)
        return edge.node, edge.output_nr


def as_roots(roots: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Normalises ``roots`` to a tuple of tensors that require grad."""
    if isinstance(roots, torch.Tensor):
        roots = (roots,)
    roots = tuple(roots)
    if not roots:
        raise UsageError("trace() needs at least one root tensor, e.g. vizgrad.trace(loss)")
    for i, root in enumerate(roots):
        if not isinstance(root, torch.Tensor):
            raise UsageError(f"root {i} is a {type(root).__name__}, not a torch.Tensor")
        if not root.requires_grad:
            raise UsageError(f"root {i} does not require grad: it has no autograd graph to trace")
    return roots


class Tracer:
    """Builds graphs; remembers names of leaves and variables between traces.

    Args:
        names: Tensor id -> name, for leaves (parameters) and named intermediates.
        saved: Also add the tensors each op saved for backward (as torchviz's
            ``show_saved``). Must run before ``backward()`` frees them.
        modules: ``id(grad_fn)`` -> module path, from forward hooks, when known.
    """

    def __init__(self, saved: bool = False) -> None:
        self.saved = saved

    def trace(
        self,
        roots: Sequence[torch.Tensor],
        names: Mapping[int, str] | None = None,
        fn_names: Mapping[int, str] | None = None,
        modules: Mapping[int, str] | None = None,
        root_names: Sequence[str | None] | None = None,
    ) -> tuple[Graph, LiveMap]:
        """Traces ``roots`` into a graph and the live map of its nodes.

        The traversal is a depth-first preorder from the roots in order, visiting
        ``next_functions`` in slot order, with an explicit stack (no recursion),
        so ids are the same for the same program on every step and every run.
        """
        names = names or {}
        fn_names = fn_names or {}
        modules = modules or {}
        nodes: list[Node] = []
        edges: list[Edge] = []
        by_fn: dict[int, tuple[Any, str]] = {}
        fn_order: list[Any] = []
        root_ids: list[str] = []
        outputs_seen: dict[str, int] = {}

        def new_id() -> str:
            return f"n{len(nodes)}"

        def visit(fn: Any) -> str:
            """Assigns ids by explicit-stack DFS from fn; returns fn's id."""
            key = id(fn)
            if key in by_fn:
                return by_fn[key][1]
            stack = [fn]
            while stack:
                current = stack.pop()
                if id(current) in by_fn:
                    continue
                node_id = new_id()
                by_fn[id(current)] = (current, node_id)
                fn_order.append(current)
                nodes.append(None)  # type: ignore[arg-type]  # placeholder, filled below
                children = [nxt for nxt, _ in current.next_functions if nxt is not None]
                stack.extend(reversed(children))
            return by_fn[key][1]

        for i, root in enumerate(roots):
            root_id = new_id()
            nodes.append(Node(root_id, "root", "root", name=(root_names[i] if root_names else None) or names.get(id(root)),
                              shape=tuple(root.shape), dtype=_dtype_name(root)))
            root_ids.append(root_id)
            gradient_edge = torch.autograd.graph.get_gradient_edge(root)
            fn, output_nr = gradient_edge.node, gradient_edge.output_nr
            target = visit(fn)
            edges.append(Edge(root_id, target, 0, output_nr, "root"))
            outputs_seen[target] = max(outputs_seen.get(target, 0), output_nr + 1)
            if root._is_view() and root._base is not None:
                base = root._base
                base_id = new_id()
                nodes.append(Node(base_id, "base", "base", name=names.get(id(base)), shape=tuple(base.shape),
                                  dtype=_dtype_name(base)))
                edges.append(Edge(base_id, root_id, 0, 0, "view"))

        # Second pass over functions in id order: edges, then node records.
        extra: list[Node] = []
        for fn in fn_order:
            _, node_id = by_fn[id(fn)]
            for slot, (nxt, output_nr) in enumerate(fn.next_functions):
                if nxt is None:
                    continue
                dst = by_fn[id(nxt)][1]
                edges.append(Edge(node_id, dst, slot, output_nr, "grad"))
                outputs_seen[dst] = max(outputs_seen.get(dst, 0), output_nr + 1)
        for fn in fn_order:
            _, node_id = by_fn[id(fn)]
            nodes[int(node_id[1:])] = self._fn_node(fn, node_id, outputs_seen.get(node_id, 1), names, fn_names, modules)
            if self.saved:
                self._add_saved(fn, node_id, nodes, extra, edges)
        nodes.extend(extra)
        graph = Graph(tuple(nodes), tuple(edges), tuple(root_ids))
        live = LiveMap(by_fn, {id(r): rid for r, rid in zip(roots, root_ids)})
        object.__setattr__(graph, "_live", live)
        return graph, live

    @staticmethod
    def _fn_node(fn: Any, node_id: str, outputs: int, names: Mapping[int, str], fn_names: Mapping[int, str],
                 modules: Mapping[int, str]) -> Node:
        op = fn.name()
        inputs = len(fn.next_functions)
        if op == _ACCUMULATE:
            var = fn.variable
            return Node(node_id, op, "leaf", name=names.get(id(var)), shape=tuple(var.shape),
                        dtype=_dtype_name(var), inputs=inputs, outputs=outputs)
        kind = "custom" if isinstance(fn, torch.autograd.function.BackwardCFunction) else "op"
        meta = getattr(fn, "_input_metadata", None)
        shape = None
        if meta:  # shapes of the forward outputs, exposed on recent torch
            try:
                shape = tuple(meta[0].shape)
            except (AttributeError, IndexError, TypeError):
                shape = None
        return Node(node_id, op, kind, name=fn_names.get(id(fn)), shape=shape, inputs=inputs,
                    outputs=max(outputs, len(meta) if meta else 1), module=modules.get(id(fn)))

    @staticmethod
    def _add_saved(fn: Any, node_id: str, nodes: list[Node], extra: list[Node], edges: list[Edge]) -> None:
        items: list[tuple[str, Any]] = []
        if isinstance(fn, torch.autograd.function.BackwardCFunction):
            try:
                items = [(f"saved_tensors[{i}]", t) for i, t in enumerate(fn.saved_tensors)]
            except RuntimeError:  # already freed by a backward pass
                items = []
        else:
            for attr in _saved_names(fn):
                try:
                    value = getattr(fn, attr)
                except RuntimeError:  # freed after backward
                    continue
                label = attr[len(_SAVED_PREFIX):]
                if isinstance(value, torch.Tensor):
                    items.append((label, value))
                elif isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
                    items.extend((f"{label}[{i}]", v) for i, v in enumerate(value))
        for label, tensor in items:
            if tensor is None or not isinstance(tensor, torch.Tensor):
                continue
            saved_id = f"n{len(nodes) + len(extra)}"
            extra.append(Node(saved_id, "saved", "saved", name=label, shape=tuple(tensor.shape),
                              dtype=_dtype_name(tensor)))
            edges.append(Edge(saved_id, node_id, 0, 0, "saved"))


def trace(
    roots: torch.Tensor | Sequence[torch.Tensor],
    params: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]] | None = None,
    *,
    saved: bool = False,
) -> Graph:
    """Traces the autograd graph behind ``roots`` into plain data.

    Args:
        roots: A tensor (e.g. the loss) or a sequence of tensors.
        params: Names for leaf tensors, as a mapping or ``named_parameters()``.
            When omitted, names are inferred from the caller's variables and
            the ``nn.Module``\\ s in its scope.
        saved: Also show tensors saved for backward (call before ``backward()``).

    Returns:
        The :class:`Graph`; while the tensors live, ``graph.node_of(t)`` works.

    >>> import torch, vizgrad
    >>> w = torch.ones(2, requires_grad=True)
    >>> g = vizgrad.trace((w * 3).sum(), params={"w": w})
    >>> [(n.op, n.name) for n in g.nodes]
    [('root', None), ('SumBackward0', None), ('MulBackward0', None), ('torch::autograd::AccumulateGrad', 'w')]
    """
    from vizgrad import naming

    root_tuple = as_roots(roots)
    scope = naming.caller_scope()
    try:
        names = naming.leaf_names(params, scope)
        fn_names, root_names = naming.variable_names(scope, root_tuple)
    finally:
        del scope
    graph, _ = Tracer(saved=saved).trace(root_tuple, names, fn_names, root_names=root_names)
    return graph
