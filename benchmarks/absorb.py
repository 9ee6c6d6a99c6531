"""Absorb throughput: lift-ray's training loop vs a plain HF Trainer + peft LoRA, in one run.

Both train the same LoRA on the same contextualised samples of the same document, with the same
model, dtype, batch size (samples per optimiser step), gradient-checkpointing setting, epochs and
seed. Throughput is sample tokens per second (the tokens of the samples as written), so a path
that computes a shared context once per step gets the credit for it. This machine is noisy: only
the ratio measured within one run means anything.

    python benchmarks/absorb.py                      # embedded SmolLM2, W=ℓ=128, batch 1 and 4
    python benchmarks/absorb.py --model PATH --batch-sizes 4 --epochs 2 --dtype bfloat16
    python benchmarks/absorb.py --random-init meta-llama/Meta-Llama-3-8B --load-in-4bit  # GPU shape test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lift_ray.adapters import attach_adapter  # noqa: E402
from lift_ray.config import LiftConfig, build_config, resolve_config  # noqa: E402
from lift_ray.model import LoadedModel, inspect_model, load_model  # noqa: E402
from lift_ray.segments import IGNORE_INDEX, chat_format, segment_samples  # noqa: E402
from lift_ray.train import train_adapter  # noqa: E402


def hf_trainer_baseline(loaded: LoadedModel, cfg: LiftConfig, samples, batch_size: int) -> dict:
    """The same LoRA trained by transformers.Trainer: padding collator, full-vocabulary logits."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    torch.manual_seed(cfg.train.seed)
    handle = attach_adapter(loaded.model, cfg.adapter)
    data = Dataset.from_list([{"input_ids": s.input_ids, "labels": s.labels} for s in samples])
    args = TrainingArguments(
        output_dir="/tmp/lift-ray-bench-trainer",
        per_device_train_batch_size=batch_size,
        num_train_epochs=cfg.train.epochs,
        learning_rate=cfg.train.learning_rate,
        adam_beta1=cfg.train.betas[0],
        adam_beta2=cfg.train.betas[1],
        max_grad_norm=cfg.train.max_grad_norm,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=10**9,
        save_strategy="no",
        report_to=[],
        gradient_checkpointing=bool(cfg.train.gradient_checkpointing),
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=False,
        use_cpu=loaded.device.type == "cpu",
        dataloader_num_workers=0,
        seed=cfg.train.seed,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    collator = DataCollatorForSeq2Seq(loaded.tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
    trainer = Trainer(model=handle.module, args=args, train_dataset=data, data_collator=collator)
    sync()
    start = time.perf_counter()
    out = trainer.train()
    sync()
    seconds = time.perf_counter() - start
    loaded.model = handle.detach()
    tokens = cfg.train.epochs * sum(len(s.input_ids) for s in samples)
    return {"seconds": seconds, "tokens_per_second": tokens / seconds, "final_loss": out.training_loss}


def lift_ray_path(loaded: LoadedModel, cfg: LiftConfig, samples, batch_size: int) -> dict:
    torch.manual_seed(cfg.train.seed)
    handle = attach_adapter(loaded.model, cfg.adapter)
    # Count mode (step_tokens 0): exactly the Trainer's batches, so only the loop differs.
    train_cfg = cfg.train.model_copy(update={"samples_per_step": batch_size, "step_tokens": 0})
    sync()
    metrics = train_adapter(handle, samples, train_cfg, progress=False)
    sync()
    loaded.model = handle.detach()
    return {
        "seconds": metrics.seconds,
        "tokens_per_second": metrics.tokens_per_second,
        "final_loss": metrics.epoch_losses[-1],
        "computed_tokens_fraction": round(metrics.computed_tokens / metrics.sample_tokens, 3),
    }


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_gib() -> float | None:
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model (default: the embedded SmolLM2)")
    parser.add_argument("--random-init", metavar="CONFIG_DIR_OR_ID", help="random weights of this config's shape (GPU timing)")
    parser.add_argument("--document", default=str(REPO / "lift_ray" / "data" / "sample_document.txt"))
    parser.add_argument("--context-window", type=int, default=128)
    parser.add_argument("--segment-length", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,4", help="samples per optimiser step, comma separated")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--load-in-4bit", action="store_true")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat-document", type=int, default=1, help="concatenate the document N times")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    overrides: dict = {
        "segments": {"context_window": args.context_window},
        "train": {"epochs": args.epochs, "gradient_checkpointing": args.gradient_checkpointing},
        "model": {},
    }
    if args.segment_length:
        overrides["segments"]["segment_length"] = args.segment_length
    if args.model:
        overrides["model"]["name_or_path"] = args.model
    if args.dtype:
        overrides["model"]["dtype"] = args.dtype
    if args.load_in_4bit:
        overrides["model"]["load_in_4bit"] = True
    cfg = build_config(None, overrides)
    if args.random_init:
        from lift_ray.model import load_random_init

        loaded = load_random_init(args.random_init, cfg.model)
        cfg = resolve_config(cfg, num_params=loaded.num_params, max_positions=loaded.max_positions,
                             on_cuda=loaded.device.type == "cuda")
    else:
        info = inspect_model(cfg.model)
        cfg = resolve_config(cfg, num_params=info.num_params, max_positions=info.max_positions,
                             on_cuda=torch.cuda.is_available())
        loaded = load_model(cfg.model)

    text = "\n\n".join([Path(args.document).read_text(encoding="utf-8")] * args.repeat_document)
    tok = loaded.tokenizer
    doc_ids = tok(text, add_special_tokens=False)["input_ids"]
    samples, budgets = segment_samples(
        doc_ids, fmt=chat_format(tok), tokenizer=tok, context_window=cfg.segments.context_window,
        segment_length=cfg.segments.segment_length, stride_fraction=cfg.segments.stride_fraction,
        max_positions=loaded.max_positions, recite_prompt=cfg.segments.recite_prompt, mixin=cfg.segments.mixin,
    )
    print(
        f"model {loaded.model_id} ({loaded.num_params / 1e6:.0f}M params, {cfg.model.dtype}"
        f"{', 4-bit' if cfg.model.load_in_4bit else ''}, {loaded.device}), {len(doc_ids)} tokens -> "
        f"{len(samples)} samples of {len(samples[0].input_ids)} tokens (W={budgets.context_window}, "
        f"ℓ={budgets.segment_length}), {cfg.train.epochs} epochs, gradient checkpointing "
        f"{'on' if cfg.train.gradient_checkpointing else 'off'}",
        file=sys.stderr,
    )
    rows = []
    for batch_size in [int(x) for x in args.batch_sizes.split(",")]:
        # Warm-up: one short pass of each so neither pays first-call costs.
        warm = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1})})
        lift_ray_path(loaded, warm, samples[: batch_size], batch_size)
        hf_trainer_baseline(loaded, warm, samples[: batch_size], batch_size)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        base = hf_trainer_baseline(loaded, cfg, samples, batch_size)
        base_mem = peak_memory_gib()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        ours = lift_ray_path(loaded, cfg, samples, batch_size)
        ours_mem = peak_memory_gib()
        row = {
            "batch_size": batch_size,
            "hf_trainer_tok_s": round(base["tokens_per_second"], 1),
            "lift_ray_tok_s": round(ours["tokens_per_second"], 1),
            "speedup": round(ours["tokens_per_second"] / base["tokens_per_second"], 2),
            "hf_trainer_final_loss": round(base["final_loss"], 4),
            "lift_ray_final_loss": round(ours["final_loss"], 4),
            "computed_tokens_fraction": ours["computed_tokens_fraction"],
            "hf_trainer_peak_gib": base_mem,
            "lift_ray_peak_gib": ours_mem,
        }
        rows.append(row)
        print(
            f"batch {batch_size}: HF Trainer {row['hf_trainer_tok_s']} tok/s, lift-ray {row['lift_ray_tok_s']} tok/s "
            f"-> {row['speedup']}x (lift-ray computes {row['computed_tokens_fraction']:.0%} of the sample tokens)"
            + (f"; peak GPU memory {base_mem} vs {ours_mem} GiB" if base_mem is not None else ""),
            flush=True,
        )
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
