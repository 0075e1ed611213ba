"""``vizgrad.record()``: every ``backward()`` inside the block becomes one recorded step."""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from vizgrad import naming
from vizgrad.errors import RecordingError
from vizgrad.graph import Graph
from vizgrad.run import Run, Step
from vizgrad.stats import summarize
from vizgrad.tracing import LiveMap, Tracer, as_roots

__all__ = ["record", "Recorder"]

_active_lock = threading.Lock()
_active: list[Recorder] = []


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
        store: Where steps go: a run file writer from :mod:`vizgrad.store`, or
            ``None`` to keep them in memory.
    """

    def __init__(self, params: Any = None, keep: int | None = 4096, saved: bool = False, live_steps: int = 4,
                 store: Any = None, run: Run | None = None) -> None:
        self.params = params
        self.keep = keep
        self.tracer = Tracer(saved=saved)
        self.live_steps = live_steps
        self.store = store
        self.run = run if run is not None else Run()
        self._explicit_names = naming.explicit_names(params) if params is not None else None
        self._leaf_names: dict[int, tuple[Any, str]] = {}  # id -> (weakref-able tensor ref, name)
        self._graphs: dict[str, list[Graph]] = {}
        self._live_steps: collections.deque[Step] = collections.deque()
        self._original_backward: Callable[..., Any] | None = None
        self._in_step = False
        self.run.backward = self.backward  # type: ignore[attr-defined]

    # -- patching ----------------------------------------------------------------------
    def start(self) -> None:
        """Routes ``torch.autograd.backward`` (and so ``Tensor.backward``) through the recorder."""
        with _active_lock:
            if _active:
                raise RecordingError("vizgrad.record() blocks cannot be nested; record once around the training loop")
            _active.append(self)
        self._original_backward = torch.autograd.backward
        recorder = self

        def backward(tensors: Any, grad_tensors: Any = None, retain_graph: Any = None, create_graph: bool = False,
                     grad_variables: Any = None, inputs: Any = None) -> None:
            """``torch.autograd.backward``, recorded by vizgrad as one step."""
            return recorder._backward(tensors, grad_tensors, retain_graph, create_graph, inputs)

        backward.__wrapped__ = self._original_backward  # type: ignore[attr-defined]
        torch.autograd.backward = backward  # type: ignore[assignment]

    def stop(self) -> None:
        """Restores ``torch.autograd.backward`` and flushes the store."""
        try:
            if self._original_backward is not None:
                torch.autograd.backward = self._original_backward  # type: ignore[assignment]
                self._original_backward = None
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
        roots = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
        tracked = tuple(r for r in roots if isinstance(r, torch.Tensor) and r.requires_grad)
        if not tracked:  # let torch raise its own, well-known error
            return original(tensors, grad_tensors, retain_graph, create_graph, inputs=inputs)
        as_roots(tracked)
        scope = naming.caller_scope()
        try:
            names = self._names_for(scope)
            fn_names, root_names = naming.variable_names(scope, tracked)
        finally:
            del scope
        graph, live = self.tracer.trace(tracked, names, fn_names, root_names=root_names)
        graph = self._dedupe(graph, live)
        captured: dict[int, tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
        handles = []
        self._in_step = True
        try:
            for key, (fn, _node_id) in live.by_fn.items():
                handles.append(fn.register_hook(_capture_into(captured, key)))
            original(tensors, grad_tensors, retain_graph, create_graph, inputs=inputs)
        finally:
            for handle in handles:
                handle.remove()
            self._in_step = False
        self._finish_step(graph, live, tracked, grad_tensors if len(roots) == len(tracked) else None, captured)

    def _names_for(self, scope: Sequence[tuple[str, Any]]) -> dict[int, str]:
        if self._explicit_names is not None:
            return self._explicit_names
        return naming.leaf_names(None, scope)

    def _dedupe(self, graph: Graph, live: LiveMap) -> Graph:
        """Reuses an equal graph seen before, so a long run holds each topology once."""
        same_hash = self._graphs.setdefault(graph.structural_hash, [])
        for known in same_hash:
            if known == graph:
                object.__setattr__(known, "_live", live)
                return known
        same_hash.append(graph)
        return graph

    def _finish_step(self, graph: Graph, live: LiveMap, roots: Sequence[torch.Tensor], grad_tensors: Any,
                     captured: Mapping[int, tuple[tuple[Any, ...], tuple[Any, ...]]]) -> None:
        keys: list[tuple] = []
        tensors: list[torch.Tensor | None] = []
        position: dict[int, int] = {}  # id(tensor) -> index in tensors, to summarise each tensor once
        aliases: list[tuple[tuple, int]] = []

        def add(key: tuple, tensor: Any) -> None:
            if not isinstance(tensor, torch.Tensor):
                return
            index = position.get(id(tensor))
            if index is None:
                position[id(tensor)] = len(tensors)
                keys.append(key)
                tensors.append(tensor)
            else:
                aliases.append((key, index))

        for key, (grad_inputs, grad_outputs) in captured.items():
            node_id = live.by_fn[key][1]
            for output, grad in enumerate(grad_outputs):
                add(("node", node_id, output), grad)
            for slot, grad in enumerate(grad_inputs):
                add(("edge", node_id, slot), grad)
        # The gradient into a root is the one backward() started with; with one
        # root and no explicit gradient it is implicitly ones.
        seeds = _root_gradients(roots, grad_tensors)
        for root_id, root, seed in zip(graph.roots, roots, seeds):
            add(("root", root_id), root)
            add(("node", root_id, 0), seed)
            add(("edge", root_id, 0), seed)
        param_names = self._param_names(graph, live)
        for name, param in param_names:
            add(("param", name), param)
            add(("param_grad", name), param.grad)
        summaries, kept = summarize(tensors, self.keep)
        summary_by_key = {}
        values = {}
        for key, summary, value in zip(keys, summaries, kept):
            summary_by_key[key] = summary
            if value is not None:
                values[key] = value
        for key, index in aliases:
            summary_by_key[key] = summaries[index]
            if kept[index] is not None:
                values[key] = kept[index]
        loss = None
        root_summaries = [summary_by_key.pop(("root", rid), None) for rid in graph.roots]
        root_values = [values.pop(("root", rid), None) for rid in graph.roots]
        if all(s is not None and s.numel == 1 for s in root_summaries):
            loss = sum(float(v.real.reshape(()) if v.is_complex() else v.reshape(())) if v is not None else s.mean
                       for v, s in zip(root_values, root_summaries))
        step = Step(len(self.run.steps), loss, graph,
                    {k: s for k, s in summary_by_key.items() if s is not None}, values, _live=live)
        if self.run._pending_data:
            step.data.update(self.run._pending_data)
            self.run._pending_data.clear()
        self._retire_live(step)
        if self.store is not None:
            self.store.append(step)
        self.run.steps.append(step)

    def _param_names(self, graph: Graph, live: LiveMap) -> list[tuple[str, torch.Tensor]]:
        """Named leaves in this graph (with their live tensors), in node order."""
        found = []
        for fn, node_id in live.by_fn.values():
            node = graph.by_id[node_id]
            if node.kind == "leaf" and node.name is not None:
                found.append((node.name, fn.variable))
        return found

    def _retire_live(self, step: Step) -> None:
        self._live_steps.append(step)
        while len(self._live_steps) > self.live_steps:
            self._live_steps.popleft().release()


def _root_gradients(roots: Sequence[torch.Tensor], grad_tensors: Any) -> list[torch.Tensor | None]:
    """The gradient each root starts with: the one given, or ones for a scalar root."""
    if isinstance(grad_tensors, torch.Tensor):
        grad_tensors = (grad_tensors,)
    given = list(grad_tensors) if grad_tensors is not None else [None] * len(roots)
    given += [None] * (len(roots) - len(given))
    return [g if isinstance(g, torch.Tensor) else (torch.ones_like(r) if r.numel() == 1 else None)
            for r, g in zip(roots, given)]


def _capture_into(captured: dict[int, Any], key: int) -> Callable[[Any, Any], None]:
    def hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
        captured[key] = (grad_inputs, grad_outputs)

    return hook


@contextlib.contextmanager
def record(params: Any = None, *, keep: int | None = 4096, saved: bool = False, save: str | None = None,
           live_steps: int = 4) -> Iterator[Run]:
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

    Yields:
        The :class:`Run`; ``run.steps`` grows by one per ``backward()``.

    Hooks are removed at the end of every step, also on error, and
    ``torch.autograd.backward`` is restored when the block exits. Recording
    reads gradients and never changes them.
    """
    store = None
    run = None
    if save is not None:
        from vizgrad import store as run_store

        run, store = run_store.open_for_recording(save)
    recorder = Recorder(params, keep=keep, saved=saved, live_steps=live_steps, store=store, run=run)
    recorder.start()
    try:
        yield recorder.run
    finally:
        recorder.stop()
