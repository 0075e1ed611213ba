"""Tests for module attribution (vizgrad.modules): every node's module call, leaves' owners and the module tree.

The oracle is independent of the global hooks under test: hooks registered on
each module itself note the ``grad_fn`` of what it returned, which must be a
node of that module (the innermost one: only modules without children are
asked), and ``named_parameters()`` names each parameter's owner.
"""

from __future__ import annotations

import sys
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vizgrad
from vizgrad.graph import Graph, ModuleInfo
from vizgrad.modules import MAX_CALLS, CallLog

from click.testing import CliRunner
from models import TinyGPT


def short(op: str) -> str:
    return op.removeprefix("torch::autograd::")


def output_oracle(root: nn.Module, prefix: str) -> tuple[list[tuple[str, torch.Tensor]], list]:
    """Hooks on every childless module noting its output tensors, with the paths the graph must give them."""
    seen: list[tuple[str, torch.Tensor]] = []
    handles = []
    for name, module in root.named_modules():
        if next(module.children(), None) is None:
            path = f"{prefix}.{name}" if prefix and name else prefix or name

            def note(module, args, output, path=path):
                outputs = output if isinstance(output, tuple) else (output,)
                seen.extend((path, t) for t in outputs if isinstance(t, torch.Tensor) and t.grad_fn is not None)

            handles.append(module.register_forward_hook(note))
    return seen, handles


def assert_outputs_attributed(graph: Graph, seen: list[tuple[str, torch.Tensor]]) -> int:
    checked = 0
    for path, tensor in seen:
        node = graph.node_of(tensor)
        assert node.module == path, (node.op, node.module, path)
        checked += 1
    return checked


def assert_leaves_owned(graph: Graph, root: nn.Module, prefix: str) -> None:
    owners = {}
    for name, param in root.named_parameters():
        owner = name.rpartition(".")[0]
        owners[f"{prefix}.{name}" if prefix else name] = f"{prefix}.{owner}" if prefix and owner else prefix or owner
    leaves = [node for node in graph.nodes if node.kind == "leaf"]
    assert leaves
    for node in leaves:
        assert node.module == owners[node.name], node.name


def assert_tree_matches(graph: Graph, root: nn.Module, prefix: str) -> None:
    """Every module in the tree is a real submodule with its class, under its real parent."""
    real = {(f"{prefix}.{name}" if prefix and name else prefix or name): module for name, module in root.named_modules()}
    by_path = {info.path: info for info in graph.modules}
    assert len(by_path) == len(graph.modules)  # one entry per path
    for info in graph.modules:
        if info.path not in real:
            continue
        assert info.type == type(real[info.path]).__name__
        if info.path != prefix:
            assert info.parent == info.path.rpartition(".")[0] if "." in info.path else prefix
            assert info.parent in by_path  # parents come with their children
    used = {node.module for node in graph.nodes if node.module is not None}
    assert used <= set(by_path)


# -- attribution on real model shapes ------------------------------------------------------------------------
def test_mlp_every_node_has_its_innermost_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4), nn.Tanh()), nn.Linear(4, 1))
    criterion = nn.MSELoss()
    x, y = torch.randn(5, 3), torch.randn(5, 1)
    with vizgrad.record() as run:
        for _ in range(2):
            loss = criterion(model(x) * 2, y)
            loss.backward()
    graph = run.steps[-1].graph
    got = [(short(node.op), node.module) for node in graph.nodes if node.kind != "root"]
    assert got == [
        ("MseLossBackward0", "criterion"), ("MulBackward0", None),
        ("AddmmBackward0", "model.3"), ("AccumulateGrad", "model.3"), ("TanhBackward0", "model.2.1"),
        ("AddmmBackward0", "model.2.0"), ("AccumulateGrad", "model.2.0"), ("ReluBackward0", "model.1"),
        ("AddmmBackward0", "model.0"), ("AccumulateGrad", "model.0"), ("TBackward0", "model.0"),
        ("AccumulateGrad", "model.0"), ("TBackward0", "model.2.0"), ("AccumulateGrad", "model.2.0"),
        ("TBackward0", "model.3"), ("AccumulateGrad", "model.3"),
    ]
    assert graph.modules == (
        ModuleInfo("model", "Sequential", 1, None), ModuleInfo("model.0", "Linear", 1, "model"),
        ModuleInfo("model.1", "ReLU", 1, "model"), ModuleInfo("model.2", "Sequential", 1, "model"),
        ModuleInfo("model.2.0", "Linear", 1, "model.2"), ModuleInfo("model.2.1", "Tanh", 1, "model.2"),
        ModuleInfo("model.3", "Linear", 1, "model"), ModuleInfo("criterion", "MSELoss", 1, None),
    )
    assert run.steps[0].graph is graph  # a loop's later steps reuse the graph, modules included


