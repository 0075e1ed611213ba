"""Tests for vizgrad.raster: SVG frames to PNG, GIF and MP4."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from vizgrad import raster
from vizgrad.errors import MissingDependencyError, RasterError, UsageError

Image = pytest.importorskip("PIL.Image")

# 150pt x 75pt is 200 x 100 px at 96 dpi; text only, so any dark pixel is a glyph.
TEXT_ONLY_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="150pt" height="75pt" viewBox="0 0 150 75">'
    '<text x="10" y="45" font-family="Times,serif" font-size="30">grad 0.5</text></svg>'
)


def _frame(label: str, width: int = 101, height: int = 51) -> str:
    """An SVG frame in px (odd sizes by default) with a box whose position depends on ``label``."""
    offset = 5 + 10 * (len(label) % 4)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f'<rect x="{offset}" y="5" width="30" height="20" fill="navy"/>'
        f'<text x="5" y="45" font-family="Times,serif" font-size="12">{label}</text></svg>'
    )


def _dark_pixels(image) -> int:
    grey = image.convert("L")
    return sum(grey.histogram()[:100])


def _decode_png(png: bytes):
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


# --- svg_to_png ---------------------------------------------------------------


def test_svg_to_png_has_svg_size_at_96_dpi_and_draws_text():
    image = _decode_png(raster.svg_to_png(TEXT_ONLY_SVG))
    assert image.size == (200, 100)
    assert _dark_pixels(image) > 50
    corner = image.convert("RGB").getpixel((0, 0))
    assert corner == (255, 255, 255)  # white background, not transparent


def test_svg_to_png_scales_to_width():
    image = _decode_png(raster.svg_to_png(TEXT_ONLY_SVG, width=400))
    assert image.size == (400, 200)


def test_svg_to_png_accepts_bytes():
    image = _decode_png(raster.svg_to_png(TEXT_ONLY_SVG.encode()))
    assert image.size == (200, 100)


def test_svg_to_png_renders_graphviz_labels():
    from vizgrad.engine import render_dot

    svg = render_dot('digraph { node [shape=box]; AddBackward0 -> AccumulateGrad }', engine="wasm")
    image = _decode_png(raster.svg_to_png(svg))
    boxes_only = render_dot('digraph { node [shape=box label=""]; a -> b }', engine="wasm")
    blank = _decode_png(raster.svg_to_png(boxes_only))
    assert _dark_pixels(image) > _dark_pixels(blank) + 100


def test_text_is_drawn_with_fallback_font_when_system_has_none(monkeypatch):
    monkeypatch.setattr(raster, "_system_has_fonts", lambda: False)
    raster._fallback_font_file.cache_clear()
    try:
        assert raster._font_options()["skip_system_fonts"] is True
        image = _decode_png(raster.svg_to_png(TEXT_ONLY_SVG))
    finally:
        raster._fallback_font_file.cache_clear()
    assert _dark_pixels(image) > 50


@pytest.mark.parametrize("width", [0, -5, 2.5, True])
def test_svg_to_png_rejects_bad_width(width):
    with pytest.raises(UsageError, match="width"):
        raster.svg_to_png(TEXT_ONLY_SVG, width=width)


@pytest.mark.parametrize("svg", ["not svg at all", '<svg xmlns="http://www.w3.org/2000/svg" width="0" height="0"/>'])
def test_svg_to_png_invalid_svg_raises_raster_error(svg):
    with pytest.raises(RasterError, match="cannot rasterise SVG"):
        raster.svg_to_png(svg)


def test_missing_resvg_names_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "resvg_py", None)
    with pytest.raises(MissingDependencyError, match="pip install resvg-py") as caught:
        raster.svg_to_png(TEXT_ONLY_SVG)
    assert isinstance(caught.value, ImportError)


# --- GIF ------------------------------------------------------------------------


def test_write_gif_has_one_frame_per_svg(tmp_path):
    path = tmp_path / "steps.gif"
    ticks = []
    frames = (_frame(label) for label in ["step 0", "step 10", "step 200"])
    raster.write_gif(frames, path, fps=5, progress=ticks.append)
    assert ticks == [1, 1, 1]
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.n_frames == 3
        assert gif.size == (101, 51)
        assert gif.info["duration"] == 200
        assert gif.info["loop"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["steps.gif"]


def test_write_gif_fits_other_sizes_to_first_frame(tmp_path):
    path = tmp_path / "mixed.gif"
    frames = [_frame("a"), _frame("bb", 60, 30), _frame("ccc", 300, 200)]
    raster.write_gif(frames, path)
    with Image.open(path) as gif:
        assert gif.n_frames == 3
        assert gif.size == (101, 51)


def test_write_gif_with_width(tmp_path):
    path = tmp_path / "wide.gif"
    raster.write_gif([_frame("a", 100, 50), _frame("bb", 100, 50)], path, width=200)
    with Image.open(path) as gif:
        assert gif.size == (200, 100)


def test_write_gif_without_frames_raises_usage_error(tmp_path):
    with pytest.raises(UsageError, match="at least one frame"):
        raster.write_gif(iter([]), tmp_path / "empty.gif")
    assert list(tmp_path.iterdir()) == []


def test_write_gif_bad_frame_leaves_no_file(tmp_path):
    path = tmp_path / "broken.gif"
    path.write_bytes(b"previous")
    with pytest.raises(RasterError):
        raster.write_gif([_frame("a"), "not svg"], path)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["broken.gif"]


@pytest.mark.parametrize("fps", [0, -1, "4"])
def test_write_gif_rejects_bad_fps(tmp_path, fps):
    with pytest.raises(UsageError, match="fps"):
        raster.write_gif([_frame("a")], tmp_path / "x.gif", fps=fps)


# --- MP4 ------------------------------------------------------------------------


def _decode_mp4(path, out_dir):
    """Decode ``path`` to PNG frames with the wheel's ffmpeg; return (ffmpeg's stream info, frames)."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    out_dir.mkdir()
    decoded = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path), str(out_dir / "%03d.png")],
        capture_output=True,
        text=True,
        check=True,
    )
    stream_info = next(line for line in decoded.stderr.splitlines() if "Video:" in line)
    frames = []
    for png in sorted(out_dir.iterdir()):
        with Image.open(png) as image:
            frames.append(image.convert("RGB"))
    return stream_info, frames


