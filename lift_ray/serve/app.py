"""The Ray Serve application: an OpenAI-compatible HTTP API over :class:`lift_ray.infer.LiftEngine`.

    HTTP ──> LiftIngress (FastAPI: auth, body limit, validation, model -> document, errors)
               │ .options(multiplexed_model_id=doc)            │ submit / status
               v                                               v
             LiftModel × replicas                            DocumentJobs actor
               one base model + K resident adapters            its own base model; absorbs
               (@serve.multiplexed), @serve.batch feeds        POSTed documents into the store
               LiftEngine.answer_batch                         (never inside a serving replica)

A shim: generation, batching, caching and streaming live in the engine; this module adds routing,
request plumbing and the OpenAI shapes (:mod:`lift_ray.serve.api`).
"""


import asyncio
import dataclasses
import json
import os
import queue
import threading
import time
import traceback
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from lift_ray.config import ServeConfig
from lift_ray.serve import api

INGRESS = "LiftIngress"
MODEL = "LiftModel"


# --- errors from the engine -------------------------------------------------------------------------


def error_result(exc: BaseException) -> dict[str, Any]:
    """An engine exception as ``{"status", "error"}`` (what the ingress answers with)."""
    from lift_ray.text import DocumentError
    from lift_ray.adapters.base import AdapterError
    from lift_ray.config import ConfigError
    from lift_ray.infer import QuestionError
    from lift_ray.store import AdapterNotFound, AdapterNotReady, DocumentNotFound, StoreError

    message = " ".join(str(exc).split())[:1000]
    if isinstance(exc, api.ApiError):
        err = exc
    elif isinstance(exc, QuestionError):
        code = "context_length_exceeded" if "does not fit" in message else "invalid_value"
        err = api.ApiError(400, message, param="messages", code=code)
    elif isinstance(exc, AdapterNotReady):  # absorbing: icl and rag answer already
        err = api.ApiError(409, message, param="model", code="adapter_not_ready", headers={"Retry-After": "30"})
    elif isinstance(exc, (DocumentNotFound, AdapterNotFound)):
        err = api.ApiError(404, message, param="model", code="model_not_found")
    elif isinstance(exc, (StoreError, AdapterError, ConfigError)):  # corrupt or mismatched adapter: this document only
        err = api.ApiError(500, message, type="server_error", code="adapter_error")
    elif isinstance(exc, DocumentError):
        err = api.ApiError(400, message, param="text", code="invalid_document")
    else:
        traceback.print_exception(exc)
        err = api.ApiError(500, f"{type(exc).__name__}: {message}", type="server_error", code="internal_error")
    return {"status": err.status, **err.body(), "headers": err.headers}


def raise_result(result: dict[str, Any]) -> dict[str, Any]:
    if "error" in result:
        e = result["error"]
        raise api.ApiError(result["status"], e["message"], e["type"], e["param"], e["code"], result.get("headers"))
    return result


def split_model_id(model_id: str) -> tuple[str, str | None]:
    doc_id, _, variant = model_id.partition(":")
    return doc_id, variant or None


# --- the model deployment ---------------------------------------------------------------------------


class _AdapterLease:
    """What Serve's multiplexing LRU holds per document; eviction drops the engine's adapter (after
    any in-flight request using it: the engine pins adapters while they generate)."""

    def __init__(self, engine, doc_id: str, variant: str | None):
        self.engine, self.doc_id, self.variant = engine, doc_id, variant
        self._released = False

    def __del__(self):
        if not self._released:
            self._released = True
            self.engine.evict(self.doc_id, self.variant)


