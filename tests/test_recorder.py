"""Tests for vizgrad.recorder: steps, hooks that always go away, and numbers that never change."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import vizgrad
from vizgrad import recorder as recorder_module
from vizgrad import capture as capture_module
from vizgrad.capture import NodeCapture
from vizgrad.errors import RecordingError

ORIGINAL_BACKWARD = torch.autograd.backward
ORIGINAL_REGISTER_HOOK = torch.Tensor.register_hook


@pytest.fixture
def hook_calls(monkeypatch):
    """Counts calls of every hook the recorder registers on a backward node."""
    capture_module._fast_path_available()  # probe torch first: the probe's own hooks are not counted
    calls = {"n": 0}
    original_init = NodeCapture.__init__

    def counting_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        hook = self._hook

        def counted(grad_inputs, grad_outputs):
            calls["n"] += 1
            return hook(grad_inputs, grad_outputs)

        self._hook = counted

    monkeypatch.setattr(NodeCapture, "__init__", counting_init)
    return calls


def assert_restored():
    assert torch.autograd.backward is ORIGINAL_BACKWARD
    assert torch.Tensor.register_hook is ORIGINAL_REGISTER_HOOK
    assert not recorder_module._active
    with vizgrad.record():  # a new block can start: nothing is left active
        pass


# -- the seed loop and an MLP with Adam: bit-identical with and without recording -------------------
def seed_loop(steps: int, recording: bool) -> tuple[torch.Tensor, torch.Tensor, vizgrad.Run | None]:
    """The seed's autograd regression, with its ``requires_grad`` toggling and ``.grad.data`` updates."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8, 1, generator=generator) * 20
    y = x * 2 + 3
    w = torch.rand(1, 1, generator=generator, requires_grad=True)
    b = torch.zeros(1, 1, requires_grad=True)
    lr = 0.001
    run = None

    def train():
        for _ in range(steps):
            y_pred = x.mm(w) + b.expand_as(y)
            error = y_pred - y
            loss = error ** 2 / 8
            loss = loss.sum()
            loss.backward()
            w.requires_grad = False
            b.requires_grad = False
            w.sub_(lr * w.grad.data)
            b.sub_(lr * b.grad.data)
            w.requires_grad = True
            b.requires_grad = True
            w.grad.data.zero_()
            b.grad.data.zero_()

    if recording:
        with vizgrad.record({"w": w, "b": b}) as run:
            train()
    else:
        train()
    return w.detach().clone(), b.detach().clone(), run


def test_seed_loop_is_bit_identical_with_recording(hook_calls):
    w_bare, b_bare, _ = seed_loop(300, recording=False)
    w_rec, b_rec, run = seed_loop(300, recording=True)
    assert torch.equal(w_rec, w_bare) and torch.equal(b_rec, b_bare)
    assert len(run.steps) == 300
    assert abs(w_rec.item() - 2) < 0.1  # it did train
    # The step's parameter values are those backward() saw, before the update.
    assert run.steps[-1].param("w").item() != w_rec.item()
    assert run.steps[5].summaries.index is run.steps[6].summaries.index  # one key table for a loop's steps
    calls = hook_calls["n"]
    # Every step hooks 5 of the 9 backward nodes, whose hooks also report the other 4's gradients:
    # the nodes are newer than any hook registration, so no hook but vizgrad's can sit on them.
    assert calls == 300 * 5
    assert_restored()


def mlp_adam(steps: int, recording: bool) -> tuple[list[torch.Tensor], vizgrad.Run | None]:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, target = torch.randn(32, 6), torch.randint(0, 4, (32,))
    run = None

    def train():
        for _ in range(steps):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), target)
            loss.backward()
            optimizer.step()

    if recording:
        with vizgrad.record() as run:
            train()
    else:
        train()
    return [p.detach().clone() for p in model.parameters()], run


def test_mlp_with_adam_is_bit_identical_with_recording():
    bare, _ = mlp_adam(50, recording=False)
    recorded, run = mlp_adam(50, recording=True)
    assert all(torch.equal(a, b) for a, b in zip(recorded, bare))
    assert len(run.steps) == 50
    assert run.steps[-1].loss < run.steps[0].loss
    assert set(run.param_names()) == {"model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias"}
    assert_restored()


