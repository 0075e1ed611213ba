"""Hooks on the nodes of an autograd graph for one ``backward()``, at a fraction of ``register_hook``'s cost."""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable, Sequence

import torch
from torch.autograd import function as _function

__all__ = ["NodeCapture", "patch_lock"]

# ``Node.register_hook`` and ``register_prehook`` call this Python function, which
# makes a handle object per hook. While vizgrad registers its own hooks it swaps in
# a leaner one (other callers still get the original); the lock keeps two recorders,
# and vizgrad's own wrapping of it (recorder._Patches), from interleaving.
_REGISTER = "_register_hook"
#: Held while ``_HookMixin._register_hook`` is swapped, by captures and by the recorder's patches.
patch_lock = threading.Lock()
_current_node: Callable[[], Any] | None = getattr(torch._C, "_current_autograd_node", None)
_current_task: Callable[[], int] | None = getattr(torch._C, "_current_graph_task_id", None)
_fast_path_works: bool | None = None  # probed once: None until known
#: Captures between attach() and detach(), in any thread: with more than one, a shared leaf may fire
#: for another backward, so leaf hooks then keep their own graph task's firings only.
_in_flight: set[NodeCapture] = set()
_in_flight_lock = threading.Lock()


class NodeCapture:
    """Collects ``(grad_inputs, grad_outputs)`` of each hooked node while one ``backward()`` runs.

    ``attach(fns, reduce, leaves)`` hooks the nodes, ``detach()`` removes
    every hook (call it in ``finally``), and ``captured`` maps each node that
    ran to its pair. Nodes marked in ``reduce`` pass their pair through
    ``reducer`` first (which replaces big gradients by their summaries, so
    autograd can free them).

    Ops get a post-hook. Leaves (``AccumulateGrad``) get a pre-hook, which sees
    the gradient after the leaf's own hooks and before it is accumulated: held
    there, it is copied into ``.grad`` rather than moved, so nothing done to
    ``.grad`` later can change what was recorded. A leaf may be shared with a
    backward running in another thread: its hook keeps only the firings of
    this capture's own graph task (learned from a pre-hook on the first node).

    The fast path adds one shared hook to each node's hook dict under a key of
    its own and finds the node that fired through the engine's current node:
    no handle objects, no closure per node. Where the running torch does not
    support that, it falls back to ``register_hook`` with a closure per node.
    """

    def __init__(self, reducer: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None) -> None:
        self.captured: dict[Any, tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
        self.task: int | None = None  # the graph task of this capture's backward, once it started
        self.shared = False  # another capture was attached at the same time
        self._dicts: list[Any] = []
        self._handles: list[Any] = []
        self._key = object()  # unique per capture, so nested recorders never overwrite each other
        captured = self.captured
        current, current_task = _current_node, _current_task or (lambda: None)
        reduce = reducer if reducer is not None else _unchanged

        def hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
            captured[current()] = (grad_inputs, grad_outputs)  # type: ignore[misc]

        def reducing_hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
            captured[current()] = (reduce(grad_inputs), reduce(grad_outputs))  # type: ignore[misc]

        def leaf_hook(grad_outputs: tuple[Any, ...]) -> None:
            if not self.shared or self.task is None or current_task() == self.task:
                captured[current()] = ((), grad_outputs)  # type: ignore[misc]

        def reducing_leaf_hook(grad_outputs: tuple[Any, ...]) -> None:
            if not self.shared or self.task is None or current_task() == self.task:
                captured[current()] = ((), reduce(grad_outputs))  # type: ignore[misc]

        def start_hook(grad_outputs: tuple[Any, ...]) -> None:
            self.task = current_task()

        self._hook, self._reducing_hook = hook, reducing_hook
        self._leaf_hook, self._reducing_leaf_hook = leaf_hook, reducing_leaf_hook
        self._start_hook = start_hook
        self._reducer = reducer
        self._register: Any = None  # made on first use, then reused by every attach()

    def _ours(self, hook: Any) -> bool:
        return hook is self._hook or hook is self._reducing_hook or hook is self._leaf_hook \
            or hook is self._reducing_leaf_hook or hook is self._start_hook

    def attach(self, fns: Sequence[Any], reduce: Sequence[bool] | None = None,
               leaves: Sequence[bool] | None = None, starts: Sequence[Any] = ()) -> None:
        """Hooks every node in ``fns``: pre-hooks where ``leaves`` says so, reducing ones where ``reduce`` does.

        ``starts``: the nodes the backward starts from (not leaves), whose pre-hooks learn the graph task.
        """
        hooks = [(start, self._start_hook, True) for start in starts]  # first: the others compare with it
        hooks += self._hooks_for(fns, reduce, leaves)
        with _in_flight_lock:
            _in_flight.add(self)
            if len(_in_flight) > 1:
                for capture in _in_flight:
                    capture.shared = True
        if hooks and _fast_path_available():
            self._attach_fast(hooks)
        else:
            self._attach_per_node(hooks)

    def _hooks_for(self, fns: Sequence[Any], reduce: Sequence[bool] | None,
                   leaves: Sequence[bool] | None) -> list[tuple[Any, Any, bool]]:
        """``(node, hook, is a pre-hook)`` for each node."""
        reducing = self._reducer is not None and reduce is not None
        flags = reduce if reducing else [False] * len(fns)
        leaf_flags = leaves if leaves is not None else [False] * len(fns)
        post, post_reducing = self._hook, self._reducing_hook
        pre, pre_reducing = self._leaf_hook, self._reducing_leaf_hook
        return [(fn, (pre_reducing if flag else pre) if leaf else (post_reducing if flag else post), leaf)
                for fn, flag, leaf in zip(fns, flags, leaf_flags)]  # type: ignore[arg-type]

    def _attach_fast(self, hooks: Sequence[tuple[Any, Any, bool]]) -> None:
        with patch_lock:
            original = getattr(_function._HookMixin, _REGISTER)
            if self._register is None or self._register[0] is not original:
                self._register = (original, staticmethod(self._lean_register(original)))
            setattr(_function._HookMixin, _REGISTER, self._register[1])
            try:
                handles = self._handles
                for fn, hook, is_pre in hooks:
                    handle = fn.register_prehook(hook) if is_pre else fn.register_hook(hook)
                    if handle is not None:  # this node went through torch's own registration after all
                        handles.append(handle)
            finally:
                setattr(_function._HookMixin, _REGISTER, staticmethod(original))

    def _lean_register(self, original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], tuple[Any, Any]]:
        """A stand-in for torch's ``_register_hook`` that adds our hook without making a handle."""
        key, append = self._key, self._dicts.append

        def register(backward_hooks: Any, new_hook: Any) -> tuple[Any, Any]:
            if not self._ours(new_hook):
                return original(backward_hooks, new_hook)  # someone else's hook, registered meanwhile
            if backward_hooks is None:
                backward_hooks = collections.OrderedDict()  # what torch makes: weakly referenceable for handles
            backward_hooks[key] = new_hook
            append(backward_hooks)
            return backward_hooks, None

        return register

    def _attach_per_node(self, hooks: Sequence[tuple[Any, Any, bool]]) -> None:
        reducer = self._reducer
        for fn, hook, is_pre in hooks:
            if hook is self._start_hook:
                self._handles.append(fn.register_prehook(hook))
                continue
            reduce = reducer if hook is self._reducing_hook or hook is self._reducing_leaf_hook else None
            closure = _store_into(self, fn, reduce, is_pre)
            self._handles.append(fn.register_prehook(closure) if is_pre else fn.register_hook(closure))

    def detach(self) -> None:
        """Removes every hook this capture added."""
        with _in_flight_lock:
            _in_flight.discard(self)
        key = self._key
        for backward_hooks in self._dicts:
            backward_hooks.pop(key, None)
        self._dicts.clear()
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _unchanged(grads: tuple[Any, ...]) -> tuple[Any, ...]:
    return grads


