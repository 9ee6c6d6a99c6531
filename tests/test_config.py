from pathlib import Path

import pytest

from lift_ray.config import PROFILES, ConfigError, LiftConfig, build_config, resolve_config

REPO = Path(__file__).resolve().parents[1]


def test_yaml_round_trip(tmp_path):
    cfg = build_config(None, {"train": {"epochs": 3}, "segments": {"context_window": 256}})
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert LiftConfig.from_yaml(path) == cfg


def test_cli_overrides_beat_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n  learning_rate: 0.01\n")
    cfg = build_config(str(path), {"train": {"epochs": 5}})
    assert cfg.train.epochs == 5 and cfg.train.learning_rate == 0.01


@pytest.mark.parametrize(
    "yaml_text,match",
    [
        ("train: [1, 2\n", "malformed YAML"),
        ("- a\n- b\n", "mapping at the top level"),
        ("train:\n  epochs: 0\n", "train.epochs: Input should be greater than or equal to 1"),
        ("train:\n  epoch: 3\n", "train.epoch: Extra inputs are not permitted"),
        ("inference:\n  mode: fast\n", "inference.mode"),
        ("segments:\n  stride_fraction: 1.5\n", "segments.stride_fraction"),
        ("inference:\n  answer_prompt: no slot\n", "must contain the placeholder"),
    ],
)
def test_bad_config_names_the_problem(tmp_path, yaml_text, match):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=match):
        build_config(str(path))


def test_profiles_fill_only_what_is_unset():
    small = resolve_config(build_config(None, {"train": {"epochs": 2}}), num_params=135_000_000, max_positions=8192, on_cuda=False)
    assert small.profile == "small"
    assert small.train.epochs == 2  # the user's value wins
    assert small.train.learning_rate == PROFILES["small"]["train"]["learning_rate"]["lora"]
    # the development set's choice: QA from the first epoch in two views, the stop rule, token-budget steps
    assert small.aux_qa.generator == "rules" and small.aux_qa.stage1_epochs == 0 and small.aux_qa.stage2_epochs == 8
    assert small.aux_qa.views == ["head_tail", "none"]
    assert small.train.early_stop is True and small.train.stop_accuracy == 0.95 and small.train.min_epochs == 3
    # a step holds as many reply tokens as samples_per_step segments (+ end-of-turn slack)
    assert small.train.step_tokens == small.train.samples_per_step * (small.segments.segment_length + 8)
    large_budget = resolve_config(LiftConfig(), num_params=8_000_000_000, max_positions=8192, on_cuda=True)
    assert large_budget.train.step_tokens == large_budget.train.samples_per_step * (large_budget.segments.segment_length + 8)
    assert resolve_config(build_config(None, {"train": {"step_tokens": 0}}), num_params=135_000_000, max_positions=8192,
                          on_cuda=False).train.step_tokens == 0  # 0 = count samples, kept
    assert small.adapter.target_modules == "all-linear" and small.adapter.alpha == 2 * small.adapter.r
    large = resolve_config(LiftConfig(), num_params=8_000_000_000, max_positions=8192, on_cuda=True)
    assert large.profile == "large"
    assert large.train.learning_rate == 2e-4 and large.train.betas == (0.9, 0.98) and large.train.max_grad_norm == 1.0
    assert large.model.load_in_4bit is True and large.model.dtype == "bfloat16"
    assert large.aux_qa.generator == "llm" and large.aux_qa.views == ["head_tail"]
    small_gm = resolve_config(build_config(None, {"adapter": {"kind": "gated_memory"}}), num_params=135_000_000,
                              max_positions=8192, on_cuda=False)
    assert (small_gm.aux_qa.stage1_epochs, small_gm.aux_qa.stage2_epochs, small_gm.train.early_stop) == (0, 8, True)
    gm = resolve_config(build_config(None, {"adapter": {"kind": "gated_memory"}}), num_params=8e9, max_positions=8192, on_cuda=True)
    assert gm.train.learning_rate == 1e-3 and gm.adapter.kind == "gated_memory"
    assert large.segments.segment_length == 2048
    assert resolve_config(LiftConfig(), num_params=8e9, max_positions=8192, on_cuda=False).model.load_in_4bit is False


