"""``python -m vizgrad`` as a real process: signals mid-run, bad input, and the example's report.

Each process imports torch (~2 s), so the bad-input cases start together and
are checked one by one.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import vizgrad
from vizgrad.cli import cli

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
EXAMPLE = REPO / "examples" / "linear_regression_autograd.py"
TIMEOUT = 120


def vizgrad_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "vizgrad", *(str(arg) for arg in args)]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start(*args: object, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(vizgrad_command(*args), cwd=cwd, env=_environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def assert_clean_error(returncode: int, stderr: str, exit_code: int, *fragments: str) -> None:
    """Exit status, exactly one ``Error:`` line with ``fragments``, and no traceback."""
    assert returncode == exit_code, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in stderr


def _wait_for_steps(process: subprocess.Popen, count: int) -> int:
    """Reads the script's ``done <i>`` lines until ``count`` steps are complete; returns how many."""
    done = 0
    for line in process.stdout:  # type: ignore[union-attr]
        if line.startswith("done "):
            done = int(line.split()[1]) + 1
            if done >= count:
                return done
    raise AssertionError(f"the script ended early: {process.stderr.read()}")  # type: ignore[union-attr]


# -- signals ----------------------------------------------------------------------------------------------------


def test_sigkill_mid_run_leaves_a_run_file_with_every_completed_step(tmp_path):
    process = start("render", DATA / "slow_loop.py", "--save", "run.vizgrad", "--", "1000", "0.05", cwd=tmp_path)
    try:
        done = _wait_for_steps(process, 8)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=TIMEOUT)
    finally:
        process.kill()
    run = vizgrad.load(tmp_path / "run.vizgrad")
    assert not run.complete
    assert len(run.steps) in (done, done + 1)  # the next step may have completed before the kill
    assert [step.index for step in run.steps] == list(range(len(run.steps)))
    assert all(loss is not None for loss in run.losses())
    # ...and it renders (in this process: the subprocess part is the kill).
    result = CliRunner().invoke(cli, ["render", str(tmp_path / "run.vizgrad"), "-o", str(tmp_path / "killed.html"),
                                      "--engine", "wasm"])
    assert result.exit_code == 0, result.output
    assert f"({len(run.steps)} steps)" in result.stderr
    assert (tmp_path / "killed.html").stat().st_size > 0


def test_sigint_mid_run_saves_what_was_recorded_and_exits_130(tmp_path):
    process = start("render", DATA / "slow_loop.py", "--save", "run.vizgrad", "-o", "out.html", "--engine", "wasm",
                    "--", "1000", "0.05", cwd=tmp_path)
    try:
        done = _wait_for_steps(process, 5)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    run = vizgrad.load(tmp_path / "run.vizgrad")
    assert run.complete  # finished and closed properly
    assert len(run.steps) in (done, done + 1)
    assert_clean_error(process.returncode, stderr, 130, f"interrupted (Ctrl-C) after {len(run.steps)} steps",
                       "wrote out.html and run file run.vizgrad")
    assert (tmp_path / "out.html").stat().st_size > 0


# -- bad input ----------------------------------------------------------------------------------------------------


def _make_inputs(folder: Path) -> None:
    (folder / "empty.vizgrad").write_bytes(b"")
    (folder / "noise.vizgrad").write_bytes(bytes(range(256)) * 8)
    # The head of a report, as templates/report.html.j2 writes it.
    (folder / "report.html").write_text('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                                        '<meta name="generator" content="vizgrad">\n<title>t</title>\n</head>\n</html>\n')
    connection = sqlite3.connect(folder / "foreign.db")
    connection.execute("CREATE TABLE t (x)")
    connection.commit()
    connection.close()
    # A run file stamped with a future schema version.
    run, run_store = vizgrad.store.open_for_recording(folder / "newer.vizgrad")
    run_store.close()
    connection = sqlite3.connect(folder / "newer.vizgrad")
    connection.execute("UPDATE meta SET value = '99' WHERE key = 'vizgrad_schema'")
    connection.commit()
    connection.close()


#: name -> (arguments, exit status, fragments of the Error line)
BAD_INPUTS = {
    "missing target": (["render", "nothere.py"], 1, ["no script or run file at nothere.py"]),
    "syntax error": (["render", DATA / "syntax_error.py"], 1, [f"{DATA / 'syntax_error.py'}:4: syntax error"]),
    "no backward": (["render", DATA / "no_backward.py"], 1, ["finished without calling backward()"]),
    "empty run file": (["render", "empty.vizgrad"], 1, ["empty.vizgrad is empty"]),
    "random bytes": (["info", "noise.vizgrad"], 1, ["not a SQLite database"]),
    "foreign database": (["render", "foreign.db"], 1, ["a SQLite database but not a vizgrad run file"]),
    "html report": (["render", "report.html"], 1, ["report.html is a vizgrad report", "open it in a browser"]),
    "newer run file": (["render", "newer.vizgrad"], 1, ["written by a newer vizgrad", "pip install -U vizgrad"]),
    "unknown format": (["render", DATA / "regression.py", "--format", "bmp"], 2, ["unknown format 'bmp'"]),
    "unwritable output": (["render", DATA / "regression.py", "-o", "no/such/folder/r.html"], 1, ["does not exist"]),
}


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-input")
    _make_inputs(folder)
    processes = {name: start(*args, cwd=folder) for name, (args, _, _) in BAD_INPUTS.items()}
    results = {}
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=TIMEOUT)
        results[name] = (process.returncode, stderr)
    return results


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_gets_one_error_line_and_no_traceback(bad_input_results, name):
    _, exit_code, fragments = BAD_INPUTS[name]
    returncode, stderr = bad_input_results[name]
    assert_clean_error(returncode, stderr, exit_code, *fragments)


