"""OCR with the real RapidOCR on scans the tests draw: English and Chinese, crooked and noisy,
mixed PDFs, phone photos, and pages nothing can be read from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ingest.layout import chunk_boxes, scrambled
from ingest.loaders import LoadError, OcrSettings, load_file
from ingest.ocr import OcrUnavailable
from ingest.pdf import garbled
from ingest.pipeline import IngestPipeline, open_for_ingest
from rag.lexical import tokenize
from tests.conftest import REPO, shared_path
from tests.fixtures.documents import write_pdf
from tests.fixtures.scans import CJK_FONT, degraded, image_pdf, mixed_pdf, page_image, save_jpeg

ENGLISH = [
    "Helios H10 service report",
    "The inverter was replaced on 12 March 2024.",
    "Battery capacity measured at 9.6 kWh.",
    "Next inspection is due in September.",
]
CHINESE = ["海川储能电池说明", "逆变器保修期为五年。", "电池模块保修十年。"]


def load(path: Path, **ocr) -> list:
    return load_file(path, path.read_bytes(), ocr=OcrSettings(**ocr))


def words(text: str) -> set[str]:
    return set(text.lower().replace(".", " ").split())


def test_an_english_scan_image_is_read_with_its_place_on_the_page(tmp_path: Path) -> None:
    path = tmp_path / "report.png"
    page_image(ENGLISH).save(path)
    (page,) = load(path)
    assert page.text.splitlines() == ENGLISH
    assert page.metadata["read"] == "ocr" and page.metadata["ocr_confidence"] > 0.9
    layout = page.layout
    assert (layout.width, layout.height) == (1100, 700)
    assert layout.boxes.shape == (len(page.text), 4)
    start = page.text.index("Battery")
    (box,) = chunk_boxes(layout, start, start + len(ENGLISH[2]))
    # page_image draws line k at y = 60 + 61k from x = 70: the third line's box is where it was drawn.
    assert 55 <= box[0] <= 80 and 165 <= box[1] <= 190 and box[3] < 235 and box[2] > 500


def test_a_chinese_scan_comes_out_as_chinese_that_bm25_finds(tmp_path: Path) -> None:
    path = image_pdf(tmp_path / "说明.pdf", [page_image(CHINESE, CJK_FONT)])
    (page,) = load(path)
    assert page.metadata["read"] == "ocr"
    assert "逆变器保修期为五年" in page.text
    assert {"逆变器", "保修期"} <= set(tokenize(page.text)), "jieba tokens the BM25 index matches"


def test_a_crooked_noisy_jpeg_scan_is_read(tmp_path: Path) -> None:
    path = save_jpeg(degraded(page_image(ENGLISH)), tmp_path / "crooked.jpg", quality=55)
    (page,) = load(path)
    expected = words(" ".join(ENGLISH))
    assert len(expected & words(page.text)) >= 0.9 * len(expected), page.text


def test_a_phone_photo_turned_by_exif_is_read_upright(tmp_path: Path) -> None:
    path = save_jpeg(page_image(ENGLISH), tmp_path / "photo.jpg", quality=85, orientation=6)
    (page,) = load(path)
    assert "inverter was replaced" in page.text
    assert (page.layout.width, page.layout.height) == (1100, 700), "boxes are on the upright image"


def test_upright_lines_of_a_real_page_are_never_turned_over(tmp_path: Path) -> None:
    """RapidOCR's line-angle classifier turned this upright sentence of a real PDF, rendered as a
    scan, upside down, and it came out as "Tat t -t st t = s a ss e st at"."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(str(shared_path("docs", "pdf", "file_general_elements.pdf")))
    try:
        image = document[0].render(scale=200 / 72).to_pil()
    finally:
        document.close()
    path = image_pdf(tmp_path / "scan.pdf", [image])
    (page,) = load(path)
    assert "The assignment operator is a single equal sign, = and is a right-to-left assignment." in page.text


def test_a_mixed_pdf_keeps_its_text_layer_and_reads_the_scanned_page(tmp_path: Path) -> None:
    path = mixed_pdf(tmp_path / "mixed.pdf", ["Page one has a real text layer."], page_image(ENGLISH))
    text_page, scanned = load(path)
    assert text_page.metadata == {"read": "text"} and "real text layer" in text_page.text
    assert scanned.metadata["read"] == "ocr" and "Battery capacity measured" in scanned.text
    assert scanned.page_no == 2
    # The scanned page's boxes are in PDF points, like the text layer's: both render the same way.
    assert scanned.layout.width == pytest.approx(text_page.layout.width, abs=1)


