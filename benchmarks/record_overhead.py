"""Median step time bare vs inside ``vizgrad.record()``, interleaved in one process.

    python benchmarks/record_overhead.py [--rounds 15] [--steps 40] [--save] [--only NAME ...] [--torchlens]

Each round times ``steps`` bare steps, then ``steps`` recorded steps inside
one ``record()`` block, as in a training loop recorded from its first step
(the block's first step, which hooks every node, is one of the samples);
the figure is the median over all rounds' steps. ``torch.set_num_threads(1)``.
``--steps`` is the step count per round of the light workloads; heavier ones
run a fraction of it (the ``steps`` column). ``--save`` records into a run
file (``record(save=path)``, a new file per round in a temporary folder).

Workloads (issue "Core" and "Performance"), targets without / with ``--save``:

- seed regression: the seed's autograd loop step (<= 3x / <= 4x).
- small CNN: two 3x3 convs 3->16->32 on 16x3x32x32, average pool, Linear(32, 10),
  cross-entropy, SGD (<= 1.3x).
- CNN + MaxPool + Linear(8192,10): the same convs, MaxPool2d(2) to 32x16x16
  and a Linear(8192, 10) head (<= 1.3x).
- LSTMCell x100: nn.LSTMCell(16, 32) unrolled 100 steps, loss on the last h
  (~1,500 autograd nodes; <= 2x / <= 1.9x).
- LSTMCell x100, loss over all steps: the same, loss summed over every time
  step (<= 2x).
- ResNet-18-style: BasicBlocks with BatchNorm, layers [2, 2, 2, 2], 64-128-256-512
  channels, 7x7/2 stem and max pool, on 8x3x64x64, cross-entropy, SGD (<= 1.3x).

Targets not given for ``--save`` are reported only.

``--torchlens`` adds TorchLens on the same workloads (``torchlens.trace`` of
the step's loss as a module with ``save_grads=True``, ``log_backward``, the
same update): the median of ``--torchlens-steps`` steps after a warm-up, taken
after the workload's rounds (not interleaved), over the bare median. Skipped
with a note when torchlens is not importable.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import vizgrad

__all__ = ["Workload", "Traceable", "WORKLOADS", "TORCHLENS_CAPTURE", "torchlens_step", "seed_workload", "cnn_workload", "cnn_maxpool_workload", "lstm_workload",
           "lstm_all_steps_workload", "resnet_workload", "ResNet18Style", "measure", "main"]


@dataclass(frozen=True)
class Workload:
    """How to build one benchmark step, its target ratios and its share of ``--steps``."""

    name: str
    make: Callable[[], Callable[[], None]]
    target: float
    save_target: float | None = None
    steps_divisor: int = 1
    min_steps: int = 4
    make_peer: Callable[[], Traceable] | None = None

    def steps_per_round(self, steps: int) -> int:
        """This workload's steps per round when the light workloads run ``steps``."""
        return max(self.min_steps, steps // self.steps_divisor)


@dataclass(frozen=True)
class Traceable:
    """The same step for a peer that traces a module: ``loss = module(*inputs)``, backward, ``update()``."""

    module: nn.Module
    inputs: tuple[torch.Tensor, ...]
    update: Callable[[], None]


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


class SeedLoss(nn.Module):
    """The seed's regression loss ``sum((x w + b - y)^2 / 8)`` with ``w`` and ``b`` as parameters."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        x = torch.randn(8, 1) * 20
        self.register_buffer("x", x)
        self.register_buffer("y", x * 2 + 3)
        self.w = nn.Parameter(torch.rand(1, 1))
        self.b = nn.Parameter(torch.zeros(1, 1))

    def forward(self) -> torch.Tensor:
        error = self.x.mm(self.w) + self.b.expand_as(self.y) - self.y
        return (error ** 2 / 8).sum()


def seed_peer() -> Traceable:
    """The seed's step for a peer: its loss as a module, updated by SGD with lr 0.001."""
    module = SeedLoss()
    return Traceable(module, (), sgd_update(module, lr=0.001))


def sgd_update(module: nn.Module, lr: float) -> Callable[[], None]:
    """An SGD step on ``module``'s parameters followed by zeroing their gradients."""
    optimizer = torch.optim.SGD(module.parameters(), lr=lr)

    def update() -> None:
        optimizer.step()
        optimizer.zero_grad()

    return update


class ClassifierLoss(nn.Module):
    """Wraps a classifier so ``forward(images, labels)`` returns its cross-entropy."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(images), labels)


def classifier_peer(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Traceable:
    """A classifier's SGD step (lr 0.01) for a peer."""
    module = ClassifierLoss(model)
    return Traceable(module, (images, labels), sgd_update(module, lr=0.01))


def classifier_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One SGD step (lr 0.01) of ``model`` on a fixed batch with cross-entropy."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> None:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return step


def cnn_parts() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Two 3x3 convs (3->16->32), average pool, Linear(32, 10); a 16x3x32x32 batch and labels."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    return model, torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))


def cnn_workload() -> Callable[[], None]:
    """One SGD step of two 3x3 convs (3->16->32) on 16x3x32x32 with cross-entropy."""
    return classifier_step(*cnn_parts())


def cnn_maxpool_parts() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The small CNN's convs, MaxPool2d(2) to 32x16x16, Linear(8192, 10); a 16x3x32x32 batch and labels."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 16 * 16, 10))
    return model, torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))


