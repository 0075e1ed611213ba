"""Tests for vizgrad.report (the HTML player) and vizgrad.demo (the seed's regression)."""

from __future__ import annotations

import base64
import html
import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import vizgrad
from vizgrad import demo, engine, frames, report
from vizgrad.errors import OutputError, UsageError, VizgradError

from pages import page_data, page_layouts
from vizgrad.panels import ScatterLine
from vizgrad.report import Report, embed_json, sanitize_svg

HOSTILE = "<img src=x onerror=alert(1)>"


def frames_of(data: dict) -> list:
    """Per-step records ``[layout, node_paint, edge_paint, stats]``, rebuilt from the columns as report.js does."""
    out = []
    columns = data["columns"]
    for segment in data["segments"]:
        nodes = [resolved(node, columns) for node in segment["nodes"]]
        edges = [resolved(edge, columns) for edge in segment["edges"]]
        for i in range(segment["count"]):
            node_paint, edge_paint, stats = [], [], []
            for node in nodes:
                if node is None:
                    node_paint += [None, 0, None]
                    stats.append(None)
                    continue
                node_paint += [node["fill"][i], node["flag"][i], [lines[i] for lines in node["lines"]]]
                column = node["stats"]
                if column["norm"][i] is None:
                    stats.append(None)
                elif column["one"][i]:
                    stats.append(column["mean"][i])
                else:
                    stats.append([column[k][i] for k in ("norm", "mean", "min", "max")])
            for edge in edges:
                edge_paint += [None, None, 0] if edge is None else [edge["color"][i], edge["width"][i], edge["flag"][i]]
            out.append([segment["layout"], node_paint, edge_paint, stats])
    return out


def resolved(entry: dict | None, columns: list) -> dict | None:
    """A painted node or edge of the page data with its column references replaced by the columns."""
    if entry is None:
        return None
    return {field: [columns[r] for r in ref] if field == "lines" else columns[ref] for field, ref in entry.items()}


@pytest.fixture(scope="module")
def seed_report(seed_run: vizgrad.Run) -> Report:
    return seed_run.report()


@pytest.fixture(scope="module")
def seed_html(seed_report: Report) -> str:
    return seed_report.html()


def hostile_run(steps: int = 3) -> vizgrad.Run:
    """A tiny run whose parameter, panel and logged names are markup."""
    w = torch.tensor([[0.5]], requires_grad=True)
    x = torch.tensor([[1.0], [2.0]])
    with vizgrad.record(params={HOSTILE: w}) as run:
        run.add_panel(ScatterLine(f"</script>{HOSTILE}", x=[1, 2], y=[2, 4], line_key="fit",
                                  x_label=HOSTILE, y_label="y"))
        for _ in range(steps):
            loss = ((x.mm(w) - 2 * x) ** 2).mean()
            loss.backward()
            run.log("fit", {"slope": w.item(), "intercept": 0.0})
            with torch.no_grad():
                w -= 0.1 * w.grad
            w.grad = None
    run.meta["title"] = f"</title><script>alert(1)</script>{HOSTILE}"
    return run


# --- the document ---------------------------------------------------------------------------------


def test_report_is_one_self_contained_file(seed_html: str):
    assert seed_html.startswith("<!DOCTYPE html>")
    # Nothing to fetch: no external script, stylesheet, image, frame or import.
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", seed_html, re.I)
    assert "<link" not in seed_html.lower()
    assert "@import" not in seed_html
    assert not re.search(r"url\(\s*['\"]?\s*(?:https?:)?//", seed_html)
    assert "default-src 'none'" in seed_html  # and the page forbids any request itself
    assert seed_html.count("<script>") == 1 and "<script src" not in seed_html


