"""QA evaluation: metrics on hand-checked cases, set loading (LooGLE, flat, column maps, `datasets`),
bad input refused before any training, the shipped set's builder, and `lift-ray eval` end to end on
the tiny model (summary + per-question JSONL, resume)."""

import json

from lift_ray.modes import MODES

import pytest

from conftest import chat_endpoint, make_tokenizer
from lift_ray.cli import main
from lift_ray.evaluate.data import (
    EvalError,
    EvalQuestion,
    documents_from_rows,
    evidence_spans,
    load_eval_set,
    locate,
    parse_column_map,
    view_char_ranges,
)
from lift_ray.evaluate.metrics import contains_answer, contains_folded, exact_match, normalize_answer, rouge_l, score_answer, token_f1

# --- metrics ------------------------------------------------------------------------------------


def test_squad_normalisation():
    assert normalize_answer("  The Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"
    assert normalize_answer("an apple a day") == "apple day"


def test_exact_match_takes_the_best_answer():
    assert exact_match("The Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    assert exact_match("1977", ["in 1977", "1977"]) == 1.0
    assert exact_match("", ["x"]) == 0.0


def test_token_f1_by_hand():
    # prediction {eiffel}, gold {eiffel, tower}: P = 1, R = 1/2, F1 = 2/3
    assert token_f1("Eiffel", ["Eiffel Tower"]) == pytest.approx(2 / 3)
    # prediction {in, paris, france}, gold {paris}: P = 1/3, R = 1, F1 = 1/2
    assert token_f1("in Paris, France", ["Paris"]) == pytest.approx(0.5)
    # repeated tokens count once per match: {the} is an article and vanishes; {cat, cat} vs {cat}: P = 1/2, R = 1
    assert token_f1("cat cat", ["the cat"]) == pytest.approx(2 / 3)
    assert token_f1("London", ["Paris", "in London"]) == pytest.approx(2 / 3)  # best of 0 and (P = 1, R = 1/2)
    assert token_f1("nothing shared", ["Paris"]) == 0.0
    assert token_f1("", ["Paris"]) == 0.0


def test_rouge_l_by_hand():
    # LCS of "the cat lay on a mat" and "the cat sat on the mat" is "the cat on mat": P = R = 4/6
    assert rouge_l("the cat lay on a mat", ["the cat sat on the mat"]) == pytest.approx(4 / 6)
    # one of four reference tokens: P = 1, R = 1/4, F = 0.4
    assert rouge_l("Norway", ["Denmark, Iceland and Norway"]) == pytest.approx(0.4)
    # Porter stemming: cats/cat and running/run match
    assert rouge_l("cats running", ["cat run"]) == pytest.approx(1.0)
    # order matters for ROUGE-L (LCS 1 of 2), not for token F1
    assert rouge_l("Tower Eiffel", ["Eiffel Tower"]) == pytest.approx(0.5)
    assert token_f1("Tower Eiffel", ["Eiffel Tower"]) == pytest.approx(1.0)
    assert rouge_l("", ["Paris"]) == 0.0


def test_contains_answer_needs_whole_words():
    assert contains_answer("The lighthouse was designed by Tobias Wrenfield.", ["tobias wrenfield"]) == 1.0
    assert contains_answer("Wrenfields built it", ["Wrenfield"]) == 0.0
    assert score_answer("Paris", ["Paris"]) == {"em": 1.0, "f1": 1.0, "rouge_l": 1.0, "contains": 1.0, "contains_10w": 1.0,
                                                "contains_folded": 1.0}


@pytest.mark.parametrize("reply, answer, folded", [
    ("The ash tree flattened approximately 60 meters of fencing.", "60 metres", 1.0),  # spelling
    ("It is approximately 6 meters.", "six metres", 1.0),  # a number word as digits
    ("The midfielder is thirty-six.", "36", 1.0),
    ("A 1,400-hour astronomical regulator.", "1,400 hours", 1.0),  # a hyphenated unit, a plural
    ("The premium had risen by 7.5%.", "7.5 percent", 1.0),
    ("They met at the harbor wall.", "harbour wall", 1.0),
    ("It took 20 minutes.", "twenty-five minutes", 0.0),  # another number stays a miss
    ("The answer to this question is: 1", "eleven", 0.0),
    ("Kit Marrab", "Kit Marrable", 0.0),  # part of a name is no answer
    ("He waited for hours.", "four hours", 0.0),
    ("It weighs five hundred kilograms.", "five", 1.0),  # contains-answer's hit stands
])
def test_contains_folded_counts_the_answer_in_another_surface_form(reply, answer, folded):
    assert contains_folded(reply, [answer]) == folded
    assert contains_answer(reply, [answer]) <= folded  # never below contains-answer


def test_an_answer_counts_as_stated_only_in_the_replys_first_ten_words():
    # a reply that copies the context "contains" an answer it never gives
    copied = "The context says the old railway station in Netherby closed in 1965 and is now a cafe."
    assert contains_answer(copied, ["cafe"]) == 1.0
    assert contains_answer(copied, ["cafe"], first_words=10) == 0.0
    assert score_answer(copied, ["cafe"])["contains_10w"] == 0.0
    assert score_answer("It is now a cafe.", ["cafe"])["contains_10w"] == 1.0
    # the tenth word still counts, and an answer spanning the boundary does not
    assert contains_answer("one two three four five six seven eight nine Netherby", ["Netherby"], 10) == 1.0
    assert contains_answer("one two three four five six seven eight nine Tobias Wrenfield", ["Tobias Wrenfield"], 10) == 0.0


def test_summary_scores_predictions_written_before_a_metric_existed():
    from lift_ray.evaluate.runner import summarise

    long_reply = "The context above describes the old railway station in Netherby, now a cafe."
    rows = [{"doc": "d", "q_index": i, "mode": "icl", "where": "beyond", "prediction": p, "answers": ["cafe"],
             "seconds": 0.5, **score_answer(p, ["cafe"])} for i, p in enumerate([long_reply, "a cafe"])]
    del rows[0]["contains_10w"]  # a run resumed from predictions.jsonl of an earlier version
    table = summarise(rows, ["icl"], [], {})["table"]
    assert table[0]["contains"] == 100.0 and table[0]["contains_10w"] == 50.0


def test_summary_counts_the_questions_a_mode_answered_as_another():
    from lift_ray.evaluate.runner import summarise, summary_markdown

    rows = [{"doc": "d", "q_index": i, "mode": "lift+rag", "answered_as": a, "where": w, "prediction": "x", "answers": ["y"],
             "seconds": 1.0, **score_answer("x", ["y"])}
            for i, (a, w) in enumerate([("lift+rag", "beyond"), ("rag", "beyond"), ("rag", "inside"), ("icl", "inside")])]
    rows.append({**rows[0], "mode": "rag", "answered_as": "rag"})
    summary = summarise(rows, ["lift+rag", "rag"], [], {"model": "m", "context_window": 8})
    by = {(r["mode"], r["where"]): r["answered_as_other"] for r in summary["table"]}
    assert by[("lift+rag", "all")] == {"icl": 1, "rag": 2} and by[("lift+rag", "beyond")] == {"rag": 1}
    assert by[("rag", "all")] == {}
    md = summary_markdown(summary)
    assert "| 1 as icl, 2 as rag |" in md and md.count("| - |") >= 1


def test_currency_signs_and_unicode_punctuation_do_not_hide_an_answer():
    # SQuAD's ASCII-only stripping left "£48000" one word, so the answer "48,000" was never found.
    assert contains_answer("The council's annual budget is £48,000.", ["48,000"]) == 1.0
    assert contains_answer("It costs €12,400 in all", ["12400"]) == 1.0
    assert exact_match("“Greenway Play”", ["Greenway Play"]) == 1.0
    assert normalize_answer("don’t") == normalize_answer("don't") == "dont"
    assert contains_answer("It costs £4,800", ["48"]) == 0.0  # still whole words only


# --- loading ------------------------------------------------------------------------------------

DOC_A = "Port Quillon is a harbour town. Tobias Wrenfield designed its lighthouse in 1887."
DOC_B = "The keeper keeps a tortoise named Marlowe. Marlowe is forty years old."


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_loogle_layout_with_python_literal_qa_pairs(tmp_path):
    # LooGLE's release stores qa_pairs as the repr of a Python list (single quotes), with evidence in S
    rows = [
        {"id": "a", "title": "Quillon", "input": DOC_A,
         "qa_pairs": str([{"Q": "Who designed the lighthouse?", "A": "Tobias Wrenfield", "S": ["Tobias Wrenfield designed its lighthouse in 1887."]}])},
        {"id": "b", "context": DOC_B, "qa_pairs": [{"Q": "What is the tortoise called?", "A": ["Marlowe", "Marlowe the tortoise"]},
                                                   {"Q": "How old is it?", "A": "forty years"}]},
    ]
    docs = load_eval_set(str(_write_jsonl(tmp_path / "set.jsonl", rows)))
    assert [d.key for d in docs] == ["a", "b"]
    assert docs[0].title == "Quillon" and docs[0].text == DOC_A
    assert docs[0].questions[0] == EvalQuestion(
        "Who designed the lighthouse?", ["Tobias Wrenfield"], ["Tobias Wrenfield designed its lighthouse in 1887."]
    )
    assert docs[1].text == DOC_B and [q.answers for q in docs[1].questions] == [["Marlowe", "Marlowe the tortoise"], ["forty years"]]


def test_json_array_file(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps([{"context": DOC_A, "qa_pairs": [{"question": "Who designed it?", "answer": "Tobias Wrenfield"}]}]))
    assert load_eval_set(str(path))[0].questions[0].answers == ["Tobias Wrenfield"]


def test_column_map_for_other_names(tmp_path):
    rows = [{"doc": "x1", "article": DOC_A, "qas": [{"query": "Who designed the lighthouse?", "gold": "Tobias Wrenfield"}]}]
    path = _write_jsonl(tmp_path / "set.jsonl", rows)
    mapping = parse_column_map("text=article, id=doc,qa_pairs=qas,question=query,answer=gold")
    docs = load_eval_set(str(path), columns=mapping)
    assert docs[0].key == "x1" and docs[0].questions[0].answers == ["Tobias Wrenfield"]
    with pytest.raises(EvalError, match=r"no text column 'input' or 'context'.*article.*--columns text=NAME"):
        load_eval_set(str(path))


def test_flat_rows_group_into_documents_and_skip_unanswerable(capsys):
    rows = [
        {"context": DOC_A, "question": "Who designed the lighthouse?", "answers": {"text": ["Tobias Wrenfield", "Wrenfield"], "answer_start": [32, 39]}},
        {"context": DOC_B, "question": "What is the tortoise called?", "answers": {"text": ["Marlowe"], "answer_start": [35]}},
        {"context": DOC_A, "question": "When was it built?", "answers": {"text": ["1887"], "answer_start": [76]}},
        {"context": DOC_A, "question": "Who painted it?", "answers": {"text": [], "answer_start": []}},  # SQuAD v2 unanswerable
    ]
    docs = documents_from_rows(rows, "squad-like")
    assert [len(d.questions) for d in docs] == [2, 1]
    assert docs[0].questions[0].answers == ["Tobias Wrenfield", "Wrenfield"]
    assert "skipped 1 question(s) without a gold answer" in capsys.readouterr().err


def test_datasets_sources_saved_dataset_and_parquet(tmp_path):
    import datasets

    rows = [{"passage": DOC_A, "q": "Who designed the lighthouse?", "a": ["Tobias Wrenfield"]},
            {"passage": DOC_B, "q": "What is the tortoise called?", "a": ["Marlowe"]}]
    mapping = parse_column_map("text=passage,question=q,answer=a")
    ds = datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows), "train": datasets.Dataset.from_list(rows[:1])})
    ds.save_to_disk(str(tmp_path / "saved"))
    docs = load_eval_set(str(tmp_path / "saved"), split="validation", columns=mapping)
    assert [d.questions[0].answers for d in docs] == [["Tobias Wrenfield"], ["Marlowe"]]
    assert len(load_eval_set(str(tmp_path / "saved"), split="train", columns=mapping)) == 1
    with pytest.raises(EvalError, match=r"no split 'test'; splits: validation, train"):
        load_eval_set(str(tmp_path / "saved"), columns=mapping)

    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "set.parquet"))
    assert len(load_eval_set(str(tmp_path / "set.parquet"), columns=mapping)) == 2


