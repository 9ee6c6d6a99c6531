"""Uploaded files to document text: .txt and .md as UTF-8, .pdf through pypdf; one clear error otherwise."""

from __future__ import annotations

import io
from pathlib import Path

from lift_ray.text import DocumentError, check_document_text, decode_document

TEXT_SUFFIXES = (".txt", ".md")
UPLOAD_SUFFIXES = (*TEXT_SUFFIXES, ".pdf")
DEFAULT_UPLOAD_LIMIT_BYTES = 5 * 2**20


def pdf_text(data: bytes, name: str) -> str:
    """The text of every page, pages separated by blank lines; DocumentError if there is none."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:  # pypdf raises these on broken files
        raise DocumentError(f"{name} is not a readable PDF ({type(exc).__name__}: {exc})") from None
    text = "\n\n".join(p for p in pages if p)
    if not text.strip():
        raise DocumentError(f"{name} has no text layer (a scanned PDF?); paste its text instead")
    return text


def read_upload(path: str | Path, *, max_bytes: int = DEFAULT_UPLOAD_LIMIT_BYTES, max_chars: int = 4_000_000) -> str:
    """Document text from an uploaded file.

    Args:
        path: the uploaded file (its suffix picks the reader).
        max_bytes: refuse larger files.
        max_chars: refuse longer texts (``segments.max_document_chars``).

    Raises:
        DocumentError: too large, an unsupported type, binary or non-UTF-8 text, a PDF without text.
    """
    p = Path(path)
    name = p.name
    suffix = p.suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise DocumentError(f"{name}: upload a {', '.join(UPLOAD_SUFFIXES)} file")
    size = p.stat().st_size
    if size > max_bytes:
        raise DocumentError(f"{name} is {size / 2**20:.1f} MiB, above the upload limit of {max_bytes / 2**20:.1f} MiB")
    data = p.read_bytes()
    text = pdf_text(data, name) if suffix == ".pdf" else decode_document(data, name)
    return check_document_text(text, max_chars, name=name)
