"""The one training loop: fit an attached adapter to SFT samples with the base model frozen.

Every shell (CLI, Ray workers, benchmarks) trains through :func:`train_adapter`. Samples that
share a prefix (the truncated document context) are packed into one sequence per optimiser step
with a tree attention mask, so the shared context is computed once per step instead of once per
sample (:func:`lift_ray.segments.pack_shared_prefix`). Logits are computed only where a target
token is predicted, which skips most of the LM head on long prompts.
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from lift_ray.adapters.base import AdapterHandle
from lift_ray.config import TrainConfig
from lift_ray.segments import PackedBatch, Sample, group_for_packing, pack_shared_prefix
from lift_ray.store import TrainMetrics


def _set_checkpointing(module: torch.nn.Module, on: bool) -> None:
    """Activation checkpointing on or off; transformers 5 renamed it (the gradient_* names warn)."""
    if hasattr(module, "activation_checkpointing_enable"):
        if on:
            module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            module.activation_checkpointing_disable()
    elif on:
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        module.gradient_checkpointing_disable()


@dataclasses.dataclass(frozen=True)
class StepProgress:
    """One optimiser step done: what a progress callback of :func:`train_adapter` receives."""

    step: int  # 1-based, of total_steps
    total_steps: int
    epoch: int  # 1-based, of epochs
    epochs: int
    loss: float  # mean target loss of this step


def packed_loss(module: torch.nn.Module, batch: PackedBatch) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the target tokens of a packed batch, and their count."""
    # Logits only where a target is predicted (a shared prefix position may serve several branches).
    out = module(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=batch.logit_positions,
        use_cache=False,
    )
    logits = out.logits[0].float()  # (n_targets, vocab)
    return F.cross_entropy(logits, batch.targets), int(batch.targets.numel())


def train_adapter(
    handle: AdapterHandle,
    samples: list[Sample],
    cfg: TrainConfig,
    *,
    progress: bool = True,
    desc: str = "absorb",
    on_step: Callable[[StepProgress], None] | None = None,
) -> TrainMetrics:
    """Train ``handle``'s parameters on ``samples`` for ``cfg.epochs`` epochs; seeded and reproducible.

    Args:
        handle: an attached adapter; only its ``trainable_parameters()`` change.
        samples: SFT samples with target-only labels.
        cfg: a resolved TrainConfig (epochs, learning_rate and samples_per_step set).
        progress: show a tqdm bar with the loss on stderr.
        desc: label of the progress bar.
        on_step: called after every optimiser step (a UI's progress bar, a job's status); an
            exception it raises stops training.

    Returns:
        TrainMetrics of the run.
    """
    if not samples:
        raise ValueError("no training samples")
    if cfg.epochs is None or cfg.learning_rate is None or cfg.samples_per_step is None:
        raise ValueError("TrainConfig is not resolved (epochs, learning_rate, samples_per_step)")
    module = handle.module
    device = next(module.parameters()).device
    params = handle.trainable_parameters()
    if not params:
        raise ValueError("the adapter has no trainable parameters")
    torch.manual_seed(cfg.seed)
    order_rng = random.Random(cfg.seed)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=cfg.betas, weight_decay=cfg.weight_decay)

    if cfg.gradient_checkpointing:
        _set_checkpointing(module, True)
    module.train()
    plans = []
    for _ in range(cfg.epochs):
        order = list(samples)
        if cfg.shuffle:
            order_rng.shuffle(order)
        plans.append(group_for_packing(order, cfg.samples_per_step))
    total_steps = sum(len(p) for p in plans)
    bar = tqdm(total=total_steps, desc=desc, file=sys.stderr, disable=not progress, dynamic_ncols=True, leave=False)
    sample_tokens = computed_tokens = target_tokens = steps_done = 0
    epoch_losses: list[float] = []
    start = time.perf_counter()
    try:
        for plan in plans:
            loss_sum, loss_count = 0.0, 0
            for group in plan:
                batch = pack_shared_prefix(group).to(device)
                loss, n_targets = packed_loss(module, batch)
                loss.backward()
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                value = loss.item()
                loss_sum += value * n_targets
                loss_count += n_targets
                sample_tokens += batch.num_tokens_unpacked
                computed_tokens += batch.input_ids.shape[1]
                target_tokens += n_targets
                steps_done += 1
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}", epoch=len(epoch_losses) + 1)
                if on_step is not None:
                    on_step(StepProgress(steps_done, total_steps, len(epoch_losses) + 1, cfg.epochs, value))
            epoch_losses.append(loss_sum / max(loss_count, 1))
    finally:
        bar.close()
        module.eval()
        if cfg.gradient_checkpointing:
            _set_checkpointing(module, False)
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    return TrainMetrics(
        steps=total_steps,
        epochs=cfg.epochs,
        samples=len(samples),
        target_tokens=target_tokens,
        sample_tokens=sample_tokens,
        computed_tokens=computed_tokens,
        seconds=round(seconds, 3),
        tokens_per_second=round(sample_tokens / seconds, 1) if seconds > 0 else 0.0,
        epoch_losses=[round(x, 5) for x in epoch_losses],
    )
