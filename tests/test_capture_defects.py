"""Regression tests of recording defects found by using vizgrad on real programs (issue 8), each against an oracle."""

from __future__ import annotations

import gc
import threading
import tracemalloc
import warnings

import pytest
import torch
from torch import nn

import vizgrad
from vizgrad import recorder as recorder_module
from vizgrad.errors import RecordingWarning, UsageError
from vizgrad.gradtable import NotKeptError


# -- wrong numbers ---------------------------------------------------------------------------------------------
def test_grad_variables_is_the_seed_as_torch_reads_it():
    """Defect 1: the deprecated ``grad_variables=`` seeds the backward with or without recording."""
    def run(recording: bool) -> tuple[torch.Tensor, vizgrad.Run | None]:
        w = torch.ones(3, requires_grad=True)
        seed = torch.tensor([1.0, 2.0, 3.0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's deprecation notice
            if recording:
                with vizgrad.record({"w": w}) as recorded:
                    torch.autograd.backward(w * 5, grad_variables=seed)
                return w.grad, recorded
            torch.autograd.backward(w * 5, grad_variables=seed)
        return w.grad, None

    bare, _ = run(False)
    recorded, run_ = run(True)
    torch.testing.assert_close(recorded, bare)
    torch.testing.assert_close(recorded, torch.tensor([5.0, 10.0, 15.0]))
    step = run_.steps[0]
    root_edge = next(edge for edge in step.graph.edges if edge.kind == "root")
    torch.testing.assert_close(step.edge_grad(root_edge.src, root_edge.slot), torch.tensor([1.0, 2.0, 3.0]))


def _shared_encoder(register_before_block: bool):
    """A shared encoder with two heads over one retained graph; ``h`` scales its gradient by 10."""
    torch.manual_seed(0)
    w = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(2, 4)
    h = torch.tanh(x @ w)
    heads = [(h.sin() * 2).sum(), (h.cos() * 3).sum()]
    return w, h, heads


@pytest.mark.parametrize("when", ["before the block", "before its first step", "between steps"])
def test_a_hook_that_changes_gradients_is_seen_whenever_it_was_registered(when):
    """Defect 2: a tensor hook on a non-leaf changes what its node receives, on every step of a reused graph."""
    w, h, heads = _shared_encoder(True)
    sent = [torch.autograd.grad(head, h, retain_graph=True)[0] for head in heads]
    if when == "before the block":
        h.register_hook(lambda grad: grad * 10)
    with vizgrad.record({"w": w}) as run:
        if when == "before its first step":
            h.register_hook(lambda grad: grad * 10)
        for k in range(4):
            if when == "between steps" and k == 1:
                h.register_hook(lambda grad: grad * 10)
            heads[k % 2].backward(retain_graph=True)
    scaled = 10 if when != "between steps" else None
    for k, step in enumerate(run.steps):
        factor = scaled or (1 if k == 0 else 10)
        tanh = next(node for node in step.graph.nodes if node.op == "TanhBackward0")
        torch.testing.assert_close(step.grad(tanh.id), factor * sent[k % 2], msg=f"step {k}")


def test_an_unhooked_transpose_whose_size_crosses_keep_still_has_its_gradient():
    """Defect 5: a transpose left unhooked keeps its edge's gradient when shapes change between steps."""
    torch.manual_seed(0)
    w = torch.randn(8, 8, requires_grad=True)
    with vizgrad.record(keep=64) as run:
        for rows in (40, 40, 4, 40, 4, 4):  # h.t()'s gradient (rows x 8) crosses keep=64 as the batch changes
            x, y = torch.randn(rows, 8), torch.randn(rows, 3)
            h = x @ w
            loss = (h.t() @ y).pow(2).sum()
            want = torch.autograd.grad(loss, w, retain_graph=True)[0]
            loss.backward()
            step = run.steps[-1]
            for edge in step.graph.edges:
                if edge.kind in ("grad", "root"):
                    assert step.edge_stats(edge.src, edge.slot) is not None, (rows, edge)
            leaf = step.graph.node_of(w)
            assert step.stats(leaf.id)["norm"] == pytest.approx(float(want.norm()), rel=1e-5)


# -- lost or corrupted data --------------------------------------------------------------------------------------
def test_returned_values_are_copies_that_cannot_change_the_record():
    """Defect 7: ``g /= g.norm()`` on a returned gradient leaves the record (and its summary) as it was."""
    w = torch.randn(5, requires_grad=True)
    h = w * 3
    with vizgrad.record({"w": w}) as run:
        (h * 2).sum().backward()
    step = run.steps[0]
    node = step.graph.node_of(h).id
    for get in (lambda: step.grad(node), lambda: step.grad_of(h), lambda: step.param("w"),
                lambda: step.param_grad("w"), lambda: step.values[("node", node, 0)]):
        before = get().clone()
        value = get()
        value /= value.norm()
        torch.testing.assert_close(get(), before)
    assert step.stats(node)["norm"] == pytest.approx(float(torch.full((5,), 2.0).norm()))


def test_two_threads_calling_backward_in_one_block_lose_no_step():
    """Defect 8: concurrent ``backward()`` calls from two threads are each one step, each right."""
    torch.manual_seed(0)
    barrier = threading.Barrier(2)
    wants: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    models = [nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1)) for _ in range(2)]
    errors: list[BaseException] = []

    def train(k: int) -> None:
        try:
            barrier.wait(5)
            for _ in range(20):
                x = torch.randn(16, 8)
                loss = models[k](x).pow(2).mean()
                wants[k].append(torch.autograd.grad(loss, models[k][0].weight, retain_graph=True)[0])
                loss.backward()
                models[k].zero_grad()
        except BaseException as error:
            errors.append(error)

    params = {f"m{k}.{name}": p for k, model in enumerate(models) for name, p in model.named_parameters()}
    with vizgrad.record(params, keep=None) as run:
        threads = [threading.Thread(target=train, args=(k,)) for k in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert not errors, errors
    assert len(run.steps) == 40
    assert [step.index for step in run.steps] == list(range(40))
    found = {0: [], 1: []}
    for step in run.steps:
        names = set(step.params)
        k = 0 if "m0.0.weight" in names else 1
        found[k].append(step.param_grad(f"m{k}.0.weight"))
    for k in (0, 1):
        assert len(found[k]) == 20
        for got, want in zip(found[k], wants[k]):
            torch.testing.assert_close(got, want)


def test_grad_of_returns_full_values_on_the_newest_step_and_says_why_when_it_cannot():
    """Defect 10: full gradients while a step is newest; a clear error where only a summary is left."""
    torch.manual_seed(0)
    w = torch.randn(300, requires_grad=True)
    big_w = torch.randn(100_000, requires_grad=True)
    with vizgrad.record({"w": w, "big_w": big_w}, keep=64) as run:
        h = w * 3
        big = big_w * 2
        loss = (h.sin().sum() + big.sum()) * 2
        want = torch.autograd.grad(loss, h, retain_graph=True)[0]
        loss.backward()
        first = run.steps[0]
        torch.testing.assert_close(first.grad_of(h), want)  # 300 elements > keep, held by the newest step
        with pytest.raises(NotKeptError, match=r"100,000 elements.*hold=65536.*record\(keep=None\)"):
            first.grad_of(big)  # bigger than hold: summarised as it flowed
        assert first.stats(first.graph.node_of(big).id)["norm"] == pytest.approx(2 * 100_000 ** 0.5, rel=1e-6)
        (w * 5).sum().backward()  # a newer step: the first releases its full values
    assert run.steps[0].table.holding is False and run.steps[1].table.holding is True
    with pytest.raises(NotKeptError, match="no longer the newest step"):
        run.steps[0].grad_of(h)
    assert isinstance(NotKeptError("x"), LookupError)


def test_grad_of_is_none_only_where_no_gradient_flowed():
    x = torch.randn(6, 4, requires_grad=True)
    with vizgrad.record({"x": x}) as run:
        a, b = (x * 2).split([2, 4])
        loss = (b.sin() * 3).sum()
        loss.backward()
    step = run.steps[0]
    assert step.grad_of(a) is None  # nothing flowed into the unused piece
    torch.testing.assert_close(step.grad_of(b), 3 * b.detach().cos())


# -- crashes and hangs ---------------------------------------------------------------------------------------------
def test_a_channels_last_cnn_records_right():
    """Defect 11: channels_last gradients no longer break the block reducer inside backward()."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).to(
        memory_format=torch.channels_last)
    images = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecordingWarning)
        with vizgrad.record(model) as run:
            for _ in range(10):  # eight or more tensors of one shape form a block
                out = model(images)
                want = torch.autograd.grad(out.pow(2).sum(), out, retain_graph=True)[0]
                out.pow(2).sum().backward()
    step = run.steps[-1]
    node = step.graph.node_of(out).id
    assert step.stats(node)["norm"] == pytest.approx(float(want.norm()), rel=1e-5)
    torch.testing.assert_close(step.grad_of(out), want)


def test_an_internal_error_records_the_step_as_far_as_possible_and_warns(monkeypatch):
    """Defect 11: recording never raises inside the user's backward(); a warning says what happened."""
    w = torch.randn(4, requires_grad=True)

    def broken(*args, **kwargs):
        raise RuntimeError("view size is not compatible (simulated)")

    monkeypatch.setattr(recorder_module, "summarize_distinct", broken)
    with vizgrad.record({"w": w}) as run:
        with pytest.warns(RecordingWarning, match="recorded as far as possible"):
            (w * 3).sum().backward()
    torch.testing.assert_close(w.grad, torch.full((4,), 3.0))
    step = run.steps[0]
    assert step.loss == pytest.approx(float((w * 3).sum()))
    assert step.stats(step.graph.node_of(w).id)["norm"] == pytest.approx(float(torch.full((4,), 3.0).norm()))


def test_bad_record_arguments_fail_at_record():
    """Defect 16: bad arguments are refused before any backward(), with what to pass instead."""
    for kwargs, error, fragment in [({"live_steps": -1}, UsageError, "must not be negative"),
                                    ({"keep": "64"}, TypeError, "whole number >= 0 or None"),
                                    ({"live_steps": None}, TypeError, "whole number >= 0"),
                                    ({"keep": True}, TypeError, "whole number"),
                                    ({"hold": -5}, UsageError, "must not be negative"),
                                    ({"saved": "yes"}, TypeError, "True or False"),
                                    ({"on_step": print}, TypeError, "list of callables"),
                                    ({"params": 5}, TypeError, "params must map names to tensors")]:
        with pytest.raises(error, match=fragment):
            with vizgrad.record(**kwargs):
                pytest.fail("the block must not start")
    assert torch.autograd.backward is recorder_module._patches.original_backward()


# -- leaks ---------------------------------------------------------------------------------------------------------
def test_a_topology_that_changes_every_step_keeps_the_heap_bounded(tmp_path):
    """Defect 17: per-graph caches are bounded; a new topology every step does not grow the heap step by step."""
    generator = torch.Generator().manual_seed(0)
    cell = nn.RNNCell(4, 8)
    activations = [torch.tanh, torch.sigmoid, torch.relu, torch.sin]

    def step() -> None:  # 20 time steps, each with one of four activations: a topology never seen before
        h = torch.zeros(1, 8)
        for x in torch.randn(20, 1, 4, generator=generator):
            choice = int(torch.randint(len(activations), (1,), generator=generator))
            h = activations[choice](cell(x, h))
        h.sum().backward()

    tracemalloc.start()  # from the start: frees of blocks made before it would not count
    try:
        with vizgrad.record(save=tmp_path / "run.vizgrad", live_steps=1) as run:
            for _ in range(80):  # warm-up: fill every cache to its bound (64 graphs at most)
                step()
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(120):
                step()
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(run.steps) == 200
    assert grown / 120 < 4 * 1024, f"{grown / 120:.0f} bytes per step"


def test_live_tensors_belong_to_the_step_not_the_shared_graph():
    """Defect 18: ``live_steps=0`` holds no backward node; a live step's graph finds its own tensors."""
    import weakref

    w = torch.randn(3, requires_grad=True)
    with vizgrad.record({"w": w}) as run:  # default live_steps: several live steps share one graph
        h = w * 2
        h.sum().backward()
        h0, h = h, w * 2  # one variable names the node on both steps, so they share one graph
        h.sum().backward()
        h1 = h
    assert run.steps[0].graph is run.steps[1].graph
    assert run.steps[0].graph.node_of(h0).id == run.steps[0].graph.node_of(h1).id
    def lean_step() -> tuple[vizgrad.Run, weakref.ref]:
        # In a function of its own: its frame, whose variables vizgrad reads for names, ends with it.
        with vizgrad.record({"w": w}, live_steps=0) as lean:
            saved = torch.randn(3)
            h = w * saved  # the multiplication saves ``saved`` for backward
            h.sum().backward(retain_graph=True)
        return lean, weakref.ref(saved)

    lean, alive = lean_step()
    gc.collect()
    assert alive() is None  # nothing of vizgrad's keeps the step's backward nodes (or saved tensors) alive
    assert not lean.steps[0].live


# -- found in review: leaves, threads, late steps ----------------------------------------------------------------
def test_a_leafs_recorded_gradient_does_not_follow_later_changes_to_grad():
    """Leaves are hooked before accumulating: what is recorded is copied, so .grad's in-place changes stay out."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 100), nn.Tanh(), nn.Linear(100, 1))
    def zero_in_place(parameter: torch.Tensor) -> None:  # optimizer-in-backward style
        parameter.grad.mul_(0.0)

    model[0].weight.register_post_accumulate_grad_hook(zero_in_place)
    x = torch.randn(32, 100)
    want = torch.autograd.grad(model(x).pow(2).mean(), model[0].weight)[0]
    with vizgrad.record(model) as run:
        model(x).pow(2).mean().backward()
    step = run.steps[-1]
    weight = model[0].weight
    assert weight.grad.abs().max() == 0  # the post-accumulate hook did run
    node = step.graph.node_of(weight).id
    assert step.stats(node)["norm"] == pytest.approx(float(want.norm()), rel=1e-5)
    torch.testing.assert_close(step.grad_of(weight), want)
    weight.grad.add_(7.0)
    torch.testing.assert_close(step.grad_of(weight), want)  # the newest step's held value is its own
    assert step.table.summary(("param_grad", "0.weight")).norm == 0.0  # .grad as backward() left it


def test_a_big_parameters_grad_shares_its_leafs_summary_only_while_it_is_that_gradient(monkeypatch):
    """The .grad that AccumulateGrad took over from a big leaf gradient is summarised once (with its exact zeros);
    an accumulated, rewritten or replaced .grad is summarised as it is."""
    from vizgrad import stats

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(400, 300), nn.ReLU(), nn.Linear(300, 1))  # the weight: 120,000 elements
    with torch.no_grad():
        model[0].bias[:100] = -100.0  # 100 dead units: 40,000 exact zeros in the weight's gradient
    weight = model[0].weight
    x = torch.randn(16, 400)
    want = torch.autograd.grad(model(x).pow(2).mean(), weight)[0]
    sweeps: list[int] = []
    sweep = stats._cpu_sums
    monkeypatch.setattr(stats, "_cpu_sums", lambda flat, zeros=False: sweeps.append(flat.numel()) or sweep(flat, zeros))
    def rewrite(p: torch.Tensor) -> None:
        p.grad.mul_(2.0)

    def replace(p: torch.Tensor) -> None:
        p.grad = p.grad * 3.0

    cases = {"taken": (1.0, None), "accumulated": (2.0, None), "rewritten": (2.0, rewrite), "replaced": (3.0, replace)}
    with vizgrad.record(model) as run:
        for case, (factor, hook) in cases.items():
            if case != "accumulated":
                model.zero_grad()  # .grad None: AccumulateGrad takes the incoming tensor over
            handle = weight.register_post_accumulate_grad_hook(hook) if hook is not None else None
            sweeps.clear()
            model(x).pow(2).mean().backward()
            if handle is not None:
                handle.remove()
            step = run.steps[-1]
            leaf = step.graph.node_of(weight).id
            assert step.stats(leaf)["norm"] == pytest.approx(float(want.norm()), rel=1e-5), case  # what flowed
            grad = step.table.summary(("param_grad", "0.weight"))
            assert grad.norm == pytest.approx(float(weight.grad.norm()), rel=1e-5), case
            assert grad.norm == pytest.approx(factor * float(want.norm()), rel=1e-5), case
            assert grad.abs == pytest.approx(float(weight.grad.abs().mean()), rel=1e-5), case
            assert step.checks["zeros"]["0.weight"] == int((weight.grad == 0).sum()) == 40_000, case
            # The weight's sweeps: its value, and its gradient once when .grad is that gradient, else twice.
            assert sweeps.count(weight.numel()) == (2 if case == "taken" else 3), case


def test_a_pre_hook_on_a_leaf_registered_inside_the_block_is_seen():
    torch.manual_seed(0)
    w = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(3, 4)
    accumulator = (w * 1).grad_fn.next_functions[0][0]
    with vizgrad.record({"w": w}) as run:
        accumulator.register_prehook(lambda grads: (grads[0] * 100.0,))
        for _ in range(2):
            w.grad = None
            loss = (x @ w).tanh().sum()
            sent = torch.autograd.grad(loss, w, retain_graph=True)[0]  # before the leaf's hook
            loss.backward()
    step = run.steps[-1]
    torch.testing.assert_close(step.grad_of(w), w.grad)  # what the leaf received and accumulated
    torch.testing.assert_close(w.grad, 100 * sent)
    edge = next(edge for edge in step.graph.edges if edge.dst == step.graph.node_of(w).id)
    torch.testing.assert_close(step.edge_grad(edge.src, edge.slot), sent)  # what was sent, before the hook


@pytest.mark.parametrize("when", ["before the block", "inside the block"])
def test_a_hook_on_a_graph_built_in_another_thread_is_seen(when):
    """Sequence numbers are per thread: a graph made elsewhere is hooked in full."""
    torch.manual_seed(0)
    for _ in range(500):  # this thread's own autograd history
        torch.ones(1, requires_grad=True) * 2
    w = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(4, 4)
    made: dict[str, torch.Tensor] = {}

    def forward() -> None:
        for _ in range(2000):
            torch.ones(1, requires_grad=True) * 2
        made["z"] = (x @ w).tanh() * 3.0
        if when == "before the block":
            made["z"].register_hook(lambda grad: grad * 100.0)

    thread = threading.Thread(target=forward)
    thread.start()
    thread.join()
    with vizgrad.record({"w": w}) as run:
        if when == "inside the block":
            made["z"].register_hook(lambda grad: grad * 100.0)
        made["z"].sum().backward()
    step = run.steps[-1]
    torch.testing.assert_close(step.grad_of(made["z"]), torch.full((4, 4), 100.0))


def test_threads_sharing_a_model_record_their_own_gradients():
    """A leaf shared by two concurrent backward() calls: each step keeps its own graph's firing."""
    torch.manual_seed(0)
    model = nn.Linear(16, 4)
    inputs = {0: torch.randn(8, 16), 1: torch.randn(8, 16) * 10}
    truth = {k: torch.autograd.grad(model(inputs[k]).sum(), model.weight)[0] for k in (0, 1)}
    losses = {k: float(model(inputs[k]).sum().detach()) for k in (0, 1)}
    barrier = threading.Barrier(2)

    def train(k: int) -> None:
        barrier.wait(5)
        for _ in range(150):
            model(inputs[k]).sum().backward()

    with vizgrad.record(model) as run:
        threads = [threading.Thread(target=train, args=(k,)) for k in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert len(run.steps) == 300
    for step in run.steps:
        k = 0 if abs(step.loss - losses[0]) < abs(step.loss - losses[1]) else 1
        leaf = next(node.id for node in step.graph.nodes if node.name == "weight")
        assert step.stats(leaf)["norm"] == pytest.approx(float(truth[k].norm()), rel=1e-5), step.index


def test_a_step_that_ends_after_its_save_block_warns_instead_of_raising(tmp_path):
    """Another thread's backward() finishing after the block closed its run file."""
    w = torch.randn(8, requires_grad=True)
    started, closed = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    caught: list[warnings.WarningMessage] = []

    def slow(grad: torch.Tensor) -> torch.Tensor:
        started.set()
        closed.wait(5)  # the block ends while this backward() is in flight
        return grad

    def worker() -> None:
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                h = w * 2
                h.register_hook(slow)
                h.sum().backward()
            caught.extend(seen)
        except BaseException as error:
            errors.append(error)

    with vizgrad.record(save=tmp_path / "run.vizgrad") as run:
        thread = threading.Thread(target=worker)
        thread.start()
        started.wait(5)
    closed.set()
    thread.join(10)
    assert not errors, errors
    assert any(issubclass(w.category, RecordingWarning) and "could not keep step" in str(w.message) for w in caught)
    torch.testing.assert_close(w.grad, torch.full((8,), 2.0))
    assert len(run.steps) == 0


def test_blocks_opening_and_closing_while_another_thread_trains_leave_torch_as_it_was():
    """The patches and a capture's swap of torch's hook registration never interleave."""
    from torch.autograd import function as torch_function

    original_register = torch_function._HookMixin._register_hook
    stop = threading.Event()
    w = torch.randn(8, requires_grad=True)

    def train() -> None:
        while not stop.is_set():
            h = w
            for _ in range(200):
                h = h * 1.0001
            h.sum().backward()

    thread = threading.Thread(target=train)
    thread.start()
    try:
        for _ in range(150):
            with vizgrad.record({"w": w}):
                pass
    finally:
        stop.set()
        thread.join(30)
    assert torch_function._HookMixin._register_hook is original_register
    assert torch.autograd.backward is recorder_module._patches.original_backward()