def test_write_mp4_streams_frames_with_even_size(tmp_path):
    path = tmp_path / "steps.mp4"
    ticks = []
    consumed = []

    def frames():
        for label in ["step 0", "step 10", "step 200"]:
            consumed.append(label)
            yield _frame(label)

    raster.write_mp4(frames(), path, fps=4, progress=ticks.append)
    assert ticks == [1, 1, 1]
    assert len(consumed) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["steps.mp4"]

    stream_info, decoded = _decode_mp4(path, tmp_path / "decoded")
    assert "h264" in stream_info
    assert "yuv420p" in stream_info
    assert " 4 fps" in stream_info
    assert len(decoded) == 3
    first = decoded[0]
    assert first.size == (102, 52)  # 101 x 51 padded to even
    assert first.getpixel((101, 51))[0] > 200  # white padding
    assert _dark_pixels(first) > 100  # the navy box and the text survived encoding


def test_write_mp4_fits_other_sizes_to_first_frame(tmp_path):
    path = tmp_path / "mixed.mp4"
    raster.write_mp4([_frame("a", 80, 40), _frame("bb", 61, 33), _frame("ccc", 300, 200)], path)
    _, decoded = _decode_mp4(path, tmp_path / "decoded")
    assert [frame.size for frame in decoded] == [(80, 40)] * 3


def test_write_mp4_without_frames_raises_usage_error(tmp_path):
    with pytest.raises(UsageError, match="at least one frame"):
        raster.write_mp4([], tmp_path / "empty.mp4")
    assert list(tmp_path.iterdir()) == []


def test_missing_imageio_ffmpeg_names_pip_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(MissingDependencyError, match="pip install imageio-ffmpeg"):
        raster.write_mp4([_frame("a")], tmp_path / "x.mp4")
