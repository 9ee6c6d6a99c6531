"""Answering questions in the LIFT modes, on one resident base model (paper §3.4).

* ``icl``: the base model with the document truncated to a head + "..." + tail view of W tokens.
* ``lift``: the document's adapter, no document in the prompt.
* ``lift+icl``: the adapter and the truncated view (the paper's main setting; the default).
* ``rag`` / ``lift+rag``: the base model / the adapter with the document's chunks that retrieval
  picks for the question in the same W tokens (:mod:`lift_ray.retrieval`).

An adapted mode with a document view answers as ``icl`` when the head…tail view shows the chunks
retrieval ranks well above the rest for the question (``inference.icl_when_in_window``), ``lift+rag``
as ``rag`` when its chunks do not back the adapter's answer (unless, as an option, the adapter was sure of it:
``inference.sure_answer_probability``; ``inference.rag_when_unsupported``), and
both as their base mode while the document's absorb has not published an adapter yet
(``Answer.answered_as`` and ``answered_as_reason`` say so).

:class:`LiftEngine` keeps the base model loaded and the adapters of recently asked documents
resident beside it (:mod:`lift_ray.resident`); questions about several documents can be answered
in one batched generate, each row with its own adapter, and answers can be streamed.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
import threading
import time
from collections.abc import Generator, Iterator

import torch

from lift_ray.adapters.base import AdapterError
from lift_ray.config import LiftConfig, ModelSpec, resolve_config
from lift_ray.modes import (
    EVIDENCE_IN_WINDOW, HEAD_TAIL, NO_ADAPTER_YET, NOT_BACKED, RETRIEVED, ModeError, base_mode, check_mode, uses_adapter, uses_document,
    view_of,
)
from lift_ray.model import LoadedModel, inspect_model, load_model, pick_device
from lift_ray.segments import ChatFormat, build_prompt_ids, chat_format, normalize_text, question_content, truncate_middle
from lift_ray.resident import ManifestCache, ResidentAdapter, ResidentAdapters, fetch_adapter
from lift_ray.retrieval import (
    RetrievalIndex, distinctive_match, evidence_in_view, focus_separator_ids, index_key, retrieved_view, view_backs_answer,
)
from lift_ray.store import AdapterNotReady, AdapterStore, DocumentNotFound, Manifest, StoreError, doc_id_for

_INDEX_CACHE = 32  # retrieval indexes kept in memory (they are small: a few KB per document)

class QuestionError(ValueError):
    """A question that cannot be asked (empty, too long, unknown mode)."""


def _check_mode(mode: str) -> None:
    try:
        check_mode(mode)
    except ModeError as exc:
        raise QuestionError(str(exc)) from None


def build_question_prompt(
    *,
    fmt: ChatFormat,
    tokenizer,
    question: str,
    mode: str,
    view: list[int] | None,
    answer_prompt: str,
    lift_prompt: str,
) -> list[int]:
    """Token ids of the generation prompt for one question in one mode.

    Args:
        view: the document's view for the mode (head…tail or retrieved token ids); None in lift mode.
    """
    _check_mode(mode)
    question = question.strip()
    if not question:
        raise QuestionError("the question is empty")
    if not uses_document(mode):
        content = tokenizer(lift_prompt.format(question=question), add_special_tokens=False)["input_ids"]
    else:
        if view is None:
            raise QuestionError(f"mode {mode} needs the document text")
        content = question_content(tokenizer, view, question, answer_prompt)
    return build_prompt_ids(fmt, content)


def resolve_document(doc: str) -> tuple[str, str | None]:
    """(doc_id, normalised text) for a document's text; (doc_id, None) for a document id (read from the store when needed)."""
    from lift_ray.store import is_doc_id

    if is_doc_id(doc):
        return doc, None
    text = normalize_text(doc)
    return doc_id_for(text), text


@dataclasses.dataclass
class Question:
    """One question to answer: what, about which document, in which mode, and how to generate.

    ``temperature`` None keeps the config's decoding (greedy by default); 0 is greedy; above 0 samples
    with ``top_p``. ``max_new_tokens`` None is the config's limit.
    """

    question: str
    doc: str  # a document id in the store, or the document text itself (icl needs only the text)
    mode: str | None = None
    variant: str | None = None
    context_window: int | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None


