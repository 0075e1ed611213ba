"""Tests for views (vizgrad.view): collapsed modules, folded repeats, the default view's budget, and their gradients.

Gradients of boxes are checked against an oracle: ``torch.autograd.grad`` of
the loss with respect to the tensors that cross each box's boundary, caught
by forward hooks on the modules themselves.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn

import vizgrad
from vizgrad import frames
from vizgrad.errors import UsageError
from vizgrad.graph import Graph
from vizgrad.view import (MAX_BARS, ViewOptions, ViewState, bar_buckets, explore, module_scopes, plan_of, scope_keys,
                          view_of)

from models import TinyGPT


def norm(*tensors: torch.Tensor | None) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors if t is not None))


def box_stats(run: vizgrad.Run, drawn: Graph) -> dict[str, dict]:
    """Each box's inspector numbers at the run's last step, by box key."""
    painted = frames.paint_segment([run.steps[-1]], frames.run_scale(run), graph=drawn)
    plan = plan_of(drawn)
    return {box.key: {name: (column[-1] if name != "bars" else [bar[-1] for bar in column])
                      for name, column in painted["nodes"][box.id]["stats"].items()}
            for box in plan.boxes.values()}


def hooked_io(modules: dict[str, nn.Module]) -> tuple[dict[str, list], list]:
    """Forward hooks noting each module's input and output tensors at every call."""
    seen: dict[str, list] = {name: [] for name in modules}
    handles = [module.register_forward_hook(lambda m, args, out, name=name: seen[name].append((args, out)))
               for name, module in modules.items()]
    return seen, handles


def test_collapsed_modules_carry_the_gradient_in_and_out_of_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x = torch.randn(5, 3, requires_grad=True)
    seen, handles = hooked_io({str(k): model[k] for k in range(3)})
    with vizgrad.record(model) as run:
        loss = model(x).pow(2).sum()
        loss.backward(retain_graph=True)  # the oracle differentiates the very same graph
    for handle in handles:
        handle.remove()
    y0, t, y2 = (seen[str(k)][0][1] for k in range(3))
    g_x, g_y0, g_t, g_y2 = torch.autograd.grad(loss, [x, y0, t, y2])
    drawn = view_of(run.steps[-1].graph, ViewOptions(depth=1))
    plan = plan_of(drawn)
    assert sorted(box.key for box in plan.boxes.values()) == ["0", "1", "2"]
    assert [key for key, _, _ in plan.clusters] == [""]  # the model itself is drawn open
    stats = box_stats(run, drawn)
    approx = lambda value: pytest.approx(value, rel=1e-3)  # the report keeps 4 digits
    assert stats["2"]["in"] == approx(norm(g_y2)) and stats["2"]["out"] == approx(norm(g_t))
    assert stats["1"]["in"] == approx(norm(g_t)) and stats["1"]["out"] == approx(norm(g_y0))
    assert stats["0"]["in"] == approx(norm(g_y0)) and stats["0"]["out"] == approx(norm(g_x))
    assert stats["0"]["inside"] == approx(max(norm(g_y0), norm(model[0].weight.grad), norm(model[0].bias.grad)))
    assert stats["1"]["inside"] == approx(norm(g_t))
    # Edges between boxes carry the gradient of the tensor crossing them.
    edges = frames.paint_segment([run.steps[-1]], frames.run_scale(run), graph=drawn)["edges"]
    assert set(edges) == {f"{e.src}:{e.slot}" for e in drawn.edges if e.kind in ("grad", "root")}
    box_of = {box.key: box.id for box in plan.boxes.values()}
    between = [e for e in drawn.edges if (e.src, e.dst) == (box_of["2"], box_of["1"])]
    assert len(between) == 1 and len(plan.bundles[f"{between[0].src}:{between[0].slot}"]) == 1


