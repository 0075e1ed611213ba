"""Tests for vizgrad.naming: names for leaves and intermediates, inferred from the calling code or given."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vizgrad
from vizgrad import naming

GLOBAL_WEIGHT = torch.ones(2, requires_grad=True)


def leaf_names(graph: vizgrad.Graph) -> set[str | None]:
    return {n.name for n in graph.nodes if n.kind == "leaf"}


def test_leaf_names_from_local_variables():
    w = torch.randn(1, 1, requires_grad=True)
    b = torch.zeros(1, 1, requires_grad=True)
    x = torch.randn(8, 1)
    y_pred = x.mm(w) + b.expand(8, 1)
    loss = y_pred.pow(2).sum()
    graph = vizgrad.trace(loss)
    assert graph.node_of(w).name == "w" and graph.node_of(b).name == "b"
    assert graph.node_of(y_pred).name == "y_pred"  # intermediates are named by their variables
    assert graph.node(graph.roots[0]).name == "loss"


def test_module_parameter_paths_from_a_sequential_in_scope():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    first_weight = model[0].weight  # a variable too: the module path wins
    loss = model(torch.randn(2, 3)).sum()
    graph = vizgrad.trace(loss)
    assert leaf_names(graph) == {"model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias"}
    assert graph.node_of(first_weight).name == "model.0.weight"


def test_module_parameter_paths_when_recording():
    model = nn.Sequential(nn.Linear(3, 2))
    with vizgrad.record() as run:
        model(torch.randn(4, 3)).pow(2).mean().backward()
    assert set(run.steps[0].params) == {"model.0.weight", "model.0.bias"}
    torch.testing.assert_close(run.steps[0].param_grad("model.0.weight"), model[0].weight.grad)


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 1)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale

    def trace_step(self, x: torch.Tensor) -> vizgrad.Graph:
        loss = self(x).sum()
        return vizgrad.trace(loss)

    def record_step(self, x: torch.Tensor) -> vizgrad.Run:
        with vizgrad.record() as run:
            self(x).sum().backward()
        return run


def test_self_contributes_unprefixed_paths():
    net = Regressor()
    graph = net.trace_step(torch.randn(2, 3))
    assert leaf_names(graph) == {"fc.weight", "fc.bias", "scale"}
    run = net.record_step(torch.randn(2, 3))
    assert set(run.steps[0].params) == {"fc.weight", "fc.bias", "scale"}


def test_explicit_params_win_over_inferred_names():
    w = torch.randn(3, requires_grad=True)
    model = nn.Linear(3, 1)
    loss = (model(w) * 2).sum()
    graph = vizgrad.trace(loss, params={"weight_vector": w})
    assert graph.node_of(w).name == "weight_vector"
    assert graph.node_of(model.weight).name is None  # explicit names replace inference entirely
    graph = vizgrad.trace(loss, params=model.named_parameters())
    assert graph.node_of(model.weight).name == "weight"
    with vizgrad.record(params={"weight_vector": w}) as run:
        loss.backward()
    assert run.steps[0].params == ["weight_vector"]
    with vizgrad.record(params=model) as run:
        model(w).sum().backward()
    assert set(run.steps[0].params) == {"weight", "bias"}


def test_names_from_globals_and_private_names_skipped():
    _hidden = torch.randn(2, requires_grad=True)
    graph = vizgrad.trace((GLOBAL_WEIGHT * _hidden).sum())
    assert graph.node_of(GLOBAL_WEIGHT).name == "GLOBAL_WEIGHT"
    assert graph.node_of(_hidden).name is None


def test_nearest_user_frame_is_used_from_a_helper():
    def helper(tensor):
        inner_name = tensor  # noqa: F841 (the helper's variable names the leaf)
        return vizgrad.trace((tensor * 2).sum())

    v = torch.randn(2, requires_grad=True)
    assert helper(v).node_of(v).name == "tensor"


def test_split_pieces_name_the_node_by_the_first_piece():
    x = torch.randn(4, requires_grad=True)
    first, second = (x * 1).split(2)
    graph = vizgrad.trace((first * second).sum())
    assert graph.node_of(second).name == "first"


def test_explicit_names_validates_its_input():
    w = torch.ones(1)
    assert naming.explicit_names({"w": w}) == {id(w): "w"}
    assert naming.explicit_names([("w", w)]) == {id(w): "w"}
    with pytest.raises(TypeError, match="params must map names to tensors"):
        naming.explicit_names([w])
    with pytest.raises(TypeError, match=r"params\['w'\] is a int"):
        naming.explicit_names({"w": 3})


def test_caller_scope_says_which_frame_holds_each_name():
    def inner():
        local_only = 1  # noqa: F841
        return naming.caller_scope()

    outer_only = 2  # noqa: F841
    scope = inner()
    assert scope[0] == ("local_only", 1, "inner")  # nearest first
    where = {b.name: b.where for b in scope if b.name in ("local_only", "outer_only", "GLOBAL_WEIGHT")}
    assert where == {"local_only": "inner", "outer_only": "test_caller_scope_says_which_frame_holds_each_name",
                     "GLOBAL_WEIGHT": __name__}


# -- distinct leaves under one name (defect 9) --------------------------------------------

offset = torch.full((2,), 10.0, requires_grad=True)  # a global that a test shadows with a local ``offset``


def _times_global_offset(x: torch.Tensor) -> torch.Tensor:
    """``x`` times the global ``offset``."""
    return x * offset


def _train_local_w(others: list[torch.Tensor], steps: int) -> tuple[vizgrad.Run, list[tuple[torch.Tensor, ...]]]:
    """Fits a local ``w`` with the caller's tensor (``others[0]``: no name in this frame)."""
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    seen = []  # (w, w.grad, other, other.grad) of each step, as backward() left them
    with vizgrad.record() as run:
        for _ in range(steps):
            (w * others[0]).pow(2).sum().backward()
            seen.append(tuple(t.detach().clone() for t in (w, w.grad, others[0], others[0].grad)))
            with torch.no_grad():
                w -= 0.1 * w.grad
                others[0] -= 0.1 * others[0].grad
            w.grad = others[0].grad = None
    return run, seen


