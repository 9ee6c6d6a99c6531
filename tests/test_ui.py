"""The Gradio front end (ui/): its flows through the app's API endpoints with gradio_client, its two
backends, bad input, and how it starts. Tiny random Llama throughout (the browser test is in
test_ui_browser.py)."""

from __future__ import annotations

import html
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import drain, make_tiny_model, make_tokenizer  # noqa: F401 (tests/ is on sys.path)
from ray_cluster import free_port

REPO = Path(__file__).resolve().parents[1]
DOCUMENT = (
    "Port Quillon is a harbour town. The lighthouse was designed by Tobias Wrenfield. "
    "The keeper keeps a tortoise named Marlowe. The oldest tavern is the Salted Anchor. "
    "Every spring the town holds a kite festival on the northern cliffs. The quick brown fox jumps over the lazy dog."
)
UPLOAD_LIMIT = 64 * 1024


def _text_pdf(text: str) -> bytes:
    """A one-page PDF whose text layer holds ``text`` (Helvetica, written with pypdf's objects)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(612, 792)
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
    stream = DecodedStreamObject()
    stream.set_data(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode("latin-1"))
    page.replace_contents(stream)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def _blank_pdf() -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def _tiny_engine(model_dir: Path, store: Path, qa: str = "rules"):
    from lift_ray.config import build_config
    from lift_ray.infer import LiftEngine

    cfg = build_config(None, {
        "model": {"name_or_path": str(model_dir), "device": "cpu"},
        "segments": {"context_window": 48, "segment_length": 32},
        # A fixed schedule (the profile's stop rule and views would change the tiny adapter's answers,
        # and the streaming test needs answers longer than one token). The questions' evidence is in the
        # head…tail view, so lift+icl would answer as icl (no words from the tiny base model): keep the adapter.
        "train": {"learning_rate": 1e-2, "epochs": 1, "early_stop": False, "step_tokens": 0},
        "aux_qa": {"generator": qa, "stage1_epochs": 1, "stage2_epochs": 1, "views": ["head_tail"]},
        "inference": {"max_new_tokens": 8, "question_reserve": 64, "rag_when_unsupported": False, "icl_when_in_window": False},
        "store": {"uri": str(store)},
    })
    return LiftEngine.from_config(cfg)


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    return _tiny_engine(tiny_model_dir, tmp_path_factory.mktemp("ui-store"))


@pytest.fixture(scope="module")
def app(engine, tmp_path_factory):
    """The app on the in-process backend, served on 127.0.0.1, and a gradio_client Client for it."""
    from gradio_client import Client

    from ui.app import launch
    from ui.backends import LocalBackend

    port = free_port()
    demo = launch(LocalBackend(engine), port=port, block=False, upload_limit_bytes=UPLOAD_LIMIT, quiet=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    yield demo, client, port
    client.close()
    demo.close()


@pytest.fixture(scope="module")
def absorbed(app, engine):
    """The test document absorbed through the app's /absorb endpoint: (status, table, doc id)."""
    _, client, _ = app
    status, table, pick = client.predict(DOCUMENT, "Quillon notes", api_name="/absorb")
    doc_id = engine.store.list_docs()[0]["doc_id"]
    return status, table, doc_id


def _store_docs(engine) -> list[str]:
    return [r["doc_id"] for r in engine.store.list_docs()]


# --- the flows through the API ------------------------------------------------------------------


def test_absorb_lists_the_document(absorbed, app):
    status, table, doc_id = absorbed
    assert "absorbed" in status and doc_id in status
    assert [row[:2] for row in table["data"]] == [["Quillon notes", doc_id]]
    assert table["data"][0][3] == "lora"
    _, client, _ = app
    table2, _ = client.predict(api_name="/list_docs")
    assert table2["data"] == table["data"]
    # The same text again is found in the store, not trained twice.
    status2, _, _ = client.predict(DOCUMENT, "Quillon notes", api_name="/absorb")
    assert "already in the store" in status2


