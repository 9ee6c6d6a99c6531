"""The engine as a server's engine (issue 12, part A), on the tiny random Llama.

Six documents are absorbed once per module (four LoRA, two Gated Memory) into one store; each test
builds a fresh serving engine over it. "Alone" answers are computed by a separate engine one
question at a time, so a test fails if batching, caching or concurrency changes any answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools

import pytest
import torch

from lift_ray.infer import Answer, LiftEngine, Question, StreamEnd
from lift_ray.store import AdapterNotFound, AdapterNotReady, AdapterStore, DocumentNotFound, StoreError

LORA_DOCS = [
    " ".join(f"Tower {i} keeper {j} counts {i * 13 + j} gulls and names the tortoise Marlowe {i}." for j in range(6))
    for i in range(4)
]
GATED_DOCS = [
    " ".join(f"Harbour {i} ledger line {j}: the fox jumps over {i * 5 + j} lazy dogs at Port Quillon." for j in range(6))
    for i in range(2)
]
QUESTIONS = ["Who keeps the tortoise?", "How many gulls?", "Where is the harbour?", "Who designed the lighthouse?"]
MODES = ("icl", "lift", "lift+icl")


def _config(model_dir, store_uri, train=None, **adapter):
    from lift_ray.config import build_config, resolve_config

    cfg = build_config(
        None,
        {
            "model": {"name_or_path": str(model_dir), "device": "cpu"},
            "segments": {"context_window": 48, "segment_length": 32},
            "train": train or {"epochs": 2, "learning_rate": 1e-2},
            "aux_qa": {"generator": "none"},
            "inference": {"max_new_tokens": 12, "question_reserve": 64, "rag_when_unsupported": False},
            "store": {"uri": store_uri},
            **({"adapter": adapter} if adapter else {}),
        },
    )
    return resolve_config(cfg, num_params=10**6, max_positions=1024, on_cuda=False)


@pytest.fixture(scope="module")
def absorbed(tiny_model_dir, tmp_path_factory):
    """(loaded model, config, store uri, LoRA doc ids, Gated Memory doc ids)."""
    from lift_ray.config import ModelSpec
    from lift_ray.model import load_model

    loaded = load_model(ModelSpec(name_or_path=str(tiny_model_dir), dtype="float32", load_in_4bit=False, device="cpu"))
    uri = str(tmp_path_factory.mktemp("serving-store"))
    lora_cfg = _config(tiny_model_dir, uri)
    # A strong gate and more steps: the tiny model's Gated Memory answers must differ from the base's.
    gated_cfg = _config(tiny_model_dir, uri, {"epochs": 4, "learning_rate": 3e-2}, kind="gated_memory", gate_init=0.4)
    torch.manual_seed(0)
    lora = [LiftEngine(loaded, lora_cfg, AdapterStore(uri)).absorb(t, progress=False).doc_id for t in LORA_DOCS]
    gated = [LiftEngine(loaded, gated_cfg, AdapterStore(uri)).absorb(t, progress=False).doc_id for t in GATED_DOCS]
    return loaded, lora_cfg, uri, lora, gated


@pytest.fixture
def make_engine(absorbed):
    loaded, cfg, uri, _, _ = absorbed
    engines = []

    def make(**kwargs) -> LiftEngine:
        engine = LiftEngine(loaded, cfg, AdapterStore(kwargs.pop("uri", uri)), **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.detach()  # the shared base model goes back bare to the next test


def _questions(doc_ids, n, modes=MODES):
    return [
        Question(QUESTIONS[i % len(QUESTIONS)], doc_ids[i % len(doc_ids)], modes[i % len(modes)])
        for i in range(n)
    ]


def _alone(engine: LiftEngine, questions):
    out = []
    for q in questions:
        out.append(engine.answer(q.question, q.doc, q.mode).answer)
        engine.detach()  # nothing resident between questions: the plainest reference
    return out


def test_adapters_change_the_answers(make_engine, absorbed):
    """Precondition of the equality tests below: each document's adapter really answers differently."""
    *_, lora, gated = absorbed
    engine = make_engine()
    lift = {doc: engine.answer(QUESTIONS[0], doc, "lift").answer for doc in lora + gated}
    base = engine.answer(QUESTIONS[0], lora[0], "icl").answer
    assert len(set(lift.values())) >= 5 and all(lift[d] != base for d in gated + lora[:3]), lift


