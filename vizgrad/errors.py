"""The exceptions vizgrad raises: one hierarchy, each class also a builtin."""

from __future__ import annotations

__all__ = [
    "VizgradError",
    "LayoutError",
    "ExecutableNotFound",
    "RunFileError",
    "UsageError",
    "MissingDependencyError",
    "RasterError",
    "RecordingError",
    "OutputError",
    "ScriptError",
    "RecordingWarning",
]


class VizgradError(Exception):
    """Base class of every error vizgrad raises on purpose.

    Catch this to handle any vizgrad failure; the CLI turns it into a one-line
    ``Error: ...`` message.
    """


class LayoutError(VizgradError, RuntimeError):
    """Graphviz could not lay out or render a DOT source.

    The message carries what Graphviz reported (its stderr for the ``dot``
    executable, its last error for the WebAssembly build).
    """


class ExecutableNotFound(VizgradError, RuntimeError):
    """The Graphviz ``dot`` executable was requested but is not on PATH."""


class RunFileError(VizgradError, ValueError):
    """A saved run file is missing, unreadable, or not a vizgrad run."""


class UsageError(VizgradError, ValueError):
    """An argument or setting has a value vizgrad does not accept."""


class MissingDependencyError(VizgradError, ImportError):
    """An optional Python package needed for this output is not installed.

    The message names the pip package to install.
    """


class RasterError(VizgradError, ValueError):
    """An SVG frame could not be turned into a raster image."""


class RecordingError(VizgradError, RuntimeError):
    """Recording could not go on (for example, ``record()`` blocks were nested)."""


class OutputError(VizgradError, OSError):
    """An output file (a report, frames, a video) could not be written where asked."""


class ScriptError(VizgradError, RuntimeError):
    """A script given to ``vizgrad render`` cannot be run, failed, or recorded nothing.

    The message names the script (and the line, for a syntax error).
    """


class RecordingWarning(UserWarning):
    """Recording met a problem it worked around: a step was recorded as far as possible, or not at all.

    The training itself is never affected: numbers stay what they would be without vizgrad.
    """
