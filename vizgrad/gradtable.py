"""A step's gradients as one table: an index of keys shared per graph, float64 summary rows and kept values.

Also the table's stored form (what a run file keeps of it), as graph.py holds a graph's JSON.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["ValueKey", "Summary", "GradIndex", "GradTable", "SummaryMap", "ValueMap", "NotKeptError",
           "Segments", "row_summary", "segment_rows", "resolve", "GRADIENT_KINDS", "encode_rows", "decode_rows",
           "ValuesEncoder", "decode_values", "encode_index", "decode_index", "stored_norm_ranges", "value_key",
           "COLUMNS", "WIDTH", "STATISTICS", "OLD_WIDTH", "widened"]

#: Keys of a table: ``("node", node_id, output)`` for the gradient flowing into
#: a node's output, ``("edge", src_id, slot)`` for the gradient ``src`` passes
#: along ``slot``, ``("param", name)`` and ``("param_grad", name)`` for a
#: parameter's value and its ``.grad``, ``("value", root_id)`` for a root's value.
ValueKey = tuple

#: Key kinds that hold gradients flowing through the graph (what colour scales span).
GRADIENT_KINDS = ("node", "edge")

#: Columns of a summary row: ``abs`` is the mean of ``|g|`` (what ``plot_grad_flow`` shows as a layer's mean).
COLUMNS = ("norm", "mean", "min", "max", "nan", "inf", "numel", "abs")
#: Width of a summary row, and the columns a reduction fills (all but ``numel``), in their order in a row.
WIDTH = len(COLUMNS)
STATISTICS = np.array([0, 1, 2, 3, 4, 5, 7])
#: Width of the rows of run files before schema 5 (no ``abs``: read back as NaN, "not measured").
OLD_WIDTH = 7


class Summary(NamedTuple):
    """Summary of one tensor.

    A named tuple (cheap to make: a report reads tens of thousands of them).
    ``min`` and ``max`` ignore NaNs (NaNs are counted in ``nan``); ``norm`` and
    ``mean`` propagate them. For complex tensors ``mean``, ``min`` and ``max``
    are of the magnitudes ``|z|``. Sparse tensors count their implicit zeros.
    ``abs`` is the mean of ``|g|`` (NaN when not measured: run files before schema 5).
    """

    norm: float
    mean: float
    min: float
    max: float
    nan: int
    inf: int
    numel: int
    abs: float = math.nan

    def as_dict(self) -> dict[str, float | int]:
        """The summary as a plain dict (``norm, mean, min, max, nan, inf, numel, abs``)."""
        return self._asdict()

    def to_list(self) -> list[float | int | str]:
        """Compact JSON form; non-finite floats become strings so JSON stays valid."""
        return [_json_float(self.norm), _json_float(self.mean), _json_float(self.min), _json_float(self.max),
                self.nan, self.inf, self.numel, _json_float(self.abs)]

    @classmethod
    def from_list(cls, data: Sequence[Any]) -> Summary:
        """Inverse of :meth:`to_list` (a list of 7, without ``abs``, is read too)."""
        norm, mean, lo, hi, nan, inf, numel, *rest = data
        return cls(float(norm), float(mean), float(lo), float(hi), int(nan), int(inf), int(numel),
                   float(rest[0]) if rest else math.nan)

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


def row_summary(row: np.ndarray | Sequence[float]) -> Summary:
    """A :class:`Summary` from a row ``norm, mean, min, max, nan, inf, numel, abs``."""
    norm, mean, lo, hi, nan, inf, numel, *rest = row.tolist() if isinstance(row, np.ndarray) else row
    if nan and nan == numel:  # nothing but NaN: no meaningful min or max
        lo = hi = float("nan")
    return Summary(norm, mean, lo, hi, int(nan), int(inf), int(numel), rest[0] if rest else math.nan)


def widened(rows: np.ndarray) -> np.ndarray:
    """Rows of :data:`OLD_WIDTH` columns with ``abs`` added as NaN; rows of :data:`WIDTH` as they are."""
    if rows.shape[-1] == WIDTH:
        return rows
    out = np.full(rows.shape[:-1] + (WIDTH,), np.nan)
    out[..., :OLD_WIDTH] = rows
    return out


class NotKeptError(LookupError):
    """A gradient flowed, but only its summary was kept (its full value is gone)."""


# -- the index ---------------------------------------------------------------------------------------------
class GradIndex(Mapping[ValueKey, int]):
    """Which row of a step's table holds each gradient: one object shared by the steps of one graph layout.

    It compares by content (its hash is computed once), so steps recorded
    alike, or read back from one stored index, group together wherever the
    same keys are looked up for many steps.
    """

    __slots__ = ("_rows", "_hash", "_gradient_rows", "_is_gradient", "_params")

    def __init__(self, rows: Mapping[ValueKey, int]) -> None:
        self._rows = dict(rows)
        self._hash: int | None = None
        self._gradient_rows: np.ndarray | None = None
        self._is_gradient: np.ndarray | None = None
        self._params: list[str] | None = None

    def __getitem__(self, key: ValueKey) -> int:
        return self._rows[key]

    def get(self, key: ValueKey, default: Any = None) -> Any:
        """The row of ``key``, or ``default``."""
        return self._rows.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def __iter__(self) -> Iterator[ValueKey]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def items(self) -> Any:
        """``(key, row)`` pairs, in the order the keys were laid out."""
        return self._rows.items()

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._rows.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, GradIndex):
            return NotImplemented
        return hash(self) == hash(other) and self._rows == other._rows

    def locate(self, keys: Sequence[ValueKey]) -> np.ndarray:
        """The row of each key (``-1`` where the table has none), as an int64 array."""
        get = self._rows.get
        return np.fromiter((get(key, -1) for key in keys), dtype=np.int64, count=len(keys))

    @property
    def params(self) -> list[str]:
        """Names of the parameters whose values the table holds, in layout order (computed once)."""
        if self._params is None:
            self._params = [key[1] for key in self._rows if key[0] == "param"]
        return self._params

    @property
    def is_gradient_row(self) -> np.ndarray:
        """Per row, whether a node or edge key points at it (a boolean mask, computed once)."""
        if self._is_gradient is None:
            size = max(self._rows.values(), default=-1) + 1
            mask = np.zeros(size, dtype=bool)
            mask[self.gradient_rows] = True
            self._is_gradient = mask
        return self._is_gradient

    @property
    def gradient_rows(self) -> np.ndarray:
        """Rows of the gradients flowing through the graph (node and edge keys), computed once."""
        if self._gradient_rows is None:
            self._gradient_rows = np.unique(np.fromiter(
                (row for key, row in self._rows.items() if key[0] in GRADIENT_KINDS), dtype=np.int64))
        return self._gradient_rows


# -- rows from values laid end to end ----------------------------------------------------------------------
def host_numpy(flat: torch.Tensor) -> np.ndarray:
    """A CPU tensor as numpy, floats narrower than 32 bits widened (numpy has no bfloat16 or float8)."""
    if flat.dtype.is_floating_point and flat.dtype.itemsize < 4:
        flat = flat.float()
    return flat.numpy()


class Segments(NamedTuple):
    """Kept values laid end to end in one buffer, whose rows are computed from it when first read.

    ``rows_at``: the table rows they fill; ``counts`` and ``starts``: each
    value's length and offset in the buffer (int64 arrays).
    """

    buffer: int
    rows_at: np.ndarray
    counts: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, buffer: int, rows_at: Sequence[int], counts: Sequence[int]) -> Segments:
        """The segments of ``counts`` values filling rows ``rows_at``, from buffer ``buffer``."""
        counts_array = np.asarray(counts, dtype=np.int64)
        starts = np.zeros(len(counts_array), dtype=np.int64)
        np.cumsum(counts_array[:-1], out=starts[1:])
        return cls(buffer, np.asarray(rows_at, dtype=np.int64), counts_array, starts)


def segment_rows(flat: np.ndarray, counts: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
    """Rows ``[norm, mean, min, max, nan, inf, abs]`` (:data:`STATISTICS`) of many tensors laid end to end
    (every count > 0).

    Sums accumulate in float64 (numpy casts in small buffers, without a
    float64 copy of the data); min and max ignore NaN.
    """
    values = np.abs(flat) if np.iscomplexobj(flat) else flat
    if starts is None:
        starts = np.zeros(len(counts), dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
    rows = np.zeros((len(counts), 7), dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # Inf - Inf is NaN, as torch's sums give: no warning
        rows[:, 1] = np.add.reduceat(values, starts, dtype=np.float64) / counts
        rows[:, 0] = np.sqrt(np.add.reduceat(np.square(values, dtype=np.float64), starts))
        rows[:, 6] = np.add.reduceat(np.abs(values), starts, dtype=np.float64) / counts
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


#: A locator of a kept value: ``(buffer, offset, shape)`` into :attr:`GradTable.buffers`,
#: or a tensor of its own (sparse and other odd layouts), or ``None`` (not kept).
Locator = Any


class GradTable:
    """One step's gradients: a :class:`GradIndex`, the ``(n, 8)`` float64 summary rows and the kept values.

    Rows are ``norm, mean, min, max, nan, inf, numel, abs``, one per distinct
    tensor; keys map into them through :attr:`index` (two keys of one tensor
    share a row). Kept values lie in a few flat host buffers. The rows of
    kept values may be computed from those buffers on first access to
    :attr:`rows` (``pending``), which keeps a training step cheap.

    The newest recorded step also *holds* its gradients up to the recorder's
    ``hold`` size (the very tensors autograd produced) until the next step
    releases them (:meth:`release`), so ``step.grad_of`` returns full values
    while a step is the newest.

    Store, painter, colour scales and reports read steps through this type.
    """

    __slots__ = ("index", "_rows", "buffers", "kept", "_pending", "_held", "_buffered")

    def __init__(self, index: GradIndex, rows: np.ndarray, buffers: Sequence[Any] = (),
                 kept: Sequence[Locator] | None = None, pending: Iterable[Segments] = (),
                 held: Sequence[Any] | None = None) -> None:
        self.index = index
        self._rows = rows
        self.buffers = list(buffers)
        self.kept: list[Locator] = list(kept) if kept is not None else [None] * len(rows)
        self._pending = list(pending)
        self._held = list(held) if held is not None else None
        # Each buffer comes with the segments of its values: how many kept values lie in buffers.
        self._buffered = sum(len(segments.rows_at) for segments in self._pending)

    # -- rows --------------------------------------------------------------------------------------------
    @property
    def rows(self) -> np.ndarray:
        """The ``(n, 8)`` float64 array ``norm, mean, min, max, nan, inf, numel, abs`` (:data:`COLUMNS`)."""
        if self._pending:
            resolve([self])
        return self._rows

    def all_finite(self) -> bool:
        """Whether no tensor of the table holds a NaN or an Inf, told without computing pending rows.

        Norms carry NaN and Inf, so one sum of their squares tells the
        computed rows; the pending ones are told by one of their buffers. A
        huge finite sum (an overflow) answers ``False``: the caller then reads the rows.
        """
        norms = self._rows[:, 0]
        if not math.isfinite(norms.dot(norms)):  # a dot product: the fastest reduction numpy has
            return False
        for segments in self._pending:
            values = host_numpy(self.buffers[segments.buffer])
            if not math.isfinite(np.vdot(values, values).real):
                return False
        return True

    @property
    def kept_in_buffers(self) -> bool:
        """Whether every kept value lies in :attr:`buffers`, which hold nothing else (no value of its own)."""
        return bool(self.buffers) and len(self.kept) - self.kept.count(None) == self._buffered

    @property
    def stored_rows(self) -> tuple[np.ndarray, list[Segments]]:
        """The rows as they are, with the :class:`Segments` of kept values whose rows are still to compute.

        What a run file stores: the rows of kept values follow from the
        values, so they are computed when read, not while training.
        """
        return self._rows, list(self._pending)

    def numel(self, key: ValueKey) -> int:
        """Element count of the tensor under ``key`` (never needs the pending rows)."""
        return int(self._rows[self.index[key], 6])

    def row(self, key: ValueKey) -> np.ndarray | None:
        """The summary row under ``key``, or ``None`` when no such gradient flowed."""
        at = self.index.get(key)
        return None if at is None else self.rows[at]

    def summary(self, key: ValueKey) -> Summary | None:
        """The :class:`Summary` under ``key``, or ``None`` when no such gradient flowed."""
        row = self.row(key)
        return None if row is None else row_summary(row)

    def scalar(self, key: ValueKey) -> float:
        """The value of the one-element tensor under ``key`` (the real part of a complex one)."""
        at = self.index[key]
        locator = self.kept[at]
        if isinstance(locator, tuple):
            buffer = self.buffers[locator[0]]
            if buffer.dtype.is_floating_point and buffer.dtype.itemsize >= 4:  # without a tensor op
                return float(buffer.numpy()[locator[1]])
        value = self._value_at(at)
        if value is None:
            return float(self.rows[at, 1])
        return float(value.reshape(()).real if value.is_complex() else value.reshape(()))

    # -- values ------------------------------------------------------------------------------------------
    def has(self, key: ValueKey) -> bool:
        """Whether a gradient flowed under ``key`` (a row exists)."""
        return key in self.index

    def value(self, key: ValueKey) -> torch.Tensor | None:
        """A copy of the full value under ``key`` (kept, or held by the newest step), or ``None``.

        A copy: changing it leaves the record as it was.
        """
        at = self.index.get(key)
        if at is None:
            return None
        value = self._value_at(at)
        return None if value is None else value.clone()

    def kept_value(self, key: ValueKey) -> torch.Tensor | None:
        """The kept value under ``key`` as it lies in the table (a view: do not change it), or ``None``."""
        at = self.index.get(key)
        return None if at is None else self.kept_at(at)

    def kept_at(self, at: int) -> torch.Tensor | None:
        """The kept value of row ``at`` (a view into a buffer), or ``None``."""
        locator = self.kept[at]
        if locator is None or not isinstance(locator, tuple):
            return locator
        buffer, offset, shape = locator
        return self.buffers[buffer].narrow(0, offset, math.prod(shape)).view(shape)

    def _value_at(self, at: int) -> torch.Tensor | None:
        value = self.kept_at(at)
        if value is None and self._held is not None:
            value = self._held[at]
        return value

    def is_kept(self, key: ValueKey) -> bool:
        """Whether a full value under ``key`` is available (kept, or held by the newest step)."""
        at = self.index.get(key)
        return at is not None and self._value_at(at) is not None

    @property
    def holding(self) -> bool:
        """Whether this table still holds the full gradients of a newest step."""
        return self._held is not None

    def release(self) -> None:
        """Drops the held full gradients (done when a newer step is recorded); kept values stay."""
        self._held = None

    # -- views -------------------------------------------------------------------------------------------
    @property
    def summaries(self) -> SummaryMap:
        """``ValueKey`` -> :class:`Summary` for every gradient, parameter value and ``.grad``."""
        return SummaryMap(self)

    @property
    def values(self) -> ValueMap:
        """``ValueKey`` -> full value (a copy) for every value kept or held."""
        return ValueMap(self)

    @classmethod
    def from_mappings(cls, summaries: Mapping[ValueKey, Any], values: Mapping[ValueKey, Any]) -> GradTable:
        """A table from plain mappings (a step built by hand): summaries, and values to keep.

        Values without a summary of their own are summarised.
        """
        rows: dict[ValueKey, Sequence[float]] = {key: tuple(summary) for key, summary in summaries.items()}
        missing = [key for key in values if key not in rows]
        if missing:
            from vizgrad.stats import summarize  # torch is needed only here

            computed = summarize([values[key] for key in missing], keep=None)
            rows.update(zip(missing, map(tuple, computed.rows.tolist())))
        table = np.array([widened(np.asarray(row, dtype=np.float64)) for row in rows.values()]).reshape(-1, WIDTH)
        index = GradIndex({key: at for at, key in enumerate(rows)})
        kept = [None if values.get(key) is None else values[key].detach().to("cpu", copy=True) for key in rows]
        return cls(index, table, kept=kept)


def resolve(tables: Iterable[GradTable]) -> None:
    """Computes the pending rows of many tables in one numpy pass per dtype.

    A report reads every step's summaries; resolving them together costs a few
    vectorised passes instead of several numpy calls per step.
    """
    by_dtype: dict[Any, list[tuple[GradTable, Segments]]] = {}
    for table in tables:
        for segments in table._pending:
            by_dtype.setdefault(table.buffers[segments.buffer].dtype, []).append((table, segments))
        table._pending = []
    for jobs in by_dtype.values():
        if len(jobs) == 1:  # one table (a step being saved): no gathering
            table, segments = jobs[0]
            table._rows[segments.rows_at[:, None], STATISTICS] = segment_rows(
                host_numpy(table.buffers[segments.buffer]), segments.counts, segments.starts)
            continue
        flat = np.concatenate([host_numpy(table.buffers[segments.buffer]) for table, segments in jobs])
        rows = segment_rows(flat, np.concatenate([segments.counts for _, segments in jobs]))
        at = 0
        for table, segments in jobs:
            table._rows[segments.rows_at[:, None], STATISTICS] = rows[at:at + len(segments.counts)]
            at += len(segments.counts)


# -- read-only mapping views -------------------------------------------------------------------------------
class SummaryMap(Mapping[ValueKey, Summary]):
    """Read-only ``ValueKey -> Summary`` view over a :class:`GradTable` (root values left out)."""

    __slots__ = ("table",)

    def __init__(self, table: GradTable) -> None:
        self.table = table

    @property
    def index(self) -> GradIndex:
        """The table's index (``ValueKey`` -> row)."""
        return self.table.index

    @property
    def rows(self) -> np.ndarray:
        """The table's ``(n, 7)`` rows."""
        return self.table.rows

    def __getitem__(self, key: ValueKey) -> Summary:
        summary = self.table.summary(key) if key[0] != "value" else None
        if summary is None:
            raise KeyError(key)
        return summary

    def __iter__(self) -> Iterator[ValueKey]:
        return (key for key in self.table.index if key[0] != "value")

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        return key in self.table.index and key[0] != "value"  # type: ignore[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