def cnn_maxpool_workload() -> Callable[[], None]:
    """The small CNN's convs, MaxPool2d(2) to 32x16x16 and a Linear(8192, 10) head, one SGD step."""
    return classifier_step(*cnn_maxpool_parts())


def lstm_workload(loss_over_all_steps: bool = False) -> Callable[[], None]:
    """One SGD step of nn.LSTMCell(16, 32) unrolled over 100 time steps; loss on the last h or summed over every h."""
    torch.manual_seed(0)
    cell = nn.LSTMCell(16, 32)
    optimizer = torch.optim.SGD(cell.parameters(), lr=0.01)
    inputs = torch.randn(100, 4, 16)

    def step() -> None:
        optimizer.zero_grad()
        h = torch.zeros(4, 32)
        c = torch.zeros(4, 32)
        out = torch.zeros(())
        for x in inputs:
            h, c = cell(x, (h, c))
            if loss_over_all_steps:
                out = out + h.pow(2).mean()
        loss = out if loss_over_all_steps else h.pow(2).mean()
        loss.backward()
        optimizer.step()

    return step


def lstm_all_steps_workload() -> Callable[[], None]:
    """The unrolled LSTMCell step with the loss summed over every time step's h (``out = out + h.pow(2).mean()``)."""
    return lstm_workload(loss_over_all_steps=True)


class UnrolledLSTMLoss(nn.Module):
    """nn.LSTMCell(16, 32) unrolled over the inputs; loss on the last h or summed over every step's h."""

    def __init__(self, loss_over_all_steps: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.cell = nn.LSTMCell(16, 32)
        self.loss_over_all_steps = loss_over_all_steps

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(4, 32)
        c = torch.zeros(4, 32)
        if not self.loss_over_all_steps:
            for x in inputs:
                h, c = self.cell(x, (h, c))
            return h.pow(2).mean()
        out = torch.zeros(())
        for x in inputs:
            h, c = self.cell(x, (h, c))
            out = out + h.pow(2).mean()
        return out


def lstm_peer(loss_over_all_steps: bool) -> Traceable:
    """The unrolled LSTMCell step for a peer (same weights and inputs as the timed step)."""
    module = UnrolledLSTMLoss(loss_over_all_steps)
    return Traceable(module, (torch.randn(100, 4, 16),), sgd_update(module, lr=0.01))


class BasicBlock(nn.Module):
    """ResNet's two 3x3 conv + BatchNorm block with an identity or 1x1-conv shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18Style(nn.Module):
    """ResNet-18's layout: 7x7/2 stem, max pool, BasicBlock layers [2, 2, 2, 2] of 64-128-256-512 channels."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1))
        layers = []
        in_channels = 64
        for index, channels in enumerate([64, 128, 256, 512]):
            stride = 1 if index == 0 else 2
            layers.append(nn.Sequential(BasicBlock(in_channels, channels, stride), BasicBlock(channels, channels, 1)))
            in_channels = channels
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.head = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet_parts() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The ResNet-18-style CNN, a batch of 8x3x64x64 images and their labels."""
    torch.manual_seed(0)
    return ResNet18Style(), torch.randn(8, 3, 64, 64), torch.randint(0, 10, (8,))


def resnet_workload() -> Callable[[], None]:
    """One SGD step of the ResNet-18-style CNN on 8x3x64x64 with cross-entropy."""
    return classifier_step(*resnet_parts())


WORKLOADS = [
    Workload("seed regression", seed_workload, target=3.0, save_target=4.0, make_peer=seed_peer),
    Workload("small CNN", cnn_workload, target=1.3, make_peer=lambda: classifier_peer(*cnn_parts())),
    Workload("CNN + MaxPool + Linear(8192,10)", cnn_maxpool_workload, target=1.3,
             make_peer=lambda: classifier_peer(*cnn_maxpool_parts())),
    Workload("LSTMCell x100", lstm_workload, target=2.0, save_target=1.9, steps_divisor=4,
             make_peer=lambda: lstm_peer(loss_over_all_steps=False)),
    Workload("LSTMCell x100, loss over all steps", lstm_all_steps_workload, target=2.0, steps_divisor=4,
             make_peer=lambda: lstm_peer(loss_over_all_steps=True)),
    Workload("ResNet-18-style", resnet_workload, target=1.3, steps_divisor=8, min_steps=3,
             make_peer=lambda: classifier_peer(*resnet_parts())),
]

#: TorchLens capture options for "every gradient": its save_grads=True keeps the full gradient of each layer
#: it hooks; activations are saved only for the output, the loss that backward starts from.
TORCHLENS_CAPTURE = {"layers_to_save": ["output_1"], "save_grads": True, "backward_ready": True}


def torchlens_step(traceable: Traceable) -> Callable[[], None]:
    """One step under TorchLens: ``torchlens.trace`` of the loss module, ``log_backward``, update."""
    import warnings

    import torchlens

    warnings.filterwarnings("ignore", module="torchlens")
    options = torchlens.options.CaptureOptions(**TORCHLENS_CAPTURE)

    def step() -> None:
        trace = torchlens.trace(traceable.module, list(traceable.inputs), capture=options)
        loss = trace[trace.output_layers[0]].out
        if loss is None:
            raise RuntimeError("TorchLens kept no output to run backward from; check TORCHLENS_CAPTURE.")
        trace.log_backward(loss)
        traceable.update()

    return step


def time_steps(step: Callable[[], None], count: int) -> list[float]:
    """Seconds taken by each of ``count`` calls of ``step``."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def measure(step: Callable[[], None], rounds: int, steps: int,
            save_dir: str | None = None) -> tuple[float, float, int]:
    """(median bare seconds, median recorded seconds, graph nodes), rounds interleaved.

    With ``save_dir``, each round records into its own run file there.
    """
    bare: list[float] = []
    recorded: list[float] = []
    time_steps(step, 3)  # warm-up
    nodes = 0
    for index in range(rounds):
        bare += time_steps(step, steps)
        save = None if save_dir is None else str(Path(save_dir) / f"round{index}.vizgrad")
        with vizgrad.record(save=save) as run:
            recorded += time_steps(step, steps)
        nodes = len(run.steps[-1].graph)
    return statistics.median(bare), statistics.median(recorded), nodes