def test_report_embeds_each_layout_once_and_data_per_step(seed_run: vizgrad.Run, seed_html: str):
    data = page_data(seed_html)
    (layout_svg,) = page_layouts(seed_html)  # inline, or packed with the data past PACK_DATA_ABOVE
    assert len(re.findall(r'<g [^>]*class="node vg-node', layout_svg)) == len(seed_run.steps[0].graph.nodes)
    assert len(frames_of(data)) == len(seed_run.steps) == 50
    assert data["index"] == list(range(50))
    assert data["loss"][0] == pytest.approx(seed_run.steps[0].loss, rel=1e-5)
    assert data["loss"][-1] == pytest.approx(seed_run.steps[-1].loss, rel=1e-5)
    assert [p["name"] for p in data["params"]] == ["w", "b"]
    w = data["params"][0]
    assert w["scalar"] is True
    assert w["values"][-1] == pytest.approx(float(seed_run.steps[-1].param("w")), rel=1e-5)
    layout = data["layouts"][0]
    ops = {node[1] for node in layout["nodes"]}
    assert {"SumBackward0", "MmBackward0", "AccumulateGrad"} <= ops
    # The root's value line shows this step's loss.
    root = layout["painted"].index(seed_run.steps[0].graph.roots[0])
    lines = frames_of(data)[-1][1][3 * root + 2]
    assert lines[0].startswith("loss") and float(lines[0].split()[1]) == pytest.approx(seed_run.steps[-1].loss, 1e-4)


def test_inspector_stats_match_the_recorded_summaries(seed_run: vizgrad.Run, seed_html: str):
    data = page_data(seed_html)
    layout = data["layouts"][0]
    step = seed_run.steps[7]
    record = frames_of(data)[7][3]
    for position, node_id in enumerate(layout["painted"]):
        summary = step.stats(node_id)
        entry = record[position]
        if isinstance(entry, list) and len(entry) == 1:  # "same as an earlier node"
            entry = record[entry[0]]
        if summary is None:
            assert entry is None
        elif summary["numel"] == 1:
            assert entry == pytest.approx(summary["mean"], rel=1e-3)
        else:
            assert entry[:4] == pytest.approx([summary["norm"], summary["mean"], summary["min"], summary["max"]],
                                              rel=1e-3)


def test_report_size_grows_by_little_per_step(seed_run: vizgrad.Run, seed_html: str):
    ten = len(Report(seed_run, steps="0:10").html().encode())
    fifty = len(seed_html.encode())
    per_step = (fifty - ten) / 40
    assert per_step < 900, f"{per_step:.0f} bytes per step"
    assert fifty < 170_000  # of which the page's own script and style are about 108 KB


def test_report_lays_out_once(seed_run: vizgrad.Run):
    engine.reset_calls()
    Report(seed_run).html()
    assert engine.calls() == 1


def test_every_and_steps_select_frames(seed_run: vizgrad.Run):
    assert page_data(Report(seed_run, every=10).html())["index"] == [0, 10, 20, 30, 40]
    assert page_data(Report(seed_run, steps="10:13").html())["index"] == [10, 11, 12]
    assert page_data(Report(seed_run, steps=slice(45, None), every=2).html())["index"] == [45, 47, 49]
    with pytest.raises(UsageError):
        Report(seed_run, steps="60:70")


@pytest.mark.parametrize("selection", [{"every": 10}, {"steps": "40:45"}])
def test_a_step_has_the_same_fills_in_the_report_and_in_frame_exports(seed_run: vizgrad.Run, selection):
    """Defect 6: colours scale over the whole run everywhere, whatever steps are shown."""
    data = page_data(Report(seed_run, **selection).html())
    shown = frames.select_steps(len(seed_run.steps), **selection)
    whole = frames.run_scale(seed_run)
    assert frames.scale_for([seed_run.steps[i] for i in shown]) != whole  # the selection alone spans less
    assert (data["colorbar"]["lo"], data["colorbar"]["hi"]) == (whole.lo, whole.hi)
    renderer = frames.FrameRenderer(seed_run, **selection)
    layout = data["layouts"][0]
    for record, (index, svg) in zip(frames_of(data), renderer):
        fills = dict(re.findall(r'data-node="(n\d+)">\s*<title>[^<]*</title>\s*<\w+ fill="(#[0-9a-f]{6})"', svg))
        for position, node_id in enumerate(layout["painted"]):
            assert data["palette"][record[1][3 * position]] == fills[node_id], (index, node_id)


