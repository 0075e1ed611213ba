"""The HTML report in a real headless Chromium: it loads cleanly, plays, and shows names only as text."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
import torch

import vizgrad
from vizgrad import demo

CHROMIUM = "/usr/bin/chromium"
HOSTILE = "<img src=x onerror=alert(1)>"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"needs headless Chromium at {CHROMIUM}"),
]

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        yield chromium
        chromium.close()


class Page:
    """A browser page on a saved report, recording console errors, page errors, dialogs and requests."""

    def __init__(self, browser, path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 800})
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.goto(path.as_uri())
        self.page.wait_for_selector("g.vg-node")

    def ready(self):
        """The Playwright page, once the report has set itself up (its views and first step drawn)."""
        call(self.page, "window.vizgrad.ready")
        return self.page

    def values(self) -> list[str]:
        return self.page.eval_on_selector_all("#stage .vg-val", "els => els.map(e => e.textContent)")

    def marker(self) -> dict:
        return self.page.eval_on_selector(
            "#loss-marker", "m => ({cx: m.getAttribute('cx'), cy: m.getAttribute('cy'), step: m.dataset.step})")

    def step(self) -> int:
        return int(self.page.get_attribute("#step-label", "data-step"))


@pytest.fixture(scope="module")
def seed_report(tmp_path_factory) -> Path:
    run = demo.seed_regression(steps=60)
    return run.report().save(tmp_path_factory.mktemp("report") / "seed.html")


@pytest.fixture()
def seed_page(browser, seed_report: Path):
    page = Page(browser, seed_report)
    yield page
    page.page.close()


def test_seed_report_loads_and_runs_without_console_errors(seed_page: Page, seed_report: Path):
    page = seed_page.page
    assert page.title() == "Linear regression y = 2x + 3 (the seed)"
    assert seed_page.step() == 0
    assert page.locator("#stage svg").count() == 1
    assert page.locator("#loss-chart svg").count() == 1
    assert page.locator("#panels .vg-point").count() == 8  # the seed's 8 data points
    assert page.locator("#params .vg-param").count() == 2
    # Exercise every control once: still no error, and nothing was fetched.
    page.click("#next")
    page.click("#last")
    page.click("#prev")
    page.click("#zoom-in")
    page.click("#zoom-reset")
    page.click('g.vg-node[data-node="n0"]')
    page.keyboard.press("Escape")
    page.mouse.move(400, 400)
    page.mouse.wheel(0, -200)
    assert seed_page.errors == []
    assert seed_page.requests == [seed_report.as_uri()]


def test_slider_from_first_to_last_step_changes_numbers_and_loss_marker(seed_page: Page):
    page = seed_page.page
    page.focus("#slider")
    page.keyboard.press("Home")
    first_values, first_marker = seed_page.values(), seed_page.marker()
    first_fit = page.get_attribute("#panels .vg-fit", "d")
    assert seed_page.step() == 0 and first_marker["step"] == "0"
    page.keyboard.press("End")  # the range input's own keys move it to the last step
    assert page.input_value("#slider") == "59"
    last_values, last_marker = seed_page.values(), seed_page.marker()
    assert seed_page.step() == 59 and last_marker["step"] == "59"
    assert len(first_values) == len(last_values) > 0
    assert first_values != last_values
    changed = [(a, b) for a, b in zip(first_values, last_values) if a != b]
    assert any(a.startswith("loss") for a, _ in changed)  # the loss line at the root changed
    assert float(last_marker["cx"]) > float(first_marker["cx"])
    assert float(last_marker["cy"]) > float(first_marker["cy"])  # the loss fell: lower on the chart
    assert page.get_attribute("#panels .vg-fit", "d") != first_fit  # the fitted line moved
    assert seed_page.errors == []


def test_play_advances_the_step(seed_page: Page):
    page = seed_page.page
    page.click("#first")
    page.select_option("#speed", "50")
    page.click("#play")
    assert page.get_attribute("#play", "aria-pressed") == "true"
    for _ in range(100):  # (the page's CSP forbids eval, so poll from here rather than wait_for_function)
        if seed_page.step() >= 5:
            break
        page.wait_for_timeout(50)
    assert seed_page.step() >= 5
    page.click("#play")  # pause
    paused_at = seed_page.step()
    page.wait_for_timeout(150)
    assert seed_page.step() == paused_at > 0
    assert page.get_attribute("#play", "aria-pressed") == "false"
    assert page.input_value("#slider") == str(paused_at)


def test_keyboard_and_node_inspector(seed_page: Page):
    page = seed_page.page
    page.click("#first")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert seed_page.step() == 2
    page.keyboard.press("ArrowLeft")
    assert seed_page.step() == 1
    page.click('g.vg-node[data-node="n6"]')  # MmBackward0
    assert page.is_visible("#inspector")
    assert page.text_content("#inspector-title") == "MmBackward0"
    rows = page.eval_on_selector_all("#inspector-stats tr", "rows => rows.map(r => r.textContent)")
    assert rows[0] == "step1" and any(r.startswith("norm") for r in rows)
    assert page.locator("#inspector-chart path.vg-series").count() == 1  # its history
    assert page.locator('g.vg-node.vg-selected[data-node="n6"]').count() == 1
    page.keyboard.press("ArrowRight")
    assert page.eval_on_selector_all("#inspector-stats tr", "rows => rows[0].textContent") == "step2"
    page.click("#inspector-close")
    assert not page.is_visible("#inspector")
    page.keyboard.press(" ")
    assert page.get_attribute("#play", "aria-pressed") == "true"
    page.keyboard.press(" ")
    assert page.get_attribute("#play", "aria-pressed") == "false"


def test_zoom_and_pan_move_the_graph(seed_page: Page):
    page = seed_page.page
    transform = lambda: page.eval_on_selector("#stage", "s => s.style.transform")  # noqa: E731
    start = transform()
    page.mouse.move(500, 400)
    page.mouse.wheel(0, -300)
    zoomed = transform()
    assert zoomed != start
    page.mouse.down()
    page.mouse.move(560, 440, steps=4)
    page.mouse.up()
    assert transform() != zoomed
    page.click("#zoom-reset")
    assert transform() == start


def test_hostile_parameter_name_is_shown_as_text(browser, tmp_path):
    w = torch.tensor([[0.5]], requires_grad=True)
    x = torch.tensor([[1.0], [2.0]])
    with vizgrad.record(params={HOSTILE: w}) as run:
        for _ in range(3):
            loss = ((x.mm(w) - 2 * x) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                w -= 0.1 * w.grad
            w.grad = None
    path = run.report(title=HOSTILE).save(tmp_path / "hostile.html")
    page = Page(browser, path)
    try:
        p = page.page
        p.wait_for_timeout(100)
        assert p.evaluate("document.querySelectorAll('img').length") == 0
        assert page.dialogs == [] and page.errors == []
        assert p.title() == HOSTILE
        assert p.text_content("#report-title") == HOSTILE
        assert p.text_content(".vg-param-name") == HOSTILE
        leaf = p.eval_on_selector_all("#stage g.vg-leaf text", "ts => ts.map(t => t.textContent)")
        assert HOSTILE in leaf  # the graph label, as text
        node_id = p.get_attribute("#stage g.vg-leaf", "data-node")
        p.click(f'g.vg-node[data-node="{node_id}"]')
        assert p.text_content("#inspector-title") == HOSTILE
        assert p.evaluate("document.querySelectorAll('img').length") == 0
        assert page.dialogs == [] and page.errors == []
    finally:
        page.page.close()


def test_one_step_run_without_scalar_loss_or_names_loads_cleanly(browser, tmp_path):
    with vizgrad.record() as run:
        out = torch.ones(3, requires_grad=True) * 2  # a leaf no variable names
        out.backward(torch.tensor([1.0, 0.0, float("nan")]))  # non-scalar root, with a NaN
    path = run.report().save(tmp_path / "one.html")
    page = Page(browser, path)
    try:
        p = page.page
        assert p.text_content("#loss-value") == "–"
        assert p.text_content("#loss-chart") == "no scalar loss recorded"
        p.click("#play")  # nothing to play: stays put, no error
        p.keyboard.press("ArrowRight")
        assert page.step() == 0
        assert p.locator("#stage .vg-flag-nan").count() >= 1
        assert page.errors == []
    finally:
        p.close()


def two_shape_run() -> vizgrad.Run:
    """Three steps of one small model, three of another, then two of the first again: two graph shapes."""
    torch.manual_seed(0)
    first = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    second = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2), torch.nn.Sigmoid())
    optimizer = torch.optim.SGD([*first.parameters(), *second.parameters()], lr=0.5)
    x = torch.randn(5, 3)
    with vizgrad.record() as run:
        for model in [first] * 3 + [second] * 3 + [first] * 2:
            optimizer.zero_grad()
            loss = first(x).pow(2).mean() if model is first else (second(x) - 1).pow(2).sum()
            loss.backward()
            optimizer.step()
    return run


def inspector_rows(page) -> dict[str, str]:
    """The inspector's table as {label: value}."""
    rows = page.eval_on_selector_all(
        "#inspector-stats tr", "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])")
    return dict(rows)


