"""Bulk absorption: many documents, W Ray Train workers that each keep the base model resident.

    driver: read + check input, config, model and store (fail fast) -> DocumentQueue actor
            -> TorchTrainer(W workers) ; progress bar from the queue's counters ; summary JSON
    worker: load the model once -> loop { lease -> absorb_document(claim=...) -> complete }

Documents are independent fine-tunes, so workers never synchronise gradients; the queue balances
long and short documents dynamically. Per-document results flow through the queue actor, not
``ray.train.report`` (which every worker would have to call equally often).

Exactly once. Documents are keyed by content hash: duplicates collapse in the driver, and a re-run
finds published documents in the store (skipped). A worker publishes only after the queue confirms
it still holds the document's lease (``claim``). When Ray Train replaces the worker group after a
failure, each new worker's ``join`` hands back to the queue whatever its rank's predecessor had in
flight, and the predecessor's lease can no longer be claimed. The store writes the manifest last,
so a worker killed mid-publish leaves nothing visible, and the retry finds either nothing (and
trains) or the complete entry (and skips).

Ray is imported inside functions (``lift_ray`` works without it); :class:`DocumentQueue` is plain
Python, wrapped with ``ray.remote`` at run time, so its rules are unit-tested directly.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
import threading
import time
import traceback
import uuid
from typing import Any, Callable

from lift_ray.config import ConfigError, LiftConfig
from lift_ray.documents import DocumentInput, InputFailure

RESULT_STATUSES = ("absorbed", "skipped", "failed")


# --- the queue ----------------------------------------------------------------------------------


class DocumentQueue:
    """Work queue shared by the workers of one bulk run (a Ray actor at run time).

    ``items`` are dicts with ``doc_id`` and ``text`` (a string, or an ObjectRef the worker resolves)
    plus optional ``alias``, ``title``, ``source``. Every item ends in exactly one result:
    absorbed, skipped (already in the store) or failed (with the reason).
    """

    def __init__(self, items: list[dict[str, Any]]):
        self._items = {item["doc_id"]: item for item in items}
        if len(self._items) != len(items):
            raise ValueError("duplicate doc_id in the queue (the driver de-duplicates first)")
        self._pending = collections.deque(self._items)
        self._leases: dict[str, dict[str, Any]] = {}  # doc_id -> {"worker", "claimed"}
        self._workers: dict[str, dict[str, Any]] = {}  # worker key -> rank, pid, node, load time, counts
        self._rank_holder: dict[int, str] = {}
        self._retired: set[str] = set()
        self._results: dict[str, dict[str, Any]] = {}
        self._attempts: collections.Counter[str] = collections.Counter()
        self._claims: collections.Counter[str] = collections.Counter()
        self._requeued = 0
        self._tokens_absorbed = 0
        self._started = time.time()

    # workers
    def join(self, worker: str, rank: int, pid: int, node: str, load_seconds: float) -> None:
        """A worker has loaded the model. A new worker on a rank retires the previous one of that rank."""
        previous = self._rank_holder.get(rank)
        if previous is not None and previous != worker:
            self._retire(previous)
        self._rank_holder[rank] = worker
        self._workers[worker] = {
            "rank": rank, "pid": pid, "node": node, "load_seconds": round(load_seconds, 3),
            "joined_at": round(time.time() - self._started, 3), "documents": 0,
        }

    def _retire(self, worker: str) -> None:
        self._retired.add(worker)
        for doc_id, lease in list(self._leases.items()):
            if lease["worker"] == worker:  # in flight on a worker that is gone: back to the front
                del self._leases[doc_id]
                self._pending.appendleft(doc_id)
                self._requeued += 1

    def lease(self, worker: str) -> dict[str, Any] | None:
        """The next document for ``worker``, or None when there is nothing left for it."""
        if worker in self._retired or worker not in self._workers or not self._pending:
            return None
        doc_id = self._pending.popleft()
        self._leases[doc_id] = {"worker": worker, "claimed": False}
        self._attempts[doc_id] += 1
        return dict(self._items[doc_id], attempt=self._attempts[doc_id])

    def claim(self, doc_id: str, worker: str) -> bool:
        """May ``worker`` publish ``doc_id`` now? True once per lease, only to the lease holder."""
        lease = self._leases.get(doc_id)
        if lease is None or lease["worker"] != worker or lease["claimed"]:
            return False
        lease["claimed"] = True
        self._claims[doc_id] += 1
        return True

    def complete(self, doc_id: str, worker: str, record: dict[str, Any]) -> bool:
        """Record the outcome of a lease; ignored (False) if the lease is no longer ``worker``'s."""
        lease = self._leases.get(doc_id)
        if lease is None or lease["worker"] != worker:
            return False
        del self._leases[doc_id]
        item = self._items[doc_id]
        self._results[doc_id] = {
            "doc_id": doc_id, "alias": item.get("alias"), "source": item.get("source"),
            "attempts": self._attempts[doc_id], "worker_rank": self._workers[worker]["rank"],
            "finished_at": round(time.time() - self._started, 3), **record,
        }
        self._workers[worker]["documents"] += 1
        if record.get("status") == "absorbed":
            self._tokens_absorbed += int(record.get("num_tokens") or 0)
        return True

    # driver
    def stats(self) -> dict[str, Any]:
        counts = collections.Counter(r["status"] for r in self._results.values())
        return {
            "total": len(self._items),
            "pending": len(self._pending),
            "in_flight": len(self._leases),
            **{status: counts.get(status, 0) for status in RESULT_STATUSES},
            "tokens_absorbed": self._tokens_absorbed,
            "seconds": round(time.time() - self._started, 3),
            "requeued": self._requeued,
            "model_loads": len(self._workers),
            "workers": {key: dict(w, retired=key in self._retired) for key, w in self._workers.items()},
            "leases": {doc_id: lease["worker"] for doc_id, lease in self._leases.items()},
        }

    def results(self) -> dict[str, Any]:
        return {"results": list(self._results.values()), "claims": dict(self._claims), "unfinished": list(self._pending) + list(self._leases)}


