"""Auxiliary QA pairs as SFT samples in the question format of inference."""

from __future__ import annotations

from collections.abc import Callable

from lift_ray.aux_qa.pairs import QAPair
from lift_ray.segments import IGNORE_INDEX, ChatFormat, Sample, build_prompt_ids, question_content, truncate_middle

def qa_samples(
    pairs: list[QAPair],
    *,
    fmt: ChatFormat,
    tokenizer,
    doc_ids: list[int],
    context_window: int,
    answer_prompt: str,
    mixin: str,
    view_for: Callable[[str], list[int]] | None = None,
    lift_prompt: str | None = None,
    short: bool = False,
    distractors: bool = False,
) -> list[Sample]:
    """SFT samples in exactly the icl / lift+icl question format of :func:`lift_ray.infer.build_question_prompt`.

    user = truncated head…tail view of ``context_window`` tokens + "\\n\\n" + answer_prompt(question);
    reply = the answer; the loss covers the answer and ``fmt.reply_end`` only. ``prefix_len`` is
    the part every QA sample of the document shares (chat header + view): samples with equal prefixes
    train in one step, which :func:`lift_ray.segments.pack_groups` packs as a token tree (the view and
    the prompt wording once, questions that begin alike sharing those tokens, each answer a branch).

    ``view_for`` (question → view token ids) trains each pair in its own view instead, e.g. the chunks
    retrieval picks for that question (the rag / lift+rag prompt); such samples share only the chat
    header, so a step still packs several of them. ``lift_prompt`` trains them in the lift prompt
    instead (no document: the answer must come from the adapter). ``short`` asks each pair's short form
    where it has one (:attr:`QAPair.short_question`). ``distractors`` adds, after a pair whose answer is a
    name or a number, a negative sample (:attr:`Sample.negative`): the nearest other name or number the
    pairs answer (:func:`_distractor`), its one target the token where it parts from this answer ("12"
    after "Lock" for "Lock 14"): the adapter learns that this question is not answered with that fact of
    the document, the confusion its answers showed most.
    """
    mixin_ids = tokenizer(mixin, add_special_tokens=False)["input_ids"]
    head_tail = truncate_middle(doc_ids, context_window, mixin_ids)
    samples = []
    for p in pairs:
        question = (p.short_question if short and p.short_question else p.question).strip()
        if lift_prompt is not None:
            content = tokenizer(lift_prompt.format(question=question), add_special_tokens=False)["input_ids"]
            shared = len(fmt.user_start)
        else:
            view = head_tail if view_for is None else view_for(question)
            shared = len(fmt.user_start) + (len(view) if view_for is None else 0)
            content = question_content(tokenizer, view, question, answer_prompt)
        prompt = build_prompt_ids(fmt, content)
        answer = tokenizer(p.answer.strip(), add_special_tokens=False)["input_ids"]
        target = [*answer, *fmt.reply_end]
        samples.append(Sample(prompt + target, [IGNORE_INDEX] * len(prompt) + target, shared, "qa"))
        if distractors and (other := _distractor(p, pairs, tokenizer)) is not None:
            # the first token where the other answer parts from this one ("Lock 12" after "Lock", for "Lock 14")
            k = next((i for i, (a, b) in enumerate(zip(answer, other)) if a != b), min(len(answer), len(other)))
            if k < len(other):
                reply = other[: k + 1]
                labels = [IGNORE_INDEX] * (len(prompt) + k) + reply[k:]
                samples.append(Sample(prompt + reply, labels, shared, "qa", negative=True))
    return samples


# Words a name may hold uncapitalised ("Mosses of the Western Seaboard", "Newcastle upon Tyne").
_NAME_JOINERS = {"of", "the", "and", "de", "van", "von", "du", "la", "upon", "on", "in"}


def _answer_kind(answer: str) -> str | None:
    """What an answer is, read off its words: a number (a digit in it: dates, codes, amounts), a name (every
    word capitalised), or None (a phrase, which has no kind to be confused within)."""
    words = answer.strip().split()
    if not words:
        return None
    if any(ch.isdigit() for ch in answer):
        return "number"
    if all(w[:1].isupper() or w.lower() in _NAME_JOINERS for w in words) and words[0][:1].isupper():
        return "name"
    return None


def _distractor(pair: QAPair, pairs: list[QAPair], tokenizer) -> list[int] | None:
    """The answer tokens of the pair nearest to ``pair`` in the document whose answer is of the same kind
    (a number for a number, a name for a name) and another fact: not the same answer, not part of it,
    and not named by the question."""
    kind = _answer_kind(pair.answer)
    if kind is None:
        return None
    mine, question = pair.answer.strip().lower(), pair.question.lower()
    others = []
    for q in pairs:
        theirs = q.answer.strip().lower()
        if _answer_kind(q.answer) == kind and theirs not in question and mine not in theirs and theirs not in mine:
            others.append(q)
    if not others:
        return None
    nearest = min(others, key=lambda q: abs(q.sentence_index - pair.sentence_index))
    return tokenizer(nearest.answer.strip(), add_special_tokens=False)["input_ids"] or None