def _rebuild_local_w(others: list[torch.Tensor], steps: int) -> tuple[vizgrad.Run, list[tuple[torch.Tensor, ...]]]:
    """Builds a new local ``w`` every step, used with the caller's tensor."""
    seen = []
    with vizgrad.record() as run:
        for start in range(steps):
            w = torch.full((2,), float(start), requires_grad=True)
            (w * others[0]).pow(2).sum().backward()
            seen.append(tuple(t.detach().clone() for t in (w, w.grad, others[0], others[0].grad)))
            others[0].grad = None
    return run, seen


def main(helper, steps: int) -> tuple[vizgrad.Run, list[tuple[torch.Tensor, ...]]]:
    """The caller: a ``w`` of its own, a different tensor from the helper's ``w``."""
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    return helper([w], steps)


def assert_steps_record(run: vizgrad.Run, seen: list[tuple[torch.Tensor, ...]], inner: str, outer: str) -> None:
    """Each step holds both parameters, under ``inner`` and ``outer``, with the values they had."""
    assert len(run.steps) == len(seen)
    for step, (w, w_grad, other, other_grad) in zip(run.steps, seen):
        assert sorted(step.params) == sorted([inner, outer])
        torch.testing.assert_close(step.param(inner), w)
        torch.testing.assert_close(step.param_grad(inner), w_grad)
        torch.testing.assert_close(step.param(outer), other)
        torch.testing.assert_close(step.param_grad(outer), other_grad)


def test_a_local_w_and_the_callers_w_are_both_recorded():
    run, seen = main(_train_local_w, steps=1)
    assert_steps_record(run, seen, inner="w", outer="main.w")  # the nearest frame's name wins as is


def test_distinct_names_stay_the_same_over_steps():
    run, seen = main(_train_local_w, steps=3)
    assert_steps_record(run, seen, inner="w", outer="main.w")
    again, _ = main(_train_local_w, steps=3)
    assert [step.params for step in again.steps] == [step.params for step in run.steps]  # deterministic


def test_a_local_rebuilt_every_step_keeps_its_name_next_to_the_callers_w():
    run, seen = main(_rebuild_local_w, steps=6)  # more steps than the recorder keeps alive
    assert_steps_record(run, seen, inner="w", outer="main.w")


