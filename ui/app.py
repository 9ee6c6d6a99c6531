"""The Gradio app: Documents, Compare (ICL vs LIFT+ICL side by side) and NIAH tabs over one Backend.

Build it with :func:`build_app` (tests, scripts) or start it with :func:`launch` (``lift-ray ui``,
``python -m ui``). Every engine call goes through the queue under one concurrency id, so a long
absorb makes other users wait their turn in the queue instead of freezing the page.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import gradio as gr

from lift_ray.demo import sample_document, sample_questions
from lift_ray.errors import USER_ERRORS
from lift_ray.modes import COMPARE_MODES, MODE_HELP, MODE_TITLES, MODES, uses_document
from lift_ray.niah import DEFAULT_ANSWER, DEFAULT_NEEDLE, DEFAULT_QUESTION, NiahError, plot_heatmaps
from lift_ray.text import normalize_text
from lift_ray.store import doc_id_for

from ui.backends import Backend, BackendError, NiahRequest
from ui.inputs import DEFAULT_UPLOAD_LIMIT_BYTES, UPLOAD_SUFFIXES, read_upload
from ui.view import document_html, niah_column_widths, niah_rows, niah_summary_markdown, usage_markdown

REPO = Path(__file__).resolve().parents[1]
SHIPPED_NIAH = REPO / "docs" / "niah" / "results.json"
SAMPLE_TITLE = "Sample: the Port Quillon chronicle"
SAMPLE_KEY = "sample"  # the shipped document before its first absorb
# Modes answered side by side by default: those that read the document (LIFT alone is optional).
DEFAULT_COMPARE = tuple(m for m in COMPARE_MODES if uses_document(m))
# Answer panels in comparison order, then any other mode.
PANEL_MODES = tuple(dict.fromkeys((*COMPARE_MODES, *MODES)))
DOC_HEADERS = ["title / alias", "doc id", "tokens", "adapter", "created", "status"]
ENGINE = "engine"  # the concurrency id every engine call shares
THEME = gr.themes.Soft(
    # System fonts: the page loads nothing from the internet.
    font=["ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=["ui-monospace", "Consolas", "monospace"],
)
CSS = ".lift-answer textarea {font-size: 15px !important}"

_USER_ERRORS = (*USER_ERRORS, BackendError)


def slug(mode: str) -> str:
    """A mode as an HTML id ("lift+icl" -> "lift-icl")."""
    return "".join(c if c.isalnum() else "-" for c in mode)


def _fail(exc: Exception):
    """A refused input or an unreachable server, shown in the page (the app keeps working)."""
    return gr.Error(str(exc), print_exception=False)


def _doc_table(backend: Backend) -> list[list]:
    return [
        [r.title or r.alias or "", r.doc_id, r.num_tokens, ", ".join(r.adapter_kinds), (r.created_at or "")[:19], r.status_text]
        for r in backend.list_docs()
    ]


def _doc_choices(backend: Backend) -> list[tuple[str, str]]:
    """Documents for the Compare tab (those not absorbed yet say so: icl and rag answer them already),
    and the shipped sample until it is absorbed."""
    rows = backend.list_docs()
    choices = [(r.label, r.doc_id) for r in rows]
    sample_id = doc_id_for(normalize_text(sample_document()))
    if sample_id not in {r.doc_id for r in rows}:
        choices.insert(0, (f"{SAMPLE_TITLE} (absorbed on first use)", SAMPLE_KEY))
    return choices


def _niah_outputs(results: dict, workdir: Path):
    """(heatmap png, table, summary) for a NIAH results dict; the heatmap is drawn from the results."""
    try:
        lengths, depths, cells = results["lengths"], results["depths"], results["cells"]
        modes = results.get("settings", {}).get("modes") or (list(cells[0]["answers"]) if cells else [])
        headers, rows = niah_rows(results)
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise gr.Error(f"not a results.json of `lift-ray niah` (missing {exc})", print_exception=False) from None
    png = Path(tempfile.mkdtemp(prefix="heatmap-", dir=workdir)) / "heatmap.png"
    title = ""
    if settings := results.get("settings"):
        title = f"{settings.get('model', {}).get('id', '')} · W={settings.get('context_window')} tokens"
    plot_heatmaps(cells, lengths, depths, modes, png, title=title)
    import pandas as pd

    table = gr.Dataframe(pd.DataFrame(rows, columns=headers), column_widths=niah_column_widths(headers))
    return str(png), table, niah_summary_markdown(results)


def build_app(
    backend: Backend,
    *,
    niah_results: Path | None = SHIPPED_NIAH,
    upload_limit_bytes: int = DEFAULT_UPLOAD_LIMIT_BYTES,
    max_new_tokens: int | None = None,
    workdir: Path | None = None,
) -> gr.Blocks:
    """The app's Blocks (not launched).

    Args:
        backend: in-process or HTTP; the tabs only use the Backend interface.
        niah_results: a results.json shown in the NIAH tab at once (default: the grid in docs/niah/).
        upload_limit_bytes: larger uploads are refused.
        max_new_tokens: answer length limit; None: the backend's default.
        workdir: where NIAH runs and heatmaps are written (default: a new temporary directory).
    """
    workdir = Path(workdir or tempfile.mkdtemp(prefix="lift-ray-ui-"))
    workdir.mkdir(parents=True, exist_ok=True)
    questions = [q["question"] for q in sample_questions()]

    # --- handlers ------------------------------------------------------------------------------
    def read_file(path):
        if not path:
            return gr.update(), gr.update()
        try:
            text = read_upload(path, max_bytes=upload_limit_bytes)
        except _USER_ERRORS as exc:
            raise _fail(exc) from None
        return text, Path(path).stem

    def absorb(text, title, progress=gr.Progress()):
        if not (text or "").strip():
            raise gr.Error("The document is empty: paste text or upload a .txt, .md or .pdf file.", print_exception=False)
        progress(0.0, desc="starting")
        try:
            outcome = backend.absorb(text, title=(title or "").strip() or None, on_progress=lambda f, d: progress(f, desc=d))
            table, choices = _doc_table(backend), _doc_choices(backend)
        except _USER_ERRORS as exc:
            raise _fail(exc) from None
        what = "absorbed" if outcome.status == "absorbed" else "already in the store (same text and training settings)"
        status = f"**{what}**: `{outcome.doc_id}`" + (f", {outcome.num_tokens} tokens" if outcome.num_tokens else "")
        if outcome.status == "absorbed":
            status += f", {outcome.seconds:.0f} s"
        return status, table, gr.update(choices=choices, value=outcome.doc_id)

    def refresh():
        try:
            table, choices = _doc_table(backend), _doc_choices(backend)
        except _USER_ERRORS as exc:
            raise _fail(exc) from None
        return table, gr.update(choices=choices)

    def show_document(doc):
        if not doc:
            return ""
        if doc == SAMPLE_KEY:
            return document_html(None, "The shipped sample document: it is absorbed when you first ask about it.")
        try:
            view = backend.document_view(doc)
        except _USER_ERRORS as exc:
            gr.Warning(str(exc))
            return ""
        return document_html(view, "The Serve API serves no document text; the window view is shown for documents absorbed from this page.")

    def show_panels(modes):
        return [gr.update(visible=m in (modes or [])) for m in PANEL_MODES]

    def ask(doc, question, modes, progress=gr.Progress()):
        n = len(PANEL_MODES)
        answers, stats = [""] * n, [""] * n
        if not (question or "").strip():
            raise gr.Error("Type a question first.", print_exception=False)
        if not doc:
            raise gr.Error("Choose a document (absorb one in the Documents tab).", print_exception=False)
        chosen = [m for m in PANEL_MODES if m in (modes or [])]
        if not chosen:
            raise gr.Error("Choose at least one answer mode.", print_exception=False)
        try:
            if doc == SAMPLE_KEY:  # first use of the shipped document
                progress(0.0, desc="absorbing the sample document")
                doc = backend.absorb(sample_document(), title=SAMPLE_TITLE, on_progress=lambda f, d: progress(f, desc=d)).doc_id
            view_html = show_document(doc)
            for mode in chosen:
                k = PANEL_MODES.index(mode)
                stats[k] = usage_markdown(None, running=True)
                yield (*answers, *stats, view_html)
                pieces = backend.stream(question, doc, mode, max_new_tokens=max_new_tokens)
                while True:
                    try:
                        answers[k] += next(pieces)
                    except StopIteration as done:
                        stats[k] = usage_markdown(done.value)
                        break
                    yield (*answers, *stats, view_html)
                answers[k] = answers[k].strip()
                yield (*answers, *stats, view_html)
        except _USER_ERRORS as exc:
            raise _fail(exc) from None

    def run_niah(lengths, depths, needle, question, answer, window, haystack, progress=gr.Progress()):
        grid = NiahRequest(lengths, depths, needle, question, answer, int(window or 0), haystack or "")
        if grid.context_window < 16:
            raise gr.Error("The window W must be at least 16 tokens.", print_exception=False)
        out = Path(tempfile.mkdtemp(prefix="niah-", dir=workdir))
        progress(0.0, desc="building the grid")
        try:
            results = backend.run_niah(grid, out, on_progress=lambda f, d: progress(f, desc=d))
        except (*_USER_ERRORS, NiahError) as exc:
            raise _fail(exc) from None
        return _niah_outputs(results, workdir)

    def load_niah(path):
        if not path:
            return gr.update(), gr.update(), gr.update()
        try:
            results = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise gr.Error(f"{Path(path).name} is not a JSON file ({exc})", print_exception=False) from None
        if not isinstance(results, dict):
            raise gr.Error(f"{Path(path).name} is not a results.json of `lift-ray niah`", print_exception=False)
        return _niah_outputs(results, workdir)

    # --- layout --------------------------------------------------------------------------------
    shipped = None
    if niah_results is not None and Path(niah_results).is_file():
        shipped = _niah_outputs(json.loads(Path(niah_results).read_text(encoding="utf-8")), workdir)
    engine_events = dict(concurrency_id=ENGINE, concurrency_limit=backend.concurrency)

    with gr.Blocks(title="lift-ray: LIFT demo", analytics_enabled=False) as demo:
        gr.Markdown(
            "# lift-ray: Long Input Fine-Tuning\n"
            "A document is fine-tuned into a small adapter; questions are then answered with the adapter "
            "plus the head…tail view of the document that fits the window (**LIFT+ICL**), against the "
            f"base model reading that view alone (**ICL**). Backend: {backend.description}."
        )
        with gr.Tabs():
            with gr.Tab("Documents", id="documents"):
                with gr.Row():
                    with gr.Column(scale=3):
                        doc_text = gr.Textbox(sample_document(), label="Document text", lines=14, max_lines=24, elem_id="doc-text")
                    with gr.Column(scale=1):
                        upload = gr.File(label=f"…or upload ({', '.join(UPLOAD_SUFFIXES)}, ≤ {upload_limit_bytes / 2**20:g} MiB)",
                                         file_types=list(UPLOAD_SUFFIXES), type="filepath")
                        doc_title = gr.Textbox(SAMPLE_TITLE, label="Title", elem_id="doc-title")
                        absorb_btn = gr.Button("Absorb", variant="primary", elem_id="absorb-btn")
                        gr.Markdown(f"Training: {backend.training_summary()}.")
                absorb_status = gr.Markdown(elem_id="absorb-status")
                with gr.Row():
                    gr.Markdown("### Documents")
                    refresh_btn = gr.Button("Refresh", size="sm", scale=0)
                docs_table = gr.Dataframe(headers=DOC_HEADERS, value=[], interactive=False, wrap=True, label="Documents", elem_id="docs-table")

            with gr.Tab("Compare", id="compare") as compare_tab:
                with gr.Row():
                    doc_pick = gr.Dropdown(choices=[], label="Document", scale=2, elem_id="doc-pick")
                    mode_pick = gr.CheckboxGroup(
                        choices=[(MODE_TITLES[m], m) for m in PANEL_MODES], value=list(DEFAULT_COMPARE),
                        label="Answer modes", scale=1,
                    )
                question = gr.Textbox(label="Question", placeholder="Ask about the document", lines=1, elem_id="question")
                gr.Examples([[q] for q in questions], inputs=[question], label="Questions about the sample document")
                ask_btn = gr.Button("Ask", variant="primary", elem_id="ask-btn")
                answer_boxes, stat_boxes, panels = [], [], []
                with gr.Row(equal_height=True):
                    for mode in PANEL_MODES:
                        with gr.Column(visible=mode in DEFAULT_COMPARE, elem_id=f"panel-{slug(mode)}") as panel:
                            answer_boxes.append(gr.Textbox(label=f"{MODE_TITLES[mode]}: {MODE_HELP[mode]}", lines=4,
                                                           interactive=False, elem_classes="lift-answer",
                                                           elem_id=f"answer-{slug(mode)}"))
                            stat_boxes.append(gr.Markdown(elem_id=f"stats-{slug(mode)}"))
                        panels.append(panel)
                doc_view = gr.HTML(elem_id="document-view")

            with gr.Tab("NIAH", id="niah"):
                gr.Markdown(
                    "Needle in a haystack: every cell's document is absorbed, then the question is asked in each "
                    "mode. Boxed cells: the needle lies inside the head…tail window. Shown first: the grid shipped in `docs/niah/`."
                )
                with gr.Row():
                    lengths = gr.Textbox("256,512", label="Context lengths (tokens)")
                    depths = gr.Textbox("0,50,100", label="Depths (%)")
                    window = gr.Number(128, label="Window W (tokens)", precision=0)
                with gr.Row():
                    needle = gr.Textbox(DEFAULT_NEEDLE, label="Needle")
                    niah_question = gr.Textbox(DEFAULT_QUESTION, label="Question")
                    niah_answer = gr.Textbox(DEFAULT_ANSWER, label="Answer")
                haystack = gr.Textbox(label="Haystack (empty: Paul Graham's essays)", lines=3)
                with gr.Row():
                    niah_btn = gr.Button("Run grid", variant="primary", elem_id="niah-btn")
                    results_file = gr.File(label="…or load a results.json", file_types=[".json"], type="filepath")
                heatmap = gr.Image(shipped[0] if shipped else None, label="Heatmaps", type="filepath", elem_id="niah-heatmap")
                niah_summary = gr.Markdown(shipped[2] if shipped else "", elem_id="niah-summary")
                niah_table = gr.Dataframe(shipped[1].value if shipped else None, interactive=False, wrap=True, label="Cells", elem_id="niah-table",
                                          column_widths=shipped[1].column_widths if shipped else None)

        # --- events ----------------------------------------------------------------------------
        upload.upload(read_file, inputs=upload, outputs=[doc_text, doc_title], api_name="read_file")
        absorb_btn.click(absorb, inputs=[doc_text, doc_title], outputs=[absorb_status, docs_table, doc_pick],
                         api_name="absorb", **engine_events)
        refresh_btn.click(refresh, outputs=[docs_table, doc_pick], api_name="list_docs")
        demo.load(refresh, outputs=[docs_table, doc_pick], api_visibility="private")
        # Documents absorbed elsewhere (the CLI, bulk, POST /v1/documents) appear when the tab is opened.
        compare_tab.select(refresh, outputs=[docs_table, doc_pick], api_visibility="private")
        doc_pick.change(show_document, inputs=doc_pick, outputs=doc_view, api_name="document_view")
        mode_pick.change(show_panels, inputs=mode_pick, outputs=panels, api_visibility="private")
        ask_event = dict(fn=ask, inputs=[doc_pick, question, mode_pick], outputs=[*answer_boxes, *stat_boxes, doc_view])
        ask_btn.click(**ask_event, api_name="ask", **engine_events)
        question.submit(**ask_event, api_visibility="private", **engine_events)
        niah_btn.click(run_niah, inputs=[lengths, depths, needle, niah_question, niah_answer, window, haystack],
                       outputs=[heatmap, niah_table, niah_summary], api_name="niah", **engine_events)
        results_file.upload(load_niah, inputs=results_file, outputs=[heatmap, niah_table, niah_summary], api_name="load_niah")
    return demo


def launch(
    backend: Backend,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    upload_limit_bytes: int = DEFAULT_UPLOAD_LIMIT_BYTES,
    max_new_tokens: int | None = None,
    niah_results: Path | None = SHIPPED_NIAH,
    block: bool = True,
    quiet: bool = False,
):
    """Build and serve the app (on 127.0.0.1 unless told otherwise); returns the Blocks when not blocking."""
    demo = build_app(backend, niah_results=niah_results, upload_limit_bytes=upload_limit_bytes, max_new_tokens=max_new_tokens)
    demo.queue(max_size=64, default_concurrency_limit=4)
    demo.launch(
        server_name=host,
        server_port=port,
        max_file_size=upload_limit_bytes,
        prevent_thread_lock=not block,
        show_error=True,
        ssr_mode=False,
        footer_links=["api"],
        theme=THEME,
        css=CSS,
        quiet=quiet,
    )
    return demo