@serve.deployment(name=MODEL, health_check_period_s=10, health_check_timeout_s=30)
class LiftModel:
    """One base model, up to K documents' adapters, batched answers.

    Args:
        args: a ServeConfig as a dict.
        engine_cls: the engine class (tests bind a fake); default :class:`lift_ray.infer.LiftEngine`.
    """

    def __init__(self, args: dict[str, Any], engine_cls: type | None = None):
        import torch

        from lift_ray.infer import LiftEngine

        self.args = ServeConfig.model_validate(args)
        torch.set_num_threads(self.args.threads or max(1, int(self.args.cpus_per_replica)))
        engine_cls = engine_cls or LiftEngine
        k = self.args.adapters_per_replica
        self.engine = engine_cls.from_config(self.args.lift_config(), max_resident=k, manifest_ttl=self.args.manifest_ttl_s)
        async def load_adapter(model_id: str) -> _AdapterLease:  # serve.multiplexed marks a plain function
            return await self._load_adapter(model_id)

        self._adapter = serve.multiplexed(max_num_models_per_replica=k)(load_adapter)
        self._batched = serve.batch(max_batch_size=self.args.max_batch_size,
                                    batch_wait_timeout_s=self.args.batch_wait_timeout_s)(self._answer_batch)
        self._stop = threading.Event()
        # Deletes by other processes: resident adapters of deleted documents go within the TTL.
        threading.Thread(target=self._refresh_loop, name="lift-ray-refresh", daemon=True).start()

    def _refresh_loop(self) -> None:
        while not self._stop.wait(max(self.args.manifest_ttl_s, 0.5)):
            try:
                self.engine.refresh()
            except Exception:  # a store hiccup must not kill the replica; the next round retries
                traceback.print_exc()

    async def _load_adapter(self, model_id: str) -> _AdapterLease:
        doc_id, variant = split_model_id(model_id)
        await asyncio.to_thread(self.engine.attach, doc_id, variant)
        return _AdapterLease(self.engine, doc_id, variant)

    async def _ensure_adapter(self, request: dict[str, Any]) -> None:
        from lift_ray.modes import uses_adapter
        from lift_ray.store import DocumentNotFound

        if uses_adapter(request["mode"]):
            try:
                await self._adapter(serve.get_multiplexed_model_id())
            except DocumentNotFound:
                # No manifest: the engine answers in the base mode while the document is being absorbed,
                # and says what is missing otherwise. A damaged adapter fails here, once.
                pass

    async def _answer_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from lift_ray.infer import Answer, Question

        results = await asyncio.to_thread(self.engine.answer_batch, [Question(**r) for r in requests])
        return [r.to_json() if isinstance(r, Answer) else error_result(r) for r in results]

    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """One question (``lift_ray.infer.Question`` fields); batched with concurrent ones."""
        try:
            await self._ensure_adapter(request)
            return await self._batched(request)
        except Exception as exc:
            return error_result(exc)

    async def stream(self, request: dict[str, Any]):
        """Yield ``{"ready"}`` (or one error) first, then ``{"text"}`` pieces and one ``{"end"}``."""
        from lift_ray.infer import Question

        try:
            await self._ensure_adapter(request)
            items = await asyncio.to_thread(self.engine.stream, Question(**request))
        except Exception as exc:
            yield error_result(exc)
            return
        yield {"ready": True}
        loop = asyncio.get_running_loop()
        out: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def pump() -> None:  # the engine's iterator lives in this thread only; closing it stops generation
            try:
                for item in items:
                    loop.call_soon_threadsafe(out.put_nowait, item)
                    if stop.is_set():
                        break
                loop.call_soon_threadsafe(out.put_nowait, None)
            except Exception as exc:
                loop.call_soon_threadsafe(out.put_nowait, exc)
            finally:
                items.close()

        thread = threading.Thread(target=pump, name="lift-ray-stream-pump", daemon=True)
        thread.start()
        try:
            while (item := await out.get()) is not None:
                if isinstance(item, Exception):
                    yield error_result(item)
                    return
                yield {"text": item} if isinstance(item, str) else {"end": dataclasses.asdict(item)}
        finally:
            stop.set()

    def check_health(self) -> None:
        if self.engine is None or self.engine.loaded.model is None:
            raise RuntimeError("the engine has no model")

    def resident(self) -> list[tuple[str, str]]:
        return self.engine.resident_adapters()

    def pid(self) -> int:
        return os.getpid()

    def __del__(self):
        self._stop.set()


# --- absorbing documents ------------------------------------------------------------------------------


