"""Gradient summaries (norm, mean, min, max, NaN and Inf counts), computed in batches with one host sync.

Big gradients are summarised where they flow (inside their node's hook, by a
:class:`Reducer`) so autograd can free them as it would without vizgrad; the
rest are summarised together when the step ends.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
import weakref
from typing import Any, Sequence

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef

from vizgrad.gradtable import (STATISTICS, WIDTH, GradIndex, GradTable, Segments, Summary, host_numpy, row_summary,
                               segment_rows)
from vizgrad.ranks import local_parts

__all__ = ["Summary", "Batch", "Reduced", "Reducer", "SummaryMemo", "SummaryPlan", "summarize",
           "summarize_distinct", "big_row", "zero_count", "SEGMENT_LIMIT", "CHUNK"]

#: Tensors up to this many elements are summarised together (flat buffers, 2-d
#: blocks) when the step ends; bigger ones get reductions of their own.
SEGMENT_LIMIT = 1 << 16
#: Long reductions run as rows of this many elements, each summed in the
#: tensor's precision, the rows' partial sums then added in float64: as fast as
#: one float32 pass, and within 1e-6 of a float64 sum at any length.
CHUNK = 1024
#: Up to this many values, :func:`summarize_distinct` finds repeats with a dict; above, with numpy.
_SMALL_DEDUPE = 256
#: Rows of :data:`CHUNK` elements that :func:`_cpu_sums` reduces at a time: a part and its ``|x|`` buffer
#: (2 x 512 KiB in float32) stay in a core's L2 cache between its passes (128 was fastest of 16 to 512).
_PART_ROWS = 128
#: A shape shared by at least this many tensors is reduced as one 2-d block with torch.
_BLOCK_RUN = 8
#: Tensors summarised together are copied (stacked, flattened, widened to float64) in
#: parts of at most this many elements, so the copies stay small beside the gradients.
_PART_NUMEL = 1 << 18

_shape = operator.attrgetter("shape")
_props = operator.attrgetter("shape", "dtype", "layout", "is_cpu")
_numel = operator.methodcaller("numel")
_is_cpu = operator.attrgetter("is_cpu")
_layout = operator.attrgetter("layout")
_dtype = operator.attrgetter("dtype")


# -- big tensors ---------------------------------------------------------------------------------------------
def _real(t: torch.Tensor) -> torch.Tensor:
    """A detached real tensor to reduce: magnitudes for complex, float32 at least for halves and float8."""
    t = t.detach()
    if t.is_complex():
        return t.abs()
    if t.dtype.is_floating_point and t.dtype.itemsize < 4:
        return t.float()
    if not t.dtype.is_floating_point:  # integer or bool gradients (rare): reduce as float64
        return t.double()
    return t


def _expanded_base(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``t`` without its broadcast (stride 0) dimensions, and how many times each element repeats.

    The gradient of a ``sum`` or ``mean`` is its input's gradient expanded to
    the input's shape: its statistics follow from one copy, never materialised.
    """
    strides = t.stride()
    if 0 not in strides:
        return t, 1
    kept = [(size, stride) for size, stride in zip(t.shape, strides) if stride != 0 or size == 1]
    repeats = math.prod(size for size, stride in zip(t.shape, strides) if stride == 0)
    sizes = [size for size, _ in kept]
    return t.as_strided(sizes, [stride for _, stride in kept]), repeats


def _flat(t: torch.Tensor) -> torch.Tensor:
    """The elements of ``t`` as one 1-d tensor: a view when they fill one block of memory, else a copy."""
    if t.is_contiguous():
        return t.view(-1)
    if _dense(t):  # a permuted contiguous tensor (channels_last, a transpose): the same block, in memory order
        return t.as_strided((t.numel(),), (1,))
    return t.reshape(-1)


