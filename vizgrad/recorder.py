"""``vizgrad.record()``: every ``backward()`` inside the block becomes one recorded step."""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import math
import operator
import threading
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch

from vizgrad import naming
from vizgrad.capture import NodeCapture
from vizgrad.errors import RecordingError
from vizgrad.gcpause import paused_gc
from vizgrad.graph import Graph
from vizgrad.run import Run, Step, SummaryMap, ValueMap
from vizgrad.stats import Batch, summarize_distinct
from vizgrad.tracing import LiveMap, Tracer, as_roots

__all__ = ["record", "Recorder"]

_active_lock = threading.Lock()
#: ``Tensor.register_hook`` calls while any recorder runs. A tensor hook may change the
#: gradient its node receives, which a neighbour's hook then cannot stand in for.
_tensor_hooks_registered = 0
_active: list[Recorder] = []
_shape_and_dtype = operator.attrgetter("shape", "dtype")


class Recorder:
    """Captures steps into a :class:`Run`; use it through :func:`record`.

    Args:
        params: Names of leaf tensors (mapping, ``named_parameters()`` or a
            module); inferred from the calling code when ``None``.
        keep: Keep full gradient values of tensors up to this many elements
            (``None``: keep all); summaries are always kept.
        saved: Also show tensors saved for backward in the graph.
        live_steps: How many recent steps keep their live tensors for
            ``step.grad_of(tensor)`` (older ones release them to save memory).
        store: The run file writer from :mod:`vizgrad.store` behind ``run.steps``
            (closed when recording stops), or ``None`` for a run in memory.
        run: The run to append to (a store-backed one when saving).
        on_step: Callables run after each completed step, with the step.
    """

    def __init__(self, params: Any = None, keep: int | None = 64, saved: bool = False, live_steps: int = 4,
                 store: Any = None, run: Run | None = None,
                 on_step: Sequence[Callable[[Step], None]] = ()) -> None:
        self.params = params
        self.keep = keep
        self.tracer = Tracer(saved=saved)
        self.live_steps = live_steps
        self.store = store
        self.run = run if run is not None else Run()
        self.on_step = list(on_step)
        self._explicit_names = naming.explicit_names(params) if params is not None else None
        self._inferred_names = naming.InferredLeafNames()
        self._graphs: dict[str, list[Graph]] = {}
        self._layouts: dict[tuple[int, bool], _Layout] = {}
        self._capture = NodeCapture()
        self._ones: dict[tuple[Any, ...], torch.Tensor] = {}
        self._live_steps: collections.deque[Step] = collections.deque()
        self._original_backward: Callable[..., Any] | None = None
        self._original_register_hook: Callable[..., Any] | None = None
        self._tensor_hooks_seen = -1  # _tensor_hooks_registered at the last step; -1: no step yet
        self._in_step = False
        self.run.backward = self.backward  # type: ignore[attr-defined]

    # -- patching ----------------------------------------------------------------------
    def start(self) -> None:
        """Routes ``torch.autograd.backward`` (and so ``Tensor.backward``) through the recorder."""
        # Blocks may nest (a script that records itself, run by ``vizgrad render``):
        # the inner recorder wraps the outer one, so both record every step.
        with _active_lock:
            _active.append(self)
        self._original_backward = torch.autograd.backward
        recorder = self

        def backward(tensors: Any, grad_tensors: Any = None, retain_graph: Any = None, create_graph: bool = False,
                     grad_variables: Any = None, inputs: Any = None) -> None:
            """``torch.autograd.backward``, recorded by vizgrad as one step."""
            return recorder._backward(tensors, grad_tensors, retain_graph, create_graph, inputs)

        backward.__wrapped__ = self._original_backward  # type: ignore[attr-defined]
        torch.autograd.backward = backward  # type: ignore[assignment]
        self._original_register_hook = original_register_hook = torch.Tensor.register_hook

        def register_hook(tensor: torch.Tensor, hook: Callable[..., Any]) -> Any:
            """``Tensor.register_hook``, counted by vizgrad (such hooks can change gradients)."""
            global _tensor_hooks_registered
            _tensor_hooks_registered += 1
            return original_register_hook(tensor, hook)

        register_hook.__wrapped__ = original_register_hook  # type: ignore[attr-defined]
        register_hook.__doc__ = original_register_hook.__doc__
        torch.Tensor.register_hook = register_hook  # type: ignore[method-assign]

    def stop(self) -> None:
        """Restores ``torch.autograd.backward`` and flushes the store."""
        with _active_lock:
            if self in _active and _active[-1] is not self:
                raise RecordingError("nested vizgrad.record() blocks must end in the reverse order they started")
        try:
            if self._original_backward is not None:
                torch.autograd.backward = self._original_backward  # type: ignore[assignment]
                self._original_backward = None
            if self._original_register_hook is not None:
                torch.Tensor.register_hook = self._original_register_hook  # type: ignore[method-assign]
                self._original_register_hook = None
        finally:
            with _active_lock:
                if self in _active:
                    _active.remove(self)
            if self.store is not None:
                self.store.close()

    # -- one step -------------------------------------------------------------------------
    def backward(self, tensors: Any, gradient: Any = None, retain_graph: bool | None = None,
                 create_graph: bool = False, inputs: Any = None) -> None:
        """Runs ``backward()`` on ``tensors`` as one recorded step (like ``torch.autograd.backward``)."""
        self._backward(tensors, gradient, retain_graph, create_graph, inputs)

    def _original(self) -> Callable[..., Any]:
        if self._original_backward is not None:
            return self._original_backward
        backward = torch.autograd.backward
        return getattr(backward, "__wrapped__", backward)

    def _backward(self, tensors: Any, grad_tensors: Any, retain_graph: Any, create_graph: bool, inputs: Any) -> None:
        original = self._original()
        if self._in_step:  # backward() called from inside a hook of ours: not a new step
            return original(tensors, grad_tensors, retain_graph, create_graph, inputs=inputs)
        # A step allocates thousands of short-lived objects (hooks, handles, tuples)
        # that reference counting frees: no GC pass over the user's heap meanwhile.
        with paused_gc():
            return self._record_step(original, tensors, grad_tensors, retain_graph, create_graph, inputs)

    def _record_step(self, original: Callable[..., Any], tensors: Any, grad_tensors: Any, retain_graph: Any,
                     create_graph: bool, inputs: Any) -> None:
        roots = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
        tracked = tuple(r for r in roots if isinstance(r, torch.Tensor) and r.requires_grad)
        if not tracked:  # let torch raise its own, well-known error
            return original(tensors, grad_tensors, retain_graph, create_graph, inputs=inputs)
        as_roots(tracked)
        # The user's scope is read only when a name is missing: a new leaf, or a new
        # graph whose intermediates need variable names. A loop's later steps skip it.
        scope = _LazyScope()
        names: Any = self._explicit_names
        if names is None:
            names = self._inferred_names
            names.begin_step(scope)
        try:
            graph, live = self.tracer.trace(tracked, names, lambda: naming.variable_names(scope.items(), tracked),
                                            shapes_later=True)
        finally:
            self._inferred_names.end_step()
            scope.clear()
        graph = self._dedupe(graph, live)
        layout = self._layout(graph, self._neighbours_may_stand_in(graph, live))
        hooked = live.fns if layout.every_node_hooked else list(itertools.compress(live.fns, layout.hooked))
        capture = self._capture
        self._in_step = True
        try:
            capture.attach(hooked)
            original(tensors, grad_tensors, retain_graph, create_graph, inputs=inputs)
        finally:
            capture.detach()
            self._in_step = False
        try:
            self._finish_step(graph, live, layout, hooked, tracked,
                              grad_tensors if len(roots) == len(tracked) else None, capture.captured)
        finally:
            capture.captured.clear()  # the step holds what it needs; drop the gradients

    def _dedupe(self, graph: Graph, live: LiveMap) -> Graph:
        """Reuses an equal graph seen before, so a long run holds each topology once."""
        same_hash = self._graphs.setdefault(graph.structural_hash, [])
        for known in same_hash:
            if known is graph or known == graph:
                object.__setattr__(known, "_live", live)
                return known
        same_hash.append(graph)
        return graph

    def _finish_step(self, graph: Graph, live: LiveMap, layout: _Layout, hooked: Sequence[Any],
                     roots: Sequence[torch.Tensor], grad_tensors: Any,
                     captured: Mapping[Any, tuple[tuple[Any, ...], tuple[Any, ...]]]) -> None:
        fns = live.fns
        pairs = list(map(captured.get, hooked))  # (grad_inputs, grad_outputs) per node, None where it did not run
        static = None not in pairs and list(map(len, itertools.chain.from_iterable(pairs))) == layout.lengths
        if static:  # every node ran with its usual arity: the value keys are the graph's, made once
            keys: list[tuple] = layout.all_keys
            values = list(itertools.chain.from_iterable(itertools.chain.from_iterable(pairs)))
            if layout.transpose_sources:
                values += _transposes(map(values.__getitem__, layout.transpose_sources))
        else:
            keys, values = self._keys_and_values(itertools.compress(live.positions, layout.hooked), pairs)
            if layout.transposed:
                position = {key: at for at, key in enumerate(keys)}
                keys += [key for key, _ in layout.transposed]
                values += _transposes(None if position.get(source) is None else values[position[source]]
                                      for _, source in layout.transposed)
        for root, seed in zip(roots, self._root_gradients(roots, grad_tensors)):
            values += (root, seed, seed)
        for at in layout.named_leaves:
            variable = fns[at].variable
            values += (variable, variable.grad)
        batch, positions = summarize_distinct(values, self.keep, memo=layout.summary_memo)
        if live.structure is not None and not (static and layout.shapes_fit(values, positions)):
            # The graph was found by structure; its ops' shapes differ from (or cannot be
            # checked against) the gradients that flowed: read them from the nodes.
            layout.fitted = None
            graph = self._dedupe(self.tracer.with_read_shapes(graph, live), live)
            layout = self._layout(graph, layout.unhooked)
        else:
            layout.remember_fit(positions)
        if static and positions == layout.positions:  # tensors shared as in the last step: same index
            index = layout.index
        else:
            index = layout.with_aliases({key: at for key, at in zip(itertools.chain(keys, layout.extra_keys), positions)
                                         if at >= 0})
            if static:
                layout.positions, layout.index = positions, index
        step = Step(len(self.run.steps), _loss(graph, index, batch), graph, SummaryMap(index, batch),
                    ValueMap(index, batch), _live=live)
        if self.run._pending_data:
            step.data.update(self.run._pending_data)
            self.run._pending_data.clear()
        self._retire_live(step)
        self.run.steps.append(step)  # with a run file, this appends to disk in one transaction
        for callback in self.on_step:
            callback(step)

    def _layout(self, graph: Graph, unhooked: bool = True) -> _Layout:
        """The graph's :class:`_Layout` (with unhooked nodes or every node hooked), made once per graph."""
        layout = self._layouts.get((id(graph), unhooked))
        if layout is None or layout.graph is not graph:
            layout = self._layouts[id(graph), unhooked] = _Layout(graph, unhooked, self.keep)
        return layout

    def _neighbours_may_stand_in(self, graph: Graph, live: LiveMap) -> bool:
        """Whether nodes may go unhooked this step: no tensor hook can have changed what a node received.

        Not on a recorder's first step (hooks may predate it), nor after a
        ``Tensor.register_hook`` since the last step, nor when a leaf has hooks.
        """
        seen, self._tensor_hooks_seen = self._tensor_hooks_seen, _tensor_hooks_registered
        if seen != _tensor_hooks_registered:
            return False
        fns = live.fns
        return not any(fns[at].variable._backward_hooks for at in self._layout(graph, False).leaves)

    @staticmethod
    def _keys_and_values(positions: Iterable[int], pairs: list[Any]) -> tuple[list[tuple], list[Any]]:
        """Value keys and gradients node by node, for a step where a node did not run or had another arity."""
        keys: list[tuple] = []
        values: list[Any] = []
        for pos, pair in zip(positions, pairs):
            if pair is None:
                continue
            grad_inputs, grad_outputs = pair
            node_id = f"n{pos}"
            keys += [("edge", node_id, slot) for slot in range(len(grad_inputs))]
            keys += [("node", node_id, k) for k in range(len(grad_outputs))]
            values += grad_inputs
            values += grad_outputs
        return keys, values

    def _root_gradients(self, roots: Sequence[torch.Tensor], grad_tensors: Any) -> list[torch.Tensor | None]:
        """The gradient each root starts with: the one given, or ones for a scalar root."""
        if isinstance(grad_tensors, torch.Tensor):
            grad_tensors = (grad_tensors,)
        given = list(grad_tensors) if grad_tensors is not None else [None] * len(roots)
        given += [None] * (len(roots) - len(given))
        return [g if isinstance(g, torch.Tensor) else self._ones_like(r) if r.numel() == 1 else None
                for r, g in zip(roots, given)]

    def _ones_like(self, root: torch.Tensor) -> torch.Tensor:
        """A ones tensor like the scalar ``root``, made once per shape, dtype and device (it is only read)."""
        key = (root.shape, root.dtype, root.device)
        ones = self._ones.get(key)
        if ones is None:
            ones = self._ones[key] = torch.ones_like(root, memory_format=torch.contiguous_format).detach()
        return ones

    def _retire_live(self, step: Step) -> None:
        self._live_steps.append(step)
        while len(self._live_steps) > self.live_steps:
            self._live_steps.popleft().release()


