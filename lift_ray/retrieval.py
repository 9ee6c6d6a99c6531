"""The retrieval view: the document's most relevant chunks in the W-token window (modes rag, lift+rag).

What a user would reach for instead of LIFT is retrieval, and the two compose: the adapter holds
the document's global knowledge, the window holds the passages a question points at. The document
is cut into overlapping token chunks (ends snapped back to a sentence end where one is near),
indexed with BM25 (``bm25s``, English stopwords, Snowball stemming) once per document at absorb
time, and kept in the store beside the document. For a question, the best-scoring chunks that fit
the window are placed in document order, joined by the mixin where they are not contiguous;
optionally a share of W keeps the head…tail view's head and tail around them. The document's
sentence that best matches the question is repeated after the chunks, next to the question
(``retrieval.focus_sentence``): a 135M model reads the text nearest the question best.

A question that shares no indexed word with the document gets the head…tail view instead (and the
answer says so), never an empty window.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from lift_ray.store import RETRIEVAL_MARKER as CHUNKS_FILE  # the file the store writes last

INDEX_VERSION = 2  # 2: sentences and their stems, for the focus sentence
_SENTENCE_END = re.compile(r"[.!?:;][\"'”’)\]]*$")


@dataclasses.dataclass(frozen=True)
class RetrievedView:
    """Token ids of one question's view, and how it was made."""

    ids: list[int]
    kind: str  # "retrieved", or "head_tail" when no chunk matched the question
    chunks: tuple[tuple[int, int], ...] = ()  # token spans placed in the window, in document order
    focus: tuple[int, int] | None = None  # the sentence repeated after the chunks, if any


def index_key(model_id: str, chunk_tokens: int, overlap_tokens: int) -> str:
    """Store key of an index: token spans depend on the tokenizer and the chunking settings."""
    payload = json.dumps([INDEX_VERSION, model_id, chunk_tokens, overlap_tokens])
    return f"bm25-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def sentence_ends(text: str, offsets: list[tuple[int, int]]) -> list[bool]:
    """For each token, whether a sentence (or a line) ends with it."""
    ends = []
    for i, (start, end) in enumerate(offsets):
        following = offsets[i + 1][0] if i + 1 < len(offsets) else len(text)
        ends.append(bool(_SENTENCE_END.search(text[start:end].rstrip())) or "\n" in text[end : following + 1])
    return ends


def chunk_spans(n_tokens: int, chunk_tokens: int, overlap_tokens: int, ends: list[bool] | None = None) -> list[tuple[int, int]]:
    """Overlapping ``[start, end)`` token spans covering ``range(n_tokens)``.

    Each chunk holds at most ``chunk_tokens``; its end moves back to the last sentence end in its
    second half when there is one, and the next chunk starts ``overlap_tokens`` before that end.
    """
    if chunk_tokens <= overlap_tokens:
        raise ValueError(f"chunk_tokens ({chunk_tokens}) must exceed overlap_tokens ({overlap_tokens})")
    spans: list[tuple[int, int]] = []
    start = 0
    while start < n_tokens:
        end = min(start + chunk_tokens, n_tokens)
        if end < n_tokens and ends is not None:
            floor = start + max(chunk_tokens // 2, overlap_tokens + 1)
            for cut in range(end, floor, -1):
                if ends[cut - 1]:
                    end = cut
                    break
        spans.append((start, end))
        if end >= n_tokens:
            break
        start = end - overlap_tokens
    return spans


def sentence_spans(ends: list[bool]) -> list[tuple[int, int]]:
    """``[start, end)`` token spans of the sentences (and lines) that ``ends`` marks, covering every token."""
    spans, start = [], 0
    for i, end in enumerate(ends):
        if end:
            spans.append((start, i + 1))
            start = i + 1
    if start < len(ends):
        spans.append((start, len(ends)))
    return spans


def _bm25_tokens(texts: list[str]) -> list[list[str]]:
    import bm25s
    import Stemmer

    return bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False, show_progress=False)


