"""Tests for vizgrad.cli through click's CliRunner: every command and option, and each kind of bad input."""

from __future__ import annotations

import errno
import os
import sqlite3
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import vizgrad
from vizgrad import export, store
from vizgrad.cli import cli

DATA = Path(__file__).parent / "data"
REGRESSION = DATA / "regression.py"
#: A file name that is not UTF-8 (Latin-1 "café.py"): Python spells its byte 0xE9 as the surrogate U+DCE9.
LATIN1_SCRIPT = os.fsdecode(b"caf\xe9.py")


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


def assert_error(result, exit_code: int, *fragments: str, user_traceback: bool = False) -> str:
    """Exit status, one ``Error:`` line holding ``fragments``, and no traceback but the user's own."""
    assert result.exit_code == exit_code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]
    if user_traceback:
        assert "vizgrad/" not in result.stderr.replace(str(DATA), "")  # no frame of vizgrad itself
        assert "runpy" not in result.stderr
    else:
        assert "Traceback" not in result.stderr
    return errors[0]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def saved_run(tmp_path) -> Path:
    path = tmp_path / "saved.vizgrad"
    result = invoke("render", REGRESSION, "-q", "--save", path, "-o", tmp_path / "saved.html", "--", "--steps", "6")
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def export_calls(monkeypatch):
    """Replaces export.export with a spy that writes a small file and records its arguments."""
    calls = []

    def spy(run, path, fmt=None, **options):
        calls.append({"count": len(run.steps), "path": Path(path), "fmt": fmt, **options})
        Path(path).write_text(f"{fmt} of {len(run.steps)} steps")
        return [Path(path)]

    monkeypatch.setattr(export, "export", spy)
    return calls


# -- help and version -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["render"], ["demo"], ["info"]])
def test_every_command_has_help_with_an_example(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output
    assert "Usage: vizgrad" in result.output


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"vizgrad {vizgrad.__version__}"


# -- render a script ----------------------------------------------------------------------------------------


def test_render_a_script_writes_its_html_report_by_default(in_tmp):
    result = invoke("render", REGRESSION, "--", "--steps", "5")
    assert result.exit_code == 0, result.output
    assert "step 0 loss 955.2905" in result.stdout  # the script's own output passes through
    assert "argv ['--steps', '5']" in result.stdout
    assert result.stderr.strip() == "vizgrad: wrote regression.html (5 steps)"
    html = (in_tmp / "regression.html").read_text()
    assert html.startswith("<!DOCTYPE html>") or html.lower().startswith("<!doctype html>")
    assert "regression.py" in html  # the title


def test_script_runs_as_main_with_its_folder_on_sys_path_and_everything_restored(in_tmp):
    argv, path, main = sys.argv[:], sys.path[:], sys.modules["__main__"]
    result = invoke("render", DATA / "uses_sibling.py", "-o", "sibling.html")
    assert result.exit_code == 0, result.output
    assert "scale 3.0" in result.stdout
    assert (sys.argv, sys.path, sys.modules["__main__"]) == (argv, path, main)


def test_script_arguments_without_dashes_and_after_them(in_tmp):
    result = invoke("render", DATA / "uses_sibling.py", "0")  # a plain positional argument
    assert result.exit_code == 0, result.output
    result = invoke("render", REGRESSION, "-o", "r.html", "--", "--steps", "2", "--lr", "0.01")
    assert "argv ['--steps', '2', '--lr', '0.01']" in result.stdout


def test_quiet_silences_the_script_and_vizgrad(in_tmp, export_calls):
    result = invoke("render", REGRESSION, "-q", "--", "--steps", "3")
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""
    assert export_calls[0]["progress"] is False


@pytest.mark.parametrize(("output", "fmt", "expected_path", "expected_fmt"), [
    (None, None, "regression.html", "html"),
    ("out.gif", None, "out.gif", "gif"),
    ("out.mp4", None, "out.mp4", "mp4"),
    ("graph.dot", None, "graph.dot", "dot"),
    ("noext", "dot", "noext", "dot"),
    (None, "svg", "regression-frames", "svg"),
    (None, "gif", "regression.gif", "gif"),
    ("frames", "svg", "frames", "svg"),
])
def test_output_and_format_choose_the_export(in_tmp, export_calls, output, fmt, expected_path, expected_fmt):
    args = ["render", REGRESSION]
    args += ["-o", output] if output else []
    args += ["--format", fmt] if fmt else []
    result = invoke(*args, "--", "--steps", "3")
    assert result.exit_code == 0, result.output
    (call,) = export_calls
    assert call["path"] == Path(expected_path)
    assert call["fmt"] == expected_fmt
    assert call["count"] == 3


def test_every_steps_and_engine_reach_the_export(in_tmp, export_calls):
    result = invoke("render", REGRESSION, "--every", "3", "--steps", "1:4", "--engine", "wasm", "--", "--steps", "8")
    assert result.exit_code == 0, result.output
    (call,) = export_calls
    assert (call["every"], call["steps"], call["engine"], call["progress"]) == (3, "1:4", "wasm", None)


def test_real_outputs_dot_and_svg(in_tmp):
    result = invoke("render", REGRESSION, "-o", "graph.dot", "--", "--steps", "3")
    assert result.exit_code == 0, result.output
    assert (in_tmp / "graph.dot").read_text().startswith("digraph")
    result = invoke("render", REGRESSION, "--format", "svg", "--every", "2", "--engine", "wasm", "--", "--steps", "3")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (in_tmp / "regression-frames").iterdir()) == ["step-000000.svg", "step-000002.svg"]
    assert "wrote 2 SVG files in" in result.stderr


