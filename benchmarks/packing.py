"""Training-step packing: every shared prompt token once (a token tree, the default) vs the shared prefix only.

A step's samples share more than their document view: the question prompt's wording ("Answer the
question about the document. Question:"), the chat header of the samples trained without the document,
and the first words of questions that begin alike. :func:`lift_ray.segments.pack_groups` merges all of
it; before stop 43 only each sample's ``prefix_len`` tokens (the view) were merged. Both give every
target the logits of its sample run alone, so the steps, samples and losses are the same up to float
rounding; only the tokens computed differ. Each document is absorbed with each packing, the order
alternating from document to document (a busy machine slows both alike), with the default config.

    python benchmarks/packing.py                                                 # the sample document
    python benchmarks/packing.py --data benchmarks/data/devset.jsonl --docs 2    # and two development documents
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lift_ray.train  # noqa: E402
from benchmarks.stop_check import default_engine, document_arguments, documents  # noqa: E402
from lift_ray.absorb import auxiliary_pairs  # noqa: E402
from lift_ray.infer import LiftEngine  # noqa: E402
from lift_ray.segments import pack_groups, pack_shared_prefix, packed_length  # noqa: E402
from lift_ray.store import doc_id_for  # noqa: E402
from lift_ray.text import check_document_text  # noqa: E402


@contextlib.contextmanager
def prefix_packing():
    """The trainer and its check pack as before stop 43 (only ``prefix_len`` shared) inside the block;
    they look the packers up at call time."""
    saved = lift_ray.train.pack_shared_prefix, lift_ray.train.pack_groups, lift_ray.train.packed_length
    lift_ray.train.pack_shared_prefix = functools.partial(pack_shared_prefix, shared="prefix")
    lift_ray.train.pack_groups = functools.partial(pack_groups, shared="prefix")
    lift_ray.train.packed_length = functools.partial(packed_length, shared="prefix")
    try:
        yield
    finally:
        lift_ray.train.pack_shared_prefix, lift_ray.train.pack_groups, lift_ray.train.packed_length = saved


def absorb(engine: LiftEngine, text: str, packing: str) -> dict:
    with prefix_packing() if packing == "prefix" else contextlib.nullcontext():
        result = engine.absorb(text, progress=False, force=True)
    t = result.training
    checks = [r.check for r in t.epoch_log if r.check is not None]
    return {"packing": packing, "absorb_s": result.seconds, "train_s": t.seconds, "epochs": t.epochs, "stop": t.stop_reason,
            "computed_tokens": t.computed_tokens, "sample_tokens": t.sample_tokens, "losses": t.epoch_losses,
            "check_s": round(sum(c.seconds for c in checks), 2), "known": checks[-1].answer_accuracy if checks else None,
            "tokens_per_epoch": t.computed_tokens / t.epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    document_arguments(parser)
    args = parser.parse_args()
    results = []
    with default_engine(args, "lift-ray-packing-") as engine:
        for i, (name, text) in enumerate(documents(args)):
            text = check_document_text(text, engine.config.segments.max_document_chars)
            # the QA pairs go into the store first, so neither run pays for writing them
            auxiliary_pairs(engine.loaded, text, doc_id_for(text), engine.config, engine.store)
            order = ["prefix", "tree"] if i % 2 == 0 else ["tree", "prefix"]
            runs = {packing: absorb(engine, text, packing) for packing in order}
            results.append({"doc": name, **runs})
    print("| document | packing | tokens per epoch | epochs (stop) | epoch losses | check s | absorb s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        for packing in ("prefix", "tree"):
            x = r[packing]
            losses = " · ".join(f"{v:.4f}" for v in x["losses"])
            print(f"| {r['doc']} | {packing} | {x['tokens_per_epoch']:.0f} | {x['epochs']} ({x['stop']}) | {losses} "
                  f"| {x['check_s']:.1f} | {x['absorb_s']:.1f} |")
    tok_before = sum(r["prefix"]["tokens_per_epoch"] for r in results)
    tok_after = sum(r["tree"]["tokens_per_epoch"] for r in results)
    before = sum(r["prefix"]["absorb_s"] for r in results)
    after = sum(r["tree"]["absorb_s"] for r in results)
    per_epoch_before = sum(r["prefix"]["train_s"] / r["prefix"]["epochs"] for r in results)
    per_epoch_after = sum(r["tree"]["train_s"] / r["tree"]["epochs"] for r in results)
    same = all(r["prefix"]["epochs"] == r["tree"]["epochs"] for r in results)
    print(f"tree vs prefix packing: {tok_before / tok_after:.2f}x fewer tokens per epoch, training "
          f"{per_epoch_before / per_epoch_after:.2f}x faster per epoch, absorb {before / after:.2f}x faster "
          f"({before:.1f} s -> {after:.1f} s); epochs {'the same' if same else 'DIFFER'}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
