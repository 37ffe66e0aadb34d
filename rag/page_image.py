"""A cited page as the user knows it: the page rendered to an image, with the passage marked on it.

A chunk of a PDF page or an image records where it sits on its page (its ``boxes``, one
rectangle per line fragment, and the ``page_size`` they are measured in; see rag.evidence.Passage).
`render_page` draws the page (pypdfium2 for a PDF, Pillow for an image file, turned upright as
its EXIF orientation says) and `highlight` marks the rectangles on it, scaled by image size /
page size, so any surface (the web UI, a program using the API) can show a citation on its page.

The file is read again from disk, so it may be gone, or changed since it was ingested; both are a
`PageImageError` whose message says which, never a wrong highlight drawn on another page.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageOps

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
MIN_WIDTH_PX, MAX_WIDTH_PX = 50, 4000
MAX_HEIGHT_PX = 12_000  # a long thin page is rendered narrower rather than as a giant image
PAD_PX = 3  # image pixels added around each rectangle, so the mark does not clip ascenders
MARKER = (255, 224, 64)  # highlighter yellow; multiplied into the page, so the text stays black
SIZE_TOLERANCE = 0.01  # a page whose size differs by more than this from the ingested one has changed

Box = tuple[float, float, float, float]


class PageImageError(Exception):
    """The page cannot be shown: its file is gone, unreadable, changed, or has no such page."""


def render_page(
    path: str | Path, page_no: int | None, width_px: int, expect_size: Sequence[float] | None = None
) -> Image.Image:
    """The page as an RGB image `width_px` wide (an image file is only ever scaled down).

    :param path: a PDF or an image file (``.png .jpg .jpeg .tif .tiff .bmp .webp``).
    :param page_no: the 1-based page of a PDF; for an image, None or 1 (its first frame).
    :param width_px: the width wanted, clamped to 50..4000 pixels.
    :param expect_size: the page's [width, height] when it was ingested (PDF points, or pixels
        of the upright image); a page of another size means the file has changed, and the
        rectangles recorded for it would mark the wrong place.
    :returns: the rendered page.
    :raises PageImageError: the file is missing or unreadable, has no page `page_no`, or has changed.

    Usage::

        image = render_page("report.pdf", 2, 900, expect_size=passage.page_size)
        marked = highlight(image, passage.boxes, passage.page_size)
    """
    file = Path(path)
    width_px = max(MIN_WIDTH_PX, min(MAX_WIDTH_PX, int(width_px)))
    if not file.is_file():
        raise PageImageError(f"{file.name} is no longer at {file.parent} (moved or deleted since it was ingested)")
    suffix = file.suffix.lower()
    if suffix == ".pdf":
        return _render_pdf(file, page_no, width_px, expect_size)
    if suffix in IMAGE_SUFFIXES:
        return _render_image(file, page_no, width_px, expect_size)
    raise PageImageError(f"{file.name}: a {suffix or 'file without extension'} has no pages to show")


def _render_pdf(file: Path, page_no: int | None, width_px: int, expect_size: Sequence[float] | None) -> Image.Image:
    import pypdfium2 as pdfium

    if page_no is None:
        raise PageImageError(f"{file.name}: which page of the PDF to show was not recorded")
    try:
        doc = pdfium.PdfDocument(str(file))
    except (pdfium.PdfiumError, OSError) as exc:
        raise PageImageError(
            f"{file.name} is no longer a readable PDF ({exc}); it changed since it was ingested"
        ) from exc
    try:
        if not 1 <= page_no <= len(doc):
            raise PageImageError(
                f"{file.name} has {len(doc)} page(s), not a page {page_no}; it changed since it was ingested"
            )
        page = doc[page_no - 1]
        try:
            width, height = page.get_size()
            _check_size(file, (width, height), expect_size)
            scale = min(width_px / width, MAX_HEIGHT_PX / height)
            return page.render(scale=scale).to_pil().convert("RGB")  # convert copies out of pdfium's buffer
        finally:
            page.close()
    except pdfium.PdfiumError as exc:
        raise PageImageError(f"{file.name}, page {page_no}: cannot be drawn ({exc})") from exc
    finally:
        doc.close()


def _render_image(file: Path, page_no: int | None, width_px: int, expect_size: Sequence[float] | None) -> Image.Image:
    if page_no not in (None, 1):
        raise PageImageError(f"{file.name} is an image: it has one page, not a page {page_no}")
    try:
        with Image.open(file) as img:
            img.seek(0)  # a multi-page TIFF: its first frame, as it was read
            upright = ImageOps.exif_transpose(img)
            _check_size(file, upright.size, expect_size)
            if upright.width > width_px:
                height = max(1, round(upright.height * width_px / upright.width))
                upright = upright.resize((width_px, height), Image.Resampling.LANCZOS)
            return upright.convert("RGB")
    except PageImageError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise PageImageError(f"{file.name} is no longer a readable image ({exc})") from exc


def _check_size(file: Path, actual: Sequence[float], expected: Sequence[float] | None) -> None:
    if not expected:
        return
    (w, h), (ew, eh) = actual, expected
    if abs(w - ew) > SIZE_TOLERANCE * ew or abs(h - eh) > SIZE_TOLERANCE * eh:
        raise PageImageError(
            f"{file.name} changed since it was ingested: the page is {w:g} x {h:g}, it was {ew:g} x {eh:g}; "
            "ingest it again to see where the passage is"
        )


def highlight(image: Image.Image, boxes: Sequence[Sequence[float]], page_size: Sequence[float]) -> Image.Image:
    """A copy of `image` with each rectangle of `boxes` marked as a highlighter pen would.

    :param image: the rendered page (any mode; the result is RGB).
    :param boxes: [x0, y0, x1, y1] per line fragment, origin at the page's top-left, y down, in
        the units of `page_size` (PDF points or image pixels).
    :param page_size: [width, height] of the page in those units.
    :returns: the page with the rectangles, scaled to the image and padded by PAD_PX pixels,
        tinted yellow; overlapping rectangles are tinted once, and the text under them stays legible.
    """
    page = image.convert("RGB")
    width, height = (float(v) for v in page_size)
    if width <= 0 or height <= 0:
        raise ValueError(f"page_size must be positive, not {page_size!r}")
    sx, sy = page.width / width, page.height / height
    mask = Image.new("L", page.size, 0)
    draw = ImageDraw.Draw(mask)
    for box in boxes:
        rect = _scaled(box, sx, sy, page.size)
        if rect is not None:
            draw.rectangle(rect, fill=255)
    tinted = ImageChops.multiply(page, Image.new("RGB", page.size, MARKER))
    return Image.composite(tinted, page, mask)


def pixel_rect(box: Sequence[float], image_size: tuple[int, int], page_size: Sequence[float]) -> Box | None:
    """The image pixels `highlight` marks for `box` (inclusive corners), or None when it marks none."""
    width, height = (float(v) for v in page_size)
    return _scaled(box, image_size[0] / width, image_size[1] / height, image_size)


def _scaled(box: Sequence[float], sx: float, sy: float, size: tuple[int, int]) -> Box | None:
    if len(box) != 4:
        return None
    x0, y0, x1, y1 = (float(v) for v in box)
    if any(v != v for v in (x0, y0, x1, y1)):  # NaN: a fragment with no place on the page
        return None
    x0, x1 = sorted((x0 * sx, x1 * sx))
    y0, y1 = sorted((y0 * sy, y1 * sy))
    left, top = max(0, int(x0) - PAD_PX), max(0, int(y0) - PAD_PX)
    right, bottom = min(size[0] - 1, int(x1 + 0.999) + PAD_PX), min(size[1] - 1, int(y1 + 0.999) + PAD_PX)
    if right < left or bottom < top:
        return None
    return (left, top, right, bottom)