def test_cnn_with_batchnorm_against_per_module_hooks():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 10),
    )
    seen, handles = output_oracle(net, "net")
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([1, 2, 3, 4])
    with vizgrad.record() as run:
        loss = F.cross_entropy(net(images), labels)
        loss.backward()
        graph = run.steps[-1].graph
        assert assert_outputs_attributed(graph, seen) == 10
    for handle in handles:
        handle.remove()
    assert_leaves_owned(graph, net, "net")
    assert_tree_matches(graph, net, "net")
    ops = {short(node.op): node.module for node in graph.nodes if node.kind == "op"}
    assert ops["NllLossBackward0"] is None and ops["LogSoftmaxBackward0"] is None  # functional, outside modules
    batchnorm = [node.module for node in graph.nodes if node.op.startswith("NativeBatchNormBackward")]
    assert sorted(batchnorm) == ["net.1", "net.5"]


def test_transformer_nodes_fall_in_their_blocks_attention_and_mlp():
    torch.manual_seed(0)
    model = TinyGPT()
    seen, handles = output_oracle(model, "model")
    tokens = torch.randint(0, 11, (2, 6))
    with vizgrad.record() as run:
        loss = model(tokens, tokens)
        loss.backward()
        graph = run.steps[-1].graph
        assert assert_outputs_attributed(graph, seen) == 1 + 3 * 7 + 2
    for handle in handles:
        handle.remove()
    assert_tree_matches(graph, model, "model")
    softmax = sorted(node.module for node in graph.nodes if node.op.startswith("SoftmaxBackward"))
    assert softmax == ["model.h.0.attn", "model.h.1.attn", "model.h.2.attn"]
    residual = [node.module for node in graph.nodes if node.op.startswith("AddBackward")]
    assert sorted(residual) == sorted([f"model.h.{i}" for i in range(3)] * 2)  # x + ... in Block.forward
    assert {node.module for node in graph.nodes if node.op.startswith("NllLossBackward")} == {"model"}
    tied = graph.find("model.wte.weight")
    assert tied.module == "model.wte"  # the first module that registered the tied weight
    assert [info.path for info in graph.modules if info.parent == "model.h"] == ["model.h.0", "model.h.1", "model.h.2"]
    assert [info for info in graph.modules if info.path == "model.h"] == [ModuleInfo("model.h", "ModuleList", 0, "model")]


def test_transformer_encoder_layer_of_torch():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    x = torch.randn(2, 5, 8)
    with vizgrad.record() as run:
        layer(x).pow(2).mean().backward()
    graph = run.steps[-1].graph
    modules = {node.module for node in graph.nodes}
    assert {"layer.self_attn", "layer.linear1", "layer.linear2", "layer.norm1", "layer.norm2"} <= modules
    assert_leaves_owned(graph, layer, "layer")
    attention = {node.module for node in graph.nodes if node.op.startswith("ScaledDotProduct")}
    assert attention == {"layer.self_attn"}  # made by F.multi_head_attention_forward inside it


def test_a_module_called_in_a_loop_has_one_call_per_time_step():
    torch.manual_seed(0)
    cell = nn.LSTMCell(3, 4)
    head = nn.Linear(4, 1)
    inputs = torch.randn(5, 2, 3)
    with vizgrad.record() as run:
        for _ in range(2):
            h = c = torch.zeros(2, 4)
            states = []
            for x in inputs:
                h, c = cell(x, (h, c))
                states.append(h)
            loss = head(h).pow(2).mean()
            loss.backward()
            graph = run.steps[-1].graph
            calls = [graph.node_of(state).call for state in states]
            assert calls == [0, 1, 2, 3, 4]
            assert {graph.node_of(state).module for state in states} == {"cell"}
    assert [info for info in graph.modules if info.path == "cell"] == [ModuleInfo("cell", "LSTMCell", 5, None)]
    cell_nodes = [node for node in graph.nodes if node.module == "cell" and node.kind == "op"]
    assert sorted({node.call for node in cell_nodes}) == [0, 1, 2, 3, 4]
    assert run.steps[0].graph is run.steps[1].graph