class ValueMap(Mapping[ValueKey, "torch.Tensor"]):
    """Read-only ``ValueKey -> tensor`` view over the full values a :class:`GradTable` has (copies on access)."""

    __slots__ = ("table",)

    def __init__(self, table: GradTable) -> None:
        self.table = table

    def __getitem__(self, key: ValueKey) -> torch.Tensor:
        value = self.table.value(key) if key[0] != "value" else None
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[ValueKey]:
        table = self.table
        return (key for key, at in table.index.items() if key[0] != "value" and table._value_at(at) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        return key[0] != "value" and self.table.is_kept(key)  # type: ignore[index,arg-type]


# -- the stored form: what a run file keeps of a table -------------------------------------------------------


_ALIGN = 16  # payload arrays start at multiples of this, so decoded tensors are aligned
_CRC = struct.Struct("<I")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _ALIGN)


def _pack(header: Any, payload: Sequence[bytes]) -> bytes:
    """``zlib(length + JSON header + payload arrays)``, each array aligned: the container of kept values.

    ``header`` may be its JSON text already (bytes), made once for many steps.
    """
    text = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    parts = [struct.pack("<I", len(text)), text, _padding(4 + len(text))]
    for array in payload:
        parts += [array, _padding(len(array))]
    return zlib.compress(b"".join(parts), 1)  # level 1: gradients compress little, so favour speed