def test_save_writes_the_run_file_as_it_records(tmp_path):
    run_file = tmp_path / "run.vizgrad"
    result = invoke("render", REGRESSION, "-q", "--save", run_file, "-o", tmp_path / "r.html", "--", "--steps", "7")
    assert result.exit_code == 0, result.output
    run = vizgrad.load(run_file)
    assert len(run.steps) == 7 and run.complete
    assert run.meta["script"] == str(REGRESSION) and run.meta["argv"] == ["--steps", "7"]
    assert run.param_names() == ["w", "b"]


def test_report_of_a_saved_run_is_the_report_of_the_script(tmp_path, saved_run):
    result = invoke("render", saved_run, "-o", tmp_path / "from-file.html")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stderr and "(6 steps)" in result.stderr
    assert (tmp_path / "from-file.html").read_text() == (tmp_path / "saved.html").read_text()


# -- names that are not UTF-8, and outputs never left half-written ---------------------------------------


def test_a_script_whose_name_is_not_utf8_renders_with_the_name_escaped(in_tmp):
    (in_tmp / LATIN1_SCRIPT).write_bytes(REGRESSION.read_bytes())
    result = invoke("render", LATIN1_SCRIPT, "--save", "run.vizgrad", "--", "--steps", "3")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == r"vizgrad: wrote caf\xe9.html and run file run.vizgrad (3 steps)"
    report = in_tmp / os.fsdecode(b"caf\xe9.html")  # the file itself keeps the script's real name
    html = report.read_text(encoding="utf-8")
    assert r"<title>caf\xe9.py</title>" in html
    meta = vizgrad.load(in_tmp / "run.vizgrad").meta
    assert (meta["title"], meta["script"]) == (r"caf\xe9.py", r"caf\xe9.py")


def test_a_run_file_titled_with_an_undecodable_name_renders(in_tmp):
    # Run files recorded before names were escaped keep the raw surrogate in their title.
    with vizgrad.record(save=in_tmp / "old.vizgrad") as run:
        run.meta["title"] = LATIN1_SCRIPT
        w = torch.ones(2, requires_grad=True)
        (w * 3).sum().backward()
    result = invoke("render", "old.vizgrad", "-o", "old.html")
    assert result.exit_code == 0, result.output
    assert r"<title>caf\xe9.py</title>" in (in_tmp / "old.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(("output", "fragment"), [("r.html", "cannot write the report to 'r.html'"),
                                                  ("graph.dot", "cannot write 'graph.dot'")])
