"""One loader per format; each turns a file into Pages that know their page number.

A loader raises :class:`LoadError` with a message a user can act on (what is wrong, what to do);
the pipeline records it against the file and carries on with the rest.
"""

from __future__ import annotations

import csv
import functools
import io
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.errors import LoadError
from ingest.ocr import OcrSettings, OcrUnavailable, read_image
from ingest.pdf import PageProgress, load_pdf
from rag.config import IngestSettings
from rag.types import Page

__all__ = ["LOADERS", "ArchiveLimits", "LoadError", "OcrSettings", "is_supported", "load_file"]


Loader = Callable[[Path, bytes], list[Page]]

_SNIFF_BYTES = 8192


def decode_text(data: bytes, path: Path) -> str:
    """Bytes -> str for text formats: UTF-8 (with or without BOM) first, else detected.

    Detection matters for Chinese users, whose older files are often GBK/GB18030.
    """
    if b"\x00" in data[:_SNIFF_BYTES] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise LoadError("looks binary (NUL bytes), not text; check the file or give it the right extension")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        raise LoadError("cannot detect the text encoding; convert it to UTF-8 (e.g. iconv -f GBK -t UTF-8)")
    # A lone match with many undecodable runs is a binary file wearing a text extension.
    if best.chaos > 0.5:
        raise LoadError("does not decode as text in any known encoding; is it binary?")
    # Short texts often fit several code pages equally well, and charset-normalizer breaks the tie
    # by its own order: cp1250 before cp1252 turned "crème brûlée" into "crčme brűlée". Among equal
    # fits, take the encoding legacy files are most often in.
    tied = [m for m in matches if (m.chaos, m.coherence) == (best.chaos, best.coherence)]
    return str(min(tied, key=_encoding_rank))


# The legacy encodings users' files are most often in, most common first (Chinese, then Western).
_COMMON_ENCODINGS = ("gb18030", "gbk", "gb2312", "big5", "cp1252", "latin_1", "iso8859_15", "utf_16")


def _encoding_rank(match: Any) -> int:
    try:
        return _COMMON_ENCODINGS.index(match.encoding)
    except ValueError:
        return len(_COMMON_ENCODINGS)


def load_text(path: Path, data: bytes) -> list[Page]:
    return [Page(decode_text(data, path), str(path))]