# -- hooks go away ------------------------------------------------------------------------------------
def test_hooks_are_removed_after_each_step_and_after_the_block(hook_calls):
    w = torch.randn(3, requires_grad=True)
    with vizgrad.record() as run:
        loss = (w.exp() * 2).sum()  # SumBackward0, MulBackward0, ExpBackward0, AccumulateGrad
        loss.backward(retain_graph=True)
        assert hook_calls["n"] == 2  # sum's and exp's hooks see every gradient
        loss.backward(retain_graph=True)
        assert hook_calls["n"] == 4  # not 6: the first step's hooks are gone
        assert run.steps[1].stats(run.steps[1].graph.node_of(w).id)["numel"] == 3
    assert len(run.steps) == 2
    assert_restored()
    loss.backward()  # the same graph, outside the block: no hook of ours fires
    assert hook_calls["n"] == 4
    torch.testing.assert_close(w.grad, 3 * 2 * w.exp().detach())


def test_hooks_removed_when_a_user_hook_raises(hook_calls):
    w = torch.randn(3, requires_grad=True)

    def boom(grad):
        raise ValueError("boom from a user hook")

    with vizgrad.record() as run:
        h = w * 2
        h.register_hook(boom)
        with pytest.raises(ValueError, match="boom"):
            h.sum().backward()
        assert run.steps == []  # the failed backward is not a step
        calls = hook_calls["n"]
        (w * 3).sum().backward()
        assert len(run.steps) == 1
        assert hook_calls["n"] == calls + 2  # only the new graph's hooks fire (sum and the accumulator)
    assert_restored()


def test_error_escaping_the_block_restores_backward():
    w = torch.randn(3, requires_grad=True)
    loss = (w * w).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        with vizgrad.record() as run:
            loss.backward()  # its saved tensors were freed by the first backward
    assert run.steps == []
    assert_restored()


def test_nested_records_both_see_every_step_and_restore_in_order():
    w = torch.randn(2, requires_grad=True)
    with vizgrad.record() as outer:
        (w * 2).sum().backward()
        with vizgrad.record() as inner:
            (w * 3).sum().backward()
        assert torch.autograd.backward is not ORIGINAL_BACKWARD
        (w * 4).sum().backward()
    assert len(outer.steps) == 3 and len(inner.steps) == 1
    assert inner.steps[0].graph == outer.steps[1].graph
    assert torch.equal(inner.steps[0].param_grad("w"), outer.steps[1].param_grad("w"))
    assert torch.equal(outer.steps[1].grad(outer.steps[1].graph.find("w").id), torch.full((2,), 3.0))
    assert_restored()


def test_records_ending_out_of_order_restore_torch_when_the_last_ends():
    """Defect 14: blocks that overlap and do not end in reverse order leave nothing patched."""
    w = torch.randn(2, requires_grad=True)
    first = vizgrad.recorder.Recorder()
    second = vizgrad.recorder.Recorder()
    first.start()
    second.start()
    (w * 2).sum().backward()
    first.stop()  # not the last one started: no error, torch stays wrapped for the other
    assert torch.autograd.backward is not ORIGINAL_BACKWARD
    (w * 3).sum().backward()
    second.stop()
    assert len(first.run.steps) == 1 and len(second.run.steps) == 2
    torch.testing.assert_close(second.run.steps[1].grad(second.run.steps[1].graph.find("w").id),
                               torch.full((2,), 3.0))
    assert isinstance(RecordingError("x"), RuntimeError) and isinstance(RecordingError("x"), vizgrad.VizgradError)
    assert_restored()


def test_threads_whose_blocks_overlap_and_end_in_any_order():
    """Defect 14, with threads: each block ends while the other runs; torch is restored after both."""
    import threading

    first_started, second_started, first_done = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []
    runs: dict[str, vizgrad.Run] = {}

    def first() -> None:
        try:
            with vizgrad.record() as run:
                first_started.set()
                second_started.wait(5)
            runs["first"] = run
        except BaseException as error:  # reported by the main thread
            errors.append(error)
        finally:
            first_done.set()

    def second() -> None:
        try:
            first_started.wait(5)
            with vizgrad.record() as run:
                second_started.set()
                first_done.wait(5)  # the first block ends while this one is still open
                w = torch.randn(3, requires_grad=True)
                (w * 2).sum().backward()
            runs["second"] = run
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors, errors
    assert len(runs["second"].steps) == 1 and len(runs["first"].steps) == 0
    assert_restored()