def _dense(t: torch.Tensor) -> bool:
    """True when ``t``'s elements fill one gap-free block of memory in some order (a permuted contiguous tensor)."""
    expected = 1
    for stride, size in sorted(zip(t.stride(), t.shape)):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _chunked_sums(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Norm, sum and sum of ``|x|`` of a 1-d real tensor on an accelerator, each a float64 0-d tensor (see
    :data:`CHUNK`)."""
    count = flat.numel()
    whole = count - count % CHUNK
    parts = []
    if whole:
        rows = (flat if whole == count else flat[:whole]).view(-1, CHUNK)
        # Per-row norms and sums in the tensor's precision (torch's sums cascade), combined in float64.
        parts.append((torch.linalg.vector_norm(rows, dim=1).double(), rows.sum(dim=1).double(),
                      rows.abs().sum(dim=1).double()))
    if whole < count:
        tail = flat[whole:].double()
        parts.append((torch.linalg.vector_norm(tail).view(1), tail.sum().view(1), tail.abs().sum().view(1)))
    norms, sums, magnitudes = parts[0] if len(parts) == 1 else [torch.cat(pair) for pair in zip(*parts)]
    return torch.linalg.vector_norm(norms), sums.sum(), magnitudes.sum()


def _cpu_sums(flat: torch.Tensor, zeros: bool = False) -> tuple[list[float], int]:
    """``[norm, sum, min, max, sum of |x|]`` of a 1-d real CPU tensor, and how many of its elements are exactly
    zero (counted only when ``zeros``, else 0).

    One sweep over parts of :data:`_PART_ROWS` rows of :data:`CHUNK`: each part's reductions (min, max, row
    norms, row sums, ``|x|`` into a reused buffer and its row sums) run while the part sits in cache, where
    five whole-tensor passes would each read the tensor from memory again (1.5 against 2.3 ms for 2.4M floats).
    Row results are in the tensor's precision (torch's sums cascade), combined in float64.
    """
    count = flat.numel()
    whole = count - count % CHUNK
    n = whole // CHUNK
    dtype = flat.dtype
    row_sums = torch.empty((3, n), dtype=dtype)  # per row: norm, sum, sum of |x|
    norms, sums, magnitudes = row_sums
    parts = -(-n // _PART_ROWS)
    extremes = torch.empty((2, parts), dtype=dtype)
    lows, highs = extremes
    found_zeros = 0
    if n:
        # Every part's views made at once (split, unbind: one call each), not sliced part by part.
        split = _PART_ROWS
        parts_of = zip(flat[:whole].view(n, CHUNK).split(split), norms.split(split), sums.split(split),
                       magnitudes.split(split), lows.unbind(), highs.unbind())
        buffer = torch.empty((min(n, split), CHUNK), dtype=dtype)
        amin, amax, norm, total, absolute = torch.amin, torch.amax, torch.linalg.vector_norm, torch.sum, torch.abs
        for part, part_norms, part_sums, part_magnitudes, low, high in parts_of:
            scratch = buffer if len(part) == split else buffer[:len(part)]
            amin(part, out=low)
            amax(part, out=high)
            norm(part, dim=1, out=part_norms)
            total(part, 1, out=part_sums)
            absolute(part, out=scratch)
            total(scratch, 1, out=part_magnitudes)
            if zeros and not scratch.amin() > 0:  # some element is zero (or NaN, which counts as nonzero)
                found_zeros += _zeros_in(part, scratch)
    row = [torch.linalg.vector_norm(norms.double()), sums.double().sum(), lows.amin() if parts else math.inf,
           highs.amax() if parts else -math.inf, magnitudes.double().sum()]
    row = [float(value) for value in row]
    if whole < count:
        tail = flat[whole:].double()
        row = [math.hypot(row[0], float(torch.linalg.vector_norm(tail))), row[1] + float(tail.sum()),
               min(row[2], float(tail.amin())), max(row[3], float(tail.amax())), row[4] + float(tail.abs().sum())]
        if zeros:
            found_zeros += tail.numel() - int(tail.count_nonzero())
    return row, found_zeros


def _fast_row(t: torch.Tensor) -> torch.Tensor:
    """``[norm, mean, min, max, abs]`` (float64, on ``t``'s device) of a big dense tensor; NaN/Inf propagate.

    Reduced at a power-of-two scale that brings the largest ``|x|`` near 1, so that squares of tiny gradients
    (1e-25: a vanishing one) neither underflow to a zero norm nor crawl through denormals.
    """
    flat, repeats = _flat_values(t)
    lo, hi = flat.amin(), flat.amax()
    largest = torch.maximum(lo.abs(), hi.abs()).double()
    usable = (largest > 0) & torch.isfinite(largest)
    scale = torch.where(usable, torch.exp2(-torch.floor(torch.log2(torch.where(usable, largest, 1.0)))), 1.0)
    norm, total, magnitude = _chunked_sums(flat * scale.to(flat.dtype))
    count = flat.numel()
    return torch.stack([norm / scale * math.sqrt(repeats), total / scale / count, lo.double(), hi.double(),
                        magnitude / scale / count])


#: Largest ``|x|`` outside of which a CPU tensor is reduced at a power-of-two scale (squares in float32 stay
#: normal, 1.2e-38 to 3.4e38, with room for a sum of millions of them).
_UNSCALED = (2.0 ** -50, 2.0 ** 50)


def zero_count(t: torch.Tensor) -> int:
    """How many elements of a strided tensor are exactly zero; a big CPU one compared with zero part by part into
    a reused buffer and summed (half of ``count_nonzero``'s time on the CPU)."""
    part_numel = _PART_ROWS * CHUNK
    if t.numel() <= part_numel or not t.is_cpu:
        return t.numel() - int(t.count_nonzero())
    flat, repeats = _flat_values(t)
    buffer = torch.empty(part_numel, dtype=flat.dtype)
    zeros = 0
    for start in range(0, flat.numel(), part_numel):
        part = flat[start:start + part_numel]
        zeros += _zeros_in(part, buffer if len(part) == part_numel else buffer[:len(part)])
    return zeros * repeats


def _zeros_in(part: torch.Tensor, scratch: torch.Tensor) -> int:
    """How many elements of ``part`` are exactly zero, compared into ``scratch`` (its shape, a float dtype) and
    summed: exact, as the counts are whole numbers below 2^24."""
    torch.ne(part, 0, out=scratch)
    return scratch.numel() - int(scratch.sum())


def _cpu_row(t: torch.Tensor, zeros: bool = False) -> tuple[list[float], int]:
    """``[norm, mean, min, max, abs]`` of a big dense CPU tensor as floats, and its count of exact zeros (when
    ``zeros``, else 0): :func:`_cpu_sums`, again at a power-of-two scale where squares under- or overflowed."""
    flat, repeats = _flat_values(t)
    row, found_zeros = _cpu_sums(flat, zeros)
    lo, hi = row[2], row[3]
    largest = max(abs(lo), abs(hi))
    scale = 1.0
    if math.isfinite(largest) and largest > 0 and not _UNSCALED[0] <= largest <= _UNSCALED[1]:
        scale = 2.0 ** -math.frexp(largest)[1]
        row = _cpu_sums(flat * scale)[0]  # the zeros are the unscaled ones: scaling down may flush tiny values
    norm, total, _, _, magnitude = row
    count = flat.numel()
    return ([norm / scale * math.sqrt(repeats), total / scale / count, lo, hi, magnitude / scale / count],
            found_zeros * repeats)


def _flat_values(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The real values of ``t`` laid flat (broadcast dimensions once), and how often each repeats."""
    base, repeats = _expanded_base(t)
    return _flat(_real(base)), repeats


def _exact_row(t: torch.Tensor) -> list[float]:
    """``[norm, mean, min, max, nan, inf, abs]`` with NaN-ignoring min/max: the slow path for non-finite tensors."""
    values = _real(t.coalesce().values() if t.is_sparse else t).reshape(-1).double()
    isnan = torch.isnan(values)
    lo = values.masked_fill(isnan, math.inf).amin() if values.numel() else torch.tensor(math.inf)
    hi = values.masked_fill(isnan, -math.inf).amax() if values.numel() else torch.tensor(-math.inf)
    if values.numel() < t.numel():  # a sparse tensor's implicit zeros count for min and max
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    row = torch.stack([torch.linalg.vector_norm(values), values.sum() / t.numel(), lo.double(), hi.double(),
                       isnan.sum().double(), torch.isinf(values).sum().double(), values.abs().sum() / t.numel()])
    return row.tolist()


def _device_row(t: torch.Tensor) -> torch.Tensor:
    """``[norm, mean, min, max, nan, inf, abs]`` of a big tensor as a float64 tensor on its device (no host sync)."""
    if t.is_sparse:
        return _sparse_row(t)
    row = _fast_row(t)
    values = _real(t)
    isnan = torch.isnan(values)
    counts = torch.stack([isnan.sum(), torch.isinf(values).sum()]).double()
    # Where NaNs hide the extremes, take them again over the rest (on the device, no branch on the host).
    lo = torch.where(isnan.any(), values.masked_fill(isnan, math.inf).amin().double(), row[2])
    hi = torch.where(isnan.any(), values.masked_fill(isnan, -math.inf).amax().double(), row[3])
    return torch.cat([row[:2], lo.view(1), hi.view(1), counts, row[4:]])


def _sparse_row(t: torch.Tensor) -> torch.Tensor:
    """``[norm, mean, min, max, nan, inf, abs]`` of a sparse tensor, its implicit zeros counted."""
    t = t.coalesce()
    values = _real(t.values()).reshape(-1)
    if values.numel() == 0:  # no stored values: all implicit zeros
        return torch.zeros(7, dtype=torch.float64, device=values.device)
    isnan = torch.isnan(values)
    lo = values.masked_fill(isnan, math.inf).amin().double()
    hi = values.masked_fill(isnan, -math.inf).amax().double()
    if values.numel() < t.numel():
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    return torch.stack([torch.linalg.vector_norm(values.double()), values.double().sum() / t.numel(), lo, hi,
                        isnan.sum().double(), torch.isinf(values).sum().double(),
                        values.double().abs().sum() / t.numel()])


#: The statistics of an empty tensor (``norm, mean, min, max, nan, inf, abs``).
_EMPTY_ROW = [0.0, math.nan, math.nan, math.nan, 0.0, 0.0, math.nan]


def big_row(t: torch.Tensor) -> list[float]:
    """``[norm, mean, min, max, nan, inf, abs]`` of one tensor on the CPU, exact, in float64 accumulation."""
    return _big_row(t, False)[0]


def _big_row(t: torch.Tensor, zeros: bool) -> tuple[list[float], int | None]:
    """:func:`big_row`, and how many elements of ``t`` are exactly zero when ``zeros`` (else ``None``)."""
    if t.is_sparse:
        row = _sparse_row(t).tolist()
        return row, (t.numel() - int(t.coalesce().values().count_nonzero()) if zeros else None)
    if t.numel() == 0:
        return list(_EMPTY_ROW), (0 if zeros else None)
    row, found_zeros = _cpu_row(t, zeros)
    if not math.isfinite(row[0]):  # NaN or Inf somewhere (or squares beyond float64): count them
        return _exact_row(t), (zero_count(t) if zeros else None)
    return [*row[:4], 0.0, 0.0, row[4]], (found_zeros if zeros else None)


class Reduced:
    """A big gradient summarised where it flowed and let go: its shape, dtype and summary row.

    It stands in for the tensor among a step's values; it has what the
    step's bookkeeping reads of a tensor (shape, dtype, layout, device kind,
    element count) and never a value.
    """

    __slots__ = ("shape", "dtype", "is_cpu", "row", "zeros", "_numel")
    layout = "reduced"  # not a torch layout: never grouped with tensors

    def __init__(self, t: torch.Tensor, zeros: bool = False) -> None:
        self.shape = t.shape
        self.dtype = t.dtype
        self.is_cpu = t.is_cpu
        self._numel = t.numel()
        #: How many elements are exactly zero, where ``zeros`` asked for it on the CPU (the same sweep), else None.
        self.zeros: int | None = None
        # On the CPU the row is read now (no sync to save); on an accelerator it stays
        # there until the step's one transfer.
        if t.is_cpu:
            self.row, self.zeros = _big_row(t, zeros)
        else:
            self.row = _device_row(t)

    def numel(self) -> int:
        """Element count of the tensor it summarises."""
        return self._numel

    def standing_for(self, t: torch.Tensor) -> Reduced:
        """This summary for ``t``, the same values in another order: itself, or a copy with ``t``'s shape (a
        gradient's shape is checked against its node's)."""
        if t.shape == self.shape:
            return self
        other = Reduced.__new__(Reduced)
        other.shape, other.dtype, other.is_cpu, other.row, other.zeros, other._numel = \
            t.shape, self.dtype, self.is_cpu, self.row, self.zeros, self._numel
        return other


class Reducer:
    """Replaces the gradients bigger than ``limit`` elements by :class:`Reduced` summaries, inside node hooks.

    Autograd then frees each one when it is used, as it would without
    vizgrad. A tensor seen twice (sent by one node, received by the next) is
    reduced once: the memo knows it by identity and version (an in-place
    accumulation into it bumps its version), through a weak reference, so a
    new tensor at a reused address is never taken for an old one. A view of
    the same block of memory (a transpose's gradient; the ``.grad`` that
    ``AccumulateGrad`` took over from a leaf's gradient) holds the same
    values in another order, and shares the summary too.

    ``zeros_of``: shapes whose tokens also count their exact zeros, in the
    same sweep (the parameters' shapes, on the steps that count their
    zeros; other gradients, a ReLU's full of zeros, are spared the count).
    """

    def __init__(self, limit: float, zeros_of: frozenset[tuple[int, ...]] = frozenset()) -> None:
        self.limit = limit
        self.zeros_of = zeros_of
        self.count = 0  # tokens made since the last clear()
        self._memo: dict[int, tuple[Any, int, Reduced]] = {}
        self._blocks: dict[int, tuple[Any, int, Any, int, Reduced]] = {}  # see _same_block

    def __call__(self, grads: tuple[Any, ...]) -> tuple[Any, ...]:
        limit = self.limit
        out = None
        for k, grad in enumerate(grads):
            if grad is not None and grad.numel() > limit:
                token = self._token(grad)
                if token is not None:
                    if out is None:
                        out = list(grads)
                    out[k] = token
        return grads if out is None else tuple(out)

    def lookup(self, t: Any) -> Any:
        """The :class:`Reduced` made this step for ``t``, or for a view of its memory, while it is unchanged
        since; else ``t`` itself."""
        if t is None:
            return t
        entry = self._memo.get(id(t))
        if entry is not None and entry[0]() is t and entry[1] == t._version:
            return entry[2]
        if self._blocks and type(t) is torch.Tensor and t.numel() > self.limit:
            token = self._same_block(t)
            if token is not None:
                return token
        return t

    def _same_block(self, t: torch.Tensor) -> Reduced | None:
        """The token of a tensor that filled the block of memory ``t`` fills, not written to since.

        Checked: the same storage, still alive (so its address is no new
        tensor's), the same first address, element count and dtype, ``t``
        dense (a gap-free block from that address), and the version counter,
        which views share, unchanged.
        """
        entry = self._blocks.get(t.data_ptr())
        if entry is None or t.layout != torch.strided or not _dense(t):
            return None
        storage, numel, dtype, version, token = entry
        if storage.expired() or storage.cdata != t.untyped_storage()._cdata \
                or (numel, dtype, version) != (t.numel(), t.dtype, t._version):
            return None
        return token.standing_for(t)

    def _token(self, grad: torch.Tensor) -> Reduced | None:
        entry = self._memo.get(id(grad))
        if entry is not None and entry[0]() is grad and entry[1] == grad._version:
            return entry[2]
        plain = type(grad) is torch.Tensor
        token = self._same_block(grad) if plain and self._blocks else None
        if token is None:
            try:
                with torch.no_grad():
                    # A DTensor's local part: no collective in a hook.
                    token = Reduced(local_parts([grad])[0], bool(self.zeros_of) and tuple(grad.shape) in self.zeros_of)
            except Exception:  # an odd tensor (a subclass, a nested tensor): hold it, summarise it at the end
                return None
            self.count += 1
            if plain and grad.layout == torch.strided and _dense(grad):
                self._blocks[grad.data_ptr()] = (StorageWeakRef(grad.untyped_storage()), grad.numel(), grad.dtype,
                                                 grad._version, token)
        self._memo[id(grad)] = (weakref.ref(grad), grad._version, token)
        return token

    def clear(self) -> None:
        """Forgets this step's tensors."""
        self._memo.clear()
        self._blocks.clear()
        self.count = 0


# -- the batch -----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class SummaryPlan:
    """How :func:`summarize` split tensors of given shapes, dtypes, layouts and device kinds (all on the CPU).

    ``props`` is what was checked: ``(shape, dtype, layout, is_cpu)`` of every
    tensor. Two plans are equal when their ``props`` and ``limit`` are: the
    rest follows from those.
    """

    props: tuple[tuple[Any, ...], ...]
    limit: float
    numels: list[int]
    groups: list[tuple[torch.dtype, list[int], list[int]]]
    big: list[int]
    #: Per tensor, where its kept value lies (``(buffer, offset, shape)``) when the kept groups are
    #: flattened in ``groups`` order, and those buffers' :class:`Segments`: the same every step.
    kept: list[Any]
    segments: list[Segments]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SummaryPlan):
            return NotImplemented
        return self is other or (self.limit == other.limit and self.props == other.props)

    def __hash__(self) -> int:
        return hash((self.limit, len(self.props)))


@dataclasses.dataclass
class SummaryMemo:
    """What :func:`summarize_distinct` worked out for one graph's last step, checked before reuse.

    Owned by that graph's plan in the recorder, and evicted with it.
    """

    distinct: tuple[list[int], list[int], list[int]] | None = None  # representatives, first_at, positions
    plan: SummaryPlan | None = None
    blocks: dict[Any, Any] = dataclasses.field(default_factory=dict)  # per dtype: grouping by shape
    aliases: dict[Any, Any] = dataclasses.field(default_factory=dict)  # per dtype: views of one memory


class Batch:
    """The result of :func:`summarize`: summary rows and kept values of a list of tensors.

    Rows are ``norm, mean, min, max, nan, inf, numel, abs``. ``plan`` is the
    :class:`SummaryPlan` the tensors were split by (``None`` off the plain CPU
    path); ``tensors`` are what was summarised (tensors, or :class:`Reduced`).
    """

    def __init__(self, rows: np.ndarray, buffers: list[torch.Tensor], kept: list[Any],
                 pending: Sequence[Segments] = (), plan: SummaryPlan | None = None,
                 tensors: Sequence[Any] = ()) -> None:
        self.plan = plan
        self.tensors = tensors
        self._table = GradTable(GradIndex({}), rows, buffers, kept, pending)

    @property
    def rows(self) -> np.ndarray:
        """``(n, 8)`` float64 array of ``norm, mean, min, max, nan, inf, numel, abs``."""
        return self._table.rows

    @property
    def kept(self) -> list[Any]:
        """Per tensor: ``(buffer, offset, shape)`` into the kept buffers, a tensor copy, or ``None``."""
        return self._table.kept

    def numel(self, index: int) -> int:
        """Element count of tensor ``index`` (never needs the pending rows)."""
        return int(self._table._rows[index, 6])

    def summary(self, index: int) -> Summary:
        """The :class:`Summary` of tensor ``index``."""
        return row_summary(self.rows[index])

    def value(self, index: int) -> torch.Tensor | None:
        """The kept value of tensor ``index`` (a view into a host buffer), or ``None``."""
        return self._table.kept_at(index)

    def to_table(self, index: GradIndex, held: Sequence[Any] | None = None) -> GradTable:
        """These rows and values as the :class:`GradTable` of a step whose keys ``index`` maps onto them.

        ``held``: the full values the step holds while it is the newest
        (tensors or ``None``, aligned with the rows).
        """
        table = self._table
        table.index = index
        table._held = None if held is None else list(held)
        return table


# -- summarising -----------------------------------------------------------------------------------------------
@torch.no_grad()
def summarize(tensors: Sequence[Any], keep: int | None = 64, *, packed_devices: Sequence[str] | None = None,
              memo: SummaryMemo | None = None) -> Batch:
    """Summarises every tensor, and keeps a host copy of those with at most ``keep`` elements.

    On the CPU, the small dense tensors that are kept are flattened into one
    buffer in a single call (a copy, so later in-place updates of the
    originals cannot change what was kept) and reduced from it, segment by
    segment with numpy, when first asked. Other small dense tensors are copied
    into 2-d blocks of one shape (or one flat buffer) and reduced row by row
    at once; large and sparse tensors get reductions of their own, in float64
    accumulation (see :data:`CHUNK`). Views that cover exactly the elements
    of another tensor in the batch (a transpose, a reshape) share its summary
    instead of being reduced again. :class:`Reduced` entries bring their row.
    On an accelerator every reduction runs on the device and the results and
    kept values travel to the host packed into one byte buffer: one
    synchronisation per device per step, not one per tensor.

    Args:
        tensors: The tensors (gradients) to summarise, or :class:`Reduced` stand-ins.
        keep: Keep full values of tensors up to this many elements (``None``: all).
        packed_devices: Device types that use the packed single-transfer path
            (default: every type but ``cpu``; tests pass ``["cpu"]``).
        memo: A :class:`SummaryMemo` kept between calls on tensors laid out
            alike (a training loop's steps): its plan is reused when every
            tensor has the shape, dtype, layout and device kind it records.

    Returns:
        A :class:`Batch` aligned with ``tensors``.
    """
    tensors = local_parts(tensors)  # DTensors (FSDP2, tensor parallel): this rank's parts, never a collective
    count = len(tensors)
    limit = math.inf if keep is None else keep
    kept: list[Any] = [None] * count
    buffers: list[torch.Tensor] = []
    pending: list[Segments] = []
    if memo is not None and count and (packed_devices is None or "cpu" not in packed_devices):
        plan = _cpu_plan(tensors, limit, memo)
        if plan is not None:  # every tensor on the CPU, laid out as the plan says: its split holds
            rows = np.zeros((count, WIDTH), dtype=np.float64)
            rows[:, 6] = plan.numels
            kept = list(plan.kept)
            _summarize_groups(tensors, plan.groups, plan.big, plan.numels, rows, kept, buffers, pending, limit,
                              memo, plan)
            return Batch(rows, buffers, kept, pending, plan, tensors)
    numels = list(map(_numel, tensors))  # map(): one C loop, this runs for every gradient
    rows = np.zeros((count, WIDTH), dtype=np.float64)
    rows[:, 6] = numels
    on_cpu = list(map(_is_cpu, tensors))
    if count and 0 not in numels and False not in on_cpu:  # the common case: every tensor on the CPU, none empty
        by_device: dict[Any, list[int]] = {"cpu": list(range(count))}
    else:
        by_device = {}
        for i, t in enumerate(tensors):
            if numels[i] == 0:
                rows[i, STATISTICS] = _EMPTY_ROW
                kept[i] = t.detach().to("cpu", copy=True)
            else:
                by_device.setdefault("cpu" if on_cpu[i] else _device_of(t), []).append(i)
    for device, indices in by_device.items():
        device_type = "cpu" if device == "cpu" else device.type
        packed = device_type != "cpu" if packed_devices is None else device_type in packed_devices
        if packed:
            _summarize_packed(tensors, indices, rows, kept, buffers, pending, limit)
        else:
            groups, big = _cpu_groups(tensors, indices, numels, limit)
            _summarize_groups(tensors, groups, big, numels, rows, kept, buffers, pending, limit, memo)
    return Batch(rows, buffers, kept, pending, None, tensors)


def _device_of(t: Any) -> Any:
    if type(t) is Reduced:
        return t.row.device
    return t.device


def _cpu_plan(tensors: Sequence[Any], limit: float, memo: SummaryMemo) -> SummaryPlan | None:
    """The split of ``tensors`` for the CPU path, remembered in ``memo``; ``None`` when it does not apply."""
    props = tuple(map(_props, tensors))
    plan = memo.plan
    if plan is not None and plan.limit == limit and plan.props == props:
        return plan
    numels = [math.prod(shape) for shape, _, _, _ in props]
    if 0 in numels or any(not on_cpu for _, _, _, on_cpu in props):
        return None
    groups, big = _cpu_groups(tensors, list(range(len(tensors))), numels, limit)
    kept: list[Any] = [None] * len(tensors)
    segments = []
    for _dtype, kept_indices, _other in groups:
        if kept_indices:
            counts = [numels[i] for i in kept_indices]
            buffer = len(segments)
            offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
            for i, offset in zip(kept_indices, offsets):
                kept[i] = (buffer, int(offset), tuple(props[i][0]))
            segments.append(Segments.of(buffer, kept_indices, counts))
    plan = memo.plan = SummaryPlan(props, limit, numels, groups, big, kept, segments)
    return plan


def summarize_distinct(values: Sequence[Any], keep: int | None = 64, *, packed_devices: Sequence[str] | None = None,
                       memo: SummaryMemo | None = None) -> tuple[Batch, list[int]]:
    """Summarises each distinct tensor among ``values`` once.

    ``values`` may hold the same tensor several times (a gradient that is both
    what one node passes on and what the next receives) and ``None``\\ s.
    ``packed_devices`` and ``memo`` are as for :func:`summarize`.

    Returns:
        The :class:`Batch` of the distinct tensors, in first-seen order, and
        for each value its position in the batch (``-1`` for ``None``).
    """
    count = len(values)
    if memo is not None and memo.distinct is not None and len(memo.distinct[0]) == count:
        representatives, first_at, positions = memo.distinct
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
        memo.distinct = ([first_at[p] if p >= 0 else count for p in positions], first_at, positions)
    tensors = [values[i] for i in first_at]
    return summarize(tensors, keep, packed_devices=packed_devices, memo=memo), positions


def _cpu_groups(tensors: Sequence[Any], indices: list[int], numels: list[int],
                limit: float) -> tuple[list[tuple[torch.dtype, list[int], list[int]]], list[int]]:
    """Splits CPU tensors into ``(dtype, kept ones, other ones)`` flat groups and the big, sparse or reduced ones."""
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


def _summarize_groups(tensors: Sequence[Any], groups: list[tuple[torch.dtype, list[int], list[int]]],
                      big: list[int], numels: list[int], rows: np.ndarray, kept: list[Any],
                      buffers: list[torch.Tensor], pending: list[Segments], limit: float,
                      memo: SummaryMemo | None, plan: SummaryPlan | None = None) -> None:
    """Summarises CPU tensors split by :func:`_cpu_groups` (``plan``: the one that applies, when one does)."""
    for dtype, kept_indices, other in groups:
        if kept_indices:
            # These values are kept in a host buffer anyway: summarise them from it when first asked.
            flat = _flatten([tensors[i] for i in kept_indices])
            if plan is not None:  # where each value lies is the plan's
                pending.append(plan.segments[len(buffers)])
                buffers.append(flat)
            else:
                _keep_flat(flat, kept_indices, tensors, rows, kept, buffers, pending,
                           [numels[i] for i in kept_indices])
        if other:
            own, aliases, targets = _distinct_memory_memo(tensors, other, numels, memo, dtype)
            _reduce_into(rows, tensors, own, memo, dtype, plan)
            if aliases:
                rows[np.ix_(aliases, STATISTICS)] = rows[np.ix_(targets, STATISTICS)]
    for i in big:
        t = tensors[i]
        if type(t) is Reduced:
            rows[i, STATISTICS] = t.row
            continue
        rows[i, STATISTICS] = big_row(t)
        if numels[i] <= limit:
            kept[i] = _dense_copy(t)


def _reduce_into(rows: np.ndarray, tensors: Sequence[torch.Tensor], indices: list[int],
                 memo: SummaryMemo | None = None, dtype: Any = None, plan: SummaryPlan | None = None) -> None:
    """Fills the statistics of ``rows[indices]`` (:data:`STATISTICS`) for dense tensors of one dtype.

    Tensors of a shape many of them share (a loop's repeated layers) are
    concatenated shape by shape into 2-d blocks, one row per tensor, and
    reduced along rows by torch's vectorised kernels; the rest are flattened
    into one buffer for numpy's segment reductions. Both sum in float64.
    ``memo`` keeps last call's grouping by shape, reused when it was made
    under the same ``plan`` (which vouches for every tensor's shape) for the
    same positions.
    """
    last = memo.blocks.get(dtype) if memo is not None else None
    if last is not None and plan is not None and last[1] == plan and last[0] == indices:
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
            memo.blocks[dtype] = (indices, plan, blocks, loose)
    for members, at in blocks:
        step = max(1, _PART_NUMEL // int(rows[members[0], 6]))
        for start in range(0, len(members), step):
            part = members[start:start + step]
            # reshape, not view: a stack of channels_last tensors is channels_last too (then it copies).
            block = torch.stack([tensors[i] for i in part]).reshape(len(part), -1)
            rows[at[start:start + step, None], STATISTICS] = _block_rows(block)
    if loose:
        counts = rows[loose, 6].astype(np.int64)
        for start, stop in _parts(counts):
            part = loose[start:stop]
            flat = _flatten([tensors[i] for i in part])
            rows[np.ix_(part, STATISTICS)] = segment_rows(host_numpy(flat), counts[start:stop])


def _parts(counts: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` runs of ``counts`` adding up to at most :data:`_PART_NUMEL` each (or one count alone)."""
    total = int(counts.sum())
    if total <= _PART_NUMEL:
        return [(0, len(counts))]
    ends = np.cumsum(counts)
    parts, start, base = [], 0, 0
    while start < len(counts):
        stop = max(start + 1, int(np.searchsorted(ends, base + _PART_NUMEL, side="right")))
        parts.append((start, stop))
        base, start = int(ends[stop - 1]), stop
    return parts


def _block_rows(block: torch.Tensor) -> np.ndarray:
    """Rows ``[norm, mean, min, max, nan, inf, abs]`` of each row of a 2-d block (the slow exact path on NaN/Inf)."""
    values = _real(block)
    out = np.zeros((values.shape[0], 7), dtype=np.float64)
    length = values.shape[1]
    # Norms and means from a float64 copy: squares of tiny gradients (1e-25, a vanishing one) stay normal numbers
    # (in float32 they underflow to a zero norm, through denormals 10x slower), and a mean near zero is the
    # difference of large sums.
    wide = values.double()
    out[:, 0] = torch.linalg.vector_norm(wide, dim=1).numpy()
    if not np.isfinite(out[:, 0]).all():  # NaN or Inf somewhere
        return segment_rows(host_numpy(block.reshape(-1)), np.full(block.shape[0], block.shape[1]))
    out[:, 1] = wide.sum(1).numpy() / length
    # Sums of |x| cancel nothing: torch's cascaded float32 sum holds them to 1e-6 (an abs() of the float64 copy
    # would cost four times as much).
    out[:, 6] = values.abs().sum(1).double().numpy() / length
    out[:, 2] = values.amin(1).numpy()
    out[:, 3] = values.amax(1).numpy()
    return out


def _distinct_memory_memo(tensors: Sequence[torch.Tensor], indices: list[int], numels: list[int],
                          memo: SummaryMemo | None, dtype: Any) -> tuple[list[int], list[int], list[int]]:
    """:func:`_distinct_memory`, first trying last call's answer from ``memo``.

    Last answer holds when the same positions are summarised and each alias
    and each target still start at one address with their old shapes and
    strides (so both are still dense and cover the same memory).
    """
    if memo is None:
        return _distinct_memory(tensors, indices, numels)
    last = memo.aliases.get(dtype)
    if last is not None and last[0] == indices:
        _, own, aliases, targets, layout = last
        if _memory_layout(tensors, aliases, targets) == layout:
            return own, aliases, targets
    own, aliases, targets = _distinct_memory(tensors, indices, numels)
    memo.aliases[dtype] = (indices, own, aliases, targets, _memory_layout(tensors, aliases, targets))
    return own, aliases, targets


def _memory_layout(tensors: Sequence[torch.Tensor], aliases: list[int], targets: list[int]) -> tuple[list, ...]:
    """Where the aliases and their targets lie: for each, ``(start address, shape, strides)`` side by side."""
    alias_tensors = [tensors[a] for a in aliases]
    target_tensors = [tensors[t] for t in targets]
    pointers = list(map(torch.Tensor.data_ptr, alias_tensors))
    return (pointers == list(map(torch.Tensor.data_ptr, target_tensors)),
            list(map(_shape, alias_tensors)), list(map(torch.Tensor.stride, alias_tensors)),
            list(map(_shape, target_tensors)), list(map(torch.Tensor.stride, target_tensors)))


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


def _summarize_packed(tensors: Sequence[Any], indices: list[int], rows: np.ndarray, kept: list[Any],
                      buffers: list[torch.Tensor], pending: list[Segments],
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
    partial = torch.stack([_reduced_row(tensors[i]) if type(tensors[i]) is Reduced else _device_row(tensors[i])
                           for i in reduced]) if reduced else None
    parts = ([partial.reshape(-1)] if partial is not None else []) + [flat for _, flat in flats]
    host = torch.cat([_padded_bytes(part) for part in parts]).cpu()  # the one synchronisation
    offset = 0
    if partial is not None:
        size = partial.numel() * partial.element_size()
        rows[np.ix_(reduced, STATISTICS)] = host[:size].view(torch.float64).reshape(-1, 7).numpy()
        offset = -(-size // 8) * 8
    for group, flat in flats:
        size = flat.numel() * flat.element_size()
        # clone(): a buffer of its own, aligned for its dtype and not pinning the others
        _keep_flat(host[offset:offset + size].view(flat.dtype).clone(), group, tensors, rows, kept, buffers, pending)
        offset += -(-size // 8) * 8
    for i in reduced:
        if rows[i, 6] <= limit and type(tensors[i]) is not Reduced:  # sparse tensors small enough to keep
            kept[i] = _dense_copy(tensors[i])


def _reduced_row(token: Reduced) -> torch.Tensor:
    """A :class:`Reduced`'s row as a float64 tensor (a CPU one holds plain floats already)."""
    row = token.row
    return row if isinstance(row, torch.Tensor) else torch.tensor(row, dtype=torch.float64)


def _padded_bytes(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bytes, padded to a multiple of 8 so every part of a packed buffer stays aligned."""
    raw = t.reshape(-1).view(torch.uint8)
    padding = -raw.numel() % 8
    return torch.cat([raw, raw.new_zeros(padding)]) if padding else raw


def _keep_flat(host: torch.Tensor, group: list[int], tensors: Sequence[torch.Tensor], rows: np.ndarray,
               kept: list[Any], buffers: list[torch.Tensor], pending: list[Segments],
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
    pending.append(Segments.of(buffer, group, counts))


def _dense_copy(t: torch.Tensor) -> torch.Tensor:
    return (t.to_dense() if t.is_sparse else t).detach().to("cpu", copy=True)


def _flatten(group: list[torch.Tensor]) -> torch.Tensor:
    """One new 1-d tensor with every tensor of ``group`` end to end (one C++ call)."""
    if len(group) == 1:
        return group[0].reshape(-1).clone()  # reshape may return a view: clone to own the data
    return torch._utils._flatten_dense_tensors(group)
