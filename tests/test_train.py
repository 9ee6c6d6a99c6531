import contextlib

import pytest
import torch

from conftest import LONG_TEXT
from lift_ray.adapters import attach_adapter
from lift_ray.config import LoraAdapterConfig, TrainConfig
from lift_ray.segments import (
    IGNORE_INDEX, Sample, build_prompt_ids, chat_format, pack_groups, pack_shared_prefix, packed_length, segment_samples,
)
from lift_ray.train import Stage, knowledge_check, packed_loss, target_logits, train_adapter, train_schedule


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
    metrics, _ = _train(tiny_loaded, tiny_config, samples, epochs=4, samples_per_step=2, step_tokens=0)
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
        with pytest.raises(ValueError, match="not resolved"):
            train_adapter(handle, samples, tiny_config.train.model_copy(update={"min_epochs": None}), progress=False)
    finally:
        tiny_loaded.model = handle.detach()


# --- the stop rule ------------------------------------------------------------------------------


def _qa(loaded, questions_answers, view="Port Quillon is a harbour town. The keeper keeps a tortoise."):
    """QA samples sharing one context view, as lift_ray.aux_qa.qa_samples builds them."""
    tok = loaded.tokenizer
    fmt = chat_format(tok)
    view_ids = tok(view, add_special_tokens=False)["input_ids"]
    out = []
    for q, a in questions_answers:
        asked = tok("\n\n" + q, add_special_tokens=False)["input_ids"]
        prompt = build_prompt_ids(fmt, [*view_ids, *asked])
        target = [*tok(a, add_special_tokens=False)["input_ids"], *fmt.reply_end]
        out.append(Sample(prompt + target, [IGNORE_INDEX] * len(prompt) + target, len(fmt.user_start) + len(view_ids), "qa"))
    return out


PAIRS = [("who keeps the tortoise?", "the keeper"), ("what is Port Quillon?", "a harbour town"),
         ("what is the tortoise named?", "Marlowe"), ("which number?", "0123")]


def _stop_cfg(tiny_config, **update):
    return tiny_config.train.model_copy(update={"early_stop": True, "stop_accuracy": 1.0, "min_epochs": 1,
                                                "samples_per_step": 4, "learning_rate": 1e-2, **update})


@pytest.fixture(scope="module")
def fitting_model():
    """A tiny Llama whose logits can sharpen: the default init (std 0.02) with tied embeddings keeps
    every logit near zero, so no adapter can make its answers certain; std 0.1 lets LoRA fit them."""
    from conftest import make_tiny_model, make_tokenizer

    return make_tiny_model("llama", len(make_tokenizer()), initializer_range=0.1)


def _run(model, cfg, stages, check):
    torch.manual_seed(0)
    handle = attach_adapter(model, LoraAdapterConfig(r=8, alpha=16, target_modules="all-linear"))
    try:
        return train_schedule(handle, stages, cfg, check_samples=check, progress=False)
    finally:
        handle.detach()


def test_stop_rule_ends_training_once_the_pairs_are_known(tiny_loaded, tiny_config, fitting_model):
    qa = _qa(tiny_loaded, PAIRS)
    cfg = _stop_cfg(tiny_config)
    metrics = _run(fitting_model, cfg, [Stage("QA", qa, 40)], qa)
    checks = [r.check for r in metrics.epoch_log]
    assert metrics.stop_reason == "known" and metrics.epochs < metrics.max_epochs == 40, checks
    assert checks[-1].answer_accuracy == 1.0 and all(c.answer_accuracy < 1.0 for c in checks[:-1])
    assert [c.epoch for c in checks] == list(range(1, metrics.epochs + 1))
    assert metrics.steps == metrics.epochs  # 4 pairs, 4 per step: one step per epoch, none after the stop
    # min_epochs holds training (and checking) back
    later = _run(fitting_model, cfg.model_copy(update={"min_epochs": metrics.epochs + 3}), [Stage("QA", qa, 40)], qa)
    assert later.epochs == metrics.epochs + 3 and later.stop_reason == "known"
    assert [r.check is None for r in later.epoch_log] == [True] * (metrics.epochs + 2) + [False]