def test_backward_outside_any_block_is_untouched(hook_calls):
    w = torch.randn(2, requires_grad=True)
    (w * 2).sum().backward()
    assert hook_calls["n"] == 0
    assert_restored()


# -- steps --------------------------------------------------------------------------------------------
def test_run_backward_records_a_step():
    w = torch.randn(3, requires_grad=True)
    with vizgrad.record() as run:
        loss = (w ** 2).sum()
        run.backward(loss)
    assert len(run.steps) == 1
    torch.testing.assert_close(run.steps[0].grad_of(w), 2 * w.detach())
    torch.testing.assert_close(w.grad, 2 * w.detach())
    assert run.steps[0].loss == pytest.approx(loss.item())


def test_same_topology_shares_one_graph_and_steps_count_up():
    w = torch.randn(3, requires_grad=True)
    with vizgrad.record() as run:
        for i in range(3):
            (w * (i + 1)).sum().backward()
        (w.sin()).sum().backward()
    assert [s.index for s in run.steps] == [0, 1, 2, 3]
    assert run.steps[0].graph is run.steps[1].graph is run.steps[2].graph
    assert run.steps[3].graph.structural_hash != run.steps[0].graph.structural_hash
    assert len(run.graphs()) == 2
    assert [float(run.steps[i].grad_of(w)[0]) for i in range(1, 3)] == [2.0, 3.0]


def test_only_recent_steps_keep_live_tensors():
    w = torch.randn(3, requires_grad=True)
    kept = []
    with vizgrad.record(live_steps=2) as run:
        for _ in range(4):
            h = w * 2
            kept.append(h)
            h.sum().backward()
    with pytest.raises(LookupError, match="live tensors are gone"):
        run.steps[0].grad_of(kept[0])
    torch.testing.assert_close(run.steps[3].grad_of(kept[3]), torch.ones(3))
    root = run.steps[0].graph.roots[0]
    assert run.steps[0].grad(root) is not None  # kept values outlive the live tensors


