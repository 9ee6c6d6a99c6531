"""Serving many documents on one base model: the three ratios of issue 12, for LoRA and Gated Memory.

Each measured in one run against a baseline of the same run, through the engine the Serve replicas
use (``LiftEngine.answer_batch``; HTTP adds the same constant to both sides of each ratio):

1. spread / one: throughput of requests spread over 50 distinct adapters vs all on one adapter
   (batches of 8, adapters resident: the replica is sized for them)          target >= 0.7
2. batched / one-at-a-time: 8 concurrent requests over 8 documents in one batched generate vs
   answered one after another                                                target >= 2x
3. cold load / forward: loading one adapter from the store onto the resident base (verify hashes,
   read, install) vs one 512-token forward pass of the base                   target <= 1x

Adapters are random (answers are meaningless, timings are not) and published to a temporary store
with real manifests, so loading goes through the same store, hashing and install path as serving.

    python benchmarks/serve.py                                   # embedded SmolLM2, CPU
    python benchmarks/serve.py --random-init llama-3-8b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lift_ray import __version__  # noqa: E402
from lift_ray.adapters import attach_adapter  # noqa: E402
from lift_ray.config import GatedMemoryAdapterConfig, LoraAdapterConfig, ModelSpec, build_config, resolve_config  # noqa: E402
from lift_ray.infer import LiftEngine, Question  # noqa: E402
from lift_ray.model import load_model, load_random_init  # noqa: E402
from lift_ray.store import AdapterStore, BaseModelRef, Manifest, doc_id_for, now_iso, sha256_file, variant_id  # noqa: E402
from lift_ray.store import TrainMetrics  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def publish_random_adapter(loaded, config, cfg, store: AdapterStore, text: str, seed: int) -> str:
    """A random adapter of kind ``cfg`` for ``text``, published with a real manifest; returns the doc id."""
    torch.manual_seed(seed)
    handle = attach_adapter(loaded.model, cfg, base_model_id=loaded.model_id)
    try:
        with torch.no_grad():
            for p in handle.trainable_parameters():
                p.normal_(0.0, 0.02)
        with tempfile.TemporaryDirectory() as tmp:
            names = handle.save(Path(tmp))
            doc_id = doc_id_for(text)
            metrics = TrainMetrics(steps=0, epochs=0, samples=0, target_tokens=0, sample_tokens=0, computed_tokens=0,
                                   seconds=0.0, tokens_per_second=0.0, epoch_losses=[])
            manifest = Manifest(
                doc_id=doc_id,
                variant=variant_id(config.model_copy(update={"adapter": cfg}), loaded.model_id, loaded.weights_hash),
                adapter_kind=cfg.kind,
                base_model=BaseModelRef(model_id=loaded.model_id, weights_hash=loaded.weights_hash,
                                        num_params=loaded.num_params, max_positions=loaded.max_positions),
                adapter_config=cfg.model_dump(mode="json"), config_hash="benchmark", config={},
                context_window=config.segments.context_window, num_tokens=len(text.split()), num_samples=0, training=metrics,
                files={n: sha256_file(Path(tmp) / n) for n in names}, created_at=now_iso(), lift_ray_version=__version__,
            )
            store.publish(manifest, text, Path(tmp))
    finally:
        loaded.model = handle.detach()
    return doc_id


def timed(fn, repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_kind(loaded, config, kind_cfg, args) -> dict:
    store = AdapterStore(tempfile.mkdtemp(prefix="lift-ray-bench-store-"))
    texts = [f"Benchmark document {i}: " + " ".join(f"fact {i}-{j} is {i * j % 97}." for j in range(40))
             for i in range(args.adapters)]
    docs = [publish_random_adapter(loaded, config, kind_cfg, store, t, i) for i, t in enumerate(texts)]
    engine = LiftEngine(loaded, config, store, max_resident=args.adapters, manifest_ttl=3600)
    question = "What is fact 3-4?"

    def batch(doc_ids):
        return [Question(question, d, "lift", max_new_tokens=args.new_tokens) for d in doc_ids]

    # 1. spread over all adapters vs all on one (warm: every adapter resident, as a replica sized for them)
    for d in docs:
        engine.attach(d)
    n = args.requests
    spread = [batch([docs[(i + j) % len(docs)] for j in range(args.batch)]) for i in range(0, n, args.batch)]
    one = [batch([docs[0]] * args.batch) for _ in range(0, n, args.batch)]

    def run_all(batches):
        for b in batches:
            engine.answer_batch(b)

    t_spread = timed(lambda: run_all(spread), args.repeats)
    t_one = timed(lambda: run_all(one), args.repeats)

    # 2. 8 concurrent requests over 8 documents: one batched generate vs one at a time
    eight = batch(docs[:8])
    t_batched = timed(lambda: engine.answer_batch(eight), args.repeats)
    t_serial = timed(lambda: [engine.answer_batch([q]) for q in eight], args.repeats)

    # 3. cold load of one adapter (store -> verified files -> device) vs one 512-token forward of the base
    def cold_load():
        engine.evict(docs[-1])
        engine.attach(docs[-1])

    t_load = timed(cold_load, args.repeats)
    ids = torch.randint(0, loaded.model.config.vocab_size, (1, 512), device=loaded.device)

    def forward():
        with torch.inference_mode():
            loaded.model(input_ids=ids)

    engine.detach()
    t_forward = timed(forward, args.repeats)
    return {
        "spread_over_one": round(t_one / t_spread, 3),
        "spread_requests_per_s": round(n / t_spread, 2),
        "one_adapter_requests_per_s": round(n / t_one, 2),
        "batched_over_serial": round(t_serial / t_batched, 3),
        "batched_s": round(t_batched, 3),
        "serial_s": round(t_serial, 3),
        "cold_load_over_forward": round(t_load / t_forward, 3),
        "cold_load_s": round(t_load, 4),
        "forward_512_s": round(t_forward, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="base model (default: embedded SmolLM2)")
    parser.add_argument("--random-init", default=None, help="a known shape (e.g. llama-3-8b) or config dir: timing only")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--adapters", type=int, default=50)
    parser.add_argument("--requests", type=int, default=48, help="requests per throughput run (batches of --batch)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kinds", default="lora,gated_memory")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = build_config(None, {})
    spec = ModelSpec.model_validate({**base.model.model_dump(), "device": args.device, "dtype": args.dtype,
                                     "load_in_4bit": False, **({"name_or_path": args.model} if args.model else {})})
    loaded = load_random_init(args.random_init, spec) if args.random_init else load_model(spec)
    config = resolve_config(build_config(None, {"segments": {"context_window": 256}}), num_params=loaded.num_params,
                            max_positions=loaded.max_positions, on_cuda=loaded.device.type == "cuda")
    lora = config.adapter if config.adapter.kind == "lora" else LoraAdapterConfig(r=16, alpha=32, target_modules="all-linear")
    kinds = {"lora": lora, "gated_memory": GatedMemoryAdapterConfig()}
    out = {"model": loaded.model_id, "device": str(loaded.device), "dtype": args.dtype, "threads": args.threads,
           "adapters": args.adapters, "batch": args.batch, "new_tokens": args.new_tokens, "results": {}}
    for kind in args.kinds.split(","):
        print(f"serve benchmark: {kind} ...", file=sys.stderr, flush=True)
        out["results"][kind] = run_kind(loaded, config, kinds[kind], args)
        print(json.dumps({kind: out["results"][kind]}), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
