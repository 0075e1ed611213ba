"""Memory of long recordings: with ``save=``, steps stream to the run file instead of piling up in memory.

Two measurements of resident memory (RSS):

* the run file side at full scale: 10,000 steps of a 300-node graph appended
  to a recording run (``run.steps.append``, what the recorder calls per step);
* the whole recorder (capture + store) on the same graph, 10,000 recorded
  steps (about 80 s on a 2-core machine; ``VIZGRAD_MEMORY_STEPS`` sets fewer
  for a quick local run).

Keeping steps in memory would cost ~100 KB per step of this graph: about
900 MB between the checkpoints at step 1,000 and step 10,000.
"""

from __future__ import annotations

import gc
import os
import time

import pytest
import torch

import vizgrad
from vizgrad import store
from vizgrad.run import Step

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="measures RSS through /proc")

#: x * w, then CHAIN x (mul, add), then sum: 302 nodes with the root and the leaf.
CHAIN = 149
STORE_STEPS = 10_000
RECORDER_STEPS = int(os.environ.get("VIZGRAD_MEMORY_STEPS", "10000"))
#: Allowed RSS growth from the checkpoint (10% of the steps) to the end.
ALLOWED_GROWTH = 40 << 20


def _rss() -> int:
    """Resident set size of this process in bytes (Linux)."""
    gc.collect()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _chain_loss(w: torch.Tensor) -> torch.Tensor:
    h = torch.ones(4) * w
    for _ in range(CHAIN):
        h = h * 1.0001 + 0.001
    return h.sum()


def _train_step(w: torch.Tensor) -> None:
    _chain_loss(w).backward()
    with torch.no_grad():
        w -= 1e-6 * w.grad
    w.grad = None


def test_run_file_streams_10k_steps_of_a_300_node_graph(tmp_path):
    w = torch.randn(4, requires_grad=True)
    with vizgrad.record() as sample:
        _train_step(w)
    recorded = sample.steps[0]
    assert len(recorded.graph.nodes) >= 300
    run, run_store = store.open_for_recording(tmp_path / "long.vizgrad")
    rss_at = {}
    started = time.perf_counter()
    for index in range(STORE_STEPS):
        # The recorder makes a new step like this per backward(); sharing the
        # gradient tables keeps the test's own memory flat.
        run.steps.append(Step(index, recorded.loss + index, recorded.graph, table=recorded.table))
        if index + 1 in (STORE_STEPS // 10, STORE_STEPS):
            rss_at[index + 1] = _rss()
    run_store.close()
    elapsed = time.perf_counter() - started
    growth = rss_at[STORE_STEPS] - rss_at[STORE_STEPS // 10]
    print(f"\n{STORE_STEPS} steps appended in {elapsed:.1f} s; RSS grew {growth / 2**20:.1f} MiB "
          f"from step {STORE_STEPS // 10} to {STORE_STEPS}")
    assert growth < ALLOWED_GROWTH, f"memory grew by {growth >> 20} MiB while appending"

    # Reading back is lazy too: iterating every step holds a handful at a time.
    loaded = vizgrad.load(tmp_path / "long.vizgrad")
    before = _rss()
    total = 0.0
    for step in loaded.steps:
        total += step.summaries[("node", recorded.graph.roots[0], 0)].norm
    assert total == STORE_STEPS * recorded.summaries[("node", recorded.graph.roots[0], 0)].norm
    assert _rss() - before < ALLOWED_GROWTH
    assert len(loaded.steps) == STORE_STEPS
    assert loaded.steps[-1].loss == recorded.loss + STORE_STEPS - 1
    assert loaded.steps[5000].summaries == recorded.summaries


def test_recorder_memory_stays_bounded_with_save(tmp_path):
    path = tmp_path / "recorded.vizgrad"
    torch.manual_seed(0)
    w = torch.randn(4, requires_grad=True)
    checkpoint = max(RECORDER_STEPS // 10, 1)
    rss_at = {}
    started = time.perf_counter()
    with vizgrad.record(save=path) as run:
        for index in range(RECORDER_STEPS):
            _train_step(w)
            if index + 1 in (checkpoint, RECORDER_STEPS):
                rss_at[index + 1] = _rss()
    elapsed = time.perf_counter() - started
    growth = rss_at[RECORDER_STEPS] - rss_at[checkpoint]
    print(f"\n{RECORDER_STEPS} steps recorded in {elapsed:.1f} s; RSS grew {growth / 2**20:.1f} MiB "
          f"from step {checkpoint} to {RECORDER_STEPS}")
    assert len(run.steps[0].graph.nodes) >= 300
    assert growth < ALLOWED_GROWTH, f"memory grew by {growth >> 20} MiB from step {checkpoint} to {RECORDER_STEPS}"
    assert len(run.steps._recent) <= 8  # the run itself holds only a few recent steps

    loaded = vizgrad.load(path)
    assert len(loaded.steps) == RECORDER_STEPS
    assert loaded.losses() == run.losses()
    middle = RECORDER_STEPS // 2
    assert loaded.steps[middle].summaries == run.steps[middle].summaries