def test_a_leaf_rebuilt_every_step_keeps_its_name():
    with vizgrad.record() as run:
        for start in range(6):
            w = torch.full((2,), float(start), requires_grad=True)
            (w * 3).sum().backward()
            torch.testing.assert_close(run.steps[-1].param("w"), w)
    assert [step.params for step in run.steps] == [["w"]] * 6


def test_a_global_shadowed_by_a_local_is_recorded_under_its_module():
    offset = torch.tensor([1.0, 2.0], requires_grad=True)
    globals()["offset"].grad = None
    with vizgrad.record() as run:
        _times_global_offset(offset).pow(2).sum().backward()
    shadowed, global_name = globals()["offset"], f"{__name__}.offset"
    step = run.steps[-1]
    assert sorted(step.params) == sorted(["offset", global_name])
    torch.testing.assert_close(step.param("offset"), offset)
    torch.testing.assert_close(step.param_grad("offset"), offset.grad)
    torch.testing.assert_close(step.param(global_name), shadowed)
    torch.testing.assert_close(step.param_grad(global_name), shadowed.grad)


def test_trace_names_a_shadowed_global_apart_from_the_local():
    offset = torch.tensor([1.0, 2.0], requires_grad=True)
    graph = vizgrad.trace(_times_global_offset(offset).sum())
    assert graph.node_of(offset).name == "offset"
    assert graph.node_of(globals()["offset"]).name == f"{__name__}.offset"

def _record_local_model(others: list[nn.Module]) -> tuple[vizgrad.Run, nn.Module]:
    """Records one step of a local ``model`` with the caller's module (``others[0]``)."""
    model = nn.Linear(2, 1)
    with vizgrad.record() as run:
        (model(torch.ones(3, 2)) * others[0](torch.ones(3, 2))).sum().backward()
    return run, model


def test_two_modules_with_the_same_parameter_paths_are_both_recorded():
    model = nn.Linear(2, 1)
    run, inner = _record_local_model([model])
    caller = "test_two_modules_with_the_same_parameter_paths_are_both_recorded"
    step = run.steps[-1]
    assert sorted(step.params) == sorted(["model.weight", "model.bias", f"{caller}.model.weight",
                                          f"{caller}.model.bias"])
    torch.testing.assert_close(step.param_grad("model.weight"), inner.weight.grad)
    torch.testing.assert_close(step.param_grad(f"{caller}.model.weight"), model.weight.grad)
    torch.testing.assert_close(step.param(f"{caller}.model.bias"), model.bias)


def test_a_new_leaf_does_not_take_the_name_of_a_leaf_still_in_use():
    w = torch.ones(2, requires_grad=True)
    with vizgrad.record() as run:
        (w * 2).sum().backward()
        first, w = w, torch.full((2,), 3.0, requires_grad=True)
        (first * w).sum().backward()
    qualified = "test_a_new_leaf_does_not_take_the_name_of_a_leaf_still_in_use.w"
    assert run.steps[0].params == ["w"]
    step = run.steps[1]
    assert sorted(step.params) == sorted(["w", qualified])  # the first w's series goes on under "w"
    torch.testing.assert_close(step.param("w"), first)
    torch.testing.assert_close(step.param(qualified), w)


@pytest.mark.parametrize("old_first", [True, False])
def test_a_leaf_out_of_sight_but_still_used_keeps_a_name_of_its_own(old_first):
    history = []
    with vizgrad.record() as run:
        w = torch.ones(2, requires_grad=True)
        (w * 2).sum().backward()
        history.append(w)
        w = torch.full((2,), 3.0, requires_grad=True)
        (history[0] * w if old_first else w * history[0]).sum().backward()
    step = run.steps[1]
    if old_first:  # asked first, the old w is in use when the new one is named: it keeps "w"
        names = {"w": history[0], "test_a_leaf_out_of_sight_but_still_used_keeps_a_name_of_its_own.w": w}
    else:  # the new w (the user's ``w`` now) takes "w"; the old one, asked after, is numbered
        names = {"w": w, "w#2": history[0]}
    assert sorted(step.params) == sorted(names)
    for name, tensor in names.items():
        torch.testing.assert_close(step.param(name), tensor)


def leaf(value: float = 1.0) -> torch.Tensor:
    """A new leaf tensor that requires grad."""
    return torch.full((1,), value, requires_grad=True)


