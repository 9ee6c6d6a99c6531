"""The retrieval view (modes rag, lift+rag): chunking, ranking, the W budget, the store, the engine."""

import random

import pytest

import lift_ray.infer
from conftest import drain
from lift_ray.config import ConfigError, build_config
from lift_ray.infer import LiftEngine, Question
from lift_ray.retrieval import (
    RetrievalIndex, answer_in_view, chunk_spans, distinctive_match, evidence_in_view, in_head_tail_view, index_key, retrieved_view,
    sentence_ends, view_backs_answer,
)
from lift_ray.store import AdapterStore, RETRIEVAL_MARKER, doc_id_for
from lift_ray.text import normalize_text

FILLER = [
    "The harbour was quiet that morning and the boats rocked slowly.",
    "Gulls circled over the market where fishermen sold their catch.",
    "A cold wind came down from the hills behind the old town.",
    "Children ran along the sea wall before the school bell rang.",
    "The baker opened his shutters and the smell of bread filled the lane.",
]


def _document(n: int = 40, planted: str = "The vault code of the lighthouse is Zanthoric.", at: int = 20) -> str:
    rng = random.Random(7)
    sentences = [rng.choice(FILLER) for _ in range(n)]
    sentences.insert(at, planted)
    return normalize_text(" ".join(sentences))


def _index(tok, text, chunk=24, overlap=8):
    return RetrievalIndex.build(text, tok, chunk, overlap)