@pytest.mark.parametrize(
    "content, message",
    [
        ("", r"the evaluation set is empty"),
        ('{"input": "text", "qa_pairs": []}\n{"input": oops}\n', r"set.jsonl:2: malformed JSON"),
        ('{"input": "   ", "qa_pairs": [{"Q": "q?", "A": "a"}]}\n', r"row 1 column 'input' is empty"),
        ('{"input": "text", "qa_pairs": "not a list ["}\n', r"qa_pairs is a string but neither JSON nor a Python literal"),
        ('{"input": "text", "qa_pairs": [{"question": "q?"}]}\n', r"item 1: no answer column 'A' or 'answer' or 'answers'"),
        ('{"input": "text", "qa_pairs": [{"Q": "", "A": "a"}]}\n', r"column 'Q' holds no question text"),
        ('{"input": "text", "qa_pairs": [{"Q": "q?", "A": []}]}\n', r"no question with a gold answer"),
        ('[1, 2]\n', r"row 1: expected a JSON object"),
        ('{"input": 5, "qa_pairs": []}\n', r"column 'input' holds a int, not the document text"),
        ('{"id": 1, "input": "a", "qa_pairs": [{"Q": "q?", "A": "a"}]}\n{"id": 1, "input": "b", "qa_pairs": []}\n', r"document id '1' appears twice"),
    ],
)
def test_bad_sets_are_refused_with_the_row_named(tmp_path, content, message):
    path = tmp_path / "set.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(EvalError, match=message):
        load_eval_set(str(path))


