"""Recorded gradients against ``torch.autograd.grad`` on the same graph (the oracle), program by program."""

from __future__ import annotations

import collections
from typing import Any, Callable, Sequence

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import vizgrad

RTOL = 1e-5
ATOL = 1e-6


# -- helpers ------------------------------------------------------------------------------------------
class Intermediates(TorchFunctionMode):
    """Collects every tensor with a ``grad_fn`` that a torch function returns (in-place results once)."""

    def __init__(self) -> None:
        super().__init__()
        self.tensors: list[torch.Tensor] = []
        self._seen: set[int] = set()

    def add(self, *tensors: torch.Tensor) -> None:
        for tensor in tensors:
            if tensor.grad_fn is not None and id(tensor) not in self._seen:
                self._seen.add(id(tensor))
                self.tensors.append(tensor)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        items = out if isinstance(out, (tuple, list)) else (out,)
        self.add(*(t for t in items if isinstance(t, torch.Tensor)))
        return out


def as_tuple(roots: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (roots,) if isinstance(roots, torch.Tensor) else tuple(roots)


def reachable_fns(roots: Sequence[torch.Tensor]) -> list[Any]:
    """Every backward node reachable from the roots, found by our own walk of ``next_functions``."""
    start = [torch.autograd.graph.get_gradient_edge(r).node for r in roots]
    seen: dict[int, Any] = {}
    stack = list(start)
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen[id(fn)] = fn
        stack.extend(nxt for nxt, _ in fn.next_functions if nxt is not None)
    return list(seen.values())


def reachable_ops(roots: Sequence[torch.Tensor]) -> collections.Counter[str]:
    return collections.Counter(fn.name() for fn in reachable_fns(roots))


def leaves_of(roots: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [fn.variable for fn in reachable_fns(roots) if hasattr(fn, "variable")]


def dense(t: torch.Tensor) -> torch.Tensor:
    return t.to_dense() if t.layout != torch.strided else t


def assert_grad(actual: torch.Tensor | None, expected: torch.Tensor, what: str) -> None:
    assert actual is not None, f"no gradient kept for {what}"
    assert actual.shape == expected.shape, what
    torch.testing.assert_close(dense(actual), dense(expected.detach()).cpu(), rtol=RTOL, atol=ATOL, msg=what)


class Oracle:
    """``torch.autograd.grad`` of the roots w.r.t. every intermediate and leaf, on the live graph.

    Build it after the forward pass and before the recorded ``backward()``: it
    runs the graph once with ``retain_graph=True``.
    """

    def __init__(self, roots: torch.Tensor | Sequence[torch.Tensor], intermediates: Sequence[torch.Tensor],
                 gradient: Any = None) -> None:
        self.roots = as_tuple(roots)
        self.fn_ids = {id(fn) for fn in reachable_fns(self.roots)}
        self.ops = reachable_ops(self.roots)
        self.leaves = leaves_of(self.roots)
        self.intermediates = [t for t in intermediates if t.requires_grad]
        inputs = self.intermediates + self.leaves
        self.grads = torch.autograd.grad(self.roots, inputs, grad_outputs=gradient, retain_graph=True,
                                         allow_unused=True)

    def check(self, step: vizgrad.Step, *, accumulated: int = 1, latest: bool = True) -> None:
        """Checks ops, every intermediate's and leaf's gradient, parameter grads, edges and stats.

        ``accumulated``: how many backward passes have added into ``.grad`` by
        this step; ``latest``: no backward has run since, so ``.grad`` is current.
        """
        assert step.graph.ops() == self.ops
        assert len(self.intermediates) > 0
        inputs = self.intermediates + self.leaves
        for i, (tensor, expected) in enumerate(zip(inputs, self.grads)):
            what = f"tensor {i} ({tensor.grad_fn.name() if tensor.grad_fn else 'leaf'}, shape {tuple(tensor.shape)})"
            fn = torch.autograd.graph.get_gradient_edge(tensor).node
            if id(fn) not in self.fn_ids:  # not in this graph (a branch off the loss)
                with pytest.raises(LookupError):
                    step.grad_of(tensor)
            elif expected is None:
                assert step.grad_of(tensor) is None, what
            else:
                assert_grad(step.grad_of(tensor), expected, what)
        for leaf, expected in zip(self.leaves, self.grads[len(self.intermediates):]):
            name = step.graph.node_of(leaf).name
            if name is not None and expected is not None:
                if step.param_grad(name) is None:  # bigger than keep: only its summary is kept
                    assert RECORD["keep"] == "default" and leaf.numel() > 64, name
                    summary = step.table.summary(("param_grad", name))
                    assert summary.norm == pytest.approx(float(dense(accumulated * expected).norm()), rel=RTOL)
                    continue
                assert_grad(step.param_grad(name), accumulated * expected, f"param_grad({name!r})")
                if latest:
                    assert_grad(step.param_grad(name), leaf.grad, f"param_grad({name!r}) is .grad")
                torch.testing.assert_close(step.param(name), leaf.detach(), rtol=0, atol=0)
        check_edges(step)
        check_stats(step)


def check_edges(step: vizgrad.Step) -> None:
    """The gradients along the edges into a node output add up to the gradient kept for it."""
    incoming: dict[tuple[str, int], list[torch.Tensor]] = collections.defaultdict(list)
    targets: set[tuple[str, int]] = set()
    for edge in step.graph.edges:
        if edge.kind not in ("grad", "root"):
            continue
        targets.add((edge.dst, edge.output))
        assert (("edge", edge.src, edge.slot) in step.summaries) == (step.edge_stats(edge.src, edge.slot) is not None)
        grad = step.edge_grad(edge.src, edge.slot)
        if grad is not None:
            incoming[edge.dst, edge.output].append(dense(grad))
    assert targets, "no edges"
    for dst, output in targets:
        parts = incoming.get((dst, output), [])
        node_grad = step.grad(dst, output)
        if not parts:
            assert node_grad is None, (dst, output)
            continue
        assert node_grad is not None, (dst, output)
        torch.testing.assert_close(dense(node_grad), sum(parts[1:], parts[0]), rtol=RTOL, atol=ATOL,
                                   msg=f"edges into {dst}:{output}")


def check_stats(step: vizgrad.Step) -> None:
    """Every node summary equals torch's reductions on the kept value."""
    checked = 0
    for key, value in step.values.items():
        if key[0] != "node":
            continue
        stats = step.stats(key[1], key[2])
        values = dense(value).detach()
        values = (values.abs() if values.is_complex() else values).double().reshape(-1)
        assert stats["numel"] == value.numel()
        assert stats["nan"] == int(torch.isnan(values).sum())
        assert stats["inf"] == int(torch.isinf(values).sum())
        finite = values[~torch.isnan(values)]
        expected = {"norm": torch.linalg.vector_norm(values), "mean": values.mean()}
        if finite.numel():
            expected.update(min=finite.min(), max=finite.max())
        # Reductions may run in the tensor's own precision (large tensors are reduced on their device).
        rel = 1e-12 if value.dtype in (torch.float64, torch.complex128) else 1e-6
        for name, want in expected.items():
            assert stats[name] == pytest.approx(float(want), rel=rel, abs=1e-12, nan_ok=True), (key, name)
        checked += 1
    assert checked > 0


def record_one(forward: Callable[[], Any], params: Any, backward: Callable[[Any], None] | None = None,
               gradient: Any = None) -> tuple[vizgrad.Run, Oracle, Any]:
    """Runs ``forward`` collecting intermediates, builds the oracle, then one recorded backward.

    ``params`` names the leaves: the backward runs in this helper, whose frame
    does not see the test's variables. With ``WARM_UP["steps"]`` set, the same
    program first runs that many recorded steps (gradients then cleared): a
    recorder's later steps take its fast paths (nodes left unhooked, graphs
    found by structure), which the returned run's one step then exercises.
    """
    options = {"keep": None} if RECORD["keep"] is None else {}  # else record()'s defaults
    with vizgrad.record(params, **options) as run:
        for _ in range(WARM_UP["steps"]):
            warm = forward()
            torch.autograd.backward(warm, gradient) if backward is None else backward(warm)
            for leaf in leaves_of(as_tuple(warm)):
                leaf.grad = None
            del warm
        with Intermediates() as seen:
            roots = forward()
        oracle = Oracle(roots, seen.tensors, gradient)
        if backward is None:
            torch.autograd.backward(roots, gradient)
        else:
            backward(roots)
    assert len(run.steps) == 1 + WARM_UP["steps"]
    del run.steps[:WARM_UP["steps"]]
    return run, oracle, roots


WARM_UP = {"steps": 0}
RECORD = {"keep": None}


@pytest.fixture(autouse=True, params=[None, "default"], ids=["keep all", "default record"])
def _record_options(request):
    """Each program is checked keeping every value, and with ``record()``'s defaults (the newest step holds them)."""
    RECORD["keep"] = request.param
    yield
    RECORD["keep"] = None


@pytest.fixture(autouse=True, params=[0, 2], ids=["first step", "later step"])
def _warm_up(request):
    """Each program is checked on a recorder's first step and on a later one."""
    WARM_UP["steps"] = request.param
    yield
    WARM_UP["steps"] = 0


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


# -- programs -----------------------------------------------------------------------------------------
def test_seed_regression_every_step():
    x = torch.randn(8, 1) * 20
    y = x * 2 + 3
    w = torch.rand(1, 1, requires_grad=True)
    b = torch.zeros(1, 1, requires_grad=True)
    lr = 0.001
    oracles, losses = [], []
    with vizgrad.record(keep=None) as run:
        for _ in range(3):
            y_pred = x.mm(w) + b.expand_as(y)
            error = y_pred - y
            loss = error ** 2 / 8
            loss = loss.sum()
            oracles.append(Oracle(loss, [y_pred, error, loss]))
            losses.append(loss.item())
            loss.backward()
            oracles[-1].check(run.steps[-1])
            w.requires_grad = False
            b.requires_grad = False
            w.sub_(lr * w.grad.data)
            b.sub_(lr * b.grad.data)
            w.requires_grad = True
            b.requires_grad = True
            w.grad.data.zero_()
            b.grad.data.zero_()
    assert [s.index for s in run.steps] == [0, 1, 2]
    assert run.steps[0].params == ["w", "b"]
    assert run.losses() == losses
    assert run.steps[0].graph is run.steps[2].graph  # one topology, held once


def test_mlp_cross_entropy():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, target = torch.randn(5, 4), torch.tensor([0, 2, 1, 1, 0])
    run, oracle, loss = record_one(lambda: nn.functional.cross_entropy(model(x), target), model)
    oracle.check(run.steps[0])
    assert set(run.steps[0].params) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert run.steps[0].loss == pytest.approx(loss.item())


def test_cnn_batchnorm():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x, target = torch.randn(3, 2, 6, 6), torch.tensor([0, 1, 2])
    run, oracle, _ = record_one(lambda: nn.functional.cross_entropy(model(x), target), model)
    oracle.check(run.steps[0])
    assert "NativeBatchNormBackward0" in run.steps[0].graph.ops()
    assert "1.weight" in run.steps[0].params


def test_lstm():
    lstm = nn.LSTM(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)

    def forward():
        out, (h, c) = lstm(x)
        return out.pow(2).sum() + h.sum() + c.mean()

    run, oracle, _ = record_one(forward, lstm)
    oracle.check(run.steps[0])
    assert "weight_ih_l1" in run.steps[0].params


def test_transformer_encoder_layer():
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True)
    x = torch.randn(2, 5, 8, requires_grad=True)
    run, oracle, _ = record_one(lambda: layer(x).pow(2).mean(), [*layer.named_parameters(), ("x", x)])
    oracle.check(run.steps[0])
    assert len(oracle.intermediates) > 10


class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.save_for_backward(x, scale)
        return x ** 3 * scale

    @staticmethod
    def backward(ctx, grad):
        x, scale = ctx.saved_tensors
        return grad * 3 * x ** 2 * scale, (grad * x ** 3).sum().reshape(scale.shape)


def test_custom_function():
    x = torch.randn(4, requires_grad=True)
    scale = torch.tensor([2.0], requires_grad=True)
    run, oracle, _ = record_one(lambda: Cube.apply(x.sin(), scale).sum(), {"x": x, "scale": scale})
    oracle.check(run.steps[0])
    custom = [n for n in run.steps[0].graph.nodes if n.kind == "custom"]
    assert [n.op for n in custom] == ["CubeBackward"]
    assert custom[0].inputs == 2


def test_weight_used_twice():
    w = torch.randn(3, 3, requires_grad=True)
    x = torch.randn(2, 3)
    run, oracle, _ = record_one(lambda: (x.mm(w).tanh().mm(w)).sum(), {"w": w})
    oracle.check(run.steps[0])
    step = run.steps[0]
    leaf = step.graph.find("w")
    into_w = [e for e in step.graph.grad_edges() if e.dst == leaf.id]
    assert len(into_w) == 2  # two edges; check_edges verified they sum to w's gradient
    assert_grad(step.grad_of(w), oracle.grads[-1], "w")


def test_in_place_ops():
    w = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    x = torch.randn(5, 3)

    def forward():
        h = x.mm(w)
        h.mul_(2)  # scalar mul saves nothing, so relu_ may follow
        h.relu_()
        c = h.clone()
        c[0] = 0  # CopySlices
        c[:, 1].add_(b[1])  # in place through a view
        c.add_(b)
        return c.pow(2).sum()

    run, oracle, _ = record_one(forward, {"w": w, "b": b})
    oracle.check(run.steps[0])
    assert "torch::autograd::CopySlices" in run.steps[0].graph.ops()


def test_views_and_split():
    x = torch.randn(6, 4, requires_grad=True)

    def forward():
        y = x * 1.5
        v = y.view(4, 6).t()[1:3]
        e = v.unsqueeze(0).expand(2, 2, 4)
        p, q, r = y.split(2)
        return e.sum() + (p * 1).sum() + (q * 2).sum() + (r.transpose(0, 1) * 3).sum()

    run, oracle, _ = record_one(forward, {"x": x})
    oracle.check(run.steps[0])
    step = run.steps[0]
    (split,) = [n for n in step.graph.nodes if n.op == "SplitBackward0"]
    assert split.outputs == 3
    grads = [step.grad(split.id, k) for k in range(3)]
    torch.testing.assert_close(grads, [torch.full((2, 4), 1.0), torch.full((2, 4), 2.0), torch.full((2, 4), 3.0)])
    outputs_used = sorted(e.output for e in step.graph.grad_edges() if e.dst == split.id)
    assert outputs_used == [0, 1, 2]


def test_split_with_an_unused_piece():
    x = torch.randn(6, requires_grad=True)
    with vizgrad.record(keep=None) as run:
        p, q, r = (x * 1).split(2)
        loss = (p * 2).sum() + (q * 3).sum()
        loss.backward()
    step = run.steps[0]
    split = step.graph.node_of(p)
    assert split.op == "SplitBackward0" and split.outputs == 3
    torch.testing.assert_close(step.grad_of(q), torch.full((2,), 3.0))
    assert step.grad_of(r) is None  # no gradient reached the unused piece
    assert step.grad(split.id, 2) is None


def test_double_backward_gradient_penalty():
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))
    x = torch.randn(4, 3, requires_grad=True)
    extra = []

    def forward():
        out = model(x)
        (grad_x,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        extra.append(grad_x)
        return out.pow(2).mean() + 0.1 * grad_x.pow(2).sum()

    with vizgrad.record(model, keep=None) as run:
        with Intermediates() as seen:
            loss = forward()
        seen.add(*extra)
        oracle = Oracle(loss, seen.tensors)
        loss.backward()
    oracle.check(run.steps[0])
    assert len(run.steps) == 1  # the create_graph autograd.grad inside the forward is not a step
    ops = run.steps[0].graph.ops()
    assert ops["TanhBackwardBackward0"] == 1  # the backward of the backward is in the graph


def test_non_scalar_backward_with_gradient():
    w = torch.randn(3, 2, requires_grad=True)
    x = torch.randn(4, 3)
    v = torch.randn(4, 2)
    run, oracle, out = record_one(lambda: x.mm(w).sigmoid(), {"w": w}, backward=lambda out: out.backward(gradient=v),
                                  gradient=v)
    oracle.check(run.steps[0])
    step = run.steps[0]
    assert step.loss is None
    root = step.graph.roots[0]
    torch.testing.assert_close(step.grad(root), v)


def test_two_roots_in_one_backward():
    w = torch.randn(3, requires_grad=True)

    def forward():
        h = w * 2
        return h.sin().sum(), (h ** 2).mean()

    run, oracle, (l1, l2) = record_one(forward, {"w": w}, backward=lambda roots: torch.autograd.backward(list(roots)))
    oracle.check(run.steps[0])
    step = run.steps[0]
    assert len(step.graph.roots) == 2
    assert step.loss == pytest.approx(l1.item() + l2.item())


def test_a_root_that_feeds_another_root():
    w = torch.randn(3, requires_grad=True)
    v = torch.full((3,), 0.5)

    def forward():
        h = w * 2
        return h, (h * 3).sum()

    run, oracle, (h, loss) = record_one(forward, {"w": w}, backward=lambda roots: torch.autograd.backward(
        list(roots), [v, None]), gradient=[v, None])
    oracle.check(run.steps[0])  # h's gradient: the seed v plus what the loss sends back
    torch.testing.assert_close(run.steps[0].grad_of(h), v + 3)
    assert run.steps[0].loss is None  # one root is not a scalar


def test_a_leaf_as_root():
    w = torch.randn(3, requires_grad=True)
    v = torch.randn(3)
    with vizgrad.record(keep=None) as run:
        w.backward(v)
    step = run.steps[0]
    assert [n.kind for n in step.graph.nodes] == ["root", "leaf"]
    torch.testing.assert_close(step.grad_of(w), v)
    check_edges(step)


def test_retain_graph_two_backward_calls():
    w = torch.randn(3, requires_grad=True)
    with vizgrad.record(keep=None) as run:
        with Intermediates() as seen:
            loss = (w.exp() * 3).sum()
        oracle = Oracle(loss, seen.tensors)
        loss.backward(retain_graph=True)
        loss.backward()
    assert len(run.steps) == 2
    oracle.check(run.steps[0], accumulated=1, latest=False)
    oracle.check(run.steps[1], accumulated=2)
    torch.testing.assert_close(w.grad, 2 * oracle.grads[-1])


def test_float64_and_zero_dim():
    a = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, dtype=torch.float64, requires_grad=True)
    run, oracle, loss = record_one(lambda: (a ** 3).sin() * (v * a).sum().cos(), {"a": a, "v": v})
    oracle.check(run.steps[0])
    step = run.steps[0]
    assert loss.dim() == 0 and step.grad_of(a).dim() == 0
    assert step.grad_of(a).dtype == torch.float64
    assert step.graph.node_of(a).dtype == "float64"


