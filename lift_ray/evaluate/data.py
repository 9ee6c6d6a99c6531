"""Evaluation sets: documents with question/answer pairs, from JSONL or any `datasets` source.

Two row layouts are read, with the column names found automatically or given by a column map:

* **nested** (LooGLE): one row per document, ``{"id", "title", "input" | "context", "qa_pairs":
  [{"Q": ..., "A": ..., "S": evidence}, ...]}``. LooGLE's own release stores ``qa_pairs`` as the
  Python ``repr`` of that list; it is parsed with :func:`ast.literal_eval` (never ``eval``).
* **flat** (SQuAD-like): one row per question, ``{"context", "question", "answers"}``; rows that
  share a document id (or, without one, the same text) form one document, in first-seen order.

Answers may be a string, a list of strings, SQuAD's ``{"text": [...]}`` or a list of such dicts;
every form becomes a list of acceptable answers (metrics take the best match over them).

Everything is checked before a model is loaded: a refused set raises :class:`EvalError` naming
the row and the column, and no training starts.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lift_ray.segments import head_tail_sizes, normalize_text, truncate_middle


class EvalError(ValueError):
    """An evaluation set or run directory that cannot be used; the message names the row or field."""


# --- column map ---------------------------------------------------------------------------------

# Role -> column names tried in order when the user names none (LooGLE's first, then common ones).
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "text": ("input", "context", "document", "text"),
    "id": ("id", "doc_id"),
    "title": ("title",),
    "qa_pairs": ("qa_pairs",),
    "question": ("Q", "question"),
    "answer": ("A", "answer", "answers"),
    "evidence": ("S", "evidence"),
}
REQUIRED_ROLES = ("text", "question", "answer")


def parse_column_map(spec: str | None) -> dict[str, str]:
    """``"text=article,question=query"`` -> ``{"text": "article", "question": "query"}``.

    Raises:
        EvalError: an unknown role or a malformed pair.
    """
    mapping: dict[str, str] = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        role, sep, column = part.partition("=")
        role, column = role.strip(), column.strip()
        if not sep or not role or not column:
            raise EvalError(f"--columns: expected ROLE=COLUMN pairs separated by commas, got {part!r}")
        if role not in DEFAULT_COLUMNS:
            raise EvalError(f"--columns: unknown role {role!r}; roles are {', '.join(DEFAULT_COLUMNS)}")
        mapping[role] = column
    return mapping


def _pick(role: str, available: Iterable[str], mapping: dict[str, str]) -> str | None:
    if role in mapping:
        return mapping[role] if mapping[role] in available else None
    return next((c for c in DEFAULT_COLUMNS[role] if c in available), None)


def _missing(role: str, where: str, available: Iterable[str], mapping: dict[str, str]) -> EvalError:
    wanted = repr(mapping[role]) if role in mapping else " or ".join(repr(c) for c in DEFAULT_COLUMNS[role])
    return EvalError(
        f"{where}: no {role} column {wanted}; columns present: {', '.join(sorted(available)) or '(none)'}"
        f" (map one with --columns {role}=NAME)"
    )


# --- records ------------------------------------------------------------------------------------


@dataclasses.dataclass
class EvalQuestion:
    question: str
    answers: list[str]
    evidence: list[str] = dataclasses.field(default_factory=list)
    answer_start: int | None = None  # character offset of the answer in the document, when the set knows it


@dataclasses.dataclass
class EvalDocument:
    key: str  # the set's id for the document (or its position), stable across runs: resume keys on it
    text: str
    questions: list[EvalQuestion]
    title: str | None = None


def _answers(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [str(value)] if str(value).strip() else []
    if isinstance(value, dict):
        if "text" not in value:
            raise EvalError(f"{where}: an answer given as a mapping needs a 'text' field (SQuAD layout)")
        return _answers(value["text"], where)
    if isinstance(value, (list, tuple)):
        out: list[str] = []
        for item in value:
            out += [a for a in _answers(item, where) if a not in out]
        return out
    raise EvalError(f"{where}: cannot read an answer from a {type(value).__name__}")


def _evidence(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str) and v.strip()]
    return []


def _qa_list(value: Any, where: str) -> list[Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            try:  # LooGLE's release writes the list as a Python literal
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise EvalError(f"{where}: qa_pairs is a string but neither JSON nor a Python literal list") from None
    if not isinstance(value, (list, tuple)):
        raise EvalError(f"{where}: qa_pairs must be a list of question/answer mappings, got {type(value).__name__}")
    return list(value)


def _question(row: dict, where: str, mapping: dict[str, str]) -> EvalQuestion | None:
    """One question from a mapping holding question/answer(/evidence) columns; None if it has no gold answer."""
    q_col = _pick("question", row, mapping)
    a_col = _pick("answer", row, mapping)
    if q_col is None:
        raise _missing("question", where, row, mapping)
    if a_col is None:
        raise _missing("answer", where, row, mapping)
    question = row[q_col]
    if not isinstance(question, str) or not question.strip():
        raise EvalError(f"{where}: column {q_col!r} holds no question text")
    answers = _answers(row[a_col], f"{where} column {a_col!r}")
    if not answers:
        return None  # unanswerable (e.g. SQuAD v2 "is_impossible"): nothing to score against
    e_col = _pick("evidence", row, mapping)
    start = row.get("answer_start")
    return EvalQuestion(
        question.strip(),
        answers,
        _evidence(row[e_col]) if e_col else [],
        start if isinstance(start, int) and not isinstance(start, bool) else None,
    )


def documents_from_rows(rows: Iterable[dict], source: str, mapping: dict[str, str] | None = None) -> list[EvalDocument]:
    """Build documents from rows of either layout (see the module docstring).

    Args:
        rows: mappings, e.g. parsed JSONL lines or a `datasets.Dataset`.
        source: how errors name the set (a path or dataset name).
        mapping: role -> column name overrides (:data:`DEFAULT_COLUMNS` lists the roles).

    Raises:
        EvalError: no rows, a missing column, an empty document, or no question with an answer.
    """
    from lift_ray.text import DocumentError, check_document_text

    mapping = mapping or {}
    docs: dict[str, EvalDocument] = {}
    skipped = 0
    nested: bool | None = None
    for n, row in enumerate(rows, 1):
        where = f"{source} row {n}"
        if not isinstance(row, dict):
            raise EvalError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if nested is None:  # decided by the first row: a qa_pairs column means one row per document
            nested = _pick("qa_pairs", row, mapping) is not None
            if not nested and "qa_pairs" in mapping:
                raise _missing("qa_pairs", where, row, mapping)
        t_col = _pick("text", row, mapping)
        if t_col is None:
            raise _missing("text", where, row, mapping)
        if not isinstance(row[t_col], str):
            raise EvalError(f"{where}: column {t_col!r} holds a {type(row[t_col]).__name__}, not the document text")
        try:
            text = check_document_text(row[t_col], 10**12, name=f"{where} column {t_col!r}")
        except DocumentError as exc:
            raise EvalError(str(exc)) from None
        id_col = _pick("id", row, mapping)
        title_col = _pick("title", row, mapping)
        if nested:
            qa_col = _pick("qa_pairs", row, mapping)
            if qa_col is None:
                raise _missing("qa_pairs", where, row, mapping)
            questions = []
            for i, pair in enumerate(_qa_list(row[qa_col], f"{where} column {qa_col!r}"), 1):
                if not isinstance(pair, dict):
                    raise EvalError(f"{where} column {qa_col!r} item {i}: expected a mapping, got {type(pair).__name__}")
                q = _question(pair, f"{where} column {qa_col!r} item {i}", mapping)
                skipped += q is None
                questions += [q] if q else []
            key = str(row[id_col]) if id_col else str(n)
            if key in docs:
                raise EvalError(f"{where}: document id {key!r} appears twice")
            docs[key] = EvalDocument(key, text, questions, str(row[title_col]) if title_col else None)
        else:
            q = _question(row, where, mapping)
            skipped += q is None
            key = str(row[id_col]) if id_col else None
            if key is None:  # flat rows without an id: the text is the document's identity
                key = next((k for k, d in docs.items() if d.text == text), str(len(docs) + 1))
            doc = docs.setdefault(key, EvalDocument(key, text, [], str(row[title_col]) if title_col else None))
            if doc.text != text:
                raise EvalError(f"{where}: rows with document id {key!r} hold different texts")
            doc.questions += [q] if q else []
    if nested is None:
        raise EvalError(f"{source}: the evaluation set is empty")
    if skipped:
        print(f"lift-ray: {source}: skipped {skipped} question(s) without a gold answer", file=sys.stderr, flush=True)
    kept = [d for d in docs.values() if d.questions]
    if not kept:
        raise EvalError(f"{source}: no question with a gold answer in {len(docs)} document(s)")
    return kept


def read_jsonl(path: Path) -> Iterator[dict]:
    """Parsed lines of a JSONL file; blank lines are skipped.

    Raises:
        EvalError: a line that is not JSON, named by its number.
    """
    try:
        with open(path, encoding="utf-8-sig") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise EvalError(f"{path}:{n}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    except UnicodeDecodeError:
        raise EvalError(f"{path} is not UTF-8 text") from None


def load_eval_set(
    data: str,
    *,
    split: str | None = None,
    subset: str | None = None,
    columns: dict[str, str] | None = None,
) -> list[EvalDocument]:
    """Read an evaluation set from a JSONL file, a `datasets` directory or a `datasets` name.

    Args:
        data: ``*.jsonl`` (JSON lines), ``*.json`` (an array of rows, or JSON lines), another data file `datasets` reads (csv,
            parquet), a directory written by ``Dataset.save_to_disk``, or a name for
            ``datasets.load_dataset`` (needs the hub or its cache).
        split: which split of a DatasetDict (default: the only one, else ``test``).
        subset: the dataset configuration name for ``load_dataset``.
        columns: role -> column overrides.

    Raises:
        EvalError: unreadable or empty set, missing columns, unknown split.
    """
    path = Path(data)
    if path.is_file() and path.suffix == ".json":
        try:  # one JSON array of rows; anything else is read as JSON lines
            rows = json.loads(path.read_text(encoding="utf-8-sig"))
        except (ValueError, UnicodeDecodeError):
            rows = None
        if isinstance(rows, list):
            return documents_from_rows(rows, str(path), columns)
    if path.is_file() and path.suffix in (".jsonl", ".json"):
        return documents_from_rows(read_jsonl(path), str(path), columns)
    dataset = _load_dataset(data, path, split, subset)
    return documents_from_rows(dataset, f"{data}[{dataset.split}]" if dataset.split else data, columns)


DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".arrow", ".txt")


def _load_dataset(data: str, path: Path, split: str | None, subset: str | None):
    import datasets

    try:
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file():
            loaded = datasets.load_dataset(path.suffix.lstrip("."), data_files=str(path))
        elif path.suffix in DATA_SUFFIXES or data.startswith((".", "/", "~")):
            raise EvalError(f"no such file or directory: {data}")
        else:
            loaded = datasets.load_dataset(data, subset)
    except EvalError:
        raise
    except Exception as exc:  # datasets raises many kinds (FileNotFoundError, ConnectionError, DatasetNotFoundError, ...)
        raise EvalError(f"cannot load the dataset {data!r}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        chosen = split or (names[0] if len(names) == 1 else "test")
        if chosen not in loaded:
            raise EvalError(f"{data}: no split {chosen!r}; splits: {', '.join(names)} (choose one with --split)")
        return loaded[chosen]
    if split and loaded.split and str(loaded.split) != split:
        raise EvalError(f"{data}: holds only split {loaded.split!r}, not {split!r}")
    return loaded


# --- where the evidence lies ----------------------------------------------------------------


def view_char_ranges(text: str, tokenizer, window: int, mixin: str) -> tuple[int, int]:
    """(head_end, tail_start): characters [0, head_end) and [tail_start, len) are what the
    ``window``-token head+tail view of ``text`` shows (as :func:`lift_ray.segments.truncate_middle`
    cuts it). The whole text when it fits."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    mixin_ids = tokenizer(mixin, add_special_tokens=False)["input_ids"]
    view = truncate_middle(ids, window, mixin_ids)
    if len(view) == len(ids):
        return len(text), len(text)
    head, tail = head_tail_sizes(window, len(mixin_ids))
    return offsets[head - 1][1], offsets[len(ids) - tail][0]


def evidence_spans(text: str, q: EvalQuestion) -> list[tuple[int, int]]:
    """Character spans of what answers the question: the given offset, else the evidence passages,
    else the first occurrence of a gold answer. Empty when none is found in the text."""
    if q.answer_start is not None:
        return [(q.answer_start, q.answer_start + len(q.answers[0]))]
    spans = []
    for piece in q.evidence:
        at = text.find(normalize_text(piece))
        if at >= 0:
            spans.append((at, at + len(normalize_text(piece))))
    if spans:
        return spans
    for answer in q.answers:
        at = text.find(answer)
        if at >= 0:
            return [(at, at + len(answer))]
    return []


def locate(spans: list[tuple[int, int]], head_end: int, tail_start: int) -> str:
    """'inside' if every span is within the view, 'beyond' if none is, 'partial' between, 'unknown' without spans."""
    if not spans:
        return "unknown"
    seen = [end <= head_end or start >= tail_start for start, end in spans]
    return "inside" if all(seen) else "beyond" if not any(seen) else "partial"