def test_a_failed_write_keeps_the_previous_output_whole(in_tmp, saved_run, monkeypatch, output, fragment):
    (in_tmp / output).write_text("previous output")
    names = sorted(path.name for path in in_tmp.iterdir())
    real_replace = os.replace

    def disk_full(source, target):
        if Path(target).name == output:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", disk_full)
    assert_error(invoke("render", saved_run, "-o", output), 1, fragment, "No space left on device")
    assert (in_tmp / output).read_text() == "previous output"
    assert sorted(path.name for path in in_tmp.iterdir()) == names  # and no temporary file left beside it


# -- what was written --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    (["-o", "x.gif", "--every", "5"], "wrote x.gif (4 frames of 18 recorded steps)"),
    (["-o", "x.mp4"], "wrote x.mp4 (18 frames of 18 recorded steps)"),
    (["--steps", "2:8", "--every", "2"], "wrote regression.html (showing 3 of 18 recorded steps)"),
    ([], "wrote regression.html (18 steps)"),
])
def test_the_message_says_how_many_steps_were_drawn_of_how_many(in_tmp, export_calls, options, message):
    result = invoke("render", REGRESSION, *options, "--", "--steps", "18")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == f"vizgrad: {message}"


def test_the_message_for_a_run_file_and_for_a_script_that_failed(in_tmp, saved_run, export_calls):
    result = invoke("render", saved_run, "-o", "x.gif", "--every", "5")
    assert result.stderr.strip() == "vizgrad: wrote x.gif (2 frames of 6 recorded steps)"
    result = invoke("render", REGRESSION, "-o", "y.gif", "--every", "2", "--", "--steps", "9", "--fail-at", "5")
    assert_error(result, 1, "raised ValueError: bad batch at step 5",
                 "wrote y.gif (3 frames of the 5 steps recorded before it)", user_traceback=True)


def test_the_message_for_dot_and_svg_outputs(in_tmp):
    result = invoke("render", REGRESSION, "-o", "graph.dot", "--", "--steps", "3")
    assert result.stderr.strip() == "vizgrad: wrote graph.dot (1 graph of 3 recorded steps)"
    result = invoke("render", REGRESSION, "--format", "svg", "--every", "2", "--engine", "wasm", "--", "--steps", "3")
    assert result.stderr.strip() == (f"vizgrad: wrote 2 SVG files in {in_tmp / 'regression-frames'} "
                                     "(2 frames of 3 recorded steps)")


# -- render a run file --------------------------------------------------------------------------------------


def test_render_a_run_file_by_default_name(in_tmp, saved_run, export_calls):
    result = invoke("render", saved_run, "--steps", "2:")
    assert result.exit_code == 0, result.output
    assert export_calls[0]["path"] == Path("saved.html") and export_calls[0]["count"] == 6
    assert export_calls[0]["steps"] == "2:"


def test_a_run_file_is_recognised_by_content_whatever_its_name(in_tmp, saved_run, export_calls):
    renamed = in_tmp / "run.data"
    renamed.write_bytes(saved_run.read_bytes())
    result = invoke("render", renamed, "-o", "x.html")
    assert result.exit_code == 0, result.output


def test_render_a_run_file_and_save_a_copy(tmp_path, saved_run, export_calls):
    result = invoke("render", saved_run, "-o", tmp_path / "x.html", "--save", tmp_path / "copy.vizgrad")
    assert result.exit_code == 0, result.output
    assert vizgrad.load(tmp_path / "copy.vizgrad").losses() == vizgrad.load(saved_run).losses()


def test_a_run_file_takes_no_script_arguments(saved_run):
    assert_error(invoke("render", saved_run, "--", "--steps", "3"), 2, "is a run file", "only for scripts")


