"""The benchmark scripts call the engine's own API; these tests break when that API moves under them."""

import importlib.util
from pathlib import Path

from conftest import LONG_TEXT
from lift_ray.infer import LiftEngine
from lift_ray.store import AdapterStore

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
