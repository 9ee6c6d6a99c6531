"""Sentences and evidence: the splitter every generator shares, and the check that keeps a pair only
when its evidence is in the document and supports its answer."""

from __future__ import annotations

import difflib
import re

from lift_ray.aux_qa.pairs import QAPair

# A period after one of these does not end a sentence ("Mr. Smith", "e.g. Paris", "St. Ives").
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "sen", "rep", "gen", "col", "capt", "lt", "sgt",
    "rev", "hon", "fr", "mt", "ft", "vs", "cf", "no", "nos", "fig", "figs", "vol", "ch", "sec", "approx",
    "dept", "est", "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec", "e.g", "i.e", "ca", "al",
}
_BOUNDARY = re.compile(r"([.!?]+)([\"'”’)\]]*)\s+(?=[\"'“‘(\[]?[A-Z0-9])")
_LIST_ITEM = re.compile(r"^(?:[-*•]\s|#+\s|\d+[.)]\s)")
_TERMINAL = re.compile(r"[.!?:;][\"'”’)\]]*$")


def _is_abbreviation(text_before: str) -> bool:
    word = text_before.rsplit(None, 1)[-1] if text_before.strip() else ""
    word = word.lstrip("(\"'“‘[").lower()
    if word in _ABBREVIATIONS:
        return True
    if re.fullmatch(r"[a-z]", word):  # an initial: "J. R. Smith"
        return True
    # dotted initialisms ("U.S.") but not a.m./p.m., which usually end a sentence
    return bool(re.fullmatch(r"(?:[a-z]\.)+[a-z]", word)) and word not in ("a.m", "p.m")


def _split_unit(unit: str) -> list[str]:
    unit = " ".join(unit.split())
    out, start = [], 0
    for m in _BOUNDARY.finditer(unit):
        if m.group(1) == "." and _is_abbreviation(unit[start : m.start()]):
            continue
        out.append(unit[start : m.end(2)].strip())
        start = m.end()
    rest = unit[start:].strip()
    if rest:
        out.append(rest)
    return out


def split_paragraphs(text: str) -> list[list[str]]:
    """Sentences grouped by paragraph (blank-line separated blocks); see :func:`split_sentences`."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = []
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [line.strip() for line in block.split("\n") if line.strip()]
        units: list[str] = []
        buf: list[str] = []
        for i, line in enumerate(lines):
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            # A heading or list item inside a block stands alone; other line breaks are hard wraps.
            heading = (
                len(lines) > 1
                and not _TERMINAL.search(line)
                and len(line.split()) <= 12
                and line[:1].isupper()
                and nxt[:1].isupper()
            )
            if _LIST_ITEM.match(line) or heading:
                if buf:
                    units.append(" ".join(buf))
                    buf = []
                units.append(line)
            else:
                buf.append(line)
        if buf:
            units.append(" ".join(buf))
        sentences = [s for unit in units for s in _split_unit(unit)]
        if sentences:
            paragraphs.append(sentences)
    return paragraphs


def split_sentences(text: str) -> list[str]:
    """Rule-based sentence splitter; paragraphs, headings and list items are their own sentences.

    A sentence ends at ., ! or ? (plus closing quotes/brackets) followed by whitespace and a
    capital, digit or opening quote, unless the period belongs to an abbreviation ("Mr.",
    "e.g.", an initial). Decimals never split (no whitespace after their point).
    """
    return [s for para in split_paragraphs(text) for s in para]


# --- verification -------------------------------------------------------------------------------


def _ws(text: str) -> str:
    return " ".join(text.split())


def _norm_words(text: str) -> str:
    """Lowercase, punctuation to spaces (apostrophes kept inside words), single spaces."""
    text = text.casefold().replace("’", "'")
    text = re.sub(r"[^\w']+", " ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    return " ".join(text.split())


def normalize_question(question: str) -> str:
    """Key for de-duplicating questions."""
    return _norm_words(question)


class Evidence:
    """A document prepared for evidence look-ups (whitespace-normalised once, reused for every pair)."""

    def __init__(self, text: str, sentences: list[str]):
        self.text = _ws(text)
        self.sentences = [_ws(s) for s in sentences]
        self.folded = [s.casefold() for s in self.sentences]

    def locate(self, evidence: str, threshold: float = 0.9, hint: int | None = None) -> int | None:
        ev = _ws(evidence)
        if not ev:
            return None
        if hint is not None and 0 <= hint < len(self.sentences) and ev in self.sentences[hint]:
            return hint
        for i, s in enumerate(self.sentences):
            if ev in s:
                return i
        if ev in self.text:  # spans a sentence boundary: attribute it to the sentence where it starts
            head = ev[: max(8, len(ev) // 4)]
            return next((i for i, s in enumerate(self.sentences) if head in s), 0)
        ev_cf = ev.casefold()
        best, best_i = 0.0, None
        for i, s in enumerate(self.folded):
            matcher = difflib.SequenceMatcher(None, ev_cf, s, autojunk=False)
            if matcher.real_quick_ratio() < threshold or matcher.quick_ratio() < threshold:
                continue  # cheap upper bounds first: most sentences are rejected here
            r = matcher.ratio()
            if r > best:
                best, best_i = r, i
        return best_i if best >= threshold else None


def locate_evidence(evidence: str, text: str, sentences: list[str], threshold: float = 0.9) -> int | None:
    """Index of the sentence holding ``evidence``, or None when the evidence is not in the text.

    Exact after whitespace normalisation (anywhere in the text), else fuzzy: difflib's ratio
    ≥ ``threshold`` against the best-matching sentence (casefolded).
    """
    return Evidence(text, sentences).locate(evidence, threshold)


def answer_supported(answer: str, evidence: str, overlap: float = 0.8) -> bool:
    """The answer occurs in the evidence (normalised words), or ≥ ``overlap`` of its words do."""
    a, e = _norm_words(answer), _norm_words(evidence)
    e = re.sub(r"'s\b", "", e) if "'s" not in a else e  # "Marlowe" is in "Marlowe's soup"; "Jenny's Lock" keeps it
    if not a or not e:
        return False
    if f" {a} " in f" {e} ":
        return True
    words = a.split()
    if len(words) < 2:
        return False
    ev_words = set(e.split())
    return sum(w in ev_words for w in words) / len(words) >= overlap


def verify(pair: QAPair, text: str, sentences: list[str], *, _index: Evidence | None = None) -> bool:
    """Keep a pair only if its evidence is in the document and supports its answer.

    Also refuses empty questions and answers, and questions that already contain their answer
    (the usual failure of small generators: the sentence echoed as the question).
    """
    if not pair.question.strip() or not pair.answer.strip():
        return False
    index = _index or Evidence(text, sentences)
    if index.locate(pair.evidence, hint=pair.sentence_index) is None:
        return False
    if not answer_supported(pair.answer, pair.evidence):
        return False
    return f" {_norm_words(pair.answer)} " not in f" {_norm_words(pair.question)} "


def verify_pairs(pairs: list[QAPair], text: str, sentences: list[str]) -> tuple[list[QAPair], int]:
    """The pairs that pass :func:`verify`, de-duplicated by normalised question, and how many were dropped."""
    kept, seen, dropped = [], set(), 0
    index = Evidence(text, sentences)
    for p in pairs:
        key = normalize_question(p.question)
        if key in seen:
            continue
        if not verify(p, text, sentences, _index=index):
            dropped += 1
            continue
        seen.add(key)
        kept.append(p)
    return kept, dropped
