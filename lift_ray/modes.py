"""The answer modes: the one definition the engine, CLI, eval, NIAH, Serve and UI import.

A mode says two things: whether the document's adapter is used, and which view of the document
(if any) goes into the prompt: the paper's head…tail view (``icl``), or the chunks retrieval picks
for the question (``rag``, see :mod:`lift_ray.retrieval`). No torch here, so config and the shells
import it cheaply.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

Mode = Literal["icl", "lift", "lift+icl", "rag", "lift+rag"]
MODES: tuple[str, ...] = get_args(Mode)
# What a question gets unless it names a mode: on the sixteen documents written outside the project,
# the adapter with the retrieved chunks recalls most beyond the window (README "The default mode").
DEFAULT_MODE = "lift+rag"
# The order comparisons are shown in (NIAH panels, the UI): the baseline, the paper's setting, memory alone.
COMPARE_MODES: tuple[str, ...] = ("icl", "lift+icl", "lift")
MODE_TITLES = {"icl": "ICL", "lift": "LIFT", "lift+icl": "LIFT+ICL", "rag": "RAG", "lift+rag": "LIFT+RAG"}
MODE_HELP = {
    "icl": "base model + the document's head…tail view",
    "lift": "the document's adapter, no document in the prompt",
    "lift+icl": "adapter + the head…tail view (the paper's main setting)",
    "rag": "base model + the document's chunks retrieved for the question (BM25)",
    "lift+rag": "adapter + the retrieved chunks (the default)",
}
HEAD_TAIL, RETRIEVED = "head_tail", "retrieved"
# Why a question was answered in another mode than the one asked (``Answer.answered_as_reason``).
EVIDENCE_IN_WINDOW = "evidence_in_window"  # icl: the head…tail view shows the evidence (inference.icl_when_in_window)
NOT_BACKED = "chunks_do_not_back_answer"  # rag: the retrieved chunks do not back the adapter's answer
NO_ADAPTER_YET = "no_adapter_yet"  # icl / rag: the document's absorb has not published an adapter yet


class ModeError(ValueError):
    """An unknown answer mode."""


def check_mode(mode: str) -> str:
    """``mode`` if it is known, else ModeError naming the choices."""
    if mode not in MODES:
        raise ModeError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


def parse_modes(modes: str | Iterable[str]) -> tuple[str, ...]:
    """Modes from "a,b" or a sequence: stripped, deduplicated in order, each known, at least one."""
    items = modes.split(",") if isinstance(modes, str) else modes
    out = tuple(dict.fromkeys(m.strip() for m in items if m and m.strip()))
    if not out:
        raise ModeError(f"no answer mode given; choose from {', '.join(MODES)}")
    for mode in out:
        check_mode(mode)
    return out


def uses_adapter(mode: str) -> bool:
    """Whether the mode answers with the document's adapter."""
    return check_mode(mode).startswith("lift")


def uses_document(mode: str) -> bool:
    """Whether the mode puts a view of the document into the prompt."""
    return view_of(mode) is not None


def base_mode(mode: str) -> str | None:
    """The mode that reads the same view without the adapter (lift+icl: icl, lift+rag: rag); None for lift."""
    return {"lift": None, "lift+icl": "icl", "lift+rag": "rag"}.get(check_mode(mode), mode)


def view_of(mode: str) -> str | None:
    """Which view of the document the mode's prompt holds: HEAD_TAIL, RETRIEVED, or None."""
    return {"lift": None, "rag": RETRIEVED, "lift+rag": RETRIEVED}.get(check_mode(mode), HEAD_TAIL)
