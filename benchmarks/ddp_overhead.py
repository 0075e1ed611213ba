"""Step time inside DDP (2 processes, gloo, CPU) bare vs inside ``vizgrad.record()``, interleaved per rank.

    python benchmarks/ddp_overhead.py [--rounds 9] [--steps 20] [--save]

Each rank trains the workloads of ``record_overhead.py`` wrapped in
``DistributedDataParallel`` (its all-reduce included in the step) and times
rounds of bare and recorded steps in turn; rank 0 prints the medians. With
``--save`` each rank records into its own run file (``run.rank0.vizgrad`` ...).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import record_overhead as workloads  # noqa: E402  (the same workloads as the single-process benchmark)

import vizgrad  # noqa: E402

WORLD = 2
CASES = [("small CNN", workloads.cnn_parts, 1.3), ("CNN + MaxPool + Linear(8192,10)", workloads.cnn_maxpool_parts, 1.3),
         ("ResNet-18-style", workloads.resnet_parts, 1.3)]


def _worker(rank: int, port: int, rounds: int, steps: int, save: str | None, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)  # two processes on two cores
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    lines = []
    for name, parts, target in CASES:
        model, images, labels = parts()
        step = workloads.classifier_step(nn.parallel.DistributedDataParallel(model), images, labels)
        workloads.time_steps(step, 3)
        bare: list[float] = []
        recorded: list[float] = []
        for index in range(rounds):
            bare += workloads.time_steps(step, steps)
            path = None if save is None else os.path.join(save, f"{index}.vizgrad")
            with vizgrad.record(save=path):
                recorded += workloads.time_steps(step, steps)
        b, r = statistics.median(bare), statistics.median(recorded)
        verdict = "ok" if r / b <= target else "MISSED"
        lines.append(f"{name:<34} {b * 1e3:8.2f} {r * 1e3:10.2f} {r / b:7.2f}x {target:5.1f}x {verdict}")
    if rank == 0:
        Path(out).write_text("\n".join(lines) + "\n")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--save", action="store_true", help="each rank records into its own run file")
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="vizgrad-ddp-") as folder:
        out = os.path.join(folder, "result.txt")
        mp.spawn(_worker, args=(port, args.rounds, args.steps, folder if args.save else None, out), nprocs=WORLD)
        print(f"torch {torch.__version__}, vizgrad {vizgrad.__version__}; DDP over gloo, {WORLD} processes, "
              f"{args.rounds} rounds of {args.steps} steps, interleaved, record({'save=' if args.save else ''})")
        print(f"{'workload':<34} {'bare ms':>8} {'record ms':>10} {'ratio':>8} {'target':>6}")
        print(Path(out).read_text(), end="")


if __name__ == "__main__":
    main()
