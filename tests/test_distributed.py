"""Distributed recording on the CPU with gloo, 2 processes: per-rank run files, DDP and FSDP2 merged, dead ranks."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import vizgrad
from vizgrad.errors import UsageError

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

WORLD = 2
STEPS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _join(rank: int, port: int, *, group: bool = True) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    if group:
        dist.init_process_group("gloo", rank=rank, world_size=WORLD)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _batch(rank: int, step: int) -> torch.Tensor:
    """Each rank's own data (a different shard of the global batch) at each step."""
    return torch.randn(6, 4, generator=torch.Generator().manual_seed(100 * rank + step))


def _ddp_worker(rank: int, port: int, folder: str) -> None:
    _join(rank, port)
    model = nn.parallel.DistributedDataParallel(_model())
    plain = _model()  # the oracle of this rank's local gradients: the same weights, no all-reduce
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    oracle = []
    with vizgrad.record(model, save=os.path.join(folder, "ddp.vizgrad")):
        for step in range(STEPS):
            x = _batch(rank, step)
            plain.load_state_dict({k.removeprefix("module."): v for k, v in model.state_dict().items()})
            local = torch.autograd.grad(plain(x).pow(2).mean(), list(plain.parameters()))
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            oracle.append({"local": {name: float(g.norm()) for (name, _), g in zip(plain.named_parameters(), local)},
                           "reduced": {name: float(p.grad.norm()) for name, p in model.named_parameters()}})
            optimizer.step()
    Path(folder, f"oracle{rank}.json").write_text(json.dumps(oracle))
    dist.destroy_process_group()


def _fsdp_worker(rank: int, port: int, folder: str) -> None:
    from torch.distributed.fsdp import fully_shard

    _join(rank, port)
    model = _model()
    for layer in (model[0], model[2]):
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with vizgrad.record(model, save=os.path.join(folder, "fsdp.vizgrad")):
        for step in range(STEPS):
            optimizer.zero_grad()
            model(_batch(rank, step)).pow(2).mean().backward()
            optimizer.step()
    dist.destroy_process_group()


def _dying_worker(rank: int, port: int, folder: str) -> None:
    _join(rank, port, group=False)  # each rank on its own: a dead rank blocks nobody
    model = _model()
    with vizgrad.record(model, save=os.path.join(folder, "run.vizgrad")):
        for step in range(5):
            if rank == 1 and step == 2:
                os._exit(1)  # killed mid-run: no clean stop, no file closed
            model(_batch(rank, step)).pow(2).mean().backward()


def _spawn(worker, folder: Path) -> list[int]:
    """Runs ``worker`` in each rank's process and waits for every one (one dying does not stop the others)."""
    context = mp.spawn(worker, args=(_free_port(), str(folder)), nprocs=WORLD, join=False)
    for process in context.processes:
        process.join(timeout=300)
    return [process.exitcode for process in context.processes]


@pytest.fixture(scope="module")
def ddp_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    assert _spawn(_ddp_worker, folder) == [0, 0]
    return folder


def test_each_rank_writes_its_own_file_with_its_place_in_the_job(ddp_files):
    assert sorted(path.name for path in ddp_files.glob("ddp.rank*.vizgrad")) == ["ddp.rank0.vizgrad",
                                                                                 "ddp.rank1.vizgrad"]
    for rank in range(WORLD):
        run = vizgrad.load(str(ddp_files / f"ddp.rank{rank}.vizgrad"))
        place = run.meta["distributed"]
        assert (place["rank"], place["world_size"], place["local_rank"], place["backend"]) == (rank, 2, rank, "gloo")
        assert place["host"] == socket.gethostname() and len(place["job"]) == 12
        assert len(run.steps) == STEPS and run.complete
        from click.testing import CliRunner

        from vizgrad.cli import cli

        info = CliRunner().invoke(cli, ["info", str(ddp_files / f"ddp.rank{rank}.vizgrad")])
        assert f"rank:       {rank} of 2 (gloo, {socket.gethostname()})" in info.output


