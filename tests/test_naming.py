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
