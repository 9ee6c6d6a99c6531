"""The CLI end to end on the tiny model, and every bad input: one error line, exit 2, store untouched."""

import json

import pytest

from conftest import LONG_TEXT
from lift_ray.cli import VERBS, build_parser, main

FAST = ["--context-window", "48", "--epochs", "1", "--threads", "1", "--quiet"]


@pytest.fixture
def doc(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(LONG_TEXT)
    return path


@pytest.fixture
def store(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "segments:\n  segment_length: 32\n"
        "inference:\n  max_new_tokens: 6\n  question_reserve: 64\n"
        "train:\n  learning_rate: 0.01\n"
    )
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


EXPECTED_VERBS = ["absorb", "ask", "docs", "models", "bulk", "eval", "niah", "serve", "ui"]


def test_verbs_and_help(capsys):
    # What a user can type is the parser's subcommands; each must reach its handler and show its
    # handler's docstring as help (written out here, not read back from the table the help is built from).
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices
    assert sorted(subcommands) == sorted(EXPECTED_VERBS)
    assert list(VERBS) == EXPECTED_VERBS
    top_help = parser.format_help()
    for verb in EXPECTED_VERBS:
        summary = VERBS[verb].__doc__.strip().splitlines()[0]
        assert summary and summary[:40] in " ".join(top_help.split()), f"{verb}: help lacks {summary!r}"
        with pytest.raises(SystemExit) as exit_info:
            main([verb, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: lift-ray {verb}" in " ".join(capsys.readouterr().out.split())
    absorb_help = subcommands["absorb"].format_help()
    assert "--context-window N" in absorb_help and "token budget W" in absorb_help


def test_absorb_ask_docs_round_trip(capsys, doc, store, tiny_model_dir, tiny_yaml):
    code, out, err = run(capsys, "absorb", doc, "--model", tiny_model_dir, "--store", store, "--config", tiny_yaml, "--json", *FAST)
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "absorbed" and len(result["doc_id"]) == 32
    assert result["variant"].startswith("lora-") and result["training"]["steps"] > 0

    # the same text again (any whitespace variant) is not retrained
    doc.write_bytes((LONG_TEXT + "   \r\n\r\n").encode())
    code, out, _ = run(capsys, "absorb", doc, "--model", tiny_model_dir, "--store", store, "--config", tiny_yaml, "--json", *FAST)
    again = json.loads(out)
    assert code == 0 and again["status"] == "already_absorbed" and again["doc_id"] == result["doc_id"]
    doc.write_text(LONG_TEXT)
    # --show-qa lists the auxiliary pairs, also for an already absorbed document (from the cache)
    code, out, _ = run(capsys, "absorb", doc, "--model", tiny_model_dir, "--store", store, "--config", tiny_yaml, "--json", "--show-qa", *FAST)
    shown = json.loads(out)
    assert shown["status"] == "already_absorbed" and shown["qa_pairs"] and shown["num_qa_pairs"] == len(shown["qa_pairs"])
    assert all(p["answer"] and p["evidence"] for p in shown["qa_pairs"])
    # --force retrains the same variant; other training settings add a variant
    code, out, _ = run(capsys, "absorb", doc, "--model", tiny_model_dir, "--store", store, "--config", tiny_yaml, "--json", "--force", *FAST)
    assert json.loads(out)["status"] == "absorbed" and json.loads(out)["variant"] == result["variant"]
    code, out, _ = run(capsys, "absorb", doc, "--model", tiny_model_dir, "--store", store, "--config", tiny_yaml, "--json", "--seed", "7", *FAST)
    second_variant = json.loads(out)["variant"]
    assert second_variant != result["variant"]

    questions = doc.parent / "q.txt"
    questions.write_text("Who keeps a tortoise?\n{\"question\": \"What is its name?\"}\n")
    for target in (result["doc_id"], doc):
        for mode in ("icl", "lift", "lift+icl"):
            code, out, err = run(capsys, "ask", target, "--questions", questions, "--mode", mode, "--store", store,
                                 "--variant", result["variant"], "--json", "--max-new-tokens", "4", "--threads", "1")
            assert code == 0, err
            lines = [json.loads(x) for x in out.splitlines()]
            assert [x["question"] for x in lines] == ["Who keeps a tortoise?", "What is its name?"]
            assert all(x["mode"] == mode and x["doc_id"] == result["doc_id"] for x in lines)
            assert all(x["new_tokens"] <= 4 for x in lines)

    code, out, _ = run(capsys, "ask", result["doc_id"], "Who?", "--store", store, "--stream", "--max-new-tokens", "3")
    assert code == 0 and out.endswith("\n")
    code, out, _ = run(capsys, "ask", result["doc_id"], "Who keeps a tortoise?", "--store", store, "--stream", "--json",
                       "--mode", "lift+icl", "--max-new-tokens", "3")
    *deltas, last = [json.loads(x) for x in out.splitlines()]
    plain = json.loads(run(capsys, "ask", result["doc_id"], "Who keeps a tortoise?", "--store", store, "--json",
                           "--mode", "lift+icl", "--max-new-tokens", "3")[1])
    assert code == 0 and "".join(d["delta"] for d in deltas).strip() == last["answer"] == plain["answer"]
    assert {k: last[k] for k in ("mode", "doc_id", "variant", "view", "answered_as", "new_tokens")} == \
        {k: plain[k] for k in ("mode", "doc_id", "variant", "view", "answered_as", "new_tokens")}

    code, out, _ = run(capsys, "docs", "list", "--store", store, "--json")
    rows = json.loads(out)
    assert [r["doc_id"] for r in rows] == [result["doc_id"]]
    assert sorted(rows[0]["variants"]) == sorted([result["variant"], second_variant])
    code, out, _ = run(capsys, "docs", "show", result["doc_id"], "--store", store, "--json")
    shown = json.loads(out)["adapters"]
    assert {m["variant"] for m in shown} == {result["variant"], second_variant}
    assert all(m["base_model"]["model_id"] == str(tiny_model_dir) and m["context_window"] == 48 for m in shown)
    code, out, _ = run(capsys, "docs", "delete", result["doc_id"], "--store", store, "--json")
    assert code == 0 and sorted(json.loads(out)["deleted"]) == sorted([result["variant"], second_variant])
    code, out, err = run(capsys, "docs", "list", "--store", store, "--json")
    assert json.loads(out) == []
    # An absorb in another process has stored its text and not yet published: listed, and said so.
    from lift_ray.store import AdapterStore, doc_id_for

    AdapterStore(store).put_document(doc_id_for("Pending text."), "Pending text.")
    code, out, _ = run(capsys, "docs", "list", "--store", store, "--json")
    assert [(r["doc_id"], r["status"], r["variants"]) for r in json.loads(out)] == [(doc_id_for("Pending text."), "no_adapter", [])]
    code, out, _ = run(capsys, "docs", "list", "--store", store)
    assert code == 0 and "no adapter yet" in out


def test_models_lists_the_cache(capsys):
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0 and isinstance(json.loads(out), list)


def _bad_inputs(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\t\n  ")
    binary = tmp_path / "bin.dat"
    binary.write_bytes(bytes(range(256)) * 4)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    big = tmp_path / "big.txt"
    big.write_text("word " * 100)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: [1, 2\n")
    bad_value = tmp_path / "badval.yaml"
    bad_value.write_text("train:\n  learning_rate: -1\n")
    limit = tmp_path / "limit.yaml"
    limit.write_text("segments:\n  max_document_chars: 100\n")
    good = tmp_path / "good.txt"
    good.write_text(LONG_TEXT)
    m = ["--model", str(tiny_model_dir)]
    return [
        (["absorb", empty, *m], "is empty"),
        (["absorb", blank, *m], "is empty"),
        (["absorb", binary, *m], "binary"),
        (["absorb", latin, *m], "not UTF-8"),
        (["absorb", big, "--config", limit, *m], "above the limit of 100 (segments.max_document_chars)"),
        (["absorb", tmp_path / "missing.txt", *m], "no such file"),
        (["absorb", good, "--config", bad_yaml, *m], "malformed YAML"),
        (["absorb", good, "--config", bad_value, *m], "train.learning_rate"),
        (["absorb", good, "--model", str(tmp_path / "no-such-model")], "model path does not exist"),
        (["absorb", good, "--model", "./nope/model.gguf"], "model path does not exist"),
        (["ask", "0" * 32, "Who?"], "unknown document id"),
        (["ask", "../etc/passwd", "Who?"], "neither a document id nor a file"),
        (["ask", good, "Who?", "--mode", "lift"], "absorb it first"),
        (["docs", "show", "0" * 32], "unknown document id"),
        (["docs", "delete", "../../x"], "invalid document id"),
    ]


def test_bad_input_is_one_line_and_leaves_no_trace(capsys, tmp_path, tiny_model_dir):
    store = tmp_path / "store"
    for argv, message in _bad_inputs(tmp_path, tiny_model_dir):
        code, out, err = run(capsys, *argv, "--store", store)
        assert code == 2, (argv, err)
        lines = [x for x in err.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("lift-ray: error:"), (argv, err)
        assert message in lines[0], (argv, lines[0])
        assert out == ""
        assert not store.exists(), argv


def test_a_file_as_store_or_a_directory_as_document_is_one_line_before_any_model_loads(capsys, tmp_path, doc, monkeypatch):
    import lift_ray.model

    def no_model(*a, **k):  # the checks come first: a bad store must not cost a model load
        raise AssertionError("the model was loaded before the store was checked")

    monkeypatch.setattr(lift_ray.model, "load_model", no_model)
    monkeypatch.setattr(lift_ray.model, "inspect_model", no_model)
    not_a_dir = tmp_path / "some-file.txt"
    not_a_dir.write_text("notes")
    cases = [
        (("absorb", doc, "--store", not_a_dir), "not a writable directory"),
        (("eval", "--data", doc, "--out", tmp_path / "out", "--store", not_a_dir), "not a writable directory"),
        (("niah", "--out", tmp_path / "niah", "--lengths", "64", "--depths", "50", "--haystack", doc, "--store", not_a_dir), "not a writable directory"),
        (("ask", "0" * 32, "Who?", "--store", not_a_dir), "is not a directory"),
        (("absorb", tmp_path, "--store", tmp_path / "store"), "is a directory; to absorb every document in it use: lift-ray bulk --input"),
    ]
    for argv, message in cases:
        code, out, err = run(capsys, *argv)
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("lift-ray: error:"), (argv, err)
        assert message in lines[0], (argv, lines[0])
    assert not_a_dir.read_text() == "notes" and not (tmp_path / "store").exists()


def test_serve_flags_become_a_serve_config():
    from lift_ray.cli import serve_config

    args = build_parser().parse_args(["serve", "--store", "s3://b/s", "--adapters-per-replica", "2", "--port", "8123",
                                      "--replicas", "3", "--max-batch-size", "4", "--api-key-env", "LIFT_KEY"])
    cfg = serve_config(args)
    assert (cfg.store, cfg.adapters_per_replica, cfg.port, cfg.replicas, cfg.max_batch_size, cfg.api_key_env) == (
        "s3://b/s", 2, 8123, 3, 4, "LIFT_KEY")
    assert cfg.host == "127.0.0.1", "loopback unless told otherwise"
    assert cfg.lift_config().store.uri == "s3://b/s"
    code = main(["serve", "--adapters-per-replica", "0"])
    assert code == 2  # refused before Ray starts, one error line
