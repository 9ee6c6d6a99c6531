"""Answer metrics: exact match and token F1 (SQuAD v1.1 normalisation), ROUGE-L (``rouge-score``),
answer containment (anywhere in the reply, in its first ``STATED_WORDS`` words, and with surface
forms folded: number words, spellings, inflections), and an
optional LLM judge (1-10) through any OpenAI-compatible endpoint.

Every metric takes the best score over the acceptable answers, as SQuAD's evaluation script does.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


@functools.lru_cache(maxsize=4096)
def _is_punctuation(ch: str) -> bool:
    # SQuAD strips ASCII punctuation only, which leaves "£48,000" as the word "£48000" that the
    # answer "48,000" never matches; Unicode punctuation and currency signs go the same way.
    return ch in _PUNCTUATION or unicodedata.category(ch) in {"Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sc"}


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a/an/the), single spaces.

    Beyond SQuAD's ASCII set, Unicode punctuation (curly quotes, dashes) and currency signs are
    removed too, so "£48,000." contains the answer "48,000" and "don’t" equals "don't"."""
    text = "".join(ch for ch in text.lower() if not _is_punctuation(ch))
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: list[str]) -> float:
    """1.0 if the normalised prediction equals a normalised answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def _f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    if not pred or not gold:  # SQuAD: two empty answers agree, one empty answer scores 0
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: list[str]) -> float:
    """Harmonic mean of token precision and recall after normalisation, best over the answers."""
    return max(_f1(prediction, a) for a in answers)


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    # Porter stemming as in the ROUGE-1.5.5 "-m" setting most papers report.
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, answers: list[str]) -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens), best over the answers."""
    scorer = _rouge_scorer()
    return max(scorer.score(a, prediction)["rougeL"].fmeasure for a in answers)


STATED_WORDS = 10  # the reply's first words that must hold the answer for "contains answer in the first 10 words"


def contains_answer(prediction: str, answers: list[str], first_words: int | None = None) -> float:
    """1.0 if a normalised answer appears as whole words in the normalised prediction.

    Small models answer in sentences ("The lighthouse was designed by Tobias Wrenfield."), which EM
    scores 0; this is the keyword recall the README's fact tests use, stated as a metric. With
    ``first_words``, only the reply's first words count: a 64-token reply that copies the context
    "contains" many answers it never gives, and the base model's replies are ten times longer than
    the adapter's (README, Evaluation), so recall is also reported at an equal length."""
    if first_words is not None:
        prediction = " ".join(prediction.split()[:first_words])
    pred = f" {normalize_answer(prediction)} "
    return float(any(normalize_answer(a) and f" {normalize_answer(a)} " in pred for a in answers))


_DASHES = re.compile(r"[-\u2010-\u2015]")
_BRITISH_RE = re.compile(r"(?<=[a-z])tre(s?)$")  # metre(s) -> meter(s), centre -> center
_BRITISH_OUR = re.compile(r"(?<=[a-z]{3})our(s?)$")  # harbour -> harbor, colour -> color (not four, hour)


@functools.lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


@functools.lru_cache(maxsize=8192)
def fold_forms(text: str) -> str:
    """The text's words with their surface forms folded: number words as digits ("twenty-five" -> 25,
    by ``text2num``), "%" and "per cent" as "percent", dashes between words, British -re/-our spellings
    as American, and each word's Snowball stem ("tonnes" -> "tonn"), after :func:`normalize_answer`.

    A reply that says "approximately 6 meters" gives the answer "six metres"; contains-answer counts
    it a miss, and the base model, which rewrites numbers and units in its own words, loses most."""
    from text_to_num import alpha2digit

    text = re.sub(r"\bper cent\b", "percent", text.replace("%", " percent "), flags=re.IGNORECASE)
    text = alpha2digit(_DASHES.sub(" ", text), "en")
    words = [_BRITISH_OUR.sub(r"or\1", _BRITISH_RE.sub(r"ter\1", w)) for w in normalize_answer(text).split()]
    return " ".join(_stemmer().stemWords(words))


def contains_folded(prediction: str, answers: list[str]) -> float:
    """:func:`contains_answer`, or the answer's words in another surface form (:func:`fold_forms`)."""
    if contains_answer(prediction, answers):
        return 1.0
    pred = f" {fold_forms(prediction)} "
    return float(any(fold_forms(a) and f" {fold_forms(a)} " in pred for a in answers))


def is_correct(answer: str, keywords: list[str]) -> bool:
    """Keyword recall: any expected keyword appears in the answer (case-insensitive substring);
    the fact tests, the demo and NIAH's keyword score use it."""
    low = answer.lower()
    return any(k.lower() in low for k in keywords)


def score_answer(prediction: str, answers: list[str]) -> dict[str, float]:
    """All reference-based metrics of one prediction."""
    return {
        "em": exact_match(prediction, answers),
        "f1": token_f1(prediction, answers),
        "rouge_l": float(rouge_l(prediction, answers)),
        "contains": contains_answer(prediction, answers),
        "contains_10w": contains_answer(prediction, answers, STATED_WORDS),
        "contains_folded": contains_folded(prediction, answers),
    }


# --- LLM judge ------------------------------------------------------------------------------------

JUDGE_SYSTEM = "You grade answers to reading-comprehension questions. You reply with one integer from 1 to 10."
JUDGE_PROMPT = (
    "Question: {question}\n"
    "Reference answer(s): {answers}\n"
    "Answer to grade: {prediction}\n\n"
    "How correct and complete is the answer to grade, compared with the reference? "
    "10 means it states the same fact as a reference answer, 1 means it is wrong or says nothing. "
    "Reply with the integer only."
)
_SCORE = re.compile(r"\b(10|[1-9])\b")


class LLMJudge:
    """Scores an answer 1-10 against the references with a chat model behind an OpenAI-compatible API.

    Args:
        endpoint: base URL (POST ``<url>/chat/completions``), e.g. ``http://127.0.0.1:8000/v1``.
        model: model name the server expects.
        api_key: sent as a Bearer token when given.
    """

    def __init__(self, endpoint: str, model: str, api_key: str | None = None):
        from lift_ray.chat import OpenAIChatBackend

        self.backend = OpenAIChatBackend(endpoint, model, api_key=api_key)

    @classmethod
    def with_backend(cls, backend) -> "LLMJudge":
        """A judge over any chat backend (anything with ``complete(messages, max_tokens)`` and ``identity()``)."""
        judge = cls.__new__(cls)
        judge.backend = backend
        return judge

    def identity(self) -> str:
        return self.backend.identity()

    def score(self, question: str, answers: list[str], prediction: str) -> int | None:
        """The judge's score, or None when its reply holds no integer in 1..10.

        Raises:
            EvalError: the endpoint cannot be reached or answers malformed JSON.
        """
        from lift_ray.chat import ChatError
        from lift_ray.evaluate.data import EvalError

        messages = [
            {"role": "system", "content": JUDGE_SYSTEM},
            {
                "role": "user",
                "content": JUDGE_PROMPT.format(question=question, answers=" | ".join(answers), prediction=prediction or "(empty)"),
            },
        ]
        try:
            reply = self.backend.complete(messages, max_tokens=8)
        except ChatError as exc:
            raise EvalError(f"LLM judge: {exc}") from None
        found = _SCORE.search(reply)
        return int(found.group(1)) if found else None
