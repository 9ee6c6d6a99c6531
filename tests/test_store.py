import json
import os

import pytest

from lift_ray.store import (
    MANIFEST,
    AdapterStore,
    BaseModelRef,
    Manifest,
    StoreError,
    doc_id_for,
    now_iso,
    sha256_file,
    TrainMetrics,
    variant_id,
)
from lift_ray.config import LiftConfig
from lift_ray.text import normalize_text

TEXT = "A document about Port Quillon.\nIt has two lines."


def _manifest(tmp_path, text=TEXT, kind="lora", model="m", files=("adapter_model.safetensors",)):
    files_dir = tmp_path / "files"
    files_dir.mkdir(exist_ok=True)
    for name in files:
        (files_dir / name).write_bytes(os.urandom(64))
    metrics = TrainMetrics(steps=1, epochs=1, samples=1, target_tokens=1, sample_tokens=1, computed_tokens=1,
                           seconds=0.1, tokens_per_second=10, epoch_losses=[1.0])
    m = Manifest(
        doc_id=doc_id_for(text),
        variant=variant_id(LiftConfig(adapter={"kind": kind}), model, "sha256:x"),
        adapter_kind=kind,
        base_model=BaseModelRef(model_id=model, weights_hash="sha256:x", num_params=1, max_positions=64),
        adapter_config={"kind": kind},
        config_hash="cfg",
        config={},
        context_window=32,
        num_tokens=10,
        num_samples=1,
        training=metrics,
        files={n: sha256_file(files_dir / n) for n in files},
        created_at=now_iso(),
        lift_ray_version="test",
    )
    return m, files_dir


def test_doc_id_is_the_hash_of_normalised_text():
    assert doc_id_for(normalize_text("a  \r\nb\n")) == doc_id_for("a\nb")  # callers hash the normal form
    assert doc_id_for("a") != doc_id_for("b")
    assert len(doc_id_for("a")) == 32


def test_nothing_is_created_until_publish(tmp_path):
    root = tmp_path / "store"
    store = AdapterStore(str(root))
    assert store.list_docs() == []
    with pytest.raises(StoreError, match="unknown document id"):
        store.text(doc_id_for(TEXT))
    assert not root.exists()


def test_a_document_without_an_adapter_is_listed_only_when_asked(tmp_path):
    """Its text is stored when an absorb starts: listed as pending (icl and rag answer it), never as absorbed."""
    store = AdapterStore(str(tmp_path / "store"))
    m, files = _manifest(tmp_path)
    other = normalize_text("Another document, absorbing somewhere else.")
    store.put_document(doc_id_for(other), other)
    assert store.list_docs() == []
    [row] = store.list_docs(pending=True)
    assert row["doc_id"] == doc_id_for(other) and row["status"] == "no_adapter" and row["variants"] == []
    assert row["created_at"][:4].isdigit() and row["created_at"].endswith("+00:00")
    store.publish(m, TEXT, files)
    assert [r["doc_id"] for r in store.list_docs()] == [m.doc_id]
    rows = {r["doc_id"]: r["status"] for r in store.list_docs(pending=True)}
    assert rows == {m.doc_id: "absorbed", doc_id_for(other): "no_adapter"}


def test_publish_list_show_delete(tmp_path):
    store = AdapterStore(str(tmp_path / "store"))
    m, files = _manifest(tmp_path)
    store.publish(m, TEXT, files)
    assert store.has(m.doc_id, m.variant)
    assert store.text(m.doc_id) == TEXT
    assert [r["doc_id"] for r in store.list_docs()] == [m.doc_id]
    assert store.manifest(m.doc_id, m.variant) == m
    assert store.adapter_dir(m.doc_id, m.variant).joinpath("adapter_model.safetensors").is_file()
    # a second variant (another base model) sits beside the first
    m2, files2 = _manifest(tmp_path, model="other")
    assert m2.variant != m.variant
    store.publish(m2, TEXT, files2)
    assert store.variants(m.doc_id) == sorted([m.variant, m2.variant])
    assert store.delete(m.doc_id, m.variant) == [m.variant]
    assert store.variants(m.doc_id) == [m2.variant]
    store.delete(m.doc_id)
    assert store.list_docs() == []
    assert not (tmp_path / "store" / "docs" / m.doc_id).exists()


def test_the_text_is_readable_before_any_adapter_and_listed_only_with_one(tmp_path):
    """An absorb stores the text before training (icl and rag read it); the manifest lists the document."""
    store = AdapterStore(str(tmp_path / "store"))
    doc = doc_id_for(TEXT)
    assert not store.has_document(doc)
    store.put_document(doc, TEXT)
    store.put_document(doc, TEXT)  # once: the id is the text's hash
    assert store.has_document(doc) and store.text(doc) == TEXT
    assert store.list_docs() == [] and store.variants(doc) == []
    with pytest.raises(StoreError, match="does not hash"):
        store.put_document(doc, TEXT + " More.")
    m, files = _manifest(tmp_path)
    store.publish(m, TEXT, files)
    assert [r["doc_id"] for r in store.list_docs()] == [doc]
    assert store.delete(doc) == [m.variant] and not store.has_document(doc)
    store.put_document(doc, TEXT)  # an absorb that failed: deleted with its text
    assert store.delete(doc) == [] and not store.has_document(doc)
    with pytest.raises(StoreError, match="unknown document"):
        store.delete(doc)


