"""Training-loop steps: iterations grouped by optimizer.step(), loss names and variable names read on every step."""

import pytest
import torch
from torch import nn

import vizgrad
from vizgrad.loop import group_iterations

from oldfiles import as_schema


@pytest.mark.parametrize("stepped, pending, expected", [
    ([(), (), ()], (), [0, 1, 2]),                                   # no optimizer: a step each
    ([(), (0,), (0,), (0,)], (), [0, 1, 2, 3]),                       # one backward per update
    ([(), (), (0,), (), (0,), ()], (), [0, 0, 1, 1, 2, 2]),           # accumulation of 2, mid-iteration
    ([(), (), (0,), (), (0,), ()], (0,), [0, 0, 1, 1, 2, 2]),         # ... the last update done
    ([(), (), (0,), (1,), (), (0,)], (1,), [0, 0, 0, 1, 1, 1]),       # GAN: D real, D fake, step D, G, step G
    ([(), (), (0,), (1,), (), (0,)], (), [0, 0, 0, 1, 1, 1]),         # ... G's step not made yet
    ([(), (0, 1), (0, 1)], (), [0, 1, 2]),                            # two optimizers after each backward
    ([(), (), (), (0,), (), ()], (0,), [0, 0, 0, 1, 1, 1]),           # L-BFGS: 3 closure calls per step()
])
def test_grouping(stepped, pending, expected):
    assert group_iterations(stepped, pending) == expected


