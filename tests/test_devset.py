"""The development set's fictional documents: seeded, facts planted once, paraphrases sharing no content word."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_tokenizer
from lift_ray.evaluate.fiction import STYLES, build_fiction, content_words
from lift_ray.evaluate.make_devset import fiction_rows

DEVSET = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "devset.jsonl"


@pytest.mark.parametrize("style", STYLES)
def test_fiction_plants_each_fact_once_and_asks_it_twice(style):
    doc = build_fiction(style, 0)
    assert doc == build_fiction(style, 0), "same seed, same document"
    assert doc["input"] != build_fiction(style, 1)["input"]
    text = doc["input"]
    assert len(doc["facts"]) == 7 and sum(f["planted"] == "beyond" for f in doc["facts"]) == 5
    positions = []
    for fact in doc["facts"]:
        assert text.count(fact["sentence"]) == 1 and text.count(fact["answer"]) == 1, fact
        assert fact["answer"] in fact["sentence"]
        # the paraphrase shares no content word with the sentence that states the fact
        assert not content_words(fact["paraphrase"]) & content_words(fact["sentence"]), fact
        assert fact["direct"].endswith("?") and fact["paraphrase"].endswith("?")
        positions.append(text.index(fact["sentence"]) / len(text))
    beyond = [p for p, f in zip(positions, doc["facts"]) if f["planted"] == "beyond"]
    assert min(beyond) > 0.1 and max(beyond) < 0.9, "beyond-window facts sit in the middle"


def test_fiction_rows_label_where_each_answer_lies():
    tok = make_tokenizer()
    rows = fiction_rows(tok, seeds=[0], window=32)
    assert [r["style"] for r in rows] == list(STYLES)
    for row in rows:
        kinds = [q["kind"] for q in row["qa_pairs"]]
        assert kinds.count("direct") == kinds.count("paraphrase") == 7
        assert {q["where"] for q in row["qa_pairs"]} <= {"inside", "beyond", "both"}
        for q in row["qa_pairs"]:
            assert row["input"][q["answer_start"] : q["answer_start"] + len(q["A"][0])] == q["A"][0]


def test_committed_devset_has_sixteen_documents_of_every_kind():
    rows = [json.loads(line) for line in DEVSET.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 16
    assert {r["style"] for r in rows} == {*STYLES, "squad"}
    assert sum(r["style"] == "squad" for r in rows) > 5
    assert all(400 <= r["num_tokens"] <= 900 for r in rows), [(r["id"], r["num_tokens"]) for r in rows]
