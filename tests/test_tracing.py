"""Tests for vizgrad.tracing: the traced graph against autograd itself and against torchviz."""

from __future__ import annotations

import collections
import re
import threading
import time
from typing import Any, Sequence

import pytest
import torch
from torch import nn

import vizgrad
from vizgrad.errors import UsageError

torchviz = pytest.importorskip("torchviz")

ACCUMULATE = "torch::autograd::AccumulateGrad"


# -- helpers ------------------------------------------------------------------------------------------
def reachable_fns(roots: Sequence[torch.Tensor]) -> list[Any]:
    """Backward nodes reachable from the roots, by our own walk of ``next_functions``."""
    stack = [torch.autograd.graph.get_gradient_edge(r).node for r in roots]
    seen: dict[int, Any] = {}
    while stack:
        fn = stack.pop()
        if id(fn) not in seen:
            seen[id(fn)] = fn
            stack.extend(nxt for nxt, _ in fn.next_functions if nxt is not None)
    return list(seen.values())


def reachable_ops(roots: Sequence[torch.Tensor]) -> collections.Counter[str]:
    return collections.Counter(fn.name() for fn in reachable_fns(roots))


_NODE_LINE = re.compile(r'^\t(\d+) \[label=(?:"(.*)"|(\S+?))(?: fillcolor=(\w+))?\]$', re.S)
_EDGE_LINE = re.compile(r"^\t(\d+) -> (\d+)( \[dir=none\])?")


def torchviz_drawing(roots: Sequence[torch.Tensor]) -> dict[str, collections.Counter]:
    """What ``torchviz.make_dot(show_saved=True)`` draws, parsed from its Digraph body.

    Returns counters of op names, saved tensors ``(consumer op, attribute, shape)``,
    leaf shapes, root shapes and view-base shapes.
    """
    var = roots[0] if len(roots) == 1 else tuple(roots)
    dot = torchviz.make_dot(var, show_saved=True)
    labels: dict[str, str] = {}
    drawn = {"ops": collections.Counter(), "saved": collections.Counter(), "leaf": collections.Counter(),
             "root": collections.Counter(), "base": collections.Counter()}
    colour_kind = {"lightblue": "leaf", "darkolivegreen1": "root", "darkolivegreen3": "base"}
    pending_saved: tuple[str, str] | None = None  # the dir=none edge just before a saved node
    for line in dot.body:
        line = line.rstrip("\n")
        edge = _EDGE_LINE.match(line)
        if edge:
            pending_saved = (edge.group(1), edge.group(2)) if edge.group(3) else None
            continue
        node = _NODE_LINE.match(line)
        assert node, f"unparsed torchviz line {line!r}"
        node_id, label, colour = node.group(1), node.group(2) or node.group(3), node.group(4)
        name, _, shape = label.partition("\n")
        shape = shape.strip()
        if colour is None:
            labels[node_id] = name
            drawn["ops"][name] += 1
        elif colour == "orange":
            assert pending_saved is not None and node_id in pending_saved
            fn_id = pending_saved[0] if pending_saved[1] == node_id else pending_saved[1]
            drawn["saved"][fn_id, name, shape] += 1
        else:
            drawn[colour_kind[colour]][shape] += 1
    # Saved entries were keyed by the consumer's object id; torchviz draws the op after its saved tensors.
    drawn["saved"] = collections.Counter({(labels[fn_id], name, shape): count
                                          for (fn_id, name, shape), count in drawn["saved"].items()})
    return drawn


def shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(v) for v in shape) + ")"


def vizgrad_drawing(graph: vizgrad.Graph) -> dict[str, collections.Counter]:
    """The same counters for a vizgrad graph (op names as torchviz prints ``type(fn).__name__``)."""
    drawn = {"ops": collections.Counter(), "saved": collections.Counter(), "leaf": collections.Counter(),
             "root": collections.Counter(), "base": collections.Counter()}
    for node in graph.nodes:
        if node.kind in ("op", "custom"):
            drawn["ops"][node.op.removeprefix("torch::autograd::")] += 1
        elif node.kind == "leaf":
            drawn["ops"]["AccumulateGrad"] += 1
            drawn["leaf"][shape_str(node.shape)] += 1
        elif node.kind in ("root", "base"):
            drawn[node.kind][shape_str(node.shape)] += 1
    for edge in graph.edges:
        if edge.kind == "saved":
            saved, consumer = graph.node(edge.src), graph.node(edge.dst)
            # torchviz labels a custom Function's saved tensors with no name.
            name = "" if consumer.kind == "custom" else saved.name
            drawn["saved"][consumer.op, name, shape_str(saved.shape)] += 1
    return drawn


class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x ** 2


def _seed():
    x = torch.randn(8, 1) * 20
    y = x * 2 + 3
    w = torch.rand(1, 1, requires_grad=True)
    b = torch.zeros(1, 1, requires_grad=True)
    y_pred = x.mm(w) + b.expand_as(y)
    error = y_pred - y
    return [(error ** 2 / 8).sum()]


