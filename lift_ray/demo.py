"""The README's first command: absorb the shipped sample document, then answer ICL vs LIFT+ICL.

    python -m lift_ray.demo [--context-window 128] [--model M] [--store URI]

The sample is a short fictional chronicle (no world knowledge helps); with a 128-token window
most of its facts lie outside what ICL can see, so they can only come from the adapter.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from importlib import resources

import torch

from lift_ray.evaluate.metrics import is_correct  # noqa: F401  (the fact tests import it from here too)


def sample_document() -> str:
    return resources.files("lift_ray.data").joinpath("sample_document.txt").read_text(encoding="utf-8")


def sample_questions() -> list[dict]:
    raw = resources.files("lift_ray.data").joinpath("sample_questions.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    from lift_ray.config import build_config
    from lift_ray.infer import LiftEngine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context-window", type=int, default=128, help="W of the head+tail view (small for the demo)")
    parser.add_argument("--model", help="base model (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--store", help="store URI (default: $LIFT_RAY_STORE or the cache)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--modes", default="icl,lift+icl", help="modes to compare, comma separated")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides: dict = {"segments": {"context_window": args.context_window}, "inference": {"max_new_tokens": 32}}
    if args.model:
        overrides["model"] = {"name_or_path": args.model}
    if args.store:
        overrides["store"] = {"uri": args.store}
    engine = LiftEngine.from_config(build_config(None, overrides))
    start = time.perf_counter()
    result = engine.absorb(sample_document())
    print(f"{result.status} the sample document ({result.num_tokens} tokens) as {result.doc_id} "
          f"in {time.perf_counter() - start:.0f} s; window W={args.context_window}\n")
    modes = args.modes.split(",")
    totals = {m: 0 for m in modes}
    for q in sample_questions():
        print(f"Q ({'inside' if q['where'] == 'inside' else 'beyond'} the window): {q['question']}  [expected: {q['answer']}]")
        for mode in modes:
            ans = engine.answer(q["question"], result.doc_id, mode)
            ok = is_correct(ans.answer, q["keywords"])
            totals[mode] += ok
            line = " ".join(ans.answer.split())
            print(textwrap.shorten(f"  {mode:>8} {'✓' if ok else '✗'} {line}", width=150))
        print()
    n = len(sample_questions())
    print("correct: " + ", ".join(f"{m} {totals[m]}/{n}" for m in modes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