def unpack_blob(blob: bytes) -> tuple[Any, bytearray, list[int]]:
    """Inverse of :func:`_pack`: the header, the raw bytes and the offset of each payload array.

    ``header["sizes"]`` gives the byte length of each array.
    """
    raw = bytearray(zlib.decompress(blob))
    (length,) = struct.unpack_from("<I", raw)
    header = json.loads(raw[4:4 + length])
    offset = 4 + length
    offset += -offset % _ALIGN
    offsets = []
    for size in header["sizes"]:
        offsets.append(offset)
        offset += size + (-size % _ALIGN)
    if offset - (-header["sizes"][-1] % _ALIGN if header["sizes"] else 0) > len(raw):
        raise ValueError("its kept values are cut short")
    return header, raw, offsets


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: str) -> torch.dtype:
    import torch

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown tensor dtype {name!r}")
    return dtype


def encode_rows(table: GradTable) -> bytes:
    """A table's summary rows as stored: a CRC-32 of the rows, then the ``(n, 8)`` little-endian float64s.

    Raw, not compressed: gradient statistics barely compress, and a step's
    write is on the training loop's path. The checksum tells a damaged row.
    """
    rows, _ = table.stored_rows  # rows of kept values are left to compute from them (see ValuesEncoder)
    data = memoryview(np.ascontiguousarray(rows, dtype="<f8")).cast("B")  # no copy until the join
    return b"".join((_CRC.pack(zlib.crc32(data)), data))


