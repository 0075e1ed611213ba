"""vizgrad: see how gradients flow through PyTorch programs, step by step."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vizgrad._version import __version__
from vizgrad.errors import (ExecutableNotFound, LayoutError, MissingDependencyError, OutputError, RasterError,
                            RecordingError, RecordingWarning, RunFileError, ScriptError, UsageError, VizgradError)

if TYPE_CHECKING:  # pragma: no cover
    from vizgrad.findings import Finding
    from vizgrad.graph import Edge, Graph, Node
    from vizgrad.gradtable import GradIndex, GradTable, NotKeptError, Summary
    from vizgrad.jupyter import LiveView, live
    from vizgrad.recorder import record
    from vizgrad.report import Report
    from vizgrad.run import Run, Step
    from vizgrad.tracing import trace

__all__ = [
    "trace", "record", "load", "Graph", "Node", "Edge", "Run", "Step", "Summary", "GradTable", "GradIndex",
    "Report", "LiveView", "live", "Finding", "VizgradError", "LayoutError", "ExecutableNotFound", "RunFileError", "UsageError",
    "RecordingError", "RecordingWarning", "NotKeptError", "OutputError", "ScriptError", "MissingDependencyError",
    "RasterError", "load_ranks", "__version__",
]

# Loaded when first used: torch for recording, jinja2 and IPython helpers for rendering, so
# `vizgrad --version` and `vizgrad info` start without them.
_LAZY = {
    "trace": ("vizgrad.tracing", "trace"), "record": ("vizgrad.recorder", "record"),
    "Graph": ("vizgrad.graph", "Graph"), "Node": ("vizgrad.graph", "Node"), "Edge": ("vizgrad.graph", "Edge"),
    "Run": ("vizgrad.run", "Run"), "Step": ("vizgrad.run", "Step"), "Summary": ("vizgrad.gradtable", "Summary"),
    "GradTable": ("vizgrad.gradtable", "GradTable"), "GradIndex": ("vizgrad.gradtable", "GradIndex"),
    "NotKeptError": ("vizgrad.gradtable", "NotKeptError"), "Report": ("vizgrad.report", "Report"),
    "LiveView": ("vizgrad.jupyter", "LiveView"), "live": ("vizgrad.jupyter", "live"),
    "Finding": ("vizgrad.findings", "Finding"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'vizgrad' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def load_ranks(paths: Any) -> Any:
    """Reads the run files of a distributed job's ranks (``run.rank0.vizgrad``, ...) as one merged run."""
    from vizgrad import merge

    return merge.load_ranks(paths)


def load(path: str) -> Any:
    """Reads a run file written by ``record(save=...)``, ``run.save()`` or ``vizgrad render --save``."""
    from vizgrad import store

    return store.load(path)
