"""Answer quality on the development set: per document, per mode, beyond and inside the window.

The development set (``benchmarks/data/devset.jsonl``, built by ``python -m lift_ray.evaluate.make_devset``)
holds SQuAD articles with human questions and fictional documents in five styles whose planted
facts are each asked directly and paraphrased. Each configuration (auxiliary QA generator × seed,
the rest the default profile) absorbs every document, then answers every question in each answer
mode, plus the whole document in context (``full``: icl with a window as long as the document, the
ceiling). Scoring is answer containment (a normalised reference answer appears in the answer), and
the same in the answer's first 10 words (the base model's long replies "contain" answers they never
give: README, Evaluation).
Modes that use no adapter are answered once per document and shared by every configuration.

    python benchmarks/quality.py --qa none,rules --seeds 0,1                 # the full table
    python benchmarks/quality.py --qa rules --docs 6 --seeds 0               # a quick subset
    python benchmarks/quality.py --qa rules --styles narrative,table --threads 1 --out q.json
    # two processes of one thread each, then one table from both (2 cores are used better this way)
    python benchmarks/quality.py --shard 0/2 --threads 1 --out q0.json & python benchmarks/quality.py --shard 1/2 --threads 1 --out q1.json
    python benchmarks/quality.py --tables q0.json q1.json
    # keep the adapters; a second run with other answering settings reuses them instead of training
    python benchmarks/quality.py --docs 6 --seeds 1 --store ./quality-store --out a.json
    python benchmarks/quality.py --docs 6 --seeds 1 --store ./quality-store --set inference.max_new_tokens=16 --out b.json

Per document it prints ``beyond direct · beyond paraphrased · inside`` hits per mode (SQuAD: beyond ·
inside), then totals per style and the documents where LIFT+ICL reads the window worse than ICL,
under both scores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lift_ray.config import build_config, resolve_config  # noqa: E402
from lift_ray.evaluate.metrics import STATED_WORDS, contains_answer  # noqa: E402
from lift_ray.infer import LiftEngine  # noqa: E402
from lift_ray.modes import MODE_TITLES, MODES, parse_modes, uses_adapter  # noqa: E402
from lift_ray.store import AdapterStore  # noqa: E402

DEVSET = REPO / "benchmarks" / "data" / "devset.jsonl"
FULL = "full"  # whole-document ICL: the ceiling
BUCKETS = ("beyond-direct", "beyond-paraphrase", "beyond-squad", "inside")


def bucket(q: dict) -> str:
    if q["where"] == "inside":
        return "inside"
    return f"beyond-{q['kind']}" if q["kind"] in ("direct", "paraphrase") else "beyond-squad"


def load_devset(path: Path, docs: str | None, styles: str | None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if styles:
        wanted = set(styles.split(","))
        rows = [r for r in rows if r["style"] in wanted]
    if docs:
        if docs.isdigit():  # the first N, taken round-robin over styles so a subset still mixes kinds
            by_style: dict[str, list[dict]] = defaultdict(list)
            for r in rows:
                by_style[r["style"]].append(r)
            mixed = [r for group in zip(*[iter(v) for v in by_style.values()]) for r in group] if by_style else []
            rest = [r for r in rows if r not in mixed]
            rows = (mixed + rest)[: int(docs)]
        else:
            ids = docs.split(",")
            rows = [r for r in rows if r["id"] in ids]
    return rows


def configure(engine: LiftEngine | None, overrides: dict, store: AdapterStore) -> LiftEngine:
    cfg = build_config(None, overrides)
    if engine is None:
        return LiftEngine.from_config(cfg, store=store)
    engine.detach()  # keep the base model resident; only the settings change
    engine.config = resolve_config(cfg, num_params=engine.loaded.num_params, max_positions=engine.loaded.max_positions,
                                   on_cuda=engine.loaded.device.type == "cuda")
    engine.store = store
    return engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devset", type=Path, default=DEVSET)
    parser.add_argument("--docs", help="a number (the first N, mixing styles) or comma-separated document ids")
    parser.add_argument("--styles", help="only these styles (narrative,encyclopedic,handbook,interview,table,squad)")
    parser.add_argument("--qa", default="rules", help="auxiliary QA generators to compare (e.g. none,rules)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--adapter", default="lora")
    parser.add_argument("--context-window", type=int, default=128)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=JSON",
                        help="extra config override, e.g. aux_qa.max_pairs_per_sentence=4 (repeatable)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write every answer as JSON here (rewritten after each document)")
    parser.add_argument("--store", help="keep the adapters in this store (default: a new temporary one per configuration); "
                        "a later run with the same store and training settings answers with them instead of absorbing again, "
                        "so settings of answering alone (inference.*, --modes) are compared without training")
    parser.add_argument("--modes", default=",".join(MODES), help="answer modes to compare (whole-document icl is always added)")
    parser.add_argument("--shard", default="0/1", metavar="I/N", help="only every N-th document, starting at the I-th")
    parser.add_argument("--tables", type=Path, nargs="+", metavar="OUT_JSON",
                        help="print the tables of earlier --out files (e.g. one per shard) and exit")
    args = parser.parse_args()
    modes = parse_modes(args.modes)
    if args.tables:
        results = [row for path in args.tables for row in json.loads(path.read_text())]
        print_tables(results, args.context_window, tuple(m for m in MODES if any(m in r["hits"] for r in results)))
        return
    torch.set_num_threads(args.threads)
    shard, _, shards = args.shard.partition("/")
    docs = load_devset(args.devset, args.docs, args.styles)[int(shard) :: int(shards)]
    extra: dict = {}
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, field = key.partition(".")
        extra.setdefault(section, {})[field] = json.loads(value)

    engine = None
    baseline: dict[tuple[str, int], dict] = {}  # (doc id, question index) -> answers of the modes without adapter
    results = []
    for qa in args.qa.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            overrides = {
                "segments": {"context_window": args.context_window},
                "adapter": {"kind": args.adapter},
                "aux_qa": {"generator": qa},
                "train": {"seed": seed},
                "inference": {"max_new_tokens": 32},
                **({"model": {"name_or_path": args.model}} if args.model else {}),
            }
            for section, fields in extra.items():
                overrides.setdefault(section, {}).update(fields)
            store = AdapterStore(args.store or tempfile.mkdtemp(prefix="lift-ray-quality-"))
            engine = configure(engine, overrides, store)
            for doc in docs:
                start = time.perf_counter()
                absorbed = engine.absorb(doc["input"], progress=False)
                absorb_s = time.perf_counter() - start
                reused = absorbed.status == "already_absorbed"
                if reused:  # the stored adapter's own record: its training time and pairs
                    absorb_s = absorbed.training.seconds
                    n_pairs = store.manifest(absorbed.doc_id, absorbed.variant).num_qa_pairs
                else:
                    n_pairs = len(absorbed.qa_pairs)
                full_window = doc["num_tokens"] + 16
                row = {"doc": doc["id"], "style": doc["style"], "qa": qa, "seed": seed, "absorb_s": round(absorb_s, 1),
                       "reused": reused, "qa_pairs": n_pairs, "epochs": absorbed.training.epochs,
                       "computed_tokens": absorbed.training.computed_tokens, "hits": defaultdict(lambda: defaultdict(int)),
                       "totals": defaultdict(int), "answers": []}
                for i, q in enumerate(doc["qa_pairs"]):
                    b = bucket(q)
                    row["totals"][b] += 1
                    for mode in (*modes, FULL):
                        if mode == FULL or not uses_adapter(mode):
                            key = (doc["id"], i, mode)
                            if key not in baseline:
                                window = full_window if mode == FULL else None
                                baseline[key] = engine.answer(q["Q"], absorbed.doc_id, "icl" if mode == FULL else mode,
                                                              context_window=window).answer
                            answer = baseline[key]
                        else:
                            answer = engine.answer(q["Q"], absorbed.doc_id, mode).answer
                        ok = bool(contains_answer(answer, q["A"]))
                        row["hits"][mode][b] += ok
                        row["answers"].append({"q": q["Q"], "bucket": b, "mode": mode, "ok": ok, "answer": answer, "ref": q["A"]})
                engine.detach()
                results.append(row)
                print(json.dumps({k: row[k] for k in ("doc", "qa", "seed", "absorb_s", "qa_pairs", "epochs", "computed_tokens")}
                                 | {m: dict(row["hits"][m]) for m in (*modes, FULL)}), file=sys.stderr, flush=True)
                if args.out:
                    args.out.write_text(json.dumps(results, indent=1, default=dict))
    print_tables(results, args.context_window, modes)


def _cell(hits: dict, totals: dict, buckets) -> str:
    return " · ".join(f"{hits.get(b, 0)}/{totals[b]}" for b in buckets if totals.get(b))


def print_tables(results: list[dict], window: int, answer_modes: tuple[str, ...]) -> None:
    modes = (*answer_modes, FULL)
    titles = {**MODE_TITLES, FULL: "whole doc (ceiling)"}
    print(f"\nPer document, W={window}: hits beyond (direct · paraphrased, or SQuAD) · inside\n")
    print("| document | QA | seed | pairs | absorb s | " + " | ".join(titles[m] for m in modes) + " |")
    print("|---|---|---|---|---|" + "---|" * len(modes))
    for r in results:
        buckets = [b for b in BUCKETS if r["totals"].get(b)]
        cells = " | ".join(_cell(r["hits"][m], r["totals"], buckets) for m in modes)
        print(f"| {r['doc']} | {r['qa']} | {r['seed']} | {r['qa_pairs']} | {r['absorb_s']} | {cells} |")
    for first_words in (None, STATED_WORDS):
        scored = [{**r, "hits": _hits(r, first_words)} for r in results]
        score = "answer anywhere in the reply" if first_words is None else f"answer in the reply's first {first_words} words"
        print(f"\nPer style (all documents and seeds of each configuration), % of questions answered; {score}\n")
        print("| style | QA | bucket | n | " + " | ".join(titles[m] for m in modes) + " |")
        print("|---|---|---|---|" + "---|" * len(modes))
        groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for r in scored:
            groups[(r["style"], r["qa"])].append(r)
        for (style, qa), rows in sorted(groups.items()):
            for b in BUCKETS:
                n = sum(r["totals"].get(b, 0) for r in rows)
                if not n:
                    continue
                cells = " | ".join(f"{100 * sum(r['hits'][m].get(b, 0) for r in rows) / n:.0f}" for m in modes)
                print(f"| {style} | {qa} | {b} | {n} | {cells} |")
        fewer = [r["doc"] + f" ({r['qa']}, seed {r['seed']})" for r in scored
                 if r["hits"]["lift+icl"].get("inside", 0) < r["hits"]["icl"].get("inside", 0)]
        print(f"\nDocuments where LIFT+ICL answers fewer inside-window questions than ICL ({score}): {', '.join(fewer) or 'none'}")


def _hits(row: dict, first_words: int | None) -> dict:
    """Hits per mode and bucket, rescored from the row's answers (tables written before a score existed too)."""
    hits: dict = defaultdict(lambda: defaultdict(int))
    for a in row["answers"]:
        hits[a["mode"]][a["bucket"]] += bool(contains_answer(a["answer"], a["ref"], first_words))
    return hits


if __name__ == "__main__":
    main()