def _mixin(tok):
    return tok(" ... ", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("n, chunk, overlap", [(1, 8, 0), (7, 8, 2), (100, 24, 8), (101, 48, 16), (48, 48, 16)])
def test_chunks_cover_every_token_with_the_overlap_and_size_asked(n, chunk, overlap):
    ends = [i % 9 == 8 for i in range(n)]  # a "sentence" ends every 9 tokens
    for spans in (chunk_spans(n, chunk, overlap), chunk_spans(n, chunk, overlap, ends)):
        covered = set()
        for start, end in spans:
            assert 0 <= start < end <= n and end - start <= chunk
            covered |= set(range(start, end))
        assert covered == set(range(n))
        assert spans[0][0] == 0 and spans[-1][1] == n
        for (s0, e0), (s1, _) in zip(spans, spans[1:]):
            assert s1 == e0 - overlap  # consecutive chunks share exactly `overlap` tokens
    with pytest.raises(ValueError):
        chunk_spans(10, 8, 8)


def test_chunks_end_at_sentence_ends_when_one_is_near(tiny_loaded):
    tok = tiny_loaded.tokenizer
    text = _document(12)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    ends = sentence_ends(text, offsets)
    longest = max(len(tok(s, add_special_tokens=False)["input_ids"]) for s in FILLER) + 2
    spans = chunk_spans(len(offsets), 2 * longest + 2, 8, ends)  # each second half holds a sentence end
    inner = [end for _, end in spans[:-1]]
    assert inner and all(text[offsets[end - 1][0]:offsets[end - 1][1]].rstrip().endswith(".") for end in inner)


def test_the_chunk_holding_a_planted_rare_word_ranks_first(tiny_loaded):
    tok = tiny_loaded.tokenizer
    text = _document()
    index = _index(tok, text)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    scores = index.scores("What is the code of the vault? Zanthoric?")
    best = max(range(len(scores)), key=scores.__getitem__)
    start, end = index.spans[best]
    assert "Zanthoric" in tok.decode(ids[start:end])
    assert index.scores("Zanthoric") == pytest.approx([s if "Zanthoric" in tok.decode(ids[a:b]) else 0.0
                                                       for s, (a, b) in zip(index.scores("Zanthoric"), index.spans)])


def test_the_view_never_exceeds_the_window_and_keeps_document_order(tiny_loaded):
    tok = tiny_loaded.tokenizer
    text = _document(60)
    doc = tok(text, add_special_tokens=False)["input_ids"]
    index = _index(tok, text)
    mixin = _mixin(tok)
    questions = ["Zanthoric vault code?", "Who sold their catch at the market?", "bread baker shutters", "wind hills town"]
    for window in (16, 24, 40, 64, 128, 300):
        for share in (0.0, 0.25, 0.5):
            for q in questions:
                view = retrieved_view(index, doc, q, window, mixin, share)
                assert len(view.ids) <= window, (window, share, q)
                starts = [s for s, _ in view.chunks]
                assert starts == sorted(starts)
                if view.kind == "retrieved":
                    for s, e in view.chunks:  # every placed span is the document's own tokens
                        assert any(view.ids[i:i + e - s] == doc[s:e] for i in range(len(view.ids)))


def test_the_best_sentence_is_the_one_the_rare_question_word_points_at(tiny_loaded):
    tok = tiny_loaded.tokenizer
    text = _document()
    doc = tok(text, add_special_tokens=False)["input_ids"]
    index = _index(tok, text)
    assert sum(e - s for s, e in index.sentences) == len(doc)  # the sentences cover the document
    start, end = index.best_sentence("What is the vault code of the lighthouse?")
    assert tok.decode(doc[start:end]).strip() == "The vault code of the lighthouse is Zanthoric."
    assert index.best_sentence("Quixotic xylophones?") is None


def test_the_focus_sentence_follows_the_chunks_next_to_the_question_within_w(tiny_loaded):
    tok = tiny_loaded.tokenizer
    text = _document(60)
    doc = tok(text, add_special_tokens=False)["input_ids"]
    index, mixin = _index(tok, text), _mixin(tok)
    separator = tok("\n\n", add_special_tokens=False)["input_ids"]
    q = "What is the vault code of the lighthouse?"
    start, end = index.best_sentence(q)
    repeated = separator + doc[start:end]
    for window in (2 * len(repeated), 64, 128, 300):
        view = retrieved_view(index, doc, q, window, mixin, 0.0, separator)
        assert view.kind == "retrieved" and view.focus == (start, end)
        assert len(view.ids) <= window and view.ids[-len(repeated):] == repeated
        # the chunks before it are what the plain view would pick with the rest of W
        assert view.ids[:-len(repeated)] == retrieved_view(index, doc, q, window - len(repeated), mixin).ids
    # not repeated: no focus asked, a sentence longer than half of W, a question matching nothing
    assert retrieved_view(index, doc, q, 128, mixin).focus is None
    assert retrieved_view(index, doc, q, 2 * len(repeated) - 1, mixin, 0.0, separator).focus is None
    none = retrieved_view(index, doc, "Quixotic xylophones?", 64, mixin, 0.0, separator)
    assert none.kind == "head_tail" and none.focus is None


def test_no_shared_word_falls_back_to_the_head_tail_view(tiny_loaded):
    from lift_ray.segments import truncate_middle

    tok = tiny_loaded.tokenizer
    text = _document()
    doc = tok(text, add_special_tokens=False)["input_ids"]
    view = retrieved_view(_index(tok, text), doc, "Quixotic xylophones?", 64, _mixin(tok))
    assert view.kind == "head_tail" and view.ids == truncate_middle(doc, 64, _mixin(tok))


def test_index_round_trips_through_files(tiny_loaded):
    tok = tiny_loaded.tokenizer
    text = _document()
    index = _index(tok, text)
    again = RetrievalIndex.from_files(index.to_files())
    assert again.spans == index.spans and again.sentences == index.sentences
    assert again.best_sentence("vault code?") == index.best_sentence("vault code?") is not None
    assert again.scores("vault Zanthoric harbour") == index.scores("vault Zanthoric harbour")


def test_the_view_shows_the_evidence_only_by_a_clear_margin(tiny_loaded):
    tok = tiny_loaded.tokenizer
    mixin = len(_mixin(tok))
    for at, shown in ((0, True), (20, False)):  # the rare word's sentence first (in the head) or in the middle
        text = _document(40, at=at)
        index, n = _index(tok, text), len(tok(text, add_special_tokens=False)["input_ids"])
        assert evidence_in_view(index, "What is the vault code? Zanthoric?", n, 48, mixin, 2.0) is shown
        # words every part of the document shares point nowhere in particular
        assert not evidence_in_view(index, "Did the boats rock in the harbour?", n, 48, mixin, 2.0)
        assert not evidence_in_view(index, "Quixotic xylophones?", n, 48, mixin, 0.1)
        assert evidence_in_view(index, "Quixotic xylophones?", n, n, mixin, 2.0)  # the whole document fits


def test_a_span_is_in_the_head_tail_view_when_half_of_it_is_shown():
    # 100 tokens, W = 20 with a 2-token mixin: the view shows tokens [0, 9) and [91, 100)
    assert in_head_tail_view((0, 8), 100, 20, 2)
    assert in_head_tail_view((4, 14), 100, 20, 2)  # 5 of 10 shown
    assert not in_head_tail_view((5, 15), 100, 20, 2)  # 4 of 10
    assert in_head_tail_view((88, 100), 100, 20, 2)  # 9 of 12
    assert not in_head_tail_view((40, 60), 100, 20, 2)
    assert in_head_tail_view((40, 60), 20, 20, 2)  # the whole document fits the window


def test_config_refuses_an_overlap_as_large_as_the_chunk():
    with pytest.raises(ConfigError, match="retrieval.overlap_tokens"):
        build_config(None, {"retrieval": {"chunk_tokens": 16, "overlap_tokens": 16}})


@pytest.fixture
def engine(tiny_loaded, tiny_config):
    cfg = tiny_config.model_copy(update={"retrieval": tiny_config.retrieval.model_copy(update={"chunk_tokens": 24, "overlap_tokens": 8})})
    return LiftEngine(tiny_loaded, cfg, AdapterStore(tiny_config.store.uri))


def test_rag_puts_the_middle_chunk_holding_the_answer_in_the_prompt(engine):
    tok = engine.loaded.tokenizer
    text = _document(40, at=20)
    doc = tok(text, add_special_tokens=False)["input_ids"]
    window = engine.config.segments.context_window
    planted = tok.decode(doc).find("Zanthoric")
    assert 0.3 < planted / len(tok.decode(doc)) < 0.7  # the answer lies in the middle, outside head…tail
    prompts = {}
    for mode in ("icl", "rag"):
        p = engine.prepare(Question("What is the vault code of the lighthouse?", text, mode, context_window=window))
        prompts[mode] = tok.decode(p.prompt)
        assert p.view == ("head_tail" if mode == "icl" else "retrieved")
    assert "Zanthoric" in prompts["rag"] and "Zanthoric" not in prompts["icl"]
    # with room for it, the sentence the question points at is repeated last, right before the question
    wide = engine.prepare(Question("What is the vault code of the lighthouse?", text, "rag", context_window=128))
    assert "lighthouse is Zanthoric.\n\nAnswer the question" in tok.decode(wide.prompt)
    ans = engine.answer("What is the vault code of the lighthouse?", text, "rag")
    assert ans.view == "retrieved" and ans.variant is None and ans.prompt_tokens <= window + engine.config.inference.question_reserve
    fallback = engine.answer("Quixotic xylophones?", text, "rag")
    assert fallback.view == "head_tail"


def test_absorb_stores_the_index_and_an_old_document_gets_one_on_first_use(engine):
    text = _document(30)
    r = engine.config.retrieval
    key = index_key(engine.loaded.model_id, r.chunk_tokens, r.overlap_tokens)
    before_training = []

    def stored(event):  # the text and the index are there before the first epoch; the document is not listed
        if event.stage == "qa":
            doc = doc_id_for(text)
            before_training.append((engine.store.text(doc) == text, engine.store.retrieval_index(doc, key) is not None,
                                    engine.store.variants(doc)))

    result = engine.absorb(text, progress=False, on_progress=stored)
    assert before_training == [(True, True, [])]
    files = engine.store.retrieval_index(result.doc_id, key)
    assert files is not None and RETRIEVAL_MARKER in files
    # a document absorbed before retrieval existed: its index is built on first use and stored
    base = engine.store._retrieval_dir(result.doc_id, key)
    engine.store.fs.rm(base, recursive=True)
    assert engine.store.retrieval_index(result.doc_id, key) is None
    engine._indexes.clear()
    ans = engine.answer("What is the vault code?", result.doc_id, "lift+rag")
    assert ans.view == "retrieved" and ans.variant == result.variant
    assert engine.store.retrieval_index(result.doc_id, key) is not None
    # a later engine (another replica) reads it instead of building it
    other = LiftEngine(engine.loaded, engine.config, AdapterStore(engine.store.uri))
    built = []
    original = RetrievalIndex.build
    RetrievalIndex.build = classmethod(lambda cls, *a, **k: built.append(1) or original.__func__(cls, *a, **k))
    try:
        other.answer("What is the vault code?", result.doc_id, "rag")
    finally:
        RetrievalIndex.build = original
    assert built == []


def test_an_adapted_mode_answers_as_icl_when_the_window_shows_the_evidence(engine):
    """The adapter's memory can override what the window shows; the base model reads it instead."""
    rng = random.Random(3)
    sentences = [rng.choice(FILLER) for _ in range(40)]
    sentences.insert(0, "The vault code of the lighthouse is Zanthoric.")
    sentences.insert(20, "The ferry captain is called Mirabelle Quorst.")
    result = engine.absorb(normalize_text(" ".join(sentences)), progress=False)
    doc = result.doc_id
    on = engine.config.model_copy(update={"inference": engine.config.inference.model_copy(update={"icl_when_in_window": True})})
    reading = LiftEngine(engine.loaded, on, engine.store)
    at_head, in_middle = "What is the vault code of the lighthouse?", "Who is the ferry captain?"
    icl = reading.prepare(Question(at_head, doc, "icl"))
    for mode in ("lift+icl", "lift+rag"):
        p = reading.prepare(Question(at_head, doc, mode))
        assert p.answered_as == "icl" and p.adapter is None and p.view == "head_tail" and p.prompt == icl.prompt
        ans = reading.answer(at_head, doc, mode)
        assert (ans.mode, ans.answered_as, ans.variant) == (mode, "icl", None)
        assert ans.answer == reading.answer(at_head, doc, "icl").answer
        for question in (in_middle, "Quixotic xylophones?"):  # evidence beyond the window; no evidence found
            p = reading.prepare(Question(question, doc, mode))
            assert p.answered_as == mode and p.adapter is not None and p.adapter.variant == result.variant
    assert reading.answer(at_head, doc, "lift").answered_as == "lift"  # no window, nothing to read
    p = engine.prepare(Question(at_head, doc, "lift+icl"))  # off by default: the paper's lift+icl
    assert p.answered_as == "lift+icl" and p.adapter is not None and p.prompt == icl.prompt


@pytest.mark.parametrize("answer, expected", [
    ("Zanthoric", True), ("zanthoric.", True), ("Vault code of the", True), ("lighthouse is Zanthoric!", True),
    ("The code is Zanthoric", False), ("Zanth", False), ("", False), ("  .  ", False),
])
def test_an_answer_is_in_the_view_when_its_words_stand_there_whole_and_in_order(answer, expected):
    assert answer_in_view(answer, "The harbour was quiet. The vault code of the lighthouse is Zanthoric ... Gulls") is expected


def test_a_distinctive_match_is_a_word_as_rare_as_one_chunk_not_common_words(tiny_loaded):
    tok = tiny_loaded.tokenizer
    index = _index(tok, _document(40, at=20))
    assert distinctive_match(index, "What is the vault code of the lighthouse?")  # in one chunk only
    assert not distinctive_match(index, "What about the boats?")  # a filler word, in many chunks
    assert not distinctive_match(index, "Quixotic xylophones?")  # nothing shared


def _never() -> list[str]:
    raise AssertionError("the document's sentences were read for an answer the chunks hold")


def test_the_view_backs_an_answer_found_in_a_sentence_about_the_question(tiny_loaded):
    """In the chunks is not enough: the sentence holding the answer must be about the question, and the
    answer must say more than the question (README 'Checking the adapter's answer')."""
    tok = tiny_loaded.tokenizer
    planted = "The vault code of the lighthouse is Zanthoric. The radio of the ferry is set to channel 9."
    index = _index(tok, _document(40, planted=planted))
    view = "Gulls circled over the market. The vault code of the lighthouse is Zanthoric. The radio of the ferry is set to channel 9. ... The baker opened his shutters."
    code, radio = "What is the vault code of the lighthouse?", "Which channel is the ferry's radio set to?"
    assert view_backs_answer(index, code, "Zanthoric", view, 0.5)
    assert view_backs_answer(index, radio, "channel 9", view, 0.5)  # a digit is a word of its own
    assert not view_backs_answer(index, radio, "Zanthoric", view, 0.5)  # in the chunks, in a sentence about the vault
    assert not view_backs_answer(index, code, "the market", view, 0.5)  # a sentence sharing no word with the question
    assert not view_backs_answer(index, radio, "the channel", view, 0.5)  # repeats the question
    assert not view_backs_answer(index, radio, "channel", view, 0.0)  # even with no sentence condition
    assert view_backs_answer(index, code, "the market", view, 0.0)  # 0: in the chunks and adding a word suffices
    assert not view_backs_answer(index, code, "Quorst", view, 0.0)  # not in the chunks at all
    # an answer running across a sentence split is judged by the pair of sentences it spans
    split = "Gulls circled over the market. The vault code of the lighthouse is St. Ives Zanthoric."
    assert view_backs_answer(index, code, "St. Ives Zanthoric", split, 0.5)
    # an answer the chunks lack is judged against the document's sentences when they are given
    ids = tok(_document(40, planted=planted), add_special_tokens=False)["input_ids"]
    document = [tok.decode(ids[start:end]) for start, end in index.sentences]  # as the engine passes them
    elsewhere = "Gulls circled over the market. The baker opened his shutters."
    assert not view_backs_answer(index, code, "Zanthoric", elsewhere, 0.5)  # without them: not in the chunks
    assert view_backs_answer(index, code, "Zanthoric", elsewhere, 0.5, lambda: document)  # the document's sentence about it
    assert not view_backs_answer(index, radio, "Zanthoric", elsewhere, 0.5, lambda: document)  # a sentence about the vault
    assert not view_backs_answer(index, code, "Quorst", elsewhere, 0.0, lambda: document)  # in neither
    assert not view_backs_answer(index, radio, "Zanthoric", view, 0.5, _never)  # the chunks hold it: they judge, the document is not read


def test_lift_rag_answers_as_rag_when_the_adapters_answer_is_not_in_the_chunks(engine, monkeypatch):
    """The adapter's answer stands only when the retrieved chunks hold it; else the base model reads them."""
    rng = random.Random(5)
    sentences = [rng.choice(FILLER) for _ in range(40)]
    sentences.insert(0, "The vault code of the lighthouse is Zanthoric.")
    sentences.insert(20, "The ferry captain is called Mirabelle Quorst.")
    result = engine.absorb(normalize_text(" ".join(sentences)), progress=False)
    doc, question = result.doc_id, "Who is the ferry captain?"
    checked = engine.config.model_copy(update={"inference": engine.config.inference.model_copy(
        update={"rag_when_unsupported": True, "icl_when_in_window": True, "sure_answer_probability": None})})
    on = LiftEngine(engine.loaded, checked, engine.store)
    p = on.prepare(Question(question, doc, "lift+rag"))
    rag = on.prepare(Question(question, doc, "rag"))
    assert p.answered_as == "lift+rag" and p.adapter is not None and p.view == "retrieved"
    assert p.fallback.adapter is None and p.fallback.prompt == rag.prompt and p.fallback.answered_as == "rag"
    rag_answer = on.answer(question, doc, "rag").answer
    generates = []
    original = LiftEngine._generate
    monkeypatch.setattr(LiftEngine, "_generate", lambda self, rows, *a, **k: generates.append(len(rows)) or original(self, rows, *a, **k))
    for in_chunks in (True, False):
        seen = []
        monkeypatch.setattr(lift_ray.infer, "view_backs_answer",
                            lambda index, q, answer, view, share, sentences: seen.append((answer, view, q, share, sentences)) or in_chunks)
        generates.clear()
        ans = on.answer(question, doc, "lift+rag")
        assert "captain is called Mirabelle" in seen[0][1]  # the adapter's answer is checked against its chunks
        assert seen[0][2:4] == (question, on.config.inference.rag_support_share)
        assert "The ferry captain is called Mirabelle Quorst." in [s.strip() for s in seen[0][4]()]  # the document's sentences
        if in_chunks:
            adapter_answer = seen[0][0]
            assert (ans.answer, ans.answered_as, ans.variant) == (adapter_answer, "lift+rag", result.variant)
            assert generates == [1]
        else:
            assert seen[0][0] == adapter_answer
            assert (ans.answer, ans.answered_as, ans.variant) == (rag_answer, "rag", None)
            assert ans.mode == "lift+rag" and ans.prompt_tokens == len(rag.prompt) and generates == [1, 1]
        pieces, streamed = drain(on.stream_answer(question, doc, "lift+rag"))
        assert "".join(pieces).strip() == ans.answer and (streamed.answer, streamed.answered_as) == (ans.answer, ans.answered_as)
    # nothing to check: another mode, a question answered as icl, a view with no retrieved chunk, chunks
    # matched by common words only (a question in other words: the adapter's memory stands)
    assert on.prepare(Question(question, doc, "lift+icl")).fallback is None
    unrouted = on.config.model_copy(update={"inference": on.config.inference.model_copy(update={"icl_when_in_window": False})})
    common = LiftEngine(engine.loaded, unrouted, engine.store).prepare(Question("What about the boats?", doc, "lift+rag"))
    assert common.view == "retrieved" and common.answered_as == "lift+rag" and common.fallback is None
    assert on.prepare(Question("Quixotic xylophones?", doc, "lift+rag")).fallback is None
    routed = on.prepare(Question("What is the vault code of the lighthouse?", doc, "lift+rag"))
    assert routed.answered_as == "icl" and routed.fallback is None


def test_lift_rag_keeps_an_unbacked_answer_the_adapter_is_sure_of(engine, monkeypatch):
    """inference.sure_answer_probability: an answer the chunks do not back stands when its least greedy token
    probability (its end token included) reaches the threshold, in answer_batch and in the stream alike; one
    above it, or null, sends the question to rag. The probability is the one generate's own scores give."""
    import torch

    rng = random.Random(7)
    sentences = [rng.choice(FILLER) for _ in range(40)]
    sentences.insert(20, "The ferry captain is called Mirabelle Quorst.")
    doc = engine.absorb(normalize_text(" ".join(sentences)), progress=False).doc_id
    question = "Who is the ferry captain?"
    monkeypatch.setattr(lift_ray.infer, "view_backs_answer", lambda *a, **k: False)  # the chunks never back it

    inference = engine.config.inference.model_copy(
        update={"rag_when_unsupported": True, "icl_when_in_window": False, "sure_answer_probability": None})
    on = LiftEngine(engine.loaded, engine.config.model_copy(update={"inference": inference}), engine.store)

    def threshold(sure):  # one engine (one resident adapter set), its threshold changed between questions
        on.config = on.config.model_copy(update={"inference": inference.model_copy(update={"sure_answer_probability": sure})})

    p = on.prepare(Question(question, doc, "lift+rag"))
    assert p.fallback is not None and p.adapter is not None
    entries = on._acquire([p.adapter])
    try:
        out = on._generate([p], entries, output_scores=True, return_dict_in_generate=True)
    finally:
        on._release(entries)
    ids, _ = on._finish(out.sequences[0, len(p.prompt):].tolist(), p.max_new_tokens)
    sureness = min(torch.softmax(score[0].float(), -1)[t].item() for score, t in zip(out.scores, ids))
    adapter_answer = on.loaded.tokenizer.decode(ids, skip_special_tokens=True).strip()
    rag_answer = on.answer(question, doc, "rag").answer
    assert 0 < sureness <= 1  # the tiny model's answers may be alike (even empty): answered_as tells them apart
    cases = [(sureness * (1 - 1e-5), "lift+rag"), (None, "rag")] + ([(sureness * (1 + 1e-3), "rag")] if sureness < 0.999 else [])
    for sure, answered_as in cases:
        threshold(sure)
        ans = on.answer(question, doc, "lift+rag")
        assert ans.answered_as == answered_as and ans.answer == (adapter_answer if answered_as == "lift+rag" else rag_answer)
        pieces, streamed = drain(on.stream_answer(question, doc, "lift+rag"))
        assert (streamed.answer, streamed.answered_as) == (ans.answer, answered_as)
    threshold(sureness * (1 - 1e-5))
    sampled = on.answer_batch([Question(question, doc, "lift+rag", temperature=0.7, top_p=0.9)])[0]
    assert sampled.answered_as == "rag"  # measured under greedy decoding only


def test_pairs_trained_in_the_retrieved_view_read_the_rag_prompt_focus_sentence_included(tiny_loaded, tiny_config, monkeypatch):
    """aux_qa.views ["retrieved"]: the absorb builds each pair's view as the engine does for a rag question,
    the repeated sentence included, so what the adapter learnt is what it is asked in."""
    import lift_ray.absorb

    cfg = tiny_config.model_copy(update={
        "segments": tiny_config.segments.model_copy(update={"context_window": 128}),
        "aux_qa": tiny_config.aux_qa.model_copy(update={"views": ["retrieved"]}),
        "train": tiny_config.train.model_copy(update={"epochs": 1}),
    })
    captured = []
    real = lift_ray.absorb.training_stages
    monkeypatch.setattr(lift_ray.absorb, "training_stages", lambda samples, qa, c: captured.extend(qa) or real(samples, qa, c))
    engine = LiftEngine(tiny_loaded, cfg, AdapterStore(cfg.store.uri))
    text = _document(40)
    result = engine.absorb(text, progress=False)
    pairs = lift_ray.absorb.auxiliary_pairs(tiny_loaded, text, result.doc_id, cfg, engine.store)
    assert captured and len(captured) == len(pairs)
    asked = {q for pair in pairs for q in (pair.question, pair.short_question) if q}  # short forms train in this view too
    prompts = [engine.prepare(Question(q, result.doc_id, "rag", context_window=128)) for q in asked]
    for sample in captured:  # each sample starts with the rag prompt of its pair's question
        assert any(sample.input_ids[:len(p.prompt)] == p.prompt for p in prompts)
    focused = sum(p.view == "retrieved" and "\n\nAnswer the question" in tiny_loaded.tokenizer.decode(p.prompt) for p in prompts)
    assert focused  # some pairs' views end with their sentence
