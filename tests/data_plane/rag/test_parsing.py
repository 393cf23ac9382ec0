"""File parsing: text out of .txt, .md, .html and .pdf; anything else refused by name."""

from __future__ import annotations

import pytest

from data_plane.rag.parsing import FILE_TYPES, DocumentRejected, parse_document
from tests.conftest import RAG_CORPUS
from tests.pdf import make_pdf


def test_every_corpus_file_parses() -> None:
    for path in sorted(RAG_CORPUS.iterdir()):
        text = parse_document(path.name, path.read_bytes())
        assert len(text) > 300, path.name


def test_markdown_and_text_are_kept_as_written() -> None:
    text = "\ufeff# Title\r\n\r\nCafé prices rose 5%.\r\n"
    assert parse_document("notes.MD", text.encode()) == "# Title\n\nCafé prices rose 5%."
    assert parse_document("notes.txt", b"  plain  ") == "plain"


def test_html_keeps_text_and_drops_scripts_and_styles() -> None:
    html = (
        b"<html><head><title>T</title><style>p{color:red}</style></head><body>"
        b"<h1>Rules</h1><p>Hard hats in <b>zone B</b>.</p><script>alert('x')</script>"
        b"<ul><li>one</li><li>two</li></ul>line<br>break</body></html>"
    )
    text = parse_document("page.html", html)
    assert "Hard hats in zone B." in text
    assert "Rules\n\nHard hats" in text
    assert "one\n\ntwo" in text and "line\nbreak" in text
    assert "alert" not in text and "color" not in text


def test_pdf_text_is_extracted() -> None:
    text = parse_document("returns.pdf", (RAG_CORPUS / "customer-returns.pdf").read_bytes())
    assert "RT-9" in text and "within 30 days of delivery" in " ".join(text.split())
    two_pages = make_pdf("\n".join(f"line {i}" for i in range(100)))
    assert "line 99" in parse_document("long.pdf", two_pages)


@pytest.mark.parametrize(
    ("name", "data", "kind"),
    [
        ("photo.png", b"\x89PNG\r\n", "unsupported"),
        ("archive.docx", b"PK\x03\x04", "unsupported"),
        ("README", b"text", "unsupported"),
        ("broken.pdf", b"%PDF-1.4 this is not really a pdf", "unreadable"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), "unreadable"),
        ("binary.md", b"abc\x00\x01\x02", "unreadable"),
        ("blank.md", b"  \n\n ", "empty"),
        ("empty.pdf", make_pdf(""), "empty"),
    ],
)
def test_unusable_files_are_rejected_with_a_reason(name: str, data: bytes, kind: str) -> None:
    with pytest.raises(DocumentRejected) as caught:
        parse_document(name, data)
    assert caught.value.kind == kind
    assert caught.value.reason
    if kind == "unsupported":
        assert ".pdf" in caught.value.reason  # says what is supported


def test_a_rejection_never_quotes_the_file() -> None:
    secret = "SECRETCONTENT123"
    for name, data in [
        ("x.pdf", f"%PDF-1.4 {secret}".encode()),
        ("x.txt", secret.encode("utf-16")),
        ("x.bin", secret.encode()),
    ]:
        with pytest.raises(DocumentRejected) as caught:
            parse_document(name, data)
        assert secret not in str(caught.value)


def test_supported_types() -> None:
    assert set(FILE_TYPES) >= {".txt", ".md", ".html", ".pdf"}
