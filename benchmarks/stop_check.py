"""The stop rule's check, full vs reusing the epoch's training forwards, paired on the same adapters.

Every document is absorbed once with the default config (``train.check_reuses_training`` on). At each
check the full check (every QA pair forwarded) runs first on the adapter as it stands, then the
check the absorb uses; both are timed, and their stop decisions (share known ≥ ``stop_accuracy``)
must agree. The full check's time is then taken out of the absorb's, so the absorb time printed is
what the default costs; the absorb it replaced cost that plus the difference of the two checks.

    python benchmarks/stop_check.py                                   # the sample document
    python benchmarks/stop_check.py --data benchmarks/data/devset.jsonl --docs 3 --no-sample
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lift_ray.train  # noqa: E402
from lift_ray.config import build_config  # noqa: E402
from lift_ray.demo import sample_document  # noqa: E402
from lift_ray.infer import LiftEngine  # noqa: E402
from lift_ray.store import AdapterStore  # noqa: E402


class PairedChecks:
    """Stands in for :func:`lift_ray.train.knowledge_check` while in a ``with`` block (the trainer looks it
    up at call time): the full check, then the absorb's own, on the same weights; records both and returns
    the absorb's."""

    def __init__(self, stop_accuracy: float):
        self.real = lift_ray.train.knowledge_check
        self.stop_accuracy = stop_accuracy
        self.rows: list[dict] = []

    def __enter__(self) -> "PairedChecks":
        lift_ray.train.knowledge_check = self
        return self

    def __exit__(self, *exc) -> None:
        lift_ray.train.knowledge_check = self.real

    def __call__(self, module, samples, **kwargs):
        start = time.perf_counter()
        full = self.real(module, samples, epoch=kwargs.get("epoch", 0), autocast=kwargs.get("autocast"))
        full_s = time.perf_counter() - start
        start = time.perf_counter()
        used = self.real(module, samples, **kwargs)
        used_s = time.perf_counter() - start
        stop_full, stop_used = full.answer_accuracy >= self.stop_accuracy, used.answer_accuracy >= self.stop_accuracy
        self.rows.append({"epoch": used.epoch, "full": full.answer_accuracy, "used": used.answer_accuracy,
                          "forwarded": used.forwarded, "pairs": used.pairs, "full_s": round(full_s, 2),
                          "used_s": round(used_s, 2), "same_stop": stop_full == stop_used})
        return used


def document_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the absorb benchmarks (this one and ``packing.py``): which documents, W, threads, output."""
    parser.add_argument("--data", action="append", help="an eval set (JSONL, lift-ray eval's format); repeatable")
    parser.add_argument("--docs", type=int, default=2, help="documents taken from each --data set")
    parser.add_argument("--no-sample", action="store_true", help="leave out the shipped sample document")
    parser.add_argument("--context-window", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the rows as JSON here")


@contextlib.contextmanager
def default_engine(args, prefix: str) -> Iterator[LiftEngine]:
    """The default config at ``--context-window`` with ``--threads`` torch threads, over a temporary store."""
    torch.set_num_threads(args.threads)
    cfg = build_config(None, {"segments": {"context_window": args.context_window}})
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield LiftEngine.from_config(cfg, store=AdapterStore(tmp))


def documents(args) -> list[tuple[str, str]]:
    docs = [] if args.no_sample else [("sample", sample_document())]
    for path in args.data or []:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        docs += [(r.get("id") or r.get("title") or f"doc-{i}", r["input"]) for i, r in enumerate(rows[: args.docs])]
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    document_arguments(parser)
    args = parser.parse_args()
    with default_engine(args, "lift-ray-stop-check-") as engine:
        if not engine.config.train.check_reuses_training:
            raise SystemExit("the default config does not reuse the training forwards: nothing to compare")
        results = []
        with PairedChecks(engine.config.train.stop_accuracy) as paired:
            for name, text in documents(args):
                paired.rows.clear()
                result = engine.absorb(text, progress=False)
                training = result.training
                full_s = sum(r["full_s"] for r in paired.rows)
                used_s = sum(r["used_s"] for r in paired.rows)
                absorb_s = result.seconds - full_s  # the paired full checks ran inside the absorb
                results.append({"doc": name, "epochs": training.epochs, "stop": training.stop_reason,
                                "checks": list(paired.rows), "full_s": round(full_s, 2), "used_s": round(used_s, 2),
                                "absorb_s": round(absorb_s, 2), "previous_absorb_s": round(absorb_s - used_s + full_s, 2)})
    print("| document | epochs | checks | pairs forwarded per check | check s, full → reusing | absorb s, full check → reusing | same stops |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        fwd = " · ".join(f"{c['forwarded']}/{c['pairs']}" for c in r["checks"])
        print(f"| {r['doc']} | {r['epochs']} ({r['stop']}) | {len(r['checks'])} | {fwd} | {r['full_s']:.1f} → {r['used_s']:.1f} "
              f"| {r['previous_absorb_s']:.1f} → {r['absorb_s']:.1f} | {all(c['same_stop'] for c in r['checks'])} |")
    full = sum(r["full_s"] for r in results)
    used = sum(r["used_s"] for r in results)
    before = sum(r["previous_absorb_s"] for r in results)
    after = sum(r["absorb_s"] for r in results)
    same = all(c["same_stop"] for r in results for c in r["checks"])
    print(f"checks {full / max(used, 1e-9):.2f}x cheaper ({full:.1f} s -> {used:.1f} s), absorb {before / max(after, 1e-9):.2f}x "
          f"faster ({before:.1f} s -> {after:.1f} s); stop decisions {'identical' if same else 'DIFFER'}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