def test_bad_column_maps_and_missing_sources(tmp_path):
    with pytest.raises(EvalError, match="unknown role 'txt'"):
        parse_column_map("txt=article")
    with pytest.raises(EvalError, match="expected ROLE=COLUMN"):
        parse_column_map("text")
    with pytest.raises(EvalError, match="no such file or directory"):
        load_eval_set(str(tmp_path / "missing.jsonl"))


# --- where the evidence lies ----------------------------------------------------------------------


def test_view_ranges_match_the_truncated_view_and_locate_answers():
    from lift_ray.segments import truncate_middle

    tok = make_tokenizer()
    text = " ".join(f"Fact {i}: the keeper counts {i} boats." for i in range(40))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    mixin = tok(" ... ", add_special_tokens=False)["input_ids"]
    view = truncate_middle(ids, 48, mixin)
    head_end, tail_start = view_char_ranges(text, tok, 48, " ... ")
    assert tok.decode(view) == text[:head_end] + " ... " + text[tail_start:]
    assert view_char_ranges("short", tok, 48, " ... ") == (5, 5)  # fits: everything is inside

    first, middle, last = "Fact 0: the keeper", "Fact 20: the keeper counts 20 boats.", "counts 39 boats."
    spans = {s: evidence_spans(text, EvalQuestion("q?", [s])) for s in (first, middle, last)}
    assert locate(spans[first], head_end, tail_start) == "inside"
    assert locate(spans[middle], head_end, tail_start) == "beyond"
    assert locate(spans[last], head_end, tail_start) == "inside"
    assert locate(spans[first] + spans[middle], head_end, tail_start) == "partial"
    assert locate(evidence_spans(text, EvalQuestion("q?", ["not there"])), head_end, tail_start) == "unknown"
    # an explicit offset wins over searching for the answer text
    assert evidence_spans(text, EvalQuestion("q?", ["keeper"], answer_start=text.index(middle) + 13)) == [
        (text.index(middle) + 13, text.index(middle) + 19)
    ]


