"""The one training loop: fit an attached adapter to SFT samples with the base model frozen.

Every shell (CLI, Ray workers, benchmarks) trains through :func:`train_schedule` (or its one-stage
form :func:`train_adapter`). Samples that share a prefix (the truncated document context) are
packed into one sequence per optimiser step as a token tree with a tree attention mask, so the shared
context, and the prompt wording the samples begin alike, is computed once per step instead of once
per sample (:func:`lift_ray.segments.pack_groups`).
Logits are computed only where a target token is predicted, which skips most of the LM head on
long prompts.

Training stops when the document is known (:func:`knowledge_check`): after each epoch from
``min_epochs`` on, teacher-forced forwards over all the document's auxiliary QA pairs (packed into
rows of ~1k tokens, no generation) measure how many answers greedy decoding would reproduce; once
that share reaches ``stop_accuracy`` the remaining epochs are skipped. Without QA pairs there is nothing to check and every epoch runs.
The pairs are trained in the same epoch, so their own training forwards already score them: only the
pairs those found unknown are forwarded again after the epoch (``check_reuses_training``), and all of
them only when that count reaches the threshold, so every stop decision is the full check's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lift_ray.adapters.base import AdapterHandle
from lift_ray.config import TrainConfig
from lift_ray.segments import PackedBatch, Sample, group_for_packing, pack_groups, pack_shared_prefix, packed_length
from lift_ray.store import EpochRecord, KnowledgeCheck, TrainMetrics


@dataclasses.dataclass
class Stage:
    """Part of a schedule: ``samples`` for at most ``epochs`` epochs."""

    name: str
    samples: list[Sample]
    epochs: int


def _set_checkpointing(module: torch.nn.Module, on: bool) -> None:
    """Activation checkpointing on or off; transformers 5 renamed it (the gradient_* names warn)."""
    if hasattr(module, "activation_checkpointing_enable"):
        if on:
            module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            module.activation_checkpointing_disable()
    elif on:
        _set_checkpointing(module, True)
    else:
        module.gradient_checkpointing_disable()


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.autocast in (None, "none"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, cfg.autocast))


def packed_loss(module: torch.nn.Module, batch: PackedBatch) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the target tokens of a packed batch, and their count.

    A distractor's targets (``batch.negative``) add the unlikelihood loss instead, mean −log(1 − p):
    their probability is pushed down (Welleck et al., 2020), e.g. another pair's answer to a question.
    """
    return target_loss(target_logits(module, batch), batch)


def target_loss(logits: torch.Tensor, batch: PackedBatch) -> tuple[torch.Tensor, int]:
    """:func:`packed_loss` from the batch's target logits."""
    if batch.negative is None:
        return F.cross_entropy(logits, batch.targets), int(batch.targets.numel())
    pos, neg = ~batch.negative, batch.negative
    loss = F.cross_entropy(logits[pos], batch.targets[pos]) if bool(pos.any()) else logits.sum() * 0.0
    p_wrong = F.log_softmax(logits[neg], -1).gather(1, batch.targets[neg, None]).squeeze(1).exp()
    loss = loss - torch.log1p(-p_wrong.clamp(max=1 - 1e-6)).mean()
    return loss, int(pos.sum())


