"""Document sources for bulk work: a directory of text files, JSONL, parquet, or a `datasets` dataset.

:func:`read_documents` turns one input spec (local path or fsspec URI, or a dataset name) into
checked documents plus per-document failures. A problem with one document (malformed JSONL line,
empty, binary or oversized text) is a failure of that document only; a problem with the source as a
whole (nothing there, no text column) is a :class:`~lift_ray.config.ConfigError`, raised before
anything is trained.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator
from typing import Any

from lift_ray.text import DocumentError, check_document_text, decode_document
from lift_ray.config import ConfigError
from lift_ray.store import doc_id_for

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".arrow")  # what `datasets` reads from a folder


@dataclasses.dataclass
class DocumentInput:
    """One document to absorb. ``alias``/``title`` come from the source; the store key is the content hash."""

    text: str
    alias: str | None = None
    title: str | None = None
    source: str = ""

    @functools.cached_property
    def doc_id(self) -> str:  # hashed once; the text is not changed after construction
        return doc_id_for(self.text)


@dataclasses.dataclass
class InputFailure:
    """A document of the source that cannot be absorbed, and why."""

    source: str
    reason: str
    alias: str | None = None
    doc_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Columns:
    """Which fields of a record hold the text, the alias (an id) and the title."""

    text: str = "text"
    alias: str | None = None  # None: "id" when the source has it
    title: str | None = None  # None: "title" when the source has it

    def resolve(self, available: list[str], where: str) -> "Columns":
        if self.text not in available:
            raise ConfigError(f"{where} has no text column {self.text!r} (columns: {', '.join(available) or 'none'}); pass --text-column")
        for name in (self.alias, self.title):
            if name is not None and name not in available:
                raise ConfigError(f"{where} has no column {name!r} (columns: {', '.join(available)})")
        return Columns(
            self.text,
            self.alias if self.alias is not None else ("id" if "id" in available else None),
            self.title if self.title is not None else ("title" if "title" in available else None),
        )


def read_documents(
    spec: str, *, max_chars: int, columns: Columns | None = None, split: str = "train"
) -> tuple[list[DocumentInput], list[InputFailure]]:
    """All documents of ``spec`` that pass the text checks, and the failures, in source order.

    ``spec``: a folder of .txt/.md files; a .jsonl or .parquet file; a dataset saved with
    ``save_to_disk``; a folder of data files or a dataset name, read by ``datasets.load_dataset``.

    Raises:
        ConfigError: the source does not exist, cannot be read, or lacks the text column.
    """
    columns = columns or Columns()
    docs: list[DocumentInput] = []
    failures: list[InputFailure] = []
    for item in _records(spec, columns, split):
        if isinstance(item, InputFailure):
            failures.append(item)
            continue
        try:
            text = check_document_text(item.text, max_chars, name=item.source)
        except DocumentError as exc:
            failures.append(InputFailure(item.source, str(exc), item.alias))
            continue
        docs.append(dataclasses.replace(item, text=text))
    if not docs and not failures:
        raise ConfigError(f"input {spec} holds no documents")
    return docs, failures


def _records(spec: str, columns: Columns, split: str) -> Iterator[DocumentInput | InputFailure]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(spec)
    try:
        is_dir, is_file = fs.isdir(path), fs.isfile(path)
    except Exception as exc:  # unreachable object store, bad credentials
        raise ConfigError(f"cannot read input {spec}: {exc}") from None
    lower = path.lower()
    if is_dir and _is_saved_dataset(fs, path):
        yield from _dataset_records(spec, columns, split, from_disk=True)
    elif is_dir:
        files = sorted(fs.find(path))  # listed once: a bucket prefix may hold many files
        text_files = [f for f in files if f.lower().endswith(TEXT_SUFFIXES)]
        if not text_files and any(f.lower().endswith(DATA_SUFFIXES) for f in files):
            yield from _dataset_records(spec, columns, split, from_disk=False)  # a folder of data files
        else:
            yield from _directory_records(fs, path, spec, text_files)
    elif is_file and lower.endswith(JSONL_SUFFIXES):
        yield from _jsonl_records(fs, path, spec, columns)
    elif is_file and lower.endswith(PARQUET_SUFFIXES):
        yield from _parquet_records(fs, path, spec, columns)
    elif is_file and lower.endswith(TEXT_SUFFIXES):
        yield _text_file_record(fs, path, spec)
    elif is_file:
        raise ConfigError(f"input {spec}: unknown file type (expected a directory, {', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES)})")
    elif "://" in spec or spec.startswith(("/", ".", "~")):
        raise ConfigError(f"input {spec} does not exist")
    else:  # not a path: a dataset name for `datasets.load_dataset`
        yield from _dataset_records(spec, columns, split, from_disk=False)


def _is_saved_dataset(fs, path: str) -> bool:
    return fs.exists(f"{path}/dataset_info.json") or fs.exists(f"{path}/dataset_dict.json") or fs.exists(f"{path}/state.json")


def _text_file_record(fs, path: str, alias: str) -> DocumentInput | InputFailure:
    try:
        return DocumentInput(decode_document(fs.cat_file(path), alias), alias=alias, source=alias)
    except DocumentError as exc:
        return InputFailure(alias, str(exc), alias)


def _directory_records(fs, root: str, spec: str, files: list[str]) -> Iterator[DocumentInput | InputFailure]:
    if not files:
        raise ConfigError(f"input directory {spec} has no {' or '.join(TEXT_SUFFIXES)} files")
    for path in files:
        yield _text_file_record(fs, path, path[len(root.rstrip("/")) + 1 :])


def _field(record: dict, name: str | None) -> str | None:
    value = record.get(name) if name else None
    return None if value is None else str(value)


def _jsonl_records(fs, path: str, spec: str, columns: Columns) -> Iterator[DocumentInput | InputFailure]:
    with fs.open(path, "rb") as fh:
        raw_lines = fh.read().splitlines()
    resolved: Columns | None = None
    for number, raw in enumerate(raw_lines, 1):
        where = f"{spec}:{number}"
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as exc:
            yield InputFailure(where, f"malformed JSON line ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(record, dict):
            yield InputFailure(where, f"a JSONL line must be an object, not {type(record).__name__}")
            continue
        if resolved is None:  # the first good record fixes the columns; a missing text column fails the run
            resolved = columns.resolve(list(record), spec)
        alias = _field(record, resolved.alias)
        text = record.get(resolved.text)
        if not isinstance(text, str):
            reason = "has no text" if text is None else f"text is a {type(text).__name__}, not a string"
            yield InputFailure(where, f"record {reason} (column {resolved.text!r})", alias)
            continue
        yield DocumentInput(text, alias=alias, title=_field(record, resolved.title), source=where)
    if resolved is None:
        raise ConfigError(f"input {spec} has no valid JSON records")


def _table_records(rows: Iterator[dict], names: list[str], spec: str, columns: Columns) -> Iterator[DocumentInput | InputFailure]:
    resolved = columns.resolve(names, spec)
    for index, record in enumerate(rows):
        where = f"{spec}[{index}]"
        alias = _field(record, resolved.alias)
        text = record.get(resolved.text)
        if not isinstance(text, str):
            yield InputFailure(where, f"record has no text string in column {resolved.text!r}", alias)
            continue
        yield DocumentInput(text, alias=alias, title=_field(record, resolved.title), source=where)


def _parquet_records(fs, path: str, spec: str, columns: Columns) -> Iterator[DocumentInput | InputFailure]:
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
    except Exception as exc:
        raise ConfigError(f"cannot read parquet {spec}: {exc}") from None
    yield from _table_records(iter(table.to_pylist()), table.column_names, spec, columns)


def _dataset_records(spec: str, columns: Columns, split: str, *, from_disk: bool) -> Iterator[DocumentInput | InputFailure]:
    import datasets

    try:
        if from_disk:
            data = datasets.load_from_disk(spec)
            if isinstance(data, datasets.DatasetDict):
                data = data[split]
        else:
            data = datasets.load_dataset(spec, split=split)
    except KeyError:
        raise ConfigError(f"dataset {spec} has no split {split!r}; pass --split") from None
    except Exception as exc:
        raise ConfigError(f"cannot load dataset {spec!r} (split {split!r}): {type(exc).__name__}: {exc}") from None
    yield from _table_records(iter(data), list(data.column_names), spec, columns)
