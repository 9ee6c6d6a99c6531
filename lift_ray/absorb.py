"""Absorb one document: text -> contextualised samples -> trained adapter -> store (paper §3).

:func:`absorb_document` is the single entry point used by the CLI, the engine and (later) the Ray
workers. It leaves the base model exactly as it found it.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lift_ray import __version__
from lift_ray.adapters import attach_adapter
from lift_ray.config import LiftConfig
from lift_ray.model import LoadedModel
from lift_ray.aux_qa import QAPair, generate_report, make_generator, parse_report, qa_samples
from lift_ray.retrieval import RetrievalIndex, focus_separator_ids, index_key, retrieved_view
from lift_ray.segments import Sample, chat_format, segment_samples
from lift_ray.store import AdapterStore, BaseModelRef, Manifest, TrainMetrics, doc_id_for, now_iso, sha256_file, variant_id
from lift_ray.text import DocumentError, check_document_text, decode_document, read_document  # noqa: F401  (absorb's input errors)
from lift_ray.train import EpochRecord, Stage, train_schedule


@dataclasses.dataclass(frozen=True)
class AbsorbProgress:
    """Where an absorb stands: what ``absorb_document(on_progress=...)`` receives.

    ``stage`` is "qa" (writing the auxiliary QA pairs), "train" (``record`` is the epoch just
    trained, of at most ``max_epochs``; the stop rule may end training earlier), or "publish".
    """

    stage: str
    record: EpochRecord | None = None
    max_epochs: int = 0

    @property
    def fraction(self) -> float:
        """Share of the absorb done, 0-1 (training counted against its maximum epochs)."""
        if self.stage == "publish":
            return 1.0
        if self.record is None or not self.max_epochs:
            return 0.0
        return min(self.record.epoch / self.max_epochs, 1.0)

    def describe(self) -> str:
        """One line for a progress bar: "segments+QA · epoch 3/8 · loss 0.412 · knows 60% of its QA"."""
        if self.stage == "qa":
            return "writing auxiliary QA pairs"
        if self.stage == "publish":
            return "publishing the adapter"
        if self.record is None:
            return "training"
        r = self.record
        text = f"{r.stage} · epoch {r.epoch}/{self.max_epochs} · loss {r.loss:.3f}"
        if r.check is not None:
            text += f" · knows {r.check.known_text} of its QA"
        return text


@dataclasses.dataclass
class AbsorbResult:
    doc_id: str
    variant: str
    status: str  # "absorbed" | "already_absorbed" | "lease_lost" (see ``claim``)
    num_tokens: int
    store: str
    seconds: float
    training: TrainMetrics | None = None
    qa_pairs: list[QAPair] = dataclasses.field(default_factory=list)

    def to_json(self, show_qa: bool = False) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("training", "qa_pairs")}
        out["training"] = self.training.model_dump() if self.training else None
        out["num_qa_pairs"] = len(self.qa_pairs)
        if show_qa:
            out["qa_pairs"] = [p.model_dump() for p in self.qa_pairs]
        return out


def absorb_document(
    loaded: LoadedModel,
    text: str,
    cfg: LiftConfig,
    store: AdapterStore,
    *,
    force: bool = False,
    progress: bool = True,
    alias: str | None = None,
    title: str | None = None,
    claim: Callable[[str], bool] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_progress: Callable[[AbsorbProgress], None] | None = None,
) -> AbsorbResult:
    """Train an adapter on ``text`` and publish it, unless this variant is already in the store.

    Args:
        loaded: the resident base model; it is unchanged when this returns.
        text: the document (normalised here; its hash is the document id).
        cfg: a resolved LiftConfig (see :func:`lift_ray.config.resolve_config`).
        store: where the adapter goes.
        force: retrain even if the variant exists.
        progress: show progress on stderr.
        alias, title: the source's id and title of the document, kept in the manifest.
        claim: asked with the doc id right before publishing; False means another worker owns the
            document now (its lease was given away), so the trained adapter is dropped unpublished.
        on_epoch: called after every epoch with its record while the adapter is attached to
            ``loaded.model`` (benchmarks ask questions there); its time is not training time.
        on_progress: called with an :class:`AbsorbProgress` at each stage and after every epoch
            (the UI's and the Serve app's progress); an exception it raises stops the absorb with
            nothing published.

    Raises:
        DocumentError: empty, binary or oversized text; nothing is written.
    """
    start = time.perf_counter()
    text = check_document_text(text, cfg.segments.max_document_chars)
    doc_id = doc_id_for(text)
    variant = variant_id(cfg, loaded.model_id, loaded.weights_hash)
    tok = loaded.tokenizer
    if store.has(doc_id, variant) and not force:
        manifest = store.manifest(doc_id, variant)
        return AbsorbResult(doc_id, variant, "already_absorbed", manifest.num_tokens, store.uri, 0.0, manifest.training)

    doc_tokens = tok(text, add_special_tokens=False)["input_ids"]
    seg = cfg.segments
    fmt = chat_format(tok)
    samples, budgets = segment_samples(
        doc_tokens,
        fmt=fmt,
        tokenizer=tok,
        context_window=seg.context_window,
        segment_length=seg.segment_length,
        stride_fraction=seg.stride_fraction,
        max_positions=loaded.max_positions,
        recite_prompt=seg.recite_prompt,
        mixin=seg.mixin,
    )
    # The text and the rag modes' index go into the store first: icl and rag answer from them while
    # the adapter trains (the document is listed, and adapted modes use it, once the manifest is there).
    r = cfg.retrieval
    index = RetrievalIndex.build(text, tok, r.chunk_tokens, r.overlap_tokens)
    index_name = index_key(loaded.model_id, r.chunk_tokens, r.overlap_tokens)
    store.put_document(doc_id, text)
    store.put_retrieval_index(doc_id, index_name, index.to_files())
    report = on_progress or (lambda event: None)
    report(AbsorbProgress("qa"))
    pairs = auxiliary_pairs(loaded, text, doc_id, cfg, store)
    mixin_ids = tok(seg.mixin, add_special_tokens=False)["input_ids"]
    focus_ids = focus_separator_ids(tok, r)

    def retrieved(question: str) -> list[int]:  # the view a rag / lift+rag answer to this question reads
        return retrieved_view(index, doc_tokens, question, seg.context_window, mixin_ids, r.head_tail_share, focus_ids).ids

    qa = [
        sample
        for view in cfg.aux_qa.views
        for sample in qa_samples(
            pairs,
            fmt=fmt,
            tokenizer=tok,
            doc_ids=doc_tokens,
            context_window=seg.context_window,
            answer_prompt=cfg.inference.answer_prompt,
            mixin=seg.mixin,
            view_for=retrieved if view == "retrieved" else None,
            lift_prompt=cfg.inference.lift_prompt if view == "none" else None,
            short=view in cfg.aux_qa.short_question_views,
            distractors=cfg.aux_qa.distractors,
        )
    ]
    stages = training_stages(samples, qa, cfg)
    if progress:
        t = cfg.train
        stop = (f", stopping once {t.stop_accuracy:.0%} of the QA pairs are known (from epoch {t.min_epochs})"
                if t.early_stop and qa else "")
        print(
            f"lift-ray: absorbing {doc_id}: {len(doc_tokens)} tokens -> {len(samples)} segments "
            f"(ℓ={budgets.segment_length}, stride={budgets.stride}, context={budgets.train_context}) + "
            f"{len(qa)} QA samples ({len(pairs)} pairs × {' + '.join(cfg.aux_qa.views)} view), {cfg.adapter.kind} adapter, at most "
            + " then ".join(f"{stage.epochs} epochs on {stage.name}" for stage in stages)
            + stop,
            file=sys.stderr,
            flush=True,
        )
    torch.manual_seed(cfg.train.seed)  # adapter initialisation is part of the reproducible run
    handle = attach_adapter(loaded.model, cfg.adapter, base_model_id=loaded.model_id)
    try:
        max_epochs = sum(stage.epochs for stage in stages)

        def after_epoch(record: EpochRecord) -> None:
            report(AbsorbProgress("train", record, max_epochs))
            if on_epoch is not None:
                on_epoch(record)

        metrics = train_schedule(handle, stages, cfg.train, check_samples=qa, progress=progress,
                                 desc="absorb", on_epoch=after_epoch)
        with tempfile.TemporaryDirectory(prefix="lift-ray-adapter-") as tmp:
            names = handle.save(Path(tmp))
            manifest = Manifest(
                doc_id=doc_id,
                variant=variant,
                adapter_kind=cfg.adapter.kind,
                base_model=BaseModelRef(
                    model_id=loaded.model_id,
                    weights_hash=loaded.weights_hash,
                    num_params=loaded.num_params,
                    max_positions=loaded.max_positions,
                ),
                adapter_config=cfg.adapter.model_dump(mode="json"),
                config_hash=cfg.training_hash(),
                config={
                    "segments": cfg.segments.model_dump(mode="json"),
                    "aux_qa": cfg.aux_qa.model_dump(mode="json"),
                    "train": cfg.train.model_dump(mode="json"),
                    "model": cfg.model.model_dump(mode="json"),
                },
                context_window=seg.context_window,
                num_tokens=len(doc_tokens),
                num_samples=len(samples) + len(qa),
                num_qa_pairs=len(pairs) if qa else 0,
                training=metrics,
                files={name: sha256_file(Path(tmp) / name) for name in names},
                alias=alias,
                title=title,
                created_at=now_iso(),
                lift_ray_version=__version__,
            )
            if claim is not None and not claim(doc_id):
                return AbsorbResult(
                    doc_id, variant, "lease_lost", len(doc_tokens), store.uri, round(time.perf_counter() - start, 3), metrics
                )
            report(AbsorbProgress("publish"))
            store.publish(manifest, text, Path(tmp))
    finally:
        loaded.model = handle.detach()
    return AbsorbResult(
        doc_id, variant, "absorbed", len(doc_tokens), store.uri, round(time.perf_counter() - start, 3), metrics, pairs
    )


def auxiliary_pairs(
    loaded: LoadedModel, text: str, doc_id: str, cfg: LiftConfig, store: AdapterStore | None = None
) -> list[QAPair]:
    """Verified QA pairs for the document: from the store, else the local cache, else generated.

    With a store, the pairs are kept beside the document (``docs/<id>/aux_qa/``), so a worker on
    another node (a retry after a failure, another adapter variant) reuses pairs an LLM generator
    wrote instead of paying for them again, and the pairs an adapter was trained on stay on record.
    """
    generator = make_generator(cfg.aux_qa, loaded=loaded)
    if generator is None:
        return []
    key = generator.cache_key()
    if store is not None and (raw := store.aux_qa(doc_id, key)) is not None and (report := parse_report(raw)) is not None:
        return report.pairs
    report = generate_report(text, doc_id, generator)
    if store is not None:
        store.put_aux_qa(doc_id, key, report.model_dump_json(indent=1))
    return report.pairs


def training_stages(segments: list[Sample], qa: list[Sample], cfg: LiftConfig) -> list[Stage]:
    """The schedule: segments only, or (paper §3.3) stage 1 segments, stage 2 segments + QA, or the QA
    pairs alone (``aux_qa.recite_segments: false``).

    Epoch counts are maxima: the stop rule (:func:`lift_ray.train.train_schedule`) may end training
    earlier once the QA pairs are known.
    """
    if not qa:
        return [Stage("segments", segments, cfg.train.epochs)]
    if not cfg.aux_qa.recite_segments:
        return [Stage("QA", qa, cfg.aux_qa.stage2_epochs)]
    stages = [Stage("segments", segments, cfg.aux_qa.stage1_epochs), Stage("segments+QA", segments + qa, cfg.aux_qa.stage2_epochs)]
    return [stage for stage in stages if stage.epochs]
