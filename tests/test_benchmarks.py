"""The benchmark scripts call the engine's own API; these tests break when that API moves under them."""

import importlib.util
from pathlib import Path

import pytest

from conftest import LONG_TEXT
from lift_ray.infer import LiftEngine
from lift_ray.store import AdapterStore, doc_id_for

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_to_knowledge_answers_as_the_engine_does(tiny_loaded, tiny_config):
    """Its per-epoch answer (the model as it is, the lift+icl prompt) equals the engine's answer on that prompt."""
    ttk = _load("time_to_knowledge")
    engine = LiftEngine(tiny_loaded, tiny_config, AdapterStore(tiny_config.store.uri))
    for question in ("Who kept the lighthouse?", "What year was it built?"):
        expected = engine.answer(question, LONG_TEXT, "icl").answer  # the same prompt as lift+icl, no adapter
        assert ttk.answer_now(engine, LONG_TEXT, question) == expected


def test_time_to_knowledge_previous_variant_pins_the_old_schedule(tiny_loaded, tiny_config):
    ttk = _load("time_to_knowledge")
    engine = LiftEngine(tiny_loaded, tiny_config, AdapterStore(tiny_config.store.uri))
    previous = ttk.PREVIOUS
    assert previous["aux_qa"] == {"stage1_epochs": 3, "stage2_epochs": 5, "views": ["head_tail"]}
    assert previous["train"]["early_stop"] is False and previous["model"]["dtype"] == "float32"
    assert engine.config.aux_qa.views != previous["aux_qa"]["views"]  # the default moved on (README)


def test_quality_keeps_adapters_in_a_store_and_answers_again_without_training(tiny_model_dir, tmp_path):
    """--store: the second run, with another answering setting (top_p, which greedy decoding ignores),
    finds the document's adapter and answers with it (no absorb), with the same answers."""
    import json
    import subprocess
    import sys

    devset = tmp_path / "devset.jsonl"
    questions = [{"Q": "Who keeps the tortoise?", "A": ["the keeper"], "where": "beyond", "kind": "direct"},
                 {"Q": "What is the tortoise named?", "A": ["Marlowe"], "where": "inside", "kind": "direct"}]
    devset.write_text(json.dumps({"id": "tiny-0", "style": "narrative", "input": LONG_TEXT, "num_tokens": 400,
                                  "qa_pairs": questions}) + "\n")
    store = tmp_path / "store"
    printed = []

    def run(out, *extra):
        cmd = [sys.executable, str(BENCHMARKS / "quality.py"), "--devset", str(devset), "--model", str(tiny_model_dir),
               "--threads", "1", "--modes", "icl,lift+icl", "--store", str(store), "--out", str(out),
               "--set", "aux_qa.stage2_epochs=1", "--set", "train.early_stop=false", *extra]
        printed.append(subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout)
        return json.loads(out.read_text())[0]

    first, second = run(tmp_path / "a.json"), run(tmp_path / "b.json", "--set", "inference.top_p=0.5")
    assert first["reused"] is False and second["reused"] is True
    assert second["epochs"] == first["epochs"] == 1 and second["qa_pairs"] == first["qa_pairs"] > 0
    assert [a["answer"] for a in second["answers"]] == [a["answer"] for a in first["answers"]]
    assert len(list((store / "docs").iterdir())) == 1
    # the tables score replies whole and by their first 10 words
    assert "answer anywhere in the reply" in printed[1] and "answer in the reply's first 10 words" in printed[1]
    assert printed[1].count("Documents where LIFT+ICL answers fewer inside-window questions than ICL") == 2


def test_first_answer_comes_once_the_absorb_has_stored_the_text(tiny_loaded, tiny_config, tmp_path):
    """It asks until the absorbing process has stored the document, and reports a failed absorb."""
    import pytest

    from lift_ray.modes import NO_ADAPTER_YET
    from lift_ray.text import normalize_text

    bench = _load("first_answer")
    store = AdapterStore(str(tmp_path / "store"))
    engine = LiftEngine(tiny_loaded, tiny_config, store)
    text = normalize_text(LONG_TEXT)
    doc_id = doc_id_for(text)

    class Absorbing:  # stores the text on its third poll, as an absorb does before it trains
        def __init__(self, exit_code=None):
            self.polls, self.returncode = 0, exit_code

        def poll(self):
            self.polls += 1
            if self.polls == 3 and self.returncode is None:
                store.put_document(doc_id, text)
            return self.returncode

    absorbing = Absorbing()
    ans, _ = bench.first_answer(engine, doc_id, "Who kept the lighthouse?", "lift+rag", absorbing, poll=0.0)
    assert absorbing.polls == 3 and (ans.answered_as, ans.answered_as_reason) == ("rag", NO_ADAPTER_YET)
    with pytest.raises(RuntimeError, match="absorb failed"):
        bench.first_answer(engine, doc_id_for("another text"), "Who?", "lift+rag", Absorbing(exit_code=1), poll=0.0)


