"""Gradient summaries (norm, mean, min, max, NaN and Inf counts), computed in batches with one host sync."""

from __future__ import annotations

import itertools
import math
import operator
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import torch

__all__ = ["Summary", "Batch", "summarize", "summarize_distinct", "resolve", "row_summary", "kept_value"]

#: Tensors up to this many elements are summarised together in one flat buffer;
#: bigger ones get their own reductions (still on their device, still one sync).
SEGMENT_LIMIT = 1 << 16
#: Up to this many values, :func:`summarize_distinct` finds repeats with a dict; above, with numpy.
_SMALL_DEDUPE = 256


class Summary(NamedTuple):
    """Summary of one tensor.

    A named tuple (cheap to make: a report reads tens of thousands of them).
    ``min`` and ``max`` ignore NaNs (NaNs are counted in ``nan``); ``norm`` and
    ``mean`` propagate them. For complex tensors ``mean``, ``min`` and ``max``
    are of the magnitudes ``|z|``. Sparse tensors count their implicit zeros.
    """

    norm: float
    mean: float
    min: float
    max: float
    nan: int
    inf: int
    numel: int

    def as_dict(self) -> dict[str, float | int]:
        """The summary as a plain dict (``norm, mean, min, max, nan, inf, numel``)."""
        return self._asdict()

    def to_list(self) -> list[float | int | None]:
        """Compact JSON form; non-finite floats become strings so JSON stays valid."""
        return [_json_float(self.norm), _json_float(self.mean), _json_float(self.min), _json_float(self.max),
                self.nan, self.inf, self.numel]

    @classmethod
    def from_list(cls, data: Sequence[Any]) -> Summary:
        """Inverse of :meth:`to_list`."""
        norm, mean, lo, hi, nan, inf, numel = data
        return cls(float(norm), float(mean), float(lo), float(hi), int(nan), int(inf), int(numel))

    @property
    def finite(self) -> bool:
        """True when the tensor holds no NaN and no Inf."""
        return self.nan == 0 and self.inf == 0

    @property
    def zero(self) -> bool:
        """True when every element is exactly zero."""
        return self.numel > 0 and self.norm == 0.0


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def _empty_row() -> list[float]:
    """``norm, mean, min, max, nan, inf`` of a tensor with no elements."""
    nan = float("nan")
    return [0.0, nan, nan, nan, 0.0, 0.0]


def _stat_dtype(t: torch.Tensor) -> torch.Tensor:
    """A detached real tensor to reduce: magnitudes for complex, float32 at least for halves."""
    t = t.detach()
    if t.is_complex():
        return t.abs()
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t


def _big_row(t: torch.Tensor) -> torch.Tensor:
    """``[norm, mean, min, max]`` of one large tensor, computed on its device in three passes."""
    if t.is_sparse:
        t = t.coalesce()
        values = _stat_dtype(t.values()).reshape(-1)
    else:
        values = _stat_dtype(t)
    if values.numel() == 0:  # sparse tensor with no stored values: all implicit zeros
        zero = torch.zeros((), dtype=torch.float64, device=values.device)
        return torch.stack([zero, zero, zero, zero])
    lo, hi = torch.aminmax(values)
    if values.numel() < t.numel():  # a sparse tensor's implicit zeros count for min and max
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    mean = values.sum() / t.numel()  # over every element: a sparse tensor's implicit zeros count
    return torch.stack([torch.linalg.vector_norm(values), mean, lo, hi]).double()


def _exact_row(t: torch.Tensor) -> list[float]:
    """``[norm, mean, min, max, nan, inf]`` with NaN-ignoring min/max: the slow path for non-finite tensors."""
    values = _stat_dtype(t.coalesce().values() if t.is_sparse else t).reshape(-1).double()
    isnan = torch.isnan(values)
    lo = values.masked_fill(isnan, math.inf).amin() if values.numel() else torch.tensor(math.inf)
    hi = values.masked_fill(isnan, -math.inf).amax() if values.numel() else torch.tensor(-math.inf)
    if values.numel() < t.numel():  # a sparse tensor's implicit zeros count for min and max
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    row = torch.stack([torch.linalg.vector_norm(values), values.sum() / t.numel(), lo.double(), hi.double(),
                       isnan.sum().double(), torch.isinf(values).sum().double()])
    return row.tolist()