class RetrievalIndex:
    """BM25 over a document's chunks.

    Args:
        spans: the chunks' token spans in the document.
        bm25: a ``bm25s.BM25`` indexed on the chunk texts in the same order.
        sentences: the document's sentences as token spans, and ``sentence_stems`` their content words
            (:func:`_content_stems`), to find the sentence a question points at.
    """

    def __init__(self, spans: list[tuple[int, int]], bm25, sentences: list[tuple[int, int]] = (),
                 sentence_stems: list[list[str]] = ()):
        self.spans = spans
        self.bm25 = bm25
        self.sentences = list(sentences)
        self.sentence_stems = [set(s) for s in sentence_stems]

    @classmethod
    def build(cls, text: str, tokenizer, chunk_tokens: int, overlap_tokens: int) -> "RetrievalIndex":
        """Chunk and index one document (its text in normal form, tokenised as the engine does)."""
        import bm25s

        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        ends = sentence_ends(text, offsets)
        spans = chunk_spans(len(offsets), chunk_tokens, overlap_tokens, ends)
        texts = [text[offsets[s][0] : offsets[e - 1][1]] for s, e in spans]
        bm25 = bm25s.BM25()
        bm25.index(_bm25_tokens(texts), show_progress=False)
        sentences = sentence_spans(ends)
        stems = [sorted(_content_stems(text[offsets[s][0] : offsets[e - 1][1]])) for s, e in sentences]
        return cls(spans, bm25, sentences, stems)

    def scores(self, question: str) -> list[float]:
        """BM25 score of every chunk for ``question`` (words the document lacks score nothing)."""
        vocab = self.bm25.vocab_dict
        words = [w for w in _bm25_tokens([question])[0] if w in vocab]
        if not words:
            return [0.0] * len(self.spans)
        return [float(x) for x in self.bm25.get_scores(words)]

    def idf(self, stems: set[str]) -> dict[str, float]:
        """BM25's idf over the document's chunks of each of ``stems`` the document has."""
        n = len(self.spans)
        out = {}
        for w in stems & self.bm25.vocab_dict.keys():
            df = sum(s > 0 for s in self.bm25.get_scores([w]))
            out[w] = math.log(1 + (n - df + 0.5) / (df + 0.5))
        return out

    def best_sentence(self, question: str) -> tuple[int, int] | None:
        """Token span of the sentence whose question words weigh most (idf), the shorter on a tie;
        None when no sentence holds a question word."""
        asked = _content_stems(question)
        idf = self.idf(asked)
        best, best_key = None, (0.0, 0)
        for span, stems in zip(self.sentences, self.sentence_stems):
            key = (sum(idf.get(w, 0.0) for w in stems & asked), span[0] - span[1])
            if key[0] > 0 and key > best_key:
                best, best_key = span, key
        return best

    # --- files (kept in the store beside the document) -----------------------------------------
    def to_files(self) -> dict[str, bytes]:
        with tempfile.TemporaryDirectory(prefix="lift-ray-bm25-") as tmp:
            self.bm25.save(tmp, show_progress=False)
            files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
        files[CHUNKS_FILE] = json.dumps({
            "version": INDEX_VERSION, "spans": self.spans, "sentences": self.sentences,
            "sentence_stems": [sorted(s) for s in self.sentence_stems],
        }).encode()
        return files

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> "RetrievalIndex":
        import bm25s

        meta = json.loads(files[CHUNKS_FILE])
        if meta.get("version") != INDEX_VERSION:
            raise ValueError(f"retrieval index version {meta.get('version')!r} (expected {INDEX_VERSION})")
        with tempfile.TemporaryDirectory(prefix="lift-ray-bm25-") as tmp:
            for name, data in files.items():
                (Path(tmp) / name).write_bytes(data)
            bm25 = bm25s.BM25.load(tmp)
        return cls([tuple(s) for s in meta["spans"]], bm25, [tuple(s) for s in meta["sentences"]], meta["sentence_stems"])


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _assemble(doc_tokens: list[int], spans: list[tuple[int, int]], mixin_ids: list[int]) -> list[int]:
    """Spans in document order, a mixin wherever text was left out (before, between, after)."""
    out: list[int] = []
    at = 0
    for start, end in spans:
        if start > at:
            out += mixin_ids
        out += doc_tokens[start:end]
        at = end
    if at < len(doc_tokens):
        out += mixin_ids
    return out