def decode_rows(blob: bytes, width: int = WIDTH) -> np.ndarray:
    """Inverse of :func:`encode_rows` (``width``: :data:`OLD_WIDTH` for files before schema 5, widened);
    ``ValueError`` for a damaged blob."""
    if len(blob) < _CRC.size or (len(blob) - _CRC.size) % (width * 8):
        raise ValueError("its summary rows are cut short")
    data = memoryview(blob)[_CRC.size:]
    if _CRC.unpack_from(blob)[0] != zlib.crc32(data):
        raise ValueError("its summary rows fail their checksum")
    return widened(np.frombuffer(data, dtype="<f8").reshape(-1, width))


_KEY_TYPES = {"node": (str, int), "edge": (str, int), "param": (str,), "param_grad": (str,), "value": (str,)}


def value_key(key: Sequence[Any]) -> tuple:
    """A value key read from JSON: ``("node", "n3", 0)``; anything else is damage."""
    key = tuple(key)
    types = _KEY_TYPES.get(key[0]) if key and isinstance(key[0], str) else None
    if types is None or len(key) != 1 + len(types) or not all(type(part) is kind for part, kind in zip(key[1:], types)):
        raise ValueError(f"unknown value key {key!r}")
    return key


def encode_index(index: GradIndex) -> str:
    """The JSON of a key index: ``[[key, row], ...]`` in layout order."""
    return json.dumps([[key, row] for key, row in index.items()], separators=(",", ":"))


