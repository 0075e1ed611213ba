"""Walks ``grad_fn.next_functions`` iteratively into a :class:`~vizgrad.graph.Graph` with deterministic ids."""

from __future__ import annotations

import dataclasses
import functools
import operator
import weakref
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from vizgrad.errors import UsageError
from vizgrad.graph import Edge, Graph, ModuleInfo, Node
from vizgrad.modules import Attribution, CallLog, call_log

__all__ = ["trace", "Tracer", "LiveMap", "as_roots", "attach_live"]

_ACCUMULATE = "torch::autograd::AccumulateGrad"
_SAVED_PREFIX = "_saved_"
_RENAMED_KINDS = frozenset(("op", "custom", "root"))  # the nodes variables name (leaves take parameter names)
_name = operator.methodcaller("name")
_sequence_nr = operator.methodcaller("_sequence_nr")
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
    return _dtype_str(tensor.dtype)  # type: ignore[return-value]


def _dtype_str(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _read_nodes(fns: list[Any], nexts: list[tuple[Any, ...]], position: Mapping[Any, int],
                names: Mapping[int, str]) -> tuple[list[str], list[int], list[Any], tuple[Any, ...]]:
    """How a step's graph is connected, read column by column (this runs for every node of every step).

    Returns the op names; each node's number of inputs; its children
    ``(position, output_nr)`` (``None`` for an input that needs no gradient),
    all nodes' end to end; and ``(index, name, shape, dtype)`` of each leaf.
    """
    ops = list(map(_name, fns))
    arity = list(map(len, nexts))
    children = [(position[nxt], nr) if nxt is not None else None for entries in nexts for nxt, nr in entries]
    leaves = []
    remember_unnamed = getattr(names, "remember_unnamed", None)
    for at in [at for at, op in enumerate(ops) if op == _ACCUMULATE]:
        var = fns[at].variable
        name = names.get(id(var))
        if name is None and remember_unnamed is not None:
            remember_unnamed(var)
        leaves.append((at, name, var.shape, var.dtype))
    return ops, arity, children, tuple(leaves)


def _read_metadata(fns: Sequence[Any]) -> list[tuple[tuple[int, ...], torch.dtype, int] | None]:
    """``(shape, dtype, outputs)`` of each node's first output, ``None`` where torch hides it."""
    try:
        metadata = [fn._input_metadata for fn in fns]
    except (AttributeError, RuntimeError):  # some node hides it: read each one on its own
        metadata = [_output_metadata(fn) for fn in fns]
    return [(tuple(m[0].shape), m[0].dtype, len(m)) if m else None for m in metadata]


def _rows(fns: list[Any], ops: list[str], arity: list[int], children: list[Any], meta: list[Any],
          leaves: Mapping[int, tuple[Any, ...]], modules: Sequence[tuple[str | None, int]] | None,
          leaf_modules: Mapping[int, str]) -> list[tuple[Any, ...]]:
    """One row per node for :meth:`Tracer._build`, from the columns of :func:`_read_nodes`.

    ``modules`` holds each node's ``(module path, call)`` (``None``: none
    known); ``leaf_modules`` the owner of each leaf that has one, by position.
    """
    custom_type = torch.autograd.function.BackwardCFunction
    rows = []
    start = 0
    for at, (fn, op, inputs, first) in enumerate(zip(fns, ops, arity, meta)):
        node_children = tuple(children[start:start + inputs])
        start += inputs
        leaf = leaves.get(at)
        if leaf is not None:
            name, shape, dtype = leaf
            owner = leaf_modules.get(at)
            rows.append((op, "leaf", name, tuple(shape), dtype, 1, None if owner is None else (owner, 0),
                         node_children))
            continue
        shape, dtype, outputs = first if first is not None else (None, None, 1)
        module = modules[at] if modules is not None else None
        rows.append((op, "custom" if isinstance(fn, custom_type) else "op", None, shape, dtype, outputs,
                     module if module is not None and module[0] is not None else None, node_children))
    return rows


def _output_metadata(fn: Any) -> tuple[Any, ...]:
    """Metadata (shape, dtype) of a backward node's forward outputs; empty where torch hides it."""
    try:
        return tuple(fn._input_metadata)
    except (AttributeError, RuntimeError):
        return ()


class LiveMap:
    """Maps live autograd objects of one traced graph to node ids.

    While its step runs it holds the backward nodes themselves (``fns``).
    Afterwards :meth:`compact` lets them go and keeps only what finds a node
    again from a tensor: each node's autograd sequence number and op (a
    tensor's ``grad_fn`` has both), and weak references to the leaves'
    tensors. Holding a backward node would keep its whole graph alive, and
    with it memory autograd would have freed. A step owns its live map; its
    graph, shared by the steps of one topology, only refers to it weakly
    (see :meth:`attach`).

    Attributes:
        fns: The backward nodes in traversal order (ascending node position);
            ``None`` once compacted.
        positions: Each node's position: its id is ``f"n{position}"``.
        root_ids: ``id(root tensor)`` -> root node id.
        structure: The structural key when the graph was found by structure
            alone (``Tracer.trace(shapes_later=True)``): its op shapes are unchecked.
    """

    __slots__ = ("fns", "positions", "root_ids", "structure", "ops", "leaf_at", "_by_fn", "_sequence", "_leaves",
                 "_identity", "__weakref__")

    def __init__(self, fns: list[Any], positions: list[int], root_ids: dict[int, str],
                 structure: Any = None, ops: list[str] | None = None, leaf_at: list[int] | None = None,
                 sequence: list[int] | None = None) -> None:
        self.fns: list[Any] | None = fns
        self.positions = positions
        self.root_ids = root_ids
        self.structure = structure
        self.ops = ops
        self.leaf_at = leaf_at  # where the leaves' accumulators are among ``fns``, when the tracer knows
        self._by_fn: dict[int, tuple[Any, str]] | None = None
        self._sequence: Any = sequence  # each node's sequence number (read on demand), then number -> [(op, id)]
        self._leaves: dict[int, tuple[Any, str]] | None = None  # after compact(): id(variable) -> (weakref, id)
        self._identity: list[Any] | None = None  # after compact(identify=True): each node's metadata dict

    def sequence_numbers(self) -> list[int]:
        """Each node's autograd sequence number, read once (call while the nodes are held)."""
        if self._sequence is None:
            self._sequence = list(map(_sequence_nr, self.fns or ()))
        return self._sequence

    def compact(self, identify: bool = False) -> None:
        """Drops the backward nodes, keeping their sequence numbers and ops (and the leaves' tensors, weakly).

        Sequence numbers are per thread: where graphs of several threads
        mix (``identify``), each node's ``metadata`` dict is kept too. Holding
        it keeps no node alive, and no other node can have it.
        """
        fns = self.fns
        if fns is None:
            return
        if identify:
            self._identity = [fn.metadata for fn in fns]
        if self.ops is None:
            self.ops = list(map(_name, fns))
        if self.leaf_at is None:
            self.leaf_at = [at for at, op in enumerate(self.ops) if op == _ACCUMULATE]
        self.sequence_numbers()
        positions = self.positions
        self._leaves = {id(fns[at].variable): (weakref.ref(fns[at].variable), f"n{positions[at]}")
                        for at in self.leaf_at}
        self.fns = None
        self._by_fn = None

    @property
    def by_fn(self) -> dict[int, tuple[Any, str]]:
        """``id(node)`` -> ``(node, node id)``, built on first use (a training step never needs it)."""
        if self._by_fn is None:
            self._by_fn = {id(fn): (fn, f"n{pos}") for fn, pos in zip(self.fns or (), self.positions)}
        return self._by_fn

    def locate(self, tensor: torch.Tensor) -> tuple[str, int]:
        """``(node id, output)`` through which gradient reaches ``tensor`` (its ``grad_fn`` or its accumulator)."""
        fn, output = self.gradient_edge(tensor)
        node_id = self.node_id_of_fn(fn)
        if node_id is None:
            raise LookupError("this tensor is not part of the traced graph (or it does not require grad)")
        return node_id, output

    def node_id_of_fn(self, fn: Any) -> str | None:
        """The id of the node that is backward node ``fn`` (a tensor's ``grad_fn``), or ``None`` when it is not one."""
        if self.fns is not None:
            entry = self.by_fn.get(id(fn))
            return entry[1] if entry is not None and entry[0] is fn else None
        op = fn.name()
        if op == _ACCUMULATE:
            found = self._leaves.get(id(fn.variable)) if self._leaves is not None else None
            return found[1] if found is not None and found[0]() is fn.variable else None
        if isinstance(self._sequence, list):  # first lookup: index the numbers
            index: dict[int, list[tuple[str, str, int]]] = {}
            for at, (seq, pos, name) in enumerate(zip(self._sequence, self.positions, self.ops or ())):
                index.setdefault(seq, []).append((name, f"n{pos}", at))
            self._sequence = index
        matches = [(node_id, at) for name, node_id, at in self._sequence.get(fn._sequence_nr(), ()) if name == op]
        if self._identity is not None:
            matches = [(node_id, at) for node_id, at in matches if self._identity[at] is fn.metadata]
        return matches[0][0] if len(matches) == 1 else None

    def node_id_of(self, tensor: torch.Tensor) -> str:
        """Node id of a tensor: its ``grad_fn`` node, or its accumulator when it is a leaf."""
        return self.locate(tensor)[0]

    def gradient_edge(self, tensor: torch.Tensor) -> tuple[Any, int]:
        """``(node, output_nr)`` through which gradient reaches ``tensor``."""
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.requires_grad:
            raise LookupError("this tensor does not require grad, so no gradient flows into it")
        edge = torch.autograd.graph.get_gradient_edge(tensor)
        return edge.node, edge.output_nr

    def attach(self, graph: Graph, *, owned: bool = False) -> None:
        """Lets ``graph.node_of`` find this map's tensors: weakly (the step owns the map), or ``owned`` by the graph."""
        attach_live(graph, self, owned=owned)


def attach_live(graph: Graph, live: LiveMap, *, owned: bool = False) -> None:
    """Registers ``live`` with ``graph`` for :meth:`Graph.node_of`, newest first; dead entries are dropped."""
    registry = [ref for ref in graph.__dict__.get("_live_refs", ()) if ref() is not None and ref() is not live]
    registry.insert(0, weakref.ref(live))
    object.__setattr__(graph, "_live_refs", registry)
    if owned:  # a graph of its own (vizgrad.trace): it keeps the map alive itself
        object.__setattr__(graph, "_live_owned", live)


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


class _Key:
    """A tuple as a dict key whose hash is computed once (a graph's key has thousands of entries)."""

    __slots__ = ("value", "_hash")

    def __init__(self, value: tuple[Any, ...]) -> None:
        self.value = value
        self._hash = hash(value)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, _Key) and self._hash == other._hash and self.value == other.value)


