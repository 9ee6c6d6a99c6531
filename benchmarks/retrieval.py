"""The retrieval view without training: icl vs rag on the development set, for chunking settings.

No adapter is involved (base model only), so this runs in minutes and isolates the view: how much
of each question bucket (beyond / inside the window, asked directly / in other words / SQuAD's
human questions) the head…tail view and the retrieved chunks put within reach of the model.
Scoring is answer containment, as in ``benchmarks/quality.py``.

    python benchmarks/retrieval.py                                   # default settings vs 48/16
    python benchmarks/retrieval.py --settings 32/8/0,32/8/0.25,32/8/0.5 --threads 2

A setting is ``chunk_tokens/overlap_tokens/head_tail_share``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEVSET = REPO / "benchmarks" / "data" / "devset.jsonl"


def bucket(row: dict, q: dict) -> str:
    kind = "squad" if row["style"] == "squad" else q.get("kind", "direct")
    return f"{q['where']}-{kind}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEVSET), help="development set JSONL (default: benchmarks/data/devset.jsonl)")
    parser.add_argument("--settings", default="32/8/0,48/16/0", help="chunk/overlap/head_tail_share, comma separated")
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the counts as JSON here")
    args = parser.parse_args(argv)

    import torch

    from lift_ray.config import build_config
    from lift_ray.evaluate.metrics import contains_answer
    from lift_ray.infer import LiftEngine

    torch.set_num_threads(args.threads)
    settings = []
    for item in args.settings.split(","):
        chunk, overlap, share = item.split("/")
        settings.append({"chunk_tokens": int(chunk), "overlap_tokens": int(overlap), "head_tail_share": float(share)})
    base = build_config(None, {"segments": {"context_window": args.window},
                               "inference": {"max_new_tokens": args.max_new_tokens},
                               "store": {"uri": tempfile.mkdtemp(prefix="lift-ray-bench-retrieval-")}})
    engine = LiftEngine.from_config(base)
    rows = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    runs = [("icl", None)] + [(f"rag {s['chunk_tokens']}/{s['overlap_tokens']}/{s['head_tail_share']}", s) for s in settings]
    hits: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    start = time.perf_counter()
    for row in rows:
        for name, setting in runs:
            if setting is not None:
                engine.config = base.model_copy(update={"retrieval": base.retrieval.model_copy(update=setting)})
            for q in row["qa_pairs"]:
                ans = engine.answer(q["Q"], row["input"], "icl" if setting is None else "rag")
                cell = hits[(name, bucket(row, q))]
                cell[0] += int(contains_answer(ans.answer, q["A"]))
                cell[1] += 1
        print(f"{row['id']} done after {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    buckets = sorted({b for _, b in hits}, key=lambda b: (not b.startswith("beyond"), b))
    print(f"{engine.loaded.model_id}, W = {args.window}, {len(rows)} documents, base model (no training)")
    print("| view | " + " | ".join(buckets) + " |")
    print("|---" * (len(buckets) + 1) + "|")
    for name, _ in runs:
        print(f"| {name} | " + " | ".join("%d/%d" % tuple(hits[(name, b)]) for b in buckets) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({f"{n}|{b}": v for (n, b), v in hits.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
