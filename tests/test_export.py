"""Tests of vizgrad.export: formats from paths, SVG frames, DOT sources, GIF and MP4 files."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import torch

import vizgrad
from vizgrad import engine, export
from vizgrad.errors import UsageError
from vizgrad.view import ViewOptions


def record_two_topologies() -> vizgrad.Run:
    w = torch.tensor(1.0, requires_grad=True)
    with vizgrad.record(params={"w": w}) as run:
        for i in range(4):
            loss = (w - 2) ** 2 if i < 2 else (w - 2) ** 2 + w.abs()
            loss.backward()
            w.grad = None
    return run


@pytest.mark.parametrize(("path", "fmt", "expected"), [
    ("run.html", None, "html"),
    ("run.HTM", None, "html"),
    ("report", None, "html"),
    ("frames", "svg", "svg"),
    ("anything.html", "GIF", "gif"),
    ("run.gif", None, "gif"),
    ("run.mp4", None, "mp4"),
    ("graph.dot", None, "dot"),
    ("graph.gv", None, "dot"),
    ("frame.svg", None, "svg"),
])
def test_format_for(path, fmt, expected):
    assert export.format_for(path, fmt) == expected


def test_format_for_rejects_unknown_formats():
    with pytest.raises(UsageError, match=r"unknown format 'png'; choose one of html, svg, dot, gif, mp4"):
        export.format_for("x.html", "png")
    with pytest.raises(UsageError, match=r"'\.png'.*html, svg, dot, gif, mp4"):
        export.format_for("x.png")


def test_export_svg_frames(seed_run, tmp_path):
    engine.reset_calls()
    written = export.export(seed_run, tmp_path / "frames", "svg", every=10)
    assert [p.name for p in written] == [f"step-0000{i}0.svg" for i in range(5)]
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [p.name for p in written]
    assert engine.calls() == 1
    for path in written:
        root = ET.fromstring(path.read_text(encoding="utf-8"))
        assert root.get("width").endswith("pt")
    assert written[0].read_text() != written[-1].read_text()
    only = export.export(seed_run, tmp_path / "late", "svg", steps="-3:", progress=False)
    assert [p.name for p in only] == ["step-000047.svg", "step-000048.svg", "step-000049.svg"]


def test_export_dot_one_and_several_topologies(seed_run, tmp_path):
    (one,) = export.export(seed_run, tmp_path / "seed.dot")
    assert one == tmp_path / "seed.dot"
    assert one.read_text() == seed_run.steps[0].graph.to_dot()
    run = record_two_topologies()
    written = export.export(run, tmp_path / "run.dot")
    assert [p.name for p in written] == ["run-1.dot", "run-2.dot"]
    assert "AbsBackward0" not in written[0].read_text() and "AbsBackward0" in written[1].read_text()
    assert export.export(run, tmp_path / "late.dot", steps="2:") == [tmp_path / "late.dot"]


def test_export_gif(seed_run, tmp_path):
    from PIL import Image

    (path,) = export.export(seed_run, tmp_path / "run.gif", steps=":5", fps=5)
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        assert gif.info["duration"] == 200
        assert gif.size[0] > 100


def test_export_mp4(seed_run, tmp_path):
    import imageio_ffmpeg

    (path,) = export.export(seed_run, tmp_path / "run.mp4", every=10, fps=5)
    frames, _seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert frames == 5


def test_export_progress_bar(seed_run, tmp_path, capsys):
    export.export(seed_run, tmp_path / "frames", "svg", steps=":3", progress=True)
    assert "Writing frames/" in capsys.readouterr().err
    export.export(seed_run, tmp_path / "quiet", "svg", steps=":3")  # stderr is no terminal here
    assert capsys.readouterr().err == ""


def test_export_html_goes_through_the_report(tmp_path):
    calls = []

    class FakeReport:
        progress = None

        def layouts_to_draw(self):
            return 3

        def save(self, path):
            calls.append(("save", path, self.progress))
            return path

    class FakeRun:
        def report(self, **options):
            calls.append(("report", options))
            return FakeReport()

    view = ViewOptions(depth=1)
    assert export.export(FakeRun(), tmp_path / "r.html", every=2, steps="1:", view=view) == [tmp_path / "r.html"]
    assert calls == [("report", {"every": 2, "steps": "1:", "engine": None, "view": view, "scale": "rms"}),
                     ("save", tmp_path / "r.html", None)]  # no progress bar for 3 layouts off a terminal


def test_export_rejects_bad_targets(seed_run, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        export.export(seed_run, tmp_path / "file", "svg")
    with pytest.raises(UsageError, match="is a folder"):
        export.export(seed_run, tmp_path, "gif")
    with pytest.raises(UsageError, match="does not exist"):
        export.export(seed_run, tmp_path / "missing" / "x.dot")
    with pytest.raises(UsageError, match="every must be"):
        export.export(seed_run, tmp_path / "f", "svg", every=0)


def test_gif_and_mp4_frames_show_the_step_the_loss_and_the_legend(seed_run, tmp_path):
    from vizgrad import frames, raster

    renderer = frames.FrameRenderer(seed_run, "wasm", steps="3:5")
    annotated = list(renderer.annotated_svgs())
    plain = list(renderer.svgs())
    assert len(annotated) == 2
    for index, svg, inner in zip((3, 4), annotated, plain):
        assert f">step {index}</text>" in svg and f"loss {seed_run.steps[index].loss:.6g}" in svg
        assert "gradient RMS" in svg and ">NaN</text>" in svg and ">no gradient</text>" in svg
        assert inner.split(">", 1)[1] in svg  # the frame itself, unchanged, inside
    pytest.importorskip("resvg_py")
    png = raster.svg_to_png(annotated[0])
    from PIL import Image
    import io

    image = Image.open(io.BytesIO(png))
    layout = renderer.layout_of(3)
    assert image.size[1] == pytest.approx((layout.height + 72) * raster.SVG_DPI / 72, abs=2)
