"""The UI's one client interface and its two backends.

The tabs call a :class:`Backend` and never know which one it is:

* :class:`LocalBackend`: a resident :class:`lift_ray.infer.LiftEngine` in this process (the
  laptop path). Absorbing goes through ``LiftEngine.absorb``, answers through
  ``LiftEngine.stream_answer``, NIAH grids through :func:`lift_ray.niah.run_grid`.
* :class:`HttpBackend`: the Ray Serve application's OpenAI-shaped HTTP API (``GET /v1/models``,
  ``POST /v1/chat/completions`` with ``lift_mode`` and ``stream``, ``POST /v1/documents`` and
  ``GET /v1/documents/{job}`` for absorbing outside the serving replicas).

Every refusal a user can cause (empty text, an unknown document, a server that does not answer
or refuses the key) is a :class:`BackendError` or one of lift-ray's own input errors
(:data:`lift_ray.errors.USER_ERRORS`), which the app shows in the page.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Protocol

from lift_ray.modes import COMPARE_MODES, MODES, check_mode

ProgressFn = Callable[[float, str], None]  # (share done 0-1, what is happening)


class BackendError(RuntimeError):
    """Something the user can fix or retry: shown in the page, the app keeps working."""


@dataclasses.dataclass
class DocRow:
    """One absorbed document as the tabs show it."""

    doc_id: str
    title: str | None = None
    alias: str | None = None
    num_tokens: int | None = None
    adapter_kinds: list[str] = dataclasses.field(default_factory=list)
    created_at: str | None = None
    # "absorbed"; before its adapter is published: "queued" / "absorbing" / "failed" (a Serve job),
    # or "no_adapter" (its text is stored: absorbing in another process, or an absorb that stopped).
    status: str = "absorbed"

    @property
    def label(self) -> str:
        name = self.title or self.alias or "untitled"
        label = f"{name} · {self.doc_id[:10]}"
        return label if self.absorbed else f"{label} ({self.status_text})"

    @property
    def absorbed(self) -> bool:
        return self.status == "absorbed"

    @property
    def status_text(self) -> str:
        """"absorbed", or the state of a document not absorbed yet and what answers it meanwhile."""
        if self.absorbed:
            return "absorbed"
        state = {"no_adapter": "no adapter yet", "failed": "absorb failed"}.get(self.status, self.status)
        return f"{state}: icl and rag answer now"


@dataclasses.dataclass
class AbsorbOutcome:
    doc_id: str
    status: str  # "absorbed" | "already_absorbed"
    num_tokens: int | None
    seconds: float


@dataclasses.dataclass
class Usage:
    """What one streamed answer cost."""

    prompt_tokens: int | None
    completion_tokens: int | None
    seconds: float  # request to last piece
    first_piece_seconds: float | None  # request to first piece (time to first token)
    answered_as: str | None = None  # set when another mode answered (lift+icl as icl, lift+rag as rag: view.ANSWERED_AS_WHY)
    answered_as_reason: str | None = None  # why (lift_ray.modes.EVIDENCE_IN_WINDOW, NOT_BACKED, NO_ADAPTER_YET)

    @property
    def tokens_per_second(self) -> float | None:
        if not self.completion_tokens or self.seconds <= 0:
            return None
        return self.completion_tokens / self.seconds


@dataclasses.dataclass
class DocumentView:
    """A document and the part of it the W-token head…tail view shows (what ICL sees)."""

    text: str
    head_end: int  # characters [0, head_end) are in the view
    tail_start: int  # and so are [tail_start, len(text))
    window: int
    num_tokens: int

    @property
    def covers_document(self) -> bool:
        return self.head_end >= self.tail_start


class Backend(Protocol):
    """What the tabs need from lift-ray."""

    description: str
    concurrency: int  # how many engine calls the app may run at once

    def list_docs(self) -> list[DocRow]: ...

    def absorb(self, text: str, *, title: str | None = None, on_progress: ProgressFn | None = None) -> AbsorbOutcome: ...

    def stream(self, question: str, doc_id: str, mode: str, *, max_new_tokens: int | None = None) -> Generator[str, None, Usage]: ...

    def document_view(self, doc_id: str) -> DocumentView | None: ...

    def training_summary(self) -> str: ...

    def run_niah(self, grid: "NiahRequest", out: Path, on_progress: ProgressFn | None = None) -> dict: ...


@dataclasses.dataclass
class NiahRequest:
    """A NIAH grid as the NIAH tab asks for it."""

    lengths: str  # "256,512"
    depths: str  # "0,50,100"
    needle: str
    question: str
    answer: str
    context_window: int
    haystack: str = ""  # empty: Paul Graham's essays
    modes: tuple[str, ...] = COMPARE_MODES


def _kind_of(variant: str) -> str:
    """The adapter kind a variant name starts with (``<kind>-<hash>``, see lift_ray.store.variant_id)."""
    return variant.rsplit("-", 1)[0]


# --- in-process ---------------------------------------------------------------------------------


class LocalBackend:
    """A resident LiftEngine; one engine call at a time (its adapter state is not shared safely).

    Args:
        engine: the engine, with its store; its config sets W and the training budget.
    """

    concurrency = 1

    def __init__(self, engine):
        self.engine = engine
        self._lock = threading.Lock()
        cfg = engine.config
        self.description = f"in-process engine: {engine.loaded.model_id}, store {engine.store.uri}"
        self._window = cfg.segments.context_window

    def training_summary(self) -> str:
        cfg = self.engine.config
        qa = cfg.aux_qa.generator
        epochs = (
            f"{cfg.aux_qa.stage1_epochs} + {cfg.aux_qa.stage2_epochs} epochs (segments, then segments + QA)"
            if qa != "none"
            else f"{cfg.train.epochs} epochs on segments"
        )
        return (
            f"{cfg.adapter.kind} adapter, W = {cfg.segments.context_window} tokens, "
            f"auxiliary QA: {qa}, {epochs}, lr {cfg.train.learning_rate}"
        )

    def list_docs(self) -> list[DocRow]:
        rows = self.engine.store.list_docs(pending=True)
        return [
            DocRow(
                r["doc_id"],
                r.get("title"),
                r.get("alias"),
                r.get("num_tokens"),
                sorted({_kind_of(v) for v in r["variants"]}),
                r.get("created_at"),
                r["status"],
            )
            for r in rows
        ]

    def absorb(self, text: str, *, title: str | None = None, on_progress: ProgressFn | None = None) -> AbsorbOutcome:
        def report(event) -> None:
            if on_progress is not None:
                on_progress(event.fraction, event.describe())

        with self._lock:
            result = self.engine.absorb(text, progress=False, title=title or None, on_progress=report)
        return AbsorbOutcome(result.doc_id, result.status, result.num_tokens, result.seconds)

    def stream(self, question: str, doc_id: str, mode: str, *, max_new_tokens: int | None = None) -> Generator[str, None, Usage]:
        check_mode(mode)
        start = time.perf_counter()
        first = None
        # Gradio steps a generator from several worker threads, so the lock is a plain Lock (an
        # RLock belongs to one thread). A reader that stops early still lets the engine finish
        # the answer before the lock is released: its generation thread holds the adapter state.
        self._lock.acquire()
        pieces = self.engine.stream_answer(question, doc_id, mode, max_new_tokens=max_new_tokens)
        try:
            while True:
                try:
                    piece = next(pieces)
                except StopIteration as done:
                    answer = done.value
                    break
                if first is None and piece.strip():
                    first = time.perf_counter() - start
                yield piece
        finally:
            try:
                for _ in pieces:  # drained only when the reader stopped early
                    pass
            except Exception:  # noqa: BLE001 (the reader has gone; nothing to report to)
                pass
            self._lock.release()
        other = answer.answered_as != mode
        return Usage(answer.prompt_tokens, answer.new_tokens, time.perf_counter() - start, first,
                     answer.answered_as if other else None, answer.answered_as_reason if other else None)

    def document_view(self, doc_id: str) -> DocumentView | None:
        from lift_ray.evaluate.data import view_char_ranges

        store, cfg = self.engine.store, self.engine.config
        text = store.text(doc_id)
        # A document still absorbing has no manifest yet: the engine's W (its absorb uses the same config).
        window = store.latest_manifest(doc_id).context_window if store.variants(doc_id) else self._window
        tok = self.engine.loaded.tokenizer
        head_end, tail_start = view_char_ranges(text, tok, window, cfg.segments.mixin)
        num_tokens = len(tok(text, add_special_tokens=False)["input_ids"])
        return DocumentView(text, head_end, tail_start, window, num_tokens)

    def _engine_with_window(self, window: int):
        """The resident engine, or a second engine object on the same loaded model with another W."""
        from lift_ray.config import LiftConfig, resolve_config
        from lift_ray.infer import LiftEngine

        engine = self.engine
        if window == engine.config.segments.context_window:
            return engine
        engine.detach()  # the two engine objects share one model: one adapter state at a time
        data = engine.config.model_dump()
        data["segments"].update(context_window=window, segment_length=None)  # ℓ follows W again
        cfg = resolve_config(
            LiftConfig.model_validate(data),
            num_params=engine.loaded.num_params,
            max_positions=engine.loaded.max_positions,
            on_cuda=engine.loaded.device.type == "cuda",
        )
        return LiftEngine(engine.loaded, cfg, engine.store)

    def run_niah(self, grid: NiahRequest, out: Path, on_progress: ProgressFn | None = None) -> dict:
        from lift_ray import niah

        needle = niah.Needle(grid.needle, grid.answer)
        settings = niah.NiahSettings([needle], grid.question, grid.modes)
        lengths, depths = niah.parse_lengths(grid.lengths), niah.parse_depths(grid.depths)
        haystack = (
            niah.Haystack.from_text(grid.haystack, "pasted text") if grid.haystack.strip() else niah.load_haystack(None)
        )
        with self._lock:
            engine = self._engine_with_window(int(grid.context_window))
            try:
                return niah.run_grid(engine, haystack, lengths, depths, settings, out, progress=False, on_progress=on_progress)
            finally:
                if engine is not self.engine:
                    engine.detach()


# --- over HTTP ----------------------------------------------------------------------------------


class HttpBackend:
    """The Serve application's HTTP API (lift-ray serve).

    Args:
        url: the Serve application's base URL (``http://127.0.0.1:8000``; a trailing ``/v1`` is fine).
        api_key: bearer token, or None when the server runs without auth.
        timeout: seconds to wait for the server to answer a request (not for a whole answer).
        poll_interval: seconds between absorb status polls.
    """

    concurrency = 4  # the server batches and queues; the page only limits what it sends

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 30.0, poll_interval: float = 0.5):
        import httpx

        base = url.rstrip("/")
        self.base = base[: -len("/v1")] if base.endswith("/v1") else base
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.base, headers=headers, timeout=httpx.Timeout(timeout, read=None))
        self.poll_interval = poll_interval
        self.description = f"Serve API at {self.base}"
        self._texts: dict[str, str] = {}  # documents absorbed from this page: their text for the window view
        self._tokenizer = None

    def training_summary(self) -> str:
        return "the Serve application's training settings (set when `lift-ray serve` started)"

    # --- plumbing ---
    def _request(self, method: str, path: str, **kwargs):
        import httpx

        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise BackendError(f"the Serve API at {self.base} does not answer ({type(exc).__name__}: {exc})") from None
        if response.status_code >= 400:
            raise BackendError(self._error_message(response))
        return response

    def _error_message(self, response) -> str:
        message = None
        try:
            body = response.json()
            message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("detail")
        except (ValueError, AttributeError):
            pass
        if response.status_code == 401:
            return f"the Serve API at {self.base} refused the API key ({message or 'HTTP 401'})"
        return f"the Serve API answered {response.status_code}: {message or response.text[:300]}"

    # --- the interface ---
    def _models(self) -> list[dict]:
        return self._request("GET", "/v1/models").json().get("data", [])

    def list_docs(self) -> list[DocRow]:
        from lift_ray.store import is_doc_id

        rows = []
        # GET /v1/documents: the absorbed documents and those whose adapter is not published yet.
        for d in self._request("GET", "/v1/documents").json().get("data", []):
            doc_id = str(d.get("doc_id") or "")
            if not is_doc_id(doc_id):
                continue
            kinds = sorted({_kind_of(v) for v in d.get("variants") or []})
            created = d.get("created")
            if isinstance(created, (int, float)):
                created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
            rows.append(DocRow(doc_id, d.get("title"), d.get("alias"), d.get("tokens"), kinds, created,
                               str(d.get("status") or "absorbed")))
        return rows

    def absorb(self, text: str, *, title: str | None = None, on_progress: ProgressFn | None = None) -> AbsorbOutcome:
        from lift_ray.text import normalize_text

        if not text.strip():
            raise BackendError("the document is empty")
        start = time.perf_counter()
        body = {"text": text, **({"title": title} if title else {})}
        job = self._request("POST", "/v1/documents", json=body).json()
        job_id = job.get("id") or job.get("job_id")
        if not job_id:
            raise BackendError(f"the Serve API accepted the document but returned no job id: {job}")
        while True:
            status = self._request("GET", f"/v1/documents/{job_id}").json()
            state = status.get("status")
            if state in ("absorbed", "already_absorbed"):
                doc_id = status.get("doc_id") or job.get("doc_id")
                self._texts[doc_id] = normalize_text(text)
                if status.get("already_absorbed"):
                    state = "already_absorbed"
                tokens = status.get("num_tokens") or status.get("tokens")
                return AbsorbOutcome(doc_id, state, tokens, round(time.perf_counter() - start, 3))
            if state == "failed":
                raise BackendError(f"absorbing failed on the server: {status.get('reason') or status.get('error') or status}")
            if on_progress is not None:
                on_progress(_job_fraction(status), _job_text(status))
            time.sleep(self.poll_interval)

    def stream(self, question: str, doc_id: str, mode: str, *, max_new_tokens: int | None = None) -> Generator[str, None, Usage]:
        import httpx

        check_mode(mode)
        if not question.strip():
            raise BackendError("the question is empty")
        body = {
            "model": doc_id,
            "messages": [{"role": "user", "content": question}],
            "lift_mode": mode,
            "stream": True,
            "stream_options": {"include_usage": True},
            **({"max_tokens": max_new_tokens} if max_new_tokens else {}),
        }
        start = time.perf_counter()
        first = None
        usage: dict = {}
        lift: dict = {}
        try:
            with self._client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise BackendError(self._error_message(response))
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[len("data:") :].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if chunk.get("error"):
                        raise BackendError(f"the Serve API stopped the answer: {chunk['error'].get('message', chunk['error'])}")
                    usage = chunk.get("usage") or usage
                    lift = chunk.get("lift") or lift
                    for choice in chunk.get("choices", []):
                        piece = (choice.get("delta") or {}).get("content") or ""
                        if piece:
                            if first is None:
                                first = time.perf_counter() - start
                            yield piece
        except httpx.HTTPError as exc:
            raise BackendError(f"the Serve API at {self.base} does not answer ({type(exc).__name__}: {exc})") from None
        answered_as = lift.get("answered_as")
        other = answered_as != mode
        return Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"), time.perf_counter() - start, first,
                     answered_as if other else None, lift.get("answered_as_reason") if other else None)

    def document_view(self, doc_id: str) -> DocumentView | None:
        """The view of a document absorbed from this page (the API serves no document text)."""
        text = self._texts.get(doc_id)
        entry = next((m for m in self._models() if m.get("id") == doc_id), None)
        window = (entry or {}).get("context_window")
        tokenizer = self._base_tokenizer()
        if text is None or not window or tokenizer is None:
            return None
        from lift_ray.evaluate.data import view_char_ranges

        head_end, tail_start = view_char_ranges(text, tokenizer, int(window), " ... ")
        return DocumentView(text, head_end, tail_start, int(window), len(tokenizer(text, add_special_tokens=False)["input_ids"]))

    def _base_tokenizer(self):
        """The served base model's tokenizer when it is on this machine too (a local directory)."""
        if self._tokenizer is None:
            from lift_ray.store import is_doc_id

            base = next((m for m in self._models() if not is_doc_id(str(m.get("id", "")))), None)
            path = (base or {}).get("id")
            if path and Path(path).is_dir():
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(path)
        return self._tokenizer

    def run_niah(self, grid: NiahRequest, out: Path, on_progress: ProgressFn | None = None) -> dict:
        raise BackendError(
            "NIAH grids run with the in-process engine: the Serve API has no grid endpoint. "
            "Start `lift-ray ui` without --serve-url, or load a results.json from `lift-ray niah --out`."
        )