@pytest.mark.parametrize("kinds", ["lora", "gated_memory", "mixed"])
def test_batched_answers_equal_one_at_a_time(make_engine, absorbed, kinds):
    *_, lora, gated = absorbed
    docs = {"lora": lora, "gated_memory": gated, "mixed": lora[:2] + gated}[kinds]
    questions = _questions(docs, 8)
    expected = _alone(make_engine(), questions)
    engine = make_engine(max_resident=8)
    calls = []
    original = engine._generate
    engine._generate = lambda rows, entries, **kw: calls.append(len(rows)) or original(rows, entries, **kw)
    answers = engine.answer_batch(questions)
    assert calls == [8], "one generate for the whole batch"
    assert [a.answer for a in answers] == expected
    assert [a.variant is None for a in answers] == [q.mode == "icl" for q in questions]
    assert all(a.doc_id == q.doc for a, q in zip(answers, questions))


def test_concurrent_threads_never_mix_adapters(make_engine, absorbed):
    """16 requests over 4 documents in mixed modes, fired at once from threads and from an asyncio loop."""
    *_, lora, gated = absorbed
    docs = [lora[0], lora[1], gated[0], gated[1]]
    questions = _questions(docs, 16)
    expected = _alone(make_engine(), questions)
    engine = make_engine(max_resident=2)  # fewer slots than documents: eviction under load too
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda q: engine.answer(q.question, q.doc, q.mode).answer, questions))
    assert got == expected

    async def fire():
        return await asyncio.gather(*(asyncio.to_thread(engine.answer_batch, [q]) for q in questions))

    got = [r[0].answer for r in asyncio.run(fire())]
    assert got == expected
    assert len(engine.resident_adapters()) <= 2


def test_cache_keeps_k_adapters_and_reads_the_store_once_per_load(make_engine, absorbed, monkeypatch):
    *_, lora, gated = absorbed
    engine = make_engine(max_resident=2, manifest_ttl=60)
    store = engine.store
    fetches, hashes = [], []
    real_dir = store.adapter_dir
    monkeypatch.setattr(store, "adapter_dir", lambda *a, **kw: fetches.append(a[:2]) or real_dir(*a, **kw))
    import lift_ray.store as store_mod

    real_sha = store_mod.sha256_file
    monkeypatch.setattr(store_mod, "sha256_file", lambda p: hashes.append(p) or real_sha(p))
    a, b, c = lora[0], gated[0], lora[1]
    for doc in (a, b, a, b, a, b):
        engine.answer("Who?", doc, "lift")
    assert [f[0] for f in fetches] == [a, b], "switching between resident adapters touches no file"
    assert len(hashes) == 2 * 2, "each file hashed once per load (LoRA and Gated Memory: weights + config)"
    engine.answer("Who?", c, "lift")  # a third document evicts the least recently used (a)
    assert [k[0] for k in engine.resident_adapters()] == [b, c]
    engine.answer("Who?", a, "lift")
    assert [f[0] for f in fetches] == [a, b, c, a]
    assert engine.resident.loads == 4


def test_in_flight_adapter_is_not_evicted(make_engine, absorbed):
    *_, lora, _ = absorbed
    engine = make_engine(max_resident=1)
    manifest = engine.manifests.get(lora[0])
    [entry] = engine._acquire([manifest])  # pinned, as during a generation
    engine.evict(lora[0])
    engine.attach(lora[1])  # over capacity while lora[0] is pinned: it stays
    assert (lora[0], manifest.variant) in engine.resident_adapters()
    engine._release([entry])
    assert [k[0] for k in engine.resident_adapters()] == [lora[1]]