# --- the worker ---------------------------------------------------------------------------------


def worker_loop(job: dict[str, Any]) -> None:
    """Body of each Ray Train worker: load the base model once, then absorb leased documents."""
    import ray
    import ray.train
    import torch

    from lift_ray.text import DocumentError
    from lift_ray.infer import LiftEngine
    from lift_ray.store import AdapterStore

    queue = job["queue"]
    cfg = LiftConfig.model_validate(job["config"])
    torch.set_num_threads(job["threads"])
    rank = ray.train.get_context().get_world_rank()
    worker = f"{ray.get_runtime_context().get_node_id()[:12]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    engine = LiftEngine.from_config(cfg, AdapterStore(cfg.store.uri))
    ray.get(queue.join.remote(worker, rank, os.getpid(), ray.util.get_node_ip_address(), time.perf_counter() - start))

    def claim(doc_id: str) -> bool:
        return ray.get(queue.claim.remote(doc_id, worker))

    while (item := ray.get(queue.lease.remote(worker))) is not None:
        text = item["text"] if isinstance(item["text"], str) else ray.get(item["text"])
        try:
            result = engine.absorb(text, progress=False, alias=item.get("alias"), title=item.get("title"), claim=claim)
        except DocumentError as exc:
            record = {"status": "failed", "reason": str(exc)}
        except Exception as exc:  # one bad document must not stop the others; the traceback goes to the log
            traceback.print_exc()
            record = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        else:
            if result.status == "lease_lost":
                continue  # the queue gave this document to another worker; it is theirs to finish
            record = {
                "status": "absorbed" if result.status == "absorbed" else "skipped",
                "variant": result.variant,
                "num_tokens": result.num_tokens,
                "seconds": result.seconds,
                "tokens_per_second": result.training.tokens_per_second if result.training and result.status == "absorbed" else None,
            }
        ray.get(queue.complete.remote(item["doc_id"], worker, record))


# --- the driver ---------------------------------------------------------------------------------


@dataclasses.dataclass
class BulkSummary:
    """Outcome of a bulk run; ``to_json`` is what the CLI prints and stores under ``runs/``."""

    run_id: str
    store: str
    total_inputs: int
    absorbed: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    duplicates: list[dict[str, Any]]
    seconds: float
    model_loads: int
    requeued: int
    workers: int
    claims: dict[str, int] = dataclasses.field(default_factory=dict)
    worker_stats: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed

    def to_json(self) -> dict[str, Any]:
        tokens = sum(r.get("num_tokens") or 0 for r in self.absorbed)
        return {
            "run_id": self.run_id,
            "store": self.store,
            "counts": {
                "inputs": self.total_inputs,
                "absorbed": len(self.absorbed),
                "skipped": len(self.skipped),
                "failed": len(self.failed),
                "duplicates": len(self.duplicates),
            },
            "seconds": self.seconds,
            "tokens_absorbed": tokens,
            "tokens_per_second": round(tokens / self.seconds, 1) if self.seconds > 0 else None,
            "workers": self.workers,
            "model_loads": self.model_loads,
            "requeued": self.requeued,
            "worker_stats": self.worker_stats,
            "error": self.error,
            "absorbed": self.absorbed,
            "skipped": self.skipped,
            "failed": self.failed,
            "duplicates": self.duplicates,
        }