def test_a_cell_called_in_a_loop_folds_into_one_recurrent_box_with_a_bar_per_time_step():
    torch.manual_seed(0)
    cell = nn.LSTMCell(2, 3)
    inputs = torch.randn(6, 4, 2)
    seen, handles = hooked_io({"cell": cell})
    with vizgrad.record() as run:
        h = c = None
        outputs = []
        for x in inputs:
            h, c = cell(x) if h is None else cell(x, (h, c))
            outputs.append(h)
        loss = torch.stack(outputs).pow(2).mean()
        loss.backward(retain_graph=True)
    for handle in handles:
        handle.remove()
    graph = run.steps[-1].graph
    drawn = view_of(graph, ViewOptions(depth=0))
    plan = plan_of(drawn)
    (box,) = plan.boxes.values()
    assert (box.kind, box.key, box.count, box.recurrent, box.type) == ("fold", "cell", 6, True, "LSTMCell")
    assert len(drawn.nodes) == plan.visible < len(graph.nodes)
    stats = box_stats(run, drawn)["cell"]
    hs = [out[0] for _, out in seen["cell"]]
    cs = [out[1] for _, out in seen["cell"]]
    grads = torch.autograd.grad(loss, hs + cs[:-1], retain_graph=True)  # the last c is used by nothing
    g_h, g_c = grads[:6], grads[6:] + (None,)
    # Each instance's bar: the gradient of what it hands on (to the loss and to the next call).
    assert stats["bars"] == [pytest.approx(norm(g_h[k], g_c[k]), rel=1e-3) for k in range(6)]
    assert stats["in"] == pytest.approx(norm(*g_h), rel=1e-3)  # the fold's outputs the stack takes
    # It hands on the gradients of the cell's weights (kept beside the fold: every call uses them), whole.
    assert stats["out"] == pytest.approx(norm(*(p.grad for p in cell.parameters())), rel=1e-3)


def test_long_folds_share_bars_and_keep_the_largest():
    assert bar_buckets(5) == [(k, k + 1) for k in range(5)]
    buckets = bar_buckets(1000)
    assert len(buckets) == MAX_BARS and buckets[0][0] == 0 and buckets[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(buckets, buckets[1:]))


def gpt_run(layers: int = 12) -> tuple[vizgrad.Run, nn.Module]:
    torch.manual_seed(0)
    model = TinyGPT(layers=layers)
    tokens = torch.randint(0, 11, (2, 6))
    with vizgrad.record(model) as run:
        model(tokens, tokens).backward()
    return run, model


def test_a_gpt_opens_with_its_blocks_folded_within_the_budget():
    run, _ = gpt_run(12)
    graph = run.steps[-1].graph
    assert len(graph.nodes) > 300
    drawn = view_of(graph)
    plan = plan_of(drawn)
    assert plan.visible <= 150 and len(drawn.nodes) == plan.visible
    folds = [box for box in plan.boxes.values() if box.kind == "fold"]
    assert [(box.key, box.count, box.type) for box in folds] == [("h.0-11", 12, "Block")]
    assert not folds[0].recurrent  # blocks feed one another, but no block is called twice
    # Unfolding shows the twelve blocks; expanding one splits the fold around it.
    unfolded = plan_of(view_of(graph, ViewOptions(depth=plan.depth, unfold=("h",))))  # as a click in the report
    assert sorted(box.key for box in unfolded.boxes.values() if box.kind == "module" and box.type == "Block") == \
        sorted(f"h.{k}" for k in range(12))
    opened = plan_of(view_of(graph, ViewOptions(depth=plan.depth, expand=("h.3.attn",))))
    assert sorted(box.key for box in opened.boxes.values() if box.kind == "fold") == ["h.0-2", "h.4-11"]
    assert {"h.3", "h.3.attn"} <= {key for key, _, _ in opened.clusters}
    assert "h.3.attn.qkv" in {key for key, _, _ in opened.clusters}  # inside, the view's depth goes on
    assert opened.visible <= 150
    collapsed = plan_of(view_of(graph, ViewOptions(depth=0)))
    assert [box.key for box in collapsed.boxes.values()] == [""]  # the whole model as one box


