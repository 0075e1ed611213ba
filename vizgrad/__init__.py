"""vizgrad: see how gradients flow through PyTorch programs, step by step."""

from __future__ import annotations

from vizgrad.errors import (ExecutableNotFound, LayoutError, RecordingError, RunFileError, UsageError,
                            VizgradError)
from vizgrad.graph import Edge, Graph, Node
from vizgrad.recorder import record
from vizgrad.run import Run, Step
from vizgrad.stats import Summary
from vizgrad.tracing import trace

__version__ = "0.1.0"

__all__ = [
    "trace", "record", "load", "Graph", "Node", "Edge", "Run", "Step", "Summary",
    "VizgradError", "LayoutError", "ExecutableNotFound", "RunFileError", "UsageError", "RecordingError",
    "__version__",
]


def load(path: str) -> Run:
    """Reads a run file written by ``record(save=...)``, ``run.save()`` or ``vizgrad render --save``."""
    from vizgrad import store

    return store.load(path)
