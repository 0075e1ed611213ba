"""Median step time bare vs inside ``vizgrad.record()``, interleaved in one process.

    python benchmarks/record_overhead.py [--rounds 15] [--steps 40]

Workloads (issue "Core"): the seed's regression step, a small CNN (two 3x3
convs 3->16->32 on 16x3x32x32, cross-entropy, SGD) and an nn.LSTMCell(16, 32)
unrolled 100 steps (~1,800 autograd nodes). Targets: <=3x, <=1.3x, <=2x.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import vizgrad

TARGETS = {"seed regression": 3.0, "small CNN": 1.3, "LSTMCell x100": 2.0}


def seed_workload() -> Callable[[], None]:
    """One step of the seed's autograd loop (forward, backward, update, zero)."""
    torch.manual_seed(0)
    x = torch.randn(8, 1) * 20
    y = x * 2 + 3
    w = torch.rand(1, 1, requires_grad=True)
    b = torch.zeros(1, 1, requires_grad=True)

    def step() -> None:
        y_pred = x.mm(w) + b.expand_as(y)
        error = y_pred - y
        loss = (error ** 2 / 8).sum()
        loss.backward()
        w.requires_grad = False
        b.requires_grad = False
        w.sub_(0.001 * w.grad.data)
        b.sub_(0.001 * b.grad.data)
        w.requires_grad = True
        b.requires_grad = True
        w.grad.data.zero_()
        b.grad.data.zero_()

    return step


def cnn_workload() -> Callable[[], None]:
    """One SGD step of two 3x3 convs (3->16->32) on 16x3x32x32 with cross-entropy."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images = torch.randn(16, 3, 32, 32)
    labels = torch.randint(0, 10, (16,))

    def step() -> None:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return step


def lstm_workload() -> Callable[[], None]:
    """One SGD step of nn.LSTMCell(16, 32) unrolled over 100 time steps."""
    torch.manual_seed(0)
    cell = nn.LSTMCell(16, 32)
    optimizer = torch.optim.SGD(cell.parameters(), lr=0.01)
    inputs = torch.randn(100, 4, 16)

    def step() -> None:
        optimizer.zero_grad()
        h = torch.zeros(4, 32)
        c = torch.zeros(4, 32)
        for x in inputs:
            h, c = cell(x, (h, c))
        loss = h.pow(2).mean()
        loss.backward()
        optimizer.step()

    return step


def time_steps(step: Callable[[], None], count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def measure(step: Callable[[], None], rounds: int, steps: int) -> tuple[float, float, int]:
    """(median bare seconds, median recorded seconds, graph nodes), rounds interleaved."""
    bare: list[float] = []
    recorded: list[float] = []
    time_steps(step, 3)  # warm-up
    nodes = 0
    for _ in range(rounds):
        bare += time_steps(step, steps)
        with vizgrad.record() as run:
            recorded += time_steps(step, steps)
        nodes = len(run.steps[-1].graph)
    return statistics.median(bare), statistics.median(recorded), nodes


def main(argv: list[str] | None = None) -> list[tuple[str, float, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # steadier timings on a small machine
    results = []
    print(f"torch {torch.__version__}, vizgrad {vizgrad.__version__}; {args.rounds} rounds x {args.steps} steps, interleaved")
    print(f"{'workload':<18}{'nodes':>7}{'bare ms':>10}{'record ms':>11}{'ratio':>8}{'target':>8}")
    for name, make in [("seed regression", seed_workload), ("small CNN", cnn_workload),
                       ("LSTMCell x100", lstm_workload)]:
        steps = args.steps if name != "LSTMCell x100" else max(4, args.steps // 4)
        bare, recorded, nodes = measure(make(), args.rounds, steps)
        ratio = recorded / bare
        results.append((name, bare, recorded, ratio))
        verdict = "ok" if ratio <= TARGETS[name] else "MISSED"
        print(f"{name:<18}{nodes:>7}{bare * 1e3:>10.3f}{recorded * 1e3:>11.3f}{ratio:>7.2f}x{TARGETS[name]:>7.1f}x {verdict}")
    return results


if __name__ == "__main__":
    main()