def test_keep_limits_values_not_summaries():
    w = torch.randn(50, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    with vizgrad.record(keep=10) as run:
        for _ in range(2):  # the newest step holds every gradient; the one before keeps only small ones
            ((w * 2).sum() + (b * 3).sum()).backward()
    step = run.steps[0]
    w_node, b_node = step.graph.node_of(w), step.graph.node_of(b)
    assert step.grad(w_node.id) is None
    torch.testing.assert_close(run.steps[1].grad(w_node.id), torch.full((50,), 2.0))
    assert step.stats(w_node.id)["norm"] == pytest.approx(2 * 50 ** 0.5)
    assert step.stats(w_node.id)["numel"] == 50
    torch.testing.assert_close(step.grad(b_node.id), torch.full((3,), 3.0))


def test_recorded_values_are_copies():
    w = torch.randn(3, requires_grad=True)
    with vizgrad.record() as run:
        (w * 2).sum().backward()
        w.grad.zero_()  # in place, after the step
        with torch.no_grad():
            w.add_(100)
    step = run.steps[0]
    torch.testing.assert_close(step.param_grad("w"), torch.full((3,), 2.0))
    assert step.param("w").max() < 50


def test_deep_chain_is_recorded():
    leaf = torch.full((2,), 1.0, requires_grad=True)
    x = leaf
    for _ in range(20_000):
        x = x * 1.0001
    loss = x.sum()
    (expected,) = torch.autograd.grad(loss, leaf, retain_graph=True)
    start = time.perf_counter()
    with vizgrad.record({"leaf": leaf}) as run:
        loss.backward()
    seconds = time.perf_counter() - start
    print(f"recorded a 20,002-node chain in {seconds:.2f} s")
    step = run.steps[0]
    assert len(step.graph.nodes) == 20_003
    torch.testing.assert_close(step.grad_of(leaf), expected)
    node_grads = [key for key in step.summaries if key[0] == "node"]
    assert len(node_grads) == 20_003  # every node, the root included
    assert seconds < 20


def test_a_graph_found_by_structure_gets_the_shapes_of_its_step():
    """Steps of one structure with other shapes (a smaller last batch, a new dtype) show their own shapes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    batches = [torch.randn(8, 3), torch.randn(8, 3), torch.randn(5, 3), torch.randn(8, 3)]
    expected = []
    with vizgrad.record(model) as run:
        for x in batches:
            loss = model(x).pow(2).mean()
            expected.append(vizgrad.trace(loss, model.named_parameters()))
            loss.backward()
    assert [step.graph for step in run.steps] == expected
    assert run.steps[2].graph != run.steps[1].graph and run.steps[3].graph is run.steps[1].graph
    shapes = {node.shape for node in run.steps[2].graph.nodes if node.op == "TanhBackward0"}
    assert shapes == {(5, 4)}
    for step, x in zip(run.steps, batches):
        tanh = next(node for node in step.graph.nodes if node.op == "TanhBackward0")
        assert step.grad(tanh.id).shape == (len(x), 4)


def test_shapes_stay_right_when_steps_switch_back_and_forth():
    """Runs of steps with one shape, then another, then a dtype change: each step's graph fits its gradients."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    sizes = [8, 8, 8, 5, 5, 8, 8, 5, 8, 5, 5, 5]
    with vizgrad.record(model) as run:
        for size in sizes:
            model(torch.randn(size, 3)).pow(2).mean().backward()
        model.double()
        for size in (8, 8, 5):
            model(torch.randn(size, 3, dtype=torch.float64)).pow(2).mean().backward()
    for step, size in zip(run.steps, sizes + [8, 8, 5]):
        for node in step.graph.nodes:
            if node.op == "TanhBackward0":
                assert node.shape == (size, 4) and step.grad(node.id).shape == (size, 4)
                assert node.dtype == str(step.grad(node.id).dtype).removeprefix("torch.")


def _programs():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    cell = nn.LSTMCell(3, 5)
    x = torch.randn(6, 4, requires_grad=True)
    sequence = torch.randn(4, 2, 3)

    def lstm():
        h = c = torch.zeros(2, 5)
        for item in sequence:
            h, c = cell(item, (h, c))
        return (h * c).sum()

    def split():
        a, b, c = (x * 3).split([1, 2, 1], dim=1)
        return (a.exp() * b.sum(1, keepdim=True) + c).pow(2).mean()

    return {"mlp": lambda: nn.functional.cross_entropy(mlp(x), torch.tensor([0, 1, 2, 0, 1, 2])),
            "lstm": lstm, "split": split}


@pytest.mark.parametrize("keep", [None, 4])
@pytest.mark.parametrize("program", ["mlp", "lstm", "split"])
def test_unhooked_nodes_get_the_gradients_a_hook_would_have_seen(program, keep, monkeypatch):
    """Second steps (a recorder's first hooks every node), recorded lean and with every node hooked, agree."""
    forward = _programs()[program]
    with vizgrad.record(keep=keep) as lean:
        forward().backward()
        forward().backward()
    layout = recorder_module._GraphPlan(lean.steps[1].graph)
    assert 0 < layout.hooked.count(False) < len(layout.hooked)  # some nodes were left unhooked
    if program == "lstm":  # the weights' transposes, shared by the loop's steps: views made each step
        assert len(layout.transposed) == 8
    monkeypatch.setattr(recorder_module, "_unhooked_nodes", lambda graph, traversed: ({}, []))
    with vizgrad.record(keep=keep) as full:
        forward().backward()
        forward().backward()
    lean_step, full_step = lean.steps[1], full.steps[1]
    assert lean_step.graph == full_step.graph
    drawn = {("edge", edge.src, edge.slot) for edge in full_step.graph.edges}
    expected = {key for key in full_step.summaries if key[0] != "edge" or key in drawn}
    assert expected <= set(lean_step.summaries)
    for key in expected:
        # The same tensor may be reduced in another batch (a block here, a flat run there): equal to rounding.
        assert tuple(lean_step.summaries[key]) == pytest.approx(tuple(full_step.summaries[key]), rel=1e-6), key
        assert (key in lean_step.values) == (key in full_step.values), key
        if key in full_step.values:
            assert torch.equal(lean_step.values[key], full_step.values[key]), key


def test_a_multi_output_op_whose_first_output_is_unused():
    """split() with its first piece unused: nothing flows into output 0, on every step."""
    torch.manual_seed(0)
    x = torch.randn(6, 4, requires_grad=True)
    with vizgrad.record({"x": x}, keep=None) as run:
        for _ in range(3):
            _, b = (x * 2).split([2, 4])
            (b.sin() * 3).sum().backward()
    for count, step in enumerate(run.steps, 1):
        split = next(node for node in step.graph.nodes if node.op == "SplitWithSizesBackward0")
        assert step.grad(split.id, 0) is None
        torch.testing.assert_close(step.grad(split.id, 1), 3 * (2 * x[2:]).cos().detach())
        torch.testing.assert_close(step.param_grad("x"), x.grad * count / 3)  # .grad accumulates


def test_an_unused_first_output_when_shapes_change():
    w = torch.randn(1, 6, requires_grad=True)
    with vizgrad.record({"w": w}, keep=None) as run:
        for rows in (3, 3, 5, 3):
            _, b = (torch.randn(rows, 6) * w).split([2, 4], dim=1)
            (b.sin() * 3).sum().backward()
    for step, rows in zip(run.steps, (3, 3, 5, 3)):
        split = next(node for node in step.graph.nodes if node.op == "SplitWithSizesBackward0")
        assert split.shape == (rows, 2) and step.grad(split.id, 0) is None
        assert step.grad(split.id, 1).shape == (rows, 4)


def test_tensor_hooks_that_change_gradients_are_seen_where_they_act():
    """A hook on an intermediate (and on a parameter) changes what its node receives, not what was sent to it."""
    torch.manual_seed(0)
    w = torch.randn(5, requires_grad=True)
    w.register_hook(lambda grad: grad * 10)  # before the block, on a leaf
    with vizgrad.record({"w": w}, keep=None) as run:
        for _ in range(3):
            a = w * 2
            h = a.sin()
            h.register_hook(lambda grad: grad * 3)
            loss = (h * h.detach() + a.exp()).sum()
            # autograd.grad reports h's gradient as computed, before h's hook (the node runs on it
            # later); a's gradient is what a received, built from the hooked one.
            sent, want_a = torch.autograd.grad(loss, [h, a], retain_graph=True)
            loss.backward()
            step = run.steps[-1]
            sin = step.graph.node_of(h).id
            edge_into_sin = next(e for e in step.graph.edges if e.dst == sin)
            torch.testing.assert_close(step.edge_grad(edge_into_sin.src, edge_into_sin.slot), sent)
            torch.testing.assert_close(step.grad_of(h), 3 * sent)  # what the sin node received and used
            torch.testing.assert_close(step.grad_of(a), want_a)
            torch.testing.assert_close(step.grad(step.graph.node_of(w).id), w.grad / len(run.steps))


def test_shared_weight_transposes_on_a_step_where_some_nodes_do_not_run():
    """A weight used three times through ``w.t()``: its transposes' gradients add up to w's, fast path or not."""
    torch.manual_seed(0)
    w = torch.randn(3, 3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    x = torch.randn(2, 3)

    def forward():
        h = x
        for _ in range(3):
            h = torch.tanh(h @ w.t() + b)
        return h.sum()

    with vizgrad.record({"w": w, "b": b}, keep=None) as run:
        for inputs in (None, None, [w], None):  # the third step leaves b's part of the graph out
            loss = forward()
            (want_w,) = torch.autograd.grad(loss, [w], retain_graph=True)
            loss.backward(inputs=inputs)
            step = run.steps[-1]
            transposes = [node for node in step.graph.nodes if node.op == "TBackward0"]
            assert len(transposes) == 3
            torch.testing.assert_close(sum(step.edge_grad(node.id, 0) for node in transposes), want_w)
            for node in transposes:
                torch.testing.assert_close(step.edge_grad(node.id, 0), step.grad(node.id).t())
    assert run.steps[2].param_grad("b") is not None  # .grad from the earlier steps
