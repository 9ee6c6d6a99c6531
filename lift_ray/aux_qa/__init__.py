"""Auxiliary synthetic QA about a document (LIFT paper §3.3, "auxiliary tasks").

Besides reciting segments, LIFT trains on question → short-answer pairs about the document, each
kept only if its evidence really is in the text. The pairs become SFT samples in exactly the
prompt format used to ask questions at inference (truncated document view + question), so the
adapter learns to *answer* from what it memorised instead of reciting it.

Modules, by concern:

* :mod:`~lift_ray.aux_qa.evidence` — sentence splitting and the evidence check every pair passes.
* :mod:`~lift_ray.aux_qa.rules` — the offline generator (no model, a spaCy parse), for small base models.
* :mod:`~lift_ray.aux_qa.llm` — a chat model writes the pairs (the paper's recipe), through
  :mod:`lift_ray.chat`.
* :mod:`~lift_ray.aux_qa.cache` — verified pairs per document and generator settings, on disk.
* :mod:`~lift_ray.aux_qa.samples` — pairs as SFT samples in the inference question format.
"""

from __future__ import annotations

from lift_ray.aux_qa.cache import generate_pairs, generate_report, parse_report, spread
from lift_ray.aux_qa.evidence import (
    answer_supported,
    locate_evidence,
    normalize_question,
    split_paragraphs,
    split_sentences,
    verify,
    verify_pairs,
)
from lift_ray.aux_qa.llm import LLMQAGenerator, parse_json_lines
from lift_ray.aux_qa.pairs import CACHE_VERSION, AuxQAError, QAGenerator, QAPair, QAReport
from lift_ray.aux_qa.rules import RuleQAGenerator
from lift_ray.aux_qa.samples import qa_samples
from lift_ray.chat import ChatBackend, LocalChatBackend, OpenAIChatBackend

__all__ = [
    "CACHE_VERSION", "AuxQAError", "LLMQAGenerator", "QAGenerator", "QAPair", "QAReport", "RuleQAGenerator",
    "answer_supported", "generate_pairs", "generate_report", "locate_evidence", "make_generator",
    "normalize_question", "parse_json_lines", "parse_report", "qa_samples", "split_paragraphs", "split_sentences",
    "generator_revision", "spread", "verify", "verify_pairs",
]


def generator_revision(cfg) -> str | None:
    """The code revision of the generator an AuxQAConfig names (None for ``none`` or an unresolved config).

    A config names a generator and its settings, not its rules or prompt; pairs change when those
    do, so adapter variants and result keys include this (an adapter trained on an older
    generator's pairs is trained again, not reused).
    """
    generator = {None: None, "none": None, "rules": RuleQAGenerator, "llm": LLMQAGenerator}[cfg.generator]
    return generator.revision() if generator is not None else None


def make_generator(cfg, *, loaded=None) -> QAGenerator | None:
    """The generator an :class:`lift_ray.config.AuxQAConfig` asks for; None for ``generator: none``.

    Args:
        cfg: a resolved AuxQAConfig (``generator`` set).
        loaded: the loaded base model (a LoadedModel); needed for ``llm`` without an endpoint.

    Raises:
        ValueError: unresolved config, or an llm generator with nothing to run it on.
    """
    if cfg.generator is None:
        raise ValueError("AuxQAConfig is not resolved (aux_qa.generator)")
    if cfg.generator == "none":
        return None
    if cfg.generator == "rules":
        return RuleQAGenerator(max_pairs=cfg.max_pairs, max_pairs_per_sentence=cfg.max_pairs_per_sentence,
                               questions_per_fact=cfg.questions_per_fact)
    if cfg.llm_endpoint:
        if not cfg.llm_model:
            raise ValueError("aux_qa.llm_model is required with aux_qa.llm_endpoint")
        backend: ChatBackend = OpenAIChatBackend(cfg.llm_endpoint, cfg.llm_model)
    else:
        if loaded is None:
            raise ValueError("aux_qa.generator=llm without llm_endpoint needs the loaded base model")
        backend = LocalChatBackend(loaded.model, loaded.tokenizer, name=f"{loaded.model_id}@{loaded.weights_hash}")
    return LLMQAGenerator(backend, cfg.sentences_per_window, cfg.pairs_per_window, cfg.max_pairs)
