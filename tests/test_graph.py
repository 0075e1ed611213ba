"""Tests for vizgrad.graph: the plain-data model, its ids, hash, JSON and pickling."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import subprocess
import sys

import pytest
import torch

import vizgrad
from vizgrad.graph import EDGE_KINDS, NODE_KINDS, Edge, Graph, Node

GOLDEN = pathlib.Path(__file__).parent / "golden" / "seed_graph.json"
REGENERATE = os.environ.get("VIZGRAD_REGEN_GOLDEN") == "1"

# The seed's autograd regression, one recorded step; prints the graph as JSON.
SEED_PROGRAM = """
import json, torch, vizgrad
torch.manual_seed(0)
x = torch.randn(8, 1) * 20
y = x * 2 + 3
w = torch.rand(1, 1, requires_grad=True)
b = torch.zeros(1, 1, requires_grad=True)
with vizgrad.record() as run:
    y_pred = x.mm(w) + b.expand_as(y)
    error = y_pred - y
    loss = error ** 2 / 8
    loss = loss.sum()
    loss.backward()
print(json.dumps(run.steps[0].graph.to_dict(), indent=1))
"""


def seed_graph() -> Graph:
    namespace: dict = {}
    exec(compile(SEED_PROGRAM.replace("print(", "graph = (run.steps[0].graph, "), "<seed>", "exec"), namespace)
    return namespace["graph"][0]


def golden_text(graph: Graph) -> str:
    return json.dumps(graph.to_dict(), indent=1) + "\n"


def rich_graph() -> Graph:
    """A graph with every node kind: root, base, op, custom, leaf and saved; several roots; a split."""

    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 2

    w = torch.randn(4, 3, requires_grad=True)
    h = Double.apply(w.tanh())
    p, q = h.split(2)
    view_root = (p * q).view(-1)[1:]
    return vizgrad.trace([(h ** 2).sum(), view_root], params={"w": w}, saved=True)


# -- golden file and ids ------------------------------------------------------------------------------
def test_seed_graph_matches_golden():
    graph = seed_graph()
    if REGENERATE:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(golden_text(graph))
    assert GOLDEN.exists(), "golden file missing: run with VIZGRAD_REGEN_GOLDEN=1"
    assert golden_text(graph) == GOLDEN.read_text()
    assert [(n.id, n.op.removeprefix("torch::autograd::"), n.name) for n in graph.nodes] == [
        ("n0", "root", "loss"), ("n1", "SumBackward0", "loss"), ("n2", "DivBackward0", None),
        ("n3", "PowBackward0", None), ("n4", "SubBackward0", "error"), ("n5", "AddBackward0", "y_pred"),
        ("n6", "MmBackward0", None), ("n7", "AccumulateGrad", "w"), ("n8", "ExpandBackward0", None),
        ("n9", "AccumulateGrad", "b"),
    ]


def test_ids_identical_across_processes():
    outputs = []
    procs = [subprocess.Popen([sys.executable, "-c", SEED_PROGRAM], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONHASHSEED": seed}, text=True)
             for seed in ("1", "2")]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out))
    assert outputs[0] == outputs[1] == json.loads(seed_graph().to_json())


def test_ids_identical_across_steps_and_traces():
    w = torch.randn(3, requires_grad=True)
    graphs = [vizgrad.trace(((w * k).sin() + w).sum(), params={"w": w}) for k in (1.0, 2.0)]
    assert graphs[0] == graphs[1]
    assert graphs[0].structural_hash == graphs[1].structural_hash


# -- the model ------------------------------------------------------------------------------------------
def test_every_kind_is_produced_and_known():
    graph = rich_graph()
    kinds = {n.kind for n in graph.nodes}
    assert kinds == set(NODE_KINDS)
    assert {e.kind for e in graph.edges} == set(EDGE_KINDS)
    assert [n.id for n in graph.nodes] == [f"n{i}" for i in range(len(graph.nodes))]
    assert len(graph.roots) == 2
    split = next(n for n in graph.nodes if n.op == "SplitBackward0")
    assert split.outputs == 2
    assert graph.find("w").kind == "leaf"
    with pytest.raises(KeyError, match="no node named 'nope'"):
        graph.find("nope")
    with pytest.raises(KeyError, match="no node 'n999'"):
        graph.node("n999")


def test_json_round_trip_is_lossless():
    graph = rich_graph()
    text = graph.to_json()
    back = Graph.from_json(text)
    assert back == graph
    assert back.structural_hash == graph.structural_hash
    assert back.to_json() == text
    assert all(isinstance(n.shape, tuple) or n.shape is None for n in back.nodes)
    # JSON is plain: no torch object can hide in it.
    json.loads(text)


def test_pickle_round_trip_drops_live_tensors():
    w = torch.randn(2, requires_grad=True)
    graph = vizgrad.trace((w * 2).sum(), params={"w": w})
    assert graph.node_of(w).name == "w"
    back = pickle.loads(pickle.dumps(graph))
    assert back == graph and back.structural_hash == graph.structural_hash
    with pytest.raises(LookupError, match="no live tensors"):
        back.node_of(w)
    rich = rich_graph()
    assert pickle.loads(pickle.dumps(rich)) == rich


def test_structural_hash_ignores_names_and_shapes_but_not_topology():
    a, b = torch.randn(3, requires_grad=True), torch.randn(5, requires_grad=True)
    g_a = vizgrad.trace((a * 2).sum(), params={"a": a})
    g_b = vizgrad.trace((b * 2).sum(), params={"b": b})
    assert g_a != g_b
    assert g_a.structural_hash == g_b.structural_hash
    g_c = vizgrad.trace((a + 2).sum(), params={"a": a})
    assert g_c.structural_hash != g_a.structural_hash


def test_node_and_edge_dict_forms():
    node = Node("n3", "MulBackward0", "op", shape=(2, 3), inputs=2, attrs=(("alpha", "1"),))
    assert node.to_dict() == {"id": "n3", "op": "MulBackward0", "kind": "op", "shape": (2, 3), "inputs": 2,
                              "attrs": [["alpha", "1"]]}
    assert Node.from_dict(json.loads(json.dumps(node.to_dict()))) == node
    edge = Edge("n1", "n2", 1, 0, "grad")
    assert Edge.from_list(edge.to_list()) == edge


def test_ops_and_grad_edges():
    w = torch.randn(3, requires_grad=True)
    graph = vizgrad.trace((w * w).sum(), params={"w": w})
    assert graph.ops() == {"SumBackward0": 1, "MulBackward0": 1, "torch::autograd::AccumulateGrad": 1}
    mul = next(n for n in graph.nodes if n.op == "MulBackward0")
    leaf = graph.node_of(w)
    assert [(e.src, e.dst, e.slot) for e in graph.grad_edges() if e.dst == leaf.id] == [(mul.id, leaf.id, 0),
                                                                                         (mul.id, leaf.id, 1)]
    assert len(graph) == 4
