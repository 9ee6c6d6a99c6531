"""The HTTP API's shapes: OpenAI-compatible requests, responses and errors (no Ray, no torch).

Errors always have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` so the
official ``openai`` client raises its usual exceptions (NotFoundError, BadRequestError, ...).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lift_ray.modes import DEFAULT_MODE, MODES, ModeError, check_mode

BASE_MODEL_KIND = "base"
_JOB_ID = re.compile(r"^absorb-[0-9a-f]{16}$")
_RESOURCE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ApiError(Exception):
    """An error the API answers with: HTTP status and OpenAI's error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def model_not_found(model: str) -> ApiError:
    return ApiError(404, f"The model {model!r} does not exist: use a document id, its alias, or doc_id:variant "
                         "(GET /v1/models lists them)", param="model", code="model_not_found")


def overloaded(message: str = "the server is overloaded; retry shortly") -> ApiError:
    return ApiError(503, message, type="server_error", code="overloaded", headers={"Retry-After": "1"})


def check_resource_id(value: str, what: str = "id") -> str:
    """Ids in URL paths: letters, digits, '-' and '_' only, so no path character reaches the store."""
    if not _RESOURCE_ID.match(value):
        raise ApiError(400, f"invalid {what} {value!r}: letters, digits, '-' and '_' only", param=what, code="invalid_id")
    return value


def is_job_id(value: str) -> bool:
    return bool(_JOB_ID.match(value))


def new_job_id() -> str:
    return f"absorb-{uuid.uuid4().hex[:16]}"


# --- chat completions ----------------------------------------------------------------------------


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class ChatRequest(BaseModel):
    """POST /v1/chat/completions. Unknown OpenAI fields (user, seed, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1)
    lift_mode: str = Field(DEFAULT_MODE, description="Answer mode: " + ", ".join(MODES))
    max_tokens: int | None = Field(None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(None, ge=1, le=8192)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="Only one choice per request.")

    @field_validator("lift_mode")
    @classmethod
    def _known_mode(cls, v: str) -> str:
        try:
            return check_mode(v)
        except ModeError as exc:
            raise ValueError(str(exc)) from None

    def question(self) -> str:
        """The last user message: the question."""
        for message in reversed(self.messages):
            if message.role == "user" and message.text().strip():
                return message.text()
        raise ApiError(400, "messages must contain a non-empty user message (the question)", param="messages")

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class DocumentRequest(BaseModel):
    """POST /v1/documents with a JSON body (a file upload carries the same fields as form data)."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1)
    alias: str | None = Field(None, max_length=200)
    title: str | None = Field(None, max_length=500)


def parse(model: type[BaseModel], data: Any) -> BaseModel:
    """Validate a request body; a 400 naming the first offending field (OpenAI's ``param``)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(x) for x in err["loc"]) or None
        raise ApiError(400, f"invalid request: {param or 'body'}: {err['msg']}", param=param, code="invalid_value") from None


# --- responses -------------------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def lift_info(result: dict[str, Any]) -> dict[str, Any]:
    return {"doc_id": result["doc_id"], "variant": result["variant"], "mode": result["mode"], "view": result.get("view"),
            "answered_as": result.get("answered_as"), "answered_as_reason": result.get("answered_as_reason")}


def usage(prompt_tokens: int, new_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": new_tokens, "total_tokens": prompt_tokens + new_tokens}


def chat_completion(model: str, result: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat.completion from an engine answer (``Answer.to_json()``)."""
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result["answer"]},
                     "finish_reason": result["finish_reason"], "logprobs": None}],
        "usage": usage(result["prompt_tokens"], result["new_tokens"]),
        "lift": lift_info(result),
    }


def chat_chunk(cid: str, model: str, created: int, delta: dict[str, Any], finish_reason: str | None = None,
               **extra: Any) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        **extra,
    }


def _unix_time(iso: str) -> int:
    import datetime as dt

    return int(dt.datetime.fromisoformat(iso).timestamp())


def document_entry(row: dict[str, Any]) -> dict[str, Any]:
    """A document as GET /v1/documents shows it (a row of ``AdapterStore.list_docs(pending=True)``):
    ``absorbed`` with its variants, or ``no_adapter`` while its text is stored and no adapter published."""
    created = row.get("created_at")
    return {
        "id": row["doc_id"],
        "object": "document",
        "doc_id": row["doc_id"],
        "status": "absorbed" if row["variants"] else "no_adapter",
        "alias": row.get("alias"),
        "title": row.get("title"),
        "tokens": row.get("num_tokens"),
        "variants": row["variants"],
        "created": _unix_time(created) if created else None,
    }


def model_entry(row: dict[str, Any], kinds: list[str]) -> dict[str, Any]:
    """A /v1/models entry for one document (a row of ``AdapterStore.list_docs``)."""
    created = _unix_time(row["created_at"])
    return {
        "id": row["doc_id"],
        "object": "model",
        "created": created,
        "owned_by": "lift-ray",
        "alias": row.get("alias"),
        "title": row.get("title"),
        "tokens": row["num_tokens"],
        "adapter_kinds": kinds,
        "variants": row["variants"],
    }
