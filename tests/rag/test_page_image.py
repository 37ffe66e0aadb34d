"""A cited page as an image: PDFs and image files rendered (upright, whatever their EXIF says), the
passage's rectangles marked where they are and nowhere else, and a page that cannot be shown
(gone, changed, no such page) said so with a PageImageError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rag.page_image import PAD_PX, PageImageError, highlight, pixel_rect, render_page
from tests.fixtures.documents import write_pdf

A4 = (595.2755737304688, 841.8897705078125)  # reportlab's A4, in points


def _changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    return (np.asarray(before.convert("RGB")) != np.asarray(after.convert("RGB"))).any(axis=2)


def test_highlight_changes_pixels_only_inside_the_scaled_padded_rectangles() -> None:
    page = Image.new("RGB", (400, 200), "white")
    boxes = [(10, 10, 50, 20), (30, 15, 80, 25)]  # page units; the image is twice the page's size
    marked = highlight(page, boxes, (200, 100))
    changed = _changed(page, marked)
    inside = np.zeros_like(changed)
    for box in boxes:
        left, top, right, bottom = pixel_rect(box, page.size, (200, 100))
        assert (left, top) == (2 * box[0] - PAD_PX, 2 * box[1] - PAD_PX)
        assert (right, bottom) == (2 * box[2] + PAD_PX, 2 * box[3] + PAD_PX)
        inside[top : bottom + 1, left : right + 1] = True
    assert changed[inside].all(), "every pixel of a rectangle is marked"
    assert not changed[~inside].any(), "nothing outside the rectangles is"
    # translucent: white turns yellow, overlapping rectangles are tinted once, and the page is not changed in place
    assert marked.getpixel((40, 40)) == marked.getpixel((70, 40)) != (255, 255, 255)
    assert marked.getpixel((70, 40))[2] < 128 < marked.getpixel((70, 40))[0]
    assert page.getpixel((40, 40)) == (255, 255, 255)


def test_text_under_a_highlight_stays_dark_and_boxes_off_the_page_are_clipped() -> None:
    page = Image.new("L", (100, 100), 255)
    page.paste(0, (40, 40, 60, 60))  # "ink"
    marked = highlight(page, [(30, 30, 70, 70), (90, 90, 500, 500), (1, 2, 3, float("nan"))], (100, 100))
    assert marked.mode == "RGB" and marked.size == (100, 100)
    assert marked.getpixel((50, 50)) == (0, 0, 0)
    assert marked.getpixel((99, 99)) != (255, 255, 255) and marked.getpixel((10, 10)) == (255, 255, 255)


def test_a_pdf_page_renders_at_the_width_asked_with_its_text_where_the_boxes_say(tmp_path: Path) -> None:
    pdf = write_pdf(tmp_path / "a.pdf", [["Page one."], ["The warranty lasts ten years, from the date of purchase."]])
    image = render_page(pdf, 2, 600, expect_size=A4)
    assert image.mode == "RGB" and image.width == 600
    assert abs(image.height - 600 * A4[1] / A4[0]) <= 1
    # reportlab drew the line at x=72, baseline y=780 from the bottom: top-left origin, about 770..782 down
    line = (72, A4[1] - 790, 380, A4[1] - 776)
    left, top, right, bottom = pixel_rect(line, image.size, A4)
    ink = np.asarray(image.convert("L")) < 128
    assert ink[top : bottom + 1, left : right + 1].sum() > 100, "the text is inside the rectangle"
    assert ink.sum() == ink[top : bottom + 1, left : right + 1].sum(), "and nowhere else on the page"
    marked = highlight(image, [line], A4)
    changed = _changed(image, marked)
    assert (
        changed[top : bottom + 1, left : right + 1].any()
        and changed.sum() == changed[top : bottom + 1, left : right + 1].sum()
    )


def test_an_exif_rotated_photo_renders_upright_and_is_only_scaled_down(tmp_path: Path) -> None:
    upright = Image.new("RGB", (120, 240), (220, 20, 20))
    upright.paste((20, 20, 220), (0, 120, 120, 240))  # red on top, blue below, as the reader sees it
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote: 240 x 120, sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    photo = tmp_path / "photo.jpg"
    stored.save(photo, quality=95, exif=exif)

    image = render_page(photo, None, 800, expect_size=(120, 240))
    assert image.size == (120, 240), "upright, and never enlarged"
    top, bottom = image.getpixel((60, 30)), image.getpixel((60, 210))
    assert top[0] > 180 > top[2] and bottom[2] > 180 > bottom[0]
    assert render_page(photo, 1, 60).size == (60, 120)
    with pytest.raises(PageImageError, match="changed since it was ingested"):
        render_page(photo, None, 800, expect_size=(240, 120))  # the boxes were measured on another picture


def test_a_multi_page_tiff_shows_its_first_frame(tmp_path: Path) -> None:
    tiff = tmp_path / "scan.tiff"
    first, second = Image.new("RGB", (50, 70), "white"), Image.new("RGB", (80, 30), "black")
    first.save(tiff, save_all=True, append_images=[second])
    image = render_page(tiff, 1, 500)
    assert image.size == (50, 70) and image.getpixel((5, 5)) == (255, 255, 255)
    with pytest.raises(PageImageError, match="one page"):
        render_page(tiff, 2, 500)


def test_pages_that_cannot_be_shown_say_why(tmp_path: Path) -> None:
    pdf = write_pdf(tmp_path / "a.pdf", [["Only page."]])
    with pytest.raises(PageImageError, match="no longer at"):
        render_page(tmp_path / "gone.pdf", 1, 400)
    with pytest.raises(PageImageError, match="has 1 page"):
        render_page(pdf, 3, 400)
    with pytest.raises(PageImageError, match="not recorded"):
        render_page(pdf, None, 400)
    with pytest.raises(PageImageError, match="changed since it was ingested"):
        render_page(pdf, 1, 400, expect_size=(612, 792))  # Letter when it was read, A4 now
    broken = tmp_path / "b.pdf"
    broken.write_bytes(b"%PDF-1.4 replaced by something else")
    with pytest.raises(PageImageError, match="no longer a readable PDF"):
        render_page(broken, 1, 400)
    not_an_image = tmp_path / "c.png"
    not_an_image.write_text("hello")
    with pytest.raises(PageImageError, match="no longer a readable image"):
        render_page(not_an_image, None, 400)
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes")
    with pytest.raises(PageImageError, match="no pages"):
        render_page(notes, None, 400)