# --- the shipped set's builder --------------------------------------------------------------------


def _fake_squad(n_articles=3, n_paragraphs=8):
    """SQuAD v2-shaped JSON whose facts are unique per paragraph, so answers occur once."""
    data = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(n_paragraphs):
            name = f"Keeper{a}x{p}"
            context = f"In district {a}-{p} the harbour keeper was {name}. The boats there were painted in colour {a * 100 + p}."
            paragraphs.append({"context": context, "qas": [
                {"question": f"Who kept the harbour in district {a}-{p}?", "answers": [{"text": name, "answer_start": context.index(name)}], "is_impossible": False},
                {"question": f"What colour were boats in {a}-{p}?", "answers": [], "is_impossible": True},
            ]})
        data.append({"title": f"Article_{a}", "paragraphs": paragraphs})
    return {"version": "v2.0", "data": data}


def test_make_set_is_seeded_and_labels_hold():
    from lift_ray.evaluate.make_set import build_documents

    tok = make_tokenizer()
    kwargs = dict(num_docs=2, window=96, min_tokens=200, max_tokens=800, beyond_per_doc=2, inside_per_doc=1)
    docs = build_documents(_fake_squad(), tok, seed=3, **kwargs)
    assert docs == build_documents(_fake_squad(), tok, seed=3, **kwargs)
    assert docs != build_documents(_fake_squad(), tok, seed=4, **kwargs)
    assert len(docs) == 2
    for doc in docs:
        head_end, tail_start = view_char_ranges(doc["input"], tok, 96, " ... ")
        wheres = sorted(q["where"] for q in doc["qa_pairs"])
        assert wheres == ["beyond", "beyond", "inside"]
        for q in doc["qa_pairs"]:
            answer = q["A"][0]
            assert doc["input"][q["answer_start"] : q["answer_start"] + len(answer)] == answer
            assert doc["input"].count(answer) == 1 and answer in q["S"]
            assert locate([(q["answer_start"], q["answer_start"] + len(answer))], head_end, tail_start) == q["where"]
    # and the loader reads it back, offsets included
    loaded = documents_from_rows(docs, "built")
    assert loaded[0].questions[0].answer_start == docs[0]["qa_pairs"][0]["answer_start"]


