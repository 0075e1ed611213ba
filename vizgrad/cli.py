"""The ``vizgrad`` command line: render a script or a run file, the demo, and a run file's summary."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import click

from vizgrad import __version__, ranks
from vizgrad.errors import OutputError, UsageError, VizgradError
from vizgrad.findings import KINDS as FINDING_KINDS
from vizgrad.graph import format_shape
from vizgrad.scripts import displayable
from vizgrad.view import DEFAULT_MAX_NODES, ViewOptions

__all__ = ["main", "cli", "CommandError", "EXIT_INTERRUPTED", "EXIT_FINDINGS"]

#: Exit status after Ctrl-C, as shells report a process stopped by SIGINT.
EXIT_INTERRUPTED = 130
#: Exit status of ``vizgrad render --fail-on KIND`` when the run has such a finding (the output is written).
EXIT_FINDINGS = 3
#: Suffixes that mark a run file even before its content is checked.
_RUN_SUFFIXES = (".vizgrad", ".db", ".sqlite", ".sqlite3")
_SCRIPT_SUFFIXES = (".py", ".pyw")


class CommandError(click.ClickException):
    """A one-line ``Error: ...`` on stderr and an exit status (1 unless said otherwise)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(_one_line(message))
        self.exit_code = exit_code


def _one_line(text: object) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return displayable("; ".join(lines))  # file names in messages may not be UTF-8


