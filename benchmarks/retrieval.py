"""The retrieval view without training: icl vs rag on the development set, for chunking settings.

No adapter is involved (base model only), so this runs in minutes and isolates the view: how much
of each question bucket (beyond / inside the window, asked directly / in other words / SQuAD's
human questions) the head…tail view and the retrieved chunks put within reach of the model.
Scoring is answer containment, as in ``benchmarks/quality.py``.

    python benchmarks/retrieval.py                                   # the focus sentence on vs off
    python benchmarks/retrieval.py --settings 32/8/0,32/8/0.25,48/16/0 --threads 2
    python benchmarks/retrieval.py --data held.jsonl                 # an eval set ({"input", "qa_pairs"} rows)

A setting is ``chunk_tokens/overlap_tokens/head_tail_share[/focus_sentence]`` (focus 1 or 0, default 1).
Rows without ``style``/``where`` (an eval set rather than the development set) are bucketed by
where the evidence lies, as ``lift-ray eval`` does.
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


def _documents(path: Path, engine) -> list[tuple[str, str, list[tuple[str, list[str], str]]]]:
    """(id, text, [(question, answers, bucket)]) per document: the development set's own buckets, or,
    for another eval set, where the evidence lies in the head…tail view (as ``lift-ray eval`` says)."""
    from lift_ray.evaluate.data import load_eval_set
    from lift_ray.evaluate.runner import where_by_question

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if rows and all("style" in row for row in rows):
        return [(row["id"], row["input"], [(q["Q"], q["A"], bucket(row, q)) for q in row["qa_pairs"]]) for row in rows]
    return [(doc.key, doc.text, [(q.question, q.answers, where) for q, where in zip(doc.questions, where_by_question(engine, doc))])
            for doc in load_eval_set(str(path))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEVSET), help="development set JSONL (default: benchmarks/data/devset.jsonl)")
    parser.add_argument("--settings", default="32/8/0/1,32/8/0/0", help="chunk/overlap/head_tail_share[/focus], comma separated")
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
        chunk, overlap, share, *focus = item.split("/")
        settings.append({"chunk_tokens": int(chunk), "overlap_tokens": int(overlap), "head_tail_share": float(share),
                         "focus_sentence": bool(int(focus[0])) if focus else True})
    base = build_config(None, {"segments": {"context_window": args.window},
                               "inference": {"max_new_tokens": args.max_new_tokens},
                               "store": {"uri": tempfile.mkdtemp(prefix="lift-ray-bench-retrieval-")}})
    engine = LiftEngine.from_config(base)
    documents = _documents(Path(args.data), engine)
    runs = [("icl", None)] + [(f"rag {s['chunk_tokens']}/{s['overlap_tokens']}/{s['head_tail_share']}/{int(s['focus_sentence'])}", s)
                              for s in settings]
    hits: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    start = time.perf_counter()
    for doc_id, text, questions in documents:
        for name, setting in runs:
            if setting is not None:
                engine.config = base.model_copy(update={"retrieval": base.retrieval.model_copy(update=setting)})
            for question, answers, where in questions:
                ans = engine.answer(question, text, "icl" if setting is None else "rag")
                cell = hits[(name, where)]
                cell[0] += int(contains_answer(ans.answer, answers))
                cell[1] += 1
        print(f"{doc_id} done after {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    buckets = sorted({b for _, b in hits}, key=lambda b: (not b.startswith("beyond"), b))
    print(f"{engine.loaded.model_id}, W = {args.window}, {len(documents)} documents, base model (no training)")
    print("| view | " + " | ".join(buckets) + " |")
    print("|---" * (len(buckets) + 1) + "|")
    for name, _ in runs:
        print(f"| {name} | " + " | ".join("%d/%d" % tuple(hits[(name, b)]) for b in buckets) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({f"{n}|{b}": v for (n, b), v in hits.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