def in_head_tail_view(span: tuple[int, int], n_tokens: int, window: int, mixin_len: int) -> bool:
    """Whether at least half of the token ``span`` is shown by the ``window``-token head…tail view of a
    document of ``n_tokens`` (all of it when the document fits)."""
    from lift_ray.segments import head_tail_sizes

    if n_tokens <= window:
        return True
    head, tail = head_tail_sizes(window, mixin_len)
    start, end = span
    shown = max(0, min(end, head) - start) + max(0, end - max(start, n_tokens - tail))
    return 2 * shown >= end - start


def distinctive_match(index: RetrievalIndex, question: str) -> bool:
    """Whether the best chunk matches the question at least as strongly as one question word found in
    just one chunk of average length would (BM25's idf and term-frequency parts at k1).

    Below that, retrieval matched only words common in the document, as for a question asked in other
    words than the document's; its chunks then say little about what the question points at.
    """
    scores = index.scores(question)
    n = len(index.spans)
    one_word = math.log(1 + (n - 1 + 0.5) / (1 + 0.5)) / (1 + index.bm25.k1)
    return bool(scores) and max(scores) >= one_word


def _words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def answer_in_view(answer: str, view_text: str) -> bool:
    """Whether the answer's words stand, in order and whole, in the view's text (case and punctuation aside).

    An empty answer is never in the view.
    """
    words = _words(answer)
    return bool(words) and f" {words} " in f" {_words(view_text)} "


_VIEW_SENTENCE = re.compile(r"(?<=[.!?;:])\s+|\n+")


def _content_stems(text: str) -> set[str]:
    """The text's words as BM25 indexes them (lower case, Snowball stems, English stopwords left out),
    single characters and digits kept: "channel 9" is two words here."""
    import bm25s
    import Stemmer

    stop = set(bm25s.stopwords.STOPWORDS_EN)
    return set(Stemmer.Stemmer("english").stemWords([w for w in re.findall(r"\w+", text.lower()) if w not in stop]))


def _held_share(answer: str, asked: set[str], idf: dict[str, float], sentences: list[str],
                stems: list[set[str]]) -> float | None:
    """The question-word weight of the sentence holding ``answer``, as a share of the best sentence's;
    None when no sentence (or pair of neighbours: "St. Ives" splits in two) holds it."""
    weights = [sum(idf.get(w, 0.0) for w in st & asked) for st in stems]
    held = max((wt for s, wt in zip(sentences, weights) if answer_in_view(answer, s)), default=None)
    if held is None:
        pairs = zip(sentences, sentences[1:], weights, weights[1:])
        held = max((max(w1, w2) for s1, s2, w1, w2 in pairs if answer_in_view(answer, f"{s1} {s2}")), default=None)
    if held is None:
        return None
    best = max(weights, default=0.0)
    return held / best if best > 0 else 1.0  # no sentence about the question: nothing to fall short of


def view_backs_answer(index: RetrievalIndex, question: str, answer: str, view_text: str, share: float,
                      document_sentences: Callable[[], list[str]] | None = None) -> bool:
    """Whether the retrieved view, or else the document, backs ``answer`` to ``question``.

    Three things must hold. The answer's words stand, whole and in order, in a sentence of the view
    (``answer_in_view``). That sentence is about the question: the question words it holds weigh
    (BM25 idf over the document's chunks) at least ``share`` of what the view's best-matching
    sentence holds. And the answer says something the question does not (a word of its own). An
    answer found in a sentence about something else is most often another fact of the document, and
    one that repeats the question says nothing.

    An answer the view does not hold at all is judged against the whole document instead, when
    ``document_sentences`` gives its sentences (the index's, as text; called only then): its sentence
    must weigh ``share`` of the document's best-matching one. The adapter may remember a fact whose
    sentence retrieval left out.
    """
    asked = _content_stems(question)
    if not _content_stems(answer) - asked:
        return False
    idf = index.idf(asked)
    if answer_in_view(answer, view_text):
        sentences = [s for s in _VIEW_SENTENCE.split(view_text) if s.strip()]
        held = _held_share(answer, asked, idf, sentences, [_content_stems(s) for s in sentences])
        return (held or 0.0) >= share
    if document_sentences is None:
        return False
    held = _held_share(answer, asked, idf, document_sentences(), index.sentence_stems)
    return held is not None and held >= share