def test_stop_rule_runs_to_the_maximum_when_the_pairs_cannot_be_known(tiny_loaded, tiny_config, fitting_model):
    # The same question with two answers: greedy decoding can reproduce at most one of them.
    # Between the two answers' steps the adapter flips from one to the other, so each may be "known" when
    # trained: the epoch's own forwards alone would pass the check; the confirming forward does not.
    qa = _qa(tiny_loaded, [("who keeps the tortoise?", "the keeper"), ("who keeps the tortoise?", "Marlowe")])
    for reuse in (True, False):
        metrics = _run(fitting_model, _stop_cfg(tiny_config, check_reuses_training=reuse), [Stage("QA", qa, 6)], qa)
        assert metrics.stop_reason == "max_epochs" and metrics.epochs == metrics.max_epochs == 6
        assert all(r.check.answer_accuracy <= 0.5 for r in metrics.epoch_log)
    # and with the rule off no check runs at all
    off = _run(fitting_model, _stop_cfg(tiny_config, early_stop=False), [Stage("QA", qa, 2)], qa)
    assert off.epochs == 2 and all(r.check is None for r in off.epoch_log)


def test_stop_rule_spans_stages_and_skips_what_is_left(tiny_loaded, tiny_config, fitting_model):
    qa = _qa(tiny_loaded, PAIRS)
    segments = _samples(tiny_loaded, tiny_config)[:2]
    metrics = _run(fitting_model, _stop_cfg(tiny_config, min_epochs=2), [Stage("segments", segments, 1), Stage("segments+QA", segments + qa, 40)], qa)
    assert [r.stage for r in metrics.epoch_log][:2] == ["segments", "segments+QA"]
    assert metrics.epoch_log[0].check is None and metrics.epoch_log[0].samples == 2
    assert metrics.stop_reason == "known" and metrics.epochs < metrics.max_epochs == 41


def test_the_check_forwards_only_the_pairs_the_epochs_training_did_not_know(tiny_loaded, tiny_config, fitting_model):
    """check_reuses_training: the training forwards score each pair; the check forwards the rest. With weights
    that do not move within the epoch (learning rate ~0 after the fit) it is exactly the full check."""
    qa = _qa(tiny_loaded, PAIRS)
    torch.manual_seed(0)
    handle = attach_adapter(fitting_model, LoraAdapterConfig(r=8, alpha=16, target_modules="all-linear"))
    try:
        train_schedule(handle, [Stage("QA", qa, 4)], _stop_cfg(tiny_config, early_stop=False), progress=False)
        full = knowledge_check(handle.module, qa)
        assert 0 < full.answer_accuracy < 1  # some pairs known, some not: both paths are taken
        still = _stop_cfg(tiny_config, learning_rate=1e-12, samples_per_step=1, stop_accuracy=1.0)
        with recorded_forwards(handle.module) as lengths:
            metrics = train_schedule(handle, [Stage("QA", qa, 1)], still, check_samples=qa, progress=False)
        check = metrics.epoch_log[0].check
        unknown = round(len(qa) * (1 - full.answer_accuracy))
        assert check.forwarded == unknown and check.pairs == len(qa)
        assert len(lengths) == metrics.steps + 1  # the training forwards, then one check row for the unknown pairs
        assert (check.answer_accuracy, check.token_accuracy, check.tokens) == (full.answer_accuracy, full.token_accuracy, full.tokens)
        assert check.loss == pytest.approx(full.loss, rel=1e-4)
        # off: every pair is forwarded again
        off = train_schedule(handle, [Stage("QA", qa, 1)], still.model_copy(update={"check_reuses_training": False}),
                             check_samples=qa, progress=False)
        assert off.epoch_log[0].check.forwarded == len(qa)
        assert off.epoch_log[0].check.answer_accuracy == full.answer_accuracy
    finally:
        handle.detach()
    # it never changes a stop, so not the adapter: the variant is the same either way
    from lift_ray.config import LiftConfig

    assert LiftConfig().training_hash() == LiftConfig.model_validate({"train": {"check_reuses_training": False}}).training_hash()


