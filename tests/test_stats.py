"""Tests for vizgrad.stats: summaries against torch's own reductions, and what is kept."""

from __future__ import annotations

import json
import math

import numpy as np

import pytest
import torch

from vizgrad.stats import SEGMENT_LIMIT, Summary, SummaryMemo, summarize, summarize_distinct


def expected_summary(t: torch.Tensor) -> dict[str, float | int]:
    values = t.to_dense() if t.layout != torch.strided else t
    values = (values.abs() if values.is_complex() else values).double().reshape(-1)
    finite = values[~torch.isnan(values)]
    return {
        "norm": float(torch.linalg.vector_norm(values)),
        "mean": float(values.mean()),
        "min": float(finite.min()) if finite.numel() else math.nan,
        "max": float(finite.max()) if finite.numel() else math.nan,
        "nan": int(torch.isnan(values).sum()),
        "inf": int(torch.isinf(values).sum()),
        "numel": t.numel(),
        "abs": float(values.abs().sum() / t.numel()) if t.numel() else math.nan,  # implicit zeros count
    }


def assert_summary(summary: Summary, t: torch.Tensor, rel: float = 1e-6) -> None:
    want = expected_summary(t)
    got = summary.as_dict()
    for key in ("nan", "inf", "numel"):
        assert got[key] == want[key], key
    for key in ("norm", "mean", "min", "max", "abs"):
        assert got[key] == pytest.approx(want[key], rel=rel, abs=1e-12, nan_ok=True), key


def test_small_tensors_of_several_dtypes_in_one_batch():
    torch.manual_seed(0)
    tensors = [
        torch.randn(5), torch.randn(3, 4), torch.tensor(2.5), torch.randn(7, dtype=torch.float64),
        torch.randn(4, dtype=torch.complex64), torch.randn(6).half(), torch.randn(6).bfloat16(),
    ]
    batch = summarize(tensors, keep=None)
    for i, t in enumerate(tensors):
        assert_summary(batch.summary(i), t, rel=1e-3 if t.dtype in (torch.float16, torch.bfloat16) else 1e-6)
        kept = batch.value(i)
        assert kept.shape == t.shape and kept.dtype == t.dtype and kept.device.type == "cpu"
        assert torch.equal(kept, t)


def test_large_dense_tensor_is_reduced_on_its_own():
    torch.manual_seed(0)
    big = torch.randn(SEGMENT_LIMIT + 10)
    batch = summarize([big, torch.ones(3)], keep=None)
    assert_summary(batch.summary(0), big, rel=1e-5)
    assert torch.equal(batch.value(0), big)
    assert batch.summary(1).as_dict() == {"norm": math.sqrt(3), "mean": 1.0, "min": 1.0, "max": 1.0, "nan": 0,
                                          "inf": 0, "numel": 3, "abs": 1.0}


@pytest.mark.parametrize("size", [6, SEGMENT_LIMIT + 6])
def test_nan_and_inf_are_counted_and_min_max_ignore_nan(size):
    t = torch.zeros(size)
    t[:6] = torch.tensor([1.0, math.nan, -math.inf, 3.0, math.nan, -2.0])
    summary = summarize([t], keep=None).summary(0)
    assert (summary.nan, summary.inf) == (2, 1)
    assert summary.min == -math.inf and summary.max == 3.0
    assert math.isnan(summary.norm) and math.isnan(summary.mean)
    assert not summary.finite


def test_only_nan_has_no_min_or_max():
    summary = summarize([torch.full((4,), math.nan)]).summary(0)
    assert summary.nan == 4 and math.isnan(summary.min) and math.isnan(summary.max)


def test_sparse_tensor_counts_its_implicit_zeros():
    indices = torch.tensor([[0, 2, 2], [1, 0, 0]])
    sparse = torch.sparse_coo_tensor(indices, torch.tensor([3.0, 4.0, 1.0]), (4, 3),
                                     check_invariants=True)  # uncoalesced: (2, 0) twice
    summary = summarize([sparse], keep=None).summary(0)
    assert summary.as_dict() == pytest.approx(expected_summary(sparse))
    assert summary.numel == 12 and summary.min == 0.0 and summary.max == 5.0
    negative = torch.sparse_coo_tensor(indices, torch.tensor([-3.0, -4.0, -1.0]), (4, 3),
                                       check_invariants=True)
    assert summarize([negative]).summary(0).max == 0.0