def test_functional_code_between_modules_has_no_module_and_inside_a_forward_its_modules():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.sigmoid(self.a(x)) * 3)

    torch.manual_seed(0)
    net = Net()
    x = torch.randn(4, 3)
    with vizgrad.record() as run:
        hidden = torch.tanh(net.a(x))  # top level: functional op between two calls
        loss = (net(hidden) - 1).pow(2).mean()
        loss.backward()
    graph = run.steps[-1].graph
    by_op = {}
    for node in graph.nodes:
        by_op.setdefault(short(node.op), []).append((node.module, node.call))
    assert by_op["TanhBackward0"] == [(None, 0)]
    assert by_op["SigmoidBackward0"] == [("net", 0)] and by_op["MulBackward0"] == [("net", 0)]
    assert by_op["PowBackward0"] == [(None, 0)] and by_op["MeanBackward0"] == [(None, 0)]
    assert sorted(by_op["AddmmBackward0"]) == [("net.a", 0), ("net.a", 1), ("net.b", 0)]
    assert [(m.path, m.calls, m.parent) for m in graph.modules] == [
        ("net.a", 2, None), ("net", 1, None), ("net.b", 1, "net")]


def test_named_by_record_module_the_root_is_the_empty_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with vizgrad.record(model) as run:
        model(torch.randn(3, 2)).sum().backward()
    graph = run.steps[-1].graph
    assert graph.find("0.weight").module == "0"
    assert [(m.path, m.type, m.parent) for m in graph.modules] == [
        ("", "Sequential", None), ("0", "Linear", ""), ("1", "ReLU", ""), ("2", "Linear", "")]


def test_compiled_module_is_one_node_of_its_module():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = torch.compile(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), backend="aot_eager")
            self.head = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.enc(x))

    torch.manual_seed(0)
    net = Net()
    x = torch.randn(2, 3)
    bare = net(x).sum()
    bare.backward()
    want = {name: p.grad.clone() for name, p in net.named_parameters()}
    net.zero_grad()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with vizgrad.record() as run:  # torch's notice that global hooks see compiled modules twice: handled
            for _ in range(2):
                net.zero_grad()
                net(x).sum().backward()
    assert not [w for w in caught if "global hooks" in str(w.message)]
    graph = run.steps[-1].graph
    compiled = [node for node in graph.nodes if node.op == "CompiledFunctionBackward"]
    assert [node.module for node in compiled] == ["net.enc"]  # the compiled region stays one node
    assert not any(node.op.startswith("ReluBackward") for node in graph.nodes)
    assert {node.module for node in graph.nodes if node.op.startswith("AddmmBackward")} == {"net.head"}
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, want[name])


# -- lifetime, threads, files ---------------------------------------------------------------------------------
def test_module_calls_are_logged_only_inside_record_and_calls_before_it_are_not_attributed():
    call = nn.Module.__call__
    lin = nn.Linear(2, 1)
    early = lin(torch.ones(1, 2))  # made before recording: its call was never logged
    with vizgrad.record() as run:
        assert nn.Module.__call__ is not call and nn.Module.__call__.__wrapped__ is call
        (early.sum() + lin(torch.ones(1, 2)).sum()).backward()
    assert nn.Module.__call__ is call
    graph = run.steps[-1].graph
    assert sorted((m or "-") for m in (n.module for n in graph.nodes if n.op.startswith("AddmmBackward"))) == \
        ["-", "lin"]
    assert vizgrad.trace(lin(torch.ones(1, 2)).sum()).modules == ()  # outside record(): nothing logged


def test_a_forward_that_raises_leaves_no_call_open():
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("bad batch")

    outer, inner = nn.Linear(2, 2), Broken()
    with vizgrad.record() as run:
        with pytest.raises(RuntimeError, match="bad batch"):
            inner(outer(torch.ones(1, 2)))
        outer(torch.ones(1, 2)).sum().backward()
    assert [(m.path, m.parent) for m in run.steps[0].graph.modules] == [("outer", None)]


