"""SVG frames to PNG, GIF and MP4 with wheel-only libraries (resvg, Pillow, imageio-ffmpeg)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vizgrad.errors import MissingDependencyError, OutputError, RasterError, UsageError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["SVG_DPI", "svg_to_png", "write_gif", "write_mp4"]

SVG_DPI = 96
"""Pixels per inch for SVG lengths in ``pt``: what browsers use, so PNGs match the HTML view."""

_BACKGROUND = (255, 255, 255)
_FALLBACK_FONT_FAMILY = "Aileron"

ProgressCallback = Callable[[int], object]


def svg_to_png(svg: str | bytes, width: int | None = None) -> bytes:
    """Rasterise one SVG document to PNG on a white background.

    Text is drawn with the system's fonts; on a system without any font files,
    a small font shipped inside Pillow is used instead, so labels never vanish.

    Args:
        svg: The SVG document (text or UTF-8 bytes), e.g. Graphviz output.
        width: Width of the PNG in pixels, height scaled to keep the aspect
            ratio; ``None`` for the SVG's own size at :data:`SVG_DPI`.

    Returns:
        The PNG file's bytes.

    Raises:
        UsageError: ``width`` is not a positive integer.
        RasterError: The SVG cannot be parsed or has no size.
        MissingDependencyError: ``resvg-py`` is not installed.
    """
    resvg_py = _import_optional("resvg_py", "resvg-py")
    if width is not None and (not isinstance(width, int) or isinstance(width, bool) or width <= 0):
        raise UsageError(f"width must be a positive number of pixels or None, got {width!r}")
    text = svg.decode("utf-8") if isinstance(svg, bytes) else svg
    try:
        png = resvg_py.svg_to_bytes(
            svg_string=text,
            background="white",
            dpi=float(SVG_DPI),
            width=width,
            **_font_options(),
        )
    except (ValueError, RuntimeError) as error:
        raise RasterError(f"cannot rasterise SVG: {error}") from error
    return bytes(png)


def write_gif(
    frames: Iterable[str | bytes],
    path: str | os.PathLike[str],
    fps: float = 4,
    width: int | None = None,
    progress: ProgressCallback | None = None,
) -> None:
    """Write SVG frames as a looping animated GIF.

    Every frame is drawn at the first frame's size: smaller frames are centred
    on white, larger ones shrunk to fit. Pillow merges a frame identical to the
    one before it into a longer frame, so the GIF can hold fewer frames than
    were given while its timing stays the same.

    Args:
        frames: SVG documents, one per frame; a generator is fine.
        path: Where to write the GIF; it is replaced only once all frames are
            written.
        fps: Frames per second.
        width: Frame width in pixels; ``None`` for the first SVG's own size.
        progress: Called with ``1`` after each frame is rasterised (e.g. a
            ``click.progressbar``'s ``update``).

    Raises:
        UsageError: No frames, or ``fps``/``width`` out of range.
        RasterError: A frame's SVG cannot be rasterised.
        MissingDependencyError: ``resvg-py`` or ``Pillow`` is not installed.
    """
    _check_fps(fps)
    images = _frame_images(frames, width, progress, even_size=False)
    first = next(images, None)
    if first is None:
        raise UsageError("write_gif() needs at least one frame")
    frame_ms = max(20, round(1000 / fps))  # most viewers treat < 20 ms as 100 ms
    with _replaced_atomically(Path(path)) as partial:
        first.save(
            partial,
            format="GIF",
            save_all=True,
            append_images=images,
            duration=frame_ms,
            loop=0,
        )


def write_mp4(
    frames: Iterable[str | bytes],
    path: str | os.PathLike[str],
    fps: float = 4,
    width: int | None = None,
    progress: ProgressCallback | None = None,
) -> None:
    """Write SVG frames as an H.264 MP4 (yuv420p, plays in browsers).

    Frames are streamed to the ffmpeg binary shipped in the ``imageio-ffmpeg``
    wheel one at a time, so memory use does not grow with the frame count.
    Every frame is drawn at the first frame's size rounded up to even
    dimensions (yuv420p needs them): smaller frames are centred on white,
    larger ones shrunk to fit.

    Args:
        frames: SVG documents, one per frame; a generator is fine.
        path: Where to write the MP4; it is replaced only once all frames are
            written.
        fps: Frames per second.
        width: Frame width in pixels; ``None`` for the first SVG's own size.
        progress: Called with ``1`` after each frame is encoded.

    Raises:
        UsageError: No frames, or ``fps``/``width`` out of range.
        RasterError: A frame's SVG cannot be rasterised, or ffmpeg failed.
        MissingDependencyError: ``resvg-py``, ``Pillow`` or ``imageio-ffmpeg``
            is not installed.
    """
    _check_fps(fps)
    imageio_ffmpeg = _import_optional("imageio_ffmpeg", "imageio-ffmpeg")
    images = _frame_images(frames, width, None, even_size=True)
    first = next(images, None)
    if first is None:
        raise UsageError("write_mp4() needs at least one frame")
    with _replaced_atomically(Path(path)) as partial:
        writer = imageio_ffmpeg.write_frames(
            str(partial),
            first.size,
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            macro_block_size=2,
            output_params=["-f", "mp4"],
        )
        try:
            writer.send(None)  # start ffmpeg
            for image in _chain_first(first, images):
                writer.send(image.tobytes())
                if progress is not None:
                    progress(1)
        except (OSError, RuntimeError) as error:
            raise RasterError(f"ffmpeg could not write the MP4: {error}") from error
        finally:
            writer.close()


def _frame_images(
    frames: Iterable[str | bytes],
    width: int | None,
    progress: ProgressCallback | None,
    *,
    even_size: bool,
) -> Iterator[Image.Image]:
    """Rasterise frames lazily to RGB images that all have the first frame's size."""
    image_module = _import_optional("PIL.Image", "Pillow")
    canvas_size: tuple[int, int] | None = None
    for svg in frames:
        with image_module.open(io.BytesIO(svg_to_png(svg, width))) as png:
            image = png.convert("RGB")
        if canvas_size is None:
            canvas_size = _even(image.size) if even_size else image.size
        if progress is not None:
            progress(1)
        yield _fit_on_canvas(image, canvas_size, image_module)


def _fit_on_canvas(image: Image.Image, size: tuple[int, int], image_module: Any) -> Image.Image:
    """Centre ``image`` on a white canvas of ``size``, shrinking it first if it is larger."""
    if image.size == size:
        return image
    if image.width > size[0] or image.height > size[1]:
        image = image.copy()
        image.thumbnail(size, image_module.Resampling.LANCZOS)
    canvas = image_module.new("RGB", size, _BACKGROUND)
    canvas.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
    return canvas


def _even(size: tuple[int, int]) -> tuple[int, int]:
    return (size[0] + size[0] % 2, size[1] + size[1] % 2)


def _chain_first(first: Image.Image, rest: Iterator[Image.Image]) -> Iterator[Image.Image]:
    yield first
    yield from rest


def _check_fps(fps: float) -> None:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 1000:
        raise UsageError(f"fps must be a number in (0, 1000], got {fps!r}")


@contextlib.contextmanager
def _replaced_atomically(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only on success."""
    directory = path.parent
    if not directory.is_dir():
        raise UsageError(f"cannot write {str(path)!r}: folder {str(directory)!r} does not exist")
    try:
        descriptor, partial_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=directory)
    except OSError as error:
        raise OutputError(f"cannot write {str(path)!r}: {error.strerror or error}") from error
    os.close(descriptor)
    partial = Path(partial_name)
    try:
        yield partial
        # mkstemp creates files private to us (0600); give the result the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _import_optional(module_name: str, pip_name: str) -> Any:
    """Import ``module_name`` or raise ``MissingDependencyError`` naming the pip package."""
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise MissingDependencyError(
            f"this output needs the Python package {pip_name!r}; run 'pip install {pip_name}'"
        ) from error


def _font_options() -> dict[str, Any]:
    """resvg font arguments: none when the system has fonts, else Pillow's bundled font."""
    fallback = _fallback_font_file()
    if fallback is None:
        return {}
    family = _FALLBACK_FONT_FAMILY
    return {
        "skip_system_fonts": True,
        "font_files": [str(fallback)],
        "font_family": family,
        "serif_family": family,
        "sans_serif_family": family,
        "monospace_family": family,
    }


@functools.cache
def _fallback_font_file() -> Path | None:
    """Pillow's built-in font written to a cache file, or ``None`` if system fonts exist."""
    if _system_has_fonts():
        return None
    try:
        from PIL import ImageFont

        font_bytes = ImageFont.load_default(size=12).font_bytes  # type: ignore[union-attr]
    except (ImportError, AttributeError, OSError):
        return None  # no FreeType in this Pillow: text will not be drawn
    digest = hashlib.sha256(font_bytes).hexdigest()[:16]
    font_file = Path(tempfile.gettempdir()) / f"vizgrad-{_FALLBACK_FONT_FAMILY}-{digest}.otf"
    if not (font_file.is_file() and font_file.stat().st_size == len(font_bytes)):
        descriptor, partial = tempfile.mkstemp(suffix=".otf", dir=font_file.parent)
        with os.fdopen(descriptor, "wb") as output:
            output.write(font_bytes)
        os.replace(partial, font_file)
    return font_file


def _system_font_dirs() -> list[Path]:
    """Where resvg (fontdb) looks for system fonts on this platform."""
    home = Path.home()
    if sys.platform == "win32":
        windows = Path(os.environ.get("WINDIR", r"C:\Windows"))
        local = Path(os.environ.get("LOCALAPPDATA", home / "AppData" / "Local"))
        return [windows / "Fonts", local / "Microsoft" / "Windows" / "Fonts"]
    if sys.platform == "darwin":
        return [Path("/Library/Fonts"), Path("/System/Library/Fonts"), home / "Library" / "Fonts"]
    data_home = Path(os.environ.get("XDG_DATA_HOME", home / ".local" / "share"))
    return [
        Path("/usr/share/fonts"),
        Path("/usr/local/share/fonts"),
        data_home / "fonts",
        home / ".fonts",
    ]


def _system_has_fonts() -> bool:
    suffixes = {".ttf", ".otf", ".ttc", ".otc"}
    for directory in _system_font_dirs():
        for _root, _dirs, files in os.walk(directory):
            if any(Path(name).suffix.lower() in suffixes for name in files):
                return True
    return False
