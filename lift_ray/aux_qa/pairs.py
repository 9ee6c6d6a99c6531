"""The data of auxiliary QA: one pair, one document's cached report, the generator protocol."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from typing import Protocol

from pydantic import BaseModel, Field

CACHE_VERSION = 2  # 2: the pairs carry their question style (subject / object / cloze)


class AuxQAError(RuntimeError):
    """QA generation failed (an unusable cache entry, a bad document id)."""


class QAPair(BaseModel):
    """One auxiliary task: a question about the document, its short answer and the evidence span."""

    question: str
    answer: str
    evidence: str = Field(description="Text of the document that states the answer (a sentence or a span).")
    sentence_index: int = Field(description="Index of the evidence's sentence in split_sentences(text).")
    generator: str = Field(description="Which generator (and rule) wrote the pair, e.g. 'offline:object'.")
    short_question: str | None = Field(
        None, description="The question without the phrases on its verb that name or number something else ('When "
        "was the chapel built?' for '... built by Methodist weavers?'), as a reader would ask it; trained in the views "
        "aux_qa.short_question_views lists."
    )


class QAReport(BaseModel):
    """The verified pairs of one document and one generator setting, as cached on disk."""

    version: int = CACHE_VERSION
    doc_id: str
    generator: str
    settings: dict
    generated: int = Field(description="Pairs the generator wrote.")
    dropped: int = Field(description="Pairs that failed verification.")
    pairs: list[QAPair]


class QAGenerator(Protocol):
    """What :func:`lift_ray.aux_qa.generate_report` needs of a generator."""

    kind: str
    max_pairs: int

    def settings(self) -> dict: ...

    def cache_key(self) -> str: ...

    def generate(self, text: str, sentences: list[str]) -> list[QAPair]: ...


def settings_key(kind: str, settings: dict) -> str:
    """A cache key naming the generator kind and a hash of its settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return f"{kind}-{digest}"


@functools.cache
def source_digest(*modules: str) -> str:
    """A hash of the named modules' source files: the pairs a generator writes follow its code.

    Caches and adapter variants include it, so an edited rule regenerates pairs and trains again
    even when nobody bumped a version number (stale pairs were read that way once). Without source
    files (a bytecode-only install) the digest is ``"nosource"`` and only the versions count.
    """
    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            return "nosource"
        with open(spec.origin, "rb") as f:
            digest.update(name.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()[:12]
