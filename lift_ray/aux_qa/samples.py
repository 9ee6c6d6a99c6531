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
) -> list[Sample]:
    """SFT samples in exactly the icl / lift+icl question format of :func:`lift_ray.infer.build_question_prompt`.

    user = truncated head…tail view of ``context_window`` tokens + "\\n\\n" + answer_prompt(question);
    reply = the answer; the loss covers the answer and ``fmt.reply_end`` only. ``prefix_len`` is
    the part every QA sample of the document shares (chat header + view), so
    :func:`lift_ray.segments.pack_shared_prefix` computes the view once per step and treats each
    question + answer as its own branch.

    ``view_for`` (question → view token ids) trains each pair in its own view instead, e.g. the chunks
    retrieval picks for that question (the rag / lift+rag prompt); such samples share only the chat
    header, so a step still packs several of them. ``lift_prompt`` trains them in the lift prompt
    instead (no document: the answer must come from the adapter). ``short`` asks each pair's short form
    where it has one (:attr:`QAPair.short_question`).
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
        target = [*tokenizer(p.answer.strip(), add_special_tokens=False)["input_ids"], *fmt.reply_end]
        samples.append(Sample(prompt + target, [IGNORE_INDEX] * len(prompt) + target, shared, "qa"))
    return samples