def test_empty_tensor():
    summary = summarize([torch.zeros(0, 3)]).summary(0)
    assert summary.numel == 0 and summary.norm == 0.0 and math.isnan(summary.mean)


def test_keep_limits_what_is_kept():
    small, large = torch.ones(4), torch.ones(20)
    batch = summarize([small, large], keep=10)
    assert batch.value(0) is not None and batch.value(1) is None
    assert batch.summary(1).numel == 20 and batch.summary(1).norm == pytest.approx(math.sqrt(20))


def test_kept_values_are_copies():
    small = torch.ones(3)
    single = torch.arange(4.0).reshape(2, 2).t()  # a non-contiguous view
    big = torch.ones(SEGMENT_LIMIT + 1)
    batch = summarize([small, big], keep=None)
    lone = summarize([single], keep=None)
    small.zero_()
    big.zero_()
    assert torch.equal(batch.value(0), torch.ones(3))
    assert batch.value(1).sum() == SEGMENT_LIMIT + 1
    expected = single.clone()
    single.zero_()
    assert torch.equal(lone.value(0), expected)


def test_summary_json_form_round_trips_non_finite_values():
    summary = Summary(math.inf, math.nan, -math.inf, 2.0, 1, 2, 5)
    data = json.loads(json.dumps(summary.to_list()))
    back = Summary.from_list(data)
    assert back.norm == math.inf and math.isnan(back.mean) and back.min == -math.inf and back.max == 2.0
    assert (back.nan, back.inf, back.numel) == (1, 2, 5)
    assert Summary(0.0, 0.0, 0.0, 0.0, 0, 0, 3).zero and Summary(0.0, 0.0, 0.0, 0.0, 0, 0, 3).finite


def test_packed_single_transfer_path_matches_cpu_path():
    """The accelerator path (one packed transfer per device), forced on the CPU, agrees with the CPU path."""
    torch.manual_seed(0)
    tensors = [
        torch.randn(3, 4),
        torch.randn(100_000),  # large: reduced, not kept
        torch.tensor([1.0, float("nan"), -float("inf"), 2.0]),
        torch.randn(5, dtype=torch.float64),
        torch.randn(6).to(torch.bfloat16),
        torch.randn(3, dtype=torch.complex64),
        torch.randn(10, 3).to_sparse(),
        torch.tensor(2.5),
        torch.empty(0),
    ]
    plain = summarize(tensors, keep=64)
    packed = summarize(tensors, keep=64, packed_devices=["cpu"])
    np.testing.assert_allclose(packed.rows, plain.rows, rtol=1e-6, equal_nan=True)
    for i, t in enumerate(tensors):
        a, b = plain.value(i), packed.value(i)
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == b.dtype and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    assert packed.value(1) is None  # over keep: summarised only
    assert torch.equal(packed.value(0), tensors[0])


def test_distinct_values_are_summarised_once_and_none_has_no_row():
    torch.manual_seed(0)
    a, b = torch.randn(3, 4), torch.randn(5)
    batch, positions = summarize_distinct([a, None, b, a, None, b], keep=None)
    assert positions == [0, -1, 1, 0, -1, 1]
    assert len(batch.kept) == 2
    assert_summary(batch.summary(0), a)
    assert torch.equal(batch.value(1), b)
    assert summarize_distinct([], keep=None)[1] == []


@pytest.mark.parametrize("keep", [None, 0])
def test_views_of_the_same_memory_share_a_summary_and_keep_their_own_values(keep):
    """A transpose or reshape covers the same elements: reduced once, still right; strided views are not aliases."""
    torch.manual_seed(0)
    base = torch.randn(16, 8)
    views = [base.t(), base, base.reshape(-1), base[:, ::2], base.t()[2:], base.t().contiguous()]
    batch = summarize(views, keep=keep)
    for i, view in enumerate(views):
        assert_summary(batch.summary(i), view, rel=1e-5)
        if keep is None:
            assert torch.equal(batch.value(i), view)


def test_memo_of_shared_memory_is_checked_before_it_is_reused():
    torch.manual_seed(0)
    memo = SummaryMemo()
    base = torch.randn(16, 8)
    batch = summarize([base, base.t()], keep=0, memo=memo)
    assert_summary(batch.summary(1), base.t(), rel=1e-5)
    other, unrelated = torch.randn(16, 8), torch.randn(16, 8).t()  # laid out alike, no longer one memory
    batch = summarize([other, unrelated], keep=0, memo=memo)
    assert_summary(batch.summary(0), other, rel=1e-5)
    assert_summary(batch.summary(1), unrelated, rel=1e-5)
    again = torch.randn(16, 8)
    batch = summarize([again, again.t()], keep=0, memo=memo)
    assert_summary(batch.summary(1), again.t(), rel=1e-5)


