"""absorb_document end to end on the tiny model: schedule, QA pairs, gate movement, idempotence."""

import pytest
import torch

from conftest import LONG_TEXT
from lift_ray.absorb import DocumentError, absorb_document, training_stages
from lift_ray.adapters import load_adapter
from lift_ray.config import parse_adapter_config, resolve_config
from lift_ray.store import AdapterStore


def _cfg(tiny_config, **sections):
    data = tiny_config.model_dump()
    for section, values in sections.items():
        data[section].update(values)
    data["adapter"] = sections.get("adapter", data["adapter"])
    return resolve_config(type(tiny_config).model_validate(data), num_params=10**6, max_positions=1024, on_cuda=False)


def test_two_stage_schedule_with_rule_qa(tiny_loaded, tiny_config):
    cfg = _cfg(tiny_config, aux_qa={"generator": "rules", "stage1_epochs": 1, "stage2_epochs": 2}, train={"early_stop": False})
    store = AdapterStore(cfg.store.uri)
    result = absorb_document(tiny_loaded, LONG_TEXT, cfg, store, progress=False)
    assert result.status == "absorbed" and result.qa_pairs
    manifest = store.manifest(result.doc_id, result.variant)
    assert manifest.num_qa_pairs == len(result.qa_pairs)
    log = manifest.training.epoch_log
    assert [(r.epoch, r.stage) for r in log] == [(1, "segments"), (2, "segments+QA"), (3, "segments+QA")]
    assert log[1].samples == log[0].samples + len(cfg.aux_qa.views) * manifest.num_qa_pairs  # stage 2 = segments + QA
    assert manifest.training.epochs == 3 and len(manifest.training.epoch_losses) == 3
    assert manifest.training.stop_reason == "max_epochs" and all(r.check is None for r in log)
    assert manifest.config["aux_qa"]["generator"] == "rules"


def test_qa_pairs_trained_in_every_view(tiny_loaded, tiny_config):
    """aux_qa.views [head_tail, retrieved, none]: every pair is a sample three times; the setting is a new variant."""
    base = _cfg(tiny_config, aux_qa={"generator": "rules", "stage1_epochs": 0, "stage2_epochs": 1, "views": ["head_tail"]},
                train={"early_stop": False})
    both = _cfg(tiny_config, aux_qa={"generator": "rules", "stage1_epochs": 0, "stage2_epochs": 1, "views": ["head_tail", "retrieved", "none"]},
                train={"early_stop": False})
    store = AdapterStore(base.store.uri)
    one = absorb_document(tiny_loaded, LONG_TEXT, base, store, progress=False)
    two = absorb_document(tiny_loaded, LONG_TEXT, both, store, progress=False)
    assert one.variant != two.variant and two.status == "absorbed"
    m1, m2 = store.manifest(one.doc_id, one.variant), store.manifest(two.doc_id, two.variant)
    assert m2.num_qa_pairs == m1.num_qa_pairs == len(two.qa_pairs) > 0
    assert m2.num_samples - m1.num_samples == 2 * m1.num_qa_pairs


@pytest.mark.parametrize("change", ["version", "code"])
def test_a_new_generator_revision_trains_again_instead_of_reusing_the_adapter(tiny_loaded, tiny_config, monkeypatch, change):
    """Rules that changed write other pairs: an adapter trained on the old ones is not the same variant.

    Also when the rules' code changed and nobody bumped the version: the source digest differs.
    """
    from lift_ray.aux_qa import RuleQAGenerator, rules

    cfg = _cfg(tiny_config, aux_qa={"generator": "rules", "stage1_epochs": 0, "stage2_epochs": 1}, train={"early_stop": False})
    store = AdapterStore(cfg.store.uri)
    old = absorb_document(tiny_loaded, LONG_TEXT, cfg, store, progress=False)
    assert absorb_document(tiny_loaded, LONG_TEXT, cfg, store, progress=False).status == "already_absorbed"
    old_key = RuleQAGenerator().cache_key()
    if change == "version":
        monkeypatch.setattr(RuleQAGenerator, "VERSION", RuleQAGenerator.VERSION + 1)
    else:
        monkeypatch.setattr(rules, "source_digest", lambda *modules: "0" * 12)
    new = absorb_document(tiny_loaded, LONG_TEXT, cfg, store, progress=False)
    assert new.status == "absorbed" and new.variant != old.variant
    assert RuleQAGenerator().cache_key() != old_key  # the cached pairs are not read either
    assert sorted(store.variants(old.doc_id)) == sorted([old.variant, new.variant])