@contextlib.contextmanager
def recorded_forwards(module):
    """The sequence length of every forward of ``module``'s base model while the block runs."""
    lengths: list[int] = []
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    original = base.forward
    base.forward = lambda *a, **k: (lengths.append(k["input_ids"].shape[1]), original(*a, **k))[1]
    try:
        yield lengths
    finally:
        del base.forward


@pytest.fixture
def partly_trained(tiny_loaded, tiny_config, fitting_model):
    """(module, QA samples): a LoRA trained 3 epochs on PAIRS, so some pairs are known and some are not."""
    qa = _qa(tiny_loaded, PAIRS)
    torch.manual_seed(0)
    handle = attach_adapter(fitting_model, LoraAdapterConfig(r=8, alpha=16, target_modules="all-linear"))
    try:
        train_schedule(handle, [Stage("QA", qa, 3)], _stop_cfg(tiny_config, early_stop=False), progress=False)
        yield handle.module, qa
    finally:
        handle.detach()


def test_stale_training_scores_never_pass_the_check_unconfirmed(partly_trained):
    """Scores from the epoch's forwards that call every pair known (a later step may have unlearnt them): the
    share is only an upper bound, and once it reaches the threshold every pair is forwarded and it is exact."""
    from lift_ray.train import AnswerScore

    module, qa = partly_trained
    full = knowledge_check(module, qa)
    assert full.answer_accuracy < 1
    stale = {id(s): AnswerScore(True, s.num_target_tokens, s.num_target_tokens, 0.0) for s in qa}
    unconfirmed = knowledge_check(module, qa, known_in_epoch=stale)
    assert (unconfirmed.answer_accuracy, unconfirmed.forwarded) == (1.0, 0)
    with recorded_forwards(module) as lengths:
        confirmed = knowledge_check(module, qa, known_in_epoch=stale, confirm_at=0.95)
    assert (confirmed.answer_accuracy, confirmed.token_accuracy, confirmed.forwarded) == (
        full.answer_accuracy, full.token_accuracy, len(qa)) and lengths
    # below the threshold nothing more is forwarded
    half = dict(list(stale.items())[:2])
    below = knowledge_check(module, qa, known_in_epoch=half, confirm_at=1.0)
    assert below.forwarded == len(qa) - 2 and below.answer_accuracy < 1.0


def test_knowledge_check_rows_bound_the_forward_and_give_the_same_answer(partly_trained):
    """Rows of a few dozen tokens: several forwards, none longer than the row budget (plus one group that
    cannot be split), and the same hits, loss and known count as one row holding everything."""
    module, qa = partly_trained
    whole = knowledge_check(module, qa, row_tokens=10**6)
    with recorded_forwards(module) as lengths:
        rows = knowledge_check(module, qa, row_tokens=40)
    longest_sample = max(len(s.input_ids) for s in qa)
    assert len(lengths) > 1 and max(lengths) <= max(40, longest_sample), lengths
    assert (rows.answer_accuracy, rows.token_accuracy, rows.pairs, rows.tokens) == (
        whole.answer_accuracy, whole.token_accuracy, whole.pairs, whole.tokens)
    assert rows.loss == pytest.approx(whole.loss, rel=1e-4)


def test_knowledge_check_is_one_forward_and_agrees_with_greedy_decoding(partly_trained):
    """The check never generates: packed forwards over every pair (one row here); what it calls known
    is what greedy decoding answers exactly."""
    module, qa = partly_trained
    module.generate = lambda *a, **k: pytest.fail("the knowledge check generated")
    try:
        with recorded_forwards(module) as lengths:
            check = knowledge_check(module, qa)
    finally:
        del module.generate
    assert len(lengths) == 1
    assert check.pairs == 4 and check.tokens == sum(s.num_target_tokens for s in qa)

    known = 0
    for s in qa:
        prompt = torch.tensor([s.input_ids[: len(s.input_ids) - s.num_target_tokens]])
        with torch.no_grad():
            out = module.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                  max_new_tokens=s.num_target_tokens, min_new_tokens=s.num_target_tokens,
                                  pad_token_id=0, eos_token_id=None)
        known += out[0, prompt.shape[1]:].tolist() == s.input_ids[-s.num_target_tokens:]
    assert 0 < known < len(qa), "pick a training length that leaves the pairs partly known"
    assert check.answer_accuracy == known / len(qa)