def test_memo_of_shared_memory_checks_the_targets_layout_too():
    """Defect 3: a strided slice starting where the alias starts is not the memory the alias covers."""
    torch.manual_seed(0)
    memo = SummaryMemo()
    base = torch.randn(16, 8)
    summarize([base, base.t()], keep=0, memo=memo)  # base.t() is remembered as an alias of base
    storage = torch.randn(16 * 16)
    dense = storage[:128].view(16, 8)  # the alias's memory
    strided = storage.view(16, 16)[:, ::2]  # same start, shape and count, other elements
    batch = summarize([strided, dense.t()], keep=0, memo=memo)
    assert_summary(batch.summary(0), strided, rel=1e-5)
    assert_summary(batch.summary(1), dense.t(), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.bfloat16])
def test_many_tensors_of_one_size_are_reduced_as_a_block(dtype):
    """Ten tensors of one size (a block), three loose sizes, and a block holding NaN and Inf."""
    torch.manual_seed(0)
    tensors = [torch.randn(3, 30).to(dtype) for _ in range(10)] + [torch.randn(n).to(dtype) for n in (70, 80, 90)]
    odd = [torch.randn(50).to(dtype) for _ in range(9)]
    odd[4][[3, 7]] = torch.tensor([math.nan, math.inf]).to(dtype)
    batch = summarize(tensors + odd, keep=0)
    rel = 1e-2 if dtype == torch.bfloat16 else 1e-6
    for i, t in enumerate(tensors + odd):
        assert_summary(batch.summary(i), t, rel=rel)
    assert (batch.summary(len(tensors) + 4).nan, batch.summary(len(tensors) + 4).inf) == (1, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64])
@pytest.mark.parametrize("path", ["flat", "block", "big"])
def test_every_summary_holds_to_1e_5_at_any_size_and_dtype(dtype, path):
    """Defect 4: sums accumulate in float64 (by chunks) whatever the size, so constants do not drift."""
    torch.manual_seed(0)
    if path == "flat":
        tensors = [torch.full((5000,), 0.1), torch.randn(3000) + 3]
    elif path == "block":  # eight of one shape, rows longer than a chunk
        tensors = [torch.full((60, 1000), 0.1) for _ in range(4)] + [torch.randn(60, 1000) + 3 for _ in range(4)]
    else:
        tensors = [torch.full((4096, 4096), 0.1), torch.randn(300_001) + 3]
    tensors = [t.to(dtype) for t in tensors]
    batch = summarize(tensors, keep=0)
    for i, t in enumerate(tensors):
        assert_summary(batch.summary(i), t, rel=1e-5)


def test_batches_bigger_than_a_part_are_summarised_part_by_part():
    """Copies are made a bounded part at a time (memory): every tensor's row is still its own, NaN in a late part."""
    from vizgrad.stats import _PART_NUMEL, _parts
    torch.manual_seed(0)
    block = [torch.randn(40, 1000) for _ in range(12)]  # 480,000 elements of one shape: two parts
    loose = [torch.randn(n) for n in range(50_000, 60_000, 700)]  # 15 sizes, 825,000 elements: four parts
    loose[-1][5] = math.nan
    tensors = block + loose
    assert sum(t.numel() for t in tensors) > 4 * _PART_NUMEL
    batch = summarize(tensors, keep=0)
    for i, t in enumerate(tensors):
        assert_summary(batch.summary(i), t, rel=1e-6)
    assert batch.summary(len(tensors) - 1).nan == 1
    counts = np.array([t.numel() for t in loose])
    parts = _parts(counts)
    assert parts[0][0] == 0 and parts[-1][1] == len(counts)
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    assert all(counts[start:stop].sum() <= _PART_NUMEL or stop - start == 1 for start, stop in parts)
    assert _parts(np.array([_PART_NUMEL + 1, 3])) == [(0, 1), (1, 2)]


def test_gradients_summarised_where_they_flowed_join_the_batch_on_either_path():
    """A Reduced stand-in (a big gradient reduced in its hook) brings its row, on the CPU and the packed path."""
    from vizgrad.stats import Reduced

    torch.manual_seed(0)
    big, small = torch.randn(300_000) * 3, torch.randn(5)
    for packed in (None, ["cpu"]):
        batch = summarize([Reduced(big), small], keep=64, packed_devices=packed)
        assert_summary(batch.summary(0), big, rel=1e-6)
        assert_summary(batch.summary(1), small)
        assert batch.value(0) is None and torch.equal(batch.value(1), small)