class _Commands(click.Group):
    """The command group; the one place where vizgrad's errors become ``Error: ...`` lines."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VizgradError as error:
            raise CommandError(str(error), 2 if isinstance(error, UsageError) else 1) from None
        except KeyboardInterrupt:
            raise CommandError("interrupted (Ctrl-C)", EXIT_INTERRUPTED) from None


@click.group("vizgrad", cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="vizgrad", message="%(prog)s %(version)s")
def cli() -> None:
    """See how gradients flow through a PyTorch program, step by step.

    \b
    Examples:
      vizgrad render train.py          # record every backward(): train.html
      vizgrad render train.py --save run.vizgrad -- --epochs 3
      vizgrad render run.vizgrad -o run.gif
      vizgrad info run.vizgrad
      vizgrad demo                     # the seed's regression: vizgrad-demo.html
    """


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``vizgrad`` command (and ``python -m vizgrad``)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="vizgrad")


# -- render ---------------------------------------------------------------------------------------------------


@cli.command(short_help="Draw the gradients of a script or a run file, step by step.")
@click.argument("target", type=click.Path(path_type=Path))
@click.argument("script_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- ARGS]...")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Where to write: a file, or a folder for svg frames (default: TARGET's name with the "
                   "format's suffix, or NAME-frames for svg, in the current folder).")
@click.option("--format", "fmt", metavar="FORMAT",
              help="html, svg, dot, gif or mp4 (default: from the output's suffix, else html).")
@click.option("--save", type=click.Path(path_type=Path), metavar="RUN",
              help="Also write the run file RUN, step by step as the script records.")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Draw every N-th step.")
@click.option("--steps", metavar="A:B", help="Draw only steps A to B-1 (like a Python slice; either end optional).")
@click.option("--engine", type=click.Choice(["auto", "dot", "wasm"]), default="auto", show_default=True,
              help="Graphviz for the layouts: dot (the system one), wasm (the embedded one) or auto "
                   "(dot when installed, else wasm).")
@click.option("--depth", type=click.IntRange(min=0), default=None, metavar="N",
              help="Draw modules nested less than N deep open, deeper ones as one box each (0: every top-level "
                   "module is a box; default: the most detailed view within --max-nodes).")
@click.option("--max-nodes", type=click.IntRange(min=1), default=DEFAULT_MAX_NODES, show_default=True, metavar="N",
              help="The most boxes and nodes the default view draws (it collapses modules and folds repeats to fit).")
@click.option("--expand", multiple=True, metavar="PATH",
              help="Draw this module open (repeatable): a path such as transformer.h.3, or lstm1@5 for one call.")
@click.option("--collapse", multiple=True, metavar="PATH", help="Draw this module as one box (repeatable).")
@click.option("--unfold", multiple=True, metavar="PATH",
              help="Draw the instances of a fold one by one (repeatable): its module or container, e.g. "
                   "transformer.h or lstm1.")
@click.option("--scale", type=click.Choice(["rms", "norm"]), default="rms", show_default=True,
              help="What colours show: gradient RMS (norm / sqrt(elements): tensor size does not look like health) "
                   "or norm.")
@click.option("--fail-on", "fail_on", multiple=True, type=click.Choice(FINDING_KINDS), metavar="KIND",
              help=f"Exit with status {EXIT_FINDINGS} (after writing the output) when the run has a finding of this "
                   f"kind (repeatable): {', '.join(FINDING_KINDS)}.")
@click.option("--activations", is_flag=True,
              help="Check module outputs for NaN/Inf in the forward pass, so a non-finite loss is traced to the "
                   "module that made it (scripts only).")
@click.option("-q", "--quiet", is_flag=True, help="Silence the script's output, vizgrad's messages and progress bars.")
def render(target: Path, script_args: tuple[str, ...], output: Path | None, fmt: str | None, save: Path | None,
           every: int, steps: str | None, engine: str, depth: int | None, max_nodes: int, expand: tuple[str, ...],
           collapse: tuple[str, ...], unfold: tuple[str, ...], scale: str, fail_on: tuple[str, ...],
           activations: bool, quiet: bool) -> None:
    """Record a script's gradients (or read a saved run) and draw every step.

    TARGET is a Python script, run unmodified as __main__ with ARGS (put them
    after --), every backward() it calls recorded as one step; or a run file
    written with --save or vizgrad.record(save=...).

    \b
    Examples:
      vizgrad render examples/linear_regression_autograd.py
      vizgrad render train.py -o train.gif --every 10 -- --lr 0.01
      vizgrad render train.py --save train.vizgrad -q
      vizgrad render train.vizgrad --steps 100:200 -o steps.html
      vizgrad render gpt.py --expand transformer.h.3 --unfold transformer.h
      vizgrad render train.py --fail-on nonfinite -q   # status 3 when a NaN/Inf appeared
    """
    from vizgrad import export

    is_run = _is_run_target(target)
    merged = [target, *map(Path, script_args)] if is_run and script_args and all(
        _is_sqlite(Path(arg)) for arg in script_args) else [target]  # the ranks' files of one job
    if is_run and script_args and len(merged) == 1:
        raise UsageError(f"{target} is a run file: arguments after it ({' '.join(script_args)}) are only for scripts")
    if len(merged) > 1 and save is not None:
        raise UsageError("--save copies one run file; the ranks' files are merged as they are, each kept")
    if is_run and activations:
        raise UsageError(f"{target} is a run file: --activations checks a script's forward pass as it runs; "
                         "record the script again with it")
    fmt, output = _choose_output(export, target, output, fmt)
    _check_writable(output, fmt)
    view = ViewOptions(depth=depth, max_nodes=max_nodes, expand=expand, collapse=collapse, unfold=unfold)
    options = {"every": every, "steps": steps, "engine": engine, "progress": False if quiet else None, "view": view,
               "scale": scale}
    if is_run:
        _render_run_file(export, merged, output, fmt, save, options, quiet, fail_on)
    else:
        _render_script(export, target, script_args, output, fmt, save, options, quiet, fail_on, activations)


def _fail_on(run: Any, kinds: Sequence[str], wrote: str) -> None:
    """Exits with :data:`EXIT_FINDINGS` when ``run`` has a finding of one of ``kinds`` (``--fail-on``)."""
    if not kinds:
        return
    found = [finding for finding in run.findings() if finding.kind in kinds]
    if found:
        first = found[0]
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        raise CommandError(f"{len(found)} finding{'s' if len(found) > 1 else ''} of --fail-on "
                           f"{'/'.join(kinds)}: {_one_line(first)}{more}; {wrote}", EXIT_FINDINGS)


def _is_sqlite(path: Path) -> bool:
    """Whether ``path`` is a SQLite file (a run file, or a database load() then names)."""
    from vizgrad.store import is_sqlite_file

    return is_sqlite_file(path)


def _is_run_target(target: Path) -> bool:
    """Whether TARGET is a run file (by content, then by suffix) rather than a script."""
    from vizgrad.scripts import check_script

    if target.suffix.lower() in _SCRIPT_SUFFIXES:
        return False
    from vizgrad.store import is_sqlite_file

    if is_sqlite_file(target):  # a foreign database too: load() then says what it is
        return True
    if target.suffix.lower() in _RUN_SUFFIXES:
        return True
    check_script(target)  # neither: it must at least be a script (missing, binary... fail here)
    return False


def _choose_output(export: Any, target: Path, output: Path | None, fmt: str | None) -> tuple[str, Path]:
    if output is not None:
        return export.format_for(output, fmt), output
    fmt = export.format_for(Path(f"{target.stem}.html"), fmt)
    # SVG frames go to a folder, one file per step.
    return fmt, Path(f"{target.stem}-frames" if fmt == "svg" else f"{target.stem}.{fmt}")


def _check_writable(output: Path, fmt: str) -> None:
    """Fails before any recording when the output cannot be written, rather than after it."""
    if output.is_dir() and fmt != "svg":
        raise OutputError(f"cannot write {output}: it is a folder; give a file name such as {output / 'report'}.{fmt}")
    parent = output.absolute().parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {output}: folder {parent} does not exist; create it or choose another -o")
    if not os.access(parent, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise OutputError(f"cannot write {output}: permission denied; choose another -o")


def _render_run_file(export: Any, targets: Sequence[Path], output: Path, fmt: str, save: Path | None,
                     options: dict[str, Any], quiet: bool, fail_on: Sequence[str] = ()) -> None:
    from vizgrad import merge, store

    run = store.load(targets[0]) if len(targets) == 1 else merge.load_ranks(targets)
    _escape_names(run.meta)
    try:
        if save is not None:
            store.save(run, save)
        written = export.export(run, output, fmt, **options)
        _fail_on(run, fail_on, f"wrote {_written(written, fmt)}")
        _say(quiet, f"wrote {_written(written, fmt)} ({_contents(fmt, written, len(run.steps), options)})")
    finally:
        _disconnect(run)


def _escape_names(meta: dict[str, Any]) -> None:
    """Makes the names in a loaded run's meta encodable (older run files may hold raw non-UTF-8 bytes)."""
    for key in ("title", "script"):
        if key in meta:
            meta[key] = displayable(str(meta[key]))