def test_pack_groups_gives_each_group_its_own_logits(tiny_loaded, tiny_config):
    """Two prefixes in one sequence (the check of pairs with different views): same logits as apart."""
    a = _qa(tiny_loaded, PAIRS[:2])
    b = _qa(tiny_loaded, PAIRS[2:], view="Another view of the document, 0123456789.")
    model = tiny_loaded.model
    with torch.no_grad():
        together = target_logits(model, pack_groups([a, b]))
        apart = torch.cat([target_logits(model, pack_shared_prefix(a)), target_logits(model, pack_shared_prefix(b))])
    assert torch.allclose(together, apart, atol=1e-5)


def test_tree_packing_computes_shared_prompt_tokens_once_with_the_logits_of_each_sample_alone(tiny_loaded):
    """A step's prompts merge wherever they start alike, past the shared view ("\n\nwhat is ..."), and
    the same question asked twice (two answers, or a distractor) shares its whole prompt; every target
    still gets its logits from its own sample's tokens only."""
    qa = _qa(tiny_loaded, [*PAIRS, ("what is the tortoise named?", "Marlowe the Third")])
    wrong = tiny_loaded.tokenizer(" Lock", add_special_tokens=False)["input_ids"][:1]
    prompt = qa[0].input_ids[: len(qa[0].input_ids) - qa[0].num_target_tokens]
    qa.append(Sample(prompt + wrong, [IGNORE_INDEX] * len(prompt) + wrong, qa[0].prefix_len, "qa", negative=True))
    model = tiny_loaded.model
    tree, by_prefix = pack_shared_prefix(qa), pack_shared_prefix(qa, shared="prefix")
    p = qa[0].prefix_len
    assert by_prefix.input_ids.shape[1] == p + sum(len(s.input_ids) - p for s in qa)  # the view once, nothing more
    saved = by_prefix.input_ids.shape[1] - tree.input_ids.shape[1]
    whole_prompt = len(prompt) - p  # the distractor's and the repeated question's prompts are merged whole
    assert saved >= 2 * whole_prompt + 2  # ... and the questions beginning "\n\nwhat" share those tokens too
    assert packed_length(qa) == tree.input_ids.shape[1]
    with torch.no_grad():
        alone = torch.cat([target_logits(model, pack_shared_prefix([s])) for s in qa])
        assert torch.allclose(target_logits(model, tree), alone, atol=1e-5)
        assert torch.allclose(target_logits(model, by_prefix), alone, atol=1e-5)
        assert packed_loss(model, tree)[0].item() == pytest.approx(packed_loss(model, by_prefix)[0].item(), rel=1e-5)
    # positions are depths: the repeated question's answer starts at its own prompt length
    mask = tree.attention_mask[0, 0]
    assert bool(mask.tril().eq(mask).all())  # parents come first
    assert torch.equal(mask.sum(-1) - 1, tree.position_ids[0])  # each token sees exactly its ancestors and itself
    with pytest.raises(ValueError, match="identical prefixes"):
        pack_groups([[qa[0], _qa(tiny_loaded, PAIRS[:1], view="Another view.")[0]]], shared="prefix")