# -- info and demo ---------------------------------------------------------------------------------------


def test_info_summarises_a_run_file(saved_run):
    result = invoke("info", saved_run)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"run file:   {saved_run} (complete)"
    assert lines[1] == "steps:      6"
    assert lines[2] == "graph:      10 nodes, 9 edges (1 distinct topology)"
    assert lines[3] == "loss:       first 955.291, last 8.63133, min 8.63133 (step 5)"
    assert lines[4] == "parameters: w (1, 1), b (1, 1)"
    assert "title:      regression.py" in lines
    # Per-layer gradient norms of the first and last iteration (a step each here: no optimizer).
    run = vizgrad.load(saved_run)
    names, norms = run.grad_norms(by="param")
    _, rms = run.grad_norms(by="param", measure="rms")
    _, means = run.grad_norms(by="param", measure="mean")
    at = lines.index("gradients:  ‖.grad‖ per parameter, RMS and mean |g| in brackets; first iteration -> last")
    for k, name in enumerate(names):
        row = next(line for line in lines[at + 1:] if line.split()[0] == name)
        assert (f"{norms[0, k]:.3e} ({rms[0, k]:.3e}, {means[0, k]:.3e}) -> "
                f"{norms[5, k]:.3e} ({rms[5, k]:.3e}, {means[5, k]:.3e})") in row
        assert row.endswith(f"x{norms[5, k] / norms[0, k]:.3g}")


