"""Gradient summaries (norm, mean, min, max, NaN and Inf counts), computed in batches with one host sync."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["Summary", "summarize"]

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


def _empty() -> Summary:
    nan = float("nan")
    return Summary(0.0, nan, nan, nan, 0, 0, 0)


def _dense_real(t: torch.Tensor) -> torch.Tensor:
    """A detached float tensor whose stats we take: magnitudes for complex, float64 for accuracy."""
    t = t.detach()
    if t.is_complex():
        return t.abs().double()
    return t.double()


def _big_row(t: torch.Tensor) -> torch.Tensor:
    """Stats row ``[norm, mean, min, max, nan, inf]`` of one large tensor, on its device."""
    numel = t.numel()
    if t.is_sparse:
        t = t.coalesce()
        values = _dense_real(t.values())
        implicit = numel - values.numel()
    else:
        values = _dense_real(t).reshape(-1)
        implicit = 0
    isnan = torch.isnan(values)
    finite_or_inf = values.masked_fill(isnan, 0.0)
    norm = torch.linalg.vector_norm(values)
    mean = values.sum() / max(numel, 1)
    lo = values.masked_fill(isnan, math.inf).amin() if values.numel() else torch.tensor(math.inf, dtype=torch.float64)
    hi = values.masked_fill(isnan, -math.inf).amax() if values.numel() else torch.tensor(-math.inf, dtype=torch.float64)
    if implicit:
        zero = torch.zeros((), dtype=torch.float64, device=values.device)
        lo, hi = torch.minimum(lo, zero), torch.maximum(hi, zero)
    del finite_or_inf
    return torch.stack([norm, mean, lo.to(values.device), hi.to(values.device), isnan.sum().double(),
                        torch.isinf(values).sum().double()])


def _segment_rows(flat: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Stats rows of many small tensors laid end to end in ``flat`` (all counts > 0)."""
    values = np.abs(flat) if np.iscomplexobj(flat) else flat
    values = values.astype(np.float64, copy=False)
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    isnan = np.isnan(values)
    with np.errstate(invalid="ignore", over="ignore"):
        sums = np.add.reduceat(values, starts)
        sumsq = np.add.reduceat(values * values, starts)
        if isnan.any():
            lo = np.minimum.reduceat(np.where(isnan, np.inf, values), starts)
            hi = np.maximum.reduceat(np.where(isnan, -np.inf, values), starts)
        else:
            lo = np.minimum.reduceat(values, starts)
            hi = np.maximum.reduceat(values, starts)
        nan = np.add.reduceat(isnan, starts) if isnan.any() else np.zeros(len(counts))
        isinf = np.isinf(values)
        inf = np.add.reduceat(isinf, starts) if isinf.any() else np.zeros(len(counts))
    rows = np.empty((len(counts), 6), dtype=np.float64)
    rows[:, 0] = np.sqrt(sumsq)
    rows[:, 1] = sums / counts
    rows[:, 2] = lo
    rows[:, 3] = hi
    rows[:, 4] = nan
    rows[:, 5] = inf
    return rows


def _cpu_numpy(flat: torch.Tensor) -> np.ndarray:
    if flat.dtype in (torch.bfloat16, torch.float16):
        flat = flat.float()
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.numpy()


def summarize(tensors: Sequence[torch.Tensor | None], keep: int | None = 4096) -> tuple[list[Summary | None], list[torch.Tensor | None]]:
    """Summarises every tensor, and keeps a CPU copy of those with at most ``keep`` elements.

    Small dense tensors of one device and dtype are concatenated into one
    buffer (a copy, so later in-place updates of the originals cannot change
    what was kept) and reduced segment by segment; large and sparse tensors are
    reduced on their own device. All results reach the host in one transfer per
    device, so a CUDA step pays one synchronisation, not one per tensor.

    Args:
        tensors: Gradients; ``None`` entries give ``None``.
        keep: Keep full values of tensors up to this many elements (``None``: all).

    Returns:
        ``(summaries, kept)``, both aligned with ``tensors``.
    """
    count = len(tensors)
    summaries: list[Summary | None] = [None] * count
    kept: list[torch.Tensor | None] = [None] * count
    limit = math.inf if keep is None else keep
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    big: dict[torch.device, list[int]] = {}
    for i, t in enumerate(tensors):
        if t is None:
            continue
        numel = t.numel()
        if numel == 0:
            summaries[i] = _empty()
            if limit >= 0:
                kept[i] = t.detach().to("cpu", copy=True)
        elif t.layout == torch.strided and numel <= SEGMENT_LIMIT:
            groups.setdefault((t.device, t.dtype), []).append(i)
        else:
            big.setdefault(t.device, []).append(i)
            if numel <= limit:
                kept[i] = t.detach().to("cpu", copy=True)

    for (device, _dtype), indices in groups.items():
        parts = [tensors[i].detach().reshape(-1) for i in indices]  # type: ignore[union-attr]
        flat = torch.cat(parts) if len(parts) > 1 else parts[0].clone()
        host = flat.cpu() if device.type != "cpu" else flat
        array = _cpu_numpy(host)
        counts = np.fromiter((p.numel() for p in parts), dtype=np.int64, count=len(parts))
        rows = _segment_rows(array, counts)
        offset = 0
        for row_index, i in enumerate(indices):
            n = int(counts[row_index])
            summaries[i] = _summary(rows[row_index], n)
            if n <= limit:
                kept[i] = host[offset:offset + n].view(tensors[i].shape)  # type: ignore[union-attr]
            offset += n

    for device, indices in big.items():
        stacked = torch.stack([_big_row(tensors[i]) for i in indices]).cpu().numpy()  # type: ignore[arg-type]
        for row, i in zip(stacked, indices):
            summaries[i] = _summary(row, tensors[i].numel())  # type: ignore[union-attr]
    return summaries, kept


def _summary(row: np.ndarray, numel: int) -> Summary:
    norm, mean, lo, hi, nan, inf = (float(v) for v in row)
    if nan == numel:  # nothing but NaN: no meaningful min or max
        lo = hi = float("nan")
    return Summary(norm, mean, lo, hi, int(nan), int(inf), numel)