def test_bf16_autocast_trains_fp32_adapter_weights(tiny_loaded, tiny_config, fitting_model):
    """train.autocast runs forward and backward in bf16 (AVX512-BF16 CPUs, GPUs); the adapter stays fp32."""
    qa = _qa(tiny_loaded, PAIRS)
    torch.manual_seed(0)
    handle = attach_adapter(fitting_model, LoraAdapterConfig(r=8, alpha=16, target_modules="all-linear"))
    seen = []
    hook = fitting_model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        metrics = train_schedule(handle, [Stage("QA", qa, 4)], _stop_cfg(tiny_config, early_stop=False, autocast="bfloat16"), progress=False)
        assert metrics.epoch_losses[-1] < metrics.epoch_losses[0]
        assert all(p.dtype == torch.float32 for p in handle.trainable_parameters())
        assert seen and set(seen) == {torch.bfloat16}
    finally:
        hook.remove()
        handle.detach()


def test_cosine_schedule_decays_to_a_tenth():
    from lift_ray.train import _lr_schedule

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = _lr_schedule(opt, "cosine", 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 1.0 and lrs == sorted(lrs, reverse=True) and opt.param_groups[0]["lr"] == pytest.approx(0.1)
    const = _lr_schedule(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0), "constant", 10)
    assert const.get_last_lr() == [1.0]


# --- distractors (unlikelihood) -------------------------------------------------------------------


def test_a_distractor_adds_the_unlikelihood_of_its_target_and_the_check_ignores_it(tiny_loaded):
    """A negative sample's target adds mean -log(1 - p) to the cross-entropy of the others, in the same
    packed forward; the knowledge check counts only the pairs with answers."""
    qa = _qa(tiny_loaded, PAIRS[:2])
    wrong = tiny_loaded.tokenizer("Marlowe", add_special_tokens=False)["input_ids"][:1]
    prompt = qa[0].input_ids[: len(qa[0].input_ids) - qa[0].num_target_tokens]
    negative = Sample(prompt + wrong, [IGNORE_INDEX] * len(prompt) + wrong, qa[0].prefix_len, "qa", negative=True)
    model = tiny_loaded.model
    with torch.no_grad():
        loss, n = packed_loss(model, pack_shared_prefix([*qa, negative]))
        ce, n_ce = packed_loss(model, pack_shared_prefix(qa))
        alone = pack_shared_prefix([negative])
        p_wrong = torch.softmax(target_logits(model, alone), -1)[0, wrong[0]]
    assert n == n_ce == sum(s.num_target_tokens for s in qa)
    assert loss.item() == pytest.approx(ce.item() - torch.log1p(-p_wrong).item(), rel=1e-5)
    check = knowledge_check(model, [*qa, negative])
    assert check.pairs == len(qa)


def test_training_with_a_distractor_lowers_its_probability(tiny_loaded, tiny_config, fitting_model):
    """The same pairs trained with and without a distractor: with it, the question's probability of the
    distractor's first token ends lower, and the pair's own answer is still learnt."""
    qa = _qa(tiny_loaded, PAIRS)
    wrong = tiny_loaded.tokenizer("Marlowe", add_special_tokens=False)["input_ids"][:1]
    prompt = qa[0].input_ids[: len(qa[0].input_ids) - qa[0].num_target_tokens]
    negative = Sample(prompt + wrong, [IGNORE_INDEX] * len(prompt) + wrong, qa[0].prefix_len, "qa", negative=True)
    cfg = tiny_config.train.model_copy(update={"samples_per_step": 8, "learning_rate": 1e-2, "early_stop": False})

    def p_wrong_after(samples):
        torch.manual_seed(0)
        handle = attach_adapter(fitting_model, LoraAdapterConfig(r=8, alpha=16, target_modules="all-linear"))
        try:
            train_schedule(handle, [Stage("QA", samples, 15)], cfg, progress=False)
            with torch.no_grad():
                p = torch.softmax(target_logits(fitting_model, pack_shared_prefix([negative])), -1)[0, wrong[0]].item()
                known = knowledge_check(fitting_model, qa).answer_accuracy
        finally:
            handle.detach()
        return p, known

    p_plain, known_plain = p_wrong_after(qa)
    p_contrast, known_contrast = p_wrong_after([*qa, negative])
    assert p_contrast < 0.6 * p_plain, (p_contrast, p_plain)
    assert known_contrast == known_plain == 1.0