@pytest.mark.parametrize("magnitude", [1e-25, 1e-30, 1e25])
def test_tiny_and_huge_gradients_keep_their_norm_on_every_path(magnitude):
    """A vanishing gradient of 1e-25 squares to 1e-50, below float32's range: its norm must not read as zero."""
    from vizgrad.stats import Reduced

    torch.manual_seed(0)
    paths = {
        "kept": [torch.randn(3, 4) * magnitude],  # kept values: numpy segments
        "block": [torch.randn(4, 32) * magnitude for _ in range(10)],  # one shape, eight or more: a 2-d block
        "loose": [torch.randn(n) * magnitude for n in (100, 300, 700)],  # flat segments of their own
        "long block": [torch.randn(3, 2000) * magnitude for _ in range(8)],  # block rows longer than a chunk
        "big": [torch.randn(SEGMENT_LIMIT + 1000) * magnitude],  # reduced on its own, in chunks
    }
    for name, tensors in paths.items():
        for packed in (None, ["cpu"]):  # the CPU path, and the device path (one transfer) run on the CPU
            batch = summarize(tensors, keep=16 if name == "kept" else 0, packed_devices=packed)
            for i, t in enumerate(tensors):
                got, want = batch.summary(i).as_dict(), expected_summary(t)
                for key in ("norm", "mean", "min", "max", "abs"):  # relative only: the values are all tiny or huge
                    assert got[key] == pytest.approx(want[key], rel=1e-6, abs=0), (name, packed, key)
    reduced = Reduced(paths["big"][0])  # summarised inside a node's hook
    assert reduced.row[0] == pytest.approx(float(torch.linalg.vector_norm(paths["big"][0].double())), rel=1e-6)


def test_a_big_tensors_zero_count_is_exact_on_every_path():
    """Exact zeros counted in the summary's sweep (a part with none is skipped) and by zero_count, against ==."""
    from vizgrad.stats import _PART_ROWS, CHUNK, Reduced, zero_count

    torch.manual_seed(0)
    part = _PART_ROWS * CHUNK
    late = torch.randn(3 * part + 517)  # zeros only in the third part and in the tail past the last whole chunk
    late[2 * part + 5:2 * part + 900] = 0.0
    late[-3:] = 0.0
    nan = torch.randn(part + 4000)
    nan[[7, part + 3]] = torch.tensor([math.nan, 0.0])  # NaN counts as nonzero; the non-finite path counts too
    dead = torch.randn(600, 300)
    dead[::3] = 0.0  # a dead unit's weight rows
    cases = {"late": late, "nan": nan, "transposed": dead.t(), "none": torch.randn(part + 1),
             "broadcast": torch.zeros(1, 300).expand(700, 300), "float64": dead.double(),
             "channels_last": torch.relu(torch.randn(4, 16, 40, 40)).contiguous(memory_format=torch.channels_last)}
    for name, t in cases.items():
        want = int((t == 0).sum())
        assert Reduced(t, zeros=True).zeros == want, name
        assert zero_count(t) == want, name
        assert_summary(summarize([Reduced(t, zeros=True)], keep=0).summary(0), t)  # the row is unchanged by counting
    assert Reduced(late).zeros is None  # not asked: not counted


def test_a_view_of_a_reduced_gradients_memory_shares_its_summary_in_its_own_shape():
    """The Reducer knows a transposed view of a reduced gradient by its block of memory; a new tensor that
    happens to get the same address, or the block written to since, is summarised afresh."""
    from vizgrad.stats import Reducer

    torch.manual_seed(0)
    reducer = Reducer(limit=1000)
    grad = torch.randn(400, 300)
    (token,) = reducer((grad,))
    (view,) = reducer((grad.t(),))
    assert view.shape == (300, 400) and view.row == token.row and reducer.count == 1
    assert reducer.lookup(grad.t().contiguous()) is not token  # a copy: other memory
    assert reducer((grad[:200],))[0].row != token.row  # part of the block only: its own summary
    grad.mul_(2.0)  # written to: the version moved on
    (again,) = reducer((grad.t(),))
    assert again.row[0] == pytest.approx(2 * token.row[0], rel=1e-6)
