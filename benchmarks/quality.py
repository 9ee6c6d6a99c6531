"""Answer quality on the beyond-window fact test: adapter kind × auxiliary QA × mode, in one run.

Each configuration absorbs the shipped fictional sample document (about 6x a 128-token window)
with the default settings except the two varied here, then answers the sample questions: five
whose facts lie outside the head+tail window ("beyond") and two inside it ("inside"). Scoring is
keyword recall. `icl` does not depend on the adapter, so it is the same in every row.

    python benchmarks/quality.py                                   # the full table (~10-15 min on 2 cores)
    python benchmarks/quality.py --adapters lora --qa none,rules --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lift_ray.config import build_config  # noqa: E402
from lift_ray.demo import is_correct, sample_document, sample_questions  # noqa: E402
from lift_ray.infer import LiftEngine  # noqa: E402
from lift_ray.store import AdapterStore  # noqa: E402

MODES = ("icl", "lift", "lift+icl")


def evaluate(engine: LiftEngine, doc_id: str) -> dict:
    scores = {mode: {"beyond": 0, "inside": 0} for mode in MODES}
    answers = []
    for q in sample_questions():
        for mode in MODES:
            ans = engine.answer(q["question"], doc_id, mode)
            ok = is_correct(ans.answer, q["keywords"])
            scores[mode][q["where"]] += ok
            answers.append({"mode": mode, "where": q["where"], "question": q["question"], "ok": ok, "answer": ans.answer})
    return {"scores": scores, "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", default="gated_memory,lora")
    parser.add_argument("--qa", default="none,rules", help="auxiliary QA generators to compare")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--context-window", type=int, default=128)
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the per-question answers as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_beyond = sum(q["where"] == "beyond" for q in sample_questions())
    n_inside = sum(q["where"] == "inside" for q in sample_questions())
    rows, details = [], []
    engine = None
    for kind in args.adapters.split(","):
        for qa in args.qa.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                overrides = {
                    "segments": {"context_window": args.context_window},
                    "adapter": {"kind": kind},
                    "aux_qa": {"generator": qa},
                    "train": {"seed": seed},
                    "inference": {"max_new_tokens": 32},
                }
                if args.model:
                    overrides["model"] = {"name_or_path": args.model}
                cfg = build_config(None, overrides)
                store = AdapterStore(tempfile.mkdtemp(prefix="lift-ray-quality-"))
                if engine is None:
                    engine = LiftEngine.from_config(cfg, store=store)
                else:  # keep the base model resident; only the settings change
                    from lift_ray.config import resolve_config

                    engine.detach()
                    engine.config = resolve_config(cfg, num_params=engine.loaded.num_params,
                                                   max_positions=engine.loaded.max_positions,
                                                   on_cuda=engine.loaded.device.type == "cuda")
                    engine.store = store
                start = time.perf_counter()
                result = engine.absorb(sample_document(), progress=False)
                absorb_s = time.perf_counter() - start
                ev = evaluate(engine, result.doc_id)
                engine.detach()
                s = ev["scores"]
                row = {"adapter": kind, "aux_qa": qa, "seed": seed, "absorb_s": round(absorb_s, 1),
                       "qa_pairs": len(result.qa_pairs), **{f"{m}_beyond": s[m]["beyond"] for m in MODES},
                       **{f"{m}_inside": s[m]["inside"] for m in MODES}}
                rows.append(row)
                details.append({**row, "answers": ev["answers"]})
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"\nbeyond-window facts (of {n_beyond}) / inside-window facts (of {n_inside}), W={args.context_window}\n")
    print("| adapter | aux QA | seed | QA pairs | absorb s | icl | lift | lift+icl |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = " | ".join(f"{r[f'{m}_beyond']}/{n_beyond} · {r[f'{m}_inside']}/{n_inside}" for m in MODES)
        print(f"| {r['adapter']} | {r['aux_qa']} | {r['seed']} | {r['qa_pairs']} | {r['absorb_s']} | {cells} |")
    if args.out:
        Path(args.out).write_text(json.dumps(details, indent=2))


if __name__ == "__main__":
    main()