def _segment_rows(flat: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Rows ``[norm, mean, min, max, nan, inf]`` of many small tensors laid end to end (all counts > 0)."""
    values = np.abs(flat) if np.iscomplexobj(flat) else flat
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    rows = np.zeros((len(counts), 6), dtype=np.float64)
    # Sums accumulate in float64 without a float64 copy of the data.
    rows[:, 1] = np.add.reduceat(values, starts, dtype=np.float64) / counts
    rows[:, 0] = np.sqrt(np.add.reduceat(np.square(values, dtype=np.float64), starts))
    if np.isfinite(rows[:, 0]).all():  # the common case: no NaN, no Inf anywhere
        rows[:, 2] = np.minimum.reduceat(values, starts)
        rows[:, 3] = np.maximum.reduceat(values, starts)
        return rows
    wide = values.astype(np.float64)
    isnan = np.isnan(wide)
    rows[:, 2] = np.minimum.reduceat(np.where(isnan, np.inf, wide), starts)
    rows[:, 3] = np.maximum.reduceat(np.where(isnan, -np.inf, wide), starts)
    rows[:, 4] = np.add.reduceat(isnan, starts)
    rows[:, 5] = np.add.reduceat(np.isinf(wide), starts)
    return rows


#: A shape shared by at least this many tensors is reduced as one 2-d block with torch.
_BLOCK_RUN = 8
_shape = operator.attrgetter("shape")


def _reduce_into(rows: np.ndarray, tensors: Sequence[torch.Tensor], indices: list[int],
                 memo: dict[Any, Any] | None = None, key: Any = None, layouts: Any = None) -> None:
    """Fills ``rows[indices, :6]`` for dense tensors of one dtype.

    Tensors of a shape many of them share (a loop's repeated layers) are
    concatenated shape by shape into 2-d blocks, one row per tensor, and
    reduced along rows by torch's vectorised kernels; the rest are flattened
    into one buffer for numpy's segment reductions. Both sum in float64.
    ``memo`` keeps last call's grouping by shape, reused while the shapes
    agree: checked here, or vouched for by ``layouts``, the very list of
    ``(shape, ...)`` per tensor that last call had too.
    """
    last = memo.get(key) if memo is not None else None
    if last is not None and layouts is not None and last[1] is layouts and last[0] == indices:
        blocks, loose = last[2], last[3]
    else:
        shapes = list(map(_shape, [tensors[i] for i in indices]))
        by_shape: dict[Any, list[int]] = {}
        for i, shape in zip(indices, shapes):
            by_shape.setdefault(shape, []).append(i)
        blocks = [(members, np.asarray(members, dtype=np.int64)) for shape, members in by_shape.items()
                  if len(members) >= _BLOCK_RUN and len(shape)]
        loose = [i for shape, members in by_shape.items() if len(members) < _BLOCK_RUN or not len(shape)
                 for i in members]
        if memo is not None:
            memo[key] = (indices, layouts, blocks, loose)
    for members, at in blocks:
        block = torch.cat([tensors[i] for i in members])  # one copy; each tensor's elements stay together
        rows[at, :6] = _block_rows(block.view(len(members), -1))
    if loose:
        flat = _flatten([tensors[i] for i in loose])
        rows[loose, :6] = _segment_rows(_host_numpy(flat), rows[loose, 6].astype(np.int64))


def _block_rows(block: torch.Tensor) -> np.ndarray:
    """Rows ``[norm, mean, min, max, nan, inf]`` of each row of a 2-d block (the slow exact path on NaN/Inf)."""
    values = _stat_dtype(block)
    out = np.zeros((values.shape[0], 6), dtype=np.float64)
    out[:, 0] = torch.linalg.vector_norm(values, dim=1).numpy()
    if not np.isfinite(out[:, 0]).all():  # NaN or Inf somewhere (or squares beyond float32)
        return _segment_rows(_host_numpy(block.reshape(-1)), np.full(block.shape[0], block.shape[1]))
    # numpy casts to float64 in small buffers; torch would first copy the whole block to float64.
    out[:, 1] = np.add.reduce(values.numpy(), axis=1, dtype=np.float64) / values.shape[1]
    out[:, 2] = values.amin(1).numpy()
    out[:, 3] = values.amax(1).numpy()
    return out


def _host_numpy(flat: torch.Tensor) -> np.ndarray:
    # numpy has no bfloat16 or float8; widen every float narrower than 32 bits.
    if flat.dtype.is_floating_point and flat.dtype.itemsize < 4:
        flat = flat.float()
    return flat.numpy()


class Batch:
    """The result of :func:`summarize`: summary rows and kept values of a list of tensors.

    Rows are ``norm, mean, min, max, nan, inf, numel``. Tensors whose values
    are all kept are summarised from the kept copy on first access to
    :attr:`rows` (still in one batch), which keeps the training step cheap.
    """

    def __init__(self, rows: np.ndarray, buffers: list[torch.Tensor], kept: list[Any],
                 pending: Sequence[tuple[int, list[int], list[int]]] = ()) -> None:
        self._rows = rows
        self.buffers = buffers
        #: Per tensor: ``(buffer, offset, shape)``, a tensor copy, or ``None`` (not kept).
        self.kept = kept
        self._pending = list(pending)

    @property
    def rows(self) -> np.ndarray:
        """``(n, 7)`` float64 array of ``norm, mean, min, max, nan, inf, numel``."""
        for buffer, indices, counts in self._pending:
            self._rows[indices, :6] = _segment_rows(_host_numpy(self.buffers[buffer]), np.array(counts, dtype=np.int64))
        self._pending = []
        return self._rows

    def numel(self, index: int) -> int:
        """Element count of tensor ``index`` (never needs the summaries)."""
        return int(self._rows[index, 6])

    def scalar(self, index: int) -> float:
        """The value of one-element tensor ``index`` as a float (the real part of a complex one)."""
        locator = self.kept[index]
        if isinstance(locator, tuple):
            buffer = self.buffers[locator[0]]
            if buffer.dtype in (torch.float32, torch.float64):  # the common case, without a tensor op
                return float(buffer.numpy()[locator[1]])
        value = self.value(index)
        if value is None:
            return float(self.rows[index, 1])
        return float(value.reshape(()).real if value.is_complex() else value.reshape(()))

    def summary(self, index: int) -> Summary:
        """The :class:`Summary` of tensor ``index``."""
        return row_summary(self.rows[index])

    def value(self, index: int) -> torch.Tensor | None:
        """The kept value of tensor ``index`` (a view into a host buffer), or ``None``."""
        return kept_value(self.buffers, self.kept[index])


def resolve(batches: Iterable[Batch]) -> None:
    """Computes the pending summaries of many batches in one numpy pass per dtype.

    A report reads every step's summaries; resolving them together costs a few
    vectorised passes instead of several numpy calls per step.
    """
    by_dtype: dict[torch.dtype, list[tuple[Batch, int, list[int], list[int]]]] = {}
    for batch in batches:
        for buffer, indices, counts in batch._pending:
            by_dtype.setdefault(batch.buffers[buffer].dtype, []).append((batch, buffer, indices, counts))
        batch._pending = []
    for jobs in by_dtype.values():
        flat = torch.cat([batch.buffers[buffer] for batch, buffer, _, _ in jobs])
        counts = np.fromiter((n for _, _, _, group in jobs for n in group), dtype=np.int64)
        rows = _segment_rows(_host_numpy(flat), counts)
        at = 0
        for batch, _, indices, group in jobs:
            batch._rows[indices, :6] = rows[at:at + len(group)]
            at += len(group)


def row_summary(row: np.ndarray | Sequence[float]) -> Summary:
    """A :class:`Summary` from a row ``norm, mean, min, max, nan, inf, numel``."""
    norm, mean, lo, hi, nan, inf, numel = row.tolist() if isinstance(row, np.ndarray) else row
    if nan and nan == numel:  # nothing but NaN: no meaningful min or max
        lo = hi = float("nan")
    return Summary(norm, mean, lo, hi, int(nan), int(inf), int(numel))


def kept_value(buffers: Sequence[torch.Tensor], locator: Any) -> torch.Tensor | None:
    """Resolves a kept-value locator from :class:`Batch` to a tensor."""
    if locator is None or isinstance(locator, torch.Tensor):
        return locator
    buffer, offset, shape = locator
    return buffers[buffer].narrow(0, offset, math.prod(shape)).view(shape)


@torch.no_grad()
def summarize(tensors: Sequence[torch.Tensor], keep: int | None = 64, *,
              packed_devices: Sequence[str] | None = None, memo: dict[Any, Any] | None = None) -> Batch:
    """Summarises every tensor, and keeps a host copy of those with at most ``keep`` elements.

    On the CPU, the small dense tensors that are kept are flattened into one
    buffer in a single call (a copy, so later in-place updates of the
    originals cannot change what was kept) and reduced from it, segment by
    segment with numpy, when first asked. Other small dense tensors are copied
    into 2-d blocks of one shape (or one flat buffer) and reduced row by row
    at once; large and sparse tensors get three torch reductions each. Views
    that cover exactly the elements of another tensor in the batch (a
    transpose, a reshape) share its summary instead of being reduced again. On an accelerator every
    reduction runs on the device and the results and kept values travel to
    the host packed into one byte buffer: one synchronisation per device per
    step, not one per tensor (plus one more only when a tensor holds NaN/Inf).

    Args:
        tensors: The tensors (gradients) to summarise.
        keep: Keep full values of tensors up to this many elements (``None``: all).
        packed_devices: Device types that use the packed single-transfer path
            (default: every type but ``cpu``; tests pass ``["cpu"]``).
        memo: A dict kept between calls on tensors laid out alike (a training
            loop's steps): how they split and which views shared memory last
            time is checked there first instead of being worked out again.
            ``memo["used_plan"]`` is then the split this call used: the same
            object as last call's when every tensor had the same shape,
            dtype, layout and device (``None`` off the CPU path).

    Returns:
        A :class:`Batch` aligned with ``tensors``.
    """
    count = len(tensors)
    limit = math.inf if keep is None else keep
    kept: list[Any] = [None] * count
    buffers: list[torch.Tensor] = []
    pending: list[tuple[int, list[int], list[int]]] = []
    if memo is not None:
        plan = _cpu_plan(tensors, limit, memo) if count and (packed_devices is None or "cpu" not in packed_devices) \
            else None
        memo["used_plan"] = plan  # callers may tell by its identity that shapes, dtypes and layouts repeat
        if plan is not None:  # every tensor on the CPU, laid out as in the last call: its split holds
            rows = np.zeros((count, 7), dtype=np.float64)
            rows[:, 6] = plan.numels
            _summarize_groups(tensors, plan.groups, plan.big, plan.numels, rows, kept, buffers, pending, limit,
                              memo, plan.props)
            return Batch(rows, buffers, kept, pending)
    numels = list(map(torch.Tensor.numel, tensors))  # map(): one C loop, this runs for every gradient
    rows = np.zeros((count, 7), dtype=np.float64)
    rows[:, 6] = numels
    on_cpu = list(map(_is_cpu, tensors))
    if count and 0 not in numels and False not in on_cpu:  # the common case: every tensor on the CPU, none empty
        by_device: dict[Any, list[int]] = {"cpu": list(range(count))}
    else:
        by_device = {}
        for i, t in enumerate(tensors):
            if numels[i] == 0:
                rows[i, :6] = _empty_row()
                kept[i] = t.detach().to("cpu", copy=True)
            else:
                by_device.setdefault("cpu" if on_cpu[i] else t.device, []).append(i)  # no device object for the CPU
    for device, indices in by_device.items():
        device_type = "cpu" if device == "cpu" else device.type
        packed = device_type != "cpu" if packed_devices is None else device_type in packed_devices
        if packed:
            _summarize_packed(tensors, indices, rows, kept, buffers, pending, limit)
        else:
            groups, big = _cpu_groups(tensors, indices, numels, limit)
            _summarize_groups(tensors, groups, big, numels, rows, kept, buffers, pending, limit, memo)
    return Batch(rows, buffers, kept, pending)


class _CpuPlan(NamedTuple):
    """How :func:`summarize` splits tensors of given shapes, dtypes and layouts, all on the CPU."""

    props: list[tuple[Any, ...]]
    limit: float
    numels: list[int]
    groups: list[tuple[torch.dtype, list[int], list[int]]]
    big: list[int]


_props = operator.attrgetter("shape", "dtype", "layout", "is_cpu")


def _cpu_plan(tensors: Sequence[torch.Tensor], limit: float, memo: dict[Any, Any]) -> _CpuPlan | None:
    """The split of ``tensors`` for the CPU path, remembered in ``memo``; ``None`` when it does not apply."""
    props = list(map(_props, tensors))
    plan = memo.get("plan")
    if plan is not None and plan.limit == limit and plan.props == props:
        return plan
    numels = [math.prod(shape) for shape, _, _, _ in props]
    if 0 in numels or any(not on_cpu for _, _, _, on_cpu in props):
        return None
    groups, big = _cpu_groups(tensors, list(range(len(tensors))), numels, limit)
    plan = memo["plan"] = _CpuPlan(props, limit, numels, groups, big)
    return plan


def summarize_distinct(values: Sequence[torch.Tensor | None], keep: int | None = 64, *,
                       packed_devices: Sequence[str] | None = None,
                       memo: dict[Any, Any] | None = None) -> tuple[Batch, list[int]]:
    """Summarises each distinct tensor among ``values`` once.

    ``values`` may hold the same tensor several times (a gradient that is both
    what one node passes on and what the next receives) and ``None``\\ s.
    ``packed_devices`` and ``memo`` are as for :func:`summarize`.

    Returns:
        The :class:`Batch` of the distinct tensors, in first-seen order, and
        for each value its position in the batch (``-1`` for ``None``).
    """
    count = len(values)
    if memo is not None:
        last = memo.get("distinct")
        if last is not None and len(last[0]) == count:
            representatives, first_at, positions = last
            padded = list(values)
            padded.append(None)  # what a None value's representative points at
            # Each value must still be the very object its representative is, and no representative None.
            if all(map(operator.is_, values, map(padded.__getitem__, representatives))):
                tensors = list(map(values.__getitem__, first_at))
                if not any(map(operator.is_, tensors, itertools.repeat(None))):
                    return summarize(tensors, keep, packed_devices=packed_devices, memo=memo), positions
    if count <= _SMALL_DEDUPE:  # a dict beats numpy's sorting for a small graph
        seen: dict[int, int] = {}
        first_at = []
        positions = []
        for at, value in enumerate(values):
            if value is None:
                positions.append(-1)
                continue
            position = seen.setdefault(id(value), len(first_at))
            if position == len(first_at):
                first_at.append(at)
            positions.append(position)
    else:
        ids = np.fromiter(map(id, values), dtype=np.uint64, count=count)
        distinct_ids, first_seen, inverse = np.unique(ids, return_index=True, return_inverse=True)
        order = np.argsort(first_seen, kind="stable")  # batch positions in first-seen order
        none_at = np.searchsorted(distinct_ids, np.uint64(id(None)))
        if none_at < len(distinct_ids) and distinct_ids[none_at] == id(None):
            order = order[order != none_at]
        position_of = np.full(len(distinct_ids), -1, dtype=np.int64)
        position_of[order] = np.arange(len(order))
        first_at = first_seen[order].tolist()
        positions = position_of[inverse.reshape(-1)].tolist()
    if memo is not None:
        memo["distinct"] = ([first_at[p] if p >= 0 else count for p in positions], first_at, positions)
    tensors = [values[i] for i in first_at]
    return summarize(tensors, keep, packed_devices=packed_devices, memo=memo), positions


_is_cpu = operator.attrgetter("is_cpu")
_layout = operator.attrgetter("layout")
_dtype = operator.attrgetter("dtype")


def _cpu_groups(tensors: Sequence[torch.Tensor], indices: list[int], numels: list[int],
                limit: float) -> tuple[list[tuple[torch.dtype, list[int], list[int]]], list[int]]:
    """Splits CPU tensors into ``(dtype, kept ones, other ones)`` flat groups and the big or sparse ones."""
    groups: dict[torch.dtype, list[int]] = {}
    big: list[int] = []
    group_tensors = [tensors[i] for i in indices]
    layouts = list(map(_layout, group_tensors))
    dtypes = list(map(_dtype, group_tensors))
    if layouts.count(torch.strided) == len(indices) and dtypes.count(dtypes[0]) == len(indices) \
            and max(map(numels.__getitem__, indices)) <= SEGMENT_LIMIT:  # the common case: one flat group
        groups[dtypes[0]] = indices
    else:
        for i, layout, dtype in zip(indices, layouts, dtypes):
            if numels[i] <= SEGMENT_LIMIT and layout == torch.strided:
                groups.setdefault(dtype, []).append(i)
            else:
                big.append(i)
    return [(dtype, [i for i in group if numels[i] <= limit], [i for i in group if numels[i] > limit])
            for dtype, group in groups.items()], big


def _summarize_groups(tensors: Sequence[torch.Tensor], groups: list[tuple[torch.dtype, list[int], list[int]]],
                      big: list[int], numels: list[int], rows: np.ndarray, kept: list[Any],
                      buffers: list[torch.Tensor], pending: list[tuple[int, list[int], list[int]]], limit: float,
                      memo: dict[Any, Any] | None, layouts: Any = None) -> None:
    """Summarises CPU tensors split by :func:`_cpu_groups` (``layouts``: the plan's, when one applies)."""
    for dtype, kept_indices, other in groups:
        if kept_indices:
            # These values are kept in a host buffer anyway: summarise them from it when first asked.
            _keep_flat(_flatten([tensors[i] for i in kept_indices]), kept_indices, tensors, rows, kept, buffers,
                       pending, [numels[i] for i in kept_indices])
        if other:
            own, aliases, targets = _distinct_memory_memo(tensors, other, numels, memo, dtype)
            _reduce_into(rows, tensors, own, memo, ("shapes", dtype), layouts)
            if aliases:
                rows[aliases, :6] = rows[targets, :6]
    if big:
        _store_big_rows(tensors, big, torch.stack([_big_row(tensors[i]) for i in big]).numpy(), rows)
        for i in big:
            if numels[i] <= limit:
                kept[i] = _dense_copy(tensors[i])


def _distinct_memory_memo(tensors: Sequence[torch.Tensor], indices: list[int], numels: list[int],
                          memo: dict[Any, Any] | None, key: Any) -> tuple[list[int], list[int], list[int]]:
    """:func:`_distinct_memory`, first trying last call's answer from ``memo``.

    Last answer holds when the same positions are summarised and each alias
    still starts where its target does, with its old shape and strides (so
    it is still dense) and as many elements.
    """
    if memo is None:
        return _distinct_memory(tensors, indices, numels)
    last = memo.get(key)
    if last is not None and last[0] == indices:
        _, own, aliases, targets, (shapes, strides, counts) = last
        alias_tensors = [tensors[a] for a in aliases]
        if list(map(torch.Tensor.data_ptr, alias_tensors)) == list(
                map(torch.Tensor.data_ptr, [tensors[t] for t in targets])) \
                and list(map(_shape, alias_tensors)) == shapes and list(map(torch.Tensor.stride, alias_tensors)) \
                == strides and [numels[t] for t in targets] == counts:
            return own, aliases, targets
    own, aliases, targets = _distinct_memory(tensors, indices, numels)
    alias_tensors = [tensors[a] for a in aliases]
    memo[key] = (indices, own, aliases, targets, (list(map(_shape, alias_tensors)),
                                                  list(map(torch.Tensor.stride, alias_tensors)),
                                                  [numels[a] for a in aliases]))
    return own, aliases, targets


def _distinct_memory(tensors: Sequence[torch.Tensor], indices: list[int],
                     numels: list[int]) -> tuple[list[int], list[int], list[int]]:
    """Splits dense tensors into those to reduce and aliases of them: ``(own, aliases, their targets)``.

    Two dense tensors of one dtype that start at the same address and hold as
    many elements cover the same memory, so their norm, mean, min, max and
    counts agree (a gradient and its transpose, say). Contiguous ones are
    preferred as the one to reduce: they flatten without an extra copy.
    """
    group = [tensors[i] for i in indices]
    pointer_list = list(map(torch.Tensor.data_ptr, group))
    if len(set(pointer_list)) == len(pointer_list):
        return indices, [], []  # no two tensors start at one address
    pointers = np.array(pointer_list, dtype=np.uint64)
    order = np.argsort(pointers, kind="stable")
    repeats = pointers[order[1:]] == pointers[order[:-1]]
    sharing = np.zeros(len(indices), dtype=bool)
    sharing[order[1:][repeats]] = True
    sharing[order[:-1][repeats]] = True
    candidates = np.flatnonzero(sharing).tolist()
    contiguous = [group[k].is_contiguous() for k in candidates]
    ranked = [k for k, c in zip(candidates, contiguous) if c]
    ranked += [k for k, c in zip(candidates, contiguous) if not c and _dense(group[k])]
    owner: dict[tuple[int, int], int] = {}
    aliases: list[int] = []
    targets: list[int] = []
    for k in ranked:
        i = indices[k]
        first = owner.setdefault((pointer_list[k], numels[i]), i)
        if first != i:
            aliases.append(i)
            targets.append(first)
    if not aliases:
        return indices, [], []
    aliased = set(aliases)
    return [i for i in indices if i not in aliased], aliases, targets


def _dense(t: torch.Tensor) -> bool:
    """True when ``t``'s elements fill one gap-free block of memory in some order (a permuted contiguous tensor)."""
    expected = 1
    for stride, size in sorted(zip(t.stride(), t.shape)):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _summarize_packed(tensors: Sequence[torch.Tensor], indices: list[int], rows: np.ndarray, kept: list[Any],
                      buffers: list[torch.Tensor], pending: list[tuple[int, list[int], list[int]]],
                      limit: float) -> None:
    """Reduces on the device and brings rows and kept values to the host in one transfer."""
    kept_groups: dict[torch.dtype, list[int]] = {}
    reduced: list[int] = []
    for i in indices:
        t = tensors[i]
        if t.layout == torch.strided and rows[i, 6] <= limit:
            kept_groups.setdefault(t.dtype, []).append(i)
        else:
            reduced.append(i)
    flats = [(group, _flatten([tensors[i] for i in group])) for group in kept_groups.values()]
    partial = torch.stack([_big_row(tensors[i]) for i in reduced]) if reduced else None
    parts = ([partial.reshape(-1)] if partial is not None else []) + [flat for _, flat in flats]
    host = torch.cat([_padded_bytes(part) for part in parts]).cpu()  # the one synchronisation
    offset = 0
    if partial is not None:
        size = partial.numel() * partial.element_size()
        _store_big_rows(tensors, reduced, host[:size].view(torch.float64).reshape(-1, 4).numpy(), rows)
        offset = -(-size // 8) * 8
    for group, flat in flats:
        size = flat.numel() * flat.element_size()
        # clone(): a buffer of its own, aligned for its dtype and not pinning the others
        _keep_flat(host[offset:offset + size].view(flat.dtype).clone(), group, tensors, rows, kept, buffers, pending)
        offset += -(-size // 8) * 8
    for i in reduced:
        if rows[i, 6] <= limit:  # sparse tensors small enough to keep
            kept[i] = _dense_copy(tensors[i])


def _padded_bytes(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bytes, padded to a multiple of 8 so every part of a packed buffer stays aligned."""
    raw = t.reshape(-1).view(torch.uint8)
    padding = -raw.numel() % 8
    return torch.cat([raw, raw.new_zeros(padding)]) if padding else raw


def _keep_flat(host: torch.Tensor, group: list[int], tensors: Sequence[torch.Tensor], rows: np.ndarray,
               kept: list[Any], buffers: list[torch.Tensor], pending: list[tuple[int, list[int], list[int]]],
               counts: list[int] | None = None) -> None:
    """Registers a host buffer of kept values, to be summarised on first access."""
    if counts is None:
        counts = [int(rows[i, 6]) for i in group]
    buffer = len(buffers)
    offset = 0
    for i, n in zip(group, counts):
        kept[i] = (buffer, offset, tuple(tensors[i].shape))  # plain tuples: the GC stops tracking them
        offset += n
    buffers.append(host)
    pending.append((buffer, group, counts))


def _store_big_rows(tensors: Sequence[torch.Tensor], indices: list[int], partial: np.ndarray,
                    rows: np.ndarray) -> None:
    for row, i in zip(partial, indices):
        rows[i, :4] = row
        if not math.isfinite(row[0]):
            rows[i, :6] = _exact_row(tensors[i])


def _dense_copy(t: torch.Tensor) -> torch.Tensor:
    return (t.to_dense() if t.is_sparse else t).detach().to("cpu", copy=True)


def _flatten(group: list[torch.Tensor]) -> torch.Tensor:
    """One new 1-d tensor with every tensor of ``group`` end to end (one C++ call)."""
    if len(group) == 1:
        return group[0].reshape(-1).clone()  # reshape may return a view: clone to own the data
    return torch._utils._flatten_dense_tensors(group)