class DocumentJobs:
    """Absorbs POSTed documents one after another with its own base model, outside the serving replicas.

    A Ray actor (named per app); the ingress submits and polls, a worker thread absorbs, so status
    calls answer while a document trains.
    """

    def __init__(self, args: dict[str, Any]):
        self.args = ServeConfig.model_validate(args)
        self.jobs: dict[str, dict[str, Any]] = {}
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._work, name="lift-ray-absorb", daemon=True).start()

    def submit(self, job_id: str, doc_id: str, text: str, alias: str | None, title: str | None) -> dict[str, Any]:
        job = {"id": job_id, "object": "document.job", "doc_id": doc_id, "status": "queued", "alias": alias,
               "title": title, "created": int(time.time()), "progress": None, "error": None}
        with self._lock:
            self.jobs[job_id] = job
        self._queue.put((job_id, text))
        return dict(job)

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self.jobs.get(job_id)
            return dict(job) if job else None

    def latest_jobs(self) -> dict[str, dict[str, Any]]:
        """Each document's latest job (the first submitted of those created in the same second)."""
        latest: dict[str, dict[str, Any]] = {}
        with self._lock:
            for job in self.jobs.values():
                if job["doc_id"] not in latest or job["created"] > latest[job["doc_id"]]["created"]:
                    latest[job["doc_id"]] = job
            return {doc_id: dict(job) for doc_id, job in latest.items()}

    def latest_for(self, doc_id: str) -> dict[str, Any] | None:
        return self.latest_jobs().get(doc_id)

    def doc_for_alias(self, alias: str) -> str | None:
        """The document of the latest job that has not failed with this alias (asked about while absorbing)."""
        with self._lock:
            jobs = [j for j in self.jobs.values() if j["alias"] == alias and j["status"] != "failed"]
            return max(jobs, key=lambda j: j["created"])["doc_id"] if jobs else None

    def _update(self, job_id: str, **fields: Any) -> None:
        with self._lock:
            self.jobs[job_id].update(fields)

    def _work(self) -> None:
        import torch

        from lift_ray.infer import LiftEngine

        torch.set_num_threads(max(1, int(self.args.absorb_cpus)))
        engine = None
        while True:
            job_id, text = self._queue.get()
            job = self.get(job_id)
            self._update(job_id, status="absorbing")
            try:
                if engine is None:
                    engine = LiftEngine.from_config(self.args.lift_config())
                result = engine.absorb(text, progress=False, alias=job["alias"], title=job["title"],
                                       on_epoch=lambda r, j=job_id: self._update(j, progress=_progress(r)))
                self._update(job_id, status="absorbed", variant=result.variant, num_tokens=result.num_tokens,
                             already_absorbed=result.status == "already_absorbed", seconds=result.seconds)
            except Exception as exc:  # reported through GET /v1/documents/{id}; the next job still runs
                traceback.print_exc()
                self._update(job_id, status="failed", error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}")


def _progress(record) -> dict:
    """What GET /v1/documents/{id} shows of an epoch (a lift_ray.train.EpochRecord)."""
    check = record.check.answer_accuracy if record.check is not None else None
    return {"stage": record.stage, "epoch": record.epoch, "loss": round(record.loss, 5), "check_accuracy": check}


# --- the ingress --------------------------------------------------------------------------------------

app = FastAPI(title="lift-ray", description="Questions about absorbed documents, OpenAI-compatible (model = document).")


def _error_response(err: api.ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


@app.exception_handler(api.ApiError)
async def _api_error(request: Request, exc: api.ApiError) -> JSONResponse:
    return _error_response(exc)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(x) for x in err["loc"][1:]) or None
    return _error_response(api.ApiError(400, f"invalid request: {param}: {err['msg']}", param=param, code="invalid_value"))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
    return _error_response(api.ApiError(exc.status_code, str(exc.detail), type=kind))


