import pytest
import torch

from conftest import LONG_TEXT
from lift_ray.adapters import AdapterError
from lift_ray.infer import LiftEngine, QuestionError, build_question_prompt
from lift_ray.segments import chat_format, truncate_middle
from lift_ray.store import AdapterStore

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 64, 12]])


@pytest.fixture
def engine(tiny_loaded, tiny_config):
    return LiftEngine(tiny_loaded, tiny_config, AdapterStore(tiny_config.store.uri))


@pytest.fixture
def absorbed(engine):
    return engine.absorb(LONG_TEXT, progress=False)


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_prompts_per_mode(tiny_loaded):
    tok = tiny_loaded.tokenizer
    fmt = chat_format(tok)
    doc_ids = tok(LONG_TEXT, add_special_tokens=False)["input_ids"]
    view = truncate_middle(doc_ids, 40, tok(" ... ", add_special_tokens=False)["input_ids"])
    common = dict(fmt=fmt, tokenizer=tok, question="Who?", view=view,
                  answer_prompt="Context Q: {question}", lift_prompt="Memory Q: {question}")
    icl = build_question_prompt(mode="icl", **common)
    lift = build_question_prompt(mode="lift", **common)
    assert icl[len(fmt.user_start): len(fmt.user_start) + len(view)] == view
    assert build_question_prompt(mode="lift+icl", **common) == icl
    assert "Memory Q: Who?" in tok.decode(lift) and "Sentence number" not in tok.decode(lift)
    assert len(icl) == len(fmt.user_start) + 40 + len(tok("\n\nContext Q: Who?", add_special_tokens=False)["input_ids"]) + len(fmt.reply_start)
    with pytest.raises(QuestionError, match="unknown mode"):
        build_question_prompt(mode="rag+icl", **common)
    with pytest.raises(QuestionError, match="empty"):
        build_question_prompt(mode="lift", **{**common, "question": "  "})


def test_modes_answer_and_base_is_restored(engine, absorbed):
    base_model = engine.loaded.model
    base = _logits(base_model)
    for mode in ("icl", "lift", "lift+icl", "rag", "lift+rag", "icl"):
        ans = engine.answer("Who keeps a tortoise?", absorbed.doc_id, mode)
        assert ans.mode == mode and ans.doc_id == absorbed.doc_id
        assert 0 < ans.new_tokens <= engine.config.inference.max_new_tokens
        assert ans.variant == (absorbed.variant if mode.startswith("lift") else None)
        assert ans.view == {"lift": None, "rag": "retrieved", "lift+rag": "retrieved"}.get(mode, "head_tail")
    assert engine.resident_adapters() == [(absorbed.doc_id, absorbed.variant)]  # kept for the next question
    engine.detach()
    assert engine.loaded.model is base_model  # never reloaded
    assert torch.equal(_logits(engine.loaded.model), base)


def test_icl_with_an_adapter_attached_equals_plain_icl(engine, absorbed):
    plain = engine.answer("Who keeps a tortoise?", absorbed.doc_id, "icl")
    engine.attach(absorbed.doc_id)
    with_adapter = engine.answer("Who keeps a tortoise?", absorbed.doc_id, "icl")
    assert plain.answer == with_adapter.answer and plain.prompt_tokens == with_adapter.prompt_tokens
    # ...while lift+icl asks with the same prompt through the trained adapter, which changes the output.
    lift_icl = engine.answer("Who keeps a tortoise?", absorbed.doc_id, "lift+icl")
    assert lift_icl.variant == absorbed.variant and lift_icl.prompt_tokens == plain.prompt_tokens
    entries = engine._acquire([engine.manifests.get(absorbed.doc_id)])
    try:
        with torch.no_grad():
            logits = {}
            for name, rows in (("adapted", entries), ("base", [None])):
                context, route = engine.resident.routing(rows)
                with context:
                    logits[name] = engine.resident.module(input_ids=IDS, **route).logits
    finally:
        engine._release(entries)
    adapted, base = logits["adapted"], logits["base"]
    assert not torch.allclose(adapted, base, atol=1e-5), "the trained adapter left the logits unchanged"
    engine.detach()


def test_streaming_yields_the_same_answer(engine, absorbed):
    for mode in ("icl", "lift+icl"):
        full = engine.answer("Who keeps a tortoise?", absorbed.doc_id, mode)
        pieces = list(engine.stream_answer("Who keeps a tortoise?", absorbed.doc_id, mode))
        assert "".join(pieces).strip() == full.answer
    engine.detach()


def test_recorded_window_is_used_unless_overridden(engine, absorbed):
    default = engine.answer("Who?", absorbed.doc_id, "icl")
    wider = engine.answer("Who?", absorbed.doc_id, "icl", context_window=80)
    assert wider.prompt_tokens - default.prompt_tokens == 80 - engine.config.segments.context_window


def test_icl_on_raw_text_needs_no_store(engine):
    ans = engine.answer("Who?", LONG_TEXT, "icl")
    assert ans.doc_id and ans.variant is None
    with pytest.raises(Exception, match="unknown document id"):
        engine.answer("Who?", LONG_TEXT, "lift")


def test_adapter_from_another_base_model_is_refused(engine, absorbed):
    manifest = engine.store.latest_manifest(absorbed.doc_id)
    engine.loaded.weights_hash = "sha256:another-model"
    with pytest.raises(AdapterError, match="trained on .* the loaded base model is"):
        engine.answer("Who?", absorbed.doc_id, "lift")
    assert engine.resident_adapters() == [] and not hasattr(engine.loaded.model, "peft_config")
    assert manifest.base_model.weights_hash != engine.loaded.weights_hash


def test_document_is_read_once_for_many_questions(engine, absorbed, monkeypatch):
    reads = []
    real = engine.store.text
    monkeypatch.setattr(engine.store, "text", lambda doc_id: reads.append(doc_id) or real(doc_id))
    engine._doc_tokens.clear()
    engine.answer("Who?", absorbed.doc_id, "lift")
    assert reads == []  # lift mode never needs the text
    for question in ("Who?", "What?", "Where?"):
        engine.answer(question, absorbed.doc_id, "lift+icl")
    assert reads == [absorbed.doc_id]
    engine.detach()