def path_xs(d: str) -> list[float]:
    """The x coordinates of an SVG path made of M/L commands."""
    return [float(x) for x in re.findall(r"[ML](-?[\d.]+) -?[\d.]+", d)]


def test_inspector_shows_the_node_of_the_displayed_graph_shape(browser, tmp_path):
    run = two_shape_run()
    path = run.report().save(tmp_path / "two.html")
    second_graph = run.steps[3].graph
    first_ops = {node.id: node.op for node in run.steps[0].graph.nodes}
    # An id both graphs use for different nodes: a SigmoidBackward0 here, a leaf (a bias) in the first graph.
    node = next(n for n in second_graph.nodes if n.op == "SigmoidBackward0")
    assert node.id in first_ops and first_ops[node.id] != node.op
    page = Page(browser, path)
    try:
        p = page.page
        p.click("#first")
        for _ in range(4):
            p.click("#next")
        assert page.step() == 4  # the second step of the second shape
        p.click(f'g.vg-node[data-node="{node.id}"]')
        assert p.text_content("#inspector-title") == "SigmoidBackward0"
        assert "graph shape 2 of 2" in p.text_content("#inspector-sub")
        expected = run.steps[4].stats(node.id)
        rows = inspector_rows(p)
        assert rows["step"] == "4"
        for label, key in [("norm ‖g‖", "norm"), ("mean", "mean"), ("min", "min"), ("max", "max")]:
            assert float(rows[label]) == pytest.approx(expected[key], rel=1e-3), label
        assert rows["NaN count"] == "0" and rows["Inf count"] == "0"
        # Its history covers only the three steps drawn with this shape.
        xs = sorted(set(path_xs(p.get_attribute("#inspector-chart path.vg-series", "d"))))
        assert len(xs) == 3
        p.click("#prev")  # step 3: the same node, the previous step's numbers
        assert float(inspector_rows(p)["norm ‖g‖"]) == pytest.approx(run.steps[3].stats(node.id)["norm"], rel=1e-3)
        p.click("#last")  # the first shape again: this node is not in it, and no node there is marked
        rows = inspector_rows(p)
        assert rows == {"step": "7", "gradient": "not in this step's graph shape"}
        assert p.text_content("#inspector-title") == "SigmoidBackward0"
        assert p.locator("#stage .vg-selected").count() == 0
        # Clicking the same id in the first shape shows that shape's node: the leaf, with its own history.
        p.click(f'g.vg-node[data-node="{node.id}"]')
        leaf = run.steps[7].graph.node(node.id)
        assert p.text_content("#inspector-title") == leaf.name
        assert "graph shape 1 of 2" in p.text_content("#inspector-sub")
        assert float(inspector_rows(p)["norm ‖g‖"]) == pytest.approx(run.steps[7].stats(node.id)["norm"], rel=1e-3)
        assert len(set(path_xs(p.get_attribute("#inspector-chart path.vg-series", "d")))) == 5
        assert page.errors == []
    finally:
        p.close()