def test_fold_bars_of_blocks_follow_the_oracle_per_block():
    torch.manual_seed(0)
    model = TinyGPT(layers=4)
    tokens = torch.randint(0, 11, (2, 6))
    seen, handles = hooked_io({f"h.{k}": block for k, block in enumerate(model.h)})
    with vizgrad.record(model) as run:
        loss = model(tokens, tokens)
        loss.backward(retain_graph=True)
    for handle in handles:
        handle.remove()
    drawn = view_of(run.steps[-1].graph, ViewOptions(depth=2))  # the model and its ModuleList open
    (fold,) = [box for box in plan_of(drawn).boxes.values() if box.kind == "fold"]
    assert (fold.key, fold.count, fold.recurrent) == ("h.0-3", 4, False)
    stats = box_stats(run, drawn)["h.0-3"]
    outputs = [seen[f"h.{k}"][0][1] for k in range(4)]
    grads = torch.autograd.grad(loss, outputs)
    assert stats["bars"] == [pytest.approx(norm(g), rel=1e-3) for g in grads]  # one bar per block, in order
    assert stats["in"] == pytest.approx(norm(grads[-1]), rel=1e-3)  # only the last block's output leaves the fold


def test_the_default_view_of_a_small_model_draws_everything_inside_module_clusters():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    with vizgrad.record(model) as run:
        model(torch.randn(2, 3)).sum().backward()
    graph = run.steps[-1].graph
    drawn = view_of(graph)
    plan = plan_of(drawn)
    assert not plan.boxes and len(drawn.nodes) == len(graph.nodes)
    assert [key for key, _, _ in plan.clusters] == ["", "0", "1", "2"]
    assert scope_keys(graph) == ["", "0", "1", "2"]
    dot = frames.graph_dot(drawn)
    assert dot.count("subgraph cluster_") == 4


def test_a_graph_without_modules_is_its_own_view():
    w = torch.ones(3, requires_grad=True)
    graph = vizgrad.trace((w * 2).sum(), params={"w": w})
    assert view_of(graph) is graph and plan_of(graph) is None


@pytest.mark.parametrize("options, message", [
    (dict(depth=-1), "depth"), (dict(max_nodes=0), "max_nodes"), (dict(depth=1.5), "depth"),
])
def test_bad_view_options_say_what_to_give(options, message):
    with pytest.raises(UsageError, match=message):
        ViewOptions(**options)