def test_a_raising_script_shows_only_its_own_traceback(tmp_path):
    result = subprocess.run(vizgrad_command("render", DATA / "regression.py", "--save", "run.vizgrad", "--engine",
                                            "wasm", "--", "--steps", "9", "--fail-at", "4"),
                            cwd=tmp_path, env=_environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "raised ValueError: bad batch at step 4" in errors[0]
    assert result.stderr.count("Traceback") == 1
    frames = [line for line in result.stderr.splitlines() if line.lstrip().startswith("File ")]
    assert frames and all(str(DATA / "regression.py") in frame for frame in frames)
    assert len(vizgrad.load(tmp_path / "run.vizgrad").steps) == 4
    assert (tmp_path / "regression.html").exists()


def test_a_script_that_answers_help_exits_before_any_backward(tmp_path):
    # One pipe for both streams, its stdout buffered as usual: the order is the order a terminal shows.
    env = {name: value for name, value in _environment().items() if name != "PYTHONUNBUFFERED"}
    result = subprocess.run(vizgrad_command("render", DATA / "regression.py", "--", "--help"), cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, result.stdout
    assert "regression.py exited with status 0 before any backward(), so nothing was recorded" in errors[0]
    assert lines[0].startswith("usage: regression.py") and lines[-1] == errors[0]  # after the script's own output
    assert "Traceback" not in result.stdout
    assert list(tmp_path.iterdir()) == []  # no report


# -- names that are not UTF-8 --------------------------------------------------------------------------------


def test_a_script_whose_name_is_not_utf8_renders_in_a_real_process(tmp_path):
    script = os.fsdecode(b"caf\xe9.py")  # Latin-1 "café.py": its byte 0xE9 is no UTF-8
    (tmp_path / script).write_bytes((DATA / "regression.py").read_bytes())
    result = subprocess.run(vizgrad_command("render", script, "--engine", "wasm", "--", "--steps", "3"),
                            cwd=tmp_path, env=_environment(), capture_output=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b"vizgrad: wrote caf\\xe9.html (3 steps)\n"
    report = (tmp_path / os.fsdecode(b"caf\xe9.html")).read_bytes()
    assert report.startswith(b"<!DOCTYPE html>")
    assert b"<title>caf\\xe9.py</title>" in report
    assert report.rstrip().endswith(b"</html>")  # written whole


# -- the example ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not EXAMPLE.exists(), reason="the example is not there")
def test_rendering_the_example_equals_rendering_its_saved_run(tmp_path):
    live = subprocess.run(vizgrad_command("render", EXAMPLE, "-q", "--save", "run.vizgrad", "-o", "live.html"),
                          cwd=tmp_path, env=_environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert live.returncode == 0, live.stderr
    saved = CliRunner().invoke(cli, ["render", str(tmp_path / "run.vizgrad"), "-o", str(tmp_path / "saved.html")])
    assert saved.exit_code == 0, saved.output
    assert (tmp_path / "live.html").read_bytes() == (tmp_path / "saved.html").read_bytes()
    run = vizgrad.load(tmp_path / "run.vizgrad")
    assert run.losses()[-1] < 1e-3  # the example converges
    assert run.steps[-1].param("w").item() == pytest.approx(2.0, abs=0.01)
    assert run.steps[-1].param("b").item() == pytest.approx(3.0, abs=0.05)


def test_version_and_the_info_summary_start_without_torch(tmp_path, seed_run):
    """``vizgrad --version`` reads no tensor, so it does not import torch (seconds saved); ``vizgrad info``
    prints its summary before it imports torch to read the per-layer gradients."""
    seed_run.save(tmp_path / "run.vizgrad")
    probe = ("import sys, runpy, importlib.abc\n"
             "class Mark(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'torch': print('importing torch', flush=True)\n"
             "sys.meta_path.insert(0, Mark())\n"
             "sys.argv = ['vizgrad'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('vizgrad', run_name='__main__')\n"
             "except SystemExit as stop:\n    code = stop.code\n"
             "print('torch imported:', 'torch' in sys.modules)\nsys.exit(code)")
    result = subprocess.run([sys.executable, "-c", probe, "--version"], cwd=tmp_path, env=_environment(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("torch imported: False"), result.stdout
    result = subprocess.run([sys.executable, "-c", probe, "info", "run.vizgrad"], cwd=tmp_path, env=_environment(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    summary_end = next(at for at, line in enumerate(lines) if line.startswith("parameters:"))
    assert "steps:      50" in lines[:summary_end] and lines.index("importing torch") > summary_end
    assert any(line.startswith("gradients:") for line in lines[summary_end:])