def test_loss_chart_is_linear_when_a_loss_is_negative(browser, tmp_path):
    w = torch.tensor([0.5, -1.0], requires_grad=True)
    x = torch.tensor([1.0, 2.0])
    with vizgrad.record(params={"w": w}) as run:
        for _ in range(6):  # a critic's loss: it falls below zero and keeps falling
            loss = -(w * x).sum() + 1.0
            loss.backward()
            with torch.no_grad():
                w -= 0.2 * w.grad
            w.grad = None
    losses = [step.loss for step in run.steps]
    assert losses[0] > 0 > losses[-1]
    page = Page(browser, run.report().save(tmp_path / "critic.html"))
    try:
        p = page.page
        d = p.get_attribute("#loss-chart path.vg-series", "d", timeout=2000)
        points = re.findall(r"[ML](-?[\d.]+) (-?[\d.]+)", d)
        assert len({x for x, _ in points}) == 6  # every step, the negative ones too
        ys = [float(y) for _, y in points]
        assert all(math.isfinite(y) for y in ys) and ys == sorted(ys)  # falling loss: lower on the chart each step
        p.click("#last")
        marker = page.marker()
        assert marker["step"] == "5" and math.isfinite(float(marker["cy"])) and float(marker["cy"]) == ys[-1]
        ticks = p.eval_on_selector_all("#loss-chart .vg-axis text", "ts => ts.map(t => t.textContent)")
        assert any(t.startswith("-") for t in ticks) and "0" in ticks
        assert p.get_attribute("#loss-chart svg", "data-scale") == "linear"
        assert p.text_content("#loss-scale") == "linear scale"
        assert page.errors == []
    finally:
        p.close()


def test_loss_chart_of_positive_losses_stays_logarithmic(seed_page: Page):
    page = seed_page.page
    assert page.text_content("#loss-scale") == "log scale"
    assert page.get_attribute("#loss-chart svg", "data-scale") == "log"