def evidence_in_view(index: RetrievalIndex, question: str, n_tokens: int, window: int, mixin_len: int, ratio: float) -> bool:
    """Whether the head…tail view shows what the question points at: the best chunk the view shows
    (half of it or more) scores at least ``ratio`` times every chunk it leaves out. Always when the
    document fits the window; never when no chunk shares a word with the question.

    A margin, not the plain best chunk: a question asked in other words than the document's matches
    only common words, and its best chunk is the head as often as anywhere.
    """
    if n_tokens <= window:
        return True
    scores = index.scores(question)
    shown = [in_head_tail_view(span, n_tokens, window, mixin_len) for span in index.spans]
    best_shown = max((s for s, v in zip(scores, shown) if v), default=0.0)
    best_left_out = max((s for s, v in zip(scores, shown) if not v), default=0.0)
    return best_shown > 0 and best_shown >= ratio * best_left_out


def focus_separator_ids(tokenizer, retrieval_config) -> list[int] | None:
    """Tokens between the chunks and the repeated sentence (a blank line); None when ``focus_sentence`` is off."""
    if not retrieval_config.focus_sentence:
        return None
    return tokenizer("\n\n", add_special_tokens=False)["input_ids"]


def retrieved_view(
    index: RetrievalIndex,
    doc_tokens: list[int],
    question: str,
    window: int,
    mixin_ids: list[int],
    head_tail_share: float = 0.0,
    focus_separator: list[int] | None = None,
) -> RetrievedView:
    """The question's view: the best chunks that fit ``window`` tokens, in document order, and the
    sentence the question points at repeated after them.

    Args:
        index: the document's chunks and BM25 index.
        doc_tokens: the document's token ids (the spans index into them).
        question: what is asked.
        window: W, the view's token budget (the result never exceeds it).
        mixin_ids: tokens that mark left-out text.
        head_tail_share: fraction of W kept for the document's head and tail around the chunks.
        focus_separator: when given, the document's best-matching sentence
            (:meth:`RetrievalIndex.best_sentence`) follows the chunks after these tokens, the chunks
            getting what is left of W; a sentence longer than half of W is not repeated.

    Returns:
        The view; ``kind`` is "head_tail" (the plain truncated view) when no chunk shares a word
        with the question, or when the whole document fits the window.
    """
    if len(doc_tokens) <= window:
        return RetrievedView(list(doc_tokens), "head_tail", ((0, len(doc_tokens)),))
    focus = index.best_sentence(question) if focus_separator is not None else None
    repeated = [*focus_separator, *doc_tokens[focus[0] : focus[1]]] if focus is not None else []
    if repeated and 2 * len(repeated) <= window:
        view = _chunk_view(index, doc_tokens, question, window - len(repeated), mixin_ids, head_tail_share)
        if view.kind == "retrieved":  # else not even the best chunk fits beside the sentence: the plain view
            return dataclasses.replace(view, ids=[*view.ids, *repeated], focus=focus)
    return _chunk_view(index, doc_tokens, question, window, mixin_ids, head_tail_share)


def _chunk_view(index: RetrievalIndex, doc_tokens: list[int], question: str, window: int, mixin_ids: list[int],
                head_tail_share: float) -> RetrievedView:
    from lift_ray.segments import truncate_middle

    scores = index.scores(question)
    ranked = [i for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)) if scores[i] > 0]
    if not ranked:
        return RetrievedView(truncate_middle(doc_tokens, window, mixin_ids), "head_tail")
    edge = int(window * head_tail_share) // 2
    chosen: list[tuple[int, int]] = [(0, edge), (len(doc_tokens) - edge, len(doc_tokens))] if edge else []
    for i in ranked:
        trial = _merge([*chosen, index.spans[i]])
        if len(_assemble(doc_tokens, trial, mixin_ids)) <= window:
            chosen = trial
    spans = _merge(chosen)
    ids = _assemble(doc_tokens, spans, mixin_ids)
    if not any(index.spans[i][0] >= s and index.spans[i][1] <= e for i in ranked for s, e in spans):
        # not even the best chunk fits beside the head and tail: the plain view, said as such
        return RetrievedView(truncate_middle(doc_tokens, window, mixin_ids), "head_tail")
    return RetrievedView(ids, "retrieved", tuple(s for s in spans if s[1] > s[0]))
