"""Post-hooks on every node of an autograd graph for one ``backward()``, at a fraction of ``register_hook``'s cost."""

from __future__ import annotations

import collections
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

    ``attach(fns)`` hooks the nodes, ``detach()`` removes every hook (call it
    in ``finally``), and ``captured`` maps each node that ran to its pair
    (clear it before the next ``attach``: one capture serves many steps).

    The fast path adds one shared hook to each node's hook dict under a key of
    its own and finds the node that fired through the engine's current node:
    no handle objects, no closure per node. Where the running torch does not
    support that, it falls back to ``register_hook`` with a closure per node.
    """

    def __init__(self) -> None:
        self.captured: dict[Any, tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
        self._dicts: list[Any] = []
        self._handles: list[Any] = []
        self._key = object()  # unique per capture, so nested recorders never overwrite each other
        captured = self.captured
        current = _current_node

        def hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
            captured[current()] = (grad_inputs, grad_outputs)  # type: ignore[misc]

        self._hook = hook
        self._register: Any = None  # made on first use, then reused by every attach()

    def attach(self, fns: Sequence[Any]) -> None:
        """Adds a post-hook to every node in ``fns``."""
        if fns and _fast_path_available():
            self._attach_fast(fns)
        else:
            self._attach_per_node(fns)

    def _attach_fast(self, fns: Sequence[Any]) -> None:
        original = getattr(_function._HookMixin, _REGISTER)
        if self._register is None:
            self._register = staticmethod(self._lean_register(original))
        with _patch_lock:
            setattr(_function._HookMixin, _REGISTER, self._register)
            try:
                hook, handles = self._hook, self._handles
                for fn in fns:
                    handle = fn.register_hook(hook)
                    if handle is not None:  # this node went through torch's own registration after all
                        handles.append(handle)
            finally:
                setattr(_function._HookMixin, _REGISTER, staticmethod(original))

    def _lean_register(self, original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], tuple[Any, Any]]:
        """A stand-in for torch's ``_register_hook`` that adds our hook without making a handle."""
        key, append = self._key, self._dicts.append

        def register(backward_hooks: Any, new_hook: Any) -> tuple[Any, Any]:
            hook = self._hook
            if new_hook is not hook:  # someone else's hook, registered meanwhile from another thread
                return original(backward_hooks, new_hook)
            if backward_hooks is None:
                backward_hooks = collections.OrderedDict()  # what torch makes: weakly referenceable for handles
            backward_hooks[key] = hook
            append(backward_hooks)
            return backward_hooks, None

        return register

    def _attach_per_node(self, fns: Sequence[Any]) -> None:
        captured = self.captured
        self._handles = [fn.register_hook(_store_into(captured, fn)) for fn in fns]

    def detach(self) -> None:
        """Removes every hook this capture added."""
        key = self._key
        for backward_hooks in self._dicts:
            backward_hooks.pop(key, None)
        self._dicts.clear()
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _store_into(captured: dict[Any, Any], fn: Any) -> Callable[[Any, Any], None]:
    def hook(grad_inputs: tuple[Any, ...], grad_outputs: tuple[Any, ...]) -> None:
        captured[fn] = (grad_inputs, grad_outputs)

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