def decode_index(text: str) -> GradIndex:
    """Inverse of :func:`encode_index`."""
    return GradIndex({value_key(key): int(row) for key, row in json.loads(text)})


class ValuesEncoder:
    """Packs tables' kept values (never the full gradients a newest step holds) for one run file.

    The kept tensors are stored as raw bytes of any dtype (bfloat16, float8
    and complex too), one buffer per dtype, with where each lies in them and
    which rows are still to compute from them (``"p"``: buffer, rows,
    counts). A loop's steps keep values laid out alike: the header is made
    once for each layout and reused while the next step's equals it.
    """

    def __init__(self) -> None:
        self._layout: tuple[Any, ...] | None = None
        self._header: bytes | None = None  # JSON of the last layout's header

    def encode(self, table: GradTable) -> bytes:
        """The values blob of ``table`` (see :func:`decode_values`)."""
        kept, buffers = table.kept, table.buffers
        _, pending = table.stored_rows
        if not table.kept_in_buffers:
            kept, buffers = _own_buffers(kept, buffers)
        if not buffers:
            return _pack({"b": [], "k": [], "sizes": []}, [])
        arrays = [_raw_bytes(buffer) for buffer in buffers]
        layout = (kept, tuple((buffer.dtype, len(array)) for buffer, array in zip(buffers, arrays)),
                  tuple((segments.buffer, segments.rows_at.tobytes(), segments.counts.tobytes())
                        for segments in pending))
        if layout != self._layout:
            self._layout = (list(kept), *layout[1:])  # a copy: the table's list is the caller's
            self._header = json.dumps({"b": [_dtype_name(buffer.dtype) for buffer in buffers],
                                       "k": [None if locator is None else [locator[0], locator[1], list(locator[2])]
                                             for locator in kept],
                                       "p": [[segments.buffer, segments.rows_at.tolist(), segments.counts.tolist()]
                                             for segments in pending],
                                       "sizes": [len(array) for array in arrays]}, separators=(",", ":")).encode()
        return _pack(self._header, arrays)


