"""Module attribution: which ``nn.Module`` call made each autograd node, from logged calls and sequence numbers.

While a ``record()`` block is active, ``nn.Module.__call__`` is wrapped to
log every module call of each thread as the autograd sequence numbers where
it starts and ends (``torch._C._autograd._get_sequence_nr``, the number the
thread's next backward node gets). A wrapper, not global forward hooks: those
switch every module call to torch's slow path (about 10 us a call, several
times the wrapper's cost) and make ``torch.compile`` warn on every compiled
call. A node made during a call has a number inside the call's span, so the
innermost call around a node is a binary search over the log's boundaries:
one ``searchsorted`` per step, no hook per op. Paths come from
``named_modules()`` of the top-level module, prefixed the way its parameters
are named (``model.h.3.attn`` beside ``model.h.3.attn.c_attn.weight``).
"""

from __future__ import annotations

import array
import os
import sys
import threading
import weakref
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from vizgrad.graph import ModuleInfo

__all__ = ["CallLog", "Attribution", "install", "uninstall", "call_log", "check_activations", "MAX_CALLS"]

_sequence_nr = torch._C._autograd._get_sequence_nr
_is_compiling = torch.compiler.is_compiling
#: Each thread's log remembers this many recent module calls; nodes made by older calls get no module.
MAX_CALLS = 1 << 17
#: An ``AccumulateGrad`` node's sequence number (the largest uint64): leaves are attributed by ownership.
_LEAF_SEQUENCE = (1 << 64) - 1


class CallLog:
    """One thread's module calls: who they were, who called them, and the sequence numbers they span.

    ``bounds[i]`` is the sequence number from which ``owners[i]`` (a call
    number, ``-1`` for none) is the innermost open call. Call numbers grow
    for the thread's whole life; ``base`` is the number of ``calls[0]``.
    Modules are held weakly: a log never keeps a model (and its parameters) alive.
    """

    __slots__ = ("bounds", "owners", "calls", "parents", "starts", "sites", "stack", "base", "epoch", "activations",
                 "__weakref__")

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch  # the installation of the wrapper it was made under
        #: ``(finite flag, output's grad_fn, its output number)`` per module output since the thread's
        #: last backward(), while activations are checked (``record(activations=True)``); else None.
        self.activations: list[tuple[Any, Any, int]] | None = None
        self.clear()

    def clear(self) -> None:
        """Forgets every call (done when recording ends: nothing more will be asked of this log)."""
        self.bounds = array.array("Q")
        self.owners = array.array("q")
        self.calls: list[Any] = []  # a weak reference to the module of each call
        self.parents: list[int] = []  # the call number each call was made from, -1 at top level
        self.starts: list[int] = []  # where each call's first boundary is in ``bounds``
        self.sites: list[tuple[Any, int]] = []  # the code object and line each call was made from
        self.stack: list[int] = []  # open calls, innermost last
        self.base = 0

    def enter(self, module: Any, caller: Any) -> None:
        """Notes a call of ``module`` made from frame ``caller`` (its code and line are kept, not the frame)."""
        call = self.base + len(self.calls)
        stack = self.stack
        self.calls.append(weakref.ref(module))
        self.sites.append((caller.f_code, caller.f_lineno))
        self.parents.append(stack[-1] if stack else -1)
        self.starts.append(len(self.bounds))
        stack.append(call)
        self.bounds.append(_sequence_nr())
        self.owners.append(call)
        if len(self.calls) > 2 * MAX_CALLS:
            self._prune()

    def leave(self, module: Any) -> None:
        stack = self.stack
        base, calls = self.base, self.calls
        # A forward that raised may leave calls open inside this one: close them too.
        while stack and calls[stack[-1] - base]() is not module:
            stack.pop()
        if stack:
            stack.pop()
        self.bounds.append(_sequence_nr())
        self.owners.append(stack[-1] if stack else -1)

    def _prune(self) -> None:
        """Forgets the oldest calls (never one still open), keeping :data:`MAX_CALLS`."""
        keep_from = len(self.calls) - MAX_CALLS
        if self.stack:
            keep_from = min(keep_from, self.stack[0] - self.base)
        if keep_from <= 0:
            return
        cut = self.starts[keep_from]
        self.bounds = self.bounds[cut:]
        self.owners = self.owners[cut:]
        self.starts = [start - cut for start in self.starts[keep_from:]]
        del self.calls[:keep_from]
        del self.parents[:keep_from]
        del self.sites[:keep_from]
        self.base += keep_from

    def owners_of(self, sequence: Sequence[int]) -> np.ndarray:
        """The innermost call (number, ``-1`` for none) around each sequence number; leaves get ``-1``."""
        if not self.calls:
            return np.full(len(sequence), -1, dtype=np.int64)
        numbers = np.fromiter(sequence, dtype=np.uint64, count=len(sequence))
        bounds = np.frombuffer(self.bounds, dtype=np.uint64)
        at = np.searchsorted(bounds, numbers, side="right") - 1
        owners = np.frombuffer(self.owners, dtype=np.int64)[np.maximum(at, 0)]
        owners[(at < 0) | (numbers == _LEAF_SEQUENCE) | (owners < self.base)] = -1
        return owners

    def module(self, call: int) -> Any:
        """The module of ``call``; ``None`` once it is garbage."""
        return self.calls[call - self.base]()

    def site(self, call: int) -> str | None:
        """``file:line`` the call was made from, when that is the user's code (not torch's or vizgrad's)."""
        code, line = self.sites[call - self.base]
        filename = code.co_filename
        if filename.startswith(_LIBRARY_DIRS) or filename.startswith("<"):
            return None
        return f"{filename}:{line}"

    def note_output(self, output: Any) -> None:
        """Notes whether a module call's output is finite (a flag tensor: no host sync until it is asked)."""
        for tensor in _tensors_of(output):
            if tensor.is_floating_point() or tensor.is_complex():
                self.activations.append((torch.isfinite(tensor.detach()).all(), tensor.grad_fn,  # type: ignore[union-attr]
                                         tensor.output_nr))
        if len(self.activations) > MAX_CALLS:  # type: ignore[arg-type]
            del self.activations[:MAX_CALLS // 2]  # type: ignore[index]

    def take_activations(self) -> list[tuple[Any, Any, int]]:
        """The output checks noted since the last call (for the backward() starting now)."""
        taken, self.activations = self.activations or [], ([] if self.activations is not None else None)
        return taken

    def parent(self, call: int) -> int:
        """The call ``call`` was made from; ``-1`` at top level or when that call is forgotten."""
        parent = self.parents[call - self.base]
        return parent if parent >= self.base else -1


_LIBRARY_DIRS = (os.path.dirname(os.path.abspath(__file__)) + os.sep, os.path.dirname(torch.__file__) + os.sep)


def _tensors_of(output: Any) -> list[torch.Tensor]:
    """The tensors a module returned that require grad: itself, or the items of a tuple, list or dict."""
    if isinstance(output, torch.Tensor):
        return [output] if output.requires_grad else []
    items = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) else ()
    return [item for item in items if isinstance(item, torch.Tensor) and item.requires_grad]