def test_not_found_errors_are_typed_and_a_damaged_manifest_is_not_one_of_them(tmp_path):
    """Callers (CLI, engine, Serve) tell "no such document" from "broken entry" by type, not message."""
    from lift_ray.store import AdapterNotFound, DocumentNotFound

    store = AdapterStore(str(tmp_path / "store"))
    m, files = _manifest(tmp_path)
    doc = doc_id_for(TEXT)
    with pytest.raises(DocumentNotFound):
        store.latest_manifest(doc)
    store.publish(m, TEXT, files)
    with pytest.raises(AdapterNotFound):
        store.manifest(doc, "lora-" + "0" * 12)
    with pytest.raises(AdapterNotFound):
        store.delete(doc, "lora-" + "0" * 12)
    (store.adapter_dir(m.doc_id, m.variant) / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="not JSON") as err:
        store.latest_manifest(doc)
    assert not isinstance(err.value, (DocumentNotFound, AdapterNotFound))


def test_entry_without_manifest_is_invisible(tmp_path):
    """A crash after the weights but before the manifest leaves nothing visible."""
    store = AdapterStore(str(tmp_path / "store"))
    m, files = _manifest(tmp_path)
    store.publish(m, TEXT, files)
    (tmp_path / "store" / "docs" / m.doc_id / "adapters" / m.variant / MANIFEST).unlink()
    assert store.list_docs() == []
    assert not store.has(m.doc_id, m.variant)
    with pytest.raises(StoreError):
        store.latest_manifest(m.doc_id)


def test_manifest_is_written_last(tmp_path, monkeypatch):
    store = AdapterStore(str(tmp_path / "store"))
    m, files = _manifest(tmp_path, files=("adapter_model.safetensors", "adapter_config.json"))
    order = []
    real = store._write_bytes
    monkeypatch.setattr(store, "_write_bytes", lambda path, data: (order.append(os.path.basename(path)), real(path, data)))
    store.publish(m, TEXT, files)
    assert order[-1] == MANIFEST
    assert set(order[:-1]) == {"document.txt", "adapter_model.safetensors", "adapter_config.json"}
    assert not list((tmp_path / "store").rglob("*.tmp"))  # no temporary files left behind


def test_corrupted_adapter_file_is_refused(tmp_path):
    store = AdapterStore(str(tmp_path / "store"))
    m, files = _manifest(tmp_path)
    store.publish(m, TEXT, files)
    (tmp_path / "store" / "docs" / m.doc_id / "adapters" / m.variant / "adapter_model.safetensors").write_bytes(b"x")
    with pytest.raises(StoreError, match="corrupted"):
        store.adapter_dir(m.doc_id, m.variant)


@pytest.mark.parametrize("bad", ["../../etc", "ABC", "0" * 31, "0" * 32 + "/..", "", "../" + "0" * 32])
def test_ids_are_validated(tmp_path, bad):
    store = AdapterStore(str(tmp_path / "store"))
    with pytest.raises(StoreError, match="invalid document id"):
        store.variants(bad)
    with pytest.raises(StoreError):
        store.delete(bad)


def test_unsupported_manifest_version_is_refused(tmp_path):
    store = AdapterStore(str(tmp_path / "store"))
    m, files = _manifest(tmp_path)
    store.publish(m, TEXT, files)
    path = tmp_path / "store" / "docs" / m.doc_id / "adapters" / m.variant / MANIFEST
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(StoreError, match="format_version 99"):
        store.manifest(m.doc_id, m.variant)


def test_manifests_written_before_the_stop_rule_still_read(tmp_path):
    """Format 1 manifests from before the per-epoch log: per-stage metrics, no checks."""
    store = AdapterStore(str(tmp_path / "store"))
    m, files = _manifest(tmp_path)
    store.publish(m, TEXT, files)
    path = tmp_path / "store" / "docs" / m.doc_id / "adapters" / m.variant / MANIFEST
    data = json.loads(path.read_text())
    for key in ("max_epochs", "stop_reason", "epoch_log"):
        del data["training"][key]
    data["training_stages"] = [dict(data["training"])]
    path.write_text(json.dumps(data))
    old = store.manifest(m.doc_id, m.variant)
    assert old.training.epoch_log == [] and old.training.stop_reason is None
    assert old.training_stages[0].epoch_losses == [1.0]


def test_text_must_match_the_manifest(tmp_path):
    store = AdapterStore(str(tmp_path / "store"))
    m, files = _manifest(tmp_path)
    with pytest.raises(StoreError, match="does not hash"):
        store.publish(m, "another text", files)
    assert not (tmp_path / "store").exists()
