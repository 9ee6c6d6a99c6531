"""HTML and tables the tabs show: the document with ICL's head…tail window, answer statistics, NIAH rows."""

from __future__ import annotations

import html

from lift_ray.modes import EVIDENCE_IN_WINDOW, MODE_TITLES, NO_ADAPTER_YET, NOT_BACKED

from ui.backends import DocumentView, Usage

# Long middles are cut for the page: the browser need not lay out megabytes to show "not seen".
MAX_SHOWN_MIDDLE = 6000
MAX_SHOWN_EDGE = 20000

SEEN_STYLE = "background:#fff3b0;color:#111;border-radius:2px"
UNSEEN_STYLE = "color:#9a9a9a"


def _cut(text: str, limit: int, where: str) -> str:
    if len(text) <= limit:
        return html.escape(text)
    half = limit // 2
    hidden = len(text) - 2 * half
    return (
        html.escape(text[:half])
        + f"<b style='color:#777'> [… {hidden:,} more characters {where} …] </b>"
        + html.escape(text[-half:])
    )


def document_html(view: DocumentView | None, note: str = "") -> str:
    """The document with the part ICL sees highlighted and the rest greyed out.

    Args:
        view: the document and its view's character ranges; None shows ``note`` only.
        note: shown when there is no view (e.g. the Serve API serves no document text).
    """
    if view is None:
        return f"<div class='lift-doc-note'>{html.escape(note)}</div>" if note else ""
    text = view.text
    if view.covers_document:
        legend = (
            f"The whole document ({view.num_tokens} tokens) fits the {view.window}-token window: "
            "ICL sees all of it, so this document cannot show what LIFT adds."
        )
        body = f"<mark class='lift-seen' style='{SEEN_STYLE}'>{_cut(text, MAX_SHOWN_EDGE, 'in the window')}</mark>"
    else:
        head, middle, tail = text[: view.head_end], text[view.head_end : view.tail_start], text[view.tail_start :]
        legend = (
            f"What ICL sees: the <mark style='{SEEN_STYLE}'>highlighted</mark> head and tail, W = {view.window} "
            f"of the document's {view.num_tokens} tokens. The <span style='{UNSEEN_STYLE}'>grey middle</span> "
            "is beyond the window: only the adapter (LIFT) has read it."
        )
        body = (
            f"<mark class='lift-seen' style='{SEEN_STYLE}'>{_cut(head, MAX_SHOWN_EDGE, 'in the head')}</mark>"
            f"<span class='lift-unseen' style='{UNSEEN_STYLE}'>{_cut(middle, MAX_SHOWN_MIDDLE, 'beyond the window')}</span>"
            f"<mark class='lift-seen' style='{SEEN_STYLE}'>{_cut(tail, MAX_SHOWN_EDGE, 'in the tail')}</mark>"
        )
    return (
        f"<div class='lift-doc-legend' style='margin-bottom:6px'>{legend}</div>"
        "<div class='lift-doc' style='white-space:pre-wrap;font-family:ui-serif,Georgia,serif;font-size:14px;"
        "line-height:1.5;max-height:420px;overflow-y:auto;padding:10px;border:1px solid #ddd;border-radius:6px'>"
        f"{body}</div>"
    )


def usage_markdown(usage: Usage | None, *, running: bool = False) -> str:
    """"1.84 s · first token 0.41 s · 187 prompt tokens · 21 tokens, 11.4 tok/s"."""
    if usage is None:
        return "_generating…_" if running else ""
    parts = [f"**{usage.seconds:.2f} s**"]
    if usage.first_piece_seconds is not None:
        parts.append(f"first token {usage.first_piece_seconds:.2f} s")
    if usage.prompt_tokens is not None:
        parts.append(f"{usage.prompt_tokens} prompt tokens")
    if usage.completion_tokens is not None:
        rate = usage.tokens_per_second
        parts.append(f"{usage.completion_tokens} tokens" + (f", {rate:.1f} tok/s" if rate else ""))
    if usage.answered_as:
        why = ANSWERED_AS_WHY.get(usage.answered_as_reason or LEGACY_REASON.get(usage.answered_as), "")
        parts.append(f"answered as {MODE_TITLES.get(usage.answered_as, usage.answered_as)}" + (f": {why}" if why else ""))
    return " · ".join(parts)


# why an adapted mode's question was answered in another mode (lift_ray.infer.Answer.answered_as_reason)
ANSWERED_AS_WHY = {
    EVIDENCE_IN_WINDOW: "the window shows the evidence",
    NOT_BACKED: "the retrieved chunks did not back the adapter's answer",
    NO_ADAPTER_YET: "the document's adapter is still being trained",
}
LEGACY_REASON = {"icl": EVIDENCE_IN_WINDOW, "rag": NOT_BACKED}  # servers that sent answered_as without a reason


def niah_rows(results: dict) -> tuple[list[str], list[list]]:
    """(headers, rows) of a NIAH results.json: one row per cell, one column per mode."""
    modes = list(results.get("settings", {}).get("modes") or [])
    cells = results["cells"]
    if not modes and cells:
        modes = list(cells[0]["answers"])
    headers = ["tokens", "depth asked → got", "needle vs window"] + [MODE_TITLES.get(m, m) for m in modes]
    rows = []
    for c in sorted(cells, key=lambda c: (c["length"], c["depth"])):
        needles = c.get("needles", [])
        got = "; ".join(str(n.get("actual_depth")) for n in needles)
        window = "; ".join(n.get("window", "?") for n in needles)
        row = [c.get("num_tokens", c["length"]), f"{c['depth']} → {got}", window]
        for m in modes:
            a = c["answers"].get(m, {})
            mark = "✓" if a.get("keyword") == 1 else ("✗" if a.get("keyword") == 0 else f"{a.get('keyword')}")
            answer = " ".join(str(a.get("answer", "")).split())
            row.append(f"{mark} {answer[:80]}")
        rows.append(row)
    return headers, rows


def niah_column_widths(headers: list[str]) -> list[str]:
    """Narrow cell-description columns, the answer columns share the rest (five modes fit the page)."""
    fixed = [6, 9, 8]  # tokens, depth asked → got, needle vs window
    answers = len(headers) - len(fixed)
    share = (100 - sum(fixed)) / max(1, answers)
    return [f"{w}%" for w in fixed[: len(headers)]] + [f"{share:.1f}%"] * answers


def niah_summary_markdown(results: dict) -> str:
    summary = results.get("summary") or {}
    lines = []
    for mode, s in summary.items():
        title = MODE_TITLES.get(mode, mode)
        mean = s.get("mean")
        beyond = s.get("outside_window_mean")
        line = f"**{title}**: mean keyword recall {mean:.2f}" if mean is not None else f"**{title}**: no cells"
        if s.get("outside_window_cells"):
            line += f"; needle beyond the window: {beyond:.2f} over {s['outside_window_cells']} cells"
        lines.append(line)
    settings = results.get("settings", {})
    head = ""
    if settings:
        model = settings.get("model", {}).get("id", "?")
        head = f"{model} · W = {settings.get('context_window')} tokens · question: _{settings.get('question', '')}_\n\n"
    return head + "  \n".join(lines)
