"""Writes a recorded run as an HTML report, SVG frames, DOT sources, an animated GIF or an MP4."""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vizgrad import raster
from vizgrad.errors import OutputError, UsageError
from vizgrad.frames import FrameRenderer, annotated_width, run_scale, select_steps
from vizgrad.view import ViewOptions

if TYPE_CHECKING:  # pragma: no cover
    from vizgrad.run import Run

__all__ = ["FORMATS", "format_for", "export", "replace_file"]

FORMATS = ("html", "svg", "dot", "gif", "mp4")
"""Output formats of :func:`export`."""

_SUFFIXES = {".html": "html", ".htm": "html", ".svg": "svg", ".dot": "dot", ".gv": "dot", ".gif": "gif",
             ".mp4": "mp4"}
_PROGRESS_ABOVE = 8  # frames; fewer finish before a progress bar would be worth drawing
_MAX_RASTER_WIDTH = 1600  # px: wider layouts are scaled down in GIF and MP4 frames


def format_for(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The output format: ``fmt`` when given, else from the suffix of ``path``, else ``"html"``.

    Raises:
        UsageError: ``fmt`` is not one of :data:`FORMATS`, or ``path`` has a
            suffix that is none of them.

    >>> format_for("run.gif"), format_for("frames", "svg"), format_for("report")
    ('gif', 'svg', 'html')
    """
    choices = ", ".join(FORMATS)
    if fmt is not None:
        chosen = str(fmt).lower().lstrip(".")
        if chosen not in FORMATS:
            raise UsageError(f"unknown format {fmt!r}; choose one of {choices}")
        return chosen
    suffix = Path(path).suffix.lower()
    if not suffix:
        return "html"
    if suffix not in _SUFFIXES:
        raise UsageError(f"cannot tell the format of {str(path)!r} from its suffix {suffix!r}; "
                         f"use a suffix or a format among {choices}")
    return _SUFFIXES[suffix]


def export(run: Run, path: str | os.PathLike[str], fmt: str | None = None, *, every: int = 1,
           steps: str | slice | int | None = None, engine: str | None = None, progress: bool | None = None,
           fps: float = 10, width: int | None = None, view: ViewOptions | None = None,
           scale: str = "rms") -> list[Path]:
    """Writes ``run`` to ``path`` as ``fmt``, laying out each graph topology once.

    * ``html``: the player report (``run.report(...).save(path)``);
    * ``svg``: ``path`` is a folder (created if missing) that gets one file per
      selected step, ``step-000000.svg`` ..., numbered by step index;
    * ``dot``: the DOT source of each distinct graph among the selected steps:
      ``path`` itself for one topology, ``<stem>-1<suffix>``, ``<stem>-2<suffix>``
      ... for several;
    * ``gif`` / ``mp4``: an animation, one frame per selected step, streamed
      (memory does not grow with the number of frames).

    Args:
        run: The recorded run.
        path: Output file (or folder for ``svg``).
        fmt: One of :data:`FORMATS`; ``None`` to go by the suffix of ``path``.
        every: Keep every ``every``-th selected step.
        steps: A step range such as ``"100:200"`` (see :func:`vizgrad.frames.select_steps`).
        engine: Graphviz engine (``None``/``"auto"``, ``"dot"``, ``"wasm"``).
        progress: Show a progress bar on stderr; ``None`` shows one only when
            stderr is a terminal and there are more than a few frames.
        fps: Frames per second of a GIF or MP4.
        width: Width in pixels of GIF/MP4 frames; ``None`` for the graph's
            natural size, at most 1600 px.
        view: What is drawn of each graph (collapsed modules, folded
            repeats; see :class:`vizgrad.view.ViewOptions`); by default the
            most detailed view within 150 drawn items.
        scale: What the colours show: ``"rms"`` (norm / sqrt(elements), the
            default) or ``"norm"``; the legend says which.

    Returns:
        The paths written.

    Raises:
        UsageError: A bad format, step range, ``every`` or ``fps``, or a
            ``path`` that cannot be written as asked.
        OutputError: Writing a file failed (permission denied, disk full...).
        LayoutError: Graphviz failed.
    """
    chosen = format_for(path, fmt)
    target = Path(path)
    if chosen == "html":
        report = run.report(every=every, steps=steps, engine=engine, view=view, scale=scale)
        with _progress_bar(report.layouts_to_draw(), f"Laying out {target.name}", progress) as advance:
            report.progress = advance
            return [report.save(target)]
    if chosen == "dot":
        return _write_dot(run, target, select_steps(len(run.steps), every, steps), view)
    renderer = FrameRenderer(run, engine, every=every, steps=steps, view=view, scale=run_scale(run, scale))
    if chosen == "svg":
        return _write_svg(renderer, target, progress)
    writer = raster.write_gif if chosen == "gif" else raster.write_mp4
    if target.is_dir():
        raise UsageError(f"{str(target)!r} is a folder; give a file name ending in .{chosen}")
    frame_width = width if width is not None else _raster_width(renderer)
    with _progress_bar(len(renderer), f"Writing {target.name}", progress) as advance:
        writer(renderer.annotated_svgs(), target, fps=fps, width=frame_width, progress=advance)
    return [target]


def _write_dot(run: Run, target: Path, indices: list[int], view: ViewOptions | None) -> list[Path]:
    graphs: dict[str, Any] = {}
    for index in indices:
        graph = run.steps[index].graph
        graphs.setdefault(graph.structural_hash, graph)
    if target.is_dir():
        raise UsageError(f"{str(target)!r} is a folder; give a file name ending in .dot")
    _check_parent(target)
    if len(graphs) == 1:
        paths = [target]
    else:
        paths = [target.with_name(f"{target.stem}-{k}{target.suffix}") for k in range(1, len(graphs) + 1)]
    for out, graph in zip(paths, graphs.values()):
        _write_text(out, graph.to_dot(view=view))
    return paths


def _write_svg(renderer: FrameRenderer, folder: Path, progress: bool | None) -> list[Path]:
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"SVG frames go into a folder, but {str(folder)!r} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the folder {str(folder)!r}: {error.strerror or error}") from error
    digits = max(6, len(str(renderer.indices[-1])))
    written: list[Path] = []
    with _progress_bar(len(renderer), f"Writing {folder.name}/", progress) as advance:
        for index, svg in renderer:
            out = folder / f"step-{index:0{digits}d}.svg"
            _write_text(out, svg)
            written.append(out)
            if advance is not None:
                advance(1)
    return written


def _write_text(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    try:
        replace_file(path, data)
    except OSError as error:
        raise OutputError(f"cannot write {str(path)!r}: {error.strerror or error}") from error


def replace_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to a new file beside ``path``, then moves it onto ``path``: never a partial file there.

    Raises:
        OSError: The file could not be written; ``path`` is as it was and no temporary file is left.
    """
    target = Path(path)
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
    # O_EXCL: never write into someone else's file; mode 0o666 lets the umask apply, as open() does.
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(descriptor, "wb") as file:
            file.write(data)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _check_parent(target: Path) -> None:
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {str(target)!r}: folder {str(target.parent)!r} does not exist")


def _raster_width(renderer: FrameRenderer) -> int | None:
    """``None`` (natural size) unless the first frame's layout is wider than the cap."""
    first = renderer.layout_of(renderer.indices[0])  # of the view drawn: a big graph's whole layout may not exist
    natural = annotated_width(first) * raster.SVG_DPI / 72  # Graphviz units are points
    return _MAX_RASTER_WIDTH if natural > _MAX_RASTER_WIDTH else None


@contextlib.contextmanager
def _progress_bar(length: int, label: str, progress: bool | None) -> Iterator[Callable[[int], Any] | None]:
    """Yields a ``bar.update`` callable, or ``None`` when no bar is shown."""
    show = progress if progress is not None else (sys.stderr.isatty() and length > _PROGRESS_ABOVE)
    if not show:
        yield None
        return
    import click

    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield bar.update