@dataclasses.dataclass
class Prepared:
    """A question made ready to generate: its prompt and, when the mode uses one, its adapter."""

    question: str
    mode: str
    doc_id: str
    adapter: Manifest | None  # the adapter that answers (None: the base model answers)
    prompt: list[int]
    max_new_tokens: int
    sampling: tuple[bool, float | None, float | None]  # (do_sample, temperature, top_p)
    view: str | None = None  # kind of document view in the prompt (modes.HEAD_TAIL, modes.RETRIEVED), None in lift mode
    answered_as: str | None = None  # the mode that answers: ``mode``, or another one for ``reason``
    reason: str | None = None  # why answered_as differs from mode (modes.EVIDENCE_IN_WINDOW, NOT_BACKED, NO_ADAPTER_YET)
    view_ids: list[int] | None = dataclasses.field(default=None, repr=False)  # the document view's tokens in the prompt
    # asked again without the adapter when the adapter's answer is not in the retrieved chunks (rag_when_unsupported)
    fallback: "Prepared | None" = dataclasses.field(default=None, repr=False)

    @property
    def variant(self) -> str | None:
        return self.adapter.variant if self.adapter is not None else None


@dataclasses.dataclass
class Answer:
    answer: str
    mode: str
    doc_id: str | None
    variant: str | None
    question: str
    prompt_tokens: int
    new_tokens: int
    seconds: float
    view: str | None = None  # "head_tail" or "retrieved" (rag modes fall back to head_tail when nothing matches); None in lift mode
    finish_reason: str = "stop"  # "stop" (end of answer) or "length" (max_new_tokens reached)
    # the mode that answered: ``mode``; "icl" when an adapted mode's question has its evidence in the
    # head…tail view (inference.icl_when_in_window); "rag" when the retrieved chunks do not back lift+rag's
    # adapter's answer (inference.rag_when_unsupported); the base mode while the document has no adapter yet
    answered_as: str | None = None
    answered_as_reason: str | None = None  # why (modes.EVIDENCE_IN_WINDOW, NOT_BACKED, NO_ADAPTER_YET); None as asked

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class StreamEnd:
    """The last item of :meth:`LiftEngine.stream`: which adapter answered, token counts, why it ended."""

    mode: str
    doc_id: str
    variant: str | None
    prompt_tokens: int
    new_tokens: int
    finish_reason: str
    seconds: float
    view: str | None = None
    answered_as: str | None = None
    answered_as_reason: str | None = None


class _Cancelled:
    """A stopping criterion: generation ends at the next token once ``event`` is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _Sureness:
    """A logits processor that records, per row and step, the probability of the greedy next token.

    Added last, it sees the scores greedy decoding picks from; it changes nothing."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.steps.append(torch.softmax(scores.float(), -1).amax(-1).cpu())
        return scores

    def row(self, i: int, n_tokens: int) -> float | None:
        """Row ``i``'s least token probability over its first ``n_tokens`` (its own, the end included)."""
        if not self.steps or n_tokens < 1:
            return None
        return min(step[i].item() for step in self.steps[:n_tokens])


