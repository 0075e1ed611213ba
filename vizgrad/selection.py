"""Which steps of a run to draw: a range like a Python slice, then every n-th of it."""

from __future__ import annotations

from typing import Any

from vizgrad.errors import UsageError

__all__ = ["select_steps"]


def select_steps(n_steps: int, every: int = 1, steps: str | slice | int | None = None) -> list[int]:
    """Indices of the steps to draw: a range like a Python slice, then every ``every``-th of it.

    Args:
        n_steps: How many steps the run has.
        every: Keep one step in ``every`` (1: all).
        steps: ``"A:B"`` (either end optional, negative counts from the end,
            ``"A:B:C"`` also allowed), a single index ``"A"``, an ``int`` or a
            ``slice``; ``None`` for all steps.

    Returns:
        The selected 0-based step indices, in order.

    Raises:
        UsageError: ``every`` is not a positive integer, ``steps`` cannot be
            parsed or is out of range, or nothing is selected.

    >>> select_steps(10, every=3)
    [0, 3, 6, 9]
    >>> select_steps(10, steps="-3:")
    [7, 8, 9]
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise UsageError(f"every must be a positive whole number of steps, got {every!r}")
    if n_steps <= 0:
        raise UsageError("the run has no steps to draw")
    selection = _as_slice(steps, n_steps)
    indices = list(range(n_steps))[selection][::every]
    if not indices:
        raise UsageError(f"steps={_shown(steps)} selects none of the run's {n_steps} steps (0..{n_steps - 1})")
    return indices


def _shown(steps: Any) -> str:
    return repr(steps if not isinstance(steps, slice) else f"{steps.start}:{steps.stop}")


def _as_slice(steps: str | slice | int | None, n_steps: int) -> slice:
    if steps is None:
        return slice(None)
    if isinstance(steps, slice):
        bad = [v for v in (steps.start, steps.stop, steps.step) if v is not None and not isinstance(v, int)]
        if bad or steps.step == 0:
            raise UsageError(f"steps slice must hold whole numbers and a non-zero step, got {steps!r}")
        return steps
    if isinstance(steps, int) and not isinstance(steps, bool):
        return _single(steps, n_steps, steps)
    if not isinstance(steps, str):
        raise UsageError(f"steps must be a range like '10:50', got {steps!r}")
    text = steps.strip()
    parts = text.split(":")
    if len(parts) > 3:
        raise UsageError(f"steps={steps!r} is not a range; write A:B (e.g. '10:50', ':100', '-20:')")
    try:
        numbers = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise UsageError(f"steps={steps!r} is not a range; write A:B with whole numbers (e.g. '10:50', ':100', '-20:')") from None
    if len(numbers) == 1:
        if numbers[0] is None:
            raise UsageError("steps is empty; write A:B (e.g. '10:50') or leave it out for all steps")
        return _single(numbers[0], n_steps, steps)
    if len(numbers) == 3 and numbers[2] == 0:
        raise UsageError(f"steps={steps!r} has a step of 0")
    return slice(*numbers)


def _single(index: int, n_steps: int, shown: Any) -> slice:
    if not -n_steps <= index < n_steps:
        raise UsageError(f"steps={shown!r} is out of range for a run of {n_steps} steps (0..{n_steps - 1})")
    index %= n_steps
    return slice(index, index + 1)
