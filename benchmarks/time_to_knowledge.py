"""Time to knowledge: seconds from the start of an absorb until the adapter answers k of the
document's beyond-window questions in LIFT+ICL mode, for the default schedule vs the previous
fixed one, in one run.

After every epoch the absorb pauses (the pause is not counted) and the adapter being trained
answers every question of the document with greedy generation, as ``lift-ray ask`` would; an
epoch's time is the absorb's wall time up to that epoch's end (QA generation, sample building and
the stop rule's own check included). The variants absorb each document one after the other, their
order alternating from document to document, so a busy machine slows both alike.

    python benchmarks/time_to_knowledge.py                                # the sample document, k=3
    python benchmarks/time_to_knowledge.py --data benchmarks/data/devset.jsonl --docs 4 --k 2
    python benchmarks/time_to_knowledge.py --variant 'bf16={"train": {"autocast": "bfloat16"}}'

Variants: ``previous`` is the small profile before the stop rule (3 epochs on segments, then 5 on
segments + QA pairs in the head…tail view, every epoch run, fp32, 4 samples per step whatever their
length), ``default`` is what the profile picks now; ``--variant NAME=JSON`` adds config overrides to
compare (``--variants`` picks which run). A variant whose ``model.dtype`` differs from the loaded
model's gets the resident model cast to it (exact for the embedded model, whose weights ship in bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lift_ray.config import build_config, deep_merge, resolve_config  # noqa: E402
from lift_ray.demo import is_correct, sample_document, sample_questions  # noqa: E402
from lift_ray.infer import LiftEngine, Question  # noqa: E402
from lift_ray.store import AdapterStore  # noqa: E402

MODE = "lift+icl"
PROMPT_MODE = "icl"  # the same prompt as lift+icl, preparable before the adapter is in the store
# The small profile before the stop rule (README "Choosing the defaults"): every epoch runs.
PREVIOUS = {
    "model": {"dtype": "float32"},
    "aux_qa": {"stage1_epochs": 3, "stage2_epochs": 5, "views": ["head_tail"]},
    "train": {"early_stop": False, "samples_per_step": 4, "step_tokens": 0, "learning_rate": 1e-3, "lr_schedule": "constant", "autocast": "none"},
}
VARIANTS = {"previous": PREVIOUS, "default": {}}


def documents(args, engine: LiftEngine) -> list[dict]:
    """[{name, text, questions: [{question, where, ok(answer) -> bool}]}]: the sample, then eval-set documents."""
    docs = []
    if not args.no_sample:
        qs = [{"question": q["question"], "where": q["where"], "keywords": q["keywords"]} for q in sample_questions()]
        docs.append({"name": "sample", "text": sample_document(), "questions": qs})
    for path in args.data or []:
        from lift_ray.evaluate.data import evidence_spans, load_eval_set, locate, view_char_ranges

        window = engine.config.segments.context_window
        for doc in load_eval_set(path)[: args.docs]:
            head_end, tail_start = view_char_ranges(doc.text, engine.loaded.tokenizer, window, engine.config.segments.mixin)
            qs = []
            for q in doc.questions:
                where = locate(evidence_spans(doc.text, q), head_end, tail_start)
                if where in ("beyond", "inside"):
                    qs.append({"question": q.question, "where": where, "answers": q.answers})
            docs.append({"name": doc.key, "text": doc.text, "questions": qs})
    return docs


def correct(q: dict, answer: str) -> bool:
    if "keywords" in q:
        return is_correct(answer, q["keywords"])
    from lift_ray.evaluate.metrics import contains_answer

    return contains_answer(answer, q["answers"]) > 0


def answer_now(engine: LiftEngine, text: str, question: str) -> str:
    """Greedy LIFT+ICL answer with whatever adapter is attached to the base model right now.

    The store has no adapter yet, so the prompt is prepared as ``icl`` (LIFT+ICL reads the same
    head…tail prompt) and generated with the engine's own settings by the model being trained.
    """
    prepared = engine.prepare(Question(question=question, doc=text, mode=PROMPT_MODE))
    with torch.inference_mode():
        out = engine.loaded.model.generate(**engine._generate_kwargs([prepared]))
    ids, _ = engine._finish(out[0, len(prepared.prompt):].tolist(), prepared.max_new_tokens)
    return engine.loaded.tokenizer.decode(ids, skip_special_tokens=True).strip()


def run_one(engine: LiftEngine, base_cfg, overrides: dict, doc: dict, k: int) -> dict:
    cfg = resolve_config(
        build_config(None, deep_merge(base_cfg.model_dump(mode="json"), overrides)),
        num_params=engine.loaded.num_params, max_positions=engine.loaded.max_positions,
        on_cuda=engine.loaded.device.type == "cuda",
    )
    engine.config = cfg
    engine.store = AdapterStore(tempfile.mkdtemp(prefix="lift-ray-ttk-"))
    dtype = getattr(torch, cfg.model.dtype or "float32")
    if engine.loaded.model.dtype != dtype:
        engine.loaded.model.to(dtype)
    beyond = [q for q in doc["questions"] if q["where"] == "beyond"]
    inside = [q for q in doc["questions"] if q["where"] == "inside"]
    curve: list[dict] = []
    paused = 0.0

    def on_epoch(record) -> None:
        nonlocal paused
        at = time.perf_counter() - start - paused
        t = time.perf_counter()
        hits = {name: sum(correct(q, answer_now(engine, doc["text"], q["question"])) for q in qs)
                for name, qs in (("beyond", beyond), ("inside", inside))}
        curve.append({"epoch": record.epoch, "seconds": round(at, 1), **hits,
                      "check": record.check.answer_accuracy if record.check else None})
        print(f"    epoch {record.epoch} ({record.stage}) {at:6.1f} s: beyond {hits['beyond']}/{len(beyond)}, "
              f"inside {hits['inside']}/{len(inside)}, check {curve[-1]['check']}", file=sys.stderr, flush=True)
        paused += time.perf_counter() - t

    start = time.perf_counter()
    result = engine.absorb(doc["text"], progress=False, force=True, on_epoch=on_epoch)
    absorb_s = time.perf_counter() - start - paused
    reached = next((c["seconds"] for c in curve if c["beyond"] >= k), None)
    return {
        "absorb_s": round(absorb_s, 1),
        "epochs": result.training.epochs,
        "computed_tokens": result.training.computed_tokens,
        "stop_reason": result.training.stop_reason,
        "time_to_k_s": reached,
        "final_beyond": curve[-1]["beyond"],
        "final_inside": curve[-1]["inside"],
        "n_beyond": len(beyond),
        "n_inside": len(inside),
        "curve": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", help="an eval set (JSONL, lift-ray eval's format); repeatable")
    parser.add_argument("--docs", type=int, default=2, help="documents taken from each --data set")
    parser.add_argument("--no-sample", action="store_true", help="leave out the shipped sample document")
    parser.add_argument("--k", type=int, default=3, help="beyond-window questions to answer (capped at the document's count)")
    parser.add_argument("--context-window", type=int, default=128)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON", help="another config to compare")
    parser.add_argument("--variants", default=None, help="which variants run, comma separated (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the rows (with per-epoch curves) as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = dict(VARIANTS)
    for spec in args.variant:
        name, _, raw = spec.partition("=")
        variants[name] = json.loads(raw)
    names = args.variants.split(",") if args.variants else list(variants)

    base = build_config(None, {"segments": {"context_window": args.context_window}, "inference": {"max_new_tokens": 32}})
    engine = LiftEngine.from_config(base, store=AdapterStore(tempfile.mkdtemp(prefix="lift-ray-ttk-")))
    print(f"torch threads {torch.get_num_threads()}, load average at start {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs", file=sys.stderr)
    rows = []
    for i, doc in enumerate(documents(args, engine)):
        n_beyond = sum(q["where"] == "beyond" for q in doc["questions"])
        if not n_beyond:
            print(f"{doc['name']}: no beyond-window question, skipped", file=sys.stderr)
            continue
        k = min(args.k, n_beyond)
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            print(f"{doc['name']} / {name} (k={k}):", file=sys.stderr, flush=True)
            row = {"doc": doc["name"], "variant": name, "k": k, **run_one(engine, base, variants[name], doc, k),
                   "load_avg": round(os.getloadavg()[0], 1)}
            rows.append(row)
            print(json.dumps({x: v for x, v in row.items() if x != "curve"}), file=sys.stderr, flush=True)

    print(f"\nLIFT+ICL, W={args.context_window}, {args.threads} torch threads; time to k beyond-window answers "
          "(absorb wall time, evaluation pauses excluded)\n")
    print("| document | variant | time to k s | absorb s | epochs | stop | beyond | inside |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['doc']} | {r['variant']} | {r['time_to_k_s'] if r['time_to_k_s'] is not None else 'never'} | "
              f"{r['absorb_s']} | {r['epochs']} | {r['stop_reason']} | {r['final_beyond']}/{r['n_beyond']} | "
              f"{r['final_inside']}/{r['n_inside']} |")
    if "previous" in names and len(names) > 1:
        for name in [n for n in names if n != "previous"]:
            pairs = [(a, b) for a in rows for b in rows if a["doc"] == b["doc"] and a["variant"] == "previous" and b["variant"] == name]
            absorb_ratio = sum(a["absorb_s"] for a, _ in pairs) / max(sum(b["absorb_s"] for _, b in pairs), 1e-9)
            reached = [(a, b) for a, b in pairs if a["time_to_k_s"] is not None and b["time_to_k_s"] is not None]
            line = f"\n{name} vs previous: absorb {absorb_ratio:.2f}x faster"
            if reached:
                ttk = sum(a["time_to_k_s"] for a, _ in reached) / sum(b["time_to_k_s"] for _, b in reached)
                line += f", time to knowledge {ttk:.2f}x faster ({len(reached)} of {len(pairs)} documents reached k in both)"
            beyond = (sum(a["final_beyond"] for a, _ in pairs), sum(b["final_beyond"] for _, b in pairs))
            inside = (sum(a["final_inside"] for a, _ in pairs), sum(b["final_inside"] for _, b in pairs))
            print(line + f"; final beyond {beyond[0]} -> {beyond[1]}, inside {inside[0]} -> {inside[1]}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