def test_report_of_a_run_with_two_topologies(tmp_path):
    x = torch.tensor([[1.0], [2.0]])
    w = torch.tensor([[0.5]], requires_grad=True)
    b = torch.tensor([[0.1]], requires_grad=True)
    with vizgrad.record(params={"w": w, "b": b}) as run:
        for i in range(6):
            y = x.mm(w) + b if i % 2 else (x * w).sum(1, keepdim=True)  # two different graphs
            loss = (y ** 2).mean()
            loss.backward()
            w.grad = None
            b.grad = None
    text = Report(run).html()
    data = page_data(text)
    assert len(data["layouts"]) == 2
    assert text.count('<template id="vg-layout-') == 2
    assert [frame[0] for frame in frames_of(data)] == [0, 1, 0, 1, 0, 1]
    assert len(data["layouts"][0]["painted"]) != len(data["layouts"][1]["painted"])
    assert "2 graph shapes" in text


def test_page_data_sends_each_distinct_column_once():
    x = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    w = torch.tensor([[0.5], [-0.25]], requires_grad=True)
    b = torch.tensor([0.1], requires_grad=True)
    with vizgrad.record(params={"w": w, "b": b}) as run:
        for i in range(5):
            y = x.mm(w) + b
            if i >= 3:  # a second shape: a chain of views and shifts passing the same gradient on
                y = (y.view(2) + 1.0).reshape(2, 1) - 1.0
            loss = (y ** 2).mean() * (float("nan") if i == 2 else 1.0)  # one step of NaN gradients
            loss.backward()
            w.grad = None
            b.grad = None
    chosen = [run[i] for i in range(len(run.steps))]
    scale = frames.scale_for(chosen)
    payload, _ = Report(run)._payload()
    columns = payload["columns"]
    for segment, group in zip(payload["segments"], frames.segments(chosen)):
        painted = frames.paint_segment(group, scale)  # the page data holds exactly this
        assert [resolved(node, columns) for node in segment["nodes"]] == list(painted["nodes"].values())
        assert [resolved(edge, columns) for edge in segment["edges"]] == list(painted["edges"].values())
    assert [segment["count"] for segment in payload["segments"]] == [3, 2]
    keys = [json.dumps(column, sort_keys=True) for column in columns]
    assert len(set(keys)) == len(keys)  # no column twice
    chain = [node["stats"] for node in payload["segments"][1]["nodes"] if node is not None]
    assert len(set(chain)) <= len(chain) - 3  # the views pass their gradient on: one column for them all


class CountedFloat(float):
    """A float that counts how often it is compared or hashed."""

    operations = 0

    def __eq__(self, other):
        CountedFloat.operations += 1
        return float(self) == float(other)

    def __hash__(self):
        CountedFloat.operations += 1
        return float.__hash__(self)


def test_sharing_equal_columns_does_linear_work_on_a_long_chain(monkeypatch):
    length = 3000
    w = torch.ones(2, requires_grad=True)
    y = w
    for _ in range(length):
        y = y * 1.001
    graph = vizgrad.trace(y.sum(), params={"w": w})
    node_ids = [node.id for node in graph.nodes]
    half = len(node_ids) // 2

    def paint_segment(steps, scale, graph=None, rows=None):  # every column distinct in the first half, repeated in the second
        columns = {}
        for position, node_id in enumerate(node_ids):
            value = position % half
            stats = {"norm": [CountedFloat(value), CountedFloat(value + 0.5)], "mean": [1.0, None],
                     "one": [False, False]}
            columns[node_id] = {"fill": [0, 0], "flag": [0, 0], "lines": [[f"g {value % 7}", "x"]], "stats": stats}
        return {"nodes": columns, "edges": {}}

    monkeypatch.setattr(frames, "paint_segment", paint_segment)
    layout = SimpleNamespace(key="chain", width=10.0, height=10.0, boxes=(), svg='<svg xmlns="http://www.w3.org/2000/svg"/>')
    page = report._FrameData()
    CountedFloat.operations = 0
    page.add_segment([SimpleNamespace(graph=graph)] * 2, graph, layout, scale=None)
    elements = 2 * len(node_ids)  # a few hashes and comparisons per number; a scan of the earlier columns is ~1e6
    assert CountedFloat.operations <= 4 * elements, f"{CountedFloat.operations} operations on {elements} numbers"
    nodes = page.segments[0]["nodes"]
    stats = [node["stats"] for node in nodes]
    assert stats[half:2 * half] == stats[:half] and len(set(stats[:half])) == half  # equal columns: one each
    assert [page.columns[node["lines"][0]] for node in nodes[:7]] == [["g %d" % k, "x"] for k in range(7)]
    assert [node["lines"] for node in nodes[7:14]] == [node["lines"] for node in nodes[:7]]