def _render_script(export: Any, script: Path, args: Sequence[str], output: Path, fmt: str, save: Path | None,
                   options: dict[str, Any], quiet: bool, fail_on: Sequence[str] = (), activations: bool = False) -> None:
    from vizgrad.scripts import format_user_traceback, run_script

    with _run_file(save) as run_path:
        outcome = run_script(script, args, save=run_path, quiet=quiet, activations=activations)
        run = outcome.run
        try:
            count = len(run.steps)
            if outcome.aborted:
                kept = f"; {save} keeps the {count} steps recorded" if save is not None else ""
                raise CommandError(f"interrupted twice (Ctrl-C): stopped without writing {output}{kept}",
                                   EXIT_INTERRUPTED)
            if outcome.error is not None:
                click.echo(displayable(format_user_traceback(outcome.error, script)), err=True, nl=False)
            problem = _problem(script, outcome, count)
            if count == 0:
                raise CommandError(problem or f"{script} finished without calling backward(), so there is nothing "
                                              "to render; vizgrad records each loss.backward() as one step",
                                   _status(outcome))
            place = run.meta.get("distributed")
            if place is not None:  # one rank of a torchrun job: rank 0 draws them all
                if place["rank"] != 0:
                    _say(quiet, f"rank {place['rank']}: wrote run file {run.store.path}; rank 0 writes {output}")
                    return
                run.store.disconnect()
                run = _merged_ranks(run_path, place, quiet)
                count = len(run.steps)
            written = export.export(run, output, fmt, **options)
            kept = save if place is None else ranks.rank_path(save, 0).name.replace(".rank0", ".rank*") \
                if save is not None else None
            wrote = f"wrote {_written(written, fmt)}" + (f" and run file {kept}" if kept is not None else "")
            if problem is not None:
                raise CommandError(f"{problem}; {wrote} ({_contents(fmt, written, count, options, before=True)})",
                                   _status(outcome))
            _fail_on(run, fail_on, wrote)
            _say(quiet, f"{wrote} ({_contents(fmt, written, count, options)})")
        finally:
            _disconnect(run)