class _Layout:
    """Where each gradient of a graph's steps goes: made once per graph, shared by all its steps.

    A step's gradients arrive as ``(grad_inputs, grad_outputs)`` per hooked
    node, in traversal order; laid end to end they line up with :attr:`keys`.
    The roots' values and seeds and the named leaves' values and ``.grad``
    follow, under :attr:`extra_keys`.

    Not every node needs a hook. A node whose every incoming gradient arrives
    along a lone edge from a hooked node, and whose every outgoing gradient is
    the lone input of a hooked node, shows all its gradients in its
    neighbours' hooks: the same tensors. Such nodes are left unhooked (no two
    of them adjacent) and their keys are :attr:`aliases` of their neighbours'.

    Attributes:
        hooked: Per traversed node, whether it gets a hook (all of them when
            made with ``unhooked=False``); ``every_node_hooked`` when all do.
        leaves: Traversal positions of the leaves.
        keys: The value key of each gradient, hooked node by hooked node: its edges, then its outputs.
        lengths: ``len(grad_inputs), len(grad_outputs)`` of each hooked node, to check a step against.
        aliases: ``(key, key it equals)`` for the unhooked nodes' gradients.
        transposed: ``(key, key it is the transpose of)`` for unhooked
            transposes' outputs small enough to keep (a view made each step);
            bigger ones are :attr:`aliases` (same summary, no value kept).
        extra_keys: Keys of the root and parameter values after them.
        named_leaves: Traversal positions of the named leaves (in :attr:`extra_keys` order).
        positions: Batch position of each value in the last step, with ``index``,
            the key -> position map made from them (reused while steps agree).
    """

    def __init__(self, graph: Graph, unhooked: bool = True, keep: int | None = None) -> None:
        self.graph = graph
        self.unhooked = unhooked
        self.keys: list[tuple] = []
        self.lengths: list[int] = []
        self.named_leaves: list[int] = []
        self.extra_keys: list[tuple] = []
        for root_id in graph.roots:
            self.extra_keys += [("value", root_id), ("node", root_id, 0), ("edge", root_id, 0)]
        traversed = [node for node in graph.nodes if node.kind in _TRAVERSED]
        unhooked_nodes, transposed = _unhooked_nodes(graph, traversed) if unhooked else ({}, [])
        # A transpose too big to keep needs no view: its summary is its source's.
        sizes = {node.id: math.prod(node.shape) for node in traversed if node.shape is not None}
        limit = math.inf if keep is None else keep
        big = [pair for pair in transposed if sizes.get(pair[0][1], 0) > limit]
        self.transposed = [pair for pair in transposed if sizes.get(pair[0][1], 0) <= limit]
        self.hooked = [node.id not in unhooked_nodes for node in traversed]
        self.every_node_hooked = not unhooked_nodes
        self.leaves = [at for at, node in enumerate(traversed) if node.kind == "leaf"]
        self.aliases: list[tuple[tuple, tuple]] = list(big)
        for at, node in enumerate(traversed):
            if node.id in unhooked_nodes:
                self.aliases += unhooked_nodes[node.id]
            else:
                self.keys += [("edge", node.id, slot) for slot in range(node.inputs)]
                self.keys += [("node", node.id, k) for k in range(node.outputs)]
                self.lengths += [node.inputs, node.outputs]
            if node.kind == "leaf" and node.name is not None:
                self.named_leaves.append(at)
                self.extra_keys += [("param", node.name), ("param_grad", node.name)]
        #: The static layout's keys: the hooked nodes' keys, then the transposes' outputs.
        self.all_keys = self.keys + [key for key, _ in self.transposed]
        position = {key: at for at, key in enumerate(self.keys)}
        self.transpose_sources = [position[source] for _, source in self.transposed]
        self.positions: list[int] | None = None
        self.index: dict[tuple, int] = {}
        self._expected: tuple[list[int], list[tuple[Any, ...]]] | None = None
        self.summary_memo: dict[Any, Any] = {}  # for stats.summarize_distinct
        #: ``(summary plan, positions)`` of the last step whose gradients fitted the graph.
        self.fitted: tuple[Any, list[int]] | None = None

    def with_aliases(self, index: dict[tuple, int]) -> dict[tuple, int]:
        """``index`` plus the unhooked nodes' keys, at their neighbours' positions."""
        for key, source in self.aliases:
            at = index.get(source)
            if at is not None:
                index[key] = at
        return index

    def shapes_fit(self, values: Sequence[Any], positions: list[int]) -> bool:
        """Whether the gradients fit the shapes and dtypes of the graph.

        When they are shared out exactly as in an earlier step that fitted
        (the same ``positions`` object) and every distinct tensor has that
        step's shape, dtype and layout (the same summary plan), they fit
        again without being looked at one by one.
        """
        plan = self.summary_memo.get("used_plan")
        if self.fitted is not None and plan is not None and self.fitted[0] is plan and self.fitted[1] is positions:
            return True
        return self.shapes_match(values)

    def remember_fit(self, positions: list[int]) -> None:
        """Notes that this step's gradients fit the graph, for :meth:`shapes_fit` to vouch by."""
        plan = self.summary_memo.get("used_plan")
        self.fitted = None if plan is None else (plan, positions)

    def shapes_match(self, values: Sequence[Any]) -> bool:
        """Whether each op's incoming gradient has the shape and dtype the graph gives the op.

        The engine checks every gradient against the op's output metadata, so
        a match vouches for the graph's shapes without reading that metadata.
        """
        if self._expected is None:
            position = self.with_aliases({key: at for at, key in enumerate(self.all_keys)})
            checked = [node for node in self.graph.nodes if node.kind in ("op", "custom") and node.shape is not None]
            self._expected = ([position[("node", node.id, 0)] for node in checked],
                              [(node.shape, getattr(torch, node.dtype)) for node in checked])
        at, expected = self._expected
        try:
            return list(map(_shape_and_dtype, map(values.__getitem__, at))) == expected
        except (AttributeError, RuntimeError, TypeError):  # a None (no gradient) or a nested tensor: read the nodes
            return False