# --- escaping -------------------------------------------------------------------------------------


def test_names_from_user_code_are_escaped_everywhere():
    text = Report(hostile_run()).html()
    assert HOSTILE not in text  # never raw markup, anywhere
    assert "<script>alert" not in text
    assert text.count("</script>") == 2  # the data and the player, nothing injected
    assert html.escape(HOSTILE, quote=False) in text  # graph labels and the title: escaped text
    data = page_data(text)  # the JSON keeps the name exactly
    assert data["params"][0]["name"] == HOSTILE
    assert data["panels"][0]["title"] == f"</script>{HOSTILE}"
    assert data["title"].endswith(HOSTILE)


def test_embed_json_cannot_close_its_script():
    data = {"a": "</script><!-- <script>", "b": "x & y > z", "c": "\u2028"}
    text = str(embed_json(data))
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == data
    with pytest.raises(ValueError):
        embed_json({"x": float("nan")})


def test_sanitize_svg_removes_active_content():
    svg = ('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
           'onload="alert(1)" viewBox="0 0 10 10"><title>page</title><script>alert(2)</script>'
           '<g class="graph"><title>vizgrad</title><g class="node vg-node" data-node="n0"><title>tip</title>'
           '<a xlink:href="javascript:alert(3)"><text>&lt;img src=x&gt;</text></a>'
           '<foreignObject><div/></foreignObject></g></g></svg>')
    clean = sanitize_svg(svg)
    for bad in ("onload", "<script", "alert", "foreignObject", "href", "<?xml", "vizgrad</title>", "page"):
        assert bad not in clean
    assert "<title>tip</title>" in clean  # node tooltips stay
    assert "<text>&lt;img src=x&gt;</text>" in clean
    assert clean.startswith('<svg xmlns="http://www.w3.org/2000/svg"')


# --- output ---------------------------------------------------------------------------------------


def test_save_writes_utf8_and_returns_the_path(seed_report: Report, seed_html: str, tmp_path):
    path = seed_report.save(tmp_path / "report.html")
    assert path == tmp_path / "report.html"
    assert path.read_text(encoding="utf-8") == seed_html


def test_save_into_a_missing_folder_is_a_clear_error(seed_report: Report, tmp_path):
    with pytest.raises(OutputError, match="cannot write the report to") as caught:
        seed_report.save(tmp_path / "missing" / "report.html")
    assert isinstance(caught.value, VizgradError) and isinstance(caught.value, OSError)


def test_jupyter_repr_isolates_the_report_in_an_iframe(seed_report: Report, seed_html: str):
    bundle = seed_report._repr_mimebundle_()
    assert set(bundle) == {"text/html"}
    frame = bundle["text/html"]
    match = re.fullmatch(r'<iframe srcdoc="([^"]*)" sandbox="allow-scripts" (.*)></iframe>', frame, re.S)
    assert match, frame[:200]
    assert "<" not in match.group(1)  # fully escaped inside the attribute
    assert html.unescape(match.group(1)) == seed_html
    assert seed_report._repr_html_() == frame


