"""Colours for frames: the viridis colormap, a log-scale gradient-norm colour scale, its colour bar and text contrast."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Any, Iterable

import numpy as np

from vizgrad.errors import UsageError

__all__ = [
    "VIRIDIS",
    "FLAG_COLORS",
    "colormap",
    "ColorScale",
    "scale_for",
    "norm_range",
    "scale_between",
    "MEASURES",
    "measured",
    "colorbar",
    "text_color_for",
]

# matplotlib's viridis (CC0, by Stéfan van der Walt and Nathaniel Smith): 256
# colours, darkest first, as one hex string so the table stays compact.
_VIRIDIS_HEX = (
    "44015444025645045745055946075a46085c460a5d460b5e"
    "470d60470e61471063471164471365481467481668481769"
    "48186a481a6c481b6d481c6e481d6f481f70482071482173"
    "482374482475482576482677482878482979472a7a472c7a"
    "472d7b472e7c472f7d46307e46327e46337f463480453581"
    "453781453882443983443a83443b84433d84433e85423f85"
    "4240864241864142874144874045884046883f47883f4889"
    "3e49893e4a893e4c8a3d4d8a3d4e8a3c4f8a3c508b3b518b"
    "3b528b3a538b3a548c39558c39568c38588c38598c375a8c"
    "375b8d365c8d365d8d355e8d355f8d34608d34618d33628d"
    "33638d32648e32658e31668e31678e31688e30698e306a8e"
    "2f6b8e2f6c8e2e6d8e2e6e8e2e6f8e2d708e2d718e2c718e"
    "2c728e2c738e2b748e2b758e2a768e2a778e2a788e29798e"
    "297a8e297b8e287c8e287d8e277e8e277f8e27808e26818e"
    "26828e26828e25838e25848e25858e24868e24878e23888e"
    "23898e238a8d228b8d228c8d228d8d218e8d218f8d21908d"
    "21918c20928c20928c20938c1f948c1f958b1f968b1f978b"
    "1f988b1f998a1f9a8a1e9b8a1e9c891e9d891f9e891f9f88"
    "1fa0881fa1881fa1871fa28720a38620a48621a58521a685"
    "22a78522a88423a98324aa8325ab8225ac8226ad8127ad81"
    "28ae8029af7f2ab07f2cb17e2db27d2eb37c2fb47c31b57b"
    "32b67a34b67935b77937b87838b9773aba763bbb753dbc74"
    "3fbc7340bd7242be7144bf7046c06f48c16e4ac16d4cc26c"
    "4ec36b50c46a52c56954c56856c66758c7655ac8645cc863"
    "5ec96260ca6063cb5f65cb5e67cc5c69cd5b6ccd5a6ece58"
    "70cf5773d05675d05477d1537ad1517cd2507fd34e81d34d"
    "84d44b86d54989d5488bd6468ed64590d74393d74195d840"
    "98d83e9bd93c9dd93ba0da39a2da37a5db36a8db34aadc32"
    "addc30b0dd2fb2dd2db5de2bb8de29bade28bddf26c0df25"
    "c2df23c5e021c8e020cae11fcde11dd0e11cd2e21bd5e21a"
    "d8e219dae319dde318dfe318e2e418e5e419e7e419eae51a"
    "ece51befe51cf1e51df4e61ef6e620f8e621fbe723fde725"
)

VIRIDIS: tuple[str, ...] = tuple(f"#{_VIRIDIS_HEX[i:i + 6]}" for i in range(0, len(_VIRIDIS_HEX), 6))
"""The 256 colours of viridis as ``#rrggbb``, dark purple (index 0) to yellow (255)."""

FLAG_COLORS: dict[str, str] = {
    "nan": "#e41a1c",   # red: no colour of viridis comes close
    "inf": "#e7298a",   # magenta
    "zero": "#d9d9d9",  # grey: an exact zero carries no magnitude to colour
    "none": "#ffffff",  # white: no gradient flowed here this step
}
"""Fills of nodes whose gradient is flagged instead of coloured by magnitude."""

_FALLBACK_RANGE = (-3.0, 1.0)  # log10 bounds when a run has no finite non-zero norm


def colormap(position: float) -> str:
    """The colour at ``position`` in ``[0, 1]`` of reversed viridis (0: pale yellow, 1: dark purple).

    Reversed so that on a white page a larger gradient is darker, the usual
    reading of a sequential scale. Positions outside ``[0, 1]`` are clipped.

    >>> colormap(0.0), colormap(1.0)
    ('#fde725', '#440154')
    """
    if not position >= 0.0:  # also catches NaN
        position = 0.0
    index = round(min(position, 1.0) * (len(VIRIDIS) - 1))
    return VIRIDIS[len(VIRIDIS) - 1 - index]