class Tracer:
    """Builds graphs; remembers names of leaves and variables between traces.

    Args:
        names: Tensor id -> name, for leaves (parameters) and named intermediates.
        saved: Also add the tensors each op saved for backward (as torchviz's
            ``show_saved``). Must run before ``backward()`` frees them.
    """

    def __init__(self, saved: bool = False, cache_size: int = 16) -> None:
        self.saved = saved
        self.cache_size = cache_size
        self._cache: dict[tuple[Any, ...], Graph] = {}
        self._structures: dict[Any, Graph] = {}  # for shapes_later: shapes not in the key
        self._renamed: dict[tuple[Any, ...], Graph] = {}  # (key, names) -> a cached graph named as in a later step
        self._last_structure: tuple[list[Any], _Key | None] = ([], None)  # the last key, with the lists it was made of

    def trace(
        self,
        roots: Sequence[torch.Tensor],
        names: Mapping[int, str] | None = None,
        variable_names: Callable[[], tuple[Mapping[int, str], Sequence[str | None]]] | None = None,
        modules: CallLog | None = None,
        shapes_later: bool = False,
        scope_name: Callable[[Any], str | None] | None = None,
    ) -> tuple[Graph, LiveMap]:
        """Traces ``roots`` into a graph and the live map of its nodes.

        The traversal is a depth-first preorder from the roots in order, visiting
        ``next_functions`` in slot order, with an explicit stack (no recursion),
        so ids are the same for the same program on every step and every run.
        A training loop builds the same graph every step, so the graph is looked
        up by a signature of what was read and only built when it is new.

        Args:
            roots: Tensors to trace from.
            names: Leaf tensor id -> name (parameters).
            variable_names: Returns ``(grad_fn -> variable name, root variable
                names)`` for naming intermediates. Called on every trace: a
                graph of a known structure is renamed when the variables now
                name other nodes (a GAN's ``errD_real`` and ``errD_fake``).
            modules: The forward thread's log of module calls (see
                :mod:`vizgrad.modules`): each node gets the innermost module
                call that made it, each leaf its parameter's owner.
            shapes_later: Look the graph up by its structure alone, without
                reading each op's output metadata (the costliest read). The
                returned ``live.structure`` is then set, and the caller must
                check the ops' shapes, e.g. against the gradients that flowed,
                and call :meth:`with_read_shapes` when they differ.
            scope_name: The variable holding a module, to name a top-level
                module none of whose parameters has a name.
        """
        names = names or {}
        position: dict[Any, int] = {}  # backward node -> its position (its id is f"n{position}")
        fns: list[Any] = []
        positions: list[int] = []
        nexts: list[tuple[Any, ...]] = []
        root_info: list[tuple[Any, ...]] = []
        count = 0
        for i, root in enumerate(roots):
            root_pos = count
            count += 1
            if root.grad_fn is not None:  # the common case, without get_gradient_edge's checks
                root_fn, output_nr = root.grad_fn, root.output_nr
            else:
                gradient_edge = torch.autograd.graph.get_gradient_edge(root)
                root_fn, output_nr = gradient_edge.node, gradient_edge.output_nr
            # Hot: runs for every node of every step. The stack holds (node, input_nr) pairs as
            # next_functions gives them, pushed in reverse so slot 0 is visited first.
            stack = [(root_fn, output_nr)]
            pop, push = stack.pop, stack.extend
            while stack:
                fn = pop()[0]
                if fn is None or fn in position:
                    continue
                position[fn] = count
                positions.append(count)
                count += 1
                fns.append(fn)
                next_functions = fn.next_functions
                nexts.append(next_functions)
                push(reversed(next_functions))
            base = root._base if root._is_view() else None
            base_info = None
            if base is not None:
                base_info = (count, tuple(base.shape), base.dtype, names.get(id(base)) if base.is_leaf else None)
                count += 1
            root_info.append((root_pos, position[root_fn], output_nr,
                              tuple(root.shape), root.dtype, names.get(id(root)) if root.is_leaf else None, base_info))

        ops, arity, children, leaves = _read_nodes(fns, nexts, position, names)
        attribution = sequence = None
        node_modules: tuple[Any, ...] = ()
        if modules is not None and modules.calls:  # module calls were logged: whose are these nodes?
            sequence = list(map(_sequence_nr, fns))
            attribution = Attribution(modules, sequence)
            node_modules = attribution.column()
        structure = None
        if shapes_later and not self.saved:
            columns = [root_info, ops, arity, children, leaves, node_modules]
            last_columns, structure = self._last_structure
            if columns != last_columns:  # a loop repeats its structure: compare lists before hashing tuples
                structure = _Key((tuple(root_info), tuple(ops), tuple(arity), tuple(children), leaves, node_modules))
                self._last_structure = (columns, structure)
            graph = self._structures.get(structure)
            if graph is not None:
                if variable_names is not None:
                    graph = self._named_now(graph, structure, variable_names(), position, root_info)
                live = LiveMap(fns, positions, {id(r): graph.roots[i] for i, r in enumerate(roots)}, structure, ops,
                               [leaf[0] for leaf in leaves], sequence)
                return graph, live
        meta = _read_metadata(fns)
        signature = (tuple(root_info), tuple(ops), tuple(arity), tuple(children), tuple(meta), leaves, node_modules)
        graph = None if self.saved else self._cache.get(signature)
        if graph is not None and variable_names is not None:
            graph = self._named_now(graph, signature, variable_names(), position, root_info)
        if graph is None:
            node_paths, leaf_paths, tree, sites = None, {}, (), {}
            if attribution is not None and node_modules:
                node_paths, leaf_paths, tree, sites = attribution.resolve(
                    {leaf[0]: fns[leaf[0]].variable for leaf in leaves}, names, scope_name)
            raw = _rows(fns, ops, arity, children, meta, {leaf[0]: leaf[1:] for leaf in leaves}, node_paths,
                        leaf_paths)
            if variable_names is not None:
                fn_names, root_names = variable_names()
                raw = [entry if entry[1] == "leaf" else (entry[0], entry[1], fn_names.get(fn), *entry[3:])
                       for fn, entry in zip(fns, raw)]
                root_info = [info if info[5] is not None or name is None else (*info[:5], name, info[6])
                             for info, name in zip(root_info, root_names)]
            graph = self._build(root_info, raw, count, tree, sites)
            if self.saved:
                graph = self._with_saved(graph, fns, position)
            else:
                self._remember(self._cache, signature, graph)
        if structure is not None:
            self._remember(self._structures, structure, graph)
        live = LiveMap(fns, positions, {id(r): graph.roots[i] for i, r in enumerate(roots)}, ops=ops,
                       leaf_at=[leaf[0] for leaf in leaves], sequence=sequence)
        return graph, live

    def _named_now(self, graph: Graph, key: Any, found: tuple[Mapping[Any, str], Sequence[str | None]],
                   position: Mapping[Any, int], root_info: Sequence[tuple[Any, ...]]) -> Graph:
        """``graph`` (found by ``key``) with its ops and roots named by the variables that hold them in this step."""
        fn_names, root_names = found
        wanted = {f"n{position[fn]}": name for fn, name in fn_names.items() if fn in position}
        for info, name in zip(root_info, root_names):
            wanted[f"n{info[0]}"] = info[5] if info[5] is not None else name
        wanted = {node_id: name for node_id, name in wanted.items() if name is not None}
        if wanted == graph.variable_names:
            return graph
        renamed_key = (key, tuple(sorted(wanted.items())))
        renamed = self._renamed.get(renamed_key)
        if renamed is None:
            nodes = tuple(node if node.kind not in _RENAMED_KINDS or wanted.get(node.id) == node.name
                          else dataclasses.replace(node, name=wanted.get(node.id)) for node in graph.nodes)
            renamed = Graph(nodes, graph.edges, graph.roots, graph.modules, graph.call_sites)
            self._remember(self._renamed, renamed_key, renamed)
        return renamed

    def with_read_shapes(self, graph: Graph, live: LiveMap) -> Graph:
        """``graph`` with every op's shape, dtype and output count read from its live node (after a lookup by structure).

        Returns ``graph`` itself when they agree; otherwise the corrected graph,
        which later steps of the same structure start from.
        """
        nodes = list(graph.nodes)
        changed = False
        for pos, first in zip(live.positions, _read_metadata(live.fns)):
            node = nodes[pos]
            if node.kind == "leaf":
                continue
            shape, dtype, outputs = first if first is not None else (None, None, 1)
            update = {"shape": shape, "dtype": _dtype_str(dtype), "outputs": max(outputs, node.outputs)}
            if any(getattr(node, field) != value for field, value in update.items()):
                nodes[pos] = dataclasses.replace(node, **update)
                changed = True
        if not changed:
            return graph
        corrected = Graph(tuple(nodes), graph.edges, graph.roots, graph.modules, graph.call_sites)
        if live.structure is not None:
            self._remember(self._structures, live.structure, corrected)
        return corrected

    def _remember(self, cache: dict[Any, Graph], key: Any, graph: Graph) -> None:
        cache[key] = graph
        while len(cache) > self.cache_size:
            cache.pop(next(iter(cache)))

    @staticmethod
    def _build(root_info: list[tuple[Any, ...]], raw: list[tuple[Any, ...]], count: int,
               modules: tuple[ModuleInfo, ...] = (), sites: Mapping[str, str] | None = None) -> Graph:
        """Nodes and edges from what the traversal read; ids are positions (``n0``, ``n1``, ...)."""
        nodes: list[Node | None] = [None] * count
        edges: list[Edge] = []
        outputs_seen = [0] * count
        fn_positions: list[int] = []
        for root_pos, target, output_nr, shape, dtype, name, base_info in root_info:
            nodes[root_pos] = Node(f"n{root_pos}", "root", "root", name=name, shape=shape, dtype=_dtype_str(dtype))
            edges.append(Edge(f"n{root_pos}", f"n{target}", 0, output_nr, "root"))
            outputs_seen[target] = max(outputs_seen[target], output_nr + 1)
            if base_info is not None:
                base_pos, base_shape, base_dtype, base_name = base_info
                nodes[base_pos] = Node(f"n{base_pos}", "base", "base", name=base_name, shape=base_shape,
                                       dtype=_dtype_str(base_dtype))
                edges.append(Edge(f"n{base_pos}", f"n{root_pos}", 0, 0, "view"))
        taken = {info[0] for info in root_info} | {info[6][0] for info in root_info if info[6] is not None}
        position = 0
        for _ in raw:  # fn positions are the ones not taken by roots and bases, in order
            while position in taken:
                position += 1
            fn_positions.append(position)
            position += 1
        for pos, (_op, _kind, _name, _shape, _dtype, _outputs, _module, children) in zip(fn_positions, raw):
            for slot, child in enumerate(children):
                if child is not None:
                    edges.append(Edge(f"n{pos}", f"n{child[0]}", slot, child[1], "grad"))
                    outputs_seen[child[0]] = max(outputs_seen[child[0]], child[1] + 1)
        for pos, (op, kind, name, shape, dtype, outputs, module, children) in zip(fn_positions, raw):
            path, call = module if module is not None else (None, 0)
            nodes[pos] = Node(f"n{pos}", op, kind, name=name, shape=shape, dtype=_dtype_str(dtype),
                              inputs=len(children), outputs=max(outputs, outputs_seen[pos], 1), module=path,
                              call=call)
        return Graph(tuple(nodes), tuple(edges), tuple(f"n{info[0]}" for info in root_info),  # type: ignore[arg-type]
                     modules, sites or {})

    def _with_saved(self, graph: Graph, fns: list[Any], position: Mapping[Any, int]) -> Graph:
        """``graph`` plus the tensors each op saved for backward, as ``saved`` nodes."""
        nodes = list(graph.nodes)
        edges = list(graph.edges)
        extra: list[Node] = []
        for fn in fns:
            self._add_saved(fn, f"n{position[fn]}", nodes, extra, edges)
        return Graph(tuple(nodes + extra), tuple(edges), graph.roots, graph.modules, graph.call_sites)

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
        Inside a ``record()`` block, where module calls are logged, its nodes
        have their modules too.

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
        fn_names, root_names = naming.variable_names(naming.scope_dicts(), root_tuple)
        graph, live = Tracer(saved=saved).trace(
            root_tuple, names, lambda: (fn_names, root_names), modules=call_log(),
            scope_name=functools.partial(naming.holder_name, scope))
    finally:
        del scope
    live.compact()  # finds the nodes from tensors without keeping the graph alive
    live.attach(graph, owned=True)
    return graph