def test_two_reports_in_one_notebook_do_not_share_ids(seed_run: vizgrad.Run):
    first = Report(seed_run, steps="0:5")._repr_html_()
    second = Report(seed_run, steps="5:10")._repr_html_()
    for frame in (first, second):  # every id lives inside an iframe's own document
        assert ' id="' not in frame.split("srcdoc=", 1)[0]


def test_empty_run_is_a_usage_error():
    with pytest.raises(UsageError, match="no steps"):
        Report(vizgrad.Run())


def test_title_defaults_to_the_run_meta(seed_run: vizgrad.Run):
    assert Report(seed_run).title == "vizgrad report"
    assert "<title>Mine</title>" in Report(seed_run, title="Mine").html()


# --- the demo -------------------------------------------------------------------------------------


def test_seed_regression_converges_to_the_line():
    run = demo.seed_regression()
    final = run.meta["final"]
    assert 1000 <= len(run.steps) < demo.DEFAULT_STEPS  # it stops by itself, after more than 1,000 steps
    assert run.steps[-1].loss < 2e-4
    assert final["w"] == pytest.approx(2.0, abs=0.002)
    assert final["b"] == pytest.approx(3.0, abs=0.02)
    assert run.steps[0].graph.find("w").kind == "leaf"
    assert run.steps[0].graph.find("error").op == "SubBackward0"  # names from the seed's own variables
    assert all("fit" in step.data for step in run.steps)
    assert isinstance(run.panels[0], ScatterLine)


def test_seed_regression_without_recording_gives_the_same_numbers():
    w, b = demo.seed_regression(steps=30, record=False)
    run = demo.seed_regression(steps=30)
    assert (w, b) == (run.meta["final"]["w"], run.meta["final"]["b"])


def test_run_demo_works_without_a_system_graphviz(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot on PATH: the WebAssembly Graphviz lays out
    monkeypatch.delenv(engine.ENGINE_ENV_VAR, raising=False)
    path = demo.run_demo(tmp_path / "demo.html", steps=40)
    text = path.read_text(encoding="utf-8")
    assert "layout by Graphviz (wasm)" in text
    data = page_data(text)
    assert len(frames_of(data)) == 40
    assert data["panels"][0]["kind"] == "scatter_line" and len(data["panels"][0]["lines"]) == 40


def test_colours_follow_rms_by_default_and_norm_on_request_and_the_legend_says_which(seed_run, tmp_path):
    rms, norm = seed_run.report(), seed_run.report(scale="norm")
    assert "gradient RMS ‖g‖/√n (log scale)" in rms.html() and "gradient norm ‖g‖ (log scale)" in norm.html()
    data_rms, data_norm = page_data(rms.html()), page_data(norm.html())
    assert data_rms["colorbar"]["label"].startswith("gradient RMS") and data_rms["flow"]["measure"] == "rms"
    assert data_norm["flow"]["measure"] == "norm"
    # The scale spans the run's RMS values: the seed's (8, 1) gradients sit sqrt(8) below their norms.
    lo_rms, hi_rms = seed_run.norm_range("rms")
    assert data_rms["colorbar"]["lo"] == pytest.approx(math.log10(lo_rms))
    assert data_norm["colorbar"]["hi"] == pytest.approx(math.log10(seed_run.norm_range()[1]))
    seed_run.save(tmp_path / "seed.vizgrad")
    loaded = vizgrad.load(tmp_path / "seed.vizgrad")
    assert loaded.norm_range("rms") == pytest.approx((lo_rms, hi_rms))  # from the file's columns
    with pytest.raises(vizgrad.UsageError, match="scale must be one of 'rms', 'norm'"):
        seed_run.report(scale="abs")


def test_the_flow_panel_data_holds_each_parameter_per_step(seed_run):
    from vizgrad.health import CODE_NONE, log_codes

    flow = page_data(seed_run.report(steps="0:50").html())["flow"]
    assert flow["by"] == "param" and flow["steps"] == 50 and flow["depths"] == []
    names, norms = seed_run.grad_norms(by="param")
    assert sorted(flow["names"]) == sorted(names)
    codes = np.frombuffer(base64.b64decode(flow["norm"]), dtype="<u2").reshape(50, len(names))
    order = [names.index(name) for name in flow["names"]]
    expected = log_codes(norms[:50][:, order], np.ones((50, len(names)), dtype=bool), flow["lo"], flow["hi"])
    assert (codes == expected).all() and (codes != CODE_NONE).all()


def test_iterations_of_several_steps_get_one_loss_curve_per_name_summed_over_the_iteration():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 3)
    with vizgrad.record(model) as run:
        for _ in range(3):
            for _ in range(2):  # accumulation of 2
                loss = model(x).pow(2).mean() / 2
                loss.backward()
                aux = model(x).abs().mean()
                aux.backward()
            optimizer.step()
            optimizer.zero_grad()
    loop = page_data(run.report().html())["loop"]
    assert loop["iteration"] == [0] * 4 + [1] * 4 + [2] * 4 and loop["count"] == 3 and loop["optimizers"] == ["SGD"]
    curves = {curve["name"]: curve for curve in loop["losses"]}
    assert set(curves) == {"loss", "aux"}
    assert curves["loss"]["at"] == [3, 7, 11]  # drawn at the last step of each iteration
    for k, iteration in enumerate(run.iterations()):
        assert curves["loss"]["values"][k] == pytest.approx(sum(run.steps[i].loss for i in iteration.steps[0::2]), rel=1e-5)
        assert curves["aux"]["values"][k] == pytest.approx(sum(run.steps[i].loss for i in iteration.steps[1::2]), rel=1e-5)
    # One step per iteration and one loss name: the step curve is all there is.
    with vizgrad.record(model) as plain:
        for _ in range(2):
            model(x).sum().backward()
            optimizer.step()
    assert page_data(plain.report().html())["loop"] is None