def test_inspector_on_a_short_last_batch_shows_that_steps_node(browser, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.randn(22, 3)
    with vizgrad.record() as run:
        for start in range(0, 22, 5):  # four batches of 5, then one of 2: its own graph shape
            optimizer.zero_grad()
            model(data[start:start + 5]).pow(2).mean().backward()
            optimizer.step()
    tanh = next(node for node in run.steps[4].graph.nodes if node.op == "TanhBackward0")
    assert tanh.shape == (2, 4) and run.steps[0].graph.node(tanh.id).shape == (5, 4)
    page = Page(browser, run.report().save(tmp_path / "short.html"))
    try:
        p = page.page
        p.click("#last")
        p.click(f'g.vg-node[data-node="{tanh.id}"]')
        assert p.text_content("#inspector-title") == "TanhBackward0"
        assert "(2, 4)" in p.text_content("#inspector-sub") and "graph shape 2 of 2" in p.text_content("#inspector-sub")
        assert p.text_content("#inspector-scope") == "history over the 1 of 5 steps drawn with this graph shape"
        assert float(inspector_rows(p)["norm ‖g‖"]) == pytest.approx(run.steps[4].stats(tanh.id)["norm"], rel=1e-3)
        # Its one-step history is a dot where the marker of step 4 is, still there on the other steps.
        p.click("#prev")
        dots = p.eval_on_selector_all("#inspector-chart circle.vg-dot", "cs => cs.map(c => c.getAttribute('cx'))")
        p.click("#next")
        marker = p.get_attribute("#inspector-chart circle.vg-marker", "cx")
        assert dots == [marker]
        assert page.errors == []
    finally:
        p.close()


# --- views of a real model: collapse, fold, expand, the URL hash ---------------------------------


@pytest.fixture(scope="module")
def gpt_report(gpt) -> Path:
    return gpt[1]


@pytest.fixture(scope="module")
def gpt(tmp_path_factory) -> tuple[vizgrad.Run, Path]:
    """A GPT-style decoder of 12 blocks, 6 SGD steps: the run and its report."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from models import TinyGPT

    torch.manual_seed(0)
    model = TinyGPT(layers=12)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tokens = torch.randint(0, 11, (2, 6))
    with vizgrad.record(model) as run:
        for _ in range(6):
            optimizer.zero_grad()
            model(tokens, tokens).backward()
            optimizer.step()
    return run, run.report(engine="wasm").save(tmp_path_factory.mktemp("gpt") / "gpt.html")


def wait_until(page, condition: str, seconds: float = 10) -> None:
    """Polls a page expression from here until it holds (the page's CSP forbids the eval wait_for_function uses)."""
    for _ in range(int(seconds / 0.05)):
        if page.evaluate(f"() => {{ try {{ return !!({condition}); }} catch (error) {{ return false; }} }}"):
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"the page never got to {condition}")


def call(page, script: str):
    """Runs page code (awaiting it when it returns a promise), once the page has set itself up."""
    wait_until(page, "window.vizgrad !== undefined")
    return page.evaluate(f"async () => await ({script})")


def drawn(page) -> dict:
    return page.evaluate("""() => ({
        blocks: [...document.querySelectorAll('#stage g.vg-module[data-module]')].map(g => g.dataset.module),
        folds: [...document.querySelectorAll('#stage g.vg-fold[data-module]')].map(g => g.dataset.module),
        open: [...document.querySelectorAll('#stage g.vg-cluster[data-module]')].map(g => g.dataset.module),
        nodes: document.querySelectorAll('#stage g.vg-node').length,
    })""")


def test_a_gpt_opens_folded_and_expands_collapses_and_unfolds(browser, gpt_report: Path):
    page = Page(browser, gpt_report)
    p = page.ready()
    state = call(p, "window.vizgrad.state()")
    assert state["visible"] <= 150 and state["step"] == 0
    # The collapsed view opens whole on a 1280 x 800 window, its labels at least 6.7 px.
    whole = p.evaluate("""() => { const g = document.querySelector("#stage svg").getBoundingClientRect(),
                                        v = document.getElementById("viewport").getBoundingClientRect();
                                  return [g.left >= v.left && g.right <= v.right && g.top >= v.top && g.bottom <= v.bottom,
                                          window.vizgrad.view.get().k, v.width, v.height, g.width, g.height]; }""")
    assert whole[0] and whole[1] >= 0.5, whole
    first = drawn(p)
    assert first["folds"] == ["h.0-11"] and first["nodes"] == state["visible"]
    assert "Block x12" in p.text_content('#stage g.vg-fold[data-module="h.0-11"]')
    bars = p.eval_on_selector_all('#stage g.vg-fold rect.vg-bar', "rs => rs.map(r => Number(r.getAttribute('height')))")
    assert len(bars) == 12 and all(h > 0 for h in bars)  # one bar per block, painted
    # Unfold by a click on the fold: the twelve blocks, each a box.
    p.click("#zoom-fit")
    p.click('#stage g.vg-fold[data-module="h.0-11"]')
    wait_until(p, "window.vizgrad.state().unfolded.length === 1")
    assert sorted(drawn(p)["blocks"], key=lambda k: (len(k), k))[:12] == [f"h.{k}" for k in range(12)]
    # Expand one block through the page API: its children show; collapse returns.
    assert call(p, "window.vizgrad.expand('h.3')") is True
    opened = drawn(p)
    assert "h.3" in opened["open"] and {"h.3.attn", "h.3.mlp"} <= set(opened["blocks"])
    before = p.text_content('#stage g.vg-module[data-module="h.3.attn"] .vg-val')
    p.click("#last")  # step switching keeps working after expansion
    assert call(p, "window.vizgrad.state()")["step"] == 5
    assert p.text_content('#stage g.vg-module[data-module="h.3.attn"] .vg-val') != before
    assert call(p, "window.vizgrad.collapse('h.3')") is True
    assert "h.3" in drawn(p)["blocks"] and "h.3" not in drawn(p)["open"]
    assert call(p, "window.vizgrad.state()")["expanded"] == []
    # Back to the overview.
    p.click("#overview")
    wait_until(p, "window.vizgrad.state().unfolded.length === 0")
    assert drawn(p)["folds"] == ["h.0-11"]
    assert page.errors == [] and page.requests == [gpt_report.as_uri()]
    p.close()


def test_the_url_hash_reopens_a_view_at_a_step(browser, gpt_report: Path):
    page = Page(browser, gpt_report)
    p = page.ready()
    call(p, "window.vizgrad.unfold('h')")
    call(p, "window.vizgrad.expand('h.3')")
    call(p, "window.vizgrad.step(4)")
    link = p.evaluate("location.hash")
    assert "step=4" in link and "expand=h.3" in link and "unfold=h.0-11" in link
    p.close()
    reopened = Page(browser, Path(str(gpt_report)))
    reopened.page.goto(gpt_report.as_uri() + link)
    reopened.page.reload()  # a page opened on the link, not a hash change in an open one
    call(reopened.page, "window.vizgrad.ready")
    state = call(reopened.page, "window.vizgrad.state()")
    assert (state["step"], state["expanded"], state["unfolded"]) == (4, ["h.3"], ["h.0-11"])
    assert "h.3" in drawn(reopened.page)["open"]
    # A link that names only what was opened reaches it by the clicks that open it.
    reopened.page.goto(gpt_report.as_uri() + "#step=1&expand=h.5")
    reopened.page.reload()
    call(reopened.page, "window.vizgrad.ready")
    state = call(reopened.page, "window.vizgrad.state()")
    assert state["step"] == 1 and state["expanded"] == ["h.5"] and "h.5" in drawn(reopened.page)["open"]
    # A link to a view the report did not prepare says so and shows the first view.
    reopened.page.goto(gpt_report.as_uri() + "#step=2&expand=h.3.attn,h.7.attn,h.9.mlp")
    reopened.page.reload()
    call(reopened.page, "window.vizgrad.ready")
    assert call(reopened.page, "window.vizgrad.state()")["view"] == 0
    assert "not prepared" in reopened.page.text_content("#view-notice")
    assert reopened.errors == []
    reopened.page.close()


def test_a_big_report_sends_other_views_and_parameters_in_parts_that_draw_as_the_whole_data(browser, gpt,
                                                                                             tmp_path, monkeypatch):
    from pages import page_data

    from vizgrad import report as report_module

    run, whole = gpt
    monkeypatch.setattr(report_module, "SPLIT_DATA_ABOVE", 0)  # the GPT's data in parts, as a long run's would be
    split = run.report(engine="wasm").save(tmp_path / "split.html")
    text, data = split.read_text(), page_data(split.read_text())
    parts = re.findall(r'id="vg-part-(\w+)"', text)
    assert "params" in parts and sum(name.startswith("view") for name in parts) >= 2
    assert not re.findall(r'id="vg-part-', whole.read_text())
    lazy = {k for k, column in enumerate(data["columns"]) if column is None}
    assert lazy and len(data["params"]) == data["params_shown"] == 8 and data["params_later"] > 0
    assert "stats" in parts and data["stats_later"] is True  # the inspector's numbers, inflated after the paint

    def walk(path: Path) -> list:
        page = Page(browser, path)
        p = page.ready()
        # The inspector of the loss, opened at once: its numbers, and its history over the steps.
        root = call(p, "window.vizgrad.data.layouts[0].nodes.find(n => n[2] === 'root')[0]")
        call(p, f"window.vizgrad.inspector.open({root!r})")
        wait_until(p, "document.getElementById('inspector-stats').textContent.includes('norm')")
        seen = [p.text_content("#inspector-stats"), p.text_content("#inspector-scope")]
        call(p, "window.vizgrad.inspector.close()")
        for action in ("unfold('h')", "expand('h.3')", "step(4)", "collapse('h.3')", "overview()"):
            assert call(p, f"window.vizgrad.{action}") is True
            seen.append(p.evaluate("""() => [...document.querySelectorAll('#stage g.vg-node, #stage g.vg-module')]
                .map(g => [g.dataset.node || g.dataset.module, g.getAttribute('class'), g.textContent,
                           [...g.querySelectorAll('[fill]')].map(e => e.getAttribute('fill')).join()])"""))
        p.click("#params .vg-more")
        wait_until(p, "document.querySelectorAll('#params .vg-param').length > 8")
        seen.append(p.eval_on_selector_all("#params .vg-param", "ps => ps.map(p => p.dataset.param)"))
        seen.append(p.eval_on_selector_all("#params .vg-param-value", "vs => vs.map(v => v.textContent)"))
        # A link into an unfolded, expanded view opens it at load, its columns inflated first.
        p.goto(path.as_uri() + "#step=2&unfold=h.0-11&expand=h.3")
        p.reload()
        call(p, "window.vizgrad.ready")
        seen.append(call(p, "window.vizgrad.state()"))
        seen.append(p.text_content('#stage g.vg-module[data-module="h.3.attn"] .vg-val'))
        assert page.errors == []
        p.close()
        return seen

    split_seen, whole_seen = walk(split), walk(whole)
    assert split_seen == whole_seen
    assert "norm ‖g‖" in split_seen[0] and "6 of 6 steps" in split_seen[1]
    assert len(split_seen[7]) == len(run.steps[0].params)  # every parameter's chart, after "show all"
    assert split_seen[9]["expanded"] == ["h.3"] and split_seen[9]["step"] == 2 and split_seen[10]


@pytest.mark.parametrize("layout_engine", ["wasm", "dot"])
def test_layout_boxes_are_where_the_browser_draws_each_group(browser, layout_engine):
    """The report culls a big graph by these boxes, without measuring: Chromium's own boxes are the oracle."""
    import shutil

    from vizgrad import frames

    if layout_engine == "dot" and shutil.which("dot") is None:
        pytest.skip("needs the system Graphviz dot")
    from vizgrad.view import ViewOptions, view_of

    model = torch.nn.ModuleDict({"cell": torch.nn.LSTMCell(4, 8), "head": torch.nn.Linear(8, 1)})
    h = c = torch.zeros(2, 8)
    with vizgrad.record(model) as run:
        for x in torch.randn(6, 2, 4):
            h, c = model["cell"](x, (h, c))
        model["head"](h).sum().backward()
    graph = view_of(run.steps[0].graph, ViewOptions(max_nodes=1000, fold=False))  # every call a module frame
    layout = frames.LayoutCache(layout_engine).get(graph)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_content(f"<html><body style='margin:0'>{layout.svg}</body></html>")
    width = layout.width * 4 / 3
    groups = page.evaluate("""(width) => {
        const svg = document.querySelector("svg");
        svg.setAttribute("width", width);
        svg.setAttribute("height", width * svg.viewBox.baseVal.height / svg.viewBox.baseVal.width);
        const s = svg.getBoundingClientRect(), k = s.width / svg.viewBox.baseVal.width;
        return Array.from(svg.querySelectorAll("g.vg-node, g.vg-edge, g.vg-cluster"), (g) => {
            const r = g.getBoundingClientRect();
            return [(r.left - s.left) / k, (r.top - s.top) / k, (r.right - s.left) / k, (r.bottom - s.top) / k,
                    g.classList.contains("vg-node"), g.classList.contains("vg-cluster")];
        });
    }""", width)
    page.close()
    assert len(layout.boxes) == 4 * len(groups) and len(groups) > 100
    assert sum(1 for *_, cluster in groups if cluster) >= 7
    for i, (*drawn, is_node, _) in enumerate(groups):
        box = layout.boxes[4 * i:4 * i + 4]
        # Whole points rounded outwards: what is drawn lies inside.
        assert box[0] - 1 <= drawn[0] and box[1] - 1 <= drawn[1], (i, box, drawn)
        assert drawn[2] <= box[2] + 1 and drawn[3] <= box[3] + 1, (i, box, drawn)
        if is_node:  # and a node's box is close: its text's width is estimated at 0.6 em a character
            # (an edge's box holds its curve's control points, which may lie well outside the curve)
            assert box[2] - box[0] <= drawn[2] - drawn[0] + 30 and box[3] - box[1] <= drawn[3] - drawn[1] + 8, (i, box, drawn)


def test_the_report_copy_of_a_layout_draws_the_same_geometry(browser):
    """The page's layouts are written shorter (relative tenths of a point): Chromium draws the same shapes."""
    from vizgrad import frames
    from vizgrad.report import sanitize_svg

    cell = torch.nn.LSTMCell(4, 8)
    h = c = torch.zeros(2, 8)
    with vizgrad.record(params=dict(cell.named_parameters())) as run:
        for x in torch.randn(4, 2, 4):
            h, c = cell(x, (h, c))
        h.sum().backward()
    original = frames.LayoutCache().get(run.steps[0].graph).svg
    page_copy = sanitize_svg(original)
    assert len(page_copy) < 0.9 * len(original) and ' id="node-' not in page_copy
    page = browser.new_page()
    page.set_content(f"<html><body><div>{original}</div><div>{page_copy}</div></body></html>")
    worst, count = page.evaluate("""() => {
        const [a, b] = document.querySelectorAll("svg");
        const shapes = (svg) => svg.querySelectorAll("path, polygon");
        const sa = shapes(a), sb = shapes(b);
        if (sa.length !== sb.length) return [Infinity, sa.length];
        let worst = 0;
        sa.forEach((one, i) => {
            const other = sb[i];
            if (one.tagName === "path") {
                const length = one.getTotalLength();
                worst = Math.max(worst, Math.abs(length - other.getTotalLength()) / Math.max(1, length) * 10);
                for (let t = 0; t <= 1; t += 0.125) {
                    const p = one.getPointAtLength(t * length), q = other.getPointAtLength(t * other.getTotalLength());
                    worst = Math.max(worst, Math.hypot(p.x - q.x, p.y - q.y));
                }
            } else {
                const p = one.points, q = other.points;
                for (let k = 0; k < p.numberOfItems; k++) {
                    worst = Math.max(worst, Math.hypot(p.getItem(k).x - q.getItem(k).x, p.getItem(k).y - q.getItem(k).y));
                }
            }
        });
        return [worst, sa.length];
    }""")
    page.close()
    assert count > 100 and worst < 0.1  # points: rounded to a tenth, never drifting along a path


def test_a_big_graph_draws_what_is_on_screen_and_paints_the_rest_as_it_comes_into_view(browser, tmp_path):
    from vizgrad.view import ViewOptions

    w = torch.tensor([1.0, 2.0], requires_grad=True)
    with vizgrad.record(params={"w": w}) as run:
        for scale in (1.0, 3.0):
            y = w * scale
            for _ in range(250):  # 250 ops in a chain: past the size drawn by visibility
                y = y * 1.001
            y.sum().backward()
            w.grad = None
    path = run.report(view=ViewOptions(max_nodes=1000), engine="wasm").save(tmp_path / "chain.html")
    page = Page(browser, path)
    p = page.ready()
    leaf_group = 'g.vg-node[data-node="{}"]'.format(run.steps[0].graph.find("w").id)
    leaf = leaf_group + ' .vg-val[data-line="1"]'
    drawn = "(s) => { const e = document.querySelector(s); return e !== null && e.getClientRects().length > 0; }"
    # The loss, at the bottom of the first view, is drawn; the parameter, far above it, is not in the page.
    assert p.evaluate(drawn, "g.vg-node.vg-root") and not p.evaluate(drawn, leaf_group)
    assert p.evaluate("() => document.querySelectorAll('#stage g.vg-node, #stage g.vg-edge').length") < 100
    p.click("#last")
    assert p.text_content('g.vg-node.vg-root .vg-val') != "" and call(p, "window.vizgrad.state()")["step"] == 1
    # Panned to the top of the chain, w comes into the page, painted with the step on screen.
    p.evaluate("() => window.vizgrad.view.panBy(0, 28 - window.vizgrad.view.get().y)")
    wait_until(p, f"document.querySelector('{leaf}') !== null")
    assert p.evaluate(drawn, leaf_group) and not p.evaluate(drawn, "g.vg-node.vg-root")
    revealed = p.text_content(leaf)
    # Painted on coming into view as it is painted in view: step 0 (w's gradient is 3x smaller), then step 1.
    p.click("#first")
    first = p.text_content(leaf)
    assert first != revealed
    p.click("#last")
    assert p.text_content(leaf) == revealed
    norm = lambda text: float(text.split()[-1])  # noqa: E731
    assert norm(revealed) == pytest.approx(3 * norm(first), rel=1e-3)

    # Zoomed out (text under 4 px), the graph is drawn on the overview canvas, every group out of the page.
    w_at = p.evaluate("""(s) => { const r = document.querySelector(s).getBoundingClientRect(),
                                        v = document.getElementById("viewport").getBoundingClientRect(), at = window.vizgrad.view.get();
                                  return [(r.left + r.width / 2 - v.left - at.x) / at.k, (r.top + r.height / 2 - v.top - at.y) / at.k]; }""",
                      leaf_group)  # w's middle, in unscaled stage pixels
    p.click("#first")
    p.evaluate("() => window.vizgrad.view.zoomCenter(0.1 / window.vizgrad.view.get().k)")
    p.evaluate("() => window.vizgrad.view.panBy(0, 28 - window.vizgrad.view.get().y)")  # the top of the chain, w
    wait_until(p, "!document.querySelector('.vg-overview').hidden")
    assert p.evaluate("() => document.querySelectorAll('#stage g.vg-node, #stage g.vg-edge').length") == 0
    picture = "document.querySelector('.vg-overview').toDataURL()"
    wait_until(p, "document.querySelector('.vg-overview').width > 0")
    p.wait_for_timeout(100)
    at_first = p.evaluate(f"() => {picture}")
    p.click("#last")  # w's gradient is 3x: its colour changes
    wait_until(p, f"{picture} !== {at_first!r}")
    p.click("#first")
    wait_until(p, f"{picture} === {at_first!r}")
    # A click on the canvas finds the node under it by its box: w opens in the inspector.
    x, y = p.evaluate("""(at) => { const v = document.getElementById("viewport").getBoundingClientRect(),
                                         view = window.vizgrad.view.get();
                                   return [v.left + view.x + view.k * at[0], v.top + view.y + view.k * at[1]]; }""", w_at)
    p.mouse.click(x, y)
    assert call(p, "window.vizgrad.inspector.node") == run.steps[0].graph.find("w").id
    assert page.errors == []
    p.close()


def test_the_gradient_flow_panel_shows_each_layer_and_a_click_goes_to_that_step_and_layer(browser, gpt):
    run, path = gpt
    page = Page(browser, path)
    p = page.ready()
    panel = p.locator('[data-panel="gradient-flow"]')
    assert panel.is_visible()
    # One row per block (the blocks folded in the graph are rows of their own), as run.grad_norms has them.
    names, rms = run.grad_norms(by="module", depth=1, measure="rms")
    assert names == ["wte", "h", "ln_f"]
    names, rms = run.grad_norms(by="module", depth=2, measure="rms")
    assert names == ["wte", *[f"h.{k}" for k in range(12)], "ln_f"]
    rows = p.eval_on_selector_all('[data-panel="gradient-flow"] [data-layer]', "rs => rs.map(r => r.dataset.layer)")
    assert rows == names and call(p, "window.vizgrad.flow.rows()") == len(names)
    _, means = run.grad_norms(by="module", depth=2, measure="mean")
    _, largest = run.grad_norms(by="module", depth=2, measure="max")
    bars = call(p, "window.vizgrad.flow.bars(4)")
    assert bars["shows"] == "mean" and len(bars["values"]) == len(names)
    for k, name in enumerate(names):  # the page's numbers are the API's (stored on a log scale of 65,532 steps)
        cell = call(p, f"window.vizgrad.flow.cell({name!r}, 4)")
        assert cell["rms"] == pytest.approx(rms[4, k], rel=2e-3)
        # The bars: mean |grad| (a block's mean weighted by its parameters' elements) and max |grad|.
        assert cell["mean"] == pytest.approx(means[4, k], rel=2e-3) and cell["mean"] < cell["rms"]
        assert bars["values"][k] == pytest.approx([means[4, k], largest[4, k]], rel=2e-3)
    assert "mean |grad| (dark)" in p.get_attribute(".vg-flow-key", "title")
    p.select_option("#flow-measure", "mean")
    assert p.text_content(".vg-flow-scale-name") == "mean |grad|, log"
    # Coarser and finer rows come from the same numbers.
    p.select_option("#flow-depth", label="depth 1")
    assert p.eval_on_selector_all('[data-panel="gradient-flow"] [data-layer]', "rs => rs.length") == 3
    _, coarse = run.grad_norms(by="module", depth=1)
    assert call(p, "window.vizgrad.flow.cell('h', 2)")["norm"] == pytest.approx(coarse[2, 1], rel=2e-3)
    _, coarse_means = run.grad_norms(by="module", depth=1, measure="mean")
    assert call(p, "window.vizgrad.flow.cell('h', 2)")["mean"] == pytest.approx(coarse_means[2, 1], rel=2e-3)
    p.select_option("#flow-depth", label="depth 2")
    # A click on the cell of block h.7 at step 3: the player is at step 3, the fold holding h.7 is marked.
    box = p.locator(".vg-flow-heat").bounding_box()
    x = box["x"] + box["width"] * (3 + 0.5) / len(run.steps)
    y = box["y"] + box["height"] * (names.index("h.7") + 0.5) / len(names)
    p.mouse.click(x, y)
    assert call(p, "window.vizgrad.state()")["step"] == 3
    assert p.text_content("#step-label") == "3"
    marked = p.eval_on_selector_all("#stage .vg-flow-focus", "els => els.map(e => e.dataset.module)")
    assert marked == ["h.0-11"]
    assert "h.7 · step 3" in p.text_content("#flow-readout")
    assert page.errors == []
    p.close()


def test_a_parameters_inspector_shows_its_mean_abs_gradient_as_the_flow_panel_does(browser, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    with vizgrad.record(model) as run:
        for _ in range(3):
            model.zero_grad()
            model(torch.randn(5, 3)).pow(2).mean().backward()
    path = run.report().save(tmp_path / "mlp.html")
    names, means = run.grad_norms(by="param", measure="mean")
    page = Page(browser, path)
    p = page.ready()
    call(p, "window.vizgrad.step(2)")
    leaf = call(p, "window.vizgrad.data.layouts[0].nodes.find(n => n[3] === '0.weight')[0]")
    call(p, f"window.vizgrad.inspector.open({leaf!r})")
    rows = dict(p.eval_on_selector_all("#inspector-stats tr",
                                       "rs => rs.map(r => [r.cells[0].textContent, r.cells[1].textContent])"))
    assert float(rows["mean |g|"]) == pytest.approx(means[2, names.index("0.weight")], rel=1e-3)
    assert float(rows["mean |g|"]) == pytest.approx(float(model[0].weight.grad.abs().mean()), rel=1e-3)
    tanh = call(p, "window.vizgrad.data.layouts[0].nodes.find(n => n[1].startsWith('Tanh'))[0]")
    call(p, f"window.vizgrad.inspector.open({tanh!r})")  # an op's inspector: norm, mean, min, max as before
    assert "mean |g|" not in p.text_content("#inspector-stats") and "norm ‖g‖" in p.text_content("#inspector-stats")
    assert page.errors == []
    p.close()


def test_a_gan_report_draws_a_loss_curve_per_name_by_iteration(browser, tmp_path):
    torch.manual_seed(0)
    netD, netG = torch.nn.Linear(4, 1), torch.nn.Linear(2, 4)
    optD, optG = torch.optim.SGD(netD.parameters(), lr=0.1), torch.optim.SGD(netG.parameters(), lr=0.1)
    bce = torch.nn.BCEWithLogitsLoss()
    with vizgrad.record() as run:
        for _ in range(4):
            errD_real = bce(netD(torch.randn(3, 4)).view(-1), torch.ones(3))
            errD_real.backward()
            fake = netG(torch.randn(3, 2))
            errD_fake = bce(netD(fake.detach()).view(-1), torch.zeros(3))
            errD_fake.backward()
            optD.step()
            errG = bce(netD(fake).view(-1), torch.ones(3))
            errG.backward()
            optG.step()
    page = Page(browser, run.report().save(tmp_path / "gan.html"))
    p = page.ready()
    assert p.locator('[data-panel="iteration-loss"]').is_visible()
    legend = p.eval_on_selector_all("#iteration-legend [data-loss]", "els => els.map(e => e.dataset.loss)")
    assert legend == ["errD_real", "errD_fake", "errG"]
    assert p.eval_on_selector_all("#iteration-chart path", "ps => ps.filter(p => p.getAttribute('d')).length") >= 3
    call(p, "window.vizgrad.step(7)")
    assert p.text_content("#iteration-label") == "2" and p.text_content("#step-label") == "7"
    assert page.errors == []
    p.close()


def test_a_steps_autograd_grad_call_is_drawn_on_its_own_graph(browser, tmp_path):
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    with vizgrad.record(grad_calls=True) as run:
        for _ in range(3):
            mix = torch.randn(4, 3).requires_grad_(True)
            score = critic(mix)
            (slopes,) = torch.autograd.grad(score, mix, torch.ones_like(score), create_graph=True)
            loss = ((slopes.norm(dim=1) - 1) ** 2).mean() + critic(torch.randn(4, 3)).mean()
            loss.backward()
    page = Page(browser, run.report().save(tmp_path / "gp.html"))
    p = page.ready()
    assert p.locator('[data-panel="grad-calls"]').is_visible()
    backward_nodes = p.eval_on_selector_all("#stage g.vg-node", "gs => gs.length")
    p.click("#calls button[data-call='0']")
    wait_until(p, "document.querySelector(\"#calls button[data-call='0']\").getAttribute('aria-pressed') === 'true'")
    drawn = p.eval_on_selector_all("#stage g.vg-node", "gs => gs.map(g => g.textContent)")
    assert len(drawn) == len(run.steps[0].grad_calls[0].graph.nodes) < backward_nodes
    assert any("score" in text for text in drawn)
    p.click("#calls button[data-call='']")  # back to the backward() graph
    assert p.eval_on_selector_all("#stage g.vg-node", "gs => gs.length") == backward_nodes
    assert call(p, "window.vizgrad.step(2)") and call(p, "window.vizgrad.call(0)") is True
    assert p.get_attribute("#calls button[data-call='2']", "aria-pressed") == "true"
    assert page.errors == []
    p.close()


@pytest.fixture(scope="module")
def nan_report(tmp_path_factory) -> tuple[Path, list]:
    """A model whose block's sqrt makes an infinite gradient at step 3, drawn with its modules collapsed."""
    from torch import nn

    from vizgrad.view import ViewOptions

    class Root(nn.Module):
        def forward(self, x):
            return torch.sqrt(x)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.root = Root()

        def forward(self, x):
            return self.root(self.lin(x))

    model = nn.Sequential(Block(), nn.Linear(3, 1))
    with torch.no_grad():
        model[0].lin.weight.copy_(torch.eye(3))
        model[0].lin.bias.zero_()
    with vizgrad.record(model) as run:
        for step in range(5):
            model(torch.full((2, 3), 0.0 if step == 3 else 1.0 + step)).sum().backward()
            model.zero_grad()
    found = run.findings()
    path = run.report(view=ViewOptions(depth=0)).save(tmp_path_factory.mktemp("nan") / "nan.html")
    return path, found


def test_clicking_a_finding_moves_to_its_step_opens_its_module_and_highlights_its_node(browser, nan_report):
    path, found = nan_report
    assert [(f.kind, f.step, f.op, f.module) for f in found] == [("nonfinite", 3, "SqrtBackward0", "0.root")]
    page = Page(browser, path)
    try:
        ready = page.ready()
        assert ready.locator('[data-panel="findings"]').is_visible()
        assert ready.locator(".vg-finding").count() == 1
        assert "SqrtBackward0 in 0.root (Root)" in ready.locator(".vg-finding").inner_text()
        assert ready.locator(f'#stage [data-node="{found[0].node}"]').count() == 0  # inside a collapsed box
        ready.locator(".vg-finding").click()
        wait_until(ready, f"document.querySelector('#stage g.vg-selected[data-node=\"{found[0].node}\"]')")
        assert page.step() == 3
        state = call(ready, "window.vizgrad.state()")
        assert "0" in state["expanded"] and "0.root" in state["expanded"]
        wait_until(ready, "location.hash.includes('focus=')")
        assert "step=3" in ready.evaluate("location.hash") and f"focus={found[0].node}" in ready.evaluate("location.hash")
        assert page.errors == []
    finally:
        page.page.close()


def test_the_manual_panel_draws_hand_written_and_autograd_norms(browser, tmp_path):
    w = torch.ones(2, requires_grad=True)
    with vizgrad.record(params={"w": w}) as run:
        for step in range(3):
            run.expect_grad("w", torch.full((2,), 1.5))  # autograd's: 3 everywhere
            (w * 3).sum().backward()
            w.grad = None
    page = Page(browser, run.report().save(tmp_path / "manual.html"))
    try:
        ready = page.ready()
        card = ready.locator('[data-panel="manual-grads"]')
        assert card.is_visible()
        assert "w · hand-written = 0.5 × autograd" in card.locator('[data-manual="w"]').inner_text()
        assert card.locator("svg path").count() >= 2  # the two curves
        assert ready.locator(".vg-finding").inner_text().count("factor 2 missing") == 1
        assert page.errors == []
    finally:
        page.page.close()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_torchrun_renders_every_rank_and_the_report_picks_a_rank_and_shows_the_spread(browser, tmp_path):
    import subprocess
    import sys

    script = Path(__file__).parent / "data" / "ddp_train.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "vizgrad", "render", str(script), "--save", "run.vizgrad", "-o", "report.html", "-q"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "run.rank0.vizgrad", "run.rank1.vizgrad"]
    merged = vizgrad.load_ranks(sorted(tmp_path.glob("run.rank*.vizgrad")))
    weight = merged.steps[2].graph.find("model.module.0.weight").id
    local = merged.steps[2].rank_norms(weight)
    page = Page(browser, tmp_path / "report.html")
    try:
        ready = page.ready()
        assert ready.locator("#rank-box").is_visible()
        options = ready.eval_on_selector_all("#rank-picker option", "os => os.map(o => o.textContent)")
        assert options[0] == "all: 2 of 2" and options[1].startswith("rank 0") and options[2].startswith("rank 1")
        call(ready, f"window.vizgrad.step(2) && window.vizgrad.inspector.open('{weight}')")
        rows = dict(ready.eval_on_selector_all("#inspector-stats tr", "rs => rs.map(r => [r.cells[0].textContent, "
                                                                      "r.cells[1].textContent])"))
        low, mid, high = (float(value) for value in rows["ranks: min · median · max"].split(" · "))
        assert low == pytest.approx(min(local.values()), rel=1e-3) and high == pytest.approx(max(local.values()),
                                                                                             rel=1e-3)
        assert float(rows["rank 1 ‖g‖"]) == pytest.approx(local[1], rel=1e-3)
        before = page.values()
        ready.select_option("#rank-picker", "1")
        wait_until(ready, "location.hash.includes('rank=1')")
        assert page.values() != before  # rank 1's own gradients
        assert call(ready, "window.vizgrad.rank(null)") is True
        assert page.values() == before
        assert page.errors == []
    finally:
        page.page.close()