def test_info_shows_iterations_and_layers_of_a_model_trained_with_an_optimizer(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with vizgrad.record(model, save=tmp_path / "mlp.vizgrad") as run:
        for _ in range(3):
            for _ in range(2):
                loss = model(torch.randn(5, 3)).pow(2).mean() / 2
                loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    lines = invoke("info", tmp_path / "mlp.vizgrad").output.splitlines()
    assert "iterations: 3 (SGD; 2 steps each)" in lines
    first, last = run.iterations()[0].losses["loss"], run.iterations()[-1].losses["loss"]
    assert f"  loss per iteration (summed over its steps): first {first:.6g}, last {last:.6g}" in lines
    at = lines.index("gradients:  ‖.grad‖ per module (depth 1), RMS and mean |g| in brackets; "
                     "first iteration -> last")
    names, norms = run.grad_norms(by="module", depth=1)
    assert names == ["0", "2"]
    for k, name in enumerate(names):  # the .grad of each iteration's last step: what optimizer.step() used
        assert lines[at + 1 + k].split()[:2] == [name, f"{norms[1, k]:.3e}"]


def test_info_of_an_interrupted_recording(tmp_path):
    run, _ = store.open_for_recording(tmp_path / "open.vizgrad")  # never closed
    result = invoke("info", tmp_path / "open.vizgrad")
    assert result.exit_code == 0, result.output
    assert "incomplete" in result.output and "steps:      0" in result.output


def test_demo_writes_the_seed_report(tmp_path):
    result = invoke("demo", "-o", tmp_path / "demo.html", "--steps", "20", "--engine", "wasm")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {tmp_path / 'demo.html'}"
    assert "<html" in (tmp_path / "demo.html").read_text().lower()


def test_demo_into_a_missing_folder(tmp_path):
    assert_error(invoke("demo", "-o", tmp_path / "no" / "demo.html"), 1, "does not exist")


# -- bad input ------------------------------------------------------------------------------------------------


def test_missing_target(in_tmp):
    assert_error(invoke("render", "nothere.py"), 1, "no script or run file at nothere.py", "check the path")


def test_target_is_a_folder(in_tmp):
    assert_error(invoke("render", in_tmp), 1, "is a folder")


def test_syntax_error_names_file_and_line(in_tmp):
    assert_error(invoke("render", DATA / "syntax_error.py"), 1, f"{DATA / 'syntax_error.py'}:4: syntax error",
                 "fix the script")
    assert not (in_tmp / "syntax_error.html").exists()


def test_a_report_given_as_the_target_is_not_run_nor_overwritten(in_tmp, saved_run):
    report = in_tmp / "saved.html"
    content = report.read_bytes()
    (in_tmp / "report.txt").write_bytes(content)  # recognised by content whatever its name
    for target in ("saved.html", "report.txt"):
        assert_error(invoke("render", target), 1, f"{target} is a vizgrad report, not a script or a run file",
                     "open it in a browser", "render the run file written with --save")
    assert report.read_bytes() == content


def test_an_html_page_given_as_the_target(in_tmp):
    (in_tmp / "page.htm").write_text("<html><body>hello</body></html>")
    (in_tmp / "page.txt").write_text("\n<!doctype HTML>\n<html><body>hello</body></html>")
    (in_tmp / "notes.html").write_text("print('a .html name is enough')")
    for target in ("page.htm", "page.txt", "notes.html"):
        assert_error(invoke("render", target), 1, f"{target} is an HTML page, not a Python script or a run file",
                     "give a .py script")


def test_binary_target(in_tmp):
    (in_tmp / "blob.bin").write_bytes(bytes(range(256)))
    assert_error(invoke("render", "blob.bin"), 1, "neither a Python script nor a vizgrad run file")


def test_a_raising_script_shows_its_error_and_keeps_the_steps_before_it(in_tmp):
    result = invoke("render", REGRESSION, "--save", "run.vizgrad", "--", "--steps", "9", "--fail-at", "4")
    message = assert_error(result, 1, "raised ValueError: bad batch at step 4", "wrote regression.html",
                           "run file run.vizgrad", "the 4 steps recorded before it", user_traceback=True)
    assert "Traceback (most recent call last)" in result.stderr
    assert f'File "{REGRESSION}", line ' in result.stderr
    assert 'raise ValueError(f"bad batch at step {i}")' in result.stderr
    assert result.stderr.index("Traceback") < result.stderr.index(message)
    assert len(vizgrad.load(in_tmp / "run.vizgrad").steps) == 4
    assert (in_tmp / "regression.html").exists()


def test_a_script_raising_before_any_step(in_tmp):
    result = invoke("render", REGRESSION, "--", "--fail-at", "0")
    assert_error(result, 1, "raised ValueError before any backward(): bad batch at step 0", user_traceback=True)
    assert not (in_tmp / "regression.html").exists()


def test_a_script_that_never_calls_backward(in_tmp):
    result = invoke("render", DATA / "no_backward.py")
    assert_error(result, 1, "finished without calling backward()", "nothing to render")
    assert "loss 6.0" in result.stdout


def test_a_script_that_exits_before_any_backward(in_tmp):
    result = invoke("render", REGRESSION, "--", "--help")  # argparse prints its help and exits 0
    message = assert_error(result, 1, "regression.py exited with status 0 before any backward()",
                           "nothing was recorded")
    assert "finished without calling backward()" not in result.output
    assert result.output.index("usage: regression.py") < result.output.index(message)  # after its own output
    assert not (in_tmp / "regression.html").exists()
    result = invoke("render", REGRESSION, "--", "--no-such-option")  # argparse's error: status 2
    assert_error(result, 2, "regression.py exited with status 2 before any backward()", "nothing was recorded")
    assert "unrecognized arguments: --no-such-option" in result.stderr


def test_a_script_exit_status_is_kept(in_tmp):
    result = invoke("render", DATA / "uses_sibling.py", "3")
    assert_error(result, 3, "exited with status 3", "wrote uses_sibling.html")


@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("empty.vizgrad", b"", "is empty, not a vizgrad run file"),
    ("noise.vizgrad", bytes(range(256)) * 8, "not a vizgrad run file (not a SQLite database)"),
])
def test_bad_run_files(in_tmp, name, content, fragment):
    (in_tmp / name).write_bytes(content)
    for command in ("render", "info"):
        assert_error(invoke(command, name), 1, fragment, "vizgrad render SCRIPT --save RUN")