def deduplicate(docs: list[DocumentInput]) -> tuple[list[DocumentInput], list[dict[str, Any]]]:
    """First occurrence of each content hash, and a record for every later copy."""
    first: dict[str, DocumentInput] = {}
    duplicates = []
    for doc in docs:
        doc_id = doc.doc_id
        if doc_id in first:
            duplicates.append({"doc_id": doc_id, "alias": doc.alias, "source": doc.source, "duplicate_of": first[doc_id].source})
        else:
            first[doc_id] = doc
    return list(first.values()), duplicates


def check_bulk_setup(cfg: LiftConfig) -> tuple[LiftConfig, str]:
    """Resolve the config against the model (no weights loaded) and probe the store; fail fast.

    Returns the resolved config and the adapter variant the workers will publish.
    Raises ConfigError, ModelLoadError or StoreError with one clear line.
    """
    from lift_ray.config import resolve_config
    from lift_ray.model import check_model_spec, inspect_model, weights_fingerprint
    from lift_ray.store import AdapterStore, variant_id

    if not cfg.store.uri:
        raise ConfigError("bulk needs a store URI every worker can reach (--store or store.uri)")
    check_model_spec(cfg.model)
    AdapterStore(cfg.store.uri).check_writable()
    info = inspect_model(cfg.model)
    resolved = resolve_config(cfg, num_params=info.num_params, max_positions=info.max_positions, on_cuda=cfg.bulk.gpus_per_worker > 0)
    variant = variant_id(resolved, info.model_id, weights_fingerprint(info.path))
    return resolved, variant


def run_bulk(
    docs: list[DocumentInput],
    cfg: LiftConfig,
    *,
    input_failures: list[InputFailure] | None = None,
    progress: bool = True,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    ray_address: str | None = None,
) -> BulkSummary:
    """Absorb ``docs`` into ``cfg.store.uri`` on ``cfg.bulk.workers`` Ray Train workers.

    Joins the Ray cluster at ``ray_address`` (or $RAY_ADDRESS, or starts a local one). Documents
    already published for this configuration are skipped without starting a worker.
    ``on_progress`` is called with the queue's counters about once a second (tests use it).
    """
    import ray

    from lift_ray.store import AdapterStore

    start = time.perf_counter()
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    resolved, variant = check_bulk_setup(cfg)
    store = AdapterStore(resolved.store.uri)
    unique, duplicates = deduplicate(docs)
    failed = [f.to_json() for f in input_failures or []]
    skipped, todo = [], []
    for doc in unique:
        if store.has(doc.doc_id, variant):
            skipped.append({"doc_id": doc.doc_id, "alias": doc.alias, "source": doc.source, "status": "skipped", "variant": variant})
        else:
            todo.append(doc)
    absorbed: list[dict[str, Any]] = []
    stats: dict[str, Any] = {"model_loads": 0, "requeued": 0}
    error = None
    claims: dict[str, int] = {}
    if todo:
        if not ray.is_initialized():
            ray.init(address=ray_address, log_to_driver=progress)
        items = [
            {"doc_id": d.doc_id, "alias": d.alias, "title": d.title, "source": d.source, "text": ray.put(d.text)} for d in todo
        ]
        queue = ray.remote(DocumentQueue).options(num_cpus=0, max_concurrency=1).remote(items)
        error = _fit(queue, resolved, run_id, progress, on_progress)
        stats = ray.get(queue.stats.remote())
        outcome = ray.get(queue.results.remote())
        claims = outcome["claims"]
        for record in outcome["results"]:
            {"absorbed": absorbed, "skipped": skipped, "failed": failed}[record["status"]].append(record)
        for doc_id in outcome["unfinished"]:  # the run stopped early: a re-run picks these up
            failed.append({"doc_id": doc_id, "status": "failed", "reason": f"not absorbed, the run failed: {error}"})
    return BulkSummary(
        run_id=run_id,
        store=resolved.store.uri,
        total_inputs=len(docs) + len(input_failures or []),
        absorbed=absorbed,
        skipped=skipped,
        failed=failed,
        duplicates=duplicates,
        seconds=round(time.perf_counter() - start, 3),
        model_loads=stats["model_loads"],
        requeued=stats["requeued"],
        workers=resolved.bulk.workers,
        claims=claims,
        worker_stats=stats.get("workers", {}),
        error=error,
    )