def _job_progress(status: dict) -> dict:
    """A job's training progress: the ``progress`` object of the Serve app's job, or top-level fields."""
    progress = status.get("progress")
    return progress if isinstance(progress, dict) else status


def _job_fraction(status: dict) -> float:
    p = _job_progress(status)
    epoch, epochs = p.get("epoch"), p.get("epochs")
    index, count = p.get("stage_index") or p.get("index"), p.get("stages") or p.get("count")
    within = float(epoch) / float(epochs) if isinstance(epoch, (int, float)) and isinstance(epochs, (int, float)) and epochs else 0.0
    if isinstance(index, int) and isinstance(count, int) and count:
        return min(1.0, ((index - 1) + within) / count)
    return min(1.0, within)


def _job_text(status: dict) -> str:
    """"absorbing · segments+QA · epoch 3 · loss 0.412" from a job's status."""
    p = _job_progress(status)
    parts = [str(status.get("status", "queued"))]
    if p.get("stage"):
        index, count = p.get("stage_index") or p.get("index"), p.get("stages") or p.get("count")
        parts.append(f"stage {index}/{count} {p['stage']}" if index and count else str(p["stage"]))
    if p.get("epoch") is not None:
        parts.append(f"epoch {p['epoch']}" + (f"/{p['epochs']}" if p.get("epochs") else ""))
    if isinstance(p.get("loss"), (int, float)):
        parts.append(f"loss {p['loss']:.3f}")
    return " · ".join(parts)


def make_backend(*, serve_url: str | None = None, api_key_env: str | None = None, engine=None, config=None):
    """The HTTP backend for a Serve URL, else an in-process engine (``engine``, or one built from ``config``)."""
    if serve_url:
        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            raise BackendError(f"--api-key-env {api_key_env}: that environment variable is not set")
        return HttpBackend(serve_url, key)
    if engine is None:
        from lift_ray.infer import LiftEngine

        engine = LiftEngine.from_config(config)
    return LocalBackend(engine)


__all__ = [
    "AbsorbOutcome", "Backend", "BackendError", "DocRow", "DocumentView", "HttpBackend", "LocalBackend",
    "MODES", "NiahRequest", "Usage", "make_backend",
]
