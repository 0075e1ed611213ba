"""Tests for vizgrad.panels: user panels drawn beside the graph."""

from __future__ import annotations

import json
import math

import pytest
import torch

import vizgrad
from vizgrad.errors import UsageError
from vizgrad.panels import Panel, ScatterLine, Series, panel_from_dict, round_sig
from vizgrad.run import Run, Step

from pages import page_data


def logged_run(data: list[dict]) -> Run:
    """A run whose steps carry only logged data (panels read nothing else)."""
    graph = vizgrad.Graph(nodes=(), edges=(), roots=())
    return Run([Step(i, None, graph, {}, {}, dict(d)) for i, d in enumerate(data)])


def test_round_sig():
    assert round_sig(2.718281828) == 2.7183
    assert round_sig(123456789) == 123460000
    assert round_sig(torch.tensor(0.5)) == 0.5
    assert round_sig(float("inf")) is None
    assert round_sig(float("nan")) is None
    assert round_sig("text") is None
    assert round_sig(True) is None


def test_scatter_line_with_fixed_points_and_a_slope_intercept_line():
    panel = ScatterLine("Fit", x=torch.tensor([[-2.0], [1.0], [4.0]]), y=[1, 2, 3], line_key="fit")
    assert panel.x == [-2.0, 1.0, 4.0]  # a column tensor is flattened
    run = logged_run([{"fit": {"slope": 2.0, "intercept": 3.0}}, {}, {"fit": {"slope": -1, "intercept": 0}}])
    spec = panel.spec(run, [0, 1, 2])
    assert spec["kind"] == "scatter_line"
    assert spec["points"] == [[-2.0, 1.0, 4.0], [1, 2, 3]]
    assert spec["stepPoints"] is None
    assert spec["lines"] == [[[-2.0, 4.0], [-1.0, 11.0]], None, [[-2.0, 4.0], [2.0, -4.0]]]
    assert json.loads(json.dumps(spec)) == spec  # JSON-able as it is


def test_scatter_line_with_logged_points_and_polyline():
    panel = ScatterLine("Moving", x_key="xs", y_key="ys", line_key="curve", x_label="t", y_label="v")
    run = logged_run([
        {"xs": [0, 1], "ys": [5, 6], "curve": [[0, 1], [1, 2], [2, 3]]},
        {"xs": [2, 3, 4], "ys": [7, 8]},  # y shorter: points are paired up to the shorter
    ])
    spec = panel.spec(run, [0, 1])
    assert spec["stepPoints"] == [[[0, 1], [5, 6]], [[2, 3], [7, 8]]]
    assert spec["lines"] == [[[0, 1, 2], [1, 2, 3]], None]
    assert (spec["xLabel"], spec["yLabel"]) == ("t", "v")
    assert panel.spec(run, [1])["stepPoints"] == [[[2, 3], [7, 8]]]  # only the selected steps


@pytest.mark.parametrize("kwargs, message", [
    ({"x": [1, 2]}, "both x and y"),
    ({"x_key": "a"}, "both x_key and y_key"),
    ({"x": [1], "y": [1], "x_key": "a", "y_key": "b"}, "not both"),
    ({"x": [1, 2], "y": [1]}, "2 values but y has 1"),
    ({}, "draws nothing"),
    ({"x": "abc", "y": "abc"}, "sequence of numbers"),
])
def test_scatter_line_rejects_bad_settings(kwargs, message):
    with pytest.raises(UsageError, match=message):
        ScatterLine("bad", **kwargs)


def test_series_panel_reads_logged_scalars():
    panel = Series("Accuracy", keys="acc", log_scale=True)
    assert panel.keys == ["acc"]
    spec = panel.spec(logged_run([{"acc": 0.5}, {}, {"acc": 0.75}]), [0, 1, 2])
    assert spec == {"kind": "series", "title": "Accuracy", "log": True,
                    "series": [{"name": "acc", "values": [0.5, None, 0.75]}]}
    with pytest.raises(UsageError):
        Series("Empty", keys=[])


def test_panels_round_trip_through_dicts():
    for panel in (ScatterLine("Fit", x=[1, 2], y=[3, 4], line_key="fit"), Series("Loss", keys=["a", "b"])):
        again = panel_from_dict(json.loads(json.dumps(panel.to_dict())))
        assert again == panel and type(again) is type(panel)
    with pytest.raises(UsageError, match="unknown panel kind 'pie'"):
        panel_from_dict({"kind": "pie", "title": "x"})


def test_base_panel_needs_a_spec():
    with pytest.raises(NotImplementedError):
        Panel("abstract").spec(logged_run([{}]), [0])


def test_panels_reach_the_report_with_the_logged_data():
    x = torch.linspace(-1, 1, 5).reshape(5, 1)
    y = 3 * x
    w = torch.zeros(1, 1, requires_grad=True)
    with vizgrad.record(params={"w": w}) as run:
        run.add_panel(ScatterLine("Data and fit", x=x.flatten().tolist(), y=y.flatten().tolist(), line_key="fit"))
        run.add_panel(Series("Slope", keys=["slope"]))
        for _ in range(4):
            loss = ((x.mm(w) - y) ** 2).mean()
            loss.backward()
            run.log("fit", {"slope": w.item(), "intercept": 0.0})
            run.log("slope", w.item())
            with torch.no_grad():
                w -= 0.5 * w.grad
            w.grad = None
    text = run.report().html()
    data = page_data(text)
    fit, slope = data["panels"]
    assert fit["title"] == "Data and fit" and len(fit["lines"]) == 4
    slopes = slope["series"][0]["values"]
    assert slopes[0] == 0 and all(a < b for a, b in zip(slopes, slopes[1:]))  # w climbs towards 3
    assert fit["lines"][-1][1][1] == pytest.approx(slopes[-1], rel=1e-4)  # the line through x=1 has y = w
    assert not math.isnan(slopes[-1])
