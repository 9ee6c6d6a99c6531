"""The LLM generator (paper's recipe): a chat model reads windows of ~16 consecutive sentences and
writes question / answer / evidence triples as JSON lines; :mod:`lift_ray.aux_qa.evidence` checks them."""

from __future__ import annotations

import hashlib
import json

from lift_ray.aux_qa.evidence import Evidence, split_sentences
from lift_ray.aux_qa.pairs import QAPair, settings_key, source_digest
from lift_ray.chat import ChatBackend, PromptTooLong

LLM_SYSTEM = "You write reading-comprehension questions about a document. You answer only with JSON lines."
LLM_PROMPT = (
    "Sentences from a document:\n\n{window}\n\n"
    "Write up to {n} questions about facts stated in these sentences, each with a short answer (a name, a number, "
    "a date or a few words copied from the text) and the evidence: the sentence that states the answer, copied "
    "exactly. Output one JSON object per line and nothing else:\n"
    '{{"question": "...", "answer": "...", "evidence": "..."}}'
)


def parse_json_lines(output: str) -> list[dict]:
    """Every JSON object with string question/answer/evidence in ``output``; anything else is skipped."""
    found, decoder, pos = [], json.JSONDecoder(), 0
    while (start := output.find("{", pos)) != -1:
        try:
            obj, end = decoder.raw_decode(output, start)
        except json.JSONDecodeError:
            pos = start + 1
            continue
        pos = end
        if isinstance(obj, dict) and all(isinstance(obj.get(k), str) and obj[k].strip() for k in ("question", "answer", "evidence")):
            found.append({k: obj[k].strip() for k in ("question", "answer", "evidence")})
    return found


class LLMQAGenerator:
    """A chat model writes QA pairs for each window of consecutive sentences (paper's recipe).

    Args:
        backend: a :class:`ChatBackend`.
        sentences_per_window: sentences shown per request (paper: ~16).
        pairs_per_window: pairs asked for per request.
        max_pairs: at most this many pairs per document.
        max_tokens: generation budget per request.
    """

    kind = "llm"
    VERSION = 1
    MODULES = ("lift_ray.aux_qa.llm", "lift_ray.aux_qa.evidence", "lift_ray.aux_qa.cache")  # what decides the pairs

    def __init__(self, backend: ChatBackend, sentences_per_window: int = 16, pairs_per_window: int = 4, max_pairs: int = 64, max_tokens: int = 512):
        self.backend = backend
        self.sentences_per_window = sentences_per_window
        self.pairs_per_window = pairs_per_window
        self.max_pairs = max_pairs
        self.max_tokens = max_tokens

    @staticmethod
    def prompt_hash() -> str:
        return hashlib.sha256((LLM_SYSTEM + LLM_PROMPT).encode()).hexdigest()[:12]

    @classmethod
    def revision(cls) -> str:
        """The generator's own code and prompt (what a config cannot say), for adapter variants."""
        return f"{cls.kind}-{cls.VERSION}-{cls.prompt_hash()}-{source_digest(*cls.MODULES)}"

    def settings(self) -> dict:
        return {
            "version": self.VERSION,
            "backend": self.backend.identity(),
            "prompt": self.prompt_hash(),
            "code": source_digest(*self.MODULES),
            "sentences_per_window": self.sentences_per_window,
            "pairs_per_window": self.pairs_per_window,
            "max_pairs": self.max_pairs,
            "max_tokens": self.max_tokens,
        }

    def cache_key(self) -> str:
        return settings_key(self.kind, self.settings())

    def generate(self, text: str, sentences: list[str] | None = None) -> list[QAPair]:
        sentences = sentences if sentences is not None else split_sentences(text)
        pairs: list[QAPair] = []
        step = self.sentences_per_window
        for start in range(0, len(sentences), step):
            pairs += self._window(text, sentences, start, min(start + step, len(sentences)))
        return pairs

    def _window(self, text: str, sentences: list[str], start: int, end: int) -> list[QAPair]:
        window = "\n".join(sentences[start:end])
        messages = [
            {"role": "system", "content": LLM_SYSTEM},
            {"role": "user", "content": LLM_PROMPT.format(window=window, n=self.pairs_per_window)},
        ]
        try:
            output = self.backend.complete(messages, self.max_tokens)
        except PromptTooLong:
            if end - start <= 1:
                return []  # one sentence is longer than the model's window: nothing to ask
            mid = (start + end) // 2
            return self._window(text, sentences, start, mid) + self._window(text, sentences, mid, end)
        out = []
        evidence = Evidence(text, sentences)
        for obj in parse_json_lines(output)[: self.pairs_per_window]:
            index = evidence.locate(obj["evidence"])
            out.append(QAPair(**obj, sentence_index=start if index is None else index, generator=f"llm:{self.backend.identity()}"))
        return out