def test_default_window_is_what_the_model_allows():
    cfg = resolve_config(LiftConfig(), num_params=10**8, max_positions=8192, on_cuda=False)
    inf = cfg.inference
    assert cfg.segments.context_window == 8192 - inf.question_reserve - inf.max_new_tokens
    assert cfg.segments.segment_length == 2048


def test_window_beyond_positions_is_refused():
    cfg = build_config(None, {"segments": {"context_window": 8000}})
    with pytest.raises(ConfigError, match="context_window=8000"):
        resolve_config(cfg, num_params=10**8, max_positions=8192, on_cuda=False)


def test_training_hash_ignores_inference_settings():
    a = build_config(None, {"inference": {"max_new_tokens": 5}})
    b = build_config(None, {"inference": {"max_new_tokens": 50}, "store": {"uri": "/x"}})
    c = build_config(None, {"train": {"epochs": 9}})
    assert a.training_hash() == b.training_hash() != c.training_hash()


def test_retrieval_settings_change_the_training_hash_only_when_pairs_train_in_the_retrieved_view():
    def h(views, chunk):
        return build_config(None, {"aux_qa": {"views": views}, "retrieval": {"chunk_tokens": chunk}}).training_hash()

    assert h(["head_tail", "none"], 32) == h(["head_tail", "none"], 48)  # stored adapters keep their variant
    assert h(["head_tail", "retrieved"], 32) != h(["head_tail", "retrieved"], 48)


def test_lora_layer_share_every_layer_keeps_the_hash_of_adapters_absorbed_before_it():
    full_questions = {"short_question_views": []}  # as every adapter before version 25 trained
    unset = build_config(None, {"aux_qa": full_questions})
    every = build_config(None, {"aux_qa": full_questions, "adapter": {"layer_share": 1.0}})
    top = build_config(None, {"aux_qa": full_questions, "adapter": {"layer_share": 0.5}})
    assert unset.training_hash() == every.training_hash() != top.training_hash()
    assert unset.training_hash() == "c4bfe2b018b906e4"  # LiftConfig() before the field (tests/test_absorb.py)
    for profile in ("small", "large"):
        resolved = resolve_config(build_config(None, {"profile": profile}), num_params=10**8, max_positions=8192, on_cuda=False)
        assert 0 < resolved.adapter.layer_share <= 1
    with pytest.raises(ConfigError, match="layer_share"):
        build_config(None, {"adapter": {"layer_share": 0}})


def test_every_shipped_yaml_validates():
    files = sorted(REPO.glob("**/configs/*.yaml")) + sorted((REPO / "lift_ray" / "data").glob("*.yaml"))
    assert files, "no shipped configs found"
    for path in files:
        LiftConfig.from_yaml(path)


def test_short_question_views_default_to_every_view_and_count_in_the_hash_unless_empty():
    """Short forms train in every view by default; empty (full questions everywhere) hashes as adapters absorbed
    before the field did, and each choice of views is its own variant."""
    unset = build_config(None, {})
    assert unset.aux_qa.short_question_views == ["head_tail", "retrieved", "none"]
    empty = build_config(None, {"aux_qa": {"short_question_views": []}})
    doc_view = build_config(None, {"aux_qa": {"short_question_views": ["head_tail"]}})
    assert empty.training_hash() == "c4bfe2b018b906e4"
    assert len({unset.training_hash(), empty.training_hash(), doc_view.training_hash()}) == 3
    with pytest.raises(ConfigError):
        build_config(None, {"aux_qa": {"short_question_views": ["sideways"]}})
