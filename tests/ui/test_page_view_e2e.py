"""End to end, as a user: a PDF ingested by `rag ingest`, a question asked in `rag ui` (Debian's
chromium driven by Playwright), and the cited passage checked on its page: clicking [n] in the
answer opens the card's "Show on page", which shows the page image with the passage marked, and
marked nowhere else.  Screenshots go to test-artifacts/ui/; with UPDATE_DOCS_SCREENSHOTS=1 the
README's docs/ui-page.png is written too."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rag.page_image import pixel_rect, render_page
from tests.conftest import REPO
from tests.fixtures.documents import write_pdf
from tests.ui import test_e2e as e2e

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

browser = e2e.browser  # the module's own chromium (skips, saying how to install it, when there is none)
rag_env = e2e.rag_env
DOCS_SHOT = REPO / "docs" / "ui-page.png"
WARRANTY_PAGE = [
    "Warranty terms.",
    "The warranty lasts ten years from the date of purchase.",
    "It covers defects in the materials and workmanship of the battery module.",
    "Claims are made through the dealer who sold the unit.",
    "Exclusions.",
    "Damage from floods, fire or lightning is not covered.",
    "Cosmetic scratches that do not affect how the unit works are not covered.",
    "Service visits.",
    "A technician inspects the unit every two years at no charge.",
    "Book a visit by phone or through the customer portal.",
]


def _page_chunks(data: Path, kb_name: str, pdf: Path, page_no: int) -> list:
    """The chunks the ingest stored for one page of the PDF, with their metadata."""
    from rag.config import load_settings
    from rag.store import open_store

    with open_store(load_settings(data_dir=data), kb_name) as kb:
        doc = kb.document_by_path(str(pdf.resolve())) or next(d for d in kb.documents() if d.path.endswith(pdf.name))
        chunks = kb.chunks(kb.document_chunk_ids(doc.doc_id)).values()
        return [c for c in chunks if c.page_no == page_no]


def test_clicking_a_citation_shows_the_passage_marked_on_its_page(
    browser, rag_env: dict[str, str], tmp_path: Path
) -> None:
    pdf = write_pdf(
        tmp_path / "docs" / "handbook.pdf",
        [
            ["Installation guide.", "The unit weighs 120 kilograms and must be mounted on a solid wall."],
            WARRANTY_PAGE,
            ["Cleaning and care.", "Wipe the casing with a dry cloth once a month."],
        ],
    )
    # small chunks, so the page holds several passages and the highlight must pick the cited one
    small = rag_env | {"RAG_CHUNK__SIZE": "40", "RAG_CHUNK__OVERLAP": "0"}
    ingest = [sys.executable, "-m", "rag", "ingest", str(pdf.parent), "--kb", "handbook"]
    subprocess.run(ingest, env=small, cwd=tmp_path, check=True, capture_output=True, timeout=600)
    chunks = _page_chunks(Path(rag_env["RAG_DATA_DIR"]), "handbook", pdf, 2)
    assert len(chunks) > 1
    (chunk,) = [c for c in chunks if "ten years" in c.text]
    boxes, page_size = chunk.metadata["boxes"], chunk.metadata["page_size"]
    assert boxes and page_size, "the ingest records where the passage sits on its page"

    with e2e.running_ui(tmp_path, rag_env) as url:
        # tall enough that the answer, its card and the page fit without scrolling (for the crop below)
        page = browser.new_page(viewport={"width": 1100, "height": 2000})
        page.set_default_timeout(60_000)
        page.goto(url)
        e2e.ask(page, "How long does the warranty last?")
        card = page.locator(".rag-src").filter(has_text="page 2").filter(has_text="ten years").first
        card.wait_for(timeout=e2e.WAIT_MS)
        anchor = card.get_attribute("id")
        view = page.locator(f".st-key-page-{anchor}")
        view.get_by_text("Show on page").wait_for()  # drawn after the card's text
        assert view.locator("img").count() == 0, "the page is drawn only when asked for"

        page.locator(f'a.rag-cite[href="#{anchor}"]').first.click()  # [n] in the answer opens its page view
        image = view.locator("img")
        image.wait_for(timeout=e2e.WAIT_MS)
        page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=image.element_handle())
        assert view.locator("details").get_attribute("open") is not None
        assert "page 2 of handbook.pdf" in view.inner_text()

        shown = Image.open(io.BytesIO(page.request.get(image.get_attribute("src")).body())).convert("RGB")
        plain = render_page(pdf, 2, shown.width)
        assert shown.size == plain.size
        changed = (np.asarray(shown) != np.asarray(plain)).any(axis=2)
        marked = np.zeros_like(changed)
        for box in boxes:
            left, top, right, bottom = pixel_rect(box, shown.size, page_size)
            marked[top : bottom + 1, left : right + 1] = True
        ink = np.asarray(plain.convert("L")) < 128
        assert ink[~marked].sum() > 1000, "the page holds other passages' lines"
        assert changed.sum() > 2000, "a highlight is drawn"
        assert not changed[~marked].any(), "and only over the cited passage's lines"
        assert changed[marked].mean() > 0.5, "which it covers (the text's ink stays as it is)"
        yellow = np.asarray(shown)[changed]
        assert (yellow[:, 2] < yellow[:, 0] - 100).mean() > 0.9, "in a highlighter's yellow"

        view.scroll_into_view_if_needed()
        e2e.shot(page, "07-show-on-page")
        if os.environ.get("UPDATE_DOCS_SCREENSHOTS"):
            _docs_shot(page, image)


def _docs_shot(page, image) -> None:
    """The README's picture: the answer, its card and the top of the page with the passage marked."""
    message = page.get_by_test_id("stChatMessage").last.bounding_box()
    img = image.bounding_box()
    left, top = message["x"] - 8, message["y"] - 8
    right = img["x"] + img["width"] + 40  # past the card's right border
    clip = {"x": left, "y": top, "width": right - left, "height": img["y"] + 0.3 * img["height"] - top}
    page.screenshot(path=str(DOCS_SHOT), clip=clip)