def test_complex_intermediates():
    a = torch.randn(4, requires_grad=True)
    b = torch.randn(4, requires_grad=True)

    def forward():
        z = torch.complex(a, b)
        z2 = z * z.exp() + 1j * z
        return z2.abs().sum() + (z2 * z2.conj()).real.mean()

    run, oracle, _ = record_one(forward, {"a": a, "b": b})
    oracle.check(run.steps[0])
    assert any(t.is_complex() for t in oracle.intermediates)
    complex_grads = [run.steps[0].grad_of(t) for t in oracle.intermediates if t.is_complex()]
    assert all(g is not None and g.is_complex() for g in complex_grads)


def test_sparse_embedding():
    emb = nn.Embedding(10, 3, sparse=True)
    idx = torch.tensor([[1, 2, 1], [7, 2, 0]])
    # exp() makes every stored gradient value positive, so the implicit zeros decide the minimum.
    run, oracle, _ = record_one(lambda: emb(idx).exp().sum(), {"emb.weight": emb.weight})
    step = run.steps[0]
    oracle.check(step)
    expected = oracle.grads[-1]
    assert expected.is_sparse
    assert_grad(step.grad_of(emb.weight), expected, "emb.weight")
    assert_grad(step.param_grad("emb.weight"), emb.weight.grad, "emb.weight.grad")
    dense_expected = expected.to_dense().double()
    for stats in (step.stats(step.graph.node_of(emb.weight).id), step.summaries[("param_grad", "emb.weight")].as_dict()):
        assert stats["numel"] == 30
        assert stats["norm"] == pytest.approx(float(dense_expected.norm()), rel=1e-6)
        assert stats["mean"] == pytest.approx(float(dense_expected.mean()), rel=1e-6)
        assert stats["min"] == 0.0  # rows no index touched
        assert stats["max"] == pytest.approx(float(dense_expected.max()), rel=1e-6)
        assert (stats["nan"], stats["inf"]) == (0, 0)


