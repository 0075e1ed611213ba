"""vizgrad: see how gradients flow through PyTorch programs, step by step."""

from __future__ import annotations

from typing import Any

from vizgrad.errors import (ExecutableNotFound, LayoutError, MissingDependencyError, OutputError, RasterError,
                            RecordingError, RunFileError, ScriptError, UsageError, VizgradError)
from vizgrad.graph import Edge, Graph, Node
from vizgrad.recorder import record
from vizgrad.run import Run, Step
from vizgrad.stats import Summary
from vizgrad.tracing import trace

__version__ = "0.1.0"

__all__ = [
    "trace", "record", "load", "Graph", "Node", "Edge", "Run", "Step", "Summary", "Report", "LiveView", "live",
    "VizgradError", "LayoutError", "ExecutableNotFound", "RunFileError", "UsageError", "RecordingError",
    "OutputError", "ScriptError", "MissingDependencyError", "RasterError", "__version__",
]

# Rendering pulls in jinja2 and IPython helpers: import them when first used.
_LAZY = {"Report": ("vizgrad.report", "Report"), "LiveView": ("vizgrad.jupyter", "LiveView"),
         "live": ("vizgrad.jupyter", "live")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'vizgrad' has no attribute {name!r}")


def load(path: str) -> Run:
    """Reads a run file written by ``record(save=...)``, ``run.save()`` or ``vizgrad render --save``."""
    from vizgrad import store

    return store.load(path)