def test_gradient_accumulation_makes_one_iteration_of_each_pair_with_the_summed_loss(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    accum, printed = 2, []
    with vizgrad.record(model, save=tmp_path / "run.vizgrad") as run:
        for _ in range(3):
            total = 0.0
            for micro in range(accum):
                part = slice(micro * 4, micro * 4 + 4)
                loss = nn.functional.mse_loss(model(x[part]), y[part]) / accum
                loss.backward()
                total += loss.item()
            optimizer.step()
            optimizer.zero_grad()
            printed.append(total)
    assert [step.iteration for step in run.steps] == [s // 2 for s in range(6)]
    assert [step.loss_name for step in run.steps] == ["loss"] * 6
    iterations = run.iterations()
    assert [it.steps for it in iterations] == [(0, 1), (2, 3), (4, 5)]
    assert [it.loss for it in iterations] == pytest.approx(printed, rel=1e-6)
    assert run.meta["optimizers"] == ["SGD"]
    loaded = vizgrad.load(tmp_path / "run.vizgrad")
    assert [step.iteration for step in loaded.steps] == [s // 2 for s in range(6)]
    assert [it.loss for it in loaded.iterations()] == pytest.approx(printed, rel=1e-6)
    assert loaded.loss_names() == ["loss"] * 6


def test_a_run_saved_from_memory_keeps_its_iterations(tmp_path):
    model = nn.Linear(2, 1)
    optimizer = torch.optim.Adam(model.parameters())
    with vizgrad.record(model) as run:
        for _ in range(2):
            for _ in range(3):
                model(torch.ones(1, 2)).sum().backward()
            optimizer.step()
    assert [step.iteration for step in run.steps] == [0, 0, 0, 1, 1, 1]
    run.save(tmp_path / "saved.vizgrad")
    loaded = vizgrad.load(tmp_path / "saved.vizgrad")
    assert [step.iteration for step in loaded.steps] == [0, 0, 0, 1, 1, 1]
    assert [step.stepped for step in loaded.steps] == [(), (), (), (0,), (), ()]


class _Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))

    def forward(self, x):
        return self.main(x).view(-1)


def test_a_gan_loop_names_each_loss_and_its_intermediates_on_every_step():
    torch.manual_seed(0)
    netD, netG = _Discriminator(), nn.Sequential(nn.Linear(2, 4), nn.Tanh())
    optD = torch.optim.Adam(netD.parameters(), lr=1e-3)
    optG = torch.optim.Adam(netG.parameters(), lr=1e-3)
    criterion = nn.BCEWithLogitsLoss()
    real, ones, zeros = torch.randn(5, 4), torch.ones(5), torch.zeros(5)
    with vizgrad.record() as run:
        for _ in range(3):
            netD.zero_grad()
            out_real = netD(real)
            errD_real = criterion(out_real, ones)
            errD_real.backward()
            fake = netG(torch.randn(5, 2))
            out_fake = netD(fake.detach())
            errD_fake = criterion(out_fake, zeros)
            errD_fake.backward()
            optD.step()
            netG.zero_grad()
            out_g = netD(fake)
            errG = criterion(out_g, ones)
            errG.backward()
            optG.step()
    assert [step.loss_name for step in run.steps] == ["errD_real", "errD_fake", "errG"] * 3
    assert [step.iteration for step in run.steps] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # D on real and D on fake.detach() have one topology: the names still follow the step.
    assert run.steps[0].graph.structural_hash == run.steps[1].graph.structural_hash
    for step, expected in zip(run.steps, ["out_real", "out_fake", "out_g"] * 3):
        assert {n.name for n in step.graph.nodes if n.kind == "op"} >= {expected}
        assert not {"out_real", "out_fake", "out_g"} - {expected} & {n.name for n in step.graph.nodes}
    losses = run.iterations()[1].losses
    assert set(losses) == {"errD_real", "errD_fake", "errG"}
    assert losses["errG"] == pytest.approx(run.steps[5].loss)


def test_lbfgs_closure_calls_are_one_iteration_per_step_call():
    torch.manual_seed(0)
    w = torch.zeros(3, requires_grad=True)
    target = torch.tensor([1.0, -2.0, 0.5])
    optimizer = torch.optim.LBFGS([w], max_iter=5)
    calls = []

    def closure():
        optimizer.zero_grad()
        loss = ((w - target) ** 2).sum()
        loss.backward()
        calls[-1] += 1
        return loss

    with vizgrad.record(params={"w": w}) as run:
        for _ in range(3):
            calls.append(0)
            optimizer.step(closure)
    assert sum(calls) == len(run.steps) and max(calls) > 1
    expected = [number for number, count in enumerate(calls) for _ in range(count)]
    assert [step.iteration for step in run.steps] == expected
    assert [len(it.steps) for it in run.iterations()] == calls


def test_steps_without_an_optimizer_are_their_own_iterations_and_unnamed_roots_have_no_name():
    w = torch.ones(2, requires_grad=True)
    with vizgrad.record(params={"w": w}) as run:
        for _ in range(3):
            (w * 2).sum().backward()
    assert [step.iteration for step in run.steps] == [0, 1, 2]
    assert [step.loss_name for step in run.steps] == [None] * 3
    assert [it.losses for it in run.iterations()] == [{None: 4.0}] * 3


def test_files_of_schema_2_load_with_one_iteration_per_step(tmp_path):
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "old.vizgrad"
    with vizgrad.record(model, save=path):
        for _ in range(2):
            model(torch.ones(1, 2)).sum().backward()
            model(torch.ones(1, 2)).sum().backward()
            optimizer.step()
    connection = as_schema(path, 2)
    connection.execute("ALTER TABLE steps DROP COLUMN stepped")
    connection.commit()
    connection.close()
    loaded = vizgrad.load(path)
    assert [step.iteration for step in loaded.steps] == [0, 1, 2, 3]
    assert len(loaded.iterations()) == 4


def test_learning_rates_are_kept_per_iteration_and_group_and_survive_the_run_file(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    optimizer = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                                 {"params": model[1].parameters(), "lr": 0.01}])
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    with vizgrad.record(model, save=tmp_path / "lr.vizgrad") as run:
        for _ in range(3):
            for _ in range(2):
                model(torch.ones(1, 2)).sum().backward()
            optimizer.step()
            schedule.step()
    for source in (run, vizgrad.load(tmp_path / "lr.vizgrad")):
        assert source.loop.learning_rates("0.weight") == pytest.approx([0.1, 0.05, 0.025])
        assert source.loop.learning_rates("1.bias") == pytest.approx([0.01, 0.005, 0.0025])
        assert source.loop.learning_rates("nothing") == [None, None, None]
        assert source.loop.groups[0] == [["0.weight", "0.bias"], ["1.weight", "1.bias"]]


def test_clipping_is_recorded_on_its_step_with_each_gradient_before_and_after(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    with vizgrad.record(model, save=tmp_path / "clip.vizgrad") as run:
        for limit in (0.5, 1e6):
            optimizer.zero_grad()
            (model(torch.randn(8, 4)) * 10).pow(2).mean().backward()
            before = {name: float(p.grad.norm()) for name, p in model.named_parameters()}
            total = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=limit)
            after = {name: float(p.grad.norm()) for name, p in model.named_parameters()}
            seen.append((before, float(total), after))
            optimizer.step()
        optimizer.zero_grad()
        model(torch.randn(2, 4)).sum().backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), clip_value=0.01)
    for source in (run, vizgrad.load(tmp_path / "clip.vizgrad")):
        for step, (before, total, after) in zip(source.steps, seen):
            clip = step.clip
            assert clip["function"] == "clip_grad_norm_" and clip["total_before"] == pytest.approx(total, rel=1e-6)
            assert clip["before"] == pytest.approx(before, rel=1e-6) and clip["after"] == pytest.approx(after, rel=1e-6)
            # What backward() left in .grad is what the step recorded: the numbers before clipping.
            names, norms = source.grad_norms(by="param")
            assert norms[step.index, names.index("weight")] == pytest.approx(before["weight"], rel=1e-6)
        assert source.steps[0].clip["total_after"] == pytest.approx(0.5, rel=1e-5) and source.steps[0].clip["limit"] == 0.5
        assert source.steps[1].clip["total_after"] == pytest.approx(seen[1][1], rel=1e-6)  # under the limit: unchanged
        assert source.steps[2].clip["function"] == "clip_grad_value_" and source.steps[2].clip["limit"] == 0.01
        assert max(source.steps[2].clip["after"].values()) <= 0.01 * 2 ** 0.5 * 4
    assert torch.nn.utils.clip_grad_norm_.__name__ == "clip_grad_norm_"
    assert not hasattr(torch.nn.utils.clip_grad_norm_, "__wrapped_by_vizgrad__")  # restored after recording