_TRAVERSED = ("op", "leaf", "custom")  # node kinds with a live backward node


_TRANSPOSE = "TBackward0"  # its gradient out is its gradient in, transposed (``grad.t()``)


def _unhooked_nodes(graph: Graph, traversed: Sequence[Any]
                    ) -> tuple[dict[str, list[tuple[tuple, tuple]]], list[tuple[tuple, tuple]]]:
    """Nodes that need no hook of their own, and how to get their gradients without one.

    A node qualifies when each gradient into it comes along a lone edge from a
    traversed node, one of them into its first output, and each gradient out
    of it is the lone input of one. A transpose also qualifies whatever its
    output feeds (a weight shared across a loop's steps): its gradient out is
    its gradient in, transposed. No two chosen nodes are adjacent, so a hooked
    neighbour reports every gradient they share. They are picked by the
    minimum-degree greedy rule for independent sets.

    Returns:
        Node id -> ``(key, key it equals)`` for its gradients, and
        ``(key, key it is the transpose of)`` for the transposes' outputs.
    """
    edges = [edge for edge in graph.edges if edge.kind in ("grad", "root")]
    feeds = collections.Counter((edge.dst, edge.output) for edge in edges)
    into: dict[str, list[Any]] = collections.defaultdict(list)
    out_of: dict[str, list[Any]] = collections.defaultdict(list)
    for edge in edges:
        into[edge.dst].append(edge)
        out_of[edge.src].append(edge)
    kinds = {node.id: node.kind for node in graph.nodes}
    transposes = {node.id for node in traversed if node.op == _TRANSPOSE and node.inputs == 1}
    qualifying = [node.id for node in traversed
                  if any(edge.output == 0 for edge in into[node.id])  # its first output's gradient checks its shape
                  and all(kinds[edge.src] in _TRAVERSED and feeds[edge.dst, edge.output] == 1 for edge in into[node.id])
                  and (node.id in transposes
                       or all(kinds[edge.dst] in _TRAVERSED and feeds[edge.dst, edge.output] == 1
                              for edge in out_of[node.id]))]
    candidates = set(qualifying)
    neighbours = {node_id: ({edge.src for edge in into[node_id]} | {edge.dst for edge in out_of[node_id]}) & candidates
                  for node_id in qualifying}
    # Minimum-degree greedy: take a node with the fewest qualifying neighbours left, drop those
    # neighbours, update the degrees around them, repeat (traversal order breaks ties).
    rank = {node_id: k for k, node_id in enumerate(qualifying)}
    degree = {node_id: len(neighbours[node_id]) for node_id in qualifying}
    heap = [(degree[node_id], rank[node_id], node_id) for node_id in qualifying]
    heapq.heapify(heap)
    chosen: set[str] = set()
    gone: set[str] = set()
    while heap:
        left, _, node_id = heapq.heappop(heap)
        if node_id in gone or left != degree[node_id]:
            continue  # taken, dropped, or an outdated entry
        chosen.add(node_id)
        gone.add(node_id)
        for neighbour in neighbours[node_id] - gone:
            gone.add(neighbour)
            for other in neighbours[neighbour] - gone:
                degree[other] -= 1
                heapq.heappush(heap, (degree[other], rank[other], other))
    aliases = {node_id: [(("node", node_id, edge.output), ("edge", edge.src, edge.slot)) for edge in into[node_id]]
               + [(("edge", node_id, edge.slot), ("node", edge.dst, edge.output)) for edge in out_of[node_id]
                  if node_id not in transposes]
               for node_id in qualifying if node_id in chosen}
    transposed = [(("edge", node_id, 0), ("edge", into[node_id][0].src, into[node_id][0].slot))
                  for node_id in qualifying if node_id in chosen and node_id in transposes]
    return aliases, transposed