_local = threading.local()
_install_lock = threading.Lock()
_installed: list[Any] = []
_users = 0
_epoch = 0  # counts installations: a log from an earlier one (calls it never saw end) starts over
_logs: weakref.WeakSet[CallLog] = weakref.WeakSet()  # every thread's, to clear when recording ends


_checking = 0  # recorders checking module outputs (record(activations=True))


def _thread_log() -> CallLog:
    log = getattr(_local, "log", None)
    if log is None or log.epoch != _epoch:
        log = _local.log = CallLog(_epoch)
        log.activations = [] if _checking else None
        _logs.add(log)
    return log


def check_activations(on: bool) -> None:
    """Starts (or, counted, stops) noting whether each module call's output is finite, in every thread."""
    global _checking
    with _install_lock:
        _checking = max(0, _checking + (1 if on else -1))
        for log in list(_logs):
            if _checking and log.activations is None:
                log.activations = []
            elif not _checking:
                log.activations = None


def call_log() -> CallLog | None:
    """This thread's :class:`CallLog` while calls are logged (``None`` otherwise: nothing was logged)."""
    if not _users:
        return None
    return _thread_log()


def _logged_call(original: Callable[..., Any]) -> Callable[..., Any]:
    """``nn.Module.__call__`` that notes where each call starts and ends in this thread's log."""

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _is_compiling():  # torch.compile tracing: the region becomes one node, of the compiled module's call
            return original(self, *args, **kwargs)
        log = _thread_log()
        log.enter(self, sys._getframe(1))
        try:
            output = original(self, *args, **kwargs)
        finally:
            log.leave(self)
        if log.activations is not None:
            log.note_output(output)
        return output

    __call__.__wrapped__ = original  # type: ignore[attr-defined]
    __call__.__doc__ = original.__doc__
    return __call__


def install() -> None:
    """Wraps ``nn.Module.__call__`` (counted: :func:`uninstall` restores it when the last user is done)."""
    global _users, _epoch
    with _install_lock:
        if _users == 0:
            _epoch += 1
            original = torch.nn.Module.__call__
            _installed[:] = [original]
            torch.nn.Module.__call__ = _logged_call(original)  # type: ignore[method-assign]
        _users += 1


