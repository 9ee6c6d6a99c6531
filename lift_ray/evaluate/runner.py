"""Run an evaluation: absorb every document, answer every question in every mode, score, summarise.

One resident :class:`~lift_ray.infer.LiftEngine` answers everything in this process. All absorbs go
through :func:`absorb_documents`. The output directory holds::

    run.json            the settings of the run (a resumed run must match them)
    absorb.jsonl        one line per document absorbed by this run: id, status, tokens, seconds
    predictions.jsonl   one line per (document, question, mode): answer, metrics, where the evidence lies
    summary.md          the table per mode (all questions, then beyond / inside the window)
    summary.json        the same numbers

A rerun with the same ``out_dir`` skips every (document, question, mode) already in
``predictions.jsonl``; a document with nothing left to answer is not absorbed again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lift_ray.aux_qa import generator_revision
from lift_ray.evaluate.data import EvalDocument, EvalError, evidence_spans, locate, view_char_ranges
from lift_ray.evaluate.metrics import LLMJudge, score_answer
from lift_ray.modes import MODES, ModeError, parse_modes, uses_adapter

METRICS = ("em", "f1", "rouge_l", "contains", "contains_10w", "contains_folded")
METRIC_NAMES = {"em": "EM", "f1": "F1", "rouge_l": "ROUGE-L", "contains": "contains answer", "contains_10w": "contains answer in first 10 words", "contains_folded": "contains answer, forms folded", "judge": "judge (1-10)"}
WHERE_ORDER = ("beyond", "inside", "partial", "unknown")


def data_fingerprint(docs: Sequence[EvalDocument]) -> str:
    """Hash of the documents and questions: a resumed run must be over the same set."""
    payload = [[d.key, d.text, [[q.question, q.answers] for q in d.questions]] for d in docs]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode()).hexdigest()[:16]


def run_settings(engine, docs: Sequence[EvalDocument], modes: Sequence[str], judge: LLMJudge | None) -> dict[str, Any]:
    """What makes two runs comparable; stored in run.json and checked on resume."""
    cfg = engine.config
    return {
        "data": data_fingerprint(docs),
        "modes": list(modes),
        "model": engine.loaded.model_id,
        "weights_hash": engine.loaded.weights_hash,
        "training": cfg.training_hash(),
        "qa_generator": generator_revision(cfg.aux_qa),
        "context_window": cfg.segments.context_window,
        "inference": cfg.inference.model_dump(mode="json", exclude={"mode"}),
        "judge": judge.identity() if judge else None,
    }


def check_modes(modes: Sequence[str]) -> list[str]:
    try:
        return list(parse_modes(modes))
    except ModeError as exc:
        raise EvalError(str(exc)) from None


# --- absorbing ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Absorbed:
    doc_id: str
    status: str  # "absorbed" | "already_absorbed"
    num_tokens: int | None
    seconds: float
    num_qa_pairs: int | None = None  # not reported by bulk workers


def absorb_documents(
    engine,
    docs: Sequence[EvalDocument],
    *,
    workers: int = 1,
    progress: bool = True,
    on_absorbed: Callable[[str, Absorbed], None] | None = None,
) -> dict[str, Absorbed]:
    """Absorb ``docs`` into ``engine.store``: the one place an evaluation trains adapters.

    With one worker the resident engine absorbs them one after another; with more,
    :func:`lift_ray.bulk.run_bulk` absorbs them on Ray Train workers into the same store, with the
    engine's resolved config, so the adapters are the variant the engine then attaches.

    Args:
        engine: the resident engine.
        docs: the documents still to be answered.
        workers: Ray Train workers for the absorbs (1: none, in this process).
        progress: progress bars on stderr.
        on_absorbed: called with (document key, record) as each document is done, so an
            interrupted run keeps the record of what it trained.

    Returns:
        document key -> what the absorb did (``already_absorbed`` costs nothing).

    Raises:
        EvalError: a document failed on the Ray workers (a rerun resumes).
    """
    if workers > 1:
        return _absorb_on_ray(engine, docs, workers, progress, on_absorbed)
    out = {}
    for i, doc in enumerate(docs, 1):
        if progress:
            print(f"lift-ray: eval: absorbing document {i}/{len(docs)} ({doc.key})", file=sys.stderr, flush=True)
        result = engine.absorb(doc.text, progress=progress)
        out[doc.key] = Absorbed(result.doc_id, result.status, result.num_tokens, result.seconds, len(result.qa_pairs))
        if on_absorbed:
            on_absorbed(doc.key, out[doc.key])
    return out


def _absorb_on_ray(engine, docs, workers: int, progress: bool, on_absorbed) -> dict[str, Absorbed]:
    from lift_ray.bulk import BulkRunError, absorb_with_workers  # imports Ray only when called
    from lift_ray.documents import DocumentInput

    inputs = [DocumentInput(d.text, alias=d.key, title=d.title, source="eval") for d in docs]
    try:
        by_id = absorb_with_workers(engine, inputs, workers, progress=progress)
    except BulkRunError as exc:
        raise EvalError(f"{exc}; rerun with the same --out to resume") from None
    out = {}
    for doc, item in zip(docs, inputs):
        record = by_id[item.doc_id]  # duplicates were absorbed once, under the first copy's id
        out[doc.key] = Absorbed(
            item.doc_id,
            "absorbed" if record["status"] == "absorbed" else "already_absorbed",
            record.get("num_tokens"),
            record.get("seconds") or 0.0,
        )
        if on_absorbed:
            on_absorbed(doc.key, out[doc.key])
    return out


# --- resume ---------------------------------------------------------------------------------------


def _read_rows(path: Path) -> list[dict]:
    """Rows of predictions.jsonl; a torn last line (a run killed mid-write) is dropped from the file."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if n < len(lines):
                raise EvalError(f"{path}:{n}: malformed line in the middle of the file; use another --out") from None
            path.write_text("".join(lines[:-1]), encoding="utf-8")
            return rows
    if lines and not lines[-1].endswith("\n"):  # cut just before its newline: whole, but the next row must not join it
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("\n")
    return rows


