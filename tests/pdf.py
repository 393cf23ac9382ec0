"""A minimal PDF writer for test documents: text lines in Helvetica, nothing else.

Enough for pypdf to extract the text back; the committed corpus PDF was made with it
(``python -m tests.pdf SOURCE.txt OUT.pdf``), and tests make others on the fly.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

LINES_PER_PAGE = 46


def _escape(line: str) -> str:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(text: str, width: int = 90) -> bytes:
    """A PDF showing ``text`` (ASCII), wrapped at ``width`` characters."""
    lines: list[str] = []
    for paragraph in text.splitlines():
        lines += textwrap.wrap(paragraph, width) or [""]
    pages = [lines[i : i + LINES_PER_PAGE] for i in range(0, len(lines), LINES_PER_PAGE)]
    pages = pages or [[""]]
    # objects: 1 catalog, 2 page tree, 3 font, then a page and its content per page
    objects: list[bytes] = [b"", b"", b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for page in pages:
        ops = ["BT", "/F1 11 Tf", "14 TL", "60 770 Td"]
        ops += [f"({_escape(line)}) Tj T*" for line in page]
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        page_no, content_no = len(objects) + 1, len(objects) + 2
        kids.append(f"{page_no} 0 R")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 842] /Contents {content_no} 0 R "
            "/Resources << /Font << /F1 3 0 R >> >> >>".encode()
        )
        objects.append(
            b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream"
        )
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>".encode()
    return _assemble(objects)


def make_slow_pdf(operations: int) -> bytes:
    """A one-page PDF whose compressed content stream shows ``operations`` one-letter
    strings: a few kilobytes on the wire, about 10 microseconds a string to extract
    (10,000,000 of them: a hundred seconds of pypdf's time)."""
    import zlib

    stream = b"BT /F1 11 Tf " + b"(a) Tj " * operations + b"ET"
    data = zlib.compress(stream, 9)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 842] /Contents 5 0 R "
        b"/Resources << /Font << /F1 3 0 R >> >> >>",
        b"<< /Length "
        + str(len(data)).encode()
        + b" /Filter /FlateDecode >>\nstream\n"
        + data
        + b"\nendstream",
    ]
    return _assemble(objects)


def _assemble(objects: list[bytes]) -> bytes:
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\n".encode()
    out += f"startxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


if __name__ == "__main__":
    Path(sys.argv[2]).write_bytes(make_pdf(Path(sys.argv[1]).read_text()))