def test_detached_and_no_grad_branches():
    w = torch.randn(3, requires_grad=True)

    def forward():
        h = w * 2
        side = h.detach().exp()  # detached: its graph ends here
        with torch.no_grad():
            quiet = (h * 10).sin()
        unused = h.cos()  # in the forward, but not reachable from the loss
        del unused
        return (h * side).sum() + (h + quiet).tanh().sum()

    run, oracle, loss = record_one(forward, {"w": w})
    oracle.check(run.steps[0])
    ops = run.steps[0].graph.ops()
    assert ops == reachable_ops([loss])
    assert "ExpBackward0" not in ops and "SinBackward0" not in ops and "CosBackward0" not in ops


def test_nan_and_inf_counts():
    x = torch.tensor([-1.0, 0.0, 4.0, 1.0], requires_grad=True)
    with vizgrad.record(keep=None) as run:
        y = x.sqrt()
        z = torch.tensor([1.0, 0.0, 2.0, 3.0], requires_grad=True)
        loss = y.sum() + z.log().sum()
        loss.backward()
    step = run.steps[0]
    x_stats = step.stats(step.graph.node_of(x).id)
    assert (x_stats["nan"], x_stats["inf"]) == (1, 1)  # sqrt'(-1) is NaN, sqrt'(0) is Inf
    z_stats = step.stats(step.graph.node_of(z).id)
    assert (z_stats["nan"], z_stats["inf"]) == (0, 1)  # log'(0) is Inf
    assert z_stats["max"] == float("inf") and z_stats["min"] == pytest.approx(1 / 3)
    assert x_stats["min"] == 0.25 and x_stats["max"] == float("inf")
    assert step.loss != step.loss  # NaN loss from sqrt(-1)
    check_stats(step)
    x_grad = step.grad_of(x)
    assert torch.isnan(x_grad[0]) and torch.isinf(x_grad[1])


def test_backward_limited_by_inputs_records_the_nodes_that_ran():
    """``backward(inputs=...)`` runs part of the graph: its gradients are kept, the rest have none."""
    w = torch.randn(3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    with vizgrad.record({"w": w, "b": b}, keep=None) as run:
        h = (w * 2).sin()
        scale = b.exp()
        loss = (h * scale).sum()
        dh, dw = torch.autograd.grad(loss, [h, w], retain_graph=True)
        loss.backward(inputs=[w])
        loss = ((w * 2).sin() * b.exp()).sum()
        loss.backward()  # the whole graph again: every node runs
    limited, full = run.steps
    assert_grad(limited.grad_of(h), dh, "h")
    assert_grad(limited.param_grad("w"), dw, "w")
    assert limited.grad_of(scale) is None and limited.param_grad("b") is None and b.grad is not None
    check_edges(limited)
    assert full.param_grad("b") is not None
    check_edges(full)
    check_stats(full)