def test_manifest_cache_sees_publish_and_delete_by_another_process(make_engine, absorbed, tmp_path):
    loaded, cfg, uri, lora, _ = absorbed
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(uri, copy)
    now = [0.0]
    engine = make_engine(uri=str(copy), manifest_ttl=5.0)
    engine.manifests._clock = lambda: now[0]
    other = AdapterStore(str(copy))  # "another process"
    first = engine.answer("Who?", lora[0], "lift")
    other.delete(lora[0])
    assert engine.answer("Who?", lora[0], "lift").answer == first.answer, "within the TTL the cached manifest answers"
    now[0] += 5.0
    with pytest.raises(StoreError, match="unknown document"):
        engine.answer("Who?", lora[0], "lift")
    assert engine.refresh() == [(lora[0], first.variant)] and engine.resident_adapters() == []
    # published by another process after this engine looked: visible without a restart
    shutil.copytree(f"{uri}/docs/{lora[0]}", copy / "docs" / lora[0])
    now[0] += 5.0
    assert engine.answer("Who?", lora[0], "lift").answer == first.answer


def test_a_document_being_absorbed_answers_in_the_base_modes_until_its_adapter_is_published(make_engine, absorbed, tmp_path):
    """An absorb stores the text first: icl and rag answer from it, lift+icl and lift+rag as those two
    (and say why), lift and a named variant wait; the published adapter answers without a restart."""
    import shutil

    from conftest import drain
    from lift_ray.modes import NO_ADAPTER_YET

    loaded, cfg, uri, lora, _ = absorbed
    doc, question = lora[0], QUESTIONS[0]
    copy = tmp_path / "store"
    absorbing = AdapterStore(str(copy))  # another process, between storing the text and publishing
    absorbing.put_document(doc, AdapterStore(uri).text(doc))
    engine, reference = make_engine(uri=str(copy)), make_engine()
    for mode, base in (("icl", "icl"), ("rag", "rag"), ("lift+icl", "icl"), ("lift+rag", "rag")):
        ans = engine.answer(question, doc, mode)
        assert (ans.mode, ans.answered_as, ans.variant) == (mode, base, None)
        assert ans.answered_as_reason == (NO_ADAPTER_YET if mode != base else None)
        assert ans.answer == reference.answer(question, doc, base).answer
        pieces, streamed = drain(engine.stream_answer(question, doc, mode))
        assert (streamed.answer, streamed.answered_as_reason) == (ans.answer, ans.answered_as_reason)
    with pytest.raises(AdapterNotReady, match="no adapter yet"):
        engine.answer(question, doc, "lift")
    variant = AdapterStore(uri).variants(doc)[0]
    with pytest.raises(AdapterNotFound, match="has no adapter"):
        engine.answer(question, doc, "lift+rag", variant=variant)
    with pytest.raises(DocumentNotFound, match="unknown document"):  # no text: not being absorbed either
        engine.answer(question, lora[1], "rag")
    assert absorbing.list_docs() == []
    shutil.copytree(f"{uri}/docs/{doc}/adapters", copy / "docs" / doc / "adapters")  # published
    ans = engine.answer(question, doc, "lift+icl")
    assert (ans.answered_as, ans.answered_as_reason, ans.variant) == ("lift+icl", None, variant)
    # a damaged manifest is an error of this document, never taken for an absorb still running
    (copy / "docs" / doc / "adapters" / variant / "manifest.json").write_text("{not json")
    fresh = make_engine(uri=str(copy))
    with pytest.raises(StoreError, match="not JSON") as err:
        fresh.answer(question, doc, "lift+rag")
    assert not isinstance(err.value, (AdapterNotReady, DocumentNotFound))
    engine.detach()  # one base model: one engine's adapters at a time
    assert ans.answer == reference.answer(question, doc, "lift+icl").answer


def test_corrupt_adapter_fails_only_its_own_rows(make_engine, absorbed, tmp_path):
    loaded, cfg, uri, lora, gated = absorbed
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(uri, copy)
    store = AdapterStore(str(copy))
    bad = store.latest_manifest(lora[2])
    (copy / "docs" / lora[2] / "adapters" / bad.variant / "adapter_model.safetensors").write_bytes(b"garbage")
    engine = make_engine(uri=str(copy))
    questions = [Question("Who?", lora[0], "lift"), Question("Who?", lora[2], "lift"), Question("Who?", gated[0], "lift+icl"),
                 Question("Who?", lora[2], "icl")]
    results = engine.answer_batch(questions)
    assert isinstance(results[1], StoreError) and "corrupted" in str(results[1])
    assert all(isinstance(results[i], Answer) for i in (0, 2, 3)), results
    assert engine.resident_adapters() == [(lora[0], engine.manifests.get(lora[0]).variant),
                                          (gated[0], engine.manifests.get(gated[0]).variant)]


