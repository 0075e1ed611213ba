"""Where a recorded step's time goes: one workload's recorded steps under cProfile and torch.profiler.

    python benchmarks/profile_step.py [NAME] [--steps 10] [--top 25] [--save] [--only cprofile|torch]

NAME is a workload of ``record_overhead.py`` ("ResNet-18-style" by default).
The steps run inside one ``vizgrad.record()`` block (with ``--save``, into a
run file in a temporary folder) after a recorded warm-up step, since the
block's first step hooks every node; ``torch.set_num_threads(1)``.

- cProfile: the Python functions with the most self time and the most
  cumulative time over the recorded steps (vizgrad's hooks, summaries, store).
- torch.profiler (CPU): the ops with the most self CPU time over the recorded
  steps, then each op's self time per step recorded vs bare, most extra first,
  with the op it is mostly called from (the reductions and copies recording
  adds show up here; ops that recording does not call differ only by noise).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

import vizgrad

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_overhead import WORKLOADS, select  # noqa: E402

__all__ = ["profile_python", "profile_ops", "extra_ops_table", "main"]


def run_steps(step: Callable[[], None], count: int) -> None:
    """Calls ``step`` ``count`` times."""
    for _ in range(count):
        step()


def recorded_steps(step: Callable[[], None], steps: int, save: str | None,
                   profiled: Callable[[Callable[[], None]], None]) -> None:
    """Inside one record() block: a warm-up step, then ``profiled`` around ``steps`` steps."""
    with vizgrad.record(save=save):
        step()
        profiled(partial(run_steps, step, steps))


def profile_python(step: Callable[[], None], steps: int, save: str | None, top: int) -> str:
    """cProfile of ``steps`` recorded steps: top functions by self time, then by cumulative time."""
    profiler = cProfile.Profile()

    def under_cprofile(profiled_steps: Callable[[], None]) -> None:
        profiler.enable()
        try:
            profiled_steps()
        finally:
            profiler.disable()

    recorded_steps(step, steps, save, under_cprofile)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    out.write(f"--- cProfile, {steps} recorded steps, by self time (tottime) ---\n")
    stats.sort_stats("tottime").print_stats(top)
    out.write(f"--- cProfile, {steps} recorded steps, by cumulative time ---\n")
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def profile_ops(step: Callable[[], None], steps: int, save: str | None, recorded: bool) -> profile:
    """torch.profiler (CPU) over ``steps`` steps, recorded or bare."""
    prof = profile(activities=[ProfilerActivity.CPU])

    def under_torch_profiler(profiled_steps: Callable[[], None]) -> None:
        with prof:
            profiled_steps()

    if recorded:
        recorded_steps(step, steps, save, under_torch_profiler)
    else:
        step()
        under_torch_profiler(partial(run_steps, step, steps))
    return prof


def main_callers(prof: profile) -> dict[str, str]:
    """Per op, the op it was called from that accounts for most of its self time ("Python": called from Python)."""
    weights: dict[str, Counter[str]] = defaultdict(Counter)
    for event in prof.events():
        caller = event.cpu_parent.name if event.cpu_parent is not None else "Python"
        weights[event.name][caller] += event.self_cpu_time_total
    return {name: callers.most_common(1)[0][0] for name, callers in weights.items()}


def extra_ops_table(bare: profile, recorded: profile, steps: int, top: int) -> str:
    """Per op: calls and self CPU ms per step, bare vs recorded, most extra self time first, and its main caller."""
    def per_op(prof: profile) -> dict[str, tuple[float, float]]:
        return {event.key: (event.count / steps, event.self_cpu_time_total / 1e3 / steps)
                for event in prof.key_averages()}

    bare_ops, recorded_ops = per_op(bare), per_op(recorded)
    callers = main_callers(recorded)
    rows = []
    for name in set(bare_ops) | set(recorded_ops):
        bare_calls, bare_ms = bare_ops.get(name, (0.0, 0.0))
        recorded_calls, recorded_ms = recorded_ops.get(name, (0.0, 0.0))
        rows.append((recorded_ms - bare_ms, name, bare_calls, recorded_calls, bare_ms, recorded_ms))
    rows.sort(reverse=True)
    bare_total = sum(ms for _, ms in bare_ops.values())
    recorded_total = sum(ms for _, ms in recorded_ops.values())
    lines = [f"--- torch.profiler, self CPU ms per step, recorded vs bare ({steps} steps each; "
             f"all ops: {bare_total:.2f} -> {recorded_total:.2f} ms) ---",
             f"{'op':<44}{'calls bare':>11}{'recorded':>10}{'ms bare':>10}{'recorded':>10}{'extra':>9}  "
             f"called from (recorded)"]
    for extra, name, bare_calls, recorded_calls, bare_ms, recorded_ms in rows[:top]:
        lines.append(f"{name[:43]:<44}{bare_calls:>11.1f}{recorded_calls:>10.1f}{bare_ms:>10.3f}{recorded_ms:>10.3f}"
                     f"{extra:>+9.3f}  {callers.get(name, '-')[:50]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Prints the profiles of one workload's recorded steps."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="ResNet-18-style",
                        help="workload: " + ", ".join(repr(workload.name) for workload in WORKLOADS))
    parser.add_argument("--steps", type=int, default=10, help="profiled steps")
    parser.add_argument("--top", type=int, default=25, help="rows per table")
    parser.add_argument("--save", action="store_true", help="record into a run file (record(save=path))")
    parser.add_argument("--only", choices=["cprofile", "torch"], help="run one profiler only")
    args = parser.parse_args(argv)
    try:
        [workload] = select([args.name])
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(1)
    step = workload.make()
    for _ in range(3):  # warm-up
        step()
    print(f"torch {torch.__version__}, vizgrad {vizgrad.__version__}; {workload.name}, {args.steps} steps, "
          f"{'record(save=run file)' if args.save else 'record()'}")
    with tempfile.TemporaryDirectory(prefix="vizgrad-profile-") as folder:
        def run_file(label: str) -> str | None:
            return str(Path(folder) / f"{label}.vizgrad") if args.save else None

        if args.only in (None, "cprofile"):
            print(profile_python(step, args.steps, run_file("cprofile"), args.top))
        if args.only in (None, "torch"):
            recorded = profile_ops(step, args.steps, run_file("torch"), recorded=True)
            print(f"--- torch.profiler, {args.steps} recorded steps, by self CPU time ---")
            print(recorded.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
            bare = profile_ops(step, args.steps, None, recorded=False)
            print(extra_ops_table(bare, recorded, args.steps, args.top))


if __name__ == "__main__":
    main()