def test_ask_streams_each_mode_as_the_engine_answers(absorbed, app, engine):
    """Both panels hold exactly what the engine answers alone (greedy): the UI is a client, not a second path."""
    from lift_ray.modes import COMPARE_MODES, uses_document

    from ui.app import PANEL_MODES

    _, client, _ = app
    doc_id = absorbed[2]
    question = "Who designed the lighthouse?"
    shown = [m for m in COMPARE_MODES if uses_document(m)]
    job = client.submit(doc_id, question, shown, api_name="/ask")
    out = job.result()
    n = len(PANEL_MODES)
    # Streamed: some panel shows a part of its answer before the whole, and panels fill one after another.
    updates = job.outputs()
    panels = [PANEL_MODES.index(m) for m in shown]
    partial = [(u, k) for u in updates for k in panels if u[k] and u[k] != out[k]]
    assert len(updates) > 3 and partial and all(out[k].startswith(u[k].strip()) for u, k in partial)
    second_started = next(u for u in updates if u[n + panels[1]])
    assert "prompt tokens" in second_started[n + panels[0]]  # the first panel had finished
    answers, stats, view = out[:n], out[n : 2 * n], out[2 * n]
    for mode in PANEL_MODES:
        k = PANEL_MODES.index(mode)
        if mode not in shown:
            assert answers[k] == "" and stats[k] == ""
            continue
        expected = engine.answer(question, doc_id, mode)
        assert answers[k] == expected.answer
        assert f"{expected.prompt_tokens} prompt tokens" in stats[k]
        assert f"{expected.new_tokens} tokens" in stats[k] and "tok/s" in stats[k]
    assert "lift-seen" in view and "lift-unseen" in view


def test_an_answer_given_as_icl_says_so(absorbed, engine):
    """lift+icl answers as icl when the window shows the evidence; its panel's line names that."""
    from lift_ray.infer import LiftEngine, Question

    from ui.backends import LocalBackend
    from ui.view import usage_markdown

    cfg = engine.config.model_copy(update={"inference": engine.config.inference.model_copy(update={"icl_when_in_window": True})})
    reading = LiftEngine(engine.loaded, cfg, engine.store)
    question, doc_id = "Who designed the lighthouse?", absorbed[2]
    assert reading.prepare(Question(question, doc_id, "lift+icl")).answered_as == "icl"  # the head shows it
    stats = {}
    for mode in ("icl", "lift+icl"):
        pieces, usage = drain(LocalBackend(reading).stream(question, doc_id, mode))
        stats[mode] = usage_markdown(usage)
    assert "answered as ICL: the window shows the evidence" in stats["lift+icl"]
    assert "answered as" not in stats["icl"]


def test_a_lift_rag_answer_given_as_rag_says_why():
    from ui.backends import Usage
    from ui.view import usage_markdown

    from lift_ray.modes import NO_ADAPTER_YET, NOT_BACKED

    def line(**kw):
        return usage_markdown(Usage(prompt_tokens=90, completion_tokens=12, seconds=1.5, first_piece_seconds=1.2, **kw))

    backed = "answered as RAG: the retrieved chunks did not back the adapter's answer"
    assert backed in line(answered_as="rag", answered_as_reason=NOT_BACKED)
    assert backed in line(answered_as="rag")  # a server from before the reason existed
    assert "answered as RAG: the document's adapter is still being trained" in line(answered_as="rag", answered_as_reason=NO_ADAPTER_YET)
    assert "answered as ICL: the document's adapter is still being trained" in line(answered_as="icl", answered_as_reason=NO_ADAPTER_YET)


