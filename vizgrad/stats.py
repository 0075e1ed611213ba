"""Gradient summaries (norm, mean, min, max, NaN and Inf counts), computed in batches with one host sync."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["Summary", "Batch", "summarize", "row_summary", "kept_value"]

#: Tensors up to this many elements are summarised together in one flat buffer;
#: bigger ones get their own reductions (still on their device, still one sync).
SEGMENT_LIMIT = 1 << 16


@dataclasses.dataclass(frozen=True)
class Summary:
    """Summary of one tensor.

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
        return dataclasses.asdict(self)

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
    nan = float("nan")
    return [0.0, nan, nan, nan, 0.0, 0.0, 0.0]


def _stat_dtype(t: torch.Tensor) -> torch.Tensor:
    """A detached real tensor to reduce: magnitudes for complex, float32 at least for halves."""
    t = t.detach()
    if t.is_complex():
        return t.abs()
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    return t


def _big_row(t: torch.Tensor) -> torch.Tensor:
    """``[norm, sum, min, max]`` of one large tensor, computed on its device in three passes."""
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
    row = torch.stack([torch.linalg.vector_norm(values), values.sum(), lo, hi]).double()
    return row


def _exact_row(t: torch.Tensor) -> list[float]:
    """``[norm, sum, min, max, nan, inf]`` with NaN-ignoring min/max: the slow path for non-finite tensors."""
    values = _stat_dtype(t.coalesce().values() if t.is_sparse else t).reshape(-1).double()
    isnan = torch.isnan(values)
    lo = values.masked_fill(isnan, math.inf).amin() if values.numel() else torch.tensor(math.inf)
    hi = values.masked_fill(isnan, -math.inf).amax() if values.numel() else torch.tensor(-math.inf)
    if values.numel() < t.numel():  # a sparse tensor's implicit zeros count for min and max
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    row = torch.stack([torch.linalg.vector_norm(values), values.sum(), lo.double(), hi.double(),
                       isnan.sum().double(), torch.isinf(values).sum().double()])
    return row.tolist()


def _segment_rows(flat: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Rows ``[norm, sum, min, max, nan, inf]`` of many small tensors laid end to end (all counts > 0)."""
    values = np.abs(flat) if np.iscomplexobj(flat) else flat
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    rows = np.zeros((len(counts), 6), dtype=np.float64)
    # Sums accumulate in float64 without a float64 copy of the data.
    rows[:, 1] = np.add.reduceat(values, starts, dtype=np.float64)
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


def _host_numpy(flat: torch.Tensor) -> np.ndarray:
    if flat.dtype in (torch.bfloat16, torch.float16):
        flat = flat.float()
    return flat.numpy()


@dataclasses.dataclass
class Batch:
    """The result of :func:`summarize`.

    Attributes:
        rows: ``(n, 7)`` float64 array: ``norm, mean, min, max, nan, inf, numel`` per tensor.
        buffers: Host buffers holding kept values end to end.
        kept: Per tensor: ``(buffer, offset, shape)``, a tensor copy, or ``None`` (not kept).
    """

    rows: np.ndarray
    buffers: list[torch.Tensor]
    kept: list[Any]

    def summary(self, index: int) -> Summary:
        """The :class:`Summary` of tensor ``index``."""
        return row_summary(self.rows[index])

    def value(self, index: int) -> torch.Tensor | None:
        """The kept value of tensor ``index`` (a view into a host buffer), or ``None``."""
        return kept_value(self.buffers, self.kept[index])


def row_summary(row: np.ndarray) -> Summary:
    """A :class:`Summary` from a row ``norm, mean, min, max, nan, inf, numel``."""
    norm, mean, lo, hi, nan, inf, numel = row.tolist()
    if numel and nan == numel:  # nothing but NaN: no meaningful min or max
        lo = hi = float("nan")
    return Summary(norm, mean, lo, hi, int(nan), int(inf), int(numel))


def kept_value(buffers: Sequence[torch.Tensor], locator: Any) -> torch.Tensor | None:
    """Resolves a kept-value locator from :class:`Batch` to a tensor."""
    if locator is None or isinstance(locator, torch.Tensor):
        return locator
    buffer, offset, shape = locator
    return buffers[buffer].narrow(0, offset, math.prod(shape)).view(shape)


@torch.no_grad()
def summarize(tensors: Sequence[torch.Tensor], keep: int | None = 4096) -> Batch:
    """Summarises every tensor, and keeps a host copy of those with at most ``keep`` elements.

    Small dense tensors of one device and dtype are flattened into one buffer
    in a single call (a copy, so later in-place updates of the originals cannot
    change what was kept) and reduced segment by segment; large and sparse
    tensors are reduced on their own device. Results reach the host in one
    transfer per device, so a CUDA step pays one synchronisation, not one per
    tensor (plus one more only when some tensor holds NaN or Inf).

    Args:
        tensors: The tensors (gradients) to summarise.
        keep: Keep full values of tensors up to this many elements (``None``: all).

    Returns:
        A :class:`Batch` aligned with ``tensors``.
    """
    count = len(tensors)
    rows = np.zeros((count, 7), dtype=np.float64)
    kept: list[Any] = [None] * count
    buffers: list[torch.Tensor] = []
    limit = math.inf if keep is None else keep
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    big: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        numel = t.numel()
        rows[i, 6] = numel
        if numel == 0:
            rows[i, :6] = _empty_row()[:6]
            kept[i] = t.detach().to("cpu", copy=True)
        elif t.layout == torch.strided and numel <= SEGMENT_LIMIT:
            groups.setdefault((t.device, t.dtype), []).append(i)
        else:
            big.setdefault(t.device, []).append(i)
            if numel <= limit:
                kept[i] = (t.to_dense() if t.is_sparse else t).detach().to("cpu", copy=True)

    for (device, _dtype), indices in groups.items():
        flat = _flatten([tensors[i] for i in indices])  # no_grad: no detach() needed
        host = flat.cpu() if device.type != "cpu" else flat
        counts = rows[indices, 6].astype(np.int64)
        rows[indices, :6] = _segment_rows(_host_numpy(host), counts)
        buffer = len(buffers)
        buffers.append(host)
        offset = 0
        for i, n in zip(indices, counts.tolist()):
            if n <= limit:
                kept[i] = (buffer, offset, tuple(tensors[i].shape))
            offset += n

    for device, indices in big.items():
        partial = torch.stack([_big_row(tensors[i]) for i in indices]).cpu().numpy()
        for row, i in zip(partial, indices):
            rows[i, :4] = row
            if not math.isfinite(row[0]):
                rows[i, :6] = _exact_row(tensors[i])

    rows[:, 1] /= np.maximum(rows[:, 6], 1)  # sums -> means
    rows[rows[:, 6] == 0, 1] = float("nan")
    return Batch(rows, buffers, kept)


def _flatten(group: list[torch.Tensor]) -> torch.Tensor:
    """One new 1-d tensor with every tensor of ``group`` end to end (one C++ call)."""
    if len(group) == 1:
        return group[0].reshape(-1).clone()  # reshape may return a view: clone to own the data
    return torch._utils._flatten_dense_tensors(group)
