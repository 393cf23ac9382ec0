"""Text out of the files an operator loads: .txt, .md, .html and .pdf.

A file that is not one of these, or that cannot be read as one, raises
:class:`DocumentRejected` with a reason that names the problem and never quotes the
file (the reason travels back to the operator's CLI; it may be logged).
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import PurePosixPath

from data_plane.rag.chunking import normalize

TEXT_TYPES = frozenset({".txt", ".md", ".markdown"})
HTML_TYPES = frozenset({".html", ".htm"})
PDF_TYPES = frozenset({".pdf"})
FILE_TYPES = tuple(sorted(TEXT_TYPES | HTML_TYPES | PDF_TYPES))

# pypdf warns about malformed structure (object numbers, offsets); keep its chatter down.
logging.getLogger("pypdf").setLevel(logging.ERROR)

_BLOCK_TAGS = [
    *("p", "div", "section", "article", "main", "header", "footer", "aside", "nav"),
    *("li", "ul", "ol", "dl", "dt", "dd", "table", "tr", "pre", "blockquote"),
    *("h1", "h2", "h3", "h4", "h5", "h6", "figure", "figcaption", "form", "fieldset"),
    *("details", "summary"),
]
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANKS = re.compile(r"\n\s*\n\s*")


class DocumentRejected(ValueError):
    """A file that is refused; ``kind`` is ``unsupported``, ``unreadable``, ``empty``,
    ``too_large`` (past a page or size limit) or ``too_slow`` (past the parse time)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def file_type(name: str) -> str:
    return PurePosixPath(name).suffix.lower()


def parse_document(name: str, data: bytes, *, max_pages: int | None = None) -> str:
    """The text of file ``name`` (its type from the extension), normalised.

    Nodes call this through ``data_plane.rag.parser_process``, never in their own
    process: a crafted file can make it slow.
    """
    kind = file_type(name)
    if kind in TEXT_TYPES:
        text = _plain(data)
    elif kind in HTML_TYPES:
        text = _html(data)
    elif kind in PDF_TYPES:
        text = _pdf(data, max_pages)
    else:
        # The reason names the types that work, not the name it got (never echoed).
        raise DocumentRejected("unsupported", f"unsupported file type; use {', '.join(FILE_TYPES)}")
    text = normalize(text)
    if not text:
        raise DocumentRejected("empty", "no text in this file")
    return text


def _plain(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise DocumentRejected("unreadable", "binary data, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DocumentRejected("unreadable", "not UTF-8 text") from None


def _html(data: bytes) -> str:
    from bs4 import BeautifulSoup

    try:
        soup = BeautifulSoup(data, "html.parser")
    except Exception:  # the parser's errors name positions in the input
        raise DocumentRejected("unreadable", "not readable as HTML") from None
    for tag in soup(["script", "style", "noscript", "template", "svg", "head"]):
        tag.decompose()
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for tag in soup.find_all(_BLOCK_TAGS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    text = soup.get_text()
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", "\n".join(lines))


def _pdf(data: bytes, max_pages: int | None) -> str:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise DocumentRejected("unreadable", "encrypted PDF")
        count = len(reader.pages)
        if max_pages is not None and count > max_pages:
            raise DocumentRejected("too_large", f"{count} pages; at most {max_pages}")
        pages = [page.extract_text() or "" for page in reader.pages]
    except DocumentRejected:
        raise
    except Exception:  # pypdf raises many kinds on a damaged file
        raise DocumentRejected("unreadable", "not a readable PDF") from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text.strip():
        raise DocumentRejected("empty", "no extractable text in this PDF (scanned pages?)")
    return text