def build_trainer(queue, cfg: LiftConfig, run_id: str):
    """The TorchTrainer of a bulk run: ``cfg.bulk.workers`` workers running :func:`worker_loop`."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    bulk = cfg.bulk
    resources = {"CPU": bulk.cpus_per_worker}
    if bulk.gpus_per_worker:
        resources["GPU"] = bulk.gpus_per_worker
    return TorchTrainer(
        worker_loop,
        train_loop_config={
            "queue": queue,
            "config": cfg.model_dump(mode="json"),
            "threads": bulk.threads_per_worker or max(1, int(bulk.cpus_per_worker)),
        },
        # gloo: no gradients are exchanged, and NCCL refuses two ranks on one (fractional) GPU.
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(num_workers=bulk.workers, use_gpu=bulk.gpus_per_worker > 0, resources_per_worker=resources),
        run_config=RunConfig(name=f"lift-ray-bulk-{run_id}", failure_config=FailureConfig(max_failures=bulk.max_failures)),
    )


def _fit(queue, cfg: LiftConfig, run_id: str, progress: bool, on_progress) -> str | None:
    """Run the TorchTrainer while a progress bar follows the queue; the failure message, if any."""
    import ray
    from tqdm import tqdm

    trainer = build_trainer(queue, cfg, run_id)
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            trainer.fit()
        except Exception as exc:  # TrainingFailedError after max_failures, or a controller error
            outcome["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"

    thread = threading.Thread(target=fit, name="lift-ray-bulk-fit", daemon=True)
    thread.start()
    total = ray.get(queue.stats.remote())["total"]
    bar = tqdm(total=total, desc="bulk absorb", unit="doc", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    while thread.is_alive():
        thread.join(timeout=1.0)
        stats = ray.get(queue.stats.remote())
        finished = sum(stats[s] for s in RESULT_STATUSES)
        bar.update(finished - bar.n)
        rate = stats["tokens_absorbed"] / stats["seconds"] if stats["seconds"] else 0.0
        bar.set_postfix(tok_s=f"{rate:.0f}", failed=stats["failed"], workers=stats["model_loads"], refresh=False)
        if on_progress is not None:
            on_progress(stats)
    bar.close()
    return outcome.get("error")


class BulkRunError(RuntimeError):
    """A bulk run that did not absorb every document it was given (the summary says which and why)."""


def absorb_with_workers(engine, docs: list[DocumentInput], workers: int, *, progress: bool = True, ray_address: str | None = None) -> dict[str, dict[str, Any]]:
    """Absorb ``docs`` on ``workers`` Ray Train workers exactly as ``engine`` would absorb them itself.

    For drivers that answer questions afterwards with their own resident model (``eval``, ``niah``):
    the workers train with the engine's resolved config into the engine's store, so the engine
    finds every adapter there. Returns doc id -> the run's record (status absorbed or skipped).

    Raises:
        BulkRunError: the run failed, or some document could not be absorbed.
    """
    from lift_ray.config import StoreConfig

    cfg = engine.config.model_copy(
        update={"bulk": engine.config.bulk.model_copy(update={"workers": workers}), "store": StoreConfig(uri=engine.store.uri)}
    )
    summary = run_bulk(docs, cfg, progress=progress, ray_address=ray_address)
    if not summary.ok:
        reasons = "; ".join(f"{r.get('alias') or r.get('doc_id')}: {r.get('reason')}" for r in summary.failed[:3])
        raise BulkRunError(
            f"absorbing on {workers} Ray workers failed for {len(summary.failed)} document(s)"
            + (f" ({summary.error})" if summary.error else "") + (f": {reasons}" if reasons else "")
        )
    return {r["doc_id"]: r for r in summary.absorbed + summary.skipped}


def write_summary(summary: BulkSummary, path: str | None = None) -> str:
    """Store the summary JSON under ``runs/<run_id>.json`` in the store (and at ``path``); returns its URI."""
    from lift_ray.store import AdapterStore

    payload = json.dumps(summary.to_json(), indent=2, ensure_ascii=False).encode("utf-8")
    if path:
        with open(path, "wb") as fh:
            fh.write(payload)
    return AdapterStore(summary.store).put_run_summary(summary.run_id, payload)
