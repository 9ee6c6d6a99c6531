"""Gated Memory cost at inference: decode latency with the adapter attached vs the bare base model,
and attach/detach time on a resident base, measured in one run (alternating, median of repeats).

    python benchmarks/gated_memory.py                       # embedded SmolLM2, CPU
    python benchmarks/gated_memory.py --random-init llama-3-8b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lift_ray.adapters import attach_adapter  # noqa: E402
from lift_ray.config import GatedMemoryAdapterConfig, LoraAdapterConfig, ModelSpec, build_config  # noqa: E402
from lift_ray.model import load_model, load_random_init  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def decode_seconds(model, prompt: torch.Tensor, new_tokens: int) -> float:
    """Wall time of greedy decoding ``new_tokens`` tokens (KV cache on), after the prompt."""
    sync()
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--random-init", default=None, help="a KNOWN_SHAPES key or config dir (timing only)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = ModelSpec.model_validate({**build_config(None, {}).model.model_dump(), "device": args.device,
                                     "dtype": args.dtype, "load_in_4bit": False,
                                     **({"name_or_path": args.model} if args.model else {})})
    loaded = load_random_init(args.random_init, spec) if args.random_init else load_model(spec)
    model = loaded.model
    prompt = torch.randint(100, 1000, (1, args.prompt_tokens), device=loaded.device)
    kinds = {"gated_memory": GatedMemoryAdapterConfig(), "lora": LoraAdapterConfig(r=16, alpha=32, target_modules="all-linear")}
    decode_seconds(model, prompt, 4)  # warm-up

    results: dict[str, list[float]] = {"base": [], **{k: [] for k in kinds}}
    attach_ms: dict[str, list[float]] = {k: [] for k in kinds}
    detach_ms: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        results["base"].append(decode_seconds(model, prompt, args.new_tokens))
        for kind, cfg in kinds.items():
            sync()
            t = time.perf_counter()
            handle = attach_adapter(model, cfg)
            sync()
            attach_ms[kind].append((time.perf_counter() - t) * 1000)
            with torch.no_grad():  # a trained-looking adapter: non-zero weights everywhere
                for p in handle.trainable_parameters():
                    p.normal_(0, 0.02)
            results[kind].append(decode_seconds(handle.module, prompt, args.new_tokens))
            t = time.perf_counter()
            model = handle.detach()
            sync()
            detach_ms[kind].append((time.perf_counter() - t) * 1000)
    base = statistics.median(results["base"])
    print(f"model {loaded.model_id} ({loaded.num_params / 1e6:.0f}M params, {args.dtype}, {loaded.device}); "
          f"prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, median of {args.repeats}")
    print(f"base decode: {base * 1000 / args.new_tokens:.1f} ms/token")
    for kind in kinds:
        med = statistics.median(results[kind])
        print(f"{kind:>12}: {med * 1000 / args.new_tokens:.1f} ms/token -> overhead {100 * (med / base - 1):+.1f}% "
              f"(target ≤ 10% for gated_memory); attach {statistics.median(attach_ms[kind]):.1f} ms, "
              f"detach {statistics.median(detach_ms[kind]):.1f} ms")


if __name__ == "__main__":
    main()
