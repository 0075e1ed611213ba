"""Gradient clipping seen while recording: ``clip_grad_norm_`` / ``clip_grad_value_`` with each gradient before and after."""

from __future__ import annotations

import functools
import threading
import warnings
from typing import Any, Callable

import torch

from vizgrad.errors import RecordingWarning

__all__ = ["FUNCTIONS", "watch", "unwatch"]

#: The clipping functions of ``torch.nn.utils`` that are watched.
FUNCTIONS = ("clip_grad_norm_", "clip_grad_value_")

_lock = threading.Lock()
_listeners: list[Callable[[dict[str, Any]], None]] = []
_originals: dict[tuple[Any, str], Any] = {}


def _homes() -> tuple[Any, ...]:
    """The modules user code reaches the clipping functions through."""
    from torch.nn.utils import clip_grad

    return (torch.nn.utils, clip_grad)


def watch(listener: Callable[[dict[str, Any]], None]) -> None:
    """Calls ``listener`` with a clipping record after each clip (until :func:`unwatch`)."""
    with _lock:
        if not _listeners:
            for home in _homes():
                for name in FUNCTIONS:
                    original = getattr(home, name, None)
                    if original is not None:
                        _originals[(home, name)] = original
                        setattr(home, name, _watched(name, getattr(original, "__wrapped_by_vizgrad__", original)))
        _listeners.append(listener)


def unwatch(listener: Callable[[dict[str, Any]], None]) -> None:
    """Stops calling ``listener``; the functions are restored when no one listens."""
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)
        if not _listeners:
            for (home, name), original in _originals.items():
                setattr(home, name, original)
            _originals.clear()


def _norms(tensors: list[torch.Tensor]) -> list[float]:
    """The norm of each gradient, with one host sync for all."""
    if not tensors:
        return []
    with torch.no_grad():
        return torch.stack([norm.to(torch.float64) for norm in torch._foreach_norm(tensors)]).cpu().tolist()


def _watched(name: str, original: Any) -> Any:
    @functools.wraps(original)
    def clip(parameters: Any, *args: Any, **kwargs: Any) -> Any:
        if not _listeners:
            return original(parameters, *args, **kwargs)
        params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)  # a generator once
        with_grad = [p for p in params if p.grad is not None]
        grads_before = [p.grad for p in with_grad]
        try:
            before = _norms([g.detach() for g in grads_before])
        except Exception:  # recording must never break the user's clip
            return original(params, *args, **kwargs)
        result = original(params, *args, **kwargs)
        try:
            after = _norms([p.grad.detach() for p in with_grad])
            limit = args[0] if args else kwargs.get("max_norm", kwargs.get("clip_value"))
            record = {"function": name, "limit": float(limit) if limit is not None else None,
                      "params": with_grad, "before": before, "after": after}
        except Exception as error:  # the clip itself went through: only the record is missed
            warnings.warn(f"vizgrad could not read the gradients after {name} ({error}); its step shows no clipping",
                          RecordingWarning, stacklevel=2)
            return result
        for listener in list(_listeners):
            try:
                listener(record)
            except Exception as error:  # a record missed, never the user's clip
                warnings.warn(f"vizgrad could not note {name} ({error}); its step shows no clipping",
                              RecordingWarning, stacklevel=2)
        return result

    clip.__wrapped_by_vizgrad__ = original  # type: ignore[attr-defined]
    return clip
