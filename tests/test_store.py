"""Tests for vizgrad.store: run files written step by step, read back lazily, validated on load."""

from __future__ import annotations

import math
import shutil
import sqlite3

import numpy as np
import pytest
import torch

import vizgrad
from vizgrad import store
from vizgrad.errors import RecordingError, RunFileError, UsageError
from vizgrad.graph import Graph, Node
from vizgrad.panels import ScatterLine, Series
from vizgrad.run import Run, Step
from vizgrad.stats import Summary

from conftest import record_seed_run

HOW_TO = "pass a file written by `vizgrad render SCRIPT --save RUN` or vizgrad.record(save=RUN)"


def _regression(run_steps: int, save=None, log=True):
    """The seed regression, recorded (to ``save`` when given), logging the fit for a panel."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, generator=generator) * 20
    y = x * 2 + 3
    w = torch.rand(1, 1, generator=generator).requires_grad_()
    b = torch.zeros(1, 1, requires_grad=True)
    with vizgrad.record(save=save) as run:
        run.meta["title"] = "regression"
        run.add_panel(ScatterLine("Fit", x=x.flatten().tolist(), y=y.flatten().tolist(), line_key="fit"))
        run.add_panel(Series("Intercept", keys=["b"]))
        if log:
            run.log("before", "first step")
        for _ in range(run_steps):
            loss = ((x.mm(w) + b.expand_as(y) - y) ** 2 / 8).sum()
            loss.backward()
            if log:
                run.log("fit", {"slope": w.item(), "intercept": b.item()})
                run.log("b", b.item())
            with torch.no_grad():
                w -= 0.001 * w.grad
                b -= 0.001 * b.grad
            w.grad.zero_()
            b.grad.zero_()
    return run


def _assert_same_steps(expected: Run, actual: Run) -> None:
    assert len(actual.steps) == len(expected.steps)
    for want, got in zip(expected.steps, actual.steps):
        assert got.index == want.index
        assert got.loss == want.loss
        assert got.graph == want.graph
        assert got.data == want.data
        assert dict(got.summaries) == dict(want.summaries)
        assert set(got.values) == set(want.values)
        for key, value in want.values.items():
            assert got.values[key].dtype == value.dtype
            assert torch.equal(got.values[key], value), key


# -- round trips --------------------------------------------------------------------------------------------


def test_recording_to_a_file_matches_recording_in_memory(tmp_path):
    path = tmp_path / "run.vizgrad"
    live = _regression(30)
    saved = _regression(30, save=path)
    loaded = vizgrad.load(path)
    _assert_same_steps(live, saved)
    _assert_same_steps(live, loaded)
    assert loaded.meta == live.meta == {"title": "regression"}
    assert loaded.losses() == live.losses()
    assert loaded.param_names() == live.param_names() == ["w", "b"]
    assert loaded.param_series("b") == live.param_series("b")
    assert list(loaded.graphs()) == list(live.graphs())
    assert [p.to_dict() for p in loaded.panels] == [p.to_dict() for p in live.panels]
    assert loaded.complete


def test_loaded_steps_answer_like_live_ones(tmp_path):
    live = _regression(5, save=tmp_path / "run.vizgrad")
    loaded = vizgrad.load(tmp_path / "run.vizgrad")
    step, want = loaded.steps[-1], live.steps[-1]
    w_node = step.graph.find("w").id
    assert torch.equal(step.grad(w_node), want.grad(w_node))
    assert step.stats(w_node) == want.stats(w_node)
    assert torch.equal(step.param("b"), want.param("b"))
    assert torch.equal(step.param_grad("w"), want.param_grad("w"))
    assert step.params == ["w", "b"]
    assert step.data == {"fit": want.data["fit"], "b": want.data["b"]}
    assert loaded.steps[0].data["before"] == "first step"
    with pytest.raises(LookupError, match="live tensors are gone"):
        step.grad_of(torch.ones(1))


def test_report_of_a_loaded_run_is_the_report_of_the_live_run(tmp_path):
    live = _regression(12, save=None)
    live.save(tmp_path / "run.vizgrad")
    loaded = vizgrad.load(tmp_path / "run.vizgrad")
    assert loaded.report(engine="wasm").html() == live.report(engine="wasm").html()


def test_save_and_load_the_shared_seed_run(tmp_path, seed_run):
    seed_run.save(tmp_path / "seed.vizgrad")
    _assert_same_steps(seed_run, vizgrad.load(tmp_path / "seed.vizgrad"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64,
                                   torch.complex128, torch.int64, torch.bool, torch.float8_e4m3fn])
def test_kept_values_of_every_dtype_round_trip_bit_for_bit(tmp_path, dtype):
    values = torch.tensor([[1.5, -2.25, 3.0], [0.0, -0.0, 7.0]]).to(dtype)
    kept = {("node", "n0", 0): values, ("edge", "n0", 0): values[1], ("param", "s"): values[0, 0]}
    summaries = {key: Summary(1.0, 1.0, 0.0, 2.0, 0, 0, value.numel()) for key, value in kept.items()}
    step = Step(0, 1.0, Graph((Node("n0", "root", "root"),), (), ("n0",)), summaries, kept)
    store.save(Run([step]), tmp_path / "dtypes.vizgrad")
    got = vizgrad.load(tmp_path / "dtypes.vizgrad").steps[0]
    for key, want in step.values.items():
        assert got.values[key].dtype == dtype
        assert got.values[key].shape == want.shape
        assert torch.equal(got.values[key].reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)), key
    assert got.summaries[("node", "n0", 0)].numel == 6


def test_odd_tensors_round_trip(tmp_path):
    sparse = torch.sparse_coo_tensor([[0, 2]], [1.0, -4.0], (4,), check_invariants=True)
    conj = torch.tensor([1 + 2j, 3 - 1j]).conj()
    values = {("node", "n0", 0): torch.empty(0, 3), ("node", "n0", 1): torch.tensor(2.5, dtype=torch.float64),
              ("edge", "n0", 0): sparse, ("edge", "n0", 1): conj,
              ("edge", "n0", 2): torch.arange(12.0).reshape(3, 4).t()}  # not contiguous
    step = Step(0, None, Graph((Node("n0", "root", "root"),), (), ("n0",)), {}, values)
    store.save(Run([step]), tmp_path / "odd.vizgrad")
    got = vizgrad.load(tmp_path / "odd.vizgrad").steps[0].values
    assert got[("node", "n0", 0)].shape == (0, 3)
    assert got[("node", "n0", 1)].shape == () and got[("node", "n0", 1)].item() == 2.5
    assert torch.equal(got[("edge", "n0", 0)], sparse.to_dense())
    assert torch.equal(got[("edge", "n0", 1)], conj.resolve_conj())
    assert torch.equal(got[("edge", "n0", 2)], values[("edge", "n0", 2)])


def test_non_finite_losses_and_summaries_survive(tmp_path):
    graph = Graph((Node("n0", "root", "root"),), (), ("n0",))
    summary = Summary(math.inf, math.nan, -math.inf, math.inf, 2, 3, 9)
    steps = [Step(i, loss, graph, {("node", "n0", 0): summary}, {}) for i, loss in
             enumerate([math.nan, math.inf, -math.inf, None, 0.1 + 0.2])]
    store.save(Run(steps), tmp_path / "nan.vizgrad")
    loaded = vizgrad.load(tmp_path / "nan.vizgrad")
    losses = loaded.losses()
    assert math.isnan(losses[0]) and losses[1:] == [math.inf, -math.inf, None, 0.1 + 0.2]
    got = loaded.steps[0].summaries[("node", "n0", 0)]
    assert (got.norm, got.min, got.max, got.nan, got.inf, got.numel) == (math.inf, -math.inf, math.inf, 2, 3, 9)
    assert math.isnan(got.mean)


def test_each_distinct_graph_is_stored_once(tmp_path):
    path = tmp_path / "dynamic.vizgrad"
    w = torch.ones(3, requires_grad=True)
    with vizgrad.record(save=path) as run:
        for i in range(6):
            h = w * 2
            if i % 2:
                h = h.exp()
            h.sum().backward()
    assert len(run.graphs()) == 2
    connection = sqlite3.connect(path)
    assert connection.execute("SELECT count(*) FROM graphs").fetchone()[0] == 2
    connection.close()
    loaded = vizgrad.load(path)
    assert loaded.steps[0].graph is loaded.steps[2].graph  # read once, shared
    assert [s.graph.structural_hash for s in loaded.steps] == [s.graph.structural_hash for s in run.steps]


# -- streaming ------------------------------------------------------------------------------------------------


def test_steps_stream_to_disk_and_back(tmp_path):
    run = _regression(40, save=tmp_path / "run.vizgrad", log=False)
    assert isinstance(run, store.StoredRun)
    assert len(run.steps) == 40
    assert len(run.steps._recent) <= 8
    assert [s.index for s in run.steps] == list(range(40))
    assert run.steps[-1].index == 39 and run.steps[-40].index == 0
    assert [s.index for s in run.steps[5:9]] == [5, 6, 7, 8]
    assert len(run.steps._recent) <= 8
    with pytest.raises(IndexError, match="out of range"):
        run.steps[40]
    with pytest.raises(UsageError):
        run.steps[0] = run.steps[1]
    with pytest.raises(UsageError):
        del run.steps[0]
    with pytest.raises(UsageError):
        run.steps.insert(0, run.steps[1])


def test_appending_after_close_is_refused(tmp_path):
    run = _regression(2, save=tmp_path / "run.vizgrad", log=False)
    step = run.steps[-1]
    with pytest.raises(RecordingError, match="closed for writing"):
        run.steps.append(Step(2, step.loss, step.graph, step.summaries, step.values))


def test_an_unfinished_recording_is_readable_step_by_step(tmp_path):
    """Every committed step is on disk at once: what a killed process leaves behind."""
    path = tmp_path / "live.vizgrad"
    run, run_store = store.open_for_recording(path)
    source = record_seed_run(steps=3)
    for step in source.steps:
        run.steps.append(Step(step.index, step.loss, step.graph, step.summaries, step.values))
        other = vizgrad.load(path)  # a second reader, as `vizgrad info` during a recording
        assert len(other.steps) == step.index + 1
        assert not other.complete
        other.store.disconnect()
    run.log("note", 1)  # reaches the file
    assert vizgrad.load(path).steps[2].data == {"note": 1}
    run_store.close()
    assert vizgrad.load(path).complete


def test_a_killed_recording_leaves_its_steps_in_the_wal(tmp_path):
    path = tmp_path / "killed.vizgrad"
    run, _ = store.open_for_recording(path)
    for step in record_seed_run(steps=4).steps:
        run.steps.append(Step(step.index, step.loss, step.graph, step.summaries, step.values))
    # Copy the file and its write-ahead log as they are, as if the process had died now.
    copy = tmp_path / "copy.vizgrad"
    shutil.copy(path, copy)
    shutil.copy(f"{path}-wal", f"{copy}-wal")
    loaded = vizgrad.load(copy)
    assert len(loaded.steps) == 4 and not loaded.complete
    assert loaded.losses() == run.losses()


def test_a_finished_run_file_is_one_file(tmp_path):
    path = tmp_path / "run.vizgrad"
    _regression(3, save=path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.vizgrad"]


def test_logged_values_must_be_json(tmp_path):
    with vizgrad.record(save=tmp_path / "run.vizgrad") as run:
        w = torch.ones(1, requires_grad=True)
        (w * 2).sum().backward()
        run.log("tensor", torch.tensor([1.0, 2.0]))  # tensors become lists
        with pytest.raises(UsageError, match="cannot save a logged value of type object"):
            run.log("bad", object())
        del run.steps[-1].data["bad"]
    assert vizgrad.load(tmp_path / "run.vizgrad").steps[0].data == {"tensor": [1.0, 2.0]}


# -- saving ---------------------------------------------------------------------------------------------------


def test_save_replaces_an_older_run_file_whole(tmp_path, seed_run):
    path = tmp_path / "run.vizgrad"
    _regression(3, save=path)
    seed_run.save(path)
    assert len(vizgrad.load(path).steps) == len(seed_run.steps)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.vizgrad"]  # no temporary file left


def test_save_refuses_to_overwrite_a_file_that_is_not_a_run(tmp_path, seed_run):
    script = tmp_path / "train.py"
    script.write_text("print('precious')\n")
    with pytest.raises(RunFileError, match="exists and is not a vizgrad run file"):
        seed_run.save(script)
    with pytest.raises(RunFileError, match="exists and is not a vizgrad run file"):
        store.open_for_recording(script)
    assert script.read_text() == "print('precious')\n"


def test_save_into_a_missing_folder_says_so(tmp_path, seed_run):
    with pytest.raises(RunFileError, match="does not exist; create it first"):
        seed_run.save(tmp_path / "nowhere" / "run.vizgrad")


def test_saving_a_loaded_run_onto_its_own_file_keeps_it(tmp_path):
    path = tmp_path / "run.vizgrad"
    _regression(4, save=path)
    loaded = vizgrad.load(path)
    loaded.meta["note"] = "reviewed"
    loaded.save(path)
    again = vizgrad.load(path)
    assert len(again.steps) == 4 and again.meta == {"title": "regression", "note": "reviewed"}


def test_saving_a_loaded_run_elsewhere_copies_it(tmp_path):
    _regression(4, save=tmp_path / "a.vizgrad")
    vizgrad.load(tmp_path / "a.vizgrad").save(tmp_path / "b.vizgrad")
    _assert_same_steps(vizgrad.load(tmp_path / "a.vizgrad"), vizgrad.load(tmp_path / "b.vizgrad"))


def test_panels_without_to_dict_are_left_out_with_a_warning(tmp_path, seed_run):
    run = Run(list(seed_run.steps[:2]), panels=[object()])
    with pytest.warns(RuntimeWarning, match="no to_dict"):
        run.save(tmp_path / "run.vizgrad")
    assert vizgrad.load(tmp_path / "run.vizgrad").panels == []


# -- validation -------------------------------------------------------------------------------------------------


def _expect_error(path, *fragments):
    with pytest.raises(RunFileError) as caught:
        vizgrad.load(path)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.vizgrad", "no run file at", "check the path", HOW_TO)
    assert not (tmp_path / "nope.vizgrad").exists()  # loading never creates a file


def test_folder(tmp_path):
    _expect_error(tmp_path, "is a folder", HOW_TO)


def test_empty_file(tmp_path):
    (tmp_path / "empty.vizgrad").write_bytes(b"")
    _expect_error(tmp_path / "empty.vizgrad", "is empty, not a vizgrad run file", HOW_TO)


def test_random_bytes(tmp_path):
    (tmp_path / "noise.vizgrad").write_bytes(bytes(range(256)) * 20)
    _expect_error(tmp_path / "noise.vizgrad", "not a vizgrad run file (not a SQLite database)", HOW_TO)


def test_foreign_sqlite_database(tmp_path):
    connection = sqlite3.connect(tmp_path / "other.db")
    connection.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    connection.commit()
    connection.close()
    _expect_error(tmp_path / "other.db", "is a SQLite database but not a vizgrad run file", HOW_TO)
    assert not store.is_run_file(tmp_path / "other.db")


def test_newer_schema(tmp_path):
    path = tmp_path / "future.vizgrad"
    _regression(2, save=path)
    connection = sqlite3.connect(path)
    connection.execute("UPDATE meta SET value = ? WHERE key = 'vizgrad_schema'", (str(store.SCHEMA_VERSION + 1),))
    connection.execute("UPDATE meta SET value = '9.0' WHERE key = 'vizgrad_version'")
    connection.commit()
    connection.close()
    _expect_error(path, f"written by a newer vizgrad (9.0, run file schema {store.SCHEMA_VERSION + 1})",
                  "pip install -U vizgrad")


def test_truncated_file(tmp_path):
    path = tmp_path / "run.vizgrad"
    _regression(20, save=path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    _expect_error(path, "is damaged", "truncated", "record the run again")


def test_file_cut_inside_its_header(tmp_path):
    path = tmp_path / "run.vizgrad"
    _regression(2, save=path)
    path.write_bytes(path.read_bytes()[:60])
    _expect_error(path, "is damaged", "header is cut short")


def test_overwritten_pages(tmp_path):
    path = tmp_path / "run.vizgrad"
    _regression(20, save=path)
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    for page in range(1, len(data) // page_size):  # every b-tree page header but the first
        data[page * page_size:page * page_size + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    _expect_error(path, "is damaged", "record the run again")


def test_run_file_detection(tmp_path, seed_run):
    seed_run.save(tmp_path / "run.vizgrad")
    (tmp_path / "script.py").write_text("print(1)\n")
    assert store.is_run_file(tmp_path / "run.vizgrad")
    assert not store.is_run_file(tmp_path / "script.py")
    assert not store.is_run_file(tmp_path / "missing")


# -- damage of any kind: one clear error, never a crash ----------------------------------------------------------


def _read_everything(path) -> None:
    """What rendering reads of a run file: meta, graphs, losses, every step's rows and kept values, the page."""
    run = vizgrad.load(path)
    try:
        run.graphs(), run.losses(), run.param_names(), run.norm_range()
        for step in run.steps:
            step.table.rows
            list(step.values.items())
            step.graph.nodes
    finally:
        run.store.disconnect()