def test_the_parameter_panel_has_each_gradient_norm_and_the_update_ratio_of_each_iteration():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(5, 3)
    grads, weights = [], []
    with vizgrad.record(model) as run:
        for _ in range(4):
            optimizer.zero_grad()
            model(x).pow(2).sum().backward()
            grads.append(float(model.weight.grad.norm()))
            weights.append(float(model.weight.detach().norm()))
            optimizer.step()
    params = {p["name"]: p for p in page_data(run.report().html())["params"]}
    assert params["weight"]["grads"] == pytest.approx(grads, rel=1e-3)
    update = params["weight"]["update"]
    assert update["at"] == [0, 1, 2, 3]
    assert update["values"] == pytest.approx([0.05 * g / w for g, w in zip(grads, weights)], rel=1e-3)
    with vizgrad.record(model) as no_optimizer:  # a hand-written update: no learning rate known, no ratio
        model(x).sum().backward()
    assert "update" not in page_data(no_optimizer.report().html())["params"][0]


def test_clipped_steps_are_marked_with_the_gradients_before_and_after():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with vizgrad.record(model) as run:
        for limit in (0.1, 1e9):
            optimizer.zero_grad()
            (model(torch.randn(6, 3)) * 5).pow(2).mean().backward()
            total = float(torch.nn.utils.clip_grad_norm_(model.parameters(), limit))
            clipped = float(model.weight.grad.norm())
            optimizer.step()
    data = page_data(run.report().html())
    clips = data["clips"]
    assert clips["at"] == [0, 1] and clips["function"] == ["clip_grad_norm_"] * 2 and clips["limit"] == [0.1, 1e9]
    assert clips["after"][0] == pytest.approx(0.1, rel=1e-3) and clips["before"][1] == pytest.approx(total, rel=1e-3)
    weight = next(p for p in data["params"] if p["name"] == "weight")
    assert weight["clipped"]["at"] == [0, 1] and weight["clipped"]["values"][1] == pytest.approx(clipped, rel=1e-3)
    # The update ratio uses the gradient the optimizer got: the clipped one.
    norm = run.steps[1].param_stats("weight")["norm"]
    assert weight["update"]["values"][1] == pytest.approx(0.1 * clipped / norm, rel=1e-3)
