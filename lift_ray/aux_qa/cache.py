"""Selection and caching: verified pairs per document and generator settings, spread over the document."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from lift_ray.aux_qa.evidence import split_sentences, verify_pairs
from lift_ray.text import atomic_write
from lift_ray.aux_qa.pairs import CACHE_VERSION, AuxQAError, QAGenerator, QAPair, QAReport

def answer_spread(answer: str, sentences: list[str]) -> int:
    """In how many of the document's sentences ``answer`` stands (whole words, any case)."""
    pattern = re.compile(r"(?<!\w)" + re.escape(answer.strip()) + r"(?!\w)", re.IGNORECASE)
    return sum(bool(pattern.search(s)) for s in sentences)


def spread(pairs: list[QAPair], limit: int, sentences: list[str] | None = None) -> list[QAPair]:
    """At most ``limit`` pairs, taken round-robin over sentences so they cover the whole document.

    With the document's ``sentences``, each sentence offers first its pairs whose answer stands in
    the fewest sentences, and a round the cap cuts short takes those first too: the document's topic
    ("Port Quillon" in most sentences) is in any view of it and is rarely what a reader asks, while a
    pair per sentence answering it teaches the adapter to answer the topic; a name or a number stated
    once is what only the adapter can give beyond the window.
    """
    by_sentence: dict[int, list[int]] = {}
    for i, p in enumerate(pairs):
        by_sentence.setdefault(p.sentence_index, []).append(i)
    # without sentences every answer counts 0: the generator's order decides
    counts = {p.answer: answer_spread(p.answer, sentences) for p in pairs} if sentences is not None else {}

    def common(i: int) -> int:
        return counts.get(pairs[i].answer, 0)

    for members in by_sentence.values():
        members.sort(key=lambda i: (common(i), i))
    keys = sorted(by_sentence)
    chosen: list[int] = []
    rank = 0
    while len(chosen) < limit and any(rank < len(by_sentence[k]) for k in keys):
        offered = [by_sentence[k][rank] for k in keys if rank < len(by_sentence[k])]
        chosen += sorted(offered, key=lambda i: (common(i), pairs[i].sentence_index))[: limit - len(chosen)]
        rank += 1
    return [pairs[i] for i in sorted(chosen, key=lambda i: (pairs[i].sentence_index, i))]


_DOC_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def _cache_path(doc_id: str, generator: QAGenerator, cache_root: Path | None) -> Path:
    if not _DOC_ID_RE.match(doc_id):
        raise AuxQAError(f"invalid document id for the QA cache: {doc_id!r}")
    if cache_root is None:
        from lift_ray.config import cache_dir

        cache_root = cache_dir() / "aux_qa"
    return Path(cache_root) / doc_id / f"{generator.cache_key()}.json"


def generate_report(text: str, doc_id: str, generator: QAGenerator, cache_root: Path | None = None, *, log: bool = True) -> QAReport:
    """Verified pairs of one document with generation statistics, from the cache when present.

    Args:
        text: the document (normalised text, as stored).
        doc_id: the document's id (its content hash); names the cache folder.
        generator: a :class:`RuleQAGenerator`, :class:`LLMQAGenerator` or anything with the same methods.
        cache_root: default ``cache_dir()/"aux_qa"``.
        log: print one line with the counts on stderr.
    """
    path = _cache_path(doc_id, generator, cache_root)
    if path.is_file() and (report := parse_report(path.read_text(encoding="utf-8"))) is not None:
        return report
    sentences = split_sentences(text)
    raw = generator.generate(text, sentences)
    kept, dropped = verify_pairs(raw, text, sentences)
    kept = spread(kept, generator.max_pairs, sentences)
    report = QAReport(doc_id=doc_id, generator=generator.kind, settings=generator.settings(), generated=len(raw), dropped=dropped, pairs=kept)
    atomic_write(path, report.model_dump_json(indent=1))
    if log:
        print(f"lift-ray: aux-qa {generator.kind}: kept {len(kept)} of {len(raw)} pairs ({dropped} failed verification)", file=sys.stderr, flush=True)
    return report


def parse_report(raw: str) -> QAReport | None:
    """A cached report, or None if it is unreadable or from an older cache version (then regenerate)."""
    try:
        report = QAReport.model_validate_json(raw)
    except ValueError:
        return None
    return report if report.version == CACHE_VERSION else None


def generate_pairs(text: str, doc_id: str, generator: QAGenerator, cache_root: Path | None = None) -> list[QAPair]:
    """Verified QA pairs of one document, cached per document and generator settings (see :func:`generate_report`)."""
    return generate_report(text, doc_id, generator, cache_root).pairs