@pytest.mark.filterwarnings("ignore:cannot restore a panel")  # a damaged panel spec is left out, with this warning
def test_random_damage_gives_one_clear_error_or_a_readable_run(tmp_path):
    """Defect 12: truncations and byte flips anywhere never escape as anything but RunFileError."""
    import random

    path = tmp_path / "run.vizgrad"
    _regression(12, save=path)
    original = path.read_bytes()
    generator = random.Random(0)
    outcomes = {"error": 0, "read": 0}
    for case in range(400):
        data = bytearray(original)
        if case % 4 == 0:
            data = data[:generator.randrange(1, len(data))]
        else:
            for _ in range(generator.choice((1, 1, 2, 8))):
                data[generator.randrange(len(data))] ^= 1 << generator.randrange(8)
        damaged = tmp_path / f"damaged-{case}.vizgrad"
        damaged.write_bytes(bytes(data))
        try:
            _read_everything(damaged)
            outcomes["read"] += 1
        except RunFileError as error:
            assert "\n" not in str(error) and str(damaged) in str(error), error
            outcomes["error"] += 1
        damaged.unlink()
    assert outcomes["error"] > 50 and outcomes["read"] > 20, outcomes  # both kinds of damage were met


def test_a_flipped_byte_in_a_step_and_bad_text_in_the_schema_are_named_damage(tmp_path):
    """Defect 12: the two cases found by hand, a step blob's byte and a non-UTF-8 meta value."""
    path = tmp_path / "run.vizgrad"
    _regression(3, save=path)
    connection = sqlite3.connect(path)
    (blob,) = connection.execute("SELECT summaries FROM steps WHERE idx = 1").fetchone()
    flipped = bytearray(blob)
    flipped[len(flipped) // 2] ^= 0x10
    connection.execute("UPDATE steps SET summaries = ? WHERE idx = 1", (bytes(flipped),))
    connection.commit()
    connection.close()
    run = vizgrad.load(path)
    with pytest.raises(RunFileError, match="step 1 does not decode.*checksum"):
        run.steps[1].table.rows
    run.store.disconnect()
    connection = sqlite3.connect(path)
    connection.execute("UPDATE meta SET value = CAST(? AS TEXT) WHERE key = 'vizgrad_schema'", (b"2\xff",))
    connection.commit()
    connection.close()
    _expect_error(path, "is damaged", "record the run again")


def test_files_of_schema_4_load_their_rows_without_the_mean_of_abs_unless_a_kept_value_gives_it(tmp_path):
    from oldfiles import as_schema

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.Tanh(), torch.nn.Linear(10, 1))
    path = tmp_path / "old.vizgrad"
    with vizgrad.record(model, save=path) as live:  # keep=64: the 120-element weight's .grad is not kept
        for _ in range(3):
            model.zero_grad()
            model(torch.randn(5, 12)).pow(2).mean().backward()
    connection = as_schema(path, 4)
    connection.commit()
    connection.close()
    old = vizgrad.load(path)
    assert old.store.version == 4
    for want, got in zip(live.steps, old.steps):
        for key, summary in want.summaries.items():
            read = got.summaries[key]
            assert read[:7] == summary[:7], key  # every other column as recorded
            if got.table.is_kept(key):  # computed again from the kept value
                assert read.abs == pytest.approx(summary.abs, rel=1e-12), key
            else:
                assert math.isnan(read.abs), key
    recorded = live.steps[-1].summaries[("param_grad", "0.weight")].abs
    assert recorded == pytest.approx(float(model[0].weight.grad.abs().mean()), rel=1e-6)  # the new file's oracle
    names, means = old.grad_norms(by="param", measure="mean")
    assert np.isnan(means[:, names.index("0.weight")]).all() and not np.isnan(means[:, names.index("2.bias")]).any()
    assert old.report()._payload()[0]["flow"]["mean"] is None  # the page's bars fall back to RMS
    assert live.report()._payload()[0]["flow"]["mean"] is not None