@app.middleware("http")
async def _guard(request: Request, call_next):
    """Bearer auth (when configured) and the body size limit, before any handler runs."""
    ingress: LiftIngress | None = getattr(request.app.state, "ingress", None)
    path = request.scope["path"]
    root = request.scope.get("root_path", "")
    if path.startswith(root):  # an app under a route prefix sees the prefix in the path
        path = path[len(root):]
    if ingress is not None and path != "/healthz":
        if ingress.api_key is not None:
            import hmac

            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), ingress.api_key.encode()):
                return _error_response(api.ApiError(401, "Incorrect or missing API key (Authorization: Bearer <key>)",
                                                    code="invalid_api_key"))
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > ingress.args.max_request_bytes:
            return _error_response(api.ApiError(413, f"request body over {ingress.args.max_request_bytes} bytes",
                                                code="request_too_large"))
    return await call_next(request)


@serve.deployment(name=INGRESS, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=512)
@serve.ingress(app)
class LiftIngress:
    """The HTTP face: validation, auth, model -> document resolution, OpenAI shapes and errors."""

    def __init__(self, model, args: dict[str, Any]):
        from lift_ray.config import default_store_uri
        from lift_ray.store import AdapterStore

        self.args = ServeConfig.model_validate(args)
        self.model = model
        self.config = self.args.lift_config()
        self.store = AdapterStore(self.config.store.uri or default_store_uri())
        self.api_key = os.environ.get(self.args.api_key_env) if self.args.api_key_env else None
        if self.args.api_key_env and not self.api_key:
            raise RuntimeError(f"api_key_env={self.args.api_key_env} but that variable is empty in the ingress")
        self.base_model_id = self.config.model.name_or_path
        self._listing: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self._jobs = None
        app.state.ingress = self

    # --- helpers --------------------------------------------------------------------------------
    @property
    def jobs(self):
        import ray

        if self._jobs is None:
            actor = ray.remote(DocumentJobs).options(
                name=f"{self.args.name}-documents", namespace="lift-ray", lifetime="detached", get_if_exists=True,
                num_cpus=self.args.absorb_cpus, num_gpus=self.args.absorb_gpus, max_concurrency=8,
            )
            self._jobs = actor.remote(self.args.model_dump())
        return self._jobs

    def _existing_jobs(self):
        """The jobs actor if any ingress replica has started it, else None (asking must not start one)."""
        import ray

        if self._jobs is None:
            try:
                self._jobs = ray.get_actor(f"{self.args.name}-documents", namespace="lift-ray")
            except ValueError:
                return None
        return self._jobs

    async def _body(self, request: Request) -> bytes:
        limit = self.args.max_request_bytes
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise api.ApiError(413, f"request body over {limit} bytes", code="request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _json(self, request: Request) -> Any:
        raw = await self._body(request)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise api.ApiError(400, f"the body is not valid JSON ({exc})", code="invalid_json") from None

    async def _docs(self, max_age: float) -> list[dict[str, Any]]:
        stamp, rows = self._listing
        if time.monotonic() - stamp >= max_age:
            rows = await asyncio.to_thread(self.store.list_docs)
            self._listing = (time.monotonic(), rows)
        return rows

    async def _resolve(self, model: str) -> tuple[str, str | None]:
        """(doc_id, variant) for a doc id, an alias, or doc_id:variant; 404 model_not_found otherwise."""
        from lift_ray.store import StoreError, check_variant, is_doc_id

        doc, _, variant = model.partition(":")
        if is_doc_id(doc):
            if variant:
                try:
                    if await asyncio.to_thread(self.store.has, doc, check_variant(variant)):
                        return doc, variant
                except StoreError:  # not a variant's shape: no such model
                    pass
            elif await asyncio.to_thread(self.store.has_document, doc):
                return doc, None  # absorbed, or POSTed and not absorbed yet (icl and rag answer): the text is there
            raise api.model_not_found(model)
        if model == self.base_model_id:
            raise api.ApiError(400, f"{model!r} is the base model: ask about a document (model = its id or alias)",
                               param="model", code="model_not_document")
        for max_age in (self.args.manifest_ttl_s, 0.0):  # a cached listing first, then a fresh one
            hits = [r["doc_id"] for r in await self._docs(max_age) if r.get("alias") == model]
            if hits:
                return hits[0], None
        jobs = self._existing_jobs()  # an alias POSTed and not absorbed yet (no actor: nothing was POSTed)
        pending = await jobs.doc_for_alias.remote(model) if jobs is not None else None
        if pending is not None and await asyncio.to_thread(self.store.has_document, pending):
            return pending, None
        raise api.model_not_found(model)

    async def _call(self, response):
        """Await a model-deployment call, turning Serve's overload and replica loss into 503s."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
        from ray.serve.exceptions import BackPressureError

        try:
            return await response
        except BackPressureError:
            raise api.overloaded() from None
        except (ActorDiedError, ActorUnavailableError, RayActorError):
            raise api.overloaded("the model replica was lost; retry shortly") from None

    # --- endpoints ------------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        rows = await self._docs(0.0)
        data = []
        for row in rows:
            kinds = sorted({v.rsplit("-", 1)[0] for v in row["variants"]})
            data.append(api.model_entry(row, kinds))
        data.append({"id": self.base_model_id, "object": "model", "created": 0, "owned_by": "lift-ray",
                     "lift_kind": api.BASE_MODEL_KIND})
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request):
        req: api.ChatRequest = api.parse(api.ChatRequest, await self._json(request))  # type: ignore[assignment]
        question = req.question()
        doc_id, variant = await self._resolve(req.model)
        payload = {"question": question, "doc": doc_id, "mode": req.lift_mode, "variant": variant,
                   "max_new_tokens": req.new_tokens(), "temperature": req.temperature, "top_p": req.top_p}
        handle = self.model.options(multiplexed_model_id=f"{doc_id}:{variant}" if variant else doc_id)
        if not req.stream:
            result = raise_result(await self._call(handle.answer.remote(payload)))
            return api.chat_completion(req.model, result)
        stream = handle.options(stream=True).stream.remote(payload)
        first = await self._call(stream.__anext__())
        raise_result(first)  # errors are decided before the stream starts
        return StreamingResponse(self._sse(stream, req.model), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def _sse(self, stream, model: str):
        cid, created = api.completion_id(), int(time.time())

        def event(obj: dict[str, Any]) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        try:
            yield event(api.chat_chunk(cid, model, created, {"role": "assistant", "content": ""}))
            async for item in stream:
                if "text" in item:
                    yield event(api.chat_chunk(cid, model, created, {"content": item["text"]}))
                elif "end" in item:
                    end = item["end"]
                    yield event(api.chat_chunk(cid, model, created, {}, end["finish_reason"],
                                               usage=api.usage(end["prompt_tokens"], end["new_tokens"]),
                                               lift=api.lift_info(end)))
                else:  # an error after the first piece: reported in the stream, which then ends
                    yield event({"error": item["error"]})
                    break
            yield "data: [DONE]\n\n"
        finally:
            stream.cancel()  # the client went away: the replica stops generating

    @app.post("/v1/documents", status_code=202)
    async def post_document(self, request: Request):
        from lift_ray.text import DocumentError, check_document_text, decode_document
        from lift_ray.store import doc_id_for

        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_part_size=self.args.max_request_bytes)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise api.ApiError(400, "multipart upload needs a 'file' part", param="file")
            data = await upload.read()
            try:
                text = decode_document(data, upload.filename or "file")
            except DocumentError as exc:
                raise api.ApiError(400, str(exc), param="file", code="invalid_document") from None
            fields = {"text": text, "alias": form.get("alias") or upload.filename, "title": form.get("title")}
        else:
            fields = await self._json(request)
        req: api.DocumentRequest = api.parse(api.DocumentRequest, fields)  # type: ignore[assignment]
        try:
            text = check_document_text(req.text, self.config.segments.max_document_chars)
        except DocumentError as exc:
            raise api.ApiError(400, str(exc), param="text", code="invalid_document") from None
        doc_id = doc_id_for(text)
        # Stored now, so icl and rag answer while the job waits and trains (adapted modes: as those two).
        await asyncio.to_thread(self.store.put_document, doc_id, text)
        job = await self.jobs.submit.remote(api.new_job_id(), doc_id, text, req.alias, req.title)
        return JSONResponse(job, status_code=202, headers={"Location": f"/v1/documents/{job['id']}"})

    @app.get("/v1/documents/{doc}")
    async def get_document(self, doc: str) -> dict[str, Any]:
        """A job's state (``absorb-…`` id) or a document's (doc id: its latest job, else the store)."""
        from lift_ray.store import is_doc_id

        api.check_resource_id(doc)
        if api.is_job_id(doc):
            job = await self.jobs.get.remote(doc)
            if job is None:
                raise api.ApiError(404, f"no document job {doc}", param="id", code="not_found")
            return job
        if not is_doc_id(doc):
            raise api.ApiError(400, f"invalid document id {doc!r}: 32 lowercase hex characters or a job id",
                               param="id", code="invalid_id")
        manifests = await asyncio.to_thread(self.store.manifests, doc)
        if manifests:
            m = max(manifests, key=lambda m: m.created_at)
            return api.document_entry({"doc_id": doc, "alias": m.alias, "title": m.title, "num_tokens": m.num_tokens,
                                       "variants": [x.variant for x in manifests], "created_at": m.created_at})
        job = await self.jobs.latest_for.remote(doc)
        if job is not None:
            return job
        row = await asyncio.to_thread(self.store.document_row, doc, pending=True)
        if row is not None:  # its text is stored: absorbing elsewhere, or its absorb stopped
            return api.document_entry(row)
        raise api.model_not_found(doc)

    @app.get("/v1/documents")
    async def list_documents(self) -> dict[str, Any]:
        """Every document in the store, absorbed or not yet: an absorbed one as GET /v1/documents/{doc_id}
        shows it; one whose adapter is not published, as its latest job here (queued, absorbing with
        progress, failed with error), else ``no_adapter`` (absorbing elsewhere, or its absorb stopped).
        Those answer in icl and rag already."""
        rows = await asyncio.to_thread(self.store.list_docs, pending=True)
        jobs = self._existing_jobs()  # no actor: nothing was POSTed to this app
        latest = await jobs.latest_jobs.remote() if jobs is not None else {}
        data = [api.document_entry(row) if row["variants"] else latest.get(row["doc_id"]) or api.document_entry(row)
                for row in rows]
        return {"object": "list", "data": data}

    @app.delete("/v1/documents/{doc_id}")
    async def delete_document(self, doc_id: str) -> dict[str, Any]:
        from lift_ray.store import DocumentNotFound, is_doc_id

        api.check_resource_id(doc_id)
        if not is_doc_id(doc_id):
            raise api.ApiError(400, f"invalid document id {doc_id!r}: 32 lowercase hex characters", param="doc_id",
                               code="invalid_id")
        try:
            removed = await asyncio.to_thread(self.store.delete, doc_id)
        except DocumentNotFound:
            raise api.model_not_found(doc_id) from None
        self._listing = (0.0, [])
        # Replicas drop its adapters within manifest_ttl_s (their refresh loop); questions 404 from now on.
        return {"id": doc_id, "object": "document", "deleted": True, "variants": removed}


def build_app(args: ServeConfig, engine_cls: type | None = None):
    """The Serve application for ``args`` (``engine_cls``: an engine class for tests)."""
    env = {}
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise ValueError(f"api_key_env={args.api_key_env}: set that environment variable to the key clients send")
        env[args.api_key_env] = key  # forwarded to the ingress replica's environment
    model = LiftModel.options(
        num_replicas=args.replicas,
        max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=args.max_queued_requests,
        ray_actor_options={"num_cpus": args.cpus_per_replica, "num_gpus": args.gpus_per_replica},
    ).bind(args.model_dump(), engine_cls)
    options: dict[str, Any] = {"num_cpus": 0}
    if env:
        options["runtime_env"] = {"env_vars": env}
    return LiftIngress.options(ray_actor_options=options).bind(model, args.model_dump())