def _rgb(color: str) -> tuple[int, int, int]:
    """``#rrggbb`` (or ``#rgb``) as integers."""
    text = color.lstrip("#")
    if len(text) == 3:
        text = "".join(c * 2 for c in text)
    if len(text) != 6:
        raise ValueError(f"expected a colour like '#1f77b4', got {color!r}")
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


@functools.lru_cache(maxsize=1024)  # fills come from a small palette; a report asks tens of thousands of times
def text_color_for(fill: str) -> str:
    """Black or white, whichever reads better on ``fill`` (WCAG relative luminance).

    >>> text_color_for("#440154"), text_color_for("#fde725")
    ('#ffffff', '#000000')
    """

    def linear(channel: int) -> float:
        c = channel / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    red, green, blue = (linear(c) for c in _rgb(fill))
    luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    # Contrast with black beats contrast with white above L ~ 0.179.
    return "#000000" if luminance > 0.179 else "#ffffff"


#: What a colour scale places: ``rms`` (norm / sqrt(elements): tensor size does not look like health)
#: or ``norm`` (the L2 norm itself).
MEASURES = ("rms", "norm")


def measured(norms: np.ndarray, numel: np.ndarray | None, measure: str) -> np.ndarray:
    """``norms`` as ``measure`` has them: divided by sqrt(elements) for ``rms`` (where the element count is known)."""
    norms = np.asarray(norms, dtype=np.float64)
    if measure == "norm" or numel is None:
        return norms
    numel = np.asarray(numel, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(numel > 0, norms / np.sqrt(np.where(numel > 0, numel, 1.0)), norms)


@dataclasses.dataclass(frozen=True)
class ColorScale:
    """Maps gradient norms (or RMS values) to colours and edge widths on a log10 scale.

    Attributes:
        lo: log10 of the smallest value the scale distinguishes (and below).
        hi: log10 of the largest (and above).
        measure: What the scale places (see :data:`MEASURES`): the methods
            take norms and, for ``rms``, the element counts beside them.
    """

    lo: float
    hi: float
    measure: str = "norm"

    def measured(self, norms: np.ndarray, numel: np.ndarray | None = None) -> np.ndarray:
        """What this scale places for each norm (see :func:`measured`)."""
        return measured(norms, numel, self.measure)

    @property
    def title(self) -> str:
        """What the colours show, for a legend."""
        return "gradient RMS ‖g‖/√n (log scale)" if self.measure == "rms" else "gradient norm ‖g‖ (log scale)"

    def positions(self, norms: np.ndarray) -> np.ndarray:
        """Where each norm falls on the scale, in ``[0, 1]``; NaN for zero, negative, NaN or Inf (the one rule)."""
        norms = np.asarray(norms, dtype=np.float64)
        span = self.hi - self.lo
        with np.errstate(invalid="ignore", divide="ignore"):
            valid = (norms > 0) & (norms < np.inf)
            t = (np.log10(np.where(valid, norms, 1.0)) - self.lo) / span if span > 0 else np.full(norms.shape, 0.5)
        return np.where(valid, np.clip(t, 0.0, 1.0), np.nan)

    def color_indices(self, norms: np.ndarray, numel: np.ndarray | None = None) -> np.ndarray:
        """The :data:`VIRIDIS` index (reversed: 0 for the largest) of each norm; -1 where it has no position."""
        t = self.positions(self.measured(norms, numel))
        index = len(VIRIDIS) - 1 - np.rint(np.nan_to_num(t) * (len(VIRIDIS) - 1)).astype(np.int64)
        return np.where(np.isnan(t), -1, index)

    def widths(self, norms: np.ndarray, numel: np.ndarray | None = None) -> np.ndarray:
        """Edge widths in px growing with the log10 value, 1 to 6, rounded to 0.1 px; 1 where one has no position."""
        return np.round(1.0 + 5.0 * np.nan_to_num(self.positions(self.measured(norms, numel))), 1)

    def position(self, norm: float, numel: int | None = None) -> float | None:
        """:meth:`positions` of one norm (``None`` for none)."""
        t = float(self.positions(self.measured(np.array([norm]), None if numel is None else np.array([numel])))[0])
        return None if math.isnan(t) else t

    def color(self, norm: float, numel: int | None = None) -> str | None:
        """The colour of ``norm`` (of ``numel`` elements), or ``None`` when it has no position (see :meth:`positions`)."""
        index = int(self.color_indices(np.array([norm]), None if numel is None else np.array([numel]))[0])
        return None if index < 0 else VIRIDIS[index]

    def width(self, norm: float, numel: int | None = None) -> float:
        """:meth:`widths` of one norm."""
        return float(self.widths(np.array([norm]), None if numel is None else np.array([numel]))[0])


def scale_for(steps: Iterable[Any], measure: str = "rms") -> ColorScale:
    """The colour scale spanning every node and edge gradient norm (or RMS, see :data:`MEASURES`) of these steps.

    Zero, NaN and Inf norms are left out (they are flagged, not coloured). With
    no usable norm the scale falls back to 1e-3 .. 1e1; a single distinct norm
    gets half a decade either side.

    Args:
        steps: :class:`vizgrad.run.Step` objects (e.g. ``run.steps``).
        measure: ``rms`` (the default) or ``norm``.

    Returns:
        The :class:`ColorScale`.
    """
    return scale_between(norm_range((step.table for step in steps), measure), measure)


def norm_range(tables: Iterable[Any], measure: str = "norm") -> tuple[float, float] | None:
    """The smallest and largest finite, non-zero node and edge gradient norm (or RMS) of these tables; ``None`` if none.

    Tables are read in chunks whose pending rows are computed together (a
    stored run of thousands of steps costs a few vectorised passes).
    """
    from vizgrad.gradtable import resolve

    lo = math.inf
    hi = -math.inf
    tables = iter(tables)
    while True:
        chunk = list(itertools.islice(tables, 256))
        if not chunk:
            break
        resolve(chunk)
        groups: dict[Any, list[Any]] = {}  # a loop's tables share one index: their norms stack
        for table in chunk:
            groups.setdefault(table.index, []).append(table)
        for index, group in groups.items():
            rows = index.gradient_rows
            stacked = np.concatenate([table.rows[rows] for table in group]) if len(group) > 1 \
                else group[0].rows[rows]
            norms = measured(stacked[:, 0], stacked[:, 6], measure)
            norms = norms[np.isfinite(norms) & (norms > 0)]
            if norms.size:
                lo = min(lo, float(norms.min()))
                hi = max(hi, float(norms.max()))
    return None if lo > hi else (lo, hi)


def scale_between(norms: tuple[float, float] | None, measure: str = "norm") -> ColorScale:
    """The colour scale from the range ``(lo, hi)`` of :func:`norm_range` (see :func:`scale_for`).

    >>> scale_between((0.01, 10.0)), scale_between(None, "rms")
    (ColorScale(lo=-2.0, hi=1.0, measure='norm'), ColorScale(lo=-3.0, hi=1.0, measure='rms'))
    """
    if measure not in MEASURES:
        raise UsageError(f"the colour scale must be one of {', '.join(map(repr, MEASURES))}, got {measure!r}")
    if norms is None:
        return ColorScale(*_FALLBACK_RANGE, measure)
    low, high = math.log10(norms[0]), math.log10(norms[1])
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    return ColorScale(low, high, measure)


def colorbar(scale: ColorScale, stops: int = 16) -> dict[str, Any]:
    """What a colour bar legend needs: colour stops, tick marks and a CSS gradient.

    Args:
        scale: The scale to explain.
        stops: How many colour stops to sample along the bar.

    Returns:
        A JSON-able dict: ``lo`` and ``hi`` (log10 bounds), ``stops`` (list of
        ``[offset, "#rrggbb"]``, offsets in ``[0, 1]`` from low to high norms),
        ``ticks`` (list of ``[offset, label]``), ``label`` and ``css`` (a
        ``linear-gradient(...)`` from left = low to right = high).

    >>> bar = colorbar(ColorScale(-2.0, 1.0))
    >>> [label for _, label in bar["ticks"]]
    ['1e-02', '1e-01', '1e+00', '1e+01']
    """
    stops = max(2, stops)
    offsets = [i / (stops - 1) for i in range(stops)]
    stop_list = [[round(t, 4), colormap(t)] for t in offsets]
    span = scale.hi - scale.lo
    first, last = math.ceil(scale.lo - 1e-9), math.floor(scale.hi + 1e-9)
    ticks: list[list[Any]] = []
    if last >= first and span > 0:
        stride = max(1, math.ceil((last - first + 1) / 8))  # at most ~8 labels
        for decade in range(first, last + 1, stride):
            ticks.append([round((decade - scale.lo) / span, 4), f"1e{decade:+03d}"])
    else:  # less than a decade: label the ends
        ticks = [[0.0, f"{10 ** scale.lo:.2e}"], [1.0, f"{10 ** scale.hi:.2e}"]]
    css = "linear-gradient(90deg, " + ", ".join(f"{color} {offset * 100:.1f}%" for offset, color in stop_list) + ")"
    return {
        "lo": scale.lo,
        "hi": scale.hi,
        "stops": stop_list,
        "ticks": ticks,
        "label": scale.title,
        "css": css,
    }