def test_the_manifest_records_every_check_and_why_training_stopped(tiny_loaded, tiny_config):
    """The stop rule's checks (one per epoch from min_epochs) are kept in the manifest."""
    cfg = _cfg(tiny_config, aux_qa={"generator": "rules", "stage1_epochs": 1, "stage2_epochs": 3},
               train={"early_stop": True, "min_epochs": 2, "stop_accuracy": 1.0})
    store = AdapterStore(cfg.store.uri)
    result = absorb_document(tiny_loaded, LONG_TEXT, cfg, store, progress=False)
    training = store.manifest(result.doc_id, result.variant).training
    assert training.max_epochs == 4 and training.epochs == len(training.epoch_log)
    assert training.epoch_log[0].check is None  # before min_epochs
    checks = [r.check for r in training.epoch_log[1:]]
    assert [c.epoch for c in checks] == list(range(2, training.epochs + 1))
    assert all(c.pairs == len(result.qa_pairs) * len(cfg.aux_qa.views) and 0 <= c.answer_accuracy <= 1 and c.loss > 0 for c in checks)
    # The random tiny model cannot make its answers certain (see test_train's fitting_model): no stop.
    assert training.stop_reason == "max_epochs" and training.epochs == 4


def test_distractors_add_negative_samples_the_check_does_not_count(tiny_loaded, tiny_config):
    """aux_qa.distractors: more samples per epoch (the negatives), the same pairs checked; a new variant."""
    qa = {"generator": "rules", "stage1_epochs": 0, "stage2_epochs": 2}
    plain = _cfg(tiny_config, aux_qa=qa, train={"early_stop": True, "min_epochs": 1, "stop_accuracy": 1.0})
    contrast = _cfg(tiny_config, aux_qa={**qa, "distractors": True}, train={"early_stop": True, "min_epochs": 1, "stop_accuracy": 1.0})
    store = AdapterStore(plain.store.uri)
    one = absorb_document(tiny_loaded, LONG_TEXT, plain, store, progress=False)
    two = absorb_document(tiny_loaded, LONG_TEXT, contrast, store, progress=False)
    assert one.variant != two.variant and two.status == "absorbed"
    log1, log2 = (store.manifest(r.doc_id, r.variant).training.epoch_log for r in (one, two))
    assert log2[0].samples > log1[0].samples
    assert log2[0].check.pairs == log1[0].check.pairs == len(two.qa_pairs) * len(contrast.aux_qa.views)


def test_no_qa_means_one_stage(tiny_config):
    cfg = _cfg(tiny_config, aux_qa={"generator": "none"})
    stages = training_stages(["s"], [], cfg)
    assert [(s.name, s.samples, s.epochs) for s in stages] == [("segments", ["s"], cfg.train.epochs)]
    cfg = _cfg(tiny_config, aux_qa={"generator": "rules", "stage1_epochs": 0, "stage2_epochs": 4})
    assert [s.name for s in training_stages(["s"], ["q"], cfg)] == ["segments+QA"]


def test_qa_only_trains_the_pairs_alone_and_keeps_the_default_variant(tiny_config):
    from lift_ray.config import ConfigError, build_config

    cfg = _cfg(tiny_config, aux_qa={"generator": "rules", "stage1_epochs": 2, "stage2_epochs": 4, "recite_segments": False})
    assert [(s.name, s.samples, s.epochs) for s in training_stages(["s"], ["q"], cfg)] == [("QA", ["q"], 4)]
    # A document that gets no pairs still trains, on its segments.
    assert [s.name for s in training_stages(["s"], [], cfg)] == ["segments"]
    # The field's default is not part of the training hash: adapters absorbed before it existed keep their variant.
    default = _cfg(tiny_config, aux_qa={"generator": "rules"})
    explicit = _cfg(tiny_config, aux_qa={"generator": "rules", "recite_segments": True})
    assert default.training_hash() == explicit.training_hash() != _cfg(tiny_config, aux_qa={"generator": "rules", "recite_segments": False}).training_hash()
    # What LiftConfig() and a rules config hashed to before the field existed (computed at commit 7b370cb; full
    # questions everywhere, as then).
    from lift_ray.config import LiftConfig

    assert LiftConfig.model_validate({"aux_qa": {"short_question_views": []}}).training_hash() == "c4bfe2b018b906e4"
    assert LiftConfig.model_validate({"aux_qa": {"generator": "rules", "short_question_views": []}}).training_hash() == "b5688f64b3f0841a"
    with pytest.raises(ConfigError, match="recite_segments"):
        build_config(None, {"aux_qa": {"generator": "none", "recite_segments": False}})