class _LazyScope:
    """The calling user code's variables, read from its frames on first use only."""

    def __init__(self) -> None:
        self._items: list[tuple[str, Any]] | None = None

    def items(self) -> list[tuple[str, Any]]:
        if self._items is None:
            self._items = naming.caller_scope()
        return self._items

    def __iter__(self) -> Any:
        return iter(self.items())

    def clear(self) -> None:
        """Drops the references to user objects."""
        self._items = None


@torch.no_grad()  # views only: under create_graph they need no graph of their own
def _transposes(grads: Iterable[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Each gradient transposed (``None`` stays ``None``): what an unhooked transpose passed on."""
    return [None if grad is None else grad.t() for grad in grads]


def _loss(graph: Graph, index: Mapping[tuple, int], batch: Batch) -> float | None:
    """The loss: the root's value when every root is a scalar (their sum for several), else ``None``."""
    total = 0.0
    for root_id in graph.roots:
        at = index[("value", root_id)]
        if batch.numel(at) != 1:
            return None
        total += batch.scalar(at)
    return total


@contextlib.contextmanager
def record(params: Any = None, *, keep: int | None = 64, saved: bool = False, save: str | None = None,
           live_steps: int = 4, on_step: Sequence[Callable[[Step], None]] = ()) -> Iterator[Run]:
    """Records every ``backward()`` inside the block as one step of a :class:`Run`.

    Args:
        params: Names for leaf tensors: ``{"w": w}``, ``model.named_parameters()``
            or a module. When ``None``, names come from the calling code:
            parameters of ``nn.Module``\\ s in scope (``model.0.weight``) and
            variables holding leaf tensors (``w``, ``b``).
        keep: Keep full values of gradients up to this many elements
            (``None``: all). Summaries are kept for every gradient.
        saved: Also draw the tensors each op saved for backward.
        save: Path of a run file to write step by step as the run goes.
        live_steps: How many recent steps answer ``step.grad_of(tensor)``.
        on_step: Callables run with each step once it is complete (and saved).

    Yields:
        The :class:`Run`; ``run.steps`` grows by one per ``backward()``.

    Hooks are removed at the end of every step, also on error.
    ``torch.autograd.backward`` (to see each step) and ``Tensor.register_hook``
    (to count hooks that may change gradients) are wrapped inside the block
    and restored when it exits. Recording reads gradients and never changes
    them.
    """
    store = None
    run = None
    if save is not None:
        from vizgrad import store as run_store

        run, store = run_store.open_for_recording(save)
    recorder = Recorder(params, keep=keep, saved=saved, live_steps=live_steps, store=store, run=run,
                        on_step=on_step)
    recorder.start()
    try:
        yield recorder.run
    finally:
        recorder.stop()