def test_foreign_sqlite_database(in_tmp):
    connection = sqlite3.connect(in_tmp / "other.db")
    connection.execute("CREATE TABLE t (x)")
    connection.commit()
    connection.close()
    for command in ("render", "info"):
        assert_error(invoke(command, "other.db"), 1, "is a SQLite database but not a vizgrad run file")


def test_run_file_from_a_newer_vizgrad(saved_run):
    connection = sqlite3.connect(saved_run)
    connection.execute("UPDATE meta SET value = '99' WHERE key = 'vizgrad_schema'")
    connection.commit()
    connection.close()
    for command in ("render", "info"):
        assert_error(invoke(command, saved_run), 1, "written by a newer vizgrad", "pip install -U vizgrad")


def test_missing_run_file_for_info(in_tmp):
    assert_error(invoke("info", "nope.vizgrad"), 1, "no run file at nope.vizgrad")


def test_unknown_format(in_tmp):
    assert_error(invoke("render", REGRESSION, "--format", "png"), 2, "unknown format 'png'", "html, svg, dot, gif, mp4")
    assert_error(invoke("render", REGRESSION, "-o", "out.pdf"), 2, "cannot tell the format", "'.pdf'")


def test_output_that_cannot_be_written(in_tmp):
    # Checked before the script runs: no recording is wasted.
    result = invoke("render", REGRESSION, "-o", in_tmp / "missing" / "r.html")
    assert_error(result, 1, "folder", "does not exist")
    assert result.stdout == ""
    (in_tmp / "folder.html").mkdir()
    assert_error(invoke("render", REGRESSION, "-o", "folder.html"), 1, "it is a folder")
    assert_error(invoke("render", REGRESSION, "--save", in_tmp / "missing" / "run.vizgrad"), 1,
                 "cannot write run file", "does not exist")
    (in_tmp / "notes.txt").write_text("keep me")
    assert_error(invoke("render", REGRESSION, "--save", "notes.txt"), 1, "is not a vizgrad run file")
    assert (in_tmp / "notes.txt").read_text() == "keep me"


def test_bad_step_range(in_tmp):
    assert_error(invoke("render", REGRESSION, "--steps", "x:y", "--", "--steps", "3"), 2, "steps")


# -- Ctrl-C -----------------------------------------------------------------------------------------------------


def test_ctrl_c_inside_backward_finishes_the_step_then_stops(in_tmp):
    result = invoke("render", DATA / "self_interrupt.py", "--save", "run.vizgrad", "--", "inside")
    assert_error(result, 130, "interrupted (Ctrl-C) after 4 steps", "wrote self_interrupt.html")
    assert "done 2" in result.stdout and "done 3" not in result.stdout  # stopped right after step 3's backward
    run = vizgrad.load(in_tmp / "run.vizgrad")
    assert len(run.steps) == 4 and run.complete  # the step in progress was finished and saved


def test_ctrl_c_outside_backward_stops_at_once(in_tmp):
    result = invoke("render", DATA / "self_interrupt.py", "--save", "run.vizgrad", "--", "outside")
    assert_error(result, 130, "interrupted (Ctrl-C) after 3 steps")
    assert len(vizgrad.load(in_tmp / "run.vizgrad").steps) == 3


def test_second_ctrl_c_aborts_without_a_report(in_tmp):
    result = invoke("render", DATA / "self_interrupt.py", "--save", "run.vizgrad", "--", "twice")
    assert_error(result, 130, "interrupted twice", "run.vizgrad keeps the 3 steps")
    assert not (in_tmp / "self_interrupt.html").exists()
    assert len(vizgrad.load(in_tmp / "run.vizgrad").steps) == 3