def test_ddp_local_gradients_differ_and_parameter_grads_are_the_all_reduced_mean(ddp_files):
    merged = vizgrad.load_ranks(sorted(ddp_files.glob("ddp.rank*.vizgrad")))
    oracles = [json.loads((ddp_files / f"oracle{rank}.json").read_text()) for rank in range(WORLD)]
    assert list(merged.ranks) == [0, 1] and merged.missing == [] and merged.partial == []
    for step in merged.steps:
        graph = step.graph
        for rank, rank_step in step.rank_steps.items():
            expected = oracles[rank][step.index]
            for name, norm in expected["local"].items():
                leaf = graph.find(f"module.{name}")
                assert rank_step.stats(leaf.id)["norm"] == pytest.approx(norm, rel=1e-6)  # before the all-reduce
                assert rank_step.table.summary(("param_grad", f"module.{name}")).norm == pytest.approx(
                    expected["reduced"][f"module.{name}"], rel=1e-6)
        for name in oracles[0][step.index]["reduced"]:
            assert step.param_stats(name)["norm"] == pytest.approx(oracles[0][step.index]["reduced"][name], rel=1e-6)
        weight = graph.find("module.0.weight").id
        spread = step.spread(weight)
        local = [oracles[rank][step.index]["local"]["0.weight"] for rank in range(WORLD)]
        assert spread["min"] == pytest.approx(min(local), rel=1e-6) and spread["max"] == pytest.approx(max(local),
                                                                                                       rel=1e-6)
        assert spread["min"] < spread["max"]  # different data per rank: the local gradients differ
    assert merged.findings() == []


def test_fsdp2_global_norms_equal_the_unsharded_models_on_the_global_batch(tmp_path):
    assert _spawn(_fsdp_worker, tmp_path) == [0, 0]
    merged = vizgrad.load_ranks(sorted(tmp_path.glob("fsdp.rank*.vizgrad")))
    assert merged.sharded == {"0.weight", "0.bias", "2.weight", "2.bias"}
    model = _model()  # the same model, unsharded, on both ranks' batches at once
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in merged.steps:
        optimizer.zero_grad()
        # FSDP averages the ranks' gradients: the gradient of the mean of the ranks' mean losses.
        sum(model(_batch(rank, step.index)).pow(2).mean() for rank in range(WORLD)).div(WORLD).backward()
        for name, param in model.named_parameters():
            assert step.param_stats(name)["norm"] == pytest.approx(float(param.grad.norm()), rel=1e-5)
            assert step.param_value_stats(name)["norm"] == pytest.approx(float(param.detach().norm()), rel=1e-5)
            shards = [rank_step.table.summary(("param_grad", name)).numel for rank_step in step.rank_steps.values()]
            assert sum(shards) == param.numel() and len(shards) == WORLD  # each rank held its part only
            if name == "0.weight":
                assert shards == [16, 16]
        optimizer.step()
    leaf = merged.steps[0].graph.find("0.weight")  # FSDP2's unsharded copies are named after the parameters
    assert leaf.kind == "leaf"


def test_a_rank_killed_mid_run_leaves_the_others_complete_and_mergeable(tmp_path):
    assert _spawn(_dying_worker, tmp_path) == [0, 1]
    files = sorted(tmp_path.glob("run.rank*.vizgrad"))
    assert [path.name for path in files] == ["run.rank0.vizgrad", "run.rank1.vizgrad"]
    merged = vizgrad.load_ranks(files)
    assert merged.partial == [1] and merged.missing == []
    assert len(merged.ranks[0].steps) == 5 and len(merged.ranks[1].steps) == 2
    assert len(merged.steps) == 5 and list(merged.steps[4].rank_steps) == [0]
    alone = vizgrad.load_ranks(files[:1])
    assert alone.missing == [1] and len(alone.steps) == 5


def test_merging_files_of_different_runs_or_ranks_twice_is_a_clear_error(tmp_path, ddp_files):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    assert _spawn(_dying_worker, first) == [0, 1]
    assert _spawn(_dying_worker, second) == [0, 1]  # another port: another job
    with pytest.raises(UsageError, match="are of different runs"):
        vizgrad.load_ranks([first / "run.rank0.vizgrad", second / "run.rank1.vizgrad"])
    with pytest.raises(UsageError, match="are both rank 0"):
        vizgrad.load_ranks([first / "run.rank0.vizgrad", first / "run.rank0.vizgrad"])
    plain = tmp_path / "plain.vizgrad"
    w = torch.ones(1, requires_grad=True)
    with vizgrad.record(params={"w": w}, save=plain):
        (w * 2).sum().backward()
    with pytest.raises(UsageError, match="was not recorded in a distributed job"):
        vizgrad.load_ranks([plain])
    with pytest.raises(UsageError, match="needs the run files"):
        vizgrad.load_ranks([])