def test_shipped_eval_set_has_provenance_and_loads():
    from importlib import resources

    path = resources.files("lift_ray.data").joinpath("eval_squad.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert 4 <= len(rows) <= 6
    for row in rows:
        assert "SQuAD v2.0 dev" in row["source"] and "CC BY-SA 4.0" in row["license"]
        assert 600 <= row["num_tokens"] <= 1000 and row["window"] == 128
        assert {q["where"] for q in row["qa_pairs"]} == {"inside", "beyond"}
    docs = load_eval_set(str(path))
    assert sum(len(d.questions) for d in docs) == sum(len(r["qa_pairs"]) for r in rows)


@pytest.mark.slow
def test_shipped_labels_hold_for_the_embedded_tokenizer():
    """The inside/beyond labels were computed with SmolLM2's tokenizer at W = 128; the evaluator agrees."""
    from importlib import resources

    from transformers import AutoTokenizer

    from lift_ray.config import ModelSpec
    from lift_ray.model import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(ModelSpec())[0])
    path = resources.files("lift_ray.data").joinpath("eval_squad.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for row, doc in zip(rows, load_eval_set(str(path))):
        assert len(tok(doc.text, add_special_tokens=False)["input_ids"]) == row["num_tokens"]
        head_end, tail_start = view_char_ranges(doc.text, tok, 128, " ... ")
        assert [locate(evidence_spans(doc.text, q), head_end, tail_start) for q in doc.questions] == [
            q["where"] for q in row["qa_pairs"]
        ]


# --- `lift-ray eval` end to end on the tiny model ------------------------------------------------

FAST = ["--context-window", "48", "--epochs", "1", "--qa", "none", "--threads", "1", "--quiet", "--max-new-tokens", "3"]
LONG_A = " ".join(f"Line {i} of the chronicle says the keeper counted {i} boats." for i in range(12)) + " Tobias Wrenfield designed the lighthouse."
LONG_B = "The keeper keeps a tortoise named Marlowe. " + " ".join(f"Entry {i}: calm sea, {i} gulls." for i in range(12))


@pytest.fixture
def eval_set(tmp_path):
    rows = [
        {"id": "quillon", "input": LONG_A, "qa_pairs": [{"Q": "Who designed the lighthouse?", "A": "Tobias Wrenfield"},
                                                        {"Q": "How many boats in line 5?", "A": "5"}]},
        {"id": "marlowe", "input": LONG_B, "qa_pairs": [{"Q": "What is the tortoise called?", "A": "Marlowe"}]},
    ]
    return _write_jsonl(tmp_path / "set.jsonl", rows)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(out_dir):
    return [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]


def test_eval_end_to_end_then_resume(capsys, monkeypatch, tmp_path, tiny_model_dir, eval_set):
    from lift_ray.infer import LiftEngine

    out, store = tmp_path / "out", tmp_path / "store"
    argv = ["eval", "--data", eval_set, "--out", out, "--model", tiny_model_dir, "--store", store, *FAST]
    code, stdout, err = _run(capsys, *argv)
    assert code == 0, err
    rows = _rows(out)
    assert len(rows) == 3 * len(MODES)  # 3 questions x every mode (the default)
    assert {(r["doc"], r["q_index"], r["mode"]) for r in rows} == {
        (d, i, m) for d, n in (("quillon", 2), ("marlowe", 1)) for i in range(n) for m in MODES
    }
    for r in rows:
        assert set(r) >= {"prediction", "answers", "em", "f1", "rouge_l", "contains", "contains_10w", "where", "doc_id", "seconds"}
        assert r["where"] in ("inside", "beyond")
    assert {r["where"] for r in rows if r["doc"] == "quillon" and r["q_index"] == 0} == {"inside"}  # the tail
    assert {r["where"] for r in rows if r["doc"] == "quillon" and r["q_index"] == 1} == {"beyond"}  # the middle
    assert {r["where"] for r in rows if r["doc"] == "marlowe"} == {"inside"}  # the head
    summary = json.loads((out / "summary.json").read_text())
    assert summary["documents"] == 2 and summary["questions"] == 3 and summary["absorbed"] == 2
    assert [(r["mode"], r["where"], r["questions"]) for r in summary["table"]] == [
        (m, w, n) for m in MODES for w, n in (("all", 3), ("beyond", 1), ("inside", 2))
    ]
    md = (out / "summary.md").read_text()
    assert "| lift+icl | beyond the window | 1 |" in md and "ROUGE-L" in md and md in stdout + "\n"
    assert "contains answer in first 10 words" in md
    assert len((out / "absorb.jsonl").read_text().splitlines()) == 2

    # a finished run: nothing is absorbed or answered again
    def no_absorb(self, *a, **k):
        raise AssertionError("a finished document was absorbed again")

    monkeypatch.setattr(LiftEngine, "absorb", no_absorb)
    code, _, err = _run(capsys, *argv)
    assert code == 0, err
    assert _rows(out) == rows

    # drop one document's last answer (as if killed mid-run) plus a torn line: only that document is redone
    kept = [r for r in rows if not (r["doc"] == "marlowe" and r["mode"] == "lift+icl")]
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"doc": "marl')
    absorbed = []
    monkeypatch.setattr(LiftEngine, "absorb", lambda self, text, **k: _real_absorb(self, text, absorbed, **k))
    code, _, err = _run(capsys, *argv)
    assert code == 0, err
    assert absorbed == [LONG_B]
    redone = _rows(out)
    assert len(redone) == 3 * len(MODES) and redone[:-1] == kept and redone[-1]["mode"] == "lift+icl" and redone[-1]["doc"] == "marlowe"

    # a last line cut just before its newline is whole: kept, and the next row starts on a new line
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in redone[:-2]) + json.dumps(redone[-2]))
    code, _, err = _run(capsys, *argv)
    assert code == 0, err
    timeless = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert timeless(_rows(out)) == timeless(redone)

    # other settings in the same directory are refused before anything runs
    code, _, err = _run(capsys, *argv[:-2], "--max-new-tokens", "5")
    assert code == 2 and "holds a run with other settings (inference)" in err