class _TokenQueue:
    """A transformers streamer that hands each new token id to a queue (the prompt is skipped)."""

    def __init__(self, out: "queue.Queue"):
        self.out = out
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.out.put(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


_END = object()


class LiftEngine:
    """A base model kept resident, a store, and the config; absorbs documents and answers questions.

    Serving many documents: the adapters of the ``max_resident`` most recently used documents stay
    on the device (:class:`~lift_ray.resident.ResidentAdapters`), manifests are re-read from the
    store after ``manifest_ttl`` seconds, and :meth:`answer_batch` answers questions about different
    documents in one batched generate. Every method is safe to call from several threads: changes
    to the adapters and generation run under one lock, so no row ever runs with another row's
    adapter; store reads and adapter downloads happen outside it.

    Args:
        loaded: the base model and tokenizer.
        config: a resolved LiftConfig.
        store: where documents and adapters live.
        max_resident (int): adapters kept on the device. Default: 4.
        manifest_ttl (float): seconds a manifest read stays fresh. Default: 2.0.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        config: LiftConfig,
        store: AdapterStore,
        *,
        max_resident: int = 4,
        manifest_ttl: float = 2.0,
    ):
        self.loaded = loaded
        self.config = config
        self.store = store
        self.fmt = chat_format(loaded.tokenizer)
        self.manifests = ManifestCache(store, ttl=manifest_ttl)
        self.resident = ResidentAdapters(loaded.model, max_resident)
        self._lock = threading.RLock()
        self._doc_tokens: collections.OrderedDict[str, list[int]] = collections.OrderedDict()
        self._doc_tokens_lock = threading.Lock()
        self._indexes: collections.OrderedDict[tuple[str, str], RetrievalIndex] = collections.OrderedDict()
        self._indexes_lock = threading.Lock()
        tok = loaded.tokenizer
        self._eos = {t for t in (tok.eos_token_id, self.fmt.reply_end[-1] if self.fmt.reply_end else None) if t is not None}
        self._pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self._mixin_ids = tok(config.segments.mixin, add_special_tokens=False)["input_ids"]  # marks left-out text in views

    @classmethod
    def from_config(cls, config: LiftConfig, store: AdapterStore | None = None, **kwargs) -> "LiftEngine":
        """Inspect the model (no weights), resolve the profile defaults, then load it (``kwargs``: see the class)."""
        from lift_ray.config import default_store_uri

        info = inspect_model(config.model)
        on_cuda = pick_device(config.model.device).type == "cuda"
        resolved = resolve_config(config, num_params=info.num_params, max_positions=info.max_positions, on_cuda=on_cuda)
        loaded = load_model(resolved.model)
        store = store or AdapterStore(resolved.store.uri or default_store_uri())
        return cls(loaded, resolved, store, **kwargs)

    # --- absorb --------------------------------------------------------------------------------
    def absorb(self, text: str, *, force: bool = False, progress: bool = True, **kwargs):
        """Absorb ``text`` with the resident model; ``kwargs`` go to :func:`lift_ray.absorb.absorb_document`.

        Resident adapters are dropped first (training needs the bare base) and questions wait.
        """
        from lift_ray.absorb import absorb_document

        with self._lock:
            self.detach()
            result = absorb_document(self.loaded, text, self.config, self.store, force=force, progress=progress, **kwargs)
        self.manifests.forget(result.doc_id)
        return result

    # --- adapters ------------------------------------------------------------------------------
    def check_manifest(self, manifest: Manifest) -> None:
        """Refuse an adapter trained on another base model, naming both."""
        ref = manifest.base_model
        if ref.model_id != self.loaded.model_id or ref.weights_hash != self.loaded.weights_hash:
            raise AdapterError(
                f"adapter {manifest.doc_id}/{manifest.variant} was trained on {ref.model_id} ({ref.weights_hash}); "
                f"the loaded base model is {self.loaded.model_id} ({self.loaded.weights_hash})"
            )

    def attach(self, doc_id: str, variant: str | None = None) -> Manifest:
        """Make the document's adapter (the latest variant unless named) resident; a no-op if it is."""
        manifest = self.manifests.get(doc_id, variant)
        self.check_manifest(manifest)
        self._acquire([manifest], pin=False)
        return manifest

    def evict(self, doc_id: str, variant: str | None = None) -> int:
        """Drop the document's resident adapters (one variant, or all); in-use ones go when released."""
        with self._lock:
            keys = [k for k in self.resident.entries if k[0] == doc_id and variant in (None, k[1])]
            return sum(self.resident.evict(k) for k in keys)

    def forget(self, doc_id: str) -> None:
        """Forget a document deleted from the store: its manifests and resident adapters."""
        self.manifests.forget(doc_id)
        self.evict(doc_id)

    def refresh(self) -> list[tuple[str, str]]:
        """Re-read the manifests of resident adapters and drop those deleted or republished; returns them."""
        with self._lock:
            resident = {k: e.files for k, e in self.resident.entries.items()}
        stale = []
        for (doc_id, variant), files in resident.items():
            try:
                if self.store.manifest(doc_id, variant).files == files:
                    continue
            except StoreError:
                self.manifests.forget(doc_id)
            stale.append((doc_id, variant))
        with self._lock:
            for key in stale:
                self.resident.evict(key)
        return stale

    def resident_adapters(self) -> list[tuple[str, str]]:
        """(doc_id, variant) of the adapters on the device, least recently used first."""
        with self._lock:
            return list(self.resident.entries)

    def detach(self) -> None:
        """Drop every resident adapter; the base model is exactly as loaded."""
        with self._lock:
            self.loaded.model = self.resident.clear()

    def _acquire(self, manifests: list[Manifest | None], pin: bool = True) -> list[ResidentAdapter | BaseException | None]:
        """The resident adapter of each manifest (None for None), loading missing ones; pinned if ``pin``.

        Files are fetched and verified outside the lock; a failure is returned in place of that entry.
        """
        wanted = {(m.doc_id, m.variant): m for m in manifests if m is not None}
        fetched: dict[tuple[str, str], object] = {}
        with self._lock:
            missing = [k for k, m in wanted.items() if self.resident.get(m) is None]
        for key in missing:
            try:
                fetched[key] = fetch_adapter(self.store, wanted[key])
            except Exception as exc:  # a corrupt or missing adapter fails its own rows only
                fetched[key] = exc
        out: list[ResidentAdapter | BaseException | None] = []
        with self._lock:
            entries: dict[tuple[str, str], ResidentAdapter | BaseException] = {}
            for key, manifest in wanted.items():
                entry = self.resident.get(manifest)
                if entry is not None:
                    if pin:
                        self.resident.pin(entry)
                else:
                    got = fetched.get(key)
                    try:
                        if got is None:  # evicted since the check above
                            got = fetch_adapter(self.store, manifest)
                        if isinstance(got, BaseException):
                            raise got
                        entry = self.resident.install(manifest, *got, pin=pin)
                    except Exception as exc:
                        entry = exc
                entries[key] = entry
            for m in manifests:
                out.append(None if m is None else entries[(m.doc_id, m.variant)])
        return out

    def _release(self, entries: list) -> None:
        with self._lock:
            for entry in {id(e): e for e in entries if isinstance(e, ResidentAdapter)}.values():
                self.resident.release(entry)

    # --- preparing a question ------------------------------------------------------------------
    def _document_tokens(self, doc_id: str, text: str | None) -> list[int]:
        """The document's token ids, kept for recent documents: many questions, one read and tokenisation."""
        with self._doc_tokens_lock:
            if doc_id in self._doc_tokens:
                self._doc_tokens.move_to_end(doc_id)
                return self._doc_tokens[doc_id]
        text = text if text is not None else self.store.text(doc_id)
        ids = self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        with self._doc_tokens_lock:
            self._doc_tokens[doc_id] = ids
            while len(self._doc_tokens) > 2 * self.resident.capacity:
                self._doc_tokens.popitem(last=False)
        return ids

    # --- views of the document ---------------------------------------------------------------
    def retrieval_index(self, doc_id: str, text: str | None = None) -> RetrievalIndex:
        """The document's retrieval index: cached here, else read from the store, else built.

        A document absorbed before retrieval existed gets its index on first use, stored beside it
        for the next replica; a store that refuses the write only costs the rebuild next time.
        """
        r = self.config.retrieval
        key = index_key(self.loaded.model_id, r.chunk_tokens, r.overlap_tokens)
        with self._indexes_lock:
            if (doc_id, key) in self._indexes:
                self._indexes.move_to_end((doc_id, key))
                return self._indexes[(doc_id, key)]
        stored = self.store.has_document(doc_id)
        files = self.store.retrieval_index(doc_id, key) if stored else None
        if files is not None:
            index = RetrievalIndex.from_files(files)
        else:
            text = text if text is not None else self.store.text(doc_id)
            index = RetrievalIndex.build(text, self.loaded.tokenizer, r.chunk_tokens, r.overlap_tokens)
            if stored:
                try:
                    self.store.put_retrieval_index(doc_id, key, index.to_files())
                except (OSError, StoreError) as exc:
                    log(f"warning: could not keep the retrieval index of {doc_id} in {self.store.uri}: {exc}")
        with self._indexes_lock:
            self._indexes[(doc_id, key)] = index
            while len(self._indexes) > _INDEX_CACHE:
                self._indexes.popitem(last=False)
        return index

    def document_view(self, doc_id: str, text: str | None, question: str, mode: str, window: int) -> tuple[list[int] | None, str | None]:
        """(token ids, kind) of the document's view that ``mode`` puts in the prompt; (None, None) in lift mode."""
        kind = view_of(mode)
        if kind is None:
            return None, None
        doc_tokens = self._document_tokens(doc_id, text)
        if kind == HEAD_TAIL:
            return truncate_middle(doc_tokens, window, self._mixin_ids), HEAD_TAIL
        view = retrieved_view(self.retrieval_index(doc_id, text), doc_tokens, question, window, self._mixin_ids,
                              self.config.retrieval.head_tail_share, focus_separator_ids(self.loaded.tokenizer, self.config.retrieval))
        return view.ids, view.kind

    def evidence_in_view(self, doc_id: str, text: str | None, question: str, window: int) -> bool:
        """Whether the head…tail view of ``window`` tokens shows what the question points at
        (:func:`lift_ray.retrieval.evidence_in_view`, with ``inference.in_window_score_ratio``)."""
        return evidence_in_view(self.retrieval_index(doc_id, text), question, len(self._document_tokens(doc_id, text)),
                                window, len(self._mixin_ids), self.config.inference.in_window_score_ratio)

    def answering_mode(self, question: str, mode: str, doc_id: str, text: str | None, window: int) -> str:
        """The mode that answers ``mode``'s question: icl instead of an adapted mode with a document view
        when the window shows the evidence (``inference.icl_when_in_window``), else ``mode`` itself.

        The adapter's memory tends to override what the window shows (README 'Reading the window'); the
        retrieval index, built at absorb time, says where in the document the question points.
        """
        if (self.config.inference.icl_when_in_window and uses_adapter(mode) and uses_document(mode)
                and question.strip() and self.evidence_in_view(doc_id, text, question, window)):
            return "icl"
        return mode

    def _prompt(self, question: str, mode: str, doc_id: str, text: str | None, window: int) -> tuple[list[int], list[int] | None, str | None]:
        """The generation prompt for one question, the document view in it and that view's kind: the one place the engine builds it."""
        inf = self.config.inference
        view, kind = self.document_view(doc_id, text, question, mode, window) if question.strip() else (None, None)
        prompt = build_question_prompt(
            fmt=self.fmt,
            tokenizer=self.loaded.tokenizer,
            question=question,
            mode=mode,
            view=view,
            answer_prompt=inf.answer_prompt,
            lift_prompt=inf.lift_prompt,
        )
        return prompt, view, kind

    def prepare(self, q: Question) -> Prepared:
        """Check a question and build its prompt; nothing is generated and no adapter is loaded.

        Raises:
            QuestionError: unknown mode, empty question, or a prompt over the model's positions.
            StoreError: unknown document or variant. AdapterError: an adapter of another base model.
        """
        mode = q.mode or self.config.inference.mode
        _check_mode(mode)
        doc_id, text = resolve_document(q.doc)
        no_adapter_yet = False
        try:  # icl on an absorbed document uses the W its adapter saw
            manifest = self.manifests.get(doc_id, q.variant)
        except DocumentNotFound:  # a named variant that is missing, or a damaged manifest, is raised as is
            manifest = None
            # An absorb stores the text before it trains: until its adapter is published, icl and rag
            # answer from the text, and lift+icl / lift+rag as those two (answered_as says so).
            if (uses_adapter(mode) or text is None) and not self.store.has_document(doc_id):
                raise
            if uses_adapter(mode):
                if base_mode(mode) is None:
                    raise AdapterNotReady(f"document {doc_id} has no adapter yet (its absorb has not finished): mode {mode} "
                                         "needs one; icl and rag answer from its text now") from None
                no_adapter_yet = True
        if manifest is not None and uses_adapter(mode):
            self.check_manifest(manifest)
        window = q.context_window or (manifest.context_window if manifest else self.config.segments.context_window)
        if no_adapter_yet:
            answered_as, reason = base_mode(mode), NO_ADAPTER_YET
        else:
            answered_as = self.answering_mode(q.question, mode, doc_id, text, window)
            reason = EVIDENCE_IN_WINDOW if answered_as != mode else None
        prompt, view_ids, view = self._prompt(q.question, answered_as, doc_id, text, window)
        if len(prompt) > self.loaded.max_positions - 1:
            raise QuestionError(
                f"prompt of {len(prompt)} tokens does not fit the model's {self.loaded.max_positions} positions"
            )
        inf = self.config.inference
        budget = self.loaded.max_positions - len(prompt)
        if q.temperature is None:
            sampling = (inf.do_sample, inf.temperature, inf.top_p) if inf.do_sample else (False, None, None)
        elif q.temperature == 0:
            sampling = (False, None, None)
        else:
            sampling = (True, float(q.temperature), float(q.top_p if q.top_p is not None else 1.0))
        prepared = Prepared(
            question=q.question,
            mode=mode,
            doc_id=doc_id,
            adapter=manifest if uses_adapter(answered_as) else None,
            prompt=prompt,
            max_new_tokens=max(1, min(q.max_new_tokens or inf.max_new_tokens, budget)),
            sampling=sampling,
            view=view,
            answered_as=answered_as,
            reason=reason,
            view_ids=view_ids,
        )
        if (inf.rag_when_unsupported and answered_as == "lift+rag" and view == RETRIEVED
                and distinctive_match(self.retrieval_index(doc_id, text), q.question)):
            # rag reads the same chunks in the same prompt: only the adapter goes
            prepared.fallback = dataclasses.replace(prepared, adapter=None, answered_as="rag", reason=NOT_BACKED)
        return prepared

    def supported(self, p: Prepared, answer: str, sureness: float | None = None) -> bool:
        """Whether ``answer`` may stand: always, unless ``p`` is checked against its retrieved chunks
        (``inference.rag_when_unsupported``) and they do not back it (``retrieval.view_backs_answer``:
        its words in a sentence about the question, saying more than the question), nor, for an answer
        the chunks do not hold, does the rest of the document, nor was the adapter sure of it
        (``sureness``, its least greedy token probability, at least ``inference.sure_answer_probability``)."""
        if p.fallback is None:
            return True
        sure = self.config.inference.sure_answer_probability
        if sure is not None and sureness is not None and sureness >= sure:
            return True
        decode = self.loaded.tokenizer.decode
        view_text = decode(p.view_ids or [], skip_special_tokens=True)
        index = self.retrieval_index(p.doc_id)

        def sentences() -> list[str]:  # decoded only for an answer the chunks lack
            doc_tokens = self._document_tokens(p.doc_id, None)
            return [decode(doc_tokens[start:end]) for start, end in index.sentences]

        return view_backs_answer(index, p.question, answer, view_text, self.config.inference.rag_support_share, sentences)

    # --- generating ----------------------------------------------------------------------------
    def _generate_kwargs(self, rows: list[Prepared]) -> dict:
        device = self.loaded.device
        width = max(len(p.prompt) for p in rows)
        # Left padding: every row's next token is at the same position.
        input_ids = torch.tensor([[self._pad] * (width - len(p.prompt)) + p.prompt for p in rows], device=device)
        mask = torch.tensor([[0] * (width - len(p.prompt)) + [1] * len(p.prompt) for p in rows], device=device)
        do_sample, temperature, top_p = rows[0].sampling
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max(p.max_new_tokens for p in rows),
            do_sample=do_sample,
            pad_token_id=self._pad,
            eos_token_id=sorted(self._eos),
        )
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p)
        else:  # silence generation_config sampling defaults under greedy decoding
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def _finish(self, ids: list[int], limit: int) -> tuple[list[int], str]:
        """A row's own tokens: up to its first end token, at most ``limit``; and why it ended."""
        for i, t in enumerate(ids[:limit]):
            if t in self._eos:
                return ids[: i + 1], "stop"
        return ids[:limit], "length"

    def _generate(self, rows: list[Prepared], entries: list, **extra) -> torch.Tensor:
        """One generate over ``rows`` (same sampling), row i with adapter ``entries[i]``; under the lock."""
        context, route = self.resident.routing(entries)
        with torch.inference_mode(), context:
            return self.resident.module.generate(**self._generate_kwargs(rows), **route, **extra)

    def answer_batch(self, questions: list[Question | Prepared]) -> list[Answer | Exception]:
        """Answer many questions, about any documents, in as few batched generates as possible.

        Rows with the same decoding settings run in one generate, each with its own document's
        adapter (or none); with greedy decoding each answer equals the question answered alone.
        A question that fails (unknown document, corrupt adapter, bad input) gets its exception in
        its place; the others are answered.
        """
        start = time.perf_counter()
        results: list[Answer | Exception | None] = [None] * len(questions)
        prepared: dict[int, Prepared] = {}
        for i, q in enumerate(questions):
            try:
                prepared[i] = q if isinstance(q, Prepared) else self.prepare(q)
            except Exception as exc:
                results[i] = exc
        sureness: dict[int, float | None] = {}
        self._answer_rows(prepared, results, start, sureness)
        # lift+rag answers the retrieved chunks do not hold: asked again of the base model, in one more pass
        retry = {i: p.fallback for i, p in prepared.items()
                 if p.fallback is not None and isinstance(results[i], Answer)
                 and not self.supported(p, results[i].answer, sureness.get(i))}
        self._answer_rows(retry, results, start)
        return results  # type: ignore[return-value]

    def _sureness_wanted(self, p: Prepared) -> bool:
        """Whether ``p``'s answer is checked and may stand on the adapter's sureness (greedy decoding only)."""
        return p.fallback is not None and self.config.inference.sure_answer_probability is not None and not p.sampling[0]

    def _answer_rows(self, prepared: dict[int, Prepared], results: list, start: float,
                     sureness: dict[int, float | None] | None = None) -> None:
        """Generate ``prepared``'s rows, batched by decoding settings, into ``results`` at their indices;
        with ``sureness``, also each checked row's least greedy token probability (:class:`_Sureness`)."""
        groups: dict[tuple, list[int]] = collections.defaultdict(list)
        for i, p in prepared.items():
            groups[p.sampling].append(i)
        for indices in groups.values():
            entries = self._acquire([prepared[i].adapter for i in indices])
            try:
                ok = []
                for i, entry in zip(indices, entries):
                    if isinstance(entry, BaseException):
                        results[i] = entry
                    else:
                        ok.append((i, entry))
                if not ok:
                    continue
                rows = [prepared[i] for i, _ in ok]
                recorder = _Sureness() if sureness is not None and any(map(self._sureness_wanted, rows)) else None
                with self._lock:
                    out = self._generate(rows, [e for _, e in ok], **_recording(recorder))
                width = max(len(p.prompt) for p in rows)
                for row, ((i, _), p, seq) in enumerate(zip(ok, rows, out[:, width:].tolist())):
                    ids, reason = self._finish(seq, p.max_new_tokens)
                    if recorder is not None and self._sureness_wanted(p):
                        sureness[i] = recorder.row(row, len(ids))
                    text = self.loaded.tokenizer.decode(ids, skip_special_tokens=True).strip()
                    results[i] = Answer(text, p.mode, p.doc_id, p.variant, p.question, len(p.prompt), len(ids),
                                        round(time.perf_counter() - start, 3), p.view, reason, p.answered_as, p.reason)
            finally:
                self._release(entries)

    def answer(
        self,
        question: str,
        doc: str,
        mode: str | None = None,
        *,
        variant: str | None = None,
        context_window: int | None = None,
        max_new_tokens: int | None = None,
    ) -> Answer:
        """Answer one question about a document.

        Args:
            question: the question.
            doc: a document id in the store, or the document text itself (icl only needs the text).
            mode: an answer mode (lift_ray.modes). Default: the config's mode.
            variant: which adapter variant; default the latest.
            context_window: W of the head+tail view; default the adapter's recorded W.
            max_new_tokens: default the config's.
        """
        q = Question(question, doc, mode, variant=variant, context_window=context_window, max_new_tokens=max_new_tokens)
        result = self.answer_batch([q])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def stream(self, q: Question) -> Iterator[str | StreamEnd]:
        """Yield the answer's text in pieces as it is generated, then one :class:`StreamEnd`.

        The question is checked before this returns (errors raise here, not mid-stream). The pieces
        join to exactly :meth:`answer`'s text. Closing the iterator (or dropping it) stops the
        generation at the next token.
        """
        prepared = self.prepare(q)
        return self._stream(prepared) if prepared.fallback is None else self._stream_checked(prepared)

    def _stream_checked(self, p: Prepared) -> Iterator[str | StreamEnd]:
        """A checked lift+rag answer: the adapter's answer is held back until it can be checked against the
        retrieved chunks (it is short), then sent whole, or the base model's answer is streamed instead."""
        pieces: list[str] = []
        recorder = _Sureness() if self._sureness_wanted(p) else None
        for item in self._stream(p, recorder):
            if isinstance(item, str):
                pieces.append(item)
            else:
                end = item
        sureness = recorder.row(0, end.new_tokens) if recorder is not None else None
        if self.supported(p, "".join(pieces), sureness):
            yield from pieces
            yield end
            return
        for item in self._stream(p.fallback):
            if isinstance(item, StreamEnd):
                item = dataclasses.replace(item, seconds=round(item.seconds + end.seconds, 3))
            yield item

    def _stream(self, p: Prepared, recorder: "_Sureness | None" = None) -> Iterator[str | StreamEnd]:
        import queue

        from transformers import StoppingCriteriaList

        start = time.perf_counter()
        tokens: queue.Queue = queue.Queue()
        cancel = threading.Event()

        def run() -> None:
            entries = self._acquire([p.adapter])
            try:
                if isinstance(entries[0], BaseException):
                    raise entries[0]
                with self._lock:
                    if not cancel.is_set():
                        self._generate([p], entries, streamer=_TokenQueue(tokens),
                                       stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]), **_recording(recorder))
                tokens.put(_END)
            except BaseException as exc:  # surfaced in the consumer's thread
                tokens.put(exc)
            finally:
                self._release(entries)

        thread = threading.Thread(target=run, name="lift-ray-stream", daemon=True)
        thread.start()
        ids: list[int] = []
        sent = ""
        reason = "length"
        decode = self.loaded.tokenizer.decode
        try:
            while True:
                item = tokens.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                ids.extend(item)
                ids, reason = self._finish(ids, p.max_new_tokens)
                text = decode(ids, skip_special_tokens=True).strip()
                # Hold back an unfinished UTF-8 character; trailing space waits for what follows it.
                if text.endswith("\ufffd") or not text.startswith(sent) or len(text) == len(sent):
                    continue
                piece, sent = text[len(sent):], text
                yield piece
                if reason == "stop" or len(ids) >= p.max_new_tokens:
                    break
            text = decode(ids, skip_special_tokens=True).strip()
            if text.startswith(sent) and len(text) > len(sent):
                yield text[len(sent):]
            yield StreamEnd(p.mode, p.doc_id, p.variant, len(p.prompt), len(ids), reason,
                            round(time.perf_counter() - start, 3), p.view, p.answered_as, p.reason)
        finally:
            cancel.set()
            thread.join()

    def stream_answer(
        self,
        question: str,
        doc: str,
        mode: str | None = None,
        *,
        variant: str | None = None,
        context_window: int | None = None,
        max_new_tokens: int | None = None,
    ) -> Generator[str, None, Answer]:
        """Yield the answer's text as it is generated (same arguments as :meth:`answer`).

        Returns:
            The whole :class:`Answer` with its token counts, as the generator's return value
            (``answer = yield from engine.stream_answer(...)``; a plain ``for`` loop ignores it).
        """
        q = Question(question, doc, mode, variant=variant, context_window=context_window, max_new_tokens=max_new_tokens)
        pieces: list[str] = []
        for item in self.stream(q):
            if isinstance(item, str):
                pieces.append(item)
                yield item
            else:
                end = item
        return Answer("".join(pieces).strip(), end.mode, end.doc_id, end.variant, question, end.prompt_tokens,
                      end.new_tokens, end.seconds, end.view, end.finish_reason, end.answered_as, end.answered_as_reason)


def _recording(recorder: _Sureness | None) -> dict:
    """generate() arguments that add ``recorder`` as the last logits processor (none without one)."""
    if recorder is None:
        return {}
    from transformers import LogitsProcessorList

    return {"logits_processor": LogitsProcessorList([recorder])}


def engine_for_manifest(manifest: Manifest, config: LiftConfig, store: AdapterStore) -> LiftEngine:
    """An engine on the base model a manifest names (ask reads model and variant from the store)."""
    recorded = manifest.config.get("model", {})
    spec = ModelSpec.model_validate({**recorded, "name_or_path": manifest.base_model.model_id, "device": config.model.device})
    cfg = config.model_copy(update={"model": spec})
    return LiftEngine.from_config(cfg, store=store)


def log(msg: str) -> None:
    print(f"lift-ray: {msg}", file=sys.stderr, flush=True)
