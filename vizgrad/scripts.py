"""Runs a user's Python script unmodified as ``__main__`` and records every ``backward()`` it calls."""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import os
import runpy
import signal
import sys
import threading
import traceback
import types
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from vizgrad.errors import ScriptError
from vizgrad.run import Run, Step

__all__ = ["ScriptOutcome", "check_script", "run_script", "format_user_traceback", "displayable"]

_VIZGRAD_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_HTML_SUFFIXES = (".html", ".htm")
#: In the ``<head>`` of every report vizgrad writes (templates/report.html.j2).
_REPORT_MARKER = b'<meta name="generator" content="vizgrad">'


@dataclasses.dataclass
class ScriptOutcome:
    """What happened when a script ran.

    Attributes:
        run: The recorded run (every completed step, also when the script failed).
        error: The exception the script raised, if any (not ``SystemExit``).
        interrupted: The user pressed Ctrl-C (recording stopped between steps).
        aborted: The user pressed Ctrl-C twice: stop without writing anything more.
        exit_status: The status the script passed to ``sys.exit`` (0 when it ended normally).
        exited: The script stopped itself with ``sys.exit`` (``SystemExit``), whatever the status.
    """

    run: Run
    error: BaseException | None = None
    interrupted: bool = False
    aborted: bool = False
    exit_status: int = 0
    exited: bool = False


def displayable(text: str) -> str:
    r"""``text`` with the bytes of a non-UTF-8 file name shown as ``\xe9``: safe for JSON, HTML and SQLite.

    Python reads such bytes into lone surrogates (``os.fsdecode``), which no UTF-8 writer accepts.

    >>> displayable(os.fsdecode(b"caf\xe9.py")), displayable("café.py")
    ('caf\\xe9.py', 'café.py')
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte: show its code point
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_script(path: str | os.PathLike[str]) -> Path:
    """Checks that ``path`` is a readable Python script that compiles.

    Raises:
        ScriptError: It is missing, a folder, unreadable, an HTML page (a
            report, say), or has a syntax error (the message says ``file:line``).
    """
    script = Path(path)
    if not script.exists():
        raise ScriptError(f"no script or run file at {script}: check the path")
    if script.is_dir():
        raise ScriptError(f"{script} is a folder: give a Python script (e.g. train.py) or a run file")
    try:
        source = script.read_bytes()
    except OSError as error:
        raise ScriptError(f"cannot read {script}: {error.strerror or error}; check its permissions") from None
    html = _html_kind(script, source)
    if html == "report":
        raise ScriptError(f"{script} is a vizgrad report, not a script or a run file: open it in a browser, "
                          "or render the run file written with --save (vizgrad render SCRIPT --save RUN)")
    if html == "page":
        raise ScriptError(f"{script} is an HTML page, not a Python script or a run file: "
                          "give a .py script or a run file written with --save")
    if b"\0" in source:  # binary data: no Python source holds NUL bytes
        raise ScriptError(f"{script} is neither a Python script nor a vizgrad run file: "
                          "give a .py script or a run file written with --save")
    try:
        compile(source, str(script), "exec", dont_inherit=True)
    except SyntaxError as error:
        where = f"{error.filename or script}:{error.lineno}" if error.lineno else str(script)
        raise ScriptError(f"{where}: syntax error: {error.msg}; fix the script and run again") from None
    return script


def _html_kind(script: Path, source: bytes) -> str | None:
    """``"report"`` for a report vizgrad wrote, ``"page"`` for other HTML (by content or suffix), else ``None``."""
    head = source[:4096].removeprefix(codecs.BOM_UTF8).lstrip().lower()
    if head.startswith(b"<!doctype html") and _REPORT_MARKER in head:
        return "report"
    if head.startswith((b"<!doctype html", b"<html")) or script.suffix.lower() in _HTML_SUFFIXES:
        return "page"
    return None


class _CtrlC:
    """SIGINT while a script records: stop between steps, never inside one; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.pressed = False
        self.presses = 0
        self._previous: Any = None
        self._installed = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[_CtrlC]:
        # Signal handlers can only be set from the main thread; elsewhere Ctrl-C keeps its default.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        try:
            yield self
        finally:
            if self._installed:
                signal.signal(signal.SIGINT, self._previous)
                self._installed = False

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        self.presses += 1
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True
        if not _inside_step(frame):
            raise KeyboardInterrupt
        # Inside a backward(): let the step finish and be saved; after_step raises then.

    def after_step(self, step: Step) -> None:
        """``on_step`` callback of the recorder: the point where a pending Ctrl-C stops the script."""
        if self.pressed:
            raise KeyboardInterrupt