def test_ctrl_c_while_writing_the_output(in_tmp, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export", interrupted)
    result = invoke("render", REGRESSION, "--save", "run.vizgrad", "--", "--steps", "2")
    assert_error(result, 130, "interrupted (Ctrl-C)")
    assert len(vizgrad.load(in_tmp / "run.vizgrad").steps) == 2


def test_view_options_reach_every_output(in_tmp):
    series = DATA / "time_series.py"
    result = invoke("render", series, "-q", "-o", "folded.dot", "--", "--steps", "1", "--length", "12")
    assert result.exit_code == 0, result.output
    folded = Path("folded.dot").read_text()
    assert "LSTMCell x12 (recurrent)" in folded and folded.count('class="vg-fold"') == 3
    result = invoke("render", series, "-q", "-o", "unfolded.dot", "--unfold", "lstm1", "--depth", "1", "--",
                    "--steps", "1", "--length", "12")
    assert result.exit_code == 0, result.output
    unfolded = Path("unfolded.dot").read_text()
    assert unfolded.count('class="vg-module"') == 12 and unfolded.count('class="vg-fold"') == 2
    result = invoke("render", series, "-q", "-o", "boxed.dot", "--depth", "0", "--", "--steps", "1", "--length", "5")
    assert Path("boxed.dot").read_text().count('class="vg-module"') == 1  # the whole model, one box


def test_bad_view_options_are_usage_errors(in_tmp):
    assert_error(invoke("render", REGRESSION, "--max-nodes", "0"), 2, "--max-nodes")
    assert_error(invoke("render", REGRESSION, "--depth", "-1"), 2, "--depth")


NAN_SCRIPT = DATA / "nan_at_step.py"


def test_fail_on_exits_with_status_3_after_writing_the_report(tmp_path):
    out = tmp_path / "nan.html"
    result = invoke("render", NAN_SCRIPT, "-q", "-o", out, "--fail-on", "nonfinite", "--activations")
    error = assert_error(result, 3, "1 finding of --fail-on nonfinite", "step 2", "model.1 (Root)", f"wrote {out}")
    assert "forward pass" in error
    assert out.exists() and out.stat().st_size > 0
    clean = invoke("render", NAN_SCRIPT, "-q", "-o", tmp_path / "clean.html", "--fail-on", "nonfinite", "--",
                   "--at", "9")
    assert clean.exit_code == 0, clean.output
    other_kind = invoke("render", NAN_SCRIPT, "-q", "-o", tmp_path / "other.html", "--fail-on", "dead")
    assert other_kind.exit_code == 0, other_kind.output


def test_fail_on_a_saved_run_and_a_bad_kind(tmp_path):
    saved = tmp_path / "nan.vizgrad"
    assert invoke("render", NAN_SCRIPT, "-q", "--save", saved, "-o", tmp_path / "a.html").exit_code == 0
    result = invoke("render", saved, "-o", tmp_path / "b.html", "--fail-on", "nonfinite", "--fail-on", "dead")
    # Without --activations the origin is where the forward pass's NaN first meets a gradient, and it says so.
    assert_error(result, 3, "--fail-on nonfinite/dead", "AddmmBackward0 in model.2 (Linear)", "activations=True")
    bad = invoke("render", saved, "--fail-on", "nan")
    assert bad.exit_code == 2 and "'nan' is not one of" in bad.stderr
    activations = invoke("render", saved, "--activations", "-o", tmp_path / "c.html")
    assert_error(activations, 2, "--activations checks a script's forward pass")


def test_info_prints_the_findings(tmp_path):
    saved = tmp_path / "nan.vizgrad"
    assert invoke("render", NAN_SCRIPT, "-q", "--save", saved, "-o", tmp_path / "a.html", "--activations").exit_code == 0
    result = invoke("info", saved)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    at = lines.index("findings:   1")
    assert lines[at + 1].startswith("  [nonfinite] step 2, 2 steps: the forward pass: model.1 (Root)")
    assert lines[at + 1].endswith(f"({NAN_SCRIPT}:{_line(NAN_SCRIPT, 'model(x).sum()')})")


def _line(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_info_says_when_there_are_no_findings(saved_run):
    result = invoke("info", saved_run)
    assert "findings:   none" in result.output