def uninstall() -> None:
    """Restores ``nn.Module.__call__`` once no user is left."""
    global _users
    with _install_lock:
        _users = max(0, _users - 1)
        if _users == 0 and _installed:
            if getattr(torch.nn.Module.__call__, "__wrapped__", None) is _installed[0]:  # not if rewrapped since
                torch.nn.Module.__call__ = _installed[0]  # type: ignore[method-assign]
            _installed.clear()
            for log in list(_logs):
                log.clear()


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _unwrapped(module: Any) -> Any:
    """The module a ``torch.compile`` wrapper (``OptimizedModule``) runs; any other module itself."""
    inner = getattr(module, "_orig_mod", None)
    return inner if isinstance(inner, torch.nn.Module) else module


class Attribution:
    """The module calls of one traced graph: a signature part per step, paths and the tree for a new graph.

    Made per step from the backward thread's :class:`CallLog`. :meth:`column`
    is what the graph's cache key holds (cheap: the calls as local numbers,
    their modules' identities and who called them); :meth:`resolve` names
    them, once per new graph.
    """

    __slots__ = ("log", "calls", "local", "order", "rank", "parents")

    def __init__(self, log: CallLog, sequence: Sequence[int]) -> None:
        self.log = log
        owners = log.owners_of(sequence)
        calls, local = np.unique(owners, return_inverse=True)
        dead = [at for at, call in enumerate(calls.tolist()) if call >= 0 and log.module(call) is None]
        if dead:  # a module made and dropped (one per step, say): its nodes have no module left to name
            calls[dead] = -1
            calls, remap = np.unique(calls, return_inverse=True)
            local = remap[local]
        self.calls: list[int] = calls.tolist()  # call numbers in forward order, -1 first when present
        self.local = local.astype(np.int32)
        # The calls that made nodes and the calls they were made from: the tree's calls, in forward order.
        involved: dict[int, int] = {}
        for call in self.calls:
            while call >= 0 and call not in involved:
                parent = log.parent(call)
                if parent >= 0 and log.module(parent) is None:
                    parent = -1
                involved[call] = parent
                call = parent
        self.order = sorted(involved)
        self.rank = {call: at for at, call in enumerate(self.order)}  # call number -> place in ``order``
        self.parents = [self.rank.get(involved[call], -1) for call in self.order]

    def column(self) -> tuple[Any, ...]:
        """What must be equal for two steps' nodes to have the same modules, calls and tree."""
        if not self.order:
            return ()
        return (tuple([id(self.log.module(call)) for call in self.order]), tuple(self.parents),
                tuple([self.rank.get(call, -1) for call in self.calls]), self.local.tobytes())

    def resolve(self, leaves: Mapping[int, Any], names: Mapping[int, str],
                scope_name: Callable[[Any], str | None] | None = None
                ) -> tuple[list[tuple[str | None, int]], dict[int, str], tuple[ModuleInfo, ...], dict[str, str]]:
        """Each node's ``(module path, call index)``, the leaves' owners, the module tree and its call sites.

        Args:
            leaves: Node position -> the leaf's tensor, for the leaves to attribute by ownership.
            names: Tensor id -> name of parameters (what a top-level module's prefix is read from).
            scope_name: Name of a variable holding a module, for a top-level module with no named parameter.

        Returns:
            ``(per node (path or None, call), position -> owner path for leaves, tree, path -> file:line)``,
            the last for modules called from the user's code (their first call).
        """
        modules = [self.log.module(call) for call in self.order]
        paths: list[str] = []
        tops: list[int] = []  # each call's top-level call (rank)
        roots: dict[int, tuple[str, dict[int, str]]] = {}  # id(top module) -> (path, id(module) -> relative path)
        taken: dict[str, int] = {}
        # Parents in the tree are where modules are registered (``model.h`` holds ``model.h.0``, though a
        # ModuleList never runs), else, for a module registered nowhere under its caller, the caller.
        tree_parents: dict[str, tuple[str | None, Any]] = {}  # path -> (parent path, module)
        for at, (module, parent) in enumerate(zip(modules, self.parents)):  # parents come first
            if parent < 0:
                tops.append(at)
                path = self._root_path(module, roots, taken, names, scope_name)
                paths.append(path)
                tree_parents.setdefault(path, (None, module))
                continue
            tops.append(tops[parent])
            top = modules[tops[parent]]
            prefix, relative = roots[id(top)]
            name = relative.get(id(module))
            if name is None:
                name = relative.get(id(_unwrapped(module)))
            if name is None:
                path = _join(paths[parent], type(_unwrapped(module)).__name__)
                tree_parents.setdefault(path, (paths[parent], module))
            else:
                path = _join(prefix, name)
                self._add_registered(tree_parents, prefix, name, _unwrapped(top))
            paths.append(path)
        index: list[int] = []
        counts: dict[str, int] = {}
        for path in paths:
            index.append(counts.get(path, 0))
            counts[path] = index[-1] + 1
        rank = self.rank
        per_call = [(paths[rank[call]], index[rank[call]]) if call >= 0 else (None, 0) for call in self.calls]
        nodes = [per_call[i] for i in self.local.tolist()]
        tree: dict[str, ModuleInfo] = {}
        within = self._within(paths, index, counts, tree_parents)

        def add(path: str) -> None:
            parent, module = tree_parents[path]
            if parent is not None and parent not in tree:
                add(parent)
            enclosing = within.get(path, ())
            tree[path] = ModuleInfo(path, type(_unwrapped(module)).__name__, counts.get(path, 0), parent,
                                    tuple(enclosing) if any(enclosing) else ())

        for path in paths:
            if path not in tree:
                add(path)
        owners = self._owners(roots, [modules[at] for at in set(tops)])
        leaf_paths = {at: owners[id(t)] for at, t in leaves.items() if id(t) in owners}
        sites: dict[str, str] = {}
        for call, path in zip(self.order, paths):
            if path not in sites:
                site = self.log.site(call)
                if site is not None:
                    sites[path] = site
        return nodes, leaf_paths, tuple(tree.values()), sites

    def _within(self, paths: Sequence[str], index: Sequence[int], counts: Mapping[str, int],
                tree_parents: Mapping[str, tuple[str | None, Any]]) -> dict[str, list[int]]:
        """Per path, for each of its calls, the enclosing call (index) of its nearest tree ancestor with calls."""
        within: dict[str, list[int]] = {}
        for at, path in enumerate(paths):
            ancestor = tree_parents[path][0]
            while ancestor is not None and not counts.get(ancestor):
                ancestor = tree_parents[ancestor][0]
            enclosing = -1
            if ancestor is not None:
                caller = self.parents[at]
                while caller >= 0 and paths[caller] != ancestor:
                    caller = self.parents[caller]
                enclosing = index[caller] if caller >= 0 else -1
            else:
                enclosing = 0
            calls = within.setdefault(path, [])
            if index[at] == len(calls):  # calls of a path come in forward order
                calls.append(enclosing)
        return within

    @staticmethod
    def _add_registered(tree_parents: dict[str, tuple[str | None, Any]], prefix: str, name: str, top: Any) -> None:
        """Notes ``name`` (relative to ``top``) and the modules it is registered under, up to ``top``."""
        while name and _join(prefix, name) not in tree_parents:
            parent_name = name.rpartition(".")[0]
            tree_parents[_join(prefix, name)] = (_join(prefix, parent_name), top.get_submodule(name))
            name = parent_name

    @staticmethod
    def _root_path(module: Any, roots: dict[int, tuple[str, dict[int, str]]], taken: dict[str, int],
                   names: Mapping[int, str], scope_name: Callable[[Any], str | None] | None) -> str:
        """A top-level module's path: the prefix its parameters are named with, else its variable or class name."""
        if id(module) in roots:
            return roots[id(module)][0]
        inner = _unwrapped(module)
        path = None
        for name, param in inner.named_parameters():
            full = names.get(id(param))
            if full is not None and (full == name or full.endswith("." + name)):
                path = full[:len(full) - len(name)].rstrip(".")
                break
        if path is None:
            path = (scope_name(module) if scope_name is not None else None) or type(inner).__name__
        if taken.get(path, id(module)) != id(module):  # another top-level module already has it
            number = 2
            while f"{path}#{number}" in taken:
                number += 1
            path = f"{path}#{number}"
        taken[path] = id(module)
        relative: dict[int, str] = {}
        for name, sub in inner.named_modules(remove_duplicate=False):
            relative.setdefault(id(sub), name)
        roots[id(module)] = (path, relative)
        return path

    @staticmethod
    def _owners(roots: Mapping[int, tuple[str, dict[int, str]]], tops: Sequence[Any]) -> dict[int, str]:
        """``id(parameter)`` -> path of the module that registered it (first one, under the top-level modules)."""
        owners: dict[int, str] = {}
        for top in tops:
            prefix = roots[id(top)][0]
            for name, sub in _unwrapped(top).named_modules():
                for param in sub._parameters.values():
                    if param is not None:
                        owners.setdefault(id(param), _join(prefix, name))
        return owners
