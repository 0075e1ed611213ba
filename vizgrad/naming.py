"""Infers names for tensors from user code: parameters of ``nn.Module``\\ s in scope and variable names."""

from __future__ import annotations

import os
import sys
import types
import weakref
from typing import Any, Container, Iterable, Mapping, NamedTuple, Sequence

import torch

__all__ = ["Binding", "caller_scope", "leaf_names", "scope_dicts", "variable_names", "explicit_names", "explicit_pairs",
           "InferredLeafNames"]

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_VIZGRAD_DIR = os.path.dirname(os.path.abspath(__file__))
# Frames of the capture machinery are never user code; other vizgrad modules
# (the demo's training loop) are, so their variables name their tensors.
_CAPTURE_FILES = frozenset(os.path.join(_VIZGRAD_DIR, f"{name}.py")
                           for name in ("recorder", "naming", "tracing", "run", "stats", "graph"))


_internal_code: dict[types.CodeType, bool] = {}  # code object -> not user code (asked on every step)


def _is_internal(frame: types.FrameType) -> bool:
    code = frame.f_code
    internal = _internal_code.get(code)
    if internal is None:
        filename = code.co_filename
        internal = filename.startswith((_TORCH_DIR, "<frozen ")) or os.path.abspath(filename) in _CAPTURE_FILES
        if len(_internal_code) > 4096:  # generated code (exec, notebooks) must not grow it forever
            _internal_code.clear()
        _internal_code[code] = internal
    return internal


class Binding(NamedTuple):
    """A name visible to user code, its value, and where it lives (a function, or a module for globals)."""

    name: str
    value: Any
    where: str


def _frame_owner(frame: types.FrameType) -> str:
    """What holds a frame's locals: its function's name, or its module's for module-level code."""
    code_name = frame.f_code.co_name
    if code_name == "<module>":
        return str(frame.f_globals.get("__name__") or "globals")
    return code_name.strip("<>")  # <lambda>, <listcomp>: no brackets in a name


def caller_scope(depth: int = 4) -> list[Binding]:
    """The :class:`Binding`\\ s visible to user code, nearest first.

    The nearest user frame is the first one outside torch and vizgrad's
    capture modules, so this works from inside a patched ``Tensor.backward``.
    Its locals come first, then the locals of up to ``depth - 1`` user frames
    that called it (a ``train(model)`` called from ``main()``), then its globals.
    Each binding says where it was found: the function whose frame holds it
    (``main``), or the module's ``__name__`` for globals (``__main__``).
    """
    scope: list[Binding] = []
    for namespace, where in _user_namespaces(depth):
        scope.extend(Binding(name, value, where) for name, value in namespace.items())
    return scope


def scope_dicts(depth: int = 4) -> list[Mapping[str, Any]]:
    """The namespaces :func:`caller_scope` reads, nearest first, as dicts (no binding made): for every step."""
    return [namespace for namespace, _ in _user_namespaces(depth, owners=False)]


def _user_namespaces(depth: int, owners: bool = True) -> list[tuple[Mapping[str, Any], str]]:
    """The locals of the nearest ``depth`` user frames and the nearest one's globals, each with where it lives."""
    frame = sys._getframe(2)
    try:
        while frame is not None and _is_internal(frame):
            frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            return []
        nearest_globals = frame.f_globals
        found: list[tuple[Mapping[str, Any], str]] = []
        for _ in range(depth):
            if frame is None:
                break
            if _is_internal(frame):
                frame = frame.f_back  # type: ignore[assignment]
                continue
            local = frame.f_locals  # a function frame makes this dict on each read: once
            if local is nearest_globals:
                break
            found.append((local, _frame_owner(frame) if owners else ""))
            frame = frame.f_back  # type: ignore[assignment]
        found.append((nearest_globals, str(nearest_globals.get("__name__") or "globals") if owners else ""))
        return found
    finally:
        del frame  # frames in locals make reference cycles


def holder_name(scope: Iterable[Binding], obj: Any) -> str | None:
    """The name of the first binding in ``scope`` that holds ``obj`` itself, or ``None``."""
    return next((binding.name for binding in scope if binding.value is obj), None)


#: Types no tensor is (what a script's namespaces mostly hold), passed over without an isinstance check.
_PLAIN_TYPES = frozenset((types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type, int, float, str,
                          bool, type(None), list, dict, tuple, set, types.MethodType))


def _visible(name: str) -> bool:
    # Skip private names and IPython's output history (_, _1, Out, In).
    return not name.startswith("_") and name not in ("In", "Out")


