"""Post-hooks on every node of an autograd graph for one ``backward()``, at a fraction of ``register_hook``'s cost."""

from __future__ import annotations

import collections
import itertools
import threading
from typing import Any, Callable, Sequence

import torch
from torch.autograd import function as _function

__all__ = ["NodeCapture"]

# ``Node.register_hook`` calls this Python function, which makes a handle object
# per hook. While vizgrad registers its own hooks it swaps in a leaner one (other
# callers still get the original); the lock keeps two recorders from interleaving.
_REGISTER = "_register_hook"
_patch_lock = threading.Lock()
_current_node: Callable[[], Any] | None = getattr(torch._C, "_current_autograd_node", None)
_fast_path_works: bool | None = None  # probed once: None until known


class NodeCapture:
    """Collects ``(grad_inputs, grad_outputs)`` of each hooked node while one ``backward()`` runs.

    ``attach(fns, reduce)`` hooks the nodes, ``detach()`` removes every hook
    (call it in ``finally``), and ``captured`` maps each node that ran to its
    pair. Nodes marked in ``reduce`` pass their pair through ``reducer`` first
    (which replaces big gradients by their summaries, so autograd can free them).

    The fast path adds one shared hook to each node's hook dict under a key of
    its own and finds the node that fired through the engine's current node:
    no handle objects, no closure per node. Where the running torch does not
    support that, it falls back to ``register_hook`` with a closure per node.
    """

    def __init__(self, reducer: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None) -> None:
        self.captured: dict[Any, tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
        self._dicts: list[Any] = []
        self._handles: list[Any] = []
        self._key = object()  # unique per capture, so nested recorders never overwrite each other
        captured = self.captured
        current = _current_node

        def hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
            captured[current()] = (grad_inputs, grad_outputs)  # type: ignore[misc]

        def reducing_hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
            captured[current()] = (reduce(grad_inputs), reduce(grad_outputs))  # type: ignore[misc]

        reduce = reducer if reducer is not None else _unchanged
        self._hook = hook
        self._reducing_hook = reducing_hook
        self._reducer = reducer
        self._register: Any = None  # made on first use, then reused by every attach()

    def attach(self, fns: Sequence[Any], reduce: Sequence[bool] | None = None) -> None:
        """Adds a post-hook to every node in ``fns``; the reducing one where ``reduce`` says so."""
        if fns and _fast_path_available():
            self._attach_fast(fns, reduce)
        else:
            self._attach_per_node(fns, reduce)

    def _hooks_for(self, fns: Sequence[Any], reduce: Sequence[bool] | None) -> Any:
        if reduce is None or self._reducer is None:
            return zip(fns, itertools.repeat(self._hook))
        plain, reducing = self._hook, self._reducing_hook
        return zip(fns, [reducing if flag else plain for flag in reduce])

    def _attach_fast(self, fns: Sequence[Any], reduce: Sequence[bool] | None = None) -> None:
        original = getattr(_function._HookMixin, _REGISTER)
        if self._register is None:
            self._register = staticmethod(self._lean_register(original))
        with _patch_lock:
            setattr(_function._HookMixin, _REGISTER, self._register)
            try:
                handles = self._handles
                for fn, hook in self._hooks_for(fns, reduce):
                    handle = fn.register_hook(hook)
                    if handle is not None:  # this node went through torch's own registration after all
                        handles.append(handle)
            finally:
                setattr(_function._HookMixin, _REGISTER, staticmethod(original))

    def _lean_register(self, original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], tuple[Any, Any]]:
        """A stand-in for torch's ``_register_hook`` that adds our hook without making a handle."""
        key, append = self._key, self._dicts.append

        def register(backward_hooks: Any, new_hook: Any) -> tuple[Any, Any]:
            if new_hook is not self._hook and new_hook is not self._reducing_hook:
                return original(backward_hooks, new_hook)  # someone else's hook, registered meanwhile
            if backward_hooks is None:
                backward_hooks = collections.OrderedDict()  # what torch makes: weakly referenceable for handles
            backward_hooks[key] = new_hook
            append(backward_hooks)
            return backward_hooks, None

        return register

    def _attach_per_node(self, fns: Sequence[Any], reduce: Sequence[bool] | None = None) -> None:
        captured = self.captured
        self._handles = [fn.register_hook(_store_into(captured, fn, self._reducer if hook is self._reducing_hook
                                                      else None))
                         for fn, hook in self._hooks_for(fns, reduce)]

    def detach(self) -> None:
        """Removes every hook this capture added."""
        key = self._key
        for backward_hooks in self._dicts:
            backward_hooks.pop(key, None)
        self._dicts.clear()
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _unchanged(grads: tuple[Any, ...]) -> tuple[Any, ...]:
    return grads


def _store_into(captured: dict[Any, Any], fn: Any, reduce: Any = None) -> Callable[[Any, Any], None]:
    if reduce is None:
        def hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
            captured[fn] = (grad_inputs, grad_outputs)
    else:
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
    fns = [y.grad_fn, y.grad_fn.next_functions[0][0]]
    try:
        capture._attach_fast(fns)
        if len(capture._dicts) != len(fns):
            return False
        torch.autograd.grad(y, x)  # not backward(): that may be a recorder's wrapper
        return set(capture.captured) == set(fns)
    except Exception:  # any surprise from torch internals: use the public API instead
        return False
    finally:
        capture.detach()