def test_threads_attribute_their_own_module_calls():
    results: dict[str, Graph] = {}
    errors: list[BaseException] = []

    def train(name: str, model: nn.Module, run: vizgrad.Run) -> None:
        try:
            for _ in range(3):
                model(torch.randn(4, 3)).sum().backward()
            results[name] = model
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    first = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1))
    second = nn.Sequential(nn.Linear(3, 1), nn.Sigmoid())
    with vizgrad.record(first) as run:
        threads = [threading.Thread(target=train, args=(n, m, run)) for n, m in (("a", first), ("b", second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors and len(run.steps) == 6
    for step in run.steps:
        ops = {short(node.op): node.module for node in step.graph.nodes if node.kind == "op"}
        if "TanhBackward0" in ops:
            assert ops["TanhBackward0"] == "1"
        else:
            assert ops["SigmoidBackward0"].endswith("1") and ops["AddmmBackward0"].endswith("0")


def test_modules_are_saved_in_run_files(tmp_path):
    torch.manual_seed(0)
    model = TinyGPT(layers=2)
    tokens = torch.randint(0, 11, (2, 5))
    with vizgrad.record(save=tmp_path / "run.vizgrad") as run:
        model(tokens, tokens).backward()
    graph = run.steps[0].graph
    loaded = vizgrad.load(tmp_path / "run.vizgrad").steps[0].graph
    assert loaded == graph and loaded.modules == graph.modules and len(graph.modules) > 10
    assert [n.module for n in loaded.nodes] == [n.module for n in graph.nodes]
    assert Graph.from_json(graph.to_json()) == graph


def test_a_script_run_by_vizgrad_render_gets_its_modules(tmp_path):
    from vizgrad.cli import cli

    script = tmp_path / "train.py"
    script.write_text(
        "import torch\nfrom torch import nn\n"
        "model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for _ in range(3):\n"
        "    opt.zero_grad()\n"
        "    model(torch.randn(5, 3)).pow(2).mean().backward()\n"
        "    opt.step()\n")
    result = CliRunner().invoke(cli, ["render", str(script), "-q", "--save", str(tmp_path / "run.vizgrad"),
                                      "-o", str(tmp_path / "r.html")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    graph = vizgrad.load(tmp_path / "run.vizgrad").steps[-1].graph
    assert [m.path for m in graph.modules] == ["model", "model.0", "model.1", "model.2"]
    assert graph.find("model.2.bias").module == "model.2"


def test_call_log_forgets_old_calls_but_never_open_ones(monkeypatch):
    from vizgrad import modules

    monkeypatch.setattr(modules, "MAX_CALLS", 4)
    log = CallLog()
    outer, inner = nn.Identity(), nn.Identity()
    log.enter(outer, sys._getframe())
    for _ in range(20):
        log.enter(inner, sys._getframe())
        log.leave(inner)
    assert log.base == 0 and len(log.calls) == 21  # the open outer call holds the log
    log.leave(outer)
    for _ in range(6):
        log.enter(inner, sys._getframe())
        log.leave(inner)
    assert len(log.calls) <= 2 * 4 and log.base > 0
    assert log.module(log.base) is inner
    assert MAX_CALLS >= 1 << 16


def test_the_log_holds_no_module_alive_and_is_cleared_when_recording_ends():
    import gc
    import weakref

    from vizgrad import modules

    kept = nn.Linear(2, 1)

    def forward() -> tuple[weakref.ref, torch.Tensor]:
        temporary = nn.Linear(2, 2)  # made and dropped every step
        return weakref.ref(temporary), kept(temporary(torch.ones(1, 2))).sum()

    with vizgrad.record() as run:
        for _ in range(2):
            probe, loss = forward()
            loss.backward()
            del loss
            gc.collect()
            assert probe() is None  # the log's reference is weak
        log = modules.call_log()
        assert log is not None and log.calls
    assert not log.calls and not log.stack  # cleared with the hooks
    assert [n.module for n in run.steps[-1].graph.nodes if n.op.startswith("AddmmBackward")] == ["kept", None]
