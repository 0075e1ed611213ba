"""Reports of models people train: a GPT-style decoder and the time-series LSTM unrolled 999 steps.

Records each workload, builds its HTML report with the embedded (wasm)
Graphviz only, and opens it in headless Chromium: report build time and
size, Graphviz layout calls, page load (until the first step is painted)
and the median time to switch steps. The default view (modules collapsed,
repeats folded, at most 150 drawn items) is what makes these render at all:
the 31,981-node LSTM graph drawn node by node makes Graphviz run out of
stack in wasm and take more than 10 minutes in the system ``dot``.

Workloads:
- GPT-12: 12 blocks of width 64 (nanoGPT's layout, written out), 200 SGD steps.
- LSTMCell x999: PyTorch's time-series example (two LSTMCells and a Linear,
  unrolled over 999 time steps: 31,981 nodes), 3 SGD steps.
- LSTMCell(16, 32) x100 drawn whole: unrolled 100 steps, the loss over every
  step (1,8xx nodes), as many SGD steps as the GPT, drawn node by node
  (``max_nodes=2000``): the page's cost of a big drawing.

Usage: python benchmarks/large_graphs.py [--gpt-steps 200] [--lstm-length 999] [--no-browser]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import vizgrad  # noqa: E402
from vizgrad import engine  # noqa: E402
from vizgrad.view import ViewOptions, plan_of, view_of  # noqa: E402

from models import Sequence, TinyGPT  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def gpt_run(steps: int) -> vizgrad.Run:
    torch.manual_seed(0)
    model = TinyGPT(vocab=64, width=64, heads=4, layers=12)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    tokens = torch.randint(0, 64, (4, 32))
    with vizgrad.record(model) as run:
        for _ in range(steps):
            optimizer.zero_grad()
            model(tokens[:, :-1], tokens[:, 1:].contiguous()).backward()
            optimizer.step()
    return run


def lstm_run(length: int, steps: int = 3) -> vizgrad.Run:
    torch.manual_seed(0)
    wave = torch.sin(torch.arange(length + 1, dtype=torch.double) / 20).repeat(3, 1)
    model = Sequence().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    with vizgrad.record(model) as run:
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(wave[:, :-1]), wave[:, 1:]).backward()
            optimizer.step()
    return run


def cell_run(steps: int) -> vizgrad.Run:
    """nn.LSTMCell(16, 32) unrolled 100 time steps, the loss summed over every step's h (1,8xx nodes)."""
    torch.manual_seed(0)
    cell = nn.LSTMCell(16, 32)
    inputs = torch.randn(100, 8, 16)
    optimizer = torch.optim.SGD(cell.parameters(), lr=0.1)
    with vizgrad.record(cell) as run:
        for _ in range(steps):
            optimizer.zero_grad()
            h = c = None
            loss = torch.zeros(())
            for x in inputs:
                h, c = cell(x) if h is None else cell(x, (h, c))
                loss = loss + h.pow(2).mean()
            loss.backward()
            optimizer.step()
    return run


def measure_report(name: str, run: vizgrad.Run, folder: Path, view: ViewOptions | None = None
                   ) -> tuple[Path, dict[str, float]]:
    engine.reset_calls()
    start = time.perf_counter()
    path = run.report(engine="wasm", view=view).save(folder / f"{name}.html")
    seconds = time.perf_counter() - start
    graph = run.steps[-1].graph
    drawn = view_of(graph, view)
    plan = plan_of(drawn)
    size = path.stat().st_size
    figures = {"nodes": len(graph.nodes), "drawn": plan.visible if plan else len(graph.nodes),
               "steps": len(run.steps), "build_s": seconds, "bytes": size, "bytes_per_step": size / len(run.steps),
               "layouts": engine.calls("wasm")}
    return path, figures


def measure_page(path: Path, switches: int = 40) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        start = time.perf_counter()
        page.goto(path.as_uri())
        while not page.evaluate("() => window.vizgrad !== undefined"):  # the page's CSP forbids wait_for_function's eval
            page.wait_for_timeout(10)
        ready = time.perf_counter() - start
        # Each switch is timed in the page: the player's handler alone, and up to the next frame drawn
        # (which waits for the display's next refresh, 16.7 ms at 60 Hz, at the least).
        expand_ms = page.evaluate("""async () => {   // the first click a fold or box offers, timed to its next frame
            const state = window.vizgrad.state(), view = window.vizgrad.data.views[state.view].next;
            const action = view.unfold ? "unfold" : view.expand ? "expand" : null;
            if (!action) return null;
            const t0 = performance.now();
            await window.vizgrad[action](Object.keys(view[action])[0]);
            await new Promise((done) => requestAnimationFrame(done));
            const ms = performance.now() - t0;
            await window.vizgrad.overview();
            return ms;
        }""")
        handler, frame = page.evaluate("""async (count) => {
            const handler = [], frame = [], last = window.vizgrad.data.index.length - 1;
            const nextFrame = () => new Promise((done) => requestAnimationFrame(done));
            await nextFrame();
            for (let i = 0; i < count; i++) {
                await nextFrame();
                const t0 = performance.now();
                window.vizgrad.player.seek(i % 2 ? 0 : last);
                handler.push(performance.now() - t0);
                await nextFrame();
                frame.push(performance.now() - t0);
            }
            return [handler, frame];
        }""", switches)
        browser.close()
    if errors:
        raise SystemExit(f"page errors in {path.name}: {errors}")
    return {"ready_s": ready, "handler_ms": statistics.median(handler), "switch_ms": statistics.median(frame),
            "expand_ms": expand_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpt-steps", type=int, default=200)
    parser.add_argument("--lstm-length", type=int, default=999)
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium measurements")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        workloads = [("GPT-12", lambda: gpt_run(args.gpt_steps), None),
                     (f"LSTMCell x{args.lstm_length}", lambda: lstm_run(args.lstm_length), None),
                     ("LSTMCell(16, 32) x100 drawn whole", lambda: cell_run(args.gpt_steps), ViewOptions(max_nodes=2000))]
        for name, make, view in workloads:
            start = time.perf_counter()
            run = make()
            recorded = time.perf_counter() - start
            path, figures = measure_report(name.split()[0].replace("(", "").replace(",", ""), run, folder, view)
            figures["record_s"] = recorded
            if not args.no_browser:
                figures.update(measure_page(path))
            rows.append((name, figures))
            print(f"{name}: {figures}", flush=True)
    print()
    print("| workload | nodes | drawn | steps | report build | size | per step | layouts | page ready "
          "| step switch: handler, to next frame | first unfold or expand |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, f in rows:
        expand = f"{f['expand_ms']:.0f} ms" if f.get("expand_ms") is not None else "-"
        page = (f"{f['ready_s']:.2f} s | {f['handler_ms']:.1f} ms, {f['switch_ms']:.1f} ms | {expand}"
                if "ready_s" in f else "- | - | -")
        print(f"| {name} | {f['nodes']:,} | {f['drawn']} | {f['steps']} | {f['build_s']:.1f} s | "
              f"{f['bytes'] / 1e6:.2f} MB | {f['bytes_per_step'] / 1e3:.1f} KB | {f['layouts']} | {page} |")


if __name__ == "__main__":
    main()