def test_leaf_names_qualify_a_taken_name_by_the_frame_that_holds_it():
    near, far, farther = leaf(), leaf(), leaf()
    scope = [naming.Binding("w", near, "step"), naming.Binding("w", far, "train"),
             naming.Binding("w", farther, "main")]
    assert naming.leaf_names(None, scope) == {id(near): "w", id(far): "train.w", id(farther): "main.w"}


def test_leaf_names_number_a_qualified_name_that_is_taken_too():
    a, b, c = leaf(), leaf(), leaf()
    recursive = [naming.Binding("w", a, "fit"), naming.Binding("w", b, "fit"), naming.Binding("w", c, "fit")]
    assert naming.leaf_names(None, recursive) == {id(a): "w", id(b): "fit.w", id(c): "fit.w#2"}
    train = nn.Module()
    train.w = nn.Parameter(torch.ones(1))  # its path "train.w" is what a qualified "w" would be
    scope = [naming.Binding("train", train, "main"), naming.Binding("w", a, "step"), naming.Binding("w", b, "train")]
    assert naming.leaf_names(None, scope) == {id(train.w): "train.w", id(a): "w", id(b): "train.w#2"}


def test_leaf_names_give_a_tensor_one_name_however_often_it_is_in_scope():
    w = leaf()
    model = nn.Sequential(nn.Linear(1, 1))
    scope = [naming.Binding("w", w, "step"), naming.Binding("first", model[0].weight, "step"),
             naming.Binding("w", w, "main"), naming.Binding("model", model, "main")]
    assert naming.leaf_names(None, scope) == {id(w): "w", id(model[0].weight): "model.0.weight",
                                              id(model[0].bias): "model.0.bias"}


def test_leaf_names_a_nearer_variable_wins_over_a_farther_modules_path():
    w = leaf()
    outer = nn.Module()
    outer.w = nn.Parameter(torch.ones(1))
    scope = [naming.Binding("w", w, "step"), naming.Binding("self", outer, "fit")]
    assert naming.leaf_names(None, scope) == {id(w): "w", id(outer.w): "fit.w"}


def inferred_step(names: naming.InferredLeafNames, scope: list[naming.Binding],
                  leaves: list[torch.Tensor]) -> list[str | None]:
    """One step's leaf names, asked in order, as the tracer asks them."""
    names.begin_step(scope)
    try:
        return [names.get(id(t)) for t in leaves]
    finally:
        names.end_step()


def test_inferred_names_pass_a_dead_holders_name_on():
    names = naming.InferredLeafNames()
    old = leaf()
    assert inferred_step(names, [naming.Binding("w", old, "fit")], [old]) == ["w"]
    del old
    new = leaf(2.0)
    assert inferred_step(names, [naming.Binding("w", new, "fit")], [new]) == ["w"]


def test_inferred_names_keep_a_name_while_its_holder_is_in_scope():
    names = naming.InferredLeafNames()
    old, new = leaf(), leaf(2.0)
    assert inferred_step(names, [naming.Binding("w", old, "fit")], [old]) == ["w"]
    scope = [naming.Binding("w", new, "fit"), naming.Binding("w_prev", old, "fit")]
    assert inferred_step(names, scope, [new, old]) == ["fit.w", "w"]
    assert inferred_step(names, scope, [old, new]) == ["w", "fit.w"]  # remembered: no rescan, same names


def test_inferred_names_a_live_holder_out_of_sight_passes_its_name_on_and_is_numbered():
    names = naming.InferredLeafNames()
    old, new = leaf(), leaf(2.0)
    assert inferred_step(names, [naming.Binding("w", old, "fit")], [old]) == ["w"]
    assert inferred_step(names, [naming.Binding("w", new, "fit")], [new, old]) == ["w", "w#2"]
    assert inferred_step(names, [naming.Binding("w", new, "fit")], [old, new]) == ["w#2", "w"]


def test_inferred_names_never_give_a_new_leaf_a_name_used_in_the_step():
    names = naming.InferredLeafNames()
    old, new = leaf(), leaf(2.0)
    assert inferred_step(names, [naming.Binding("w", old, "fit")], [old]) == ["w"]
    # old is asked first, out of sight: it was used this step, so it keeps "w".
    assert inferred_step(names, [naming.Binding("w", new, "fit")], [old, new]) == ["w", "fit.w"]
