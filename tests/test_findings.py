"""run.findings() on programs whose diagnosis is known: the step, op and module of each finding are exactly those."""

from __future__ import annotations

import math
import runpy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import vizgrad
from vizgrad.errors import UsageError
from vizgrad.findings import Finding, Thresholds, compare_manual, zeros_due

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _only(run, kind: str) -> Finding:
    found = [finding for finding in run.findings() if finding.kind == kind]
    assert len(found) == 1, run.findings()
    return found[0]


class _Head(nn.Module):
    """A module whose own op makes the non-finite value (its output's node is that op)."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.op(x * self.scale)


def _train(model, inputs, *, activations=False, lr=0.0):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with vizgrad.record(model, activations=activations) as run:
        for x in inputs:
            optimizer.zero_grad()
            model(x).sum().backward()
            optimizer.step()
    return run


# -- nonfinite: in the backward pass, in engine order ---------------------------------------------------------
def test_a_sqrt_at_zero_is_the_origin_on_the_step_it_reaches_zero():
    model = nn.Sequential(nn.Linear(3, 3), _Head(torch.sqrt))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3))
        model[0].bias.zero_()
    inputs = [torch.full((2, 3), value) for value in (4.0, 1.0, 0.0, 9.0)]  # sqrt(0) at step 2: d/dx = inf
    run = _train(model, inputs)
    finding = _only(run, "nonfinite")
    # SGD's update with a NaN gradient makes the parameters NaN (even at lr=0): step 3 follows from step 2.
    assert (finding.step, finding.op, finding.module, finding.count) == (2, "SqrtBackward0", "1", 2)
    assert finding.detail["params_from"] == 3
    assert run.steps[2].graph.node(finding.node).op == "SqrtBackward0"
    # _Head is called by nn.Sequential (torch's code): the call site is where the user's code called the model.
    assert finding.where is not None and finding.where.endswith(f"{Path(__file__).name}:{_line_of('model(x).sum()')}")
    assert [step.checks is not None and "origins" in step.checks for step in run.steps] == [False, False, True, True]


def _line_of(text: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line and "_line_of" not in line)


def test_a_log_of_a_probability_that_underflows_at_step_k():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.logit = nn.Linear(1, 1)
            self.head = _Head(torch.log)

        def forward(self, x):
            return -self.head(torch.exp(self.logit(x)))  # exp underflows to 0 in float32 below about -104

    model = Model()
    with torch.no_grad():
        model.logit.weight.fill_(1.0)
        model.logit.bias.zero_()
    # At -80 the gradient 1/p is still finite (5.5e34); at -120 p is 0 and log(p) is -inf.
    run = _train(model, [torch.tensor([[value]]) for value in (-1.0, -50.0, -80.0, -120.0, -130.0)])
    finding = _only(run, "nonfinite")
    assert (finding.step, finding.op, finding.module) == (3, "LogBackward0", "head")
    assert finding.count == 2  # step 4 underflows too, from the same node
    assert math.isinf(run.steps[3].loss)
    assert "activations=True" in finding.message  # the loss itself is non-finite: how to look at the forward pass


def test_a_division_by_a_value_that_reaches_zero():
    class Ratio(nn.Module):
        def __init__(self):
            super().__init__()
            self.shift = nn.Parameter(torch.tensor(3.0))

        def forward(self, x):
            return x / (self.shift - x)

    run = _train(Ratio(), [torch.tensor(value) for value in (0.0, 1.0, 2.0, 3.0)])
    finding = _only(run, "nonfinite")
    assert (finding.step, finding.op, finding.module) == (3, "DivBackward0", "")


def test_two_origins_in_one_step_come_in_the_order_the_engine_ran_them():
    x = torch.zeros(3, requires_grad=True)
    y = torch.zeros(3, requires_grad=True)
    order = []
    with vizgrad.record(params={"x": x, "y": y}) as run:
        first = torch.sqrt(x * 1)
        second = torch.sqrt(y * 1)
        # The oracle: torch's own order, seen by hooks of the user's on the two nodes.
        first.grad_fn.register_hook(lambda *_: order.append(first))
        second.grad_fn.register_hook(lambda *_: order.append(second))
        (first.sum() + second.sum()).backward()
        graph = run.steps[0].graph
        expected = [graph.node_of(tensor).id for tensor in order]
    origins = run.steps[0].checks["origins"]
    assert [origin["node"] for origin in origins] == expected
    assert origins[0]["turn"] < origins[1]["turn"]
    finding = _only(run, "nonfinite")
    assert finding.node == expected[0] and finding.detail["others"] == 1


def test_a_hook_that_makes_a_nan_is_the_origin_it_is_on():
    w = torch.ones(3, requires_grad=True)
    with vizgrad.record(params={"w": w}) as run:
        h = w * 2
        h.register_hook(lambda grad: grad * math.nan)
        (h * 3).sum().backward()
    finding = _only(run, "nonfinite")
    assert finding.op == "MulBackward0" and "hook" in finding.message
    assert run.steps[0].checks["origins"][0]["why"] == "hook"


def test_the_steps_after_the_parameters_went_nan_repeat_the_first_finding():
    model = nn.Sequential(nn.Linear(2, 1), _Head(torch.sqrt))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.zero_()
    run = _train(model, [torch.ones(1, 2), torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2)], lr=0.1)
    finding = _only(run, "nonfinite")
    assert finding.step == 1 and finding.count == 3
    assert finding.detail["params_from"] == 2 and "non-finite from step 2" in finding.message


# -- nonfinite: in the forward pass (record(activations=True)) -------------------------------------------------
class _Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("dtype, scale", [(torch.float16, 1e5), (torch.bfloat16, 3e38)])
def test_an_overflow_under_autocast_is_traced_to_the_module_that_made_it(dtype, scale):
    torch.manual_seed(0)
    model = _Pair()
    with torch.no_grad():
        model.a.weight.fill_(0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with vizgrad.record(model, activations=True) as run:
        for step in range(4):
            x = torch.ones(8, 4) * (scale if step == 2 else 1.0)
            with torch.autocast("cpu", dtype=dtype):
                out = model(x)
            optimizer.zero_grad()
            out.float().pow(2).mean().backward()
            optimizer.step()
    finding = _only(run, "nonfinite")
    assert (finding.step, finding.module, finding.op) == (2, "a", "AddmmBackward0")
    assert "forward pass" in finding.message and "a (Linear)" in finding.message
    assert run.steps[2].checks["forward"]["module"] == "a"


def test_a_nan_made_in_the_forward_pass_names_its_module_and_op():
    class Bad(nn.Module):
        def forward(self, x):
            return torch.sqrt(x - 10)  # NaN once x < 10

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.bad = Bad()
            self.out = nn.Linear(2, 1)

        def forward(self, x):
            return self.out(self.bad(self.lin(x)))

    model = Model()
    with torch.no_grad():
        model.lin.weight.copy_(torch.eye(2))
        model.lin.bias.fill_(20.0)
    inputs = [torch.zeros(1, 2), torch.full((1, 2), -20.0), torch.zeros(1, 2)]
    run = _train(model, inputs, activations=True)
    finding = _only(run, "nonfinite")
    assert (finding.step, finding.module, finding.op) == (1, "bad", "SqrtBackward0")
    without = _train(model, inputs)  # the same program without the forward checks: a backward origin only
    assert all("forward" not in (step.checks or {}) for step in without.steps)


def test_activation_checks_are_off_by_default_and_gone_after_the_block():
    from vizgrad import modules

    model = _Pair()
    with vizgrad.record(model):
        assert modules.call_log().activations is None
    with vizgrad.record(model, activations=True):
        model(torch.ones(1, 4))
        assert len(modules.call_log().activations) == 3  # a, the relu's caller b, and the model
    with vizgrad.record(model):
        assert modules.call_log().activations is None
    with pytest.raises(TypeError, match="activations"):
        with vizgrad.record(activations="yes"):
            pass


# -- vanishing, exploding, dead ---------------------------------------------------------------------------------
def test_a_30_layer_sigmoid_mlp_vanishes():
    torch.manual_seed(0)
    layers = []
    for _ in range(30):
        layers += [nn.Linear(16, 16), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(16, 1))
    run = _train(model, [torch.randn(32, 16) for _ in range(6)], lr=0.01)
    finding = _only(run, "vanishing")
    # Where it starts: the layer nearest the loss whose RMS is below 1e-3 of the loss end's; the rest follow.
    names, rms = run.grad_norms(by="module", measure="rms", depth=1)
    linear = [k for k, name in enumerate(names) if int(name) % 2 == 0]  # the Sigmoids have no parameters
    ratio = rms[:, linear[:-1]] / rms[:, linear[-1:]]
    below = [names[k] for j, k in enumerate(linear[:-1]) if (ratio[:, j] < 1e-3).sum() >= 3]
    assert finding.module == below[-1] and finding.detail["layers"] == below
    assert finding.step == 0 and finding.count == 6 and len(below) > 20
    assert not [f for f in run.findings(vanishing=1e-40) if f.kind == "vanishing"]


def test_a_learning_rate_too_large_explodes():
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    x, y = torch.randn(64, 8) * 3, torch.randn(64, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.5)
    with vizgrad.record(model) as run:
        for _ in range(12):
            optimizer.zero_grad()
            (model(x) - y).pow(2).mean().backward()
            optimizer.step()
    finding = _only(run, "exploding")
    totals = [math.sqrt(sum(step.param_grad(name).pow(2).sum().item() for name in step.params)) for step in run.steps]
    first = next(k for k in range(3, len(totals)) if totals[k] > 10 * sorted(totals[:k])[len(totals[:k]) // 2])
    assert finding.step == first and finding.detail["ratio"] > 10
    stable = _train(nn.Linear(8, 1), [x] * 12, lr=0.01)
    assert not [f for f in stable.findings() if f.kind == "exploding"]


def test_a_layer_far_above_the_loss_end_explodes_relative_to_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 1, bias=False))
    with torch.no_grad():
        model[1].weight.mul_(1e-5)  # the loss end's input is tiny, so its gradient is: the layer before is not
        model[1].bias.zero_()
    run = _train(model, [torch.randn(8, 16) for _ in range(4)])
    finding = _only(run, "exploding")
    names, rms = run.grad_norms(by="module", measure="rms", depth=1)
    assert finding.module == "1" and finding.detail["layers"] == ["1"]
    assert finding.detail["ratio"] == pytest.approx((rms[:, 1] / rms[:, 2]).max(), rel=1e-6)
    assert finding.count == 4 and "above 1000x the loss end's (2 (Linear))" in finding.message


def test_dead_relus_are_found_in_the_layer_feeding_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # 28 of 32 units never fire
        model[0].bias[:4] = 1.0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    counted = []  # the oracle: exact zeros of each .grad, counted here
    with vizgrad.record(model) as run:
        for _ in range(20):
            optimizer.zero_grad()
            model(torch.randn(16, 8)).sum().backward()
            counted.append({name: int((p.grad == 0).sum()) for name, p in model.named_parameters()})
            optimizer.step()
    dead = {finding.module: finding for finding in run.findings() if finding.kind == "dead"}
    assert "0" in dead and dead["0"].step == 0
    assert dead["0"].detail["fraction"] == pytest.approx(28 / 32)  # the dead units' weight rows and biases
    for step, expected in zip(run.steps, counted):
        if zeros_due(step.index):
            assert step.checks["zeros"] == {name: count for name, count in expected.items() if count}
        else:
            assert "zeros" not in (step.checks or {})
    healthy = _train(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)),
                     [torch.randn(16, 8) for _ in range(20)], lr=0.01)
    assert not [f for f in healthy.findings() if f.kind == "dead"]
    # An embedding's unused rows get exact zeros on every step: that is not death.
    embedding = nn.Sequential(nn.Embedding(1000, 8), nn.Linear(8, 1))
    words = _train(embedding, [torch.randint(0, 1000, (4,)) for _ in range(20)], lr=0.01)
    assert words.steps[0].checks["zeros"]["0.weight"] >= 1000 * 8 - 4 * 8
    assert not [f for f in words.findings() if f.kind == "dead"]


# -- GradScaler ---------------------------------------------------------------------------------------------------
def test_a_gradscaler_skip_is_found_on_its_step():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    with vizgrad.record(model) as run:
        for step in range(4):
            x = torch.randn(8, 4) * (1e30 if step == 1 else 1.0)  # the scaled gradients overflow
            optimizer.zero_grad()
            scaler.scale(model(x).pow(2).mean()).backward()
            scaler.step(optimizer)
            scaler.update()
    finding = _only(run, "amp_skipped")
    assert finding.step == 1 and finding.count == 1
    assert [bool((step.checks or {}).get("amp", {}).get("skipped")) for step in run.steps] == [False, True, False,
                                                                                                False]
    assert run.steps[1].stepped and not run.steps[2].stepped  # the optimizer did not step after step 1
    assert torch.amp.GradScaler.step.__name__ == "step" and not hasattr(torch.amp.GradScaler.step, "__wrapped__")


# -- hand-written gradients ------------------------------------------------------------------------------------
def test_the_seed_formulas_are_off_by_the_factors_the_seed_misses(capsys):
    sys.path.insert(0, str(EXAMPLES))
    try:
        found = runpy.run_path(str(EXAMPLES / "linear_regression_seed_formulas.py"))["main"](["--steps", "300"])
    finally:
        sys.path.remove(str(EXAMPLES))
    by_name = {finding.detail["param"]: finding for finding in found if finding.kind == "manual_mismatch"}
    assert set(by_name) == {"w", "b"} and len(found) == 2
    assert by_name["w"].detail["ratio"] == pytest.approx(0.5, rel=1e-5)
    assert by_name["b"].detail["ratio"] == pytest.approx(8 / 2, rel=1e-5)  # batch_size / 2
    assert "a factor 2 missing?" in by_name["w"].message and "on every step" in by_name["w"].message
    assert "manual_mismatch" in capsys.readouterr().out


def test_the_corrected_example_agrees_with_autograd():
    sys.path.insert(0, str(EXAMPLES))
    try:
        found = runpy.run_path(str(EXAMPLES / "linear_regression_manual.py"))["main"](["--steps", "400"])
    finally:
        sys.path.remove(str(EXAMPLES))
    assert found == []


def test_expect_grad_of_an_intermediate_and_a_wrong_one_that_is_not_a_constant_factor():
    w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    with vizgrad.record(params={"w": w}) as run:
        for step in range(3):
            h = w * w
            run.expect_grad(h, torch.full((3,), 1.0 + step))  # d(sum h)/dh = 1 everywhere: right on step 0
            run.expect_grad("w", torch.tensor([2.0, -4.0, 6.0]) + torch.tensor([0.0, 0.0, 1.0]) * step)
            h.sum().backward()
            w.grad = None
    checks = [step.checks["manual"] for step in run.steps]
    assert checks[0]["h"]["error"] == 0.0 and checks[0]["w"]["error"] == 0.0
    assert checks[2]["h"]["ratio"] == pytest.approx(3.0) and checks[2]["h"]["residual"] == pytest.approx(0.0)
    found = {finding.detail["param"]: finding for finding in run.findings() if finding.kind == "manual_mismatch"}
    assert found["w"].step == 1 and found["w"].count == 2 and "relative error" in found["w"].message
    manual = checks[1]["w"]
    assert manual["error"] == pytest.approx(1 / math.sqrt(4 + 16 + 49), rel=1e-6)


def test_expect_grad_outside_a_record_block_says_where_it_goes():
    with vizgrad.record() as run:
        pass
    with pytest.raises(UsageError, match="inside the run's record"):
        run.expect_grad("w", torch.ones(1))


def test_compare_manual_gives_the_constant_ratio():
    autograd = [1.0, -2.0, 4.0]
    result = compare_manual([0.5, -1.0, 2.0], autograd)
    assert result["ratio"] == pytest.approx(0.5) and result["residual"] == pytest.approx(0.0, abs=1e-12)
    assert result["error"] == pytest.approx(0.5)
    assert compare_manual(autograd, autograd)["error"] == 0.0
    assert compare_manual([1.0], autograd)["shape"] == [1, 3]


# -- findings as data -----------------------------------------------------------------------------------------------
def test_findings_are_saved_in_run_files_and_read_back_equal(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3), _Head(torch.sqrt))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3))
        model[0].bias.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    path = tmp_path / "run.vizgrad"
    with vizgrad.record(model, save=path) as run:
        for value in (4.0, 0.0, 1.0):
            optimizer.zero_grad()
            model(torch.full((2, 3), value)).sum().backward()
            optimizer.step()
    recorded = run.findings()
    loaded = vizgrad.load(str(path))
    assert loaded.findings() == recorded and recorded[0].kind == "nonfinite"
    assert loaded.steps[1].checks == run.steps[1].checks
    assert Finding.from_dict(recorded[0].to_dict()) == recorded[0]


def test_thresholds_are_checked():
    with vizgrad.record() as run:
        pass
    assert run.findings() == []
    with pytest.raises(UsageError, match="unknown threshold 'vanish'"):
        run.findings(vanish=1e-3)
    with pytest.raises(UsageError, match="must be a number > 0"):
        run.findings(jump=-1)
    assert Thresholds.of({"jump": 20}).jump == 20


def test_a_parameter_set_to_nan_by_hand_is_named_on_the_first_step():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    with vizgrad.record(model, activations=True) as run:
        for step in range(3):
            if step == 1:
                with torch.no_grad():
                    model[1].weight[0, 0] = math.nan
            model(torch.ones(1, 2)).sum().backward()
    finding = _only(run, "nonfinite")
    assert (finding.step, finding.module, finding.count) == (1, "1", 2)
    assert "1.weight was already non-finite when this step ran" in finding.message