def target_logits(module: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """(n_targets, vocab) float logits at the positions that predict a target, from one forward."""
    # Logits only where a target is predicted (a shared prefix position may serve several branches).
    out = module(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=batch.logit_positions,
        use_cache=False,
    )
    return out.logits[0].float()


# Tokens per forward of the knowledge check. The packed mask is dense (T x T), so one row holding all
# of a document's pairs (~5k tokens) spends most of its time in attention: rows of 1024 tokens, whose
# groups repeat their context every 512 answer-side tokens, checked the recall-test document's 128
# samples 1.9x faster than one 5062-token row with identical hits (README, "When to stop").
CHECK_ROW_TOKENS = 1024


def _check_rows(samples: Sequence[Sample], row_tokens: int) -> list[list[list[Sample]]]:
    """The samples as shared-prefix groups, packed greedily into rows of at most ``row_tokens`` tokens
    (a single group longer than that gets a row of its own)."""
    groups = group_for_packing(list(samples), len(samples), max(row_tokens // 2, 1))
    rows: list[list[list[Sample]]] = []
    used = 0
    for group in groups:
        size = packed_length(group)
        if not rows or used + size > row_tokens:
            rows.append([])
            used = 0
        rows[-1].append(group)
        used += size
    return rows


@dataclasses.dataclass
class AnswerScore:
    """One sample's answer, teacher-forced: whether every answer token was the greedy next token,
    how many were, out of how many, and their summed cross-entropy."""

    known: bool
    hits: int
    tokens: int
    loss_sum: float


def answer_scores(samples: Sequence[Sample], logits: torch.Tensor, targets: torch.Tensor) -> list[AnswerScore]:
    """Each sample's :class:`AnswerScore` from the target logits of a packed forward (targets come out
    sample by sample, in the order the samples were packed)."""
    with torch.no_grad():
        hits = logits.argmax(-1) == targets
        losses = F.cross_entropy(logits.detach(), targets, reduction="none")
    counts = [s.num_target_tokens for s in samples]
    return [AnswerScore(bool(h.all()), int(h.sum()), h.numel(), float(c.sum()))
            for h, c in zip(torch.split(hits, counts), torch.split(losses, counts))]


def knowledge_check(
    module: torch.nn.Module,
    samples: Sequence[Sample],
    *,
    epoch: int = 0,
    autocast: contextlib.AbstractContextManager | None = None,
    row_tokens: int = CHECK_ROW_TOKENS,
    known_in_epoch: dict[int, AnswerScore] | None = None,
    confirm_at: float | None = None,
) -> KnowledgeCheck:
    """Teacher-forced check of the samples' answers: packed forwards of about ``row_tokens`` tokens, no generation.

    A pair counts as known when the greedy next token is right at every answer position; with the
    answer teacher-forced that is exactly what greedy decoding would produce, end of turn included.

    Args:
        known_in_epoch: scores the epoch's own training forwards gave (by ``id`` of the sample): a
            sample they found known counts as known and is not forwarded again
            (``TrainConfig.check_reuses_training``). A later step of the epoch may have unlearnt it,
            so the share known is then an upper bound...
        confirm_at: ...unless it reaches this share: then those samples are forwarded too and the
            check is exact. A stop decision at this threshold is therefore the full check's.
    """
    samples = [s for s in samples if not s.negative]  # a distractor has no answer to know
    if not samples:
        raise ValueError("no samples to check")
    start = time.perf_counter()
    device = next(module.parameters()).device
    known = {key: score for key, score in (known_in_epoch or {}).items() if score.known}
    reused = [s for s in samples if id(s) in known]
    rest = [s for s in samples if id(s) not in known]
    was_training = module.training
    module.eval()

    def forward(part: list[Sample]) -> list[AnswerScore]:
        out: list[AnswerScore] = []
        for row in _check_rows(part, row_tokens) if part else []:
            batch = pack_groups(row).to(device)
            out += answer_scores([s for g in row for s in g], target_logits(module, batch), batch.targets)
        return out

    try:
        with torch.inference_mode(), autocast or contextlib.nullcontext():
            scores = forward(rest)
            forwarded = len(rest)
            upper = (len(reused) + sum(x.known for x in scores)) / len(samples)
            if reused and confirm_at is not None and upper >= confirm_at:
                scores += forward(reused)
                forwarded += len(reused)
            else:
                scores += [known[id(s)] for s in reused]
    finally:
        module.train(was_training)
    tokens = sum(x.tokens for x in scores)
    return KnowledgeCheck(
        epoch=epoch,
        answer_accuracy=round(sum(x.known for x in scores) / len(scores), 4),
        token_accuracy=round(sum(x.hits for x in scores) / tokens, 4),
        loss=round(sum(x.loss_sum for x in scores) / tokens, 5),
        pairs=len(scores),
        tokens=tokens,
        seconds=round(time.perf_counter() - start, 3),
        forwarded=forwarded,
    )


def train_adapter(
    handle: AdapterHandle,
    samples: list[Sample],
    cfg: TrainConfig,
    *,
    check_samples: Sequence[Sample] | None = None,
    progress: bool = True,
    desc: str = "absorb",
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainMetrics:
    """Train on one set of samples for at most ``cfg.epochs`` epochs (see :func:`train_schedule`)."""
    if cfg.epochs is None:
        raise ValueError("TrainConfig is not resolved (epochs, learning_rate, samples_per_step)")
    return train_schedule(
        handle, [Stage("samples", samples, cfg.epochs)], cfg,
        check_samples=check_samples, progress=progress, desc=desc, on_epoch=on_epoch,
    )


def train_schedule(
    handle: AdapterHandle,
    stages: Sequence[Stage],
    cfg: TrainConfig,
    *,
    check_samples: Sequence[Sample] | None = None,
    progress: bool = True,
    desc: str = "absorb",
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainMetrics:
    """Train ``handle``'s parameters through the stages in order; seeded and reproducible.

    One optimiser runs through the whole schedule. After every epoch from ``cfg.min_epochs`` on,
    when ``cfg.early_stop`` is set and ``check_samples`` are given, :func:`knowledge_check` runs and
    training ends as soon as its answer accuracy reaches ``cfg.stop_accuracy``.

    Args:
        handle: an attached adapter; only its ``trainable_parameters()`` change.
        stages: (name, samples, at most this many epochs), trained in order.
        cfg: a resolved TrainConfig.
        check_samples: the samples whose answers say the document is known (its QA pairs).
        progress: show a tqdm bar with the loss and the last check on stderr.
        desc: label of the progress bar.
        on_epoch: called with each epoch's record; its own time is not counted (benchmarks use it).

    Returns:
        TrainMetrics of the run, with one EpochRecord per epoch trained.
    """
    stages = [s for s in stages if s.epochs > 0]
    if not stages or any(not s.samples for s in stages):
        raise ValueError("no training samples")
    if cfg.learning_rate is None or cfg.samples_per_step is None or cfg.min_epochs is None or cfg.early_stop is None:
        raise ValueError("TrainConfig is not resolved (epochs, learning_rate, samples_per_step, min_epochs, early_stop)")
    if cfg.early_stop and cfg.stop_accuracy is None:
        raise ValueError("TrainConfig is not resolved (stop_accuracy)")
    module = handle.module
    device = next(module.parameters()).device
    params = handle.trainable_parameters()
    if not params:
        raise ValueError("the adapter has no trainable parameters")
    torch.manual_seed(cfg.seed)
    order_rng = random.Random(cfg.seed)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=cfg.betas, weight_decay=cfg.weight_decay)
    checking = bool(cfg.early_stop and check_samples)
    check_ids = {id(s) for s in check_samples or ()}
    autocast = lambda: _autocast(cfg, device)  # noqa: E731 (a fresh context manager per use)

    plans: list[tuple[str, int, list[list[Sample]]]] = []  # (stage, samples, steps) per epoch, all epochs planned
    for stage in stages:
        for _ in range(stage.epochs):
            order = list(stage.samples)
            if cfg.shuffle:
                order_rng.shuffle(order)
            plans.append((stage.name, len(stage.samples), group_for_packing(order, cfg.samples_per_step, cfg.step_tokens or None)))
    max_steps = sum(len(p) for _, _, p in plans)
    scheduler = _lr_schedule(optimizer, cfg.lr_schedule, max_steps)

    if cfg.gradient_checkpointing:
        _set_checkpointing(module, True)
    module.train()
    bar = tqdm(total=max_steps, desc=desc, file=sys.stderr, disable=not progress, dynamic_ncols=True, leave=False)
    sample_tokens = computed_tokens = target_tokens = steps = 0
    log: list[EpochRecord] = []
    stop_reason = "max_epochs"
    paused = 0.0  # time spent in on_epoch, not training
    start = time.perf_counter()
    try:
        for epoch, (stage_name, n_samples, plan) in enumerate(plans, 1):
            epoch_start = time.perf_counter()
            loss_sum, loss_count = 0.0, 0
            postfix = {"epoch": epoch, "stage": stage_name}
            # the epoch's training forwards score the pairs the check would (before each step's update)
            scoring = checking and cfg.check_reuses_training and epoch >= cfg.min_epochs
            known_in_epoch: dict[int, AnswerScore] = {}
            for group in plan:
                batch = pack_shared_prefix(group).to(device)
                with autocast():
                    logits = target_logits(module, batch)
                    loss, n_targets = target_loss(logits, batch)
                if scoring and any(id(sample) in check_ids for sample in group):  # a step of segments only has none
                    for sample, score in zip(group, answer_scores(group, logits, batch.targets)):
                        if id(sample) in check_ids:
                            known_in_epoch[id(sample)] = score
                del logits
                loss.backward()
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                value = loss.item()
                loss_sum += value * n_targets
                loss_count += n_targets
                sample_tokens += batch.num_tokens_unpacked
                computed_tokens += batch.input_ids.shape[1]
                target_tokens += n_targets
                steps += 1
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}", **postfix)
            check = None
            if checking and epoch >= cfg.min_epochs:
                check = knowledge_check(module, check_samples, epoch=epoch, autocast=autocast(),
                                        known_in_epoch=known_in_epoch if scoring else None, confirm_at=cfg.stop_accuracy)
                bar.set_postfix(loss=f"{loss_sum / max(loss_count, 1):.3f}", known=check.known_text, **postfix)
            record = EpochRecord(
                epoch=epoch,
                stage=stage_name,
                samples=n_samples,
                steps=len(plan),
                loss=round(loss_sum / max(loss_count, 1), 5),
                seconds=round(time.perf_counter() - epoch_start, 3),
                check=check,
            )
            log.append(record)
            if on_epoch is not None:
                hook_start = time.perf_counter()
                module.eval()
                on_epoch(record)
                module.train()
                paused += time.perf_counter() - hook_start
            if check is not None and check.answer_accuracy >= cfg.stop_accuracy:
                stop_reason = "known"
                break
    finally:
        bar.close()
        module.eval()
        if cfg.gradient_checkpointing:
            _set_checkpointing(module, False)
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start - paused
    return TrainMetrics(
        steps=steps,
        epochs=len(log),
        samples=max(n for _, n, _ in plans),
        target_tokens=target_tokens,
        sample_tokens=sample_tokens,
        computed_tokens=computed_tokens,
        seconds=round(seconds, 3),
        tokens_per_second=round(sample_tokens / seconds, 1) if seconds > 0 else 0.0,
        epoch_losses=[r.loss for r in log],
        max_epochs=len(plans),
        stop_reason=stop_reason,
        epoch_log=log,
    )


def _lr_schedule(optimizer: torch.optim.Optimizer, kind: str, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Constant, or cosine decay to 10% over the schedule's maximum steps (an early stop cuts it short)."""
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if kind == "cosine":
        floor = 0.1
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
        )
    raise ValueError(f"unknown lr_schedule {kind!r}")