def test_a_garbled_or_misplaced_text_layer_is_read_with_ocr_instead() -> None:
    """react_paper.pdf sets its figures' text in a font whose Unicode map is off by a constant:
    page 2's text layer spells "Act 1: Think" as "$FW\\x14\\x1d7KLQN".  On pages 20 and 29 the
    words are right but their boxes sit half a line off and out of order, so a highlight drawn
    from them marked the wrong lines."""
    path = shared_path("docs", "pdf", "react_paper.pdf")
    layer = {p.page_no: p for p in load(path, mode="off")}
    assert "7KLQN" in layer[2].text and garbled(layer[2].text)
    assert not any(garbled(layer[n].text) for n in layer if n not in (2, 9))
    assert layer[20].layout is None and layer[29].layout is None, "no OCR: the words, and no boxes to misplace"
    assert "Sensitive Skin, Pregnancy" in layer[20].text and layer[3].layout is not None
    pages = {p.page_no: p for p in load(path)}
    assert pages[2].metadata["read"] == "ocr" and pages[2].metadata["ocr_confidence"] > 0.9
    assert "Act 1: Search[Apple Remote]" in pages[2].text and "7KLQN" not in pages[2].text
    assert pages[9].metadata["read"] == "ocr" and pages[3].metadata == {"read": "text"}
    assert pages[3].text == layer[3].text  # readable pages keep their text layer
    assert [n for n, p in pages.items() if p.metadata["read"] == "ocr"] == [2, 9, 20, 29]
    twenty = pages[20]
    assert twenty.layout is not None and not scrambled(twenty.text, twenty.layout)
    at = twenty.text.index("Sensitive Skin")
    (x0, y0, x1, y1), *_ = chunk_boxes(twenty.layout, at, at + len("Sensitive Skin"))
    assert y1 - y0 < 15 and x1 - x0 < 0.6 * twenty.layout.width, "one line's words, where OCR read them"


def test_without_ocr_installed_a_garbled_page_keeps_its_text_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    import ingest.pdf

    def missing(*_: object) -> None:  # what read_image raises where rapidocr is not installed
        raise OcrUnavailable("OCR needs rapidocr and onnxruntime")

    monkeypatch.setattr(ingest.pdf, "read_image", missing)
    path = shared_path("docs", "pdf", "react_paper.pdf")
    pages = {p.page_no: p for p in load(path)}
    assert pages[2].metadata == {"read": "text"} and "7KLQN" in pages[2].text
    assert pages[20].layout is None and "Sensitive Skin, Pregnancy" in pages[20].text, "its words, no wrong boxes"


def test_garbage_is_told_from_text_in_any_script() -> None:
    assert garbled("$FW\x14\x1d7KLQN>)LUVW,QHHGWRILQG\x11\x11\x11" * 3)
    assert garbled("Net sales (cid:3)(cid:4)(cid:5) 34,229 (cid:12)(cid:9)")
    assert not garbled("chain-of\x02thought reasoning, \ufffe hyphenated \uf0b7 a bullet in a symbol font")
    assert not garbled("逆变器保修期为五年。电池模块保修十年。") and not garbled("")


def test_a_scan_ocr_cannot_read_is_empty_with_the_reason(tmp_path: Path) -> None:
    noise = np.random.default_rng(1).integers(200, 256, (700, 1100, 3), dtype=np.uint8)
    from PIL import Image

    path = image_pdf(tmp_path / "faded.pdf", [Image.fromarray(noise)])
    with pytest.raises(LoadError, match="OCR found no readable text") as err:
        load(path)
    assert err.value.status == "empty"


def test_ocr_off_leaves_scans_empty_and_says_how_to_read_them(tmp_path: Path) -> None:
    path = image_pdf(tmp_path / "scan.pdf", [page_image(ENGLISH)])
    with pytest.raises(LoadError, match=r"ingest\.ocr = 'auto'") as err:
        load(path, mode="off")
    assert err.value.status == "empty"


def test_ocr_always_reads_pages_that_have_a_text_layer(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "typed.pdf", [["The warranty lasts ten years."]])
    (page,) = load(path, mode="always")
    assert page.metadata["read"] == "ocr" and "warranty lasts ten years" in page.text