def test_two_clips_after_one_backward_keep_the_first_norm_before_and_the_last_after():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    with vizgrad.record(model) as run:
        (model(torch.randn(4, 3)) * 10).sum().backward()
        before = {name: float(p.grad.norm()) for name, p in model.named_parameters()}
        torch.nn.utils.clip_grad_value_(model.parameters(), 1.0)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        after = {name: float(p.grad.norm()) for name, p in model.named_parameters()}
    clip = run.steps[0].clip
    assert clip["function"] == "clip_grad_value_" and clip["limit"] == 1.0  # the first clip names the record
    assert clip["before"] == pytest.approx(before, rel=1e-6) and clip["after"] == pytest.approx(after, rel=1e-6)
    assert clip["total_after"] == pytest.approx(0.5, rel=1e-5)
    assert clip["total_before"] == pytest.approx(sum(v * v for v in before.values()) ** 0.5, rel=1e-6)


def test_autograd_grad_calls_are_recorded_as_calls_of_the_next_backward_step(tmp_path):
    """A WGAN-GP critic step: a gradient penalty through torch.autograd.grad, then one backward()."""
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    real, fake = torch.randn(4, 3), torch.randn(4, 3)
    oracle = []
    with vizgrad.record(grad_calls=True, save=tmp_path / "gp.vizgrad") as run:  # mix: a leaf named by its variable
        for _ in range(2):
            mix = (0.3 * real + 0.7 * fake).requires_grad_(True)
            score = critic(mix)
            (slopes,) = torch.autograd.grad(score, mix, torch.ones_like(score), create_graph=True)
            oracle.append(float(slopes.detach().norm()))
            penalty = ((slopes.norm(dim=1) - 1) ** 2).mean()
            loss_critic = critic(fake).mean() - critic(real).mean() + 10 * penalty
            loss_critic.backward()
    assert len(run.steps) == 2 and [step.loss_name for step in run.steps] == ["loss_critic"] * 2
    for step in [*run.steps, *vizgrad.load(tmp_path / "gp.vizgrad").steps]:  # recorded, and read back
        (call,) = step.grad_calls
        assert call.index == step.index and call.graph.loss_name == "score"
        assert call.graph is not step.graph and len(call.graph.nodes) < len(step.graph.nodes)
        # The call's gradients are what autograd.grad computed: into the score's grad_fn, the seed of ones.
        root = call.graph.by_id[call.graph.roots[0]]
        first = call.graph.by_id[next(e.dst for e in call.graph.edges if e.src == root.id)]
        assert call.stats(first.id)["norm"] == pytest.approx(2.0)  # four ones
        # ...and out of it, into the interpolated input: the slopes autograd.grad returned.
        (into_mix,) = [e for e in call.graph.grad_edges() if call.graph.by_id[e.dst].name == "mix"]
        assert call.edge_stats(into_mix.src, into_mix.slot)["norm"] == pytest.approx(oracle[step.index], rel=1e-5)
    with vizgrad.record(critic) as plain:  # off by default: autograd.grad is not a step
        mix = real.clone().requires_grad_(True)
        torch.autograd.grad(critic(mix).sum(), mix)
        critic(real).sum().backward()
    assert plain.steps[0].grad_calls == ()
    assert torch.autograd.grad.__module__ == "torch.autograd"  # restored after recording


def test_a_failure_noting_an_optimizer_step_or_a_clip_warns_and_never_breaks_training():
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with vizgrad.record(model) as run:
        model(torch.ones(1, 2)).sum().backward()

        def broken(tensor):
            raise RuntimeError("names are gone")

        run.loop.name_of = broken
        with pytest.warns(vizgrad.RecordingWarning, match="could not note an optimizer step"):
            optimizer.step()
        with pytest.warns(vizgrad.RecordingWarning, match="could not note clip_grad_norm_"):
            total = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    assert float(total) > 0 and len(run.steps) == 1  # training went on: the clip returned its norm