class Twice(nn.Module):
    """A module that runs its child twice a call (an RNN cell's two gates, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(2, 2)

    def forward(self, x):
        return self.inner(self.inner(x).tanh())


def test_a_module_run_twice_keeps_the_instances_of_its_children_apart():
    outer = Twice()
    with vizgrad.record(outer) as run:
        y = outer(outer(torch.randn(1, 2)))
        y.sum().backward()
    graph = run.steps[-1].graph
    inner = next(info for info in graph.modules if info.path == "inner")
    assert inner.calls == 4 and inner.within == (0, 0, 1, 1)
    keys = scope_keys(graph)
    assert keys[0] == "@0" and "@1" in keys  # the root (path "") runs twice
    drawn = plan_of(view_of(graph, ViewOptions(depth=1, fold=False)))
    assert sorted(box.key for box in drawn.boxes.values()) == ["inner@0", "inner@1", "inner@2", "inner@3"]


def test_the_dot_of_a_view_matches_golden():
    """Clusters for open modules, boxes with in / out / max lines, a fold with its strip, bundled edges."""
    from test_frames import assert_golden

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)), nn.Linear(3, 1))
    cell = nn.RNNCell(1, 2)
    with vizgrad.record(params={**dict(model.named_parameters(prefix="model")),
                                **dict(cell.named_parameters(prefix="cell"))}) as run:
        h = None
        for x in torch.randn(3, 4, 1):
            h = cell(x) if h is None else cell(x, h)
        (model(torch.randn(4, 2)).sum() + h.sum()).backward()
    graph = run.steps[-1].graph
    drawn = view_of(graph, ViewOptions(depth=2, collapse=("model.2",)))
    assert_golden("view.dot", frames.graph_dot(drawn))
    assert graph.to_dot() == frames.graph_dot(view_of(graph), values=False)  # Graph.to_dot draws the default view
    assert graph.to_dot(depth=2, collapse=["model.2"], values=True) == frames.graph_dot(drawn)


def test_unfolding_a_long_fold_shows_its_ends_around_a_fold_of_the_middle():
    cell = nn.RNNCell(1, 2)
    with vizgrad.record(params=dict(cell.named_parameters(prefix="cell"))) as run:
        h = None
        for x in torch.randn(30, 1, 1):
            h = cell(x) if h is None else cell(x, h)
        h.sum().backward()
    graph = run.steps[-1].graph
    (fold,) = plan_of(view_of(graph)).boxes.values()
    assert (fold.key, fold.count) == ("cell", 30)

    def drawn(*unfold: str) -> list[str]:
        plan = plan_of(view_of(graph, ViewOptions(unfold=unfold)))
        return [box.key for box in plan.boxes.values()]

    ends = [f"cell@{k}" for k in (*range(6), *range(24, 30))]
    assert sorted(drawn("cell")) == sorted(ends + ["cell@6-23"])
    assert "cell@12-17" in drawn("cell", "cell@6-23")
    inner = drawn("cell", "cell@6-23", "cell@12-17")
    assert sorted(inner) == sorted(f"cell@{k}" for k in range(30))  # six are few enough to show them all


def test_explore_prepares_the_clicks_from_the_first_view_and_back():
    torch.manual_seed(0)
    model = TinyGPT(layers=4)
    with vizgrad.record(model) as run:
        model(torch.randint(0, 11, (2, 6)), torch.randint(0, 11, (2, 6))).backward()
    graph = run.steps[-1].graph
    states, moves = explore(graph, budget=12)
    assert states[0] == ViewState() and len(states) == len(moves) <= 12
    unfolded = moves[0]["unfold"]["h.0-3"]
    assert states[unfolded].unfold == ("h.0-3",)
    opened = moves[unfolded]["expand"]["h.2"]
    assert states[opened] == ViewState(expand=("h.2",), unfold=("h.0-3",))
    assert moves[opened]["collapse"]["h.2"] == unfolded  # closing what a click opened goes back
    plan = plan_of(view_of(graph, states[opened].options(graph, ViewOptions())))
    assert "h.2" in {key for key, _, _ in plan.clusters}
    assert {"h.2.attn", "h.2.mlp"} <= {box.key for box in plan.boxes.values()}  # one level at a time
    with pytest.raises(UsageError, match="action"):
        ViewState().after("open", "h.2")


def test_a_report_counts_the_views_it_lays_out_as_it_goes():
    run, _ = gpt_run(4)
    report = run.report(views=5, engine="wasm")
    ticks = []
    report.progress = ticks.append
    assert report.layouts_to_draw() == 5  # five views of one graph shape
    report.html()
    assert ticks == [1] * 5
    with pytest.raises(UsageError, match="views"):
        run.report(views=0)


def only_fold(run: vizgrad.Run, max_nodes: int, least_nodes: int):
    """The newest step's graph (without modules), its view within ``max_nodes``, the view's plan and its one fold."""
    graph = run.steps[-1].graph
    assert not graph.modules and len(graph.nodes) > least_nodes
    drawn = view_of(graph, ViewOptions(max_nodes=max_nodes))
    plan = plan_of(drawn)
    (fold,) = plan.boxes.values()
    return graph, drawn, plan, fold


def test_a_long_chain_outside_modules_folds_with_a_bar_per_op():
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    with vizgrad.record(params={"w": w}) as run:
        ys = [w * 2]
        for k in range(40):
            ys.append(ys[-1] * (1.0 + k / 10) if k % 2 else ys[-1].sin())  # a period of two ops
        loss = ys[-1].pow(2).sum()
        loss.backward(retain_graph=True)
    graph, drawn, plan, fold = only_fold(run, max_nodes=10, least_nodes=40)
    assert (fold.key, fold.type, fold.count, fold.chain, fold.recurrent) == ("chain1", "SinBackward0+MulBackward0", 20,
                                                                              True, True)
    assert plan.visible <= 10 and "(chain)" in frames.graph_dot(drawn)
    stats = box_stats(run, drawn)["chain1"]
    # Each period's bar: the gradient of what it hands on (its last op's output), in forward order.
    grads = torch.autograd.grad(loss, ys[2::2])
    assert stats["bars"] == [pytest.approx(norm(g), rel=1e-3) for g in grads]
    assert view_of(graph) is graph  # 44 nodes fit the default budget: drawn as they are


def test_a_functional_rnn_folds_its_time_steps_with_their_side_branches():
    torch.manual_seed(0)
    wx, wh = torch.randn(4, 8, requires_grad=True), (0.3 * torch.randn(8, 8)).requires_grad_()
    b = torch.zeros(8, requires_grad=True)
    with vizgrad.record(params={"wx": wx, "wh": wh, "b": b}) as run:
        h, hs = torch.zeros(2, 8), []
        for x in torch.randn(24, 2, 4):
            h = torch.tanh(x @ wx + h @ wh + b)  # x @ wx branches off the recurrence every step
            hs.append(h)
        loss = h.pow(2).sum()
        loss.backward(retain_graph=True)
    graph, drawn, plan, fold = only_fold(run, max_nodes=20, least_nodes=100)
    assert (fold.key, fold.count, fold.chain) == ("chain1", 24, True)
    # Every time step's ops are in the fold, its x @ wx included: what is drawn beside it is the loss's end.
    mm = [at for at, node in enumerate(graph.nodes) if node.op == "MmBackward0"]
    assert len(mm) == 2 * 24 and set(mm) <= set(fold.members)
    assert plan.visible <= 10
    stats = box_stats(run, drawn)["chain1"]
    grads = torch.autograd.grad(loss, hs)  # each period hands on its h
    assert stats["bars"] == [pytest.approx(norm(g), rel=1e-3) for g in grads]


def test_a_functional_rnn_with_its_loss_summed_over_time_folds_the_sum_and_the_recurrence():
    torch.manual_seed(0)
    wx, wh = torch.randn(4, 8, requires_grad=True), (0.3 * torch.randn(8, 8)).requires_grad_()
    b = torch.zeros(8, requires_grad=True)
    with vizgrad.record(params={"wx": wx, "wh": wh, "b": b}) as run:
        h, hs, total = torch.zeros(2, 8), [], 0
        for x in torch.randn(30, 2, 4):
            h = torch.tanh(x @ wx + h @ wh + b)  # h_t feeds the next step and the loss: the spine is shared
            hs.append(h)
            total = total + h.pow(2).mean()
        total.backward(retain_graph=True)
    graph = run.steps[-1].graph
    assert not graph.modules and len(graph.nodes) > 240
    drawn = view_of(graph, ViewOptions(max_nodes=40))
    plan = plan_of(drawn)
    folds = {fold.type: fold for fold in plan.boxes.values()}
    assert set(folds) == {"AddBackward0", "MmBackward0+AddBackward0+TanhBackward0"} and plan.visible <= 20
    recurrence, summed = folds["MmBackward0+AddBackward0+TanhBackward0"], folds["AddBackward0"]
    assert recurrence.chain and summed.chain and recurrence.count >= 28 and summed.count >= 28
    # The time steps' ops are in a fold (the first and last steps differ: total = 0 + ..., the loss end), and no
    # node is in two.
    folded = set(recurrence.members) | set(summed.members)
    assert len(folded) == len(recurrence.members) + len(summed.members)
    inside = Counter(graph.nodes[at].op for at in folded)
    assert inside["MmBackward0"] >= 2 * 28 and inside["TanhBackward0"] >= 28 and inside["PowBackward0"] >= 28
    # The recurrence's bars: the whole gradient of each h_t (from the next step and from its loss term).
    stats = box_stats(run, drawn)[recurrence.key]
    grads = torch.autograd.grad(total, hs)
    count = len(stats["bars"])
    assert count == recurrence.count
    assert stats["bars"] == [pytest.approx(norm(g), rel=1e-3) for g in grads[len(grads) - count:]]


def test_a_residual_stack_without_modules_folds_its_layers_by_the_levels_of_their_ops():
    torch.manual_seed(0)
    ws = [(torch.randn(8, 8) * 0.3).requires_grad_() for _ in range(40)]
    with vizgrad.record(params={f"w{k}": w for k, w in enumerate(ws)}) as run:
        y = torch.randn(2, 8, requires_grad=True)
        ys = [y]
        for w in ws:
            y = y + torch.relu(y @ w)  # y is used twice each layer: no op is used by the next alone
            ys.append(y)
        loss = y.pow(2).sum()
        loss.backward(retain_graph=True)
    graph, drawn, plan, fold = only_fold(run, max_nodes=20, least_nodes=150)
    assert (fold.count, fold.chain) == (40, True) and fold.type == "MmBackward0+ReluBackward0+AddBackward0"
    assert plan.visible <= 10
    # Each layer's bar: the gradient of the stream it hands on.
    stats = box_stats(run, drawn)[fold.key]
    assert stats["bars"] == [pytest.approx(norm(g), rel=1e-3) for g in torch.autograd.grad(loss, ys[1:])]


def test_a_functional_lstm_with_its_loss_summed_over_time_folds_its_cell_body():
    torch.manual_seed(0)
    w = (torch.randn(12, 32) * 0.3).requires_grad_()
    with vizgrad.record(params={"w": w}) as run:
        h = c = torch.zeros(2, 8)
        total = 0
        for x in torch.randn(60, 2, 4):
            i, f, g, o = (torch.cat([x, h], 1) @ w).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # two states, h and c, each used twice
            h = torch.sigmoid(o) * torch.tanh(c)
            total = total + h.pow(2).mean()
        total.backward()
    graph = run.steps[-1].graph
    assert len(graph.nodes) > 900
    scopes = module_scopes(graph)
    plan = plan_of(view_of(graph, ViewOptions(max_nodes=60)))
    assert plan.visible <= 40
    body = max(plan.boxes.values(), key=lambda box: len(box.members))
    assert body.count >= 55 and body.type.endswith("+…")
    # The instances are alike (one loop body each, cut where the levels fall), and no node is in two.
    instances = [scope for (path, _), scope in scopes.by_id.items() if path == body.key]
    assert len(instances) == body.count
    assert len({tuple(sorted(Counter(graph.nodes[at].op for at in scope.nodes).items())) for scope in instances}) == 1
    members = [at for scope in scopes.by_id.values() for at in scope.nodes]
    assert len(members) == len(set(members))


def test_a_chain_inside_a_side_branch_folds_with_the_step_it_is_in():
    torch.manual_seed(0)
    wh, p = (0.3 * torch.randn(4, 4)).requires_grad_(), torch.randn(2, 4, requires_grad=True)
    with vizgrad.record(params={"wh": wh, "p": p}) as run:
        h = torch.zeros(2, 4)
        for _ in range(20):
            s = p * 1.0
            for _ in range(10):
                s = s.sin() * 1.01  # a repeated chain of its own, beside the recurrence
            h = torch.tanh(s + h @ wh)
        h.sum().backward()
    graph = run.steps[-1].graph
    plan = plan_of(view_of(graph, ViewOptions(max_nodes=40)))
    # One fold of the time steps, each step's inner chain inside it: no node is in two instances. The first
    # step (its h from zeros) is outside that fold; its own inner chain folds on its own.
    fold, first = sorted(plan.boxes.values(), key=lambda box: -len(box.members))
    members = [at for scope in module_scopes(graph).by_id.values() for at in scope.nodes]
    assert fold.count >= 19 and len(members) == len(set(members))
    assert sum(graph.nodes[at].op == "SinBackward0" for at in fold.members) >= 19 * 10
    assert (first.type, first.count) == ("SinBackward0+MulBackward0", 10) and not set(first.members) & set(fold.members)


def test_weights_of_a_module_never_called_sit_in_the_module_that_reads_them():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)  # attention reads out_proj.weight, never calls it
    with vizgrad.record(layer) as run:
        layer(torch.randn(3, 2, 8)).sum().backward()
    graph = run.steps[-1].graph
    assert "self_attn.out_proj" not in {info.path for info in graph.modules}
    plan = plan_of(view_of(graph, ViewOptions(depth=1)))
    attention = next(box for box in plan.boxes.values() if box.key == "self_attn")
    weight = next(at for at, node in enumerate(graph.nodes) if node.name and node.name.endswith("out_proj.weight"))
    assert weight in attention.members  # inside the attention box, not loose beside the model


def test_review_cases_fold_keys_exact_clicks_chain_names_and_closing_what_was_opened():
    cell = Twice()
    with vizgrad.record(cell) as run:
        x = torch.randn(1, 2)
        for _ in range(4):
            x = cell(x)
        x.sum().backward()
    graph = run.steps[-1].graph
    # Two calls of `a` in each of four calls of the cell: opening two cells leaves folds of `a` in each, apart.
    state = ViewState(expand=("@1", "@2"), unfold=("",))
    plan = plan_of(view_of(graph, state.options(graph, ViewOptions(depth=1))))
    keys = [box.key for box in plan.boxes.values()]
    assert len(keys) == len(set(keys))
    # Closing a call closes what was opened inside it (its children's calls have keys of their own).
    from vizgrad.view import _scopes_of

    inside = _scopes_of(graph).under("@1")
    assert inside == {"@1", "inner@2", "inner@3"}
    assert ViewState(expand=("@1", "inner@2")).after("collapse", "@1", inside) == ViewState()

    class Coder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(3))
            self.decoder = nn.Module()
            self.decoder.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(3))
            self.chain1 = nn.Linear(2, 2)  # a module named as the made-up chain scopes are

        def forward(self, x):
            for layer in [*self.layers, *self.decoder.layers]:
                x = layer(x)
            x = self.chain1(x)
            for _ in range(20):
                x = x * 1.01
            return x

    model = Coder()
    with vizgrad.record(model) as run:
        model(torch.randn(1, 2)).sum().backward()
    graph = run.steps[-1].graph
    keys = scope_keys(graph)
    assert len(keys) == len(set(keys)) and "chain1" in keys  # the module keeps its name; the chain takes another
    assert [k for k in keys if k.startswith("chain")][1:3] == ["chain2@0", "chain2@1"]
    clicked = ViewState(expand=("layers.1",))
    plan = plan_of(view_of(graph, clicked.options(graph, ViewOptions(depth=1, fold=False))))
    open_keys = {key for key, _, _ in plan.clusters}
    assert "layers.1" in open_keys and "decoder.layers.1" not in open_keys  # a click names one module
    named = plan_of(view_of(graph, ViewOptions(depth=1, fold=False, expand=("layers.1",))))
    assert {"layers.1", "decoder.layers.1"} <= {key for key, _, _ in named.clusters}  # a name: every one ending so