def measure_peer(step: Callable[[], None], steps: int) -> float:
    """Median seconds of ``steps`` peer steps after one warm-up step (not interleaved)."""
    step()
    return statistics.median(time_steps(step, steps))


def select(names: list[str] | None) -> list[Workload]:
    """The workloads named (case-insensitive), all when ``names`` is None."""
    if not names:
        return list(WORKLOADS)
    by_name = {workload.name.lower(): workload for workload in WORKLOADS}
    unknown = [name for name in names if name.lower() not in by_name]
    if unknown:
        choices = ", ".join(repr(workload.name) for workload in WORKLOADS)
        raise ValueError(f"unknown workload {unknown[0]!r}; choose from {choices}")
    return [by_name[name.lower()] for name in names]


def main(argv: list[str] | None = None) -> list[tuple[str, float, float, float]]:
    """Runs the table; returns (workload, bare seconds, recorded seconds, ratio) per workload."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=40, help="steps per round of the light workloads")
    parser.add_argument("--save", action="store_true", help="record into a run file (record(save=path))")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this workload (repeatable)")
    parser.add_argument("--torchlens", action="store_true", help="also time TorchLens on the same workloads")
    parser.add_argument("--torchlens-steps", type=int, default=5, help="timed TorchLens steps per workload")
    args = parser.parse_args(argv)
    try:
        workloads = select(args.only)
    except ValueError as error:
        parser.error(str(error))
    with_torchlens = args.torchlens and importlib.util.find_spec("torchlens") is not None
    torch.set_num_threads(1)  # steadier timings on a small machine
    results = []
    mode = "record(save=run file)" if args.save else "record()"
    print(f"torch {torch.__version__}, vizgrad {vizgrad.__version__}; {args.rounds} rounds, interleaved, {mode}")
    if args.torchlens and not with_torchlens:
        print("TorchLens column skipped: torchlens is not importable (pip install torchlens==2.36.1)")
    width = max(len(workload.name) for workload in workloads) + 2
    peer_header = f"{'TorchLens ms':>15}{'ratio':>9}" if with_torchlens else ""
    print(f"{'workload':<{width}}{'nodes':>7}{'steps':>7}{'bare ms':>10}{'record ms':>11}{'ratio':>8}{'target':>8}"
          f"{'':>8}{peer_header}".rstrip())
    with tempfile.TemporaryDirectory(prefix="vizgrad-bench-") as folder:
        for workload in workloads:
            steps = workload.steps_per_round(args.steps)
            save_dir = None
            if args.save:
                save_dir = str(Path(folder) / f"workload{len(results)}")
                Path(save_dir).mkdir()
            bare, recorded, nodes = measure(workload.make(), args.rounds, steps, save_dir)
            ratio = recorded / bare
            results.append((workload.name, bare, recorded, ratio))
            target = workload.save_target if args.save else workload.target
            if target is None:
                verdict = f"{'-':>8}{'':<8}"
            else:
                verdict = f"{target:>7.1f}x {'ok' if ratio <= target else 'MISSED':<7}"
            peer = ""
            if with_torchlens and workload.make_peer is not None:
                peer_seconds = measure_peer(torchlens_step(workload.make_peer()), args.torchlens_steps)
                peer = f"{peer_seconds * 1e3:>15.1f}{peer_seconds / bare:>8.0f}x"
            print(f"{workload.name:<{width}}{nodes:>7}{steps:>7}{bare * 1e3:>10.3f}{recorded * 1e3:>11.3f}"
                  f"{ratio:>7.2f}x{verdict}{peer}".rstrip())
    return results


if __name__ == "__main__":
    main()