def load_html(path: Path, data: bytes) -> list[Page]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(decode_text(data, path), "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else ""
    body = soup.body or soup
    lines = (line.strip() for line in body.get_text("\n").splitlines())
    text = "\n".join(line for line in lines if line)
    return [Page(text, str(path), metadata={"title": title} if title else {})]


def load_docx(path: Path, data: bytes) -> list[Page]:
    """The document's paragraphs and tables in the order they stand: a heading (style "Title" or
    "Heading N") as a Markdown heading line, a table as a Markdown table (ingest.tables)."""
    import zipfile

    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise LoadError(f"not a readable .docx ({exc}); re-save it from Word") from exc
    blocks = [block for item in document.iter_inner_content() if (block := _docx_block(item))]
    return [Page("\n\n".join(blocks), str(path))]


def _docx_block(item: Any) -> str:
    """A body paragraph or table of a .docx as text ("" when it holds none)."""
    from docx.table import Table

    from ingest.tables import to_markdown

    if isinstance(item, Table):
        return to_markdown([[cell.text.strip() for cell in row.cells] for row in item.rows])
    if not item.text.strip():
        return ""
    marks = _docx_heading_marks(item)
    return marks + " ".join(item.text.split()) if marks else item.text


def _docx_heading_marks(paragraph: Any) -> str:
    """'# ' for a Title or Heading 1, '## ' for Heading 2 and so on ('' for other paragraphs)."""
    try:
        name = (paragraph.style.name or "") if paragraph.style is not None else ""
    except (KeyError, ValueError, AttributeError):  # a style the document names but does not define
        return ""
    if name == "Title":
        return "# "
    if name.startswith("Heading"):
        level = name.removeprefix("Heading").strip()
        depth = int(level) if level.isdigit() else 1
        return "#" * min(max(depth, 1), 6) + " "
    return ""


def _rows_as_text(header: list[str], rows: Iterator[list[str]]) -> str:
    """Each row becomes 'col: value; col: value' so a chunk keeps the meaning of its cells."""
    lines = []
    for row in rows:
        pairs = [f"{h}: {v}" for h, v in zip(header, row, strict=False) if str(v).strip()]
        if pairs:
            lines.append("; ".join(pairs))
    return "\n".join(lines)


def load_csv(path: Path, data: bytes) -> list[Page]:
    text = decode_text(data, path)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    header = next(reader, None)
    if header is None:
        return [Page("", str(path))]
    return [Page(_rows_as_text([h.strip() for h in header], reader), str(path))]


def load_xlsx(path: Path, data: bytes) -> list[Page]:
    """One Page per sheet (page_no = sheet position), rows as text with their header."""
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile/KeyError/InvalidFileException
        raise LoadError(f"not a readable .xlsx ({exc}); re-save it from Excel") from exc
    pages = []
    for number, sheet in enumerate(workbook.worksheets, start=1):
        rows = ([("" if c is None else str(c)) for c in row] for row in sheet.iter_rows(values_only=True))
        header = next(rows, None) or []
        text = _rows_as_text(header, rows)
        pages.append(Page(text, str(path), page_no=number, metadata={"sheet": sheet.title}))
    workbook.close()
    return pages


# Pillow decodes these; a photo of a page or a scan saved as an image is read with OCR.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
MAX_IMAGE_PIXELS = 12_000 * 12_000  # larger is a decompression bomb or not a page: refused before decoding


def load_image(path: Path, data: bytes, ocr: OcrSettings | None = None) -> list[Page]:
    """One Page read with OCR, its boxes in pixels of the image turned upright (EXIF orientation),
    which is how a phone photo is shown."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    ocr = ocr or OcrSettings()
    if ocr.mode == "off":
        raise LoadError("an image is read with OCR, and ingest.ocr is 'off'; set it to 'auto'", status="empty")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_IMAGE_PIXELS:
                raise LoadError(f"{opened.width}x{opened.height} pixels is too large for a page image; scale it down")
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise LoadError(f"not a readable image ({exc}); re-save it as PNG or JPEG") from exc
    try:
        result = read_image(image, ocr)
    except OcrUnavailable as exc:
        raise LoadError(str(exc)) from exc
    if not result.text.strip():
        raise LoadError(
            "OCR found no readable text in the image (blank, or too faint, small or blurred); "
            "photograph or scan the page again, flat and in focus",
            status="empty",
        )
    metadata = {"read": "ocr", "ocr_confidence": round(result.confidence, 3)}
    return [Page(result.text, str(path), page_no=1, metadata=metadata, layout=result.layout)]


LOADERS: dict[str, Loader] = {
    ".pdf": load_pdf,
    **dict.fromkeys(IMAGE_SUFFIXES, load_image),
    ".txt": load_text,
    ".text": load_text,
    ".md": load_text,
    ".markdown": load_text,
    ".rst": load_text,
    ".html": load_html,
    ".htm": load_html,
    ".docx": load_docx,
    ".csv": load_csv,
    ".tsv": load_csv,
    ".xlsx": load_xlsx,
}


def is_supported(path: Path) -> bool:
    return path.suffix.lower() in LOADERS


@dataclass(frozen=True)
class ArchiveLimits:
    """How far a zip-based file (DOCX, XLSX, and any such format added later) may unpack.
    The size on disk says nothing: a 3.6 MB .docx can hold 1 GB of XML."""

    max_unpacked_mb: float = 512.0
    max_ratio: float = 100.0

    @classmethod
    def from_settings(cls, ingest: IngestSettings) -> ArchiveLimits:
        return cls(ingest.max_unpacked_mb, ingest.max_compression_ratio)


# A part smaller than this cannot hurt whatever its ratio (a page of repeated table cells).
_RATIO_FROM_BYTES = 2**20


def check_archive(data: bytes, limits: ArchiveLimits) -> None:
    """Refuse a zip whose directory says it unpacks past the limits, before any parser
    inflates it. The sizes come from the central directory; Python's zipfile stops reading a
    member at its declared size, so a directory that lies cannot make a parser read more."""
    if not data.startswith(b"PK\x03\x04"):
        return
    try:
        members = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return  # not a readable zip: the format's own loader says why
    total = sum(m.file_size for m in members)
    limit = limits.max_unpacked_mb
    if total > limit * 2**20:
        raise LoadError(
            f"unpacks to {total / 2**20:,.0f} MB (limit {limit:g} MB, ingest.max_unpacked_mb); "
            "refused before parsing as a possible decompression bomb"
        )
    for m in members:
        ratio = m.file_size / max(m.compress_size, 1)
        if m.file_size > _RATIO_FROM_BYTES and ratio > limits.max_ratio:
            raise LoadError(
                f"unpacks to {m.file_size / 2**20:,.0f} MB ({m.filename} from {m.compress_size / 2**20:.2f} MB, "
                f"{ratio:,.0f} times; limit {limits.max_ratio:g} times, ingest.max_compression_ratio); refused "
                "before parsing as a possible decompression bomb"
            )


def _entity_bomb(exc: BaseException) -> bool:
    """Every XML parser the loaders use refuses entity expansion, each in its own words: lxml
    (python-docx; resolve_entities=False, and libxml2 caps amplification), defusedxml (openpyxl
    uses it when installed: `make setup` installs it) and expat (html, and anything else)."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain and len(chain) < 10:  # loaders wrap what the parser raised
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain).lower()
    return bool(names & {"EntitiesForbidden", "DTDForbidden", "ExternalReferenceForbidden"}) or "amplification" in text


def load_file(
    path: Path,
    data: bytes,
    limits: ArchiveLimits | None = None,
    ocr: OcrSettings | None = None,
    progress: PageProgress | None = None,
) -> list[Page]:
    """Pages of `path` (whose bytes the caller already read and hashed).  `progress(done, total)`
    follows the pages read with OCR, the slow part of any ingest that needs it."""
    loader: Callable[..., list[Page]] | None = LOADERS.get(path.suffix.lower())
    if loader is load_pdf:
        loader = functools.partial(load_pdf, ocr=ocr, progress=progress)
    elif loader is load_image:
        loader = functools.partial(load_image, ocr=ocr)
    if loader is None:
        supported = ", ".join(sorted(LOADERS))
        raise LoadError(f"unsupported format {path.suffix or '(none)'}; supported: {supported}")
    if not data.strip():
        raise LoadError("file is empty", status="empty")
    check_archive(data, limits or ArchiveLimits())
    try:
        pages = loader(path, data)
    except Exception as exc:
        if _entity_bomb(exc):
            raise LoadError(
                "its XML declares entities that expand (an entity-expansion bomb); refused. Re-save it from the "
                "program that made it"
            ) from exc
        raise
    if not any(p.text.strip() for p in pages):
        raise LoadError("no text found in the file", status="empty")
    return pages