def test_text_layer_boxes_cover_the_cited_text(tmp_path: Path) -> None:
    """write_pdf draws line k of a page at baseline y = 780 - 18k (points from the bottom of an
    A4 page, 841.9 high) from x = 72, in 12 pt Helvetica."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    lines = ["Page two is about warranty.", "The warranty lasts ten years.", "Keep the receipt."]
    path = write_pdf(tmp_path / "w.pdf", [lines])
    (page,) = load(path)
    start = page.text.index(lines[1])
    (box,) = chunk_boxes(page.layout, start, start + len(lines[1]))
    baseline = 841.89 - (780 - 18)
    assert box[0] == pytest.approx(72, abs=1.5)
    assert box[2] == pytest.approx(72 + stringWidth(lines[1], "Helvetica", 12), abs=1.5)
    assert baseline - 10 <= box[1] < baseline - 6 and baseline <= box[3] <= baseline + 4
    two = chunk_boxes(page.layout, page.text.index(lines[0]), start + len(lines[1]))
    assert len(two) == 2 and two[0][1] < two[1][1], "one rectangle per line, top to bottom"


# onnxruntime turns its telemetry off by itself under these (CI=true on most CI machines), which
# would make both halves of the test below pass or fail for a reason that is not ours.
QUIET_ORT = {
    "ORT_DISABLE_TELEMETRY",
    "ORT_RUNNING_UNIT_TESTS",
    "CI",
    "TF_BUILD",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "CIRCLECI",
    "TRAVIS",
    "JENKINS_URL",
    "CODEBUILD_BUILD_ID",
    "BUILDKITE",
    "TEAMCITY_VERSION",
    "APPVEYOR",
    "BITBUCKET_BUILD_NUMBER",
}


def test_onnxruntime_telemetry_is_off_and_writes_nothing(tmp_path: Path) -> None:
    """onnxruntime writes ~/.cache/Microsoft (and looks up hosts) unless ORT_DISABLE_TELEMETRY is
    set before it is imported; the OCR module sets it.  With it explicitly 0 the folder appears,
    which shows this test would notice."""
    image = tmp_path / "p.png"
    page_image(ENGLISH[:1]).save(image)
    code = (
        "import sys; from pathlib import Path; from ingest.loaders import load_file; "
        "p = Path(sys.argv[1]); print(load_file(p, p.read_bytes())[0].text)"
    )

    def run(home: Path, **env: str) -> str:
        clean = {k: v for k, v in os.environ.items() if k not in QUIET_ORT}
        # onnxruntime's device id goes under $XDG_CACHE_HOME when that is set (as on CI), else ~/.cache
        cache = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
        done = subprocess.run(
            [sys.executable, "-c", code, str(image)],
            env={**clean, **cache, **env},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return done.stdout

    assert "service report" in run(tmp_path / "ours")
    assert not (tmp_path / "ours" / ".cache" / "Microsoft").exists()
    run(tmp_path / "telemetry-on", ORT_DISABLE_TELEMETRY="0")
    assert (tmp_path / "telemetry-on" / ".cache" / "Microsoft").exists()


def test_an_ingest_reads_scans_photos_and_says_which_pages_were_ocred(settings, embedder, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    image_pdf(docs / "scanned-report.pdf", [page_image(ENGLISH)])
    save_jpeg(page_image(CHINESE, CJK_FONT), docs / "photo.jpg", orientation=6)
    blank = np.full((700, 1100, 3), 255, dtype=np.uint8)
    from PIL import Image

    image_pdf(docs / "partly-blank.pdf", [page_image(["Appendix: cleaning the casing."]), Image.fromarray(blank)])
    with open_for_ingest(settings, "t", embedder) as base:
        report = IngestPipeline(settings, embedder, base).run([docs])
        assert (report.added, report.failed, report.empty) == (3, 0, 0)
        docs_by_name = {Path(d.path).name: d for d in base.documents()}
        assert docs_by_name["partly-blank.pdf"].error.startswith("OCR read nothing on page 2")
        hits = base.lexical_candidates("逆变器保修期", 3)
        (top,) = base.chunks([hits[0][0]]).values()
        assert top.source.endswith("photo.jpg") and top.metadata["read"] == "ocr"
        assert top.metadata["boxes"] and top.metadata["page_size"] == [1100, 700]


def test_a_page_that_cannot_be_drawn_keeps_its_text_and_boxes() -> None:
    """Checking the boxes means drawing the page; a page pdfium cannot draw is not failed for it."""
    import pypdfium2 as pdfium

    from ingest.pdf import _misplaced, text_layer

    document = pdfium.PdfDocument(str(shared_path("docs", "pdf", "react_paper.pdf")))
    try:
        text, layout = text_layer(document[19])

        class Undrawable:
            def render(self, **_: object) -> None:
                raise pdfium.PdfiumError("Failed to render page")

        assert not _misplaced(Undrawable(), text, layout)
        assert _misplaced(document[19], text, layout), "drawn, page 20's boxes are found misplaced"
    finally:
        document.close()