def _disconnect(run: Any) -> None:
    """Lets go of a run's file (each rank's, for a merged run)."""
    from vizgrad.merge import RankedRun

    for each in run.ranks.values() if isinstance(run, RankedRun) else (run,):
        each.store.disconnect()


#: How long rank 0 of a torchrun job waits for the other ranks' run files to be complete, in seconds.
RANK_WAIT = float(os.environ.get("VIZGRAD_RANK_WAIT", "120"))


def _merged_ranks(run_path: Path, place: dict[str, Any], quiet: bool) -> Any:
    """Rank 0's end of a torchrun job: waits for the ranks' files on this host to be complete, then merges them.

    A rank whose file does not appear (another host) or stays incomplete
    (it died) within :data:`RANK_WAIT` seconds is merged as it is, or named
    missing in the report.
    """
    from vizgrad import merge, store

    paths = [ranks.rank_path(run_path, rank) for rank in range(int(place["world_size"]))]
    deadline = time.monotonic() + RANK_WAIT
    waiting = paths[1:]
    if waiting:
        _say(quiet, f"rank 0: waiting for the run files of {len(waiting)} more rank(s)")
    while waiting and time.monotonic() < deadline:
        waiting = [path for path in waiting if not _complete(store, path)]
        if waiting:
            time.sleep(0.2)
    return merge.load_ranks([path for path in paths if path.exists()])


def _complete(store: Any, path: Path) -> bool:
    """Whether the run file at ``path`` exists and its recording has ended."""
    if not path.exists():
        return False
    try:
        run = store.load(path)
    except VizgradError:  # still being created
        return False
    try:
        return bool(run.complete)
    finally:
        run.store.disconnect()