def test_document_view_highlights_the_engines_window(absorbed, app, engine):
    """The highlighted head and tail are the tokens truncate_middle keeps; the middle is greyed."""
    _, client, _ = app
    doc_id = absorbed[2]
    page = client.predict(doc_id, api_name="/document_view")
    seen = [html.unescape(m) for m in re.findall(r"<mark class='lift-seen'[^>]*>(.*?)</mark>", page, re.S)]
    unseen = [html.unescape(m) for m in re.findall(r"<span class='lift-unseen'[^>]*>(.*?)</span>", page, re.S)]
    text = engine.store.text(doc_id)
    assert len(seen) == 2 and len(unseen) == 1 and "".join([seen[0], unseen[0], seen[1]]) == text
    tok = engine.loaded.tokenizer
    ids = tok(text, add_special_tokens=False)["input_ids"]
    window = engine.store.latest_manifest(doc_id).context_window
    keep = window - len(tok(engine.config.segments.mixin, add_special_tokens=False)["input_ids"])
    assert tok.decode(ids[: keep // 2]) == seen[0]
    assert tok.decode(ids[len(ids) - (keep - keep // 2) :]).strip() == seen[1].strip()
    assert f"W = {window}" in page


def test_a_document_still_absorbing_is_listed_and_answered_in_the_base_modes(absorbed, app, engine):
    """Its text is stored (an absorb in another process has not published yet): the table and the
    Compare tab list it and say so; icl and rag answer it, lift+icl as icl; its window view shows."""
    from lift_ray.store import doc_id_for
    from lift_ray.text import normalize_text

    from ui.app import PANEL_MODES, _doc_choices
    from ui.backends import LocalBackend

    _, client, _ = app
    text = normalize_text("The ferry to Skellmoor leaves at dawn. Its captain is Odile Fenwarren. " * 3)
    doc = doc_id_for(text)
    engine.store.put_document(doc, text)
    try:
        table, choices = client.predict(api_name="/list_docs")
        rows = {row[1]: row for row in table["data"]}
        assert rows[absorbed[2]][5] == "absorbed"
        assert rows[doc][5] == "no adapter yet: icl and rag answer now" and rows[doc][3] == ""
        labels = dict((value, label) for label, value in _doc_choices(LocalBackend(engine)))
        assert labels[doc].endswith("(no adapter yet: icl and rag answer now)")
        assert "lift-seen" in client.predict(doc, api_name="/document_view")
        *answers, _view = client.predict(doc, "Who is the captain?", ["icl", "lift+icl"], api_name="/ask")
        n = len(PANEL_MODES)
        for mode in ("icl", "lift+icl"):
            k = PANEL_MODES.index(mode)
            assert answers[k] == engine.answer("Who is the captain?", doc, "icl").answer
        assert "adapter is still being trained" in answers[n + PANEL_MODES.index("lift+icl")]
    finally:
        engine.store.delete(doc)


def test_sample_document_is_offered_and_absorbed_on_first_use(tiny_model_dir, tmp_path, monkeypatch):
    """Before its first absorb, the shipped document is in the Compare choices; asking absorbs it."""
    from lift_ray.text import normalize_text
    from lift_ray.store import doc_id_for

    from ui import app as ui_app
    from ui.backends import LocalBackend

    monkeypatch.setattr(ui_app, "sample_document", lambda: DOCUMENT)  # a short stand-in: this checks the flow
    backend = LocalBackend(_tiny_engine(tiny_model_dir, tmp_path / "store", qa="none"))
    assert ui_app._doc_choices(backend)[0][1] == ui_app.SAMPLE_KEY
    demo = ui_app.build_app(backend, niah_results=None, workdir=tmp_path / "work")
    ask = next(fn.fn for fn in demo.fns.values() if fn.api_name == "ask")
    outputs = list(ask(ui_app.SAMPLE_KEY, "Who designed the lighthouse?", ["icl"], progress=lambda *a, **k: None))
    assert "prompt tokens" in outputs[-1][len(ui_app.PANEL_MODES) + ui_app.PANEL_MODES.index("icl")]
    rows = backend.list_docs()
    assert [(r.doc_id, r.title) for r in rows] == [(doc_id_for(normalize_text(DOCUMENT)), ui_app.SAMPLE_TITLE)]
    assert ui_app.SAMPLE_KEY not in [value for _, value in ui_app._doc_choices(backend)]


# --- progress -------------------------------------------------------------------------------------


def test_absorb_progress_reports_stage_epoch_and_loss(engine, tmp_path):
    from lift_ray.infer import LiftEngine
    from lift_ray.store import AdapterStore

    from ui.backends import LocalBackend

    engine.detach()  # the fresh engine shares the resident model
    fresh = LiftEngine(engine.loaded, engine.config, AdapterStore(str(tmp_path / "store")))
    events = []
    outcome = LocalBackend(fresh).absorb(DOCUMENT + " Extra words.", on_progress=lambda f, d: events.append((f, d)))
    assert outcome.status == "absorbed"
    texts = [d for _, d in events]
    assert texts[0] == "writing auxiliary QA pairs" and texts[-1] == "publishing the adapter"
    epoch_line = r" · epoch \d+/\d+ · loss \d+\.\d{3}( · knows ≤?\d+% of its QA)?"
    assert any(re.fullmatch(r"segments" + epoch_line, t) for t in texts)
    assert any(re.fullmatch(r"segments\+QA" + epoch_line, t) for t in texts)
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    epochs = fresh.store.manifest(outcome.doc_id, fresh.store.variants(outcome.doc_id)[0]).training.epochs
    assert sum(" · loss " in t for t in texts) == epochs  # one event per epoch trained


def test_absorb_stopped_by_progress_leaves_nothing_visible(engine, tmp_path):
    """A callback that raises (a page closed mid-absorb) stops training; no manifest, nothing listed."""
    from lift_ray.infer import LiftEngine
    from lift_ray.store import AdapterStore

    store = AdapterStore(str(tmp_path / "store"))
    engine.detach()  # the fresh engine shares the resident model
    fresh = LiftEngine(engine.loaded, engine.config, store)
    before = {k: v.clone() for k, v in engine.loaded.model.state_dict().items()}

    def stop(event):
        if event.record is not None and event.record.stage == "segments+QA":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fresh.absorb(DOCUMENT + " Stopped.", progress=False, on_progress=stop)
    assert store.list_docs() == []
    after = fresh.loaded.model.state_dict()
    assert set(after) == set(before) and all((after[k] == before[k]).all() for k in before)


def test_niah_progress_covers_the_grid(engine, tmp_path):
    from lift_ray import niah

    events = []
    # lift+icl needs an adapter, so each cell trains and its steps are reported (icl alone trains nothing)
    settings = niah.NiahSettings([niah.Needle(niah.DEFAULT_NEEDLE, niah.DEFAULT_ANSWER)], niah.DEFAULT_QUESTION, ["icl", "lift+icl"])
    haystack = niah.Haystack.from_text(DOCUMENT * 3, "doc")
    niah.run_grid(engine, haystack, [64], [0, 100], settings, tmp_path / "out", progress=False,
                  on_progress=lambda f, m: events.append((f, m)))
    assert [f for f, _ in events] == sorted(f for f, _ in events)
    assert any(m.startswith("cell 1/2") for _, m in events) and any(m.startswith("cell 2/2") for _, m in events)
    assert any("answering in icl" in m for _, m in events) and any("loss" in m for _, m in events)


# --- NIAH tab ---------------------------------------------------------------------------------


def test_niah_grid_through_the_api(app, tmp_path):
    _, client, _ = app
    image, table, summary = client.predict(
        "64", "50", "The vault code is 4417.", "What is the vault code?", "4417", 32, DOCUMENT * 3, api_name="/niah"
    )
    assert Path(image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # An update: the cells and column widths that give each mode a share of the page.
    assert len(table["column_widths"]) == len(table["value"]["headers"])
    table = table["value"]
    assert table["headers"][:3] == ["tokens", "depth asked → got", "needle vs window"]
    assert table["headers"][3:] == ["ICL", "LIFT+ICL", "LIFT"] and len(table["data"]) == 1
    assert "**ICL**" in summary and "W = 32" in summary


def test_niah_shows_the_shipped_grid_and_loads_results(app, tmp_path):
    from gradio_client import handle_file

    demo, client, port = app
    heatmap = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "niah-heatmap")
    assert heatmap.value and heatmap.value["path"].endswith(".png")  # shown at once, nothing run
    # Every mode's column gets a share of the page (five answer columns ran off to the right).
    cells_table = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "niah-table")
    headers = cells_table.value["headers"]
    assert len(headers) == 3 + 5 and len(cells_table.column_widths) == len(headers)
    assert sum(float(w.rstrip("%")) for w in cells_table.column_widths) <= 100 + 1e-6
    shipped = json.loads((REPO / "docs" / "niah" / "results.json").read_text(encoding="utf-8"))
    image, table, summary = client.predict(handle_file(str(REPO / "docs" / "niah" / "results.json")), api_name="/load_niah")
    assert len(table["value"]["data"]) == len(shipped["cells"]) and Path(image).is_file()
    assert "LIFT+ICL" in summary
    bad = tmp_path / "bad.json"
    bad.write_text('{"cells": 3}', encoding="utf-8")
    with pytest.raises(Exception, match="not a results.json"):
        client.predict(handle_file(str(bad)), api_name="/load_niah")


# --- bad input ------------------------------------------------------------------------------------


def test_bad_inputs_are_shown_and_the_app_keeps_working(app, absorbed, engine, tmp_path):
    from gradio_client import handle_file

    _, client, _ = app
    docs_before = _store_docs(engine)
    cases = {
        "binary.txt": (b"abc\x00def" * 10, "binary"),
        "latin1.md": ("caf\xe9 cr\xe8me".encode("latin-1"), "not UTF-8"),
        "blank.pdf": (_blank_pdf(), "no text layer"),
        "broken.pdf": (b"%PDF-1.4 not really", "not a readable PDF"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(Exception, match=message):
            client.predict(handle_file(str(path)), api_name="/read_file")
    big = tmp_path / "big.txt"
    big.write_bytes(b"word " * (UPLOAD_LIMIT // 5 + 10))
    with pytest.raises(Exception):  # Gradio refuses the upload itself (max_file_size)
        client.predict(handle_file(str(big)), api_name="/read_file")
    with pytest.raises(Exception, match="document is empty"):
        client.predict("   \n", "t", api_name="/absorb")
    with pytest.raises(Exception, match="Type a question"):
        client.predict(absorbed[2], "  ", ["icl"], api_name="/ask")
    with pytest.raises(Exception, match="not in the list of choices"):  # Gradio checks the dropdown
        client.predict("0" * 32, "Who?", ["lift"], api_name="/ask")
    with pytest.raises(Exception, match="depth is a percentage"):
        client.predict("64", "150", "a b c.", "Q?", "c", 32, DOCUMENT, api_name="/niah")
    assert _store_docs(engine) == docs_before  # nothing half-written
    table, _ = client.predict(api_name="/list_docs")  # and the app still answers
    assert [row[1] for row in table["data"]] == docs_before


def test_pdf_and_markdown_uploads_read_as_text(app, tmp_path):
    from gradio_client import handle_file

    _, client, _ = app
    pdf = tmp_path / "notes.pdf"
    pdf.write_bytes(_text_pdf("The keeper keeps a tortoise named Marlowe."))
    text, title = client.predict(handle_file(str(pdf)), api_name="/read_file")
    assert text == "The keeper keeps a tortoise named Marlowe." and title == "notes"
    md = tmp_path / "readme.md"
    md.write_text("# Title\n\nSome *text*.\n", encoding="utf-8")
    text, _ = client.predict(handle_file(str(md)), api_name="/read_file")
    assert text == "# Title\n\nSome *text*."


def test_read_upload_limits(tmp_path):
    from lift_ray.text import DocumentError

    from ui.inputs import read_upload

    path = tmp_path / "a.txt"
    path.write_text("x" * 2000, encoding="utf-8")
    with pytest.raises(DocumentError, match="above the upload limit"):
        read_upload(path, max_bytes=1000)
    with pytest.raises(DocumentError, match="above the limit"):
        read_upload(path, max_chars=100)
    other = tmp_path / "a.docx"
    other.write_bytes(b"PK")
    with pytest.raises(DocumentError, match="upload a .txt, .md, .pdf file"):
        read_upload(other)


# --- the HTTP backend ---------------------------------------------------------------------------


def test_http_backend_refusals_are_clear():
    from ui.backends import BackendError, HttpBackend

    down = HttpBackend(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(BackendError, match="does not answer"):
        down.list_docs()
    with pytest.raises(BackendError, match="NIAH grids run with the in-process engine"):
        down.run_niah(None, Path("."))


# --- starting it ----------------------------------------------------------------------------------


def test_package_ships_the_ui(tmp_path):
    """The wheel `pip install .` builds holds ui/ beside lift_ray/, so `lift-ray ui` works outside a checkout."""
    import shutil
    import zipfile

    src = tmp_path / "src"  # a copy: building writes build/ and egg-info beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("lift_ray", "ui"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"ui/__init__.py", "ui/__main__.py", "ui/app.py", "ui/backends.py", "lift_ray/cli.py"} <= set(names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "lift-ray = lift_ray.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_no_analytics():
    import ui  # noqa: F401
    import gradio as gr

    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    from ui.app import build_app
    from ui.backends import HttpBackend

    demo = build_app(HttpBackend(f"http://127.0.0.1:{free_port()}", timeout=1), niah_results=None)
    assert isinstance(demo, gr.Blocks) and demo.analytics_enabled is False


def _listening(port: int) -> list[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp, IPv4 hex)."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, p = local.split(":")
        if int(p, 16) == port and state == "0A":
            out.append(".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return out


def test_python_m_ui_starts_on_loopback(tiny_model_dir, tmp_path):
    """`python -m ui` (= `lift-ray ui`) serves the page on 127.0.0.1 only."""
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ui", "--model", str(tiny_model_dir), "--store", str(tmp_path / "store"),
         "--context-window", "48", "--port", str(port), "--threads", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
        else:
            pytest.fail("the UI did not start within 120 s")
        assert _listening(port) == ["127.0.0.1"]
        assert "lift-ray" in httpx.get(f"http://127.0.0.1:{port}/config", timeout=5).text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_cli_refuses_a_missing_api_key_variable(capsys):
    from lift_ray.cli import main

    os.environ.pop("LIFT_RAY_TEST_NO_SUCH_KEY", None)
    assert main(["ui", "--serve-url", "http://127.0.0.1:9", "--api-key-env", "LIFT_RAY_TEST_NO_SUCH_KEY"]) == 2
    assert "LIFT_RAY_TEST_NO_SUCH_KEY" in capsys.readouterr().err
    assert main(["ui", "--api-key-env", "X"]) == 2


# --- the HTTP backend against a stand-in of the Serve API -------------------------------------------
# lift_ray.serve (issue 12) is being built concurrently; until it lands, the HTTP backend is tested
# against this stand-in, written to that endpoint spec over the same engine, with the job and
# model-entry fields the serve branch uses (a job's ``progress`` object, ``tokens``, ``error``).

API_KEY = "ui-test-key"


def _serve_standin(engine):
    """A FastAPI app with the Serve API's endpoints, answering through ``engine``."""
    import threading
    import uuid

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    from lift_ray.serve.app import _progress as serve_progress

    api = FastAPI()
    jobs: dict[str, dict] = {}
    lock = threading.Lock()  # the engine answers one request at a time

    def error(status: int, message: str, code: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}, status)

    @api.middleware("http")
    async def auth(request: Request, call_next):
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return error(401, "invalid API key", "invalid_api_key")
        return await call_next(request)

    @api.get("/v1/models")
    def models():
        data = [{"id": engine.loaded.model_id, "object": "model", "owned_by": "lift-ray", "lift_kind": "base"}]
        for row in engine.store.list_docs():
            manifest = engine.store.latest_manifest(row["doc_id"])
            data.append({"id": row["doc_id"], "object": "model", "owned_by": "lift-ray", "alias": row["alias"],
                         "title": row["title"], "tokens": row["num_tokens"], "variants": row["variants"],
                         "adapter_kinds": [manifest.adapter_kind], "context_window": manifest.context_window,
                         "created": row["created_at"]})
        return {"object": "list", "data": data}

    @api.post("/v1/documents", status_code=202)
    def documents(body: dict):
        job_id = uuid.uuid4().hex
        jobs[job_id] = {"id": job_id, "status": "queued"}

        def work():
            def on_progress(event):
                if event.record is not None:  # the Serve app's own serialiser of an epoch
                    jobs[job_id].update(status="absorbing", progress=serve_progress(event.record))
                    time.sleep(0.05)  # slow enough for a poller to see the stages

            try:
                with lock:
                    result = engine.absorb(body["text"], progress=False, title=body.get("title"), on_progress=on_progress)
                jobs[job_id].update(status="absorbed", doc_id=result.doc_id, tokens=result.num_tokens,
                                    already_absorbed=result.status == "already_absorbed")
            except Exception as exc:  # noqa: BLE001 (reported to the client as the spec says)
                jobs[job_id].update(status="failed", error=str(exc))

        threading.Thread(target=work, daemon=True).start()
        return {"id": job_id, "status": "queued"}

    @api.get("/v1/documents")
    def list_documents():
        from lift_ray.serve.api import document_entry

        return {"object": "list", "data": [document_entry(row) for row in engine.store.list_docs(pending=True)]}

    @api.get("/v1/documents/{job_id}")
    def job(job_id: str):
        return jobs[job_id] if job_id in jobs else error(404, f"no job {job_id}", "not_found")

    @api.post("/v1/chat/completions")
    def chat(body: dict):
        doc, mode = body["model"], body.get("lift_mode", "lift+icl")
        if doc not in [r["doc_id"] for r in engine.store.list_docs()]:
            return error(404, f"model {doc} does not exist", "model_not_found")
        question = body["messages"][-1]["content"]

        def events():
            with lock:
                pieces = engine.stream_answer(question, doc, mode, max_new_tokens=body.get("max_tokens"))
                while True:
                    try:
                        piece = next(pieces)
                    except StopIteration as done:
                        answer = done.value
                        break
                    yield "data: " + json.dumps({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]}) + "\n\n"
            usage = {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.new_tokens}
            yield "data: " + json.dumps({"object": "chat.completion.chunk", "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return api


@pytest.fixture(scope="module")
def serve_url(tiny_model_dir, tmp_path_factory):
    import threading

    import uvicorn

    engine = _tiny_engine(tiny_model_dir, tmp_path_factory.mktemp("serve-store"))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_serve_standin(engine), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", engine
    server.should_exit = True
    thread.join(timeout=10)


def test_http_backend_absorbs_and_answers_like_the_engine(serve_url):
    from ui.backends import HttpBackend

    url, engine = serve_url
    backend = HttpBackend(url + "/v1", API_KEY, poll_interval=0.02)
    events = []
    outcome = backend.absorb(DOCUMENT, title="over http", on_progress=lambda f, d: events.append(d))
    assert outcome.status == "absorbed" and len(outcome.doc_id) == 32
    assert any(re.fullmatch(r"absorbing · segments · epoch \d+ · loss \d+\.\d{3}", d) for d in events)
    assert any(re.fullmatch(r"absorbing · segments\+QA · epoch \d+ · loss \d+\.\d{3}", d) for d in events)
    rows = backend.list_docs()
    assert [(r.doc_id, r.title, r.adapter_kinds) for r in rows] == [(outcome.doc_id, "over http", ["lora"])]
    view = backend.document_view(outcome.doc_id)  # the text absorbed from this page, the served model's tokenizer
    assert view is not None and view.window == 48 and 0 < view.head_end < view.tail_start < len(view.text)
    for mode in ("icl", "lift+icl"):
        pieces, usage = drain(backend.stream("Who designed the lighthouse?", outcome.doc_id, mode))
        expected = engine.answer("Who designed the lighthouse?", outcome.doc_id, mode)
        assert "".join(pieces).strip() == expected.answer
        assert (usage.prompt_tokens, usage.completion_tokens) == (expected.prompt_tokens, expected.new_tokens)


def test_the_app_works_the_same_over_http(serve_url, tmp_path):
    """The tabs do not know their backend: the Compare flow through gradio_client, served over HTTP."""
    from gradio_client import Client

    from ui.app import PANEL_MODES, launch
    from ui.backends import HttpBackend

    url, engine = serve_url
    port = free_port()
    demo = launch(HttpBackend(url, API_KEY, poll_interval=0.02), port=port, block=False, niah_results=None, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        status, table, _ = client.predict(DOCUMENT + " Served.", "second", api_name="/absorb")
        doc_id = next(row[1] for row in table["data"] if row[0] == "second")
        assert doc_id in status
        out = client.predict(doc_id, "Who keeps a tortoise?", ["icl", "lift+icl"], api_name="/ask")
        k = PANEL_MODES.index("lift+icl")
        assert out[k] == engine.answer("Who keeps a tortoise?", doc_id, "lift+icl").answer
        assert "prompt tokens" in out[len(PANEL_MODES) + k]
        with pytest.raises(Exception, match="NIAH grids run with the in-process engine"):
            client.predict("64", "50", "n.", "q?", "a", 32, "", api_name="/niah")
        client.close()
    finally:
        demo.close()


def test_http_backend_shows_a_refused_key_and_an_unknown_document(serve_url):
    from ui.backends import BackendError, HttpBackend

    url, _ = serve_url
    with pytest.raises(BackendError, match="refused the API key"):
        HttpBackend(url, "wrong-key").list_docs()
    with pytest.raises(BackendError, match="answered 404: model 0+ does not exist"):
        next(HttpBackend(url, API_KEY).stream("Who?", "0" * 32, "icl"))