def test_rank_paths():
    from vizgrad.ranks import rank_path

    assert rank_path("out/run.vizgrad", 3) == Path("out/run.rank3.vizgrad")
    assert rank_path("run", 1) == Path("run.rank1")
    assert rank_path("run-{rank}.db", 2) == Path("run-2.db")
    assert rank_path("run.rank0.vizgrad", 1) == Path("run.rank1.vizgrad")


def test_outside_a_job_nothing_changes(tmp_path, monkeypatch):
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    w = torch.ones(1, requires_grad=True)
    with vizgrad.record(params={"w": w}, save=tmp_path / "run.vizgrad") as run:
        (w * 2).sum().backward()
    assert (tmp_path / "run.vizgrad").exists() and "distributed" not in run.meta


def _odd_rank_worker(rank: int, port: int, folder: str) -> None:
    _join(rank, port, group=False)
    torch.manual_seed(0)
    model = nn.Linear(4, 1)  # nothing saturates: a rank's big inputs make big gradients
    with vizgrad.record(model, save=os.path.join(folder, "odd.vizgrad")):
        for step in range(4):
            x = _batch(rank, step)
            if rank == 1:
                x = x * 1e4  # a bad shard of data: this rank's gradients are far from the others'
                if step == 2:
                    x[0, 0] = float("nan")
            model.zero_grad()
            model(x).pow(2).mean().backward()


def test_a_rank_whose_gradients_diverge_or_go_nonfinite_alone_is_named(tmp_path):
    assert _spawn(_odd_rank_worker, tmp_path) == [0, 0]
    merged = vizgrad.load_ranks(sorted(tmp_path.glob("odd.rank*.vizgrad")))
    found = {finding.kind: finding for finding in merged.findings() if finding.kind.startswith("rank_")}
    assert found["rank_nonfinite"].step == 2 and found["rank_nonfinite"].detail["rank"] == 1
    assert found["rank_divergence"].step == 0 and found["rank_divergence"].detail["rank"] == 1
    assert found["rank_divergence"].count == 3  # steps 0, 1 and 3: on step 2 rank 1 is non-finite instead


def test_render_merges_the_ranks_files_and_refuses_to_save_them_as_one(ddp_files, tmp_path):
    from click.testing import CliRunner

    from vizgrad.cli import cli

    files = [str(path) for path in sorted(ddp_files.glob("ddp.rank*.vizgrad"))]
    out = tmp_path / "merged.html"
    result = CliRunner().invoke(cli, ["render", *files, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists() and "2 of 2 ranks" in out.read_text()
    refused = CliRunner().invoke(cli, ["render", *files, "--save", str(tmp_path / "x.vizgrad")])
    assert refused.exit_code == 2 and "the ranks' files are merged as they are" in refused.stderr


def _dtensor_worker(rank: int, port: int, folder: str) -> None:
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

    _join(rank, port)
    mesh = init_device_mesh("cpu", (WORLD,))
    torch.manual_seed(0)
    w = distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)]).requires_grad_()
    x = distribute_tensor(torch.randn(3, 2), mesh, [Replicate()])
    with vizgrad.record(params={"w": w}, save=os.path.join(folder, "dt.vizgrad")):
        for _ in range(2):
            (w @ x).tanh().sum().full_tensor().backward()  # DTensor gradients all through the graph
    dist.destroy_process_group()


def test_dtensor_gradients_are_summarised_from_local_parts_and_merge_to_the_full_norm(tmp_path):
    assert _spawn(_dtensor_worker, tmp_path) == [0, 0]
    merged = vizgrad.load_ranks(sorted(tmp_path.glob("dt.rank*.vizgrad")))
    assert merged.sharded == {"w"}
    torch.manual_seed(0)
    w = torch.randn(4, 3, requires_grad=True)  # the oracle: the same tensors, whole, on one process
    x = torch.randn(3, 2)
    for step in merged.steps:
        (w @ x).tanh().sum().backward()
        assert step.param_stats("w")["norm"] == pytest.approx(float(w.grad.norm()), rel=1e-5)
        assert [s.param_grad_stats("w")["numel"] for s in step.rank_steps.values()] == [6, 6]  # each rank's shard