def explicit_names(
    params: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]] | torch.nn.Module,
) -> dict[int, str]:
    """Tensor id -> name from ``params``: a mapping, ``named_parameters()`` pairs or a module."""
    names: dict[int, str] = {}
    for name, tensor in explicit_pairs(params):
        names.setdefault(id(tensor), name)
    return names


def explicit_pairs(
    params: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]] | torch.nn.Module,
) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` pairs from ``params``, checked: a mapping, ``named_parameters()`` pairs or a module."""
    if isinstance(params, torch.nn.Module):
        pairs: Iterable[tuple[str, Any]] = params.named_parameters()
    elif isinstance(params, Mapping):
        pairs = params.items()
    else:
        pairs = params
    out: list[tuple[str, torch.Tensor]] = []
    usage = "params must map names to tensors, e.g. {'w': w} or model.named_parameters()"
    if isinstance(pairs, (str, bytes, torch.Tensor)) or not isinstance(pairs, Iterable):
        raise TypeError(f"{usage}; got {type(params).__name__}")
    for pair in pairs:
        try:
            name, tensor = pair
        except (TypeError, ValueError):
            raise TypeError(usage) from None
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"params[{name!r}] is a {type(tensor).__name__}, not a torch.Tensor")
        out.append((str(name), tensor))
    return out


def leaf_names(params: Any, scope: Sequence[Binding]) -> dict[int, str]:
    """Tensor id -> name for leaves: from ``params`` when given (exactly as given), else inferred from ``scope``.

    Inferred names are module parameter paths (``model.0.weight``; a module
    bound to ``self`` contributes ``layer.weight``) and else the names of
    variables that hold leaf tensors (``w``, ``b``). Names are unique: they
    are claimed in scope order, so the nearest frame's name wins as is, and a
    different tensor found under a name already taken is qualified by where
    it was found (``main.w`` for the caller ``main``'s ``w``,
    ``__main__.w`` for a shadowed global), then numbered (``main.w#2``) if
    that is taken too.

    >>> import torch
    >>> near, far = torch.ones(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    >>> names = leaf_names(None, [Binding("w", near, "train"), Binding("w", far, "main")])
    >>> names[id(near)], names[id(far)]
    ('w', 'main.w')
    """
    if params is not None:
        return explicit_names(params)
    taken: set[str] = set()
    names: dict[int, str] = {}
    for tensor, base, where in _candidates(scope):
        names[id(tensor)] = name = _unique_name(base, where, taken)
        taken.add(name)
    return names


def _candidates(scope: Sequence[Binding]) -> list[tuple[torch.Tensor, str, str]]:
    """Each leaf in scope once, as ``(tensor, name, where)``, in the order names are claimed.

    A tensor's name is its first module parameter path if it has one (however
    near a variable holding it is), else its first variable name; it claims
    that name at the position in scope of the binding that gave it.
    """
    by_path: dict[int, tuple[tuple[int, int], torch.Tensor, str, str]] = {}
    by_variable: dict[int, tuple[tuple[int, int], torch.Tensor, str, str]] = {}
    seen_modules: set[int] = set()
    for at, (var, value, where) in enumerate(scope):
        if not _visible(var):
            continue
        if isinstance(value, torch.nn.Module) and id(value) not in seen_modules:
            seen_modules.add(id(value))
            prefix = "" if var == "self" else f"{var}."
            for order, (pname, p) in enumerate(value.named_parameters()):
                by_path.setdefault(id(p), ((at, order), p, prefix + pname, where))
        elif isinstance(value, torch.Tensor) and value.is_leaf and value.requires_grad:
            by_variable.setdefault(id(value), ((at, 0), value, var, where))
    chosen = {**by_variable, **by_path}
    return [(tensor, name, where) for _, tensor, name, where in sorted(chosen.values(), key=lambda c: c[0])]


def _unique_name(base: str, where: str | None, taken: Container[str]) -> str:
    """``base`` if not taken, else qualified by ``where`` (``main.w``), else numbered (``main.w#2``)."""
    if base not in taken:
        return base
    name = f"{where}.{base}" if where else base
    if name not in taken:
        return name
    number = 2
    while f"{name}#{number}" in taken:
        number += 1
    return f"{name}#{number}"


class InferredLeafNames:
    """Leaf names inferred from user code, remembered between steps.

    A training loop names the same parameters every step, so the scope is
    scanned again only when a leaf is asked for that is not known yet (and at
    most once per step). Entries hold weak references, so a dead tensor whose
    id is reused is not mistaken for the new one.

    Names stay unique among the leaves named, and with their tensors: a leaf
    keeps its name while it lives, and a new leaf never gets a name held by a
    leaf in use (one in scope, or one already asked for this step); it gets
    a qualified name as in :func:`leaf_names`. A name whose holder is dead or
    out of use passes to a new tensor found under it, so a ``w`` rebuilt every
    step keeps one series (the recorder's recent steps keep old leaves alive:
    alive alone is not in use). A holder out of sight that turns up again
    after its name passed on gets its old name numbered (``w#2``).
    """

    def __init__(self) -> None:
        self._known: dict[int, tuple[weakref.ref[torch.Tensor], str | None]] = {}
        self._holders: dict[str, weakref.ref[torch.Tensor]] = {}  # name -> the (known entry's) ref holding it
        self._asked: set[int] = set()  # leaves asked for this step: in use
        self._scope: Sequence[Binding] | None = None

    def begin_step(self, scope: Sequence[Binding]) -> None:
        """Makes ``scope`` available for one rescan during this step."""
        self._scope = scope
        self._asked.clear()

    def end_step(self) -> None:
        """Drops the step's scope (it references user objects)."""
        self._scope = None
        self._asked.clear()

    def get(self, key: int, default: str | None = None) -> str | None:
        """The name of the leaf tensor with ``id`` ``key``, or ``default``."""
        entry = self._known.get(key)
        if (entry is None or entry[0]() is None) and self._scope is not None:
            scope, self._scope = self._scope, None
            self._rescan(scope)
            entry = self._known.get(key)
        if entry is None or entry[0]() is None:
            return default
        self._asked.add(key)
        ref, name = entry
        if name is None:
            return default
        holder = self._holders.get(name)
        if holder is not ref:
            if holder is not None and holder() is not None:  # its name passed on while it was out of sight
                return self._rename(key, ref, name)
            self._holders[name] = ref
        return name

    def remember_unnamed(self, tensor: torch.Tensor) -> None:
        """Notes that ``tensor`` has no name in scope, so later steps do not scan for it again."""
        entry = self._known.get(id(tensor))
        if entry is None or entry[0]() is None:
            self._known[id(tensor)] = (weakref.ref(tensor), None)

    def _rescan(self, scope: Sequence[Binding]) -> None:
        """Names the leaves in ``scope`` not named yet; the names of leaves in use are not theirs to take."""
        # Dead entries go: their ids may be reused and their names are free.
        self._known = {key: entry for key, entry in self._known.items() if entry[0]() is not None}
        self._holders = {name: ref for name, ref in self._holders.items() if ref() is not None}
        candidates = _candidates(scope)
        in_use = self._asked | {id(tensor) for tensor, _, _ in candidates}
        taken = {name for name, ref in self._holders.items() if id(ref()) in in_use}
        for tensor, base, where in candidates:
            entry = self._known.get(id(tensor))
            if entry is not None and entry[1] is not None:
                continue  # named before: it keeps its name
            name = _unique_name(base, where, taken)
            taken.add(name)
            ref = weakref.ref(tensor)
            self._known[id(tensor)] = (ref, name)
            self._holders[name] = ref  # taken over from a holder out of use, if there was one

    def _rename(self, key: int, ref: weakref.ref[torch.Tensor], name: str) -> str:
        """A new name for a leaf whose name another live leaf holds now: ``name`` numbered."""
        held = {held_name for held_name, holder in self._holders.items() if holder() is not None}
        new_name = _unique_name(name, None, held)
        self._known[key] = (ref, new_name)
        self._holders[new_name] = ref
        return new_name


def variable_names(
    scope: Iterable[Mapping[str, Any]], roots: Sequence[torch.Tensor],
) -> tuple[dict[Any, str], list[str | None]]:
    """Names of intermediate tensors in the namespaces ``scope`` (nearest first), by ``grad_fn``, and the roots' names.

    Read on every recorded step (a loop's variables name different tensors
    from step to step), so it makes nothing but the two results.
    """
    fn_names: dict[Any, str] = {}
    by_tensor: dict[int, str] = {}
    tensor, plain = torch.Tensor, _PLAIN_TYPES
    for namespace in scope:
        for var, value in namespace.items():
            # Most bindings are modules, functions and numbers: one type lookup passes them.
            if type(value) in plain or not isinstance(value, tensor):
                continue
            if value.grad_fn is not None and _visible(var):
                by_tensor.setdefault(id(value), var)
                # Only output 0 names the node: a split's pieces share one grad_fn.
                if value.output_nr == 0:
                    fn_names.setdefault(value.grad_fn, var)
    return fn_names, [by_tensor.get(id(r)) for r in roots]