@contextlib.contextmanager
def _run_file(save: Path | None) -> Iterator[Path]:
    """The run file to record into: ``save``, or a temporary one (so memory stays bounded either way).

    In a torchrun job the temporary file is the job's (every rank of a host
    finds it), removed by rank 0 once it has merged them.
    """
    if save is not None:
        yield save
        return
    place = ranks.rank_info()
    if place is not None:
        folder = Path(tempfile.gettempdir()) / f"vizgrad-{place['job']}"
        folder.mkdir(exist_ok=True)
        try:
            yield folder / "run.vizgrad"
        finally:
            if place["rank"] == 0:
                shutil.rmtree(folder, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory(prefix="vizgrad-") as folder:
        yield Path(folder) / "run.vizgrad"


def _problem(script: Path, outcome: Any, count: int) -> str | None:
    """The one-line description of how the script stopped early, or ``None`` when it ended well."""
    if outcome.interrupted:
        return f"interrupted (Ctrl-C) after {count} steps"
    if outcome.error is not None:
        message = _one_line(outcome.error) or "(no message)"
        before = "" if count else " before any backward()"
        return f"{script} raised {type(outcome.error).__name__}{before}: {message}"
    if outcome.exited and count == 0:  # e.g. its argparse answered --help: status 0, yet nothing to draw
        return (f"{script} exited with status {outcome.exit_status} before any backward(), so nothing was recorded; "
                "run it with the arguments it trains with (they go after --)")
    if outcome.exit_status != 0:
        return f"{script} exited with status {outcome.exit_status}"
    return None


def _status(outcome: Any) -> int:
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    if outcome.error is None and outcome.exit_status != 0:
        return outcome.exit_status
    return 1


def _steps(count: int) -> str:
    return _count(count, "step")


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _contents(fmt: str, written: Sequence[Any], count: int, options: dict[str, Any], *, before: bool = False) -> str:
    """What an output holds of the ``count`` steps recorded, e.g. ``4 frames of 18 recorded steps``."""
    from vizgrad.selection import select_steps

    drawn = len(select_steps(count, options["every"], options["steps"]))  # the selection every export makes
    recorded = f"the {_steps(count)} recorded before it" if before else _count(count, "recorded step")
    if fmt == "html":
        if drawn == count:
            return recorded if before else _steps(count)
        return f"showing {drawn} of {recorded}"
    if fmt == "dot":  # one file per distinct graph, not per step
        return f"{_count(len(written), 'graph')} of {recorded}"
    return f"{_count(drawn, 'frame')} of {recorded}"


def _written(written: Any, fmt: str) -> str:
    """What an export wrote, in a few words: the file, or how many files and where."""
    paths = [Path(p) for p in written] if isinstance(written, (list, tuple)) else [Path(written)]
    if len(paths) == 1:
        return str(paths[0])
    folder = os.path.commonpath([str(path.absolute().parent) for path in paths]) if paths else "."
    return f"{len(paths)} {fmt.upper()} files in {folder}"


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        click.echo(f"vizgrad: {displayable(message)}", err=True)


# -- demo ---------------------------------------------------------------------------------------------------------


@cli.command(short_help="Record the seed's regression and write its report.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("vizgrad-demo.html"), show_default=True,
              help="Where to write the HTML report.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Most training steps (stops earlier once fit).")
@click.option("--engine", type=click.Choice(["auto", "dot", "wasm"]), default="auto", show_default=True,
              help="Graphviz for the layout: dot, wasm (embedded) or auto.")
def demo(output: Path, steps: int | None, engine: str) -> None:
    """Fit y = 2x + 3 with autograd (the seed tutorial) and write the report.

    \b
    Examples:
      vizgrad demo
      vizgrad demo -o regression.html --steps 300
    """
    from vizgrad import demo as demo_module

    _check_writable(output, "html")
    options: dict[str, Any] = {"engine": engine}
    if steps is not None:
        options["steps"] = steps
    written = demo_module.run_demo(output, **options)
    click.echo(f"wrote {written}")


# -- info --------------------------------------------------------------------------------------------------------


@cli.command(short_help="Summarise a run file.")
@click.argument("run_file", metavar="RUN", type=click.Path(path_type=Path))
def info(run_file: Path) -> None:
    """Summarise a run file: steps, graph size, loss range and parameters.

    \b
    Example:
      vizgrad info train.vizgrad
    """
    from vizgrad import store

    run = store.load(run_file)
    try:
        for line in describe(run, run_file):
            click.echo(displayable(line))
    finally:
        run.store.disconnect()


def describe(run: Any, path: Path) -> Iterator[str]:
    """The lines ``vizgrad info`` prints for a stored run: the summary, which reads no tensor (no torch to
    import), then each layer's gradient norms (gradients are decoded with torch)."""
    count = len(run.steps)
    state = "complete" if getattr(run, "complete", True) else "incomplete: the recording stopped before it ended"
    lines = [f"run file:   {path} ({state})", f"steps:      {count}"]
    graphs = list(run.store.graphs().values()) if count else []
    if graphs:
        nodes = sorted({len(g.nodes) for g in graphs})
        edges = sorted({len(g.edges) for g in graphs})
        shapes = f"{len(graphs)} distinct topolog{'y' if len(graphs) == 1 else 'ies'}"
        lines.append(f"graph:      {_span(nodes)} nodes, {_span(edges)} edges ({shapes})")
    losses = [(i, loss) for i, loss in enumerate(run.losses()) if loss is not None]
    if losses:
        finite = [(i, loss) for i, loss in losses if math.isfinite(loss)]
        low = min(finite, key=lambda item: item[1]) if finite else None
        lowest = f", min {low[1]:.6g} (step {low[0]})" if low else ""
        lines.append(f"loss:       first {losses[0][1]:.6g}, last {losses[-1][1]:.6g}{lowest}")
    elif count:
        lines.append("loss:       none (the roots of backward() were not scalars)")
    lines += _loop_lines(run) if count else []
    params = _param_shapes(graphs)
    names = run.param_names() if count else []
    if names:
        described = ", ".join(f"{name} {_shape(params.get(name))}" for name in names)
        lines.append(f"parameters: {described}")
    for key in ("title", "script"):
        if run.meta.get(key):
            lines.append(f"{key + ':':<11} {run.meta[key]}")
    place = run.meta.get("distributed")
    if isinstance(place, dict):
        where = ", ".join(str(place[key]) for key in ("backend", "host") if place.get(key))
        lines.append(f"rank:       {place.get('rank')} of {place.get('world_size')}"
                     + (f" ({where})" if where else "") + "; vizgrad render run.rank*.vizgrad merges the ranks")
    yield from lines
    if count:
        yield from _gradient_lines(run)
        yield from _finding_lines(run)


def _finding_lines(run: Any, limit: int = 20) -> list[str]:
    """The run's findings, one per line (``run.findings()``)."""
    found = run.findings()
    if not found:
        return ["findings:   none (no NaN/Inf, vanishing, exploding or dead layer, skipped or mismatched step)"]
    lines = [f"findings:   {len(found)}"]
    lines += [f"  {finding}" for finding in found[:limit]]
    if len(found) > limit:
        lines.append(f"  ... {len(found) - limit} more (run.findings() has them all)")
    return lines


def _loop_lines(run: Any) -> list[str]:
    """Iterations (grouped by optimizer.step()) and each loss name's first and last iteration loss."""
    iterations = run.iterations()
    optimizers = list(run.loop.optimizers)
    if not optimizers:
        return []
    sizes = sorted({len(iteration.steps) for iteration in iterations})
    each = f"{_span(sizes)} step{'s' if sizes[-1] > 1 else ''} each"
    lines = [f"iterations: {len(iterations)} ({', '.join(optimizers)}; {each})"]
    names = list(dict.fromkeys(name for iteration in iterations for name in iteration.losses))
    if len(names) > 1 or sizes[-1] > 1:
        for name in names:
            values = [it.losses[name] for it in iterations if it.losses.get(name) is not None]
            if values:
                label = f"loss {name}" if len(names) > 1 and name else "loss"
                lines.append(f"  {label} per iteration (summed over its steps): first {values[0]:.6g}, "
                             f"last {values[-1]:.6g}")
    return lines


def _gradient_lines(run: Any, limit: int = 40) -> list[str]:
    """Each layer's gradient norm (the .grad an optimizer step used) in the first and the last iteration."""
    from vizgrad.health import grad_flow, readable_rows

    iterations = run.iterations()
    first, last = iterations[0].steps[-1], iterations[-1].steps[-1]
    steps = [run.steps[first]] if first == last else [run.steps[first], run.steps[last]]
    by, depth = readable_rows(steps)
    flow = grad_flow(steps, by, "param_grad", depth)
    if not flow.names:
        return []
    where = "per parameter" if by == "param" else f"per module (depth {depth})"
    title = "first iteration" if first == last else "first iteration -> last"
    lines = [f"gradients:  ‖.grad‖ {where}, RMS and mean |g| in brackets; {title}"]
    width = min(36, max(len(name or "(model)") for name in flow.names))
    for k, name in enumerate(flow.names[:limit]):
        cells = [f"{_sci(flow.norm[row, k])} ({_sci(flow.rms[row, k])}, {_sci(flow.mean[row, k])})"
                 for row in range(len(steps))]
        change = ""
        if len(steps) == 2 and flow.norm[0, k] > 0 and math.isfinite(flow.norm[1, k] / flow.norm[0, k]):
            change = f"  x{flow.norm[1, k] / flow.norm[0, k]:.3g}"
        lines.append(f"  {(name or '(model)')[:width]:<{width}}  {' -> '.join(cells)}{change}")
    if len(flow.names) > limit:
        lines.append(f"  ... {len(flow.names) - limit} more (run.grad_norms() has them all)")
    return lines


def _sci(value: float) -> str:
    return "–" if value != value else f"{value:.3e}"


def _span(values: Sequence[int]) -> str:
    return str(values[0]) if values[0] == values[-1] else f"{values[0]}-{values[-1]}"


def _param_shapes(graphs: Sequence[Any]) -> dict[str, Any]:
    shapes: dict[str, Any] = {}
    for graph in graphs:
        for node in graph.nodes:
            if node.kind == "leaf" and node.name is not None:
                shapes.setdefault(node.name, node.shape)
    return shapes


def _shape(shape: Any) -> str:
    return format_shape(shape) or "(?)"
