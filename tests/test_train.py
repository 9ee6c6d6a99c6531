import pytest
import torch

from conftest import LONG_TEXT
from lift_ray.adapters import attach_adapter
from lift_ray.config import TrainConfig
from lift_ray.segments import chat_format, pack_shared_prefix, segment_samples
from lift_ray.train import packed_loss, train_adapter


def _samples(loaded, cfg):
    tok = loaded.tokenizer
    ids = tok(LONG_TEXT, add_special_tokens=False)["input_ids"]
    samples, _ = segment_samples(
        ids, fmt=chat_format(tok), tokenizer=tok, context_window=cfg.segments.context_window,
        segment_length=cfg.segments.segment_length, stride_fraction=0.375, max_positions=loaded.max_positions,
        recite_prompt=cfg.segments.recite_prompt, mixin=cfg.segments.mixin,
    )
    return samples


def test_shared_prefix_packing_equals_separate_samples(tiny_loaded, tiny_config):
    """The tree mask makes a packed step compute exactly the per-sample losses."""
    samples = _samples(tiny_loaded, tiny_config)[:3]
    model = tiny_loaded.model
    with torch.no_grad():
        packed, n_packed = packed_loss(model, pack_shared_prefix(samples))
        separate = [packed_loss(model, pack_shared_prefix([s])) for s in samples]
    total = sum(loss.item() * n for loss, n in separate)
    assert n_packed == sum(n for _, n in separate)
    assert packed.item() == pytest.approx(total / n_packed, rel=1e-5)
    # and one sample alone equals the plain HF forward with labels
    s = samples[0]
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([s.input_ids]), labels=torch.tensor([s.labels])).loss
    assert separate[0][0].item() == pytest.approx(ref.item(), rel=1e-5)


def _train(loaded, cfg, samples, **train_overrides):
    torch.manual_seed(0)
    handle = attach_adapter(loaded.model, cfg.adapter)
    train_cfg = cfg.train.model_copy(update=train_overrides)
    metrics = train_adapter(handle, samples, train_cfg, progress=False)
    state = handle.state_dict()
    loaded.model = handle.detach()
    return metrics, state


def test_training_is_seeded_and_reproducible(tiny_loaded, tiny_config):
    samples = _samples(tiny_loaded, tiny_config)
    m1, s1 = _train(tiny_loaded, tiny_config, samples)
    m2, s2 = _train(tiny_loaded, tiny_config, samples)
    assert m1.epoch_losses == m2.epoch_losses
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    m3, s3 = _train(tiny_loaded, tiny_config, samples, seed=1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)


def test_loss_falls_and_metrics_add_up(tiny_loaded, tiny_config):
    samples = _samples(tiny_loaded, tiny_config)
    metrics, _ = _train(tiny_loaded, tiny_config, samples, epochs=4, samples_per_step=2)
    assert metrics.epoch_losses[-1] < metrics.epoch_losses[0]
    assert metrics.samples == len(samples)
    assert metrics.steps == 4 * ((len(samples) + 1) // 2)
    assert metrics.sample_tokens == 4 * sum(len(s.input_ids) for s in samples)
    assert metrics.computed_tokens < metrics.sample_tokens  # the shared context was computed once per step


def test_unresolved_config_is_refused(tiny_loaded, tiny_config):
    samples = _samples(tiny_loaded, tiny_config)
    handle = attach_adapter(tiny_loaded.model, tiny_config.adapter)
    try:
        with pytest.raises(ValueError, match="not resolved"):
            train_adapter(handle, samples, TrainConfig(), progress=False)
    finally:
        tiny_loaded.model = handle.detach()