def _check_resume(out_dir: Path, settings: dict) -> None:
    run_file = out_dir / "run.json"
    if run_file.is_file():
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))["settings"]
        except (ValueError, KeyError, TypeError):
            raise EvalError(f"{run_file} is not a lift-ray eval run file; use another --out") from None
        changed = [k for k in settings if previous.get(k) != settings[k]]
        if changed:
            raise EvalError(
                f"{out_dir} holds a run with other settings ({', '.join(changed)}); use another --out to start afresh"
            )
    elif (out_dir / "predictions.jsonl").exists():
        raise EvalError(f"{out_dir} has predictions.jsonl but no run.json; use another --out")


# --- the run --------------------------------------------------------------------------------------


def where_by_question(engine, doc: EvalDocument) -> list[str]:
    """Per question, "inside" or "beyond": where its evidence lies against the head…tail view ICL sees
    with this engine's window (what ``lift-ray eval`` buckets by; benchmarks reuse it)."""
    cfg = engine.config
    head_end, tail_start = view_char_ranges(doc.text, engine.loaded.tokenizer, cfg.segments.context_window, cfg.segments.mixin)
    return [locate(evidence_spans(doc.text, q), head_end, tail_start) for q in doc.questions]


def run_eval(
    engine,
    docs: Sequence[EvalDocument],
    out_dir: str | Path,
    *,
    modes: Sequence[str] = MODES,
    judge: LLMJudge | None = None,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Evaluate ``docs`` in ``modes`` with ``engine``, writing results under ``out_dir`` (resumable).

    Args:
        engine: a :class:`lift_ray.infer.LiftEngine` with its config resolved.
        docs: from :func:`lift_ray.evaluate.data.load_eval_set`.
        out_dir: where run.json, predictions.jsonl, absorb.jsonl and the summaries go.
        modes: any of icl, lift, lift+icl.
        judge: score every answer 1-10 with an LLM as well.
        workers: absorb on this many Ray Train workers (see :func:`absorb_documents`).
        progress: progress output on stderr.

    Returns:
        The summary (also written to summary.json).

    Raises:
        EvalError: unknown modes, or an ``out_dir`` holding a run with other settings.
    """
    from lift_ray.text import check_document_text

    modes = check_modes(modes)
    out_dir = Path(out_dir)
    settings = run_settings(engine, docs, modes, judge)
    if out_dir.exists() and not out_dir.is_dir():
        raise EvalError(f"--out {out_dir} is a file, not a directory")
    _check_resume(out_dir, settings)
    for doc in docs:  # a document the engine would refuse must fail now, before any training
        check_document_text(doc.text, engine.config.segments.max_document_chars, name=f"document {doc.key!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "run.json").write_text(json.dumps({"settings": settings}, indent=2) + "\n", encoding="utf-8")
    pred_path = out_dir / "predictions.jsonl"
    done = {(r["doc"], r["q_index"], r["mode"]) for r in _read_rows(pred_path)}
    todo = [d for d in docs if any((d.key, i, m) not in done for i in range(len(d.questions)) for m in modes)]
    if progress and len(todo) < len(docs):
        print(f"lift-ray: eval: resuming: {len(docs) - len(todo)} of {len(docs)} documents already answered",
              file=sys.stderr, flush=True)

    absorbed: dict[str, Absorbed] = {}
    if todo and any(uses_adapter(m) for m in modes):
        with open(out_dir / "absorb.jsonl", "a", encoding="utf-8") as fh:

            def record(key: str, rec: Absorbed) -> None:
                fh.write(json.dumps({"doc": key, **dataclasses.asdict(rec)}) + "\n")
                fh.flush()

            absorbed = absorb_documents(engine, todo, workers=workers, progress=progress, on_absorbed=record)

    with open(pred_path, "a", encoding="utf-8") as fh:
        for doc in todo:
            where = where_by_question(engine, doc)
            target = absorbed[doc.key].doc_id if doc.key in absorbed else doc.text
            for i, q in enumerate(doc.questions):
                for mode in modes:
                    if (doc.key, i, mode) in done:
                        continue
                    ans = engine.answer(q.question, target, mode)
                    row = {
                        "doc": doc.key,
                        "doc_id": ans.doc_id,
                        "title": doc.title,
                        "q_index": i,
                        "mode": mode,
                        "answered_as": ans.answered_as,
                        "where": where[i],
                        "question": q.question,
                        "answers": q.answers,
                        "prediction": ans.answer,
                        **score_answer(ans.answer, q.answers),
                        "judge": judge.score(q.question, q.answers, ans.answer) if judge else None,
                        "seconds": ans.seconds,
                        "prompt_tokens": ans.prompt_tokens,
                        "new_tokens": ans.new_tokens,
                    }
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                    fh.flush()  # a killed run resumes after the last whole line
            if progress:
                print(f"lift-ray: eval: answered {doc.key}", file=sys.stderr, flush=True)

    keys = {d.key for d in docs}
    rows = [r for r in _read_rows(pred_path) if r["doc"] in keys]
    absorb_rows = [json.loads(line) for line in (out_dir / "absorb.jsonl").read_text(encoding="utf-8").splitlines()] \
        if (out_dir / "absorb.jsonl").is_file() else []
    summary = summarise(rows, modes, absorb_rows, settings)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out_dir / "summary.md").write_text(summary_markdown(summary), encoding="utf-8")
    return summary


# --- summary --------------------------------------------------------------------------------------


def _means(rows: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {"questions": len(rows)}
    for m in METRICS:
        out[m] = round(100 * sum(r[m] for r in rows) / len(rows), 1) if rows else None
    judged = [r["judge"] for r in rows if r.get("judge") is not None]
    out["judge"] = round(sum(judged) / len(judged), 2) if judged else None
    out["answer_seconds"] = round(sum(r["seconds"] for r in rows), 1)
    # questions a mode answered as another (lift+rag as rag when its chunks do not back the adapter, ...)
    other = Counter(r["answered_as"] for r in rows if r.get("answered_as") not in (None, r["mode"]))
    out["answered_as_other"] = dict(sorted(other.items()))
    return out


def summarise(rows: list[dict], modes: Sequence[str], absorb_rows: list[dict], settings: dict) -> dict:
    """Mean metrics (x100; judge on its 1-10 scale) per mode, over all questions and per window position."""
    # predictions written before a metric existed are scored once from their text; stored scores stay
    rows = [r if all(m in r for m in METRICS) else {**score_answer(r["prediction"], r["answers"]), **r} for r in rows]
    table = []
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode]
        table.append({"mode": mode, "where": "all", **_means(mine)})
        for where in WHERE_ORDER:
            part = [r for r in mine if r["where"] == where]
            if part:
                table.append({"mode": mode, "where": where, **_means(part)})
    first = {}
    for rec in absorb_rows:  # a resumed run appends; count each document's first real absorb
        first.setdefault(rec["doc"], rec)
    trained = [r for r in first.values() if r["status"] == "absorbed"]
    return {
        "settings": settings,
        "documents": len({r["doc"] for r in rows}),
        "questions": len({(r["doc"], r["q_index"]) for r in rows}),
        "absorbed": len(trained),
        "absorb_seconds": round(sum(r["seconds"] for r in trained), 1),
        "absorb_tokens": sum(r["num_tokens"] or 0 for r in trained),
        "table": table,
    }


def summary_markdown(summary: dict) -> str:
    """The summary as a Markdown table, one row per mode and window position."""
    s = summary["settings"]
    judged = any(row["judge"] is not None for row in summary["table"])
    cols = [*METRICS, *(["judge"] if judged else [])]
    lines = [
        f"Model `{s['model']}`, window W = {s['context_window']} tokens, {summary['documents']} documents, "
        f"{summary['questions']} questions; absorbed {summary['absorbed']} documents "
        f"({summary['absorb_tokens']} tokens), {summary['absorb_seconds']} s of absorbing summed over documents.",
        "",
        "| mode | evidence | questions | " + " | ".join(METRIC_NAMES[c] for c in cols) + " | answer s | answered as another mode |",
        "|---|---|---|" + "---|" * len(cols) + "---|---|",
    ]
    for row in summary["table"]:
        cells = ["-" if row[c] is None else f"{row[c]:.1f}" if c != "judge" else f"{row[c]:.2f}" for c in cols]
        where = "all" if row["where"] == "all" else f"{row['where']} the window"
        other = ", ".join(f"{n} as {mode}" for mode, n in row.get("answered_as_other", {}).items()) or "-"
        lines.append(f"| {row['mode']} | {where} | {row['questions']} | " + " | ".join(cells) + f" | {row['answer_seconds']} | {other} |")
    return "\n".join(lines) + "\n"
