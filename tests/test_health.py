"""run.grad_norms against an oracle: norms the test computes from .grad and torch.autograd.grad every step."""

import numpy as np
import pytest
import torch
from torch import nn

import vizgrad
from vizgrad.errors import UsageError


class _Net(nn.Module):
    """An embedding called per time step, a recurrent cell called per time step, a head with modules inside."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 5)
        self.cell = nn.RNNCell(5, 6)
        self.head = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 1))
        self.scale = nn.Parameter(torch.tensor(0.5))  # a parameter the root module owns itself

    def forward(self, xs):
        h = torch.zeros(xs.shape[1], 6)
        for x in xs:
            h = self.cell(self.embed(x), h)
        return self.head(h) * self.scale


def _train(steps=4, outputs=False):
    """Trains _Net under record(); per step, the oracle's per-module norms (of .grad, or of output gradients)."""
    torch.manual_seed(0)
    model = _Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    modules = dict(model.named_modules())
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [module.register_forward_hook(lambda m, args, out, name=name: seen.setdefault(name, []).append(out))
             for name, module in modules.items()]
    expected = []
    with vizgrad.record(model) as run:
        for _ in range(steps):
            seen.clear()
            optimizer.zero_grad()
            loss = (model(torch.randn(4, 2, 3)) - 1).pow(2).mean()
            if outputs:
                names = list(seen)
                flat = [out for name in names for out in seen[name]]
                grads = torch.autograd.grad(loss, flat, retain_graph=True)
                per_output = iter(grads)
                expected.append({name: float(torch.sqrt(sum(next(per_output).pow(2).sum() for _ in seen[name])))
                                 for name in names})
            loss.backward()
            if not outputs:
                expected.append({name: float(torch.sqrt(sum(p.grad.pow(2).sum() for p in module.parameters())))
                                 for name, module in modules.items() if list(module.parameters())})
                expected[-1].update({f"param {name}": float(p.grad.norm()) for name, p in model.named_parameters()})
                # plot_grad_flow's "average gradient": mean |grad| over the layer's elements, and the largest |grad|.
                expected[-1].update({f"mean {name}": float(sum(p.grad.abs().sum() for p in module.parameters())
                                                            / sum(p.numel() for p in module.parameters()))
                                     for name, module in modules.items() if list(module.parameters())})
                expected[-1].update({f"max {name}": float(max(p.grad.abs().max() for p in module.parameters()))
                                     for name, module in modules.items() if list(module.parameters())})
                expected[-1].update({f"param mean {name}": float(p.grad.abs().mean())
                                     for name, p in model.named_parameters()})
            optimizer.step()
    for hook in hooks:
        hook.remove()
    return run, expected


def test_module_parameter_gradient_norms_match_the_grads_of_their_parameters():
    run, expected = _train()
    names, norms = run.grad_norms(by="module", kind="param_grad")
    assert norms.shape == (4, len(names))
    # Every module owning parameters (recursively), in forward order: the root first, then as called.
    assert names == ["", "embed", "cell", "head", "head.0", "head.2"]
    for step, oracle in enumerate(expected):
        for column, name in enumerate(names):
            assert norms[step, column] == pytest.approx(oracle[name], rel=1e-5), (step, name)
    names, norms = run.grad_norms(by="param")
    assert set(names) == {name for name, _ in _Net().named_parameters()}
    for step, oracle in enumerate(expected):
        for column, name in enumerate(names):
            assert norms[step, column] == pytest.approx(oracle[f"param {name}"], rel=1e-5), (step, name)


def test_module_mean_and_max_abs_gradients_match_the_grads_of_their_parameters():
    run, expected = _train()
    for measure in ("mean", "max"):
        names, values = run.grad_norms(by="module", measure=measure)
        for step, oracle in enumerate(expected):
            for column, name in enumerate(names):
                want = oracle[f"{measure} {name}"]
                assert values[step, column] == pytest.approx(want, rel=1e-5), (measure, step, name)
    names, means = run.grad_norms(by="param", measure="mean")
    for step, oracle in enumerate(expected):
        for column, name in enumerate(names):
            assert means[step, column] == pytest.approx(oracle[f"param mean {name}"], rel=1e-5), (step, name)


def test_output_gradient_norms_match_autograd_grad_of_the_module_outputs():
    run, expected = _train(outputs=True)
    names, norms = run.grad_norms(by="module", kind="output")
    # Modules called per time step count the gradient into each call's output (h_t feeds the next call).
    assert set(names) == set(expected[0]) - {"head.1"} | {"head.1"}
    for step, oracle in enumerate(expected):
        for column, name in enumerate(names):
            assert norms[step, column] == pytest.approx(oracle[name], rel=1e-5), (step, name)


def test_a_depth_gives_the_boxes_of_that_view_and_counts_each_parameter_once():
    run, expected = _train()
    names, norms = run.grad_norms(by="module", depth=1)
    # The root's children are the rows; the root's own parameter is a row of its own.
    assert names == ["embed", "cell", "head", "scale"]
    total = np.sqrt(np.nansum(norms ** 2, axis=1))
    assert total == pytest.approx([oracle[""] for oracle in expected], rel=1e-5)
    names, rms = run.grad_norms(by="module", depth=1, measure="rms")
    sizes = {"embed": 20, "cell": 5 * 6 + 6 * 6 + 12, "head": 6 * 4 + 4 + 4 + 1, "scale": 1}
    assert rms[:, 0] == pytest.approx(norms[:, 0] / np.sqrt(sizes["embed"]), rel=1e-6)
    assert rms[:, 2] == pytest.approx(norms[:, 2] / np.sqrt(sizes["head"]), rel=1e-6)
    _, largest = run.grad_norms(by="module", depth=1, measure="max")
    assert np.all(largest <= norms + 1e-12) and np.all(largest > 0)


def test_parameters_without_modules_and_the_gradient_a_step_delivered():
    w, b = torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor(0.5, requires_grad=True)
    x = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    with vizgrad.record(params={"w": w, "b": b}) as run:
        for _ in range(2):  # no zero_grad: .grad accumulates, the delivered gradient does not
            ((x @ w + b) ** 2).sum().backward()
    assert run.grad_norms()[0] == []  # no module
    names, accumulated = run.grad_norms(by="param")
    _, delivered = run.grad_norms(by="param", kind="output")
    gw, gb = torch.autograd.grad(((x @ w + b) ** 2).sum(), (w, b))
    first = {"w": float(gw.norm()), "b": float(gb.abs())}
    for column, name in enumerate(names):
        assert delivered[:, column] == pytest.approx([first[name], first[name]], rel=1e-6)
        assert accumulated[:, column] == pytest.approx([first[name], 2 * first[name]], rel=1e-6)


def test_bad_arguments_say_what_is_allowed():
    run = vizgrad.Run()
    with pytest.raises(UsageError, match="by must be one of 'module', 'param'"):
        run.grad_norms(by="layer")
    with pytest.raises(UsageError, match="kind must be one of"):
        run.grad_norms(kind="grad")
    with pytest.raises(UsageError, match="depth must be a whole number"):
        run.grad_norms(depth=-1)
    assert run.grad_norms()[1].shape == (0, 0)