def _store_into(capture: NodeCapture, fn: Any, reduce: Any, is_pre: bool) -> Callable[..., None]:
    """A hook of the public-API fallback: one closure per node, which knows its node."""
    captured, current_task = capture.captured, _current_task or (lambda: None)
    reduce = reduce or _unchanged
    if is_pre:
        def pre_hook(grad_outputs: tuple[Any, ...]) -> None:
            if not capture.shared or capture.task is None or current_task() == capture.task:
                captured[fn] = ((), reduce(grad_outputs))

        return pre_hook

    def hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
        captured[fn] = (reduce(grad_inputs), reduce(grad_outputs))

    return hook


def _fast_path_available() -> bool:
    """Whether this torch calls ``_HookMixin._register_hook`` and reports the running node (probed once)."""
    global _fast_path_works
    if _fast_path_works is None:
        _fast_path_works = _probe()
    return _fast_path_works


def _probe() -> bool:
    if _current_node is None or not hasattr(_function._HookMixin, _REGISTER):
        return False
    x = torch.ones(2, requires_grad=True)
    y = (x * 2).sum()
    capture = NodeCapture()
    try:
        # A pre-hook on an op (autograd.grad runs no AccumulateGrad) and a post-hook on another op.
        z = y * 3
        fns = [z.grad_fn, y.grad_fn]
        capture._attach_fast([(fns[0], capture._start_hook, True)] + capture._hooks_for(fns, None, [False, True]))
        if len(capture._dicts) != len(fns) + 1:
            return False
        torch.autograd.grad(z, x)  # not backward(): that may be a recorder's wrapper
        return set(capture.captured) == set(fns) and capture.captured[fns[1]][1][0] is not None \
            and capture.task is not None
    except Exception:  # any surprise from torch internals: use the public API instead
        return False
    finally:
        capture.detach()