def test_gated_memory_training_moves_the_gate_and_lowers_the_loss(tiny_loaded, tiny_config):
    cfg = _cfg(
        tiny_config,
        adapter={"kind": "gated_memory"},
        train={"epochs": 4, "learning_rate": 1e-2},
        aux_qa={"generator": "none"},
    )
    store = AdapterStore(cfg.store.uri)
    before = {k: v.clone() for k, v in tiny_loaded.model.state_dict().items()}
    result = absorb_document(tiny_loaded, LONG_TEXT, cfg, store, progress=False)
    losses = result.training.epoch_losses
    assert losses[-1] < losses[0]
    after = tiny_loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the base is untouched

    manifest = store.manifest(result.doc_id, result.variant)
    ids = tiny_loaded.tokenizer(LONG_TEXT, return_tensors="pt")["input_ids"][:, :64]
    handle = load_adapter(tiny_loaded.model, parse_adapter_config(manifest.adapter_config),
                          store.adapter_dir(result.doc_id, result.variant))
    try:
        with torch.no_grad():
            handle.module(input_ids=ids)
        trained_gate = handle.mean_gate()
    finally:
        tiny_loaded.model = handle.detach()
    assert trained_gate > cfg.adapter.gate_init + 0.01


def test_already_absorbed_and_refused_text(tiny_loaded, tiny_config):
    cfg = _cfg(tiny_config, aux_qa={"generator": "none"}, train={"epochs": 1})
    store = AdapterStore(cfg.store.uri)
    first = absorb_document(tiny_loaded, LONG_TEXT, cfg, store, progress=False)
    again = absorb_document(tiny_loaded, LONG_TEXT + "\n\n", cfg, store, progress=False)
    assert (again.status, again.doc_id, again.variant) == ("already_absorbed", first.doc_id, first.variant)
    with pytest.raises(DocumentError, match="empty"):
        absorb_document(tiny_loaded, " \n ", cfg, store, progress=False)


def test_qa_pairs_are_kept_in_the_store_and_reused_by_another_machine(tiny_loaded, tiny_config, monkeypatch, tmp_path):
    import shutil

    from lift_ray import aux_qa
    from lift_ray.config import cache_dir

    cfg = _cfg(tiny_config, aux_qa={"generator": "rules", "stage1_epochs": 1, "stage2_epochs": 1})
    store = AdapterStore(cfg.store.uri)
    first = absorb_document(tiny_loaded, LONG_TEXT, cfg, store, progress=False)
    key = aux_qa.make_generator(cfg.aux_qa).cache_key()
    assert aux_qa.parse_report(store.aux_qa(first.doc_id, key)).pairs == first.qa_pairs

    # Another node: an empty local cache, and a generator that must not be asked again.
    shutil.rmtree(cache_dir() / "aux_qa", ignore_errors=True)
    monkeypatch.setattr(aux_qa.RuleQAGenerator, "generate", lambda *a, **k: pytest.fail("regenerated"))
    other = _cfg(tiny_config, aux_qa={"generator": "rules", "stage1_epochs": 1, "stage2_epochs": 1}, train={"seed": 7})
    second = absorb_document(tiny_loaded, LONG_TEXT, other, store, progress=False)
    assert second.variant != first.variant and second.qa_pairs == first.qa_pairs
    store.delete(first.doc_id)
    assert store.aux_qa(first.doc_id, key) is None, "deleting a document removes its QA pairs too"


def test_a_refused_claim_drops_the_trained_adapter_unpublished(tiny_loaded, tiny_config):
    """Bulk workers publish only while they hold the document's lease (lift_ray.bulk.DocumentQueue.claim)."""
    cfg = _cfg(tiny_config, aux_qa={"generator": "none"}, train={"epochs": 1})
    store = AdapterStore(cfg.store.uri)
    asked = []
    lost = absorb_document(tiny_loaded, LONG_TEXT, cfg, store, progress=False, claim=lambda d: asked.append(d) or False)
    assert lost.status == "lease_lost" and asked == [lost.doc_id]
    assert not store.has(lost.doc_id, lost.variant) and store.list_docs() == []
    kept = absorb_document(tiny_loaded, LONG_TEXT, cfg, store, progress=False, claim=lambda d: True, alias="a", title="t")
    assert kept.status == "absorbed" and store.manifest(kept.doc_id, kept.variant).alias == "a"


def test_short_question_views_choose_the_views_that_train_short_forms(tiny_loaded, tiny_config, monkeypatch):
    """aux_qa.short_question_views reaches the QA samples: the listed view asks short forms, the other the full question."""
    import lift_ray.absorb as absorb_module

    asked = {}
    real = absorb_module.qa_samples

    def recording(pairs, **kw):
        asked["none" if kw.get("lift_prompt") else "head_tail"] = kw["short"]
        return real(pairs, **kw)

    monkeypatch.setattr(absorb_module, "qa_samples", recording)
    cfg = _cfg(tiny_config, aux_qa={"generator": "rules", "stage1_epochs": 0, "stage2_epochs": 1, "views": ["head_tail", "none"],
                                    "short_question_views": ["head_tail"]}, train={"early_stop": False})
    absorb_document(tiny_loaded, LONG_TEXT, cfg, AdapterStore(cfg.store.uri), progress=False)
    assert asked == {"head_tail": True, "none": False}