def _raw_bytes(buffer: torch.Tensor) -> bytes:
    """The bytes of a kept buffer as they lie in memory (conjugate and negative views resolved)."""
    import torch

    if buffer.is_conj() or buffer.is_neg() or not buffer.is_contiguous() or not buffer.is_cpu:
        buffer = buffer.detach().cpu().resolve_conj().resolve_neg().contiguous()
    return buffer.detach().reshape(-1).view(torch.uint8).numpy().tobytes()


def _own_buffers(kept: Sequence[Any], buffers: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """Kept values that are tensors of their own (big, sparse, or built by hand) made buffers after the table's."""
    kept, buffers = list(kept), list(buffers)
    for at, locator in enumerate(kept):
        if locator is not None and type(locator) is not tuple:
            kept[at] = (len(buffers), 0, tuple(locator.shape))
            buffers.append((locator.to_dense() if locator.is_sparse else locator).detach().reshape(-1))
    return kept, buffers


def decode_values(blob: bytes, count: int) -> tuple[list[Any], list[Any], list[Segments]]:
    """Inverse of :meth:`ValuesEncoder.encode`: ``(buffers, locators, pending rows)`` for ``count`` rows.

    Raises:
        ValueError: The blob is damaged.
    """
    header, raw, offsets = unpack_blob(blob)
    locators = header["k"] or [None] * count
    if len(locators) != count:
        raise ValueError(f"{len(locators)} kept values for {count} rows")
    if not header["b"]:
        return [], [None] * count, []
    import torch

    buffers = []
    for dtype_name, offset, size in zip(header["b"], offsets, header["sizes"]):
        dtype = _dtype_from_name(dtype_name)
        if type(size) is not int or size < 0 or size % dtype.itemsize:
            raise ValueError(f"a kept buffer of {size!r} bytes")
        if size:
            buffers.append(torch.frombuffer(raw, dtype=dtype, count=size // dtype.itemsize, offset=offset))
        else:
            buffers.append(torch.empty(0, dtype=dtype))
    kept: list[Any] = []
    for locator in locators:
        if locator is None:
            kept.append(None)
            continue
        buffer, offset, shape = int(locator[0]), int(locator[1]), tuple(int(n) for n in locator[2])
        if not 0 <= buffer < len(buffers) or offset < 0 or min(shape, default=0) < 0 \
                or offset + math.prod(shape) > buffers[buffer].numel():
            raise ValueError("a kept value lies outside its buffer")
        kept.append((buffer, offset, shape))
    pending = []
    for buffer, rows_at, counts in header.get("p", ()):
        segments = Segments.of(int(buffer), [int(at) for at in rows_at], [int(n) for n in counts])
        inside = 0 <= segments.buffer < len(buffers) and all(0 <= at < count for at in rows_at)
        if not inside or min(counts, default=1) <= 0 or sum(counts) != buffers[segments.buffer].numel():
            raise ValueError("rows to compute lie outside the table")
        pending.append(segments)
    return buffers, kept, pending


def stored_norm_ranges(table: GradTable, measures: Sequence[str] = ("norm",)
                       ) -> list[tuple[float | None, float | None]]:
    """The smallest and largest finite non-zero gradient norm (or RMS) of a table for each of ``measures``,
    without computing pending rows (the gradient rows are found once for all of them).

    ``(None, None)`` where it has none, or when a gradient's row is still to
    compute (then the run's range is found by reading its steps).
    """
    rows, pending = table.stored_rows
    is_gradient = table.index.is_gradient_row
    if len(is_gradient) != len(rows):  # rows no key points at (a table built by hand)
        is_gradient = np.zeros(len(rows), dtype=bool)
        is_gradient[table.index.gradient_rows] = True
    if any(is_gradient[segments.rows_at].any() for segments in pending):
        return [(None, None)] * len(measures)
    from vizgrad.colors import measured

    ranges: list[tuple[float | None, float | None]] = []
    for measure in measures:
        norms = measured(rows[:, 0], rows[:, 6], measure)
        usable = is_gradient & (norms > 0) & (norms < np.inf)
        norms = norms[usable]
        ranges.append((float(norms.min()), float(norms.max())) if norms.size else (None, None))
    return ranges
