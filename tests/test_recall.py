"""The real test: the embedded SmolLM2 recalls facts it can only have from its adapter.

The sample document (fictional, so no world knowledge helps) is ~6x the 128-token window; five of
its facts lie outside the head+tail view. After absorbing with the default configuration, `lift`
(adapter, no document) must answer at least 3 of them and `icl` none. `lift+icl` is measured and
reported (making it win is the Gated Memory issue's bar).
"""

import pytest
import torch

from lift_ray.demo import is_correct, sample_document, sample_questions

pytestmark = pytest.mark.slow
WINDOW = 128


@pytest.fixture(scope="session")
def absorbed_sample(tmp_path_factory):
    """The sample document absorbed once per session with the default config (only W set)."""
    from lift_ray.config import build_config
    from lift_ray.infer import LiftEngine

    torch.set_num_threads(2)
    cfg = build_config(
        None,
        {
            "segments": {"context_window": WINDOW},
            "inference": {"max_new_tokens": 24},
            "store": {"uri": str(tmp_path_factory.mktemp("smol-store"))},
        },
    )
    engine = LiftEngine.from_config(cfg)
    result = engine.absorb(sample_document(), progress=False)
    return engine, result


def _score(engine, doc_id, mode, where):
    hits, answers = 0, []
    for q in sample_questions():
        if q["where"] != where:
            continue
        ans = engine.answer(q["question"], doc_id, mode)
        ok = is_correct(ans.answer, q["keywords"])
        hits += ok
        answers.append((ok, q["question"], ans.answer))
    return hits, answers


def test_beyond_window_facts_are_really_beyond_the_window(absorbed_sample):
    engine, result = absorbed_sample
    tok = engine.loaded.tokenizer
    from lift_ray.segments import truncate_middle

    ids = tok(engine.store.text(result.doc_id), add_special_tokens=False)["input_ids"]
    assert len(ids) >= 6 * WINDOW
    view = tok.decode(truncate_middle(ids, WINDOW, tok(engine.config.segments.mixin, add_special_tokens=False)["input_ids"]))
    beyond = [q for q in sample_questions() if q["where"] == "beyond"]
    assert len(beyond) == 5
    for q in beyond:
        assert not is_correct(view, q["keywords"]), q
    for q in sample_questions():
        if q["where"] == "inside":
            assert is_correct(view, q["keywords"]), q


def test_lift_recalls_beyond_window_facts_that_icl_cannot(absorbed_sample, record_property):
    engine, result = absorbed_sample
    assert result.status == "absorbed"
    lift, lift_answers = _score(engine, result.doc_id, "lift", "beyond")
    icl, icl_answers = _score(engine, result.doc_id, "icl", "beyond")
    both, both_answers = _score(engine, result.doc_id, "lift+icl", "beyond")
    report = f"beyond-window facts: icl {icl}/5, lift {lift}/5, lift+icl {both}/5"
    print(report)
    record_property("recall", report)
    assert icl == 0, icl_answers
    assert lift >= 3, lift_answers