def test_stream_pieces_join_to_the_answer_and_end_with_usage(make_engine, absorbed):
    *_, lora, gated = absorbed
    engine = make_engine()
    for doc, mode in itertools.product((lora[0], gated[0]), MODES):
        full = engine.answer(QUESTIONS[1], doc, mode)
        items = list(engine.stream(Question(QUESTIONS[1], doc, mode)))
        *pieces, end = items
        assert all(isinstance(p, str) and p for p in pieces) and isinstance(end, StreamEnd)
        assert "".join(pieces) == full.answer
        assert (end.new_tokens, end.prompt_tokens, end.finish_reason, end.variant) == (
            full.new_tokens, full.prompt_tokens, full.finish_reason, full.variant)


def test_stream_errors_raise_before_the_first_piece(make_engine):
    engine = make_engine()
    with pytest.raises(StoreError, match="unknown document"):
        engine.stream(Question("Who?", "0" * 32, "lift"))


def test_closing_a_stream_stops_generating(make_engine, absorbed):
    *_, lora, _ = absorbed
    engine = make_engine()
    steps = []
    hook = engine.loaded.model.register_forward_hook(lambda *a: steps.append(1))
    try:
        q = Question(QUESTIONS[0], lora[0], "lift+icl", max_new_tokens=200)
        end = list(engine.stream(q))[-1]
        assert end.new_tokens >= 60, "precondition: an uncut answer is long"
        steps.clear()
        stream = engine.stream(q)
        next(stream)
        stream.close()
        assert len(steps) < 10, f"{len(steps)} forwards after the consumer stopped at the first piece"
    finally:
        hook.remove()


def test_answers_from_an_s3_store(s3_server, tiny_model_dir, tiny_loaded):
    """`ask --store s3://` and `niah --workers N --store s3://` answer through this path."""
    uri = "s3://lift-ray/engine-serving"
    cfg = _config(tiny_model_dir, uri)
    writer = LiftEngine(tiny_loaded, cfg, AdapterStore(uri))
    doc = writer.absorb(LORA_DOCS[0], progress=False).doc_id
    first = writer.answer("Who?", LORA_DOCS[0], "lift")
    writer.detach()
    engine = LiftEngine(tiny_loaded, cfg, AdapterStore(uri))
    for mode in MODES:
        ans = engine.answer("Who?", doc, mode)
        assert ans.doc_id == doc and (ans.variant is None) == (mode == "icl")
    assert engine.answer("Who?", doc, "lift").answer == first.answer
    engine.detach()


def test_resident_adapters_compute_what_the_trained_adapter_computes(make_engine, absorbed):
    """The banks (peft named adapters, Gated Memory per-row) give the logits of the adapter as trained and
    saved (lift_ray.adapters.load_adapter), row by row in a mixed batch, and the base for base rows."""
    from lift_ray.adapters import load_adapter
    from lift_ray.config import parse_adapter_config

    loaded, *_, lora, gated = absorbed
    engine = make_engine(max_resident=4)
    ids = torch.randint(3, 300, (1, 12))
    with torch.no_grad():
        base = loaded.model(input_ids=ids).logits
    expected = {}
    for doc in (lora[0], gated[0]):
        manifest = engine.manifests.get(doc)
        handle = load_adapter(loaded.model, parse_adapter_config(manifest.adapter_config),
                              engine.store.adapter_dir(doc, manifest.variant), base_model_id=loaded.model_id)
        with torch.no_grad():
            expected[doc] = handle.module(input_ids=ids).logits
        loaded.model = handle.detach()
        assert not torch.allclose(expected[doc], base, atol=1e-4), "the adapter changes the logits"
    entries = engine._acquire([engine.manifests.get(lora[0]), engine.manifests.get(gated[0]), None])
    try:
        context, route = engine.resident.routing(entries)
        with torch.no_grad(), context:
            got = engine.resident.module(input_ids=ids.repeat(3, 1), **route).logits
    finally:
        engine._release(entries)
    torch.testing.assert_close(got[0:1], expected[lora[0]], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[1:2], expected[gated[0]], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got[2:3], base, atol=1e-5, rtol=1e-4)
