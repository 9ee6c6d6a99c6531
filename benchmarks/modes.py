"""Answer latency per mode at the same W: icl, rag, lift, lift+icl, lift+rag, in one run.

The retrieval view must not make answering slower than the head…tail view it replaces: its index
is built once at absorb time, so a ``rag`` question costs a BM25 lookup (a sparse dot product) on
top of the same W-token prompt. This script absorbs one document once with a deliberately short
absorb (segments only, 1 epoch: latency does not depend on how well the adapter learnt), then asks
the same questions in every mode, alternating the modes question by question so that machine noise
hits all of them alike, and prints the median latency of each mode and its ratio to ``icl``.

    python benchmarks/modes.py                      # embedded SmolLM2, W = 128, 2 threads
    python benchmarks/modes.py --window 256 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lift_ray.modes import MODES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="base model (default: the embedded SmolLM2)")
    parser.add_argument("--window", type=int, default=128, help="W in tokens (default: 128)")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the questions (default: 3)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="answer length limit (default: 16; latency is reported per generated token)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from lift_ray.config import build_config
    from lift_ray.demo import sample_document, sample_questions
    from lift_ray.infer import LiftEngine

    torch.set_num_threads(args.threads)
    overrides = {
        "segments": {"context_window": args.window},
        "aux_qa": {"generator": "none"},
        "train": {"epochs": 1},
        "inference": {"max_new_tokens": args.max_new_tokens},
        "store": {"uri": tempfile.mkdtemp(prefix="lift-ray-bench-modes-")},
    }
    if args.model:
        overrides["model"] = {"name_or_path": args.model}
    engine = LiftEngine.from_config(build_config(None, overrides))
    doc_id = engine.absorb(sample_document(), progress=False).doc_id
    questions = [q["question"] for q in sample_questions()]
    for mode in MODES:  # warm-up: first use attaches the adapter and loads the index
        engine.answer(questions[0], doc_id, mode)

    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    tokens: dict[str, list[int]] = {m: [] for m in MODES}
    whole: dict[str, list[float]] = {m: [] for m in MODES}
    # answered in another mode: as icl (the window shows the evidence), or lift+rag as rag after a second
    # generation (the adapter's answer was not in the chunks), which the per-token time then includes
    other: dict[str, int] = {m: 0 for m in MODES}
    for _ in range(args.repeats):
        for question in questions:
            for mode in MODES:
                start = time.perf_counter()
                ans = engine.answer(question, doc_id, mode)
                # per generated token, so that answers of different lengths compare
                took = time.perf_counter() - start
                seconds[mode].append(took / max(ans.new_tokens, 1))
                whole[mode].append(took)
                tokens[mode].append(ans.prompt_tokens)
                other[mode] += ans.answered_as not in (None, mode)
    base = statistics.median(seconds["icl"])
    print(f"{engine.loaded.model_id}, W = {args.window}, {args.threads} thread(s), {len(questions)} questions x {args.repeats}")
    print(f"{'mode':>9} | prompt tokens | ms per answer token (median) | vs icl | s per answer (median) | answered as another mode")
    for mode in MODES:
        med = statistics.median(seconds[mode])
        print(f"{mode:>9} | {statistics.median(tokens[mode]):13.0f} | {1000 * med:28.1f} | {med / base:5.2f}x"
              f" | {statistics.median(whole[mode]):21.2f} | {other[mode]} of {len(whole[mode])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