def _inside_step(frame: types.FrameType | None) -> bool:
    """True when ``frame`` is inside the recorder's handling of a ``backward()`` call."""
    from vizgrad.recorder import Recorder

    step_code = Recorder._backward.__code__
    while frame is not None:
        if frame.f_code is step_code:
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def _as_main(script: Path, args: Sequence[str], quiet: bool) -> Iterator[None]:
    """``sys.argv``, ``sys.path`` (and ``sys.stdout`` when quiet) as ``python script.py args`` sets them."""
    saved_argv, saved_path = sys.argv, sys.path[:]
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.absolute().parent))
    with contextlib.ExitStack() as stack:
        if quiet:
            devnull = stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(contextlib.redirect_stdout(devnull))
        try:
            yield
        finally:
            sys.argv = saved_argv
            sys.path[:] = saved_path
            with contextlib.suppress(OSError, ValueError):  # a stdout the script closed or broke
                sys.stdout.flush()  # the script's output comes before what vizgrad prints after it


def run_script(path: str | os.PathLike[str], args: Sequence[str] = (), *, save: str | os.PathLike[str] | None = None,
               quiet: bool = False, on_step: Sequence[Callable[[Step], None]] = (),
               **record_options: Any) -> ScriptOutcome:
    """Runs ``path`` as ``__main__`` with ``args``, recording every ``backward()`` as one step.

    The script runs unmodified: ``sys.argv`` is ``[path, *args]``, its folder
    comes first on ``sys.path``, and both are restored afterwards. Ctrl-C
    stops the script between steps, so every recorded step is complete (a
    second Ctrl-C stops at once).

    Args:
        path: The script.
        args: Its command-line arguments.
        save: A run file to write step by step (see :func:`vizgrad.record`).
        quiet: Silence what the script prints to ``sys.stdout``.
        on_step: Called with each step once it is recorded.
        **record_options: More options of :func:`vizgrad.record` (``keep``, ``saved``...).

    Returns:
        The outcome: the run, and the script's exception, Ctrl-C or exit status.

    Raises:
        ScriptError: The script is missing or does not compile.
        RunFileError: ``save`` cannot be written.
    """
    from vizgrad.recorder import record

    script = check_script(path)
    ctrl_c = _CtrlC()
    record_options.setdefault("grad_calls", True)  # a script's autograd.grad calls (gradient penalties) too
    with record(save=os.fspath(save) if save is not None else None, on_step=[ctrl_c.after_step, *on_step],
                **record_options) as run:
        outcome = ScriptOutcome(run)
        # The script itself runs under its real name; what is stored and shown must be encodable text.
        run.meta.setdefault("title", displayable(script.name))
        run.meta["script"] = displayable(str(script))
        run.meta["argv"] = [displayable(arg) for arg in args]
        with ctrl_c.installed(), _as_main(script, args, quiet):
            try:
                runpy.run_path(str(script), run_name="__main__")
            except KeyboardInterrupt:
                outcome.interrupted = True
                outcome.aborted = ctrl_c.presses > 1
            except SystemExit as stop:
                outcome.exited = True
                outcome.exit_status = _exit_status(stop)
            except Exception as error:  # the script's own failure: reported, with the steps before it kept
                outcome.error = error
        # A script may catch KeyboardInterrupt itself and end normally: Ctrl-C was still pressed.
        outcome.interrupted = outcome.interrupted or ctrl_c.pressed
    return outcome


def _exit_status(stop: SystemExit) -> int:
    """The process status ``sys.exit(code)`` stands for, as Python itself maps it."""
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)  # sys.exit("message") prints the message and exits 1
    return 1


def _is_internal(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_VIZGRAD_DIR) or filename in (runpy.__file__, "<frozen runpy>")


def _user_frames(tb: types.TracebackType | None, script: Path) -> types.TracebackType | None:
    """The traceback from the script's first frame on, without vizgrad's own frames."""
    target = os.path.abspath(script)
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != target:
        tb = tb.tb_next
    kept = []
    while tb is not None:
        if not _is_internal(tb.tb_frame.f_code.co_filename):
            kept.append(tb)
        tb = tb.tb_next
    for current, following in zip(kept, kept[1:] + [None]):
        current.tb_next = following
    return kept[0] if kept else None


def format_user_traceback(error: BaseException, script: str | os.PathLike[str]) -> str:
    """The traceback Python would print for the script's error, minus runpy's and vizgrad's frames."""
    seen: set[int] = set()
    pending: BaseException | None = error
    while pending is not None and id(pending) not in seen:  # chained exceptions too
        seen.add(id(pending))
        pending.__traceback__ = _user_frames(pending.__traceback__, Path(script)) or pending.__traceback__
        pending = pending.__cause__ or pending.__context__
    return "".join(traceback.format_exception(error))
