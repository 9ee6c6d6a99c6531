"""Document text at the boundary: bytes -> checked, normalised text (no torch, no model).

Every way in (CLI, bulk inputs, Serve, UI) reads documents through these functions, so a
document is normalised exactly once and the normal form is what gets hashed, stored and trained.
"""

from __future__ import annotations

import os
import tempfile
import unicodedata
from pathlib import Path


class DocumentError(ValueError):
    """A document that cannot be absorbed (empty, not text, too large)."""


def normalize_text(text: str) -> str:
    """Canonical form of a document, the input of its content hash.

    Unicode NFC; CRLF and CR become LF; trailing spaces and tabs on each line are dropped; leading
    and trailing blank lines are dropped; the text ends without a newline.
    """
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip(" \t") for line in text.split("\n")]
    return "\n".join(lines).strip("\n")


def check_document_text(text: str, max_chars: int, name: str = "document") -> str:
    """Normalised text, or DocumentError with one clear line."""
    text = normalize_text(text)
    if not text.strip():
        raise DocumentError(f"{name} is empty (or only whitespace)")
    if "\x00" in text:
        raise DocumentError(f"{name} is binary, not text")
    if len(text) > max_chars:
        raise DocumentError(
            f"{name} has {len(text)} characters, above the limit of {max_chars} (segments.max_document_chars)"
        )
    return text


def decode_document(data: bytes, name: str) -> str:
    """UTF-8 text of a file's bytes (a BOM is dropped), or DocumentError naming ``name``."""
    if b"\x00" in data[:65536]:
        raise DocumentError(f"{name} is binary, not UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{name} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def read_document(path: str | Path, max_chars: int) -> str:
    """Read a UTF-8 text file and check it; raises DocumentError, never writes anything."""
    p = Path(path)
    if p.is_dir():
        raise DocumentError(f"{p} is a directory; to absorb every document in it use: lift-ray bulk --input {p}")
    if not p.is_file():
        raise DocumentError(f"no such file: {p}")
    return check_document_text(decode_document(p.read_bytes(), str(p)), max_chars, name=str(p))


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write a local file so that readers see the old content or the new, never a part.

    The data goes to a unique temporary file beside ``path`` (same filesystem), is flushed to disk,
    then renamed over ``path``; on any error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