def test_interrupted_absorb_keeps_its_record_and_resumes(capsys, monkeypatch, tmp_path, tiny_model_dir, eval_set):
    from lift_ray.infer import LiftEngine

    out, store = tmp_path / "out", tmp_path / "store"
    argv = ["eval", "--data", eval_set, "--out", out, "--model", tiny_model_dir, "--store", store, *FAST]
    calls = []

    def absorb_then_interrupt(self, text, **kwargs):
        if calls:
            raise KeyboardInterrupt  # the user stops the run while the second document trains
        return _real_absorb(self, text, calls, **kwargs)

    monkeypatch.setattr(LiftEngine, "absorb", absorb_then_interrupt)
    code, _, _ = _run(capsys, *argv)
    assert code == 130 and not (out / "predictions.jsonl").exists()
    assert [json.loads(line)["status"] for line in (out / "absorb.jsonl").read_text().splitlines()] == ["absorbed"]

    monkeypatch.undo()
    code, _, err = _run(capsys, *argv)
    assert code == 0, err
    statuses = [json.loads(line)["status"] for line in (out / "absorb.jsonl").read_text().splitlines()]
    assert statuses == ["absorbed", "already_absorbed", "absorbed"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["absorbed"] == 2 and summary["absorb_seconds"] > 0 and len(_rows(out)) == 3 * len(MODES)


def test_workers_absorb_through_bulk_and_answer_here(capsys, monkeypatch, tmp_path, tiny_model_dir, eval_set):
    """--workers N hands the absorbs to lift_ray.bulk.run_bulk with the engine's resolved config and
    store (Ray itself is covered by the bulk tests; here run_bulk trains in-process)."""
    import lift_ray.bulk
    from lift_ray.absorb import absorb_document
    from lift_ray.infer import LiftEngine
    from lift_ray.model import load_model
    from lift_ray.store import AdapterStore

    def no_absorb(self, *a, **k):
        raise AssertionError("the driver's engine must not absorb when workers > 1")

    calls = []

    def fake_run_bulk(inputs, cfg, *, progress=True, **kwargs):
        calls.append((inputs, cfg))
        loaded, store = load_model(cfg.model), AdapterStore(cfg.store.uri)
        records = []
        for doc in inputs:
            result = absorb_document(loaded, doc.text, cfg, store, progress=False)
            records.append({"doc_id": result.doc_id, "alias": doc.alias, "status": "absorbed",
                            "num_tokens": result.num_tokens, "seconds": result.seconds})
        return lift_ray.bulk.BulkSummary("run", cfg.store.uri, len(inputs), records, [], [], [], 1.0, 1, 0, cfg.bulk.workers)

    monkeypatch.setattr(LiftEngine, "absorb", no_absorb)
    monkeypatch.setattr(lift_ray.bulk, "run_bulk", fake_run_bulk)
    out, store = tmp_path / "out", tmp_path / "store"
    code, _, err = _run(capsys, "eval", "--data", eval_set, "--out", out, "--model", tiny_model_dir, "--store", store,
                        "--workers", "2", *FAST)
    assert code == 0, err
    (inputs, cfg), = calls
    assert [d.alias for d in inputs] == ["quillon", "marlowe"] and cfg.bulk.workers == 2
    assert cfg.store.uri == str(store) and cfg.segments.context_window == 48
    assert len(_rows(out)) == 3 * len(MODES) and {r["mode"] for r in _rows(out)} == set(MODES)
    assert json.loads((out / "summary.json").read_text())["absorbed"] == 2

    def failing_run_bulk(inputs, cfg, **kwargs):
        failed = [{"doc_id": d.doc_id, "alias": d.alias, "status": "failed", "reason": "worker died"} for d in inputs]
        return lift_ray.bulk.BulkSummary("run", cfg.store.uri, len(inputs), [], [], failed, [], 1.0, 1, 0, 2)

    monkeypatch.setattr(lift_ray.bulk, "run_bulk", failing_run_bulk)
    code, _, err = _run(capsys, "eval", "--data", eval_set, "--out", tmp_path / "out2", "--model", tiny_model_dir,
                        "--store", tmp_path / "store2", "--workers", "2", *FAST)
    assert code == 2 and "failed for 2 document(s)" in err and "quillon: worker died" in err
    assert not (tmp_path / "out2" / "predictions.jsonl").exists()


def _real_absorb(engine, text, calls, **kwargs):
    from lift_ray.absorb import absorb_document

    calls.append(text)
    engine.detach()
    return absorb_document(engine.loaded, text, engine.config, engine.store, **kwargs)


def test_icl_only_trains_nothing(capsys, tmp_path, tiny_model_dir, eval_set):
    out, store = tmp_path / "out", tmp_path / "store"
    code, _, err = _run(capsys, "eval", "--data", eval_set, "--out", out, "--model", tiny_model_dir, "--store", store,
                        "--modes", "icl", *FAST)
    assert code == 0, err
    assert {r["mode"] for r in _rows(out)} == {"icl"} and len(_rows(out)) == 3
    assert not (out / "absorb.jsonl").exists() and not (store / "docs").exists()


def test_llm_judge_through_an_openai_compatible_endpoint(capsys, tmp_path, tiny_model_dir, eval_set):
    with chat_endpoint("Score: 7") as (url, requests):
        out = tmp_path / "out"
        code, _, err = _run(capsys, "eval", "--data", eval_set, "--out", out, "--model", tiny_model_dir, "--store", tmp_path / "s",
                            "--modes", "icl", "--judge-endpoint", url, "--judge-model", "grader", *FAST)
    assert code == 0, err
    assert [r["judge"] for r in _rows(out)] == [7, 7, 7]
    assert len(requests) == 3 and requests[0]["body"]["model"] == "grader"
    assert "Reference answer(s): Tobias Wrenfield" in requests[0]["body"]["messages"][1]["content"]
    assert "judge (1-10)" in (out / "summary.md").read_text() and "| 7.00 |" in (out / "summary.md").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--modes", "icl,recite"], "unknown mode 'recite'"),
        (["--columns", "text"], "expected ROLE=COLUMN"),
        (["--judge-model", "x"], "--judge-endpoint and --judge-model go together"),
        (["--columns", "text=article"], "no text column 'article'"),
    ],
)
def test_cli_bad_input_exits_2_before_training(capsys, tmp_path, tiny_model_dir, eval_set, extra, message):
    out, store = tmp_path / "out", tmp_path / "store"
    code, stdout, err = _run(capsys, "eval", "--data", eval_set, "--out", out, "--model", tiny_model_dir, "--store", store, *FAST, *extra)
    assert code == 2 and stdout == ""
    assert err.strip().splitlines()[-1].startswith("lift-ray: error: ") and message in err
    assert not out.exists() and not store.exists()


def test_cli_malformed_and_empty_sets(capsys, tmp_path, tiny_model_dir):
    for name, content, message in [("bad.jsonl", "{oops\n", "bad.jsonl:1: malformed JSON"), ("empty.jsonl", "\n", "is empty")]:
        path = tmp_path / name
        path.write_text(content)
        code, _, err = _run(capsys, "eval", "--data", path, "--out", tmp_path / "out", "--model", tiny_model_dir,
                            "--store", tmp_path / "store", *FAST)
        assert code == 2 and message in err
        assert not (tmp_path / "out").exists() and not (tmp_path / "store").exists()
