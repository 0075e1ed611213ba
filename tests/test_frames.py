"""Tests of vizgrad.frames and vizgrad.colors: DOT skeletons, one layout per topology, painted frames."""

from __future__ import annotations

import math
import os
import re
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

import vizgrad
from vizgrad.graph import Graph, Node
from vizgrad.run import Step
from vizgrad import engine, frames
from vizgrad.colors import scale_between, VIRIDIS, ColorScale, colorbar, colormap, scale_for, text_color_for
from vizgrad.errors import UsageError

GOLDEN = Path(__file__).parent / "golden"
SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = "<img src=x onerror=alert(1)>"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="needs the Graphviz dot executable")
ENGINES = [pytest.param("dot", marks=needs_dot), "wasm"]


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("VIZGRAD_REGEN_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} changed; rerun with VIZGRAD_REGEN_GOLDEN=1 if intended"


def record_changing_run(steps: int = 6, switch_at: int = 3) -> vizgrad.Run:
    """A run whose loss gains a term from step ``switch_at`` on: two topologies."""
    x = torch.linspace(-1, 1, 5)
    w = torch.tensor(0.5, requires_grad=True)
    with vizgrad.record(params={"w": w}) as run:
        for i in range(steps):
            loss = ((w * x - x) ** 2).sum()
            if i >= switch_at:
                loss = loss + 0.1 * w ** 2
            loss.backward()
            with torch.no_grad():
                w -= 0.1 * w.grad
            w.grad = None
    return run


def record_lstm_run(unroll: int = 17, steps: int = 1) -> vizgrad.Run:
    """An ``nn.LSTMCell(16, 32)`` unrolled ``unroll`` times: ~300 nodes for 17."""
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(16, 32)
    inputs = torch.randn(unroll, 4, 16)
    with vizgrad.record(params=dict(cell.named_parameters())) as run:
        for _ in range(steps):
            h = torch.zeros(4, 32)
            c = torch.zeros(4, 32)
            total = 0
            for t in range(unroll):
                h, c = cell(inputs[t], (h, c))
                total = total + h.sum()
            total.backward()
            cell.zero_grad()
    return run


def node_groups(svg: str) -> dict[str, list[ET.Element]]:
    """``data-node`` -> node ``<g>`` elements of an SVG (copies of shared leaves share a key)."""
    groups: dict[str, list[ET.Element]] = {}
    for group in ET.fromstring(svg).iter(f"{SVG}g"):
        if group.get("data-node"):
            groups.setdefault(group.get("data-node"), []).append(group)
    return groups


def value_lines(group: ET.Element) -> list[str]:
    texts = [t for t in group.iter(f"{SVG}text") if "vg-val" in t.get("class", "")]
    return [t.text.replace("\u00a0", " ") for t in sorted(texts, key=lambda t: int(t.get("data-line")))]


# -- DOT -----------------------------------------------------------------------------------------------
def test_seed_dot_matches_golden(seed_run):
    assert_golden("seed.dot", frames.graph_dot(seed_run.steps[0].graph))


def test_seed_dot_draws_forward_with_ids_and_kinds(seed_run):
    graph = seed_run.steps[0].graph
    dot = frames.graph_dot(graph)
    w = graph.find("w")
    mm = next(n for n in graph.nodes if n.op == "MmBackward0")
    # The input is drawn above its consumer; the arrowhead shows the gradient going back.
    assert f'{w.id} -> {mm.id} [id="edge-{mm.id}-1-grad"]' in dot
    assert "dir=back" in dot
    assert f'id="node-{w.id}"' in dot and 'class="vg-leaf"' in dot and 'class="vg-root"' in dot
    assert "fontname=Courier" in dot
    label = re.search(rf'{w.id} \[label="([^"]*)"', dot).group(1).split("\\n")
    assert label == ["w", "(1, 1)", "val".ljust(frames.LINE_WIDTH), "grad".ljust(frames.LINE_WIDTH)]
    bare = re.search(rf'{w.id} \[label="([^"]*)"', frames.graph_dot(graph, values=False)).group(1)
    assert bare.split("\\n") == ["w", "(1, 1)"]


def test_big_graph_copies_shared_leaves_and_limits_graphviz():
    small = record_lstm_run(unroll=8).steps[0].graph  # ~140 nodes: leaves copied, default limits
    dot = frames.graph_dot(small)
    weight = small.find("weight_ih")
    uses = sum(1 for e in small.edges if e.dst == weight.id)
    assert uses == 8
    assert all(f'id="node-{weight.id}-use{k}"' in dot for k in range(1, uses + 1))
    assert f"\t{weight.id} [" not in dot
    assert "newrank" not in dot
    assert f"\t{weight.id} [" in frames.graph_dot(small, split_shared=False)
    big = frames.graph_dot(record_lstm_run(unroll=17).steps[0].graph)
    assert "newrank=true" in big and "remincross=false" in big and "mclimit=0.3" in big


# -- layouts -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout_engine", ENGINES)
def test_layout_svg_is_prepared_for_restyling(seed_run, layout_engine):
    graph = seed_run.steps[0].graph
    layout = frames.LayoutCache(layout_engine).get(graph)
    assert not layout.svg.startswith("<?xml") and "<!DOCTYPE" not in layout.svg
    root = ET.fromstring(layout.svg)
    assert root.get("width") is None and root.get("height") is None
    assert [float(v) for v in root.get("viewBox").split()][2:] == [layout.width, layout.height]
    groups = node_groups(layout.svg)
    assert set(groups) == {n.id for n in graph.nodes}
    for node in graph.nodes:
        (group,) = groups[node.id]
        assert group.get("id") == f"node-{node.id}"
        assert group.get("class").split()[:3] == ["node", "vg-node", f"vg-{node.kind}"]
        shape = next(c for c in group if c.tag in (f"{SVG}path", f"{SVG}polygon", f"{SVG}ellipse"))
        assert shape.get("class") == "vg-shape"
        lines = value_lines(group)
        assert len(lines) == frames.value_line_count(node)
        assert all(len(line) == frames.LINE_WIDTH for line in lines)
    edges = {g.get("data-edge"): g for g in root.iter(f"{SVG}g") if g.get("data-edge")}
    assert set(edges) == {f"{e.src}:{e.slot}" for e in graph.edges}
    for group in edges.values():
        assert "vg-edge" in group.get("class")
        assert group.find(f"{SVG}path").get("class") == "vg-path"


def test_one_graphviz_call_per_topology(seed_run):
    engine.reset_calls()
    renderer = frames.FrameRenderer(seed_run)
    svgs = [svg for _, svg in renderer]
    assert len(svgs) == len(seed_run.steps) == 50
    assert renderer.cache.calls == 1
    assert engine.calls() == 1

    changing = record_changing_run(steps=6, switch_at=3)
    assert len(changing.graphs()) == 2
    engine.reset_calls()
    renderer = frames.FrameRenderer(changing)
    list(renderer)
    assert renderer.cache.calls == 2 == engine.calls()
    assert len(renderer.layouts()) == 2
    # Asking again, even for an equal graph, is a lookup.
    again = vizgrad.Graph.from_dict(changing.steps[0].graph.to_dict())
    assert renderer.cache.get(again) is renderer.cache.get(changing.steps[0].graph)
    assert engine.calls() == 2


# -- painting and frames -------------------------------------------------------------------------------
def test_frames_show_each_steps_numbers(seed_run):
    cache = frames.LayoutCache()
    scale = scale_for(seed_run.steps)
    first, last = seed_run.steps[0], seed_run.steps[-1]
    w = first.graph.find("w")
    svgs = [frames.render_frame(cache.get(s.graph), frames.paint(s, scale)) for s in (first, last)]
    lines = [value_lines(node_groups(svg)[w.id][0]) for svg in svgs]
    for step, (value_line, grad_line) in zip((first, last), lines):
        assert value_line == f"val  {float(step.param('w')):+.4e}"
        assert grad_line == f"grad {float(step.grad(w.id)):+.4e}"
    assert lines[0] != lines[1]
    root = first.graph.roots[0]
    assert value_lines(node_groups(svgs[1])[root][0]) == [f"loss {last.loss:+.4e}"]
    assert svgs[0].startswith("<svg ") and 'width="' in svgs[0].split(">", 1)[0]
    assert "<style>" in svgs[0] and "vg-flag-nan" in svgs[0]


def test_paint_is_json_with_fixed_width_lines(seed_run):
    import json

    step = seed_run.steps[10]
    scale = scale_for(seed_run.steps)
    painted = frames.paint(step, scale)
    assert json.loads(json.dumps(painted)) == painted
    for node_id, (fill, lines, flag, ink) in painted["n"].items():
        node = step.graph.node(node_id)
        assert re.fullmatch(r"#[0-9a-f]{6}", fill) and flag == "" and ink in ("#000000", "#ffffff")
        assert len(lines) == frames.value_line_count(node) and all(len(x) == frames.LINE_WIDTH for x in lines)
        stats = step.stats(node_id)
        # Colour by RMS (norm / sqrt(elements)) by default: the (8, 1) gradients sit 8 ** 0.5 lower.
        assert fill == scale.color(stats["norm"], stats["numel"])
        assert scale.position(stats["norm"], stats["numel"]) == pytest.approx(
            scale_between((10 ** scale.lo, 10 ** scale.hi)).position(stats["norm"] / math.sqrt(stats["numel"])))
    for key, (color, width, flag) in painted["e"].items():
        src, slot = key.split(":")
        stats = step.edge_stats(src, int(slot))
        norm, numel = stats["norm"], stats["numel"]
        assert color == scale.color(norm, numel) and width == scale.width(norm, numel) and 1 <= width <= 6
        assert flag == ""
    by_norm = scale_for(seed_run.steps, "norm")
    painted = frames.paint(step, by_norm)
    for node_id, (fill, _, _, _) in painted["n"].items():
        assert fill == by_norm.color(step.stats(node_id)["norm"])


def _assert_segments_equal_paint(run: vizgrad.Run) -> None:
    """frames.paint_segment (the report's columns) says what frames.paint says, step by step."""
    steps = list(run.steps)
    scale = frames.scale_for(steps)
    groups: dict[int, list] = {}
    for step in steps:
        groups.setdefault(id(step.graph), []).append(step)
    for group in groups.values():
        segment = frames.paint_segment(group, scale)
        for i, step in enumerate(group):
            one = frames.paint(step, scale)
            assert list(one["n"]) == list(segment["nodes"]) and list(one["e"]) == list(segment["edges"])
            for node_id, (fill, lines, flag, _ink) in one["n"].items():
                column = segment["nodes"][node_id]
                assert (frames.PALETTE[column["fill"][i]], [line[i] for line in column["lines"]],
                        frames.FLAGS[column["flag"][i]]) == (fill, lines, flag), (step.index, node_id)
            for edge_key, (color, width, flag) in one["e"].items():
                column = segment["edges"][edge_key]
                assert (frames.PALETTE[column["color"][i]], column["width"][i],
                        frames.FLAGS[column["flag"][i]]) == (color, width, flag), (step.index, edge_key)


def test_painting_a_segment_of_steps_equals_painting_each_step(seed_run):
    _assert_segments_equal_paint(seed_run)
    with vizgrad.record(keep=None) as flagged:  # NaN, Inf and zero gradients, a split, a one-element NaN
        for i in range(5):
            x = torch.randn(6, requires_grad=True)
            a, b, c = x.split(2)
            loss = (a * float("nan") if i == 1 else a).sum() + (b * 0).sum() + (c.exp() * (1e39 if i == 2 else 1)).sum()
            loss.backward()
            (x[:1] * float("nan")).sum().backward()
    _assert_segments_equal_paint(flagged)
    w = torch.randn(3, requires_grad=True)
    with vizgrad.record() as several_roots:  # two roots, and a non-scalar root with no loss
        for _ in range(3):
            torch.autograd.backward([(w * 2).sum(), (w ** 2).mean()])
            (w * torch.randn(3)).backward(torch.ones(3))
    _assert_segments_equal_paint(several_roots)


def test_nan_and_zero_gradients_are_flagged():
    w = torch.ones(3, requires_grad=True)
    z = torch.ones(2, requires_grad=True)
    poison = torch.tensor([1.0, float("nan"), 2.0])
    with vizgrad.record(params={"w": w, "z": z}) as run:
        loss = (w * poison).sum() + (z * 0).sum()
        loss.backward()
    step = run.steps[0]
    painted = frames.paint(step, scale_for(run.steps))
    w_id, z_id = step.graph.find("w").id, step.graph.find("z").id
    assert painted["n"][w_id][2] == "nan" and painted["n"][w_id][0] == "#e41a1c"
    assert painted["n"][w_id][1][1] == "|g|          nan"
    assert painted["n"][z_id][2] == "zero"
    assert painted["n"][step.graph.roots[0]][2] == "nan"  # the loss itself is NaN
    svg = frames.render_frame(frames.LayoutCache().get(step.graph), painted)
    groups = node_groups(svg)
    assert "vg-flag-nan" in groups[w_id][0].get("class").split()
    assert "vg-flag-zero" in groups[z_id][0].get("class").split()
    edge_classes = {g.get("data-edge"): g.get("class").split() for g in ET.fromstring(svg).iter(f"{SVG}g")
                    if g.get("data-edge")}
    zero_edge = next(f"{e.src}:{e.slot}" for e in step.graph.edges if e.dst == z_id)
    assert "vg-flag-zero" in edge_classes[zero_edge]


def test_hostile_names_come_out_as_text():
    w = torch.ones(2, requires_grad=True)
    with vizgrad.record(params={HOSTILE: w}) as run:
        (w * 3).sum().backward()
    step = run.steps[0]
    svg = frames.render_frame(frames.LayoutCache().get(step.graph), frames.paint(step, scale_for(run.steps)))
    root = ET.fromstring(svg)  # well-formed: nothing broke out of its text
    assert not [e for e in root.iter() if e.tag.endswith("img")]
    assert any(t.text == HOSTILE for t in root.iter(f"{SVG}text"))
    assert "&lt;img src=x onerror=alert(1)&gt;" in svg and HOSTILE not in svg
    # Painted values are escaped as well, whatever a caller passes.
    node_id = step.graph.find(HOSTILE).id
    layout = frames.LayoutCache().get(step.graph)
    evil = {"n": {node_id: ['"><script>', [HOSTILE, "</text>"], "nan\"", "#000000"]}, "e": {}}
    svg = frames.render_frame(layout, evil)
    assert "<script" not in svg and HOSTILE not in svg
    ET.fromstring(svg)


def test_copies_of_a_shared_leaf_are_painted_alike():
    run = record_lstm_run(unroll=8)
    step = run.steps[0]
    layout = frames.LayoutCache().get(step.graph)
    svg = frames.render_frame(layout, frames.paint(step, scale_for(run.steps)))
    weight = step.graph.find("weight_hh").id
    copies = node_groups(svg)[weight]
    assert len(copies) == 8
    assert len({tuple(value_lines(g)) for g in copies}) == 1
    assert {g.get("id") for g in copies} == {f"node-{weight}-use{k}" for k in range(1, 9)}


@pytest.mark.parametrize("layout_engine", ENGINES)
def test_300_node_graph_lays_out_fast_and_readable(layout_engine):
    run = record_lstm_run(unroll=17)
    graph = run.steps[0].graph
    assert 280 <= len(graph) <= 320
    engine.render_dot("digraph { a }", engine=layout_engine)  # warm up: wasm compiles its module once
    started = time.perf_counter()
    layout = frames.LayoutCache(layout_engine).get(graph)
    seconds = time.perf_counter() - started
    print(f"\n{len(graph)}-node LSTM graph laid out by {layout_engine} in {seconds:.2f} s")
    assert seconds < 20
    svg = frames.render_frame(layout, frames.paint(run.steps[0], scale_for(run.steps)))
    boxes = []
    for groups in node_groups(svg).values():
        for group in groups:
            shape = next(c for c in group if c.get("class") == "vg-shape")
            numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", shape.get("points") or shape.get("d"))]
            xs, ys = numbers[0::2], numbers[1::2]
            box = (min(xs), min(ys), max(xs), max(ys))
            for text in group.iter(f"{SVG}text"):  # every label line sits inside its node
                assert box[0] <= float(text.get("x")) <= box[2] and box[1] <= float(text.get("y")) <= box[3]
                assert float(text.get("font-size")) >= 10
            boxes.append(box)
    boxes.sort()
    for i, a in enumerate(boxes):  # no two nodes overlap
        for b in boxes[i + 1:]:
            if b[0] >= a[2]:
                break
            assert b[1] >= a[3] or a[1] >= b[3], f"nodes overlap: {a} {b}"


# -- colours -------------------------------------------------------------------------------------------
def test_color_scale_is_log_and_robust():
    scale = ColorScale(-3.0, 1.0)
    assert scale.position(1e-3) == 0.0 and scale.position(10.0) == 1.0
    assert scale.position(0.1) == pytest.approx(0.5)
    assert scale.position(1e-9) == 0.0 and scale.position(1e9) == 1.0
    for bad in (0.0, -1.0, math.nan, math.inf):
        assert scale.position(bad) is None and scale.color(bad) is None
    assert scale.color(10.0) == VIRIDIS[0] and scale.color(1e-3) == VIRIDIS[-1]
    assert scale.width(1e-3) == 1.0 and scale.width(10.0) == 6.0 and scale.width(0.1) == 3.5
    assert colormap(math.nan) == VIRIDIS[-1]
    assert len(VIRIDIS) == 256 and len(set(VIRIDIS)) > 200


def test_scale_for_ignores_zero_nan_inf_and_falls_back():
    def FakeStep(norms):  # a hand-built step: its summaries become its gradient table
        summaries = {("node", f"n{i}", 0): vizgrad.Summary(v, 0, 0, 0, 0, 0, 1) for i, v in enumerate(norms)}
        summaries[("param", "w")] = vizgrad.Summary(1e9, 0, 0, 0, 0, 0, 1)  # not a gradient
        return Step(0, None, Graph((Node("n0", "root", "root"),), (), ("n0",)), summaries)

    scale = scale_for([FakeStep([0.0, 1e-2, math.nan]), FakeStep([math.inf, 1e2])])
    assert (scale.lo, scale.hi) == pytest.approx((-2.0, 2.0))
    assert scale_for([FakeStep([0.0])]) == ColorScale(-3.0, 1.0, "rms")
    single = scale_for([FakeStep([10.0, 10.0])])
    assert (single.lo, single.hi) == pytest.approx((0.5, 1.5))


def test_colorbar_and_text_contrast():
    bar = colorbar(ColorScale(-2.5, 1.2))
    assert [label for _, label in bar["ticks"]] == ["1e-02", "1e-01", "1e+00", "1e+01"]
    assert bar["ticks"][0][0] == pytest.approx(0.5 / 3.7, abs=1e-4)
    assert bar["stops"][0] == [0.0, colormap(0.0)] and bar["stops"][-1] == [1.0, colormap(1.0)]
    assert bar["css"].startswith("linear-gradient(90deg, #fde725 0.0%")
    assert text_color_for("#440154") == "#ffffff" and text_color_for("#fde725") == "#000000"
    assert text_color_for("#fff") == "#000000"


# -- step selection ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("steps", "every", "expected"), [
    (None, 1, list(range(10))),
    (None, 4, [0, 4, 8]),
    ("2:5", 1, [2, 3, 4]),
    (":3", 1, [0, 1, 2]),
    ("7:", 1, [7, 8, 9]),
    ("-2:", 1, [8, 9]),
    (":-8", 1, [0, 1]),
    ("1:9:3", 1, [1, 4, 7]),
    ("0:10", 5, [0, 5]),
    (" 3 ", 1, [3]),
    ("-1", 1, [9]),
    (4, 1, [4]),
    (slice(2, 4), 1, [2, 3]),
    ("0:1000", 1, list(range(10))),
])
def test_select_steps(steps, every, expected):
    assert frames.select_steps(10, every, steps) == expected


@pytest.mark.parametrize(("steps", "every", "message"), [
    ("a:b", 1, "not a range"),
    ("1:2:3:4", 1, "not a range"),
    ("5:2", 1, "selects none"),
    ("::0", 1, "step of 0"),
    ("10", 1, "out of range"),
    ("", 1, "empty"),
    (None, 0, "every must be"),
    (None, 1.5, "every must be"),
    (3.0, 1, "range like"),
])
def test_select_steps_rejects_bad_values(steps, every, message):
    with pytest.raises(UsageError, match=message):
        frames.select_steps(10, every, steps)
    with pytest.raises(UsageError, match="no steps"):
        frames.select_steps(0)
