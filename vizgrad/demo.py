"""The seed's autograd linear regression (fit ``y = 2x + 3``), recorded and written as a report."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from vizgrad import recorder
from vizgrad.panels import ScatterLine
from vizgrad.run import Run

__all__ = ["seed_regression", "run_demo", "DEFAULT_STEPS", "STOP_BELOW"]

#: Most steps the demo runs. With ``lr = 0.001`` the loss falls below
#: :data:`STOP_BELOW` after about 2,900 steps (w ~ 2.000, b ~ 2.99).
DEFAULT_STEPS = 6000

#: Stop once the loss is below this. The seed stopped at 0.05, after ~1,300
#: steps, when b was still ~2.77: the report should show the fit arrive.
STOP_BELOW = 1e-4


def seed_regression(steps: int = DEFAULT_STEPS, seed: int = 0, record: bool = True,
                    stop_below: float | None = STOP_BELOW, lr: float = 0.001) -> Run | tuple[float, float]:
    """Fits ``y = 2x + 3`` to 8 random points with autograd, as the seed does.

    The loop is the seed's: ``x = randn(8, 1) * 20``, ``w = rand(1, 1)``,
    ``b = zeros(1, 1)``, ``loss = sum(error**2 / 8)``, an SGD update with
    ``requires_grad`` switched off around it, and the gradients zeroed after.
    It stops when the loss is below ``stop_below`` or after ``steps`` steps.

    Args:
        steps: Most ``backward()`` steps to run.
        seed: ``torch.manual_seed`` for the data and the initial ``w``.
        record: Record with :func:`vizgrad.record` and return the run;
            ``False`` runs plain PyTorch and returns the final ``(w, b)``.
        stop_below: Stop once the loss is below this (``None``: run all steps).
        lr: Learning rate.

    Returns:
        The recorded :class:`~vizgrad.Run` (with a "Data and fit" panel and the
        logged ``fit`` of every step), or ``(w, b)`` when not recording.
    """
    generator = torch.Generator().manual_seed(seed)  # same numbers as torch.manual_seed, global RNG untouched
    x = torch.randn(8, 1, generator=generator) * 20
    y = x * 2 + 3
    w = torch.rand(1, 1, generator=generator, requires_grad=True)
    b = torch.zeros(1, 1, requires_grad=True)
    batch_size = 8

    recording = recorder.record(params={"w": w, "b": b}) if record else contextlib.nullcontext(None)
    with recording as run:
        if run is not None:
            run.meta["title"] = "Linear regression y = 2x + 3 (the seed)"
            run.add_panel(ScatterLine("Data and fit", x=x.flatten().tolist(), y=y.flatten().tolist(),
                                      line_key="fit", x_label="x", y_label="y"))
        for _ in range(steps):
            y_pred = x.mm(w) + b.expand_as(y)
            error = y_pred - y
            loss = error ** 2 / batch_size
            loss = loss.sum()
            if stop_below is not None and loss.item() < stop_below:
                break
            loss.backward()
            if run is not None:  # the line this step's loss was computed with
                run.log("fit", {"slope": w.item(), "intercept": b.item()})
            w.requires_grad = False
            b.requires_grad = False
            w.sub_(lr * w.grad.data)
            b.sub_(lr * b.grad.data)
            w.requires_grad = True
            b.requires_grad = True
            w.grad.data.zero_()
            b.grad.data.zero_()
    if run is None:
        return w.item(), b.item()
    run.meta["final"] = {"w": w.item(), "b": b.item()}
    return run


def run_demo(output: str | Path = "vizgrad-demo.html", steps: int = DEFAULT_STEPS, engine: str | None = None,
             seed: int = 0) -> Path:
    """Records the seed's regression and writes its report.

    Works without a system Graphviz (the embedded WebAssembly one lays the
    graph out).

    Args:
        output: Path of the HTML report.
        steps: Most steps to run (the loop stops earlier once it converges).
        engine: Graphviz engine: ``"auto"``/``None``, ``"dot"`` or ``"wasm"``.
        seed: Random seed of the data and the initial weight.

    Returns:
        The path written.
    """
    run = seed_regression(steps=steps, seed=seed)
    assert isinstance(run, Run)
    return run.report(engine=engine).save(output)