def test_retrieval_benchmark_buckets_an_eval_set_by_where_its_evidence_lies(tiny_loaded, tiny_config, tmp_path):
    """Rows of a development set keep their own buckets; an eval set's questions go inside or beyond the
    window as `lift-ray eval` puts them."""
    import json

    bench = _load("retrieval")
    engine = LiftEngine(tiny_loaded, tiny_config, AdapterStore(tiny_config.store.uri))
    eval_set = tmp_path / "set.jsonl"
    eval_set.write_text(json.dumps({"id": "doc", "input": LONG_TEXT, "qa_pairs": [
        {"Q": "What does sentence 29 say?", "A": "Marlowe 29."}, {"Q": "What does sentence 15 say?", "A": "Marlowe 15."}]}) + "\n")
    [(doc, text, questions)] = bench._documents(eval_set, engine)
    assert doc == "doc" and text == LONG_TEXT
    assert [(q, where) for q, _, where in questions] == [("What does sentence 29 say?", "inside"), ("What does sentence 15 say?", "beyond")]
    devset = tmp_path / "devset.jsonl"
    devset.write_text(json.dumps({"id": "tiny-0", "style": "squad", "input": LONG_TEXT,
                                  "qa_pairs": [{"Q": "Who?", "A": ["the keeper"], "where": "beyond"}]}) + "\n")
    assert bench._documents(devset, engine) == [("tiny-0", LONG_TEXT, [("Who?", ["the keeper"], "beyond-squad")])]


def test_stop_check_pairs_the_full_check_with_the_absorbs_own_and_restores_it(tiny_loaded, tiny_config):
    """Each check the absorb runs is paired with a full check on the same weights; same stop decisions."""
    import lift_ray.train

    bench = _load("stop_check")
    cfg = tiny_config.model_copy(update={
        "train": tiny_config.train.model_copy(update={"early_stop": True, "min_epochs": 1, "stop_accuracy": 1.0,
                                                      "check_reuses_training": True}),
        "aux_qa": tiny_config.aux_qa.model_copy(update={"stage1_epochs": 0, "stage2_epochs": 2}),
    })
    engine = LiftEngine(tiny_loaded, cfg, AdapterStore(cfg.store.uri))
    real = lift_ray.train.knowledge_check
    with bench.PairedChecks(cfg.train.stop_accuracy) as paired:
        result = engine.absorb(LONG_TEXT, progress=False)
    assert lift_ray.train.knowledge_check is real
    assert paired.rows and len(paired.rows) == sum(r.check is not None for r in result.training.epoch_log)
    for row, record in zip(paired.rows, [r for r in result.training.epoch_log if r.check is not None]):
        assert row["used"] == record.check.answer_accuracy and row["forwarded"] == record.check.forwarded
        assert row["same_stop"] and row["used"] >= row["full"]  # the reused share is an upper bound


def test_packing_benchmark_compares_the_tree_with_the_prefix_packing_and_restores_it(tiny_loaded, tiny_config):
    """Both packings train the same steps to the same losses (float rounding aside); the tree computes fewer
    tokens, since the QA samples share the question prompt's wording past their view."""
    import lift_ray.train

    bench = _load("packing")
    cfg = tiny_config.model_copy(update={
        "aux_qa": tiny_config.aux_qa.model_copy(update={"stage1_epochs": 0, "stage2_epochs": 2}),
        "train": tiny_config.train.model_copy(update={"step_tokens": 400}),  # several QA samples a step
    })
    engine = LiftEngine(tiny_loaded, cfg, AdapterStore(cfg.store.uri))
    real = lift_ray.train.pack_shared_prefix, lift_ray.train.pack_groups, lift_ray.train.packed_length
    prefix = bench.absorb(engine, LONG_TEXT, "prefix")
    assert (lift_ray.train.pack_shared_prefix, lift_ray.train.pack_groups, lift_ray.train.packed_length) == real
    tree = bench.absorb(engine, LONG_TEXT, "tree")
    assert prefix["epochs"] == tree["epochs"] == 2 and prefix["sample_tokens"] == tree["sample_tokens"]
    assert tree["computed_tokens"] < prefix["computed_tokens"]
    # the same steps to float rounding; at the tiny model's lr 1e-2 that rounding grows over the steps
    assert tree["losses"][0] == pytest.approx(prefix["losses"][0], rel=1e-4)
    assert tree["losses"] == pytest.approx(prefix["losses"], rel=0.02)
