"""Shared fixtures: a recorded run of the seed's regression, made once per test session."""

from __future__ import annotations

import pytest
import torch

import vizgrad

SEED_STEPS = 50


def record_seed_run(steps: int = SEED_STEPS, lr: float = 0.001) -> vizgrad.Run:
    """Records the seed's autograd regression (fit ``y = 2x + 3``), one step per ``backward()``."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, generator=generator) * 20
    y = x * 2 + 3
    w = torch.rand(1, 1, generator=generator).requires_grad_()
    b = torch.zeros(1, 1, requires_grad=True)
    with vizgrad.record(params={"w": w, "b": b}) as run:
        for _ in range(steps):
            y_pred = x.mm(w) + b.expand_as(y)
            error = y_pred - y
            loss = (error ** 2 / 8).sum()
            loss.backward()
            with torch.no_grad():
                w -= lr * w.grad
                b -= lr * b.grad
            w.grad.zero_()
            b.grad.zero_()
    return run


@pytest.fixture(scope="session")
def seed_run() -> vizgrad.Run:
    """The seed regression recorded for 50 steps (treat as read-only: it is shared)."""
    return record_seed_run()
