"""Seconds from the start of an absorb to the first answer about the document, against the absorb itself.

An absorb stores the document's text and retrieval index before it trains, so an engine that is
already running (a Serve replica, another process on the same store) answers questions about the
document from then on: ``lift+rag`` as ``rag`` (``answered_as_reason: no_adapter_yet``) until the
adapter is published, then with the adapter. This script loads the base model once, as a running
replica has, starts ``lift-ray absorb`` on the document in a subprocess (the absorbing worker), asks
the question every ``--poll`` seconds until an answer comes, waits for the absorb, asks again, and
prints both times and their ratio. The two processes share the machine, as a replica and an absorbing
actor do.

    python benchmarks/first_answer.py                     # the sample document, embedded SmolLM2, W = 128
    python benchmarks/first_answer.py --doc report.txt --question "Who signed it?" --threads 1
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def first_answer(engine, doc_id: str, question: str, mode: str, absorbing: subprocess.Popen, poll: float):
    """The first answer ``engine`` gives about ``doc_id`` while ``absorbing`` runs, and when it came.

    Raises:
        RuntimeError: the absorb ended in an error before any answer came.
    """
    from lift_ray.store import StoreError

    while True:
        try:
            return engine.answer(question, doc_id, mode), time.perf_counter()
        except StoreError:  # not stored yet
            if absorbing.poll() not in (None, 0):
                raise RuntimeError(f"the absorb failed (exit {absorbing.returncode})") from None
            time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--doc", help="document file (default: the shipped sample document)")
    parser.add_argument("--question", help="question (default: the sample's first)")
    parser.add_argument("--mode", default="lift+rag", help="mode asked (default: lift+rag)")
    parser.add_argument("--model", help="base model (default: the embedded SmolLM2)")
    parser.add_argument("--window", type=int, default=128, help="W in tokens (default: 128)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each process (default: 1)")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between tries (default: 0.5)")
    args = parser.parse_args(argv)

    import torch

    from lift_ray.config import build_config
    from lift_ray.demo import sample_document, sample_questions
    from lift_ray.infer import LiftEngine
    from lift_ray.store import doc_id_for
    from lift_ray.text import normalize_text

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="lift-ray-bench-first-"))
    doc = Path(args.doc) if args.doc else work / "sample_document.txt"
    if not args.doc:
        doc.write_text(sample_document(), encoding="utf-8")
    question = args.question or sample_questions()[0]["question"]
    store = str(work / "store")
    overrides = {"segments": {"context_window": args.window}, "store": {"uri": store}}
    if args.model:
        overrides["model"] = {"name_or_path": args.model}
    engine = LiftEngine.from_config(build_config(None, overrides))  # the running replica
    doc_id = doc_id_for(normalize_text(doc.read_text(encoding="utf-8")))

    cmd = [sys.executable, "-m", "lift_ray", "absorb", str(doc), "--store", store, "--context-window", str(args.window),
           "--threads", str(args.threads), "--quiet", *(["--model", args.model] if args.model else [])]
    log = open(work / "absorb.log", "w")
    start = time.perf_counter()
    absorbing = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        early, at = first_answer(engine, doc_id, question, args.mode, absorbing, args.poll)
        if absorbing.wait() != 0:
            raise RuntimeError(f"the absorb failed (exit {absorbing.returncode}); see {work / 'absorb.log'}")
    finally:
        if absorbing.poll() is None:
            absorbing.kill()
        log.close()
    absorbed = time.perf_counter()
    late = engine.answer(question, doc_id, args.mode)

    print(f"{engine.loaded.model_id}, W = {args.window}, {args.threads} thread(s) per process, question: {question!r}")
    print(f"{'':>24} | seconds after the absorb started | answered as (reason) | answer")
    for name, ans, t in (("first answer", early, at), ("adapter published", late, absorbed)):
        why = f" ({ans.answered_as_reason})" if ans.answered_as_reason else ""
        print(f"{name:>24} | {t - start:8.1f} | {ans.answered_as}{why} | {ans.answer[:90]!r}")
    print(f"first answer {(absorbed - start) / max(at - start, 1e-9):.1f}x sooner than the adapter")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
