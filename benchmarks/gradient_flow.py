"""Gradient health at scale: a 200-parameter model trained for 10,000 steps, recorded, reported and opened.

Measures, in one run:
- the cost of collecting per-layer gradient statistics every step: vizgrad's
  ``record()`` against the popular ``plot_grad_flow`` snippet's collection
  (mean and max |grad| of every parameter, read with ``.item()``), both as
  ratios to the bare training loop;
- ``run.grad_norms`` over every step;
- building the report (with its gradient-flow panel), its size, and in
  headless Chromium: page ready, drawing the flow panel at another depth, and
  the median step switch.

    python benchmarks/gradient_flow.py [--steps 10000] [--timing-steps 1000] [--layers 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import vizgrad  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def make_model(layers: int) -> nn.Module:
    """``layers`` blocks of Linear(8, 8) + Tanh, in two stages: 2 parameters a block."""
    torch.manual_seed(0)
    half = layers // 2
    stage = lambda count: nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(count)])  # noqa: E731
    return nn.Sequential(stage(half), stage(layers - half))


def train(model: nn.Module, steps: int, collect=None) -> float:
    """Seconds for ``steps`` SGD steps; ``collect(model)`` after each backward (a snippet's logging)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(16, 8), torch.randn(16, 8)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        if collect is not None:
            collect(model)
        optimizer.step()
    return time.perf_counter() - start


def plot_grad_flow_collect(history: list) -> callable:
    """The data ``plot_grad_flow`` reads each step: mean and max |grad| per parameter (``.item()`` each)."""
    def collect(model: nn.Module) -> None:
        history.append([(name, p.grad.abs().mean().item(), p.grad.abs().max().item())
                        for name, p in model.named_parameters() if p.grad is not None])
    return collect


def browser_figures(path: Path) -> dict[str, float]:
    """Page ready, a redraw of the flow panel at another depth, and the median step switch, in Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        start = time.perf_counter()
        page.goto(path.as_uri())
        while not page.evaluate("() => !!(window.vizgrad && window.vizgrad.flow)"):
            page.wait_for_timeout(20)
        page.evaluate("async () => await window.vizgrad.ready")
        ready = time.perf_counter() - start
        rows = page.evaluate("() => window.vizgrad.flow.rows()")
        redraw = page.evaluate("""() => { const select = document.getElementById('flow-depth');
            const t = performance.now(); select.value = '0'; select.dispatchEvent(new Event('change'));
            return performance.now() - t; }""")
        switches = page.evaluate("""() => { const out = [], count = window.vizgrad.data.index.length;
            for (let k = 0; k < 40; k++) { const t = performance.now();
              window.vizgrad.player.seek(Math.floor(Math.random() * count)); out.push(performance.now() - t); }
            return out; }""")
        browser.close()
    if errors:
        raise SystemExit(f"page errors: {errors}")
    return {"ready": ready, "rows": rows, "redraw": redraw / 1000, "switch": statistics.median(switches) / 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000, help="steps recorded for the report")
    parser.add_argument("--timing-steps", type=int, default=1_000,
                        help="steps of each loop timed against the bare one (interleaved, best of 3)")
    parser.add_argument("--layers", type=int, default=100, help="blocks of Linear(8, 8): 2 parameters each")
    args = parser.parse_args()
    steps = args.steps
    print(f"torch {torch.__version__}, vizgrad {vizgrad.__version__}; {args.layers * 2} parameters, {steps:,} steps")

    times: dict[str, list[float]] = {"bare": [], "snippet": [], "recorded": []}
    for _ in range(3):  # interleaved rounds, the best of each: the machine's noise hits all alike
        times["bare"].append(train(make_model(args.layers), args.timing_steps))
        times["snippet"].append(train(make_model(args.layers), args.timing_steps, plot_grad_flow_collect([])))
        model = make_model(args.layers)
        with vizgrad.record(model):
            times["recorded"].append(train(model, args.timing_steps))
    bare, snippet, recorded = (min(times[key]) for key in ("bare", "snippet", "recorded"))
    model = make_model(args.layers)
    with tempfile.TemporaryDirectory() as folder:
        with vizgrad.record(model) as run:
            record_all = train(model, steps)
        start = time.perf_counter()
        names, norms = run.grad_norms(by="param")
        api = time.perf_counter() - start
        start = time.perf_counter()
        report = run.report(title=f"{args.layers * 2}-parameter model, {steps:,} steps")
        path = report.save(Path(folder) / "flow.html")
        build = time.perf_counter() - start
        size = os.path.getsize(path)
        page = browser_figures(path) if os.path.exists(CHROMIUM) else None

    print(f"{args.timing_steps:,} steps each{'':<26}{'seconds':>10}{'x bare':>9}")
    print(f"{'bare training loop':<44}{bare:>10.2f}{1:>9.2f}")
    print(f"{'plot_grad_flow collection (.item() each)':<44}{snippet:>10.2f}{snippet / bare:>9.2f}")
    print(f"{'vizgrad.record() (every node and edge)':<44}{recorded:>10.2f}{recorded / bare:>9.2f}")
    print(f"recording {steps:,} steps for the report: {record_all:.1f} s")
    print(f"run.grad_norms(by='param'): {norms.shape[0]:,} x {norms.shape[1]} in {api:.2f} s")
    print(f"report: built in {build:.1f} s, {size / 2**20:.1f} MiB ({size / steps / 1024:.1f} KiB a step)")
    if page is not None:
        print(f"page: ready in {page['ready']:.2f} s, flow panel of {page['rows']} rows redrawn at depth 0 in "
              f"{page['redraw'] * 1000:.0f} ms, median step switch {page['switch'] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
