"""What a live step can tell of its own health, noted while recording: the torch side of :mod:`vizgrad.findings`.

Each function reads one thing that only the live step has (the engine's
order of hooked nodes, the parameters' ``.grad``, module outputs checked in
the forward pass, the user's hand-written gradients, a ``GradScaler``'s
verdict) and returns plain data for :attr:`vizgrad.run.Step.checks`.
"""

from __future__ import annotations

import functools
import math
import threading
import warnings
from typing import Any, Callable, Mapping, Sequence

import torch

from vizgrad.errors import RecordingWarning, UsageError
from vizgrad.findings import compare_manual, engine_order, has_nonfinite_gradient, nonfinite_origins, zeros_due
from vizgrad.stats import Reduced, zero_count

__all__ = ["nonfinite_checks", "zeros_due", "zero_counts", "forward_origin", "Expectation", "manual_checks", "watch_scalers",
           "unwatch_scalers"]


def nonfinite_checks(step: Any, captured: Mapping[Any, Any], fns: Sequence[Any], positions: Sequence[int]
                     ) -> list[dict[str, Any]] | None:
    """The step's non-finite origins in engine order, or ``None`` when every gradient is finite.

    The engine's order comes from the capture: its dict of hooked nodes
    fills in the order their hooks fired, so no hook is added to learn it.
    """
    if not has_nonfinite_gradient(step.table):
        return None
    origins = nonfinite_origins(step.graph, step.table)
    turn = {fn: at for at, fn in enumerate(captured)}
    ran = {f"n{pos}": turn[fn] for fn, pos in zip(fns, positions) if fn in turn}
    return engine_order(origins, step.graph, ran)


def zero_counts(names: Sequence[str], variables: Sequence[torch.Tensor],
                lookup: Callable[[Any], Any] | None = None) -> dict[str, int]:
    """How many elements of each parameter's ``.grad`` are exactly zero (one host sync per device).

    ``lookup``: the step's :meth:`vizgrad.stats.Reducer.lookup`, whose
    stand-in for a ``.grad`` may have counted them already.
    """
    counts: dict[str, int] = {}
    elsewhere: dict[Any, list[tuple[str, torch.Tensor]]] = {}
    with torch.no_grad():
        for name, variable in zip(names, variables):
            grad = variable.grad
            if grad is None or grad.layout != torch.strided:
                continue
            known = lookup(grad) if lookup is not None else None
            if type(known) is Reduced and known.zeros is not None:
                counts[name] = known.zeros
            elif grad.is_cpu:
                counts[name] = zero_count(grad)
            else:
                elsewhere.setdefault(grad.device, []).append((name, grad))
        for pairs in elsewhere.values():
            nonzero = torch.stack([grad.count_nonzero() for _, grad in pairs]).tolist()
            for (name, grad), count in zip(pairs, nonzero):
                counts[name] = grad.numel() - count
    return {name: count for name, count in counts.items() if count}


def forward_origin(noted: Sequence[tuple[Any, Any, int]], live: Any) -> dict[str, Any] | None:
    """The node of the first module output of this step's forward that was non-finite, and which output it is.

    Only outputs that are part of the step's graph count (a validation
    forward between two steps is not this step's).
    """
    for finite, fn, output in noted:
        if fn is None or bool(finite):
            continue
        try:
            node = live.node_id_of_fn(fn)
        except Exception:  # a node torch will not name
            node = None
        if node is not None:
            return {"node": node, "output": output}
    return None


class Expectation:
    """A hand-written gradient for the next step (``run.expect_grad``): what it is for, and its value."""

    __slots__ = ("target", "manual")

    def __init__(self, target: Any, manual: Any) -> None:
        if not isinstance(target, (str, torch.Tensor)):
            raise UsageError(f"expect_grad needs a parameter name or a tensor, got {type(target).__name__}")
        try:
            value = torch.as_tensor(manual.detach() if isinstance(manual, torch.Tensor) else manual)
        except (TypeError, ValueError, RuntimeError) as error:
            raise UsageError(f"expect_grad needs the hand-written gradient as a tensor or numbers ({error})") from None
        self.target = target
        self.manual = value.to("cpu", torch.float64, copy=True)


def manual_checks(expected: Sequence[Expectation], step: Any, live: Any) -> dict[str, dict[str, Any]]:
    """Each hand-written gradient compared with the one autograd delivered in ``step``."""
    out: dict[str, dict[str, Any]] = {}
    graph = step.graph
    for expectation in expected:
        target = expectation.target
        if isinstance(target, str):
            node = next((n for n in graph.nodes if n.name == target and n.kind == "leaf"), None) \
                or next((n for n in graph.nodes if n.name == target), None)
            if node is None:
                _warn(f"expect_grad({target!r}): no tensor of that name took part in step {step.index}; "
                      f"named ones: {', '.join(sorted({n.name for n in graph.nodes if n.name})) or 'none'}")
                continue
            node_id, output, name = node.id, 0, target
        else:
            try:
                node_id, output = live.locate(target)
            except LookupError:
                _warn(f"expect_grad: the tensor given took no part in step {step.index}'s backward()")
                continue
            name = graph.node(node_id).name or node_id
        autograd = step.table.value(("node", node_id, output))
        if autograd is None:
            reason = "no gradient reached it" if not step.table.has(("node", node_id, output)) else \
                "its gradient is too big to hold (raise record(hold=...))"
            _warn(f"expect_grad({name!r}) was not checked on step {step.index}: {reason}")
            continue
        out[name] = compare_manual(expectation.manual.numpy(), autograd.detach().to("cpu", torch.float64).numpy())
    return out


def _warn(message: str) -> None:
    warnings.warn(message, RecordingWarning, stacklevel=4)


# -- GradScaler ------------------------------------------------------------------------------------------------
_lock = threading.Lock()
_listeners: list[Callable[[dict[str, Any]], None]] = []
_original_step: list[Any] = []


def watch_scalers(listener: Callable[[dict[str, Any]], None]) -> None:
    """Calls ``listener`` after each ``GradScaler.step`` with ``{"skipped": bool, "scale": float}``."""
    with _lock:
        if not _listeners:
            scaler = torch.amp.GradScaler
            _original_step[:] = [scaler.step]
            scaler.step = _watched_step(scaler.step)  # type: ignore[method-assign]
        _listeners.append(listener)


def unwatch_scalers(listener: Callable[[dict[str, Any]], None]) -> None:
    """Stops calling ``listener``; ``GradScaler.step`` is restored when no one listens."""
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)
        if not _listeners and _original_step:
            torch.amp.GradScaler.step = _original_step.pop()  # type: ignore[method-assign]


def _watched_step(original: Any) -> Any:
    @functools.wraps(original)
    def step(self: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, optimizer, *args, **kwargs)
        if not self.is_enabled() or not _listeners:
            return result
        try:  # what GradScaler itself reads to decide: the Inf/NaN it found while unscaling
            state = self._per_optimizer_states[id(optimizer)]
            found = sum(v.item() for v in state["found_inf_per_device"].values())
            record = {"skipped": bool(found), "scale": float(self.get_scale())}  # before update() changes it
        except Exception:  # a GradScaler of another shape: say nothing rather than guess
            return result
        if record["skipped"] and not math.isfinite(record["scale"]):
            record["scale"] = None
        for listener in list(_listeners):
            try:
                listener(record)
            except Exception as error:
                warnings.warn(f"vizgrad could not note a GradScaler step ({error})", RecordingWarning, stacklevel=2)
        return result

    return step