def _mlp():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    return [nn.functional.cross_entropy(model(torch.randn(5, 4)), torch.tensor([0, 2, 1, 1, 0]))]


def _cnn():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    return [nn.functional.cross_entropy(model(torch.randn(3, 2, 6, 6)), torch.tensor([0, 1, 2]))]


def _lstm():
    out, (h, _) = nn.LSTM(3, 4)(torch.randn(5, 2, 3))
    return [out.sum() + h.sum()]


def _transformer():
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True)
    return [layer(torch.randn(2, 5, 8)).pow(2).mean()]


def _custom():
    x = torch.randn(4, requires_grad=True)
    return [Cube.apply(x.sin()).sum()]


def _views_and_split():
    x = torch.randn(6, 4, requires_grad=True)
    y = x * 2
    p, q, r = y.split(2)
    view_root = y.view(4, 6)[1:3]  # a view as root: torchviz draws its base
    return [(p * q).sum() + r.sum(), view_root]


def _double_backward():
    x = torch.randn(4, 3, requires_grad=True)
    out = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))(x)
    (grad_x,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return [out.pow(2).mean() + grad_x.pow(2).sum()]


def _complex():
    a = torch.randn(4, requires_grad=True)
    z = torch.polar(torch.ones(4), a) * (1 + 2j)
    return [z.abs().sum(), (z * z).real.sum()]


def _in_place():
    w = torch.randn(3, 4, requires_grad=True)
    h = torch.randn(5, 3).mm(w)
    h.mul_(2)
    h.relu_()
    c = h.clone()
    c[0] = 0
    return [c.pow(2).sum()]


PROGRAMS = {f.__name__.strip("_"): f for f in (_seed, _mlp, _cnn, _lstm, _transformer, _custom, _views_and_split,
                                                 _double_backward, _complex, _in_place)}


# -- against autograd and torchviz --------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_ops_equal_the_reachable_grad_fns(name):
    torch.manual_seed(0)
    roots = PROGRAMS[name]()
    graph = vizgrad.trace(roots)
    assert graph.ops() == reachable_ops(roots)
    assert len(graph.roots) == len(roots)
    # Every grad edge is next_functions[slot] of its source, with the right input_nr.
    ops_by_id = {n.id: n for n in graph.nodes}
    edges = collections.Counter((ops_by_id[e.src].op, e.slot, ops_by_id[e.dst].op, e.output)
                                for e in graph.grad_edges())
    expected = collections.Counter((fn.name(), slot, nxt.name(), output_nr)
                                   for fn in reachable_fns(roots)
                                   for slot, (nxt, output_nr) in enumerate(fn.next_functions) if nxt is not None)
    assert edges == expected


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_torchviz_draws_nothing_vizgrad_misses(name):
    torch.manual_seed(0)
    roots = PROGRAMS[name]()
    graph = vizgrad.trace(roots, saved=True)
    theirs, ours = torchviz_drawing(roots), vizgrad_drawing(graph)
    for what in ("ops", "leaf", "root", "base", "saved"):
        missing = theirs[what] - ours[what]
        assert not missing, f"torchviz draws {what} that vizgrad misses: {dict(missing)}"
    assert theirs["ops"] == ours["ops"]
    assert sum(theirs["saved"].values()) > 0 or name in ("views_and_split",)


def test_view_root_gets_its_base():
    x = torch.randn(6, 4, requires_grad=True)
    y = x * 2
    root = y.view(4, 6)[1:3]
    graph = vizgrad.trace(root)
    (base,) = [n for n in graph.nodes if n.kind == "base"]
    assert base.shape == (6, 4)
    assert [e.kind for e in graph.edges if e.src == base.id] == ["view"]
    assert [e.dst for e in graph.edges if e.src == base.id] == [graph.roots[0]]


def test_custom_and_saved_nodes():
    x = torch.randn(4, requires_grad=True)
    loss = Cube.apply(x * 2).sum()
    graph = vizgrad.trace(loss, saved=True)
    (custom,) = [n for n in graph.nodes if n.kind == "custom"]
    assert custom.op == "CubeBackward"
    saved_into_custom = [graph.node(e.src) for e in graph.edges if e.kind == "saved" and e.dst == custom.id]
    assert [(n.name, n.shape) for n in saved_into_custom] == [("saved_tensors[0]", (4,))]
    # MulBackward0 saves the scalar 2 as a 0-d tensor; SumBackward0 saves no tensor.
    saved = sorted((graph.node(e.dst).op, graph.node(e.src).name, graph.node(e.src).shape)
                   for e in graph.edges if e.kind == "saved")
    assert saved == [("CubeBackward", "saved_tensors[0]", (4,)), ("MulBackward0", "other", ())]


def test_saved_tensors_are_gone_after_backward_and_tracing_still_works():
    w = torch.randn(3, requires_grad=True)
    loss = (w * w.exp()).sum()
    before = vizgrad.trace(loss, saved=True)
    assert any(n.kind == "saved" for n in before.nodes)
    loss.backward()
    after = vizgrad.trace(loss, saved=True)
    assert not any(n.kind == "saved" for n in after.nodes)
    assert after.ops() == before.ops()


def test_node_of_leaf_and_non_leaf():
    w = torch.randn(2, 3, requires_grad=True)
    h = w.tanh()
    p, q = h.split([1, 1])
    loss = (p * q).sum()
    graph = vizgrad.trace(loss, params={"w": w})
    assert graph.node_of(w).kind == "leaf" and graph.node_of(w).name == "w" and graph.node_of(w).shape == (2, 3)
    assert graph.node_of(h).op == "TanhBackward0"
    assert graph.node_of(p) == graph.node_of(q) and graph.node_of(p).op == "SplitWithSizesBackward0"
    assert graph.node_of(p).outputs == 2
    assert graph.node_of(loss).op == "SumBackward0"
    with pytest.raises(LookupError):
        graph.node_of(torch.randn(3, requires_grad=True))  # an unrelated leaf
    with pytest.raises(LookupError):
        graph.node_of(torch.randn(3))  # no grad at all
    with pytest.raises(LookupError):
        graph.node_of(w.exp())  # a node the graph does not contain


def test_several_roots_and_ids_in_root_order():
    w = torch.randn(3, requires_grad=True)
    a, b = (w * 2).sum(), (w ** 2).mean()
    graph = vizgrad.trace([a, b], params={"w": w})
    assert len(graph.roots) == 2
    assert [graph.node(r).kind for r in graph.roots] == ["root", "root"]
    assert graph.node(graph.roots[0]).id == "n0"
    # One shared leaf, reached from both roots.
    assert graph.ops()[ACCUMULATE] == 1
    leaf = graph.node_of(w)
    assert sum(1 for e in graph.grad_edges() if e.dst == leaf.id) == 2


def test_root_that_is_a_leaf():
    w = torch.randn(3, requires_grad=True)
    graph = vizgrad.trace(w)
    assert [n.kind for n in graph.nodes] == ["root", "leaf"]


def test_trace_rejects_bad_roots():
    with pytest.raises(UsageError, match="at least one root"):
        vizgrad.trace([])
    with pytest.raises(UsageError, match="does not require grad"):
        vizgrad.trace(torch.ones(2))
    with pytest.raises(UsageError, match="not a torch.Tensor"):
        vizgrad.trace([3.0])


def test_multi_output_node_has_one_output_per_piece():
    x = torch.randn(8, requires_grad=True)
    pieces = (x * 1).chunk(4)
    graph = vizgrad.trace(sum(p.sum() * i for i, p in enumerate(pieces)))
    (split,) = [n for n in graph.nodes if n.op == "SplitBackward0"]
    assert split.outputs == 4
    assert sorted(e.output for e in graph.grad_edges() if e.dst == split.id) == [0, 1, 2, 3]


# -- scale ----------------------------------------------------------------------------------------------
def _in_big_stack_thread(function: Any, stack_bytes: int = 512 << 20) -> Any:
    """Runs ``function`` in a thread with a large C stack and returns its result (re-raising its error).

    torch 2.13 frees a graph whose backward nodes were ever touched from Python
    (``next_functions``, as every tracer does, torchviz too) recursively in C++,
    which overflows the default 8 MiB stack past ~50,000 nodes. Building and
    dropping the deep graph in this thread keeps that teardown off the main stack.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = function()
        except BaseException as error:  # noqa: BLE001 (re-raised below without the frames that hold the graph)
            outcome["error"] = f"{type(error).__name__}: {error}"

    previous = threading.stack_size(stack_bytes)
    try:
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    finally:
        threading.stack_size(previous)
    if "error" in outcome:
        pytest.fail(outcome["error"])
    return outcome["result"]


def _trace_chain(length: int) -> tuple[float, int, collections.Counter, str | None, int]:
    leaf = torch.ones(1, requires_grad=True)
    x = leaf
    for _ in range(length):
        x = x * 1.0001
    start = time.perf_counter()
    graph = vizgrad.trace(x, params={"leaf": leaf})
    seconds = time.perf_counter() - start
    return seconds, len(graph.nodes), graph.ops(), graph.node(f"n{length + 1}").name, len(graph.structural_hash)


def test_100k_node_chain_traces_without_recursion():
    seconds, nodes, ops, leaf_name, hash_length = _in_big_stack_thread(lambda: _trace_chain(100_000))
    print(f"traced a {nodes}-node chain in {seconds:.2f} s")
    assert nodes == 100_002  # root, 100,000 MulBackward0, the leaf
    assert ops == {"MulBackward0": 100_000, ACCUMULATE: 1}
    assert leaf_name == "leaf"
    assert hash_length == 16
    assert seconds < 20
