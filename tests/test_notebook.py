"""The tour notebook, executed by a real Jupyter kernel: the graph displays as SVG, the report as HTML."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from pages import page_data

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "examples" / "vizgrad_tour.ipynb"


@pytest.fixture(scope="module")
def executed():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel starts in the repository, so it imports this checkout of vizgrad.
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=180,
                                     resources={"metadata": {"path": str(REPO)}})
    client.execute()
    return notebook


def outputs_of(notebook, tag: str) -> list:
    cells = [cell for cell in notebook.cells if tag in cell.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"one cell tagged {tag!r} expected"
    return cells[0].outputs


def test_notebook_records_the_seed_regression(executed):
    text = "".join(output.get("text", "") for output in outputs_of(executed, "record"))
    match = re.search(r"(\d+) steps: w = ([\d.]+), b = ([\d.]+)", text)
    assert match, text
    steps, w, b = int(match[1]), float(match[2]), float(match[3])
    assert steps > 1000 and abs(w - 2) < 0.01 and abs(b - 3) < 0.3


def test_graph_cell_outputs_svg(executed):
    (output,) = [o for o in outputs_of(executed, "graph") if o.output_type == "execute_result"]
    svg = output.data["image/svg+xml"]
    assert "<svg" in svg and "MmBackward0" in svg


def test_report_cell_outputs_isolated_html(executed):
    (output,) = [o for o in outputs_of(executed, "report") if o.output_type == "execute_result"]
    page = output.data["text/html"]
    assert page.startswith("<iframe srcdoc=") and 'sandbox="allow-scripts"' in page
    document = html.unescape(page.split('srcdoc="', 1)[1].split('" sandbox=', 1)[0])
    assert [panel["title"] for panel in page_data(document)["panels"]] == ["Data and fit"]


def test_live_view_ends_on_the_last_step(executed):
    displays = [o for o in outputs_of(executed, "live") if o.output_type == "display_data"]
    assert len(displays) == 1  # one output, updated in place
    assert "step <b>299</b>" in displays[0].data["text/html"]


# --- the live view, without a kernel ---------------------------------------------------------------


class FakeDisplay:
    """Stands in for IPython's display(): one handle whose updates are recorded."""

    def __init__(self) -> None:
        self.shown: list[str] = []

    def display(self, content, display_id=None):
        assert display_id is True
        self.shown.append(content.data)
        return self

    def update(self, content) -> None:
        self.shown.append(content.data)


@pytest.fixture()
def fake_display(monkeypatch) -> FakeDisplay:
    from IPython import display

    fake = FakeDisplay()
    monkeypatch.setattr(display, "display", fake.display)
    return fake


def test_live_view_throttles_and_always_ends_on_the_last_step(seed_run, fake_display):
    from vizgrad.jupyter import LiveView

    view = LiveView(interval=60)
    assert "waiting for the first backward()" in fake_display.shown[0]
    for step in seed_run.steps:
        view.update(step)
    assert view.draws == 1  # the first step; the rest came too fast
    assert "step <b>0</b>" in fake_display.shown[-1]
    view.close()
    assert view.draws == 2
    assert f"step <b>{seed_run.steps[-1].index}</b>" in fake_display.shown[-1]
    assert "MmBackward0" in fake_display.shown[-1]  # the painted graph
    view.close()
    assert view.draws == 2  # nothing new to show


def test_live_view_timer_draws_a_held_back_step(seed_run, fake_display):
    import time

    from vizgrad.jupyter import LiveView

    view = LiveView(interval=0.1)
    for step in seed_run.steps[:5]:
        view.update(step)
    deadline = time.monotonic() + 5
    while view.draws < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert view.draws == 2
    assert "step <b>4</b>" in fake_display.shown[-1]


def test_live_context_manager_records_and_shows(fake_display):
    import torch

    from vizgrad.jupyter import live

    w = torch.ones(1, requires_grad=True)
    with live(interval=0, every=2, params={"w": w}) as run:
        for _ in range(5):
            (w * 3).sum().backward()
    assert len(run.steps) == 5
    drawn = [html for html in fake_display.shown if "step <b>" in html]
    assert [h.split("step <b>")[1].split("<")[0] for h in drawn] == ["0", "2", "4"]


def test_live_view_shows_the_gradient_flow_of_recent_steps_per_layer(fake_display):
    import re

    import torch

    from vizgrad.jupyter import live

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh(),
                                torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with live(interval=0, params=model) as run:
        for _ in range(6):
            optimizer.zero_grad()
            model(torch.randn(4, 3)).pow(2).mean().backward()
            optimizer.step()
    shown = fake_display.shown[-1]
    strip = re.search(r'<svg class="vizgrad-flow".*?</svg>', shown, re.S).group(0)
    names, rms = run.grad_norms(by="module", depth=1, measure="rms")
    assert names == ["0", "2", "4"]
    assert re.findall(r'text-anchor="end">([^<]*)</text>', strip) == names  # one row per layer with parameters
    cells = sum(len(re.findall(r"M[\d.]+ [\d.]+h", d)) for d in re.findall(r' d="([^"]*)"', strip))
    assert cells == 6 * len(names)  # every (step, layer) has a cell: six columns
    assert f"steps 0–5, log colour {rms.min():.2g} … {rms.max():.2g}" in shown


def test_live_view_lists_the_findings_steps_tell_as_they_come(fake_display):
    import torch

    from vizgrad.jupyter import live

    w = torch.ones(3, requires_grad=True)
    with live(interval=0, params={"w": w}) as run:
        for step in range(4):
            scale = 0.0 if step >= 2 else 1.0  # sqrt(0) from step 2 on: an infinite gradient
            loss = (w * scale).sqrt().sum()
            run.expect_grad("w", torch.full((3,), 0.25 * scale))  # half of autograd's: 0.5 / sqrt(w)
            loss.backward()
            w.grad = None
    shown = fake_display.shown[-1]
    lines = re.findall(r'<div class="vizgrad-finding" data-kind="([a-z_]+)"><b>[a-z_]+</b> step (\d+)( \(\d+ steps\))?',
                       shown)
    assert ("nonfinite", "2", " (2 steps)") in lines
    assert [line[:2] for line in lines if line[0] == "manual_mismatch"] == [("manual_mismatch", "0")]
    assert "w is 0.5x autograd" in shown
    assert {finding.kind for finding in run.findings()} == {"nonfinite", "manual_mismatch"}
