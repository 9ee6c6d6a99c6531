"""Answering questions in the LIFT modes, on one resident base model (paper §3.4).

* ``icl``: the base model with the document truncated to a head + "..." + tail view of W tokens.
* ``lift``: the document's adapter, no document in the prompt.
* ``lift+icl``: the adapter and the truncated view (the paper's main setting; the default).
* ``rag`` / ``lift+rag``: the base model / the adapter with the document's chunks that retrieval
  picks for the question in the same W tokens (:mod:`lift_ray.retrieval`).

:class:`LiftEngine` keeps the base model loaded, attaches a document's adapter on demand (keeping
the last one attached for the next question) and detaches it cleanly.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import sys
import threading
import time
from collections.abc import Generator
from pathlib import Path

import torch

from lift_ray.adapters import AdapterHandle, load_adapter
from lift_ray.adapters.base import AdapterError
from lift_ray.config import LiftConfig, ModelSpec, resolve_config
from lift_ray.modes import HEAD_TAIL, ModeError, check_mode, uses_adapter, uses_document, view_of
from lift_ray.model import LoadedModel, inspect_model, load_model, pick_device
from lift_ray.segments import ChatFormat, build_prompt_ids, chat_format, normalize_text, question_content, truncate_middle
from lift_ray.retrieval import RetrievalIndex, index_key, retrieved_view
from lift_ray.store import AdapterStore, Manifest, StoreError, doc_id_for

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
class _Prepared:
    """Everything one generate call needs."""

    prompt: list[int]
    module: torch.nn.Module  # the adapted model, or the base
    doc_id: str | None
    variant: str | None  # the adapter variant answering, None without one
    disable: contextlib.AbstractContextManager  # switches an attached adapter off for base-model modes
    view: str | None  # kind of document view in the prompt


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

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class LiftEngine:
    """A base model kept resident, a store, and the config; absorbs documents and answers questions.

    Args:
        loaded: the base model and tokenizer.
        config: a resolved LiftConfig.
        store: where documents and adapters live.
    """

    def __init__(self, loaded: LoadedModel, config: LiftConfig, store: AdapterStore):
        self.loaded = loaded
        self.config = config
        self.store = store
        self.fmt = chat_format(loaded.tokenizer)
        self._handle: AdapterHandle | None = None
        self._attached: tuple[str, str] | None = None
        self._doc_tokens: tuple[str, list[int]] | None = None
        self._indexes: collections.OrderedDict[tuple[str, str], RetrievalIndex] = collections.OrderedDict()

    @classmethod
    def from_config(cls, config: LiftConfig, store: AdapterStore | None = None) -> "LiftEngine":
        """Inspect the model (no weights), resolve the profile defaults, then load it."""
        from lift_ray.config import default_store_uri

        info = inspect_model(config.model)
        on_cuda = pick_device(config.model.device).type == "cuda"
        resolved = resolve_config(config, num_params=info.num_params, max_positions=info.max_positions, on_cuda=on_cuda)
        loaded = load_model(resolved.model)
        store = store or AdapterStore(resolved.store.uri or default_store_uri())
        return cls(loaded, resolved, store)

    # --- absorb --------------------------------------------------------------------------------
    def absorb(self, text: str, *, force: bool = False, progress: bool = True, **kwargs):
        """Absorb ``text`` with the resident model; ``kwargs`` go to :func:`lift_ray.absorb.absorb_document`."""
        from lift_ray.absorb import absorb_document

        self.detach()
        return absorb_document(self.loaded, text, self.config, self.store, force=force, progress=progress, **kwargs)

    # --- adapters ------------------------------------------------------------------------------
    def check_manifest(self, manifest: Manifest) -> None:
        """Refuse an adapter trained on another base model, naming both."""
        ref = manifest.base_model
        if ref.model_id != self.loaded.model_id or ref.weights_hash != self.loaded.weights_hash:
            raise AdapterError(
                f"adapter {manifest.doc_id}/{manifest.variant} was trained on {ref.model_id} ({ref.weights_hash}); "
                f"the loaded base model is {self.loaded.model_id} ({self.loaded.weights_hash})"
            )

    def attach(self, doc_id: str, variant: str | None = None, scratch: Path | None = None) -> Manifest:
        """Attach the document's adapter (the latest variant unless named); a no-op if already attached."""
        manifest = self.store.latest_manifest(doc_id, variant)
        key = (manifest.doc_id, manifest.variant)
        if self._attached == key:
            return manifest
        self.check_manifest(manifest)
        directory = self.store.adapter_dir(manifest.doc_id, manifest.variant, scratch=scratch)
        self.detach()
        from lift_ray.config import parse_adapter_config

        adapter_cfg = parse_adapter_config(manifest.adapter_config)
        self._handle = load_adapter(self.loaded.model, adapter_cfg, directory, base_model_id=self.loaded.model_id)
        self._attached = key
        return manifest

    def detach(self) -> None:
        if self._handle is not None:
            self.loaded.model = self._handle.detach()
            self._handle = None
            self._attached = None

    # --- answering -----------------------------------------------------------------------------
    def _document_tokens(self, doc_id: str, text: str | None) -> list[int]:
        """The document's token ids, kept for the last document: many questions, one read and tokenisation."""
        if self._doc_tokens is None or self._doc_tokens[0] != doc_id:
            text = text if text is not None else self.store.text(doc_id)
            self._doc_tokens = (doc_id, self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._doc_tokens[1]

    # --- views of the document ---------------------------------------------------------------
    def retrieval_index(self, doc_id: str, text: str | None = None) -> RetrievalIndex:
        """The document's retrieval index: cached here, else read from the store, else built.

        A document absorbed before retrieval existed gets its index on first use, stored beside it
        for the next replica; a store that refuses the write only costs the rebuild next time.
        """
        r = self.config.retrieval
        key = index_key(self.loaded.model_id, r.chunk_tokens, r.overlap_tokens)
        if (doc_id, key) in self._indexes:
            self._indexes.move_to_end((doc_id, key))
            return self._indexes[(doc_id, key)]
        stored = bool(self.store.variants(doc_id))
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
        mixin_ids = self.loaded.tokenizer(self.config.segments.mixin, add_special_tokens=False)["input_ids"]
        if kind == HEAD_TAIL:
            return truncate_middle(doc_tokens, window, mixin_ids), HEAD_TAIL
        view = retrieved_view(self.retrieval_index(doc_id, text), doc_tokens, question, window, mixin_ids,
                              self.config.retrieval.head_tail_share)
        return view.ids, view.kind

    def _prepare(
        self,
        question: str,
        doc: str,
        mode: str,
        variant: str | None,
        context_window: int | None,
    ) -> "_Prepared":
        _check_mode(mode)
        doc_id, text = resolve_document(doc)
        manifest = None
        if uses_adapter(mode):
            manifest = self.attach(doc_id, variant)
        elif self.store.variants(doc_id):  # icl on an absorbed document: same W as its adapter saw
            manifest = self.store.latest_manifest(doc_id, variant)
        window = context_window or (manifest.context_window if manifest else self.config.segments.context_window)
        inf = self.config.inference
        view, view_kind = self.document_view(doc_id, text, question, mode, window) if question.strip() else (None, None)
        prompt = build_question_prompt(
            fmt=self.fmt,
            tokenizer=self.loaded.tokenizer,
            question=question,
            mode=mode,
            view=view,
            answer_prompt=inf.answer_prompt,
            lift_prompt=inf.lift_prompt,
        )
        if len(prompt) > self.loaded.max_positions - 1:
            raise QuestionError(
                f"prompt of {len(prompt)} tokens does not fit the model's {self.loaded.max_positions} positions"
            )
        if not uses_adapter(mode) and self._handle is not None:
            disable = self._handle.disabled()
        else:
            disable = contextlib.nullcontext()
        module = self._handle.module if (self._handle is not None and uses_adapter(mode)) else self.loaded.model
        used_variant = manifest.variant if manifest is not None and uses_adapter(mode) else None
        return _Prepared(prompt, module, doc_id, used_variant, disable, view_kind)

    def _generate_kwargs(self, prompt: list[int], max_new_tokens: int | None) -> dict:
        inf = self.config.inference
        device = self.loaded.device
        input_ids = torch.tensor([prompt], device=device)
        budget = self.loaded.max_positions - len(prompt)
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max(1, min(max_new_tokens or inf.max_new_tokens, budget)),
            do_sample=inf.do_sample,
            pad_token_id=self.loaded.tokenizer.pad_token_id,
            eos_token_id=[t for t in {self.loaded.tokenizer.eos_token_id, self.fmt.reply_end[-1] if self.fmt.reply_end else None} if t is not None],
        )
        if inf.do_sample:
            kwargs.update(temperature=inf.temperature, top_p=inf.top_p)
        else:  # silence generation_config sampling defaults under greedy decoding
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

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
            mode: "icl", "lift" or "lift+icl". Default: the config's mode.
            variant: which adapter variant; default the latest.
            context_window: W of the head+tail view; default the adapter's recorded W.
            max_new_tokens: default the config's.
        """
        mode = mode or self.config.inference.mode
        start = time.perf_counter()
        p = self._prepare(question, doc, mode, variant, context_window)
        kwargs = self._generate_kwargs(p.prompt, max_new_tokens)
        with torch.inference_mode(), p.disable:
            out = p.module.generate(**kwargs)
        new = out[0, len(p.prompt) :]
        text = self.loaded.tokenizer.decode(new, skip_special_tokens=True).strip()
        return Answer(text, mode, p.doc_id, p.variant, question, len(p.prompt), int(new.numel()),
                      round(time.perf_counter() - start, 3), p.view)

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
        from transformers import TextIteratorStreamer

        mode = mode or self.config.inference.mode
        start = time.perf_counter()
        p = self._prepare(question, doc, mode, variant, context_window)
        module, disable = p.module, p.disable
        streamer = TextIteratorStreamer(self.loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = self._generate_kwargs(p.prompt, max_new_tokens)
        errors: list[BaseException] = []
        outputs: list[torch.Tensor] = []

        def run() -> None:
            try:
                with torch.inference_mode(), disable:
                    outputs.append(module.generate(**kwargs, streamer=streamer))
            except BaseException as exc:  # surfaced in the caller's thread below
                errors.append(exc)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            yield piece
        thread.join()
        if errors:
            raise errors[0]
        new_tokens = int(outputs[0].shape[1] - len(p.prompt))
        seconds = round(time.perf_counter() - start, 3)
        return Answer("".join(pieces).strip(), mode, p.doc_id, p.variant, question, len(p.prompt), new_tokens, seconds, p.view)


def engine_for_manifest(manifest: Manifest, config: LiftConfig, store: AdapterStore) -> LiftEngine:
    """An engine on the base model a manifest names (ask reads model and variant from the store)."""
    recorded = manifest.config.get("model", {})
    spec = ModelSpec.model_validate({**recorded, "name_or_path": manifest.base_model.model_id, "device": config.model.device})
    cfg = config.model_copy(update={"model": spec})
    return LiftEngine.from_config(cfg, store=store)


def log(msg: str) -> None:
    print(f"lift-ray: {msg}", file=sys.stderr, flush=True)
